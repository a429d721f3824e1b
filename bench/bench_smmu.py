"""Benchmarks of the SMMUv3 model against the bare core, C and Python, in one run.

    python bench/bench_smmu.py [--quick] [--json bench/results-smmu.json]
                               [--compare previous.json]

The SMMU is brought up from reset by the test suite's minimal driver (through its registers
and in-memory queues), with 4096 pages (512 for the Python twin) mapped nested, 4-level
stage 1 over 4-level stage 2, on one stream.  Every loop of a backend is timed in interleaved
rounds (benchlib): median, min..max and stdev of ns per item over the rounds.  Per-call rows
are against an empty cffi call with four integer arguments (``nop4_floor``), batch rows
against a bare hash probe in C (``probe_floor``), both measured in the same rounds; the SMMU
rows also give their ratio to the core row they wrap ("x wrapped"), and the rows with faults
their ratio to the same batch with none ("x no-fault").

Fault rows: 0, 1 or 64 of the 4096 items (spread evenly) are unmapped IOVAs (a stage-1
translation fault at level 0 of the walk); the SMMU records an event for each (CD.R = 1).
Every SMMU batch loop, with faults or not, then empties the event queue (one register
write), so that no loop runs into a full queue.  Targets (issue 11): the SMMU's per-call hit
path at most 1.3x the core translate it wraps; a batch with one fault in 4096 close to the
one with none (within 1.2x), for the core and the SMMU alike.
"""

from __future__ import annotations

import array
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Report, interleaved, main, nop4_floor, probe_floor  # noqa: E402

from pymsi import core  # noqa: E402
from pymsi.core import IoPgtable, Prot, TableAllocator  # noqa: E402
from pymsi.hw.smmuv3 import SMMUv3  # noqa: E402

from smmu_driver import EVENTQ_CONS, EVENTQ_PROD, Driver, cd_words, ste_words  # noqa: E402

RAM, POOL, PT = 0x4000_0000, 0x4800_0000, 0x4C00_0000
SID = 0x8
RW = Prot.READ | Prot.WRITE
UNMAPPED = 0x7A5A_0000_0000          # no stage-1 level-0 entry covers it
FAULTS = (1, 64)


def zeros(code: str, n: int) -> array.array:
    return array.array(code, bytes(array.array(code).itemsize * n))


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
        drv.init(evtq_log2=7)
        self.drv = drv
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

    def with_faults(self, f: int) -> array.array:
        """The IOVAs with ``f`` of them (spread evenly) replaced by unmapped ones."""
        iv = array.array("Q", self.iovas)
        n = len(iv)
        for j in range(f):
            iv[(j * n) // f + n // (2 * f)] = UNMAPPED + j * 0x1000
        return iv

    def drain_events(self) -> None:
        s = self.smmu
        s.mmio_write(EVENTQ_CONS, s.mmio_read(EVENTQ_PROD))


def loops(backend: str, n: int) -> tuple[dict[str, tuple[Any, int]], dict[str, str]]:
    """The timed loops of one backend (name -> (fn, items)), and each row's floor."""
    hit = Rig(backend, n, 2 * n)
    miss = Rig(backend, n, 1)
    b, smmu, mem, cfg, tlb = hit.b, hit.smmu, hit.mem, hit.cfg, hit.core_tlb
    iovas, sids, out, status = hit.iovas, hit.sids, hit.out, hit.status
    il = list(iovas)
    b.translate_batch(mem, cfg, iovas, out, status, tlb=tlb, write=True)  # warm both IOTLBs
    smmu.translate_batch(sids, iovas, out, status, write=True)
    assert all(s == 0 for s in status)
    tr, st, mt = b.translate, smmu.translate, miss.smmu.translate
    ml = list(miss.iovas)
    mt(SID, ml[0], True)
    p = f"{backend}: "
    out_l: dict[str, tuple[Any, int]] = {}
    floors: dict[str, str] = {}
    if backend == "c":
        out_l["floor: empty cffi call, 4 int args"] = (nop4_floor(n), n)
        out_l["floor: bare hash probe, batch"] = (probe_floor(n), n)
    call_floor = "floor: empty cffi call, 4 int args"
    batch_floor = "floor: bare hash probe, batch"
    out_l[p + "core translate, nested, IOTLB hit, per call"] = (
        lambda: [tr(mem, i, True, cfg=cfg, tlb=tlb) for i in il], n)
    out_l[p + "SMMU translate, nested, config+IOTLB hit, per call"] = (
        lambda: [st(SID, i, True) for i in il], n)
    out_l[p + "SMMU translate, nested 4+4 walk (IOTLB miss), per call"] = (
        lambda: [mt(SID, i, True) for i in ml], n)
    for name in list(out_l)[-3:]:
        floors[name] = call_floor
    for f in (0, *FAULTS):
        iv = hit.with_faults(f) if f else iovas

        def core_b(iv: Any = iv) -> None:
            b.translate_batch(mem, cfg, iv, out, status, tlb=tlb, write=True)

        def smmu_b(iv: Any = iv) -> None:
            smmu.translate_batch(sids, iv, out, status, write=True)
            hit.drain_events()

        tag = "IOTLB hit" if not f else f"IOTLB hit, {f} fault{'s' if f > 1 else ''} in {n}"
        out_l[p + f"core translate_batch, nested, {tag}"] = (core_b, n)
        out_l[p + f"SMMU translate_batch, nested, config+{tag}"] = (smmu_b, n)
        floors[p + f"core translate_batch, nested, {tag}"] = batch_floor
        floors[p + f"SMMU translate_batch, nested, config+{tag}"] = batch_floor
    out_l[p + "SMMU translate_batch, nested 4+4 walk (IOTLB miss)"] = (
        lambda: miss.smmu.translate_batch(miss.sids, miss.iovas, miss.out, miss.status,
                                          write=True), n)
    floors[p + "SMMU translate_batch, nested 4+4 walk (IOTLB miss)"] = batch_floor
    return out_l, floors


def _ratio(rep: Report, a: str, b: str) -> float:
    """Median over rounds of row a / row b (same rounds)."""
    return statistics.median(x / y for x, y in zip(rep[a]["samples"], rep[b]["samples"],
                                                   strict=True))


def bench(quick: bool) -> Report:
    rep = Report("SMMUv3 model vs the bare core (per item)", quick=quick)
    n_c, n_py = 4096, 512
    rounds = 7 if quick else 21
    lc, fc = loops("c", n_c)
    times = interleaved(lc, rounds, repeat=2)
    for name, ns in times.items():
        fl = fc.get(name)
        rep.add(name, ns, floor=fl, floor_ns=times[fl] if fl else None)
    lp, fp = loops("python", n_py)
    lp.update({k: v for k, v in lc.items() if k.startswith("floor")})
    times_py = interleaved(lp, 3 if quick else 7, repeat=3)
    for name, ns in times_py.items():
        if not name.startswith("floor"):
            fl = fp[name]
            rep.add(name, ns, floor=fl, floor_ns=times_py[fl])
    for be, nn in (("c", n_c), ("python", n_py)):
        p = f"{be}: "
        rep.value(p + "x wrapped: SMMU translate / core translate, per call", _ratio(
            rep, p + "SMMU translate, nested, config+IOTLB hit, per call",
            p + "core translate, nested, IOTLB hit, per call"), "target <= 1.3 (C)")
        rep.value(p + "x wrapped: SMMU translate_batch / core translate_batch, hit", _ratio(
            rep, p + "SMMU translate_batch, nested, config+IOTLB hit",
            p + "core translate_batch, nested, IOTLB hit"))
        for who, pre in (("core", "core translate_batch, nested, "),
                         ("SMMU", "SMMU translate_batch, nested, config+")):
            for f in FAULTS:
                tag = f"IOTLB hit, {f} fault{'s' if f > 1 else ''} in {nn}"
                rep.value(p + f"x no-fault: {who} batch, {f} fault{'s' if f > 1 else ''} in "
                          f"{nn}", _ratio(rep, p + pre + tag, p + pre + "IOTLB hit"),
                          "target <= 1.2" if f == 1 else "")
    return rep


if __name__ == "__main__":
    sys.exit(main(__doc__, "bench/results-smmu.json", bench))
