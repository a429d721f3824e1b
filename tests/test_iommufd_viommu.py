"""vIOMMU, vDEVICE, nested HWPTs through a vIOMMU, HWPT_INVALIDATE and the vEVENTQ.

The test acts as a VMM with an accelerated virtual SMMUv3 (QEMU's smmuv3-accel):
guest RAM is user memory mapped in an IOAS at its guest-physical address, the
guest's CD and stage-1 tables live in it, and the guest's STE becomes a nested
HWPT of the vIOMMU.  Expected values come from Linux 6.17/6.18
(drivers/iommu/iommufd/viommu.c, eventq.c, hw_pagetable.c,
arm-smmu-v3-iommufd.c, include/uapi/linux/iommufd.h) and the SMMUv3
specification (command and event layouts, as tests/smmu_driver.py encodes them):

* VIOMMU_ALLOC: EOPNOTSUPP for flags, the DEFAULT type, a type the SMMU does
  not offer or an SMMU without nesting; ENOENT for an unknown device or HWPT
  id (an IOAS id is not a paging HWPT); EINVAL for a HWPT that is not a
  nesting parent.
* VDEVICE_ALLOC: EEXIST for a taken virtual id or a device that has one.
* HWPT_ALLOC on a vIOMMU: EIO for a vSTE with bits the guest does not own.
* Attaching a translating nested HWPT needs a vDEVICE (ENOENT).
* HWPT_INVALIDATE on a vIOMMU: TLBI_NH_{ALL,ASID,VA,VAA} get the nest
  parent's VMID, TLBI_NSNH_ALL becomes TLBI_NH_ALL of it, CFGI_CD(_ALL) and
  ATC_INV get the physical StreamID; anything else or an unknown vSID is EIO;
  ``entry_num`` comes back as the number handled; EOPNOTSUPP for a reserved
  member or a nested HWPT id, EINVAL for another data type, no entries or
  entries without a pointer, E2BIG for non-zero bytes past a 16-byte entry.
* vEVENTQ: header {flags, sequence} then the 32-byte record with the vSID;
  sequences count every event, lost ones too; a full queue ends with one
  LOST_EVENTS header; stage-2 faults stay in the host's log.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pymsi.machine import ArmVirt
from pymsi.uapi import iommufd as u
from pymsi.uapi import vfio as V

from kernel_util import errno_of
from smmu_driver import OP, cd_words, pack, ste_words

PAGE = 4096
ENOENT, EINVAL, EIO, EEXIST, EBUSY, EOPNOTSUPP, E2BIG = (
    errno.ENOENT, errno.EINVAL, errno.EIO, errno.EEXIST, errno.EBUSY, errno.EOPNOTSUPP,
    errno.E2BIG)
RW = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE
FIXED = u.IOMMU_IOAS_MAP_FIXED_IOVA

GPA = 0x4000_0000                 # guest RAM (IPA) base; clear of the SW_MSI window
GUEST_PAGES = 64
CD_IPA = GPA                      # the guest's CD (one, S1CDMax 0)
TABLES_IPA = GPA + 0x1000         # its stage-1 tables: L1, L2, L3
DATA_IPA = GPA + 0x10000          # data pages
ASID, VSID, VSID2 = 7, 0x21, 0x22
IOVA = 0x1234_5000                # a guest I/O virtual address (39-bit VA space)
EPOLLIN = 0x1

# Event record fields (SMMUv3 7.3) and types.
F_TRANSLATION = 0x10


def evt_fields(rec: bytes) -> dict:
    d = [int.from_bytes(rec[i:i + 8], "little") for i in range(0, 32, 8)]
    return {"type": d[0] & 0xFF, "sid": d[0] >> 32, "s2": d[1] >> 39 & 1,
            "read": d[1] >> 35 & 1, "iova": d[2], "ipa": d[3] & 0x000F_FFFF_FFFF_F000}


def cmd(op: str, sid: int = 0, asid: int = 0, vmid: int = 0, addr: int = 0,
        leaf: bool = False) -> tuple[int, int]:
    """A command as the guest encodes it (SMMUv3 4.x layouts)."""
    d0 = OP[op] if op in OP else {"ATC_INV": 0x40}[op]
    if op in ("CFGI_CD", "CFGI_CD_ALL", "ATC_INV"):
        d0 |= sid << 32
    else:
        d0 |= vmid << 32 | asid << 48
    d1 = addr & ~0xFFF | int(leaf)
    return d0, d1


class Guest:
    """The VMM's view of guest RAM: user memory at IPA GPA, with a stage-1 table
    builder (4 KiB granule, 39-bit VA: levels 1-3) writing through the user VA."""

    def __init__(self, k, va: int) -> None:
        self.k, self.va = k, va

    def write(self, ipa: int, data: bytes) -> None:
        self.k.user_write(self.va + ipa - GPA, data)

    def read64(self, ipa: int) -> int:
        return int.from_bytes(self.k.user_read(self.va + ipa - GPA, 8), "little")

    def write64(self, ipa: int, v: int) -> None:
        self.write(ipa, v.to_bytes(8, "little"))

    def build(self) -> None:
        l1, l2, l3 = TABLES_IPA, TABLES_IPA + PAGE, TABLES_IPA + 2 * PAGE
        self.write64(l1 + 8 * ((IOVA >> 30) & 0x1FF), l2 | 3)
        self.write64(l2 + 8 * ((IOVA >> 21) & 0x1FF), l3 | 3)
        self.l3 = l3
        from pymsi import core
        s1 = core.Stage1(ttb0=l1, tsz0=25, granule0=4096, ips=44, epd1=True)
        self.write(CD_IPA, pack(cd_words(s1, ASID)))

    def map(self, iova: int, ipa: int, write: bool = True) -> None:
        """An L3 page descriptor: nG (a TLBI by VA for another ASID must not drop
        it), AF, AP[1] (unprivileged), AP[2] for read-only."""
        pte = ipa | 3 | 1 << 11 | 1 << 10 | 1 << 6 | (0 if write else 1 << 7)
        self.write64(self.l3 + 8 * ((iova >> 12) & 0x1FF), pte)

    def unmap(self, iova: int) -> None:
        self.write64(self.l3 + 8 * ((iova >> 12) & 0x1FF), 0)


def user_pa(k, va):
    for vma in k.user_mm.vmas:
        if vma.start <= va < vma.end:
            return vma.pages[va & ~(PAGE - 1)].pa
    raise AssertionError(f"{va:#x} not mapped")


class Vmm:
    """Boot, give the devices to vfio-pci, bind them to one iommufd, map guest RAM."""

    def __init__(self, smmu="nested", ndev=2) -> None:
        self.m = ArmVirt(smmu=smmu, devices=[{"msix": 2}] * ndev)
        k = self.k = self.m.boot()
        self.iommufd = k.open("/dev/iommu")
        self.devs, self.dev_ids = [], []
        for i in range(ndev):
            pdev = k.pci.devices[i]
            k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
            k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
            f = k.open(f"/dev/vfio/devices/vfio{i}")
            b = V.VfioDeviceBindIommufd(iommufd=self.iommufd.fd)
            f.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
            pdev.set_master()
            self.devs.append(f)
            self.dev_ids.append(b.out_devid)
        a = u.IommuIoasAlloc()
        self.iommufd.ioctl(u.IOMMU_IOAS_ALLOC, a)
        self.ioas = a.out_ioas_id
        self.ram_va = k.mmap(GUEST_PAGES * PAGE)
        k.user_write(self.ram_va, bytes(GUEST_PAGES * PAGE))     # back every page
        self.iommufd.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
            ioas_id=self.ioas, user_va=self.ram_va, length=GUEST_PAGES * PAGE, iova=GPA,
            flags=RW | FIXED))
        self.guest = Guest(k, self.ram_va)
        self.guest.build()

    @property
    def ctx(self):
        return self.iommufd.private_data

    def rid(self, i=0):
        return self.k.pci.devices[i].rid

    def ioctl(self, nr, arg):
        return self.iommufd.ioctl(nr, arg)

    def hwpt_alloc(self, pt_id, dev=0, flags=0, data=None, data_type=None):
        h = u.IommuHwptAlloc(dev_id=self.dev_ids[dev], pt_id=pt_id, flags=flags)
        if data is not None:
            va = self.k.mmap(PAGE)
            self.k.user_write(va, data)
            h.data_uptr, h.data_len = va, len(data)
            h.data_type = u.IOMMU_HWPT_DATA_ARM_SMMUV3 if data_type is None else data_type
        self.ioctl(u.IOMMU_HWPT_ALLOC, h)
        return h.out_hwpt_id

    def parent(self, dev=0):
        return self.hwpt_alloc(self.ioas, dev, flags=u.IOMMU_HWPT_ALLOC_NEST_PARENT)

    def viommu(self, hwpt, dev=0, vtype=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3, flags=0):
        v = u.IommuViommuAlloc(dev_id=self.dev_ids[dev], hwpt_id=hwpt, type=vtype,
                               flags=flags)
        self.ioctl(u.IOMMU_VIOMMU_ALLOC, v)
        return v.out_viommu_id

    def vdevice(self, viommu, virt_id, dev=0):
        d = u.IommuVdeviceAlloc(viommu_id=viommu, dev_id=self.dev_ids[dev], virt_id=virt_id)
        self.ioctl(u.IOMMU_VDEVICE_ALLOC, d)
        return d.out_vdevice_id

    def nested(self, viommu, vste=None, dev=0):
        vste = vste if vste is not None else ste_words(5, ctxptr=CD_IPA)[:2]
        return self.hwpt_alloc(viommu, dev, data=pack(vste))

    def attach(self, pt_id, dev=0):
        a = V.VfioDeviceAttachIommufdPt(pt_id=pt_id)
        self.devs[dev].ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        return a.pt_id

    def veventq(self, viommu, depth=8, vtype=u.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3):
        q = u.IommuVeventqAlloc(viommu_id=viommu, type=vtype, veventq_depth=depth)
        self.ioctl(u.IOMMU_VEVENTQ_ALLOC, q)
        return q.out_veventq_id, self.k.files.fds[q.out_veventq_fd]

    def invalidate(self, target, cmds, entry_len=16, data_type=None, raw=None):
        va = self.k.mmap(PAGE * 4)
        data = raw if raw is not None else b"".join(
            d0.to_bytes(8, "little") + d1.to_bytes(8, "little") + bytes(entry_len - 16)
            for d0, d1 in cmds)
        if data:
            self.k.user_write(va, data)
        inv = u.IommuHwptInvalidate(
            hwpt_id=target, data_uptr=va, entry_len=entry_len, entry_num=len(cmds),
            data_type=(u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 if data_type is None
                       else data_type))
        return inv, errno_of(self.ioctl, u.IOMMU_HWPT_INVALIDATE, inv)

    def full(self, vsid=VSID):
        """Nest parent, vIOMMU, vDEVICE, nested HWPT from the guest's STE, attached."""
        self.p = self.parent()
        self.v = self.viommu(self.p)
        self.vd = self.vdevice(self.v, vsid)
        self.n = self.nested(self.v)
        self.attach(self.n)
        return self

    def snapshot(self):
        """What a failed ioctl must leave alone."""
        objs = {oid: (o.kind, o.users) for oid, o in self.ctx.objects.items()}
        smmu = self.k.smmu
        return (objs, dict(self.k.files.open_files()),
                {m.sid: (m.domain, m.vmaster) for m in smmu.masters.values()},
                smmu.stats["commands"])


def spy(k):
    """Record every command the host driver queues (raw doublewords)."""
    seen = []
    issue = k.smmu.cmdq_issue_cmdlist

    def wrapped(cmds, sync=True):
        cmds = list(cmds)
        seen.append([c if isinstance(c, tuple) else None for c in cmds])
        return issue(cmds, sync)

    k.smmu.cmdq_issue_cmdlist = wrapped
    return seen


def phys_vmid(vmm, i=0):
    """The VMID in the device's physical STE (read from the stream table)."""
    smmu = vmm.k.smmu
    addr = smmu._ste_addr(vmm.rid(i))
    return vmm.k.ram.read_u64(addr + 16) & 0xFFFF


# -- end to end ----------------------------------------------------------------------------


def test_dma_translates_through_both_stages_and_guest_tlbi_takes_effect():
    vmm = Vmm().full()
    k, g = vmm.k, vmm.guest
    page_a, page_b = DATA_IPA, DATA_IPA + PAGE
    g.map(IOVA, page_a)
    g.write(page_a + 0x40, (0xA1A2A3A4).to_bytes(4, "little"))
    g.write(page_b + 0x40, (0xB1B2B3B4).to_bytes(4, "little"))
    r = vmm.m.bus.dma_read(vmm.rid(), IOVA + 0x40)
    assert r.ok and r.value == 0xA1A2A3A4
    assert r.pa == user_pa(k, vmm.ram_va + page_a - GPA) + 0x40
    # The guest remaps the IOVA: the SMMU still uses the cached translation...
    g.map(IOVA, page_b)
    assert vmm.m.bus.dma_read(vmm.rid(), IOVA + 0x40).value == 0xA1A2A3A4
    # ... a TLBI for another ASID does not drop it ...
    inv, err = vmm.invalidate(vmm.v, [cmd("TLBI_NH_VA", asid=ASID + 1, vmid=0x3F, addr=IOVA)])
    assert err is None and inv.entry_num == 1
    assert vmm.m.bus.dma_read(vmm.rid(), IOVA + 0x40).value == 0xA1A2A3A4
    # ... the guest's TLBI_NH_VA (with its own, meaningless VMID) does.
    seen = spy(k)
    inv, err = vmm.invalidate(vmm.v, [cmd("TLBI_NH_VA", asid=ASID, vmid=0x3F, addr=IOVA)])
    assert err is None and inv.entry_num == 1
    ((d0, d1),) = seen[0]
    assert (d0 & 0xFF, d0 >> 48, (d0 >> 32) & 0xFFFF, d1 & ~0xFFF) == (
        0x12, ASID, phys_vmid(vmm), IOVA)
    r = vmm.m.bus.dma_read(vmm.rid(), IOVA + 0x40)
    assert r.value == 0xB1B2B3B4
    assert r.pa == user_pa(k, vmm.ram_va + page_b - GPA) + 0x40


def test_stage1_fault_is_a_vevent_with_the_virtual_sid():
    vmm = Vmm().full()
    k = vmm.k
    qid, qf = vmm.veventq(vmm.v)
    assert qf.poll() & EPOLLIN == 0 and qf.read(4096) == b""
    host_events = len(k.smmu.events)
    r = vmm.m.bus.dma_write(vmm.rid(), IOVA + 0x2000, 1)              # no stage-1 entry
    assert not r.ok
    assert qf.poll() & EPOLLIN
    data = qf.read(4096)
    assert len(data) == 8 + 32
    hdr = u.IommufdVeventHeader.unpack(data[:8])
    assert (hdr.flags, hdr.sequence) == (0, 0)
    ev = evt_fields(data[8:])
    assert (ev["type"], ev["sid"], ev["s2"], ev["read"], ev["iova"]) == (
        F_TRANSLATION, VSID, 0, 0, IOVA + 0x2000)
    assert len(k.smmu.events) == host_events                          # not the host's
    assert qf.poll() & EPOLLIN == 0
    # A stage-2 fault (the guest maps the IOVA to an IPA the VMM never mapped) is
    # the host's: logged with the physical StreamID, nothing for the guest.
    vmm.guest.map(IOVA, GPA + GUEST_PAGES * PAGE)
    r = vmm.m.bus.dma_read(vmm.rid(), IOVA)
    assert not r.ok
    ev = k.smmu.events[-1]
    assert (ev.sid, ev.s2, ev.iova) == (vmm.rid(), True, IOVA)
    assert qf.read(4096) == b""


def test_without_a_veventq_stage1_faults_stay_in_the_host_log():
    vmm = Vmm().full()
    k = vmm.k
    r = vmm.m.bus.dma_read(vmm.rid(), IOVA + 0x3000)
    assert not r.ok
    ev = k.smmu.events[-1]
    assert (ev.type, ev.sid, ev.s2) == (F_TRANSLATION, vmm.rid(), False)
    assert k.smmu.stats["events_forwarded"] == 0


def test_full_veventq_ends_with_one_lost_events_header():
    vmm = Vmm().full()
    qid, qf = vmm.veventq(vmm.v, depth=2)
    for i in range(5):
        assert not vmm.m.bus.dma_read(vmm.rid(), IOVA + (i + 1) * 0x1000).ok
    # A buffer too short for the first event returns nothing and keeps it.
    assert qf.read(8 + 31) == b""
    data = qf.read(4096)
    assert len(data) == 2 * (8 + 32) + 8
    h0, h1 = (u.IommufdVeventHeader.unpack(data[i:i + 8]) for i in (0, 40))
    lost = u.IommufdVeventHeader.unpack(data[80:88])
    assert [(h.flags, h.sequence) for h in (h0, h1, lost)] == [
        (0, 0), (0, 1), (u.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 4)]
    assert [evt_fields(data[i:i + 32])["iova"] for i in (8, 48)] == [
        IOVA + 0x1000, IOVA + 0x2000]
    # The next event after the queue drained carries the next sequence number.
    assert not vmm.m.bus.dma_read(vmm.rid(), IOVA + 0x9000).ok
    data = qf.read(4096)
    assert u.IommufdVeventHeader.unpack(data[:8]).sequence == 5
    assert evt_fields(data[8:])["iova"] == IOVA + 0x9000


def test_lost_events_header_reads_alone_in_a_short_buffer():
    vmm = Vmm().full()
    qid, qf = vmm.veventq(vmm.v, depth=1)
    for i in range(3):
        vmm.m.bus.dma_read(vmm.rid(), IOVA + (i + 1) * 0x1000)
    assert len(qf.read(40)) == 40                                   # the one event
    lost = qf.read(8)
    assert u.IommufdVeventHeader.unpack(lost).flags == u.IOMMU_VEVENTQ_FLAG_LOST_EVENTS
    assert qf.read(4096) == b"" and not qf.poll() & EPOLLIN


def test_cfgi_cd_reaches_the_physical_sid_and_new_cd_is_used():
    vmm = Vmm().full()
    k, g = vmm.k, vmm.guest
    g.map(IOVA, DATA_IPA)
    assert vmm.m.bus.dma_read(vmm.rid(), IOVA).ok
    # The guest invalidates its CD: the SMMU gets its command with the physical SID.
    seen = spy(k)
    inv, err = vmm.invalidate(vmm.v, [cmd("CFGI_CD", sid=VSID), cmd("CFGI_CD_ALL", sid=VSID),
                                      cmd("TLBI_NSNH_ALL")])
    assert err is None and inv.entry_num == 3
    (issued,) = seen
    assert [(d0 & 0xFF, d0 >> 32) for d0, _ in issued[:2]] == [(0x05, vmm.rid()),
                                                                 (0x06, vmm.rid())]
    assert issued[2] == (0x10 | phys_vmid(vmm) << 32, 0)             # NSNH_ALL -> NH_ALL


def test_invalidation_is_issued_in_blocks_of_63():
    vmm = Vmm().full()
    seen = spy(vmm.k)
    cmds = [cmd("TLBI_NH_VA", asid=ASID, addr=IOVA + i * PAGE) for i in range(130)]
    inv, err = vmm.invalidate(vmm.v, cmds)
    assert err is None and inv.entry_num == 130
    assert [len(b) for b in seen] == [63, 63, 4]


@pytest.mark.parametrize("bad, why", [
    (cmd("TLBI_S12_VMALL", vmid=1), "stage-2 TLBI"),
    (cmd("CFGI_STE", sid=VSID), "STE invalidation"),
    (cmd("CFGI_CD", sid=VSID2), "unknown vSID"),
    ((0xFF, 0), "unknown opcode"),
    (cmd("SYNC"), "CMD_SYNC"),
])
def test_forbidden_guest_command_is_eio_and_counts_the_ones_done(bad, why):
    vmm = Vmm().full()
    good = cmd("TLBI_NH_ASID", asid=ASID)
    seen = spy(vmm.k)
    inv, err = vmm.invalidate(vmm.v, [good, good, bad, good])
    assert err == EIO and inv.entry_num == 2
    assert [len(b) for b in seen] == [2]                            # only the two before


def test_invalidate_argument_errors():
    vmm = Vmm().full()
    good = [cmd("TLBI_NH_ALL")]
    for kw, want in [({"data_type": u.IOMMU_HWPT_INVALIDATE_DATA_VTD_S1}, EINVAL)]:
        inv, err = vmm.invalidate(vmm.v, good, **kw)
        assert (err, inv.entry_num) == (want, 0)
    inv = u.IommuHwptInvalidate(hwpt_id=vmm.v, data_uptr=0, entry_len=16, entry_num=1,
                                data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
    assert errno_of(vmm.ioctl, u.IOMMU_HWPT_INVALIDATE, inv) == EINVAL and inv.entry_num == 0
    inv, err = vmm.invalidate(vmm.n, good)                          # nested HWPT: no op now
    assert (err, inv.entry_num) == (EOPNOTSUPP, 0)
    inv, err = vmm.invalidate(vmm.ioas, good)
    assert (err, inv.entry_num) == (EINVAL, 0)
    inv, err = vmm.invalidate(999, good)
    assert (err, inv.entry_num) == (ENOENT, 0)
    inv = u.IommuHwptInvalidate(hwpt_id=vmm.v, entry_num=0,
                                data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
    setattr(inv, "__reserved", 1)
    assert errno_of(vmm.ioctl, u.IOMMU_HWPT_INVALIDATE, inv) == EOPNOTSUPP
    # Entry sizes: longer entries must be zero past 16 bytes, shorter ones are
    # zero-extended (an 8-byte TLBI_NH_ALL is the whole command).
    inv, err = vmm.invalidate(vmm.v, good, entry_len=24)
    assert (err, inv.entry_num) == (None, 1)
    raw = good[0][0].to_bytes(8, "little") + bytes(8) + (1).to_bytes(8, "little")
    inv, err = vmm.invalidate(vmm.v, good, entry_len=24, raw=raw)
    assert (err, inv.entry_num) == (E2BIG, 0)
    inv, err = vmm.invalidate(vmm.v, good, entry_len=8, raw=good[0][0].to_bytes(8, "little"))
    assert (err, inv.entry_num) == (None, 1)
    inv, err = vmm.invalidate(vmm.v, [])                            # the full-array copy
    assert (err, inv.entry_num) == (EINVAL, 0)


# -- object errors and dependencies ----------------------------------------------------------


def check_fails(vmm, fn, want):
    before = vmm.snapshot()
    assert errno_of(fn) == want
    assert vmm.snapshot() == before


def test_viommu_alloc_errors_change_nothing():
    vmm = Vmm()
    p = vmm.parent()
    plain = vmm.hwpt_alloc(vmm.ioas)
    check_fails(vmm, lambda: vmm.viommu(p, flags=1), EOPNOTSUPP)
    check_fails(vmm, lambda: vmm.viommu(p, vtype=u.IOMMU_VIOMMU_TYPE_DEFAULT), EOPNOTSUPP)
    check_fails(vmm, lambda: vmm.viommu(p, vtype=u.IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV),
                EOPNOTSUPP)
    check_fails(vmm, lambda: vmm.ioctl(u.IOMMU_VIOMMU_ALLOC, u.IommuViommuAlloc(
        dev_id=999, hwpt_id=p, type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)), ENOENT)
    check_fails(vmm, lambda: vmm.viommu(vmm.ioas), ENOENT)
    check_fails(vmm, lambda: vmm.viommu(plain), EINVAL)
    v = vmm.viommu(p)
    assert vmm.ctx.objects[v].kind == "viommu" and vmm.ctx.objects[v].hwpt.id == p


def test_viommu_needs_an_smmu_that_nests():
    vmm = Vmm(smmu="s1", ndev=1)
    plain = vmm.hwpt_alloc(vmm.ioas)
    check_fails(vmm, lambda: vmm.viommu(plain), EOPNOTSUPP)


def test_vdevice_errors_change_nothing():
    vmm = Vmm()
    p = vmm.parent()
    v = vmm.viommu(p)
    vmm.vdevice(v, VSID)
    check_fails(vmm, lambda: vmm.vdevice(v, VSID, dev=1), EEXIST)     # id taken
    check_fails(vmm, lambda: vmm.vdevice(v, VSID2, dev=0), EEXIST)    # device has one
    check_fails(vmm, lambda: vmm.vdevice(999, VSID2, dev=1), ENOENT)
    check_fails(vmm, lambda: vmm.vdevice(p, VSID2, dev=1), ENOENT)    # not a vIOMMU
    check_fails(vmm, lambda: vmm.ioctl(u.IOMMU_VDEVICE_ALLOC, u.IommuVdeviceAlloc(
        viommu_id=v, dev_id=999, virt_id=VSID2)), ENOENT)
    vd2 = vmm.vdevice(v, VSID2, dev=1)
    viommu = vmm.ctx.objects[v]
    assert {s: d.idev.id for s, d in viommu.vdevs.items()} == {
        VSID: vmm.dev_ids[0], VSID2: vmm.dev_ids[1]}
    assert vmm.ctx.objects[vd2].virt_id == VSID2


def test_nested_hwpt_errors_change_nothing():
    vmm = Vmm()
    p = vmm.parent()
    v = vmm.viommu(p)
    good = pack(ste_words(5, ctxptr=CD_IPA)[:2])
    s2_config = pack(ste_words(6)[:2])                           # Config S2: not the guest's
    check_fails(vmm, lambda: vmm.hwpt_alloc(v, data=s2_config), EIO)
    check_fails(vmm, lambda: vmm.hwpt_alloc(v, data=good,
                                            data_type=u.IOMMU_HWPT_DATA_VTD_S1), EINVAL)
    check_fails(vmm, lambda: vmm.hwpt_alloc(v, data=good[:8]), EINVAL)
    check_fails(vmm, lambda: vmm.hwpt_alloc(v, data=good + b"\1"), E2BIG)
    check_fails(vmm, lambda: vmm.hwpt_alloc(v, data=good, flags=u.IOMMU_HWPT_ALLOC_PASID),
                EOPNOTSUPP)
    n = vmm.hwpt_alloc(v, data=good + bytes(8))                  # zero tail is fine
    hw = vmm.ctx.objects[n]
    assert hw.kind == "hwpt_nested" and hw.viommu is vmm.ctx.objects[v]
    assert hw.parent.id == p and hw.domain.vsmmu is vmm.ctx.objects[v]


def test_attaching_a_translating_nested_hwpt_needs_a_vdevice():
    vmm = Vmm()
    p = vmm.parent()
    v = vmm.viommu(p)
    n = vmm.nested(v)
    vmm.attach(p)
    check_fails(vmm, lambda: vmm.attach(n), ENOENT)
    # An abort vSTE may be attached without one (no vmaster: events stay the host's).
    abort = vmm.nested(v, vste=[1, 0])
    vmm.attach(abort)
    assert vmm.k.smmu.masters[vmm.k.pci.devices[0]].vmaster is None
    vmm.vdevice(v, VSID)
    vmm.attach(n)
    master = vmm.k.smmu.masters[vmm.k.pci.devices[0]]
    assert master.vmaster == (vmm.ctx.objects[v], VSID)


def test_veventq_errors_change_nothing():
    vmm = Vmm().full()
    check_fails(vmm, lambda: vmm.veventq(vmm.v, depth=0), EINVAL)
    check_fails(vmm, lambda: vmm.veventq(vmm.v, vtype=u.IOMMU_VEVENTQ_TYPE_DEFAULT),
                EOPNOTSUPP)
    check_fails(vmm, lambda: vmm.veventq(999), ENOENT)
    check_fails(vmm, lambda: vmm.ioctl(u.IOMMU_VEVENTQ_ALLOC, u.IommuVeventqAlloc(
        viommu_id=vmm.v, type=1, veventq_depth=1, flags=1)), EOPNOTSUPP)
    vmm.veventq(vmm.v)
    check_fails(vmm, lambda: vmm.veventq(vmm.v), EEXIST)


def test_destroy_order_follows_dependencies():
    vmm = Vmm().full()
    qid, qf = vmm.veventq(vmm.v)

    def destroy(oid):
        return errno_of(vmm.ioctl, u.IOMMU_DESTROY, u.IommuDestroy(id=oid))

    for oid in (vmm.v, vmm.p):
        check_fails(vmm, lambda oid=oid: vmm.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=oid)),
                    EBUSY)
    check_fails(vmm, lambda: vmm.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=qid)), EBUSY)
    qf.close()                                                    # the file's hold goes
    assert destroy(qid) is None
    vmm.attach(vmm.p)                                             # leave the nested HWPT
    assert destroy(vmm.n) is None
    assert destroy(vmm.v) == EBUSY                                # the vDEVICE
    assert destroy(vmm.vd) is None
    assert destroy(vmm.v) is None
    assert vmm.ctx.objects[vmm.p].users == 1                      # the device only
    # A fault now goes to the host (no vmaster on a paging domain).
    assert not vmm.m.bus.dma_read(vmm.rid(), 0x7000_0000).ok
    assert vmm.k.smmu.events[-1].sid == vmm.rid()


def test_close_frees_everything():
    vmm = Vmm().full()
    k = vmm.k
    qid, qf = vmm.veventq(vmm.v)
    vmid = phys_vmid(vmm)
    assert vmid in k.smmu.vmid_ida.used
    for f in vmm.devs:
        f.close()
    vmm.iommufd.close()
    # The vEVENTQ's file still holds the context (iommufd_ctx_get): nothing freed yet.
    assert vmm.ctx.objects
    qf.close()
    assert not vmm.ctx.objects
    assert vmid not in k.smmu.vmid_ida.used
    assert not k.user_mm.pinned


# -- property: mutated guest commands ----------------------------------------------------------

ALLOWED_TLBI = {0x10, 0x11, 0x12, 0x13}
OPS = ["TLBI_NH_ALL", "TLBI_NH_ASID", "TLBI_NH_VA", "TLBI_NH_VAA", "TLBI_NSNH_ALL",
       "CFGI_CD", "CFGI_CD_ALL", "ATC_INV"]


@st.composite
def guest_cmds(draw):
    """Valid commands, then some mutated field by field."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(OPS))
        c = cmd(op, sid=VSID, asid=draw(st.integers(0, 0xFFFF)),
                vmid=draw(st.integers(0, 0xFFFF)),
                addr=draw(st.integers(0, (1 << 48) - 1)), leaf=draw(st.booleans()))
        d0, d1 = c
        field = draw(st.sampled_from(["none"] * 6 + ["opcode", "sid", "vmid", "d1"]))
        if field == "opcode":
            # Any opcode; the SMMU-supported ones the guest may not use, and ATC_INV
            # (allowed by Linux, illegal on this SMMU without ATS), more often.
            d0 = d0 & ~0xFF | draw(st.one_of(st.sampled_from([0x40, 0x03, 0x04, 0x28, 0x2A,
                                                               0x46]),
                                             st.integers(0, 0xFF)))
        elif field == "sid":
            d0 = d0 & 0xFFFF_FFFF | draw(st.sampled_from([VSID, VSID2, 0, 0xFFFF_FFFF])) << 32
        elif field == "vmid":
            d0 = d0 & ~(0xFFFF << 32) | draw(st.integers(0, 0xFFFF)) << 32
        elif field == "d1":
            d1 = draw(st.integers(0, (1 << 64) - 1))
        event(f"mutated {field}")
        out.append((d0, d1))
    return out


def expected_conversion(d0, d1, vmid, psid):
    """Linux's arm_vsmmu_convert_user_cmd() rules; None where it is EIO."""
    op = d0 & 0xFF
    if op == 0x30:
        return 0x10 | vmid << 32, 0
    if op in ALLOWED_TLBI:
        return d0 & ~(0xFFFF << 32) | vmid << 32, d1
    if op in (0x05, 0x06, 0x40):
        return (d0 & 0xFFFF_FFFF | psid << 32, d1) if d0 >> 32 == VSID else None
    return None


_VMM = {}


@settings(max_examples=100, deadline=None)
@given(guest_cmds())
def test_mutated_guest_commands_follow_linux_rules(cmds):
    if "vmm" not in _VMM:
        _VMM["vmm"] = Vmm(ndev=1).full()
        _VMM["seen"] = spy(_VMM["vmm"].k)
    vmm, seen = _VMM["vmm"], _VMM["seen"]
    seen.clear()
    vmid, psid = phys_vmid(vmm), vmm.rid()
    conv = [expected_conversion(d0, d1, vmid, psid) for d0, d1 in cmds]
    first_bad = next((i for i, c in enumerate(conv) if c is None), len(cmds))
    good = conv[:first_bad]
    atc = any(c[0] & 0xFF == 0x40 for c in good)       # the SMMU has no ATS: illegal there
    inv, err = vmm.invalidate(vmm.v, cmds)
    issued = [c for batch in seen for c in batch]
    assert issued == good
    if atc:
        event("ATC_INV refused by the SMMU")
        assert err == EIO and inv.entry_num == first_bad - 1
    elif first_bad < len(cmds):
        event("EIO from conversion")
        assert err == EIO and inv.entry_num == first_bad
    else:
        assert err is None and inv.entry_num == len(cmds)


# -- more paths --------------------------------------------------------------------------------


def test_bad_guest_cd_is_a_vevent_and_cd_fetch_fault_is_the_hosts():
    """C_BAD_CD is one of the events arm_smmu_handle_event() forwards; a CD whose
    IPA stage 2 does not map is reported as that stage-2 fault, class CD: the
    host's."""
    vmm = Vmm()
    p = vmm.parent()
    v = vmm.viommu(p)
    vmm.vdevice(v, VSID)
    qid, qf = vmm.veventq(v)
    vmm.guest.write(CD_IPA + 0x40, bytes(64))                    # a CD with V = 0
    n = vmm.nested(v, vste=ste_words(5, ctxptr=CD_IPA + 0x40)[:2])
    vmm.attach(n)
    assert not vmm.m.bus.dma_read(vmm.rid(), IOVA).ok
    data = qf.read(4096)
    ev = evt_fields(data[8:40])
    assert (ev["type"], ev["sid"]) == (0x0A, VSID)
    n2 = vmm.nested(v, vste=ste_words(5, ctxptr=GPA + GUEST_PAGES * PAGE)[:2])
    vmm.attach(n2)
    host = len(vmm.k.smmu.events)
    assert not vmm.m.bus.dma_read(vmm.rid(), IOVA).ok
    assert qf.read(4096) == b""
    (ev,) = vmm.k.smmu.events[host:]
    assert (ev.type, ev.sid, ev.s2, ev.event_class) == (F_TRANSLATION, vmm.rid(), True, "CD")


def test_unbinding_the_device_destroys_its_vdevice():
    vmm = Vmm().full()
    viommu = vmm.ctx.objects[vmm.v]
    vmm.devs[0].close()                                          # VFIO unbinds the device
    assert vmm.vd not in vmm.ctx.objects and vmm.dev_ids[0] not in vmm.ctx.objects
    assert viommu.vdevs == {} and vmm.ctx.objects[vmm.n].users == 0
    assert errno_of(vmm.ioctl, u.IOMMU_DESTROY, u.IommuDestroy(id=vmm.n)) is None
    assert errno_of(vmm.ioctl, u.IOMMU_DESTROY, u.IommuDestroy(id=vmm.v)) is None
    assert errno_of(vmm.ioctl, u.IOMMU_DESTROY, u.IommuDestroy(id=vmm.p)) is None


def test_vdevice_id_of_an_unbound_device_is_not_reused_before_release():
    # Linux 6.17: the unbind leaves a tombstone at the vDEVICE's id
    # (iommufd_object_tombstone_user): lookups are ENOENT and no new object gets it.
    vmm = Vmm().full()
    vd = vmm.vd
    vmm.devs[0].close()
    assert errno_of(vmm.ioctl, u.IOMMU_DESTROY, u.IommuDestroy(id=vd)) == ENOENT
    ids = []
    for _ in range(vd + 2):
        a = u.IommuIoasAlloc()
        vmm.ioctl(u.IOMMU_IOAS_ALLOC, a)
        ids.append(a.out_ioas_id)
    assert vd not in ids and vd not in vmm.ctx.objects
    assert errno_of(vmm.ioctl, u.IOMMU_DESTROY, u.IommuDestroy(id=vd)) == ENOENT


def test_invalidate_from_unreadable_memory_is_efault():
    vmm = Vmm().full()
    inv = u.IommuHwptInvalidate(hwpt_id=vmm.v, data_uptr=0x10_0000, entry_len=16, entry_num=2,
                                data_type=u.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3)
    seen = spy(vmm.k)
    assert errno_of(vmm.ioctl, u.IOMMU_HWPT_INVALIDATE, inv) == errno.EFAULT
    assert inv.entry_num == 0 and seen == []


def test_veventq_file_is_read_only_and_released_by_close():
    vmm = Vmm().full()
    qid, qf = vmm.veventq(vmm.v)
    assert errno_of(qf.write, b"x" * 8) == EINVAL
    assert vmm.ctx.objects[qid].users == 1
    qf.close()
    assert vmm.ctx.objects[qid].users == 0


def test_viommu_on_x86_is_eopnotsupp():
    """VT-d offers no ARM_SMMUV3 vIOMMU (get_viommu_size() is 0 for it)."""
    from pymsi.machine import X86Pc
    k = X86Pc(remapping=True, devices=[{"msix": 2}]).boot()
    fd = k.open("/dev/iommu")
    pdev = k.pci.devices[0]
    k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
    f = k.open("/dev/vfio/devices/vfio0")
    b = V.VfioDeviceBindIommufd(iommufd=fd.fd)
    f.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
    a = u.IommuIoasAlloc()
    fd.ioctl(u.IOMMU_IOAS_ALLOC, a)
    h = u.IommuHwptAlloc(dev_id=b.out_devid, pt_id=a.out_ioas_id)
    fd.ioctl(u.IOMMU_HWPT_ALLOC, h)
    v = u.IommuViommuAlloc(dev_id=b.out_devid, hwpt_id=h.out_hwpt_id,
                           type=u.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)
    before = dict(fd.private_data.objects)
    assert errno_of(fd.ioctl, u.IOMMU_VIOMMU_ALLOC, v) == EOPNOTSUPP
    assert fd.private_data.objects == before and v.out_viommu_id == 0
