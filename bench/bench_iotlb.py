"""IOTLB and MSI-table scaling benchmarks (C core), each next to a floor from the same run.

    python bench/bench_iotlb.py [--quick] [--json bench/results-iotlb.json]
                                [--compare previous.json]

1. Invalidation at two IOTLB occupancies, 1k and 64k entries resident, each call removing
   the same entries at both: one page by IPA (TLBI_S2_IPA, stage 2 entries), one page by
   VA (TLBI_NH_VA, stage 1 entries), a 64-page IPA range, an ASID (TLBI_NH_ASID, 64
   entries) and a VMID (TLBI_S12_VMALL, 64 entries).  The ratio 64k / 1k should be ~1: the
   cost is in proportion to what is removed, not to what is cached.  Per call, Python call
   included, against an empty cffi call (``nop4_floor``).
2. An IOTLB hit in batch against a bare hash probe in batch (``probe_floor``); target
   hit / probe <= 3.
3. Working sets against the capacity (1024): the hit rate on cyclic and random working
   sets larger than the capacity (CLOCK), and the batch translate cost per item with
   random working sets of 1/2, 5/4 and 2x the capacity (misses walk), against the probe.
4. Batch compose per item with 10, 1000 and 10^6 vectors, against the probe.

Every figure is ns per item, median and min..max / stdev over interleaved rounds (in 2-4,
a round's sample is the better of two back-to-back runs, so that it is not charged for the
cache another loop just emptied; in 1, of two runs, the removed entries put back, untimed,
before each); "x floor" is the median over rounds of row / floor.  Reported, never
asserted.
"""

from __future__ import annotations

import array
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    Loop,
    Report,
    interleaved,
    main,
    nop4_floor,
    probe_floor,
    timed,
)

from pymsi import core  # noqa: E402
from pymsi.core import IoPgtable, Prot, TableAllocator, XlateConfig  # noqa: E402

C = core.backend("c")
DOORBELL = 0x0809_0040
RAM = 0x8000_0000
RW = Prot.READ | Prot.WRITE
BASE = 0x1_0000_0000
PAGES = 1 << 16
SMALL, LARGE = 1 << 10, 1 << 16
PER_TAG = 64                       # entries per ASID / VMID / IPA range removed by one call
NOP4 = "floor: empty cffi call (nop4_floor)"
PROBE = "floor: bare hash probe, batch (probe_floor)"


def zeros(code: str, n: int) -> array.array:
    return array.array(code, bytes(array.array(code).itemsize * n))


class Space:
    """A stage-1 and a stage-2 table, each with ``PAGES`` 4 KiB pages mapped one by one
    at ``BASE``, on one memory."""

    def __init__(self) -> None:
        mem = C.Memory()
        mem.add_ram(RAM, 0x0100_0000)
        mem.add_ram(0x9000_0000, 0x0400_0000)
        s2 = IoPgtable(mem, TableAllocator(mem, 0x9000_0000, 0x0200_0000), fmt="s2", ias=48)
        s1 = IoPgtable(mem, TableAllocator(mem, 0x9200_0000, 0x0200_0000), fmt="s1", ias=48)
        for k in range(PAGES):
            s2.map(BASE + k * 0x1000, RAM + (k % 4096) * 0x1000, 0x1000, RW)
            s1.map(BASE + k * 0x1000, RAM + (k % 4096) * 0x1000, 0x1000, RW)
        self.mem = mem
        self.s1, self.s2 = s1.stage1_config(), s2.stage2_config()
        self.cfg = XlateConfig(s2=self.s2, vmid=1)           # stage 2 only, VMID 1
        self.cfg_s1 = XlateConfig(s1=self.s1, asid=1, vmid=1)
        self.iovas = [BASE + k * 0x1000 for k in range(PAGES)]

    def run(self, tlb: Any, iovas: array.array, cfg: XlateConfig | None = None) -> int:
        n = len(iovas)
        st = zeros("i", n)
        C.translate_batch(self.mem, cfg or self.cfg, iovas, zeros("Q", n), st, tlb=tlb)
        assert not any(st)
        return n


Case = tuple[Callable[[], int], int, Callable[[], Any], int]   # (loop, calls, refill, removed)


def page_case(space: Space, resident: int, stage1: bool) -> Case:
    """One page per call, 64 calls spread over the resident pages."""
    cfg = space.cfg_s1 if stage1 else space.cfg
    tlb = C.Iotlb(LARGE)
    fill = array.array("Q", space.iovas[:resident])
    space.run(tlb, fill, cfg)
    assert len(tlb) == resident
    victims = space.iovas[:resident:resident // 64]
    back = array.array("Q", victims)

    def refill() -> None:
        space.run(tlb, back, cfg)

    if stage1:
        def drop() -> int:
            return sum(tlb.invalidate_va(1, v, 0x1000, asid=1) for v in victims)
    else:
        def drop() -> int:
            return sum(tlb.invalidate_ipa(1, v, 0x1000) for v in victims)
    return drop, len(victims), refill, 1


def range_case(space: Space, resident: int) -> Case:
    """A 64-page IPA range per call, 16 calls spread over the resident pages."""
    tlb = C.Iotlb(LARGE)
    space.run(tlb, array.array("Q", space.iovas[:resident]))
    assert len(tlb) == resident
    starts = space.iovas[:resident:resident // 16]
    back = array.array("Q", [s + k * 0x1000 for s in starts for k in range(PER_TAG)])

    def refill() -> None:
        space.run(tlb, back)

    def drop() -> int:
        return sum(tlb.invalidate_ipa(1, s, PER_TAG * 0x1000) for s in starts)
    return drop, len(starts), refill, PER_TAG


def tag_case(space: Space, resident: int, by: str) -> Case:
    """``resident / 64`` ASIDs (stage 1) or VMIDs (stage 2) of 64 pages each; one ASID or
    VMID per call, 16 calls spread over them."""
    tags = resident // PER_TAG
    if by == "asid":
        cfgs = [XlateConfig(s1=space.s1, asid=a + 1, vmid=1) for a in range(tags)]
    else:
        cfgs = [XlateConfig(s2=space.s2, vmid=v + 1) for v in range(tags)]
    tlb = C.Iotlb(LARGE)
    pages = array.array("Q", space.iovas[:PER_TAG])
    for cfg in cfgs:
        space.run(tlb, pages, cfg)
    assert len(tlb) == resident
    victims = list(range(0, tags, tags // 16))

    def refill() -> None:
        for t in victims:
            space.run(tlb, pages, cfgs[t])

    if by == "asid":
        def drop() -> int:
            return sum(tlb.invalidate_asid(t + 1, 1) for t in victims)
    else:
        def drop() -> int:
            return sum(tlb.invalidate_vmid(t + 1) for t in victims)
    return drop, len(victims), refill, PER_TAG


def invalidation(rep: Report, space: Space, rounds: int) -> None:
    cases: dict[str, Case] = {}
    kinds = [
        ("invalidate one page by IPA (invalidate_ipa)", lambda r: page_case(space, r, False)),
        ("invalidate one page by VA (invalidate_va, ASID)", lambda r: page_case(space, r, True)),
        (f"invalidate a {PER_TAG}-page IPA range (invalidate_ipa)",
         lambda r: range_case(space, r)),
        (f"invalidate an ASID ({PER_TAG} entries, invalidate_asid)",
         lambda r: tag_case(space, r, "asid")),
        (f"invalidate a VMID ({PER_TAG} entries, invalidate_vmid)",
         lambda r: tag_case(space, r, "vmid")),
    ]
    for label, make in kinds:
        for resident in (SMALL, LARGE):
            cases[f"{label}, {resident} resident"] = make(resident)
    floor = nop4_floor(1000)
    got: dict[str, list[float]] = {NOP4: []}
    for name, (drop, calls, refill, removed) in cases.items():
        got[name] = []
        refill()
        assert drop() == calls * removed, name         # each call removes what it should
    for _ in range(rounds):
        got[NOP4].append(timed(floor, 1000, repeat=2))
        for name, (drop, calls, refill, _removed) in cases.items():
            got[name].append(timed(drop, calls, setup=refill, repeat=2))
    rep.add(NOP4, got[NOP4], note="empty cffi call, 4 int args")
    for name, (_d, _c, _r, removed) in cases.items():
        rep.add(name, got[name], floor=NOP4,
                note=f"ns per call, removes {removed}")
    for label, _ in kinds:
        small, large = got[f"{label}, {SMALL} resident"], got[f"{label}, {LARGE} resident"]
        rep.value(f"{label}: 64k / 1k resident", ratio(large, small),
                  "target ~1 (in proportion to what is removed)")


def hits(rep: Report, space: Space, rounds: int) -> None:
    n = 4096
    tlb = C.Iotlb(1 << 13)
    seq = array.array("Q", [space.iovas[k % 1024] for k in range(n)])
    space.run(tlb, seq)
    out_pa, st = zeros("Q", n), zeros("i", n)
    hit = "IOTLB hit, stage 2, batch"
    got = interleaved({
        PROBE: (probe_floor(n), n),
        hit: (lambda: C.translate_batch(space.mem, space.cfg, seq, out_pa, st, tlb=tlb), n),
    }, rounds, repeat=2)
    assert not any(st)
    rep.add(PROBE, got[PROBE], note="compose_batch over 1024 entries, per item")
    rep.add(hit, got[hit], floor=PROBE, note="ns per item")
    rep.value("IOTLB hit / bare hash probe", ratio(got[hit], got[PROBE]), "target <= 3")


def working_sets(rep: Report, space: Space, rounds: int, rnd: random.Random) -> None:
    cap = 1024
    for ws in (cap * 5 // 4, cap * 2):
        for pattern in ("cyclic", "random"):
            tlb = C.Iotlb(cap)
            seq = ([space.iovas[k % ws] for k in range(ws * 20)] if pattern == "cyclic"
                   else [space.iovas[rnd.randrange(ws)] for _ in range(ws * 20)])
            space.run(tlb, array.array("Q", seq))
            rate = tlb.hits / (tlb.hits + tlb.misses)
            rep.value(f"IOTLB hit rate, {pattern}, working set {ws} / capacity {cap}", rate,
                      f"ideal random: {cap / ws:.3f}")
    n = 4096
    loops: dict[str, tuple[Loop, int]] = {PROBE: (probe_floor(n), n)}
    tlbs = {}
    for ws in (cap // 2, cap * 5 // 4, cap * 2):
        tlb = tlbs[ws] = C.Iotlb(cap)
        seq = array.array("Q", [space.iovas[rnd.randrange(ws)] for _ in range(n)])
        out_pa, st = zeros("Q", n), zeros("i", n)
        loops[f"translate, stage 2, batch, random working set {ws} / capacity {cap}"] = (
            lambda tlb=tlb, seq=seq, out_pa=out_pa, st=st:
            C.translate_batch(space.mem, space.cfg, seq, out_pa, st, tlb=tlb), n)
    got = interleaved(loops, rounds, repeat=2)
    rep.add(f"{PROBE}, working-set rounds", got.pop(PROBE), note="the probe floor again")
    for (name, xs), ws in zip(got.items(), tlbs, strict=True):
        t = tlbs[ws]
        rate = t.hits / (t.hits + t.misses)
        rep.add(name, xs, floor=f"{PROBE}, working-set rounds",
                note=f"ns per item, misses walk; hit rate {rate:.3f}")


def compose_scaling(rep: Report, rounds: int, rnd: random.Random) -> None:
    m = 1 << 16
    loops: dict[str, tuple[Loop, int]] = {PROBE: (probe_floor(m), m)}   # as many items
    checks = []
    for size in (10, 1000, 10**6):
        t = C.MsiTable()
        t.reserve(size)
        keys = [(k // 2048, k % 2048) for k in range(size)]
        for d, i in keys:
            t.set(d, i, 0xFFFF_F000, 12)
        picks = [keys[rnd.randrange(size)] for _ in range(m)]
        dv = array.array("I", [p[0] for p in picks])
        ix = array.array("I", [p[1] for p in picks])
        oa, st = zeros("Q", m), zeros("i", m)
        loops[f"compose, batch, {size} vectors"] = (
            lambda t=t, dv=dv, ix=ix, oa=oa, st=st: C.compose_batch(t, DOORBELL, dv, ix, oa, st),
            m)
        checks.append(st)
    got = interleaved(loops, rounds, repeat=2)
    assert all(not any(st) for st in checks)
    rep.add(f"{PROBE}, compose rounds", got.pop(PROBE),
            note="the probe floor again, 65536 items a call")
    for name, xs in got.items():
        rep.add(name, xs, floor=f"{PROBE}, compose rounds", note="ns per item, random keys")
    per = {size: got[f"compose, batch, {size} vectors"] for size in (10, 1000, 10**6)}
    rep.value("compose 10 / 1000 vectors", ratio(per[10], per[1000]), "target ~1 (flat)")
    rep.value("compose 10^6 / 1000 vectors", ratio(per[10**6], per[1000]),
              "larger than cache: memory bound")


def ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a / b (rows measured in the same rounds)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def bench(quick: bool) -> Report:
    rounds = 7 if quick else 21
    rep = Report("bench_iotlb: IOTLB invalidation, hits, working sets, MSI-table scaling (C)",
                 rounds=rounds)
    space = Space()
    rnd = random.Random(7)
    invalidation(rep, space, rounds)
    hits(rep, space, rounds)
    working_sets(rep, space, rounds, rnd)
    compose_scaling(rep, rounds, rnd)
    return rep


if __name__ == "__main__":
    sys.exit(main(__doc__, "bench/results-iotlb.json", bench))
