"""Properties: each IOTLB invalidation removes exactly what a scan of every entry would;
CLOCK eviction agrees between the C core and its Python twin."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RAM = 0x4000_0000
TABLES = 0x5000_0000
RW = 3
P = 0x1000
S1_KINDS, ALL_KINDS, S2_KINDS = 0b1010, 0b1110, 0b1100


@pytest.fixture(scope="module")
def env():
    from pymsi import core

    mem = core.Memory()
    mem.add_ram(RAM, 0x0400_0000)
    mem.add_ram(TABLES, 0x40_0000)
    alloc = core.TableAllocator(mem, TABLES, 0x40_0000)
    s1 = core.IoPgtable(mem, alloc, fmt="s1", ias=48, oas=48)
    s2 = core.IoPgtable(mem, alloc, fmt="s2", ias=40, oas=48)
    s2.map(RAM, RAM, 0x0400_0000, RW)               # 2 MiB blocks
    s2.map(TABLES, TABLES, 0x40_0000, RW)
    s1.map(0x20_0000, RAM + 0x20_0000, 0x20_0000, RW)   # a 2 MiB block
    for k in range(16):                              # 4 KiB pages, scattered IPAs
        s1.map(0x40_0000 + k * P, RAM + ((k * 7) % 16) * P, P, RW)
    return core, mem, s1, s2


def iovas():
    return st.one_of(st.integers(0, 15).map(lambda k: 0x40_0000 + k * P),
                     st.integers(0, 511).map(lambda k: 0x20_0000 + k * P),
                     st.integers(0, 15).map(lambda k: 0x40_0000 + k * P))


sizes = st.one_of(st.integers(1, 0x30_0000), st.integers(1, 24).map(lambda k: k * P),
                  st.integers(1, 3).map(lambda k: k << 21))
accesses = st.lists(st.tuples(st.sampled_from(["s1", "s2", "s12"]), st.integers(1, 2),
                              st.integers(1, 2), iovas()), max_size=40)
selectors = st.one_of(
    st.tuples(st.just("all")),
    st.tuples(st.just("vmid"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("asid"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("va"), st.integers(0, 2), iovas(), sizes,
              st.none() | st.integers(0, 2)),
    st.tuples(st.just("ipa"), st.integers(0, 2),
              st.integers(0, 0x7F).map(lambda k: RAM + k * P), sizes),
)


def reference(e, sel):
    """Does a scan-every-entry invalidation with selector ``sel`` remove entry ``e``?"""
    kind = 1 << e["kind"]
    last = lambda base: base + (1 << e["shift"]) - 1          # noqa: E731
    if sel[0] == "all":
        return True
    if e["vmid"] != sel[1]:
        return False
    if sel[0] == "vmid":
        return bool(kind & (S1_KINDS if sel[2] else ALL_KINDS))
    if sel[0] == "asid":
        return bool(kind & S1_KINDS) and not e["is_global"] and e["asid"] == sel[2]
    if sel[0] == "va":
        _, _, start, size, asid = sel
        if not kind & S1_KINDS:
            return False
        if asid is not None and not e["is_global"] and e["asid"] != asid:
            return False
        return not (last(e["iova"]) < start or e["iova"] > start + size - 1)
    _, _, start, size = sel
    return bool(kind & S2_KINDS) and not (last(e["ipa"]) < start or e["ipa"] > start + size - 1)


def apply(tlb, sel):
    if sel[0] == "all":
        return tlb.invalidate_all()
    if sel[0] == "vmid":
        return tlb.invalidate_vmid(sel[1], stage1_only=sel[2])
    if sel[0] == "asid":
        return tlb.invalidate_asid(sel[2], sel[1])
    if sel[0] == "va":
        return tlb.invalidate_va(sel[1], sel[2], sel[3], asid=sel[4])
    return tlb.invalidate_ipa(sel[1], sel[2], sel[3])


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(accesses, st.lists(selectors, min_size=1, max_size=4), st.integers(4, 64))
def test_invalidation_removes_exactly_what_a_scan_would(env, acc, sels, capacity):
    core, mem, s1, s2 = env
    tlb = core.Iotlb(capacity)
    for kind, asid, vmid, iova in acc:
        if kind == "s2":
            cfg = core.XlateConfig(s2=s2.stage2_config(), vmid=vmid)
            iova = RAM + (iova & 0x1F_FFFF)
        elif kind == "s1":
            cfg = core.XlateConfig(s1=s1.stage1_config(), asid=asid, vmid=vmid)
        else:
            cfg = core.XlateConfig(s1.stage1_config(ips=40), s2.stage2_config(), asid=asid,
                                   vmid=vmid)
        assert core.translate(mem, iova, cfg=cfg, tlb=tlb).fault is None
    for sel in sels:
        before = tlb.entries()
        keep = [e for e in before if not reference(e, sel)]
        assert apply(tlb, sel) == len(before) - len(keep)
        assert tlb.entries() == keep and len(tlb) == len(keep)


def _clock_env(b):
    from pymsi import core

    mem = b.Memory()
    mem.add_ram(RAM, 0x10_0000)
    mem.add_ram(TABLES, 0x10_0000)
    s1 = core.IoPgtable(mem, core.TableAllocator(mem, TABLES, 0x10_0000), fmt="s1", ias=48)
    s1.map(0x40_0000, RAM, 16 * P, RW)
    return mem, core.XlateConfig(s1=s1.stage1_config(), asid=1, vmid=1)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.lists(st.one_of(st.integers(0, 15), st.just(-1)), max_size=80))
def test_clock_eviction_agrees_across_backends(backends, capacity, pages):
    """CLOCK (second chance) picks the same victims in C and in the Python twin."""
    envs = [_clock_env(b) for b in backends]
    tlbs = [b.Iotlb(capacity) for b in backends]
    for page in pages:
        outs = []
        for b, (mem, cfg), tlb in zip(backends, envs, tlbs, strict=True):
            if page < 0:
                outs.append(tlb.invalidate_va(1, 0x40_0000 + 3 * P, P))
            else:
                outs.append(b.translate(mem, 0x40_0000 + page * P, cfg=cfg, tlb=tlb).tlb_hit)
        assert outs[0] == outs[1]
        assert tlbs[0].entries() == tlbs[1].entries()
    assert len({(t.hits, t.misses, t.inserts, t.evictions, len(t)) for t in tlbs}) == 1
