"""The io-pgtable-arm style builder: descriptors a real walk accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymsi import errors

RAM = 0x1_0000_0000
RAM_SIZE = 0x0800_0000
POOL = 0x2_0000_0000
POOL_SIZE = 0x0100_0000

FORMATS = [(fmt, g) for fmt in ("s1", "s2") for g in (4096, 16384, 65536)]


def make(core, fmt="s1", granule=4096, ias=48, **kw):
    mem = core.Memory()
    mem.add_ram(RAM, RAM_SIZE)
    mem.add_ram(POOL, POOL_SIZE)
    alloc = core.TableAllocator(mem, POOL, POOL_SIZE)
    pt = core.IoPgtable(mem, alloc, fmt=fmt, granule=granule, ias=ias, **kw)
    return mem, alloc, pt


def cfg_of(core, pt):
    return (core.XlateConfig(s1=pt.stage1_config()) if pt.fmt == "s1"
            else core.XlateConfig(s2=pt.stage2_config()))


RW = 3


@pytest.mark.parametrize("fmt,granule", FORMATS)
def test_map_walks_back(core, fmt, granule):
    mem, _, pt = make(core, fmt, granule, ias=44)
    iova, pa = 0x123 * granule, 0x4567 * granule
    pt.map(iova, pa, 3 * granule, RW)
    cfg = cfg_of(core, pt)
    for k in range(3):
        r = core.walk(mem, iova + k * granule + 0x10, True, cfg=cfg)
        assert r.fault is None and r.pa == pa + k * granule + 0x10 and r.level == 3
        assert pt.iova_to_phys(iova + k * granule + 0x10) == r.pa
    assert pt.iova_to_phys(iova + 3 * granule) is None
    assert core.walk(mem, iova + 3 * granule, cfg=cfg).fault.kind == core.FaultKind.TRANSLATION


@pytest.mark.parametrize("fmt,granule", FORMATS)
def test_uses_blocks_and_splits_them(core, fmt, granule):
    mem, alloc, pt = make(core, fmt, granule)
    empty = alloc.in_use                    # just the start-level table
    block = sorted(pt.pgsizes)[1]           # the level-2 block of this granule
    iova, pa = 3 * block, 5 * block
    pt.map(iova, pa, block, RW)
    cfg = cfg_of(core, pt)
    r = core.walk(mem, iova + block - 8, cfg=cfg)
    assert (r.level, r.page_size, r.pa) == (2, block, pa + block - 8)
    used = alloc.in_use
    # Unmap one granule in the middle: the block becomes a table of pages.
    hole = iova + block // 2
    assert pt.unmap(hole, granule) == granule
    assert core.walk(mem, hole, cfg=cfg).fault.kind == core.FaultKind.TRANSLATION
    for probe in (iova, hole - granule, hole + granule, iova + block - granule):
        r = core.walk(mem, probe + 4, True, cfg=cfg)
        assert (r.level, r.pa) == (3, pa + probe - iova + 4)
    assert alloc.in_use == used + granule
    # Unmapping the rest frees the split table and the tables above it.
    assert pt.unmap(iova, block) == block - granule
    assert alloc.in_use == empty
    assert pt.iova_to_phys(iova) is None


def test_level1_block_and_partial_unmap_two_levels_down(core):
    mem, _, pt = make(core, "s1", 4096)
    gib = 1 << 30
    pt.map(gib, 4 * gib, gib, RW)
    cfg = cfg_of(core, pt)
    assert core.walk(mem, gib + 0x1234, cfg=cfg).level == 1
    assert pt.unmap(gib + 0x20_3000, 0x1000) == 0x1000
    assert core.walk(mem, gib + 0x20_3000, cfg=cfg).fault is not None
    r = core.walk(mem, gib + 0x20_4000, cfg=cfg)
    assert (r.level, r.pa) == (3, 4 * gib + 0x20_4000)
    r = core.walk(mem, gib + 0x40_0000, cfg=cfg)
    assert (r.level, r.pa) == (2, 4 * gib + 0x40_0000)


def test_overlap_is_eexist_and_leaves_nothing_half_mapped(core):
    mem, _, pt = make(core)
    pt.map(0x10_2000, RAM, 0x1000, RW)
    with pytest.raises(errors.AlreadyExists):
        pt.map(0x10_0000, RAM + 0x10_0000, 0x4000, RW)   # 3rd page collides
    assert [pt.iova_to_phys(0x10_0000 + k * 0x1000) for k in range(4)] == [
        None, None, RAM, None]
    pt.map(0x20_0000, RAM, 0x20_0000, RW)                 # a 2 MiB block
    with pytest.raises(errors.AlreadyExists):
        pt.map(0x20_1000, RAM, 0x1000, RW)                # inside the block


def test_tables_are_freed_when_empty(core):
    mem, alloc, pt = make(core)
    base = alloc.in_use
    pt.map(0x7F_0000_0000, RAM, 0x3000, RW)
    assert alloc.in_use == base + 3 * 0x1000               # levels 1, 2 and 3
    assert pt.unmap(0x7F_0000_0000, 0x3000) == 0x3000
    assert alloc.in_use == base


def test_bad_requests(core):
    mem, _, pt = make(core, ias=40)
    for args in [(0x1001, RAM, 0x1000, RW), (0, RAM + 1, 0x1000, RW), (0, RAM, 0x1800, RW),
                 (1 << 40, RAM, 0x1000, RW), (0, RAM, 0x1000, 0), (0, 1 << 48, 0x1000, RW)]:
        with pytest.raises(errors.InvalidArgument):
            pt.map(*args)
    with pytest.raises(errors.InvalidArgument):
        pt.unmap(0x800, 0x1000)
    with pytest.raises(errors.InvalidArgument):
        core.IoPgtable(mem, pt.alloc, fmt="s2", ias=48, start_level=2)   # 512 tables
    small = core.TableAllocator(mem, RAM, 0x2000)
    tiny = core.IoPgtable(mem, small, ias=48)
    with pytest.raises(errors.OutOfMemory):
        tiny.map(0, RAM, 0x1000, RW)


def test_stage2_concatenated_start_level(core):
    mem, _, pt = make(core, "s2", 4096, ias=40)
    assert pt.start_level == 1
    s2 = pt.stage2_config()
    assert (s2.sl0, s2.concat) == (1, 2)
    ipa = (1 << 39) | 0x1234_5000
    pt.map(ipa, RAM, 0x1000, RW)
    assert core.walk(mem, ipa | 0x10, s2=s2).pa == RAM | 0x10
    mem48, _, pt48 = make(core, "s2", 4096, ias=48)
    assert (pt48.start_level, pt48.stage2_config().concat) == (0, 1)
    _, _, forced = make(core, "s2", 4096, ias=42, start_level=1)
    assert forced.stage2_config().concat == 8


def test_ttbr1_tables(core):
    mem, _, pt = make(core, "s1", 4096, ias=39, ttbr1=True)
    va = 0xFFFF_FFC0_0010_0000
    pt.map(va, RAM, 0x2000, RW)
    cfg = core.XlateConfig(s1=pt.stage1_config())
    assert core.walk(mem, va + 0x1008, cfg=cfg).pa == RAM + 0x1008
    assert core.walk(mem, 0x10_0000, cfg=cfg).fault is not None   # TTB0 is disabled
    with pytest.raises(errors.InvalidArgument):
        pt.map(0x10_0000, RAM, 0x1000, RW)


@pytest.mark.parametrize("fmt,granule", FORMATS)
@given(data=st.data())
def test_random_mappings_walk_back(core, fmt, granule, data):
    mem, alloc, pt = make(core, fmt, granule, ias=40)
    cfg = cfg_of(core, pt)
    npages = 64
    # Random non-overlapping runs within a window of npages granules.
    model: dict[int, int] = {}
    window = data.draw(st.integers(0, (1 << 40) // granule - npages)) * granule
    for _ in range(data.draw(st.integers(1, 6))):
        first = data.draw(st.integers(0, npages - 1))
        count = data.draw(st.integers(1, npages - first))
        if any(first + k in model for k in range(count)):
            continue
        pa_page = data.draw(st.integers(0, RAM_SIZE // granule - count))
        pt.map(window + first * granule, RAM + pa_page * granule, count * granule, RW)
        for k in range(count):
            model[first + k] = RAM + (pa_page + k) * granule
    if data.draw(st.booleans()):
        first = data.draw(st.integers(0, npages - 1))
        count = data.draw(st.integers(1, npages - first))
        gone = pt.unmap(window + first * granule, count * granule)
        assert gone == granule * sum(1 for k in range(count) if first + k in model)
        for k in range(count):
            model.pop(first + k, None)
    for k in range(npages):
        r = core.walk(mem, window + k * granule + 8, True, cfg=cfg)
        if k in model:
            assert r.fault is None and r.pa == model[k] + 8
        else:
            assert r.fault is not None and r.fault.kind == core.FaultKind.TRANSLATION
