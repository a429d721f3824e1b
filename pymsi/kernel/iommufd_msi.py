"""The four MSI address designs of an iommufd context (``IommufdCtx.msi``).

Every HWPT domain iommufd allocates is told to the context's design
(:class:`~pymsi.kernel.iommufd.IommufdMsiHooks`), and when an MSI of a device
attached to one of them is prepared (:meth:`IommuCore.dma_prepare_msi` on an
IOMMUFD cookie) the design answers where the device must write:

``dma-cookie``
    VFIO type1's way: a paging HWPT's domain gets a dma-iommu MSI cookie at the
    SW_MSI base, and the doorbell page is mapped there on demand (dma-iommu
    does it, the cookie type is DMA_MSI).  A nested domain has no cookie: the
    doorbell PA goes out unchanged and, under a guest stage 1, faults unless
    the guest maps it.
``sw-msi``
    Linux 6.15's iommufd ``sw_msi``: one IOVA per doorbell page per context,
    ``sw_msi_start + pgoff * PAGE_SIZE`` in the device's SW_MSI region, mapped
    READ | WRITE | MMIO into the paging domain (the nest parent for a nested
    one), tracked by map id (64 per context: the 65th page is EOVERFLOW) in a
    ``present`` bitmap per paging HWPT and a ``required`` bitmap per device
    (Linux keeps it per group), so that attaching into another paging domain
    installs what the device needs.  No SW_MSI region: the message is unchanged.
``preset``
    The RFCv2 series: ``VFIO_IRQ_SET_ACTION_PREPARE | VFIO_IRQ_SET_DATA_MSI_IOVA``
    stores an IOVA per (device, index, vector); allocating the vector maps the
    doorbell page there and uses it.  A vector without one falls back to the
    sw-msi window (the behaviour the thread objected to).  The IOVAs are read
    only when vectors are allocated.
``per-vector``
    The thread's design: a C-core :class:`pymsi.core.MsiTable` per context keyed
    by (iommufd device, MSI or MSI-X) and msi_index, filled by
    ``VFIO_DEVICE_MSI_IOVA``; preparing is a table lookup (no IOVA allocation,
    no page-table change) and a vector without an entry is ENOENT.  Nothing is
    mapped implicitly: userspace maps the doorbell page with
    ``IOMMU_IOAS_MAP_MSI``; the SW_MSI window is not reserved.  Affinity changes
    force the message to be rewritten (:meth:`PciMsiLayer.force_rewrite`).

``IOMMU_OPTION`` with the non-upstream ``IOMMU_OPTION_MSI_DESIGN`` (val64 an
index into :data:`MSI_DESIGNS`) switches a context's design while it has no
bound device and no HWPT (EBUSY after); ``k.iommufd.msi_design`` is the default
of new contexts (set by the machine's ``msi_design=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from .. import core
from ..core import Prot
from ..uapi import iommufd as uapi
from .base import EBUSY, EINVAL, ENOENT, EOPNOTSUPP, EOVERFLOW, fail
from .files import PAGE_SIZE
from .iommu import MSI_IOVA_BASE, IommuCookieType
from .iommufd import (
    ULONG_MAX,
    Area,
    HwptNested,
    HwptPaging,
    IommufdCtx,
    IommufdDevice,
    IommufdMsiHooks,
    PinnedPages,
)

if TYPE_CHECKING:
    from .iommu import IommuDevice, IommuDomain
    from .iommufd import HwptNested, HwptPaging
    from .kernel import Kernel
    from .msi import MsiDesc
    from .pci import PciDev

MSI_DESIGNS = ("dma-cookie", "sw-msi", "preset", "per-vector")
PHYS_ADDR_MAX = (1 << 64) - 1
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
SW_MSI_MAX_MAPS = 64                    # bits of struct iommufd_sw_msi_maps
MSI_SW_PROT = Prot.READ | Prot.WRITE | Prot.MMIO          # iommufd_sw_msi_install()
MSI_MAP_PROT = Prot.WRITE | Prot.NOEXEC | Prot.MMIO        # IOMMU_IOAS_MAP_MSI: write-only
VFIO_MSI, VFIO_MSIX = 1, 2                                 # VFIO_PCI_MSI/MSIX_IRQ_INDEX


def _paging(hwpt: HwptPaging | HwptNested) -> HwptPaging:
    """find_hwpt_paging(): the paging HWPT that holds a HWPT's stage-2 mappings."""
    return hwpt if isinstance(hwpt, HwptPaging) else hwpt.parent


def msi_doorbell(kernel: Kernel, idev: IommufdDevice) -> int | None:
    """The physical doorbell a device's MSIs are aimed at (the ITS's GITS_TRANSLATER),
    or None when its MSIs are not translated by the IOMMU (x86: IOMMU_RESV_MSI)."""
    if idev.hw_msi:
        return None
    its = getattr(kernel, "its", None)
    return None if its is None else its.translater


class MsiDesignBase(IommufdMsiHooks):
    """What the four designs share: HWPT domains get an IOMMUFD cookie, and the
    context knows which of its devices a PCI function is.

    The hook contract (what the kernel model calls, in this order; a variant
    under test overrides some of them):

    * ``hwpt_init(hwpt)`` -- a new HWPT; ``hwpt_destroy(hwpt)`` before it goes.
    * ``attach(idev, hwpt)`` -- before the device's group moves into
      ``hwpt.domain`` (a KernelError fails the attach, nothing changed), then
      ``attached(idev, hwpt)`` after it moved; ``detach(idev)``, ``unbind(idev)``.
    * ``prepare(domain, desc, msi_addr)`` -- iommufd_sw_msi(): when a vector is
      allocated/activated under an IOMMUFD domain, set ``desc``'s IOVA and shift
      for the doorbell at ``msi_addr`` (:meth:`IommuCore.dma_prepare_msi`).

    :class:`PerVectorMsi` adds two more, and routes every compose through one:
    ``has_entry(idev, index, vector)`` is asked first, by VFIO_DEVICE_SET_IRQS,
    for every vector about to get a trigger (False: ENOENT, nothing changed);
    then ``prepare`` calls ``lookup(desc)``; and every forced rewrite (affinity
    change, vLPI map/move, ``attached``) calls ``lookup(desc)`` again.
    """

    name = "base"

    def __init__(self, ctx: IommufdCtx) -> None:
        self.ctx = ctx
        self.kernel = ctx.kernel
        self.idevs: dict[IommuDevice, IommufdDevice] = {}   # PCI function -> its iommufd device

    def hwpt_init(self, hwpt: HwptPaging | HwptNested) -> None:
        hwpt.domain.cookie_type = IommuCookieType.IOMMUFD
        hwpt.domain.owner = "iommufd"

    def attach(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        self.idevs[idev.dev] = idev

    def unbind(self, idev: IommufdDevice) -> None:
        if self.idevs.get(idev.dev) is idev:
            del self.idevs[idev.dev]

    def prepare(self, domain: IommuDomain, desc: MsiDesc, msi_addr: int) -> None:
        """iommufd_sw_msi(): set ``desc``'s IOVA and shift for a doorbell at
        ``msi_addr`` (the default: the PA unchanged)."""
        desc.set_iommu_msi_iova(0, 0)


class DmaCookieMsi(MsiDesignBase):
    """``dma-cookie``: VFIO type1's MSI cookie on paging domains, none on nested ones."""

    name = "dma-cookie"

    def hwpt_init(self, hwpt: HwptPaging | HwptNested) -> None:
        if isinstance(hwpt, HwptNested):
            hwpt.domain.owner = "iommufd"             # no cookie: the PA goes out unchanged
            return
        self.kernel.dma_iommu.get_msi_cookie(hwpt.domain, MSI_IOVA_BASE)


@dataclass(eq=False)
class SwMsiMap:
    """struct iommufd_sw_msi_map: a doorbell page at ``sw_msi_start + pgoff * PAGE_SIZE``."""

    sw_msi_start: int
    msi_addr: int
    pgoff: int
    id: int

    @property
    def iova(self) -> int:
        return self.sw_msi_start + self.pgoff * PAGE_SIZE


class SwMsi(MsiDesignBase):
    """``sw-msi``: Linux 6.15's iommufd_sw_msi (see the module docstring)."""

    name = "sw-msi"

    def __init__(self, ctx: IommufdCtx) -> None:
        super().__init__(ctx)
        self.maps: list[SwMsiMap] = []            # ictx->sw_msi_list
        self.present: dict[HwptPaging | HwptNested, int] = {}  # hwpt_paging->present_sw_msi
        self.required: dict[IommufdDevice, int] = {}   # igroup->required_sw_msi

    def get_map(self, msi_addr: int, sw_msi_start: int) -> SwMsiMap:
        """iommufd_sw_msi_get_map(): the context's map of that page, or a new one at
        the next page offset of the window; EOVERFLOW after 64 maps."""
        max_pgoff = 0
        for m in self.maps:
            if m.sw_msi_start != sw_msi_start:
                continue
            max_pgoff = max(max_pgoff, m.pgoff + 1)
            if m.msi_addr == msi_addr:
                return m
        if len(self.maps) >= SW_MSI_MAX_MAPS:
            raise fail(EOVERFLOW, f"more than {SW_MSI_MAX_MAPS} MSI pages in one context")
        m = SwMsiMap(sw_msi_start, msi_addr, max_pgoff, len(self.maps))
        self.maps.append(m)
        return m

    def install(self, hwpt: HwptPaging, m: SwMsiMap) -> None:
        """iommufd_sw_msi_install(): map the page into the paging domain once."""
        bits = self.present.get(hwpt, 0)
        if bits >> m.id & 1:
            return
        self.kernel.iommu.map(hwpt.domain, m.iova, m.msi_addr, PAGE_SIZE, MSI_SW_PROT)
        self.present[hwpt] = bits | 1 << m.id

    def prepare(self, domain: IommuDomain, desc: MsiDesc, msi_addr: int) -> None:
        idev = self.idevs.get(desc.dev)
        if idev is None or idev.sw_msi_start == PHYS_ADDR_MAX:
            desc.set_iommu_msi_iova(0, 0)           # no SW_MSI region: message unchanged
            return
        m = self.get_map(msi_addr & ~(PAGE_SIZE - 1), idev.sw_msi_start)
        self.install(_paging(cast("HwptPaging | HwptNested", domain.iommufd_hwpt)), m)
        self.required[idev] = self.required.get(idev, 0) | 1 << m.id
        desc.set_iommu_msi_iova(m.iova, PAGE_SHIFT)

    def attach(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        """iommufd_group_setup_msi(): install every page the device needs in the
        paging domain it moves to."""
        super().attach(idev, hwpt)
        paging = _paging(hwpt)
        need = self.required.get(idev, 0)
        for m in self.maps:
            if need >> m.id & 1:
                self.install(paging, m)

    def unbind(self, idev: IommufdDevice) -> None:
        super().unbind(idev)
        self.required.pop(idev, None)

    def hwpt_destroy(self, hwpt: HwptPaging | HwptNested) -> None:
        self.present.pop(hwpt, None)


class PresetMsi(SwMsi):
    """``preset``: the RFCv2 series' per-vector IOVAs handed down before enabling,
    with the sw-msi window as the fallback for a vector without one."""

    name = "preset"

    def __init__(self, ctx: IommufdCtx) -> None:
        super().__init__(ctx)
        self.iovas: dict[tuple[IommufdDevice, int, int], int] = {}   # msi_iovas[]
        self.installed: dict[HwptPaging | HwptNested, dict[int, int]] = {}        # iova -> page
        self.needs: dict[IommufdDevice, dict[int, int]] = {}         # iova -> page

    def preset(self, idev: IommufdDevice, index: int, start: int, iovas: list[int]) -> None:
        """VFIO_IRQ_SET_ACTION_PREPARE | DATA_MSI_IOVA: remember the vectors' IOVAs
        (read when the vectors are next allocated)."""
        for i, iova in enumerate(iovas):
            self.iovas[(idev, index, start + i)] = iova

    def _install_at(self, hwpt: HwptPaging, iova: int, page: int) -> None:
        done = self.installed.setdefault(hwpt, {})
        if done.get(iova) == page:
            return
        self.kernel.iommu.map(hwpt.domain, iova, page, PAGE_SIZE, MSI_SW_PROT)
        done[iova] = page

    def prepare(self, domain: IommuDomain, desc: MsiDesc, msi_addr: int) -> None:
        idev = self.idevs.get(desc.dev)
        index = VFIO_MSIX if desc.is_msix else VFIO_MSI
        iova = None if idev is None else self.iovas.get((idev, index, desc.msi_index))
        if iova is None:
            super().prepare(domain, desc, msi_addr)    # RFCv2: fall back to the window
            return
        iova &= ~(PAGE_SIZE - 1)
        page = msi_addr & ~(PAGE_SIZE - 1)
        self._install_at(_paging(cast("HwptPaging | HwptNested", domain.iommufd_hwpt)), iova, page)
        # an iova was found, so there is a device
        self.needs.setdefault(cast(IommufdDevice, idev), {})[iova] = page
        desc.set_iommu_msi_iova(iova, PAGE_SHIFT)

    def attach(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        super().attach(idev, hwpt)
        paging = _paging(hwpt)
        for iova, page in self.needs.get(idev, {}).items():
            self._install_at(paging, iova, page)

    def unbind(self, idev: IommufdDevice) -> None:
        super().unbind(idev)
        self.needs.pop(idev, None)
        for key in [k for k in self.iovas if k[0] is idev]:
            del self.iovas[key]

    def hwpt_destroy(self, hwpt: HwptPaging | HwptNested) -> None:
        super().hwpt_destroy(hwpt)
        self.installed.pop(hwpt, None)


class PerVectorMsi(MsiDesignBase):
    """``per-vector``: the address of every vector comes from userspace, through a
    C-core MSI table keyed by (iommufd device id << 1 | MSI-X, msi_index).

    The hooks, in the order the kernel model calls them:

    1. ``has_entry(idev, index, vector)`` -- VFIO_DEVICE_SET_IRQS asks it for
       every vector about to get a trigger, *before* anything is allocated; a
       False fails the ioctl with ENOENT and nothing changes.  So ``lookup``'s
       missing-entry path is reached only for vectors ``has_entry`` passed: a
       variant that changes what a missing entry means must override
       ``has_entry`` too, or its new path is never exercised.
    2. ``prepare(domain, desc, msi_addr)`` -> ``lookup(desc)`` -- vector
       allocation / activation (also in the blocked domain of a bound device).
    3. ``lookup(desc)`` -- an affinity change or a vLPI map / move asks it first
       (a started vector without an entry: ENOENT, nothing changed), and every
       forced rewrite (:meth:`PciMsiLayer.force_rewrite`: after an affinity
       change, after a vLPI map/move/unmap, and from ``attached`` after an
       attach or replace) calls it again; a KernelError there masks the vector.
    4. ``unbind(idev)`` forgets the device's entries.
    """

    name = "per-vector"
    reserve_sw_msi = False
    TABLE_MIN = 64

    def __init__(self, ctx: IommufdCtx) -> None:
        super().__init__(ctx)
        self.table = core.MsiTable()
        self.table.reserve(self.TABLE_MIN)
        self.sized: dict[IommufdDevice, int] = {}     # room reserved for each device

    @staticmethod
    def key(idev: IommufdDevice, index: int) -> int:
        """The table's device key: MSI and MSI-X vectors of one device kept apart."""
        return idev.id << 1 | (1 if index == VFIO_MSIX else 0)

    def ensure(self, idev: IommufdDevice) -> None:
        """Reserve room for every vector ``idev`` can have (MSI + MSI-X), so that
        filling the table never allocates."""
        if idev in self.sized:
            return
        pdev = idev.dev
        n = (cast("PciDev", pdev).msix_vectors()            # an MSI-X capability: PCI
             if getattr(pdev, "msix_cap", None) is not None else 0)
        n += 32 if getattr(pdev, "msi_cap", None) is not None else 0
        self.sized[idev] = n
        self.table.reserve(self.TABLE_MIN + sum(self.sized.values()))
        self.idevs.setdefault(pdev, idev)

    def attach(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        super().attach(idev, hwpt)
        self.ensure(idev)

    def attached(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        """The device's live vectors are written again from their table entries
        (enabled while blocked, or their entries changed since); one without an
        entry is masked by the forced rewrite."""
        msi = getattr(self.kernel, "msi", None)
        if msi is None or idev.hw_msi:
            return
        for desc in list(getattr(idev.dev, "msi_descs", {}).values()):
            msi.force_rewrite(desc)

    def unbind(self, idev: IommufdDevice) -> None:
        super().unbind(idev)
        mine = (self.key(idev, VFIO_MSI), self.key(idev, VFIO_MSIX))
        for dev, index, _, _ in self.table.items():
            if dev in mine:
                self.table.remove(dev, index)
        self.sized.pop(idev, None)

    # -- the table, as VFIO_DEVICE_MSI_IOVA sees it ------------------------------------

    def get(self, idev: IommufdDevice, index: int, vector: int) -> int:
        """The IOVA set for the vector, 0 for none."""
        e = self.table.get(self.key(idev, index), vector)
        return 0 if e is None else e[0]

    def set_range(self, idev: IommufdDevice, index: int, start: int,
                  iovas: list[int]) -> None:
        """SET: the IOVAs of vectors start.. (already checked: cannot fail)."""
        self.ensure(idev)
        dev = self.key(idev, index)
        for i, iova in enumerate(iovas):
            self.table.set(dev, start + i, iova, PAGE_SHIFT)

    def clear_range(self, idev: IommufdDevice, index: int, start: int, count: int) -> None:
        """CLEAR: forget the vectors' entries (none is fine)."""
        dev = self.key(idev, index)
        for v in range(start, start + count):
            if self.table.get(dev, v) is not None:
                self.table.remove(dev, v)

    # -- compose -------------------------------------------------------------------------

    def idev_of(self, dev: IommuDevice) -> IommufdDevice | None:
        """The context's bound device object of PCI function ``dev`` (attached or not)."""
        idev = self.idevs.get(dev)
        if idev is not None:
            return idev
        return next((o for o in self.ctx.objects.values()
                     if isinstance(o, IommufdDevice) and o.dev is dev and o.bound), None)

    def lookup(self, desc: MsiDesc) -> None:
        """The prepare step: the vector's table entry into the descriptor (ENOENT
        for none).  No allocation and no page-table change."""
        idev = self.idev_of(desc.dev)
        if idev is None:
            raise fail(ENOENT, f"{desc.dev} is not a device of this iommufd context")
        if idev.hw_msi:
            desc.set_iommu_msi_iova(0, 0)
            return
        # MSI has one address register for all its vectors (Linux: one msi_desc,
        # msi_index 0): every MSI vector uses vector 0's entry.
        e = self.table.get(self.key(idev, VFIO_MSIX if desc.is_msix else VFIO_MSI),
                           desc.msi_index if desc.is_msix else 0)
        if e is None:
            raise fail(ENOENT, f"{desc.dev}: no MSI address for "
                               f"{'MSI-X' if desc.is_msix else 'MSI'} vector {desc.msi_index}")
        desc.set_iommu_msi_iova(e[0], e[1])

    def has_entry(self, idev: IommufdDevice, index: int, vector: int) -> bool:
        """Whether preparing that vector would find an address."""
        vector = vector if index == VFIO_MSIX else 0
        return self.table.get(self.key(idev, index), vector) is not None

    def prepare(self, domain: IommuDomain, desc: MsiDesc, msi_addr: int) -> None:
        self.lookup(desc)


DESIGNS: dict[str, type[MsiDesignBase]] = {
    "dma-cookie": DmaCookieMsi, "sw-msi": SwMsi, "preset": PresetMsi,
    "per-vector": PerVectorMsi,
}


def new_hooks(ctx: IommufdCtx, design: str) -> MsiDesignBase:
    """The MSI design object of a context."""
    if design not in DESIGNS:
        raise fail(EINVAL, f"unknown MSI design {design!r}")
    return DESIGNS[design](ctx)


# -- IOMMU_OPTION (IOMMU_OPTION_MSI_DESIGN) ------------------------------------------------


def ioctl_option(ctx: IommufdCtx, cmd: uapi.IommuOption) -> None:
    """IOMMU_OPTION: only the non-upstream IOMMU_OPTION_MSI_DESIGN is modelled
    (global to the context: object_id 0); GET answers the index of the design in
    MSI_DESIGNS, SET switches it (EINVAL beyond the list, EBUSY once the context
    has a bound device or a HWPT)."""
    if getattr(cmd, "__reserved"):
        raise fail(EOPNOTSUPP, "reserved member set")
    if cmd.option_id != uapi.IOMMU_OPTION_MSI_DESIGN:
        raise fail(EOPNOTSUPP, f"option {cmd.option_id} not modelled")
    if cmd.object_id:
        raise fail(EOPNOTSUPP, "the MSI design is a context option (object_id 0)")
    if cmd.op == uapi.IOMMU_OPTION_OP_GET:
        cmd.val64 = MSI_DESIGNS.index(ctx.msi.name)
        return
    if cmd.op != uapi.IOMMU_OPTION_OP_SET:
        raise fail(EOPNOTSUPP, f"option op {cmd.op}")
    if cmd.val64 >= len(MSI_DESIGNS):
        raise fail(EINVAL, f"MSI design {cmd.val64} (there are {len(MSI_DESIGNS)})")
    if any(o.kind in ("device", "hwpt_paging", "hwpt_nested") for o in ctx.objects.values()):
        raise fail(EBUSY, "the context already has devices or HWPTs")
    ctx.msi = new_hooks(ctx, MSI_DESIGNS[cmd.val64])


# -- IOMMU_IOAS_MAP_MSI ------------------------------------------------------------------


class MmioPages(PinnedPages):
    """A doorbell page behind an IOAS area: MMIO, never pinned nor unpinned, and not
    "writable" user memory; IOMMU_IOAS_COPY of it is EPERM whatever its flags."""

    copyable = False

    def __init__(self, kernel: Kernel, pa: int) -> None:
        super().__init__(kernel, 0, [pa], False)

    def put(self, first: int, n: int) -> None:
        for i in range(first, first + n):
            self.users[i] -= 1


def ioctl_ioas_map_msi(ctx: IommufdCtx, cmd: uapi.IommuIoasMapMsi) -> None:
    """IOMMU_IOAS_MAP_MSI (not upstream): map device ``dev_id``'s MSI doorbell page at
    ``iova`` of IOAS ``ioas_id``, write-only MMIO, as an ordinary area (mapped into
    every domain of the IOAS, removed by IOMMU_IOAS_UNMAP).  EOPNOTSUPP for flags,
    and for a device whose MSIs the IOMMU does not translate (x86); the IOVA is
    checked as a FIXED_IOVA IOMMU_IOAS_MAP would be (EINVAL unaligned or reserved,
    EEXIST over an area, EOVERFLOW past the end)."""
    if cmd.flags:
        raise fail(EOPNOTSUPP, "map_msi flags")
    ioas = ctx.ioas(cmd.ioas_id)
    idev = ctx.device(cmd.dev_id)
    pa = msi_doorbell(ctx.kernel, idev)
    if pa is None:
        raise fail(EOPNOTSUPP, f"{idev.dev}: MSIs are not translated by the IOMMU")
    if cmd.iova >= ULONG_MAX:
        raise fail(EOVERFLOW, "map range")
    at = ioas._place(0, PAGE_SIZE, cmd.iova, True)
    ioas._insert(Area(at, PAGE_SIZE, MmioPages(ctx.kernel, pa & ~(PAGE_SIZE - 1)), 0,
                      MSI_MAP_PROT))


IommufdCtx.register_op(uapi.IOMMU_OPTION, "val64", ioctl_option)
IommufdCtx.register_op(uapi.IOMMU_IOAS_MAP_MSI, "iova", ioctl_ioas_map_msi)


__all__ = ["MSI_DESIGNS", "DESIGNS", "DmaCookieMsi", "SwMsi", "PresetMsi", "PerVectorMsi",
           "SwMsiMap", "new_hooks", "ioctl_option", "ioctl_ioas_map_msi", "msi_doorbell"]
