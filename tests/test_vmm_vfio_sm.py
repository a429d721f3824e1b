"""A guest driving the VMM's vfio-pci device at random (hypothesis state machine): every
physical interrupt of a vector the guest set up reaches exactly the guest vLPI of the
EventID the guest's table holds for it, at once while the vector is unmasked, once at
unmask when it fired masked; nothing from a vector the guest never unmasked or after MSI-X
was disabled or the function reset; and the guest's address never reaches the physical
function.  Runs under the per-vector design (nested) and sw-msi (no vIOMMU).

The model is the PCI specification's MSI-X (Enable, Function Mask, per-vector Mask, pending
bits) as the guest sees it, and KVM/GICv3 LPI semantics (a pending LPI fired again stays
one pending LPI).

What the VMM does on the host (QEMU's vfio_msix_vector_do_use / vector_release /
vfio_enable_vectors) is predicted from the guest's writes alone: the vectors it took into
use since MSI-X Enable and its nr_vectors, and MSI-X enabled on the host with the whole
table [0, nr_vectors) when it is off (or, without dynamic MSI-X, when a vector beyond
nr_vectors is used): every vector in use gets a trigger then, masked ones the VMM's own
eventfd, all or none (per-vector: every vector in the table needs an address).  The host's
triggers are checked against that prediction.
"""

from __future__ import annotations

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
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


def note(what: str) -> None:
    """hypothesis's event(), also when a plain test drives the machine (see drive)."""
    if currently_in_test_context():
        event(what)


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
        self.vmm_off()
        self.vpend: set[int] = set()        # pending in the VMM's emulated PBA
        self.ppend: set[int] = set()        # pending in the physical function's PBA
        self.expect: set[tuple[int, int]] = set()

    def vmm_off(self) -> None:
        """What the VMM keeps per MSI-X enable, predicted from the guest's writes alone:
        the vectors it took into use (each open transition: QEMU's vector_use), its
        nr_vectors (highest used + 1), whether MSI-X is on on the host and which vectors
        have a host trigger there.  All gone when the guest disables MSI-X or resets."""
        self.inuse: set[int] = set()
        self.nr = 0
        self.host_on = False
        self.hv: set[int] = set()           # vectors with a host trigger (VFIO eventfd)
        self.haddr: set[int] = set()        # per-vector: vectors the host has an address for

    def open(self, v: int) -> bool:
        """Unmasked: the guest expects the vector's interrupts now."""
        return self.enabled and not self.maskall and not self.masked[v]

    def has_address(self, v: int) -> bool:
        """The host can give ``v`` a trigger: per-vector, only with an address set
        (VFIO_DEVICE_MSI_IOVA; else the host refuses, ENOENT); other designs route it
        anyway."""
        return v in self.haddr or self.design != "per-vector"

    def design_steps(self, vectors, used: int) -> None:
        """The addresses the VMM gives the host before a SET_IRQS for ``used``: each
        vector's own, and ``used``'s for a vector not in use without one (the host
        allocates from vector 0); they stay until MSI-X is disabled."""
        for v in vectors:
            if self.data[v] is not None or (v != used and v not in self.inuse
                                            and self.data[used] is not None):
                self.haddr.add(v)

    def deliver(self, v: int) -> None:
        """The vector's message goes to the guest (to nothing without a message)."""
        if self.data[v] is not None:
            self.expect.add((VINTID + self.data[v], self.data[v] % 2))

    def host_pending_out(self, v: int) -> None:
        """``v`` got a host trigger: a message the function held in its PBA goes to it,
        the guest's vLPI while unmasked, the VMM's emulated PBA while masked."""
        if v in self.ppend:
            self.ppend.discard(v)
            if self.open(v):
                self.deliver(v)
            else:
                self.vpend.add(v)

    def host_enable(self, used: int) -> None:
        """vfio_enable_vectors: MSI-X on the host with vectors [0, nr), every vector in
        use given a trigger -- per-vector, only if every one of [0, nr) has an address
        (otherwise the host refuses the whole enable, ENOENT, and MSI-X stays off)."""
        self.design_steps(range(self.nr), used)
        if not all(self.has_address(v) for v in range(self.nr)):
            return
        self.host_on = True
        self.hv = set(self.inuse)
        for v in sorted(self.inuse):
            self.host_pending_out(v)

    def set_trigger(self, v: int) -> None:
        """One vector's trigger set on the host (refused without an address)."""
        if self.has_address(v):
            self.hv.add(v)
            self.host_pending_out(v)

    def vector_use(self, v: int) -> None:
        """The VMM's vector_use: on the host, MSI-X enabled again with the whole table when
        it is off (or, without dynamic MSI-X, when ``v`` is beyond nr_vectors), else
        ``v``'s trigger set; then what its emulated PBA holds for ``v`` goes."""
        self.inuse.add(v)
        if not self.host_on or (v >= self.nr and not self.dyn):
            self.host_on = False
            self.hv.clear()
            self.nr = max(self.nr, v + 1)
            self.host_enable(v)
        else:
            self.nr = max(self.nr, v + 1)
            self.design_steps([v], v)
            self.set_trigger(v)
        if v in self.vpend and self.open(v):
            self.vpend.discard(v)
            self.deliver(v)

    def vector_release(self, v: int) -> None:
        """The VMM's vector_release: a vector in use gets the VMM's own eventfd."""
        if v in self.inuse and self.host_on and v < self.nr:
            self.set_trigger(v)

    def msix_enable(self) -> None:
        """The VMM's MSI-X enable: every open vector in use, the host enabled once."""
        for v in range(NVEC):
            if self.open(v):
                self.inuse.add(v)
                self.nr = max(self.nr, v + 1)
        if self.nr and not self.host_on:
            self.host_enable(self.nr - 1)
        for v in range(self.nr):
            if v in self.vpend and self.open(v):
                self.vpend.discard(v)
                self.deliver(v)

    def apply(self, change) -> None:
        """A guest write, and what the VMM does for it: MSI-X enable / disable, then each
        vector opened (or given a new message while open) taken into use, each one
        closed released."""
        was_enabled = self.enabled
        before = {v: (self.open(v), self.data[v]) for v in range(NVEC)}
        change()
        if self.enabled and not was_enabled:
            self.msix_enable()
        elif was_enabled and not self.enabled:
            self.vmm_off()
        elif self.enabled:
            for v in range(NVEC):
                was_open, old = before[v]
                if self.open(v) and (not was_open or self.data[v] != old):
                    self.vector_use(v)
                elif was_open and not self.open(v):
                    self.vector_release(v)

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
            self.enabled, self.maskall = enable, maskall
        self.apply(change)

    @rule(v=VEC)
    def fire(self, v):
        # Before the guest makes a vector live the VMM has not enabled MSI-X on the host
        # (the host allocates from vector 0, so it waits for the guest's addresses):
        # a physical interrupt then is lost, as with MSI-X disabled.
        self.r.fire(v)
        if not self.host_on:
            note("fire: lost (MSI-X off on the host)")
        elif v not in self.hv:
            note("fire: pending in the physical PBA")
            self.ppend.add(v)                # masked on the host: the physical PBA
        elif not self.open(v):
            note("fire: pending in the VMM's PBA")
            self.vpend.add(v)                # VFIO signals the VMM's eventfd: its PBA
        elif self.data[v] is None:
            note("fire: to address 0, lost")
        else:
            note("fire: delivered")
            self.deliver(v)

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
    def host_triggers_as_predicted(self):
        """MSI-X on the host, and the vectors with a trigger there, as the model says."""
        assert self.r.dev.host_msix == self.host_on
        core = self.r.dev.devfile.private_data.core
        assert set(core.ctx) == self.hv, (sorted(core.ctx), sorted(self.hv))

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


def drive(machine: type[GuestDriver], steps: list[tuple[str, dict]]) -> GuestDriver:
    """Run ``steps`` (rule name, arguments) on a fresh ``machine``, every invariant
    checked after each, as hypothesis does: a sequence that does not depend on the
    example database."""
    m = machine()
    checks = [getattr(m, name) for name in ("delivered_exactly_as_expected",
                                            "guest_pba_matches", "host_triggers_as_predicted",
                                            "physical_function_holds_host_messages_only")]
    try:
        for name, kwargs in steps:
            getattr(m, name)(**kwargs)
            for check in checks:
                check()
    finally:
        m.teardown()
    return m


MACHINES = [GuestDriver, SwMsiNoIommu, PerVectorNoResize]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda c: c.__name__)
def test_whole_table_enable_gives_a_masked_vector_in_use_its_trigger(machine):
    """v0 and v2 unmasked before MSI-X is enabled, without messages: the VMM takes both
    into use (nr_vectors 3), the host refuses them (no address, per-vector).  v2 masked
    (released: the VMM's own eventfd), both messages written: v0's use enables MSI-X on
    the host with the whole table, v2 included, so v2 firing masked is a pending bit in
    the VMM's emulated PBA (QEMU's vfio_msix_vector_do_use + vfio_enable_vectors)."""
    m = drive(machine, [
        ("linux_driver_enable", {"unmasked": set(), "events": [0, 0, 0]}),
        ("guest_flr", {"go": 0}),
        ("mask", {"v": 0, "on": False}),
        ("mask", {"v": 2, "on": False}),
        ("msix_control", {"go": 0, "enable": True, "maskall": False}),
        ("mask", {"v": 2, "on": True}),
        ("write_entry", {"v": 2, "event": 0}),
        ("write_entry", {"v": 0, "event": 0}),
        ("fire", {"v": 2}),
    ])
    assert m.vpend == {2} and m.hv == {0, 2}


@pytest.mark.parametrize("machine", MACHINES, ids=lambda c: c.__name__)
def test_vector_given_another_ones_address_takes_its_trigger(machine):
    """Per-vector: MSI-X enabled with v2 alone in use; the host allocates from vector 0,
    so the VMM gives v0 and v1 v2's address.  v0 unmasked later without a message still
    gets its trigger (the host has an address for it): its interrupt reaches nothing."""
    m = drive(machine, [
        ("linux_driver_enable", {"unmasked": set(), "events": [0, 0, 0]}),
        ("guest_flr", {"go": 0}),
        ("mask", {"v": 2, "on": False}),
        ("write_entry", {"v": 2, "event": 1}),
        ("msix_control", {"go": 0, "enable": True, "maskall": False}),
        ("mask", {"v": 0, "on": False}),
        ("fire", {"v": 0}),
    ])
    assert m.hv == {0, 2} and not m.ppend


SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestPerVectorNested = GuestDriver.TestCase
TestPerVectorNested.settings = SETTINGS
TestSwMsiNoIommu = SwMsiNoIommu.TestCase
TestSwMsiNoIommu.settings = SETTINGS
TestPerVectorNoResize = PerVectorNoResize.TestCase
TestPerVectorNoResize.settings = SETTINGS
