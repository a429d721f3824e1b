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

from pymsi.kernel.iommu import DomainType
from pymsi.machine import ArmVirt
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
