"""Single-call costs of the C core and the SMMU model, against their floor, in one run.

    python bench/bench_single.py [--json bench/results-single.json] [--rounds 15]
                                 [--compare previous.json]

An emulator harness calls pymsi one transaction at a time, so what matters is
the cost of one call.  The floor is an empty cffi call with four integer
arguments (``pymsi_nop4``).  Every row is a loop of single calls over 256
mapped pages (nested, 4-level stage 1 over 4-level stage 2), timed in
interleaved rounds so that the floor and the rows see the same machine.  Each
row reports min / median / stdev of ns per call over the rounds, and its
ratio to the floor (the median over rounds of row / floor in that round).
Targets (issue 11): a single nested walk or translate at most 8x the floor;
the SMMU's per-call hit path at most 1.3x the core translate it wraps.
``--compare`` prints the median ratio new / previous per row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_smmu import SID, Rig  # noqa: E402
from pymsi._core_c import lib  # noqa: E402

N = 256


def rows() -> list[tuple[str, Any, str | None]]:
    """(name, loop, what its ratio is taken against besides the floor)."""
    rig = Rig("c", N, 2 * N)
    b, mem, cfg, tlb, smmu = rig.b, rig.mem, rig.cfg, rig.core_tlb, rig.smmu
    s1, s2 = cfg.s1, cfg.s2
    iovas = list(rig.iovas)
    for i in iovas:                         # warm the IOTLBs and the SMMU's config cache
        b.translate(mem, i, True, cfg=cfg, tlb=tlb)
        smmu.translate(SID, i, True)
    nop, walk, tr, st = lib.pymsi_nop4, b.walk, b.translate, smmu.translate
    return [
        ("floor: empty cffi call, 4 int args", lambda: [nop(i, 1, 2, 3) for i in iovas], None),
        ("core.walk(mem, iova, s1=, s2=), nested 4+4",
         lambda: [walk(mem, i, True, s1=s1, s2=s2) for i in iovas], None),
        ("core.walk(mem, iova, cfg=), nested 4+4",
         lambda: [walk(mem, i, True, cfg=cfg) for i in iovas], None),
        ("core.translate(..., s1=, s2=), IOTLB hit",
         lambda: [tr(mem, i, True, tlb=tlb, s1=s1, s2=s2) for i in iovas], None),
        ("core.translate(..., cfg=), IOTLB hit",
         lambda: [tr(mem, i, True, cfg=cfg, tlb=tlb) for i in iovas], None),
        ("SMMUv3.translate, config + IOTLB hit",
         lambda: [st(SID, i, True) for i in iovas], "core.translate(..., cfg=), IOTLB hit"),
    ]


def bench(rounds: int) -> dict[str, Any]:
    table = rows()
    times: dict[str, list[float]] = {name: [] for name, _, _ in table}
    for fn in (f for _, f, _ in table):     # warm-up
        fn()
    for _ in range(rounds):
        for name, fn, _ in table:
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter_ns()
                fn()
                best = min(best, (time.perf_counter_ns() - t0) / N)
            times[name].append(best)
    floor = times[table[0][0]]
    out = []
    for name, _, vs in table:
        ns = times[name]
        row: dict[str, Any] = {
            "name": name, "min": min(ns), "median": statistics.median(ns),
            "stdev": statistics.stdev(ns) if len(ns) > 1 else 0.0,
            "x_floor": statistics.median(a / f for a, f in zip(ns, floor, strict=True)),
        }
        if vs is not None:
            row["vs"] = vs
            row["x_vs"] = statistics.median(
                a / c for a, c in zip(ns, times[vs], strict=True))
        out.append(row)
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "rounds": rounds, "calls_per_round": N, "rows": out}


def render(result: dict[str, Any]) -> str:
    lines = [f"single calls, C backend ({result['rounds']} rounds x {N} calls; "
             f"Python {result['python']}, {result['cpus']} CPUs)", "",
             "| path | min ns | median ns | stdev | x floor | x wrapped |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        vs = f"{r['x_vs']:.2f}" if "x_vs" in r else "-"
        lines.append(f"| {r['name']} | {r['min']:.0f} | {r['median']:.0f} | {r['stdev']:.0f} "
                     f"| {r['x_floor']:.2f} | {vs} |")
    return "\n".join(lines)


def compare(result: dict[str, Any], path: str) -> str:
    prev = {r["name"]: r for r in json.loads(Path(path).read_text())["rows"]}
    lines = ["", f"against {path} (median ns new / previous; x floor new / previous):"]
    for r in result["rows"]:
        p = prev.get(r["name"])
        if p is not None:
            lines.append(f"  {r['name']}: {r['median'] / p['median']:.2f}  "
                         f"({r['x_floor']:.2f} / {p['x_floor']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--compare", default=None, help="a previous --json output")
    args = ap.parse_args(argv)
    result = bench(args.rounds)
    print(render(result))
    if args.compare:
        print(compare(result, args.compare))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
