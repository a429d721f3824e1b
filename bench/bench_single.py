"""Single-call costs of the C core and the SMMU model, against their floor, in one run.

    python bench/bench_single.py [--quick] [--json bench/results-single.json]
                                 [--compare previous.json]

An emulator harness calls pymsi one transaction at a time, so what matters is the cost of
one call.  The floor is an empty cffi call with four integer arguments (``pymsi_nop4``,
benchlib's ``nop4_floor``).  Every row is a loop of single calls over 256 mapped pages
(nested, 4-level stage 1 over 4-level stage 2), timed in interleaved rounds (benchlib) so
that the floor and the rows see the same machine: median, min..max and stdev of ns per call
over the rounds, and "x floor" (the median over rounds of row / floor in that round).  The
SMMU row is also given against the core translate it wraps ("x wrapped", the same median of
per-round ratios).  Targets (issue 11): a single nested walk or translate at most 8x the
floor; the SMMU's per-call hit path at most 1.3x the core translate it wraps.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_smmu import SID, Rig  # noqa: E402
from benchlib import Report, interleaved, main, nop4_floor  # noqa: E402

N = 256
FLOOR = "floor: empty cffi call, 4 int args"
WRAPPED = "core.translate(..., cfg=), IOTLB hit"
SMMU = "SMMUv3.translate, config + IOTLB hit"


def loops() -> dict[str, tuple[Any, int]]:
    rig = Rig("c", N, 2 * N)
    b, mem, cfg, tlb, smmu = rig.b, rig.mem, rig.cfg, rig.core_tlb, rig.smmu
    s1, s2 = cfg.s1, cfg.s2
    iovas = list(rig.iovas)
    for i in iovas:                         # warm the IOTLBs and the SMMU's config cache
        b.translate(mem, i, True, cfg=cfg, tlb=tlb)
        smmu.translate(SID, i, True)
    walk, tr, st = b.walk, b.translate, smmu.translate
    return {
        FLOOR: (nop4_floor(N), N),
        "core.walk(mem, iova, s1=, s2=), nested 4+4":
            (lambda: [walk(mem, i, True, s1=s1, s2=s2) for i in iovas], N),
        "core.walk(mem, iova, cfg=), nested 4+4":
            (lambda: [walk(mem, i, True, cfg=cfg) for i in iovas], N),
        "core.translate(..., s1=, s2=), IOTLB hit":
            (lambda: [tr(mem, i, True, tlb=tlb, s1=s1, s2=s2) for i in iovas], N),
        WRAPPED: (lambda: [tr(mem, i, True, cfg=cfg, tlb=tlb) for i in iovas], N),
        SMMU: (lambda: [st(SID, i, True) for i in iovas], N),
    }


def bench(quick: bool) -> Report:
    rep = Report("single calls, C backend (ns per call)", calls_per_round=N)
    times = interleaved(loops(), 7 if quick else 21, repeat=3)
    for name, ns in times.items():
        rep.add(name, ns, floor=FLOOR, floor_ns=times[FLOOR])
    rep.value("x wrapped: SMMUv3.translate / core.translate(cfg=)", statistics.median(
        a / c for a, c in zip(times[SMMU], times[WRAPPED], strict=True)), "target <= 1.3")
    return rep


if __name__ == "__main__":
    sys.exit(main(__doc__, None, bench))
