"""KVM's vCPUs, memory slots, emulated ITS, irq-bypass and GICv4 forwarding.

Expected values come from the GICv3/v4 architecture (ITS command layouts,
register fields), KVM's documented and source behaviour (api.rst for
KVM_CREATE_VCPU / KVM_SET_USER_MEMORY_REGION; arch/arm64/kvm/vgic/vgic-its.c:
GITS_IIDR = 0x4B00043B (product 'K', Arm), GITS_TYPER with 16 DeviceID and
EventID bits and 8-byte ITEs, 64K table pages, a bad command skipped with
CREADR moving on, KVM_SIGNAL_MSI 1 when an LPI was made pending, 0 for an
unmapped (DeviceID, EventID), EBUSY while the vITS or the vCPU's LPIs are
disabled; vgic-v4.c and virt/lib/irqbypass.c for forwarding).
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from pymsi.hw.gicv3 import GICR_VPENDBASER as G_GICR_VPENDBASER
from pymsi.hw.gicv3 import VLPI_FRAME as G_VLPI_FRAME
from pymsi.kernel.base import fail
from pymsi.kernel.irqbypass import IrqBypass, IrqBypassConsumer, IrqBypassProducer, irqbypass_of
from pymsi.machine import ArmVirt
from pymsi.uapi import kvm as K
from pymsi.uapi import vfio as V
from pymsi.vmmlib import msi_route

from kernel_util import errno_of

EINVAL, EBUSY, EEXIST, EFAULT = errno.EINVAL, errno.EBUSY, errno.EEXIST, errno.EFAULT

GICD_BASE, GICR_BASE, ITS_BASE = 0x0800_0000, 0x080A_0000, 0x0808_0000
DOORBELL = ITS_BASE + 0x10040                   # GITS_TRANSLATER
RAM, RAM_SIZE = 0x4000_0000, 0x10_0000
# the guest's layout
CMDQ, DEVT, COLLT, PROP, PEND, ITT = (RAM, RAM + 0x10000, RAM + 0x20000, RAM + 0x30000,
                                      RAM + 0x40000, RAM + 0x80000)
LPI = 8192
# GITS register offsets (GICv3 architecture)
CTLR, IIDR, TYPER, CBASER, CWRITER, CREADR, BASER0, BASER1, PIDR2 = (
    0x0, 0x4, 0x8, 0x80, 0x88, 0x90, 0x100, 0x108, 0xFFE8)
VALID = 1 << 63


# -- ITS commands as the architecture lays them out -------------------------------------------

def mapd(dev, size, itt, v=1):
    return (0x08 | dev << 32, size, v << 63 | itt, 0)


def mapc(icid, rd, v=1):
    return (0x09, 0, v << 63 | rd << 16 | icid, 0)


def mapti(dev, ev, intid, icid):
    return (0x0A | dev << 32, intid << 32 | ev, icid, 0)


def mapi(dev, ev, icid):
    return (0x0B | dev << 32, ev, icid, 0)


def movi(dev, ev, icid):
    return (0x01 | dev << 32, ev, icid, 0)


def discard(dev, ev):
    return (0x0F | dev << 32, ev, 0, 0)


def int_(dev, ev):
    return (0x03 | dev << 32, ev, 0, 0)


def clear(dev, ev):
    return (0x04 | dev << 32, ev, 0, 0)


def inv(dev, ev):
    return (0x0C | dev << 32, ev, 0, 0)


def invall(icid):
    return (0x0D, 0, icid, 0)


def movall(rd1, rd2):
    return (0x0E, 0, rd1 << 16, rd2 << 16)


def sync(rd):
    return (0x05, 0, rd << 16, 0)


# -- a guest --------------------------------------------------------------------------------


def set_addr(k, fd, attr, value):
    va = k.mmap(4096)
    k.user_write(va, value.to_bytes(8, "little"))
    k.ioctl(fd, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(group=K.KVM_DEV_ARM_VGIC_GRP_ADDR,
                                                       attr=attr, addr=va))


def create_device(k, vm, type_):
    cd = K.KvmCreateDevice(type=type_)
    k.ioctl(vm, K.KVM_CREATE_DEVICE, cd)
    return cd.fd


class Guest:
    """A VM with ``nvcpus`` vCPUs, a vGICv3, a vITS and 1 MiB of RAM, and the guest
    side of the ITS driver: it only writes guest memory and MMIO registers."""

    def __init__(self, k, nvcpus=2, boot=True, vcpu_ids=None):
        self.k = k
        kvm = k.open("/dev/kvm")
        self.vm = kvm.ioctl(K.KVM_CREATE_VM, 0)
        kvm.close()
        ids = range(nvcpus) if vcpu_ids is None else vcpu_ids
        self.vcpu_fds = [k.ioctl(self.vm, K.KVM_CREATE_VCPU, i) for i in ids]
        gic = create_device(k, self.vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
        set_addr(k, gic, K.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE)
        set_addr(k, gic, K.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)
        its_fd = create_device(k, self.vm, K.KVM_DEV_TYPE_ARM_VGIC_ITS)
        set_addr(k, its_fd, K.KVM_VGIC_ITS_ADDR_TYPE, ITS_BASE)
        k.ioctl(gic, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
            group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=K.KVM_DEV_ARM_VGIC_CTRL_INIT))
        self.kvm = k.files.fds[self.vm].private_data
        self.its = k.files.fds[its_fd].private_data
        self.uva = k.mmap(RAM_SIZE)
        k.ioctl(self.vm, K.KVM_SET_USER_MEMORY_REGION, K.KvmUserspaceMemoryRegion(
            slot=0, guest_phys_addr=RAM, memory_size=RAM_SIZE, userspace_addr=self.uva))
        self.cw = 0
        if boot:
            self.boot()

    def w(self, gpa, data):
        self.k.user_write(self.uva + gpa - RAM, data)

    def r(self, gpa, n):
        return self.k.user_read(self.uva + gpa - RAM, n)

    def wr(self, off, value, size=8):
        assert self.kvm.mmio_write(ITS_BASE + off, value, size) is True

    def rd(self, off, size=8):
        return self.kvm.mmio_read(ITS_BASE + off, size)

    def gicr(self, vcpu, off, value, size=8):
        assert self.kvm.mmio_write(GICR_BASE + vcpu * 0x20000 + off, value, size)

    def boot(self):
        """What a GICv3 ITS driver does: LPI tables, LPIs on, ITS tables, queue, enable."""
        self.w(PROP, bytes([0xA0 | 1]) * 0x1000)              # prio 0xA0, enabled
        for v in range(len(self.vcpu_fds)):
            self.gicr(v, 0x70, PROP | (16 - 1))               # GICR_PROPBASER: 16 ID bits
            self.gicr(v, 0x78, PEND + v * 0x10000)            # GICR_PENDBASER
            self.gicr(v, 0x0, 1, 4)                           # GICR_CTLR.EnableLPIs
        self.wr(BASER0, VALID | DEVT | 2 << 8)                # 64K pages, 1 page
        self.wr(BASER1, VALID | COLLT | 2 << 8)
        self.wr(CBASER, VALID | CMDQ | (16 - 1))              # 16 x 4K = 64K queue
        self.wr(CTLR, 1, 4)
        assert self.rd(CTLR, 4) & 1

    def cmds(self, *cmds):
        for c in cmds:
            self.w(CMDQ + self.cw, b"".join(x.to_bytes(8, "little") for x in c))
            self.cw = (self.cw + 32) % 0x10000
        self.wr(CWRITER, self.cw)

    def signal(self, devid, ev, address=DOORBELL):
        try:
            return self.k.ioctl(self.vm, K.KVM_SIGNAL_MSI, K.KvmMsi(
                address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=ev,
                flags=K.KVM_MSI_VALID_DEVID, devid=devid))
        except Exception as e:                                 # noqa: BLE001
            return -e.errno

    def route(self, gsi, devid, data, address=DOORBELL):
        self.k.ioctl(self.vm, K.KVM_SET_GSI_ROUTING,
                     K.KvmIrqRouting(nr=1, entries=[msi_route(gsi, devid, data, address)]))

    def irqfd(self, fd, gsi, flags=0):
        return self.k.ioctl(self.vm, K.KVM_IRQFD, K.KvmIrqfd(fd=fd, gsi=gsi, flags=flags))

    def pending(self):
        return self.kvm.vlpi_pending


@pytest.fixture
def k():
    return ArmVirt(devices=[{"msix": 4}], smmu=None).boot()


# -- vCPUs and memory slots -----------------------------------------------------------------


def test_create_vcpu_ids_and_errors(k):
    kvm = k.open("/dev/kvm")
    vm = kvm.ioctl(K.KVM_CREATE_VM, 0)
    fd = k.ioctl(vm, K.KVM_CREATE_VCPU, 3)
    assert fd in k.files and fd in k.files.cloexec
    assert errno_of(k.ioctl, vm, K.KVM_CREATE_VCPU, 3) == EEXIST
    assert errno_of(k.ioctl, vm, K.KVM_CREATE_VCPU, 512) == EINVAL      # KVM_MAX_VCPU_IDS
    assert errno_of(k.ioctl, vm, K.KVM_CREATE_VCPU, -1 & 0xFFFF_FFFF) == EINVAL
    fd511 = k.ioctl(vm, K.KVM_CREATE_VCPU, 511)
    vmobj = k.files.fds[vm].private_data
    # a vCPU file holds the VM: closing the VM file does not destroy it
    k.close(vm)
    assert not vmobj.destroyed
    k.close(fd)
    assert not vmobj.destroyed
    k.close(fd511)
    assert vmobj.destroyed
    # after the vGIC is initialised: EBUSY (kvm_arch_vcpu_precreate)
    vm = kvm.ioctl(K.KVM_CREATE_VM, 0)
    k.ioctl(vm, K.KVM_CREATE_VCPU, 0)
    gic = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    k.ioctl(gic, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
        group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=K.KVM_DEV_ARM_VGIC_CTRL_INIT))
    n = len(k.files)
    assert errno_of(k.ioctl, vm, K.KVM_CREATE_VCPU, 1) == EBUSY
    assert len(k.files) == n


def test_create_vcpu_beyond_max_vcpus(k):
    vm = k.open("/dev/kvm").ioctl(K.KVM_CREATE_VM, 0)
    vmobj = k.files.fds[vm].private_data
    vmobj.max_vcpus = 2                                 # as a smaller VM limit
    k.ioctl(vm, K.KVM_CREATE_VCPU, 7)
    k.ioctl(vm, K.KVM_CREATE_VCPU, 9)
    assert errno_of(k.ioctl, vm, K.KVM_CREATE_VCPU, 1) == EINVAL


def region(slot=0, gpa=RAM, size=0x10000, uva=0, flags=0):
    return K.KvmUserspaceMemoryRegion(slot=slot, flags=flags, guest_phys_addr=gpa,
                                      memory_size=size, userspace_addr=uva)


def test_memslot_errors_and_guest_access(k):
    vm = k.open("/dev/kvm").ioctl(K.KVM_CREATE_VM, 0)
    kvm = k.files.fds[vm].private_data
    uva = k.mmap(0x20000)
    bad = [region(flags=4, uva=uva),                                # KVM_MEM_GUEST_MEMFD
           region(flags=1 << 31, uva=uva),
           region(size=0x1001, uva=uva), region(gpa=RAM + 0x800, uva=uva),
           region(uva=uva + 8), region(slot=32767, uva=uva), region(slot=1 << 16, uva=uva),
           region(gpa=2**64 - 0x1000, uva=uva),
           region(slot=5, size=0, uva=uva)]                       # delete an empty slot
    for r in bad:
        assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION, r) == EINVAL
    # beyond the 40-bit IPA space
    assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION,
                    region(gpa=1 << 40, uva=uva)) == EFAULT
    assert kvm.memslots == {}
    k.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, region(uva=uva))
    # overlaps: EEXIST; adjacent is fine
    assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION,
                    region(slot=1, gpa=RAM + 0xF000, uva=uva + 0x10000)) == EEXIST
    assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION,
                    region(slot=1, gpa=RAM - 0x1000, size=0x2000, uva=uva + 0x10000)) == EEXIST
    k.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION,
            region(slot=1, gpa=RAM + 0x10000, uva=uva + 0x10000, flags=K.KVM_MEM_READONLY))
    # changing a slot's size or user address or READONLY: EINVAL; moving it: fine
    assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION, region(size=0x2000, uva=uva)) \
        == EINVAL
    assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION,
                    region(uva=uva + 0x1000)) == EINVAL
    assert errno_of(k.ioctl, vm, K.KVM_SET_USER_MEMORY_REGION,
                    region(uva=uva, flags=K.KVM_MEM_READONLY)) == EINVAL
    # guest memory: through the slots, page by page, across slots
    k.user_write(uva + 0xFFFC, b"abcdefgh")
    assert kvm.read_guest(RAM + 0xFFFC, 8) == b"abcdefgh"
    kvm.write_guest(RAM + 0x10, b"xy")
    assert k.user_read(uva + 0x10, 2) == b"xy"
    assert errno_of(kvm.write_guest, RAM + 0x10000, b"z") == EFAULT    # read-only slot
    assert errno_of(kvm.read_guest, RAM + 0x20000, 1) == EFAULT        # no slot
    k.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, region(gpa=0x1000_0000, uva=uva))   # move
    assert kvm.read_guest(0x1000_0000 + 0x10, 2) == b"xy"
    assert errno_of(kvm.read_guest, RAM, 1) == EFAULT
    k.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION, region(gpa=0x1000_0000, size=0, uva=uva))
    assert sorted(kvm.memslots) == [1]


# -- the vITS registers ------------------------------------------------------------------------


def test_its_registers_as_kvm_presents_them(k):
    g = Guest(k, boot=False)
    assert g.rd(IIDR, 4) == 0x4B00043B
    typer = g.rd(TYPER)
    assert typer & 1 and not typer >> 1 & 1                  # physical LPIs, no virtual
    assert (typer >> 4 & 0xF) + 1 == 8                       # ITT entry size
    assert (typer >> 8 & 0x1F) + 1 == 16 and (typer >> 13 & 0x1F) + 1 == 16
    assert not typer >> 36 & 1                               # CIL = 0: 16-bit ICIDs
    assert g.rd(TYPER + 4, 4) == typer >> 32
    assert g.rd(PIDR2, 4) >> 4 & 0xF == 3
    # BASER0 = devices (type 1), BASER1 = collections (type 4), 8-byte entries
    for off, typ in ((BASER0, 1), (BASER1, 4)):
        b = g.rd(off)
        assert b >> 56 & 7 == typ and (b >> 48 & 0x1F) + 1 == 8
        g.wr(off, VALID | 0x12340000 | 7 << 56 | 0x1F << 48 | 0 << 8 | 0xF000)
        b = g.rd(off)
        assert b >> 56 & 7 == typ and (b >> 48 & 0x1F) + 1 == 8     # read-only fields
        assert b >> 8 & 3 == 2 and not b & 0xF000                  # 64K pages only
        assert b & VALID and b & 0xFFFF_0000 == 0x12340000
    assert g.rd(BASER1 + 8) == 0 and g.rd(0x138) == 0
    # enabling needs valid tables and queue
    g.wr(CTLR, 1, 4)
    assert g.rd(CTLR, 4) == 1 << 31                          # not enabled, quiescent
    g.wr(CBASER, VALID | CMDQ | 15)
    g.wr(CWRITER, 0x40)
    assert g.rd(CWRITER) == 0x40 and g.rd(CREADR) == 0
    g.wr(CBASER, VALID | CMDQ | 15)                          # resets CREADR and CWRITER
    assert g.rd(CWRITER) == 0 and g.rd(CREADR) == 0
    g.wr(CWRITER, 0x10000)                                   # beyond the queue: ignored
    assert g.rd(CWRITER) == 0
    g.wr(CTLR, 1, 4)
    assert g.rd(CTLR, 4) == 1 | 1 << 31
    # while enabled, CBASER and BASER<n> are read-only
    g.wr(CBASER, VALID | RAM + 0x5000 | 1)
    g.wr(BASER0, 0)
    assert g.rd(CBASER) == VALID | CMDQ | 15 and g.rd(BASER0) & VALID
    # outside every in-kernel device: an exit to the VMM
    assert g.kvm.mmio_read(0x0900_0000, 4) is None
    assert g.kvm.mmio_write(0x0900_0000, 1, 4) is False
    # the redistributor frame of vCPU 1
    assert g.kvm.mmio_read(GICR_BASE + 0x20000 + 0x8, 8) >> 8 & 0xFFFF == 1
    assert g.kvm.mmio_read(GICR_BASE + 0x20000 + 0x8, 8) >> 4 & 1      # Last


# -- commands and translation ------------------------------------------------------------------


def test_map_signal_move_discard(k):
    g = Guest(k)
    g.cmds(mapd(0x10, 3, ITT), mapc(0, 0), mapc(1, 1), sync(0),
           mapti(0x10, 2, LPI + 5, 0), mapi(0x10, LPI + 7 - LPI, 1))
    # MAPI with EventID 7 gives INTID 7: not an LPI, refused; the rest ran
    assert g.its.errors == [("MAPI", 0x010A06)] and g.rd(CREADR) == g.rd(CWRITER) == 6 * 32
    assert g.signal(0x10, 2) == 1
    assert g.pending() == [(LPI + 5, 0)]
    assert g.signal(0x10, 3) == 0 and g.signal(0x11, 2) == 0   # not mapped: blocked (0)
    assert g.signal(0x10, 8) == 0                               # beyond the ITT
    assert g.signal(0x10, 7) == 0
    assert g.pending() == [(LPI + 5, 0)]
    g.cmds(movi(0x10, 2, 1))
    assert g.pending() == [(LPI + 5, 1)]                       # the pending state moves
    g.cmds(clear(0x10, 2))
    assert g.pending() == []
    g.cmds(int_(0x10, 2))
    assert g.pending() == [(LPI + 5, 1)]
    g.cmds(movall(1, 0))
    assert g.pending() == [(LPI + 5, 0)]
    g.cmds(discard(0x10, 2))
    assert g.pending() == [] and g.signal(0x10, 2) == 0
    assert g.its.errors == [("MAPI", 0x010A06)]
    # the ITE is cleared in guest memory (8-byte entries)
    assert g.r(ITT + 2 * 8, 8) == bytes(8)


def test_two_events_share_an_lpi_and_collections_unmap(k):
    g = Guest(k)
    g.cmds(mapd(1, 1, ITT), mapd(2, 1, ITT + 0x100), mapc(3, 1),
           mapti(1, 0, LPI + 1, 3), mapti(2, 1, LPI + 1, 3))
    assert g.signal(2, 1) == 1 and g.pending() == [(LPI + 1, 1)]
    g.cmds(discard(1, 0))
    assert g.pending() == [(LPI + 1, 1)]                       # still mapped by (2, 1)
    g.cmds(mapc(3, 0, v=0))                                    # unmap the collection
    assert g.signal(2, 1) == 0
    g.cmds(mapc(3, 0), movi(2, 1, 3))                          # its ITE lost the collection
    assert g.its.errors[-1] == ("MOVI", 0x010109)


def test_lpi_config_from_guest_memory_and_inv(k):
    g = Guest(k)
    g.w(PROP + 9, bytes([0x40]))                              # LPI 8201 disabled, prio 0x40
    g.cmds(mapd(1, 4, ITT), mapc(0, 0), mapti(1, 0, LPI + 9, 0))
    irq = g.kvm.lpis[LPI + 9]
    assert (irq.enabled, irq.priority) == (False, 0x40)
    g.w(PROP + 9, bytes([0x81]))
    assert irq.enabled is False                               # cached until INV
    g.cmds(inv(1, 0))
    assert (irq.enabled, irq.priority) == (True, 0x80)
    g.w(PROP + 9, bytes([0x30]))
    g.cmds(invall(0))
    assert (irq.enabled, irq.priority) == (False, 0x30)
    # the guest's pending table is read at MAPTI
    g.w(PEND + (LPI + 12) // 8, bytes([1 << (LPI + 12) % 8]))
    g.cmds(mapti(1, 1, LPI + 12, 0))
    assert (LPI + 12, 0) in g.pending()


def test_disabled_its_or_lpis_are_ebusy(k):
    g = Guest(k)
    g.cmds(mapd(1, 1, ITT), mapc(0, 1), mapti(1, 0, LPI, 0))
    g.gicr(1, 0, 0, 4)                                        # vCPU 1: EnableLPIs off
    assert g.signal(1, 0) == -EBUSY
    g.gicr(1, 0, 1, 4)
    assert g.signal(1, 0) == 1
    g.gicr(1, 0, 0, 4)                                        # turning LPIs off flushes
    assert g.pending() == []
    # turning them on again reads the guest's pending table (PTZ clear)
    g.w(PEND + 0x10000 + LPI // 8, bytes([1]))
    g.gicr(1, 0, 1, 4)
    assert g.pending() == [(LPI, 1)]
    g.wr(CTLR, 0, 4)
    assert g.signal(1, 0) == -EBUSY
    assert g.its.delivered[-1] == (1, 0)


BAD = [
    ("MAPD", mapd(1 << 16, 1, ITT), 0x010801),               # DeviceID beyond 16 bits
    ("MAPD", mapd(0x2001, 1, ITT), 0x010801),                # beyond the one 64K page
    ("MAPD", mapd(5, 17, ITT), 0x010802),                    # ITT size beyond 16 bits
    ("MAPC", mapc(0, 2), 0x010902),                          # vCPU 2 does not exist
    ("MAPC", mapc(0x2000, 0), 0x010903),                     # beyond the collection table
    ("MAPTI", mapti(9, 0, LPI, 0), 0x010A04),                # device not mapped
    ("MAPTI", mapti(1, 4, LPI, 0), 0x010A05),                # EventID beyond 2 bits
    ("MAPTI", mapti(1, 0, 8191, 0), 0x010A06),               # not an LPI
    ("MAPTI", mapti(1, 0, 1 << 16, 0), 0x010A06),            # beyond PROPBASER's 16 bits
    ("MOVI", movi(1, 3, 0), 0x010107),
    ("MOVI", movi(1, 1, 7), 0x010109),
    ("DISCARD", discard(1, 3), 0x010F07),
    ("CLEAR", clear(1, 3), 0x010507),
    ("INT", int_(1, 3), 0x010307),
    ("INV", inv(1, 3), 0x010C07),
    ("INVALL", invall(7), 0x010D09),
    ("MOVALL", movall(0, 2), 0x010E01),
]


@pytest.mark.parametrize("name,cmd,code", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_command_is_skipped_and_the_queue_goes_on(k, name, cmd, code):
    g = Guest(k)
    g.cmds(mapd(1, 1, ITT), mapc(0, 0), mapti(1, 1, LPI + 3, 0))
    g.cmds(cmd, mapti(1, 2, LPI + 4, 0))
    assert g.its.errors == [(name, code)]
    assert g.rd(CREADR) == g.rd(CWRITER) == 5 * 32 and not g.rd(CREADR) & 1  # no stall
    assert g.signal(1, 2) == 1 and g.signal(1, 1) == 1               # the rest ran
    assert sorted(g.kvm.lpis) == [LPI + 3, LPI + 4]


def test_unknown_command_and_unreadable_queue_are_skipped(k):
    g = Guest(k)
    g.cmds((0x2A, 0, 0, 0), (0xFF, 0, 0, 0))                  # VMAPTI: not emulated
    assert [e[0] for e in g.its.errors] == ["opcode 0x2a", "opcode 0xff"]
    assert g.rd(CREADR) == 64
    g.wr(CTLR, 0, 4)
    g.wr(CBASER, VALID | 0x9000_0000 | 0)                     # a queue outside guest RAM
    g.wr(CTLR, 1, 4)
    g.wr(CWRITER, 0x40)
    assert g.rd(CREADR) == 0x40 and g.its.errors[-1] == ("read", -EFAULT)
    g.wr(CWRITER, 0xFE0)
    g.wr(CWRITER, 0x20)                                       # wraps at the 4K queue's end
    assert g.rd(CREADR) == 0x20


def test_irqfd_eventfd_makes_the_vlpi_pending(k):
    g = Guest(k)
    g.cmds(mapd(0x30, 2, ITT), mapc(2, 1), mapti(0x30, 3, LPI + 20, 2))
    g.route(4, 0x30, 3)
    efd = k.eventfd()
    g.irqfd(efd.fd, 4)
    assert g.pending() == []
    efd.write(1)
    assert g.pending() == [(LPI + 20, 1)] and efd.f_op.count == 0


# -- a property: random command streams against the architecture's rules ----------------------

DEVS, EVS, COLLS = (1, 2), (0, 1, 2, 3), (0, 1, 2)


def _cmd_strategy():
    dev = st.sampled_from(DEVS + (0x3000,))
    ev = st.sampled_from(EVS + (4,))
    icid = st.sampled_from(COLLS + (0x3000,))
    rd = st.integers(0, 2)
    intid = st.sampled_from([LPI, LPI + 1, LPI + 2, 8191, 1 << 16])
    return st.one_of(
        st.tuples(st.just("mapd"), dev, st.integers(0, 2), st.integers(0, 1)),
        st.tuples(st.just("mapc"), icid, rd, st.integers(0, 1)),
        st.tuples(st.just("mapti"), dev, ev, intid, icid),
        st.tuples(st.just("movi"), dev, ev, icid),
        st.tuples(st.just("discard"), dev, ev),
        st.tuples(st.just("int"), dev, ev),
        st.tuples(st.just("clear"), dev, ev),
    )


class Oracle:
    """The ITS behaviour of the GICv3 architecture with KVM's choices for the
    UNPREDICTABLE cases (a second MAPD replaces the device and its ITEs; a MAPTI of
    a mapped event is ignored; unmapping a collection orphans its ITEs); LPI state per
    INTID shared between events."""

    def __init__(self, nvcpus):
        self.n = nvcpus
        self.devs = {}          # dev -> {"bits": n, "ites": {ev: [intid, icid]}}
        self.colls = {}         # icid -> vcpu
        self.pending = {}       # intid -> vcpu
        self.target = {}        # intid -> vcpu

    def lpi_users(self, intid):
        return sum(1 for d in self.devs.values() for i in d["ites"].values() if i[0] == intid)

    def drop_ite(self, dev, ev):
        intid = self.devs[dev]["ites"].pop(ev)[0]
        if not self.lpi_users(intid):
            self.pending.pop(intid, None)
            self.target.pop(intid, None)

    def apply(self, c):
        op = c[0]
        if op == "mapd":
            _, dev, size, v = c
            if dev >= 0x2000:
                return
            for ev in list(self.devs.get(dev, {"ites": {}})["ites"]):
                self.drop_ite(dev, ev)
            self.devs.pop(dev, None)
            if v:
                self.devs[dev] = {"bits": size + 1, "ites": {}}
        elif op == "mapc":
            _, icid, rd, v = c
            if v and rd >= self.n:              # only a map names a vCPU that must exist
                return
            if not v:
                # Unmapping a collection its ITEs still use is UNPREDICTABLE; KVM
                # (vgic_its_free_collection) unlinks those ITEs for good: a later MAPC of
                # the same ICID does not bring them back.
                if self.colls.pop(icid, None) is not None:
                    for d in self.devs.values():
                        for ite in d["ites"].values():
                            if ite[1] == icid:
                                ite[1] = None
                return
            if icid >= 0x2000:
                return
            self.colls[icid] = rd
            for d in self.devs.values():
                for intid, ic in d["ites"].values():
                    if ic == icid:
                        self.retarget(intid, rd)
        elif op == "mapti":
            _, dev, ev, intid, icid = c
            d = self.devs.get(dev)
            if d is None or ev >> d["bits"] or not LPI <= intid < 1 << 16 or icid >= 0x2000 \
                    or ev in d["ites"]:
                return
            d["ites"][ev] = [intid, icid]
            if self.lpi_users(intid) == 1 or intid not in self.target:
                self.target[intid] = self.colls.get(icid)
        elif op == "movi":
            _, dev, ev, icid = c
            ite = self.devs.get(dev, {"ites": {}})["ites"].get(ev)
            if ite is None or ite[1] not in self.colls or icid not in self.colls:
                return
            ite[1] = icid
            self.retarget(ite[0], self.colls[icid])
        elif op == "discard":
            _, dev, ev = c
            ite = self.devs.get(dev, {"ites": {}})["ites"].get(ev)
            if ite is None or ite[1] not in self.colls:
                return
            self.drop_ite(dev, ev)
        elif op == "int":
            self.signal(c[1], c[2])
        elif op == "clear":
            ite = self.devs.get(c[1], {"ites": {}})["ites"].get(c[2])
            if ite is not None:
                self.pending.pop(ite[0], None)

    def retarget(self, intid, vcpu):
        self.target[intid] = vcpu
        if intid in self.pending:
            self.pending[intid] = vcpu

    def signal(self, dev, ev):
        ite = self.devs.get(dev, {"ites": {}})["ites"].get(ev)
        if ite is None or ite[1] not in self.colls:
            return 0
        self.pending[ite[0]] = self.target[ite[0]]
        return 1


def _encode(c):
    op = c[0]
    if op == "mapd":
        return mapd(c[1], c[2], ITT + 0x100 * (c[1] % 16), c[3])
    if op == "mapc":
        return mapc(c[1], c[2], c[3])
    if op == "mapti":
        return mapti(*c[1:])
    if op == "movi":
        return movi(*c[1:])
    return {"discard": discard, "int": int_, "clear": clear}[op](c[1], c[2])


VALID_START = [("mapd", 1, 1, 1), ("mapd", 2, 2, 1), ("mapc", 0, 0, 1), ("mapc", 1, 1, 1),
               ("mapti", 1, 0, LPI, 0), ("mapti", 1, 1, LPI + 1, 1), ("mapti", 2, 0, LPI + 1, 1),
               ("mapti", 2, 3, LPI + 2, 0)]


@given(stream=st.lists(_cmd_strategy(), min_size=1, max_size=25), start=st.booleans())
def test_random_command_streams_match_the_architecture(stream, start):
    """A valid start (or none) then random commands, valid or not, against an oracle."""
    k = ArmVirt(devices=[], smmu=None).boot()
    g = Guest(k)
    oracle = Oracle(2)
    for c in (VALID_START if start else []) + stream:
        g.cmds(_encode(c))
        oracle.apply(c)
        event(c[0])
    assert g.rd(CREADR) == g.rd(CWRITER)                     # nothing ever stalls
    event(f"errors={min(len(g.its.errors), 3)}")
    delivered = 0
    for dev in DEVS:
        for ev in EVS:
            want = oracle.signal(dev, ev)
            assert g.signal(dev, ev) == want, (dev, ev)
            delivered += want
    event(f"delivered={min(delivered, 3)}")
    assert sorted(g.pending()) == sorted(oracle.pending.items())
    # an LPI lives while an ITE maps it
    assert set(g.kvm.lpis) == {i[0] for d in oracle.devs.values() for i in d["ites"].values()}


@given(data=st.data())
def test_valid_setup_then_one_field_mutated(data):
    """A valid MAPD / MAPC / MAPTI triple, then one field of one command mutated: the
    event is delivered exactly when the mutated triple is still a valid mapping."""
    dev, ev, intid, icid, vcpu = 7, 1, LPI + 40, 5, 1
    field = data.draw(st.sampled_from(["dev_mapd", "size", "valid_mapd", "icid_mapc", "rd",
                                       "valid_mapc", "dev_mapti", "ev", "intid", "icid_mapti",
                                       "opcode"]))
    event(field)
    size, vd, vc, rd, d2, e2, i2, c2, c1 = 1, 1, 1, vcpu, dev, ev, intid, icid, icid
    op = 0x0A
    if field == "dev_mapd":
        dev = data.draw(st.integers(0, 0x10000))
    elif field == "size":
        size = data.draw(st.integers(0, 31))
    elif field == "valid_mapd":
        vd = 0
    elif field == "icid_mapc":
        c1 = data.draw(st.integers(0, 0xFFFF))
    elif field == "rd":
        rd = data.draw(st.integers(0, 2**32 - 1))
    elif field == "valid_mapc":
        vc = 0
    elif field == "dev_mapti":
        d2 = data.draw(st.integers(0, 0xFFFF_FFFF))
    elif field == "ev":
        e2 = data.draw(st.integers(0, 0xFFFF_FFFF))
    elif field == "intid":
        i2 = data.draw(st.integers(0, 0xFFFF_FFFF))
    elif field == "icid_mapti":
        c2 = data.draw(st.integers(0, 0xFFFF))
    elif field == "opcode":
        # MAPD / MAPC with V=0, INVALL and MOVALL are valid with these operands (an unmap
        # or a no-op, no error): their own tests cover them.
        op = data.draw(st.integers(0, 0xFF).filter(lambda o: o not in (0x08, 0x09, 0x0D, 0x0E)))
    k = ArmVirt(devices=[], smmu=None).boot()
    g = Guest(k)
    g.cmds(mapd(dev, size, ITT, vd), mapc(c1, rd & 0xFFFF_FFFF, vc),
           (op | d2 << 32, i2 << 32 | e2, c2, 0))
    dev_ok = dev < 0x2000 and vd and size <= 16               # one 64K page of 8-byte DTEs
    coll_ok = c1 < 0x2000 and vc and rd < 2
    ev_ok = d2 == dev and e2 >> (size + 1) == 0 and ITT + e2 * 8 < RAM + RAM_SIZE
    if op == 0x0B:                                             # MAPI: INTID = EventID
        i2 = e2
    mapped = dev_ok and ev_ok and op in (0x0A, 0x0B) and LPI <= i2 < 1 << 16 and c2 < 0x2000
    want = 1 if mapped and c2 == c1 and coll_ok else 0
    got = g.signal(d2 & 0xFFFF_FFFF, e2)
    assert got == want
    if want:
        assert g.pending() == [(i2, rd)]
    assert g.rd(CREADR) == g.rd(CWRITER) == 96
    assert len(g.its.errors) == 3 - (dev_ok or not vd and dev < 0x2000) \
        - (vc == 0 and rd < 2 or coll_ok) - (mapped or op in (0x05,))


# -- irq-bypass --------------------------------------------------------------------------------


def test_irqbypass_pairs_by_token_in_either_order():
    log = []
    mgr = IrqBypass()
    tok, other = object(), object()

    def cons(token, ret=0):
        return IrqBypassConsumer(token, lambda c, p: log.append(("add", p.irq)) or ret,
                                 lambda c, p: log.append(("del", p.irq)))

    p = IrqBypassProducer(tok, 42)
    assert mgr.register_producer(p) == 0
    assert mgr.register_producer(IrqBypassProducer(tok, 43)) == -EBUSY
    assert mgr.register_producer(IrqBypassProducer(None, 44)) == -EINVAL
    c = cons(tok)
    assert mgr.register_consumer(cons(other)) == 0 and log == []
    assert mgr.register_consumer(c) == 0 and log == [("add", 42)]
    assert c.producer is p and p.consumer is c
    assert mgr.register_consumer(cons(tok)) == -EBUSY
    mgr.unregister_producer(p)
    assert log[-1] == ("del", 42) and c.producer is None
    p2 = IrqBypassProducer(tok, 50)
    assert mgr.register_producer(p2) == 0 and log[-1] == ("add", 50)
    mgr.unregister_consumer(c)
    assert log[-1] == ("del", 50) and p2.consumer is None
    # a connect that fails: the newcomer is not registered
    bad = cons(tok, ret=-22)
    assert mgr.register_consumer(bad) == -22 and bad not in mgr.consumers
    mgr.unregister_consumer(bad)                             # not registered: nothing
    assert log[-1] == ("add", 50)


# -- GICv4 forwarding with a VFIO device -----------------------------------------------------


NVEC = 4
GUEST_DEVID = 0x55


def host_commands(k, since):
    """The host ITS driver's commands posted since queue offset ``since``: (opcode, words)."""
    out, off = [], since
    while off != k.its.cmd_write:
        raw = k.ram.read(k.its.cmdq + off, 32)
        words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, 32, 8)]
        out.append((words[0] & 0xFF, words))
        off = (off + 32) % 0x10000
    return out


def ops(cmds):
    return [o for o, _ in cmds]


VMAPP, VMAPTI, VMOVI, DISCARD_OP, MAPTI_OP, INT_OP = 0x29, 0x2A, 0x21, 0x0F, 0x0A, 0x03


@pytest.fixture
def v4():
    m = ArmVirt(devices=[{"msix": NVEC}], gicv4=True)
    k = m.boot()
    bdf = k.pci.devices[0].bdf
    k.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", bdf)
    f = k.open("/dev/vfio/devices/vfio0")
    f.private_data._grant_access()
    k.pci.devices[0].set_master()
    return m, k, f


def set_triggers(f, efds, start=0):
    flags = V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(flags=flags, index=V.VFIO_PCI_MSIX_IRQ_INDEX,
                                                 start=start, count=len(efds),
                                                 data=[e.fd if e else -1 for e in efds]))


def fire(m, k, v):
    m.functions[0].notify(v)
    k.handle_interrupts()


def guest_for_device(k, vintid=LPI + 5):
    g = Guest(k)
    g.cmds(mapd(GUEST_DEVID, 2, ITT), mapc(0, 0), mapc(1, 1),
           mapti(GUEST_DEVID, 0, vintid, 0), mapti(GUEST_DEVID, 1, vintid + 1, 1))
    return g


def test_gicv4_forwarding_vmapti_direct_injection_movi_discard(v4):
    m, k, f = v4
    efds = [k.eventfd() for _ in range(2)]
    set_triggers(f, efds)
    g = guest_for_device(k)
    g.route(1, GUEST_DEVID, 0)
    pdev = k.pci.devices[0]
    host_irq = pdev.msi_descs[0].irq
    since = k.its.cmd_write
    g.irqfd(efds[0].fd, 1)
    cmds = host_commands(k, since)
    assert VMAPP in ops(cmds) and VMAPTI in ops(cmds)
    vpe0 = g.kvm.vpes[0]
    vmapti = next(w for o, w in cmds if o == VMAPTI)
    event_id = vmapti[1] & 0xFFFF_FFFF
    assert vmapti[0] >> 32 == pdev.rid and vmapti[1] >> 32 == vpe0.vpe_id
    assert vmapti[2] & 0xFFFF_FFFF == LPI + 5                  # the guest's vINTID
    assert g.kvm.lpis[LPI + 5].hw and g.kvm.lpis[LPI + 5].host_irq == host_irq
    # the device fires: the vLPI is pending in vPE 0's table, no eventfd signal
    fire(m, k, 0)
    assert m.gic.pending_bit(vpe0.vpt, LPI + 5) is True
    assert efds[0].f_op.count == 0 and g.pending() == []
    # the vPE's property table carries the guest's priority and enable
    assert k.ram.read(vpe0.vprop + 5, 1)[0] == 0xA0 | 2 | 1
    # the other vector is not forwarded: its eventfd is signalled
    fire(m, k, 1)
    assert efds[1].f_op.count == 1
    # guest MOVI to vCPU 1: KVM maps the vLPI again; the host ITS moves it with VMOVI
    m.gic.pending_bit(vpe0.vpt, LPI + 5, False)
    since = k.its.cmd_write
    g.cmds(movi(GUEST_DEVID, 0, 1))
    cmds = host_commands(k, since)
    vpe1 = g.kvm.vpes[1]
    vmovi = next(w for o, w in cmds if o == VMOVI)
    assert vmovi[1] >> 32 == vpe1.vpe_id and vmovi[1] & 0xFFFF_FFFF == event_id
    fire(m, k, 0)
    assert m.gic.pending_bit(vpe1.vpt, LPI + 5) is True
    assert not m.gic.pending_bit(vpe0.vpt, LPI + 5)
    # KVM_SIGNAL_MSI of a forwarded LPI goes through the host ITS (INT)
    m.gic.pending_bit(vpe1.vpt, LPI + 5, False)
    since = k.its.cmd_write
    assert g.signal(GUEST_DEVID, 0) == 1
    assert INT_OP in ops(host_commands(k, since))
    assert m.gic.pending_bit(vpe1.vpt, LPI + 5) is True
    # guest DISCARD: unforwarded (DISCARD + MAPTI back to the host LPI)
    since = k.its.cmd_write
    g.cmds(discard(GUEST_DEVID, 0))
    cmds = host_commands(k, since)
    assert ops(cmds)[:2] == [DISCARD_OP, MAPTI_OP]
    assert next(w for o, w in cmds if o == MAPTI_OP)[1] >> 32 == k.irq.desc(
        host_irq).irq_data.parent_data.hwirq
    m.gic.pending_bit(vpe1.vpt, LPI + 5, False)
    seen = []
    efds[0].f_op.add_wait_queue(lambda ctx, key: seen.append(key))
    fire(m, k, 0)
    assert seen and not m.gic.pending_bit(vpe1.vpt, LPI + 5)  # the eventfd path again
    assert g.pending() == []                                   # translation: unmapped
    assert m.its.stats["command_errors"] == 0


def test_gicv4_deassign_and_route_change_unforward(v4):
    m, k, f = v4
    efds = [k.eventfd() for _ in range(2)]
    g = guest_for_device(k)
    g.route(1, GUEST_DEVID, 0)
    # consumer first, producer second: connected when VFIO sets the trigger
    g.irqfd(efds[0].fd, 1)
    set_triggers(f, efds)
    vpe0 = g.kvm.vpes[0]
    fire(m, k, 0)
    assert m.gic.pending_bit(vpe0.vpt, LPI + 5) and efds[0].f_op.count == 0
    # deassign: back to the host LPI and the eventfd
    since = k.its.cmd_write
    g.irqfd(efds[0].fd, 1, K.KVM_IRQFD_FLAG_DEASSIGN)
    assert ops(host_commands(k, since))[:2] == [DISCARD_OP, MAPTI_OP]
    m.gic.pending_bit(vpe0.vpt, LPI + 5, False)
    fire(m, k, 0)
    assert efds[0].f_op.count == 1 and not m.gic.pending_bit(vpe0.vpt, LPI + 5)
    assert not g.kvm.lpis[LPI + 5].hw
    efds[0].read()
    # again, then a routing change: unforwarded, software injection of the new route
    g.irqfd(efds[0].fd, 1)
    assert g.kvm.lpis[LPI + 5].hw
    g.route(1, GUEST_DEVID, 1)
    assert not g.kvm.lpis[LPI + 5].hw
    fire(m, k, 0)
    assert g.pending() == [(LPI + 6, 1)]                       # through the vITS, event 1
    # the VFIO vector torn down while forwarded: unforwarded first
    g.route(1, GUEST_DEVID, 0)
    g.irqfd(efds[0].fd, 1, K.KVM_IRQFD_FLAG_DEASSIGN)
    g.irqfd(efds[0].fd, 1)
    assert g.kvm.lpis[LPI + 5].hw
    set_triggers(f, [None])
    assert not g.kvm.lpis[LPI + 5].hw
    assert m.its.stats["command_errors"] == 0


def test_gicv4_not_a_vits_doorbell_is_not_forwarded(v4):
    m, k, f = v4
    efds = [k.eventfd()]
    set_triggers(f, efds)
    g = guest_for_device(k)
    g.route(1, GUEST_DEVID, 0, address=0x0900_0040)            # no vITS there
    since = k.its.cmd_write
    g.irqfd(efds[0].fd, 1)
    assert VMAPTI not in ops(host_commands(k, since))
    seen = []
    efds[0].f_op.add_wait_queue(lambda ctx, key: seen.append(key))
    fire(m, k, 0)
    assert seen                                               # VFIO signalled the eventfd
    assert not any(m.gic.pending_bit(v.vpt, LPI + 5) for v in g.kvm.vpes.values())
    assert not g.kvm.lpis[LPI + 5].hw


def test_gicv4_pending_lpi_moves_to_the_vpe_and_unmapped_event_is_not_forwarded(v4):
    m, k, f = v4
    efds = [k.eventfd() for _ in range(2)]
    set_triggers(f, efds)
    g = guest_for_device(k)
    assert g.signal(GUEST_DEVID, 0) == 1 and g.pending() == [(LPI + 5, 0)]
    g.route(1, GUEST_DEVID, 0)
    g.irqfd(efds[0].fd, 1)
    assert g.pending() == [] and m.gic.pending_bit(g.kvm.vpes[0].vpt, LPI + 5)
    # an event the guest has not mapped: not forwarded, silently (set_forwarding
    # answers 0), so the bypass pair stays connected
    g.route(2, GUEST_DEVID, 3)
    since = k.its.cmd_write
    g.irqfd(efds[1].fd, 2)
    assert VMAPTI not in ops(host_commands(k, since))
    pairs = [p for p in irqbypass_of(k).producers if p.irq == k.pci.devices[0].msi_descs[1].irq]
    assert pairs and pairs[0].consumer is not None
    fire(m, k, 1)
    assert efds[1].f_op.count == 0                            # taken by the irqfd


def test_gicv3_host_never_forwards(k):
    k2 = ArmVirt(devices=[{"msix": 2}]).boot()
    bdf = k2.pci.devices[0].bdf
    k2.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
    k2.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", bdf)
    f = k2.open("/dev/vfio/devices/vfio0")
    f.private_data._grant_access()
    efd = k2.eventfd()
    set_triggers(f, [efd])
    g = guest_for_device(k2)
    g.route(1, GUEST_DEVID, 0)
    g.irqfd(efd.fd, 1)
    assert not g.kvm.lpis[LPI + 5].hw and g.kvm.vpes == {}


def close_vm(k, g):
    """Close every file of the guest's VM (VM, vCPUs, devices): the VM is destroyed."""
    for fd, fl in list(k.files.fds.items()):
        pd = getattr(fl, "private_data", None) if fl is not None else None
        if pd is g.kvm or getattr(pd, "kvm", None) is g.kvm:
            k.close(fd)


def test_gicv4_vm_destroy_unmaps_the_vpes_and_frees_their_pending_tables(v4):
    m, k, f = v4
    efds = [k.eventfd() for _ in range(2)]
    set_triggers(f, efds)
    g = guest_for_device(k)
    g.route(1, GUEST_DEVID, 0)
    before = k.mm.in_use
    g.irqfd(efds[0].fd, 1)
    vpes = list(g.kvm.vpes.values())
    mapped = sorted(v.vpe_id for v in vpes if v.mapped)
    assert len(vpes) == 2 and mapped and all(i in k.its.vpes for i in mapped)
    assert k.mm.in_use - before >= len(vpes) * 0x10000     # a 64 KiB VPT per vPE
    since, live = k.its.cmd_write, k.mm.in_use
    close_vm(k, g)
    assert g.kvm.destroyed
    # vgic_v4_teardown: every mapped vPE gets VMAPP with V=0, every VPT is freed.
    cmds = host_commands(k, since)
    unmapped = sorted(w[1] >> 32 for o, w in cmds if o == VMAPP and not w[2] >> 63)
    assert unmapped == mapped and k.its.vpes == {}
    # freed: both VPTs and the VM's property table (the host ITS's own vPE table stays)
    assert live - k.mm.in_use >= len(vpes) * 0x10000 + (1 << 16) - 8192


def test_mapc_and_movall_check_vcpu_ids_not_the_count(k):
    # vCPUs 0 and 5: KVM looks targets up by vCPU id (kvm_get_vcpu_by_id), so 5 is a
    # target and 1 (below the count of 2) is not; an unmap checks no target at all.
    g = Guest(k, vcpu_ids=[0, 5])
    g.cmds(mapd(1, 1, ITT), mapc(0, 5), mapti(1, 0, LPI, 0))
    assert g.its.errors == []
    g.cmds(mapc(1, 1))
    assert g.its.errors == [("MAPC", 0x010902)]
    g.cmds(movall(5, 1))
    assert g.its.errors[-1] == ("MOVALL", 0x010E01)
    g.cmds(movall(5, 0))
    assert len(g.its.errors) == 2
    assert g.signal(1, 0) == 1 and g.pending() == [(LPI, 0)]   # MOVALL moved it to vCPU 0
    g.cmds(mapc(0, 9, v=0))                                     # V=0, target 9: no error
    assert len(g.its.errors) == 2
    assert g.signal(1, 0) != 1                                  # the collection is gone


def test_guest_movi_the_host_refuses_is_done_for_the_guest_and_logged(v4, monkeypatch):
    """A host that refuses to move a forwarded vLPI (its_map_vlpi fails, e.g. the
    per-vector design without an entry) does not fail the guest's command: KVM
    ignores a command handler's error, the queue goes on, the vLPI stays put."""
    m, k, f = v4
    efd = k.eventfd()
    set_triggers(f, [efd])
    g = guest_for_device(k)
    g.route(1, GUEST_DEVID, 0)
    g.irqfd(efd.fd, 1)
    vpe0 = g.kvm.vpes[0]

    def refuse(host_irq, irq):
        raise fail(errno.ENOENT, "no MSI address")

    monkeypatch.setattr(g.kvm, "map_vlpi", refuse)
    since = k.its.cmd_write
    g.cmds(movi(GUEST_DEVID, 0, 1))
    assert g.rd(CREADR) == g.rd(CWRITER)
    assert VMOVI not in ops(host_commands(k, since))
    assert any("moving vLPI" in line for line in k.log)
    fire(m, k, 0)
    assert m.gic.pending_bit(vpe0.vpt, LPI + 5) is True


@given(stream=st.lists(st.one_of(
    _cmd_strategy(),
    st.tuples(st.just("msi"), st.sampled_from(DEVS), st.sampled_from(EVS))),
    min_size=1, max_size=40))
def test_the_translation_cache_never_outlives_a_translation(stream):
    """MSIs between the commands fill the vITS's translation cache; every command that
    can change a translation must drop it (KVM's vgic_its_invalidate_cache() callers), or
    a later MSI goes where the ITE no longer says.  The oracle knows no cache."""
    k = ArmVirt(devices=[], smmu=None).boot()
    g = Guest(k)
    oracle = Oracle(2)
    for c in VALID_START + stream:
        if c[0] == "msi":
            assert g.signal(c[1], c[2]) == oracle.signal(c[1], c[2]), c
            assert sorted(g.pending()) == sorted(oracle.pending.items()), c
            continue
        g.cmds(_encode(c))
        oracle.apply(c)
    event(f"cache hits={min(g.its.cache_stats['hits'], 3)}")
    assert sorted(g.pending()) == sorted(oracle.pending.items())


def test_the_translation_cache_hits_and_is_dropped_by_movi_and_disable(k):
    g = Guest(k)
    g.cmds(*(_encode(c) for c in VALID_START))
    stats = g.its.cache_stats
    assert g.signal(1, 0) == 1 and stats["misses"] == 1 and stats["hits"] == 0
    assert g.signal(1, 0) == 1 and stats["hits"] == 1            # the same (DeviceID, EventID)
    assert (1, 0) in g.its.translation_cache
    g.cmds(movi(1, 0, 1))                                         # LPI moves to vCPU 1
    assert g.its.translation_cache == {}
    g.signal(1, 0)
    assert (LPI, 1) in g.pending() and stats["misses"] == 2
    g.wr(0, 0, 4)                                                 # GITS_CTLR: disabled
    assert g.its.translation_cache == {}


@pytest.mark.parametrize("undo", [
    [discard(1, 0)],                                  # the event is unmapped
    [mapd(1, 1, ITT, v=0)],                           # its device is unmapped
    [mapd(1, 1, ITT + 0x800)],                        # ... or mapped again, empty
    [mapc(0, 0, v=0)],                                # its collection is unmapped
])
def test_a_cached_translation_is_gone_with_what_it_came_from(k, undo):
    """After the command, an MSI of the event is not delivered: a cache kept across it
    would still deliver it (to an LPI no ITE maps any more)."""
    g = Guest(k)
    g.cmds(*(_encode(c) for c in VALID_START))
    assert g.signal(1, 0) == 1 and (1, 0) in g.its.translation_cache
    g.cmds(clear(1, 0), *undo)
    assert g.its.translation_cache == {}
    assert g.signal(1, 0) != 1 and (LPI, 0) not in g.pending()


def test_lpis_disabled_on_a_redistributor_drop_every_cached_translation(k):
    g = Guest(k)
    g.cmds(*(_encode(c) for c in VALID_START))
    assert g.signal(1, 0) == 1 and g.its.translation_cache
    g.gicr(0, 0x0, 0, 4)                                          # GICR_CTLR.EnableLPIs = 0
    assert g.its.translation_cache == {}
    assert g.signal(1, 0) == -errno.EBUSY


def test_gicv4_a_vpe_is_loaded_only_after_the_resident_one_is_descheduled(v4):
    """More vCPUs than host CPUs: vCPUs 0 and 4 share physical CPU 0.  Loading vCPU 4's
    vPE there must first clear GICR_VPENDBASER.Valid of vCPU 0's (its_vpe_deschedule /
    vgic_v4_put); a Valid=1 write over a Valid VPENDBASER is UNPREDICTABLE (GICv4)."""
    m, k, f = v4
    g = Guest(k, nvcpus=5)
    vpes = [g.kvm.vpe_of(v) for v in (0, 4)]
    assert vpes[0].col == vpes[1].col
    for vpe in vpes:
        k.its.map_vpe(vpe)
    rd = m.gic.redists[vpes[0].col]
    writes = []
    real = rd.mmio_write

    def spy(offset, value, size):
        if offset == G_VLPI_FRAME + G_GICR_VPENDBASER:
            was_valid = bool(rd.vpendbaser >> 63)
            writes.append((value, was_valid))
        return real(offset, value, size)

    rd.mmio_write = spy
    cpuifs = [g.kvm.vcpus[v].cpuif for v in (0, 4)]
    for turn in (0, 1, 0):
        cpuifs[turn].igrpen1 = 1
        cpuifs[turn].hppir1()                              # the vCPU runs: its vPE loaded
        assert rd.resident_vpt == vpes[turn].vpt
    valid_loads = [(v, was) for v, was in writes if v >> 63]
    assert len(valid_loads) == 3
    assert not any(was for _, was in valid_loads)         # never loaded over a Valid one
    assert [v & ~(1 << 63) for v, _ in valid_loads] == [vpes[0].vpt, vpes[1].vpt, vpes[0].vpt]
    assert all(r.stats["vpe_loads_over_valid"] == 0 for r in m.gic.redists)
