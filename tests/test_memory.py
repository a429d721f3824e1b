"""Physical memory: RAM regions, sparse zero-filled pages, bus errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymsi import errors

BASE = 0x4000_0000
SIZE = 0x10_0000


@pytest.fixture
def mem(core):
    m = core.Memory()
    m.add_ram(BASE, SIZE)
    return m


def test_ram_reads_zero_and_allocates_nothing(mem):
    assert mem.read(BASE + 0x123, 16) == bytes(16)
    assert mem.read_u64(BASE + SIZE - 8) == 0
    assert mem.pages_allocated == 0


def test_little_endian_access(mem):
    mem.write_u64(BASE + 8, 0x1122_3344_5566_7788)
    assert mem.read(BASE + 8, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_u32(BASE + 8) == 0x5566_7788
    assert mem.read_u32(BASE + 12) == 0x1122_3344
    mem.write_u32(BASE + 9, 0xAABBCCDD)
    assert mem.read_u64(BASE + 8) == 0x1122_33AA_BBCC_DD88
    assert mem.pages_allocated == 1


def test_access_spanning_pages(mem):
    addr = BASE + 0x1FFC  # last 4 bytes of a page and the first 4 of the next
    mem.write_u64(addr, 0x0102_0304_0506_0708)
    assert mem.read_u64(addr) == 0x0102_0304_0506_0708
    assert mem.pages_allocated == 2
    data = bytes(range(256)) * 40
    mem.write(BASE + 0x3F00, data)
    assert mem.read(BASE + 0x3F00, len(data)) == data


@pytest.mark.parametrize("addr,size", [
    (BASE - 1, 1), (BASE - 4, 8), (BASE + SIZE, 1), (BASE + SIZE - 4, 8), (0, 4),
    ((1 << 64) - 4, 4),
])
def test_outside_ram_is_a_bus_error(mem, addr, size):
    with pytest.raises(errors.BusError) as exc:
        mem.read(addr, size)
    assert exc.value.errno == 14
    with pytest.raises(errors.BusError):
        mem.write(addr, b"\xff" * size)
    if size == 8:
        with pytest.raises(OSError):
            mem.read_u64(addr)


def test_failed_write_changes_nothing(mem):
    mem.write(BASE + SIZE - 8, b"\x11" * 8)
    with pytest.raises(errors.BusError):
        mem.write(BASE + SIZE - 8, b"\x22" * 16)  # runs off the end of RAM
    assert mem.read(BASE + SIZE - 8, 8) == b"\x11" * 8


def test_adjacent_regions_join(core):
    m = core.Memory()
    m.add_ram(0x1000, 0x1000)
    m.add_ram(0x2000, 0x1000)
    m.write(0x1FF0, b"\xab" * 32)
    assert m.read(0x1FF0, 32) == b"\xab" * 32
    assert m.regions == [(0x1000, 0x1000), (0x2000, 0x1000)]
    with pytest.raises(errors.BusError):
        m.read(0x2FF0, 32)


def test_add_ram_rejects_bad_regions(mem):
    with pytest.raises(errors.AlreadyExists):
        mem.add_ram(BASE + SIZE - 0x1000, 0x2000)
    with pytest.raises(errors.AlreadyExists):
        mem.add_ram(BASE - 0x1000, 0x2000)
    for base, size in [(0x123, 0x1000), (0x1000, 0x123), (0x1000, 0), (1 << 64, 0x1000),
                       (-0x1000, 0x1000), ((1 << 64) - 0x1000, 0x2000)]:
        with pytest.raises(errors.InvalidArgument):
            mem.add_ram(base, size)
    assert mem.regions == [(BASE, SIZE)]


def test_top_of_address_space(core):
    m = core.Memory()
    m.add_ram((1 << 64) - 0x1000, 0x1000)
    m.write_u64((1 << 64) - 8, 7)
    assert m.read_u64((1 << 64) - 8) == 7
    with pytest.raises(errors.BusError):
        m.read((1 << 64) - 4, 8)


def test_bad_integers_are_rejected_not_wrapped(mem):
    with pytest.raises(errors.InvalidArgument):
        mem.write_u32(BASE, 1 << 32)
    with pytest.raises(errors.InvalidArgument):
        mem.write_u64(BASE, -1)
    with pytest.raises(TypeError):
        mem.read_u64("0x40000000")
    assert mem.read_u64(BASE) == 0


@given(ops=st.lists(st.tuples(st.integers(0, SIZE - 1), st.binary(min_size=1, max_size=64)),
                    max_size=30))
def test_matches_a_bytearray(core, ops):
    m = core.Memory()
    m.add_ram(BASE, SIZE)
    model = bytearray(SIZE)
    for off, data in ops:
        if off + len(data) > SIZE:
            with pytest.raises(errors.BusError):
                m.write(BASE + off, data)
            continue
        m.write(BASE + off, data)
        model[off : off + len(data)] = data
    for off, data in ops:
        n = min(len(data), SIZE - off)
        assert m.read(BASE + off, n) == bytes(model[off : off + n])
