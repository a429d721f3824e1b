"""Benchmarks of the SMMUv3 model against the bare core, C and Python, in one run.

    python bench/bench_smmu.py [--json bench/results-smmu.json] [--quick]

The SMMU is brought up from reset by the test suite's minimal driver (through
its registers and in-memory queues), with 4096 nested streams' worth of pages
on one stream.  Figures are the best of several repetitions, in ns per
translation.  The target: on the IOTLB-hit path the SMMU model costs at most
2x the bare core translate (per call, and per item in batch).
"""

from __future__ import annotations

import array
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import best_ns, run_command, zeros  # noqa: E402

from pymsi import core  # noqa: E402
from pymsi.core import IoPgtable, Prot, TableAllocator  # noqa: E402
from pymsi.hw.smmuv3 import SMMUv3  # noqa: E402

from smmu_driver import Driver, cd_words, ste_words  # noqa: E402

RAM, POOL, PT = 0x4000_0000, 0x4800_0000, 0x4C00_0000
SID = 0x8
RW = Prot.READ | Prot.WRITE


class Rig:
    """An SMMU in nested mode with one stream and ``n`` mapped pages."""

    def __init__(self, backend: str, n: int, tlb_capacity: int) -> None:
        b = core.backend(backend)
        self.b = b
        mem = b.Memory()
        mem.add_ram(RAM, 0x1000_0000)
        self.mem = mem
        self.smmu = SMMUv3(mem, stages="nested", backend=backend, tlb_capacity=tlb_capacity)
        drv = Driver(self.smmu, mem, POOL, 0x100_0000)
        drv.init()
        alloc = TableAllocator(mem, PT, 0x400_0000)
        s2 = IoPgtable(mem, alloc, fmt="s2", ias=48)
        s2.map(RAM, RAM, 0x1000_0000, RW)              # guest RAM, tables readable
        s1 = IoPgtable(mem, alloc, fmt="s1", ias=48, oas=48)
        self.iovas = array.array("Q", [0x5A5A_4000_0000 + k * 0x1000 + 0x40 for k in range(n)])
        for k in range(n):
            s1.map(0x5A5A_4000_0000 + k * 0x1000, RAM + k * 0x1000, 0x1000, RW)
        cd = drv.write_cd(cd_words(s1.stage1_config(), asid=1))
        drv.write_ste(SID, ste_words(7, ctxptr=cd, s2=s2.stage2_config(), vmid=1))
        self.cfg = core.XlateConfig(s1.stage1_config(), s2.stage2_config(), asid=1, vmid=1)
        self.sids = array.array("I", [SID] * n)
        self.out, self.status = zeros("Q", n), zeros("i", n)
        self.core_tlb = b.Iotlb(tlb_capacity)


def measure(backend: str, n: int, r: int) -> list[dict[str, Any]]:
    """The rows for one backend: ``n`` pages, best of ``r`` runs."""
    hit = Rig(backend, n, 2 * n)
    miss = Rig(backend, n, 1)
    b, smmu, mem, cfg = hit.b, hit.smmu, hit.mem, hit.cfg
    iovas = list(hit.iovas)
    # Warm both IOTLBs (and the SMMU's config cache).
    b.translate_batch(mem, cfg, hit.iovas, hit.out, hit.status, tlb=hit.core_tlb, write=True)
    smmu.translate_batch(hit.sids, hit.iovas, hit.out, hit.status, write=True)
    assert all(s == 0 for s in hit.status)
    tr, tlb = b.translate, hit.core_tlb
    t_core = best_ns(lambda: [tr(mem, i, True, cfg=cfg, tlb=tlb) for i in iovas], n, r)
    st = smmu.translate
    t_smmu = best_ns(lambda: [st(SID, i, True) for i in iovas], n, r)
    t_core_b = best_ns(lambda: b.translate_batch(mem, cfg, hit.iovas, hit.out, hit.status,
                                                 tlb=tlb, write=True), n, r)
    t_smmu_b = best_ns(lambda: smmu.translate_batch(hit.sids, hit.iovas, hit.out,
                                                    hit.status, write=True), n, r)
    mt = miss.smmu.translate
    miss_iovas = list(miss.iovas)
    mt(SID, miss_iovas[0], True)
    t_miss = best_ns(lambda: [mt(SID, i, True) for i in miss_iovas], n, r)
    t_miss_b = best_ns(lambda: miss.smmu.translate_batch(miss.sids, miss.iovas, miss.out,
                                                         miss.status, write=True), n, r)
    return [
        {"backend": backend, "name": "core translate, nested, IOTLB hit, per call",
         "ns": t_core},
        {"backend": backend, "name": "SMMU translate, nested, config+IOTLB hit, per call",
         "ns": t_smmu, "vs_core": t_smmu / t_core},
        {"backend": backend, "name": "core translate_batch, nested, IOTLB hit",
         "ns": t_core_b},
        {"backend": backend, "name": "SMMU translate_batch, nested, config+IOTLB hit",
         "ns": t_smmu_b, "vs_core": t_smmu_b / t_core_b},
        {"backend": backend, "name": "SMMU translate, nested 4+4 walk (IOTLB miss), per call",
         "ns": t_miss},
        {"backend": backend, "name": "SMMU translate_batch, nested 4+4 walk (IOTLB miss)",
         "ns": t_miss_b},
    ]


def bench(quick: bool) -> dict[str, Any]:
    rep = 5 if quick else 20
    rows = measure("c", 4096, rep) + measure("python", 512, max(2, rep // 5))
    by = {(r["backend"], r["name"]): r for r in rows}
    ratios = [r["vs_core"] for r in rows if r["backend"] == "c" and "vs_core" in r]
    return {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "rows": rows,
        "targets": {"smmu_hit_path_within_2x_of_core": max(ratios) <= 2.0},
        "c_vs_python_batch_hit": by[("python", "SMMU translate_batch, nested, config+IOTLB hit")]
        ["ns"] / by[("c", "SMMU translate_batch, nested, config+IOTLB hit")]["ns"],
    }


def render(result: dict[str, Any]) -> str:
    lines = ["| backend | benchmark | ns/item | SMMU/core |", "|---|---|---:|---:|"]
    for r in result["rows"]:
        ratio = f"{r['vs_core']:.2f}x" if "vs_core" in r else "-"
        lines.append(f"| {r['backend']} | {r['name']} | {r['ns']:.1f} | {ratio} |")
    lines.append("")
    lines.append(f"SMMU batch, IOTLB hit: C backend {result['c_vs_python_batch_hit']:.0f}x "
                 "the Python twin")
    for name, ok in result["targets"].items():
        lines.append(f"target {name}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command(__doc__, "bench/results-smmu.json", bench, render, argv)


if __name__ == "__main__":
    sys.exit(main())
