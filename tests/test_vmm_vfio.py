"""The VMM's vfio-pci device driven as a guest would: configuration and BAR accesses on
the PciFunction interface, on a booted host (ArmVirt) with a KVM VM and its vITS.

Expected values come from the designs as DESIGN.md states them (the MSI address a
device holds: per-vector / preset — the IOVA userspace gave, with the doorbell's page
offset; sw-msi — the SW_MSI window 0x8000000 for the first doorbell page), from the
PCI specification (MSI-X Enable, Function Mask, vector Mask bit, pending bits released
on unmask) and from QEMU's documented behaviour (the guest's MSI-X table is emulated, a
route carries the guest requester ID, a masked vector keeps its route).  The guest's
ITS mapping (DeviceID 0x08 = 00:01.0, EventID v -> vINTID 8192 + 32 + v on vCPU v % 2)
is made by the guest-side driver of :class:`pymsi.vmmlib.KvmGuest`.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi.hw import pci as P
from pymsi.hw.qdev import MmioBar, PciDeviceModel
from pymsi.vmm.kvm_irqchip import KvmIrqchip
from pymsi.vmm.vfio_pci import MsiIommu, NoIommu, VfioPciDevice
from pymsi.vmmlib import RAM_SIZE, VITS_DOORBELL, VITS_PAGE, KvmGuest, Vmm

NVEC = 8
RID = 0x08                                 # guest 00:01.0
VINTID = 8192 + 32
DB_OFF = VITS_DOORBELL & 0xFFF             # GITS_TRANSLATER's offset in its page (0x040)
SW_MSI = 0x0800_0000
RMR_SIZE = 0x10_0000
GIOVA = 0x0900_0000                        # where the guest's stage 1 maps its vITS page
BAR_GPA = 0x1000_0000
EXP = 0x40


class GuestS1:
    """The guest's stage 1 as the route fix-up sees it (a test double of the vSMMU's
    translate_msi): one gIOVA page mapped to the vITS doorbell page."""

    msi_gpa = None

    def __init__(self, maps: dict[int, int]) -> None:
        self.maps = maps

    def translate_msi(self, rid: int, addr: int) -> int | None:
        page = self.maps.get(addr & ~0xFFF)
        return None if page is None else page | addr & 0xFFF


class Rig:
    """Host + VMM + a KVM guest with one assigned function as the VMM's VfioPciDevice."""

    def __init__(self, design: str = "per-vector", nested: bool = False,
                 msi_gpa: int | None = None, dyn: bool = True, gicv4: bool = False) -> None:
        self.v = v = Vmm(design=design, smmu="nested", devices=[{"msix": NVEC}],
                         ram_size=RAM_SIZE, gicv4=gicv4)
        if not dyn:
            v.k.msi.msix_alloc_dyn = False
        self.g = KvmGuest(v, nvcpus=2)
        self.g.map_device(RID, {e: (VINTID + e, e % 2) for e in range(NVEC)})
        self.chip = KvmIrqchip(v.k, self.g.vm, first_gsi=32)
        iommu: MsiIommu = NoIommu()
        if nested:
            iommu = GuestS1({GIOVA: VITS_PAGE})
            if msi_gpa is not None:
                iommu.msi_gpa = msi_gpa
        v.files[0].close()
        self.dev = VfioPciDevice(v.k, "/dev/vfio/devices/vfio0", v.ictx, self.chip,
                                 device=1, ioas_id=v.ioas, iommu=iommu,
                                 pt_id=None if nested else v.ioas)
        v.files[0] = self.dev.devfile
        v.devids = [self.dev.devid]
        if nested:
            v.nested({GIOVA: VITS_PAGE}, vsid=RID)
        self.fn = v.m.functions[0]
        self.gaddr = (GIOVA if nested else VITS_PAGE) | DB_OFF
        self.guest_setup()

    # -- what a guest driver does ----------------------------------------------------------

    def guest_setup(self) -> None:
        d = self.dev
        d.cfg_write(P.BAR0, BAR_GPA)
        d.cfg_write(P.BAR0 + 4, 0)
        d.cfg_write(P.COMMAND, P.CMD_MEMORY | P.CMD_MASTER, 2)

    def msix_on(self, maskall: bool = True) -> None:
        cap = self.dev.msix_cap
        self.dev.cfg_write(cap + P.MSIX_FLAGS, P.MSIX_FLAGS_ENABLE
                           | (P.MSIX_FLAGS_MASKALL if maskall else 0), 2)

    def msix_off(self) -> None:
        self.dev.cfg_write(self.dev.msix_cap + P.MSIX_FLAGS, 0, 2)

    def unmask_all(self) -> None:
        self.dev.cfg_write(self.dev.msix_cap + P.MSIX_FLAGS, P.MSIX_FLAGS_ENABLE, 2)

    def entry(self, v: int, addr: int, data: int) -> None:
        self.dev.bar_write(0, 16 * v, addr & 0xFFFF_FFFF, 4)
        self.dev.bar_write(0, 16 * v + 4, addr >> 32, 4)
        self.dev.bar_write(0, 16 * v + 8, data, 4)

    def mask(self, v: int, on: bool) -> None:
        self.dev.bar_write(0, 16 * v + 12, int(on), 4)

    def linux_guest_enable(self, n: int = NVEC) -> None:
        """pci_alloc_irq_vectors + request_irq as a Linux guest does it: MSI-X on
        function-masked, every entry written, function mask off, each vector unmasked."""
        self.msix_on(maskall=True)
        for v in range(n):
            self.entry(v, self.gaddr, v)
        self.unmask_all()
        for v in range(n):
            self.mask(v, False)

    # -- observations ----------------------------------------------------------------------

    def fire(self, v: int) -> P.Delivery:
        d = self.v.fire(v)
        self.dev.poll()
        return d

    def vlpis(self) -> list[tuple[int, int]]:
        return self.g.kvm.vlpi_pending

    def take(self) -> list[tuple[int, int]]:
        """The guest's vCPUs take their pending vLPIs (acknowledged): software-injected
        ones and, with GICv4, those the physical ITS made pending in a vPE table.  The
        host first runs: posted writes done, its interrupts handled, the VMM polled."""
        self.v.m.bus.drain()
        self.v.k.handle_interrupts()
        self.dev.poll()
        out = list(self.g.kvm.vlpi_pending)
        for irq in self.g.kvm.lpis.values():
            irq.pending_latch = False
        gic = self.v.m.gic
        for c, vpe in getattr(self.g.kvm, "vpes", {}).items():
            for e in range(NVEC):
                if gic.pending_bit(vpe.vpt, VINTID + e):
                    gic.pending_bit(vpe.vpt, VINTID + e, False)
                    out.append((VINTID + e, c))
        return sorted(out)


DESIGNS = ["per-vector", "preset", "sw-msi", "dma-cookie"]


def expected_host_addr(design: str, gaddr: int) -> int:
    if design in ("sw-msi", "dma-cookie"):
        return SW_MSI | DB_OFF
    return gaddr & ~0xFFF | DB_OFF


def rmr(r: Rig) -> None:
    """The guest honours the IORT RMR: its stage 1 identity-maps the host's MSI window
    [0x8000000, 0x8100000)."""
    for page in range(SW_MSI, SW_MSI + RMR_SIZE, 0x1000):
        r.dev.iommu.maps.setdefault(page, page)
    r.v.guest_s1.map(SW_MSI, SW_MSI, RMR_SIZE, 3)


@pytest.mark.parametrize("nested", [False, True], ids=["s2", "nested"])
@pytest.mark.parametrize("design", DESIGNS)
def test_every_vector_reaches_its_guest_vlpi_once(design, nested):
    r = Rig(design, nested=nested)
    if design in ("sw-msi", "dma-cookie") and nested:
        rmr(r)
    r.linux_guest_enable()
    for v in range(NVEC):
        addr, data, ctrl = r.fn.msix_entry(v)
        if not (design == "dma-cookie" and nested):     # some address in the window
            assert addr == expected_host_addr(design, r.gaddr)
        assert SW_MSI <= addr < SW_MSI + RMR_SIZE or design in ("per-vector", "preset")
        assert not ctrl & 1
        assert r.dev.msix_entry(v)[:2] == (r.gaddr, v)     # the guest's own view
    if design in ("preset", "dma-cookie") and nested:
        # preset cannot work nested: the device holds the gIOVA, the guest's stage 1
        # leads to the vITS page IPA, which lies in the host's reserved MSI window
        # (the fallback's): the VMM cannot map it, the write faults in stage 2.
        # dma-cookie nested: the nested domain has no MSI cookie, the device holds the
        # doorbell PA; the guest's RMR identity-maps it, but stage 2 maps only the
        # window's first page (the cookie of the nest parent): a stage-2 fault.
        if design == "preset":
            assert ("IOAS_MAP_MSI", errno.EINVAL) in r.dev.errors
        events = r.v.smmu_events()
        assert r.fire(0) == P.Delivery.ABORTED and r.take() == []
        assert r.v.smmu_events() == events + 1
        return
    assert not r.dev.errors
    for v in range(NVEC):
        assert r.fire(v) == P.Delivery.SENT
        assert r.take() == [(VINTID + v, v % 2)]
    for v in reversed(range(NVEC)):
        r.fire(v)
        assert r.take() == [(VINTID + v, v % 2)]


@pytest.mark.parametrize("nested", [False, True], ids=["s2", "nested"])
def test_gicv4_direct_injection(nested):
    """With GICv4 the irqfd's eventfd is VFIO's trigger: KVM forwards the vector and
    the physical ITS makes the vLPI pending in the vPE; no eventfd signal, no software
    injection.  A masked vector goes back through the VMM (pending at unmask)."""
    r = Rig("per-vector", nested=nested, gicv4=True)
    r.linux_guest_enable(4)
    assert not r.dev.errors
    for v in range(4):
        kvm_efd = r.dev.msi_vectors[v].kvm_interrupt
        signals = kvm_efd.f_op.signals
        assert r.fire(v) == P.Delivery.SENT
        assert r.g.kvm.vlpi_pending == []                    # nothing in software
        assert r.take() == [(VINTID + v, v % 2)]
        assert kvm_efd.f_op.signals == signals                # the eventfd was bypassed
    r.mask(1, True)
    r.fire(1)
    assert r.take() == []
    r.mask(1, False)
    assert r.take() == [(VINTID + 1, 1)]
    r.fire(1)
    assert r.take() == [(VINTID + 1, 1)]


def test_gicv4_reprogramming_moves_the_forwarded_vector():
    """Per-vector, nested, GICv4: the guest moves vector 1 to another gIOVA page and
    EventID; the next interrupts reach the new vINTID (the route's change reaches
    KVM's forwarding), and the physical function holds the new gIOVA."""
    r = Rig("per-vector", nested=True, gicv4=True)
    other = GIOVA + 0x10_0000
    r.dev.iommu.maps[other] = VITS_PAGE
    r.v.guest_s1.map(other, VITS_PAGE, 0x1000, 3)
    r.linux_guest_enable(2)
    r.mask(1, True)
    r.entry(1, other | DB_OFF, 5)
    r.mask(1, False)
    assert r.fn.msix_entry(1)[0] == other | DB_OFF
    r.fire(1)
    assert r.take() == [(VINTID + 5, 1)]
    r.entry(1, other | DB_OFF, 3)
    r.fire(1)
    assert r.take() == [(VINTID + 3, 1)]
    r.fire(0)
    assert r.take() == [(VINTID, 0)]
    assert not r.dev.errors


@pytest.mark.parametrize("design", ["sw-msi", "dma-cookie"])
def test_host_window_designs_nested_need_the_guest_to_honour_the_rmr(design):
    """Without the identity map of the host's window in the guest's stage 1, the
    window address the device holds faults in stage 1: nothing reaches the guest."""
    r = Rig(design, nested=True)
    r.linux_guest_enable(2)
    assert SW_MSI <= r.fn.msix_entry(0)[0] < SW_MSI + RMR_SIZE
    events = r.v.smmu_events()
    assert r.fire(0) == P.Delivery.ABORTED and r.take() == []
    assert r.v.smmu_events() == events + 1
    assert not r.g.kvm.vlpi_pending


def test_per_vector_steps_happen_before_set_irqs_and_routes_carry_the_rid():
    r = Rig("per-vector", nested=True)
    r.linux_guest_enable(2)
    # VFIO_DEVICE_MSI_IOVA holds the guest's address page for each used vector
    assert r.v.get_iovas(0, 2) == [GIOVA, GIOVA]
    # the doorbell was mapped where the guest's stage 1 points (the vITS page IPA)
    assert r.dev.doorbells == [VITS_PAGE]
    assert r.v.smmu_pa(GIOVA | DB_OFF) == 0x0809_0040       # the physical doorbell
    routes = r.chip.routes
    assert sorted((e.address, e.data, e.devid) for e in routes.values()) == [
        (VITS_DOORBELL, 0, RID), (VITS_DOORBELL, 1, RID)]


def _msi_areas(r: Rig) -> list[int]:
    """The doorbell areas (write-only MMIO, IOMMU_IOAS_MAP_MSI) in the VMM's IOAS."""
    from pymsi.kernel.iommufd_msi import MmioPages
    return [a.iova for a in r.v.ctx().ioas(r.v.ioas).areas if isinstance(a.pages, MmioPages)]


@pytest.mark.parametrize("how", ["disable", "reset", "unrealize"])
def test_per_vector_doorbells_follow_the_guest_addresses_and_go_at_reset(how):
    """Nested per-vector: a doorbell page is mapped where the guest's address leads and
    unmapped when no vector reaches it any more; a guest reprogramming a live vector
    again and again leaves one page, not one per address; MSI-X off, a reset or
    unrealize leave none."""
    r = Rig("per-vector", nested=True)
    pages = [GIOVA + 0x10_0000 * (k + 1) for k in range(6)]
    ipas = [0x4800_0000 + 0x1000 * k for k in range(6)]       # IPAs no area holds
    for page, ipa in zip(pages, ipas, strict=True):
        r.dev.iommu.maps[page] = ipa
    r.linux_guest_enable(2)
    assert _msi_areas(r) == [VITS_PAGE] == r.dev.doorbells
    areas = len(r.v.ctx().ioas(r.v.ioas).areas)
    for k, page in enumerate(pages * 5):
        r.entry(1, page | DB_OFF, 1)                 # live vector 1 moves
        assert sorted(_msi_areas(r)) == sorted({VITS_PAGE, ipas[k % 6]})
    assert len(r.v.ctx().ioas(r.v.ioas).areas) == areas + 1
    r.entry(1, r.gaddr, 1)                           # back: the other page goes
    assert _msi_areas(r) == [VITS_PAGE] and not r.dev.errors
    r.fire(1)
    assert r.take() == [(VINTID + 1, 1)]
    {"disable": r.msix_off, "reset": r.dev.reset, "unrealize": r.dev.unrealize}[how]()
    assert _msi_areas(r) == [] and r.dev.doorbells == []
    assert len(r.v.ctx().ioas(r.v.ioas).areas) == areas - 1


def test_a_doorbell_ipa_over_guest_ram_is_refused_not_counted():
    """The guest's stage 1 leads a vector's address to guest RAM: the IPA is taken (an
    ordinary area), IOMMU_IOAS_MAP_MSI says EEXIST and the VMM counts no doorbell."""
    r = Rig("per-vector", nested=True)
    ram_page = GIOVA + 0x30_0000
    r.dev.iommu.maps[ram_page] = 0x4000_0000          # the first page of guest RAM
    r.linux_guest_enable(2)
    r.mask(1, True)
    r.entry(1, ram_page | DB_OFF, 1)
    r.mask(1, False)
    assert ("IOAS_MAP_MSI", errno.EEXIST) in r.dev.errors
    assert r.dev.doorbells == [VITS_PAGE] == _msi_areas(r)
    r.msix_off()
    assert _msi_areas(r) == [] and r.v.ctx().ioas(r.v.ioas).iova_to_phys(0x4000_0000)


def test_accelerated_msi_gpa_is_the_route_address_without_a_walk():
    r = Rig("per-vector", nested=True, msi_gpa=VITS_DOORBELL)
    calls = []
    real = r.dev.iommu.translate_msi
    r.dev.iommu.translate_msi = lambda rid, a: calls.append(a) or real(rid, a)
    r.linux_guest_enable(2)
    assert calls == []
    assert {e.address for e in r.chip.routes.values()} == {VITS_DOORBELL}
    r.fire(1)
    assert r.take() == [(VINTID + 1, 1)]


def test_per_vector_without_a_guest_address_is_what_the_host_says():
    r = Rig("per-vector")
    r.msix_on(maskall=False)
    r.mask(0, False)                            # unmasked with no address written
    assert ("VFIO_DEVICE_SET_IRQS", errno.ENOENT) in r.dev.errors
    assert not r.fn.msix_enabled and not r.dev.host_msix
    # once the guest writes an address, the vector works
    r.entry(0, r.gaddr, 0)
    assert r.dev.host_msix and r.fn.msix_enabled
    r.fire(0)
    assert r.take() == [(VINTID, 0)]


def test_per_vector_a_later_vector_alone_works():
    """The host allocates vectors from 0: the VMM describes the vectors below the one
    the guest uses (no trigger, never fired) with that vector's address."""
    r = Rig("per-vector", nested=True)
    r.msix_on(maskall=False)
    r.entry(3, r.gaddr, 3)
    r.mask(3, False)
    assert not r.dev.errors and r.dev.host_msix
    assert r.v.get_iovas(0, 4) == [GIOVA] * 4
    r.fire(3)
    assert r.take() == [(VINTID + 3, 1)]
    assert r.fire(1) == P.Delivery.PENDING and r.take() == []    # no trigger: host-masked


def test_a_host_without_dynamic_msix_is_re_enabled_to_grow():
    """GET_IRQ_INFO says NORESIZE: a vector beyond those enabled makes the VMM disable
    MSI-X on the host and enable it again with every vector up to it (QEMU's
    behaviour); the vectors already in use keep working."""
    r = Rig("per-vector", dyn=False)
    assert r.dev.msix_noresize
    r.msix_on(maskall=False)
    for v in range(NVEC):
        r.entry(v, r.gaddr, v)
    r.mask(0, False)
    r.mask(5, False)
    assert r.dev.vstats.host_enables == 2 and r.dev.nr_vectors == 6
    assert not r.dev.errors
    for v in (0, 5):
        r.fire(v)
        assert r.take() == [(VINTID + v, v % 2)]
    r.mask(2, False)                    # below nr_vectors: no re-enable
    assert r.dev.vstats.host_enables == 2
    r.fire(2)
    assert r.take() == [(VINTID + 2, 0)]


@pytest.mark.parametrize("dyn", [True, False], ids=["resizable", "noresize"])
def test_msix_enable_commits_the_routes_once_for_all_vectors(dyn):
    """QEMU's vfio_msix_enable defers the KVM routing: MSI-X enabled with every vector
    already unmasked is one KVM_SET_GSI_ROUTING (with all the routes), the irqfds, and
    one VFIO_DEVICE_SET_IRQS of the vectors [0, highest used]."""
    r = Rig("per-vector", dyn=dyn)
    r.linux_guest_enable(NVEC)
    r.msix_off()
    commits, enables = r.chip.commits, r.dev.vstats.host_enables
    r.unmask_all()                                   # MSI-X on, all NVEC vectors unmasked
    assert r.chip.commits == commits + 1
    assert r.dev.vstats.host_enables == enables + 1 and r.dev.nr_vectors == NVEC
    assert sorted((e.data, e.devid) for e in r.chip.routes.values()) == \
        [(v, RID) for v in range(NVEC)]
    assert not r.dev.errors
    for v in range(NVEC):
        assert r.fire(v) == P.Delivery.SENT
        assert r.take() == [(VINTID + v, v % 2)]


def test_a_vector_released_just_before_a_noresize_re_enable_is_not_lost():
    """Found by the state machine: vector 0 fired while the host had no trigger for it
    (pending in the physical PBA); the guest clears the function mask with vectors 0 and
    2 unmasked: VFIO gets vector 0's trigger (the pending message goes), then the host
    re-enables MSI-X to grow to vector 2.  The interrupt the function raised before the
    disable is taken by the host then, not dropped with the freed vector."""
    r = Rig("per-vector", dyn=False)
    r.msix_on(maskall=True)
    for v in range(3):
        r.entry(v, r.gaddr, 0)
    r.unmask_all()
    r.mask(1, False)                            # host: vectors 0..1, 0 without a trigger
    r.fire(0)
    assert r.take() == []
    r.msix_on(maskall=True)
    r.mask(0, False)
    r.mask(2, False)
    r.unmask_all()                              # 0 released, then a re-enable for 2
    assert r.take() == [(VINTID, 0)]


def test_mask_keeps_the_route_and_pending_is_sent_at_unmask():
    r = Rig("per-vector")
    r.linux_guest_enable(4)
    gsi = r.dev.msi_vectors[2].virq
    r.mask(2, True)
    assert r.dev.msi_vectors[2].virq == gsi and gsi in r.chip.routes
    assert not r.fn.msix_entry(2)[2] & 1            # the physical vector stays unmasked
    assert r.fire(2) == P.Delivery.SENT
    assert r.take() == []                            # masked in the guest: pending
    assert r.dev.bar_read(0, 0x2000, 8) == 1 << 2    # the guest's PBA shows it
    r.mask(2, False)
    assert r.take() == [(VINTID + 2, 0)]
    assert r.dev.bar_read(0, 0x2000, 8) == 0
    r.fire(2)
    assert r.take() == [(VINTID + 2, 0)]             # back on the irqfd


def test_function_mask_and_disable():
    r = Rig("per-vector")
    r.linux_guest_enable(4)
    cap = r.dev.msix_cap
    r.dev.cfg_write(cap + P.MSIX_FLAGS, P.MSIX_FLAGS_ENABLE | P.MSIX_FLAGS_MASKALL, 2)
    r.fire(1)
    assert r.take() == []
    r.unmask_all()
    assert r.take() == [(VINTID + 1, 1)]
    r.msix_off()
    assert not r.fn.msix_enabled and r.chip.routes == {}
    assert r.fire(1) == P.Delivery.DISABLED and r.take() == []
    # enabled again: the vectors come back with what the guest's table holds
    r.unmask_all()
    r.fire(3)
    assert r.take() == [(VINTID + 3, 1)]


@pytest.mark.parametrize("design,nested", [("per-vector", True), ("per-vector", False),
                                           ("preset", False), ("sw-msi", True)])
def test_reprogramming_a_vector(design, nested):
    """The guest moves vector 1 to EventID 5 (and, nested, to another gIOVA page its
    stage 1 also maps to the vITS page)."""
    r = Rig(design, nested=nested)
    new_addr = r.gaddr
    if nested:
        other = GIOVA + 0x10_0000
        r.dev.iommu.maps[other] = VITS_PAGE
        r.v.guest_s1.map(other, VITS_PAGE, 0x1000, 3)
        new_addr = other | DB_OFF
    if design == "sw-msi":
        rmr(r)
    r.linux_guest_enable(2)
    # Linux's write: masked, message, unmasked
    r.mask(1, True)
    r.entry(1, new_addr, 5)
    r.mask(1, False)
    r.fire(1)
    assert r.take() == [(VINTID + 5, 1)]
    assert r.fn.msix_entry(1)[0] == expected_host_addr(design, new_addr)
    if design == "per-vector":
        assert r.v.get_iovas(1, 1) == [new_addr & ~0xFFF]
    # changed while unmasked: a route update
    updates = r.dev.vstats.route_updates
    r.entry(1, new_addr, 3)
    assert r.dev.vstats.route_updates > updates
    r.fire(1)
    assert r.take() == [(VINTID + 3, 1)]
    assert not r.dev.errors


def test_guest_flr_and_machine_reset():
    r = Rig("per-vector")
    r.linux_guest_enable(4)
    flrs = r.fn.flr_count
    r.dev.cfg_write(EXP + P.EXP_DEVCTL, P.EXP_DEVCTL_BCR_FLR, 2)
    assert r.fn.flr_count == flrs + 1                 # VFIO_DEVICE_RESET reached the host
    assert r.dev.msix_entry(0) == (0, 0, 1) and not r.dev.msix_enabled
    assert r.dev.bar_address(0) is None and r.chip.routes == {}
    assert r.fire(0) == P.Delivery.DISABLED
    # the guest sets it up again
    r.guest_setup()
    r.linux_guest_enable(4)
    r.fire(0)
    assert r.take() == [(VINTID, 0)]
    r.dev.reset()
    assert r.fn.flr_count == flrs + 2 and not r.fn.msix_enabled


@pytest.mark.parametrize("how", ["guest-flr", "reset"])
def test_a_reset_stops_the_host_function_as_the_guest_sees_it(how):
    """QEMU's vfio_pci_pre_reset: Memory and Bus Master go off on the host function
    before VFIO_DEVICE_RESET (the host restores what it saved around the reset), so
    after the reset the host function is no bus master, as the guest's COMMAND says;
    post-reset writes 0 to the BARs."""
    r = Rig("per-vector")
    r.linux_guest_enable(2)
    assert r.fn.cfg_read(P.COMMAND, 2) & (P.CMD_MEMORY | P.CMD_MASTER)
    if how == "reset":
        r.dev.reset()
    else:
        r.dev.cfg_write(EXP + P.EXP_DEVCTL, P.EXP_DEVCTL_BCR_FLR, 2)
    assert r.dev.cfg_read(P.COMMAND, 2) & (P.CMD_MEMORY | P.CMD_MASTER) == 0
    assert r.fn.cfg_read(P.COMMAND, 2) & (P.CMD_MEMORY | P.CMD_MASTER) == 0
    # the host function can no longer write memory: a message it would send is not sent
    assert r.fn.notify(0) != P.Delivery.SENT
    assert r.dev.cfg_read(P.BAR0) & ~0xF == 0 and not r.dev.errors


def test_host_refusals_are_counted_not_kept_one_by_one():
    """QEMU's error_report_once: a guest that makes the host refuse the same access again
    and again grows a count, not a list (finding: unbounded VMM memory)."""
    r = Rig("per-vector")
    r.dev.cfg_write(P.COMMAND, 0, 2)               # decode off: the host refuses BAR reads
    for _ in range(200):
        assert r.dev.bar_read(0, 0x3000, 4) == 0xFFFF_FFFF
    assert r.dev.errors == {("region read", errno.EIO): 200}
    assert len(r.dev.last_errors) <= 16


def test_bars_forward_to_the_host_function_except_the_msix_table():
    r = Rig("per-vector")
    r.linux_guest_enable(2)
    phys = r.fn.msix_entry(0)
    # the guest's table is the VMM's; the physical function keeps the host's message
    assert r.dev.bar_read(0, 0, 4) == r.gaddr
    assert phys[0] == expected_host_addr("per-vector", r.gaddr)
    # outside the table and PBA: the host function's BAR through VFIO
    assert r.dev.bar_read(0, 0x3000, 4) == r.fn.bar_read(0, 0x3000, 4)
    # BAR sizing is the VMM's, the physical BAR keeps its host address
    host_bar = r.fn.bar_address(0)
    r.dev.cfg_write(P.BAR0, 0xFFFF_FFFF)
    assert r.dev.cfg_read(P.BAR0) == (~(0x4000 - 1) & 0xFFFF_FFF0) | 0b100
    assert r.fn.bar_address(0) == host_bar


def test_unrealize_leaves_the_host_clean():
    r = Rig("per-vector")
    r.linux_guest_enable(4)
    r.dev.unrealize()
    assert not r.fn.msix_enabled and r.chip.routes == {}
    assert not r.fn.cfg_read(P.COMMAND, 2) & P.CMD_MASTER


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("cfg"), st.integers(-4, 0x1004), st.integers(0, 1 << 32),
              st.sampled_from([1, 2, 3, 4, 8])),
    st.tuples(st.just("bar"), st.integers(-1, 3), st.integers(-8, 0x4010),
              st.integers(0, (1 << 64) - 1), st.sampled_from([1, 2, 4, 8, 16])),
    st.tuples(st.just("fire"), st.integers(0, NVEC - 1)),
), max_size=30))
def test_any_guest_access_never_raises(ops):
    r = Rig("per-vector")                     # a fresh rig: each example stands alone
    given_iovas: dict[int, set[int]] = {v: set() for v in range(NVEC)}
    real = r.dev._msi_iova

    def spy(op, nr, iova):                    # what the VMM passes with VFIO_DEVICE_MSI_IOVA
        real(op, nr, iova)
        if iova is not None:
            given_iovas[nr].add(iova)

    r.dev._msi_iova = spy
    for op in ops:
        if op[0] == "cfg":
            _, off, val, size = op
            r.dev.cfg_write(off, val, size)
            r.dev.cfg_read(off, size)
        elif op[0] == "bar":
            _, index, off, val, size = op
            r.dev.bar_write(index, off, val, size)
            r.dev.bar_read(index, off, size)
        else:
            r.fire(op[1])
    # whatever the guest did, the host function holds only host messages: the doorbell
    # at a page the VMM gave VFIO for that very vector, or nothing
    for v in range(NVEC):
        addr = r.fn.msix_entry(v)[0]
        assert addr == 0 or (addr & 0xFFF == DB_OFF and addr & ~0xFFF in given_iovas[v])
        if r.dev.host_msix and v < r.dev.nr_vectors and r.dev.msi_vectors[v].host_iova:
            assert addr == r.dev.msi_vectors[v].host_iova | DB_OFF


def test_on_a_guest_pci_host_through_ecam_and_the_bar_window():
    """Plugged into a PciHost on a guest bus (as the machine does): the guest reaches the
    device only through ECAM and its BAR window, and the interrupt arrives."""
    from pymsi import core
    from pymsi.hw.bus import Bus

    r = Rig("per-vector")
    ram = core.Memory()
    ram.add_ram(0x4000_0000, 0x10_0000)
    gbus = Bus(ram)
    ecam = 0x3F00_0000
    P.PciHost(gbus, ecam_base=ecam, ecam_buses=1).add(r.dev)
    cfg = ecam + (RID << 12)
    assert gbus.read(cfg + P.VENDOR_ID, 2) == 0x1AF4
    assert gbus.read(ecam + (0x10 << 12), 4) == 0xFFFF_FFFF          # no function there
    bar = 0x1100_0000
    gbus.write(cfg + P.BAR0, bar)
    gbus.write(cfg + P.BAR0 + 4, 0)
    gbus.write(cfg + P.COMMAND, P.CMD_MEMORY | P.CMD_MASTER, 2)
    cap = r.dev.msix_cap
    gbus.write(cfg + cap + P.MSIX_FLAGS, P.MSIX_FLAGS_ENABLE, 2)
    gbus.write(bar + 16 * 2, r.gaddr)
    gbus.write(bar + 16 * 2 + 8, 6)
    gbus.write(bar + 16 * 2 + 12, 0)                                   # unmask
    r.fire(2)
    assert r.take() == [(VINTID + 6, 0)]
    assert gbus.read(bar + 16 * 2 + 8, 4) == 6


def test_a_guest_kernel_resets_the_function_and_restores_its_vectors():
    """The guest kernel's pci_reset_function on the VMM's device (save, command down to
    INTx Disable, Initiate FLR, restore with the MSI-X entries from its descriptors):
    the VMM resets the host function through VFIO and the restored vectors work."""
    from pymsi import core
    from pymsi.hw.bus import Bus
    from pymsi.kernel.kernel import Kernel
    from pymsi.kernel.msi import MsiDesc, MsiMsg
    from pymsi.kernel.pci import PciHostBridge

    r = Rig("per-vector")
    ram = core.Memory()
    ram.add_ram(0x4000_0000, 0x10_0000)
    gbus = Bus(ram)
    ecam = 0x3F00_0000
    P.PciHost(gbus, ecam_base=ecam, ecam_buses=1).add(r.dev)
    gk = Kernel(gbus, (0x4000_0000, 0x10_0000), ncpus=2, name="guest")
    pdev = PciHostBridge(gk, ecam, 1, (0x1000_0000, 0x100_0000)).scan()[0]
    pdev.enable_device()
    pdev.set_master()
    pdev.msix_control(enable=True, maskall=True)
    for v in range(2):
        pdev.msi_descs[v] = MsiDesc(pdev, v, msg=MsiMsg.of(r.gaddr, 4 + v), msix_ctrl=0)
        base = pdev.msix_table + 16 * v
        pdev.mmio_write(base, r.gaddr)
        pdev.mmio_write(base + 8, 4 + v)
        pdev.mmio_write(base + 12, 0)
    pdev.msix_control(enable=True, maskall=False)
    pdev.msix_enabled = True
    r.fire(1)
    assert r.take() == [(VINTID + 5, 1)]
    flrs = r.fn.flr_count
    pdev.reset_function()
    assert r.fn.flr_count == flrs + 1 and not r.dev.errors
    assert r.dev.msix_entry(1) == (r.gaddr, 5, 0)
    r.fire(1)
    assert r.take() == [(VINTID + 5, 1)]
    r.fire(0)
    assert r.take() == [(VINTID + 4, 0)]


def test_the_guest_sees_the_host_functions_revision_and_subsystem():
    """As QEMU reads them through VFIO: Revision ID and the Subsystem IDs of the host
    function (HwInit: the host's FLR at bind keeps them), not 0."""
    v = Vmm(design="per-vector", smmu="nested", devices=[{"model": "edu"}],
            ram_size=RAM_SIZE)
    fn = v.m.functions[0]
    assert fn.cfg_read(P.REVISION, 1) == 0x10                  # edu's revision
    fn._put(P.SUBSYS_VENDOR_ID, 0x1AF4, 2)                    # a board vendor's IDs
    fn._put(P.SUBSYS_ID, 0x0042, 2)
    g = KvmGuest(v, nvcpus=1)
    v.files[0].close()
    d = VfioPciDevice(v.k, "/dev/vfio/devices/vfio0", v.ictx, KvmIrqchip(v.k, g.vm),
                      pt_id=v.ioas)
    for off in (P.VENDOR_ID, P.REVISION, P.SUBSYS_VENDOR_ID):
        assert d.cfg_read(off & ~3) == fn.cfg_read(off & ~3)
    assert d.cfg_read(P.REVISION, 1) == 0x10
    assert (d.cfg_read(P.SUBSYS_VENDOR_ID, 2), d.cfg_read(P.SUBSYS_ID, 2)) == (0x1AF4, 0x42)
    d.unrealize()


class Gappy(PciDeviceModel):
    """A function whose only memory BAR is BAR 2 (BARs 0 and 1 unimplemented); MSI-X
    in the next one, BAR 3."""

    VENDOR_ID, DEVICE_ID = 0x1234, 0x6A70
    BARS = (MmioBar(0x1000, read="rd", reg=2),)
    MSIX_VECTORS = 2

    def rd(self, offset: int, size: int) -> int:
        return 0xC0DE_0000 | offset


def test_the_guest_sees_the_host_bars_at_their_register_numbers():
    """QEMU's vfio_bars_register keeps the host's BAR numbers: BAR 2 stays BAR 2 (BAR 0
    reads 0 and sizes to 0), the MSI-X capability names BAR 3 as the host's does."""
    v = Vmm(design="per-vector", smmu="nested", devices=[{"model": "test_vmm_vfio:Gappy"}],
            ram_size=RAM_SIZE)
    fn = v.m.functions[0]
    g = KvmGuest(v, nvcpus=1)
    v.files[0].close()
    d = VfioPciDevice(v.k, "/dev/vfio/devices/vfio0", v.ictx, KvmIrqchip(v.k, g.vm),
                      pt_id=v.ioas)
    for reg in (P.BAR0, P.BAR0 + 4):
        d.cfg_write(reg, 0xFFFF_FFFF)
        assert d.cfg_read(reg) == 0
    d.cfg_write(P.BAR0 + 8, 0xFFFF_FFFF)
    assert d.cfg_read(P.BAR0 + 8) == ~(0x1000 - 1) & 0xFFFF_FFFF     # 32-bit, 4 KiB
    assert d.cfg_read(d.msix_cap + P.MSIX_TABLE) & 7 == \
        fn.cfg_read(fn.msix_cap + P.MSIX_TABLE) & 7 == 3
    d.cfg_write(P.BAR0 + 8, 0x1100_0000)
    d.cfg_write(P.COMMAND, P.CMD_MEMORY, 2)
    assert d.bar_address(0) == 0x1100_0000
    assert d.bar_read(0, 0x24, 4) == 0xC0DE_0024                      # the host's BAR 2
    d.unrealize()


def test_realize_errors_are_the_hosts_and_keep_nothing_open():
    v = Vmm(design="per-vector", smmu="nested", devices=[{"msix": NVEC}] * 2, n=2,
            ram_size=RAM_SIZE)
    g = KvmGuest(v, nvcpus=1)
    chip = KvmIrqchip(v.k, g.vm)
    opened = len(v.k.files)
    with pytest.raises(OSError) as e:
        VfioPciDevice(v.k, "/dev/vfio/devices/vfio9", v.ictx, chip)
    assert e.value.errno == errno.ENOENT
    d = VfioPciDevice(v.k, "/dev/vfio/devices/vfio1", v.ictx, chip, pt_id=v.ioas)
    with pytest.raises(OSError) as e:               # the device is bound through d
        VfioPciDevice(v.k, "/dev/vfio/devices/vfio1", v.ictx, chip)
    assert e.value.errno == errno.EINVAL
    assert len(v.k.files) == opened + 1
    d.unrealize()
    assert len(v.k.files) == opened
