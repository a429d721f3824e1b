"""iommufd devices and HW page tables, driven through the VFIO cdev and /dev/iommu.

Expected values come from Linux (drivers/iommu/iommufd/device.c, hw_pagetable.c,
main.c, drivers/vfio/device_cdev.c, drivers/vfio/iommufd.c and the uapi headers)
and the SMMUv3 architecture: VFIO_DEVICE_BIND_IOMMUFD gives the device object
the lowest free id; a device with no IOMMU group is ENODEV, one whose MSIs are
not isolated EPERM unless allow_unsafe_interrupts; attaching to an IOAS id
creates (or reuses) an automatic paging HWPT whose id comes back in ``pt_id``
and which dies with its last device; attaching while attached replaces,
all or nothing; the device's reserved regions (arm-smmu-v3: the SW_MSI window
[0x8000000, 0x80fffff]) become reserved IOVA of the IOAS while attached
(EADDRINUSE over a mapping); detach returns to blocked DMA (SMMU: abort STE,
a DMA is terminated without an event record); a bound device object and an IOAS in use
are EBUSY for IOMMU_DESTROY.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pymsi.kernel.base import KernelError
from pymsi.kernel.iommu import DomainType
from pymsi.kernel.iommufd import IommufdCtx, IommufdMsiHooks
from pymsi.machine import ArmVirt, X86Pc
from pymsi.uapi import iommufd as u
from pymsi.uapi import vfio as V

from kernel_util import errno_of

PAGE = 4096
U64_MAX = 2**64 - 1
RW = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE
FIXED = u.IOMMU_IOAS_MAP_FIXED_IOVA
SW_MSI = (0x0800_0000, 0x080F_FFFF)          # arm-smmu-v3's MSI_IOVA_BASE / _LENGTH
ENOENT, EBUSY, EINVAL, ENODEV, EPERM, EADDRINUSE, EOPNOTSUPP = (
    errno.ENOENT, errno.EBUSY, errno.EINVAL, errno.ENODEV, errno.EPERM, errno.EADDRINUSE,
    errno.EOPNOTSUPP)


class Rig:
    """A machine, its kernel, /dev/iommu and the VFIO cdev of each function."""

    def __init__(self, m, n=1):
        self.m, self.k = m, m.boot()
        self.ictx = self.k.open("/dev/iommu")
        self.files = []
        for i in range(n):
            pdev = self.k.pci.devices[i]
            self.k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
            self.k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
            self.files.append(self.k.open(f"/dev/vfio/devices/vfio{i}"))

    def rid(self, i=0):
        return self.k.pci.devices[i].rid

    def ioas(self):
        a = u.IommuIoasAlloc()
        self.ictx.ioctl(u.IOMMU_IOAS_ALLOC, a)
        return a.out_ioas_id

    def map(self, ioas, iova, length=PAGE, flags=RW | FIXED):
        va = self.k.mmap(length)
        self.ictx.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
            flags=flags, ioas_id=ioas, user_va=va, length=length, iova=iova))
        return va

    def bind(self, i=0, ictx=None):
        b = V.VfioDeviceBindIommufd(iommufd=(ictx or self.ictx).fd)
        self.files[i].ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
        return b.out_devid

    def attach(self, pt_id, i=0):
        a = V.VfioDeviceAttachIommufdPt(pt_id=pt_id)
        self.files[i].ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a)
        return a.pt_id

    def detach(self, i=0):
        self.files[i].ioctl(V.VFIO_DEVICE_DETACH_IOMMUFD_PT, V.VfioDeviceDetachIommufdPt())

    def ranges(self, ioas):
        va = self.k.mmap(PAGE)
        r = u.IommuIoasIovaRanges(ioas_id=ioas, num_iovas=16, allowed_iovas=va)
        self.ictx.ioctl(u.IOMMU_IOAS_IOVA_RANGES, r)
        raw = self.k.user_read(va, 16 * r.num_iovas)
        return [(int.from_bytes(raw[i:i + 8], "little"), int.from_bytes(raw[i + 8:i + 16],
                                                                          "little"))
                for i in range(0, len(raw), 16)]

    def destroy(self, oid):
        self.ictx.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=oid))

    def events(self):
        return self.m.smmu.stats["events_recorded"]

    def dma_reaches(self, iova, va, i=0):
        """A device write at ``iova`` lands in the user page at ``va`` (and reads back)."""
        val = 0x5A5A0000 | (iova >> 12 & 0xFFFF)
        r = self.m.bus.dma_write(self.rid(i), iova, val, 4)
        if not r.ok:
            return False
        back = self.m.bus.dma_read(self.rid(i), iova, 4)
        return int.from_bytes(self.k.user_read(va, 4), "little") == val and back.value == val


@pytest.fixture
def rig():
    return Rig(ArmVirt(devices=[{"msix": 4}] * 2, msi_design="sw-msi"), n=2)  # Linux 6.15


# -- bind ---------------------------------------------------------------------------------


def test_bind_gives_the_lowest_free_id_and_claims_dma(rig):
    ioas = rig.ioas()                                 # id 1
    pdev = rig.k.pci.devices[0]
    assert rig.bind(0) == ioas + 1
    assert rig.bind(1) == ioas + 2
    group = pdev.iommu_group
    # DMA ownership: the group left its default (DMA API) domain for the blocked one.
    assert group.domain.type == DomainType.BLOCKED
    # The bound device object is held by VFIO: IOMMU_DESTROY on it is EBUSY.
    assert errno_of(rig.destroy, ioas + 1) == EBUSY
    # The device ioctls now work (access granted).
    assert rig.files[0].ioctl(V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()) == 0


def test_bind_refuses_a_non_iommufd_file_and_a_second_file(rig):
    ev = rig.k.eventfd()
    assert errno_of(rig.files[0].ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                    V.VfioDeviceBindIommufd(iommufd=ev.fd)) == errno.EBADFD
    rig.bind(0)
    # The cdev allows one bound open of the device (vfio_df_open: EINVAL).
    other = rig.k.open("/dev/vfio/devices/vfio0")
    assert errno_of(other.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                    V.VfioDeviceBindIommufd(iommufd=rig.ictx.fd)) == EINVAL
    assert other.f_count == 1 and rig.ictx.f_count == 2   # only the bound file holds it


def test_bind_without_an_iommu_group_is_enodev():
    r = Rig(ArmVirt(smmu=None, devices=[{"msix": 4}]))
    before = dict(r.ictx.private_data.objects)
    assert errno_of(r.bind, 0) == ENODEV
    assert r.ictx.private_data.objects == before and r.ictx.f_count == 1
    assert errno_of(r.files[0].ioctl, V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()) == EINVAL


# -- attach / DMA / detach ------------------------------------------------------------------


def test_attach_to_an_ioas_makes_an_auto_hwpt_and_dma_reaches_the_pinned_page(rig):
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    devid = rig.bind(0)
    pt = rig.attach(ioas)
    assert pt == devid + 1                            # the auto HWPT, lowest free id
    assert rig.k.iommufd.device(rig.ictx, devid).hwpt.id == pt
    assert rig.dma_reaches(0x10_0000, va)
    # Outside the IOAS: the SMMU terminates the access and records an event.
    n = rig.events()
    assert not rig.m.bus.dma_write(rig.rid(), 0x20_0000, 1, 4).ok
    assert rig.events() == n + 1
    # A mapping added after attach is reachable at once.
    va2 = rig.map(ioas, 0x30_0000)
    assert rig.dma_reaches(0x30_0000, va2)
    # The auto HWPT and the IOAS are in use.
    assert errno_of(rig.destroy, pt) == EBUSY
    assert errno_of(rig.destroy, ioas) == EBUSY
    # Detach: back to blocked DMA (an abort STE: Config 0b000 terminates the access
    # without recording an event), the auto HWPT is gone with its last device.
    rig.detach()
    n = rig.events()
    assert not rig.m.bus.dma_write(rig.rid(), 0x10_0000, 1, 4).ok
    assert rig.events() == n
    assert errno_of(rig.destroy, pt) == ENOENT
    rig.detach()                                      # detaching again: nothing to do
    rig.destroy(ioas)                                 # nothing uses it any more


def test_two_devices_share_the_auto_hwpt_of_an_ioas(rig):
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    rig.bind(0), rig.bind(1)
    pt0 = rig.attach(ioas, 0)
    assert rig.attach(ioas, 1) == pt0
    assert rig.dma_reaches(0x10_0000, va, 1)
    rig.detach(0)
    assert rig.dma_reaches(0x10_0000, va, 1)          # still used by device 1
    rig.detach(1)
    assert errno_of(rig.destroy, pt0) == ENOENT


def test_reserved_regions_follow_the_attachment(rig):
    ioas = rig.ioas()
    full = [(0, U64_MAX)]
    assert rig.ranges(ioas) == full
    rig.bind(0)
    rig.attach(ioas)
    assert rig.ranges(ioas) == [(0, SW_MSI[0] - 1), (SW_MSI[1] + 1, U64_MAX)]
    # A fixed map into the window is refused while it is reserved.
    va = rig.k.mmap(PAGE)
    assert errno_of(rig.ictx.ioctl, u.IOMMU_IOAS_MAP, u.IommuIoasMap(
        flags=RW | FIXED, ioas_id=ioas, user_va=va, length=PAGE, iova=SW_MSI[0])) == EINVAL
    rig.detach()
    assert rig.ranges(ioas) == full


def test_attach_over_a_mapping_in_the_msi_window_is_eaddrinuse_and_changes_nothing(rig):
    ioas = rig.ioas()
    rig.map(ioas, SW_MSI[0] + 0x1000)
    devid = rig.bind(0)
    group = rig.k.pci.devices[0].iommu_group
    objs = dict(rig.ictx.private_data.objects)
    assert errno_of(rig.attach, ioas) == EADDRINUSE
    assert rig.ictx.private_data.objects == objs
    assert rig.k.iommufd.device(rig.ictx, devid).hwpt is None
    assert group.domain.type == DomainType.BLOCKED
    assert rig.ranges(ioas) == [(0, U64_MAX)]


def test_replace_moves_the_device_between_ioases_with_nothing_lost(rig):
    a, b = rig.ioas(), rig.ioas()
    va_a = rig.map(a, 0x10_0000)
    va_b = rig.map(b, 0x40_0000)
    rig.bind(0)
    pt_a = rig.attach(a)
    assert rig.dma_reaches(0x10_0000, va_a)
    pt_b = rig.attach(b)                              # attach while attached: replace
    assert pt_b != pt_a
    assert errno_of(rig.destroy, pt_a) == ENOENT      # the old auto HWPT died
    assert rig.dma_reaches(0x40_0000, va_b)
    assert not rig.m.bus.dma_write(rig.rid(), 0x10_0000, 1, 4).ok
    assert rig.ranges(a) == [(0, U64_MAX)]            # reservations moved with it
    assert (0, SW_MSI[0] - 1) in rig.ranges(b)
    # A failing replace (b's window clash in c) leaves the device on b.
    c = rig.ioas()
    rig.map(c, SW_MSI[0])
    assert errno_of(rig.attach, c) == EADDRINUSE
    assert rig.dma_reaches(0x40_0000, va_b)
    assert rig.attach(b) == pt_b                      # same IOAS: same HWPT


def test_attach_validation(rig):
    ioas = rig.ioas()
    devid = rig.bind(0)
    f = rig.files[0]
    small = V.VfioDeviceAttachIommufdPt(pt_id=ioas)
    small.argsz = 8
    assert errno_of(f.ioctl, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, small) == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                    V.VfioDeviceAttachIommufdPt(flags=2, pt_id=ioas)) == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                    V.VfioDeviceAttachIommufdPt(flags=V.VFIO_DEVICE_ATTACH_PASID,
                                                pt_id=ioas)) == EOPNOTSUPP
    assert errno_of(rig.attach, 99) == ENOENT
    assert errno_of(rig.attach, devid) == EINVAL      # a device is not a page table
    d = V.VfioDeviceDetachIommufdPt()
    d.argsz = 4
    assert errno_of(f.ioctl, V.VFIO_DEVICE_DETACH_IOMMUFD_PT, d) == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                    V.VfioDeviceDetachIommufdPt(flags=4)) == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                    V.VfioDeviceDetachIommufdPt(flags=V.VFIO_DEVICE_DETACH_PASID)) == EOPNOTSUPP
    assert rig.k.iommufd.device(rig.ictx, devid).hwpt is None


# -- tear-down -------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["device-first", "iommufd-first"])
def test_close_in_either_order_leaks_nothing(rig, order):
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    rig.bind(0)
    rig.attach(ioas)
    assert rig.dma_reaches(0x10_0000, va)
    group = rig.k.pci.devices[0].iommu_group
    first, second = (rig.files[0], rig.ictx) if order == "device-first" else \
        (rig.ictx, rig.files[0])
    first.close()
    if order == "iommufd-first":
        # The device file holds the context: the device still reaches its page.
        assert rig.dma_reaches(0x10_0000, va)
    second.close()
    assert rig.k.user_mm.pinned == {}
    assert group.owner is None and group.domain is group.default_domain
    assert not rig.m.bus.dma_write(rig.rid(), 0x10_0000, 1, 4).ok
    # The device can be bound again by a new context.
    r2 = rig.k.open("/dev/iommu")
    f2 = rig.k.open("/dev/vfio/devices/vfio0")
    f2.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, V.VfioDeviceBindIommufd(iommufd=r2.fd))


# -- HWPT_ALLOC: paging, nest parent, nested ------------------------------------------------

CFG_ABORT, CFG_BYPASS, CFG_S1, CFG_S2, CFG_NESTED = 0b000, 0b100, 0b101, 0b110, 0b111


def ste_of(rig, i=0):
    """The STE the SMMU uses for the function (StreamID = requester ID)."""
    addr = rig.k.smmu._ste_addr(rig.rid(i))
    return [rig.k.ram.read_u64(addr + 8 * j) for j in range(8)]


def config(ste):
    return ste[0] >> 1 & 7


def hwpt_alloc(rig, devid, pt_id, flags=0, data=b"", data_type=None):
    va = 0
    if data:
        va = rig.k.mmap(PAGE)
        rig.k.user_write(va, data)
    if data_type is None:
        data_type = u.IOMMU_HWPT_DATA_ARM_SMMUV3 if data else u.IOMMU_HWPT_DATA_NONE
    a = u.IommuHwptAlloc(flags=flags, dev_id=devid, pt_id=pt_id, data_type=data_type,
                         data_len=len(data), data_uptr=va)
    rig.ictx.ioctl(u.IOMMU_HWPT_ALLOC, a)
    return a.out_hwpt_id


def vste_bytes(w0, w1):
    return w0.to_bytes(8, "little") + w1.to_bytes(8, "little")


@pytest.fixture
def nrig():
    return Rig(ArmVirt(smmu="nested", devices=[{"msix": 4}] * 2, msi_design="sw-msi"), n=2)


def test_hwpt_paging_and_nest_parent_on_an_ioas(nrig):
    rig = nrig
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    devid = rig.bind(0)
    s1 = hwpt_alloc(rig, devid, ioas)
    s2 = hwpt_alloc(rig, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    assert (s1, s2) == (devid + 1, devid + 2)
    assert rig.attach(s1) == s1
    assert config(ste_of(rig)) == CFG_S1        # an SMMU with both stages: stage 1 paging
    assert rig.dma_reaches(0x10_0000, va)
    assert rig.attach(s2) == s2                 # replace: the STE becomes stage 2
    assert config(ste_of(rig)) == CFG_S2
    assert rig.dma_reaches(0x10_0000, va)
    # Explicitly allocated HWPTs survive their devices; destroyable once unused.
    assert errno_of(rig.destroy, s2) == EBUSY
    rig.destroy(s1)
    rig.detach()
    rig.destroy(s2)
    assert config(ste_of(rig)) == CFG_ABORT


def test_hwpt_alloc_flags_and_targets(nrig):
    rig = nrig
    ioas = rig.ioas()
    devid = rig.bind(0)
    objs = dict(rig.ictx.private_data.objects)
    for flags in (u.IOMMU_HWPT_ALLOC_DIRTY_TRACKING, u.IOMMU_HWPT_ALLOC_PASID,
                  u.IOMMU_HWPT_FAULT_ID_VALID):
        assert errno_of(hwpt_alloc, rig, devid, ioas, flags) == EOPNOTSUPP
    assert errno_of(hwpt_alloc, rig, devid, 99) == EINVAL          # no such pt_id
    assert errno_of(hwpt_alloc, rig, devid, devid) == EINVAL       # a device is no pt
    assert errno_of(hwpt_alloc, rig, ioas, ioas) == ENOENT         # dev_id not a device
    a = u.IommuHwptAlloc(dev_id=devid, pt_id=ioas, data_type=u.IOMMU_HWPT_DATA_ARM_SMMUV3)
    assert errno_of(rig.ictx.ioctl, u.IOMMU_HWPT_ALLOC, a) == EINVAL   # type without data
    assert rig.ictx.private_data.objects == objs


def test_nest_parent_needs_both_stages():
    rig = Rig(ArmVirt(smmu="s2", devices=[{"msix": 4}]))
    ioas = rig.ioas()
    devid = rig.bind(0)
    assert errno_of(hwpt_alloc, rig, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT) == EOPNOTSUPP
    pt = hwpt_alloc(rig, devid, ioas)                # plain paging: stage 2 here
    rig.attach(pt)
    assert config(ste_of(rig)) == CFG_S2


def test_nested_hwpt_from_a_vste(nrig):
    rig = nrig
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    devid = rig.bind(0)
    parent = hwpt_alloc(rig, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    auto = rig.attach(ioas)
    # Only a nest parent may carry a nested HWPT; an IOAS takes no driver data.
    bypass = vste_bytes(1 | CFG_BYPASS << 1, 0)
    assert errno_of(hwpt_alloc, rig, devid, auto, 0, bypass) == EINVAL
    assert errno_of(hwpt_alloc, rig, devid, ioas, 0, bypass) == EOPNOTSUPP
    nested = hwpt_alloc(rig, devid, parent, 0, bypass)
    rig.attach(nested)
    # Stage 1 bypassed by the guest: an S2-only STE, the IOVA is an IPA of the parent.
    assert config(ste_of(rig)) == CFG_S2
    assert rig.dma_reaches(0x10_0000, va)
    # A stage-1 vSTE: a nested STE carrying the guest's CD table pointer.
    s1 = hwpt_alloc(rig, devid, parent, 0, vste_bytes(1 | CFG_S1 << 1 | 0x20_0000, 0))
    rig.attach(s1)
    ste = ste_of(rig)
    assert config(ste) == CFG_NESTED and ste[0] & 0x000F_FFFF_FFFF_FFC0 == 0x20_0000
    rig.attach(nested)
    rig.destroy(s1)
    assert errno_of(rig.destroy, parent) == EBUSY     # the nested HWPT holds it
    # A guest that aborts: DMA is terminated.
    abort = hwpt_alloc(rig, devid, parent, 0, vste_bytes(1 | CFG_ABORT << 1, 0))
    rig.attach(abort)
    assert not rig.m.bus.dma_write(rig.rid(), 0x10_0000, 1, 4).ok
    rig.attach(nested)
    assert rig.dma_reaches(0x10_0000, va)
    # Reserved IOVA of a nested attachment lives in the parent's IOAS.
    assert (0, SW_MSI[0] - 1) in rig.ranges(ioas)
    rig.detach()
    assert rig.ranges(ioas) == [(0, U64_MAX)]
    rig.destroy(nested), rig.destroy(abort), rig.destroy(parent)


def test_nested_data_layout_checks(nrig):
    rig = nrig
    ioas = rig.ioas()
    devid = rig.bind(0)
    parent = hwpt_alloc(rig, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    good = vste_bytes(1 | CFG_BYPASS << 1, 0)
    objs = dict(rig.ictx.private_data.objects)
    # Another data type: EINVAL; too short: EINVAL; longer with non-zero tail: E2BIG.
    assert errno_of(hwpt_alloc, rig, devid, parent, 0, good, u.IOMMU_HWPT_DATA_VTD_S1) == EINVAL
    assert errno_of(hwpt_alloc, rig, devid, parent, 0, good[:12]) == EINVAL
    assert errno_of(hwpt_alloc, rig, devid, parent, 0, good + b"\1") == errno.E2BIG
    assert errno_of(hwpt_alloc, rig, devid, parent, u.IOMMU_HWPT_ALLOC_NEST_PARENT,
                    good) == EOPNOTSUPP
    assert rig.ictx.private_data.objects == objs
    hwpt_alloc(rig, devid, parent, 0, good + bytes(8))  # a zero tail is fine


# The bits a guest owns in a vSTE (Linux's arm-smmu-v3 nesting allowlist, field positions
# from the SMMUv3 STE layout): dword 0 V[0], Config[3:1], S1Fmt[5:4], S1ContextPtr[51:6],
# S1CDMax[63:59]; dword 1 S1DSS[1:0], S1CIR[3:2], S1COR[5:4], S1CSH[7:6], S1STALLD[27],
# and EATS[29:28] of which only 0b00 (abort) and 0b01 (full ATS) are accepted: bit 28 alone
# is the guest's, bit 29 (EATS 0b10 / 0b11) is refused.
OWN0 = 0xF80F_FFFF_FFFF_FFFF
OWN1 = 0x1800_00FF


UNOWNED0 = [b for b in range(64) if not OWN0 >> b & 1]
UNOWNED1 = [b for b in range(64) if not OWN1 >> b & 1]


@settings(max_examples=100, deadline=None)
@given(cfg=st.sampled_from([CFG_ABORT, CFG_BYPASS, CFG_S1]),
       ctx=st.integers(0, (1 << 46) - 1), cdmax=st.integers(0, 31), fmt=st.integers(0, 3),
       w1=st.integers(0, OWN1), mutation=st.sampled_from(["none", "bit0", "bit1", "config"]),
       bit0=st.sampled_from(UNOWNED0), bit1=st.sampled_from(UNOWNED1),
       bad_cfg=st.sampled_from([1, 2, 3, CFG_S2, CFG_NESTED]))
def test_nested_vste_validation_property(cfg, ctx, cdmax, fmt, w1, mutation, bit0, bit1,
                                         bad_cfg):
    rig = _NRIG.get()
    w0 = 1 | cfg << 1 | fmt << 4 | ctx << 6 | cdmax << 59
    w1 &= OWN1
    expect_ok = mutation == "none"
    if mutation == "bit0":
        w0 |= 1 << bit0
    elif mutation == "bit1":
        w1 |= 1 << bit1
    elif mutation == "config":
        w0 = w0 & ~0xE | bad_cfg << 1
    event(f"mutation={mutation}")
    before = dict(rig.ictx.private_data.objects)
    e = errno_of(hwpt_alloc, rig, _NRIG.devid, _NRIG.parent, 0, vste_bytes(w0, w1))
    if expect_ok:
        assert e is None
        new = set(rig.ictx.private_data.objects) - set(before)
        assert len(new) == 1
        rig.destroy(new.pop())
    else:
        assert e == errno.EIO              # invalid STE data, as Linux
        assert rig.ictx.private_data.objects == before
    # V=0: whatever else is set, the vSTE is an abort and is accepted.
    e = errno_of(hwpt_alloc, rig, _NRIG.devid, _NRIG.parent, 0, vste_bytes(w0 & ~1, w1))
    assert e is None
    rig.destroy(max(rig.ictx.private_data.objects))


class _NestedRig:
    """One nested-SMMU machine shared by the property test's examples."""

    rig = None

    def get(self):
        if self.rig is None:
            self.rig = Rig(ArmVirt(smmu="nested", devices=[{"msix": 4}]))
            ioas = self.rig.ioas()
            self.devid = self.rig.bind(0)
            self.parent = hwpt_alloc(self.rig, self.devid, ioas,
                                     u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        return self.rig


_NRIG = _NestedRig()


# -- GET_HW_INFO -----------------------------------------------------------------------------


def hw_info(rig, devid, data_len, flags=0, in_type=0):
    va = rig.k.mmap(PAGE)
    rig.k.user_write(va, b"\xAA" * 64)
    h = u.IommuHwInfo(flags=flags, dev_id=devid, data_len=data_len, data_uptr=va)
    h.in_data_type = in_type
    rig.ictx.ioctl(u.IOMMU_GET_HW_INFO, h)
    return h, rig.k.user_read(va, 64)


def test_get_hw_info_arm_smmuv3(nrig):
    rig = nrig
    devid = rig.bind(0)
    base = rig.m.SMMU
    words = [rig.m.bus.read(base + off, 4) for off in (0, 4, 8, 0xC, 0x10, 0x14, 0x18, 0x1C)]
    h, raw = hw_info(rig, devid, 48)
    assert h.out_data_type == u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    assert h.data_len == 40                           # sizeof(struct iommu_hw_info_arm_smmuv3)
    assert h.out_capabilities == 0
    info = u.IommuHwInfoArmSmmuv3.unpack(raw[:40])
    assert (info.flags, list(info.idr), info.iidr, info.aidr) == (0, words[:6], *words[6:])
    assert raw[40:48] == bytes(8) and raw[48:] == b"\xAA" * 16   # zero-filled up to data_len
    # A short buffer gets a truncated copy and the kernel's length back.
    h, raw = hw_info(rig, devid, 12)
    assert h.data_len == 40 and raw[:12] == info.pack()[:12] and raw[12:] == b"\xAA" * 52
    # Asking for the SMMU's type works, another type is EOPNOTSUPP; unknown flags too.
    h, _ = hw_info(rig, devid, 40, u.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
                   u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
    assert h.out_data_type == u.IOMMU_HW_INFO_TYPE_ARM_SMMUV3
    assert errno_of(hw_info, rig, devid, 40, u.IOMMU_HW_INFO_FLAG_INPUT_TYPE,
                    u.IOMMU_HW_INFO_TYPE_INTEL_VTD) == EOPNOTSUPP
    assert errno_of(hw_info, rig, devid, 40, 2) == EOPNOTSUPP
    assert errno_of(hw_info, rig, 77, 40) == ENOENT


def test_get_hw_info_zero_fills_page_by_page_and_faults_without_allocating(nrig):
    import tracemalloc

    rig = nrig
    devid = rig.bind(0)
    # Two pages mapped: the info, then zeros up to data_len across the page boundary.
    va = rig.k.mmap(2 * PAGE)
    rig.k.user_write(va, b"\xAA" * (2 * PAGE))
    h = u.IommuHwInfo(dev_id=devid, data_len=2 * PAGE - 8, data_uptr=va)
    rig.ictx.ioctl(u.IOMMU_GET_HW_INFO, h)
    raw = rig.k.user_read(va, 2 * PAGE)
    assert h.data_len == 40
    assert raw[40:2 * PAGE - 8] == bytes(2 * PAGE - 48) and raw[-8:] == b"\xAA" * 8
    # A buffer far larger than what is mapped: EFAULT at the first unmapped page, and
    # the kernel never allocates in proportion to data_len (32 MiB asked).
    one = rig.k.mmap(PAGE)
    h = u.IommuHwInfo(dev_id=devid, data_len=32 << 20, data_uptr=one)
    tracemalloc.start()
    try:
        assert errno_of(rig.ictx.ioctl, u.IOMMU_GET_HW_INFO, h) == errno.EFAULT
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert rig.k.user_read(one + 40, 8) == bytes(8)     # the mapped page was written


# -- x86: VT-d groups, interrupt-remapping isolation -----------------------------------------

X86_MSI = (0xFEE0_0000, 0xFEEF_FFFF)      # VT-d's IOMMU_RESV_MSI range


def test_x86_bind_is_eperm_without_interrupt_remapping_unless_unsafe_allowed():
    rig = Rig(X86Pc(remapping=False, devices=[{"msix": 4}]))
    group = rig.k.pci.devices[0].iommu_group
    objs = dict(rig.ictx.private_data.objects)
    assert errno_of(rig.bind, 0) == EPERM
    assert rig.ictx.private_data.objects == objs and group.owner is None
    assert group.domain.type == DomainType.IDENTITY and rig.ictx.f_count == 1
    rig.k.iommufd.allow_unsafe_interrupts = True
    devid = rig.bind(0)
    assert group.owner is not None and group.domain.type == DomainType.BLOCKED
    assert any("not secure" in line for line in rig.k.log)
    assert rig.k.iommufd.device(rig.ictx, devid).dev is rig.k.pci.devices[0]


def test_x86_attach_with_remapping():
    rig = Rig(X86Pc(remapping=True, devices=[{"msix": 4}] * 2), n=2)
    ioas = rig.ioas()
    rig.map(ioas, 0x10_0000)
    devid = rig.bind(0)
    idev = rig.k.iommufd.device(rig.ictx, devid)
    assert idev.hw_msi and idev.sw_msi_start == U64_MAX    # no SW_MSI window on x86
    pt = rig.attach(ioas)
    assert rig.ranges(ioas) == [(0, X86_MSI[0] - 1), (X86_MSI[1] + 1, U64_MAX)]
    domain = rig.k.pci.devices[0].iommu_group.domain
    assert domain.type == DomainType.UNMANAGED and domain.iommufd_hwpt.id == pt
    pa = rig.ictx.private_data.ioas(ioas).iova_to_phys(0x10_0000)
    assert domain.iova_to_phys(0x10_0123) == pa + 0x123
    # The interrupt range cannot be attached over a mapping.
    other = rig.ioas()
    rig.map(other, X86_MSI[0])
    rig.bind(1)
    assert errno_of(rig.attach, other, 1) == EADDRINUSE
    rig.detach()
    assert rig.k.pci.devices[0].iommu_group.domain.type == DomainType.BLOCKED
    assert rig.ranges(ioas) == [(0, U64_MAX)]
    # GET_HW_INFO: the VT-d unit's CAP and ECAP registers.
    h, raw = hw_info(rig, devid, 24)
    assert h.out_data_type == u.IOMMU_HW_INFO_TYPE_INTEL_VTD and h.data_len == 24
    vtd = u.IommuHwInfoVtd.unpack(raw[:24])
    assert vtd.flags == u.IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17   # set on every unit
    base = rig.m.IR_UNIT
    assert (vtd.cap_reg, vtd.ecap_reg) == (rig.m.bus.read(base + 0x08, 8),
                                           rig.m.bus.read(base + 0x10, 8))
    assert vtd.ecap_reg & 1 << 3                      # ECAP.IR: the unit remaps interrupts
    # No nesting on this VT-d model.
    assert errno_of(hwpt_alloc, rig, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT) == EOPNOTSUPP


# -- tear-down with nesting, and vfio-pci unbind while bound ---------------------------------


@pytest.mark.parametrize("order", ["device-first", "iommufd-first"])
def test_close_with_nested_hwpts_frees_every_domain_and_id(nrig, order):
    rig = nrig
    smmu = rig.k.smmu
    asids, vmids = set(smmu.asid_ida.used), set(smmu.vmid_ida.used)
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    d0 = rig.bind(0)
    rig.bind(1)
    parent = hwpt_alloc(rig, d0, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = hwpt_alloc(rig, d0, parent, 0, vste_bytes(1 | CFG_BYPASS << 1, 0))
    rig.attach(nested, 0)
    rig.attach(ioas, 1)                               # device 1 on an auto (stage-1) HWPT
    assert rig.dma_reaches(0x10_0000, va, 0) and rig.dma_reaches(0x10_0000, va, 1)
    domains = [o.domain for o in rig.ictx.private_data.objects.values()
               if hasattr(o, "domain")]
    assert len(domains) == 3
    files = [rig.files[0], rig.files[1], rig.ictx]
    if order == "iommufd-first":
        files = files[::-1]
    for f in files:
        f.close()
    assert rig.k.user_mm.pinned == {}
    for d in domains:                                 # paging freed, nested unlinked
        assert d.freed if hasattr(d, "freed") else d not in d.s2_parent.nested
    assert smmu.asid_ida.used == asids and smmu.vmid_ida.used == vmids
    for i in (0, 1):
        group = rig.k.pci.devices[i].iommu_group
        assert group.owner is None and group.domain is group.default_domain
        assert not rig.m.bus.dma_write(rig.rid(i), 0x10_0000, 1, 4).ok


def test_vfio_unbind_while_bound_gives_the_device_back(rig):
    ioas = rig.ioas()
    va = rig.map(ioas, 0x10_0000)
    devid = rig.bind(0)
    rig.attach(ioas)
    assert rig.dma_reaches(0x10_0000, va)
    pdev = rig.k.pci.devices[0]
    rig.k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", pdev.bdf)
    assert errno_of(rig.k.iommufd.device, rig.ictx, devid) == ENOENT
    assert pdev.iommu_group.owner is None
    assert not rig.m.bus.dma_write(rig.rid(), 0x10_0000, 1, 4).ok
    rig.files[0].close()
    rig.ictx.close()
    assert rig.k.user_mm.pinned == {}


# -- attach / replace / detach as a state machine --------------------------------------------

SLOTS = (0x10_0000, 0x20_0000, SW_MSI[0])


class AttachMachine(RuleBasedStateMachine):
    """Two devices, two IOASes, nest-parent and nested HWPTs: after every step the
    IOVA ranges of each IOAS exclude the SW_MSI window exactly while some device is
    attached to it (directly or through a nested HWPT), a device's DMA reaches
    exactly what its IOAS maps, and failed calls change nothing."""

    def __init__(self):
        super().__init__()
        self.rig = Rig(ArmVirt(smmu="nested", devices=[{"msix": 4}] * 2,
                               msi_design="sw-msi"), n=2)
        self.ioases = [self.rig.ioas(), self.rig.ioas()]
        self.devids = [self.rig.bind(0), self.rig.bind(1)]
        self.mapped = [{}, {}]            # IOAS index -> {iova: user va}
        self.on = [None, None]            # device -> IOAS index it translates through
        self.hwpts = []                   # (hwpt id, IOAS index, nested?)

    def attached(self, a):
        return any(x == a for x in self.on)

    def snapshot(self):
        ctx = self.rig.ictx.private_data
        return (set(ctx.objects), [self.rig.ranges(i) for i in self.ioases],
                [self.rig.k.iommufd.device(self.rig.ictx, d).hwpt for d in self.devids])

    @rule(a=st.integers(0, 1), slot=st.sampled_from(SLOTS))
    def map(self, a, slot):
        if slot in self.mapped[a]:
            event("map: EEXIST")
            assert errno_of(self.rig.map, self.ioases[a], slot) == errno.EEXIST
        elif slot == SW_MSI[0] and self.attached(a):
            event("map: reserved")
            assert errno_of(self.rig.map, self.ioases[a], slot) == EINVAL
        else:
            self.mapped[a][slot] = self.rig.map(self.ioases[a], slot)

    @rule(a=st.integers(0, 1), slot=st.sampled_from(SLOTS))
    def unmap(self, a, slot):
        u_ = u.IommuIoasUnmap(ioas_id=self.ioases[a], iova=slot, length=PAGE)
        if slot in self.mapped[a]:
            self.rig.ictx.ioctl(u.IOMMU_IOAS_UNMAP, u_)
            del self.mapped[a][slot]
        else:
            assert errno_of(self.rig.ictx.ioctl, u.IOMMU_IOAS_UNMAP, u_) == ENOENT

    def _attach(self, d, pt_id, a):
        moving = self.on[d] != a
        if moving and SW_MSI[0] in self.mapped[a]:
            event("attach: EADDRINUSE")
            before = self.snapshot()
            assert errno_of(self.rig.attach, pt_id, d) == EADDRINUSE
            assert self.snapshot() == before
            return
        event("attach: replace" if self.on[d] is not None else "attach: new")
        self.rig.attach(pt_id, d)
        self.on[d] = a

    @rule(d=st.integers(0, 1), a=st.integers(0, 1))
    def attach_ioas(self, d, a):
        self._attach(d, self.ioases[a], a)

    @initialize()
    def alloc_hwpts(self):
        """A nest parent and a nested (stage-1 bypass) HWPT on each IOAS."""
        for a, ioas in enumerate(self.ioases):
            parent = hwpt_alloc(self.rig, self.devids[0], ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
            n = hwpt_alloc(self.rig, self.devids[0], parent, 0,
                           vste_bytes(1 | CFG_BYPASS << 1, 0))
            self.hwpts += [(parent, a, False), (n, a, True)]

    @rule(d=st.integers(0, 1), i=st.integers(0, 3))
    def attach_hwpt(self, d, i):
        hwpt, a, nested = self.hwpts[i]
        event(f"attach hwpt nested={nested}")
        self._attach(d, hwpt, a)

    @rule(d=st.integers(0, 1))
    def detach(self, d):
        self.rig.detach(d)
        self.on[d] = None

    @invariant()
    def reserved_and_dma(self):
        for a, ioas in enumerate(self.ioases):
            want = [(0, SW_MSI[0] - 1), (SW_MSI[1] + 1, U64_MAX)] if self.attached(a) \
                else [(0, U64_MAX)]
            assert self.rig.ranges(ioas) == want
        for d in (0, 1):
            for slot in SLOTS[:2]:
                a = self.on[d]
                if a is not None and slot in self.mapped[a]:
                    assert self.rig.dma_reaches(slot, self.mapped[a][slot], d)
                else:
                    assert not self.rig.m.bus.dma_write(self.rig.rid(d), slot, 1, 4).ok

    def teardown(self):
        for f in self.rig.files + [self.rig.ictx]:
            f.close()
        assert self.rig.k.user_mm.pinned == {}


TestAttachMachine = AttachMachine.TestCase
TestAttachMachine.settings = settings(max_examples=25, stateful_step_count=15, deadline=None)


# -- the MSI extension point and op registration -------------------------------------------


class RecordingHooks(IommufdMsiHooks):
    """Records each call with what the contract says holds at that point."""

    name = "recording"

    def __init__(self, reserve_sw_msi=True, refuse_attach=False):
        self.calls = []
        self.reserve_sw_msi = reserve_sw_msi
        self.refuse_attach = refuse_attach

    def hwpt_init(self, hwpt):
        assert hwpt.domain.iommufd_hwpt is hwpt and not hwpt.devices
        self.calls.append(("hwpt_init", hwpt.kind))

    def attach(self, idev, hwpt):
        assert idev.group.domain is not hwpt.domain            # not moved yet
        if self.refuse_attach:
            raise KernelError(errno.ENOSPC, "no room")
        self.calls.append(("attach", hwpt.kind))

    def detach(self, idev):
        assert idev.hwpt is None and idev.group.domain.type == DomainType.BLOCKED
        self.calls.append(("detach",))

    def unbind(self, idev):
        assert idev.hwpt is None
        self.calls.append(("unbind",))

    def hwpt_destroy(self, hwpt):
        assert not getattr(hwpt.domain, "freed", False)         # the domain is still there
        self.calls.append(("hwpt_destroy", hwpt.kind))


def hooked_rig(monkeypatch, hooks):
    m = ArmVirt(smmu="nested", devices=[{"msix": 4}])
    k = m.boot()
    monkeypatch.setattr(k.iommufd, "new_msi_hooks", lambda ctx: hooks)
    r = Rig.__new__(Rig)
    r.m, r.k = m, k
    r.ictx = k.open("/dev/iommu")
    pdev = k.pci.devices[0]
    k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
    r.files = [k.open("/dev/vfio/devices/vfio0")]
    return r


def test_msi_hooks_are_called_where_the_contract_says(monkeypatch):
    hooks = RecordingHooks()
    rig = hooked_rig(monkeypatch, hooks)
    assert rig.ictx.private_data.msi is hooks
    ioas = rig.ioas()
    devid = rig.bind(0)
    parent = hwpt_alloc(rig, devid, ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    nested = hwpt_alloc(rig, devid, parent, 0, vste_bytes(1 | CFG_BYPASS << 1, 0))
    rig.attach(ioas)
    rig.attach(nested)                              # replace: attach only, no detach
    rig.detach()
    rig.files[0].close()
    rig.ictx.close()
    assert hooks.calls == [
        ("hwpt_init", "hwpt_paging"), ("hwpt_init", "hwpt_nested"),
        ("hwpt_init", "hwpt_paging"), ("attach", "hwpt_paging"),
        ("attach", "hwpt_nested"), ("hwpt_destroy", "hwpt_paging"),   # the auto HWPT died
        ("detach",), ("unbind",),
        ("hwpt_destroy", "hwpt_nested"), ("hwpt_destroy", "hwpt_paging")]


def test_a_refusing_attach_hook_fails_the_attach_and_changes_nothing(monkeypatch):
    hooks = RecordingHooks(refuse_attach=True)
    rig = hooked_rig(monkeypatch, hooks)
    ioas = rig.ioas()
    devid = rig.bind(0)
    objs = dict(rig.ictx.private_data.objects)
    assert errno_of(rig.attach, ioas) == errno.ENOSPC
    assert rig.ictx.private_data.objects == objs
    assert rig.ranges(ioas) == [(0, U64_MAX)]
    assert rig.k.iommufd.device(rig.ictx, devid).hwpt is None
    assert rig.k.pci.devices[0].iommu_group.domain.type == DomainType.BLOCKED
    # The auto HWPT made for the attempt was initialised, then destroyed.
    assert hooks.calls == [("hwpt_init", "hwpt_paging"), ("hwpt_destroy", "hwpt_paging")]


def test_a_design_without_the_implicit_window_reserves_no_sw_msi(monkeypatch):
    rig = hooked_rig(monkeypatch, RecordingHooks(reserve_sw_msi=False))
    ioas = rig.ioas()
    va = rig.map(ioas, SW_MSI[0])                   # the window is the user's to map
    devid = rig.bind(0)
    rig.attach(ioas)
    assert rig.ranges(ioas) == [(0, U64_MAX)]
    assert rig.k.iommufd.device(rig.ictx, devid).sw_msi_start == SW_MSI[0]
    assert rig.dma_reaches(SW_MSI[0], va)


def test_register_op_adds_an_ioctl_with_the_size_check(rig):
    cmd = u.IOMMU_HWPT_SET_DIRTY_TRACKING
    saved = IommufdCtx.OPS.get(cmd)
    seen = []

    def handler(ctx, arg):
        seen.append((ctx, arg.hwpt_id))
        arg.flags = 1                                # copied back on success

    try:
        assert errno_of(rig.ictx.ioctl, cmd, u.IommuHwptSetDirtyTracking()) == errno.ENOTTY
        IommufdCtx.register_op(cmd, "__reserved", handler)
        arg = u.IommuHwptSetDirtyTracking(hwpt_id=5)
        rig.ictx.ioctl(cmd, arg)
        assert seen == [(rig.ictx.private_data, 5)] and arg.flags == 1
        small = u.IommuHwptSetDirtyTracking()
        small.size = 4
        assert errno_of(rig.ictx.ioctl, cmd, small) == EINVAL and len(seen) == 1
    finally:
        if saved is None:
            IommufdCtx.OPS.pop(cmd, None)
        else:
            IommufdCtx.OPS[cmd] = saved
