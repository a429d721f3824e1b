"""``include/uapi/linux/kvm.h`` and arm64 ``asm/kvm.h``: the KVM ioctls of MSI routing.

The system, VM and device ioctls a VMM needs to create a VM with a vGICv3 and a
vITS, route MSIs (``KVM_SET_GSI_ROUTING`` with ``KVM_MSI_VALID_DEVID``), bind
irqfds and inject MSIs.  KVM encodes argument sizes in its request numbers
(``_IOW(KVMIO, 0x76, struct kvm_irqfd)``), so the numbers here are computed from
the structures' ``sizeof``.  Structures are CamelCase classes of the C names
(``struct kvm_irq_routing_entry`` -> :class:`KvmIrqRoutingEntry`).
"""

from __future__ import annotations

from typing import Protocol

from ._ioctl import _IO, _IOR, _IOW, _IOWR
from ._struct import Array, Flex, Struct, Union, anonymous_union, u8, u32, u64

KVMIO = 0xAE
KVM_API_VERSION = 12

# --- system ioctls (/dev/kvm) --------------------------------------------------------
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)

# Capabilities (KVM_CHECK_EXTENSION)
KVM_CAP_IRQCHIP = 0
KVM_CAP_IRQ_ROUTING = 25
KVM_CAP_IRQFD = 32
KVM_CAP_SIGNAL_MSI = 77
KVM_CAP_DEVICE_CTRL = 89
KVM_CAP_MSI_DEVID = 131

# --- VM ioctls -----------------------------------------------------------------------
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)


class KvmUserspaceMemoryRegion(Struct):
    """One memory slot: guest physical range -> userspace address (KVM_SET_USER_MEMORY_REGION)."""

    _c_name_ = "kvm_userspace_memory_region"
    _fields_ = (("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64))


# flags of kvm_userspace_memory_region
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, KvmUserspaceMemoryRegion)


class KvmIrqRoutingIrqchip(Struct):
    """A route to a pin of an in-kernel interrupt controller."""

    _c_name_ = "kvm_irq_routing_irqchip"
    _fields_ = (("irqchip", u32), ("pin", u32))


class KvmIrqRoutingMsi(Struct):
    """A route that sends an MSI: address, data and (with KVM_MSI_VALID_DEVID) device id."""

    _c_name_ = "kvm_irq_routing_msi"
    _fields_ = (("address_lo", u32), ("address_hi", u32), ("data", u32),
                (None, anonymous_union(("pad", u32), ("devid", u32))))


class KvmIrqRoutingS390Adapter(Struct):
    """An s390 adapter interrupt route (here for the union's layout)."""

    _c_name_ = "kvm_irq_routing_s390_adapter"
    _fields_ = (("ind_addr", u64), ("summary_addr", u64), ("ind_offset", u64),
                ("summary_offset", u32), ("adapter_id", u32))


class KvmIrqRoutingHvSint(Struct):
    """A Hyper-V synthetic interrupt route."""

    _c_name_ = "kvm_irq_routing_hv_sint"
    _fields_ = (("vcpu", u32), ("sint", u32))


class KvmIrqRoutingXenEvtchn(Struct):
    """A Xen event channel route."""

    _c_name_ = "kvm_irq_routing_xen_evtchn"
    _fields_ = (("port", u32), ("vcpu", u32), ("priority", u32))


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_IRQ_ROUTING_S390_ADAPTER = 3
KVM_IRQ_ROUTING_HV_SINT = 4
KVM_IRQ_ROUTING_XEN_EVTCHN = 5


class KvmIrqRoutingEntryU(Union):
    """The ``u`` union of ``struct kvm_irq_routing_entry`` (it has no C name of its own)."""

    _fields_ = (("irqchip", KvmIrqRoutingIrqchip), ("msi", KvmIrqRoutingMsi),
                ("adapter", KvmIrqRoutingS390Adapter), ("hv_sint", KvmIrqRoutingHvSint),
                ("xen_evtchn", KvmIrqRoutingXenEvtchn), ("pad", Array(u32, 8)))


class KvmIrqRoutingEntry(Struct):
    """One GSI route: ``type`` says which member of ``u`` holds it."""

    _c_name_ = "kvm_irq_routing_entry"
    _fields_ = (("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32),
                ("u", KvmIrqRoutingEntryU))


# flags of kvm_irq_routing_entry (MSI routes) and of kvm_msi
KVM_MSI_VALID_DEVID = 1 << 0


class KvmIrqRouting(Struct):
    """The whole GSI routing table; ``nr`` entries follow."""

    _c_name_ = "kvm_irq_routing"
    _fields_ = (("nr", u32), ("flags", u32), ("entries", Flex(KvmIrqRoutingEntry)))


KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, KvmIrqRouting)

KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class KvmIrqfd(Struct):
    """Bind (or with DEASSIGN unbind) an eventfd to a GSI."""

    _c_name_ = "kvm_irqfd"
    _fields_ = (("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32),
                ("pad", Array(u8, 16)))


KVM_IRQFD = _IOW(KVMIO, 0x76, KvmIrqfd)


class KvmMsi(Struct):
    """An MSI to inject now (KVM_SIGNAL_MSI)."""

    _c_name_ = "kvm_msi"
    _fields_ = (("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32),
                ("devid", u32), ("pad", Array(u8, 12)))


KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, KvmMsi)


class KvmVcpuInit(Struct):
    """arm64 vCPU target and feature bits (KVM_ARM_VCPU_INIT)."""

    _c_name_ = "kvm_vcpu_init"
    _fields_ = (("target", u32), ("features", Array(u32, 7)))


KVM_ARM_VCPU_INIT = _IOW(KVMIO, 0xAE, KvmVcpuInit)
KVM_ARM_PREFERRED_TARGET = _IOR(KVMIO, 0xAF, KvmVcpuInit)


# --- device control API --------------------------------------------------------------
class KvmCreateDevice(Struct):
    """Create an in-kernel device of ``type``; ``fd`` returns its fd."""

    _c_name_ = "kvm_create_device"
    _fields_ = (("type", u32), ("fd", u32), ("flags", u32))


KVM_CREATE_DEVICE_TEST = 1


class KvmDeviceAttr(Struct):
    """One attribute of a device: ``group``/``attr`` select it, ``addr`` points at the value."""

    _c_name_ = "kvm_device_attr"
    _fields_ = (("flags", u32), ("group", u32), ("attr", u64), ("addr", u64))


# enum kvm_device_type
KVM_DEV_TYPE_FSL_MPIC_20 = 1
KVM_DEV_TYPE_FSL_MPIC_42 = 2
KVM_DEV_TYPE_XICS = 3
KVM_DEV_TYPE_VFIO = 4
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_FLIC = 6
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_TYPE_ARM_VGIC_ITS = 8
KVM_DEV_TYPE_XIVE = 9
KVM_DEV_TYPE_ARM_PV_TIME = 10

# KVM-VFIO device
KVM_DEV_VFIO_FILE = 1
KVM_DEV_VFIO_FILE_ADD = 1
KVM_DEV_VFIO_FILE_DEL = 2

KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, KvmCreateDevice)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, KvmDeviceAttr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, KvmDeviceAttr)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, KvmDeviceAttr)

# --- arm64 vGIC (arch/arm64/include/uapi/asm/kvm.h) ----------------------------------
KVM_VGIC_V2_ADDR_TYPE_DIST = 0
KVM_VGIC_V2_ADDR_TYPE_CPU = 1
KVM_VGIC_V3_ADDR_TYPE_DIST = 2
KVM_VGIC_V3_ADDR_TYPE_REDIST = 3
KVM_VGIC_ITS_ADDR_TYPE = 4
KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION = 5
KVM_VGIC_V3_DIST_SIZE = 0x10000
KVM_VGIC_V3_REDIST_SIZE = 2 * 0x10000
KVM_VGIC_V3_ITS_SIZE = 2 * 0x10000

KVM_DEV_ARM_VGIC_GRP_ADDR = 0
KVM_DEV_ARM_VGIC_GRP_DIST_REGS = 1
KVM_DEV_ARM_VGIC_GRP_CPU_REGS = 2
KVM_DEV_ARM_VGIC_GRP_NR_IRQS = 3
KVM_DEV_ARM_VGIC_GRP_CTRL = 4
KVM_DEV_ARM_VGIC_GRP_REDIST_REGS = 5
KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS = 6
KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO = 7
KVM_DEV_ARM_VGIC_GRP_ITS_REGS = 8
KVM_DEV_ARM_VGIC_GRP_MAINT_IRQ = 9

KVM_DEV_ARM_VGIC_CTRL_INIT = 0
KVM_DEV_ARM_ITS_SAVE_TABLES = 1
KVM_DEV_ARM_ITS_RESTORE_TABLES = 2
KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES = 3
KVM_DEV_ARM_ITS_CTRL_RESET = 4

# --- vCPU ioctls ---------------------------------------------------------------------
KVM_RUN = _IO(KVMIO, 0x80)
KVM_EXIT_UNKNOWN, KVM_EXIT_MMIO, KVM_EXIT_INTR = 0, 6, 10


class GuestModeCpu(Protocol):
    """What :attr:`KvmRun.guest` holds: a physical CPU executing a vCPU in guest mode, as
    the guest running there reaches it (the kernel model's KVM hands one out).  The VMM
    only lends it to the guest it boots; it never calls it."""

    @property
    def cpuif(self) -> object:
        """The vCPU's interface (ICV_* behind the guest's ICC_* accesses), for the guest
        kernel's GIC driver (the VMM passes it on untouched)."""
        ...

    def mmio_read(self, gpa: int, size: int) -> int | None:
        """A guest load KVM's in-kernel devices take: the value, or None for an exit."""
        ...

    def mmio_write(self, gpa: int, value: int, size: int) -> bool:
        """A guest store: True when KVM took it, False for an exit."""
        ...


class KvmRun:
    """``struct kvm_run``: the page a VMM maps from its vCPU fd (KVM_GET_VCPU_MMAP_SIZE
    bytes) and KVM_RUN reports through; the model passes it as KVM_RUN's argument
    instead of mapping it.  ``exit_reason`` as Linux.

    The model runs no guest thread, so one KVM_RUN stands for the vCPU thread
    entering the guest for good: ``guest`` is filled with what the guest executes
    on from then on -- the physical CPU in guest mode (its ICC_* registers are the
    vCPU's ICV_*, ``guest.cpuif``; its loads / stores to an address KVM's in-kernel
    devices claim are handled in the kernel, ``guest.mmio_read`` / ``mmio_write``,
    None / False meaning an exit).  It is not the VMM's to call: the VMM only lends
    it to the guest it boots (model only, not a field of the C structure).
    """

    def __init__(self) -> None:
        self.exit_reason = KVM_EXIT_UNKNOWN
        self.immediate_exit = 0
        self.guest: GuestModeCpu | None = None


#: ioctl number -> its argument structure (None: an int argument or none).
IOCTLS: dict[int, type[Struct] | None] = {
    KVM_GET_API_VERSION: None,
    KVM_CREATE_VM: None,
    KVM_CHECK_EXTENSION: None,
    KVM_GET_VCPU_MMAP_SIZE: None,
    KVM_CREATE_VCPU: None,
    KVM_RUN: None,
    KVM_SET_USER_MEMORY_REGION: KvmUserspaceMemoryRegion,
    KVM_SET_GSI_ROUTING: KvmIrqRouting,
    KVM_IRQFD: KvmIrqfd,
    KVM_SIGNAL_MSI: KvmMsi,
    KVM_ARM_VCPU_INIT: KvmVcpuInit,
    KVM_ARM_PREFERRED_TARGET: KvmVcpuInit,
    KVM_CREATE_DEVICE: KvmCreateDevice,
    KVM_SET_DEVICE_ATTR: KvmDeviceAttr,
    KVM_GET_DEVICE_ATTR: KvmDeviceAttr,
    KVM_HAS_DEVICE_ATTR: KvmDeviceAttr,
}

NOT_UPSTREAM: frozenset[str] = frozenset()
