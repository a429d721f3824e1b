"""A property test of a new MSI design variant, written only against ``pymsi.testing``
(and the design base class it varies), the way a user would: the README's example.

Three variants of the per-vector design, each broken in a small way -- two in its
compose hook (``lookup``, which ``prepare`` and every forced rewrite call), one in
what a missing entry means (``lookup`` *and* ``has_entry``, which VFIO_DEVICE_SET_IRQS
asks first) -- run under :class:`pymsi.testing.VfioUserspace`; hypothesis must
find a sequence of VMM actions that breaks an invariant, and the correct design must
pass the same machine.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from pymsi import errors
from pymsi.core import Prot
from pymsi.kernel.iommufd_msi import PerVectorMsi
from pymsi.testing import InvariantViolation, VfioUserspace

# No example database and a fixed seed (each run finds its counterexample afresh, the
# same one every time), no explain phase (slow on a state machine, and the invariant's
# message already says what broke).
RUN = settings(max_examples=100, stateful_step_count=8, deadline=None, database=None,
               derandomize=True, phases=(Phase.generate, Phase.shrink))


class FirstAddressWins(PerVectorMsi):
    """Caches the first address it composed for each vector: a later
    VFIO_DEVICE_MSI_IOVA update of that vector is silently ignored."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.first = {}

    def lookup(self, desc):                    # per-vector's compose hook
        super().lookup(desc)
        key = (desc.dev, desc.msi_index)
        iova, shift = self.first.setdefault(key, (desc.iommu_msi_iova, desc.iommu_msi_shift))
        desc.iommu_msi_iova, desc.iommu_msi_shift = iova, shift


class MapsOnDemand(PerVectorMsi):
    """Maps the doorbell page itself, in the compose hook, when userspace has not (or
    no longer has) mapped it -- "helpful", and an allocation on compose."""

    def lookup(self, desc):
        super().lookup(desc)
        domain = desc.dev.iommu_group.domain
        pgtbl = (domain.parent or domain).pgtbl
        page = desc.iommu_msi_addr & ~0xFFF
        if pgtbl.iova_to_phys(page) is None:
            doorbell = self.kernel.its.translater & ~0xFFF
            pgtbl.map(page, doorbell, 0x1000, Prot.WRITE | Prot.MMIO)


class BorrowsLastAddress(PerVectorMsi):
    """A vector userspace gave no address borrows the last address the context
    composed: a silent fallback.  ``has_entry`` must say so too -- VFIO_DEVICE_SET_IRQS
    asks it before any ``lookup`` and refuses (ENOENT) a vector without an entry,
    so a ``lookup`` fallback alone would never be reached."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.last = None

    def lookup(self, desc):
        try:
            super().lookup(desc)
        except errors.KernelError:
            if self.last is None:
                raise
            desc.iommu_msi_iova, desc.iommu_msi_shift = self.last
            return
        self.last = (desc.iommu_msi_iova, desc.iommu_msi_shift)

    def has_entry(self, idev, index, vector):
        return super().has_entry(idev, index, vector) or self.last is not None


class PerVector(VfioUserspace):
    """The design as proposed: every invariant holds."""


class StaleUpdate(VfioUserspace):
    HOOKS = FirstAddressWins


class AllocatingCompose(VfioUserspace):
    HOOKS = MapsOnDemand


class Borrowing(VfioUserspace):
    HOOKS = BorrowsLastAddress


def violation(machine):
    """The invariant hypothesis finds broken by ``machine`` (its shrunk counterexample)."""
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(machine, settings=RUN)
    return info.value


def test_the_correct_design_passes():
    run_state_machine_as_test(PerVector, settings=RUN)


def test_an_ignored_address_update_breaks_address_stability():
    v = violation(StaleUpdate)
    assert v.invariant == "address stability", v


def test_a_compose_hook_that_maps_breaks_no_allocation_on_compose():
    v = violation(AllocatingCompose)
    assert v.invariant in ("no allocation on compose", "isolation"), v


def test_the_same_variant_is_caught_under_a_nested_smmu():
    class NestedStale(StaleUpdate):
        SMMU = "nested"

    assert violation(NestedStale).invariant == "address stability"


def test_a_fallback_for_a_missing_entry_breaks_no_silent_fallback():
    assert violation(Borrowing).invariant == "no silent fallback"
