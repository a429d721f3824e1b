"""The host kernel on the Arm machine with its SMMU: DMA domains, MSI pages, and a
state machine over allocate / free / affinity / fire / mask / attach."""

from __future__ import annotations

from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.iommu import MSI_IOVA_BASE, DomainType
from pymsi.machine import ArmVirt
from pymsi.testing import HostMachine

DOORBELL = 0x0809_0040


def machine(n_devices=1, vectors=4):
    m = ArmVirt(devices=[{"msix": vectors}] * n_devices, smmu="nested")
    return m, m.boot()


def test_boot_attaches_devices_to_dma_domains_and_msis_get_linux_61s_iova():
    m, k = machine()
    dev = k.pci.devices[0]
    group = dev.iommu_group
    assert group is not None and group.domain.type == DomainType.DMA
    assert group.domain.owner == "dma-iommu"
    drv = MsiCountingDriver(k, dev, 4)
    # The first MSI page of a kernel DMA domain: the top of the 32-bit IOVA space,
    # exactly what a real Linux 6.1 guest used (tests/data: 0xfffff040).
    assert {d.msg.address for d in dev.msi_descs.values()} == {0xFFFF_F040}
    for v in range(4):
        m.functions[0].notify(v)
    k.handle_interrupts()
    assert all(len(drv.fired[v]) == 1 for v in range(4))
    r = m.smmu.translate(dev.rid, 0xFFFF_F040, write=True)
    assert r.pa == DOORBELL
    # Stage 1 cannot express write-only: the page is RW, like the real 0x...e4b PTE.
    assert r.walk.writable and r.walk.level == 3
    assert k.dma_iommu.stats == {"msi_pages_mapped": 1, "msi_page_reuses": 3}


def test_dma_api_through_the_smmu():
    m, k = machine()
    dev = k.pci.devices[0]
    dev.set_master()
    buf = k.mm.alloc(0x3000, 0x1000)
    iova = k.dma_iommu.map_page(dev, buf + 0x10, 0x2000, DmaDirection.BIDIRECTIONAL)
    assert iova < 1 << 32 and iova & 0xFFF == 0x10
    m.bus.dma_write(dev.rid, iova + 8, 0xC0FFEE, 4)
    assert m.ram.read_u32(buf + 0x18) == 0xC0FFEE
    k.dma_iommu.unmap_page(dev, iova, 0x2000)
    assert not m.bus.dma_write(dev.rid, iova + 8, 1, 4).ok    # unmapped and invalidated


def test_identity_and_unmanaged_domains_change_the_msi_address():
    m, k = machine(n_devices=2)
    a, b = k.pci.devices
    ident = k.iommu.identity_domain(a)
    k.iommu.attach_group(ident, a.iommu_group)
    MsiCountingDriver(k, a, 2)
    assert {d.msg.address for d in a.msi_descs.values()} == {DOORBELL}
    unmanaged = k.iommu.domain_alloc_paging(b)
    k.dma_iommu.get_msi_cookie(unmanaged, MSI_IOVA_BASE)
    k.iommu.attach_group(unmanaged, b.iommu_group)
    drv = MsiCountingDriver(k, b, 2)
    assert {d.msg.address for d in b.msi_descs.values()} == {MSI_IOVA_BASE | 0x40}
    m.functions[1].notify(1)
    k.handle_interrupts()
    assert len(drv.fired[1]) == 1
    assert any(r.type.value == "sw-msi" and r.start == MSI_IOVA_BASE
               for r in k.iommu.get_resv_regions(b))


class ArmHost(HostMachine):
    """pymsi.testing's host machine on this file's machine: two functions of four
    vectors behind a nested SMMU (its invariants: every live message reaches the
    doorbell, each fire runs its handler once, affinity maps nothing, nothing stale
    after a free)."""

    def make_machine(self):
        return machine(self.NDEV, self.NVEC)


TestHostMachine = ArmHost.TestCase


def test_releasing_the_last_device_frees_its_group_and_default_domain():
    m, k = machine()
    dev = k.pci.devices[0]
    group = dev.iommu_group
    domain = group.default_domain
    freed = []
    domain.free = lambda: freed.append(domain)
    k.iommu.release_device(dev)
    assert dev.iommu_group is None and group.key not in k.iommu.groups
    assert freed == [domain] and domain.cookie is None
    assert m.smmu.translate(dev.rid, 0xFFFF_F040, write=True).aborted   # abort STE
