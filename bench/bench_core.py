"""Benchmarks of the translation core: C against its Python twin, in one run.

    python bench/bench_core.py [--json bench/results-core.json] [--quick]

Prints a table of ns per item and writes the same numbers as JSON.  Every
figure is the best of several repetitions of a timed loop (so it is the cost
without interference, not an average including it); ratios are computed
from numbers taken in the same run.  Targets (one core) are checked and
reported, never asserted: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from pymsi import core
from pymsi.core import IoPgtable, IpaView, Prot, TableAllocator, XlateConfig

C = core.backend("c")
PY = core.backend("python")
DOORBELL = 0x0809_0040
HOST_RAM, GUEST_RAM = 0x8000_0000, 0x4000_0000
RW = Prot.READ | Prot.WRITE


def best_ns(fn: Callable[[], Any], items: int, repeat: int) -> float:
    """Best per-item time of ``fn`` (which handles ``items`` items) over ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / items)
    return best


def zeros(code: str, n: int) -> array.array:
    return array.array(code, bytes(array.array(code).itemsize * n))


class Machine:
    """A nested configuration with 4-level stage 1 and 4-level stage 2 (4 KiB)."""

    def __init__(self, b: Any, vectors: int) -> None:
        self.b = b
        mem = b.Memory()
        mem.add_ram(HOST_RAM, 0x0400_0000)
        mem.add_ram(0x9000_0000, 0x0100_0000)
        s2 = IoPgtable(mem, TableAllocator(mem, 0x9000_0000, 0x0100_0000), fmt="s2", ias=48)
        assert s2.start_level == 0                         # 4 levels at stage 2
        # Guest RAM in 4 KiB pages so stage 2 also walks 4 levels everywhere.
        for off in range(0, 0x20_0000, 0x1000):
            s2.map(GUEST_RAM + off, HOST_RAM + off, 0x1000, RW)
        s2.map(DOORBELL & ~0xFFF, DOORBELL & ~0xFFF, 0x1000, Prot.WRITE | Prot.MMIO)
        guest = IpaView(mem, s2)
        s1 = IoPgtable(guest, TableAllocator(guest, GUEST_RAM, 0x20_0000), fmt="s1", ias=48,
                       oas=48)
        self.iovas = []
        # One page per vector (a walk costs 4 reads per stage wherever it goes).
        for k in range(vectors):
            iova = 0x0000_5A5A_4000_0000 + k * 0x1000
            s1.map(iova, DOORBELL & ~0xFFF, 0x1000, Prot.WRITE | Prot.MMIO)
            self.iovas.append(iova)
        self.mem = mem
        self.nested = XlateConfig(s1.stage1_config(), s2.stage2_config(), asid=1, vmid=1)
        # Stage 1 only and stage 2 only, 4 levels each, on the same memory.
        s1h = IoPgtable(mem, TableAllocator(mem, 0x9080_0000, 0x40_0000), fmt="s1", ias=48)
        s2h = IoPgtable(mem, TableAllocator(mem, 0x90C0_0000, 0x40_0000), fmt="s2", ias=48)
        for iova in self.iovas:
            s1h.map(iova, HOST_RAM, 0x1000, RW)
            s2h.map(iova, HOST_RAM, 0x1000, RW)
        self.s1 = XlateConfig(s1=s1h.stage1_config(), asid=2, vmid=1)
        self.s2 = XlateConfig(s2=s2h.stage2_config(), vmid=2)
        self.table = b.MsiTable()
        for k, iova in enumerate(self.iovas):
            self.table.set(1, k, iova, 12)
        n = vectors
        self.devs = array.array("I", [1] * n)
        self.idx = array.array("I", range(n))
        self.iova_buf = array.array("Q", [i | 0x40 for i in self.iovas])
        self.out_addr, self.out_pa, self.status = zeros("Q", n), zeros("Q", n), zeros("i", n)
        self.tlb = b.Iotlb(2 * n)


def bench(quick: bool) -> dict[str, Any]:
    n_c = 4096
    n_py = 256 if quick else 512
    rep_c = 5 if quick else 20
    rep_py = 2 if quick else 3
    mc, mp = Machine(C, n_c), Machine(PY, n_py)
    rows: list[dict[str, Any]] = []

    def row(name: str, c_ns: float, py_ns: float | None, note: str = "") -> None:
        rows.append({"name": name, "c_ns": c_ns, "python_ns": py_ns,
                     "ratio": (py_ns / c_ns) if py_ns else None, "note": note})

    def both(name, make, note=""):
        c_fn, c_items = make(mc)
        p_fn, p_items = make(mp)
        row(name, best_ns(c_fn, c_items, rep_c), best_ns(p_fn, p_items, rep_py), note)

    # compose: one call per vector through the Python API, and batched.
    def compose_calls(m):
        t, n = m.table, len(m.iovas)
        return (lambda: [t.compose(1, k, DOORBELL) for k in range(n)]), n

    def compose_batch(m):
        return (lambda: m.b.compose_batch(m.table, DOORBELL, m.devs, m.idx, m.out_addr,
                                          m.status)), len(m.iovas)

    both("compose, one call per vector", compose_calls)
    both("compose, batch", compose_batch)

    # translate with IOTLB hits.
    def warm(m):
        m.b.translate_batch(m.mem, m.nested, m.iova_buf, m.out_pa, m.status, tlb=m.tlb,
                            write=True)

    def tr_hit_calls(m):
        warm(m)
        tr, mem, cfg, tlb = m.b.translate, m.mem, m.nested, m.tlb
        return (lambda: [tr(mem, i, True, cfg=cfg, tlb=tlb) for i in m.iova_buf]), len(m.iovas)

    def tr_hit_batch(m):
        warm(m)
        return (lambda: m.b.translate_batch(m.mem, m.nested, m.iova_buf, m.out_pa, m.status,
                                            tlb=m.tlb, write=True)), len(m.iovas)

    both("nested translate, IOTLB hit, one call per vector", tr_hit_calls)
    both("nested translate, IOTLB hit, batch", tr_hit_batch)

    # Walk misses: no IOTLB, every translation walks the tables.
    for label, attr in (("stage 1", "s1"), ("stage 2", "s2"), ("nested 4+4", "nested")):
        def walk_batch(m, attr=attr):
            return (lambda: m.b.translate_batch(m.mem, getattr(m, attr), m.iova_buf, m.out_pa,
                                                m.status, write=True)), len(m.iovas)
        both(f"walk miss, {label} levels (4K), batch", walk_batch)
    assert all(s == 0 for s in mc.status), "benchmark walks must succeed"

    # The hot path of the design: compose + nested translate, IOTLB hits.
    def msi_hits(m):
        warm(m)
        return (lambda: m.b.msi_batch(m.table, m.mem, m.nested, DOORBELL, m.devs, m.idx,
                                      m.out_addr, m.out_pa, m.status, tlb=m.tlb)), len(m.iovas)

    def msi_calls(m):
        warm(m)
        t, tr, mem, cfg, tlb = m.table, m.b.translate, m.mem, m.nested, m.tlb
        n = len(m.iovas)
        return (lambda: [tr(mem, t.compose(1, k, DOORBELL), True, cfg=cfg, tlb=tlb)
                         for k in range(n)]), n

    both("MSI: compose + nested translate, IOTLB hit, batch", msi_hits)
    both("MSI: compose + nested translate, IOTLB hit, one call each", msi_calls)
    assert all(pa == DOORBELL for pa in mc.out_pa)

    # MSI table lookup cost as the table grows (C, batch compose of random keys).
    lookup = {}
    rnd = random.Random(1)
    for size in (10**3, 10**6):
        t = C.MsiTable()
        t.reserve(size)
        devs_all = [k // 2048 for k in range(size)]
        idx_all = [k % 2048 for k in range(size)]
        for d, i in zip(devs_all, idx_all, strict=True):
            t.set(d, i, 0xFFFF_F000, 12)
        n = 1 << 16
        picks = [rnd.randrange(size) for _ in range(n)]
        devs = array.array("I", [devs_all[p] for p in picks])
        idx = array.array("I", [idx_all[p] for p in picks])
        oa, st = zeros("Q", n), zeros("i", n)
        lookup[size] = best_ns(
            lambda t=t, devs=devs, idx=idx, oa=oa, st=st: C.compose_batch(t, DOORBELL, devs, idx,
                                                                         oa, st), n, rep_c)
        assert all(s == 0 for s in st)
    row("MSI table lookup+compose, 10^3 entries, random, batch", lookup[10**3], None)
    row("MSI table lookup+compose, 10^6 entries, random, batch", lookup[10**6], None)

    by = {r["name"]: r for r in rows}
    batch_rows = [r for r in rows if "batch" in r["name"] and r["ratio"]]
    targets = {
        "msi_batch_nested_hit_ns<=100":
            by["MSI: compose + nested translate, IOTLB hit, batch"]["c_ns"] <= 100,
        "nested_walk_miss_ns<=1000":
            by["walk miss, nested 4+4 levels (4K), batch"]["c_ns"] <= 1000,
        "c_vs_python_on_batch>=50x": min(r["ratio"] for r in batch_rows) >= 50,
        "lookup_1e6_within_1.5x_of_1e3": lookup[10**6] <= 1.5 * lookup[10**3],
    }
    return {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "rows": rows,
        "lookup_ratio_1e6_vs_1e3": lookup[10**6] / lookup[10**3],
        "min_batch_ratio": min(r["ratio"] for r in batch_rows),
        "targets": targets,
    }


def render(result: dict[str, Any]) -> str:
    lines = ["| benchmark | C ns/item | Python ns/item | Python/C |", "|---|---:|---:|---:|"]
    for r in result["rows"]:
        py = f"{r['python_ns']:.0f}" if r["python_ns"] else "-"
        ratio = f"{r['ratio']:.0f}x" if r["ratio"] else "-"
        lines.append(f"| {r['name']} | {r['c_ns']:.1f} | {py} | {ratio} |")
    lines.append("")
    lines.append(f"MSI table with 10^6 entries vs 10^3: "
                 f"{result['lookup_ratio_1e6_vs_1e3']:.2f}x per lookup")
    lines.append(f"smallest C/Python speed-up on batch work: {result['min_batch_ratio']:.0f}x")
    for name, ok in result["targets"].items():
        lines.append(f"target {name}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def run_command(doc: str, default_json: str, bench_fn: Callable[[bool], dict[str, Any]],
                render_fn: Callable[[dict[str, Any]], str], argv: list[str] | None) -> int:
    """The command line every benchmark here shares: run, print the table, write JSON."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--json", default=default_json, help="where to write JSON")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args(argv)
    result = bench_fn(args.quick)
    print(render_fn(result))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n(written to {args.json})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(__doc__, "bench/results-core.json", bench, render, argv)


if __name__ == "__main__":
    sys.exit(main())
