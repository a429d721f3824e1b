"""The VMM's virtual SMMUv3 (QEMU's ``arm-smmuv3`` device and its ``accel=on`` mode).

The guest's SMMU driver programs it exactly as it would a physical SMMUv3: the
register file, the command and event queues in guest RAM, the stream table and
context descriptors in guest RAM.  One register file, one command decoder, one
STE / CD decoder and one event record format serve both this virtual SMMU and
the physical one: :class:`VirtualSmmuV3` *is* a :class:`pymsi.hw.smmuv3.SMMUv3`
over guest memory (QEMU's ``hw/arm/smmuv3.c`` is likewise one model for both),
with the identification QEMU's virt board gives its SMMUv3: stage 1 only, 44-bit
OAS, 16-bit StreamIDs, no SubstreamIDs, two-level stream tables, wired
interrupts.  It is mapped at 0x09050000 of the guest's address space and its
``irq`` is the guest driver's interrupt handler, set by the guest's boot.

Two modes:

* **emulated** (QEMU without ``accel``): the VMM walks the guest's stage 1 itself
  over guest memory.  :meth:`VirtualSmmuV3.translate` is the interface
  :meth:`pymsi.hw.bus.Bus.attach_iommu` uses, so an emulated device's DMA and
  MSIs are translated by it; faults become event records in the guest's event
  queue and raise its interrupt.  :meth:`VirtualSmmuV3.translate_msi` is the
  walk of ``kvm_arch_fixup_msi_route()``: the guest's MSI address (an IOVA) to
  the vITS doorbell GPA for a KVM MSI route.  QEMU makes that walk through the
  same ``smmuv3_translate()`` as any DMA, which records a fault event when the
  walk faults (and CD.R asks for it), so a route fix-up that faults here also
  leaves an event in the guest's queue.  An assigned (VFIO) device cannot sit
  behind an emulated vSMMU: QEMU's SMMUv3 refuses the MAP notifier VFIO needs
  ("SMMUv3 does not support notification on MAP"), and
  :meth:`VirtualSmmuV3.attach_device` refuses it the same way.
* **accel** (QEMU 11 ``hw/arm/smmuv3-accel.c``): the physical SMMU walks the
  guest's stage 1 (nested over the VMM's stage 2).  On the first assigned
  device the VMM checks that the host SMMU can serve the virtual one
  (``IOMMU_GET_HW_INFO``, as ``smmuv3_accel_check_hw_compatible()``), allocates
  a vIOMMU over the nest-parent HWPT (``IOMMU_VIOMMU_ALLOC``), an abort and a
  bypass nested HWPT, and a vEVENTQ once the guest enables its event queue;
  each device gets a vDEVICE whose virtual id is its guest StreamID.  A guest
  ``CFGI_STE`` / ``CFGI_STE_RANGE`` / ``CFGI_ALL`` re-reads the guest's STE:
  abort / bypass / invalid attach the abort or bypass HWPT, a stage-1 STE
  becomes a new nested HWPT (its guest-owned fields as
  ``IOMMU_HWPT_DATA_ARM_SMMUV3``) that replaces the device's HWPT
  (``VFIO_DEVICE_ATTACH_IOMMUFD_PT``), the previous one freed.  With the vSMMU
  disabled the device sits on the abort or bypass HWPT that GBPA.ABORT names.
  Guest ``TLBI_NH_*``, ``TLBI_NSNH_ALL`` and ``CFGI_CD*`` are forwarded one by one
  with ``IOMMU_HWPT_INVALIDATE`` on the vIOMMU; one the host refuses fails the
  guest's command (CERROR_ILL).  :meth:`VirtualSmmuV3.event_read` is the
  vEVENTQ's fd handler: each event the host queued (already carrying the
  virtual StreamID) goes into the guest's event queue and raises its interrupt.
  Routes use the fixed doorbell GPA :attr:`VirtualSmmuV3.msi_gpa` (QEMU's
  ``msi-gpa``; no walk).  Emulated endpoints are not allowed behind it (QEMU
  refuses them), so :meth:`VirtualSmmuV3.translate` is refused in this mode.

Deliberate differences from QEMU: with the vSMMU enabled, a StreamID the guest's
stream table does not cover (C_BAD_STREAMID, F_STE_FETCH) or an STE with a
configuration the vSMMU does not implement (stage 2, nested, reserved) attaches
the abort HWPT, as the hardware would abort the device's transactions (QEMU
leaves the device where it was, or fails the install); the vDEVICE is allocated
when the device is attached, not at the first STE install; a detach the host
refuses (re-attach to the nest parent) raises with nothing changed, so it can
be retried, where QEMU reports it and frees what it can.
"""

from __future__ import annotations

from collections.abc import Callable
from errno import EIO
from typing import TYPE_CHECKING, NamedTuple, cast

from ..errors import InvalidArgument
from ..hw import smmuv3_regs as R
from ..hw.bits import dwords
from ..hw.its import GITS_TRANSLATER
from ..hw.smmuv3 import SmmuResult, SMMUv3
from ..hw.virt_map import VIRT_GIC_ITS, VIRT_SMMU
from ..uapi import iommufd as u
from ..uapi import vfio as V
from ..uapi.eventpoll import EPOLLIN

if TYPE_CHECKING:
    from ..core import Memory
    from ..core.common import Buffer
    from ..uapi import IoctlArg
    from ..uapi.syscalls import OpenFile, Syscalls
    from .vfio_pci import VfioPciDevice

#: Where QEMU's virt board puts its SMMUv3, and the size of its two register pages.
VSMMU_BASE, VSMMU_SIZE = VIRT_SMMU, R.MMIO_SIZE
#: The vITS doorbell GPA (GITS_TRANSLATER of the virt board's ITS): accel's ``msi-gpa``.
VITS_DOORBELL_GPA = VIRT_GIC_ITS + GITS_TRANSLATER

PAGE = 0x1000

_Op = R.Opcode
_TLBI_FORWARDED = frozenset({_Op.TLBI_NH_ALL, _Op.TLBI_NH_ASID, _Op.TLBI_NH_VA, _Op.TLBI_NH_VAA,
                             _Op.TLBI_NSNH_ALL})
_CFGI_CD = frozenset({_Op.CFGI_CD, _Op.CFGI_CD_ALL})
_HDR = u.IommufdVeventHeader.sizeof
_EVT = u.IommuVeventArmSmmuv3.sizeof


class HostIommufd(NamedTuple):
    """What an accelerated vSMMU needs of the host: the host kernel ``k`` (the
    VMM's system calls: ``mmap``, ``user_read`` / ``user_write``), the VMM's open
    ``/dev/iommu`` (``iommufd``, a File), the IOAS holding guest RAM at IOVA = GPA
    (``ioas_id``) and the nest-parent HWPT on it (``parent_hwpt_id``,
    ``IOMMU_HWPT_ALLOC_NEST_PARENT``) that the vIOMMU is built over and that an
    assigned device returns to when it leaves the vSMMU."""

    k: Syscalls
    iommufd: OpenFile
    ioas_id: int
    parent_hwpt_id: int


class _AccelDev:
    """SMMUv3AccelDevice: an assigned device behind the accelerated vSMMU."""

    __slots__ = ("dev", "vdevice_id", "hwpt_id", "s1_hwpt_id")

    def __init__(self, dev: VfioPciDevice, vdevice_id: int) -> None:
        self.dev = dev
        self.vdevice_id = vdevice_id
        self.hwpt_id: int | None = None          # the HWPT the device is attached to
        self.s1_hwpt_id: int | None = None       # the nested HWPT of a stage-1 STE


class VirtualSmmuV3:
    """A virtual SMMUv3 the guest programs through registers, over guest memory ``gmem``.

    ``mode`` is "emulated" (the VMM translates) or "accel" (the host SMMU
    translates through a vIOMMU; ``host`` says which iommufd context).
    ``msi_gpa`` is the fixed doorbell GPA routes use in accel mode (default
    0x08090040; emulated mode has none: routes walk the guest's stage 1).  The
    other keywords are the identification registers' choices (QEMU virt's by
    default).  ``gmem`` is a :class:`pymsi.core.Memory` with guest RAM at its
    guest-physical addresses (in accel mode only read and written, never walked).
    """

    def __init__(self, gmem: Memory, mode: str = "emulated", host: HostIommufd | None = None, *,
                 msi_gpa: int | None = None, oas: int = 44, sidsize: int = 16,
                 ssidsize: int = 0, ril: bool = True, cmdqs: int = 19, eventqs: int = 19,
                 tlb_capacity: int = 1024, backend: str | None = None) -> None:
        if mode not in ("emulated", "accel"):
            raise InvalidArgument(f"mode={mode!r}: must be 'emulated' or 'accel'")
        if mode == "accel" and host is None:
            raise InvalidArgument("an accelerated vSMMU needs the host's iommufd (host=)")
        if mode == "emulated" and (host is not None or msi_gpa is not None):
            raise InvalidArgument("host= and msi_gpa= are for the accelerated vSMMU")
        self.mode = mode
        self.host = host
        self.gmem = gmem
        #: The register file, queues, STE / CD decoding and stage-1 walks: the hardware model.
        self.hw = SMMUv3(gmem, stages="s1", oas=oas, sidsize=sidsize, ssidsize=ssidsize,
                         cmdqs=cmdqs, eventqs=eventqs, ril=ril, had=True, msi=False,
                         two_level=True, sev=False, cd2l=False, tlb_capacity=tlb_capacity,
                         backend=backend)
        self.msi_gpa: int | None = None
        self.stats = {"ste_installs": 0, "hwpt_allocs": 0, "invalidations": 0,
                      "host_errors": 0, "events_propagated": 0, "veventq_overflows": 0,
                      "events_lost": 0, "events_dropped": 0}
        self.viommu_id: int | None = None
        self.abort_hwpt_id: int | None = None
        self.bypass_hwpt_id: int | None = None
        self.veventq_id: int | None = None
        self.veventq_fd: int | None = None     # the vEVENTQ's descriptor in the VMM
        self._devs: dict[int, _AccelDev] = {}
        self._buf: int | None = None
        self._last_seq: int | None = None
        if mode == "accel":
            self.msi_gpa = VITS_DOORBELL_GPA if msi_gpa is None else msi_gpa
            self.hw.on_command = self._on_command
        else:
            # Every DMA and MSI write of an emulated device calls translate (Bus.dma_*):
            # the hardware model's own bound methods, so no VMM frame sits on that path.
            self.translate = self.hw.translate  # type: ignore[method-assign]
            self.translate_batch = self.hw.translate_batch  # type: ignore[method-assign]

    @property
    def _host(self) -> HostIommufd:
        """The host of an accelerated vSMMU (the accel paths run only with one)."""
        assert self.host is not None
        return self.host

    # -- the guest's side: registers and the interrupt line ---------------------------------

    @property
    def irq(self) -> Callable[[str], None] | None:
        """The wired interrupt lines ("eventq", "gerror", "cmdq_sync"): the guest's handler."""
        return self.hw.irq

    @irq.setter
    def irq(self, handler: Callable[[str], None] | None) -> None:
        self.hw.irq = handler

    def mmio_read(self, offset: int, size: int = 4) -> int:
        """A guest read of a register."""
        return self.hw.mmio_read(offset, size)

    def mmio_write(self, offset: int, value: int, size: int = 4) -> None:
        """A guest write of a register (commands it starts run before it returns)."""
        if self.mode == "emulated" or self.viommu_id is None:
            self.hw.mmio_write(offset, value, size)
            return
        cr0, gbpa = self.hw.mmio_read(R.CR0), self.hw.mmio_read(R.GBPA)
        self.hw.mmio_write(offset, value, size)
        cr0_now, gbpa_now = self.hw.mmio_read(R.CR0), self.hw.mmio_read(R.GBPA)
        if cr0_now & R.CR0_EVENTQEN and not cr0 & R.CR0_EVENTQEN:
            self._alloc_veventq()
        if (cr0 ^ cr0_now) & R.CR0_SMMUEN or (
                not cr0_now & R.CR0_SMMUEN and (gbpa ^ gbpa_now) & R.GBPA_ABORT):
            self._install_range(0, (1 << self.hw.sidsize) - 1)

    def reset(self) -> None:
        """System reset (QEMU's smmuv3_reset + smmuv3_accel_reset): registers to their
        reset values, caches dropped; every assigned device back on the HWPT GBPA's
        reset value names (bypass), its nested HWPT freed."""
        self.hw.reset()
        for d in self._devs.values():
            hwpt = self._gbpa_hwpt()
            if hwpt is None or hwpt == d.hwpt_id:
                continue
            try:
                self._attach(d.dev, hwpt)
            except OSError:
                self.stats["host_errors"] += 1
                continue
            if d.s1_hwpt_id is not None:
                self._destroy(d.s1_hwpt_id)
            d.hwpt_id, d.s1_hwpt_id = hwpt, None

    @property
    def enabled(self) -> bool:
        """CR0.SMMUEN as the guest last set it."""
        return bool(self.hw.mmio_read(R.CR0) & R.CR0_SMMUEN)

    # -- emulated translation -------------------------------------------------------------

    def translate(self, sid: int, iova: int, write: bool = False,
                  ssid: int | None = None) -> SmmuResult:
        """An emulated device's transaction (what :meth:`Bus.attach_iommu` calls): the
        guest's stage 1 walked over guest memory; a fault is recorded in the guest's
        event queue.  In emulated mode this is the hardware model's
        :meth:`SMMUv3.translate` itself (bound on the instance); this method is what
        accel mode, which takes no emulated endpoints, has: InvalidArgument."""
        if self.mode != "emulated":
            raise InvalidArgument("emulated endpoint devices are not allowed behind an "
                                  "accelerated vSMMU")
        return self.hw.translate(sid, iova, write, ssid)

    def translate_batch(self, sids: Buffer, iovas: Buffer, out_pa: Buffer, status: Buffer,
                        write: bool = False) -> int:
        """Many emulated transactions at once (emulated mode: the hardware model's
        :meth:`SMMUv3.translate_batch` itself; accel mode: InvalidArgument)."""
        if self.mode != "emulated":
            raise InvalidArgument("emulated endpoint devices are not allowed behind an "
                                  "accelerated vSMMU")
        return self.hw.translate_batch(sids, iovas, out_pa, status, write)

    def translate_msi(self, rid: int, addr: int) -> int | None:
        """kvm_arch_fixup_msi_route(): the GPA a write of requester ``rid`` to the
        guest's MSI address ``addr`` reaches, or None if the walk faults.  Accel mode:
        the fixed :attr:`msi_gpa` (no walk).  Emulated: the guest's stage 1 (a
        disabled vSMMU with GBPA bypass passes ``addr`` through); a fault is recorded
        in the guest's event queue as QEMU's smmuv3_translate() does."""
        if self.msi_gpa is not None:
            return self.msi_gpa
        return self.hw.translate(rid, addr, write=True).pa

    # -- assigned devices (accel) -----------------------------------------------------------

    def attach_device(self, vsid: int, dev: VfioPciDevice) -> None:
        """An assigned device (``dev.devfile``: its VFIO cdev File, bound to the VMM's
        iommufd as ``dev.devid``) appears behind this vSMMU with guest StreamID ``vsid``
        (QEMU's set_iommu_device).  Emulated mode: InvalidArgument, as QEMU's SMMUv3
        refuses the MAP notifier VFIO needs.  Accel: the vIOMMU (first device), its
        vDEVICE, and the HWPT the guest's configuration calls for; OSError if the
        host refuses."""
        if self.mode == "emulated":
            raise InvalidArgument(f"SMMUv3 does not support notification on MAP: device "
                                  f"{vsid:#06x} will not function properly (use accel)")
        if type(vsid) is not int or not 0 <= vsid < 1 << self.hw.sidsize:
            raise InvalidArgument(f"vsid={vsid!r} does not fit in {self.hw.sidsize} bits")
        if vsid in self._devs:
            raise InvalidArgument(f"StreamID {vsid:#x} already has a device")
        if self.viommu_id is None:
            self._check_hw_compatible(dev.devid)
            self._alloc_viommu(dev.devid)
        try:
            vd = u.IommuVdeviceAlloc(viommu_id=self.viommu_id, dev_id=dev.devid, virt_id=vsid)
            self._ioctl(u.IOMMU_VDEVICE_ALLOC, vd)
            d = self._devs[vsid] = _AccelDev(dev, vd.out_vdevice_id)
            if not self._install(vsid):
                del self._devs[vsid]
                self._destroy(d.vdevice_id)
                raise OSError(EIO, f"cannot install the guest's STE {vsid:#x} on the host")
        except BaseException:
            if not self._devs:                   # a vIOMMU with no device: nothing holds it
                self._free_viommu()
            raise

    def detach_device(self, vsid: int) -> None:
        """The device leaves the vSMMU (QEMU's smmuv3_accel_unset_iommu_device): back on
        the nest parent, its nested HWPT and vDEVICE freed; the vIOMMU goes with the last
        one.  If the host refuses the re-attach to the parent: OSError and nothing
        changed (the device stays behind the vSMMU on its HWPT, so a retry can free
        everything).  QEMU instead reports the error and frees what it can, which
        leaves the host objects the still-attached device pins in the iommufd context
        with nothing tracking them."""
        d = self._devs.get(vsid)
        if d is None:
            raise InvalidArgument(f"no device with StreamID {vsid:#x}")
        self._attach(d.dev, self._host.parent_hwpt_id)
        del self._devs[vsid]
        for oid in (d.s1_hwpt_id, d.vdevice_id):
            if oid is not None:
                self._destroy(oid)
        if not self._devs:
            self._free_viommu()

    def unrealize(self) -> None:
        """The VMM process lets go of what this vSMMU holds of the host: the vEVENTQ's
        descriptor closed and its scratch page unmapped.  The host objects it made
        (vIOMMU, vDEVICEs, HWPTs) belong to the iommufd and go with its last close.
        The vSMMU keeps working as an emulated model without a host."""
        if self.host is None:
            return
        if self.veventq_fd is not None:
            fd, self.veventq_fd = self.veventq_fd, None
            self.host.k.close(fd)
        if self._buf is not None:
            buf, self._buf = self._buf, None
            self.host.k.munmap(buf, PAGE)
        self.veventq_id = self.bypass_hwpt_id = self.abort_hwpt_id = self.viommu_id = None
        self._devs.clear()

    def hwpt_of(self, vsid: int) -> int | None:
        """The host HWPT the device with guest StreamID ``vsid`` is attached to."""
        d = self._devs.get(vsid)
        return None if d is None else d.hwpt_id

    @property
    def devices(self) -> dict[int, VfioPciDevice]:
        """The assigned devices by guest StreamID."""
        return {vsid: d.dev for vsid, d in self._devs.items()}

    # -- the vEVENTQ ------------------------------------------------------------------------

    @property
    def event_pending(self) -> bool:
        """Whether the vEVENTQ fd is readable (the main loop then calls :meth:`event_read`)."""
        fd = self.veventq_fd
        return fd is not None and bool(self._host.k.poll(fd) & EPOLLIN)

    def event_read(self) -> int:
        """smmuv3_accel_event_read(): the vEVENTQ fd is readable; move each event the
        host queued (it carries the guest StreamID) into the guest's event queue, which
        raises the guest's interrupt.  Returns how many were propagated; one the guest's
        queue drops (disabled, full) counts in ``stats["events_dropped"]``.  A LOST_EVENTS
        header counts in ``stats["veventq_overflows"]``; a gap in the sequence numbers
        otherwise in ``stats["events_lost"]``."""
        fd = self.veventq_fd                     # poll(2) / read(2) on the vEVENTQ's fd
        n = 0
        while fd is not None and self._host.k.poll(fd) & EPOLLIN:
            data = cast(bytes, self._host.k.read(fd, _HDR + _EVT))   # a vEVENTQ reads bytes
            hdr = u.IommufdVeventHeader.unpack(data[:_HDR]) if len(data) >= _HDR else None
            if hdr is None:
                break
            if hdr.flags & u.IOMMU_VEVENTQ_FLAG_LOST_EVENTS:
                self.stats["veventq_overflows"] += 1      # "overflowed"
                self._last_seq = None
                continue
            if len(data) < _HDR + _EVT:
                break
            if self._last_seq is not None and (hdr.sequence - self._last_seq) & 0x7FFF_FFFF != 1:
                self.stats["events_lost"] += (hdr.sequence - self._last_seq - 1) & 0x7FFF_FFFF
            self._last_seq = hdr.sequence
            if self.hw.record_event(dwords(data[_HDR:_HDR + _EVT])):
                self.stats["events_propagated"] += 1
                n += 1
            else:                                # the guest's queue is off, full or broken
                self.stats["events_dropped"] += 1
        return n

    # -- accel internals ----------------------------------------------------------------

    def _ioctl(self, cmd: int, arg: IoctlArg) -> int:
        return cast(int, self._host.iommufd.ioctl(cmd, arg))   # iommufd returns ints

    def _user_buf(self, data: bytes) -> int:
        """The VMM's scratch page holding ``data`` (an ioctl's payload)."""
        if self._buf is None:
            self._buf = self._host.k.mmap(PAGE)
        self._host.k.user_write(self._buf, data)
        return self._buf

    def _destroy(self, oid: int) -> None:
        try:
            self._ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=oid))
        except OSError:
            self.stats["host_errors"] += 1

    def _attach(self, dev: VfioPciDevice, pt_id: int) -> None:
        dev.devfile.ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, V.VfioDeviceAttachIommufdPt(pt_id=pt_id))

    def _alloc_hwpt(self, devid: int, ste0: int, ste1: int) -> int:
        data = u.IommuHwptArmSmmuv3(ste=[ste0, ste1]).pack()
        h = u.IommuHwptAlloc(flags=0, dev_id=devid, pt_id=self.viommu_id,
                             data_type=u.IOMMU_HWPT_DATA_ARM_SMMUV3, data_len=len(data),
                             data_uptr=self._user_buf(data))
        self._ioctl(u.IOMMU_HWPT_ALLOC, h)
        self.stats["hwpt_allocs"] += 1
        return cast(int, h.out_hwpt_id)

    def _check_hw_compatible(self, devid: int) -> None:
        """smmuv3_accel_check_hw_compatible(): the host SMMU behind ``devid`` must offer
        what this vSMMU advertises (InvalidArgument naming what it lacks)."""
        size = u.IommuHwInfoArmSmmuv3.sizeof
        info = u.IommuHwInfo(dev_id=devid, data_len=size, data_uptr=self._user_buf(bytes(size)))
        self._ioctl(u.IOMMU_GET_HW_INFO, info)
        if info.out_data_type != u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3:
            raise InvalidArgument(f"wrong data type ({info.out_data_type}) for host SMMUv3 info")
        buf = cast(int, self._buf)                 # _user_buf made it for the call above
        host = u.IommuHwInfoArmSmmuv3.unpack(self._host.k.user_read(buf, size)).idr
        mine = [self.hw.mmio_read(R.IDR0 + 4 * i) for i in range(6)]
        checks = (  # (name, field, IDR index, how the host's value must compare with ours)
            ("IDR0_ST_LEVEL", R.IDR0_ST_LEVEL, 0, "=="),
            ("IDR0_TTENDIAN", R.IDR0_TTENDIAN, 0, "<="), ("IDR0_TTF", R.IDR0_TTF, 0, ">="),
            ("IDR1_SIDSIZE", R.IDR1_SIDSIZE, 1, ">="),
            ("IDR1_SSIDSIZE", R.IDR1_SSIDSIZE, 1, ">="), ("IDR3_RIL", R.IDR3_RIL, 3, ">="),
            ("IDR5_OAS", R.IDR5_OAS, 5, ">="), ("IDR0_ATS", R.IDR0_ATS, 0, ">="),
            ("IDR5_GRAN4K", R.IDR5_GRAN4K, 5, "=="), ("IDR5_GRAN16K", R.IDR5_GRAN16K, 5, "=="),
            ("IDR5_GRAN64K", R.IDR5_GRAN64K, 5, "=="))
        for name, field, idx, rel in checks:
            h, m = field.get(host[idx]), field.get(mine[idx])
            ok = h == m if rel == "==" else (h <= m if rel == "<=" else h >= m)
            if not ok:
                raise InvalidArgument(f"host SMMUv3 not compatible: {name} host={h} vSMMU={m}")

    def _alloc_viommu(self, devid: int) -> None:
        """smmuv3_accel_alloc_viommu(): the vIOMMU, the abort and bypass HWPTs, the
        vEVENTQ if the guest's event queue is on."""
        va = u.IommuViommuAlloc(dev_id=devid, hwpt_id=self._host.parent_hwpt_id,
                                type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
        self._ioctl(u.IOMMU_VIOMMU_ALLOC, va)
        self.viommu_id = va.out_viommu_id
        try:
            self.abort_hwpt_id = self._alloc_hwpt(devid, R.STE0_V(1), 0)
            self.bypass_hwpt_id = self._alloc_hwpt(
                devid, R.STE0_V(1) | R.STE0_CONFIG(R.SteConfig.BYPASS), 0)
            if self.hw.mmio_read(R.CR0) & R.CR0_EVENTQEN:
                self._alloc_veventq()
        except BaseException:
            self._free_viommu()
            raise

    def _free_viommu(self) -> None:
        """smmuv3_accel_free_viommu()."""
        if self.veventq_fd is not None:
            fd, self.veventq_fd = self.veventq_fd, None
            self._host.k.close(fd)
        for oid in (self.veventq_id, self.bypass_hwpt_id, self.abort_hwpt_id, self.viommu_id):
            if oid is not None:
                self._destroy(oid)
        self.veventq_id = self.bypass_hwpt_id = self.abort_hwpt_id = self.viommu_id = None

    def _alloc_veventq(self) -> None:
        """smmuv3_accel_alloc_veventq(): as deep as the guest's event queue."""
        if self.viommu_id is None or self.veventq_fd is not None:
            return
        log2 = min(R.Q_BASE_LOG2SIZE.get(self.hw.mmio_read(R.EVENTQ_BASE, 8)), self.hw.eventqs)
        q = u.IommuVeventqAlloc(viommu_id=self.viommu_id, type=u.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
                                veventq_depth=1 << log2)
        try:
            self._ioctl(u.IOMMU_VEVENTQ_ALLOC, q)
        except OSError:
            self.stats["host_errors"] += 1
            return
        self.veventq_id = q.out_veventq_id
        self.veventq_fd = q.out_veventq_fd
        self._last_seq = None

    def _gbpa_hwpt(self) -> int | None:
        abort = self.hw.mmio_read(R.GBPA) & R.GBPA_ABORT
        return self.abort_hwpt_id if abort else self.bypass_hwpt_id

    def _install(self, vsid: int) -> bool:
        """smmuv3_accel_install_ste(): attach the HWPT the guest's configuration for
        ``vsid`` calls for; False if the host refused (the guest's command fails)."""
        d = self._devs.get(vsid)
        if d is None or self.viommu_id is None:
            return True
        s1_hwpt = None
        if not self.enabled:
            hwpt = self._gbpa_hwpt()
        else:
            ste = self.hw.read_ste(vsid)
            cfg = R.STE0_CONFIG.get(ste[0]) if ste is not None else R.SteConfig.ABORT
            if ste is None or not R.STE0_V.get(ste[0]) or cfg == R.SteConfig.ABORT:
                hwpt = self.abort_hwpt_id
            elif cfg == R.SteConfig.BYPASS:
                hwpt = self.bypass_hwpt_id
            elif cfg == R.SteConfig.S1:
                try:
                    s1_hwpt = hwpt = self._alloc_hwpt(
                        d.dev.devid, ste[0] & R.STE0_NESTING_ALLOWED,
                        ste[1] & R.STE1_NESTING_ALLOWED)
                except OSError:
                    self.stats["host_errors"] += 1
                    return False
            else:
                hwpt = self.abort_hwpt_id                # not a configuration it implements
        if hwpt is None:
            return False
        if hwpt == d.hwpt_id and s1_hwpt is None:
            return True
        try:
            self._attach(d.dev, hwpt)
        except OSError:
            self.stats["host_errors"] += 1
            if s1_hwpt is not None:
                self._destroy(s1_hwpt)
            return False
        if d.s1_hwpt_id is not None:
            self._destroy(d.s1_hwpt_id)
        d.hwpt_id, d.s1_hwpt_id = hwpt, s1_hwpt
        self.stats["ste_installs"] += 1
        return True

    def _install_range(self, first: int, last: int) -> bool:
        """smmuv3_accel_install_ste_range(): every assigned device in [first, last]."""
        ok = True
        for vsid in sorted(self._devs):
            if first <= vsid <= last:
                ok = self._install(vsid) and ok
        return ok

    def _invalidate(self, d0: int, d1: int) -> bool:
        """smmuv3_accel_issue_inv_cmd(): one guest command through the vIOMMU."""
        cmd = d0.to_bytes(8, "little") + d1.to_bytes(8, "little")
        inv = u.IommuHwptInvalidate(hwpt_id=self.viommu_id, data_uptr=self._user_buf(cmd),
                                    data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
                                    entry_len=len(cmd), entry_num=1)
        try:
            self._ioctl(u.IOMMU_HWPT_INVALIDATE, inv)
        except OSError:
            self.stats["host_errors"] += 1
            return False
        self.stats["invalidations"] += 1
        return True

    def _on_command(self, d0: int, d1: int) -> bool:
        """A guest command the register model carried out: what the host must see."""
        if self.viommu_id is None:
            return True
        op = R.CMD_OP.get(d0)
        if op == _Op.CFGI_STE:
            sid = R.CMD_SID.get(d0)
            return self._install_range(sid, sid)
        if op == _Op.CFGI_STE_RANGE:
            rng = R.CMD_STE_RANGE.get(d1)
            if rng == R.CFGI_ALL_RANGE:
                return self._install_range(0, (1 << self.hw.sidsize) - 1)
            span = (1 << (rng + 1)) - 1
            first = R.CMD_SID.get(d0) & ~span
            return self._install_range(first, first + span)
        if op in _CFGI_CD:
            if R.CMD_SID.get(d0) not in self._devs:
                return True                              # not an assigned device
            return self._invalidate(d0, d1)
        if op in _TLBI_FORWARDED:
            return self._invalidate(d0, d1)
        return True


__all__ = ["HostIommufd", "VirtualSmmuV3", "VITS_DOORBELL_GPA", "VSMMU_BASE", "VSMMU_SIZE"]
