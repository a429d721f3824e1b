"""Benchmarks of the translation core: C against its Python twin, in one run.

    python bench/bench_core.py [--quick] [--json bench/results-core.json]
                               [--compare previous.json]

Every loop (C and Python alike, and the two floors) is timed in the same interleaved
rounds, so a slow moment of the shared machine hits them alike (a round's sample of a loop
is the better of two back-to-back runs, so that it is not charged for the cache another
loop just emptied); each row is ns per item, median and min..max / stdev over the rounds,
and its "x floor": the median over rounds of
row / floor, against an empty cffi call with four integer arguments (``nop4_floor``) for
one-call-per-item rows and against a bare hash probe in batch (``probe_floor``) for batch
rows.  The Python/C ratios are value rows.  Targets are reported (1 = met), never
asserted: this is a benchmark, not a test.

``zeros`` is shared with the other benchmarks here.
"""

from __future__ import annotations

import array
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from benchlib import Loop, Report, interleaved, nop4_floor, probe_floor  # noqa: E402

from pymsi import core  # noqa: E402
from pymsi.core import IoPgtable, IpaView, Prot, TableAllocator, XlateConfig  # noqa: E402

C = core.backend("c")
PY = core.backend("python")
DOORBELL = 0x0809_0040
HOST_RAM, GUEST_RAM = 0x8000_0000, 0x4000_0000
RW = Prot.READ | Prot.WRITE
NOP4 = "floor: empty cffi call (nop4_floor)"
PROBE = "floor: bare hash probe, batch (probe_floor)"
PROBE_LOOKUP = "floor: bare hash probe, batch (probe_floor), lookup rounds"


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


def bench(quick: bool) -> Report:
    """C and its Python twin on the same work, every loop interleaved with the floors."""
    n_c = 4096
    n_py = 256 if quick else 512
    rounds = 5 if quick else 20
    mc, mp = Machine(C, n_c), Machine(PY, n_py)
    rep = Report("bench_core: the translation core, C against its Python twin",
                 vectors_c=n_c, vectors_python=n_py, rounds=rounds)

    # compose: one call per vector through the Python API, and batched.
    def compose_calls(m):
        t, n = m.table, len(m.iovas)
        return (lambda: [t.compose(1, k, DOORBELL) for k in range(n)]), n

    def compose_batch(m):
        return (lambda: m.b.compose_batch(m.table, DOORBELL, m.devs, m.idx, m.out_addr,
                                          m.status)), len(m.iovas)

    # translate with IOTLB hits (every IOTLB warmed once below; nothing evicts).
    def tr_hit_calls(m):
        tr, mem, cfg, tlb = m.b.translate, m.mem, m.nested, m.tlb
        return (lambda: [tr(mem, i, True, cfg=cfg, tlb=tlb) for i in m.iova_buf]), len(m.iovas)

    def tr_hit_batch(m):
        return (lambda: m.b.translate_batch(m.mem, m.nested, m.iova_buf, m.out_pa, m.status,
                                            tlb=m.tlb, write=True)), len(m.iovas)

    def walk_batch(attr):
        def make(m):
            return (lambda: m.b.translate_batch(m.mem, getattr(m, attr), m.iova_buf, m.out_pa,
                                                m.status, write=True)), len(m.iovas)
        return make

    # The hot path of the design: compose + nested translate, IOTLB hits.
    def msi_hits(m):
        return (lambda: m.b.msi_batch(m.table, m.mem, m.nested, DOORBELL, m.devs, m.idx,
                                      m.out_addr, m.out_pa, m.status, tlb=m.tlb)), len(m.iovas)

    def msi_calls(m):
        t, tr, mem, cfg, tlb = m.table, m.b.translate, m.mem, m.nested, m.tlb
        n = len(m.iovas)
        return (lambda: [tr(mem, t.compose(1, k, DOORBELL), True, cfg=cfg, tlb=tlb)
                         for k in range(n)]), n

    # (name, make, per call?): per-call rows stand against nop4_floor, batch rows against
    # probe_floor.
    cases = [
        ("compose, one call per vector", compose_calls, True),
        ("compose, batch", compose_batch, False),
        ("nested translate, IOTLB hit, one call per vector", tr_hit_calls, True),
        ("nested translate, IOTLB hit, batch", tr_hit_batch, False),
        ("walk miss, stage 1 levels (4K), batch", walk_batch("s1"), False),
        ("walk miss, stage 2 levels (4K), batch", walk_batch("s2"), False),
        ("walk miss, nested 4+4 levels (4K), batch", walk_batch("nested"), False),
        ("MSI: compose + nested translate, IOTLB hit, batch", msi_hits, False),
        ("MSI: compose + nested translate, IOTLB hit, one call each", msi_calls, True),
    ]
    for m in (mc, mp):
        m.b.translate_batch(m.mem, m.nested, m.iova_buf, m.out_pa, m.status, tlb=m.tlb,
                            write=True)
    loops: dict[str, tuple[Loop, int]] = {
        NOP4: (nop4_floor(n_c), n_c), PROBE: (probe_floor(n_c), n_c)}
    for name, make, _ in cases:
        loops[f"C: {name}"] = make(mc)
        loops[f"Python: {name}"] = make(mp)
    got = interleaved(loops, rounds, repeat=2)
    assert all(s == 0 for s in mc.status), "benchmark walks must succeed"
    assert all(pa == DOORBELL for pa in mc.out_pa)
    rep.add(NOP4, got[NOP4], note="empty cffi call, 4 int args")
    rep.add(PROBE, got[PROBE], note="compose_batch over 1024 entries, per item")
    for name, _, per_call in cases:
        floor = NOP4 if per_call else PROBE
        rep.add(f"C: {name}", got[f"C: {name}"], floor=floor)
        rep.add(f"Python: {name}", got[f"Python: {name}"], floor=floor)
    for name, _, _ in cases:
        rep.value(f"Python/C: {name}", ratio(got[f"Python: {name}"], got[f"C: {name}"]),
                  "median over rounds")

    # MSI table lookup cost as the table grows (C, batch compose of random keys).
    rnd = random.Random(1)
    n = 1 << 16
    lookup_loops: dict[str, tuple[Loop, int]] = {PROBE: (probe_floor(n), n)}  # as many items
    for size, label in ((10**3, "10^3"), (10**6, "10^6")):
        t = C.MsiTable()
        t.reserve(size)
        devs_all = [k // 2048 for k in range(size)]
        idx_all = [k % 2048 for k in range(size)]
        for d, i in zip(devs_all, idx_all, strict=True):
            t.set(d, i, 0xFFFF_F000, 12)
        picks = [rnd.randrange(size) for _ in range(n)]
        devs = array.array("I", [devs_all[p] for p in picks])
        idx = array.array("I", [idx_all[p] for p in picks])
        oa, st = zeros("Q", n), zeros("i", n)
        lookup_loops[f"C: MSI table lookup+compose, {label} entries, random, batch"] = (
            lambda t=t, devs=devs, idx=idx, oa=oa, st=st:
            C.compose_batch(t, DOORBELL, devs, idx, oa, st), n)
        C.compose_batch(t, DOORBELL, devs, idx, oa, st)
        assert all(s == 0 for s in st)
    lk = interleaved(lookup_loops, rounds, repeat=2)
    rep.add(PROBE_LOOKUP, lk.pop(PROBE),
            note="the probe floor again, 65536 items a call, in the lookup rounds")
    for name, xs in lk.items():
        rep.add(name, xs, floor=PROBE_LOOKUP)
    small, large = lk.values()
    lookup_ratio = ratio(large, small)
    rep.value("MSI table 10^6 / 10^3 entries, per lookup", lookup_ratio, "target <= 1.5")

    # Targets, reported (1 = met), never asserted.
    med = {r["name"]: r["median_ns"] for r in rep.rows if "median_ns" in r}
    min_batch = min(ratio(got[f"Python: {n}"], got[f"C: {n}"])
                    for n, _, per_call in cases if not per_call)
    targets = {
        "MSI batch, nested, IOTLB hit <= 100 ns":
            med["C: MSI: compose + nested translate, IOTLB hit, batch"] <= 100,
        "nested 4+4 walk miss <= 1000 ns": med["C: walk miss, nested 4+4 levels (4K), batch"]
            <= 1000,
        f"C >= 50x Python on batch work (smallest {min_batch:.0f}x)": min_batch >= 50,
        "10^6-entry lookup within 1.5x of 10^3": lookup_ratio <= 1.5,
    }
    for name, ok in targets.items():
        rep.value(f"target: {name}", float(ok), "met" if ok else "NOT met")
    return rep


def ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a / b (rows measured in the same rounds)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    return benchlib.main(__doc__, "bench/results-core.json", bench, argv)


if __name__ == "__main__":
    sys.exit(main())
