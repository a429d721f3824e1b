"""The VMM's virtual SMMUv3, driven by the guest kernel's own arm-smmu-v3 driver.

Emulated mode: the guest's RAM is a ``core.Memory`` at 0x40000000 on a guest bus
with the vSMMU at 0x09050000 (QEMU virt) translating every requester ID, and a
stand-in for the vITS translation frame at 0x08080000 that records what reaches
it.  Accelerated mode: a booted host (ArmVirt with a nested SMMU) whose devices
are given to vfio-pci and bound to the VMM's iommufd; guest RAM is VMM user
memory mapped in the IOAS at IOVA = GPA and the guest's bus sees it through the
VMM's user mapping.

Expected values are facts, not the code's: QEMU virt's SMMUv3 ID registers
(tests/data capture: IDR0 0x0d40101a, IDR1 0x02730010, IDR3 0x1404 less BBML,
IDR5 0x74), the SMMUv3 event record layout (F_TRANSLATION 0x10, class IN 2), the
GITS_TRANSLATER offset 0x10040, the STE Config encodings (abort 0b000, bypass
0b100, S1 0b101, nested 0b111) and TLBI_NH_VA 0x12.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi import core
from pymsi.hw import smmuv3_regs as R
from pymsi.hw.bus import Bus
from pymsi.hw.smmuv3 import Event
from pymsi.kernel.arm_smmu_v3 import ArmSmmuDomain, ArmSmmuV3, Feat
from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.kernel import Kernel
from pymsi.kernel.msi import MsiDesc
from pymsi.vmm.smmuv3 import VSMMU_BASE, VSMMU_SIZE, VirtualSmmuV3

PAGE = 0x1000
GPA, GRAM_SIZE = 0x4000_0000, 0x40_0000          # guest RAM: 4 MiB at 1 GiB
KMEM = (GPA + 0x10_0000, 0x30_0000)              # the guest kernel's page allocator
DATA = GPA + 0x8_0000                            # guest data pages (not kernel memory)
ITS_BASE, TRANSLATER = 0x0808_0000, 0x1_0040
DOORBELL = ITS_BASE + TRANSLATER                 # 0x08090040
F_TRANSLATION, CLASS_IN = 0x10, 2
CFG_ABORT, CFG_BYPASS, CFG_S1, CFG_NESTED = 0b000, 0b100, 0b101, 0b111
TLBI_NH_VA = 0x12
GUEST_QUEUES = {"cmdq_shift": 8, "evtq_shift": 6}   # small queues: less guest RAM


class Doorbell:
    """Stand-in for the vITS frame: records (requester ID, offset, value) of writes."""

    def __init__(self) -> None:
        self.writes: list[tuple[int | None, int, int]] = []

    def mmio_read(self, off: int, size: int, requester_id: int | None = None) -> int:
        return 0

    def mmio_write(self, off: int, value: int, size: int, requester_id: int | None = None) -> None:
        self.writes.append((requester_id, off, value))


class GDev:
    """A guest PCI function as the guest's IOMMU core sees it."""

    is_pci = True

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.dma_mask = (1 << 64) - 1
        self.iommu_group = None

    def __hash__(self) -> int:
        return hash(("gdev", self.rid))


class EmulatedGuest:
    """Guest RAM, the guest bus with the emulated vSMMU, the guest kernel and its driver."""

    def __init__(self, wire_irq: bool = True, probe: bool = True) -> None:
        self.gmem = core.Memory()
        self.gmem.add_ram(GPA, GRAM_SIZE)
        self.bus = Bus(self.gmem)
        self.vsmmu = VirtualSmmuV3(self.gmem, "emulated")
        self.bus.map(VSMMU_BASE, VSMMU_SIZE, self.vsmmu, "vSMMUv3")
        self.bus.attach_iommu(0, 0xFFFF, self.vsmmu)
        self.its = Doorbell()
        self.bus.map(ITS_BASE, 0x2_0000, self.its, "vITS", attrs=True)
        self.k = Kernel(self.bus, KMEM, name="guest")
        self.drv = self.k.smmu = ArmSmmuV3(self.k, VSMMU_BASE, **GUEST_QUEUES)
        if wire_irq:
            self.vsmmu.irq = self.drv.handle_irq          # what the guest's boot does
        if probe:
            self.drv.probe()

    def dev(self, rid: int) -> GDev:
        d = GDev(rid)
        assert self.k.iommu.probe_device(d) is not None
        return d

    def reg(self, off: int, size: int = 4) -> int:
        return self.bus.read(VSMMU_BASE + off, size)


# -- emulated: probe --------------------------------------------------------------------------


def test_guest_driver_probes_the_emulated_vsmmu_with_qemu_virt_id_registers():
    g = EmulatedGuest()
    assert (g.reg(R.IDR0), g.reg(R.IDR1), g.reg(R.IDR5)) == (0x0D40_101A, 0x0273_0010, 0x74)
    assert g.reg(R.IDR3) == 0x1404 & ~(3 << 11)
    f = g.drv.features
    assert f & Feat.TRANS_S1 and not f & Feat.TRANS_S2 and f & Feat.TWO_LVL_STRTAB
    assert g.reg(R.CR0) == 0b1101                    # SMMUEN | EVENTQEN | CMDQEN
    assert g.vsmmu.enabled and g.vsmmu.msi_gpa is None
    # The guest's structures are in guest RAM, and its commands were all consumed.
    assert g.gmem.is_ram(g.drv.strtab, 64) and g.gmem.is_ram(g.drv.cmdq.base, 16)
    assert g.reg(R.CMDQ_CONS) == g.reg(R.CMDQ_PROD) != 0
    assert not g.reg(R.GERROR) ^ g.reg(R.GERRORN)


def test_disabled_vsmmu_passes_dma_and_msi_addresses_through():
    g = EmulatedGuest(probe=False)
    assert not g.vsmmu.enabled
    assert g.vsmmu.translate_msi(0x10, 0x1234_5040) == 0x1234_5040
    assert g.bus.dma_write(0x10, DOORBELL, 7).ok
    assert g.its.writes == [(0x10, TRANSLATER, 7)]


# -- emulated: DMA, TLBI, faults ----------------------------------------------------------------


def test_guest_dma_map_shows_in_translate_and_only_the_tlbi_removes_it():
    g = EmulatedGuest()
    dev = g.dev(0x0108)
    dom = dev.iommu_group.domain
    assert isinstance(dom, ArmSmmuDomain) and dom.stage == 1
    iova = g.k.dma_iommu.map_page(dev, DATA + 0x10, 0x2000, DmaDirection.BIDIRECTIONAL)
    for off in (0, 0x1000):
        r = g.vsmmu.translate(dev.rid, iova + off, write=True)
        assert r.pa == DATA + 0x10 + off
    assert g.bus.dma_write(dev.rid, iova + 4, 0xC0FFEE).ok
    assert g.gmem.read_u32(DATA + 0x14) == 0xC0FFEE
    # The guest clears its PTE without a TLBI: the vSMMU still has it cached ...
    page = iova & ~(PAGE - 1)
    assert dom.pgtbl.unmap(page, PAGE) == PAGE
    assert g.vsmmu.translate(dev.rid, iova, write=True).pa == DATA + 0x10
    # ... the guest's TLBI_NH_VA drops it, and the DMA now faults.
    g.drv.tlb_inv_range_domain(dom, page, PAGE)
    r = g.vsmmu.translate(dev.rid, iova, write=True)
    assert r.aborted and r.event == F_TRANSLATION
    assert g.vsmmu.translate(dev.rid, iova + 0x1000).pa == DATA + 0x1010   # its neighbour stays
    ev = g.drv.events[-1]
    assert (ev.type, ev.sid, ev.iova, ev.read) == (F_TRANSLATION, dev.rid, iova, False)


def test_guest_dma_unmap_through_the_dma_api_faults_afterwards():
    g = EmulatedGuest()
    dev = g.dev(0x0110)
    iova = g.k.dma_iommu.map_page(dev, DATA, PAGE, DmaDirection.FROM_DEVICE)
    assert g.bus.dma_write(dev.rid, iova, 1).ok
    g.k.dma_iommu.unmap_page(dev, iova, PAGE)
    r = g.bus.dma_write(dev.rid, iova, 2)
    assert not r.ok and r.iommu.event == F_TRANSLATION
    assert g.gmem.read_u32(DATA) == 1


def test_guest_stage1_fault_is_an_event_record_in_the_guest_queue_and_its_handler_sees_it():
    g = EmulatedGuest(wire_irq=False)
    dev = g.dev(0x0208)
    prod0 = g.reg(R.EVENTQ_PROD_PAGE1)
    r = g.bus.dma_read(dev.rid, 0xDEAD_B000)                 # nothing mapped there
    assert not r.ok and r.iommu.recorded
    prod, cons = g.reg(R.EVENTQ_PROD_PAGE1), g.reg(R.EVENTQ_CONS_PAGE1)
    assert prod == prod0 + 1 and cons == prod0
    raw = g.gmem.read(g.drv.evtq.slot(cons), R.EVT_SIZE)     # the record, in guest RAM
    ev = Event.decode(raw)
    assert (ev.type, ev.sid, ev.input_addr, ev.rnw, ev.s2, ev.event_class) == (
        F_TRANSLATION, 0x0208, 0xDEAD_B000, True, False, CLASS_IN)
    assert g.drv.events == []
    # The wired interrupt: the guest driver's handler takes the record.
    g.vsmmu.irq = g.drv.handle_irq
    assert g.bus.dma_write(dev.rid, 0xBEEF_0000, 0).ok is False
    assert [(e.sid, e.iova, e.read) for e in g.drv.events] == [
        (0x0208, 0xDEAD_B000, True), (0x0208, 0xBEEF_0000, False)]
    assert g.reg(R.EVENTQ_CONS_PAGE1) == g.reg(R.EVENTQ_PROD_PAGE1)
    assert g.vsmmu.hw.irq_counts["eventq"] == 2          # one per record (the first unwired)


# -- emulated: the MSI path and the route fix-up ----------------------------------------------


def test_msi_through_the_guests_stage1_reaches_the_doorbell_and_the_route_fixup_agrees():
    g = EmulatedGuest()
    dev = g.dev(0x0308)
    desc = MsiDesc(dev, 0)
    g.k.iommu.dma_prepare_msi(desc, DOORBELL)                # dma-iommu maps the doorbell page
    giova = desc.iommu_msi_addr | (DOORBELL & (PAGE - 1))
    assert giova != DOORBELL
    assert g.vsmmu.translate_msi(dev.rid, giova) == DOORBELL
    r = g.bus.dma_write(dev.rid, giova, 5)                  # the device's MSI write
    assert r.ok and r.pa == DOORBELL
    assert g.its.writes == [(dev.rid, TRANSLATER, 5)]


def test_route_fixup_of_an_unmapped_msi_address_is_none_and_leaves_a_write_fault():
    g = EmulatedGuest()
    dev = g.dev(0x0310)
    n = len(g.drv.events)
    assert g.vsmmu.translate_msi(dev.rid, 0xFFFF_F040) is None
    # QEMU's fix-up walks through smmuv3_translate(), which records the fault.
    (ev,) = g.drv.events[n:]
    assert (ev.type, ev.sid, ev.iova, ev.read) == (F_TRANSLATION, dev.rid, 0xFFFF_F040, False)
    assert g.its.writes == []


def test_assigned_device_behind_an_emulated_vsmmu_is_refused():
    g = EmulatedGuest()

    class Assigned:
        devfile, devid = None, 1

    with pytest.raises(ValueError, match="notification on MAP"):
        g.vsmmu.attach_device(0x08, Assigned())
    assert g.vsmmu.devices == {}


def test_mode_and_host_arguments_are_checked():
    mem = core.Memory()
    mem.add_ram(GPA, PAGE)
    with pytest.raises(ValueError):
        VirtualSmmuV3(mem, "nested")
    with pytest.raises(ValueError):
        VirtualSmmuV3(mem, "accel")                       # no host iommufd
    with pytest.raises(ValueError):
        VirtualSmmuV3(mem, "emulated", msi_gpa=DOORBELL)


# -- emulated: guest-controlled input never raises ---------------------------------------------

_REGS = [R.CR0, R.CR1, R.CR2, R.GBPA, R.IRQ_CTRL, R.GERRORN, R.STRTAB_BASE, R.STRTAB_BASE_CFG,
         R.CMDQ_BASE, R.CMDQ_PROD, R.CMDQ_CONS, R.EVENTQ_BASE, R.EVENTQ_PROD, R.EVENTQ_CONS,
         R.EVENTQ_PROD_PAGE1, R.EVENTQ_CONS_PAGE1, R.IDR0, R.GERROR]
_reg_write = st.tuples(st.just("reg"), st.one_of(st.sampled_from(_REGS),
                                                 st.integers(0, VSMMU_SIZE - 1)),
                       st.integers(0, (1 << 64) - 1), st.sampled_from([1, 2, 4, 8]))
_cmd = st.tuples(st.just("cmd"), st.one_of(st.sampled_from(list(R.Opcode)), st.integers(0, 255)),
                 st.integers(0, (1 << 56) - 1), st.integers(0, (1 << 64) - 1))
_mem = st.tuples(st.just("mem"), st.integers(0, 0x2_0000 // 8 - 1), st.integers(0, (1 << 64) - 1),
                 st.just(0))
_dma = st.tuples(st.just("dma"), st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1),
                 st.booleans())


def guest_scribbles(g, ops) -> None:
    """Apply random guest register writes, queued commands, RAM scribbles over the
    driver's structures and device transactions; the vSMMU must never raise."""
    for op in ops:
        if op[0] == "reg":
            _, off, value, size = op
            g.vsmmu.mmio_write(off, value & ((1 << (8 * size)) - 1), size)
            g.vsmmu.mmio_read(off, size)
        elif op[0] == "cmd":
            _, opcode, hi, d1 = op
            q = g.drv.cmdq
            d0 = opcode | (hi << 8)
            g.k.ram.write(q.slot(q.prod), d0.to_bytes(8, "little") + d1.to_bytes(8, "little"))
            q.prod = q.inc(q.prod)
            g.vsmmu.mmio_write(R.CMDQ_PROD, q.prod)
        elif op[0] == "mem":
            _, idx, value, _ = op
            base = g.drv.strtab if idx % 2 else g.drv.cmdq.base
            addr = base + (idx * 8) % 0x1000
            if g.gmem.is_ram(addr, 8):
                g.gmem.write_u64(addr, value)
        else:
            _, rid, iova, write = op
            g.vsmmu.translate(rid, iova, write)
            g.vsmmu.translate_msi(rid, iova)


@settings(max_examples=60)
@given(st.lists(st.one_of(_reg_write, _cmd, _mem, _dma), max_size=25))
def test_random_guest_register_and_command_writes_never_raise_emulated(ops):
    g = EmulatedGuest()
    g.dev(0x0008)
    guest_scribbles(g, ops)
