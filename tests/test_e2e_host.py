"""End to end on the host, written as a VMM: every design, a paging HWPT and a nested one.

The VMM (``pymsi.vmmlib``) builds the IOAS with its RAM, allocates the HWPT itself
(``IOMMU_HWPT_ALLOC``: a paging HWPT, or a nest parent + vIOMMU + vDEVICE + nested
HWPT from its guest's STE), binds and attaches two devices, hands down the MSI
addresses the design takes (per-vector: ``VFIO_DEVICE_MSI_IOVA`` and the doorbell
page with ``IOMMU_IOAS_MAP_MSI``; preset: ``VFIO_IRQ_SET_ACTION_PREPARE``; sw-msi and
dma-cookie: nothing), enables MSI-X with eventfds, fires every vector of both
devices, and finally closes everything.

``tests/test_msi_designs.py`` covers one device on the IOAS's automatic HWPT and
single-vector nested cases; this file adds the explicit HWPTs, the vIOMMU path,
two devices with their own addresses, the host LPI each fire raises, DMA through the
same HWPT, and the tear-down.  Expected values come from the architecture and the
designs' definitions:

* the doorbell is GITS_TRANSLATER = 0x08090040 (ITS at 0x08080000 + 0x10040), and a
  message keeps its low 12 bits 0x040 (msi_msg_set_addr with PAGE_SHIFT);
* per-vector / preset: the address userspace gave (a gIOVA under nesting, which the
  guest's stage 1 takes to the vITS doorbell page, where the VMM mapped the ITS);
* sw-msi: the first page of the SW_MSI window 0x8000000 (one ITS: pgoff 0), which
  the guest identity-maps (QEMU's IORT RMR);
* dma-cookie: the window's first page on a paging HWPT, the doorbell PA on a nested
  one (no cookie), which the guest's stage 1 does not map: a fault, recorded.
"""

from __future__ import annotations

import pytest

from pymsi import vmmlib
from pymsi.hw.pci import Delivery
from pymsi.kernel.iommufd_msi import MSI_DESIGNS
from pymsi.uapi import iommufd as u
from pymsi.vmmlib import (
    DOORBELL,
    PAGE,
    RAM_GPA,
    RMR,
    SET,
    SW_MSI_BASE,
    VITS_PAGE,
    GuestMem,
    Vmm,
    build_guest_stage1,
    guest_ste,
)

NVEC = 4
NDEV = 2
LOW = DOORBELL & (PAGE - 1)
PAGING_IOVA = 0x2000_0000                    # the VMM's MSI IOVAs (paging HWPT)
GIOVA = 0x5000_0000                          # the guest's MSI IOVAs (nested)
VSID = 0x10                                  # virtual StreamIDs VSID, VSID + 1


def chosen(nested: bool, dev: int, v: int) -> int:
    """The page userspace chooses for vector ``v`` of device ``dev``."""
    return (GIOVA if nested else PAGING_IOVA) + (dev * 8 + v) * PAGE


def expected(design: str, nested: bool, dev: int, v: int) -> int:
    if design in ("per-vector", "preset"):
        return chosen(nested, dev, v) | LOW
    if design == "dma-cookie" and nested:
        return DOORBELL
    return SW_MSI_BASE | LOW


def reaches(design: str, nested: bool) -> bool:
    return not (design == "dma-cookie" and nested)


class Host:
    """The VMM's whole setup for one design and one kind of HWPT."""

    def __init__(self, design: str, nested: bool) -> None:
        self.design, self.nested = design, nested
        self.vmm = vmm = Vmm(design, smmu="nested", n=NDEV, ram_size=0x10_0000)
        for i in range(NDEV):
            vmm.bind(i)
        if nested:
            # per-vector: each gIOVA to the vITS doorbell page, where the VMM maps the
            # ITS; preset installs the doorbell at the very IOVA it was given in the
            # nest parent (stage 2), so its guest must identity-map its gIOVAs (and
            # cannot use the vITS page: it lies in the reserved SW_MSI window).
            maps = {chosen(True, d, v): VITS_PAGE if design == "per-vector"
                    else chosen(True, d, v) for d in range(NDEV) for v in range(NVEC)}
            maps[RMR[0]] = RMR[0]
            maps[RAM_GPA] = RAM_GPA
            vmm.parent = vmm.hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
            vmm.guest_s1 = build_guest_stage1(GuestMem(vmm), maps)
            va = u.IommuViommuAlloc(dev_id=vmm.devids[0], hwpt_id=vmm.parent,
                                    type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
            vmm.ictx.ioctl(u.IOMMU_VIOMMU_ALLOC, va)
            vmm.viommu = va.out_viommu_id
            self.hwpts = []
            for i in range(NDEV):
                vmm.ictx.ioctl(u.IOMMU_VDEVICE_ALLOC, u.IommuVdeviceAlloc(
                    viommu_id=vmm.viommu, dev_id=vmm.devids[i], virt_id=VSID + i))
                self.hwpts.append(vmm.hwpt_alloc(vmm.viommu, 0,
                                                 guest_ste(RAM_GPA + vmmlib.G_CD), i=i))
        else:
            paging = vmm.hwpt_alloc(vmm.ioas)
            self.hwpts = [paging] * NDEV
        for i in range(NDEV):
            assert vmm.attach(self.hwpts[i], i) == self.hwpts[i]
        self.efds: list[list] = []

    def describe(self) -> None:
        """Hand down the addresses the design takes."""
        vmm = self.vmm
        if self.design == "per-vector":
            for i in range(NDEV):
                vmm.msi_iova(SET, 0, [chosen(self.nested, i, v) for v in range(NVEC)], i=i)
            if self.nested:
                vmm.map_msi(VITS_PAGE)               # the ITS page at the vITS doorbell IPA
            else:
                for i in range(NDEV):
                    for v in range(NVEC):
                        vmm.map_msi(chosen(False, i, v), i=i)
        elif self.design == "preset":
            for i in range(NDEV):
                vmm.prepare(0, [chosen(self.nested, i, v) for v in range(NVEC)], i=i)

    def enable(self) -> None:
        vmm = self.vmm
        for i in range(NDEV):
            efds = [vmm.k.eventfd() for _ in range(NVEC)]
            assert vmm.set_triggers(0, [e.fd for e in efds], i=i) == 0
            self.efds.append(efds)

    def counts(self) -> list[list[int]]:
        return [[e.f_op.count for e in efds] for efds in self.efds]


CASES = [(d, n) for d in MSI_DESIGNS for n in (False, True)]


@pytest.mark.parametrize("design,nested", CASES,
                         ids=[f"{d}-{'nested' if n else 'paging'}" for d, n in CASES])
def test_vmm_end_to_end(design, nested):
    h = Host(design, nested)
    vmm = h.vmm
    h.describe()
    h.enable()
    fns, devs = vmm.m.functions, vmm.k.pci.devices
    # The MSI-X tables hold the design's addresses; the SMMU takes each to the doorbell.
    for i in range(NDEV):
        for v in range(NVEC):
            addr, data, ctrl = fns[i].msix_entry(v)
            assert addr == expected(design, nested, i, v), (i, v, hex(addr))
            assert not ctrl & 1
            pa = vmm.smmu_pa(addr, i)
            assert pa == (DOORBELL if reaches(design, nested) else None)
    # Firing each vector of each device: exactly its eventfd, once, through the LPI
    # the host gave that vector (or an SMMU fault and nothing).
    want = [[0] * NVEC for _ in range(NDEV)]
    for i in range(NDEV):
        for v in range(NVEC):
            irq = vmm.irq(v, i)
            lpi_before = vmm.k.irq.desc(irq).count
            others = {(j, w): vmm.k.irq.desc(vmm.irq(w, j)).count
                      for j in range(NDEV) for w in range(NVEC) if (j, w) != (i, v)}
            faults = vmm.smmu_events()
            d = fns[i].notify(v)
            vmm.m.bus.drain()
            vmm.k.handle_interrupts()
            if reaches(design, nested):
                assert d == Delivery.SENT
                want[i][v] += 1
                assert vmm.k.irq.desc(irq).count == lpi_before + 1
                assert vmm.smmu_events() == faults
            else:
                assert vmm.smmu_events() == faults + 1
                vmm.k.smmu.evtq_drain()
                ev = vmm.k.smmu.events[-1]
                assert ev.sid == devs[i].rid and ev.iova == expected(design, nested, i, v)
            assert h.counts() == want
            assert others == {(j, w): vmm.k.irq.desc(vmm.irq(w, j)).count
                              for j in range(NDEV) for w in range(NVEC) if (j, w) != (i, v)}
    # DMA through the same HWPT reaches the VMM's RAM (the guest identity-maps it).
    r = vmm.m.bus.dma_write(devs[1].rid, RAM_GPA + 0x200, 0xA5, 4)
    assert r.ok and vmm.k.user_read(vmm.va + 0x200, 1) == b"\xa5"
    # Tear-down: closing every file leaves nothing pinned and MSI-X off.
    for f in list(vmm.k.files.fds.values()):
        if f is not None:
            f.close()
    assert vmm.k.user_mm.pinned == {}
    assert not any(p.msix_enabled for p in devs)


@pytest.mark.parametrize("nested", [False, True], ids=["paging", "nested"])
def test_per_vector_device_tables_are_per_device(nested):
    """The same vector number of the two devices has each device's own address, and
    clearing one device's entries leaves the other's (the table is keyed by the
    iommufd device)."""
    h = Host("per-vector", nested)
    h.describe()
    vmm = h.vmm
    assert vmm.get_iovas(i=0) == [chosen(nested, 0, v) for v in range(NVEC)]
    assert vmm.get_iovas(i=1) == [chosen(nested, 1, v) for v in range(NVEC)]
    vmm.msi_iova(vmmlib.CLEAR, 0, count=NVEC, i=0)
    assert vmm.get_iovas(i=0) == [0] * NVEC
    assert vmm.get_iovas(i=1) == [chosen(nested, 1, v) for v in range(NVEC)]


@pytest.mark.parametrize("nested", [False, True], ids=["paging", "nested"])
def test_preset_installs_its_own_mapping_in_the_paging_domain(nested):
    """Preset maps the doorbell at each IOVA it was given when the vector is
    allocated, in the paging domain (the nest parent under nesting, where the guest
    had to identity-map its gIOVAs for the write to get there): page-table changes
    on the compose path, which the per-vector design never makes."""
    h = Host("preset", nested)
    h.describe()
    s2 = h.vmm.s2_domain()
    assert s2.iova_to_phys(chosen(nested, 0, 0) + LOW) is None
    h.enable()
    for i in range(NDEV):
        for v in range(NVEC):
            assert s2.iova_to_phys(chosen(nested, i, v) + LOW) == DOORBELL
