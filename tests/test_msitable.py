"""The per-(device, MSI index) address table and its compose step."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pymsi import errors

DOORBELL = 0x0809_0040


def test_compose_examples(core):
    t = core.MsiTable()
    t.set(0x8, 1, 0xFFFF_F000, 12)
    assert t.compose(0x8, 1, DOORBELL) == 0xFFFF_F040          # Linux 6.1 guest's MSI IOVA
    t.set(0x8, 2, 0x0800_0000, 12)
    assert t.compose(0x8, 2, DOORBELL) == 0x0800_0040          # the SW_MSI window
    t.set(0x8, 3, 0x1234_5678_9ABC_DEF0, 16)
    assert t.compose(0x8, 3, DOORBELL) == 0x1234_5678_9ABC_0040
    t.set(0x8, 4, 0xFFFF_F000, 0)                              # shift 0: no IOMMU
    assert t.compose(0x8, 4, DOORBELL) == DOORBELL
    t.set(0x8, 5, 0xAB00, 63)
    assert t.compose(0x8, 5, 1 << 63 | DOORBELL) == DOORBELL
    assert t.get(0x8, 3) == (0x1234_5678_9ABC_DEF0, 16)
    assert len(t) == 5


def test_missing_vector_is_an_error_not_a_fallback(core):
    t = core.MsiTable()
    t.set(0x8, 0, 0xFFFF_F000)
    with pytest.raises(errors.MsiNotMapped):
        t.compose(0x8, 1, DOORBELL)
    with pytest.raises(LookupError):
        t.compose(0x10, 0, DOORBELL)
    assert t.get(0x8, 1) is None
    with pytest.raises(errors.MsiNotMapped):
        t.remove(0x8, 1)
    t.remove(0x8, 0)
    with pytest.raises(errors.MsiNotMapped):
        t.compose(0x8, 0, DOORBELL)
    assert len(t) == 0


def test_overwrite_keeps_one_entry(core):
    t = core.MsiTable()
    t.set(1, 1, 0x1000)
    t.set(1, 1, 0x2000, 14)
    assert len(t) == 1 and t.get(1, 1) == (0x2000, 14)


@pytest.mark.parametrize("args", [
    (1 << 32, 0, 0), (-1, 0, 0), (0, 1 << 16, 0), (0, 0, 1 << 64), (0, 0, 0, 64), (0, 0, 0, -1),
])
def test_bad_arguments(core, args):
    t = core.MsiTable()
    with pytest.raises(errors.InvalidArgument):
        t.set(*args)
    assert len(t) == 0


def test_many_entries_survive_growth_and_removal(core):
    t = core.MsiTable()
    for d in range(300):
        for i in range(7):
            t.set(d, i, (d << 20) | (i << 12), 12)
    for d in range(0, 300, 2):
        for i in range(7):
            t.remove(d, i)
    assert len(t) == 150 * 7
    for d in range(300):
        for i in range(7):
            if d % 2:
                assert t.compose(d, i, 0xABC) == (d << 20) | (i << 12) | 0xABC
            else:
                assert t.get(d, i) is None


@given(st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.integers(0, 2**64 - 1),
       st.integers(0, 63), st.integers(0, 2**64 - 1))
def test_compose_formula(core, dev, index, iova, shift, pa):
    t = core.MsiTable()
    t.set(dev, index, iova, shift)
    expected = pa if shift == 0 else (iova >> shift << shift) | (pa % (1 << shift))
    assert t.compose(dev, index, pa) == expected


class MsiTableMachine(RuleBasedStateMachine):
    """Random set / remove / compose against a dict."""

    def __init__(self):
        super().__init__()
        from pymsi import core

        self.t = core.MsiTable()
        self.model = {}

    keys = st.tuples(st.integers(0, 5), st.integers(0, 40))

    @rule(key=keys, iova=st.integers(0, 2**64 - 1), shift=st.integers(0, 63))
    def set(self, key, iova, shift):
        self.t.set(*key, iova, shift)
        self.model[key] = (iova, shift)

    @rule(key=keys)
    def remove(self, key):
        if key in self.model:
            self.t.remove(*key)
            del self.model[key]
        else:
            with pytest.raises(errors.MsiNotMapped):
                self.t.remove(*key)

    @rule(key=keys, pa=st.integers(0, 2**64 - 1))
    def compose(self, key, pa):
        if key not in self.model:
            with pytest.raises(errors.MsiNotMapped):
                self.t.compose(*key, pa)
            return
        iova, shift = self.model[key]
        mask = (1 << shift) - 1
        assert self.t.compose(*key, pa) == (pa if not shift else (iova & ~mask) | (pa & mask))

    @invariant()
    def same_contents(self):
        assert len(self.t) == len(self.model)
        assert self.t.items() == sorted((d, i, v, s) for (d, i), (v, s) in self.model.items())


TestMsiTableMachine = MsiTableMachine.TestCase
