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
import struct as _struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from .. import trace
from ..hw import gicv3 as G
from ..hw import its as I
from ..hw.bits import merge_access
from ..uapi import kvm as K
from ..uapi.eventpoll import EPOLLHUP, EPOLLIN
from . import vgic_its as VI
from .base import EEXIST, EINVAL, KernelError, fail
from .files import O_RDWR, File, FileOperations
from .irqbypass import IrqBypassConsumer, irqbypass_of

if TYPE_CHECKING:
    from ..uapi import IoctlArg
    from .files import EventfdCtx
    from .gic import ItsVpe
    from .irq import IrqData
    from .kernel import Kernel

# Tracepoints as Linux's include/trace/events/kvm.h (kvm_set_irq, kvm_msi_set_irq), the
# irqfd ones named after virt/kvm/eventfd.c's functions, vgic_its_trigger_msi after
# vgic-its.c's.
trace_kvm_set_irq = trace.Tracepoint("kvm_set_irq", "gsi", "level", "irq_source_id")
trace_kvm_msi_set_irq = trace.Tracepoint("kvm_msi_set_irq", "address", "data", "devid")
trace_kvm_irqfd_assign = trace.Tracepoint("kvm_irqfd_assign", "fd", "gsi", "flags")
trace_kvm_irqfd_deassign = trace.Tracepoint("kvm_irqfd_deassign", "fd", "gsi")
trace_kvm_irqfd_wakeup = trace.Tracepoint("kvm_irqfd_wakeup", "gsi", "key")
trace_vgic_its_trigger_msi = trace.Tracepoint(
    "vgic_its_trigger_msi", "its", "device_id", "event_id", "ret")

EBUSY, ENODEV, ENXIO, EAGAIN, ENOTTY, E2BIG = (
    _errno.EBUSY, _errno.ENODEV, _errno.ENXIO, _errno.EAGAIN, _errno.ENOTTY, _errno.E2BIG)

KVM_MAX_IRQ_ROUTES = 4096
KVM_NR_IRQCHIPS = 1                      # arm64: the vGIC
KVM_IRQCHIP_NUM_PINS = 1020 - 32         # SPIs
VGIC_ADDR_UNDEF = (1 << 64) - 1
SZ_64K = 0x10000
KVM_PHYS_SHIFT = 40                      # the default IPA size of an arm64 VM
GITS_TRANSLATER = 0x10040                # offset of the doorbell in the ITS frame
KVM_MAX_VCPUS = 512                      # arm64: VGIC_V3_MAX_CPUS
KVM_MAX_VCPU_IDS = KVM_MAX_VCPUS
KVM_MEM_SLOTS_NUM = 32767                # SHRT_MAX
PAGE_SIZE = 4096
KVM_VCPU_REDIST_FRAME = 2 * SZ_64K       # RD_base + SGI_base of one vCPU
GICR_CTLR_ENABLE_LPIS = 1
PENDBASER_PTZ = 1 << 62


def _install_anon(kernel: Kernel, fops: FileOperations, private: Any) -> File:
    """anon_inode_getfd(O_RDWR | O_CLOEXEC): a new file at the lowest free fd."""
    kernel.files.alloc_fd()
    file = File(kernel, fops, O_RDWR, private_data=private)
    kernel.files.install(file, cloexec=True)
    return file


def _arg_int(arg: object) -> int:
    """An ioctl's integer argument (an unsigned long in Linux); anything that is
    not an integer is EINVAL, never a Python exception."""
    value = arg.value if hasattr(arg, "value") else arg
    if not isinstance(value, int):
        raise fail(EINVAL, f"ioctl argument {arg!r} is not an integer")
    return value


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


#: one routing entry of a GSI (a struct kvm_kernel_irq_routing_entry)
KvmRoute = MsiRoute | IrqchipRoute

#: one ``struct kvm_irq_routing_entry``: gsi, type, flags, pad, then the union (its
#: first four words: an MSI's address_lo, address_hi, data, devid / a pin's irqchip, pin)
_ROUTE_ENTRY = _struct.Struct("<8I")
_ROUTE_ENTRY_SIZE = K.KvmIrqRoutingEntry.sizeof
#: validated routes by the bytes of their entry (a route is an immutable value)
_route_memo: dict[bytes, KvmRoute] = {}


def _route_of(raw: bytes) -> KvmRoute:
    """The route one entry's bytes describe, or EINVAL (the per-entry checks of
    setup_routing_entry / kvm_set_routing_entry)."""
    route = _route_memo.get(raw)
    if route is not None:
        return route
    gsi, typ, flags, _pad, w0, w1, w2, w3 = _ROUTE_ENTRY.unpack_from(raw)
    if typ == K.KVM_IRQ_ROUTING_MSI:
        if flags & ~K.KVM_MSI_VALID_DEVID:
            raise fail(EINVAL, f"bad MSI route flags {flags:#x}")
        route = MsiRoute(gsi, w1 << 32 | w0, w2, flags, w3)
    elif typ == K.KVM_IRQ_ROUTING_IRQCHIP:
        if flags:
            raise fail(EINVAL, f"bad route flags {flags:#x}")
        if w0 >= KVM_NR_IRQCHIPS or w1 >= KVM_IRQCHIP_NUM_PINS:
            raise fail(EINVAL, f"bad irqchip route {w0}/{w1}")
        route = IrqchipRoute(gsi, w0, w1)
    else:
        raise fail(EINVAL, f"route type {typ} not supported on arm64")
    if len(_route_memo) >= 1 << 16:
        _route_memo.clear()
    _route_memo[raw] = route
    return route


def _add_routes(raw: bytes, start: int, table: dict[int, list[KvmRoute]]) -> list[int]:
    """Check the entries of ``raw`` from byte ``start`` on and add them to ``table``
    (whose lists are never changed in place: a table may share them with the one it
    was copied from); the GSIs added.  EINVAL and ``table`` half-filled on error."""
    size = _ROUTE_ENTRY_SIZE
    unpack_gsi = _GSI.unpack_from
    for off in range(start, len(raw), size):
        if unpack_gsi(raw, off)[0] >= KVM_MAX_IRQ_ROUTES:
            raise fail(EINVAL, f"gsi {unpack_gsi(raw, off)[0]} beyond KVM_MAX_IRQ_ROUTES")
    gsis = []
    for off in range(start, len(raw), size):
        route = _route_of(raw[off:off + size])
        gsi = route.gsi
        old = table.get(gsi)
        if old is None:
            table[gsi] = [route]
        else:
            # one route per GSI unless every route of it is to a different irqchip
            for o in old:
                if not (isinstance(o, IrqchipRoute) and isinstance(route, IrqchipRoute)
                        and o.irqchip != route.irqchip):
                    raise fail(EINVAL, f"gsi {gsi} routed twice")
            table[gsi] = [*old, route]
        gsis.append(gsi)
    return gsis


_GSI = _struct.Struct("<I")


def _routing_bytes(ue: list[K.KvmIrqRoutingEntry]) -> bytes:
    """The bytes of a list of ``KvmIrqRoutingEntry``, as userspace lays them out."""
    return b"".join(e.pack() for e in ue)


def build_routing(ue: list[K.KvmIrqRoutingEntry]) -> dict[int, list[KvmRoute]]:
    """kvm_set_irq_routing()'s checks and table: gsi -> its routes, or EINVAL."""
    table: dict[int, list[KvmRoute]] = {}
    _add_routes(_routing_bytes(ue), 0, table)
    return table


# -- irqfd ----------------------------------------------------------------------------


class Irqfd:
    """struct kvm_kernel_irqfd: an eventfd whose every wake-up injects ``gsi``."""

    def __init__(self, kvm: Kvm, ctx: EventfdCtx, gsi: int) -> None:
        self.kvm = kvm
        self.eventfd = ctx
        self.gsi = gsi
        self.wait: Any = None
        #: the resample eventfd (KVM_IRQFD_FLAG_RESAMPLE): signalled when the guest
        #: acknowledges a level interrupt, which an MSI never is, so it is only held.
        self.resamplefd: Any = None
        #: irqfd->irq_entry: the GSI's route when it has exactly one, else None.
        self.irq_entry: KvmRoute | None = None
        #: the irq-bypass consumer (token: the eventfd).
        self.consumer = IrqBypassConsumer(ctx, self._add_producer, self._del_producer)

    def update(self) -> None:
        """irqfd_update(): cache the GSI's route (only a GSI with one route is cached)."""
        routes = self.kvm.routing.get(self.gsi, [])
        self.irq_entry = routes[0] if len(routes) == 1 else None

    def _add_producer(self, cons: Any, prod: Any) -> int:
        """kvm_arch_irq_bypass_add_producer() (arm64): an MSI route is forwarded."""
        if not isinstance(self.irq_entry, MsiRoute):
            return 0
        return VI.set_forwarding(self.kvm, prod.irq, self.irq_entry)

    def _del_producer(self, cons: Any, prod: Any) -> None:
        """kvm_arch_irq_bypass_del_producer() (arm64)."""
        if isinstance(self.irq_entry, MsiRoute):
            VI.unset_forwarding(self.kvm, prod.irq)

    def wakeup(self, ctx: EventfdCtx, key: int) -> None:
        """irqfd_wakeup(): EPOLLIN takes the count and injects the GSI's route as
        it is now; EPOLLHUP (the eventfd closed) tears the irqfd down."""
        if trace_kvm_irqfd_wakeup.enabled:
            trace_kvm_irqfd_wakeup(gsi=self.gsi, key=key)
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

    def unlocked_ioctl(self, file: File, cmd: int, arg: IoctlArg) -> int:
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

    def _read_u64(self, attr: K.KvmDeviceAttr) -> int:
        return int.from_bytes(self.kvm.kernel.user_read(attr.addr, 8), "little")

    def _write_u64(self, attr: K.KvmDeviceAttr, value: int) -> None:
        self.kvm.kernel.user_write(attr.addr, value.to_bytes(8, "little"))

    def set_attr(self, attr: K.KvmDeviceAttr) -> int:
        raise fail(ENXIO, "no such attribute")

    def get_attr(self, attr: K.KvmDeviceAttr) -> int:
        raise fail(ENXIO, "no such attribute")

    def has_attr(self, attr: K.KvmDeviceAttr) -> int:
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
        self.gicd_ctlr = 0

    #: GICD_IIDR of KVM's distributor: ProductID 0x4B ('K'), Implementer Arm, revision 3.
    IIDR = 0x4B << 24 | 3 << 12 | 0x43B
    NR_SPIS = 0                                  # the model routes no SPIs

    def dist_read(self, offset: int, size: int) -> int:
        """A guest read of the distributor (vgic-mmio-v3.c): GICD_CTLR (DS, ARE and
        the group enables the guest set), GICD_TYPER (IDbits and LPIS from the vITS),
        GICD_IIDR, GICD_PIDR2 (a GICv3, whatever the host GIC is); RAZ elsewhere."""
        if size != 4 or offset & 3:
            return 0
        if offset == G.GICD_CTLR:
            return G.GICD_CTLR_DS | G.GICD_CTLR_ARE | self.gicd_ctlr
        if offset == G.GICD_TYPER:
            its = bool(self.kvm.its_list())
            idbits = VI.INTERRUPT_ID_BITS_ITS if its else 10      # INTERRUPT_ID_BITS_SPIS
            return ((self.NR_SPIS + 32) // 32 - 1) | G.GICD_TYPER_IDBITS(idbits - 1) \
                | G.GICD_TYPER_LPIS(int(its))
        if offset == G.GICD_IIDR:
            return self.IIDR
        if offset == G.GICD_PIDR2:
            return 3 << 4 | 0xB                   # ArchRev GICv3, JEP106 Arm
        return 0

    def dist_write(self, offset: int, value: int, size: int) -> None:
        """A guest write of the distributor: only GICD_CTLR's group enables stick."""
        if offset == G.GICD_CTLR and size == 4:
            self.gicd_ctlr = value & (G.GICD_CTLR_ENABLE_G1 | 1)

    def covers_dist(self, gpa: int) -> bool:
        return self.dist_base != VGIC_ADDR_UNDEF and \
            self.dist_base <= gpa < self.dist_base + K.KVM_VGIC_V3_DIST_SIZE

    _ADDRS = {K.KVM_VGIC_V3_ADDR_TYPE_DIST: ("dist_base", K.KVM_VGIC_V3_DIST_SIZE),
              K.KVM_VGIC_V3_ADDR_TYPE_REDIST: ("redist_base", K.KVM_VGIC_V3_REDIST_SIZE)}

    def set_attr(self, attr: K.KvmDeviceAttr) -> int:
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

    def get_attr(self, attr: K.KvmDeviceAttr) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr.attr not in self._ADDRS:
                raise fail(ENODEV, f"vgic address type {attr.attr}")
            self._write_u64(attr, getattr(self, self._ADDRS[attr.attr][0]))
            return 0
        raise fail(ENXIO, f"vgic group {attr.group}")

    def has_attr(self, attr: K.KvmDeviceAttr) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR and attr.attr in self._ADDRS or \
                attr.group == K.KVM_DEV_ARM_VGIC_GRP_CTRL and \
                attr.attr == K.KVM_DEV_ARM_VGIC_CTRL_INIT:
            return 0
        raise fail(ENXIO, "no such vgic attribute")


_ITS_SIZE = K.KVM_VGIC_V3_ITS_SIZE


class VgicIts(KvmDevice, VI.VgicItsEmul):
    """A vITS (KVM_DEV_TYPE_ARM_VGIC_ITS): its 128K MMIO frame, the guest's
    interface to it (:class:`~pymsi.kernel.vgic_its.VgicItsEmul`) and the MSIs it took."""

    name = "kvm-arm-vgic-its"

    def __init__(self, kvm: Kvm) -> None:
        super().__init__(kvm)
        self.base = VGIC_ADDR_UNDEF
        #: (DeviceID, EventID) of every MSI that reached this vITS, in order.
        self.delivered: list[tuple[int, int]] = []
        self._its_reset()

    def covers(self, address: int) -> bool:
        """Whether ``address`` falls in this vITS's MMIO frame (its KVM_MMIO_BUS device)."""
        return self.base != VGIC_ADDR_UNDEF and \
            self.base <= address < self.base + _ITS_SIZE

    def trigger_msi(self, devid: int, eventid: int) -> int:
        """vgic_its_trigger_msi(): the MSI is recorded in ``delivered`` and translated
        through the guest's mappings: 0 when an LPI was made pending, a positive
        E_ITS_* code when (DeviceID, EventID) is not mapped, -EBUSY while the vITS
        is disabled or the target vCPU has its LPIs off."""
        self.delivered.append((devid, eventid))
        ret = self.translate_msi(devid, eventid)
        if trace_vgic_its_trigger_msi.enabled:
            trace_vgic_its_trigger_msi(its=self.base, device_id=devid, event_id=eventid, ret=ret)
        return ret

    def set_attr(self, attr: K.KvmDeviceAttr) -> int:
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

    def get_attr(self, attr: K.KvmDeviceAttr) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR:
            if attr.attr != K.KVM_VGIC_ITS_ADDR_TYPE:
                raise fail(ENODEV, f"its address type {attr.attr}")
            self._write_u64(attr, self.base)
            return 0
        raise fail(ENXIO, f"its group {attr.group}")

    def has_attr(self, attr: K.KvmDeviceAttr) -> int:
        if attr.group == K.KVM_DEV_ARM_VGIC_GRP_ADDR and attr.attr == K.KVM_VGIC_ITS_ADDR_TYPE \
                or attr.group == K.KVM_DEV_ARM_VGIC_GRP_CTRL and \
                attr.attr == K.KVM_DEV_ARM_VGIC_CTRL_INIT:
            return 0
        raise fail(ENXIO, "no such its attribute")


# -- vCPUs and memory slots -----------------------------------------------------------

VPROP_SIZE = (1 << VI.INTERRUPT_ID_BITS_ITS) - VI.GIC_LPI_OFFSET
VPT_SIZE = SZ_64K


class KvmVcpu(FileOperations):
    """struct kvm_vcpu with its file (``kvm-vcpu:<id>``) and its vGIC redistributor
    state (GICR_CTLR.EnableLPIs, GICR_PENDBASER); it holds a VM reference."""

    def __init__(self, kvm: Kvm, vcpu_id: int, idx: int) -> None:
        self.kvm = kvm
        self.vcpu_id = vcpu_id
        self.idx = idx
        self.lpis_enabled = False
        self.pendbaser = 0
        self.file: File | None = None
        self.cpuif = VgicCpuIf(self)

    def unlocked_ioctl(self, file: File, cmd: int, arg: IoctlArg) -> int:
        """kvm_vcpu_ioctl(): KVM_RUN (see :class:`pymsi.uapi.kvm.KvmRun`); no other vCPU
        ioctl is modelled (EINVAL as kvm_arch_vcpu_ioctl)."""
        if cmd == K.KVM_RUN:
            return self.kvm_arch_vcpu_ioctl_run(cast(K.KvmRun, arg))    # (checked there)
        raise fail(EINVAL, f"kvm-vcpu: ioctl {cmd:#x}")

    def kvm_arch_vcpu_ioctl_run(self, run: K.KvmRun) -> int:
        """KVM_RUN: EFAULT without a ``struct kvm_run``; ENXIO with a vGIC whose
        distributor has no address (vgic_v3_map_resources); otherwise the vCPU enters the guest: the
        run's ``guest`` is this CPU in guest mode and, as the model never leaves it,
        the exit reported is KVM_EXIT_INTR (a signal kicked the thread out)."""
        if not isinstance(run, K.KvmRun):
            raise fail(_errno.EFAULT, "KVM_RUN without the vCPU's struct kvm_run")
        vgic = self.kvm.vgic
        if vgic is not None and vgic.dist_base == VGIC_ADDR_UNDEF:
            raise fail(ENXIO, "KVM_RUN: the vGIC distributor has no address")
        if run.immediate_exit:
            run.exit_reason = K.KVM_EXIT_INTR
            raise fail(_errno.EINTR, "immediate_exit")
        run.guest = GuestCpu(self)
        run.exit_reason = K.KVM_EXIT_INTR
        return 0

    def release(self, file: File) -> None:
        self.kvm.put()

    def rd_read(self, offset: int, size: int) -> int:
        """This vCPU's RD_base frame (vgic-mmio-v3.c): CTLR, TYPER, PROPBASER, PENDBASER."""
        nvcpus = len(self.kvm.vcpus)
        typer = (G.GICR_TYPER_PLPIS(int(bool(self.kvm.its_list())))
                 | G.GICR_TYPER_LAST(int(self.idx == nvcpus - 1))
                 | G.GICR_TYPER_PROCESSOR_NUMBER(self.idx)
                 | G.GICR_TYPER_AFFINITY(self.vcpu_id))
        regs64 = {G.GICR_TYPER: typer, G.GICR_PROPBASER: self.kvm.propbaser,
                  G.GICR_PENDBASER: self.pendbaser}
        reg = offset & ~7
        if reg in regs64 and size in (4, 8) and not offset % size:
            v = regs64[reg]
            return v if size == 8 else v >> 8 * (offset & 4) & 0xFFFF_FFFF
        if offset == G.GICR_CTLR and size == 4:
            return GICR_CTLR_ENABLE_LPIS if self.lpis_enabled else 0
        return 0

    def rd_write(self, offset: int, value: int, size: int) -> None:
        reg = offset & ~7
        if reg in (G.GICR_PROPBASER, G.GICR_PENDBASER) and size in (4, 8) and not offset % size:
            if self.lpis_enabled:                     # fixed while LPIs are enabled
                return
            if reg == G.GICR_PROPBASER:
                self.kvm.propbaser = merge_access(self.kvm.propbaser, offset & 4, value, size)
            else:
                self.pendbaser = merge_access(self.pendbaser, offset & 4, value, size)
        elif offset == G.GICR_CTLR and size == 4:
            if not self.kvm.its_list():               # EnableLPIs is RES0 without an ITS
                return
            enable = bool(value & GICR_CTLR_ENABLE_LPIS)
            if self.lpis_enabled and not enable:      # vgic_flush_pending_lpis()
                self.kvm.invalidate_all_its_caches()
                for irq in self.kvm.lpis.values():
                    if irq.target_vcpu == self.vcpu_id:
                        irq.pending_latch = False
            elif enable and not self.lpis_enabled and not self.pendbaser & PENDBASER_PTZ:
                self._sync_pending_table()
            self.lpis_enabled = enable

    def _sync_pending_table(self) -> None:
        """its_sync_lpi_pending_table(): LPIs targeting this vCPU whose bit is set in
        its pending table become pending (an unreadable byte is skipped)."""
        pendbase = VI.GICR_PENDBASER_ADDRESS.get(self.pendbaser) << 16
        for irq in self.kvm.lpis.values():
            if irq.target_vcpu != self.vcpu_id or irq.hw:
                continue
            try:
                byte = self.kvm.read_guest(pendbase + irq.intid // 8, 1)[0]
            except KernelError:
                continue
            if byte & 1 << irq.intid % 8:
                irq.pending_latch = True


class VgicCpuIf:
    """The vCPU's virtual CPU interface: what the guest's ICC_* system register
    accesses are while it executes on this vCPU.  With HCR_EL2.IMO set the CPU
    redirects them to the ICV_* registers, which KVM backs with its list
    registers for the LPIs it made pending in software (an emulated vITS:
    KVM_SIGNAL_MSI, an irqfd) and, with GICv4, the physical GIC's view of the
    vPE's virtual pending table (direct injection, no KVM involvement): KVM
    makes the vPE resident on the physical CPU it runs on (its_vpe_load:
    GICR_VPROPBASER / GICR_VPENDBASER) and the CPU's ICV_IAR1 reads it there.

    ``pmr`` / ``igrpen1`` are the guest's ICC_PMR_EL1 / ICC_IGRPEN1_EL1; an
    acknowledge takes the highest priority (lowest value; ties: lowest INTID)
    pending enabled LPI of either kind below the running priority and the mask.
    """

    def __init__(self, vcpu: KvmVcpu) -> None:
        self.vcpu = vcpu
        self.pmr = 0
        self.igrpen1 = 0
        self.active: list[tuple[int, bool]] = []   # (priority, direct), innermost last
        self.stats = {"acks": 0, "direct_acks": 0, "spurious": 0, "eois": 0, "bad_eois": 0}

    @property
    def running_priority(self) -> int:
        return self.active[-1][0] if self.active else 0x100

    def _sw_best(self, below: int) -> tuple[int, int] | None:
        kvm = self.vcpu.kvm
        if not kvm.lpi_pending:                 # the common case: nothing pending in software
            return None
        best = None
        vid = self.vcpu.vcpu_id
        lpis = kvm.lpis
        for irq in kvm.lpi_pending:             # every VgicLpi of kvm.lpis with pending_latch
            if irq.enabled and not irq.hw and irq.target_vcpu == vid and \
                    lpis.get(irq.intid) is irq:
                key = (irq.priority, irq.intid)
                if key[0] < below and (best is None or key < best):
                    best = key
        return best

    def _vpe_cpuif(self) -> Any:
        """vgic_v4_load(): the vPE resident on its physical CPU; that CPU's interface."""
        kvm = self.vcpu.kvm
        vpe = kvm.vpes.get(self.vcpu.vcpu_id)
        kernel = kvm.kernel
        gic = getattr(kernel, "gic", None)
        if vpe is None or not vpe.mapped or gic is None:
            return None
        kdev: KvmDev = kernel.kvm  # type: ignore[assignment]  # (a VM: /dev/kvm is there)
        resident = kdev.resident
        if resident.get(vpe.col) != vpe.vpe_id:
            # vgic_v4_put() of whatever runs there first: GICv4 loads a vPE only over
            # a VPENDBASER whose Valid is clear (its_vpe_deschedule, then its_vpe_schedule)
            kdev.vpe_deschedule(vpe)
            kdev.cpu_deschedule(vpe.col)
            rd = gic.rd_base[vpe.col] + G.VLPI_FRAME
            kernel.bus.write(rd + G.GICR_VPROPBASER,
                             vpe.vprop | (VI.INTERRUPT_ID_BITS_ITS - 1), 8)
            kernel.bus.write(rd + G.GICR_VPENDBASER, vpe.vpt | G.VPENDBASER_VALID(1), 8)
            resident[vpe.col] = vpe.vpe_id
        return gic.cpuifs[vpe.col]

    def _hw_best(self, below: int) -> tuple[tuple[int, int], Any] | None:
        cif = self._vpe_cpuif()
        if cif is None:
            return None
        cif.vpmr = below                                  # ICH_VMCR_EL2.VPMR
        vintid = cif.vcpu_hppir1()
        if vintid == G.SPURIOUS:
            return None
        kvm = self.vcpu.kvm
        prio = kvm.kernel.ram.read(kvm.vprop + vintid - VI.GIC_LPI_OFFSET, 1)[0] \
            & VI.LPI_PROP_PRIORITY_MASK
        return ((prio, vintid), cif) if prio < below else None

    def _candidate(self) -> tuple[tuple[int, int], Any] | None:
        if not self.igrpen1:
            return None
        below = min(self.pmr, self.running_priority)
        sw = self._sw_best(below)
        hw = self._hw_best(below)
        if hw is not None and (sw is None or hw[0] < sw):
            return hw
        return None if sw is None else (sw, None)

    @property
    def irq_pending(self) -> bool:
        """Whether the vCPU's virtual IRQ line is asserted."""
        return self._candidate() is not None

    def hppir1(self) -> int:
        """ICV_HPPIR1_EL1."""
        c = self._candidate()
        return G.SPURIOUS if c is None else c[0][1]

    def iar1(self) -> int:
        """ICV_IAR1_EL1: acknowledge the best pending LPI (1023: none).  With nothing
        pending in software the physical interface decides alone (one look at the vPE's
        pending table instead of two)."""
        stats = self.stats
        if not self.igrpen1:
            stats["spurious"] += 1
            return G.SPURIOUS
        kvm = self.vcpu.kvm
        active = self.active
        rp = active[-1][0] if active else 0x100
        below = self.pmr if self.pmr < rp else rp
        sw = self._sw_best(below) if kvm.lpi_pending else None
        if not kvm.vpes:                       # software only: no vPE to look at
            if sw is None:
                stats["spurious"] += 1
                return G.SPURIOUS
            prio, intid = sw
            kvm.lpis[intid].pending_latch = False             # LPIs have no active state
            active.append((prio, False))
            stats["acks"] += 1
            return intid
        if sw is None:
            cif = self._vpe_cpuif()
            if cif is not None:
                cif.vpmr = below                                  # ICH_VMCR_EL2.VPMR
                vintid: int = cif.vcpu_iar1()
                if vintid != G.SPURIOUS:
                    active.append((cif.vactive[-1], True))
                    stats["acks"] += 1
                    stats["direct_acks"] += 1
                    return vintid
            stats["spurious"] += 1
            return G.SPURIOUS
        c = self._candidate()
        if c is None:
            self.stats["spurious"] += 1
            return G.SPURIOUS
        (prio, intid), cif = c
        if cif is None:
            self.vcpu.kvm.lpis[intid].pending_latch = False   # LPIs have no active state
        else:
            got = cif.vcpu_iar1()
            assert got == intid, (got, intid)
            self.stats["direct_acks"] += 1
        self.active.append((prio, cif is not None))
        self.stats["acks"] += 1
        return intid

    def idle_ack(self) -> tuple[G.CpuInterface, int] | Literal[False] | None:
        """What :meth:`iar1` would do now if it can only read 1023, for an idle poll that
        skips it: None (it would only count a spurious read), (physical CPU interface,
        VPMR) (it would also load VPMR into the interface of its resident vPE), or False
        (it might take an interrupt or load a vPE: acknowledge for real).  Reads only."""
        if not self.igrpen1:
            return None
        kvm = self.vcpu.kvm
        if kvm.lpi_pending:
            return False
        if not kvm.vpes:
            return None
        vpe = kvm.vpes.get(self.vcpu.vcpu_id)
        kernel = kvm.kernel
        gic = getattr(kernel, "gic", None)
        if vpe is None or not vpe.mapped or gic is None:
            return None
        # (a VM: /dev/kvm is there; no check added on the guest's acknowledge path)
        if kernel.kvm.resident.get(vpe.col) != vpe.vpe_id:  # type: ignore[union-attr]
            return False
        cif = gic.cpuifs[vpe.col]
        if type(cif) is not G.CpuInterface:
            return False
        active = self.active
        rp = active[-1][0] if active else 0x100
        return (cif, self.pmr if self.pmr < rp else rp) if cif.vlpi_idle() else False

    def eoir1(self, intid: int) -> None:
        """ICV_EOIR1_EL1: priority drop of the innermost active interrupt."""
        if not self.active or intid >= G.SPURIOUS - 3 and intid <= G.SPURIOUS:
            self.stats["bad_eois"] += 1
            return
        _, direct = self.active.pop()
        if direct:
            cif = self._vpe_cpuif()
            if cif is not None:
                cif.vcpu_eoir1(intid)
        self.stats["eois"] += 1


class GuestCpu:
    """A physical CPU executing a vCPU in guest mode (inside KVM_RUN), as the guest
    running there reaches it: with HCR_EL2.IMO its ICC_* accesses are the vCPU's ICV_*
    (``cpuif``), and a stage-2 fault on an address an in-kernel device claims (vGIC
    distributor, redistributors, vITS: the VM's KVM_MMIO_BUS) is handled in the kernel
    without an exit to the VMM (:meth:`mmio_read` / :meth:`mmio_write`).  Handed out by
    KVM_RUN in ``struct kvm_run`` (see :class:`pymsi.uapi.kvm.KvmRun`)."""

    def __init__(self, vcpu: KvmVcpu) -> None:
        self.vcpu = vcpu
        self.cpuif = vcpu.cpuif

    def mmio_read(self, gpa: int, size: int) -> int | None:
        """A guest load at ``gpa``: the value, or None for an exit (KVM_EXIT_MMIO)."""
        if self.vcpu.kvm.destroyed:
            return None
        return self.vcpu.kvm.mmio_read(gpa, size)

    def mmio_write(self, gpa: int, value: int, size: int) -> bool:
        """A guest store at ``gpa``: True when KVM took it, False for an exit."""
        if self.vcpu.kvm.destroyed:
            return False
        return self.vcpu.kvm.mmio_write(gpa, value, size)


@dataclass(frozen=True)
class Memslot:
    """struct kvm_memory_slot: ``npages`` guest pages from ``base_gfn`` at ``userspace_addr``."""

    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int


# -- the VM ----------------------------------------------------------------------------


class Kvm(FileOperations):
    """struct kvm: one VM, with its anonymous file (``kvm-vm``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.users = 1                         # the VM file
        self.destroyed = False
        self.devices: list[KvmDevice] = []
        self.vgic: VgicV3 | None = None
        self.routing: dict[int, list[KvmRoute]] = {}
        #: the bytes of the last table KVM_SET_GSI_ROUTING accepted, and that table
        self._routing_last: tuple[bytes, dict[int, list[KvmRoute]] | None] = (b"", None)
        self.irqfds: list[Irqfd] = []
        # the irqfds by the identity of their eventfd, and by GSI (in self.irqfds order)
        self._irqfd_of_ctx: dict[int, Irqfd] = {}
        self._irqfds_of_gsi: dict[int, list[Irqfd]] = {}
        self.file: File | None = None
        self.vcpus: dict[int, KvmVcpu] = {}
        self.created_vcpus = 0
        self.max_vcpus = KVM_MAX_VCPUS
        self.memslots: dict[int, Memslot] = {}
        #: the VM's LPIs by INTID (struct vgic_dist's lpi_xa).
        self.lpis: dict[int, VI.VgicLpi] = {}
        #: those of them whose pending_latch is set (VgicLpi keeps it exact for the LPIs the
        #: vITS adds, vgic_add_lpi; an LPI put in ``lpis`` some other way needs its _pset)
        self.lpi_pending: set[VI.VgicLpi] = set()
        #: GICR_PROPBASER, one for the whole VM as in KVM.
        self.propbaser = 0
        #: its_vm: the vPE of each vCPU and the VM's vLPI property table (GICv4).
        self.vpes: dict[int, ItsVpe] = {}
        self.vprop: int | None = None

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
            # vgic_v4_teardown() -> its_free_vcpu_irqs(): each vPE unmapped from the
            # ITS (VMAPP V=0) and its virtual pending table freed, then the VM's
            # property table.
            its = getattr(self.kernel, "its", None)
            for vid in sorted(self.vpes):
                vpe = self.vpes.pop(vid)
                if kvm_dev is not None:
                    kvm_dev.vpe_deschedule(vpe)
                if its is not None and hasattr(its, "unmap_vpe"):
                    its.unmap_vpe(vpe)
                self.kernel.mm.free(vpe.vpt, VPT_SIZE)
            if self.vprop is not None:
                self.kernel.mm.free(self.vprop, VPROP_SIZE)
                self.vprop = None

    def release(self, file: File) -> None:
        """kvm_vm_release(): every irqfd goes now, the VM with its last reference."""
        for irqfd in list(self.irqfds):
            self._irqfd_shutdown(irqfd)
        self.put()

    # -- ioctls --------------------------------------------------------------------------

    def unlocked_ioctl(self, file: File, cmd: int, arg: IoctlArg) -> int:
        """kvm_vm_ioctl(); an unknown command is EINVAL (kvm_arch_vm_ioctl on arm64)."""
        if cmd == K.KVM_CHECK_EXTENSION:
            return check_extension(_arg_int(arg), self)
        # (each handler takes the argument its command's IOCTLS entry names)
        handlers: dict[int, Callable[[Any], int]] = {
            K.KVM_CREATE_DEVICE: self.create_device,
            K.KVM_SET_GSI_ROUTING: self.set_gsi_routing,
            K.KVM_IRQFD: self.irqfd,
            K.KVM_SIGNAL_MSI: self.signal_msi,
            K.KVM_CREATE_VCPU: self.create_vcpu,
            K.KVM_SET_USER_MEMORY_REGION: self.set_user_memory_region}
        handler = handlers.get(cmd)
        if handler is None:
            raise fail(EINVAL, f"kvm-vm: ioctl {cmd:#x}")
        argtype = K.IOCTLS[cmd]
        if argtype is None:
            return handler(_arg_int(arg))
        if not isinstance(arg, argtype):
            raise fail(_errno.EFAULT, f"argument is not a {argtype}")
        return handler(arg)

    def create_device(self, cd: K.KvmCreateDevice) -> int:
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

    def invalidate_all_its_caches(self) -> None:
        """vgic_its_invalidate_all_caches(): every vITS of the VM forgets its
        cached translations."""
        for its in self.its_list():
            its.invalidate_cache()

    # routing (irqchip.c)

    def set_gsi_routing(self, routing: K.KvmIrqRouting) -> int:
        """KVM_SET_GSI_ROUTING: the whole table at once, or EINVAL and no change.

        The table is replaced on every call, as in Linux; what is kept from the last
        call is its bytes and its table, so a table that extends the last one (a VMM
        adding one route per vector and committing each time) checks and builds only
        the new entries, and only the irqfds of GSIs whose routes changed are looked
        at again (the others' cached route would come out the same)."""
        if routing.nr > KVM_MAX_IRQ_ROUTES:
            raise fail(EINVAL, f"{routing.nr} routes")
        if routing.flags:
            raise fail(EINVAL, f"routing flags {routing.flags:#x}")
        flex = routing._flex
        raw = flex if isinstance(flex, bytes) else _routing_bytes(flex or [])
        size = _ROUTE_ENTRY_SIZE
        if len(raw) // size < routing.nr:
            raise fail(_errno.EFAULT, "fewer entries than nr")
        raw = raw[:routing.nr * size]
        prev_raw, prev_table = self._routing_last
        changed: list[int] | None = None
        if prev_table is self.routing and raw.startswith(prev_raw):
            table = dict(prev_table)
            changed = _add_routes(raw, len(prev_raw), table)
        else:
            table = {}
            _add_routes(raw, 0, table)
        self.routing = table
        self._routing_last = (raw, table)
        if changed is not None and not changed:
            return 0
        want = None if changed is None else set(changed)
        irqfds = self.irqfds
        if want is not None and len(want) == 1:
            irqfds = self._irqfds_of_gsi.get(cast("list[int]", changed)[0], [])
        for irqfd in irqfds:                          # kvm_irq_routing_update()
            if want is not None and irqfd.gsi not in want:
                continue
            old = irqfd.irq_entry
            irqfd.update()
            prod = irqfd.consumer.producer
            if prod is not None and isinstance(old, MsiRoute) and old != irqfd.irq_entry:
                # kvm_arch_update_irqfd_routing(): the new translation is not resolved
                # here; the vLPI is unmapped and injection goes back to software.
                VI.unset_forwarding(self, prod.irq)
        return 0

    # injection (vgic-irqfd.c, vgic-its.c)

    def inject_gsi(self, gsi: int) -> None:
        """kvm_set_irq(): every route of ``gsi`` as the table is now; errors are
        dropped, as an irqfd has no one to tell."""
        if trace_kvm_set_irq.enabled:
            trace_kvm_set_irq(gsi=gsi, level=1, irq_source_id=0)
        routes = self.routing.get(gsi)
        if routes:
            for route in routes:
                if isinstance(route, MsiRoute):
                    try:
                        self.set_msi(route.address, route.data, route.flags, route.devid)
                    except KernelError:
                        pass

    def set_msi(self, address: int, data: int, flags: int, devid: int) -> int:
        """kvm_set_msi() -> vgic_its_inject_msi(): 1 when a vITS took the MSI
        (ENODEV without a vITS, EINVAL without a DeviceID or outside every vITS frame)."""
        if trace_kvm_msi_set_irq.enabled:
            trace_kvm_msi_set_irq(address=address, data=data, devid=devid)
        its = None
        has_its = False
        for dev in self.devices:                   # the first vITS whose frame covers it
            if isinstance(dev, VgicIts):
                has_its = True
                base = dev.base
                if base != VGIC_ADDR_UNDEF and base <= address < base + _ITS_SIZE:
                    its = dev
                    break
        if self.vgic is None or not has_its:       # vgic_has_its()
            raise fail(ENODEV, "the VM has no vITS")
        if not flags & K.KVM_MSI_VALID_DEVID:
            raise fail(EINVAL, "an ITS MSI needs a DeviceID")
        if its is None:
            raise fail(EINVAL, f"no vITS at {address:#x}")
        ret = its.trigger_msi(devid, data)
        if ret < 0:
            raise fail(-ret, f"vITS refused MSI ({devid:#x}, {data:#x})")
        return 0 if ret else 1

    def signal_msi(self, msi: K.KvmMsi) -> int:
        """KVM_SIGNAL_MSI (kvm_send_userspace_msi()): EINVAL without an in-kernel
        irqchip (no vGIC created) or for flags other than KVM_MSI_VALID_DEVID."""
        if self.vgic is None:
            raise fail(EINVAL, "no in-kernel irqchip")
        if msi.flags & ~K.KVM_MSI_VALID_DEVID:
            raise fail(EINVAL, f"kvm_msi flags {msi.flags:#x}")
        return self.set_msi(msi.address_hi << 32 | msi.address_lo, msi.data, msi.flags,
                            msi.devid)

    # vCPUs (kvm_main.c)

    @property
    def online_vcpus(self) -> int:
        return len(self.vcpus)

    def create_vcpu(self, vcpu_id: int) -> int:
        """KVM_CREATE_VCPU: EINVAL for an id >= KVM_MAX_VCPU_IDS or past max_vcpus,
        EBUSY once the vGIC is initialised, EEXIST for an id in use; the new fd."""
        if not 0 <= vcpu_id < KVM_MAX_VCPU_IDS:
            raise fail(EINVAL, f"vcpu id {vcpu_id}")
        if self.created_vcpus >= self.max_vcpus:
            raise fail(EINVAL, "too many vCPUs")
        if self.vgic is not None and self.vgic.initialized:   # kvm_arch_vcpu_precreate()
            raise fail(EBUSY, "the vGIC is initialised")
        if vcpu_id in self.vcpus:
            raise fail(EEXIST, f"vcpu {vcpu_id} exists")
        self.kernel.files.alloc_fd()
        vcpu = KvmVcpu(self, vcpu_id, len(self.vcpus))
        self.created_vcpus += 1
        self.vcpus[vcpu_id] = vcpu
        self.get()
        vcpu.file = _install_anon(self.kernel, vcpu, vcpu)
        return cast(int, vcpu.file.fd)           # installed: it has a descriptor

    # memory slots and guest memory (kvm_main.c)

    def set_user_memory_region(self, mem: K.KvmUserspaceMemoryRegion) -> int:
        """KVM_SET_USER_MEMORY_REGION (__kvm_set_memory_region): EINVAL for unknown
        flags, unaligned size / guest or user address, a slot out of range, a wrap,
        deleting an empty slot or resizing / moving the user side of one; EEXIST
        for an overlap; EFAULT beyond the IPA space; size 0 deletes."""
        if mem.flags & ~(K.KVM_MEM_LOG_DIRTY_PAGES | K.KVM_MEM_READONLY):
            raise fail(EINVAL, f"memslot flags {mem.flags:#x}")
        as_id, sid = mem.slot >> 16, mem.slot & 0xFFFF
        if mem.memory_size % PAGE_SIZE or mem.guest_phys_addr % PAGE_SIZE or \
                mem.userspace_addr % PAGE_SIZE or \
                mem.userspace_addr + mem.memory_size > 1 << 48:
            raise fail(EINVAL, "memslot not page aligned or outside user space")
        if as_id >= 1 or sid >= KVM_MEM_SLOTS_NUM:
            raise fail(EINVAL, f"slot {mem.slot:#x}")
        if mem.guest_phys_addr + mem.memory_size >= 1 << 64:
            raise fail(EINVAL, "memslot wraps")
        old = self.memslots.get(sid)
        npages = mem.memory_size // PAGE_SIZE
        base_gfn = mem.guest_phys_addr // PAGE_SIZE
        if not npages:
            if old is None:
                raise fail(EINVAL, f"slot {sid} is empty")
            del self.memslots[sid]
            return 0
        if old is not None:
            if mem.userspace_addr != old.userspace_addr or npages != old.npages or \
                    (mem.flags ^ old.flags) & K.KVM_MEM_READONLY:
                raise fail(EINVAL, "a memslot's size and user address cannot change")
            if base_gfn == old.base_gfn:
                self.memslots[sid] = Memslot(sid, base_gfn, npages, old.userspace_addr,
                                             mem.flags)
                return 0
        if any(s.id != sid and s.base_gfn < base_gfn + npages and base_gfn < s.base_gfn + s.npages
               for s in self.memslots.values()):
            raise fail(EEXIST, "memslot overlaps another")
        if base_gfn + npages > (1 << KVM_PHYS_SHIFT) // PAGE_SIZE:
            raise fail(_errno.EFAULT, "memslot beyond the IPA space")
        self.memslots[sid] = Memslot(sid, base_gfn, npages, mem.userspace_addr, mem.flags)
        return 0

    def _gfn_to_hva(self, gpa: int, write: bool) -> int:
        gfn = gpa // PAGE_SIZE
        for s in self.memslots.values():
            if s.base_gfn <= gfn < s.base_gfn + s.npages:
                if write and s.flags & K.KVM_MEM_READONLY:
                    break
                return s.userspace_addr + gpa - s.base_gfn * PAGE_SIZE
        raise fail(_errno.EFAULT, f"guest address {gpa:#x} not in a memory slot")

    def gpa_visible(self, gpa: int) -> bool:
        """kvm_is_visible_gfn()."""
        try:
            self._gfn_to_hva(gpa, False)
        except KernelError:
            return False
        return True

    def read_guest(self, gpa: int, n: int) -> bytes:
        """kvm_read_guest(): page by page through the memory slots (EFAULT)."""
        out = b""
        while n:
            chunk = min(n, PAGE_SIZE - gpa % PAGE_SIZE)
            out += self.kernel.user_read(self._gfn_to_hva(gpa, False), chunk)
            gpa, n = gpa + chunk, n - chunk
        return out

    def write_guest(self, gpa: int, data: bytes) -> None:
        """kvm_write_guest(): EFAULT outside writable slots."""
        while data:
            chunk = min(len(data), PAGE_SIZE - gpa % PAGE_SIZE)
            self.kernel.user_write(self._gfn_to_hva(gpa, True), data[:chunk])
            gpa, data = gpa + chunk, data[chunk:]

    # MMIO of the in-kernel devices (the KVM_MMIO_BUS)

    def _mmio_target(self, gpa: int) -> tuple[Any, int] | None:
        for its in self.its_list():
            if its.covers(gpa):
                return its, gpa - its.base
        vgic = self.vgic
        if vgic is not None and vgic.covers_dist(gpa):
            return vgic, gpa - vgic.dist_base
        if vgic is not None and vgic.redist_base != VGIC_ADDR_UNDEF and \
                gpa >= vgic.redist_base:
            idx, off = divmod(gpa - vgic.redist_base, KVM_VCPU_REDIST_FRAME)
            vcpu = next((v for v in self.vcpus.values() if v.idx == idx), None)
            if vcpu is not None:
                return vcpu, off
        return None

    def mmio_read(self, gpa: int, size: int) -> int | None:
        """A guest read at ``gpa`` handled in the kernel (a vITS frame, a vCPU's
        redistributor RD_base frame), or None: an exit to the VMM."""
        t = self._mmio_target(gpa)
        if t is None:
            return None
        dev, off = t
        if isinstance(dev, VgicIts):
            return dev.its_mmio_read(off, size)
        if isinstance(dev, VgicV3):
            return dev.dist_read(off, size)
        return dev.rd_read(off, size) if off < SZ_64K else 0

    def mmio_write(self, gpa: int, value: int, size: int) -> bool:
        """A guest write at ``gpa``: True when an in-kernel device took it, False
        for an exit to the VMM."""
        t = self._mmio_target(gpa)
        if t is None:
            return False
        dev, off = t
        if isinstance(dev, VgicIts):
            dev.its_mmio_write(off, value, size)
        elif isinstance(dev, VgicV3):
            dev.dist_write(off, value, size)
        elif off < SZ_64K:
            dev.rd_write(off, value, size)
        return True

    # LPIs and GICv4 (vgic-its.c, vgic-v4.c)

    @property
    def vlpi_pending(self) -> list[tuple[int, int | None]]:
        """(vINTID, vCPU id) of every LPI pending in software, by INTID: "vLPI N
        pending on vCPU M" (a forwarded LPI is pending in its vPE instead)."""
        return [(i.intid, i.target_vcpu) for i in sorted(self.lpis.values(),
                                                         key=lambda x: x.intid)
                if i.pending_latch]

    def put_lpi(self, irq: VI.VgicLpi) -> None:
        """vgic_put_irq(): the last reference removes the LPI."""
        irq.refs -= 1
        if irq.refs == 0 and self.lpis.get(irq.intid) is irq:
            del self.lpis[irq.intid]
            self.lpi_pending.discard(irq)
            irq._pset = None

    def its_of_route(self, route: MsiRoute) -> VgicIts | None:
        """vgic_get_its(): the vITS whose frame holds the route's address (None
        without a DeviceID or outside every frame)."""
        if not route.flags & K.KVM_MSI_VALID_DEVID:
            return None
        return next((i for i in self.its_list() if i.covers(route.address)), None)

    def vpe_of(self, vcpu_id: int) -> ItsVpe:
        """The vCPU's its_vpe; the VM's vPEs are made on first use, one per vCPU
        (vgic_v4_init: a 64K virtual pending table each, one property table)."""
        from .gic import ItsVpe
        if not self.vpes:
            kdev = cast(KvmDev, self.kernel.kvm)            # a VM: /dev/kvm is there
            self.vprop = self.kernel.mm.alloc(VPROP_SIZE, PAGE_SIZE)
            cpus = sorted(self.kernel.online_cpus)
            for vid in sorted(self.vcpus):
                vpt = self.kernel.mm.alloc(VPT_SIZE, VPT_SIZE)
                self.vpes[vid] = ItsVpe(vpe_id=kdev.alloc_vpe_id(), vpt=vpt, vprop=self.vprop,
                                        col=cpus[self.vcpus[vid].idx % len(cpus)])
        return self.vpes[vcpu_id]

    def write_vprop(self, irq: VI.VgicLpi) -> None:
        """its_prop_update_vlpi(): the LPI's priority / enable in the vPE property table."""
        if self.vprop is None:
            return
        prop = (irq.priority & VI.LPI_PROP_PRIORITY_MASK) | VI.LPI_PROP_GROUP1 | \
            (VI.LPI_PROP_ENABLED if irq.enabled else 0)
        self.kernel.ram.write(self.vprop + irq.intid - VI.GIC_LPI_OFFSET, bytes([prop]))

    def map_vlpi(self, host_irq: int, irq: VI.VgicLpi) -> None:
        """its_map_vlpi(): irq_set_vcpu_affinity(MAP_VLPI) on the target vCPU's vPE
        (VMAPTI the first time, VMOVI after; may raise KernelError)."""
        from .gic import VcpuCmd, VcpuInfo
        vpe = self.vpe_of(cast(int, irq.target_vcpu))   # a mapped LPI has a target
        self.write_vprop(irq)
        self.kernel.irq.set_vcpu_affinity(host_irq, VcpuInfo(VcpuCmd.MAP_VLPI, vpe, irq.intid))

    def unmap_vlpi(self, irq: VI.VgicLpi) -> None:
        """its_unmap_vlpi(): the host IRQ back to its host LPI."""
        from .gic import VcpuCmd, VcpuInfo
        host_irq = irq.host_irq
        irq.hw, irq.host_irq = False, None
        try:
            # (a forwarded LPI had its host IRQ)
            self.kernel.irq.set_vcpu_affinity(cast(int, host_irq), VcpuInfo(VcpuCmd.UNMAP_VLPI))
        except KernelError as e:
            self.kernel.printk(f"kvm: unmapping vLPI {irq.intid} failed: {e}")

    def host_set_pending(self, host_irq: int, pending: bool) -> None:
        """irq_set_irqchip_state(host_irq, PENDING): INT / CLEAR on the host ITS for
        the event (which the ITS turns into the vLPI of a forwarded event)."""
        from .gic import ItsDevice
        d: IrqData | None = self.kernel.irq.desc(host_irq).irq_data
        while d is not None and not isinstance(d.chip_data, ItsDevice):
            d = d.parent_data
        if d is None:
            return
        dev = d.chip_data
        # (a host with an ITS forwarded it; no check added on the forwarded-MSI path)
        self.kernel.its.send(I.Cmd.INT if pending else I.Cmd.CLEAR,  # type: ignore[union-attr]
                             d0=dev.device_id << 32, d1=d.hwirq - dev.lpi_base)

    # irqfd (eventfd.c)

    def irqfd(self, args: K.KvmIrqfd) -> int:
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
            if id(ctx) in self._irqfd_of_ctx:
                raise fail(EBUSY, f"eventfd {fd} already an irqfd of this VM")
        except KernelError:
            ctx.put()
            if resample is not None:
                resample.put()
            raise
        if trace_kvm_irqfd_assign.enabled:
            trace_kvm_irqfd_assign(fd=fd, gsi=gsi, flags=flags)
        irqfd = Irqfd(self, ctx, gsi)
        irqfd.resamplefd = resample
        irqfd.wait = ctx.add_wait_queue(irqfd.wakeup)
        irqfd.update()
        self.irqfds.append(irqfd)
        self._irqfd_of_ctx[id(ctx)] = irqfd
        self._irqfds_of_gsi.setdefault(gsi, []).append(irqfd)
        if ctx.count:                       # vfs_poll() at assignment saw EPOLLIN
            self.inject_gsi(gsi)
        ret = irqbypass_of(self.kernel).register_consumer(irqfd.consumer)
        if ret:
            self.kernel.printk(f"irq bypass consumer registration fails: {ret}")
        return 0

    def irqfd_deassign(self, fd: int, gsi: int) -> int:
        """kvm_irqfd_deassign(): the irqfd of (eventfd, gsi) goes; none is not an error."""
        if trace_kvm_irqfd_deassign.enabled:
            trace_kvm_irqfd_deassign(fd=fd, gsi=gsi)
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
        del self._irqfd_of_ctx[id(irqfd.eventfd)]
        same = self._irqfds_of_gsi[irqfd.gsi]
        same.remove(irqfd)
        if not same:
            del self._irqfds_of_gsi[irqfd.gsi]
        irqfd.eventfd.remove_wait_queue(irqfd.wait)
        irqbypass_of(self.kernel).unregister_consumer(irqfd.consumer)
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

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.vms: list[Kvm] = []
        self._next_vpe_id = 0
        #: the vPE resident on each physical CPU (its GICR_VPENDBASER), by vPE id
        self.resident: dict[int, int] = {}

    def vpe_deschedule(self, vpe: ItsVpe) -> None:
        """its_vpe_deschedule(): ``vpe`` no longer resident on any physical CPU."""
        for cpu, vid in list(self.resident.items()):
            if vid == vpe.vpe_id:
                self.cpu_deschedule(cpu)

    def cpu_deschedule(self, cpu: int) -> None:
        """its_vpe_deschedule() of the vPE resident on physical CPU ``cpu`` (if any):
        GICR_VPENDBASER written with Valid clear (the model's redistributor has no
        Dirty / PendingLast wait: the table is in memory already)."""
        if cpu not in self.resident:
            return
        gic = getattr(self.kernel, "gic", None)
        if gic is not None:
            self.kernel.bus.write(gic.rd_base[cpu] + G.VLPI_FRAME + G.GICR_VPENDBASER, 0, 8)
        del self.resident[cpu]

    def alloc_vpe_id(self) -> int:
        """its_vpe_id_alloc(): vPE ids are never reused in this model."""
        self._next_vpe_id += 1
        return self._next_vpe_id - 1

    def unlocked_ioctl(self, file: File, cmd: int, arg: IoctlArg) -> int:
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
            return cast(int, vm.file.fd)               # just installed
        raise fail(EINVAL, f"/dev/kvm: ioctl {cmd:#x}")


def kvm_init(kernel: Kernel) -> KvmDev:
    """kvm_init(): register ``/dev/kvm``; ``kernel.kvm`` is the device."""
    dev = kernel.kvm = KvmDev(kernel)
    kernel.register_chrdev("/dev/kvm", dev, dev)
    return dev


__all__ = ["Irqfd", "IrqchipRoute", "Kvm", "KvmDev", "KvmDevice", "KvmVcpu",
           "Memslot", "MsiRoute", "VgicCpuIf", "VgicIts",
           "VgicV3", "build_routing", "check_extension", "kvm_init", "GuestCpu"]
