"""Stage-2 walks: S2SL0 and concatenated start-level tables, S2AP, faults."""

from __future__ import annotations

import pytest

from arch import Chain, block_levels, lsb, s2_leaf, table_desc

RAM = 0x1000_0000
RAM_SIZE = 0x0400_0000
ROOT = RAM                      # 16 x 64 KiB concatenated tables fit below POOL
POOL = RAM + 0x0200_0000
GSHIFT = {4096: 12, 16384: 14, 65536: 16}

# (granule, tsz, sl0, start level, concatenated tables), from the Arm ARM's
# S2SL0 / T0SZ tables: up to 16 tables may be concatenated at the start level.
GEOMETRY = [
    (4096, 24, 1, 1, 2),      # 40-bit IPA, the usual KVM/iommu choice
    (4096, 21, 1, 1, 16),     # 43 bits: the most a level-1 start can take
    (4096, 25, 1, 1, 1),
    (4096, 16, 2, 0, 1),
    (4096, 30, 0, 2, 16),     # 34 bits from level 2
    (4096, 39, 0, 2, 1),
    (16384, 16, 2, 1, 2),     # 48 bits from level 1: 12 bits, 2 tables of 2048 entries
    (16384, 26, 1, 2, 4),
    (16384, 39, 0, 3, 1),
    (65536, 16, 2, 1, 1),     # 48 bits need a level-1 start with 64 entries
    (65536, 18, 1, 2, 16),    # 46 bits from level 2: 16 tables
    (65536, 35, 0, 3, 1),
]


@pytest.fixture
def mem(core):
    m = core.Memory()
    m.add_ram(RAM, RAM_SIZE)
    return m


@pytest.mark.parametrize("granule,tsz,sl0,start,concat", GEOMETRY)
def test_geometry_and_last_concatenated_table(core, mem, granule, tsz, sl0, start, concat):
    g = GSHIFT[granule]
    ia = 64 - tsz
    s2 = core.Stage2(vttb=ROOT, tsz=tsz, sl0=sl0, granule=granule)
    assert (s2.start_level, s2.concat) == (start, concat)
    # An IPA whose top bits select the last concatenated table.
    ipa = ((1 << ia) - 1) & ~((1 << g) - 1) | 0x18
    table_no = ipa >> (lsb(g, start) + g - 3) if concat > 1 else 0
    assert table_no == concat - 1
    mem.write_u64(Chain(mem, g, ia, start, ROOT, POOL).upto(ipa, 3), s2_leaf(0x7 << g, 3))
    r = core.walk(mem, ipa, s2=s2)
    assert r.fault is None
    assert r.pa == (0x7 << g) | (ipa & ((1 << g) - 1))
    assert (r.level, r.s2_level) == (3, 3)


def test_ipa_in_the_second_table(core, mem):
    """40-bit IPA, level-1 start: bit 39 picks the second of two 4 KiB tables."""
    s2 = core.Stage2(vttb=ROOT, tsz=24, sl0=1)
    ipa = 0x80_4020_3000 | 0x44  # bit 39 set, level-1 index within the table = 1
    mem.write_u64(ROOT + 0x1000 + 8 * 1, table_desc(POOL))
    mem.write_u64(POOL + 8 * ((ipa >> 21) & 0x1FF), table_desc(POOL + 0x1000))
    mem.write_u64(POOL + 0x1000 + 8 * ((ipa >> 12) & 0x1FF), s2_leaf(0xABC000, 3))
    assert core.walk(mem, ipa, s2=s2).pa == 0xABC044
    # The same level-1 index in the first table is a different IPA: untouched, so it faults.
    f = core.walk(mem, ipa & ~(1 << 39), s2=s2).fault
    assert f == core.Fault(2, core.FaultKind.TRANSLATION, 1, ipa=ipa & ~(1 << 39))


@pytest.mark.parametrize("r,w", [(True, True), (True, False), (False, True), (False, False)])
def test_s2ap(core, mem, r, w):
    s2 = core.Stage2(vttb=ROOT, tsz=24, sl0=1)
    ipa = 0x1234_5000
    mem.write_u64(Chain(mem, 12, 40, 1, ROOT, POOL).upto(ipa, 3), s2_leaf(0x9000, 3, r=r, w=w))
    for write, allowed in ((False, r), (True, w)):
        res = core.walk(mem, ipa | 8, write=write, s2=s2)
        if allowed:
            assert res.fault is None and res.pa == 0x9008
            assert (res.readable, res.writable) == (r, w)
        else:
            assert res.fault == core.Fault(2, core.FaultKind.PERMISSION, 3, ipa=ipa | 8)


@pytest.mark.parametrize("granule", [4096, 16384, 65536])
def test_faults_at_each_level(core, mem, granule):
    g = GSHIFT[granule]
    tsz, sl0 = {12: (24, 1), 14: (24, 1), 16: (24, 1)}[g]
    s2 = core.Stage2(vttb=ROOT, tsz=tsz, sl0=sl0, granule=granule, ps=40)
    start, ia = s2.start_level, 64 - tsz
    ipa = 0x12_3456_7000 & ((1 << ia) - 1)
    F = core.FaultKind

    def fresh():
        mem.write(RAM, bytes(0x30_0000))
        return Chain(mem, g, ia, start, ROOT, POOL)

    for level in range(start, 4):
        mem.write_u64(fresh().upto(ipa, level), 0)
        assert core.walk(mem, ipa, s2=s2).fault == core.Fault(2, F.TRANSLATION, level, ipa)
    for level in range(start, 3):
        mem.write_u64(fresh().upto(ipa, level), table_desc(1 << 40))
        assert core.walk(mem, ipa, s2=s2).fault == core.Fault(2, F.ADDRESS_SIZE, level, ipa)
        mem.write_u64(fresh().upto(ipa, level), table_desc(0x3000_0000))  # not RAM
        assert core.walk(mem, ipa, s2=s2).fault == core.Fault(2, F.EXTERNAL_ABORT, level + 1,
                                                              ipa)
    for level in [lv for lv in block_levels(g) if lv >= start] + [3]:
        slot = fresh().upto(ipa, level)
        mem.write_u64(slot, s2_leaf(1 << 41, level))
        assert core.walk(mem, ipa, s2=s2).fault == core.Fault(2, F.ADDRESS_SIZE, level, ipa)
        mem.write_u64(slot, s2_leaf(0, level, af=False))
        assert core.walk(mem, ipa, s2=s2).fault == core.Fault(2, F.ACCESS, level, ipa)
        affd = core.Stage2(vttb=ROOT, tsz=tsz, sl0=sl0, granule=granule, ps=40, affd=True)
        assert core.walk(mem, ipa, s2=affd).fault is None
        mem.write_u64(slot, s2_leaf(0, level, w=False))
        assert core.walk(mem, ipa, write=True, s2=s2).fault == core.Fault(2, F.PERMISSION,
                                                                           level, ipa)


def test_input_beyond_s2t0sz_and_vttb_beyond_ps(core, mem):
    s2 = core.Stage2(vttb=ROOT, tsz=24, sl0=1, ps=40)
    f = core.walk(mem, 1 << 40, s2=s2).fault
    assert f == core.Fault(2, core.FaultKind.TRANSLATION, 0, ipa=1 << 40)
    far = core.Stage2(vttb=1 << 41, tsz=24, sl0=1, ps=40)
    assert core.walk(mem, 0x1000, s2=far).fault == core.Fault(2, core.FaultKind.ADDRESS_SIZE,
                                                              0, ipa=0x1000)


@pytest.mark.parametrize("granule,tsz,sl0,valid", [
    (4096, 16, 1, False),    # 48 bits from level 1: 18 bits, 512 tables
    (4096, 20, 1, False),    # 44 bits: 32 tables
    (4096, 21, 1, True),     # 43 bits: 16 tables, the limit
    (4096, 33, 1, True),     # 31 bits: a 2-entry level-1 table
    (4096, 34, 1, False),    # 30 bits: level 1 would resolve nothing
    (4096, 29, 0, False),    # 35 bits from level 2: 32 tables
    (4096, 24, 3, False),    # SL0=3 is reserved without FEAT_TTST
    (16384, 16, 3, False),   # SL0=3 means level 0 only with FEAT_LPA2
    (65536, 16, 0, False),   # 48 bits from level 3
    (65536, 38, 2, False),   # 26 bits from level 1: nothing to resolve there
    (65536, 17, 1, False),   # 47 bits from level 2: 32 tables
    (65536, 18, 1, True),    # 46 bits from level 2: 16 tables
])
def test_sl0_consistency(core, granule, tsz, sl0, valid):
    if valid:
        core.Stage2(vttb=ROOT, tsz=tsz, sl0=sl0, granule=granule)
    else:
        with pytest.raises(ValueError):
            core.Stage2(vttb=ROOT, tsz=tsz, sl0=sl0, granule=granule)


def test_known_invalid_combinations(core):
    for kw in (dict(tsz=16, sl0=1), dict(tsz=24, sl0=3), dict(tsz=15, sl0=2),
               dict(tsz=40, sl0=0), dict(tsz=16, sl0=0, granule=65536),
               dict(tsz=24, sl0=1, ps=52), dict(tsz=24, sl0=1, granule=2048)):
        with pytest.raises(ValueError):
            core.Stage2(vttb=ROOT, **kw)
