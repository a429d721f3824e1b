"""What a VMM does to the kernel model: the building steps shared by ``pymsi compare``
and the tests that act as a VMM.

Everything here goes through the user/kernel contract (``/dev/iommu``, the VFIO cdev,
``/dev/kvm``, eventfds, mmap) exactly as a QEMU-like VMM would, plus a few
observations of the machine (the MSI-X table the function holds, the SMMU's own
translation, the GIC's pending state) that a test needs to judge the result.

* :class:`Vmm` -- one iommufd context with one IOAS holding the guest's RAM, the
  devices given to vfio-pci, their cdevs bound to the context.
* :class:`GuestMem` -- guest-physical memory as seen through the IOAS, where the
  guest writes its SMMU stage-1 tables and CDs.
* :func:`build_guest_stage1` / :meth:`Vmm.nested` -- a nest-parent HWPT, a vIOMMU,
  a vDEVICE and a nested HWPT from a guest STE whose CD and stage-1 tables live in
  guest memory.
* :class:`KvmGuest` -- a VM with a vGICv3 and a vITS over the same user memory, the
  guest side of the ITS driver (command queue in guest RAM), MSI routes and irqfds.
* :func:`pgtable_leaves` -- every leaf descriptor of an io-pgtable (a fingerprint of
  what a domain maps).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypedDict, cast

from .core import Prot
from .core import gic_formats as F
from .core.pgtable import IoPgtable, TableAllocator
from .errors import InvalidArgument, OutOfOrder
from .hw import smmuv3_regs as R
from .hw.pci import Delivery
from .hw.virt_map import SW_MSI_BASE, SW_MSI_SIZE
from .uapi import iommufd as u
from .uapi import kvm as K
from .uapi import vfio as V

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .kernel.files import EventfdCtx, File
    from .kernel.iommu import IommuDomain, ResvRegion
    from .kernel.iommufd import IommufdCtx
    from .machine.desc import BootOptions
    from .machine.platforms import ArmVirt, DeviceSpecs, X86Pc

_P = ParamSpec("_P")

PAGE = 0x1000
ITS_BASE = 0x0808_0000                    # the virt board's ITS (and the guest's vITS)
DOORBELL = ITS_BASE + 0x1_0040            # GITS_TRANSLATER
VITS_DOORBELL = DOORBELL                  # the guest's vITS doorbell GPA (QEMU virt)
VITS_PAGE = VITS_DOORBELL & ~(PAGE - 1)
# QEMU virt's IORT RMR over arm-smmu-v3's SW_MSI window, as (start, end): the guest identity-maps it
RMR = (SW_MSI_BASE, SW_MSI_BASE + SW_MSI_SIZE)
RAM_GPA = 0x4000_0000                     # guest RAM (an IPA / IOVA in the IOAS)
RAM_SIZE = 0x10_0000
MSIX, MSI = V.VFIO_PCI_MSIX_IRQ_INDEX, V.VFIO_PCI_MSI_IRQ_INDEX
EFD_TRIG = V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER
SET, CLEAR, GET = V.VFIO_MSI_IOVA_SET, V.VFIO_MSI_IOVA_CLEAR, V.VFIO_MSI_IOVA_GET

# Guest RAM layout (offsets from RAM_GPA): the vITS driver's tables first, then the
# guest SMMU driver's CD and stage-1 tables.
G_CMDQ, G_DEVT, G_COLLT, G_PROP, G_PEND, G_ITT = (0x0, 0x1_0000, 0x2_0000, 0x3_0000,
                                                  0x4_0000, 0x8_0000)
G_CD, G_S1POOL, G_S1POOL_SIZE = 0xB_F000, 0xC_0000, 0x4_0000
GICD_BASE, GICR_BASE = 0x0800_0000, 0x080A_0000
LPI_BASE = F.LPI_BASE


def errno_of(fn: Callable[_P, object], *args: _P.args, **kw: _P.kwargs) -> int:
    """Call ``fn``; 0 if it returns, the errno of the OSError it raises otherwise."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return cast(int, e.errno)           # the kernel model's errors carry one
    return 0


class ArmVirtOptions(TypedDict, total=False):
    """The :class:`pymsi.machine.ArmVirt` keywords :class:`Vmm` passes through when it
    builds the machine itself (all but ``smmu``, ``devices`` and ``msi_design``, which
    are its own arguments, and ``ram_size``, which for :class:`Vmm` is the guest's);
    each means what it means there."""

    ncpus: int
    gicv4: bool
    backend: str | None
    oas: int
    sidsize: int
    ssidsize: int
    cmdqs: int
    eventqs: int
    granules: tuple[int, ...]
    ril: bool
    had: bool
    msi: bool
    sev: bool
    two_level: bool
    cd2l: bool
    boot: BootOptions | Mapping[str, object] | None


class Vmm:
    """A VMM's view: one iommufd context, one IOAS with ``ram_size`` bytes of user
    memory mapped at ``RAM_GPA``, and the first ``n`` PCI functions given to vfio-pci
    with their cdevs open (not yet bound).  ``resv`` replaces the reserved regions
    the SMMU driver reports for every device (to show a platform's other regions).
    ``machine`` is a machine to use instead of an :class:`~pymsi.machine.ArmVirt` built
    from ``smmu``, ``devices`` (``n`` functions with 4 MSI-X and 4 MSI vectors by
    default), ``design`` and ``machine_kw`` (:class:`ArmVirtOptions`)."""

    def __init__(self, design: str = "per-vector", smmu: str | None = "s1", n: int = 1,
                 devices: DeviceSpecs | None = None, machine: ArmVirt | X86Pc | None = None,
                 ram_size: int = 0x1_0000, resv: Sequence[ResvRegion] | None = None,
                 **machine_kw: Unpack[ArmVirtOptions]) -> None:
        from .machine import ArmVirt

        self.m = machine or ArmVirt(smmu=smmu, devices=devices or [{"msix": 4, "msi": 4}] * n,
                                    msi_design=design, **machine_kw)
        self.k = self.m.boot()
        if resv is not None:                      # what the IOMMU driver reports instead
            drv = self.k.smmu
            assert drv is not None                # resv= is for a machine with an SMMU
            # (the driver's method replaced for this machine: another platform's regions)
            drv.get_resv_regions = lambda dev: list(resv)  # type: ignore[method-assign]
        self.ictx = self.k.open("/dev/iommu")
        a = u.IommuIoasAlloc()
        self.ictx.ioctl(u.IOMMU_IOAS_ALLOC, a)
        self.ioas = a.out_ioas_id
        self.ram_size = ram_size
        self.va = self.k.mmap(ram_size)
        self.ictx.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
            flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
            | u.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=self.ioas, user_va=self.va,
            length=ram_size, iova=RAM_GPA))
        self.files: list[File] = []
        self.devids: list[int] = []
        for i in range(n):
            pdev = self.k.pci.devices[i]
            self.k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
            self.k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
            self.files.append(self.k.open(f"/dev/vfio/devices/vfio{i}"))
        self.efds: list[File] = []              # eventfd files
        self.parent: int | None = None
        self.viommu: int | None = None
        self.nested_ids: dict[int, int] = {}

    # -- iommufd / VFIO calls ------------------------------------------------------------

    def bind(self, i: int = 0) -> int:
        """VFIO_DEVICE_BIND_IOMMUFD, then the VMM's bus-master config write."""
        b = V.VfioDeviceBindIommufd(iommufd=self.ictx.fd)
        self.files[i].ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
        self.devids.append(b.out_devid)
        self.k.pci.devices[i].set_master()
        return cast(int, b.out_devid)

    def attach(self, pt_id: int | None = None, i: int = 0) -> int:
        a = V.VfioDeviceAttachIommufdPt(pt_id=self.ioas if pt_id is None else pt_id)
        self.files[i].ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        return cast(int, a.pt_id)

    def hwpt_alloc(self, pt_id: int, flags: int = 0, data: bytes = b"", i: int = 0) -> int:
        """IOMMU_HWPT_ALLOC; ``data`` (a guest STE) makes it an arm-smmuv3 nested HWPT."""
        va = 0
        if data:
            va = self.k.mmap(PAGE)
            self.k.user_write(va, data)
        a = u.IommuHwptAlloc(flags=flags, dev_id=self.devids[i], pt_id=pt_id,
                             data_len=len(data), data_uptr=va,
                             data_type=u.IOMMU_HWPT_DATA_ARM_SMMUV3 if data
                             else u.IOMMU_HWPT_DATA_NONE)
        self.ictx.ioctl(u.IOMMU_HWPT_ALLOC, a)
        return cast(int, a.out_hwpt_id)

    def msi_iova(self, flags: int, start: int, iovas: Sequence[int] = (),
                 count: int | None = None,
                 index: int = MSIX, i: int = 0) -> V.VfioDeviceMsiIova:
        """VFIO_DEVICE_MSI_IOVA (the per-vector design)."""
        arg = V.VfioDeviceMsiIova(flags=flags, index=index, start=start,
                                  count=len(iovas) if count is None else count,
                                  iova=list(iovas))
        self.files[i].ioctl(V.VFIO_DEVICE_MSI_IOVA, arg)
        return arg

    def get_iovas(self, start: int = 0, count: int = 4, index: int = MSIX,
                  i: int = 0) -> list[int]:
        return list(self.msi_iova(GET, start, [0] * count, index=index, i=i).iova)

    def map_msi(self, iova: int, i: int = 0, ioas: int | None = None) -> None:
        """IOMMU_IOAS_MAP_MSI: the device's doorbell page at ``iova`` of the IOAS."""
        self.ictx.ioctl(u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(
            ioas_id=self.ioas if ioas is None else ioas, dev_id=self.devids[i], iova=iova))

    def unmap(self, iova: int, length: int = PAGE) -> None:
        self.ictx.ioctl(u.IOMMU_IOAS_UNMAP, u.IommuIoasUnmap(ioas_id=self.ioas, iova=iova,
                                                             length=length))

    def prepare(self, start: int, iovas: list[int], index: int = MSIX, i: int = 0) -> int:
        """VFIO_IRQ_SET_ACTION_PREPARE with VFIO_IRQ_SET_DATA_MSI_IOVA (the preset design)."""
        return cast(int, self.files[i].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=V.VFIO_IRQ_SET_ACTION_PREPARE | V.VFIO_IRQ_SET_DATA_MSI_IOVA, index=index,
            start=start, count=len(iovas), data=list(iovas))))

    def set_triggers(self, start: int, fds: list[int], index: int = MSIX, i: int = 0) -> int:
        """SET_IRQS DATA_EVENTFD | ACTION_TRIGGER for vectors ``start..``; -1 tears one down."""
        return cast(int, self.files[i].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=EFD_TRIG, index=index, start=start, count=len(fds), data=list(fds))))

    def disable(self, index: int = MSIX, i: int = 0) -> int:
        """SET_IRQS DATA_NONE | ACTION_TRIGGER with count 0: the whole index off."""
        return cast(int, self.files[i].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_TRIGGER, index=index)))

    def enable(self, n: int = 4, index: int = MSIX, i: int = 0, start: int = 0) -> int:
        """Fresh eventfds for ``n`` vectors (kept in ``efds``) and SET_IRQS with them."""
        self.efds = [self.k.eventfd() for _ in range(n)]
        return self.set_triggers(start, [cast(int, e.fd) for e in self.efds], index, i)

    def fire(self, v: int, i: int = 0) -> Delivery:
        """The function raises vector ``v``; the bus drains and the host takes its IRQs."""
        d = self.m.functions[i].notify(v)
        self.m.bus.drain()
        self.k.handle_interrupts()
        return d

    def counts(self) -> list[int]:
        return [cast("EventfdCtx", e.f_op).count for e in self.efds]

    # -- nested --------------------------------------------------------------------------

    def nested(self, guest_maps: dict[int, int], vsid: int, i: int = 0,
               viommu: bool = True) -> int:
        """Device ``i`` onto a nested HWPT: a nest-parent HWPT on the IOAS (made once),
        a vIOMMU and a vDEVICE (``vsid``) over it, and a nested HWPT from a guest STE
        whose CD and stage-1 tables the guest wrote in its RAM, mapping each gIOVA page
        of ``guest_maps`` to its IPA page.  Attaches the device; returns the HWPT id."""
        if self.parent is None:
            self.parent = self.hwpt_alloc(self.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT, i=i)
            self.guest_s1 = build_guest_stage1(GuestMem(self), guest_maps)
            if viommu:
                va = u.IommuViommuAlloc(dev_id=self.devids[i], hwpt_id=self.parent,
                                        type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
                self.ictx.ioctl(u.IOMMU_VIOMMU_ALLOC, va)
                self.viommu = va.out_viommu_id
        if self.viommu is not None:
            self.ictx.ioctl(u.IOMMU_VDEVICE_ALLOC, u.IommuVdeviceAlloc(
                viommu_id=self.viommu, dev_id=self.devids[i], virt_id=vsid))
        pt = self.viommu if self.viommu is not None else self.parent
        hwpt = self.hwpt_alloc(pt, 0, guest_ste(RAM_GPA + G_CD), i=i)
        self.nested_ids[i] = hwpt
        self.attach(hwpt, i)
        return hwpt

    # -- observations --------------------------------------------------------------------

    def entry(self, v: int, i: int = 0) -> tuple[int, int, int]:
        """(address, data, vector control) of MSI-X entry ``v`` as the function holds it."""
        return self.m.functions[i].msix_entry(v)

    def domain(self, i: int = 0) -> IommuDomain:
        group = self.k.pci.devices[i].iommu_group
        assert group is not None                  # a function behind the SMMU
        return cast("IommuDomain", group.domain)  # attached (to its default domain at least)

    def s2_domain(self, i: int = 0) -> IommuDomain:
        d = self.domain(i)
        return d.parent if d.parent is not None else d

    def ctx(self) -> IommufdCtx:
        """The iommufd context behind ``/dev/iommu`` (the kernel's side, for observations)."""
        return cast("IommufdCtx", self.ictx.private_data)

    def irq(self, v: int, i: int = 0) -> int:
        return cast(int, self.k.pci.devices[i].msi_descs[v].irq)

    def host_lpi(self, v: int, i: int = 0) -> int:
        """The LPI INTID the host ITS driver gave vector ``v`` of device ``i``."""
        its_level = self.k.irq.desc(self.irq(v, i)).irq_data.parent_data
        assert its_level is not None              # an MSI's parent: the ITS domain's level
        return its_level.hwirq

    def smmu_events(self) -> int:
        smmu = cast("ArmVirt", self.m).smmu     # (an X86Pc has none: AttributeError)
        assert smmu is not None                 # a machine with an SMMU
        return smmu.stats["events_recorded"]

    def smmu_pa(self, addr: int, i: int = 0) -> int | None:
        """Where the SMMU takes a write of device ``i`` to ``addr`` (None: a fault)."""
        smmu = cast("ArmVirt", self.m).smmu
        assert smmu is not None                 # a machine with an SMMU
        return smmu.translate(self.k.pci.devices[i].rid, addr, write=True).pa


class GuestMem:
    """Guest-physical memory as the guest sees it: IPAs through the IOAS's areas
    (the same host pages KVM's memory slot gives the guest)."""

    def __init__(self, vmm: Vmm) -> None:
        self.ioas = vmm.ctx().ioas(vmm.ioas)
        self.ram = vmm.k.ram

    def _pa(self, ipa: int) -> int:
        pa = self.ioas.iova_to_phys(ipa)
        if pa is None or not self.ram.is_ram(pa, 1):
            raise InvalidArgument(f"IPA {ipa:#x} is not guest RAM")
        return pa

    def is_ram(self, ipa: int, size: int = 1) -> bool:
        return all(self.ioas.iova_to_phys(a) is not None
                   for a in range(ipa & ~(PAGE - 1), ipa + size, PAGE))

    def read(self, ipa: int, size: int) -> bytes:
        out = bytearray()
        while size:
            n = min(size, PAGE - ipa % PAGE)
            out += self.ram.read(self._pa(ipa), n)
            ipa, size = ipa + n, size - n
        return bytes(out)

    def write(self, ipa: int, data: bytes) -> None:
        off = 0
        while off < len(data):
            n = min(len(data) - off, PAGE - (ipa + off) % PAGE)
            self.ram.write(self._pa(ipa + off), bytes(data[off:off + n]))
            off += n

    def read_u64(self, ipa: int) -> int:
        return int.from_bytes(self.read(ipa, 8), "little")

    def write_u64(self, ipa: int, value: int) -> None:
        self.write(ipa, value.to_bytes(8, "little"))


def guest_cd(s1: IoPgtable, asid: int) -> bytes:
    """The CD a guest SMMU driver writes for its stage-1 tables (TTB0, EPD1, faults
    recorded), in the SMMUv3 layout of :mod:`pymsi.hw.smmuv3_regs`."""
    c = s1.stage1_config()
    w = [0] * 8
    w[0] = (R.CD0_T0SZ(c.tsz0) | R.CD0_TG0(R.GRANULE_TG[c.granule0]) | R.CD0_IR0(1)
            | R.CD0_OR0(1) | R.CD0_SH0(3) | R.CD0_EPD1(1) | R.CD0_V(1)
            | R.CD0_IPS(R.OAS_BITS.index(c.ips)) | R.CD0_AA64(1) | R.CD0_R(1) | R.CD0_A(1)
            | R.CD0_ASET(1) | R.CD0_ASID(asid))
    w[1] = R.CD1_TTB0(c.ttb0 >> 4)
    return b"".join(x.to_bytes(8, "little") for x in w)


def guest_ste(cd_ipa: int) -> bytes:
    """The two STE words a guest hands to IOMMU_HWPT_ALLOC: valid, stage-1 translate,
    one CD at ``cd_ipa``."""
    w0 = R.STE0_V(1) | R.STE0_CONFIG(int(R.SteConfig.S1)) | R.STE0_S1CTXPTR(cd_ipa >> 6)
    return w0.to_bytes(8, "little") + bytes(8)


def build_guest_stage1(gmem: GuestMem, maps: dict[int, int], asid: int = 1) -> IoPgtable:
    """The guest's stage-1 tables in its RAM (a table pool at ``RAM_GPA + G_S1POOL``),
    each gIOVA page of ``maps`` mapped read/write to its IPA page, and its CD at
    ``RAM_GPA + G_CD``."""
    alloc = TableAllocator(gmem, RAM_GPA + G_S1POOL, G_S1POOL_SIZE)
    s1 = IoPgtable(gmem, alloc, "s1", ias=48, oas=44)
    for giova, ipa in maps.items():
        s1.map(giova, ipa, PAGE, Prot.READ | Prot.WRITE)
    gmem.write(RAM_GPA + G_CD, guest_cd(s1, asid))
    return s1


def pgtable_leaves(pgtbl: IoPgtable) -> tuple[tuple[int, int], ...]:
    """Every valid leaf of ``pgtbl`` as (input address, descriptor): what it maps."""
    out: list[tuple[int, int]] = []
    gshift, stride = pgtbl.gshift, pgtbl.stride

    def lsb(level: int) -> int:
        return gshift + stride * (3 - level)

    def walk(table: int, level: int, base: int, nbytes: int) -> None:
        n = nbytes // 8
        for idx, d in enumerate(struct.unpack(f"<{n}Q", pgtbl.mem.read(table, nbytes))):
            if not d & 1:
                continue
            va = base + (idx << lsb(level))
            if level < 3 and d & 0b10:
                walk(d & 0x0000_FFFF_FFFF_F000 & ~(pgtbl.granule - 1), level + 1, va,
                     pgtbl.granule)
            else:
                out.append((va, d))

    walk(pgtbl.pgd, pgtbl.start_level, 0, pgtbl._pgd_bytes)
    return tuple(out)


# -- a KVM guest --------------------------------------------------------------------------


def its_cmd(op: str, dev: int = 0, ev: int = 0, icid: int = 0, intid: int = 0,
            rd: int = 0, size: int = 0, itt: int = 0) -> tuple[int, int, int, int]:
    """An ITS command's four doublewords (GICv3 architecture layouts)."""
    if op == "MAPD":
        return (0x08 | dev << 32, size, 1 << 63 | itt, 0)
    if op == "MAPC":
        return (0x09, 0, 1 << 63 | rd << 16 | icid, 0)
    if op == "MAPTI":
        return (0x0A | dev << 32, intid << 32 | ev, icid, 0)
    if op == "MOVI":
        return (0x01 | dev << 32, ev, icid, 0)
    if op == "DISCARD":
        return (0x0F | dev << 32, ev, 0, 0)
    raise InvalidArgument(op)


def msi_route(gsi: int, devid: int, data: int,
              address: int = VITS_DOORBELL) -> K.KvmIrqRoutingEntry:
    """A ``kvm_irq_routing_entry`` of type MSI carrying the DeviceID (KVM_MSI_VALID_DEVID)."""
    return K.KvmIrqRoutingEntry(gsi=gsi, type=K.KVM_IRQ_ROUTING_MSI,
                                flags=K.KVM_MSI_VALID_DEVID,
                                u={"msi": {"address_lo": address & 0xFFFF_FFFF,
                                           "address_hi": address >> 32, "data": data,
                                           "devid": devid}})


class KvmGuest:
    """A VM with ``nvcpus`` vCPUs, a vGICv3 and a vITS at the virt board's addresses,
    its RAM the VMM's user memory at ``RAM_GPA``; and the guest's ITS driver, which
    only writes guest memory and MMIO registers."""

    def __init__(self, vmm: Vmm, nvcpus: int = 2) -> None:
        k = self.k = vmm.k
        kvm = k.open("/dev/kvm")
        self.vm = cast(int, kvm.ioctl(K.KVM_CREATE_VM, 0))   # an fd (File.ioctl: int | bytes)
        kvm.close()
        self.vcpu_fds = [cast(int, k.ioctl(self.vm, K.KVM_CREATE_VCPU, i)) for i in range(nvcpus)]
        gic = self._device(K.KVM_DEV_TYPE_ARM_VGIC_V3)
        self._addr(gic, K.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE)
        self._addr(gic, K.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)
        its = self._device(K.KVM_DEV_TYPE_ARM_VGIC_ITS)
        self._addr(its, K.KVM_VGIC_ITS_ADDR_TYPE, ITS_BASE)
        k.ioctl(gic, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
            group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=K.KVM_DEV_ARM_VGIC_CTRL_INIT))
        self.fds = [gic, its]
        self.kvm = cast("File", k.files.fds[self.vm]).private_data     # the VM's file
        self.uva = vmm.va
        k.ioctl(self.vm, K.KVM_SET_USER_MEMORY_REGION, K.KvmUserspaceMemoryRegion(
            slot=0, guest_phys_addr=RAM_GPA, memory_size=vmm.ram_size, userspace_addr=self.uva))
        self.cw = 0
        self._boot(nvcpus)

    def _device(self, type_: int) -> int:
        cd = K.KvmCreateDevice(type=type_)
        self.k.ioctl(self.vm, K.KVM_CREATE_DEVICE, cd)
        return cast(int, cd.fd)

    def _addr(self, fd: int, attr: int, value: int) -> None:
        va = self.k.mmap(PAGE)
        self.k.user_write(va, value.to_bytes(8, "little"))
        self.k.ioctl(fd, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
            group=K.KVM_DEV_ARM_VGIC_GRP_ADDR, attr=attr, addr=va))

    def w(self, off: int, data: bytes) -> None:
        self.k.user_write(self.uva + off, data)

    def _mmio(self, gpa: int, value: int, size: int = 8) -> None:
        if self.kvm.mmio_write(gpa, value, size) is not True:
            raise OutOfOrder(f"guest MMIO write to {gpa:#x} not handled")

    def _boot(self, nvcpus: int) -> None:
        """What a GICv3 ITS driver does: LPI tables, LPIs on, ITS tables, queue, enable."""
        valid = 1 << 63
        self.w(G_PROP, bytes([0xA0 | 1]) * PAGE)                    # prio 0xA0, enabled
        for v in range(nvcpus):
            rd = GICR_BASE + v * 0x2_0000
            self._mmio(rd + 0x70, RAM_GPA + G_PROP | (16 - 1))       # GICR_PROPBASER
            self._mmio(rd + 0x78, RAM_GPA + G_PEND + v * 0x1_0000)   # GICR_PENDBASER
            self._mmio(rd + 0x0, 1, 4)                              # GICR_CTLR.EnableLPIs
        self._mmio(ITS_BASE + 0x100, valid | RAM_GPA + G_DEVT | 2 << 8)    # GITS_BASER0
        self._mmio(ITS_BASE + 0x108, valid | RAM_GPA + G_COLLT | 2 << 8)   # GITS_BASER1
        self._mmio(ITS_BASE + 0x80, valid | RAM_GPA + G_CMDQ | (16 - 1))   # GITS_CBASER
        self._mmio(ITS_BASE + 0x0, 1, 4)                                   # GITS_CTLR

    def cmds(self, *cmds: tuple[int, int, int, int]) -> None:
        """Queue ITS commands in guest RAM and move GITS_CWRITER."""
        for c in cmds:
            self.w(G_CMDQ + self.cw, b"".join(x.to_bytes(8, "little") for x in c))
            self.cw = (self.cw + 32) % 0x1_0000
        self._mmio(ITS_BASE + 0x88, self.cw)

    def map_device(self, devid: int, events: dict[int, tuple[int, int]]) -> None:
        """MAPD ``devid``, MAPC collection n -> vCPU n for every vCPU, MAPTI each event
        -> (vINTID, icid)."""
        icids = range(len(self.vcpu_fds))
        self.cmds(its_cmd("MAPD", devid, size=4, itt=RAM_GPA + G_ITT),
                  *(its_cmd("MAPC", icid=c, rd=c) for c in icids),
                  *(its_cmd("MAPTI", devid, ev, icid=icid, intid=vintid)
                    for ev, (vintid, icid) in events.items()))

    def route(self, gsi: int, devid: int, data: int, address: int = VITS_DOORBELL) -> None:
        """KVM_SET_GSI_ROUTING: one MSI route (with the requester ID as devid)."""
        self.k.ioctl(self.vm, K.KVM_SET_GSI_ROUTING,
                     K.KvmIrqRouting(nr=1, entries=[msi_route(gsi, devid, data, address)]))

    def irqfd(self, fd: int, gsi: int, flags: int = 0) -> int:
        irqfd = K.KvmIrqfd(fd=fd, gsi=gsi, flags=flags)
        return cast(int, self.k.ioctl(self.vm, K.KVM_IRQFD, irqfd))

    def close(self) -> None:
        for fd in self.fds + self.vcpu_fds + [self.vm]:
            self.k.close(fd)
