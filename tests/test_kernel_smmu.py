"""The kernel's arm-smmu-v3 driver on the SMMUv3 model: bring-up, domains, nesting,
command errors, events, and map/unmap checked against the hardware's translations."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymsi import core
from pymsi.hw import smmuv3_regs as R
from pymsi.hw.bus import Bus
from pymsi.hw.smmuv3 import Outcome, SMMUv3
from pymsi.kernel.arm_smmu_v3 import (
    IOMMU_HWPT_ALLOC_NEST_PARENT,
    ArmSmmuDomain,
    ArmSmmuV3,
    CmdqEnt,
    Feat,
)
from pymsi.kernel.base import KernelError
from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.iommu import (
    IOMMU_MMIO,
    IOMMU_NOEXEC,
    IOMMU_WRITE,
    MSI_IOVA_BASE,
    MSI_IOVA_LENGTH,
    DomainType,
    ResvRegion,
    ResvType,
)
from pymsi.kernel.kernel import Kernel

from kernel_util import Dev
from linux_fixture import capture
from smmu_driver import cd_words, ste_words

RAM, RAM_SIZE = 0x4000_0000, 0x1000_0000
DATA = RAM                                   # DMA targets
GUEST_HOST = RAM + 0x0400_0000               # host RAM backing the guest's memory
KMEM = (RAM + 0x0800_0000, 0x0800_0000)      # the kernel's page allocator
SMMU_BASE = 0x0905_0000
RW = core.Prot.READ | core.Prot.WRITE
F_TRANSLATION = 0x10


class Rig:
    """RAM, a bus with an SMMUv3 on it, a kernel, and the driver probed."""

    def __init__(self, stages="nested", msi=False, ril=True, two_level=True, sidsize=16,
                 wire_irq=True, drv_kw=None, **hw_kw):
        self.ram = core.Memory()
        self.ram.add_ram(RAM, RAM_SIZE)
        self.bus = Bus(self.ram)
        self.hw = SMMUv3(self.ram, stages=stages, msi=msi, ril=ril, two_level=two_level,
                         sidsize=sidsize, msi_write=self.bus.write32, **hw_kw)
        self.bus.map(SMMU_BASE, R.MMIO_SIZE, self.hw, "SMMUv3")
        self.bus.attach_iommu(0, 0xFFFF, self.hw)
        self.k = Kernel(self.bus, mem=KMEM)
        self.drv = ArmSmmuV3(self.k, SMMU_BASE, **(drv_kw or {}))
        if wire_irq:
            self.hw.irq = self.drv.handle_irq
        self.drv.probe()

    def reg(self, off, size=4):
        return self.bus.read(SMMU_BASE + off, size)

    def dev(self, rid):
        d = Dev(rid)
        assert self.k.iommu.probe_device(d) is not None
        return d

    def ste(self, sid):
        return [self.ram.read_u64(self.drv._ste_addr(sid) + 8 * i) for i in range(8)]

    def spy(self):
        """Record the opcode of every command the driver queues from now on."""
        ops = []
        issue = self.drv.cmdq_issue_cmdlist

        def spy(cmds, sync=True):
            cmds = list(cmds)
            ops.extend(R.CMD_OP.get(c[0]) if isinstance(c, tuple) else c.opcode for c in cmds)
            return issue(cmds, sync)

        self.drv.cmdq_issue_cmdlist = spy
        return ops


def errno_of(excinfo):
    assert isinstance(excinfo.value, KernelError)
    return excinfo.value.errno


# --- probe --------------------------------------------------------------------------


@pytest.mark.parametrize("stages,feat", [("s1", Feat.TRANS_S1), ("s2", Feat.TRANS_S2),
                                         ("nested", Feat.NESTING)])
def test_probe_reads_the_id_registers_and_enables_the_smmu(stages, feat):
    rig = Rig(stages, oas=44, granules=(4096, 65536), ril=False)
    d = rig.drv
    assert d.features & feat and not d.features & Feat.RANGE_INV
    assert d.features & Feat.TWO_LVL_STRTAB and d.features & Feat.SEV
    assert (d.oas, d.ias, d.sid_bits, d.ssid_bits) == (44, 44, 16, 8)
    assert d.pgsize_bitmap == (1 << 12) | (1 << 21) | (1 << 30) | (1 << 16) | (1 << 29)
    assert (d.asid_bits, d.vmid_bits) == (16, 16 if stages != "s1" else 8)
    on = R.CR0_SMMUEN | R.CR0_EVENTQEN | R.CR0_CMDQEN
    assert rig.reg(R.CR0ACK) == on
    assert rig.reg(R.IRQ_CTRLACK) == R.IRQ_CTRL_EVENTQ_IRQEN | R.IRQ_CTRL_GERROR_IRQEN
    cfg = rig.reg(R.STRTAB_BASE_CFG)
    assert R.STRTAB_CFG_FMT.get(cfg) == R.STRTAB_FMT_2LVL and R.STRTAB_CFG_SPLIT.get(cfg) == 8
    assert R.STRTAB_BASE_ADDR.get(rig.reg(R.STRTAB_BASE, 8)) << 6 == d.strtab
    # CFGI_ALL and TLBI_NSNH_ALL, each followed by its own CMD_SYNC (as Linux 6.1 in
    # tests/data), all consumed.
    assert rig.hw.stats["commands"] == 4 and rig.hw.stats["sev"] == 2
    assert rig.reg(R.CMDQ_CONS) == rig.reg(R.CMDQ_PROD) == 4
    assert f"arm-smmu-v3: ias 44-bit, oas 44-bit (features {int(d.features):#010x})" in rig.k.log
    # A StreamID nobody probed has no L2 table: C_BAD_STREAMID, logged by the driver.
    assert rig.hw.translate(0x4242, 0x1000).aborted
    assert [(e.type, e.sid) for e in d.events] == [(R.EventType.C_BAD_STREAMID, 0x4242)]


def test_small_streamid_space_uses_a_linear_table_of_abort_stes():
    rig = Rig(sidsize=8)
    assert not rig.drv.features & Feat.TWO_LVL_STRTAB
    assert R.STRTAB_CFG_FMT.get(rig.reg(R.STRTAB_BASE_CFG)) == R.STRTAB_FMT_LINEAR
    for sid in (0, 0x7F, 0xFF):
        r = rig.hw.translate(sid, 0x1000)
        assert r.aborted and r.event is None                 # abort STE: silent
    with pytest.raises(KernelError) as e:
        rig.dev(0x100)                                       # beyond SIDSIZE
    assert errno_of(e) == errno.ERANGE


def test_probe_device_installs_an_l2_table_of_abort_stes():
    rig = Rig()
    rig.dev(0x0310)
    assert set(rig.drv.l2_strtab) == {3}
    assert rig.hw.translate(0x0311, 0x1000).event is None    # same L2: abort, no event
    assert R.STE0_CONFIG.get(rig.ste(0x0311)[0]) == R.SteConfig.ABORT


# --- DMA domains ------------------------------------------------------------------------


@pytest.mark.parametrize("stages", ["nested", "s1", "s2"])
@pytest.mark.parametrize("msi", [False, True])
@pytest.mark.parametrize("ril", [False, True])
def test_dma_api_translates_and_unmap_reaches_the_iotlb(stages, msi, ril):
    rig = Rig(stages, msi=msi, ril=ril)
    dev = rig.dev(0x10)
    dom = dev.iommu_group.domain
    assert isinstance(dom, ArmSmmuDomain) and dom.type == DomainType.DMA
    assert dom.owner == "dma-iommu" and dom.cookie is not None
    assert dom.stage == (2 if stages == "s2" else 1)
    sev = rig.hw.stats["sev"]
    phys = DATA + 0x3000
    iova = rig.k.dma_iommu.map_page(dev, phys + 0x10, 0x2000, DmaDirection.BIDIRECTIONAL)
    assert iova & 0xFFF == 0x10
    for off in (0, 0x1000, 0x2000):
        r = rig.hw.translate(dev.rid, iova + off, write=True)         # warms the IOTLB
        assert r.outcome is Outcome.TRANSLATED and r.pa == phys + 0x10 + off
    assert rig.bus.dma_write(dev.rid, iova, 0xC0FFEE).ok
    assert rig.ram.read_u32(phys + 0x10) == 0xC0FFEE
    hits = rig.hw.tlb.hits
    assert rig.hw.translate(dev.rid, iova, write=True).pa == phys + 0x10
    assert rig.hw.tlb.hits == hits + 1
    rig.k.dma_iommu.unmap_page(dev, iova, 0x2000)
    for off in (0, 0x1000, 0x2000):
        r = rig.hw.translate(dev.rid, iova + off, write=True)
        assert r.aborted and r.event == F_TRANSLATION
    assert [(e.sid, e.iova, e.read) for e in rig.drv.events] == [
        (0x10, iova + off, False) for off in (0, 0x1000, 0x2000)]
    # CMD_SYNCs completed by MSI into their own slot, or by SEV.
    assert (rig.hw.stats["sev"] == sev) == msi
    assert rig.reg(R.CMDQ_CONS) == rig.reg(R.CMDQ_PROD)


@pytest.mark.parametrize("ril", [False, True])
def test_64k_granule(ril):
    rig = Rig(granules=(65536,), ril=ril)
    assert rig.drv.pgsize_bitmap == (1 << 16) | (1 << 29)
    dev = rig.dev(0x14)
    dom = dev.iommu_group.domain
    assert dom.pgsize_bitmap == (1 << 16) | (1 << 29)
    iova = rig.k.dma_iommu.map_page(dev, DATA + 0x2_0010, 0x100, DmaDirection.FROM_DEVICE)
    assert iova & 0xFFFF == 0x10
    r = rig.hw.translate(0x14, iova + 0xF000, write=True)
    assert r.pa == DATA + 0x2_F010 and r.walk.page_size == 0x1_0000
    rig.k.dma_iommu.unmap_page(dev, iova, 0x100)
    assert rig.hw.translate(0x14, iova + 0xF000, write=True).aborted


def test_probe_resets_an_smmu_left_enabled():
    rig = Rig()
    rig.dev(0x10)
    k2 = Kernel(rig.bus, mem=(RAM + 0x0600_0000, 0x0100_0000))
    drv2 = ArmSmmuV3(k2, SMMU_BASE)
    rig.hw.irq = drv2.handle_irq
    drv2.probe()
    assert k2.log[2] == "arm-smmu-v3: SMMU currently enabled! Resetting..."
    assert rig.reg(R.GBPA) == R.GBPA_ABORT
    assert rig.reg(R.CR0ACK) == R.CR0_SMMUEN | R.CR0_EVENTQEN | R.CR0_CMDQEN
    assert R.STRTAB_BASE_ADDR.get(rig.reg(R.STRTAB_BASE, 8)) << 6 == drv2.strtab
    r = rig.hw.translate(0x10, 0x1000)           # the new table has no L2 for it yet
    assert r.event == R.EventType.C_BAD_STREAMID and drv2.events[0].sid == 0x10


def test_identity_and_blocked_domains():
    rig = Rig()
    dev = rig.dev(0x18)
    group = dev.iommu_group
    ident = rig.k.iommu.identity_domain(dev)
    assert ident.type == DomainType.IDENTITY and ident is rig.drv.identity_domain()
    rig.k.iommu.attach_group(ident, group)
    assert R.STE0_CONFIG.get(rig.ste(0x18)[0]) == R.SteConfig.BYPASS
    r = rig.hw.translate(0x18, 0x1234_5678, write=True)
    assert r.bypassed and r.pa == 0x1234_5678
    rig.k.iommu.detach_group(ident, group)
    iova = rig.k.dma_iommu.map_page(dev, DATA, 0x1000, DmaDirection.TO_DEVICE)
    assert rig.hw.translate(0x18, iova).pa == DATA
    blocked = rig.k.iommu.blocked_domain(dev)
    rig.k.iommu.claim_dma_owner(group, "vfio")              # moves it to the blocked domain
    assert group.domain is blocked and blocked.type == DomainType.BLOCKED
    assert R.STE0_CONFIG.get(rig.ste(0x18)[0]) == R.SteConfig.ABORT
    r = rig.hw.translate(0x18, iova)
    assert r.aborted and r.event is None and rig.drv.events == []
    rig.k.iommu.release_dma_owner(group)
    assert rig.hw.translate(0x18, iova).pa == DATA


def test_release_device_aborts_its_stream():
    rig = Rig()
    dev = rig.dev(0x1C)
    iova = rig.k.dma_iommu.map_page(dev, DATA, 0x1000, DmaDirection.BIDIRECTIONAL)
    assert rig.hw.translate(0x1C, iova).pa == DATA
    in_use = rig.k.mm.in_use
    rig.k.iommu.release_device(dev)
    assert dev not in rig.drv.masters and dev.iommu_group is None
    assert R.STE0_CONFIG.get(rig.ste(0x1C)[0]) == R.SteConfig.ABORT
    r = rig.hw.translate(0x1C, iova)
    assert r.aborted and r.event is None
    # The CD table (64 bytes) and, with the group gone, its default domain's page tables.
    assert rig.k.mm.in_use < in_use - 64


def test_unmanaged_stage1_domain_and_its_cd():
    rig = Rig()
    dev = rig.dev(0x20)
    dom = rig.k.iommu.domain_alloc_paging(dev)
    assert dom.type == DomainType.UNMANAGED and dom.stage == 1
    assert dom.asid != dev.iommu_group.domain.asid and dom.asid >= 1
    assert dom.geometry.aperture_end == (1 << 48) - 1
    rig.k.iommu.map(dom, 0x20_0000, DATA + 0x20_0000, 0x20_0000, RW)       # a 2 MiB block
    rig.k.iommu.attach_group(dom, dev.iommu_group)
    ste = rig.ste(0x20)
    master = rig.drv.masters[dev]
    assert R.STE0_CONFIG.get(ste[0]) == R.SteConfig.S1
    assert R.STE0_S1CTXPTR.get(ste[0]) << 6 == master.cd_table
    assert R.STE0_S1CDMAX.get(ste[0]) == 0 and R.STE0_S1FMT.get(ste[0]) == R.S1FMT_LINEAR
    cd = [rig.ram.read_u64(master.cd_table + 8 * i) for i in range(4)]
    assert R.CD0_V.get(cd[0]) and R.CD0_EPD1.get(cd[0]) and not R.CD0_EPD0.get(cd[0])
    assert R.CD0_ASID.get(cd[0]) == dom.asid and R.CD0_T0SZ.get(cd[0]) == 16
    assert all(f.get(cd[0]) for f in (R.CD0_R, R.CD0_A, R.CD0_ASET, R.CD0_AA64))
    # MAIR: the sign-extended value a real Linux 6.1 wrote (tests/data CD dword 3).
    real_mair = int(capture()["devices"][0]["cd"]["words"][3], 16)
    assert R.CD1_TTB0.get(cd[1]) << 4 == dom.pgtbl.pgd and cd[3] == real_mair
    r = rig.hw.translate(0x20, 0x2F_F008, write=True)
    assert r.pa == DATA + 0x2F_F008 and r.walk.page_size == 0x20_0000
    # Split the block by unmapping one page of it: the rest stays, the page faults.
    assert rig.k.iommu.unmap(dom, 0x30_0000, 0x1000) == 0x1000
    assert rig.hw.translate(0x20, 0x30_0008).aborted
    assert rig.hw.translate(0x20, 0x30_1008).pa == DATA + 0x30_1008
    with pytest.raises(KernelError) as e:
        rig.k.iommu.map(dom, 0x20_0000, DATA, 0x1000, RW)
    assert errno_of(e) == errno.EEXIST
    # Back to the DMA domain; then free: the ASID is invalidated and given back.
    ops = rig.spy()
    rig.k.iommu.detach_group(dom, dev.iommu_group)
    asid = dom.asid
    rig.k.iommu.domain_free(dom)
    assert R.Opcode.TLBI_NH_ASID in ops and asid not in rig.drv.asid_ida.used
    with pytest.raises(KernelError) as e:
        rig.k.iommu.attach_group(dom, dev.iommu_group)
    assert errno_of(e) == errno.EINVAL


@pytest.mark.parametrize("stages", ["nested", "s2"])
def test_stage2_domain_ste(stages):
    rig = Rig(stages, oas=40)
    dev = rig.dev(0x28)
    if stages == "nested":
        dom = rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    else:
        dom = rig.k.iommu.domain_alloc_paging(dev)
    assert dom.stage == 2 and dom.vmid >= 1 and dom.geometry.aperture_end == (1 << 40) - 1
    top = (1 << 40) - 0x1000                  # the last concatenated start-level table
    rig.k.iommu.map(dom, top, DATA, 0x1000, RW)
    rig.k.iommu.map(dom, 0x1000, DATA + 0x1000, 0x1000, core.Prot.READ)
    rig.k.iommu.attach_group(dom, dev.iommu_group)
    ste = rig.ste(0x28)
    assert R.STE0_CONFIG.get(ste[0]) == R.SteConfig.S2
    assert R.STE2_S2VMID.get(ste[2]) == dom.vmid and R.STE2_S2T0SZ.get(ste[2]) == 24
    assert all(f.get(ste[2]) for f in (R.STE2_S2R, R.STE2_S2PTW, R.STE2_S2AA64))
    assert R.OAS_BITS[R.STE2_S2PS.get(ste[2])] == 40
    assert R.STE3_S2TTB.get(ste[3]) << 4 == dom.pgtbl.pgd
    assert rig.hw.translate(0x28, top + 8, write=True).pa == DATA + 8
    r = rig.hw.translate(0x28, 0x1008, write=True)                  # read-only
    assert r.aborted and r.event == R.EventType.F_PERMISSION
    assert rig.drv.events[-1].s2 and rig.drv.events[-1].ipa == 0x1000


def test_attach_s1_then_s2_then_back_rewrites_ste_and_cd():
    rig = Rig()
    dev = rig.dev(0x30)
    group = dev.iommu_group
    default = group.domain
    iova = rig.k.dma_iommu.map_page(dev, DATA, 0x1000, DmaDirection.BIDIRECTIONAL)
    s2 = rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    s2.map_pages(iova, DATA + 0x5000, 0x1000, RW)
    rig.k.iommu.attach_group(s2, group)
    master = rig.drv.masters[dev]
    assert rig.ram.read_u64(master.cd_table) == 0                   # CD cleared
    assert rig.hw.translate(0x30, iova).pa == DATA + 0x5000
    rig.k.iommu.detach_group(s2, group)
    assert group.domain is default and master.domain is default
    assert rig.hw.translate(0x30, iova).pa == DATA
    assert s2.masters == set() and default.masters == {master}


def test_ste_updates_are_hitless_or_break_before_make():
    """Doublewords the live STE ignores first, then the one that matters, then a clean-up;
    two doublewords in use change: V=0 first (published), then the new STE."""
    rig = Rig()
    dev = rig.dev(0x38)
    seen = []
    issue = rig.drv.cmdq_issue_cmdlist

    def spy(cmds, sync=True):
        cmds = list(cmds)
        if any(getattr(c, "opcode", None) == R.Opcode.CFGI_STE for c in cmds):
            seen.append(rig.ste(0x38)[0] & 0xF)             # V and Config when published
        return issue(cmds, sync)

    rig.drv.cmdq_issue_cmdlist = spy
    group = dev.iommu_group
    rig.k.iommu.attach_group(rig.k.iommu.identity_domain(dev), group)    # S1 -> bypass
    assert seen == [0b101 << 1] * 2 + [1 | 0b100 << 1]   # V=0; dwords 1-7; dword 0
    seen.clear()
    blocked = rig.k.iommu.blocked_domain(dev)
    rig.k.iommu.claim_dma_owner(group, "vfio")                          # bypass -> abort
    assert group.domain is blocked and seen == [1 | 0b000 << 1] * 2     # + SHCFG clean-up
    seen.clear()
    s2 = rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    rig.k.iommu.replace_group_domain(group, s2)                          # abort -> S2
    assert seen == [1 | 0b000 << 1, 1 | 0b110 << 1]     # dwords 1-3 first, then dword 0


# --- nesting -----------------------------------------------------------------------------

GPA = 0x8000_0000                 # guest RAM (IPA), backed by GUEST_HOST
GUEST_SIZE = 0x0100_0000


def nested_setup(rig, dev, asid=5):
    parent = rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    rig.k.iommu.map(parent, GPA, GUEST_HOST, GUEST_SIZE, RW)
    view = core.IpaView(rig.ram, parent.pgtbl)
    galloc = core.TableAllocator(view, GPA + 0x10_0000, 0x10_0000)
    s1 = core.IoPgtable(view, galloc, fmt="s1", ias=48, oas=48)
    cd_ipa = GPA + 0x4_0000
    view.write(cd_ipa, b"".join(w.to_bytes(8, "little")
                                for w in cd_words(s1.stage1_config(), asid)))
    return parent, view, s1, cd_ipa


def test_nested_domain_translates_through_both_stages():
    rig = Rig()
    dev = rig.dev(0x40)
    parent, view, s1, cd_ipa = nested_setup(rig, dev)
    s1.map(0x1234_0000, GPA + 0x5000, 0x1000, RW)
    vste = ste_words(5, ctxptr=cd_ipa)[:2]
    nested = rig.k.iommu.domain_alloc_nested(dev, parent, vste)
    assert nested.type == DomainType.NESTED and nested.parent is parent
    rig.k.iommu.attach_group(nested, dev.iommu_group)
    ste = rig.ste(0x40)
    assert R.STE0_CONFIG.get(ste[0]) == R.SteConfig.NESTED
    assert R.STE0_S1CTXPTR.get(ste[0]) << 6 == cd_ipa
    assert R.STE2_S2VMID.get(ste[2]) == parent.vmid
    assert R.STE3_S2TTB.get(ste[3]) << 4 == parent.pgtbl.pgd
    assert ste[1] & vste[1] == vste[1]                  # the guest's S1DSS / S1C* fields
    r = rig.hw.translate(0x40, 0x1234_0040, write=True)
    assert r.pa == GUEST_HOST + 0x5040 and r.walk.ipa == GPA + 0x5040
    # The guest remaps its IOVA: stale until it invalidates; the driver forwards its
    # TLBI with the parent's VMID.
    s1.unmap(0x1234_0000, 0x1000)
    s1.map(0x1234_0000, GPA + 0x6000, 0x1000, RW)
    assert rig.hw.translate(0x40, 0x1234_0040).pa == GUEST_HOST + 0x5040
    guest_tlbi = (R.Opcode.TLBI_NH_VA | R.CMD_TLBI_ASID(5) | R.CMD_TLBI_VMID(0x77),
                  R.CMD_TLBI_ADDR(0x1234_0000 >> 12))
    nested.cache_invalidate_user([guest_tlbi])
    assert rig.hw.translate(0x40, 0x1234_0040).pa == GUEST_HOST + 0x6040
    with pytest.raises(KernelError) as e:
        nested.cache_invalidate_user([(R.Opcode.CFGI_CD | R.CMD_SID(0x99), 0)])
    assert errno_of(e) == errno.EIO
    with pytest.raises(KernelError) as e:
        nested.cache_invalidate_user([(R.Opcode.TLBI_S12_VMALL, 0)])
    assert errno_of(e) == errno.EIO
    nested.cache_invalidate_user([(R.Opcode.CFGI_CD | R.CMD_SID(0x40), 0)])
    with pytest.raises(KernelError) as e:
        rig.k.iommu.domain_free(parent)                 # the nested domain still uses it
    assert errno_of(e) == errno.EBUSY
    # The host unmaps the guest page from the parent: stage-2 IPA and NH_ALL(VMID).
    ops = rig.spy()
    rig.k.iommu.unmap(parent, GPA + 0x6000, 0x1000)
    assert ops == [R.Opcode.TLBI_S2_IPA, R.Opcode.TLBI_NH_ALL]
    r = rig.hw.translate(0x40, 0x1234_0040, write=True)
    assert r.aborted and r.event == F_TRANSLATION
    ev = rig.drv.events[-1]
    assert (ev.sid, ev.iova, ev.ipa, ev.s2, ev.event_class) == (
        0x40, 0x1234_0040, GPA + 0x6000, True, "IN")
    # Tear down: the nested domain (its VMID's stage-1 entries), then the parent.
    rig.k.iommu.detach_group(nested, dev.iommu_group)
    del ops[:]
    rig.k.iommu.domain_free(nested)
    assert ops == [R.Opcode.TLBI_NH_ALL]
    rig.k.iommu.domain_free(parent)
    assert ops[1:] == [R.Opcode.TLBI_S12_VMALL] and parent.vmid not in rig.drv.vmid_ida.used


def test_nested_substreams_follow_the_guests_s1dss():
    rig = Rig()
    dev = rig.dev(0x44)
    parent, view, s1, cd_ipa = nested_setup(rig, dev)
    s1.map(0x1000, GPA + 0x7000, 0x1000, RW)
    vste = ste_words(5, ctxptr=cd_ipa, cdmax=1, s1dss=R.S1DSS_BYPASS)[:2]
    nested = rig.k.iommu.domain_alloc_nested(dev, parent, vste)
    rig.k.iommu.attach_group(nested, dev.iommu_group)
    assert rig.hw.translate(0x44, 0x1008, ssid=0).pa == GUEST_HOST + 0x7008    # CD 0
    assert rig.hw.translate(0x44, GPA + 0x1008).pa == GUEST_HOST + 0x1008      # S1 bypassed


@pytest.mark.parametrize("kind", ["bypass", "abort", "invalid"])
def test_nested_vste_bypass_and_abort(kind):
    rig = Rig()
    dev = rig.dev(0x48)
    parent, *_ = nested_setup(rig, dev)
    vste = {"bypass": ste_words(4)[:2], "abort": ste_words(0)[:2], "invalid": [0, 0]}[kind]
    nested = rig.k.iommu.domain_alloc_nested(dev, parent, vste)
    rig.k.iommu.attach_group(nested, dev.iommu_group)
    r = rig.hw.translate(0x48, GPA + 0x2008, write=True)
    if kind == "bypass":                         # stage 2 only: the guest PA is the IOVA
        assert R.STE0_CONFIG.get(rig.ste(0x48)[0]) == R.SteConfig.S2
        assert r.pa == GUEST_HOST + 0x2008
    else:
        assert R.STE0_CONFIG.get(rig.ste(0x48)[0]) == R.SteConfig.ABORT
        assert r.aborted and r.event is None


@pytest.mark.parametrize("vste, err", [
    ([1 | 0b001 << 1, 0], errno.EIO),            # reserved Config
    ([1 | 0b110 << 1, 0], errno.EIO),            # the guest may not ask for stage 2
    ([1 | 0b111 << 1, 0], errno.EIO),
    ([1 | 0b101 << 1 | 1 << 55, 0], errno.EIO),  # reserved bits of dword 0
    ([1 | 0b101 << 1, 1 << 30], errno.EIO),      # STRW is the host's
    ([1 | 0b101 << 1, R.STE1_EATS(2)], errno.EIO),   # EATS: only abort or full ATS
    ([1 | 0b101 << 1, R.STE1_EATS(3)], errno.EIO),   # EATS 0b11 is reserved
    ([1 | 0b101 << 1], errno.EINVAL),            # not an STE's two doublewords
    (5, errno.EINVAL),                           # not a sequence at all (was TypeError)
    (None, errno.EINVAL),
])
def test_nested_vste_validation(vste, err):
    """Linux keeps EIO for invalid STE data (arm_smmu_validate_vste); a malformed
    argument is EINVAL."""
    rig = Rig()
    dev = rig.dev(0x50)
    parent = rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
    with pytest.raises(KernelError) as e:
        rig.k.iommu.domain_alloc_nested(dev, parent, vste)
    assert errno_of(e) == err


def test_nested_vste_eats_full_ats_is_accepted_and_the_host_decides_the_physical_eats():
    """Linux's STRTAB_STE_1_NESTING_ALLOWED has EATS (QEMU passes it too): a guest asking
    for full ATS (EATS 0b01) is accepted; the physical STE's EATS is the host's, 0 here
    (no ATS on this SMMU)."""
    rig = Rig()
    dev = rig.dev(0x4C)
    parent, view, s1, cd_ipa = nested_setup(rig, dev)
    s1.map(0x1000, GPA + 0x7000, 0x1000, RW)
    vste = ste_words(5, ctxptr=cd_ipa)[:2]
    vste[1] |= 1 << 28                            # EATS (bits 29:28) = 0b01, full ATS
    nested = rig.k.iommu.domain_alloc_nested(dev, parent, vste)
    rig.k.iommu.attach_group(nested, dev.iommu_group)
    ste = rig.ste(0x4C)
    assert (ste[0] >> 1) & 0b111 == 0b111 and (ste[1] >> 28) & 0b11 == 0
    assert rig.hw.translate(0x4C, 0x1008).pa == GUEST_HOST + 0x7008


def test_nested_parent_must_be_a_stage2_nesting_parent():
    rig = Rig()
    dev = rig.dev(0x58)
    vste = ste_words(4)[:2]
    s1 = rig.k.iommu.domain_alloc_paging(dev)
    with pytest.raises(KernelError) as e:
        rig.k.iommu.domain_alloc_nested(dev, s1, vste)
    assert errno_of(e) == errno.EINVAL
    s2only = Rig("s2")
    d2 = s2only.dev(0x58)
    with pytest.raises(KernelError) as e:
        s2only.drv.domain_alloc_paging(d2, IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert errno_of(e) == errno.EOPNOTSUPP


# --- reserved regions ----------------------------------------------------------------------


def test_reserved_regions_are_the_sw_msi_window():
    rig = Rig()
    dev = rig.dev(0x60)
    assert rig.k.iommu.get_resv_regions(dev) == [ResvRegion(
        MSI_IOVA_BASE, MSI_IOVA_LENGTH, IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO,
        ResvType.SW_MSI)]
    assert MSI_IOVA_LENGTH == 0x10_0000 and MSI_IOVA_BASE == 0x800_0000


# --- command errors ------------------------------------------------------------------------


@pytest.mark.parametrize("msi", [False, True])
@pytest.mark.parametrize("wire_irq", [False, True])
def test_illegal_command_is_skipped_and_reported_as_eio(msi, wire_irq):
    rig = Rig(msi=msi, wire_irq=wire_irq)
    dev = rig.dev(0x70)
    iova = rig.k.dma_iommu.map_page(dev, DATA, 0x1000, DmaDirection.BIDIRECTIONAL)
    assert rig.hw.translate(0x70, iova).pa == DATA                   # cached
    with pytest.raises(KernelError) as e:
        rig.drv.cmdq_issue_cmdlist([(0xFF, 0)])
    assert errno_of(e) == errno.EIO
    assert any("CMDQ error" in line and "Illegal command" in line for line in rig.k.log)
    assert "arm-smmu-v3: skipping command in error state:" in rig.k.log
    assert (rig.reg(R.GERROR) ^ rig.reg(R.GERRORN)) == 0
    assert rig.reg(R.CMDQ_CONS) & 0xFFFFF == rig.reg(R.CMDQ_PROD)
    # Commands after the bad one still run: change the tables behind the SMMU's back,
    # then invalidate after a garbage command.
    dom = dev.iommu_group.domain
    dom.pgtbl.unmap(iova, 0x1000)
    assert rig.hw.translate(0x70, iova).pa == DATA                   # stale
    with pytest.raises(KernelError) as e:
        rig.drv.cmdq_issue_cmdlist([(0x7, 0), (0xFF, 1),
                                    CmdqEnt(R.Opcode.TLBI_NH_ASID, asid=dom.asid)])
    assert errno_of(e) == errno.EIO
    assert rig.hw.translate(0x70, iova).aborted
    assert rig.drv.stats["cmdq_errors"] == 3
    # The queue works normally afterwards.
    iova2 = rig.k.dma_iommu.map_page(dev, DATA + 0x8000, 0x1000, DmaDirection.BIDIRECTIONAL)
    assert rig.hw.translate(0x70, iova2).pa == DATA + 0x8000
    rig.k.dma_iommu.unmap_page(dev, iova2, 0x1000)
    assert rig.hw.translate(0x70, iova2).aborted
    assert rig.drv.stats["cmdq_errors"] == 3


@pytest.mark.parametrize("ril", [False, True])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("npages", [1, 2, 31, 32, 33, 63, 100, 513])
def test_unmap_invalidates_every_page_of_the_range(npages, stage, ril):
    rig = Rig(ril=ril)
    dev = rig.dev(0x74)
    dom = (rig.k.iommu.domain_alloc_paging(dev) if stage == 1
           else rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT))
    rig.k.iommu.attach_group(dom, dev.iommu_group)
    base = 0x1000_0000 + 0x3000
    rig.k.iommu.map(dom, base - 0x1000, DATA, (npages + 2) * 0x1000, RW)
    pages = [base + i * 0x1000 for i in range(-1, npages + 1)]
    assert all(rig.hw.translate(0x74, a).pa == DATA + a - base + 0x1000 for a in pages)
    ops = rig.spy()
    assert rig.k.iommu.unmap(dom, base, npages * 0x1000) == npages * 0x1000
    tlbi = R.Opcode.TLBI_NH_VA if stage == 1 else R.Opcode.TLBI_S2_IPA
    n = ops.count(tlbi)
    if ril:
        assert n <= 3
    elif npages < 512:
        assert n == npages
    else:                                    # CMDQ_MAX_TLBI_OPS: all of the ASID / VMID
        assert n == 0 and ops[0] == (R.Opcode.TLBI_NH_ASID if stage == 1
                                     else R.Opcode.TLBI_S12_VMALL)
    assert all(rig.hw.translate(0x74, a).aborted for a in pages[1:-1])
    assert rig.hw.translate(0x74, pages[0]).pa == DATA
    assert rig.hw.translate(0x74, pages[-1]).pa == DATA + (npages + 1) * 0x1000


def test_back_to_back_errors_are_all_handled_by_the_interrupt():
    rig = Rig()
    with pytest.raises(KernelError) as e:
        rig.drv.cmdq_issue_cmdlist([(0x7, 0), (0xFF, 0), (0x8, 0)], sync=False)
    assert errno_of(e) == errno.EIO
    assert rig.drv.stats["cmdq_errors"] == 3
    assert rig.reg(R.GERROR) == rig.reg(R.GERRORN)
    assert rig.reg(R.CMDQ_CONS) & 0xFFFFF == rig.reg(R.CMDQ_PROD)


def test_many_commands_wrap_the_queue():
    rig = Rig(ril=False, drv_kw={"cmdq_shift": 3})              # 8 slots
    dev = rig.dev(0x78)
    dom = rig.k.iommu.domain_alloc_paging(dev)
    rig.k.iommu.attach_group(dom, dev.iommu_group)
    rig.k.iommu.map(dom, 0x10_0000, DATA, 0x2_0000, RW)
    for a in range(0x10_0000, 0x12_0000, 0x1000):
        assert rig.hw.translate(0x78, a).pa == DATA + a - 0x10_0000
    n = rig.hw.stats["commands"]
    assert rig.k.iommu.unmap(dom, 0x10_0000, 0x2_0000) == 0x2_0000   # 32 TLBIs + SYNC
    assert rig.hw.stats["commands"] == n + 33
    assert all(rig.hw.translate(0x78, a).aborted for a in range(0x10_0000, 0x12_0000, 0x1000))


# --- events --------------------------------------------------------------------------------


def test_translation_fault_is_logged_from_the_event_queue_interrupt():
    rig = Rig()
    dev = rig.dev(0x0105)
    res = rig.bus.dma_read(dev.rid, 0xDEAD_0000)                     # nothing mapped
    assert not res.ok
    (ev,) = rig.drv.events
    assert (ev.type, ev.name, ev.sid, ev.iova, ev.read, ev.s2, ev.event_class) == (
        F_TRANSLATION, "F_TRANSLATION", 0x0105, 0xDEAD_0000, True, False, "IN")
    assert ("arm-smmu-v3: event 0x10 received: F_TRANSLATION sid 0x105 ssid - "
            "iova 0xdead0000 ipa 0x0 read S2 0 class IN") in rig.k.log
    assert rig.reg(R.EVENTQ_CONS | R.PAGE1) == rig.reg(R.EVENTQ_PROD | R.PAGE1)


def test_event_queue_overflow_is_reported_and_acknowledged():
    rig = Rig(wire_irq=False, drv_kw={"evtq_shift": 1})           # two records
    rig.dev(0x11)
    for i in range(5):
        assert rig.hw.translate(0x11, 0x1000 * (i + 1), write=True).aborted
    assert rig.reg(R.EVENTQ_PROD | R.PAGE1) & R.Q_OVF
    new = rig.drv.evtq_drain()
    assert [e.iova for e in new] == [0x1000, 0x2000]
    assert "arm-smmu-v3: EVTQ overflow detected -- events lost" in rig.k.log
    assert rig.drv.stats["events_lost"] == 1
    assert rig.reg(R.EVENTQ_CONS | R.PAGE1) & R.Q_OVF == rig.reg(R.EVENTQ_PROD | R.PAGE1) & R.Q_OVF
    rig.hw.irq = rig.drv.handle_irq
    rig.hw.translate(0x11, 0x9000)
    assert rig.drv.events[-1].iova == 0x9000 and rig.drv.stats["events_lost"] == 1


def test_gerror_for_an_event_queue_abort():
    rig = Rig()
    rig.dev(0x12)
    # Point the (disabled) event queue at no RAM: the next record cannot be written.
    rig.bus.write(SMMU_BASE + R.CR0, R.CR0_SMMUEN | R.CR0_CMDQEN)
    rig.bus.write(SMMU_BASE + R.EVENTQ_BASE, 0x7000_0000 | 1, 8)
    rig.bus.write(SMMU_BASE + R.CR0, R.CR0_SMMUEN | R.CR0_CMDQEN | R.CR0_EVENTQEN)
    rig.hw.translate(0x12, 0x1000)
    assert "arm-smmu-v3: EVTQ write aborted -- events may have been lost" in rig.k.log
    assert rig.reg(R.GERROR) == rig.reg(R.GERRORN) and rig.drv.stats["gerrors"] == 1


# --- property: what is mapped is what the hardware translates ---------------------------------

PAGES = 1024                        # two 2 MiB blocks of 4 KiB pages
IOVA0 = 0x4000_0000


@st.composite
def map_ops(draw):
    ops = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["map", "map", "block", "unmap"]))
        if kind == "block":
            ops.append(("map", 512 * draw(st.integers(0, 1)), 512,
                        512 * draw(st.integers(0, 7))))
        elif kind == "map":
            ops.append(("map", draw(st.integers(0, PAGES - 1)), draw(st.integers(1, 48)),
                        draw(st.integers(0, 4096))))
        else:
            ops.append(("unmap", draw(st.integers(0, PAGES - 1)), draw(st.integers(1, 700)),
                        0))
    return ops


@given(ops=map_ops(), stage=st.sampled_from([1, 2]), ril=st.booleans(),
       sample=st.lists(st.integers(0, PAGES - 1), min_size=8, max_size=24))
def test_hardware_translations_follow_map_and_unmap(ops, stage, ril, sample):
    rig = Rig(ril=ril)
    dev = rig.dev(0x80)
    dom = (rig.k.iommu.domain_alloc_paging(dev) if stage == 1
           else rig.drv.domain_alloc_paging(dev, IOMMU_HWPT_ALLOC_NEST_PARENT))
    rig.k.iommu.attach_group(dom, dev.iommu_group)
    mapped: dict[int, int] = {}

    def check(pages):
        for p in pages:
            iova = IOVA0 + p * 0x1000 + 0x18
            r = rig.hw.translate(0x80, iova, write=True)
            want = mapped.get(p)
            if want is None:
                assert r.aborted and r.event == F_TRANSLATION, (hex(iova), r)
                assert dom.iova_to_phys(iova) is None
            else:
                assert r.pa == want + 0x18, (hex(iova), r)
                assert dom.iova_to_phys(iova) == want + 0x18

    for kind, first, n, phys_page in ops:
        n = min(n, PAGES - first)
        pages = range(first, first + n)
        if kind == "map":
            iova, pa = IOVA0 + first * 0x1000, DATA + phys_page * 0x1000
            if any(p in mapped for p in pages):
                with pytest.raises(KernelError) as e:
                    rig.k.iommu.map(dom, iova, pa, n * 0x1000, RW)
                assert errno_of(e) == errno.EEXIST
            else:
                rig.k.iommu.map(dom, iova, pa, n * 0x1000, RW)
                mapped.update({p: pa + (p - first) * 0x1000 for p in pages})
        else:
            want = sum(p in mapped for p in pages) * 0x1000
            assert rig.k.iommu.unmap(dom, IOVA0 + first * 0x1000, n * 0x1000) == want
            for p in pages:
                mapped.pop(p, None)
        check(sorted({*sample, first, first + n - 1, max(first - 1, 0),
                      min(first + n, PAGES - 1)}))
    assert rig.drv.stats["cmdq_errors"] == 0
