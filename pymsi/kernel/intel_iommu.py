"""A minimal Intel VT-d DMA-remapping driver (drivers/iommu/intel/iommu.c) for X86Pc.

It gives every PCI function its own IOMMU group (as VT-d does for devices
behind no bridge), defaults to the identity domain (so the kernel's own DMA
and every existing x86 behaviour stay as they were), and allocates paging
domains for userspace (iommufd).  The reserved region of each device is the
interrupt address range [0xFEE00000, 0xFEEFFFFF] as IOMMU_RESV_MSI: writes
there are interrupt requests, never translated.  ``hw_info`` reports the
remapping unit's CAP and ECAP registers as read from it
(IOMMU_HW_INFO_TYPE_INTEL_VTD).

Deliberate difference from hardware: the X86Pc machine's remapping unit does
not translate DMA, so a paging domain's page table lives in software only (a
dictionary of pages): ``iova_to_phys`` answers from it, but a device's DMA on
the bus is not translated by it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, cast

from ..core import Prot
from ..hw import x86 as HW
from ..uapi import iommufd as uapi
from .base import EEXIST, EINVAL, ENODEV, EOPNOTSUPP, fail
from .iommu import (
    DomainType,
    Geometry,
    IommuDevice,
    IommuDomain,
    IommuOps,
    ResvRegion,
    ResvType,
)

if TYPE_CHECKING:
    from .kernel import Kernel

PAGE_SIZE = 4096
IOAPIC_RANGE_START, IOAPIC_RANGE_END = 0xFEE0_0000, 0xFEEF_FFFF
VTD_ADDR_WIDTH = 48                 # 4-level second-stage tables (SAGAW bit 2)


class VtdDomain(IommuDomain):
    """struct dmar_domain (paging): a software page table of 4 KiB pages."""

    def __init__(self, iommu: IntelIommu) -> None:
        super().__init__(DomainType.UNMANAGED, iommu, PAGE_SIZE,
                         Geometry(0, (1 << VTD_ADDR_WIDTH) - 1, True))
        self.pages: dict[int, tuple[int, Prot]] = {}      # IOVA page -> (PA page, prot)
        self.devices: set[IommuDevice] = set()

    def map_pages(self, iova: int, paddr: int, size: int, prot: Prot) -> None:
        """All pages of the range or (EEXIST on one already mapped) none."""
        pages = range(iova, iova + size, PAGE_SIZE)
        if any(p in self.pages for p in pages):
            raise fail(EEXIST, f"IOVA {iova:#x} already mapped")
        for i, p in enumerate(pages):
            self.pages[p] = (paddr + i * PAGE_SIZE, prot)

    def unmap_pages(self, iova: int, size: int) -> int:
        done = 0
        for p in range(iova & -PAGE_SIZE, iova + size, PAGE_SIZE):
            if self.pages.pop(p, None) is not None:
                done += PAGE_SIZE
        return done

    def iova_to_phys(self, iova: int) -> int | None:
        e = self.pages.get(iova & -PAGE_SIZE)
        return None if e is None else e[0] + (iova & (PAGE_SIZE - 1))


class IntelIommu(IommuOps):
    """The VT-d unit of X86Pc at MMIO ``base`` (DMAR), for every PCI function."""

    def __init__(self, kernel: Kernel, base: int) -> None:
        self.kernel = kernel
        self.base = base
        self.domains: dict[IommuDevice, IommuDomain] = {}       # device -> attached domain
        self._identity = IommuDomain(DomainType.IDENTITY, self)
        self._blocked = IommuDomain(DomainType.BLOCKED, self)
        self.probed: set[IommuDevice] = set()

    def register(self) -> None:
        """iommu_device_register(): every PCI function is behind this unit."""
        self.kernel.iommu.device_register(self, claims=lambda dev: hasattr(dev, "rid"))

    @property
    def cap(self) -> int:
        return cast(int, self.kernel.bus.read(self.base + HW.CAP, 8))

    @property
    def ecap(self) -> int:
        return cast(int, self.kernel.bus.read(self.base + HW.ECAP, 8))

    # -- IommuOps ------------------------------------------------------------------------

    def probe_device(self, dev: IommuDevice) -> IommuDevice:
        self.probed.add(dev)
        return dev

    def release_device(self, dev: IommuDevice) -> None:
        self.probed.discard(dev)
        self.domains.pop(dev, None)

    def device_group(self, dev: IommuDevice) -> Hashable:
        return dev

    def def_domain_type(self, dev: IommuDevice) -> DomainType | None:
        return DomainType.IDENTITY

    def identity_domain(self) -> IommuDomain:
        return self._identity

    def blocked_domain(self) -> IommuDomain:
        return self._blocked

    def domain_alloc_paging(self, dev: IommuDevice, flags: int = 0) -> IommuDomain:
        """intel_iommu_domain_alloc_paging_flags(): no nesting, dirty tracking or PASID
        in this model (EOPNOTSUPP)."""
        if flags:
            raise fail(EOPNOTSUPP, f"domain flags {flags:#x}")
        return VtdDomain(self)

    def attach_dev(self, domain: IommuDomain, dev: IommuDevice) -> None:
        if dev not in self.probed:
            raise fail(ENODEV, f"{dev} not probed")
        if domain is not self._identity and domain is not self._blocked and \
                not (isinstance(domain, VtdDomain) and domain.iommu is self):
            raise fail(EINVAL, f"cannot attach {domain!r}")
        old = self.domains.get(dev)
        if isinstance(old, VtdDomain):
            old.devices.discard(dev)
        self.domains[dev] = domain
        if isinstance(domain, VtdDomain):
            domain.devices.add(dev)

    def get_resv_regions(self, dev: IommuDevice) -> list[ResvRegion]:
        """intel_iommu_get_resv_regions(): the interrupt range, IOMMU_RESV_MSI."""
        return [ResvRegion(IOAPIC_RANGE_START, IOAPIC_RANGE_END - IOAPIC_RANGE_START + 1,
                           Prot(0), ResvType.MSI)]

    def hw_info(self, dev: IommuDevice, want: int) -> tuple[bytes, int]:
        """intel_iommu_hw_info(): struct iommu_hw_info_vtd with CAP and ECAP."""
        if want not in (uapi.IOMMU_HW_INFO_TYPE_DEFAULT, uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD):
            raise fail(EOPNOTSUPP, f"hw_info type {want}")
        # Linux sets the SPR17 erratum flag on every VT-d unit (user space decides).
        info = uapi.IommuHwInfoVtd(flags=uapi.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17,
                                   cap_reg=self.cap, ecap_reg=self.ecap)
        return info.pack(), uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD


__all__ = ["IntelIommu", "VtdDomain", "IOAPIC_RANGE_START", "IOAPIC_RANGE_END"]
