"""dma-iommu (drivers/iommu/dma-iommu.c) and its IOVA allocator (drivers/iommu/iova.c).

A kernel DMA domain gets an IOVA cookie: the DMA API allocates IOVAs from it
top-down below the device's DMA mask (trying below 4 GiB first for PCI
devices, as Linux does) and maps them.  An unmanaged domain (VFIO type1) may
get an MSI cookie instead: IOVAs for MSI pages then come linearly from the
SW_MSI window.  Either way, the first MSI aimed at a doorbell page maps that
page write-only MMIO (IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO) on demand and
later MSIs to the same doorbell reuse it — the dynamic allocation on the MSI
path that the per-vector design removes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from .base import EEXIST, EINVAL, ENOMEM, ENOSPC, fail
from .iommu import (
    IOMMU_CACHE,
    IOMMU_MMIO,
    IOMMU_NOEXEC,
    IOMMU_READ,
    IOMMU_WRITE,
    DomainType,
    IommuCookieType,
    IommuDevice,
    IommuDomain,
    ResvType,
)

if TYPE_CHECKING:
    from .kernel import Kernel
    from .msi import MsiDesc

DMA_BIT_MASK_32 = (1 << 32) - 1


class DmaDirection(enum.Enum):
    """enum dma_data_direction."""

    BIDIRECTIONAL = 0
    TO_DEVICE = 1
    FROM_DEVICE = 2


class IovaDomain:
    """struct iova_domain: an IOVA allocator in units of ``granule`` (top-down, size-aligned)."""

    def __init__(self, granule: int, start_pfn: int = 1) -> None:
        self.granule = granule
        self.shift = granule.bit_length() - 1
        self.start_pfn = start_pfn
        self._used: list[tuple[int, int]] = []       # sorted (pfn_lo, pfn_hi) inclusive

    def alloc(self, npages: int, limit_pfn: int) -> int:
        """alloc_iova(size_aligned=True): the highest free, size-aligned range below the limit."""
        align = 1 << (npages - 1).bit_length()
        hi = limit_pfn
        for lo_used, hi_used in sorted(self._used, key=lambda r: -r[1]):
            if lo_used > hi:
                continue
            pfn = (hi - npages + 1) & ~(align - 1)
            if pfn > hi_used:
                return self._take(pfn, npages)
            hi = min(hi, lo_used - 1)
        pfn = (hi - npages + 1) & ~(align - 1)
        if pfn >= self.start_pfn and pfn + npages - 1 <= hi:
            return self._take(pfn, npages)
        raise fail(ENOMEM, "IOVA space exhausted")

    def _take(self, pfn: int, npages: int) -> int:
        if pfn < self.start_pfn:
            raise fail(ENOMEM, "IOVA space exhausted")
        self._used.append((pfn, pfn + npages - 1))
        self._used.sort()
        return pfn

    def reserve(self, pfn_lo: int, pfn_hi: int) -> None:
        """reserve_iova(): never hand out [pfn_lo, pfn_hi]."""
        self._used.append((pfn_lo, pfn_hi))
        self._used.sort()

    def free(self, pfn: int) -> None:
        """free_iova(): the range that starts at ``pfn``."""
        for r in self._used:
            if r[0] == pfn:
                self._used.remove(r)
                return
        raise fail(EINVAL, f"IOVA pfn {pfn:#x} was not allocated")

    @property
    def allocated(self) -> list[tuple[int, int]]:
        return list(self._used)


class CookieType(enum.Enum):
    IOVA = "iova"        # IOMMU_DMA_IOVA_COOKIE: a kernel DMA domain
    MSI = "msi"          # IOMMU_DMA_MSI_COOKIE: an unmanaged domain's MSI window


@dataclass(eq=False)
class MsiPage:
    """struct iommu_dma_msi_page: a doorbell page and the IOVA it is mapped at.

    ``users`` counts the vectors composed with it: unlike Linux (which keeps
    MSI pages until the domain dies), the last user going away unmaps it, so
    that freeing a device's vectors leaves nothing mapped.
    """

    phys: int
    iova: int
    users: int = 0


@dataclass
class Cookie:
    """struct iommu_dma_cookie."""

    type: CookieType
    granule: int
    iovad: IovaDomain | None = None
    msi_iova: int = 0
    msi_pages: dict[int, MsiPage] = field(default_factory=dict)
    reserved_iovas: list[tuple[int, int]] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"Cookie({self.type.name}, granule={self.granule:#x}, "
                f"msi_iova={self.msi_iova:#x}, msi_pages={len(self.msi_pages)}, "
                f"reserved={len(self.reserved_iovas)})")


def _iovad(cookie: Cookie) -> IovaDomain:
    """The IOVA allocator of a DMA_IOVA cookie (which always has one)."""
    return cast(IovaDomain, cookie.iovad)


def _free_iova(cookie: Cookie, iova: int) -> None:
    """free_iova() of the pages at ``iova`` in the cookie's allocator."""
    iovad = _iovad(cookie)
    iovad.free(iova >> iovad.shift)


class DmaIommu:
    """The dma-iommu layer of one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.stats = {"msi_pages_mapped": 0, "msi_page_reuses": 0}

    def _granule(self, domain: IommuDomain) -> int:
        return domain.pgsize_bitmap & -domain.pgsize_bitmap

    # -- cookies -----------------------------------------------------------------------

    def init_domain(self, domain: IommuDomain, dev: IommuDevice) -> None:
        """iommu_get_dma_cookie() + iommu_dma_init_domain() for a kernel DMA domain."""
        granule = self._granule(domain)
        iovad = IovaDomain(granule)
        cookie = Cookie(CookieType.IOVA, granule, iovad)
        shift = iovad.shift
        for r in self.kernel.iommu.get_resv_regions(dev):
            if r.type == ResvType.SW_MSI:        # MSI pages come from the allocator here
                continue
            iovad.reserve(r.start >> shift, r.end >> shift)
        for lo, hi in self.kernel.pci_windows():  # peer-to-peer windows of the host bridge
            iovad.reserve(lo >> shift, hi >> shift)
        domain.cookie = cookie
        domain.owner = "dma-iommu"
        domain.cookie_type = IommuCookieType.DMA_IOVA

    def get_msi_cookie(self, domain: IommuDomain, base: int) -> None:
        """iommu_get_msi_cookie(): MSI pages of an unmanaged domain go linearly from ``base``."""
        if domain.type != DomainType.UNMANAGED:
            raise fail(EINVAL, "MSI cookies are for unmanaged domains")
        if domain.cookie is not None or domain.cookie_type != IommuCookieType.NONE:
            raise fail(EEXIST, "domain already has a cookie")
        domain.cookie = Cookie(CookieType.MSI, self._granule(domain), msi_iova=base)
        domain.owner = "dma-iommu"
        domain.cookie_type = IommuCookieType.DMA_MSI

    def put_cookie(self, domain: IommuDomain) -> None:
        """iommu_put_dma_cookie(): MSI pages stay mapped in the domain until it is freed."""
        domain.cookie = None
        domain.cookie_type = IommuCookieType.NONE
        domain.owner = None

    # -- MSIs ------------------------------------------------------------------------------

    def sw_msi(self, domain: IommuDomain, desc: MsiDesc, msi_addr: int) -> None:
        """iommu_dma_sw_msi(): map the doorbell page on demand; reuse it after."""
        cookie = cast(Cookie, domain.cookie)
        granule = cookie.granule
        page = msi_addr & ~(granule - 1)
        msi = cookie.msi_pages.get(page)
        if msi is None:
            if cookie.type == CookieType.MSI:
                iova = cookie.msi_iova
                cookie.msi_iova += granule
            else:
                iova = self._alloc_iova(domain, cookie, granule, desc.dev)
            try:
                self.kernel.iommu.map(domain, iova, page, granule,
                                      IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO)
            except Exception:
                if cookie.type == CookieType.IOVA:
                    _free_iova(cookie, iova)
                else:
                    cookie.msi_iova -= granule
                raise
            msi = cookie.msi_pages[page] = MsiPage(page, iova)
            self.stats["msi_pages_mapped"] += 1
        else:
            self.stats["msi_page_reuses"] += 1
        if desc.iommu_release is not None:        # re-prepared: drop the old reference
            desc.iommu_release(desc)
        msi.users += 1
        desc.set_iommu_msi_iova(msi.iova, granule.bit_length() - 1)
        desc.iommu_release = lambda d, dom=domain, m=msi: self._release_msi(dom, m)

    def _release_msi(self, domain: IommuDomain, msi: MsiPage) -> None:
        """The last vector using an MSI page is gone: unmap it, give the IOVA back."""
        msi.users -= 1
        cookie: Cookie | None = domain.cookie
        if msi.users or cookie is None or cookie.msi_pages.get(msi.phys) is not msi:
            return
        del cookie.msi_pages[msi.phys]
        self.kernel.iommu.unmap(domain, msi.iova, cookie.granule)
        if cookie.type == CookieType.IOVA:
            _free_iova(cookie, msi.iova)

    # -- the DMA API ------------------------------------------------------------------------

    def _alloc_iova(self, domain: IommuDomain, cookie: Cookie, size: int, dev: IommuDevice) -> int:
        """iommu_dma_alloc_iova(): below the DMA mask, below 4 GiB first for PCI."""
        iovad = _iovad(cookie)
        npages = (size + cookie.granule - 1) >> iovad.shift
        limit = min(dev.dma_mask, domain.geometry.aperture_end)
        if limit > DMA_BIT_MASK_32 and getattr(dev, "is_pci", False):
            try:
                return iovad.alloc(npages, DMA_BIT_MASK_32 >> iovad.shift) << iovad.shift
            except OSError:
                pass
        try:
            return iovad.alloc(npages, limit >> iovad.shift) << iovad.shift
        except OSError:
            raise fail(ENOSPC, "no IOVA space left under the DMA mask") from None

    def map_page(self, dev: IommuDevice, phys: int, size: int, direction: DmaDirection,
                 coherent: bool = True) -> int:
        """dma_map_page(): the IOVA the device must use for [phys, phys + size)."""
        domain = self.kernel.iommu.get_domain_for_dev(dev)
        if domain is None or domain.type == DomainType.IDENTITY:
            return phys                              # no translation: dma-direct
        if domain.type != DomainType.DMA:
            raise fail(EINVAL, "the DMA API needs a DMA domain")
        cookie = cast(Cookie, domain.cookie)
        off = phys & (cookie.granule - 1)
        length = (off + size + cookie.granule - 1) & ~(cookie.granule - 1)
        iova = self._alloc_iova(domain, cookie, length, dev)
        prot = {DmaDirection.TO_DEVICE: IOMMU_READ, DmaDirection.FROM_DEVICE: IOMMU_WRITE,
                DmaDirection.BIDIRECTIONAL: IOMMU_READ | IOMMU_WRITE}[direction]
        if coherent:
            prot |= IOMMU_CACHE
        try:
            self.kernel.iommu.map(domain, iova, phys - off, length, prot)
        except Exception:
            _free_iova(cookie, iova)
            raise
        return iova + off

    def unmap_page(self, dev: IommuDevice, dma_addr: int, size: int) -> None:
        """dma_unmap_page(): strict mode, so the IOTLB is invalidated before the IOVA is reused."""
        domain = self.kernel.iommu.get_domain_for_dev(dev)
        if domain is None or domain.type == DomainType.IDENTITY:
            return
        cookie = cast(Cookie, domain.cookie)
        off = dma_addr & (cookie.granule - 1)
        length = (off + size + cookie.granule - 1) & ~(cookie.granule - 1)
        iova = dma_addr - off
        if self.kernel.iommu.unmap(domain, iova, length) != length:
            raise fail(EINVAL, f"dma_unmap_page({dma_addr:#x}) of something not mapped")
        _free_iova(cookie, iova)
