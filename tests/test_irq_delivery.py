"""Interrupt delivery: the core's pending-bit functions (C against the Python twin), and
batch delivery (``PciFunction.notify_batch``) against firing the vectors one at a time."""

from __future__ import annotations

import array

from hypothesis import given, settings
from hypothesis import strategies as st

RAM, RAM_SIZE = 0x1_0000, 0x2000


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as e:  # the exception class is part of the behaviour compared
        return ("raise", type(e))


addresses = st.one_of(st.integers(RAM - 2, RAM + RAM_SIZE + 1), st.integers(0, 2**64 - 1),
                      st.integers(-2, 2**65), st.just(2**64 - 1))
bits = st.one_of(st.integers(0, 7), st.integers(-2, 10), st.just(True), st.just(1.0))


@given(ops=st.lists(st.tuples(addresses, bits, st.sampled_from([None, True, False, 0, 1])),
                    max_size=30))
def test_update_bit_agrees(backends, ops):
    mems = [b.Memory() for b in backends]
    for m in mems:
        m.add_ram(RAM, RAM_SIZE)
    for addr, bit, value in ops:
        outs = [outcome(m.update_bit, addr, bit, value) for m in mems]
        assert outs[0] == outs[1], (addr, bit, value)
    assert [m.read(RAM, RAM_SIZE) for m in mems] == [mems[1].read(RAM, RAM_SIZE)] * 2
    assert mems[0].pages_allocated == mems[1].pages_allocated


@given(items=st.lists(st.tuples(
    st.one_of(st.integers(RAM - 0x100, RAM + RAM_SIZE), st.integers(0, 2**64 - 1),
              st.just(2**64 - 1)),
    st.one_of(st.integers(0, 0x1_0000), st.integers(0, 2**32 - 1))), max_size=40),
    short_old=st.booleans())
def test_pending_batch_agrees(backends, items, short_old):
    mems = [b.Memory() for b in backends]
    outs = []
    for b, m in zip(backends, mems, strict=True):
        m.add_ram(RAM, RAM_SIZE)
        tables = array.array("Q", [t for t, _ in items])
        intids = array.array("I", [i for _, i in items])
        old = array.array("i", [7] * max(0, len(items) - short_old))
        outs.append((outcome(b.pending_batch, m, tables, intids, old), old.tolist()))
    assert outs[0] == outs[1]
    assert mems[0].read(RAM, RAM_SIZE) == mems[1].read(RAM, RAM_SIZE)
    assert mems[0].pages_allocated == mems[1].pages_allocated


@settings(max_examples=20)
@given(st.data())
def test_pending_batch_bad_arguments_alike(backends, data):
    bad = data.draw(st.sampled_from(["mem", "len", "type"]))
    outs = []
    for b in backends:
        m = b.Memory()
        m.add_ram(RAM, RAM_SIZE)
        t, i, o = array.array("Q", [RAM]), array.array("I", [3]), array.array("i", [0])
        if bad == "mem":
            args = (object(), t, i, o)
        elif bad == "len":
            args = (m, t, array.array("I", [3, 4]), o)
        else:
            args = (m, array.array("I", [RAM]), i, o)
        outs.append(outcome(b.pending_batch, *args))
    assert outs[0] == outs[1] and outs[0][0] == "raise"


@given(ops=st.lists(st.tuples(
    st.one_of(st.integers(RAM - 2, RAM + RAM_SIZE + 1), st.just(2**64 - 1), st.just(2**64),
              st.just(-1)),
    st.one_of(st.integers(0, 9), st.just(-1), st.just(2**32)),
    st.one_of(st.integers(-1, 3), st.just(2**31))), max_size=30))
def test_bit_updater_agrees(backends, ops):
    mems = [b.Memory() for b in backends]
    for m in mems:
        m.add_ram(RAM, RAM_SIZE)
    fns = [m.bit_updater() for m in mems]
    for op in ops:
        outs = [outcome(f, *op) for f in fns]
        assert outs[0] == outs[1], op
    assert mems[0].read(RAM, RAM_SIZE) == mems[1].read(RAM, RAM_SIZE)
    assert mems[0].pages_allocated == mems[1].pages_allocated
