"""Stage-1 walks against the VMSAv8-64 rules, with tables written by hand."""

from __future__ import annotations

import pytest

from arch import Chain, block_levels, lsb, s1_leaf, table_desc

RAM = 0x1000_0000
RAM_SIZE = 0x0400_0000
ROOT = RAM                      # 64 KiB aligned for every granule
POOL = RAM + 0x0010_0000
OUT = 0x0000_0080_0000_0000     # a 512 GiB-aligned output base (fits 1 GiB blocks)

# (granule, tsz, start level) from the Arm ARM's tables of initial lookup level.
GEOMETRY = [
    (4096, 16, 0), (4096, 24, 0), (4096, 25, 1), (4096, 33, 1), (4096, 34, 2), (4096, 39, 2),
    (16384, 16, 0), (16384, 17, 1), (16384, 27, 1), (16384, 28, 2), (16384, 38, 2),
    (16384, 39, 3),
    (65536, 16, 1), (65536, 21, 1), (65536, 22, 2), (65536, 34, 2), (65536, 35, 3),
    (65536, 39, 3),
]
GSHIFT = {4096: 12, 16384: 14, 65536: 16}


@pytest.fixture
def mem(core):
    m = core.Memory()
    m.add_ram(RAM, RAM_SIZE)
    return m


def s1cfg(core, granule=4096, tsz=16, **kw):
    return core.Stage1(ttb0=ROOT, tsz0=tsz, granule0=granule, **kw)


def va_for(ia: int) -> int:
    """An address inside an ia-bit space with every index non-zero where possible."""
    return (((1 << ia) - 1) // 3) & ~0x7 | 0x28


@pytest.mark.parametrize("granule,tsz,start", GEOMETRY)
def test_start_level_and_page(core, mem, granule, tsz, start):
    g = GSHIFT[granule]
    ia = 64 - tsz
    s1 = s1cfg(core, granule, tsz)
    assert s1.start_level[0] == start
    va = va_for(ia)
    chain = Chain(mem, g, ia, start, ROOT, POOL)
    mem.write_u64(chain.upto(va, 3), s1_leaf(OUT + (5 << g), 3))
    r = core.walk(mem, va, s1=s1)
    assert r.fault is None
    assert r.pa == OUT + (5 << g) + (va & ((1 << g) - 1))
    assert r.page_size == 1 << g
    assert r.level == 3
    assert r.writable and r.readable


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_blocks_at_every_allowed_level(core, mem, granule):
    g = GSHIFT[granule]
    start = core.Stage1(ttb0=ROOT, tsz0=16, granule0=granule).start_level[0]
    for level in block_levels(g):
        if level < start:
            continue
        mem.write(RAM, bytes(0x20_0000))
        va = va_for(48)
        chain = Chain(mem, g, 48, start, ROOT, POOL)
        size = 1 << lsb(g, level)
        mem.write_u64(chain.upto(va, level), s1_leaf(OUT, level))
        r = core.walk(mem, va, s1=s1cfg(core, granule))
        assert r.fault is None, (granule, level)
        assert r.pa == OUT | (va & (size - 1))
        assert (r.page_size, r.level) == (size, level)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_block_where_none_is_allowed_is_a_translation_fault(core, mem, granule):
    g = GSHIFT[granule]
    s1 = s1cfg(core, granule)
    start = s1.start_level[0]
    for level in range(start, 3):
        if level in block_levels(g):
            continue
        mem.write(RAM, bytes(0x20_0000))
        va = va_for(48)
        mem.write_u64(Chain(mem, g, 48, start, ROOT, POOL).upto(va, level), s1_leaf(0, level))
        f = core.walk(mem, va, s1=s1).fault
        assert (f.stage, f.kind, f.level) == (1, core.FaultKind.TRANSLATION, level)
    # Level 3 with descriptor type 0b01 is reserved: a translation fault too.
    mem.write(RAM, bytes(0x20_0000))
    va = va_for(48)
    mem.write_u64(Chain(mem, g, 48, start, ROOT, POOL).upto(va, 3), OUT | 0b01 | 1 << 10)
    f = core.walk(mem, va, s1=s1).fault
    assert (f.kind, f.level) == (core.FaultKind.TRANSLATION, 3)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_translation_fault_at_each_level(core, mem, granule):
    g = GSHIFT[granule]
    s1 = s1cfg(core, granule)
    for level in range(s1.start_level[0], 4):
        mem.write(RAM, bytes(0x20_0000))
        va = va_for(48)
        slot = Chain(mem, g, 48, s1.start_level[0], ROOT, POOL).upto(va, level)
        mem.write_u64(slot, 0xFFFF_FFFF_FFFF_FFFE)  # bit 0 clear: invalid, whatever else
        f = core.walk(mem, va, s1=s1).fault
        assert f == core.Fault(1, core.FaultKind.TRANSLATION, level)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_address_size_fault_at_each_level(core, mem, granule):
    g = GSHIFT[granule]
    s1 = s1cfg(core, granule, ips=40)
    start = s1.start_level[0]
    va = va_for(48)
    # A table descriptor pointing above the 40-bit output size, at each table level.
    for level in range(start, 3):
        mem.write(RAM, bytes(0x20_0000))
        slot = Chain(mem, g, 48, start, ROOT, POOL).upto(va, level)
        mem.write_u64(slot, table_desc(1 << 40))
        assert core.walk(mem, va, s1=s1).fault == core.Fault(1, core.FaultKind.ADDRESS_SIZE,
                                                             level)
    # A leaf whose output is above it, at every leaf level.
    for level in [lv for lv in block_levels(g) if lv >= start] + [3]:
        mem.write(RAM, bytes(0x20_0000))
        slot = Chain(mem, g, 48, start, ROOT, POOL).upto(va, level)
        mem.write_u64(slot, s1_leaf(1 << 41, level))
        assert core.walk(mem, va, s1=s1).fault == core.Fault(1, core.FaultKind.ADDRESS_SIZE,
                                                             level)
    # The TTB itself beyond the output size: level 0, before any fetch.
    big = core.Stage1(ttb0=1 << 40, tsz0=16, granule0=granule, ips=40)
    assert core.walk(mem, va, s1=big).fault == core.Fault(1, core.FaultKind.ADDRESS_SIZE, 0)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_access_flag_and_permission_faults_at_each_leaf_level(core, mem, granule):
    g = GSHIFT[granule]
    s1 = s1cfg(core, granule)
    start = s1.start_level[0]
    va = va_for(48)
    for level in [lv for lv in block_levels(g) if lv >= start] + [3]:
        mem.write(RAM, bytes(0x20_0000))
        slot = Chain(mem, g, 48, start, ROOT, POOL).upto(va, level)
        mem.write_u64(slot, s1_leaf(OUT, level, af=False))
        for write in (False, True):
            f = core.walk(mem, va, write=write, s1=s1).fault
            assert f == core.Fault(1, core.FaultKind.ACCESS, level)
        # AFFD: the access flag is not checked.
        assert core.walk(mem, va, s1=s1cfg(core, granule, affd=True)).fault is None
        mem.write_u64(slot, s1_leaf(OUT, level, ro=True))
        r = core.walk(mem, va, s1=s1)
        assert r.fault is None and not r.writable
        f = core.walk(mem, va, write=True, s1=s1).fault
        assert f == core.Fault(1, core.FaultKind.PERMISSION, level)
        # Access flag faults take priority over permission faults.
        mem.write_u64(slot, s1_leaf(OUT, level, ro=True, af=False))
        assert core.walk(mem, va, write=True, s1=s1).fault.kind == core.FaultKind.ACCESS


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_external_abort_at_each_level(core, mem, granule):
    g = GSHIFT[granule]
    s1 = s1cfg(core, granule)
    start = s1.start_level[0]
    va = va_for(48)
    hole = 0x2000_0000  # not RAM
    for level in range(start + 1, 4):
        mem.write(RAM, bytes(0x20_0000))
        slot = Chain(mem, g, 48, start, ROOT, POOL).upto(va, level - 1)
        mem.write_u64(slot, table_desc(hole))
        f = core.walk(mem, va, s1=s1).fault
        assert f == core.Fault(1, core.FaultKind.EXTERNAL_ABORT, level)
    off_ram = core.Stage1(ttb0=hole, tsz0=16, granule0=granule)
    f = core.walk(mem, va, s1=off_ram).fault
    assert f == core.Fault(1, core.FaultKind.EXTERNAL_ABORT, start)


def test_aptable_makes_lower_levels_read_only_unless_had(core, mem):
    va = va_for(48)
    chain = Chain(mem, 12, 48, 0, ROOT, POOL, aptable_ro_at=1)
    mem.write_u64(chain.upto(va, 3), s1_leaf(OUT, 3))
    r = core.walk(mem, va, s1=s1cfg(core))
    assert r.fault is None and not r.writable
    assert core.walk(mem, va, write=True, s1=s1cfg(core)).fault == core.Fault(
        1, core.FaultKind.PERMISSION, 3)
    r = core.walk(mem, va, write=True, s1=s1cfg(core, had0=True))
    assert r.fault is None and r.writable


def test_ttb1_selected_by_va_bit_55(core, mem):
    ttb1 = RAM + 0x80_0000
    s1 = core.Stage1(ttb0=ROOT, tsz0=16, ttb1=ttb1, tsz1=25, epd1=False)
    assert s1.start_level == (0, 1)
    hi = 0xFFFF_FF80_1234_5678  # top 25 bits all ones: inside TTB1's 39-bit range
    chain1 = Chain(mem, 12, 39, 1, ttb1, RAM + 0x90_0000)
    mem.write_u64(chain1.upto(hi, 3), s1_leaf(0x7000, 3))
    lo = 0x0000_0000_1234_5678
    mem.write_u64(Chain(mem, 12, 48, 0, ROOT, POOL).upto(lo, 3), s1_leaf(0x9000, 3))
    assert core.walk(mem, hi, s1=s1).pa == 0x7678
    assert core.walk(mem, lo, s1=s1).pa == 0x9678
    # Bit 55 set but not all of [63:39]: in neither range.
    f = core.walk(mem, 0xFF80_0000_1234_5678, s1=s1).fault
    assert f == core.Fault(1, core.FaultKind.TRANSLATION, 0)
    # With EPD1 the TTB1 half faults without a walk.
    s1_off = core.Stage1(ttb0=ROOT, tsz0=16, ttb1=ttb1, tsz1=25, epd1=True)
    assert core.walk(mem, hi, s1=s1_off).fault == core.Fault(1, core.FaultKind.TRANSLATION, 0)
    s1_epd0 = core.Stage1(ttb0=ROOT, tsz0=16, ttb1=ttb1, tsz1=25, epd0=True, epd1=False)
    assert core.walk(mem, lo, s1=s1_epd0).fault == core.Fault(1, core.FaultKind.TRANSLATION, 0)
    assert core.walk(mem, hi, s1=s1_epd0).pa == 0x7678


def test_out_of_range_and_top_byte_ignore(core, mem):
    va = 0x0000_0012_3456_7000
    mem.write_u64(Chain(mem, 12, 40, 0, ROOT, POOL).upto(va, 3), s1_leaf(0x5000, 3))
    plain = core.Stage1(ttb0=ROOT, tsz0=24)
    tbi = core.Stage1(ttb0=ROOT, tsz0=24, tbi0=True)
    assert core.walk(mem, va, s1=plain).pa == 0x5000
    tagged = va | 0x5A << 56
    assert core.walk(mem, tagged, s1=plain).fault == core.Fault(1, core.FaultKind.TRANSLATION, 0)
    assert core.walk(mem, tagged, s1=tbi).pa == 0x5000
    beyond = va | 1 << 40  # above the 40-bit input size, below bit 55
    assert core.walk(mem, beyond, s1=tbi).fault == core.Fault(1, core.FaultKind.TRANSLATION, 0)


def test_global_bit(core, mem):
    va = va_for(48)
    slot = Chain(mem, 12, 48, 0, ROOT, POOL).upto(va, 3)
    mem.write_u64(slot, s1_leaf(OUT, 3, ng=True))
    assert not core.walk(mem, va, s1=s1cfg(core)).is_global
    mem.write_u64(slot, s1_leaf(OUT, 3, ng=False))
    assert core.walk(mem, va, s1=s1cfg(core)).is_global


def test_unaligned_ttb_low_bits_are_ignored(core, mem):
    va = va_for(48)
    mem.write_u64(Chain(mem, 12, 48, 0, ROOT, POOL).upto(va, 3), s1_leaf(OUT, 3))
    assert core.walk(mem, va, s1=core.Stage1(ttb0=ROOT | 0xFF8, tsz0=16)).pa == OUT | (va & 0xFFF)


@pytest.mark.parametrize("kw", [
    dict(tsz0=15), dict(tsz0=40), dict(granule0=8192), dict(ips=52), dict(ips=47),
    dict(epd1=False, tsz1=0), dict(ttb0=-1),
])
def test_invalid_stage1_configurations(core, kw):
    args = dict(ttb0=ROOT, tsz0=16)
    args.update(kw)
    with pytest.raises(ValueError):
        core.Stage1(**args)
