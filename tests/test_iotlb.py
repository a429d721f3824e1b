"""The IOTLB: hits, misses, stale entries until invalidated, scoping, CLOCK eviction."""

from __future__ import annotations

import pytest

from pymsi import errors

RAM = 0x4000_0000
SIZE = 0x0400_0000
TABLES = 0x5000_0000
RW = 3
P = 0x1000


@pytest.fixture
def env(core):
    mem = core.Memory()
    mem.add_ram(RAM, SIZE)
    mem.add_ram(TABLES, 0x40_0000)
    alloc = core.TableAllocator(mem, TABLES, 0x40_0000)
    s1 = core.IoPgtable(mem, alloc, fmt="s1", ias=48, oas=48)
    s2 = core.IoPgtable(mem, alloc, fmt="s2", ias=40, oas=48)

    class Env:
        pass

    e = Env()
    e.mem, e.s1, e.s2 = mem, s1, s2
    e.tlb = core.Iotlb(64)
    e.cfg_s1 = lambda asid=1, vmid=1, **kw: core.XlateConfig(s1=s1.stage1_config(**kw),
                                                             asid=asid, vmid=vmid)
    e.cfg_s2 = lambda vmid=1: core.XlateConfig(s2=s2.stage2_config(), vmid=vmid)
    e.tr = lambda iova, cfg, write=False: core.translate(mem, iova, write, cfg=cfg, tlb=e.tlb)
    return e


def test_hit_and_miss_counters(core, env):
    env.s1.map(0x10_0000, RAM, P, RW)
    cfg = env.cfg_s1()
    r = env.tr(0x10_0008, cfg)
    assert (r.pa, r.tlb_hit, env.tlb.misses, env.tlb.hits, len(env.tlb)) == (
        RAM + 8, False, 1, 0, 1)
    r = env.tr(0x10_0FF0, cfg)
    assert (r.pa, r.tlb_hit, env.tlb.misses, env.tlb.hits) == (RAM + 0xFF0, True, 1, 1)
    # Faults are not cached.
    assert env.tr(0x20_0000, cfg).fault is not None
    assert env.tr(0x20_0000, cfg).fault is not None
    assert (env.tlb.misses, len(env.tlb)) == (3, 1)
    env.tlb.reset_stats()
    assert (env.tlb.hits, env.tlb.misses, env.tlb.inserts) == (0, 0, 0)


def remap(pt, iova, new_pa):
    pt.unmap(iova, P)
    pt.map(iova, new_pa, P, RW)


@pytest.mark.parametrize("how", ["va", "vaa", "asid", "vmid_s1", "vmid", "all"])
def test_stage1_entry_is_stale_until_invalidated(core, env, how):
    iova = 0x10_0000
    env.s1.map(iova, RAM, P, RW)
    cfg = env.cfg_s1(asid=5, vmid=7)
    assert env.tr(iova, cfg).pa == RAM
    remap(env.s1, iova, RAM + 0x8000)
    stale = env.tr(iova, cfg)
    assert stale.tlb_hit and stale.pa == RAM          # hardware keeps the old translation
    n = {
        "va": lambda: env.tlb.invalidate_va(7, iova, P, asid=5),
        "vaa": lambda: env.tlb.invalidate_va(7, iova, P),
        "asid": lambda: env.tlb.invalidate_asid(5, 7),
        "vmid_s1": lambda: env.tlb.invalidate_vmid(7, stage1_only=True),
        "vmid": lambda: env.tlb.invalidate_vmid(7),
        "all": lambda: env.tlb.invalidate_all(),
    }[how]()
    assert n == 1
    fresh = env.tr(iova, cfg)
    assert not fresh.tlb_hit and fresh.pa == RAM + 0x8000


@pytest.mark.parametrize("how", ["ipa", "vmid", "all"])
def test_stage2_entry_is_stale_until_invalidated(core, env, how):
    ipa = 0x30_0000
    env.s2.map(ipa, RAM, P, RW)
    cfg = env.cfg_s2(vmid=3)
    assert env.tr(ipa, cfg).pa == RAM
    remap(env.s2, ipa, RAM + 0x5000)
    assert env.tr(ipa, cfg).pa == RAM
    # Stage-1 style invalidations do not touch stage-2-only entries.
    assert env.tlb.invalidate_asid(0, 3) == 0
    assert env.tlb.invalidate_va(3, ipa, P) == 0
    assert env.tlb.invalidate_vmid(3, stage1_only=True) == 0
    assert env.tlb.invalidate_ipa(4, ipa, P) == 0      # another VMID
    n = {"ipa": lambda: env.tlb.invalidate_ipa(3, ipa, P),
         "vmid": lambda: env.tlb.invalidate_vmid(3),
         "all": lambda: env.tlb.invalidate_all()}[how]()
    assert n == 1
    assert env.tr(ipa, cfg).pa == RAM + 0x5000


def test_nested_entry_and_ipa_invalidation(core, env):
    """A combined entry is dropped by a TLBI_S2_IPA on the IPA it went through."""
    env.s2.map(RAM, RAM, SIZE, RW)
    env.s2.map(TABLES, TABLES, 0x40_0000, RW)   # stage-1 tables readable through stage 2
    env.s1.map(0x10_0000, RAM + 0x3000, P, RW)
    cfg = core.XlateConfig(env.s1.stage1_config(ips=40), env.s2.stage2_config(), asid=1,
                           vmid=2)
    r = env.tr(0x10_0010, cfg)
    assert (r.ipa, r.pa) == (RAM + 0x3010, RAM + 0x3010)
    env.s2.unmap(RAM + 0x3000, P)
    env.s2.map(RAM + 0x3000, RAM + 0x9000, P, RW)
    assert env.tr(0x10_0010, cfg).pa == RAM + 0x3010
    assert env.tlb.invalidate_ipa(2, RAM + 0x2000, P) == 0   # a neighbouring IPA page
    assert env.tlb.invalidate_ipa(2, RAM + 0x3000, P) == 1
    assert env.tr(0x10_0010, cfg).pa == RAM + 0x9010


def test_asid_vmid_and_global_scoping(core, env):
    env.s1.map(0x10_0000, RAM, P, RW)
    a1, a2 = env.cfg_s1(asid=1, vmid=1), env.cfg_s1(asid=2, vmid=1)
    other_vm = env.cfg_s1(asid=1, vmid=9)
    for cfg in (a1, a2, other_vm):
        env.tr(0x10_0000, cfg)
    assert len(env.tlb) == 3 and env.tlb.misses == 3       # separate entries per tag
    assert env.tlb.invalidate_asid(1, 1) == 1
    assert env.tr(0x10_0000, a2).tlb_hit and env.tr(0x10_0000, other_vm).tlb_hit
    assert not env.tr(0x10_0000, a1).tlb_hit
    # A global mapping (nG = 0) is shared by every ASID and survives TLBI_NH_ASID...
    env.tlb.invalidate_all()
    g = core.IoPgtable(env.mem, env.s1.alloc, fmt="s1", ias=48)
    g.map(0x10_0000, RAM + 0x7000, P, RW)
    # Clear nG in the leaf by hand: walk the builder's tables to the level-3 slot.
    table = g.pgd
    for level in range(3):
        d = env.mem.read_u64(table + 8 * ((0x10_0000 >> (39 - 9 * level)) & 0x1FF))
        table = d & 0xFFFF_FFFF_F000
    slot = table + 8 * ((0x10_0000 >> 12) & 0x1FF)
    env.mem.write_u64(slot, env.mem.read_u64(slot) & ~(1 << 11))
    c1 = core.XlateConfig(s1=g.stage1_config(), asid=1, vmid=1)
    c2 = core.XlateConfig(s1=g.stage1_config(), asid=2, vmid=1)
    r = env.tr(0x10_0000, c1)
    assert r.is_global and not r.tlb_hit
    assert env.tr(0x10_0000, c2).tlb_hit                    # another ASID hits it
    assert env.tlb.invalidate_asid(1, 1) == 0
    assert env.tlb.invalidate_va(1, 0x10_0000, P, asid=2) == 1   # by-VA does hit globals


def test_va_range_boundaries(core, env):
    env.s1.map(0x20_0000, RAM, 0x20_0000, RW)     # one 2 MiB block
    env.s1.map(0x40_0000, RAM + 0x20_0000, 3 * P, RW)
    cfg = env.cfg_s1()
    for iova in (0x20_0000, 0x40_0000, 0x40_1000, 0x40_2000):
        env.tr(iova, cfg)
    assert len(env.tlb) == 4
    assert env.tlb.invalidate_va(1, 0x40_1000, P) == 1       # just the middle page
    assert env.tlb.invalidate_va(1, 0x3F_F000, 2 * P) == 2   # block's last page + next
    assert [e["iova"] for e in env.tlb.entries()] == [0x40_2000]
    with pytest.raises(errors.InvalidArgument):
        env.tlb.invalidate_va(1, 0, 0)


def test_clock_eviction(core, env):
    tlb = core.Iotlb(2)
    env.s1.map(0x10_0000, RAM, 4 * P, RW)
    cfg = env.cfg_s1()

    def tr(iova):
        return core.translate(env.mem, iova, cfg=cfg, tlb=tlb)

    tr(0x10_0000)
    tr(0x10_1000)
    assert tr(0x10_0000).tlb_hit                     # A is referenced: a second chance
    tr(0x10_2000)                                    # evicts B
    assert tlb.evictions == 1 and len(tlb) == 2
    assert [e["iova"] for e in tlb.entries()] == [0x10_2000, 0x10_0000]
    assert not tr(0x10_1000).tlb_hit


def test_permission_faults_from_cached_entries(core, env):
    env.s2.map(RAM, RAM, SIZE, RW)
    env.s2.map(TABLES, TABLES, 0x40_0000, RW)
    env.s2.map(0x0809_0000, 0x0809_0000, P, core.Prot.WRITE | core.Prot.MMIO)
    env.s1.map(0xFFFF_F000, 0x0809_0000, P, RW)
    env.s1.map(0x10_0000, RAM, P, core.Prot.READ)
    cfg = core.XlateConfig(env.s1.stage1_config(ips=40), env.s2.stage2_config(), asid=1,
                           vmid=1)
    assert env.tr(0xFFFF_F040, cfg, write=True).pa == 0x0809_0040
    r = env.tr(0xFFFF_F040, cfg)
    assert r.tlb_hit and r.fault == core.Fault(2, core.FaultKind.PERMISSION, 3, ipa=0x0809_0040)
    assert env.tr(0x10_0000, cfg).fault is None
    r = env.tr(0x10_0000, cfg, write=True)
    assert r.tlb_hit and r.fault == core.Fault(1, core.FaultKind.PERMISSION, 3)


def test_tagged_address_hits_and_epd_does_not_stop_hits(core, env):
    env.s1.map(0x10_0000, RAM, P, RW)
    cfg = env.cfg_s1(tbi0=True)
    assert env.tr(0x10_0008, cfg).pa == RAM + 8
    assert env.tr(0x3C00_0000_0010_0008, cfg).tlb_hit
    # EPD0 only stops walks: what is cached is still used (same ASID and VMID).
    off = env.cfg_s1(tbi0=True, epd0=True)
    assert env.tr(0x10_0010, off).pa == RAM + 0x10
    assert env.tr(0x11_0000, off).fault == core.Fault(1, core.FaultKind.TRANSLATION, 0)


def test_capacity_must_be_positive(core):
    for bad in (0, -1, 1 << 30):
        with pytest.raises(errors.InvalidArgument):
            core.Iotlb(bad)
    for bad in (True, 2.0):                      # not integers (README: Arguments)
        with pytest.raises(TypeError):
            core.Iotlb(bad)
