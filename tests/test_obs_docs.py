"""The records a user reads -- MsiDesc and pymsi.compare's observations -- say what each
field is (help() shows the class docstring, not comments), and print short."""

from __future__ import annotations

import dataclasses

import pytest

from pymsi import compare
from pymsi._repr import LIMIT
from pymsi.kernel.msi import MsiDesc

OBS = [compare.VectorObs, compare.FireObs, compare.ComposeObs, compare.UndescribedObs,
       compare.DmaObs, compare.StepObs, compare.GuestVector, compare.GuestFire,
       compare.GuestStepObs]


@pytest.mark.parametrize("cls", OBS + [MsiDesc], ids=lambda c: c.__name__)
def test_every_field_is_named_in_the_class_docstring(cls):
    doc = cls.__doc__ or ""
    missing = [f.name for f in dataclasses.fields(cls) if f"``{f.name}``" not in doc]
    assert not missing, f"{cls.__name__}: {missing}"


def test_observation_reprs_are_short_and_show_addresses_in_hex():
    v = compare.VectorObs(dev=0, vec=3, addr=0xFFFF_F040, data=3, masked=False,
                          chosen=0xFFFF_F040, smmu_pa=0x0809_0040)
    r = repr(v)
    assert r.startswith("VectorObs(") and "addr=0xfffff040" in r and "smmu_pa=0x8090040" in r
    assert "vec=3" in r
    big = compare.StepObs("move " * 100, vectors=[v] * 5000,
                          composes=[compare.ComposeObs("x", list(range(10**5)), {})],
                          notes=["n" * 1000] * 50)
    r = repr(big)
    assert len(r) <= LIMIT and r.startswith("StepObs(") and "vectors=<5000>" in r
    c = repr(compare.ComposeObs("attach", list(range(10**5)), dict.fromkeys(range(10**4))))
    assert len(c) <= LIMIT and "before=<100000>" in c and "after=<10000>" in c
    g = compare.GuestVector(vec=1, guest_addr=None, phys_addr=0x1000, boot_addr=0x2000)
    assert repr(g) == "GuestVector(vec=1, guest_addr=None, phys_addr=0x1000, boot_addr=0x2000)"
