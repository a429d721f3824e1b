"""The IOMMU core (drivers/iommu/iommu.c): groups, domains, attach, map, MSIs.

An IOMMU driver registers an :class:`IommuOps` with :func:`iommu_device_register`;
devices it translates are probed into groups, each group starts attached to a
default domain (DMA or identity), and may be attached to other domains
(blocked, identity, unmanaged paging, nested with a paging parent) or have its
domain replaced.  Reserved regions (the driver's SW_MSI window, ...) are
reported per device.  Before an MSI is composed, :func:`iommu_dma_prepare_msi`
asks whoever owns the device's domain where the doorbell is mapped, by the
domain's ``cookie_type`` (as Linux since the sw_msi series): identity domains
and domains without a cookie pass the physical address through; a domain with
a dma-iommu cookie maps an MSI page on demand; a domain owned by iommufd asks
its context's MSI design (:mod:`pymsi.kernel.iommufd_msi`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from ..core import Prot
from ..hw.virt_map import SW_MSI_BASE, SW_MSI_SIZE
from .base import EBUSY, EINVAL, ENODEV, EOPNOTSUPP, EPERM, fail

if TYPE_CHECKING:
    from .dma_iommu import Cookie
    from .iommufd import HwptNested, HwptPaging
    from .iommufd_msi import MsiDesignBase
    from .kernel import Kernel
    from .msi import MsiDesc

IOMMU_READ, IOMMU_WRITE, IOMMU_CACHE = Prot.READ, Prot.WRITE, Prot.CACHE
IOMMU_NOEXEC, IOMMU_MMIO, IOMMU_PRIV = Prot.NOEXEC, Prot.MMIO, Prot.PRIV

# arm-smmu-v3's SW_MSI window (the board's, defined once in hw.virt_map)
MSI_IOVA_BASE, MSI_IOVA_LENGTH = SW_MSI_BASE, SW_MSI_SIZE


class IommuDevice(Protocol):
    """struct device as the IOMMU core and its drivers use it: a PCI function
    (:class:`pymsi.kernel.pci.PciDev`, or any object with these members).

    ``rid`` is the requester ID (the SMMU's StreamID, VT-d's source-id),
    ``dma_mask`` the widest DMA address the device drives (dma-iommu's IOVA
    limit) and ``iommu_group`` the group :meth:`IommuCore.probe_device` put it in
    (None outside one); the core is the only writer of ``iommu_group``.  The
    device is also the key of the core's and drivers' per-device tables, so it
    hashes by identity (or by something as stable).
    """

    @property
    def rid(self) -> int: ...

    @property
    def dma_mask(self) -> int: ...

    @property
    def iommu_group(self) -> IommuGroup | None: ...

    def __hash__(self) -> int: ...


class _GroupedDevice(Protocol):
    """What :class:`IommuCore` writes: dev->iommu_group."""

    iommu_group: IommuGroup | None


def _set_iommu_group(dev: IommuDevice, group: IommuGroup | None) -> None:
    cast("_GroupedDevice", dev).iommu_group = group


class DomainType(enum.Enum):
    """IOMMU_DOMAIN_* (the kinds of domain a group can be attached to)."""

    BLOCKED = "blocked"
    IDENTITY = "identity"
    UNMANAGED = "unmanaged"      # paging, owned by its user (VFIO, iommufd)
    DMA = "dma"                  # paging, owned by dma-iommu for the kernel's DMA API
    NESTED = "nested"            # stage 1 owned by a guest, on a paging parent


class IommuCookieType(enum.Enum):
    """enum iommu_domain_cookie_type: who owns the domain's MSI mappings."""

    NONE = "none"                # nobody: the doorbell PA goes out unchanged
    DMA_IOVA = "dma-iova"        # dma-iommu, a kernel DMA domain's IOVA cookie
    DMA_MSI = "dma-msi"          # dma-iommu, an unmanaged domain's MSI cookie (VFIO type1)
    IOMMUFD = "iommufd"          # iommufd: domain.iommufd_hwpt.ctx.msi decides


class ResvType(enum.Enum):
    """IOMMU_RESV_*."""

    DIRECT = "direct"
    DIRECT_RELAXABLE = "direct-relaxable"
    RESERVED = "reserved"
    MSI = "msi"                  # hardware MSI region (translation bypassed)
    SW_MSI = "sw-msi"            # software-managed MSI window (where MSI pages are mapped)


@dataclass(frozen=True)
class ResvRegion:
    """struct iommu_resv_region."""

    start: int
    length: int
    prot: Prot
    type: ResvType

    @property
    def end(self) -> int:
        return self.start + self.length - 1


@dataclass
class Geometry:
    """struct iommu_domain_geometry: the IOVA range the domain can translate."""

    aperture_start: int = 0
    aperture_end: int = (1 << 48) - 1
    force_aperture: bool = True


class IommuDomain:
    """struct iommu_domain: a translation context a group can be attached to.

    Drivers subclass it (or provide ``map_pages`` etc. on their own class).
    ``owner`` names who decides its MSI addresses ("dma-iommu", "iommufd" or
    None) and ``cookie_type`` (:class:`IommuCookieType`) is what
    :meth:`IommuCore.dma_prepare_msi` switches on; ``iommufd_hwpt`` is the
    iommufd HWPT owning the domain (IOMMUFD cookies).
    """

    def __init__(self, type: DomainType, iommu: IommuOps | None = None, pgsize_bitmap: int = 0,
                 geometry: Geometry | None = None) -> None:
        self.type = type
        self.iommu = iommu
        self.pgsize_bitmap = pgsize_bitmap
        self.geometry = geometry or Geometry()
        self.owner: str | None = None
        self.cookie: Cookie | None = None          # dma-iommu's (DMA_IOVA / DMA_MSI)
        self.cookie_type = IommuCookieType.NONE
        self.iommufd_hwpt: HwptPaging | HwptNested | None = None
        self.parent: IommuDomain | None = None
        self.groups: set[IommuGroup] = set()

    @property
    def is_paging(self) -> bool:
        return self.type in (DomainType.UNMANAGED, DomainType.DMA)

    # Drivers implement these for paging domains.
    def map_pages(self, iova: int, paddr: int, size: int, prot: Prot) -> None:
        raise fail(EOPNOTSUPP, f"{self.type.value} domain cannot map")

    def unmap_pages(self, iova: int, size: int) -> int:
        raise fail(EOPNOTSUPP, f"{self.type.value} domain cannot unmap")

    def iova_to_phys(self, iova: int) -> int | None:
        return iova if self.type == DomainType.IDENTITY else None

    def flush_iotlb_all(self) -> None:
        """iommu_flush_iotlb_all(): the driver drops every TLB entry of the domain."""

    def free(self) -> None:
        """iommu_domain_free(): the driver releases what it holds."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type.value} owner={self.owner}>"


class IommuOps:
    """struct iommu_ops: what an IOMMU driver provides to the core."""

    _claims: Callable[[IommuDevice], bool]          # set by IommuCore.device_register

    def probe_device(self, dev: IommuDevice) -> object:
        """Take the device on (return per-device driver state, opaque to the core: Linux's
        dev_iommu_priv), or raise ENODEV."""
        raise fail(ENODEV)

    def release_device(self, dev: IommuDevice) -> None:
        """Forget the device."""

    def device_group(self, dev: IommuDevice) -> Hashable:
        """A key naming the group the device belongs to (devices with equal keys share one)."""
        return dev

    def domain_alloc_paging(self, dev: IommuDevice, flags: int = 0) -> IommuDomain:
        """A paging domain; ``flags`` as iommu_paging_domain_alloc_flags() (e.g. the
        driver's nest-parent flag)."""
        raise fail(EOPNOTSUPP)

    def domain_alloc_nested(self, dev: IommuDevice, parent: IommuDomain,
                            data: object) -> IommuDomain:
        """A nested domain on ``parent`` from the guest's ``data`` (struct iommu_user_data:
        driver-specific, e.g. arm-smmu-v3's vSTE); the driver checks it (EINVAL)."""
        raise fail(EOPNOTSUPP)

    def identity_domain(self) -> IommuDomain:
        raise fail(EOPNOTSUPP)

    def blocked_domain(self) -> IommuDomain:
        raise fail(EOPNOTSUPP)

    def attach_dev(self, domain: IommuDomain, dev: IommuDevice) -> None:
        """Make ``dev`` translate through ``domain`` (hitless where possible)."""
        raise fail(EOPNOTSUPP)

    def get_resv_regions(self, dev: IommuDevice) -> list[ResvRegion]:
        return []

    def def_domain_type(self, dev: IommuDevice) -> DomainType | None:
        return None


class IommuGroup:
    """struct iommu_group: the devices that cannot be isolated from each other."""

    _ids = 0

    def __init__(self, ops: IommuOps, key: Hashable) -> None:
        IommuGroup._ids += 1
        self.id = IommuGroup._ids
        self.ops = ops
        self.key = key
        self.devices: list[IommuDevice] = []
        self.domain: IommuDomain | None = None
        self.default_domain: IommuDomain | None = None
        self.owner: object = None                 # DMA ownership claimed by (VFIO, iommufd)
        self.owner_cnt = 0
        self.kernel_users = 0                     # devices bound to kernel drivers (DMA API)

    def __repr__(self) -> str:
        return f"<iommu_group {self.id}: {self.devices}>"


class IommuCore:
    """The IOMMU subsystem of one kernel."""

    def __init__(self, kernel: Kernel, default_domain_type: DomainType = DomainType.DMA) -> None:
        self.kernel = kernel
        self.default_domain_type = default_domain_type
        self.iommus: list[IommuOps] = []
        self.groups: dict[Hashable, IommuGroup] = {}
        self._dev_group: dict[IommuDevice, IommuGroup] = {}
        self._dev_ops: dict[IommuDevice, IommuOps] = {}
        #: (base, size) of the firmware's IORT RMR nodes the kernel honours
        self.firmware_rmrs: list[tuple[int, int]] = []

    # -- registration and probing ------------------------------------------------

    def device_register(self, ops: IommuOps, claims: Callable[[IommuDevice], bool]) -> None:
        """iommu_device_register(): ``claims(dev)`` says which devices are behind it."""
        self.iommus.append(ops)
        ops._claims = claims

    def probe_device(self, dev: IommuDevice) -> IommuGroup | None:
        """iommu_probe_device(): put a device behind its IOMMU into a group."""
        if dev in self._dev_group:
            return self._dev_group[dev]
        ops = next((o for o in self.iommus if o._claims(dev)), None)
        if ops is None:
            return None
        ops.probe_device(dev)
        key = (id(ops), ops.device_group(dev))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = IommuGroup(ops, key)
        group.devices.append(dev)
        self._dev_group[dev] = group
        self._dev_ops[dev] = ops
        _set_iommu_group(dev, group)
        if group.default_domain is None:
            dtype = ops.def_domain_type(dev) or self.default_domain_type
            group.default_domain = self._alloc_default(ops, dev, dtype)
            self._attach_group(group.default_domain, group)
        else:
            ops.attach_dev(cast(IommuDomain, group.domain), dev)   # the group's, set up
        self._create_device_direct_mappings(group, dev)
        return group

    def _create_device_direct_mappings(self, group: IommuGroup, dev: IommuDevice) -> None:
        """iommu_create_device_direct_mappings(): in a DMA default domain, each direct
        region of the device (firmware RMRs) mapped 1:1, page by page where not mapped
        yet; then, as Linux 6.1 does, the domain's TLB is flushed once."""
        domain = group.default_domain
        if domain is None or domain.type != DomainType.DMA:
            return
        pg = domain.pgsize_bitmap & -domain.pgsize_bitmap
        for r in self.get_resv_regions(dev):
            if r.type not in (ResvType.DIRECT, ResvType.DIRECT_RELAXABLE):
                continue
            start = r.start & ~(pg - 1)
            end = (r.end + pg) & ~(pg - 1)
            for addr in range(start, end, pg):
                if domain.iova_to_phys(addr) is None:
                    self.map(domain, addr, addr, pg, r.prot)
        domain.flush_iotlb_all()

    def _alloc_default(self, ops: IommuOps, dev: IommuDevice, dtype: DomainType) -> IommuDomain:
        if dtype == DomainType.IDENTITY:
            return ops.identity_domain()
        domain = ops.domain_alloc_paging(dev)
        domain.type = DomainType.DMA
        self.kernel.dma_iommu.init_domain(domain, dev)
        return domain

    def release_device(self, dev: IommuDevice) -> None:
        """iommu_release_device(): the last device of a group takes the group with it."""
        group = self._dev_group.pop(dev, None)
        if group is None:
            return
        group.devices.remove(dev)
        self._dev_ops.pop(dev).release_device(dev)
        _set_iommu_group(dev, None)
        if not group.devices:
            if group.domain is not None:
                group.domain.groups.discard(group)
            default, group.domain = group.default_domain, None
            if default is not None and default.type == DomainType.DMA and not default.groups:
                self.domain_free(default)
            del self.groups[group.key]

    def group_for(self, dev: IommuDevice) -> IommuGroup | None:
        return self._dev_group.get(dev)

    def ops_for(self, dev: IommuDevice) -> IommuOps | None:
        return self._dev_ops.get(dev)

    # -- domains --------------------------------------------------------------------

    def domain_alloc_paging(self, dev: IommuDevice, flags: int = 0) -> IommuDomain:
        """iommu_paging_domain_alloc_flags(): an UNMANAGED paging domain for ``dev``'s IOMMU."""
        ops = self._ops(dev)
        domain = ops.domain_alloc_paging(dev, flags)
        domain.type = DomainType.UNMANAGED
        return domain

    def domain_alloc_nested(self, dev: IommuDevice, parent: IommuDomain,
                            data: object) -> IommuDomain:
        """A NESTED domain on ``parent`` (a paging domain), with the guest's ``data``
        (driver-specific, checked by the driver: :meth:`IommuOps.domain_alloc_nested`)."""
        if not parent.is_paging:
            raise fail(EINVAL, "a nested domain needs a paging parent")
        domain = self._ops(dev).domain_alloc_nested(dev, parent, data)
        domain.type = DomainType.NESTED
        domain.parent = parent
        return domain

    def identity_domain(self, dev: IommuDevice) -> IommuDomain:
        return self._ops(dev).identity_domain()

    def blocked_domain(self, dev: IommuDevice) -> IommuDomain:
        return self._ops(dev).blocked_domain()

    def domain_free(self, domain: IommuDomain) -> None:
        """iommu_domain_free(): only once no group uses it."""
        if domain.groups:
            raise fail(EBUSY, "domain still attached")
        if domain.type == DomainType.DMA or domain.cookie is not None:
            self.kernel.dma_iommu.put_cookie(domain)
        domain.free()

    def _ops(self, dev: IommuDevice) -> IommuOps:
        ops = self._dev_ops.get(dev)
        if ops is None:
            raise fail(ENODEV, f"{dev} is not behind an IOMMU")
        return ops

    def get_domain_for_dev(self, dev: IommuDevice) -> IommuDomain | None:
        """iommu_get_domain_for_dev()."""
        group = self._dev_group.get(dev)
        return group.domain if group else None

    # -- attach ----------------------------------------------------------------------

    def _attach_group(self, domain: IommuDomain, group: IommuGroup) -> None:
        """__iommu_group_set_domain(): every device, or none (rolled back on failure)."""
        old = group.domain
        done = []
        try:
            for dev in group.devices:
                group.ops.attach_dev(domain, dev)
                done.append(dev)
        except Exception:
            if old is not None:
                for dev in done:
                    group.ops.attach_dev(old, dev)
            raise
        if old is not None:
            old.groups.discard(group)
        group.domain = domain
        domain.groups.add(group)

    def attach_group(self, domain: IommuDomain, group: IommuGroup) -> None:
        """iommu_attach_group(): only from the default domain (else EBUSY)."""
        if group.domain is not group.default_domain:
            raise fail(EBUSY, "group is not in its default domain")
        self._attach_group(domain, group)

    def replace_group_domain(self, group: IommuGroup, domain: IommuDomain) -> None:
        """iommu_group_replace_domain(): switch domains without a stop in between."""
        if group.owner is None:
            raise fail(EINVAL, "replacing needs an owner (iommufd)")
        self._attach_group(domain, group)

    def detach_group(self, domain: IommuDomain, group: IommuGroup) -> None:
        """iommu_detach_group(): back to the default domain."""
        if group.domain is not domain:
            raise fail(EINVAL, "group is not attached to that domain")
        self._attach_group(cast(IommuDomain, group.default_domain), group)   # made at probe

    def attach_device(self, domain: IommuDomain, dev: IommuDevice) -> None:
        """iommu_attach_device(): a singleton group only."""
        group = self._dev_group.get(dev)
        if group is None:
            raise fail(ENODEV)
        if len(group.devices) != 1:
            raise fail(EINVAL, "iommu_attach_device() on a group of several devices")
        self.attach_group(domain, group)

    def claim_dma_owner(self, group: IommuGroup, owner: object) -> None:
        """iommu_group_claim_dma_owner(): user ownership (VFIO / iommufd); the group
        is moved to a blocking domain so nothing the kernel mapped stays reachable.
        ``owner`` is Linux's opaque ``void *owner`` cookie: only its identity counts
        (a second claim by the same owner nests, another owner is EBUSY)."""
        if group.owner is not None and group.owner is not owner:
            raise fail(EBUSY, "group has another DMA owner")
        if group.kernel_users:
            raise fail(EPERM, "a kernel driver uses the group's default domain")
        if group.owner is None:
            blocked = group.ops.blocked_domain()
            self._attach_group(blocked, group)
            group.owner = owner
        group.owner_cnt += 1

    def release_dma_owner(self, group: IommuGroup) -> None:
        if group.owner is None:
            raise fail(EINVAL, "group has no DMA owner")
        group.owner_cnt -= 1
        if group.owner_cnt == 0:
            group.owner = None
            self._attach_group(cast(IommuDomain, group.default_domain), group)  # made at probe

    # -- mappings ----------------------------------------------------------------------

    def map(self, domain: IommuDomain, iova: int, paddr: int, size: int, prot: Prot) -> None:
        """iommu_map(): all of it or, on failure, none of it."""
        if not domain.is_paging:
            raise fail(EINVAL, f"iommu_map() on a {domain.type.value} domain")
        min_page = domain.pgsize_bitmap & -domain.pgsize_bitmap
        if size <= 0 or (iova | paddr | size) & (min_page - 1):
            raise fail(EINVAL, f"iommu_map({iova:#x}, {paddr:#x}, {size:#x}) unaligned")
        g = domain.geometry
        if g.force_aperture and (iova < g.aperture_start or iova + size - 1 > g.aperture_end):
            raise fail(EINVAL, f"iommu_map({iova:#x}) outside the aperture")
        domain.map_pages(iova, paddr, size, Prot(prot))

    def unmap(self, domain: IommuDomain, iova: int, size: int) -> int:
        """iommu_unmap(): returns how much was unmapped."""
        if not domain.is_paging:
            raise fail(EINVAL, f"iommu_unmap() on a {domain.type.value} domain")
        return domain.unmap_pages(iova, size)

    def iova_to_phys(self, domain: IommuDomain, iova: int) -> int | None:
        return domain.iova_to_phys(iova)

    def get_resv_regions(self, dev: IommuDevice) -> list[ResvRegion]:
        """iommu_get_resv_regions(): the driver's regions, then the firmware's reserved
        memory ranges (iommu_dma_get_resv_regions -> iort_iommu_get_resv_regions: an
        IORT RMR is a direct region, read / write device memory)."""
        ops = self._dev_ops.get(dev)
        if ops is None:
            return []
        return ops.get_resv_regions(dev) + [
            ResvRegion(base, size, IOMMU_READ | IOMMU_WRITE | IOMMU_MMIO, ResvType.DIRECT)
            for base, size in self.firmware_rmrs]

    def group_resv_regions(self, group: IommuGroup) -> list[ResvRegion]:
        out: list[ResvRegion] = []
        for dev in group.devices:
            for r in self.get_resv_regions(dev):
                if r not in out:
                    out.append(r)
        return sorted(out, key=lambda r: r.start)

    # -- MSIs ----------------------------------------------------------------------------

    def dma_prepare_msi(self, desc: MsiDesc, msi_addr: int) -> None:
        """iommu_dma_prepare_msi(): where must ``desc``'s device write to reach ``msi_addr``?

        Switches on the cookie type of the device's current domain and records
        the answer in the descriptor (IOVA and shift; shift 0 = the PA itself):
        DMA_IOVA / DMA_MSI -> dma-iommu, IOMMUFD -> the iommufd context's MSI
        design, NONE (and identity domains, and no IOMMU) -> the PA unchanged.
        """
        dev = desc.dev
        group = self._dev_group.get(dev)
        domain = group.domain if group else None
        if domain is None or domain.type == DomainType.IDENTITY:
            desc.set_iommu_msi_iova(0, 0)
            return
        ct = domain.cookie_type
        if domain.type == DomainType.BLOCKED:
            # A device bound to an iommufd context but not attached: the per-vector
            # design still decides its address (ENOENT without a table entry).
            hooks: Any = getattr(getattr(group, "owner", None), "msi", None)
            if getattr(hooks, "name", None) == "per-vector":
                hooks.prepare(domain, desc, msi_addr)
                return
        if ct in (IommuCookieType.DMA_IOVA, IommuCookieType.DMA_MSI):
            self.kernel.dma_iommu.sw_msi(domain, desc, msi_addr)
        elif ct == IommuCookieType.IOMMUFD:
            # an IOMMUFD cookie: set by a design's hwpt_init (iommufd_msi.MsiDesignBase)
            hwpt = cast("HwptPaging | HwptNested", domain.iommufd_hwpt)
            cast("MsiDesignBase", hwpt.ctx.msi).prepare(domain, desc, msi_addr)
        else:
            desc.set_iommu_msi_iova(0, 0)


__all__ = [
    "DomainType", "Geometry", "IommuCookieType", "IommuCore", "IommuDevice", "IommuDomain",
    "IommuGroup", "IommuOps",
    "MSI_IOVA_BASE", "MSI_IOVA_LENGTH", "ResvRegion", "ResvType", "IOMMU_READ", "IOMMU_WRITE",
    "IOMMU_CACHE", "IOMMU_NOEXEC", "IOMMU_MMIO", "IOMMU_PRIV",
]
