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

import errno
from collections import Counter
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi import core
from pymsi.errors import BusError
from pymsi.hw import smmuv3_regs as R
from pymsi.hw.bus import Bus
from pymsi.hw.smmuv3 import Event
from pymsi.kernel.arm_smmu_v3 import ArmSmmuDomain, ArmSmmuV3, Feat
from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.iommu import IOMMU_MMIO, IOMMU_WRITE
from pymsi.kernel.kernel import Kernel
from pymsi.kernel.msi import MsiDesc
from pymsi.machine import ArmVirt
from pymsi.uapi import iommufd as u
from pymsi.uapi import vfio as V
from pymsi.vmm.smmuv3 import VSMMU_BASE, VSMMU_SIZE, HostIommufd, VirtualSmmuV3

from kernel_util import Dev

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

    def dev(self, rid: int) -> Dev:
        d = Dev(rid)
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


@settings(max_examples=30)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 15), st.integers(1, 3)), max_size=12))
def test_emulated_translations_follow_the_guests_dma_maps_and_unmaps(ops):
    """Random dma_map_page / dma_unmap_page from the guest: after each, every page the
    guest's DMA API handed out translates to its buffer, every page it took back faults."""
    g = EmulatedGuest()
    dev = g.dev(0x0408)
    live: dict[int, tuple[int, int]] = {}               # iova -> (phys, npages)
    dead: set[int] = set()
    for is_map, slot, npages in ops:
        if is_map or not live:
            phys = DATA + slot * 4 * PAGE
            iova = g.k.dma_iommu.map_page(dev, phys, npages * PAGE, DmaDirection.BIDIRECTIONAL)
            live[iova] = (phys, npages)
            dead -= {iova + n * PAGE for n in range(npages)}
        else:
            iova = sorted(live)[slot % len(live)]
            _, n = live.pop(iova)
            g.k.dma_iommu.unmap_page(dev, iova, n * PAGE)
            dead |= {iova + k * PAGE for k in range(n)}
        for iova, (phys, n) in live.items():
            for k in range(n):
                assert g.vsmmu.translate(dev.rid, iova + k * PAGE, True).pa == phys + k * PAGE
        for page in dead:
            assert g.vsmmu.translate(dev.rid, page, True).aborted


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


def test_whole_guest_kernel_boots_on_the_emulated_vsmmu_and_its_msis_reach_their_handlers():
    """The guest's boot (boot_arm) on a virt board whose SMMU is the emulated vSMMU: its
    PCI MSI layer gets dma-iommu's MSI page (0xfffff040, a real Linux 6.1 guest's), and
    an emulated function's MSIs cross the vSMMU to the ITS and the guest's handlers.
    (The board's hardware ITS stands in for KVM's vITS here.)"""
    m = ArmVirt(smmu=None, devices=[{"msix": 4}], ram_size=0x0400_0000)
    vs = VirtualSmmuV3(m.ram, "emulated")
    m.bus.map(m.SMMU, VSMMU_SIZE, vs, "vSMMUv3")
    m.bus.attach_iommu(0, 0xFFFF, vs)
    m.smmu = vs
    k = m.boot()
    assert k.smmu.features & Feat.TRANS_S1 and vs.irq == k.smmu.handle_irq
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 4)
    assert {d.msg.address for d in dev.msi_descs.values()} == {0xFFFF_F040}
    assert vs.translate_msi(dev.rid, 0xFFFF_F040) == DOORBELL
    for v in range(4):
        m.functions[0].notify(v)
    m.bus.drain()
    k.handle_interrupts()
    assert [len(drv.fired[v]) for v in range(4)] == [1, 1, 1, 1]
    assert k.smmu.events == []


def test_emulated_transactions_call_the_hardware_model_with_no_vmm_frame_between():
    """Bus.dma_* calls translate for every DMA and MSI write: in emulated mode it is the
    hardware model's own method, so the VMM adds no Python frame to the hot path."""
    g = EmulatedGuest()
    for name in ("translate", "translate_batch"):
        m = getattr(g.vsmmu, name)
        assert m.__self__ is g.vsmmu.hw and m.__func__ is getattr(type(g.vsmmu.hw), name)
    dev = g.dev(0x0118)
    iova = g.k.dma_iommu.map_page(dev, DATA, PAGE, DmaDirection.FROM_DEVICE)
    assert g.bus.dma_write(dev.rid, iova, 6).ok and g.gmem.read_u32(DATA) == 6


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
                 st.tuples(st.integers(0, (1 << 24) - 1),
                           st.one_of(st.sampled_from([0x0008, 0x0010]), st.integers(0, 0xFFFF),
                                     st.integers(0, (1 << 32) - 1))),
                 st.one_of(st.integers(0, 31), st.integers(0, (1 << 64) - 1)))
_mem = st.tuples(st.just("mem"), st.integers(0, 0x2_0000 // 8 - 1), st.integers(0, (1 << 64) - 1),
                 st.just(0))
_dma = st.tuples(st.just("dma"), st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1),
                 st.booleans())


def guest_scribbles(vsmmu, drv, gmem, ops) -> None:
    """Apply random guest register writes, queued commands, RAM scribbles over the
    driver's structures and device transactions; the vSMMU must never raise."""
    for op in ops:
        if op[0] == "reg":
            _, off, value, size = op
            vsmmu.mmio_write(off, value & ((1 << (8 * size)) - 1), size)
            vsmmu.mmio_read(off, size)
        elif op[0] == "cmd":
            _, opcode, (mid, sid), d1 = op
            q = drv.cmdq
            d0 = opcode | mid << 8 | sid << 32
            gmem.write(q.slot(q.prod), d0.to_bytes(8, "little") + d1.to_bytes(8, "little"))
            q.prod = q.inc(q.prod)
            vsmmu.mmio_write(R.CMDQ_PROD, q.prod)
            drv.gerror_handler()                 # a refused command: skipped, as Linux does
        elif op[0] == "mem":
            _, idx, value, _ = op
            base = drv.strtab if idx % 2 else drv.cmdq.base
            addr = base + (idx * 8) % 0x1000
            if gmem.is_ram(addr, 8):
                gmem.write_u64(addr, value)
        else:
            _, rid, iova, write = op
            vsmmu.translate(rid, iova, write)
            vsmmu.translate_msi(rid, iova)


@settings(max_examples=60)
@given(st.lists(st.one_of(_reg_write, _cmd, _mem, _dma), max_size=25))
def test_random_guest_register_and_command_writes_never_raise_emulated(ops):
    g = EmulatedGuest()
    g.dev(0x0008)
    guest_scribbles(g.vsmmu, g.drv, g.gmem, ops)


# -- accelerated mode -----------------------------------------------------------------------

VSID = 0x0010                 # the guest's StreamID for the assigned device (not its host RID)
RW = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE | u.IOMMU_IOAS_MAP_FIXED_IOVA


class UserRam:
    """Guest RAM as the VMM's user mapping of it: [GPA, GPA + size) at user VA ``va``.
    The same bytes KVM and the physical SMMU (through stage 2) see.  (The machine uses
    pymsi.vmm.memory.guest_memory, a core.Memory aliasing those host pages.)"""

    def __init__(self, k, va: int, size: int) -> None:
        self.k, self.va, self.size = k, va, size

    def is_ram(self, addr: int, size: int = 1) -> bool:
        return GPA <= addr and addr + size <= GPA + self.size

    def read(self, addr: int, n: int) -> bytes:
        if not self.is_ram(addr, n):
            raise BusError(f"read at {addr:#x}")
        return self.k.user_read(self.va + addr - GPA, n)

    def write(self, addr: int, data: bytes) -> None:
        if not self.is_ram(addr, len(data)):
            raise BusError(f"write at {addr:#x}")
        self.k.user_write(self.va + addr - GPA, bytes(data))

    def read_u32(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little")

    def write_u32(self, addr: int, v: int) -> None:
        self.write(addr, v.to_bytes(4, "little"))

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, v: int) -> None:
        self.write(addr, v.to_bytes(8, "little"))


class Assigned:
    """What the vSMMU needs of a VFIO device: its cdev File and iommufd device id."""

    def __init__(self, devfile, devid: int) -> None:
        self.devfile, self.devid = devfile, devid


class AccelRig:
    """A host with a nested SMMU, its devices on vfio-pci bound to the VMM's iommufd
    and attached to a nest parent over guest RAM; the accelerated vSMMU on the guest's
    bus; the guest kernel and its SMMU driver (booted by :meth:`boot_guest`)."""

    def __init__(self, ndev: int = 1, **host_kw) -> None:
        self.m = ArmVirt(smmu="nested", devices=[{"msix": 2}] * ndev, **host_kw)
        k = self.k = self.m.boot()
        self.iommufd = k.open("/dev/iommu")
        a = u.IommuIoasAlloc()
        self.iommufd.ioctl(u.IOMMU_IOAS_ALLOC, a)
        self.ioas = a.out_ioas_id
        self.va = k.mmap(GRAM_SIZE)
        k.user_write(self.va, bytes(GRAM_SIZE))                  # -mem-prealloc
        self.iommufd.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
            ioas_id=self.ioas, user_va=self.va, length=GRAM_SIZE, iova=GPA, flags=RW))
        self.devs = []
        for i in range(ndev):
            pdev = k.pci.devices[i]
            k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
            k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
            f = k.open(f"/dev/vfio/devices/vfio{i}")
            b = V.VfioDeviceBindIommufd(iommufd=self.iommufd.fd)
            f.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
            pdev.set_master()
            self.devs.append(Assigned(f, b.out_devid))
        h = u.IommuHwptAlloc(dev_id=self.devs[0].devid, pt_id=self.ioas,
                             flags=u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.iommufd.ioctl(u.IOMMU_HWPT_ALLOC, h)
        self.parent = h.out_hwpt_id
        for d in self.devs:
            d.devfile.ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                            V.VfioDeviceAttachIommufdPt(pt_id=self.parent))
        self.gram = UserRam(k, self.va, GRAM_SIZE)
        self.gbus = Bus(self.gram)
        self.vsmmu = VirtualSmmuV3(self.gram, "accel",
                                   HostIommufd(k, self.iommufd, self.ioas, self.parent))
        self.gbus.map(VSMMU_BASE, VSMMU_SIZE, self.vsmmu, "vSMMUv3")

    def boot_guest(self) -> None:
        self.gk = Kernel(self.gbus, KMEM, name="guest")
        self.drv = self.gk.smmu = ArmSmmuV3(self.gk, VSMMU_BASE, **GUEST_QUEUES)
        self.vsmmu.irq = self.drv.handle_irq
        self.drv.probe()

    def gdev(self, vsid: int = VSID) -> Dev:
        d = Dev(vsid)
        assert self.gk.iommu.probe_device(d) is not None
        return d

    def booted(self) -> Dev:
        """The usual start: device 0 attached at guest StreamID VSID, the guest booted
        on the vSMMU, and the guest's view of the device probed."""
        self.vsmmu.attach_device(VSID, self.devs[0])
        self.boot_guest()
        return self.gdev()

    @property
    def ctx(self):
        return self.iommufd.private_data

    def kind(self, oid):
        obj = self.ctx.objects.get(oid)
        return None if obj is None else obj.kind

    def rid(self, i: int = 0) -> int:
        return self.k.pci.devices[i].rid

    def phys_ste(self, i: int = 0) -> list[int]:
        smmu = self.k.smmu
        addr = smmu._ste_addr(self.rid(i))
        return [self.k.ram.read_u64(addr + 8 * n) for n in range(4)]

    def phys_config(self, i: int = 0) -> int:
        return (self.phys_ste(i)[0] >> 1) & 0b111

    def dma_write(self, addr: int, value: int, i: int = 0):
        return self.m.bus.dma_write(self.rid(i), addr, value)


def host_spy(k):
    """Every command the host SMMU driver queues from now on (raw doublewords only)."""
    seen = []
    issue = k.smmu.cmdq_issue_cmdlist

    def wrapped(cmds, sync=True):
        cmds = list(cmds)
        seen.extend(c for c in cmds if isinstance(c, tuple))
        return issue(cmds, sync)

    k.smmu.cmdq_issue_cmdlist = wrapped
    return seen


def test_accel_device_gets_a_viommu_and_follows_gbpa_then_the_guests_configuration():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    v = rig.vsmmu
    assert rig.kind(v.viommu_id) == "viommu"
    assert rig.kind(v.abort_hwpt_id) == rig.kind(v.bypass_hwpt_id) == "hwpt_nested"
    assert v.veventq_fd is None                      # the guest's event queue is still off
    # The vSMMU is off and GBPA.ABORT is clear: the bypass HWPT, i.e. stage 2 only.
    assert v.hwpt_of(VSID) == v.bypass_hwpt_id
    assert rig.phys_config() == 0b110
    vdevs = [o for o in rig.ctx.objects.values() if o.kind == "vdevice"]
    assert [(d.virt_id, d.idev.dev.rid) for d in vdevs] == [(VSID, rig.rid())]
    rig.boot_guest()
    assert rig.vsmmu.enabled
    assert rig.kind(v.veventq_id) == "veventq"
    assert rig.ctx.objects[v.veventq_id].depth == 1 << GUEST_QUEUES["evtq_shift"]
    # Enabled, and the guest has no STE for the StreamID yet: aborted.
    assert v.hwpt_of(VSID) == v.abort_hwpt_id and rig.phys_config() == 0b000
    assert (rig.vsmmu.mmio_read(R.IDR0), rig.vsmmu.mmio_read(R.IDR5)) == (0x0D40_101A, 0x74)


def test_accel_guest_ste_becomes_a_nested_hwpt_that_the_physical_smmu_walks():
    rig = AccelRig()
    gdev = rig.booted()
    hwpt = rig.vsmmu.hwpt_of(VSID)
    assert rig.kind(hwpt) == "hwpt_nested"
    master = rig.drv.masters[gdev]
    ste = rig.phys_ste()
    assert (ste[0] >> 1) & 0b111 == CFG_NESTED
    assert ste[0] & R.STE0_S1CTXPTR.mask == master.cd_table       # the guest's CD, a GPA
    # Guest DMA: the physical device writes where the guest's DMA API mapped.
    iova = rig.gk.dma_iommu.map_page(gdev, DATA, PAGE, DmaDirection.FROM_DEVICE)
    assert iova != DATA
    assert rig.dma_write(iova + 8, 0x5A5A).ok
    assert rig.gram.read_u32(DATA + 8) == 0x5A5A
    # The guest maps the vITS doorbell in its stage 1 (dma-iommu's MSI page) ...
    desc = MsiDesc(gdev, 0)
    rig.gk.iommu.dma_prepare_msi(desc, DOORBELL)
    giova = desc.iommu_msi_addr | (DOORBELL & (PAGE - 1))
    # ... which faults at stage 2 until the VMM maps the doorbell page at its GPA.
    r = rig.dma_write(giova, 3)
    assert not r.ok and r.iommu.fault.stage == 2
    rig.iommufd.ioctl(u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(
        ioas_id=rig.ioas, dev_id=rig.devs[0].devid, iova=DOORBELL & ~(PAGE - 1)))
    r = rig.dma_write(giova, 3)
    assert r.ok and r.pa == DOORBELL
    assert rig.vsmmu.translate_msi(gdev.rid, giova) == DOORBELL == rig.vsmmu.msi_gpa


@contextmanager
def host_ioctls(rig):
    """Every ioctl the VMM makes on its iommufd while inside: (cmd, arg, payload), the
    payload being the user buffer an IOMMU_HWPT_ALLOC / IOMMU_HWPT_INVALIDATE carries."""
    f, seen = rig.iommufd, []
    real = f.ioctl

    def ioctl(c, arg=0):
        data = None
        if c == u.IOMMU_HWPT_ALLOC and arg.data_len:
            data = rig.k.user_read(arg.data_uptr, arg.data_len)
        elif c == u.IOMMU_HWPT_INVALIDATE:
            data = rig.k.user_read(arg.data_uptr, arg.entry_len * arg.entry_num)
        seen.append((c, arg, data))
        return real(c, arg)

    f.ioctl = ioctl
    try:
        yield seen
    finally:
        del f.ioctl


def guest_cmd(rig, opcode: int, sid: int = 0, d1: int = 0, **fields) -> None:
    """The guest driver queues one raw command (+ CMD_SYNC) and waits for it."""
    d0 = opcode | sid << 32
    for name, value in fields.items():
        d0 |= value << {"asid": 48, "vmid": 32}[name]
    rig.drv.cmdq_issue_cmdlist([(d0, d1)])


def test_nesting_masks_are_the_guest_owned_ste_fields():
    """Arm STE layout: dword 0 V[0], Config[3:1], S1Fmt[5:4], S1ContextPtr[51:6],
    S1CDMax[63:59]; dword 1 S1DSS[1:0], S1CIR[3:2], S1COR[5:4], S1CSH[7:6],
    S1STALLD[27], EATS[29:28] (QEMU's STE1_MASK and Linux's both have EATS)."""
    assert R.STE0_NESTING_ALLOWED == 0xF80F_FFFF_FFFF_FFFF
    assert R.STE1_NESTING_ALLOWED == 0x3800_00FF


def test_accel_guest_ste_eats_is_passed_to_the_host_which_sets_the_physical_eats():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    addr = rig.drv._ste_addr(VSID)
    rig.gram.write_u64(addr + 8, rig.gram.read_u64(addr + 8) | 1 << 28)   # EATS = full ATS
    with host_ioctls(rig) as seen:
        guest_cmd(rig, R.Opcode.CFGI_STE, VSID, 1)
    (vste,) = [data for c, _, data in seen if c == u.IOMMU_HWPT_ALLOC]
    assert (int.from_bytes(vste[8:16], "little") >> 28) & 0b11 == 1
    assert rig.kind(rig.vsmmu.hwpt_of(VSID)) == "hwpt_nested"
    assert rig.phys_config() == CFG_NESTED and (rig.phys_ste()[1] >> 28) & 0b11 == 0


def test_accel_guest_tlbi_reaches_the_host_and_takes_effect():
    rig = AccelRig()
    gdev = rig.booted()
    dom = gdev.iommu_group.domain
    iova = rig.gk.dma_iommu.map_page(gdev, DATA, PAGE, DmaDirection.BIDIRECTIONAL)
    assert rig.dma_write(iova, 1).ok                     # the host IOTLB now holds it
    assert dom.pgtbl.unmap(iova, PAGE) == PAGE           # the guest clears the PTE, no TLBI
    assert rig.dma_write(iova, 2).ok                     # still cached on the host
    seen = host_spy(rig.k)
    vmid = rig.phys_ste()[2] & 0xFFFF
    rig.drv.tlb_inv_range_domain(dom, iova, PAGE)        # the guest's TLBI_NH_VA + CMD_SYNC
    tlbis = [(d0 & 0xFF, d0 >> 48, (d0 >> 32) & 0xFFFF, d1 & ~0xFFF) for d0, d1 in seen
             if d0 & 0xFF == TLBI_NH_VA]
    assert tlbis == [(TLBI_NH_VA, dom.asid, vmid, iova)]
    assert vmid and rig.vsmmu.stats["invalidations"] >= 1
    r = rig.dma_write(iova, 3)
    assert not r.ok and r.iommu.fault.stage == 1
    assert rig.gram.read_u32(DATA) == 2


def test_accel_guest_cfgi_cd_reaches_the_host_with_the_physical_streamid():
    rig = AccelRig()
    gdev = rig.booted()
    iova = rig.gk.dma_iommu.map_page(gdev, DATA, PAGE, DmaDirection.FROM_DEVICE)
    assert rig.dma_write(iova, 1).ok                     # the host caches the guest's CD
    seen = host_spy(rig.k)
    dom = rig.drv.domain_alloc_paging(gdev)              # another stage-1 domain, new ASID
    rig.gk.iommu.attach_device(dom, gdev)                # same CD slot, new contents
    cfgi_cd = [d0 >> 32 for d0, _ in seen if d0 & 0xFF == 0x05]
    assert cfgi_cd and set(cfgi_cd) == {rig.rid()}       # the physical StreamID
    dom.map_pages(0x5000_0000, DATA + PAGE, PAGE, core.Prot.READ | core.Prot.WRITE)
    assert rig.dma_write(0x5000_0100, 0x77).ok           # the new CD is the one used
    assert rig.gram.read_u32(DATA + PAGE + 0x100) == 0x77
    assert not rig.dma_write(iova, 2).ok                 # the old domain's mapping is gone


def test_accel_physical_stage1_fault_lands_in_the_guest_event_queue_with_the_vsid():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    host_events = len(rig.k.smmu.events)
    assert not rig.dma_write(0x7777_7000, 9).ok         # nothing mapped in the guest's stage 1
    assert len(rig.k.smmu.events) == host_events        # not logged by the host ...
    assert rig.drv.events == []                         # ... and not in the guest yet
    assert rig.vsmmu.event_pending
    assert rig.vsmmu.event_read() == 1                  # the vEVENTQ fd handler
    assert not rig.vsmmu.event_pending
    (ev,) = rig.drv.events
    assert (ev.type, ev.sid, ev.iova, ev.read, ev.s2) == (
        F_TRANSLATION, VSID, 0x7777_7000, False, False)
    assert rig.vsmmu.event_read() == 0


def test_accel_veventq_is_read_with_poll_and_read_on_its_descriptor(monkeypatch):
    """The VMM reaches its vEVENTQ as any process reaches a file it holds: poll(2) and
    read(2) on the descriptor IOMMU_VEVENTQ_ALLOC returned, not the kernel's fd table."""
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    assert not rig.dma_write(0x7777_7000, 9).ok
    calls = []
    for name in ("read", "poll"):
        real = getattr(rig.k, name)
        monkeypatch.setattr(rig.k, name, lambda fd, *a, _r=real, _n=name: (
            calls.append((_n, fd)), _r(fd, *a))[1])
    n = rig.vsmmu.event_read()
    assert n == 1 and len(rig.drv.events) == 1
    fd = rig.vsmmu.veventq_fd
    assert ("read", fd) in calls and ("poll", fd) in calls
    assert {f for _, f in calls} == {fd}


def test_accel_full_veventq_is_counted_and_later_events_still_reach_the_guest():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    depth = 1 << GUEST_QUEUES["evtq_shift"]
    for n in range(depth + 3):                          # 3 more than the vEVENTQ holds
        assert not rig.dma_write(0x100_0000 + n * PAGE, n).ok
    assert rig.vsmmu.event_read() == depth
    assert rig.vsmmu.stats["veventq_overflows"] == 1    # one LOST_EVENTS header
    assert [e.iova for e in rig.drv.events] == [0x100_0000 + n * PAGE for n in range(depth)]
    assert not rig.dma_write(0x200_0000, 0).ok
    assert rig.vsmmu.event_read() == 1
    assert (rig.drv.events[-1].sid, rig.drv.events[-1].iova) == (VSID, 0x200_0000)


def test_accel_two_devices_keep_their_own_vsid_and_hwpt():
    rig = AccelRig(ndev=2)
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.vsmmu.attach_device(VSID + 8, rig.devs[1])
    rig.boot_guest()
    a, b = rig.gdev(VSID), rig.gdev(VSID + 8)
    ha, hb = rig.vsmmu.hwpt_of(VSID), rig.vsmmu.hwpt_of(VSID + 8)
    assert ha != hb and rig.kind(ha) == rig.kind(hb) == "hwpt_nested"
    ia = rig.gk.dma_iommu.map_page(a, DATA, PAGE, DmaDirection.FROM_DEVICE)
    assert rig.dma_write(ia, 0xA, i=0).ok and rig.gram.read_u32(DATA) == 0xA
    assert not rig.dma_write(ia, 0xB, i=1).ok           # b's stage 1 does not map it
    rig.vsmmu.event_read()
    assert [(e.sid, e.iova) for e in rig.drv.events] == [(VSID + 8, ia)]
    assert b.iommu_group is not a.iommu_group


def test_accel_reset_puts_devices_back_on_bypass_and_the_guest_can_probe_again():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    nested = rig.vsmmu.hwpt_of(VSID)
    rig.vsmmu.reset()
    assert rig.vsmmu.mmio_read(R.CR0) == 0 and not rig.vsmmu.enabled
    assert rig.vsmmu.hwpt_of(VSID) == rig.vsmmu.bypass_hwpt_id and rig.kind(nested) is None
    rig.boot_guest()                                    # a new guest kernel probes it
    rig.gdev()
    assert rig.kind(rig.vsmmu.hwpt_of(VSID)) == "hwpt_nested"
    assert rig.phys_config() == CFG_NESTED


def test_accel_sw_msi_guest_must_identity_map_the_rmr_or_its_vsmmu_records_the_msi_fault():
    """sw-msi: the host puts the doorbell at IOVA 0x8000000 of stage 2 and programs the
    device with 0x8000040; nested, that address first meets the guest's stage 1."""
    rig = AccelRig(msi_design="sw-msi")
    gdev = rig.booted()
    efd = rig.k.eventfd()
    rig.devs[0].devfile.ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
        flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
        index=V.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=1, data=[efd.fd]))
    fn = rig.m.functions[0]
    assert fn.msix_entry(0)[0] == 0x0800_0040            # the host's SW_MSI window

    def fire() -> int:
        fn.notify(0)
        rig.m.bus.drain()
        rig.k.handle_interrupts()
        return efd.f_op.count

    # The guest did not identity-map the window (no RMR honoured): its stage 1
    # faults the MSI, and the fault is the guest's, with its StreamID.
    assert fire() == 0
    assert rig.vsmmu.event_read() == 1
    ev = rig.drv.events[-1]
    assert (ev.type, ev.sid, ev.iova, ev.read) == (F_TRANSLATION, VSID, 0x0800_0040, False)
    # The guest identity-maps the RMR [0x8000000, 0x8100000): the MSI is delivered.
    rig.gk.iommu.map(gdev.iommu_group.domain, 0x0800_0000, 0x0800_0000, 0x10_0000,
                     IOMMU_WRITE | IOMMU_MMIO)
    assert fire() == 1
    assert rig.vsmmu.event_read() == 0


def test_accel_per_vector_physical_msi_at_the_guests_iova_crosses_both_stages():
    """per-vector: the VMM hands the guest's MSI IOVA down (VFIO_DEVICE_MSI_IOVA) and maps
    the doorbell page where the guest's stage 1 points (IOMMU_IOAS_MAP_MSI at its GPA);
    the physical function then fires at the guest's IOVA."""
    rig = AccelRig()                                     # per-vector is the host's design
    gdev = rig.booted()
    desc = MsiDesc(gdev, 0)
    rig.gk.iommu.dma_prepare_msi(desc, DOORBELL)         # the guest's MSI page
    giova = desc.iommu_msi_addr | (DOORBELL & (PAGE - 1))
    f = rig.devs[0].devfile
    f.ioctl(V.VFIO_DEVICE_MSI_IOVA, V.VfioDeviceMsiIova(
        flags=V.VFIO_MSI_IOVA_SET, index=V.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=1,
        iova=[giova & ~(PAGE - 1)]))                   # the page; the ITS keeps its offset
    rig.iommufd.ioctl(u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(
        ioas_id=rig.ioas, dev_id=rig.devs[0].devid, iova=DOORBELL & ~(PAGE - 1)))
    efd = rig.k.eventfd()
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
        flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
        index=V.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=1, data=[efd.fd]))
    fn = rig.m.functions[0]
    assert fn.msix_entry(0)[0] == giova
    fn.notify(0)
    rig.m.bus.drain()
    rig.k.handle_interrupts()
    assert efd.f_op.count == 1
    assert rig.vsmmu.event_read() == 0 and rig.drv.events == []
    # The guest drops its MSI page (unmap + TLBI, forwarded): the next MSI is the guest's fault.
    rig.gk.iommu.unmap(gdev.iommu_group.domain, giova & ~(PAGE - 1), PAGE)
    fn.notify(0)
    rig.m.bus.drain()
    rig.k.handle_interrupts()
    assert efd.f_op.count == 1
    assert rig.vsmmu.event_read() == 1
    assert (rig.drv.events[-1].sid, rig.drv.events[-1].iova) == (VSID, giova)


def test_accel_abort_and_bypass_guest_stes_use_the_preallocated_hwpts():
    rig = AccelRig()
    gdev = rig.booted()
    nested = rig.vsmmu.hwpt_of(VSID)
    assert rig.kind(nested) == "hwpt_nested"
    rig.gk.iommu.attach_device(rig.drv.identity_domain(), gdev)       # a bypass STE
    assert rig.vsmmu.hwpt_of(VSID) == rig.vsmmu.bypass_hwpt_id
    assert rig.phys_config() == 0b110
    assert rig.kind(nested) is None                                   # the old one is freed
    assert rig.dma_write(DATA + 0x40, 4).ok and rig.gram.read_u32(DATA + 0x40) == 4
    rig.gk.iommu.release_device(gdev)                                 # an abort STE
    assert rig.vsmmu.hwpt_of(VSID) == rig.vsmmu.abort_hwpt_id
    assert rig.phys_config() == CFG_ABORT
    assert not rig.dma_write(DATA + 0x40, 5).ok


def test_accel_detach_returns_the_device_to_the_nest_parent_and_frees_the_viommu():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    v = rig.vsmmu
    ids = [v.viommu_id, v.abort_hwpt_id, v.bypass_hwpt_id, v.veventq_id, v.hwpt_of(VSID)]
    v.detach_device(VSID)
    assert all(rig.kind(oid) is None for oid in ids)
    assert [o.kind for o in rig.ctx.objects.values()].count("vdevice") == 0
    assert rig.phys_config() == 0b110                                # the parent: stage 2
    assert v.viommu_id is None and v.devices == {}


def test_accel_device_hotplugged_into_a_running_guest_follows_its_stream_table():
    rig = AccelRig()
    rig.boot_guest()                                    # no assigned device yet
    assert rig.vsmmu.viommu_id is None and rig.vsmmu.enabled
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    assert rig.kind(rig.vsmmu.veventq_id) == "veventq"  # the guest's queue is already on
    assert rig.vsmmu.hwpt_of(VSID) == rig.vsmmu.abort_hwpt_id   # no STE for it yet
    rig.gdev()                                          # the guest probes the new function
    assert rig.kind(rig.vsmmu.hwpt_of(VSID)) == "hwpt_nested"
    assert rig.phys_config() == CFG_NESTED


def test_accel_host_smmu_without_what_the_vsmmu_advertises_is_refused():
    rig = AccelRig(ril=False)
    with pytest.raises(ValueError, match="IDR3_RIL"):
        rig.vsmmu.attach_device(VSID, rig.devs[0])
    assert rig.vsmmu.viommu_id is None
    assert not any(o.kind == "viommu" for o in rig.ctx.objects.values())


def test_accel_refuses_emulated_endpoints():
    rig = AccelRig()
    with pytest.raises(ValueError, match="not allowed"):
        rig.vsmmu.translate(VSID, 0x1000)
    with pytest.raises(ValueError, match="not allowed"):
        rig.vsmmu.translate_batch([VSID], [0x1000], None, None)


# -- accel: GBPA, each forwarded command, STE ranges, a refused invalidation ----------------

GBPA_UPDATE, GBPA_ABORT = 1 << 31, 1 << 20


def test_accel_gbpa_abort_while_disabled_moves_the_device_to_the_abort_hwpt_and_back():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])            # the guest has not enabled it
    v = rig.vsmmu
    assert v.hwpt_of(VSID) == v.bypass_hwpt_id and rig.dma_write(DATA, 1).ok
    v.mmio_write(R.GBPA, GBPA_UPDATE | GBPA_ABORT)
    assert v.mmio_read(R.GBPA) & (GBPA_UPDATE | GBPA_ABORT) == GBPA_ABORT   # update done
    assert v.hwpt_of(VSID) == v.abort_hwpt_id and rig.phys_config() == CFG_ABORT
    assert not rig.dma_write(DATA, 2).ok and rig.gram.read_u32(DATA) == 1
    v.mmio_write(R.GBPA, GBPA_UPDATE)                     # ABORT clear: bypass again
    assert v.hwpt_of(VSID) == v.bypass_hwpt_id and rig.phys_config() == 0b110
    assert rig.dma_write(DATA, 3).ok and rig.gram.read_u32(DATA) == 3


# Command opcodes as the Arm SMMUv3 spec numbers them.
TLBI_NH_ALL, TLBI_NH_ASID, TLBI_NH_VAA, TLBI_NSNH_ALL = 0x10, 0x11, 0x13, 0x30
CFGI_STE, CFGI_STE_RANGE, CFGI_CD, CFGI_CD_ALL = 0x03, 0x04, 0x05, 0x06


@pytest.mark.parametrize("op", [TLBI_NH_ALL, TLBI_NH_ASID, TLBI_NH_VA, TLBI_NH_VAA,
                                TLBI_NSNH_ALL])
def test_accel_each_guest_tlbi_reaches_the_host_with_the_vmid_and_takes_effect(op):
    rig = AccelRig()
    gdev = rig.booted()
    dom = gdev.iommu_group.domain
    iova = rig.gk.dma_iommu.map_page(gdev, DATA, PAGE, DmaDirection.BIDIRECTIONAL)
    assert rig.dma_write(iova, 1).ok                      # the host IOTLB holds it
    assert dom.pgtbl.unmap(iova, PAGE) == PAGE            # PTE cleared, no TLBI yet
    assert rig.dma_write(iova, 2).ok
    vmid = rig.phys_ste()[2] & 0xFFFF
    seen = host_spy(rig.k)
    asid = dom.asid if op in (TLBI_NH_ASID, TLBI_NH_VA) else 0
    d1 = iova if op in (TLBI_NH_VA, TLBI_NH_VAA) else 0
    guest_cmd(rig, op, d1=d1, asid=asid)
    want = TLBI_NH_ALL if op == TLBI_NSNH_ALL else op     # NSNH_ALL: NH_ALL of the VMID
    host = [(d0 & 0xFF, (d0 >> 32) & 0xFFFF, d0 >> 48, b & ~0xFFF) for d0, b in seen
            if d0 & 0xFF in (op, want)]
    assert host == [(want, vmid, asid, d1)] and vmid
    r = rig.dma_write(iova, 3)
    assert not r.ok and r.iommu.fault.stage == 1 and rig.gram.read_u32(DATA) == 2


def test_accel_guest_cfgi_cd_all_reaches_the_host_with_the_physical_streamid():
    rig = AccelRig()
    gdev = rig.booted()
    iova = rig.gk.dma_iommu.map_page(gdev, DATA, 2 * PAGE, DmaDirection.FROM_DEVICE)
    assert rig.dma_write(iova, 1).ok                      # the host caches the guest's CD
    cd = rig.drv.masters[gdev].cd_table
    rig.gram.write_u64(cd, rig.gram.read_u64(cd) & ~(1 << 31))   # CD 0 V (bit 31) clear
    seen = host_spy(rig.k)
    guest_cmd(rig, CFGI_CD_ALL, VSID)
    assert [d0 >> 32 for d0, _ in seen if d0 & 0xFF == CFGI_CD_ALL] == [rig.rid()]
    # A walk the IOTLB cannot answer reads the CD again: now invalid, it faults.
    assert not rig.dma_write(iova + PAGE, 3).ok and rig.gram.read_u32(DATA + PAGE) == 0
    # A StreamID with no assigned device is not forwarded.
    seen.clear()
    guest_cmd(rig, CFGI_CD_ALL, VSID + 1)
    assert [d0 for d0, _ in seen if d0 & 0xFF == CFGI_CD_ALL] == []


@pytest.mark.parametrize("span,covers", [(4, True), (31, True), (0, False), (3, False)])
def test_accel_guest_cfgi_ste_range_installs_only_the_streamids_it_covers(span, covers):
    """CFGI_STE_RANGE invalidates 2^(Range+1) StreamIDs aligned on that size (Range 31:
    all).  VSID 0x10 is in [0x00, 0x20) (Range 4) but not in [0x08, 0x0a) (Range 0 at
    0x08) nor [0x00, 0x10) (Range 3 at 0x00)."""
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    nested = rig.vsmmu.hwpt_of(VSID)
    addr = rig.drv._ste_addr(VSID)
    s0 = rig.gram.read_u64(addr)
    rig.gram.write_u64(addr, (s0 & ~0b1110) | CFG_BYPASS << 1)   # the guest's new STE: bypass
    start = {4: 0x1F, 31: 0, 0: 0x08, 3: 0x00}[span]
    guest_cmd(rig, CFGI_STE_RANGE, start, span)
    if covers:
        assert rig.vsmmu.hwpt_of(VSID) == rig.vsmmu.bypass_hwpt_id and rig.kind(nested) is None
        assert rig.phys_config() == 0b110
    else:
        assert rig.vsmmu.hwpt_of(VSID) == nested and rig.phys_config() == CFG_NESTED


def test_accel_host_refusing_an_invalidation_fails_the_guests_command():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    v, q = rig.vsmmu, rig.drv.cmdq
    v.irq = None                          # the driver's recovery waits for us to look
    errors = v.stats["host_errors"]
    assert not (v.mmio_read(R.GERROR) ^ v.mmio_read(R.GERRORN)) & 1
    at = q.prod                                           # where the guest's TLBI goes
    with refused(rig.iommufd, u.IOMMU_HWPT_INVALIDATE, errno.EIO):
        rig.gram.write(q.slot(q.prod), TLBI_NH_ALL.to_bytes(8, "little") + bytes(8))
        q.prod = q.inc(q.prod)
        rig.gram.write(q.slot(q.prod), TLBI_NH_ALL.to_bytes(8, "little") + bytes(8))
        q.prod = q.inc(q.prod)
        v.mmio_write(R.CMDQ_PROD, q.prod)
    cons = v.mmio_read(R.CMDQ_CONS)
    assert (cons >> 24) & 0x7F == 1                       # CMDQ_CONS.ERR = CERROR_ILL
    assert cons & q.wrap_mask == at                       # stopped at the failing command
    assert (v.mmio_read(R.GERROR) ^ v.mmio_read(R.GERRORN)) & 1      # GERROR.CMDQ_ERR
    assert v.stats["host_errors"] == errors + 1           # the second one was not tried
    # The guest driver skips the command (as Linux does); the queue runs on.
    rig.drv.gerror_handler()
    assert v.mmio_read(R.CMDQ_CONS) & q.wrap_mask == q.prod
    assert not (v.mmio_read(R.GERROR) ^ v.mmio_read(R.GERRORN)) & 1


# -- accel: the host refuses; every host object stays accounted for -------------------------


def kinds(rig) -> Counter:
    """How many host iommufd objects of each kind the VMM's context holds."""
    return Counter(o.kind for o in rig.ctx.objects.values())


BASE_KINDS = {"ioas": 1, "device": 1, "hwpt_paging": 1}     # the VMM's own set-up (one device)


@contextmanager
def refused(f, cmd: int, err: int):
    """The host kernel refuses ioctl ``cmd`` on File ``f`` with ``err`` while inside."""
    real = f.ioctl

    def ioctl(c, arg=0):
        if c == cmd:
            raise OSError(err, f"injected {errno.errorcode[err]}")
        return real(c, arg)

    f.ioctl = ioctl
    try:
        yield
    finally:
        del f.ioctl


def test_accel_detach_refused_by_the_host_changes_nothing_and_a_retry_frees_everything():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    v = rig.vsmmu
    nested, before = v.hwpt_of(VSID), kinds(rig)
    with refused(rig.devs[0].devfile, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, errno.EBUSY):
        with pytest.raises(OSError) as e:
            v.detach_device(VSID)
    assert e.value.errno == errno.EBUSY
    assert kinds(rig) == before and v.hwpt_of(VSID) == nested      # still behind the vSMMU
    assert v.devices == {VSID: rig.devs[0]} and rig.phys_config() == CFG_NESTED
    v.detach_device(VSID)                                          # the retry
    assert kinds(rig) == BASE_KINDS and v.devices == {} and v.viommu_id is None
    assert rig.phys_config() == 0b110                              # the nest parent


@pytest.mark.parametrize("where", ["vdevice", "install"])
def test_accel_failed_first_attach_leaves_no_viommu_behind(where):
    rig = AccelRig()
    rig.boot_guest()                                   # the guest's event queue is on: a vEVENTQ
    fds = len(rig.k.files)
    if where == "vdevice":
        with refused(rig.iommufd, u.IOMMU_VDEVICE_ALLOC, errno.EEXIST), pytest.raises(OSError):
            rig.vsmmu.attach_device(VSID, rig.devs[0])
    else:
        with refused(rig.devs[0].devfile, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, errno.EBUSY), \
                pytest.raises(OSError):
            rig.vsmmu.attach_device(VSID, rig.devs[0])
    assert kinds(rig) == BASE_KINDS and len(rig.k.files) == fds
    v = rig.vsmmu
    assert v.devices == {} and v.viommu_id is v.abort_hwpt_id is v.veventq_fd is None
    rig.vsmmu.attach_device(VSID, rig.devs[0])         # the host agrees now: a normal attach
    assert rig.kind(v.viommu_id) == "viommu" and rig.kind(v.veventq_id) == "veventq"


def test_accel_event_the_guest_queue_drops_is_not_counted_as_propagated():
    rig = AccelRig()
    rig.vsmmu.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    rig.vsmmu.mmio_write(R.CR0, rig.vsmmu.mmio_read(R.CR0) & ~R.CR0_EVENTQEN)   # queue off
    assert not rig.dma_write(0x7777_7000, 1).ok        # a physical stage-1 fault
    assert rig.vsmmu.event_read() == 0
    assert rig.vsmmu.stats["events_propagated"] == 0
    assert rig.vsmmu.stats["events_dropped"] == 1 and rig.drv.events == []


# Host ioctls a refusal can be injected into (IOMMU_DESTROY excluded: a refused destroy
# leaves the object with the host by design, counted in stats["host_errors"]).
_REFUSABLE = [("dev", V.VFIO_DEVICE_ATTACH_IOMMUFD_PT), ("iommufd", u.IOMMU_HWPT_ALLOC),
              ("iommufd", u.IOMMU_HWPT_INVALIDATE), ("iommufd", u.IOMMU_VDEVICE_ALLOC),
              ("iommufd", u.IOMMU_VIOMMU_ALLOC), ("iommufd", u.IOMMU_VEVENTQ_ALLOC)]
_ste_word = st.one_of(st.integers(0, (1 << 64) - 1), st.builds(
    lambda v, cfg, ctx: v | cfg << 1 | ctx << 6, st.integers(0, 1),
    st.sampled_from([CFG_ABORT, 0b001, CFG_BYPASS, CFG_S1, 0b110, CFG_NESTED]),
    st.integers(0, (1 << 20) - 1)))
_ste_op = st.tuples(st.just("ste"), st.integers(0, 7), _ste_word, st.just(0))
_host_op = st.tuples(st.sampled_from(["reset", "replug", "refuse"]),
                     st.integers(0, len(_REFUSABLE) - 1), st.just(0), st.just(0))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(_reg_write, _cmd, _mem, _ste_op, _host_op), max_size=20))
def test_random_guest_input_never_raises_and_host_objects_stay_accounted_accel(ops):
    """A fresh host per example.  Random guest register writes, commands, RAM and STE
    scribbles (each STE write published with CFGI_STE), resets, device unplug / replug,
    and one-shot host refusals of the next op's ioctls: the vSMMU never raises (but
    OSError from attach / detach), holds at most the vIOMMU, its vDEVICE, abort, bypass
    and one stage-1 nested HWPT and a vEVENTQ while the device is attached, and the
    host's objects and descriptors are back to the VMM's own set-up when it is not."""
    rig = AccelRig()
    base, fds = kinds(rig), len(rig.k.files)
    v = rig.vsmmu
    v.attach_device(VSID, rig.devs[0])
    rig.boot_guest()
    rig.gdev()
    armed: list[tuple[str, int]] = []
    for f in (rig.iommufd, rig.devs[0].devfile):
        def ioctl(c, arg=0, _real=f.ioctl, _who="dev" if f is not rig.iommufd else "iommufd"):
            if (_who, c) in armed:
                raise OSError(errno.EIO, "injected")
            return _real(c, arg)
        f.ioctl = ioctl
    for op in ops:
        if op[0] == "refuse":
            armed[:] = [_REFUSABLE[op[1]]]
            continue
        if op[0] == "ste":
            _, w, value, _ = op
            addr = rig.drv._ste_addr(VSID) + 8 * w
            if rig.gram.is_ram(addr, 8):
                rig.gram.write_u64(addr, value)
            guest_scribbles(v, rig.drv, rig.gram, [("cmd", CFGI_STE, (0, VSID), 0)])
        elif op[0] == "reset":
            v.reset()
        elif op[0] == "replug":
            try:
                if VSID in v.devices:
                    v.detach_device(VSID)
                else:
                    v.attach_device(VSID, rig.devs[0])
            except OSError:
                pass
        else:
            guest_scribbles(v, rig.drv, rig.gram, [op])
        armed.clear()
        rig.dma_write(0x7777_7000, 1)                     # a physical fault, for the vEVENTQ
        v.event_read()
        k = kinds(rig)
        if VSID in v.devices:
            assert k["viommu"] == k["vdevice"] == 1 and k["hwpt_nested"] <= 3, k
            assert k["veventq"] <= 1 and len(rig.k.files) <= fds + 1, k
            assert rig.kind(v.hwpt_of(VSID)) == "hwpt_nested"
        else:
            assert k == base and len(rig.k.files) == fds, k
    armed.clear()
    if VSID in v.devices:
        v.detach_device(VSID)
    assert kinds(rig) == base and len(rig.k.files) == fds
    assert v.viommu_id is None and v.veventq_fd is None
