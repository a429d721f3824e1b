"""vfio-pci in the VMM (QEMU's ``hw/vfio/pci.c``): a host PCI function assigned to the guest.

:class:`VfioPciDevice` is a :class:`pymsi.hw.pci.PciFunction` on the guest's PCI bus whose
configuration space and BARs are the host function's, reached through the VFIO device
cdev (``pread`` / ``pwrite`` at ``region index << 40``), except what the VMM emulates as
QEMU does: the BARs' addresses, the capability list, and the whole MSI-X capability,
table and PBA.  The guest's MSI-X table lives in the VMM; the guest's address and data
never reach the physical function.  When the guest enables MSI-X and unmasks a vector,
:meth:`VfioPciDevice.vfio_msix_vector_use`:

* computes the route address (``kvm_arch_fixup_msi_route``): the :class:`MsiIommu`'s
  fixed ``msi_gpa`` (accelerated vSMMU), or the guest's address translated through the
  guest's IOMMU (``translate_msi``; :class:`NoIommu` without one);
* under the host's ``per-vector`` design, first tells VFIO the guest's address for the
  vector (``VFIO_DEVICE_MSI_IOVA``) and maps the host doorbell page at the IPA that
  address reaches (``IOMMU_IOAS_MAP_MSI``); under ``preset`` hands the address down with
  ``VFIO_IRQ_SET_ACTION_PREPARE``; under ``sw-msi`` / ``dma-cookie`` does nothing (the
  guest must identity-map the host's MSI window);
* adds (or updates) a KVM MSI route with the device's guest requester ID, binds an
  eventfd to it with an irqfd, and gives that eventfd to VFIO for the vector
  (``VFIO_DEVICE_SET_IRQS``), enabling MSI-X on the host at the first vector (all
  vectors up to the one used, re-enabled to grow when the host cannot resize, grown one
  vector at a time when it can).

The emulated header carries the host function's vendor, device, revision, class and
subsystem IDs, and each BAR in the host's BAR register (vfio_bars_register).  One
difference from QEMU remains: the host's MSI capability is not offered (the guest sees
PCI Express and MSI-X only, so it uses MSI-X).

Masking a vector keeps its route and irqfd and points VFIO at the VMM's own eventfd for
it (``vfio_msix_vector_release``); the VMM's :meth:`~VfioPciDevice.poll` then records a
signal on it in the emulated PBA, sent when the guest unmasks.  Disabling MSI-X releases
everything.  A guest FLR (PCIe Initiate FLR in the emulated capability) or
:meth:`~VfioPciDevice.reset` disables MSI-X on the host, issues ``VFIO_DEVICE_RESET``
and returns the emulated state to reset values.  Bad guest accesses never raise: a
failed region access reads as all ones and drops a write, a failed host call is logged
in :attr:`~VfioPciDevice.errors` (a count per call and errno, bounded) and leaves
the vector without delivery.
"""

from __future__ import annotations

import errno as _errno
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from ..hw import pci as P
from ..uapi import iommufd as u
from ..uapi import vfio as V
from ._trace import Tracepoint
from .kvm_irqchip import KvmIrqchip

if TYPE_CHECKING:
    from ..uapi.syscalls import OpenFile, Syscalls

PAGE = 0x1000
EPOLLIN = 0x1                             # include/uapi/linux/eventpoll.h
MSIX = V.VFIO_PCI_MSIX_IRQ_INDEX
CFG_REGION = V.VFIO_PCI_CONFIG_REGION_INDEX
ERRORS_KEPT = 16                          # the last failed host calls kept in order

trace_vfio_msix_enable = Tracepoint("vfio_msix_enable", "name")
trace_vfio_msix_disable = Tracepoint("vfio_msix_disable", "name")
trace_vfio_msix_vector_do_use = Tracepoint("vfio_msix_vector_do_use", "name", "vector")
trace_vfio_msix_vector_release = Tracepoint("vfio_msix_vector_release", "name", "vector")
trace_vfio_msi_interrupt = Tracepoint("vfio_msi_interrupt", "name", "index", "addr", "data")
trace_vfio_pci_reset = Tracepoint("vfio_pci_reset", "name")
trace_vfio_region_read = Tracepoint("vfio_region_read", "name", "index", "addr", "size",
                                    "data")
trace_vfio_region_write = Tracepoint("vfio_region_write", "name", "index", "addr", "data",
                                     "size")


@runtime_checkable
class MsiIommu(Protocol):
    """The guest's IOMMU as the MSI route fix-up sees it (QEMU's
    ``kvm_arch_fixup_msi_route`` / accelerated SMMUv3's ``msi-gpa``)."""

    msi_gpa: int | None

    def translate_msi(self, rid: int, addr: int) -> int | None:
        """The GPA a write of requester ``rid`` to ``addr`` reaches through the guest's
        IOMMU, None when it faults."""
        ...


class NoIommu:
    """No vIOMMU: the guest's MSI address is a GPA."""

    msi_gpa: int | None = None

    def translate_msi(self, rid: int, addr: int) -> int | None:
        return addr


def _errno_of(e: BaseException) -> int:
    return getattr(e, "errno", None) or _errno.EIO


class MsiDoorbells:
    """The doorbell pages the VMM mapped in one IOAS (per-vector design, and preset
    nested), shared by its devices there: a page is mapped (IOMMU_IOAS_MAP_MSI) when a
    first vector's address reaches it and unmapped (IOMMU_IOAS_UNMAP) when the last
    moves away, is released or reset, so the IOAS holds exactly the pages in use
    whatever the guest writes.  An IPA already mapped but not by the VMM as a doorbell
    (guest RAM, say) is refused (EEXIST), not taken for one."""

    #: the registries by iommufd file; each holds its file through a weak reference, so
    #: that a registry (a value here) does not keep its own key alive
    _all: weakref.WeakKeyDictionary[OpenFile, dict[int, MsiDoorbells]] = \
        weakref.WeakKeyDictionary()

    def __init__(self, iommufd: OpenFile, ioas_id: int | None) -> None:
        self._iommufd = weakref.ref(iommufd)
        self.ioas_id = ioas_id
        self.refs: dict[int, int] = {}           # IPA page -> vectors reaching it

    @property
    def iommufd(self) -> OpenFile | None:
        """The VMM's iommufd file this registry maps through (None once it is gone)."""
        return self._iommufd()

    @classmethod
    def of(cls, iommufd: OpenFile, ioas_id: int | None) -> MsiDoorbells:
        """The registry of ``ioas_id`` in the VMM's ``iommufd``."""
        per_ioas = cls._all.setdefault(iommufd, {})
        key = -1 if ioas_id is None else ioas_id
        if key not in per_ioas:
            per_ioas[key] = cls(iommufd, ioas_id)
        return per_ioas[key]

    def get(self, ipa_page: int, dev_id: int) -> None:
        """One more vector reaches ``ipa_page``: mapped to ``dev_id``'s doorbell at the
        first (OSError from the host, nothing counted)."""
        if ipa_page not in self.refs:
            cast("OpenFile", self.iommufd).ioctl(u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(
                ioas_id=self.ioas_id, dev_id=dev_id, iova=ipa_page))
            self.refs[ipa_page] = 0
        self.refs[ipa_page] += 1

    def put(self, ipa_page: int) -> None:
        """One vector less reaches ``ipa_page``: unmapped at the last."""
        self.refs[ipa_page] -= 1
        if not self.refs[ipa_page]:
            del self.refs[ipa_page]
            cast("OpenFile", self.iommufd).ioctl(u.IOMMU_IOAS_UNMAP, u.IommuIoasUnmap(
                ioas_id=self.ioas_id, iova=ipa_page, length=PAGE))


@dataclass
class VFIOMSIVector:
    """QEMU's VFIOMSIVector: one MSI-X vector of the assigned function."""

    nr: int
    interrupt: OpenFile | None = None       # the VMM's own eventfd (masked vectors, no route)
    kvm_interrupt: OpenFile | None = None   # the irqfd's eventfd
    virq: int = -1                 # the KVM GSI of the route, -1: none
    use: bool = False
    msg: tuple[int, int] | None = None       # guest (address, data) the route was made from
    route_addr: int | None = None            # the doorbell GPA the route uses
    host_iova: int | None = None             # per-vector: the page given to VFIO
    doorbell: int | None = None              # the IOAS doorbell page it holds a reference on
    irqfd: bool = False
    masked_fd: bool = False        # VFIO signals ``interrupt`` (the vector is masked)

    def __repr__(self) -> str:
        msg = "-" if self.msg is None else f"{self.msg[0]:#x}/{self.msg[1]:#x}"
        return (f"VFIOMSIVector({self.nr}, virq={self.virq}, use={self.use}, msg={msg}, "
                f"irqfd={self.irqfd}, masked_fd={self.masked_fd})")


@dataclass
class VfioPciStats:
    """What the VMM device did (for tests and the demo)."""

    uses: int = 0
    releases: int = 0
    route_updates: int = 0
    host_enables: int = 0
    vmm_interrupts: int = 0        # signals the VMM took on its own eventfds
    sent: int = 0                  # MSIs the VMM injected (KVM_SIGNAL_MSI)
    dropped: int = 0               # MSIs the VMM could not route (translation fault)
    resets: int = 0
    bad_accesses: int = 0


class VfioPciDevice(P.PciFunction):
    """A host PCI function assigned to the guest at ``bus:device.function`` of the
    guest's PCI bus (QEMU's ``-device vfio-pci``).

    ``k`` is the host kernel the VMM runs on (only its system calls are used),
    ``host_path`` the function's VFIO cdev, ``iommufd`` the VMM's ``/dev/iommu`` File;
    ``pt_id``, when given, is attached at realize (an IOAS or HWPT; an accelerated vSMMU
    attaches later through :attr:`devfile` / :attr:`devid`); ``ioas_id`` the IOAS where
    doorbell pages are mapped (per-vector / preset designs); ``irqchip`` the VMM's KVM
    routing table; ``iommu`` the guest's IOMMU for the route fix-up; ``design`` the host
    context's MSI design (asked with IOMMU_OPTION when None).
    """

    def __init__(self, k: Syscalls, host_path: str, iommufd: OpenFile, irqchip: KvmIrqchip, *,
                 bus: int = 0, device: int = 1, function: int = 0,
                 pt_id: int | None = None, ioas_id: int | None = None,
                 iommu: MsiIommu | None = None, design: str | None = None,
                 name: str | None = None) -> None:
        self.k = k
        self.iommufd = iommufd
        self.irqchip = irqchip
        self.iommu: MsiIommu = iommu if iommu is not None else NoIommu()
        self.ioas_id = ioas_id if ioas_id is not None else pt_id
        self.name = name or f"vfio-pci {host_path}"
        # failed host calls, counted by (what, errno) as QEMU's error_report_once; the
        # last few in order: bounded whatever the guest makes the host refuse
        self.errors: Counter[tuple[str, int]] = Counter()
        self.last_errors: deque[tuple[str, int]] = deque(maxlen=ERRORS_KEPT)
        self.vstats = VfioPciStats()
        self.host_path = host_path
        # -- realize: open, bind, attach (vfio_realize / iommufd_cdev_attach) --
        self.devfile = k.open(host_path)
        try:
            b = V.VfioDeviceBindIommufd(iommufd=iommufd.fd)
            self.devfile.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
            self.devid: int = b.out_devid
            self.pt_id: int | None = None
            if pt_id is not None:
                self.attach(pt_id)
            self.design = design if design is not None else self._host_design()
            info = V.VfioDeviceInfo()
            self.devfile.ioctl(V.VFIO_DEVICE_GET_INFO, info)
            self.reset_works = bool(info.flags & V.VFIO_DEVICE_FLAGS_RESET)
            self.regions = {i: self._region_info(i) for i in range(V.VFIO_PCI_NUM_REGIONS - 1)}
            irq = V.VfioIrqInfo(index=MSIX)
            self.devfile.ioctl(V.VFIO_DEVICE_GET_IRQ_INFO, irq)
            self.msix_noresize = bool(irq.flags & V.VFIO_IRQ_INFO_NORESIZE)
            bars, self._bar_region, msix = self._probe_config(irq.count)
            super().__init__(bus, device, function,
                             vendor_id=self._host_cfg(P.VENDOR_ID, 2),
                             device_id=self._host_cfg(P.DEVICE_ID, 2),
                             class_code=self._host_cfg(P.CLASS_CODE - 1, 4) >> 8,
                             revision=self._host_cfg(P.REVISION, 1),
                             subsystem_vendor_id=self._host_cfg(P.SUBSYS_VENDOR_ID, 2),
                             subsystem_id=self._host_cfg(P.SUBSYS_ID, 2),
                             bars=bars, msix=msix, flr=self.reset_works)
        except BaseException:
            self.devfile.close()               # realize failed: nothing kept open
            raise
        self.msi_vectors: list[VFIOMSIVector] = [VFIOMSIVector(i) for i in
                                                 range(msix.vectors if msix else 0)]
        self._own: list[VFIOMSIVector] = []     # vectors with the VMM's own eventfd
        self.nr_vectors = 0            # vectors enabled on the host (QEMU's nr_vectors)
        self._defer_kvm_irq_routing = False     # MSI-X enable: routes committed once
        self._routes_changed = False
        self.host_msix = False         # MSI-X enabled through VFIO
        # doorbell pages in the IOAS (shared by the VMM's devices in it), and this
        # device's references on them
        self._doorbells = MsiDoorbells.of(iommufd, self.ioas_id)
        self._doorbell_refs: dict[int, int] = {}
        self.realized = True

    @property
    def doorbells(self) -> list[int]:
        """The IPA pages where this device's vectors reach a host doorbell mapped in the
        IOAS (IOMMU_IOAS_MAP_MSI), in order."""
        return sorted(self._doorbell_refs)

    # -- realize helpers ------------------------------------------------------------------

    def _host_design(self) -> str:
        opt = u.IommuOption(option_id=u.IOMMU_OPTION_MSI_DESIGN, op=u.IOMMU_OPTION_OP_GET)
        try:
            self.iommufd.ioctl(u.IOMMU_OPTION, opt)
        except OSError:
            return "sw-msi"                    # an upstream kernel: what Linux merged
        return u.IOMMU_MSI_DESIGN_NAMES[opt.val64]

    def _region_info(self, index: int) -> V.VfioRegionInfo:
        info = V.VfioRegionInfo(index=index)
        try:
            self.devfile.ioctl(V.VFIO_DEVICE_GET_REGION_INFO, info)
        except OSError:
            info.size = 0
        return info

    def _host_cfg(self, off: int, size: int) -> int:
        """A read of the host function's configuration space through VFIO."""
        data = self.devfile.pread((CFG_REGION << 40) + off, size)
        return int.from_bytes(data, "little")

    def _probe_config(self, msix_count: int) -> tuple[list[P.Bar], list[int],
                                                       P.MsixConfig | None]:
        """The BARs (from the region sizes and the BAR flags VFIO shows) and the MSI-X
        capability (vfio_msix_early_setup), as the emulated function will present them."""
        bars: list[P.Bar] = []
        bar_region: list[int] = []
        index = 0
        while index <= V.VFIO_PCI_BAR5_REGION_INDEX:
            size = self.regions[index].size
            flags = self._host_cfg(P.BAR0 + 4 * index, 4)
            is64 = (flags >> 1) & 3 == 2
            if size:
                bars.append(P.Bar(size, is64=is64, prefetchable=bool(flags & 0b1000),
                                  reg=index))
                bar_region.append(index)
            index += 2 if size and is64 else 1
        msix = None
        cap = self._find_cap(P.CAP_ID_MSIX)
        if cap is not None and msix_count:
            table = self._host_cfg(cap + P.MSIX_TABLE, 4)
            pba = self._host_cfg(cap + P.MSIX_PBA, 4)
            if table & 7 in bar_region and pba & 7 == table & 7:
                msix = P.MsixConfig(msix_count, bar=bar_region.index(table & 7),
                                    table_offset=table & ~7, pba_offset=pba & ~7)
        return bars, bar_region, msix

    def _find_cap(self, cap_id: int) -> int | None:
        return P.find_capability(lambda off: self._host_cfg(off, 1), cap_id)

    def attach(self, pt_id: int) -> int:
        """VFIO_DEVICE_ATTACH_IOMMUFD_PT (attach or replace); the HWPT used."""
        a = V.VfioDeviceAttachIommufdPt(pt_id=pt_id)
        self.devfile.ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        self.pt_id = a.pt_id
        return cast(int, a.pt_id)

    def unrealize(self) -> None:
        """vfio_exitfn: MSI-X off, the VMM's eventfds closed, the device file closed
        (the host resets the function at its last close)."""
        if not getattr(self, "realized", False):
            return
        self.vfio_msix_disable()
        for vec in self.msi_vectors:
            for f in (vec.interrupt, vec.kvm_interrupt):
                if f is not None:
                    f.close()
            vec.interrupt = vec.kvm_interrupt = None
        self._own.clear()
        self.devfile.close()
        self.realized = False

    def __repr__(self) -> str:
        return f"VfioPciDevice({self.bdf} <- {self.host_path})"

    # -- errors ----------------------------------------------------------------------------

    def _error(self, what: str, err: int) -> None:
        """A failed host call (QEMU's error_report_once): counted, the last few kept."""
        self.errors[(what, err)] += 1
        self.last_errors.append((what, err))

    def _host_call(self, what: str, fn: Callable[..., object], *args: object) -> bool:
        """A call to the host; a failure is recorded (as QEMU's error_report) and False."""
        try:
            fn(*args)
        except OSError as e:
            self._error(what, _errno_of(e))
            return False
        return True

    # -- configuration space ---------------------------------------------------------------

    def cfg_read(self, offset: int, size: int = 4) -> int:
        """vfio_pci_read_config: what the VMM emulates (identity, command, BARs, the
        capability list with its PCI Express and MSI-X capabilities) from its own
        space; the status register and the extended space from the host function
        through VFIO (all ones if VFIO refuses)."""
        value = super().cfg_read(offset, size)
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < P.CONFIG_SIZE:
            return value
        lo, hi = (offset, offset + size) if offset >= 0x100 else \
            (max(offset, P.STATUS), min(offset + size, P.STATUS + 2))
        if lo >= hi:
            return value
        try:
            dev = self.devfile.pread((CFG_REGION << 40) + lo, hi - lo)
        except OSError as e:
            self._error("config read", _errno_of(e))
            dev = b"\xff" * (hi - lo)
        raw = bytearray(value.to_bytes(size, "little"))
        raw[lo - offset:hi - offset] = dev.ljust(hi - lo, b"\xff")
        return int.from_bytes(raw, "little")

    def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        """vfio_pci_write_config: the command register goes to the host function too
        (through VFIO, which keeps what it virtualizes); everything is kept in the
        emulated space; MSI-X Enable / Function Mask changes start or stop vectors;
        Initiate FLR resets the function."""
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < P.CONFIG_SIZE:
            return
        lo, hi = max(offset, P.COMMAND), min(offset + size, P.COMMAND + 2)
        if lo < hi:
            raw = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
            self._host_call("config write", self.devfile.pwrite, (CFG_REGION << 40) + lo,
                            raw[lo - offset:hi - offset])
        masked_before = self._mask_states()
        was_enabled = self.msix_enabled
        super().cfg_write(offset, value, size)
        if self.msix_cap is None:
            return
        is_enabled = self.msix_enabled
        if not was_enabled and is_enabled:
            self.vfio_msix_enable()
        elif was_enabled and not is_enabled:
            self.vfio_msix_disable()
        elif is_enabled:
            self._mask_updates(masked_before)

    def flr(self) -> None:
        """The guest's Function Level Reset: QEMU's vfio_pci_reset (pre-reset: MSI-X off
        on the host; VFIO_DEVICE_RESET; post-reset), then the emulated state back to its
        reset values."""
        if not hasattr(self, "msi_vectors"):          # during PciFunction.__init__
            super().flr()
            return
        self.reset()

    def reset(self) -> None:
        """QEMU's vfio_pci_reset (device reset from the machine, or the guest's FLR)."""
        if trace_vfio_pci_reset.enabled:
            trace_vfio_pci_reset(name=self.name)
        self.vfio_pci_pre_reset()
        if self.reset_works:
            self._host_call("VFIO_DEVICE_RESET", self.devfile.ioctl, V.VFIO_DEVICE_RESET)
        self.vfio_pci_post_reset()
        self.vstats.resets += 1
        P.PciFunction.flr(self)

    def vfio_pci_pre_reset(self) -> None:
        """QEMU's vfio_pci_pre_reset: interrupts off, then I/O, Memory and Bus Master
        cleared in the host function's command register (through VFIO), so the function
        stops its DMA and the host's save/restore around the reset keeps it stopped."""
        self.vfio_msix_disable()
        try:
            cmd = self._host_cfg(P.COMMAND, 2)
        except OSError as e:
            self._error("config read", _errno_of(e))
            return
        cmd &= ~(P.CMD_IO | P.CMD_MEMORY | P.CMD_MASTER)
        self._host_call("config write", self.devfile.pwrite, (CFG_REGION << 40) + P.COMMAND,
                        cmd.to_bytes(2, "little"))

    def vfio_pci_post_reset(self) -> None:
        """QEMU's vfio_pci_post_reset: 0 written to every BAR of the host function
        through VFIO's configuration region."""
        for index in range(V.VFIO_PCI_BAR5_REGION_INDEX + 1):
            self._host_call("config write", self.devfile.pwrite,
                            (CFG_REGION << 40) + P.BAR0 + 4 * index, bytes(4))

    # -- BARs --------------------------------------------------------------------------------

    def _in_msix(self, index: int, offset: int) -> bool:
        m = self.msix
        if m is None or index != m.bar:
            return False
        return (m.table_offset <= offset < m.table_offset + len(self.msix_table)
                or m.pba_offset <= offset < m.pba_offset + len(self.msix_pba))

    def _region_pos(self, index: int, offset: int) -> int:
        return (self._bar_region[index] << 40) + offset

    def bar_read(self, index: int, offset: int, size: int) -> int:
        """A guest read in BAR ``index``: the MSI-X table and PBA from the VMM's emulation
        (pending signals collected first), the rest from the host function through VFIO
        (all ones if VFIO refuses)."""
        if self._in_msix(index, offset):
            self.poll()
            return super().bar_read(index, offset, size)
        if not 0 <= index < len(self._bar_region) or size not in (1, 2, 4, 8):
            self.vstats.bad_accesses += 1
            return (1 << 8 * size) - 1 if size in (1, 2, 4, 8) else 0
        try:
            data = self.devfile.pread(self._region_pos(index, offset), size)
        except OSError as e:
            self._error("region read", _errno_of(e))
            return (1 << 8 * size) - 1
        value = int.from_bytes(data.ljust(size, b"\xff"), "little")
        if trace_vfio_region_read.enabled:
            trace_vfio_region_read(name=self.name, index=self._bar_region[index], addr=offset,
                                   size=size, data=value)
        return value

    def bar_write(self, index: int, offset: int, value: int, size: int) -> None:
        """A guest write in BAR ``index``: the MSI-X table is the VMM's (a mask change or
        a new message of a live vector reaches VFIO / KVM), the PBA is read-only, the
        rest goes to the host function through VFIO."""
        if self._in_msix(index, offset):
            m = cast(P.MsixConfig, self.msix)                    # _in_msix: there is one
            tab = offset - m.table_offset
            if not 0 <= tab < len(self.msix_table):
                return                                        # the PBA: read-only
            nvec = len(self.msi_vectors)
            vectors = {v for v in (tab // P.MSIX_ENTRY_SIZE, (tab + size - 1) // P.MSIX_ENTRY_SIZE)
                       if v < nvec}
            before = {v: (self._vector_masked(v), self.msix_entry(v)[:2]) for v in vectors}
            super().bar_write(index, offset, value, size)
            for v in sorted(vectors):
                self._entry_update(v, *before[v])
            return
        if not 0 <= index < len(self._bar_region) or size not in (1, 2, 4, 8):
            self.vstats.bad_accesses += 1
            return
        if trace_vfio_region_write.enabled:
            trace_vfio_region_write(name=self.name, index=self._bar_region[index], addr=offset,
                                    data=value, size=size)
        data = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        self._host_call("region write", self.devfile.pwrite, self._region_pos(index, offset),
                        data)

    # -- MSI-X mask state --------------------------------------------------------------------

    def _vector_masked(self, v: int) -> bool:
        return not self.msix_enabled or self._msix_vector_masked(v)

    def _mask_states(self) -> list[bool]:
        if self.msix_cap is None:
            return []
        return [self._vector_masked(v) for v in range(len(self.msi_vectors))]

    def _mask_updates(self, before: list[bool]) -> None:
        """msix_update_function_masked: each vector whose mask state changed."""
        for v, was in enumerate(before):
            now = self._vector_masked(v)
            if was and not now:
                self.vfio_msix_vector_use(v)
            elif now and not was:
                self.vfio_msix_vector_release(v)

    def _entry_update(self, v: int, was_masked: bool, old_msg: tuple[int, int]) -> None:
        """msix_handle_mask_update, plus a live vector's new message (a route update)."""
        if not self.msix_enabled:
            return
        now = self._vector_masked(v)
        if was_masked and not now:
            self.vfio_msix_vector_use(v)
        elif now and not was_masked:
            self.vfio_msix_vector_release(v)
        elif not now and self.msix_entry(v)[:2] != old_msg:
            self.vfio_msix_vector_use(v)                   # reprogrammed while unmasked

    # -- MSI-X enable / disable (vfio_msix_enable / vfio_msix_disable) ----------------------

    def vfio_msix_enable(self) -> None:
        """The guest set MSI-X Enable: every vector unmasked now is used, as QEMU's
        vfio_msix_enable with ``defer_kvm_irq_routing``: the routes of all of them are
        added and committed once (one KVM_SET_GSI_ROUTING), their irqfds bound after
        the commit (vfio_commit_kvm_msi_virq_batch), and the host function's vectors
        [0, highest used] set with one VFIO_DEVICE_SET_IRQS (vfio_enable_vectors)."""
        if trace_vfio_msix_enable.enabled:
            trace_vfio_msix_enable(name=self.name)
        self._defer_kvm_irq_routing = True
        self._routes_changed = False
        try:
            for v in range(len(self.msi_vectors)):
                if not self._vector_masked(v):
                    self.vfio_msix_vector_use(v)
        finally:
            self._defer_kvm_irq_routing = False
        self.vfio_commit_kvm_msi_virq_batch()
        if self.nr_vectors and not self.host_msix:
            self._design_steps(list(range(self.nr_vectors)), self.nr_vectors - 1)
            self._enable_vectors()
        for v in range(self.nr_vectors):                 # pending bits the guest left
            if self.msix_pending(v) and not self._vector_masked(v):
                self._set_pba(v, False)
                self.msix_notify(v)

    def vfio_commit_kvm_msi_virq_batch(self) -> None:
        """The routes added while deferred committed at once, then each vector's irqfd."""
        if self._routes_changed:
            self._host_call("commit routes", self.irqchip.commit_routes)
            self._routes_changed = False
        for vec in self.msi_vectors:
            if vec.virq >= 0 and not vec.irqfd:
                if self._host_call("irqfd", self.irqchip.add_irqfd,
                                   self._eventfd(vec, True), vec.virq):
                    vec.irqfd = True

    def _commit_routes(self) -> None:
        """kvm_irqchip_commit_routes, or only noted while MSI-X enable batches them."""
        if self._defer_kvm_irq_routing:
            self._routes_changed = True
        else:
            self._host_call("commit routes", self.irqchip.commit_routes)

    def vfio_msix_disable(self) -> None:
        """The guest cleared MSI-X Enable (or a reset): MSI-X off on the host, every
        route, irqfd and the VMM's eventfd handling released."""
        if trace_vfio_msix_disable.enabled:
            trace_vfio_msix_disable(name=self.name)
        if self.host_msix:
            self._host_call("disable MSI-X", self.devfile.ioctl, V.VFIO_DEVICE_SET_IRQS,
                            V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_NONE
                                         | V.VFIO_IRQ_SET_ACTION_TRIGGER, index=MSIX))
            self.host_msix = False
        changed = False
        for vec in self.msi_vectors:
            if vec.irqfd:
                self._host_call("irqfd", self.irqchip.remove_irqfd, vec.kvm_interrupt,
                                vec.virq)
                vec.irqfd = False
            if vec.virq >= 0:
                self.irqchip.release_virq(vec.virq)
                vec.virq = -1
                changed = True
            if vec.host_iova is not None and self.design == "per-vector":
                self._host_call("MSI_IOVA clear", self._msi_iova, V.VFIO_MSI_IOVA_CLEAR,
                                vec.nr, None)
            self._doorbell(vec, None)
            vec.use, vec.msg, vec.route_addr, vec.host_iova = False, None, None, None
            vec.masked_fd = False
        if changed:
            self._host_call("commit routes", self.irqchip.commit_routes)
        self.nr_vectors = 0

    # -- vectors -----------------------------------------------------------------------------

    def _eventfd(self, vec: VFIOMSIVector, kvm: bool) -> OpenFile:
        attr = "kvm_interrupt" if kvm else "interrupt"
        f = getattr(vec, attr)
        if f is None:
            f = self.k.eventfd()
            setattr(vec, attr, f)
            if not kvm:
                self._own.append(vec)
        return cast("OpenFile", f)

    def route_address(self, addr: int) -> int | None:
        """kvm_arch_fixup_msi_route(): the doorbell GPA for the guest's MSI address."""
        if self.iommu.msi_gpa is not None:
            return self.iommu.msi_gpa
        return self.iommu.translate_msi(self.rid, addr)

    def _ipa_page(self, addr: int) -> int | None:
        """The IPA page the device's write to ``addr`` reaches after the guest's stage 1
        (the address itself without a vIOMMU)."""
        gpa = self.route_address(addr)
        return None if gpa is None else gpa & ~(PAGE - 1)

    def _msi_iova(self, op: int, nr: int, iova: int | None) -> None:
        arg = V.VfioDeviceMsiIova(flags=op, index=MSIX, start=nr, count=1,
                                  iova=[] if iova is None else [iova])
        self.devfile.ioctl(V.VFIO_DEVICE_MSI_IOVA, arg)

    def _doorbell(self, vec: VFIOMSIVector, ipa_page: int | None) -> None:
        """The vector's write now reaches ``ipa_page`` (None: nowhere): a reference on
        that doorbell page of the IOAS (IOMMU_IOAS_MAP_MSI at the first), the one on
        the page it reached before dropped (IOMMU_IOAS_UNMAP at the last)."""
        if vec.doorbell == ipa_page:
            return
        if vec.doorbell is not None:
            self._doorbell_put(vec.doorbell)
            vec.doorbell = None
        if ipa_page is None or self.ioas_id is None:
            return
        try:
            self._doorbells.get(ipa_page, self.devid)
        except OSError as e:
            self._error("IOAS_MAP_MSI", _errno_of(e))
            return
        vec.doorbell = ipa_page
        self._doorbell_refs[ipa_page] = self._doorbell_refs.get(ipa_page, 0) + 1

    def _doorbell_put(self, ipa_page: int) -> None:
        self._doorbell_refs[ipa_page] -= 1
        if not self._doorbell_refs[ipa_page]:
            del self._doorbell_refs[ipa_page]
        try:
            self._doorbells.put(ipa_page)
        except OSError as e:
            self._error("IOAS_UNMAP", _errno_of(e))

    def _design_steps(self, vectors: list[int], used: int) -> bool:
        """What the host design needs before SET_IRQS allocates or restarts ``vectors``
        for the guest's use of vector ``used``: per-vector: the guest's address of each
        (VFIO_DEVICE_MSI_IOVA) and the doorbell mapped where it leads; preset: the
        addresses with ACTION_PREPARE.  The host allocates from vector 0: a vector the
        guest is not using and has given no address gets ``used``'s (it has no trigger,
        it never fires); ``used`` without an address is left for the host to refuse.
        False when a step failed (recorded)."""
        ok = True
        fallback = self.msix_entry(used)[0]
        for nr in vectors:
            addr = self.msix_entry(nr)[0]
            vec = self.msi_vectors[nr]
            if not addr & ~(PAGE - 1) and nr != used and not vec.use:
                addr = fallback
            page = addr & ~(PAGE - 1)
            if self.design == "per-vector":
                if not page:
                    continue                       # no address: the host will say ENOENT
                if vec.host_iova != page:
                    if not self._host_call("VFIO_DEVICE_MSI_IOVA", self._msi_iova,
                                           V.VFIO_MSI_IOVA_SET, nr, page):
                        ok = False
                        continue
                    vec.host_iova = page
                self._doorbell(vec, self._ipa_page(addr))
            elif self.design == "preset":
                if not page:
                    continue
                if not self._host_call("PREPARE", self.devfile.ioctl, V.VFIO_DEVICE_SET_IRQS,
                                       V.VfioIrqSet(flags=V.VFIO_IRQ_SET_ACTION_PREPARE
                                                    | V.VFIO_IRQ_SET_DATA_MSI_IOVA,
                                                    index=MSIX, start=nr, count=1,
                                                    data=[page])):
                    ok = False
                    continue
                vec.host_iova = page
                if not isinstance(self.iommu, NoIommu):
                    ipa = self._ipa_page(addr)      # nested: stage 2 needs the IPA page
                    self._doorbell(vec, ipa if ipa != page else None)
        return ok

    def _vector_fd(self, vec: VFIOMSIVector) -> int:
        """The eventfd VFIO signals for a vector: the irqfd's while it is routed and
        unmasked, the VMM's own otherwise; -1 for a vector not in use."""
        if not vec.use:
            return -1
        if vec.virq >= 0 and not vec.masked_fd:
            return cast(int, cast("OpenFile", vec.kvm_interrupt).fd)   # routed: it has one
        return cast(int, self._eventfd(vec, False).fd)

    def _set_irqs(self, start: int, fds: list[int]) -> bool:
        arg = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
                           index=MSIX, start=start, count=len(fds), data=fds)
        try:
            ret = self.devfile.ioctl(V.VFIO_DEVICE_SET_IRQS, arg)
        except OSError as e:
            self._error("VFIO_DEVICE_SET_IRQS", _errno_of(e))
            return False
        if ret:                                         # fewer vectors than asked
            self._error("VFIO_DEVICE_SET_IRQS", _errno.ENOSPC)
            return False
        return True

    def _enable_vectors(self) -> bool:
        """vfio_enable_vectors(): MSI-X on the host with vectors [0, nr_vectors)."""
        fds = [self._vector_fd(self.msi_vectors[i]) for i in range(self.nr_vectors)]
        ok = self._set_irqs(0, fds)
        self.host_msix = ok
        if ok:
            self.vstats.host_enables += 1
        return ok

    def vfio_msix_vector_use(self, nr: int) -> None:
        """vfio_msix_vector_do_use(): the guest unmasked vector ``nr`` (or changed its
        message while unmasked)."""
        if trace_vfio_msix_vector_do_use.enabled:
            trace_vfio_msix_vector_do_use(name=self.name, vector=nr)
        vec = self.msi_vectors[nr]
        self.vstats.uses += 1
        self.poll()                         # signals taken while masked: pending
        addr, data, _ = self.msix_entry(nr)
        vec.use = True
        gpa = self.route_address(addr)
        # the KVM route (kvm_irqchip_add_msi_route / update), committed at once
        if gpa is None:
            if vec.virq >= 0:                # the guest's address no longer translates
                if vec.irqfd:
                    self._host_call("irqfd", self.irqchip.remove_irqfd, vec.kvm_interrupt,
                                    vec.virq)
                    vec.irqfd = False
                self.irqchip.release_virq(vec.virq)
                vec.virq = -1
                self._commit_routes()
        elif vec.virq < 0:
            try:
                vec.virq = self.irqchip.add_msi_route(gpa, data, self.rid, nr, self.name)
            except OSError as e:
                self._error("add_msi_route", _errno_of(e))
            else:
                self._commit_routes()
                if not self._defer_kvm_irq_routing and self._host_call(
                        "irqfd", self.irqchip.add_irqfd, self._eventfd(vec, True), vec.virq):
                    vec.irqfd = True
        elif (gpa, data) != (vec.route_addr, (vec.msg or (0, 0))[1]):
            self.irqchip.update_msi_route(vec.virq, gpa, data, self.rid)
            self._commit_routes()
            self.vstats.route_updates += 1
        vec.msg, vec.route_addr = (addr, data), gpa
        vec.masked_fd = False
        # VFIO: the host vector's trigger (at MSI-X enable: once for the batch)
        resizing = nr >= self.nr_vectors
        if self._defer_kvm_irq_routing:
            self.nr_vectors = max(self.nr_vectors, nr + 1)
            return
        if not self.host_msix or (resizing and self.msix_noresize):
            if self.host_msix:
                self._host_call("disable MSI-X", self.devfile.ioctl, V.VFIO_DEVICE_SET_IRQS,
                                V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_NONE
                                             | V.VFIO_IRQ_SET_ACTION_TRIGGER, index=MSIX))
                self.host_msix = False
            self.nr_vectors = max(self.nr_vectors, nr + 1)
            self._design_steps(list(range(self.nr_vectors)), nr)
            self._enable_vectors()
        else:
            if resizing:
                self.nr_vectors = nr + 1
            self._design_steps([nr], nr)
            self._set_irqs(nr, [self._vector_fd(vec)])
        # a message pending in the emulated PBA goes now
        if self.msix_pending(nr) and not self._vector_masked(nr):
            self._set_pba(nr, False)
            self.msix_notify(nr)

    def vfio_msix_vector_release(self, nr: int) -> None:
        """vfio_msix_vector_release(): the guest masked vector ``nr``; its route and
        irqfd stay, VFIO signals the VMM's own eventfd, whose signals become pending
        bits (see :meth:`poll`)."""
        if trace_vfio_msix_vector_release.enabled:
            trace_vfio_msix_vector_release(name=self.name, vector=nr)
        vec = self.msi_vectors[nr]
        self.vstats.releases += 1
        if not vec.use:
            return
        vec.masked_fd = True
        if self.host_msix and nr < self.nr_vectors:
            self._set_irqs(nr, [self._vector_fd(vec)])

    # -- the VMM's own interrupt handling ---------------------------------------------------

    def poll(self) -> int:
        """The VMM's event loop for this device (vfio_msi_interrupt): each signal on a
        vector's own eventfd is a pending bit while the vector is masked, else an MSI
        the VMM sends itself.  Returns the signals taken."""
        taken = 0
        for vec in self._own:
            f = vec.interrupt
            if f is None or not f.poll() & EPOLLIN:
                continue
            f.read(8)
            taken += 1
            self.vstats.vmm_interrupts += 1
            if self._vector_masked(vec.nr):
                self._set_pba(vec.nr, True)
            else:
                self.msix_notify(vec.nr)
        return taken

    def msix_notify(self, vector: int) -> P.Delivery:
        """msix_notify(): send the vector's message as the guest wrote it, through the
        route fix-up (KVM_SIGNAL_MSI with the requester ID)."""
        addr, data, _ = self.msix_entry(vector)
        if trace_vfio_msi_interrupt.enabled:
            trace_vfio_msi_interrupt(name=self.name, index=vector, addr=addr, data=data)
        return self._send(addr, data)

    def _send(self, addr: int, data: int, vector: int | None = None) -> P.Delivery:
        """msi_send_message() of the emulated function (a message the VMM sends itself,
        e.g. a pending bit released by the guest's unmask)."""
        gpa = self.route_address(addr)
        if gpa is None:
            self.vstats.dropped += 1
            return P.Delivery.ABORTED
        try:
            self.irqchip.send_msi(gpa, data, self.rid)
        except OSError as e:
            self._error("KVM_SIGNAL_MSI", _errno_of(e))
            self.vstats.dropped += 1
            return P.Delivery.ABORTED
        self.vstats.sent += 1
        return P.Delivery.SENT


__all__ = ["MsiDoorbells", "MsiIommu", "NoIommu", "VfioPciDevice", "VFIOMSIVector", "VfioPciStats"]
