"""A guest driving the VMM's vfio-pci device at random (hypothesis state machine): every
physical interrupt of a vector the guest set up reaches exactly the guest vLPI of the
EventID the guest's table holds for it, at once while the vector is unmasked, once at
unmask when it fired masked; nothing from a vector the guest never unmasked or after MSI-X
was disabled or the function reset; and the guest's address never reaches the physical
function.  Runs under the per-vector design (nested) and sw-msi (no vIOMMU).

The model is the PCI specification's MSI-X (Enable, Function Mask, per-vector Mask, pending
bits) as the guest sees it, and KVM/GICv3 LPI semantics (a pending LPI fired again stays
one pending LPI).
"""

from __future__ import annotations

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from test_vmm_vfio import EXP, NVEC, VINTID, Rig, expected_host_addr

from pymsi.hw import pci as P

VEC = st.integers(0, 2)                   # few vectors, so rules meet on the same one


class GuestDriver(RuleBasedStateMachine):
    design = "per-vector"
    nested = True
    dyn = True

    def __init__(self) -> None:
        super().__init__()
        self.r = Rig(self.design, nested=self.nested, dyn=self.dyn)
        self.reset_model()

    def reset_model(self) -> None:
        """A function just reset: nothing enabled, every vector masked, nothing pending."""
        self.enabled = False
        self.maskall = False
        self.masked = dict.fromkeys(range(NVEC), True)
        self.data: dict[int, int | None] = dict.fromkeys(range(NVEC))
        self.used: set[int] = set()         # delivered through VFIO since MSI-X was enabled
        self.vpend: set[int] = set()        # pending in the VMM's emulated PBA
        self.ppend: set[int] = set()        # pending in the physical function's PBA
        self.expect: set[tuple[int, int]] = set()

    def open(self, v: int) -> bool:
        """Unmasked: the guest expects the vector's interrupts now."""
        return self.enabled and not self.maskall and not self.masked[v]

    def usable(self, v: int) -> bool:
        """Open, and with a message or under a design that does not need one (the VMM
        routes it anyway; a message to address 0 reaches nothing)."""
        return self.open(v) and (self.data[v] is not None or self.design != "per-vector")

    def apply(self, change) -> None:
        """A guest write; each vector it makes usable releases what is pending for it
        (to nothing when it has no message)."""
        before = {v: self.usable(v) for v in range(NVEC)}
        change()
        for v in range(NVEC):
            if self.usable(v) and not before[v]:
                self.used.add(v)
                if v in self.vpend or v in self.ppend:
                    self.vpend.discard(v)
                    self.ppend.discard(v)
                    if self.data[v] is not None:
                        self.expect.add((VINTID + self.data[v], self.data[v] % 2))

    # -- rules ------------------------------------------------------------------------------

    @rule(v=VEC, event=st.integers(0, NVEC - 1))
    def write_entry(self, v, event):
        def change():
            self.r.entry(v, self.r.gaddr, event)
            self.data[v] = event
        self.apply(change)

    @rule(v=VEC, on=st.booleans())
    def mask(self, v, on):
        def change():
            self.r.mask(v, on)
            self.masked[v] = on
        self.apply(change)

    @initialize(unmasked=st.sets(VEC), events=st.lists(st.integers(0, NVEC - 1), min_size=3,
                                                        max_size=3))
    def linux_driver_enable(self, unmasked, events):
        """What a Linux guest driver does: MSI-X on function-masked, the entries
        written, the function mask off, the vectors it requests unmasked."""
        self.msix_control(0, True, True)
        for v, e in enumerate(events):
            self.write_entry(v, e)
        self.msix_control(0, True, False)
        for v in sorted(unmasked):
            self.mask(v, False)

    @rule(maskall=st.booleans())
    def function_mask(self, maskall):
        self.msix_control(0, self.enabled, maskall)

    @rule(go=st.integers(0, 3), enable=st.booleans(), maskall=st.booleans())
    def msix_control(self, go=0, enable=True, maskall=False):
        if go:                                      # rarer than the other rules
            return
        def change():
            flags = (P.MSIX_FLAGS_ENABLE if enable else 0) | \
                (P.MSIX_FLAGS_MASKALL if maskall else 0)
            self.r.dev.cfg_write(self.r.dev.msix_cap + P.MSIX_FLAGS, flags, 2)
            if self.enabled and not enable:
                self.used.clear()
            self.enabled, self.maskall = enable, maskall
        self.apply(change)

    @rule(v=VEC)
    def fire(self, v):
        # Before the guest makes a vector live the VMM has not enabled MSI-X on the host
        # (the host allocates from vector 0, so it waits for the guest's addresses):
        # a physical interrupt then is lost, as with MSI-X disabled.
        host_on = self.r.dev.host_msix
        self.r.fire(v)
        if not self.enabled or not host_on:
            event("fire: lost (MSI-X off on the host)")
            return
        if self.open(v) and v in self.used:
            if self.data[v] is None:
                event("fire: to address 0, lost")
                return
            event("fire: delivered")
            self.expect.add((VINTID + self.data[v], self.data[v] % 2))
        elif v in self.used:
            event("fire: pending in the VMM's PBA")
            self.vpend.add(v)                # VFIO signals the VMM's eventfd: its PBA
        else:
            event("fire: pending in the physical PBA")
            self.ppend.add(v)                # masked on the host: the physical PBA

    @precondition(lambda self: self.r.dev.reset_works)
    @rule(go=st.integers(0, 3))
    def guest_flr(self, go):
        if go:
            return
        self.r.dev.cfg_write(EXP + P.EXP_DEVCTL, P.EXP_DEVCTL_BCR_FLR, 2)
        self.r.guest_setup()
        self.reset_model()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def delivered_exactly_as_expected(self):
        got = set(self.r.take())
        assert got == self.expect, (got, self.expect)
        self.expect = set()

    @invariant()
    def guest_pba_matches(self):
        pba = self.r.dev.bar_read(0, 0x2000, 8)
        assert pba == sum(1 << v for v in self.vpend)

    @invariant()
    def physical_function_holds_host_messages_only(self):
        for v in range(NVEC):
            addr = self.r.fn.msix_entry(v)[0]
            assert addr in (0, expected_host_addr(self.design, self.r.gaddr))
        # a vector unmasked before the guest wrote its message: per-vector, the host
        # refuses it (no MSI address, ENOENT); otherwise a pending message the VMM
        # sends to address 0 is refused by KVM (no vITS there, EINVAL); only those
        allowed = {("VFIO_DEVICE_SET_IRQS", 2)} if self.design == "per-vector" else \
            {("KVM_SIGNAL_MSI", 22)}
        assert set(self.r.dev.errors) <= allowed


class SwMsiNoIommu(GuestDriver):
    design = "sw-msi"
    nested = False


class PerVectorNoResize(GuestDriver):
    """A host without dynamic MSI-X: vectors grow by disabling and re-enabling."""

    dyn = False


SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestPerVectorNested = GuestDriver.TestCase
TestPerVectorNested.settings = SETTINGS
TestSwMsiNoIommu = SwMsiNoIommu.TestCase
TestSwMsiNoIommu.settings = SETTINGS
TestPerVectorNoResize = PerVectorNoResize.TestCase
TestPerVectorNoResize.settings = SETTINGS
