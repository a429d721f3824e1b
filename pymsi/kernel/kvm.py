"""KVM's MSI plumbing on arm64: ``/dev/kvm``, a VM, the vGICv3 / vITS devices,
GSI routing, irqfd and ``KVM_SIGNAL_MSI`` (virt/kvm and arch/arm64/kvm/vgic).

The pieces are kept apart as in Linux:

* :class:`KvmDev` is the ``/dev/kvm`` character device (API version,
  extensions, ``KVM_CREATE_VM``);
* :class:`Kvm` is one VM (``struct kvm``): its anonymous file, its devices,
  its routing table (:meth:`Kvm.set_gsi_routing`, irqchip.c) and its irqfds
  (:meth:`Kvm.irqfd_assign` / :meth:`Kvm.irqfd_deassign`, eventfd.c);
* :class:`VgicV3` / :class:`VgicIts` are the in-kernel devices with their
  anonymous files (vgic-kvm-device.c, vgic-its.c);
* injection (:meth:`Kvm.set_msi`, vgic-irqfd.c) finds the vITS whose MMIO frame
  holds the MSI address and hands (DeviceID, EventID) to
  :meth:`VgicIts.trigger_msi`, the one hook the guest-programmed translation
  tables replace later: for now it records the pair in ``VgicIts.delivered``.

A VM lives while its file or any device file is open (devices hold a VM
reference); closing the VM file releases every irqfd (wait-queue entry and
eventfd reference) at once, as ``kvm_vm_release`` does; routes and devices go
with the last reference.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass
from typing import Any

from ..uapi import kvm as K
from .base import EEXIST, EINVAL, KernelError, fail
from .files import EPOLLHUP, EPOLLIN, O_RDWR, File, FileOperations

EBUSY, ENODEV, ENXIO, EAGAIN, ENOTTY, E2BIG = (
    _errno.EBUSY, _errno.ENODEV, _errno.ENXIO, _errno.EAGAIN, _errno.ENOTTY, _errno.E2BIG)

KVM_MAX_IRQ_ROUTES = 4096
KVM_NR_IRQCHIPS = 1                      # arm64: the vGIC
KVM_IRQCHIP_NUM_PINS = 1020 - 32         # SPIs
VGIC_ADDR_UNDEF = (1 << 64) - 1
SZ_64K = 0x10000
KVM_PHYS_SHIFT = 40                      # the default IPA size of an arm64 VM
GITS_TRANSLATER = 0x10040                # offset of the doorbell in the ITS frame


def _install_anon(kernel: Any, fops: FileOperations, private: Any) -> File:
    """anon_inode_getfd(O_RDWR | O_CLOEXEC): a new file at the lowest free fd."""
    kernel.files.alloc_fd()
    file = File(kernel, fops, O_RDWR, private_data=private)
    kernel.files.install(file, cloexec=True)
    return file


def _arg_int(arg: Any) -> int:
    return arg.value if hasattr(arg, "value") else arg


# -- routes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MsiRoute:
    """A ``struct kvm_kernel_irq_routing_entry`` of type MSI."""

    gsi: int
    address: int
    data: int
    flags: int
    devid: int


@dataclass(frozen=True)
class IrqchipRoute:
    """A route to a vGIC SPI pin (kept, not injected: no SPIs are modelled yet)."""

    gsi: int
    irqchip: int
    pin: int


def build_routing(ue: list[Any]) -> dict[int, list[Any]]:
    """kvm_set_irq_routing()'s checks and table: gsi -> its routes, or EINVAL."""
    table: dict[int, list[Any]] = {}
    for e in ue:
        if e.gsi >= KVM_MAX_IRQ_ROUTES:
            raise fail(EINVAL, f"gsi {e.gsi} beyond KVM_MAX_IRQ_ROUTES")
    for e in ue:
        if e.type == K.KVM_IRQ_ROUTING_MSI:
            if e.flags & ~K.KVM_MSI_VALID_DEVID:
                raise fail(EINVAL, f"bad MSI route flags {e.flags:#x}")
            m = e.u.msi
            route: Any = MsiRoute(e.gsi, m.address_hi << 32 | m.address_lo, m.data, e.flags,
                                  m.devid)
        elif e.type == K.KVM_IRQ_ROUTING_IRQCHIP:
            if e.flags:
                raise fail(EINVAL, f"bad route flags {e.flags:#x}")
            c = e.u.irqchip
            if c.irqchip >= KVM_NR_IRQCHIPS or c.pin >= KVM_IRQCHIP_NUM_PINS:
                raise fail(EINVAL, f"bad irqchip route {c.irqchip}/{c.pin}")
            route = IrqchipRoute(e.gsi, c.irqchip, c.pin)
        else:
            raise fail(EINVAL, f"route type {e.type} not supported on arm64")
        # one route per GSI unless every route of it is to a different irqchip
        for old in table.get(e.gsi, []):
            if not (isinstance(old, IrqchipRoute) and isinstance(route, IrqchipRoute)
                    and old.irqchip != route.irqchip):
                raise fail(EINVAL, f"gsi {e.gsi} routed twice")
        table.setdefault(e.gsi, []).append(route)
    return table


# -- irqfd ----------------------------------------------------------------------------


class Irqfd:
    """struct kvm_kernel_irqfd: an eventfd whose every wake-up injects ``gsi``."""

    def __init__(self, kvm: Kvm, ctx: Any, gsi: int) -> None:
        self.kvm = kvm
        self.eventfd = ctx
        self.gsi = gsi
        self.wait: Any = None
        #: the resample eventfd (KVM_IRQFD_FLAG_RESAMPLE): signalled when the guest
        #: acknowledges a level interrupt, which an MSI never is, so it is only held.
        self.resamplefd: Any = None

    def wakeup(self, ctx: Any, key: int) -> None:
        """irqfd_wakeup(): EPOLLIN takes the count and injects the GSI's route as
        it is now; EPOLLHUP (the eventfd closed) tears the irqfd down."""
        if key & EPOLLIN:
            ctx.do_read()
            self.kvm.inject_gsi(self.gsi)
        if key & EPOLLHUP:
            self.kvm._irqfd_shutdown(self)


# -- the devices -----------------------------------------------------------------------


class KvmDevice(FileOperations):
    """struct kvm_device: an in-kernel device with an anonymous file; it holds a
    VM reference until the VM is destroyed."""

    name = "kvm-device"

    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        self.file: File | None = None

    def unlocked_ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """kvm_device_ioctl(): the attribute ioctls; anything else ENOTTY."""
        if cmd not in (K.KVM_SET_DEVICE_ATTR, K.KVM_GET_DEVICE_ATTR, K.KVM_HAS_DEVICE_ATTR):
            raise fail(ENOTTY, f"{self.name}: ioctl {cmd:#x}")
        if not isinstance(arg, K.KvmDeviceAttr):
            raise fail(_errno.EFAULT, "not a struct kvm_device_attr")
        if cmd == K.KVM_SET_DEVICE_ATTR:
            return self.set_attr(arg)
        if cmd == K.KVM_GET_DEVICE_ATTR:
            return self.get_attr(arg)
        return self.has_attr(arg)

    def release(self, file: File) -> None:
        """kvm_device_release(): the device stays with the VM; its reference goes."""
        self.kvm.put()

    def _read_u64(self, attr: Any) -> int:
        return int.from_bytes(self.kvm.kernel.user_read(attr.addr, 8), "little")

    def _write_u64(self, attr: Any, value: int) -> None:
        self.kvm.kernel.user_write(attr.addr, value.to_bytes(8, "little"))

    def set_attr(self, attr: Any) -> int:
        raise fail(ENXIO, "no such attribute")

    def get_attr(self, attr: Any) -> int:
        raise fail(ENXIO, "no such attribute")

    def has_attr(self, attr: Any) -> int:
        raise fail(ENXIO, "no such attribute")


def _check_iorange(current: int, addr: int, size: int) -> None:
    """vgic_check_iorange(): EEXIST once set, EINVAL unaligned or wrapping,
    E2BIG beyond the IPA space."""
    if current != VGIC_ADDR_UNDEF:
        raise fail(EEXIST, "base address already set")
    if addr % SZ_64K or size % SZ_64K:
        raise fail(EINVAL, f"base {addr:#x} not 64K aligned")
    if addr + size > 1 << 64:
        raise fail(EINVAL, "region wraps")
    if addr + size > 1 << KVM_PHYS_SHIFT:
        raise fail(E2BIG, "region beyond the IPA space")


class VgicV3(KvmDevice):
    """The vGICv3 (KVM_DEV_TYPE_ARM_VGIC_V3): distributor and redistributor
    bases and CTRL_INIT."""

    name = "kvm-arm-vgic-v3"

    def __init__(self, kvm: Kvm) -> None:
        super().__init__(kvm)
        self.dist_base = VGIC_ADDR_UNDEF
        self.redist_base = VGIC_ADDR_UNDEF
        self.initialized = False

    _ADDRS = {K.KVM_VGIC_V3_ADDR_TYPE_DIST: ("dist_base", K.KVM_VGIC_V3_DIST_SIZE),
              K.KVM_VGIC_V3_ADDR_TYPE_REDIST: ("redist_base", K.KVM_VGIC_V3_REDIST_SIZE)}

    def set_attr(self, attr: Any) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr.attr not in self._ADDRS:
                raise fail(ENODEV, f"vgic address type {attr.attr}")
            name, size = self._ADDRS[attr.attr]
            addr = self._read_u64(attr)
            _check_iorange(getattr(self, name), addr, size)
            setattr(self, name, addr)
            return 0
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_CTRL:
            if attr.attr != K.KVM_DEV_ARM_VGIC_CTRL_INIT:
                raise fail(ENXIO, f"vgic control {attr.attr}")
            self.initialized = True
            return 0
        raise fail(ENXIO, f"vgic group {attr.group}")

    def get_attr(self, attr: Any) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr.attr not in self._ADDRS:
                raise fail(ENODEV, f"vgic address type {attr.attr}")
            self._write_u64(attr, getattr(self, self._ADDRS[attr.attr][0]))
            return 0
        raise fail(ENXIO, f"vgic group {attr.group}")

    def has_attr(self, attr: Any) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR and attr.attr in self._ADDRS or \
                attr.group == K.KVM_DEV_ARM_VGIC_GRP_CTRL and \
                attr.attr == K.KVM_DEV_ARM_VGIC_CTRL_INIT:
            return 0
        raise fail(ENXIO, "no such vgic attribute")


class VgicIts(KvmDevice):
    """A vITS (KVM_DEV_TYPE_ARM_VGIC_ITS): its 128K MMIO frame and the MSIs it took."""

    name = "kvm-arm-vgic-its"

    def __init__(self, kvm: Kvm) -> None:
        super().__init__(kvm)
        self.base = VGIC_ADDR_UNDEF
        #: (DeviceID, EventID) of every MSI that reached this vITS, in order.
        self.delivered: list[tuple[int, int]] = []

    def covers(self, address: int) -> bool:
        """Whether ``address`` falls in this vITS's MMIO frame (its KVM_MMIO_BUS device)."""
        return self.base != VGIC_ADDR_UNDEF and \
            self.base <= address < self.base + K.KVM_VGIC_V3_ITS_SIZE

    def trigger_msi(self, devid: int, eventid: int) -> int:
        """vgic_its_trigger_msi(): the translation the guest's tables will do; for
        now the MSI is recorded.  Returns 0 (delivered)."""
        self.delivered.append((devid, eventid))
        return 0

    def set_attr(self, attr: Any) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr.attr != K.KVM_VGIC_ITS_ADDR_TYPE:
                raise fail(ENODEV, f"its address type {attr.attr}")
            addr = self._read_u64(attr)
            _check_iorange(self.base, addr, K.KVM_VGIC_V3_ITS_SIZE)
            self.base = addr
            return 0
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_CTRL:
            if attr.attr == K.KVM_DEV_ARM_VGIC_CTRL_INIT:
                return 0
            raise fail(ENXIO, f"its control {attr.attr}")
        raise fail(ENXIO, f"its group {attr.group}")

    def get_attr(self, attr: Any) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr.attr != K.KVM_VGIC_ITS_ADDR_TYPE:
                raise fail(ENODEV, f"its address type {attr.attr}")
            self._write_u64(attr, self.base)
            return 0
        raise fail(ENXIO, f"its group {attr.group}")

    def has_attr(self, attr: Any) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR and attr.attr == K.KVM_VGIC_ITS_ADDR_TYPE \
                or attr.group == K.KVM_DEV_ARM_VGIC_GRP_CTRL and \
                attr.attr == K.KVM_DEV_ARM_VGIC_CTRL_INIT:
            return 0
        raise fail(ENXIO, "no such its attribute")


# -- the VM ----------------------------------------------------------------------------


class Kvm(FileOperations):
    """struct kvm: one VM, with its anonymous file (``kvm-vm``)."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.users = 1                         # the VM file
        self.destroyed = False
        self.devices: list[KvmDevice] = []
        self.vgic: VgicV3 | None = None
        self.routing: dict[int, list[Any]] = {}
        self.irqfds: list[Irqfd] = []
        self.file: File | None = None

    # -- lifetime ----------------------------------------------------------------------

    def get(self) -> Kvm:
        """kvm_get_kvm()."""
        self.users += 1
        return self

    def put(self) -> None:
        """kvm_put_kvm(): the last reference destroys the VM (devices, routes)."""
        self.users -= 1
        if self.users == 0:
            self.destroyed = True
            kvm_dev = getattr(self.kernel, "kvm", None)
            if kvm_dev is not None and self in kvm_dev.vms:
                kvm_dev.vms.remove(self)
            self.devices.clear()
            self.vgic = None
            self.routing = {}

    def release(self, file: File) -> None:
        """kvm_vm_release(): every irqfd goes now, the VM with its last reference."""
        for irqfd in list(self.irqfds):
            self._irqfd_shutdown(irqfd)
        self.put()

    # -- ioctls --------------------------------------------------------------------------

    def unlocked_ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """kvm_vm_ioctl(); an unknown command is EINVAL (kvm_arch_vm_ioctl on arm64)."""
        if cmd == K.KVM_CHECK_EXTENSION:
            return check_extension(_arg_int(arg), self)
        handler = {K.KVM_CREATE_DEVICE: self.create_device,
                   K.KVM_SET_GSI_ROUTING: self.set_gsi_routing,
                   K.KVM_IRQFD: self.irqfd,
                   K.KVM_SIGNAL_MSI: self.signal_msi}.get(cmd)
        if handler is None:
            raise fail(EINVAL, f"kvm-vm: ioctl {cmd:#x}")
        if not isinstance(arg, K.IOCTLS[cmd]):
            raise fail(_errno.EFAULT, f"argument is not a {K.IOCTLS[cmd]}")
        return handler(arg)

    def create_device(self, cd: Any) -> int:
        """kvm_ioctl_create_device(): ENODEV for a type this VM has no ops for,
        0 at once with KVM_CREATE_DEVICE_TEST, EEXIST for a second vGIC."""
        cls = {K.KVM_DEV_TYPE_ARM_VGIC_V3: VgicV3,
               K.KVM_DEV_TYPE_ARM_VGIC_ITS: VgicIts}.get(cd.type)
        if cls is None:
            raise fail(ENODEV, f"device type {cd.type}")
        if cd.flags & K.KVM_CREATE_DEVICE_TEST:
            return 0
        if cls is VgicV3 and self.vgic is not None:
            raise fail(EEXIST, "the VM has a vGIC")
        self.kernel.files.alloc_fd()           # EMFILE before anything is created
        dev = cls(self)
        self.devices.append(dev)
        if isinstance(dev, VgicV3):
            self.vgic = dev
        self.get()
        dev.file = _install_anon(self.kernel, dev, dev)
        cd.fd = dev.file.fd
        return 0

    def its_list(self) -> list[VgicIts]:
        return [d for d in self.devices if isinstance(d, VgicIts)]

    # routing (irqchip.c)

    def set_gsi_routing(self, routing: Any) -> int:
        """KVM_SET_GSI_ROUTING: the whole table at once, or EINVAL and no change."""
        if routing.nr > KVM_MAX_IRQ_ROUTES:
            raise fail(EINVAL, f"{routing.nr} routes")
        if routing.flags:
            raise fail(EINVAL, f"routing flags {routing.flags:#x}")
        items = routing.flex_items()
        if len(items) < routing.nr:
            raise fail(_errno.EFAULT, "fewer entries than nr")
        self.routing = build_routing(items[:routing.nr])
        return 0

    # injection (vgic-irqfd.c, vgic-its.c)

    def inject_gsi(self, gsi: int) -> None:
        """kvm_set_irq(): every route of ``gsi`` as the table is now; errors are
        dropped, as an irqfd has no one to tell."""
        for route in self.routing.get(gsi, []):
            if isinstance(route, MsiRoute):
                try:
                    self.set_msi(route.address, route.data, route.flags, route.devid)
                except KernelError:
                    pass

    def set_msi(self, address: int, data: int, flags: int, devid: int) -> int:
        """kvm_set_msi() -> vgic_its_inject_msi(): 1 when a vITS took the MSI
        (ENODEV without a vITS, EINVAL without a DeviceID or outside every vITS frame)."""
        its_all = self.its_list()
        if self.vgic is None or not its_all:        # vgic_has_its()
            raise fail(ENODEV, "the VM has no vITS")
        if not flags & K.KVM_MSI_VALID_DEVID:
            raise fail(EINVAL, "an ITS MSI needs a DeviceID")
        its = next((i for i in its_all if i.covers(address)), None)
        if its is None:
            raise fail(EINVAL, f"no vITS at {address:#x}")
        ret = its.trigger_msi(devid, data)
        return 0 if ret else 1

    def signal_msi(self, msi: Any) -> int:
        """KVM_SIGNAL_MSI: flags other than KVM_MSI_VALID_DEVID are EINVAL."""
        if msi.flags & ~K.KVM_MSI_VALID_DEVID:
            raise fail(EINVAL, f"kvm_msi flags {msi.flags:#x}")
        return self.set_msi(msi.address_hi << 32 | msi.address_lo, msi.data, msi.flags,
                            msi.devid)

    # irqfd (eventfd.c)

    def irqfd(self, args: Any) -> int:
        """KVM_IRQFD: assign, or with KVM_IRQFD_FLAG_DEASSIGN deassign."""
        if args.flags & ~(K.KVM_IRQFD_FLAG_DEASSIGN | K.KVM_IRQFD_FLAG_RESAMPLE):
            raise fail(EINVAL, f"irqfd flags {args.flags:#x}")
        if args.flags & K.KVM_IRQFD_FLAG_DEASSIGN:
            return self.irqfd_deassign(args.fd, args.gsi)
        return self.irqfd_assign(args.fd, args.gsi, args.flags, args.resamplefd)

    def irqfd_assign(self, fd: int, gsi: int, flags: int = 0, resamplefd: int = -1) -> int:
        """kvm_irqfd_assign(): EAGAIN before the vGIC is initialised, EBADF /
        EINVAL for a bad eventfd (or resample eventfd), EBUSY when this VM
        already has it; a count already pending injects once."""
        if self.vgic is None or not self.vgic.initialized:
            raise fail(EAGAIN, "the vGIC is not initialised")
        ctx = self.kernel.eventfd_ctx_fdget(fd)
        resample = None
        try:
            if flags & K.KVM_IRQFD_FLAG_RESAMPLE:
                resample = self.kernel.eventfd_ctx_fdget(resamplefd)
            if any(i.eventfd is ctx for i in self.irqfds):
                raise fail(EBUSY, f"eventfd {fd} already an irqfd of this VM")
        except KernelError:
            ctx.put()
            if resample is not None:
                resample.put()
            raise
        irqfd = Irqfd(self, ctx, gsi)
        irqfd.resamplefd = resample
        irqfd.wait = ctx.add_wait_queue(irqfd.wakeup)
        self.irqfds.append(irqfd)
        if ctx.count:                       # vfs_poll() at assignment saw EPOLLIN
            self.inject_gsi(gsi)
        return 0

    def irqfd_deassign(self, fd: int, gsi: int) -> int:
        """kvm_irqfd_deassign(): the irqfd of (eventfd, gsi) goes; none is not an error."""
        ctx = self.kernel.eventfd_ctx_fdget(fd)
        try:
            for irqfd in list(self.irqfds):
                if irqfd.eventfd is ctx and irqfd.gsi == gsi:
                    self._irqfd_shutdown(irqfd)
        finally:
            ctx.put()
        return 0

    def _irqfd_shutdown(self, irqfd: Irqfd) -> None:
        """irqfd_shutdown(): off the wait queue, the eventfd reference dropped."""
        if irqfd not in self.irqfds:
            return
        self.irqfds.remove(irqfd)
        irqfd.eventfd.remove_wait_queue(irqfd.wait)
        irqfd.eventfd.put()
        if irqfd.resamplefd is not None:
            irqfd.resamplefd.put()


# -- /dev/kvm -------------------------------------------------------------------------

_GENERIC_CAPS = {K.KVM_CAP_IRQ_ROUTING: KVM_MAX_IRQ_ROUTES, K.KVM_CAP_IRQFD: 1,
                 K.KVM_CAP_SIGNAL_MSI: 1, K.KVM_CAP_DEVICE_CTRL: 1, K.KVM_CAP_IRQCHIP: 1}


def check_extension(cap: int, kvm: Kvm | None = None) -> int:
    """KVM_CHECK_EXTENSION on arm64: KVM_CAP_IRQ_ROUTING gives KVM_MAX_IRQ_ROUTES;
    KVM_CAP_MSI_DEVID is EINVAL on /dev/kvm and, on a VM, 1 once it has a vITS;
    unknown capabilities 0."""
    if cap == K.KVM_CAP_MSI_DEVID:
        if kvm is None:
            raise fail(EINVAL, "KVM_CAP_MSI_DEVID needs a VM")
        return int(bool(kvm.its_list()))
    return _GENERIC_CAPS.get(cap, 0)


class KvmDev(FileOperations):
    """The ``/dev/kvm`` misc device."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.vms: list[Kvm] = []

    def unlocked_ioctl(self, file: File, cmd: int, arg: Any) -> Any:
        """kvm_dev_ioctl(); an unknown command is EINVAL (kvm_arch_dev_ioctl on arm64)."""
        if cmd == K.KVM_GET_API_VERSION:
            if _arg_int(arg):
                raise fail(EINVAL, "KVM_GET_API_VERSION takes no argument")
            return K.KVM_API_VERSION
        if cmd == K.KVM_CHECK_EXTENSION:
            return check_extension(_arg_int(arg))
        if cmd == K.KVM_CREATE_VM:
            if _arg_int(arg):
                raise fail(EINVAL, f"VM type {arg!r} not modelled")
            self.kernel.files.alloc_fd()
            vm = Kvm(self.kernel)
            vm.file = _install_anon(self.kernel, vm, vm)
            self.vms.append(vm)
            return vm.file.fd
        raise fail(EINVAL, f"/dev/kvm: ioctl {cmd:#x}")


def kvm_init(kernel: Any) -> KvmDev:
    """kvm_init(): register ``/dev/kvm``; ``kernel.kvm`` is the device."""
    kernel.kvm = KvmDev(kernel)
    kernel.register_chrdev("/dev/kvm", kernel.kvm, kernel.kvm)
    return kernel.kvm


__all__ = ["Irqfd", "IrqchipRoute", "Kvm", "KvmDev", "KvmDevice", "MsiRoute", "VgicIts",
           "VgicV3", "build_routing", "check_extension", "kvm_init"]
