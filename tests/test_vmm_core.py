"""The VMM's spine: page aliasing in the core, guest RAM, the guest's board and vCPU interface.

``Memory.alias_page`` is checked on both backends against an oracle that
tracks which backing cell each (memory, page) names, and C against Python on
the same random operation sequences.
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymsi import errors

PAGE = 4096
A_BASE = 0x4000_0000   # "guest" memory
B_BASE = 0x8000_0000   # "host" memory
NPAGES = 4


def two_memories(mod):
    a, b = mod.Memory(), mod.Memory()
    a.add_ram(A_BASE, NPAGES * PAGE)
    b.add_ram(B_BASE, NPAGES * PAGE)
    return a, b


# -- alias_page: basic behaviour ------------------------------------------------------------

def test_alias_write_either_side_seen_by_the_other(core):
    a, b = two_memories(core)
    b.write(B_BASE + 2 * PAGE + 8, b"host")
    a.alias_page(A_BASE, b, B_BASE + 2 * PAGE)
    assert a.read(A_BASE + 8, 4) == b"host"
    a.write_u64(A_BASE + PAGE - 8, 0x1122334455667788)
    assert b.read_u64(B_BASE + 3 * PAGE - 8) == 0x1122334455667788
    # the neighbouring pages are untouched and still separate
    assert a.read(A_BASE + PAGE, 8) == bytes(8)
    assert b.read(B_BASE + PAGE, 8) == bytes(8)


def test_alias_makes_the_source_page(core):
    a, b = two_memories(core)
    assert b.pages_allocated == 0
    a.alias_page(A_BASE + PAGE, b, B_BASE)
    assert b.pages_allocated == 1 and a.pages_allocated == 1
    b.write_u32(B_BASE + 4, 7)
    assert a.read_u32(A_BASE + PAGE + 4) == 7


def test_alias_repoints_an_existing_page(core):
    a, b = two_memories(core)
    a.write(A_BASE, b"own!")
    a.alias_page(A_BASE, b, B_BASE)          # own page replaced by b's (zero) page
    assert a.read(A_BASE, 4) == bytes(4)
    b.write(B_BASE + PAGE, b"next")
    a.alias_page(A_BASE, b, B_BASE + PAGE)   # re-point an alias
    assert a.read(A_BASE, 4) == b"next"
    a.write(A_BASE, b"NEXT")
    assert b.read(B_BASE, 4) == bytes(4) and b.read(B_BASE + PAGE, 4) == b"NEXT"
    assert a.pages_allocated == 1


def test_alias_within_one_memory(core):
    a, _ = two_memories(core)
    a.alias_page(A_BASE, a, A_BASE + 3 * PAGE)
    a.write(A_BASE + 3 * PAGE + 100, b"x")
    assert a.read(A_BASE + 100, 1) == b"x"
    a.alias_page(A_BASE, a, A_BASE)          # a page aliasing itself changes nothing
    assert a.read(A_BASE + 100, 1) == b"x"


@pytest.mark.parametrize("addr,src_addr", [
    (A_BASE + 8, B_BASE),                    # unaligned
    (A_BASE, B_BASE + 0x800),                # unaligned source
    (A_BASE + NPAGES * PAGE, B_BASE),        # not RAM here
    (A_BASE, B_BASE - PAGE),                 # not RAM in the source
    (0, 0),
])
def test_alias_bad_addresses_are_einval_and_change_nothing(core, addr, src_addr):
    a, b = two_memories(core)
    b.write(B_BASE, b"keep")
    with pytest.raises(errors.InvalidArgument):
        a.alias_page(addr, b, src_addr)
    assert a.pages_allocated == 0 and b.pages_allocated == 1


def test_alias_wrong_types(core):
    a, _ = two_memories(core)
    with pytest.raises(TypeError):
        a.alias_page(A_BASE, object(), B_BASE)
    with pytest.raises(TypeError):
        a.alias_page("x", a, A_BASE)


def test_alias_keeps_the_source_alive_and_frees_cleanly(core):
    a, b = two_memories(core)
    b.write(B_BASE, b"data")
    a.alias_page(A_BASE, b, B_BASE)
    del b
    gc.collect()
    assert a.read(A_BASE, 4) == b"data"
    a.write(A_BASE, b"more")
    assert a.read(A_BASE, 4) == b"more"
    del a
    gc.collect()


def test_alias_source_freed_first_in_c_keeps_the_page(backends):
    """The C pages are reference counted: freeing one owner leaves the other's page valid."""
    c = backends[0]
    a, b = two_memories(c)
    b.write(B_BASE, b"held")
    a.alias_page(A_BASE, b, B_BASE)
    a._alias_srcs.clear()                    # drop the Python reference: b really goes
    del b
    gc.collect()
    assert a.read(A_BASE, 4) == b"held"


# -- alias_page: oracle and differential ----------------------------------------------------

MEMS = ("a", "b")
BASES = {"a": A_BASE, "b": B_BASE}

ops = st.lists(st.one_of(
    st.tuples(st.just("alias"), st.sampled_from(MEMS), st.integers(0, NPAGES - 1),
              st.sampled_from(MEMS), st.integers(0, NPAGES - 1)),
    st.tuples(st.just("write"), st.sampled_from(MEMS), st.integers(0, NPAGES * PAGE - 1),
              st.binary(min_size=1, max_size=64)),
), max_size=30)


def run_ops(mod, seq):
    a, b = two_memories(mod)
    mems = {"a": a, "b": b}
    for op in seq:
        if op[0] == "alias":
            _, dst, dpage, src, spage = op
            mems[dst].alias_page(BASES[dst] + dpage * PAGE, mems[src], BASES[src] + spage * PAGE)
        else:
            _, m, off, data = op
            data = data[: NPAGES * PAGE - off]
            mems[m].write(BASES[m] + off, data)
    return {m: mems[m].read(BASES[m], NPAGES * PAGE) for m in MEMS}


def oracle(seq):
    """Which cell each (memory, page) names, and the cells' bytes."""
    cell = {(m, p): (m, p) for m in MEMS for p in range(NPAGES)}
    data = {k: bytearray(PAGE) for k in cell}
    for op in seq:
        if op[0] == "alias":
            _, dst, dpage, src, spage = op
            cell[(dst, dpage)] = cell[(src, spage)]
        else:
            _, m, off, payload = op
            for i, byte in enumerate(payload[: NPAGES * PAGE - off]):
                page, po = divmod(off + i, PAGE)
                data[cell[(m, page)]][po] = byte
    return {m: b"".join(bytes(data[cell[(m, p)]]) for p in range(NPAGES)) for m in MEMS}


@given(ops)
def test_alias_matches_the_oracle(core, seq):
    assert run_ops(core, seq) == oracle(seq)


@given(ops)
def test_alias_c_matches_python(backends, seq):
    c, py = backends
    assert run_ops(c, seq) == run_ops(py, seq)
