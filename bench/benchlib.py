"""What every benchmark in bench/ shares: timed rounds reported as median and spread, floors
measured in the same run, one JSON record, and the comparison with a previous record.

A benchmark builds a :class:`Report`, adds rows (timed loops, or derived values such as
ratios), and hands a ``bench(quick) -> Report`` function to :func:`main`, which gives every
benchmark the same command line::

    python bench/bench_X.py [--quick] [--json out.json] [--compare previous.json]

``--compare`` prints, for every row present in both records, the median new / previous and
the x-floor new / previous (ratios within each run are what travel between machines).
Numbers are reported, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Loop = Callable[[], Any]


def stats(samples: Sequence[float]) -> dict[str, float]:
    """median / min / max / stdev of per-item samples (ns), and how many rounds."""
    xs = list(samples)
    return {"median_ns": statistics.median(xs), "min_ns": min(xs), "max_ns": max(xs),
            "stdev_ns": statistics.stdev(xs) if len(xs) > 1 else 0.0, "rounds": len(xs)}


def timed(fn: Loop, items: int, setup: Loop | None = None, repeat: int = 1) -> float:
    """ns per item of one round of ``fn`` (which handles ``items`` items): the best of
    ``repeat`` runs, ``setup`` (untimed) before each."""
    best = float("inf")
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / items)
    return best


def samples(fn: Loop, items: int, rounds: int, setup: Loop | None = None,
            repeat: int = 1) -> list[float]:
    """Per-item ns of ``rounds`` rounds of ``fn``."""
    return [timed(fn, items, setup, repeat) for _ in range(rounds)]


def interleaved(loops: dict[str, tuple[Loop, int]], rounds: int, repeat: int = 1,
                warmup: bool = True) -> dict[str, list[float]]:
    """Per-item ns of every loop, the loops taking turns round by round, so that a slow
    moment of a shared machine hits them alike (``loops``: name -> (fn, items))."""
    if warmup:
        for fn, _ in loops.values():
            fn()
    out: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, (fn, items) in loops.items():
            out[name].append(timed(fn, items, repeat=repeat))
    return out


def nop4_floor(n: int) -> Loop:
    """``n`` empty cffi calls with four integer arguments (``pymsi_nop4``): the floor of
    anything that crosses into the C core once."""
    from pymsi._core_c import lib
    nop = lib.pymsi_nop4
    rng = range(n)

    def loop() -> None:
        for i in rng:
            nop(i, 1, 2, 3)
    return loop


def probe_floor(n: int) -> Loop:
    """A batch of ``n`` bare hash probes in C: ``compose_batch`` over a 1024-entry MSI table,
    the cheapest per-item work the C core does (one probe and a store).  Per item."""
    import array

    from pymsi import core
    c = core.backend("c")
    table = c.MsiTable()
    for k in range(1024):
        table.set(1, k, 0xFFFF_F000, 12)
    devs = array.array("I", [1] * n)
    idx = array.array("I", [(k * 7919) % 1024 for k in range(n)])
    addrs = array.array("Q", bytes(8 * n))
    status = array.array("i", bytes(4 * n))

    def loop() -> None:
        c.compose_batch(table, 0x0809_0040, devs, idx, addrs, status)
    return loop


class Report:
    """The rows of one benchmark run and the facts of the machine it ran on."""

    def __init__(self, title: str, **meta: Any) -> None:
        self.title = title
        self.meta: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": _cpu_name(), "cpus": os.cpu_count(), **meta}
        self.rows: list[dict[str, Any]] = []
        self._by_name: dict[str, dict[str, Any]] = {}

    def add(self, name: str, ns: Sequence[float], floor: str | None = None,
            floor_ns: Sequence[float] | None = None, note: str = "") -> dict[str, Any]:
        """A timed row from per-round samples.  With ``floor`` (the name of a row already
        added, or ``floor_ns`` given) the row's ``x_floor`` is the median over rounds of
        row / floor when both have the same rounds, else the ratio of medians."""
        row: dict[str, Any] = {"name": name, **stats(ns), "note": note}
        if floor is not None:
            fl = list(floor_ns) if floor_ns is not None else self._by_name[floor]["samples"]
            row["floor"] = floor
            if len(fl) == len(ns):
                row["x_floor"] = statistics.median(a / b for a, b in zip(ns, fl, strict=True))
            else:
                row["x_floor"] = statistics.median(ns) / statistics.median(fl)
        row["samples"] = list(ns)
        self.rows.append(row)
        self._by_name[name] = row
        return row

    def value(self, name: str, value: float, note: str = "") -> dict[str, Any]:
        """A derived row (a ratio, a hit rate): one number."""
        row = {"name": name, "value": value, "note": note}
        self.rows.append(row)
        self._by_name[name] = row
        return row

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self._by_name[name]

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "rows": self.rows}

    def render(self, old: dict[str, Any] | None = None) -> str:
        return render(self.to_json(), old)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _fmt(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def render(result: dict[str, Any], old: dict[str, Any] | None = None) -> str:
    """A markdown table of a record: median, min..max, stdev, x floor, note; with ``old``,
    two more columns: median and x floor, new / previous."""
    meta = result.get("meta", {})
    head = (f"{result.get('title', '')} ({meta.get('processor', '?')}, {meta.get('cpus')} "
            f"CPUs, Python {meta.get('python')}, {meta.get('date', '')})")
    cols = "| row | median ns | min..max ns | stdev | x floor | note |"
    sep = "|---|---:|---:|---:|---:|---|"
    prev = {r["name"]: r for r in old["rows"]} if old else {}
    if old:
        cols += " new/prev | x floor new/prev |"
        sep += "---:|---:|"
    lines = [head, "", cols, sep]
    for r in result["rows"]:
        p = prev.get(r["name"])
        if "value" in r:
            line = f"| {r['name']} | {r['value']:.3g} | | | | {r.get('note', '')} |"
            if old:
                line += (f" {r['value'] / p['value']:.2f} | |"
                         if p and "value" in p and p["value"] else " - | |")
        else:
            xf = f"{r['x_floor']:.2f}" if "x_floor" in r else "-"
            line = (f"| {r['name']} | {_fmt(r['median_ns'])} | {_fmt(r['min_ns'])}.."
                    f"{_fmt(r['max_ns'])} | {_fmt(r['stdev_ns'])} | {xf} | {r.get('note', '')} |")
            if old:
                if p and "median_ns" in p:
                    xr = (f"{r['x_floor'] / p['x_floor']:.2f}"
                          if "x_floor" in r and p.get("x_floor") else "-")
                    line += f" {r['median_ns'] / p['median_ns']:.2f} | {xr} |"
                else:
                    line += " - | - |"
        lines.append(line)
    return "\n".join(lines)


def main(doc: str, default_json: str | None, bench: Callable[[bool], Report],
         argv: list[str] | None = None) -> int:
    """The command line every benchmark shares: run, print the table (with the comparison
    when ``--compare`` names a previous record), write the JSON record."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--json", default=default_json, help="write the JSON record here")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and items")
    ap.add_argument("--compare", default=None, help="a previous --json record to compare with")
    args = ap.parse_args(argv)
    report = bench(args.quick)
    old = json.loads(Path(args.compare).read_text()) if args.compare else None
    print(report.render(old))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
        print(f"\n(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(print(__doc__) or 0)
