"""IOTLB and MSI-table scaling benchmarks (C core), each next to a floor from the same run.

    python bench/bench_iotlb.py [--json bench/results-iotlb.json] [--quick]

Rows: invalidating one page with 1k and 64k entries resident (their ratio should be ~1);
an IOTLB hit in batch against a bare hash probe (a one-entry MSI-table compose batch);
the IOTLB hit rate on cyclic and random working sets larger than the capacity; batch
compose per item with 10, 1000 and 10^6 vectors.  Times are per item: median, min and
stdev over rounds.  Reported, never asserted.
"""

from __future__ import annotations

import argparse
import array
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pymsi import core
from pymsi.core import IoPgtable, Prot, TableAllocator, XlateConfig

C = core.backend("c")
DOORBELL = 0x0809_0040
RAM = 0x8000_0000
RW = Prot.READ | Prot.WRITE


def zeros(code: str, n: int) -> array.array:
    return array.array(code, bytes(array.array(code).itemsize * n))


def rounds_ns(fn: Callable[[], Any], items: int, rounds: int,
              setup: Callable[[], Any] | None = None) -> dict[str, float]:
    """Per-item ns of ``fn`` over ``rounds`` rounds: min, median, stdev."""
    xs = []
    for _ in range(rounds):
        if setup:
            setup()
        t0 = time.perf_counter_ns()
        fn()
        xs.append((time.perf_counter_ns() - t0) / items)
    return {"min": min(xs), "median": statistics.median(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}


class Stage2Space:
    """A stage-2 configuration with ``pages`` 4 KiB pages mapped one by one."""

    def __init__(self, pages: int) -> None:
        mem = C.Memory()
        mem.add_ram(RAM, 0x0100_0000)
        mem.add_ram(0x9000_0000, 0x0200_0000)
        pt = IoPgtable(mem, TableAllocator(mem, 0x9000_0000, 0x0200_0000), fmt="s2", ias=48)
        for k in range(pages):
            pt.map(0x1_0000_0000 + k * 0x1000, RAM + (k % 4096) * 0x1000, 0x1000, RW)
        self.mem = mem
        self.cfg = XlateConfig(s2=pt.stage2_config(), vmid=1)
        self.iovas = [0x1_0000_0000 + k * 0x1000 for k in range(pages)]

    def run(self, tlb: Any, iovas: array.array) -> int:
        n = len(iovas)
        return C.translate_batch(self.mem, self.cfg, iovas, zeros("Q", n), zeros("i", n), tlb=tlb)


def bench(quick: bool) -> dict[str, Any]:
    rounds = 7 if quick else 21
    rows: list[dict[str, Any]] = []

    def row(name: str, t: dict[str, float] | float, note: str = "") -> None:
        rows.append({"name": name, **(t if isinstance(t, dict) else {"value": t}),
                     "note": note})

    space = Stage2Space(1 << 16)

    # Invalidate one page: cost with 1k vs 64k entries resident.
    inval = {}
    for resident in (1 << 10, 1 << 16):
        tlb = C.Iotlb(1 << 16)
        fill = array.array("Q", space.iovas[:resident])
        space.run(tlb, fill)
        assert len(tlb) == resident
        victims = space.iovas[:resident:resident // 64]

        def refill(tlb=tlb, fill=fill) -> None:
            space.run(tlb, fill)

        def drop(tlb=tlb, victims=victims) -> None:
            for v in victims:
                tlb.invalidate_ipa(1, v, 0x1000)

        inval[resident] = rounds_ns(drop, len(victims), rounds, setup=refill)
        row(f"IOTLB invalidate one page, {resident} resident (ns/call)", inval[resident])
    ratio = inval[1 << 16]["median"] / inval[1 << 10]["median"]
    row("  ratio 64k / 1k resident (median)", ratio, "target: ~1 (independent of size)")

    # Hit cost vs a bare hash probe (one-entry MSI table compose batch).
    n = 4096
    tlb = C.Iotlb(1 << 13)
    hits = array.array("Q", [space.iovas[k % 1024] for k in range(n)])
    space.run(tlb, hits)
    out_pa, st = zeros("Q", n), zeros("i", n)
    hit = rounds_ns(lambda: C.translate_batch(space.mem, space.cfg, hits, out_pa, st, tlb=tlb),
                    n, rounds)
    assert all(s == 0 for s in st)
    table = C.MsiTable()
    for k in range(1024):
        table.set(1, k, 0xFFFF_F000, 12)
    devs = array.array("I", [1] * n)
    idx = array.array("I", [k % 1024 for k in range(n)])
    oa, st2 = zeros("Q", n), zeros("i", n)
    probe = rounds_ns(lambda: C.compose_batch(table, DOORBELL, devs, idx, oa, st2), n, rounds)
    row("IOTLB hit, stage 2, batch (ns/item)", hit)
    row("bare hash probe floor: MSI compose, batch (ns/item)", probe)
    row("  ratio hit / probe (median)", hit["median"] / probe["median"], "target: <= 3")

    # Hit rate on working sets larger than the capacity.
    cap = 1024
    rnd = random.Random(7)
    for ws in (cap * 5 // 4, cap * 2):
        for pattern in ("cyclic", "random"):
            tlb = C.Iotlb(cap)
            seq = ([space.iovas[k % ws] for k in range(ws * 20)] if pattern == "cyclic"
                   else [space.iovas[rnd.randrange(ws)] for _ in range(ws * 20)])
            space.run(tlb, array.array("Q", seq))
            rate = tlb.hits / (tlb.hits + tlb.misses)
            row(f"IOTLB hit rate, {pattern}, working set {ws} / capacity {cap}", rate,
                f"ideal random: {cap / ws:.3f}")

    # Batch compose per item with 10 / 1000 / 10^6 vectors (all hits, random order).
    per = {}
    for size in (10, 1000, 10**6):
        t = C.MsiTable()
        t.reserve(size)
        keys = [(k // 2048, k % 2048) for k in range(size)]
        for d, i in keys:
            t.set(d, i, 0xFFFF_F000, 12)
        m = 1 << 16
        picks = [keys[rnd.randrange(size)] for _ in range(m)]
        dv = array.array("I", [p[0] for p in picks])
        ix = array.array("I", [p[1] for p in picks])
        oa, st3 = zeros("Q", m), zeros("i", m)
        per[size] = rounds_ns(lambda t=t, dv=dv, ix=ix, oa=oa, st3=st3:
                              C.compose_batch(t, DOORBELL, dv, ix, oa, st3), m, rounds)
        assert all(s == 0 for s in st3)
        row(f"compose, batch, {size} vectors (ns/item)", per[size])
    row("  ratio 10 / 1000 vectors (median)", per[10]["median"] / per[1000]["median"],
        "target: ~1 (flat)")
    row("  ratio 10^6 / 1000 vectors (median)", per[10**6]["median"] / per[1000]["median"],
        "larger than cache: memory bound")
    return {"rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = ["| benchmark | median | min | stdev | note |", "|---|---:|---:|---:|---|"]
    for r in result["rows"]:
        if "value" in r:
            lines.append(f"| {r['name']} | {r['value']:.3f} | | | {r['note']} |")
        else:
            lines.append(f"| {r['name']} | {r['median']:.1f} | {r['min']:.1f} | "
                         f"{r['stdev']:.1f} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results-iotlb.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare", help="a previous JSON output: print median ratios new/old")
    args = ap.parse_args(argv)
    result = bench(args.quick)
    print(render(result))
    if args.compare:
        with open(args.compare) as f:
            old = {r["name"]: r for r in json.load(f)["rows"]}
        for r in result["rows"]:
            o = old.get(r["name"])
            if o:
                a, b = r.get("median", r.get("value")), o.get("median", o.get("value"))
                print(f"{r['name']}: {a / b:.2f}x of previous" if b else r["name"])
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
