"""Nested (stage 1 + stage 2) walks: stage-1 tables live in IPA space."""

from __future__ import annotations

import pytest

from arch import Chain, lsb, s1_leaf, table_desc

HOST_RAM = 0x8000_0000
GUEST_RAM = 0x4000_0000        # gPA, backed by HOST_RAM through stage 2
SIZE = 0x0100_0000
HOST_TABLES = 0x9000_0000
S1_ROOT = GUEST_RAM            # gPA of the stage-1 tables
S1_POOL = GUEST_RAM + 0x1000
VA = 0x0000_7654_3210_8000 | 0x123


@pytest.fixture
def env(core):
    mem = core.Memory()
    mem.add_ram(HOST_RAM, SIZE)
    mem.add_ram(HOST_TABLES, 0x10_0000)
    s2 = core.IoPgtable(mem, core.TableAllocator(mem, HOST_TABLES, 0x10_0000), fmt="s2",
                        ias=40, oas=48)
    rw = core.Prot.READ | core.Prot.WRITE
    s2.map(GUEST_RAM, HOST_RAM, SIZE, rw)
    guest = core.IpaView(mem, s2)

    class Env:
        pass

    e = Env()
    e.mem, e.s2, e.guest, e.rw = mem, s2, guest, rw
    e.chain = Chain(guest, 12, 48, 0, S1_ROOT, S1_POOL)
    e.s1cfg = core.Stage1(ttb0=S1_ROOT, tsz0=16, ips=40)
    e.cfg = core.XlateConfig(e.s1cfg, s2.stage2_config())
    return e


def test_nested_page(core, env):
    env.guest.write_u64(env.chain.upto(VA, 3), s1_leaf(GUEST_RAM + 0x20_0000, 3))
    r = core.walk(env.mem, VA, cfg=env.cfg)
    assert r.fault is None
    assert r.ipa == GUEST_RAM + 0x20_0123
    assert r.pa == HOST_RAM + 0x20_0123
    assert (r.level, r.s2_level) == (3, 2)   # the builder maps guest RAM in 2 MiB blocks
    assert r.page_size == 0x1000


def test_stage1_tables_are_read_through_stage2(core, env):
    """The same stage-1 tables placed at host PA = gPA would not be found."""
    env.guest.write_u64(env.chain.upto(VA, 3), s1_leaf(GUEST_RAM, 3))
    s1_only = core.walk(env.mem, VA, s1=env.s1cfg)
    assert s1_only.fault == core.Fault(1, core.FaultKind.EXTERNAL_ABORT, 0)
    assert core.walk(env.mem, VA, cfg=env.cfg).fault is None


def test_stage2_fault_while_fetching_a_stage1_table(core, env):
    hole = 0x5000_0000  # an IPA stage 2 does not map
    slot = env.chain.upto(VA, 2)
    env.guest.write_u64(slot, table_desc(hole))
    f = core.walk(env.mem, VA, cfg=env.cfg).fault
    desc_ipa = hole + 8 * ((VA >> lsb(12, 3)) & 0x1FF)  # the level-3 descriptor
    # 0x5000_0000 is inside the level-1 entry that covers guest RAM's 1 GiB: level 2 is empty.
    assert f == core.Fault(2, core.FaultKind.TRANSLATION, 2, ipa=desc_ipa, s1_table_walk=True)


def test_ttb_not_mapped_by_stage2(core, env):
    cfg = core.XlateConfig(core.Stage1(ttb0=0x80_0000_0000 >> 2, tsz0=16, ips=40),
                           env.s2.stage2_config())
    f = core.walk(env.mem, VA, cfg=cfg).fault
    assert f.stage == 2 and f.s1_table_walk
    assert f.kind == core.FaultKind.TRANSLATION
    assert f.ipa == 0x20_0000_0000 + 8 * (VA >> 39)


def test_stage1_output_not_mapped_by_stage2(core, env):
    env.guest.write_u64(env.chain.upto(VA, 3), s1_leaf(0x7000_0000, 3))
    f = core.walk(env.mem, VA, cfg=env.cfg).fault
    assert f == core.Fault(2, core.FaultKind.TRANSLATION, 2, ipa=0x7000_0123)


def test_page_size_is_the_smaller_stage(core, env):
    # Stage-1 2 MiB block over stage-2 2 MiB blocks: 2 MiB.
    env.guest.write_u64(env.chain.upto(VA, 2), s1_leaf(GUEST_RAM + 0x40_0000, 2))
    r = core.walk(env.mem, VA, cfg=env.cfg)
    assert r.page_size == 0x20_0000 and r.pa == HOST_RAM + 0x40_0000 + (VA & 0x1F_FFFF)
    # Split the stage-2 block under it into 4 KiB pages: now 4 KiB.
    env.s2.unmap(GUEST_RAM + 0x40_0000, 0x1000)
    r = core.walk(env.mem, VA, cfg=env.cfg)
    assert r.page_size == 0x1000 and (r.level, r.s2_level) == (2, 3)
    assert r.pa == HOST_RAM + 0x40_0000 + (VA & 0x1F_FFFF)


def test_permissions_combine(core, env):
    slot = env.chain.upto(VA, 3)
    F = core.FaultKind
    env.guest.write_u64(slot, s1_leaf(GUEST_RAM + 0x30_0000, 3, ro=True))
    r = core.walk(env.mem, VA, cfg=env.cfg)
    assert r.fault is None and not r.writable and r.s2_writable and not r.s1_writable
    assert core.walk(env.mem, VA, True, cfg=env.cfg).fault == core.Fault(1, F.PERMISSION, 3)
    # Stage 2 write-only (how Linux maps an MSI doorbell): reads fault at stage 2.
    env.s2.map(0x0809_0000, 0x0809_0000, 0x1000, core.Prot.WRITE | core.Prot.MMIO)
    env.guest.write_u64(slot, s1_leaf(0x0809_0000, 3))
    r = core.walk(env.mem, VA, True, cfg=env.cfg)
    assert r.fault is None and r.pa == 0x0809_0123 and not r.readable
    f = core.walk(env.mem, VA, cfg=env.cfg).fault
    assert f == core.Fault(2, F.PERMISSION, 3, ipa=0x0809_0123)


def test_stage1_tables_need_stage2_read_permission(core, env):
    env.guest.write_u64(env.chain.upto(VA, 3), s1_leaf(GUEST_RAM, 3))
    # Remap the page holding the root table write-only.
    env.s2.unmap(GUEST_RAM, 0x1000)
    env.s2.map(GUEST_RAM, HOST_RAM, 0x1000, core.Prot.WRITE)
    f = core.walk(env.mem, VA, cfg=env.cfg).fault
    assert f == core.Fault(2, core.FaultKind.PERMISSION, 3, ipa=S1_ROOT + 8 * (VA >> 39),
                           s1_table_walk=True)
