"""KVM's MSI plumbing on arm64, driven through the uapi structures on a booted ArmVirt.

Expected values come from Linux's documented and source behaviour
(Documentation/virt/kvm/api.rst, devices/arm-vgic-v3.rst, arm-vgic-its.rst;
virt/kvm/kvm_main.c, eventfd.c, irqchip.c, arch/arm64/kvm/vgic/vgic-irqfd.c,
vgic-its.c, vgic-kvm-device.c): API version 12, KVM_CAP_IRQ_ROUTING answers
KVM_MAX_IRQ_ROUTES (4096), an MSI reaches the vITS whose 128K frame holds its
address (the doorbell is GITS_TRANSLATER at base + 0x10040), KVM_SIGNAL_MSI
returns 1 when delivered, ENODEV without a vITS, EINVAL without a DeviceID or
outside every frame.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pymsi.kernel.base import KernelError
from pymsi.machine import ArmVirt
from pymsi.uapi import kvm as K

from kernel_util import errno_of

EBADF, EINVAL, EBUSY, EEXIST, ENODEV, ENXIO, EAGAIN, EFAULT, ENOTTY = (
    errno.EBADF, errno.EINVAL, errno.EBUSY, errno.EEXIST, errno.ENODEV, errno.ENXIO,
    errno.EAGAIN, errno.EFAULT, errno.ENOTTY)

GICD_BASE, GICR_BASE, ITS_BASE = 0x0800_0000, 0x080A_0000, 0x0808_0000
DOORBELL = ITS_BASE + 0x10040            # GITS_TRANSLATER
UNDEF = 2**64 - 1




@pytest.fixture
def k():
    return ArmVirt(devices=[{"msix": 4}]).boot()


def set_addr(k, fd, group, attr, value):
    va = k.mmap(4096)
    k.user_write(va, value.to_bytes(8, "little"))
    return k.ioctl(fd, K.KVM_SET_DEVICE_ATTR,
                   K.KvmDeviceAttr(group=group, attr=attr, addr=va))


def get_addr(k, fd, group, attr):
    va = k.mmap(4096)
    k.ioctl(fd, K.KVM_GET_DEVICE_ATTR, K.KvmDeviceAttr(group=group, attr=attr, addr=va))
    return int.from_bytes(k.user_read(va, 8), "little")


def create_device(k, vm, type_, flags=0):
    cd = K.KvmCreateDevice(type=type_, flags=flags)
    assert k.ioctl(vm, K.KVM_CREATE_DEVICE, cd) == 0
    return cd.fd


def make_vm(k, its_base=ITS_BASE, init=True):
    """A VM with a vGICv3 and one vITS at ``its_base``: (vm fd, vgic fd, its fd, its)."""
    kvm = k.open("/dev/kvm")
    vm = kvm.ioctl(K.KVM_CREATE_VM, 0)
    kvm.close()
    gic = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    set_addr(k, gic, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE)
    set_addr(k, gic, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)
    its_fd = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_ITS)
    set_addr(k, its_fd, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_ITS_ADDR_TYPE, its_base)
    if init:
        k.ioctl(gic, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
            group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=K.KVM_DEV_ARM_VGIC_CTRL_INIT))
    return vm, gic, its_fd, k.files.fds[its_fd].private_data


def msi_entry(gsi, address=DOORBELL, data=0, devid=0, flags=K.KVM_MSI_VALID_DEVID):
    return K.KvmIrqRoutingEntry(gsi=gsi, type=K.KVM_IRQ_ROUTING_MSI, flags=flags,
                                u={"msi": {"address_lo": address & 0xFFFF_FFFF,
                                           "address_hi": address >> 32, "data": data,
                                           "devid": devid}})


def routing(*entries, nr=None, flags=0):
    return K.KvmIrqRouting(nr=len(entries) if nr is None else nr, flags=flags,
                           entries=list(entries))


def irqfd(fd, gsi, flags=0):
    return K.KvmIrqfd(fd=fd, gsi=gsi, flags=flags)


# -- /dev/kvm ---------------------------------------------------------------------------


def test_dev_kvm_api_version_and_extensions(k):
    kvm = k.open("/dev/kvm")
    assert kvm.ioctl(K.KVM_GET_API_VERSION, 0) == 12
    assert errno_of(kvm.ioctl, K.KVM_GET_API_VERSION, 1) == EINVAL
    assert kvm.ioctl(K.KVM_CHECK_EXTENSION, K.KVM_CAP_IRQ_ROUTING) == 4096
    for cap in (K.KVM_CAP_IRQFD, K.KVM_CAP_SIGNAL_MSI):
        assert kvm.ioctl(K.KVM_CHECK_EXTENSION, cap) == 1
    assert kvm.ioctl(K.KVM_CHECK_EXTENSION, 0x7FFF_0000) == 0
    assert errno_of(kvm.ioctl, K.KVM_CHECK_EXTENSION, K.KVM_CAP_MSI_DEVID) == EINVAL
    assert errno_of(kvm.ioctl, K.KVM_CREATE_VCPU, 0) == EINVAL      # not a /dev/kvm ioctl
    vm = kvm.ioctl(K.KVM_CREATE_VM, 0)
    assert vm != kvm.fd and vm in k.files and vm in k.files.cloexec
    assert k.ioctl(vm, K.KVM_CHECK_EXTENSION, K.KVM_CAP_MSI_DEVID) == 0
    create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_ITS)
    assert k.ioctl(vm, K.KVM_CHECK_EXTENSION, K.KVM_CAP_MSI_DEVID) == 1
    assert errno_of(k.ioctl, vm, 0xAEFF, 0) == EINVAL


# -- devices ----------------------------------------------------------------------------


def test_create_device_errors_and_test_flag(k):
    vm = k.open("/dev/kvm").ioctl(K.KVM_CREATE_VM, 0)
    nfiles = len(k.files)
    cd = K.KvmCreateDevice(type=K.KVM_DEV_TYPE_ARM_VGIC_V3, flags=K.KVM_CREATE_DEVICE_TEST)
    assert k.ioctl(vm, K.KVM_CREATE_DEVICE, cd) == 0 and cd.fd == 0
    assert len(k.files) == nfiles
    for t in (0, K.KVM_DEV_TYPE_FSL_MPIC_20, K.KVM_DEV_TYPE_ARM_VGIC_V2, 99):
        assert errno_of(k.ioctl, vm, K.KVM_CREATE_DEVICE, K.KvmCreateDevice(type=t)) == ENODEV
        assert errno_of(k.ioctl, vm, K.KVM_CREATE_DEVICE,
                        K.KvmCreateDevice(type=t, flags=K.KVM_CREATE_DEVICE_TEST)) == ENODEV
    assert len(k.files) == nfiles
    gic = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    assert gic in k.files and len(k.files) == nfiles + 1
    assert errno_of(k.ioctl, vm, K.KVM_CREATE_DEVICE,
                    K.KvmCreateDevice(type=K.KVM_DEV_TYPE_ARM_VGIC_V3)) == EEXIST
    assert k.ioctl(vm, K.KVM_CREATE_DEVICE, cd) == 0      # TEST still succeeds
    assert len(k.files) == nfiles + 1
    assert errno_of(k.ioctl, gic, 0xAEFF, 0) == ENOTTY


def test_vgic_and_its_addresses(k):
    vm = k.open("/dev/kvm").ioctl(K.KVM_CREATE_VM, 0)
    gic = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    its = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_ITS)
    G, A = K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_ITS_ADDR_TYPE
    assert get_addr(k, its, G, A) == UNDEF
    assert get_addr(k, gic, G, K.KVM_VGIC_V3_ADDR_TYPE_DIST) == UNDEF
    assert errno_of(set_addr, k, its, G, A, ITS_BASE + 0x1000) == EINVAL
    assert errno_of(set_addr, k, its, G, A + 1, ITS_BASE) == ENODEV
    assert errno_of(set_addr, k, its, 0x77, A, ITS_BASE) == ENXIO
    assert get_addr(k, its, G, A) == UNDEF
    bad = K.KvmDeviceAttr(group=G, attr=A, addr=0x10)              # unmapped user pointer
    assert errno_of(k.ioctl, its, K.KVM_SET_DEVICE_ATTR, bad) == EFAULT
    assert set_addr(k, its, G, A, ITS_BASE) == 0
    assert get_addr(k, its, G, A) == ITS_BASE
    assert errno_of(set_addr, k, its, G, A, ITS_BASE + 0x20000) == EEXIST
    assert get_addr(k, its, G, A) == ITS_BASE
    for t, base in ((K.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE),
                    (K.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)):
        assert errno_of(set_addr, k, gic, G, t, base + 0x8000) == EINVAL
        assert set_addr(k, gic, G, t, base) == 0
        assert errno_of(set_addr, k, gic, G, t, base + 0x100000) == EEXIST
        assert get_addr(k, gic, G, t) == base
    assert errno_of(set_addr, k, gic, G, K.KVM_VGIC_ITS_ADDR_TYPE, 0) == ENODEV
    ctrl = K.KvmDeviceAttr(group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=K.KVM_DEV_ARM_VGIC_CTRL_INIT)
    assert k.ioctl(gic, K.KVM_HAS_DEVICE_ATTR, ctrl) == 0
    assert k.ioctl(gic, K.KVM_SET_DEVICE_ATTR, ctrl) == 0
    assert k.ioctl(its, K.KVM_SET_DEVICE_ATTR, ctrl) == 0
    assert errno_of(k.ioctl, gic, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
        group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=99)) == ENXIO


# -- the whole flow ---------------------------------------------------------------------


def test_irqfd_flow_routes_at_signal_time(k):
    vm, _, _, its = make_vm(k)
    assert k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(
        msi_entry(5, data=3, devid=0x10), msi_entry(6, data=9, devid=0x18))) == 0
    efd = k.eventfd()
    assert k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 5)) == 0
    assert its.delivered == []
    ctx = k.eventfd_ctx_fdget(efd.fd)                       # as a kernel signaller would
    k.eventfd_signal(ctx)
    ctx.put()
    assert its.delivered == [(0x10, 3)]
    efd.write(1)                                            # a user write fires it too
    assert its.delivered == [(0x10, 3)] * 2
    assert efd.f_op.count == 0                              # the irqfd took the count
    # a route changed after assignment takes effect on the next signal
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(5, data=4, devid=0x20)))
    efd.write(1)
    assert its.delivered[-1] == (0x20, 4) and len(its.delivered) == 3
    # an address in no vITS frame delivers nothing; neither does a GSI without a route
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(5, address=0x0900_0040, data=1)))
    efd.write(1)
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing())
    efd.write(1)
    assert len(its.delivered) == 3
    # without KVM_MSI_VALID_DEVID the vITS cannot take it
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(5, data=1, flags=0)))
    efd.write(1)
    assert len(its.delivered) == 3
    # deassign: no more injections, the eventfd is off the wait queue
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(5, data=7, devid=1)))
    assert k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 5, K.KVM_IRQFD_FLAG_DEASSIGN)) == 0
    assert efd.f_op.wqh == [] and efd.f_op.refs == 1
    efd.write(1)
    assert len(its.delivered) == 3


def test_pending_count_injects_once_at_assignment(k):
    vm, _, _, its = make_vm(k)
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(1, data=2, devid=3)))
    efd = k.eventfd(5)
    k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 1))
    assert its.delivered == [(3, 2)]


def test_signal_msi(k):
    vm, _, _, its = make_vm(k)
    m = K.KvmMsi(address_lo=DOORBELL, data=11, flags=K.KVM_MSI_VALID_DEVID, devid=0x42)
    # The vITS took it but the guest has not enabled it: vgic_its_resolve_lpi() -EBUSY
    # (tests/test_kvm_vgic.py translates through guest-programmed tables).
    assert errno_of(k.ioctl, vm, K.KVM_SIGNAL_MSI, m) == EBUSY
    assert its.delivered == [(0x42, 11)]
    for bad in (K.KvmMsi(address_lo=DOORBELL, data=1, flags=2 | K.KVM_MSI_VALID_DEVID),
                K.KvmMsi(address_lo=DOORBELL, data=1),                    # no DeviceID
                K.KvmMsi(address_lo=ITS_BASE - 4, data=1, flags=K.KVM_MSI_VALID_DEVID),
                K.KvmMsi(address_lo=ITS_BASE + 0x20000, flags=K.KVM_MSI_VALID_DEVID),
                K.KvmMsi(address_lo=DOORBELL, address_hi=1, flags=K.KVM_MSI_VALID_DEVID)):
        assert errno_of(k.ioctl, vm, K.KVM_SIGNAL_MSI, bad) == EINVAL
    assert its.delivered == [(0x42, 11)]
    # a VM without an in-kernel irqchip: EINVAL (kvm_send_userspace_msi)
    vm2 = k.open("/dev/kvm").ioctl(K.KVM_CREATE_VM, 0)
    assert errno_of(k.ioctl, vm2, K.KVM_SIGNAL_MSI, m) == EINVAL
    # a vGIC without a vITS: ENODEV (vgic_has_its)
    create_device(k, vm2, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    assert errno_of(k.ioctl, vm2, K.KVM_SIGNAL_MSI, m) == ENODEV


def test_integer_ioctl_arguments_that_are_not_integers_are_einval(k):
    kvm = k.open("/dev/kvm")
    for bad in (None, "x", 1.5, b"\0"):
        assert errno_of(kvm.ioctl, K.KVM_CREATE_VM, bad) == EINVAL
        assert errno_of(kvm.ioctl, K.KVM_CHECK_EXTENSION, bad) == EINVAL
        assert errno_of(kvm.ioctl, K.KVM_GET_API_VERSION, bad) == EINVAL
    assert len(k.kvm.vms) == 0
    vm = kvm.ioctl(K.KVM_CREATE_VM, 0)
    for bad in (None, "x", 1.5):
        assert errno_of(k.ioctl, vm, K.KVM_CREATE_VCPU, bad) == EINVAL
        assert errno_of(k.ioctl, vm, K.KVM_CHECK_EXTENSION, bad) == EINVAL
    assert k.files.fds[vm].private_data.vcpus == {}


def test_two_its_each_take_their_own_frame(k):
    vm, _, _, its0 = make_vm(k)
    fd1 = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_ITS)
    set_addr(k, fd1, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_ITS_ADDR_TYPE, 0x0A00_0000)
    its1 = k.files.fds[fd1].private_data
    for addr, dev in ((DOORBELL, 1), (0x0A01_0040, 2)):
        assert errno_of(k.ioctl, vm, K.KVM_SIGNAL_MSI, K.KvmMsi(
            address_lo=addr, data=dev, devid=dev, flags=K.KVM_MSI_VALID_DEVID)) == EBUSY
    assert its0.delivered == [(1, 1)] and its1.delivered == [(2, 2)]


# -- errnos, nothing changed --------------------------------------------------------------


def test_routing_errors_change_nothing(k):
    vm, _, _, its = make_vm(k)
    good = routing(msi_entry(2, data=5, devid=6))
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, good)
    chip = K.KvmIrqRoutingEntry(gsi=3, type=K.KVM_IRQ_ROUTING_IRQCHIP,
                                u={"irqchip": {"irqchip": 0, "pin": 3}})
    bads = [
        routing(nr=4097),
        routing(msi_entry(2, data=1), flags=1),
        routing(msi_entry(4096)),
        routing(msi_entry(2, flags=2)),
        routing(msi_entry(2), msi_entry(2, data=1)),                     # duplicate MSI gsi
        routing(msi_entry(1), K.KvmIrqRoutingEntry(gsi=1, type=K.KVM_IRQ_ROUTING_IRQCHIP)),
        routing(K.KvmIrqRoutingEntry(gsi=1, type=K.KVM_IRQ_ROUTING_HV_SINT)),
        routing(K.KvmIrqRoutingEntry(gsi=1, type=0)),
        routing(K.KvmIrqRoutingEntry(gsi=1, type=K.KVM_IRQ_ROUTING_IRQCHIP, flags=1)),
        routing(K.KvmIrqRoutingEntry(gsi=1, type=K.KVM_IRQ_ROUTING_IRQCHIP,
                                     u={"irqchip": {"irqchip": 1}})),
        routing(K.KvmIrqRoutingEntry(gsi=1, type=K.KVM_IRQ_ROUTING_IRQCHIP,
                                     u={"irqchip": {"pin": 988}})),
        routing(chip, chip),                                            # same irqchip twice
    ]
    efd = k.eventfd()
    k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 2))
    for bad in bads:
        assert errno_of(k.ioctl, vm, K.KVM_SET_GSI_ROUTING, bad) == EINVAL, bad
        efd.write(1)
    assert its.delivered == [(6, 5)] * len(bads)
    assert errno_of(k.ioctl, vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(1), nr=2)) == EFAULT
    efd.write(1)
    assert its.delivered == [(6, 5)] * (len(bads) + 1)
    # two irqchip routes of one GSI to the same chip are refused, a single one is fine
    assert k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(chip)) == 0
    efd.write(1)                                   # gsi 2 has no route now
    assert len(its.delivered) == len(bads) + 1
    big = routing(*(msi_entry(g, devid=g) for g in range(4096)))
    assert k.ioctl(vm, K.KVM_SET_GSI_ROUTING, big) == 0


def test_irqfd_errors_change_nothing(k):
    vm, gic, _, its = make_vm(k, init=False)
    efd = k.eventfd()
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, irqfd(efd.fd, 1)) == EAGAIN   # vGIC not init
    k.ioctl(gic, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(
        group=K.KVM_DEV_ARM_VGIC_GRP_CTRL, attr=K.KVM_DEV_ARM_VGIC_CTRL_INIT))
    kvm_file = k.open("/dev/kvm")
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, irqfd(999, 1)) == EBADF
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, irqfd(kvm_file.fd, 1)) == EINVAL
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, irqfd(efd.fd, 1, flags=4)) == EINVAL
    assert efd.f_op.wqh == [] and efd.f_op.refs == 1
    # a resample eventfd must be an eventfd too; with one, an MSI irqfd is accepted
    rfd = k.eventfd()
    for bad, err in ((999, EBADF), (kvm_file.fd, EINVAL)):
        assert errno_of(k.ioctl, vm, K.KVM_IRQFD, K.KvmIrqfd(
            fd=efd.fd, gsi=1, flags=K.KVM_IRQFD_FLAG_RESAMPLE, resamplefd=bad)) == err
    assert efd.f_op.wqh == [] and efd.f_op.refs == 1 and rfd.f_op.refs == 1
    assert k.ioctl(vm, K.KVM_IRQFD, K.KvmIrqfd(fd=efd.fd, gsi=1, resamplefd=rfd.fd,
                                                flags=K.KVM_IRQFD_FLAG_RESAMPLE)) == 0
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, K.KvmIrqfd(
        fd=efd.fd, gsi=1, flags=K.KVM_IRQFD_FLAG_RESAMPLE, resamplefd=rfd.fd)) == EBUSY
    assert rfd.f_op.refs == 2
    k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 1, K.KVM_IRQFD_FLAG_DEASSIGN))
    assert rfd.f_op.refs == 1 and efd.f_op.refs == 1
    assert k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 1)) == 0
    assert efd.f_op.refs == 2 and len(efd.f_op.wqh) == 1
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, irqfd(efd.fd, 2)) == EBUSY
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD, irqfd(k.dup(efd.fd), 1)) == EBUSY
    assert efd.f_op.refs == 2 and len(efd.f_op.wqh) == 1
    # deassign of a pair that does not exist succeeds and changes nothing
    assert k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 2, K.KVM_IRQFD_FLAG_DEASSIGN)) == 0
    assert efd.f_op.refs == 2 and len(efd.f_op.wqh) == 1
    assert errno_of(k.ioctl, vm, K.KVM_IRQFD,
                    irqfd(999, 1, K.KVM_IRQFD_FLAG_DEASSIGN)) == EBADF
    # the same eventfd may serve another VM
    vm2, _, _, its2 = make_vm(k)
    assert k.ioctl(vm2, K.KVM_IRQFD, irqfd(efd.fd, 1)) == 0
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(1, devid=1)))
    k.ioctl(vm2, K.KVM_SET_GSI_ROUTING, routing(msi_entry(1, devid=2)))
    efd.write(1)
    assert its.delivered == [(1, 0)] and its2.delivered == [(2, 0)]


@given(data=st.data())
def test_routing_mutated_field_by_field_is_all_or_nothing(data):
    k = _ROUTING_K
    vm, its = _ROUTING_VM
    gsis = data.draw(st.lists(st.integers(0, 4095), min_size=1, max_size=6, unique=True))
    entries = [msi_entry(g, data=i, devid=g) for i, g in enumerate(gsis)]
    i = data.draw(st.integers(0, len(entries) - 1))
    field = data.draw(st.sampled_from(["none", "gsi", "type", "flags", "dup", "irqchip",
                                       "pin", "table_flags"]))
    event(field)
    e = entries[i]
    ok = field == "none"
    table_flags = 0
    if field == "gsi":
        e.gsi = data.draw(st.integers(0, 2**32 - 1))
        ok = e.gsi < 4096 and e.gsi not in gsis[:i] + gsis[i + 1:]
    elif field == "type":
        e.type = data.draw(st.integers(0, 2**32 - 1).filter(lambda t: t not in (1, 2)))
    elif field == "flags":
        e.flags = data.draw(st.integers(0, 2**32 - 1))
        ok = e.flags < 2
    elif field == "dup":
        entries.append(msi_entry(e.gsi, data=99))
    elif field in ("irqchip", "pin"):
        chip = data.draw(st.integers(0, 3)) if field == "irqchip" else 0
        pin = data.draw(st.integers(0, 2000)) if field == "pin" else 0
        entries[i] = K.KvmIrqRoutingEntry(gsi=e.gsi, type=K.KVM_IRQ_ROUTING_IRQCHIP,
                                          u={"irqchip": {"irqchip": chip, "pin": pin}})
        ok = chip < 1 and pin < 988                      # one vGIC, 1020 - 32 SPI pins
    elif field == "table_flags":
        table_flags = data.draw(st.integers(1, 2**32 - 1))
    # a known good table first, then the mutated one
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(7, data=1, devid=2)))
    err = errno_of(k.ioctl, vm, K.KVM_SET_GSI_ROUTING, routing(*entries, flags=table_flags))
    assert err == (None if ok else EINVAL)
    its.delivered.clear()
    m = K.KvmMsi(address_lo=DOORBELL, data=5, flags=K.KVM_MSI_VALID_DEVID, devid=5)
    assert errno_of(k.ioctl, vm, K.KVM_SIGNAL_MSI, m) == EBUSY     # the vITS is disabled
    efd = k.eventfd()
    k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 7))
    efd.write(1)
    k.close(efd.fd)
    # a refused table leaves the old one (gsi 7 -> devid 2, data 1); an accepted one
    # replaces it whole
    want = [(5, 5)]
    if not ok:
        want.append((2, 1))
    else:
        for x in entries:
            # an MSI route without KVM_MSI_VALID_DEVID is refused at injection
            # (vgic_msi_to_its: EINVAL), so nothing reaches the vITS
            if x.gsi == 7 and x.type == K.KVM_IRQ_ROUTING_MSI and \
                    x.flags & K.KVM_MSI_VALID_DEVID:
                want.append((x.u.msi.devid, x.u.msi.data))
    assert its.delivered == want


_ROUTING_K = ArmVirt(devices=[]).boot()
_ROUTING_VM = make_vm(_ROUTING_K)[::3]


# -- close --------------------------------------------------------------------------------


def test_close_vm_releases_irqfds_devices_hold_the_vm(k):
    vm, gic, its_fd, its = make_vm(k)
    kvm_vm = k.files.fds[vm].private_data
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, routing(msi_entry(1, devid=1)))
    efds = [k.eventfd() for _ in range(3)]
    for e in efds:
        k.ioctl(vm, K.KVM_IRQFD, irqfd(e.fd, 1))
    assert all(e.f_op.refs == 2 for e in efds)
    k.close(vm)
    assert all(e.f_op.refs == 1 and e.f_op.wqh == [] for e in efds)
    for e in efds:
        e.write(1)
    assert its.delivered == []
    assert not kvm_vm.destroyed and kvm_vm.devices           # device files hold the VM
    k.close(gic)
    assert not kvm_vm.destroyed
    assert k.kvm.vms == [kvm_vm]
    k.close(its_fd)
    assert kvm_vm.destroyed and kvm_vm.devices == [] and kvm_vm.routing == {}
    assert k.kvm.vms == []


def test_closing_the_eventfd_tears_down_its_irqfd(k):
    vm, _, _, its = make_vm(k)
    kvm_vm = k.files.fds[vm].private_data
    efd = k.eventfd()
    ctx = efd.f_op
    k.ioctl(vm, K.KVM_IRQFD, irqfd(efd.fd, 1))
    efd.close()
    assert kvm_vm.irqfds == [] and ctx.refs == 0 and ctx.wqh == []
    efd2 = k.eventfd()                                   # may reuse the number
    assert k.ioctl(vm, K.KVM_IRQFD, irqfd(efd2.fd, 1)) == 0


# -- a state machine against a reference model -------------------------------------------


class KvmMachine(RuleBasedStateMachine):
    """Routing, irqfd and SIGNAL_MSI in any order against a table of what Linux does."""

    @initialize()
    def boot(self):
        self.k = ArmVirt(devices=[]).boot()
        self.vm, _, _, self.its = make_vm(self.k)
        self.efds = [self.k.eventfd() for _ in range(3)]
        self.routes: dict[int, tuple[int, int, int, int]] = {}   # gsi -> addr, data, flags, devid
        self.bound: dict[int, int] = {}                           # eventfd index -> gsi
        self.expected: list[tuple[int, int]] = []

    def _deliver(self, addr, data, flags, devid):
        if flags & K.KVM_MSI_VALID_DEVID and ITS_BASE <= addr < ITS_BASE + 0x20000:
            self.expected.append((devid, data))
            return True
        return False

    @rule(entries=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(
        [DOORBELL, ITS_BASE, 0x0900_0040]), st.integers(0, 31), st.integers(0, 3),
        st.integers(0, 31)), max_size=5))
    def set_routing(self, entries):
        gsis = [e[0] for e in entries]
        ok = len(set(gsis)) == len(gsis) and all(f < 2 for _, _, _, f, _ in entries)
        r = routing(*(msi_entry(g, a, d, v, f) for g, a, d, f, v in entries))
        err = errno_of(self.k.ioctl, self.vm, K.KVM_SET_GSI_ROUTING, r)
        event(f"routing ok={ok}")
        assert err == (None if ok else EINVAL)
        if ok:
            self.routes = {g: (a, d, f, v) for g, a, d, f, v in entries}

    @rule(i=st.integers(0, 2), gsi=st.integers(0, 7))
    def assign(self, i, gsi):
        e = self.efds[i]
        pending = e.f_op.count
        err = errno_of(self.k.ioctl, self.vm, K.KVM_IRQFD, irqfd(e.fd, gsi))
        event(f"assign busy={i in self.bound}")
        if i in self.bound:
            assert err == EBUSY
        else:
            assert err is None
            self.bound[i] = gsi
            if pending and gsi in self.routes:
                self._deliver(*self.routes[gsi])

    @rule(i=st.integers(0, 2), gsi=st.integers(0, 7))
    def deassign(self, i, gsi):
        e = self.efds[i]
        assert self.k.ioctl(self.vm, K.KVM_IRQFD,
                            irqfd(e.fd, gsi, K.KVM_IRQFD_FLAG_DEASSIGN)) == 0
        if self.bound.get(i) == gsi:
            del self.bound[i]

    @rule(i=st.integers(0, 2), user=st.booleans())
    def signal(self, i, user):
        e = self.efds[i]
        if user:
            e.write(1)
        else:
            self.k.eventfd_signal(e.f_op)
        gsi = self.bound.get(i)
        event(f"signal bound={gsi is not None}")
        if gsi is not None and gsi in self.routes:
            self._deliver(*self.routes[gsi])

    @rule(addr=st.sampled_from([DOORBELL, ITS_BASE + 0x1FFFC, 0x0900_0040]),
          data=st.integers(0, 31), flags=st.integers(0, 3), devid=st.integers(0, 31))
    def signal_msi(self, addr, data, flags, devid):
        try:
            ret = self.k.ioctl(self.vm, K.KVM_SIGNAL_MSI, K.KvmMsi(
                address_lo=addr, data=data, flags=flags, devid=devid))
        except KernelError as e:
            ret = -e.errno
        if flags & ~K.KVM_MSI_VALID_DEVID:
            assert ret == -EINVAL
        else:
            # reaching a (disabled) vITS is -EBUSY: vgic_its_resolve_lpi()
            assert ret == (-EBUSY if self._deliver(addr, data, flags, devid) else -EINVAL)
        event(f"signal_msi {ret}")

    @invariant()
    def delivered_as_expected(self):
        if hasattr(self, "its"):
            assert self.its.delivered == self.expected
            for i, e in enumerate(self.efds):
                assert len(e.f_op.wqh) == (1 if i in self.bound else 0)
                assert e.f_op.refs == (2 if i in self.bound else 1)


TestKvmMachine = KvmMachine.TestCase


# -- KVM_RUN: what the guest executes on ---------------------------------------------------


def test_kvm_run_hands_the_guest_its_cpu_and_checks_its_argument(k):
    """KVM_RUN on a vCPU fd with the vCPU's struct kvm_run: the run carries the CPU in
    guest mode (its vCPU interface; KVM's in-kernel MMIO: a vITS register read there is
    the vITS's, an address no in-kernel device claims is an exit); EFAULT without a run,
    ENXIO while the vGIC distributor has no address, EINVAL on the VM fd (not a vCPU)."""
    vm = k.open("/dev/kvm").ioctl(K.KVM_CREATE_VM, 0)
    vcpu = k.ioctl(vm, K.KVM_CREATE_VCPU, 0)
    gic = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_V3)
    run = K.KvmRun()
    assert errno_of(k.ioctl, vcpu, K.KVM_RUN, run) == ENXIO and run.guest is None
    set_addr(k, gic, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_V3_ADDR_TYPE_DIST, GICD_BASE)
    set_addr(k, gic, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_V3_ADDR_TYPE_REDIST, GICR_BASE)
    its_fd = create_device(k, vm, K.KVM_DEV_TYPE_ARM_VGIC_ITS)
    set_addr(k, its_fd, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_ITS_ADDR_TYPE, ITS_BASE)
    assert errno_of(k.ioctl, vcpu, K.KVM_RUN, 0) == EFAULT
    assert errno_of(k.ioctl, vm, K.KVM_RUN, run) in (EINVAL, errno.ENOTTY)
    assert k.ioctl(vcpu, K.KVM_RUN, run) == 0 and run.exit_reason == K.KVM_EXIT_INTR
    cpu = run.guest
    vcpu_obj = k.files.fds[vcpu].private_data
    assert cpu.cpuif is vcpu_obj.cpuif
    assert cpu.mmio_read(ITS_BASE + 0x8, 8) == k.files.fds[its_fd].private_data.its_mmio_read(
        0x8, 8)                                                    # GITS_TYPER, from KVM
    assert cpu.mmio_read(0x0900_0000, 4) is None                   # nobody's: an exit
    assert cpu.mmio_write(0x0900_0000, 1, 4) is False
    run2 = K.KvmRun()
    run2.immediate_exit = 1
    assert errno_of(k.ioctl, vcpu, K.KVM_RUN, run2) == errno.EINTR and run2.guest is None


def test_the_vmm_package_reaches_the_host_kernel_only_through_its_uapi():
    """No module of pymsi.vmm imports the host kernel model (pymsi.kernel.*): the VMM is a
    user program of it."""
    import ast
    import pathlib

    import pymsi.vmm

    bad = []
    for path in pathlib.Path(pymsi.vmm.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                if mod.startswith("..kernel") or mod.startswith("pymsi.kernel"):
                    bad.append((path.name, mod))
            elif isinstance(node, ast.Import):
                bad += [(path.name, a.name) for a in node.names
                        if a.name.startswith("pymsi.kernel")]
    assert bad == []
