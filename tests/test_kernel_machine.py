"""The host kernel on the Arm machine with its SMMU: DMA domains, MSI pages, and a
state machine over allocate / free / affinity / fire / mask / attach."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.iommu import MSI_IOVA_BASE, DomainType
from pymsi.machine import ArmVirt

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


class HostMachine(RuleBasedStateMachine):
    """After every step: each live vector's message translates through the SMMU
    to the doorbell and each fire ran its own handler exactly once; freed
    vectors raise nothing; nothing a free released stays mapped or routed."""

    NDEV, NVEC = 2, 4

    def __init__(self):
        super().__init__()
        self.m, self.k = machine(self.NDEV, self.NVEC)
        self.drivers = [None] * self.NDEV
        self.expected = [[0] * self.NVEC for _ in range(self.NDEV)]
        self.disabled = [set() for _ in range(self.NDEV)]
        # MSI-X pending bits (PBA): a vector raised while masked (by disable_irq, or
        # because no driver vector owns its entry) is sent once it is unmasked.
        self.pending = [set() for _ in range(self.NDEV)]
        self.freed_msi: list[tuple[int, int]] = []          # (rid, iova) of freed MSI pages

    devs = st.integers(0, NDEV - 1)
    vecs = st.integers(0, NVEC - 1)

    @rule(i=devs, n=st.integers(1, NVEC))
    def allocate(self, i, n):
        if self.drivers[i] is not None:
            return
        self.drivers[i] = MsiCountingDriver(self.k, self.k.pci.devices[i], n)
        self.k.handle_interrupts()                   # what became deliverable, is taken
        nvec = self.drivers[i].nvec
        self.expected[i] = [1 if v in self.pending[i] else 0 for v in range(nvec)]
        self.pending[i] -= set(range(nvec))
        self.disabled[i] = set()

    @rule(i=devs)
    def free(self, i):
        drv = self.drivers[i]
        if drv is None:
            return
        dev = self.k.pci.devices[i]
        iovas = {d.msg.address & ~0xFFF for d in dev.msi_descs.values()}
        for v in self.disabled[i]:
            self.k.irq.enable_irq(drv.irqs[v])       # delivers what was pending
            self.pending[i].discard(v)
        drv.remove()
        self.k.handle_interrupts()
        self.drivers[i] = None
        self.freed_msi += [(dev.rid, iova) for iova in iovas]

    @precondition(lambda self: any(self.drivers))
    @rule(i=devs, v=vecs, cpus=st.integers(1, 15))
    def affinity(self, i, v, cpus):
        drv = self.drivers[i]
        if drv is None or v >= drv.nvec:
            return
        irq = drv.irqs[v]
        self.k.proc_write(f"/proc/irq/{irq}/smp_affinity", f"{cpus:x}")
        eff = self.k.irq.desc(irq).irq_data.common.effective_affinity
        assert len(eff) == 1 and next(iter(eff)) in {c for c in range(4) if cpus >> c & 1}

    @rule(i=devs, v=vecs)
    def fire(self, i, v):
        self.m.functions[i].notify(v)
        self.k.handle_interrupts()
        drv = self.drivers[i]
        if drv is None:
            return                                   # MSI-X disabled: nothing at all
        if v >= drv.nvec or v in self.disabled[i]:
            self.pending[i].add(v)                   # entry masked: pending bit
        else:
            self.expected[i][v] += 1

    @precondition(lambda self: any(self.drivers))
    @rule(i=devs, v=vecs, off=st.booleans())
    def mask(self, i, v, off):
        drv = self.drivers[i]
        if drv is None or v >= drv.nvec or off == (v in self.disabled[i]):
            return
        if off:
            self.k.irq.disable_irq(drv.irqs[v])
            self.disabled[i].add(v)
        else:
            self.k.irq.enable_irq(drv.irqs[v])
            self.k.handle_interrupts()
            self.disabled[i].discard(v)
            if v in self.pending[i]:
                self.pending[i].discard(v)
                self.expected[i][v] += 1

    @rule(i=devs, kind=st.sampled_from(["identity", "unmanaged", "default"]))
    def attach(self, i, kind):
        if self.drivers[i] is not None:
            return                                   # a bound driver owns DMA: not now
        dev = self.k.pci.devices[i]
        group = dev.iommu_group
        if group.domain is not group.default_domain:
            old = group.domain
            self.k.iommu.detach_group(old, group)
            if old.type == DomainType.UNMANAGED:
                self.k.iommu.domain_free(old)
        if kind == "identity":
            self.k.iommu.attach_group(self.k.iommu.identity_domain(dev), group)
        elif kind == "unmanaged":
            dom = self.k.iommu.domain_alloc_paging(dev)
            self.k.dma_iommu.get_msi_cookie(dom, MSI_IOVA_BASE)
            self.k.iommu.attach_group(dom, group)

    @invariant()
    def messages_reach_the_doorbell(self):
        for i, drv in enumerate(self.drivers):
            if drv is None:
                continue
            dev = self.k.pci.devices[i]
            for desc in dev.msi_descs.values():
                r = self.m.smmu.translate(dev.rid, desc.msg.address, write=True)
                assert r.pa == DOORBELL, (i, desc.msi_index, hex(desc.msg.address))

    @invariant()
    def each_fire_ran_its_handler_once(self):
        for i, drv in enumerate(self.drivers):
            if drv is not None:
                assert [len(drv.fired[v]) for v in range(drv.nvec)] == self.expected[i]

    @invariant()
    def nothing_stale_after_free(self):
        for i, drv in enumerate(self.drivers):
            if drv is None:
                dev = self.k.pci.devices[i]
                assert dev.rid not in self.k.its.devices
                assert self.m.functions[i].msix_enabled is False
        for rid, iova in self.freed_msi:
            dev = next(d for d in self.k.pci.devices if d.rid == rid)
            still = self.drivers[self.k.pci.devices.index(dev)]
            if still is not None and any(d.msg.address & ~0xFFF == iova
                                         for d in dev.msi_descs.values()):
                continue                             # mapped again by a new allocation
            r = self.m.smmu.translate(rid, iova | 0x40, write=True)
            assert r.pa != DOORBELL or dev.iommu_group.domain.type == DomainType.IDENTITY


TestHostMachine = HostMachine.TestCase


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
