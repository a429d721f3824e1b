"""The VMM process: QEMU's ``-M virt,accel=kvm`` as far as the MSI path goes.

:class:`Vmm` is a user program of the host kernel model.  ``realize()`` does
what QEMU's ``machvirt_init`` and ``kvm_init`` do, in their order, through the
user/kernel contract only:

1. ``/dev/iommu``: an iommufd context and an IOAS (QEMU's iommufd backend);
2. guest RAM: anonymous memory, preallocated, mapped into the IOAS at
   IOVA = GPA (:class:`~pymsi.vmm.memory.GuestRam`);
3. ``/dev/kvm``: KVM_CREATE_VM, the RAM as memory slot 0, one
   KVM_CREATE_VCPU per vCPU, the vGICv3 (KVM_DEV_TYPE_ARM_VGIC_V3: distributor
   and redistributor bases, CTRL_INIT) and the vITS (KVM_DEV_TYPE_ARM_VGIC_ITS:
   its base, CTRL_INIT) -- ``kvm_arm_gicv3_realize`` / ``kvm_arm_its_realize``;
4. the vCPU threads enter the guest: KVM_RUN on each vCPU fd (``qemu_init_vcpu`` +
   ``kvm_cpu_exec``); each ``struct kvm_run`` carries the CPU the guest executes
   on (see :class:`pymsi.uapi.kvm.KvmRun`) -- the only way the VMM's board reaches
   KVM's in-kernel vGIC / vITS registers and the vCPU interfaces;
5. the guest's board (:class:`~pymsi.vmm.board.VirtBoard`) with the virtual
   PCI host the VMM's device models plug into.

``boot_guest()`` then boots the guest kernel on that board.  ``exit()`` is the
process exiting: the VMM closes the descriptors and unmaps the memory it opened
and mapped itself (it keeps the list, as a process's own bookkeeping; it never
walks the kernel's tables), after its vfio-pci devices and vSMMU let go of theirs.
Nothing here imports the host kernel: the VMM reaches it through system calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, cast

from ..errors import OutOfOrder
from ..uapi import iommufd as u
from ..uapi import kvm as K
from .board import IORT_RMR, VirtBoard
from .memory import RAM_GPA, RAM_SIZE, GuestRam

if TYPE_CHECKING:
    # the guest kernel's type: whatever the ``kernel`` image returns (object when none is
    # given); a default needs typing_extensions' TypeVar, for the type checker only
    from typing_extensions import TypeVar

    GuestKernelT = TypeVar("GuestKernelT", default=object)
else:
    from typing import TypeVar

    GuestKernelT = TypeVar("GuestKernelT")

if TYPE_CHECKING:
    from ..core import Memory
    from ..uapi.syscalls import OpenFile, Syscalls
    from .kvm_irqchip import KvmIrqchip
    from .smmuv3 import VirtualSmmuV3
    from .vfio_pci import MsiIommu, VfioPciDevice

PAGE = 0x1000


class Vmm(Generic[GuestKernelT]):
    """One VMM process on host kernel ``k``.

    ``host_ram`` is the host's physical RAM (the host CPU's view of the VMM's
    pages, see :mod:`pymsi.vmm.memory`); ``ncpus`` vCPUs; ``ram_size`` bytes of
    guest RAM at 0x40000000; ``iort_rmrs`` the reserved ranges described to the
    guest (default: QEMU's RMR over the host's MSI window) and ``honour_rmr``
    whether the guest kernel identity-maps them.  ``kernel`` is the guest kernel image
    (QEMU's ``-kernel``): called with the board, it boots and returns the guest kernel.
    ``k`` is the process's system-call surface (:class:`pymsi.uapi.syscalls.Syscalls`,
    which the host kernel model satisfies).  The guest kernel is opaque to the VMM: it
    boots it and hands it back (:meth:`boot_guest`), never calls into it, so the class is
    generic over its type (``Vmm(k, ram, kernel=boot_arm)`` is a ``Vmm[Kernel]``; without
    an image, ``Vmm[object]``) and nothing here depends on the kernel model's classes.
    """

    def __init__(self, k: Syscalls, host_ram: Memory, ncpus: int = 2,
                 ram_size: int = RAM_SIZE, msi_design: str = "per-vector",
                 iort_rmrs: list[tuple[int, int]] | None = None, honour_rmr: bool = True,
                 kernel: Callable[[VirtBoard], GuestKernelT] | None = None) -> None:
        self.k = k
        self.kernel_image = kernel
        self.host_ram = host_ram
        self.ncpus = ncpus
        self.ram_size = ram_size
        self.msi_design = msi_design
        self.iort_rmrs = [IORT_RMR] if iort_rmrs is None else list(iort_rmrs)
        self.honour_rmr = honour_rmr
        self.iommufd: OpenFile | None = None
        self.ioas_id: int | None = None
        self.ram: GuestRam | None = None
        self.vm_fd: int | None = None
        self.vcpu_fds: list[int] = []
        self.vgic_fd: int | None = None
        self.its_fd: int | None = None
        self.board: VirtBoard | None = None
        self.guest: GuestKernelT | None = None
        self._scratch: int | None = None
        self._irqchip: KvmIrqchip | None = None
        self.vcpu_runs: list[K.KvmRun] = []
        self.devices: list[VfioPciDevice] = []     # the vfio-pci devices realized
        #: what this process opened and mapped itself, in order: files / descriptor
        #: numbers, and (va, length) mappings -- what exit() gives back
        self._fds: list[int | OpenFile] = []
        self._maps: list[tuple[int, int]] = []

    # -- realize ---------------------------------------------------------------------

    def realize(self, smmu: VirtualSmmuV3 | None = None,
                emulated_smmu: bool = False) -> VirtBoard:
        """machvirt_init(): iommufd + IOAS, guest RAM, the KVM VM and its vGIC / vITS,
        the board.  ``smmu`` is the vSMMU model to map (None: no vIOMMU)."""
        self.os_setup_limits()
        self.iommufd_backend_connect()
        ram = self.ram = GuestRam(self.k, self.host_ram, RAM_GPA, self.ram_size)
        self._maps.append((ram.va, ram.size))
        ram.ioas_map(cast("OpenFile", self.iommufd), cast(int, self.ioas_id))   # connected above
        self.kvm_init()
        self.kvm_start_vcpus()
        self.board = self.machvirt_board(smmu, emulated_smmu)
        return self.board

    def os_setup_limits(self) -> None:
        """QEMU's os_setup_limits(): the descriptor soft limit raised to the hard one (two
        eventfds per MSI-X vector of every assigned device add up)."""
        _, hard = self.k.getrlimit_nofile()
        self.k.setrlimit_nofile(hard)

    def iommufd_backend_connect(self) -> None:
        """iommufd_backend_connect() + an IOAS for the guest's address space."""
        self.iommufd = iommufd = self.k.open("/dev/iommu")
        self._fds.append(iommufd)
        a = u.IommuIoasAlloc()
        iommufd.ioctl(u.IOMMU_IOAS_ALLOC, a)
        self.ioas_id = a.out_ioas_id

    def _device_attr(self, fd: int, group: int, attr: int, value: int | None = None) -> None:
        """kvm_device_access(): a 64-bit attribute value passed through user memory."""
        if self._scratch is None:
            self._scratch = self.k.mmap(PAGE)
            self._maps.append((self._scratch, PAGE))
        addr = 0
        if value is not None:
            self.k.user_write(self._scratch, value.to_bytes(8, "little"))
            addr = self._scratch
        self.k.ioctl(fd, K.KVM_SET_DEVICE_ATTR, K.KvmDeviceAttr(group=group, attr=attr,
                                                                 addr=addr))

    def _create_device(self, type_: int) -> int:
        cd = K.KvmCreateDevice(type=type_)
        self.k.ioctl(cast(int, self.vm_fd), K.KVM_CREATE_DEVICE, cd)   # kvm_init made the VM
        self._fds.append(cd.fd)
        return cast(int, cd.fd)

    def kvm_init(self) -> None:
        """KVM_CREATE_VM, memory slot 0, the vCPUs, then the in-kernel vGICv3 and vITS."""
        kvm = self.k.open("/dev/kvm")
        try:
            self.vm_fd = vm_fd = cast(int, kvm.ioctl(K.KVM_CREATE_VM, 0))   # a new fd
        finally:
            kvm.close()
        self._fds.append(vm_fd)
        cast(GuestRam, self.ram).kvm_set_user_memory_region(vm_fd, 0)   # realize made it
        self.vcpu_fds = []
        for i in range(self.ncpus):
            self.vcpu_fds.append(cast(int, self.k.ioctl(vm_fd, K.KVM_CREATE_VCPU, i)))
            self._fds.append(self.vcpu_fds[-1])
        # kvm_arm_gicv3_realize()
        self.vgic_fd = self._create_device(K.KVM_DEV_TYPE_ARM_VGIC_V3)
        self._device_attr(self.vgic_fd, K.KVM_DEV_ARM_VGIC_GRP_ADDR,
                          K.KVM_VGIC_V3_ADDR_TYPE_DIST, VirtBoard.GICD)
        self._device_attr(self.vgic_fd, K.KVM_DEV_ARM_VGIC_GRP_ADDR,
                          K.KVM_VGIC_V3_ADDR_TYPE_REDIST, VirtBoard.GICR)
        # kvm_arm_its_realize()
        self.its_fd = self._create_device(K.KVM_DEV_TYPE_ARM_VGIC_ITS)
        self._device_attr(self.its_fd, K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_VGIC_ITS_ADDR_TYPE,
                          VirtBoard.ITS)
        self._device_attr(self.its_fd, K.KVM_DEV_ARM_VGIC_GRP_CTRL,
                          K.KVM_DEV_ARM_VGIC_CTRL_INIT)
        # kvm_arm_vgic_init: the vGIC is initialised once the machine is done
        self._device_attr(self.vgic_fd, K.KVM_DEV_ARM_VGIC_GRP_CTRL,
                          K.KVM_DEV_ARM_VGIC_CTRL_INIT)

    def kvm_start_vcpus(self) -> None:
        """Each vCPU thread's kvm_cpu_exec(): KVM_RUN with the vCPU's ``struct kvm_run``,
        which from then on carries the CPU the guest executes on."""
        self.vcpu_runs = []
        for fd in self.vcpu_fds:
            run = K.KvmRun()
            self.k.ioctl(fd, K.KVM_RUN, run)
            self.vcpu_runs.append(run)

    def machvirt_board(self, smmu: VirtualSmmuV3 | None, emulated_smmu: bool) -> VirtBoard:
        ram = cast(GuestRam, self.ram)                  # realize made RAM and the VM first
        return VirtBoard(self.k, cast(int, self.vm_fd), ram.mem, ram.gpa, ram.size,
                         self.vcpu_runs, smmu=smmu,
                         emulated_smmu=emulated_smmu, msi_design=self.msi_design,
                         iort_rmrs=self.iort_rmrs, honour_rmr=self.honour_rmr)

    # -- assigned devices ------------------------------------------------------------

    @property
    def irqchip(self) -> KvmIrqchip:
        """The VMM's KVM routing table (QEMU's kvm_irqchip_*), made on first use."""
        if self._irqchip is None:
            from .kvm_irqchip import KvmIrqchip

            self._irqchip = KvmIrqchip(self.k, cast(int, self.vm_fd))    # a realized VM
        return self._irqchip

    def vfio_realize(self, host_path: str, device: int, pt_id: int | None,
                     iommu: MsiIommu | None = None) -> VfioPciDevice:
        """-device vfio-pci: the host function behind ``host_path`` at guest slot
        ``device`` of bus 0, bound to the VMM's iommufd (attached to ``pt_id`` unless
        None), on the guest's PCI bus."""
        from .vfio_pci import VfioPciDevice

        dev = VfioPciDevice(self.k, host_path, cast("OpenFile", self.iommufd), self.irqchip, bus=0,
                            device=device, pt_id=pt_id, ioas_id=self.ioas_id, iommu=iommu)
        cast(VirtBoard, self.board).pci.add(dev)           # a realized machine
        self.devices.append(dev)
        return dev

    def alloc_nest_parent(self, dev_id: int) -> int:
        """IOMMU_HWPT_ALLOC(NEST_PARENT) over the IOAS: the stage 2 an accelerated vSMMU's
        nested HWPTs hang from (allocated with the first assigned device, as QEMU does)."""
        h = u.IommuHwptAlloc(dev_id=dev_id, pt_id=self.ioas_id,
                             flags=u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        cast("OpenFile", self.iommufd).ioctl(u.IOMMU_HWPT_ALLOC, h)     # a realized VMM
        return cast(int, h.out_hwpt_id)

    # -- the guest -------------------------------------------------------------------

    def boot_guest(self) -> GuestKernelT:
        """Boot the guest kernel on the board (the same kernel model as the host): what
        the ``kernel`` image returns (:func:`pymsi.kernel.boot.boot_arm` gives a
        :class:`pymsi.kernel.Kernel`)."""
        if self.board is None:
            raise OutOfOrder("realize() the VMM first")
        if self.kernel_image is None:
            raise OutOfOrder("no guest kernel image (-kernel)")
        self.guest = self.kernel_image(self.board)
        return self.guest

    def exit(self) -> None:
        """The VMM process exits (QEMU quits).  Its devices let go first (vfio_exitfn:
        MSI-X off, eventfds and the device file closed; the vSMMU's vEVENTQ closed and
        scratch page unmapped), then the descriptors the VMM opened itself (vCPUs, VM,
        vGIC / vITS, iommufd), last first, then its own mappings (guest RAM, scratch);
        the host kernel releases what they held.  Before guest RAM goes, the guest-
        physical view stops aliasing its host frames (:meth:`GuestRam.release`): the
        host reuses them, and no object left from the VM may reach them."""
        for dev in reversed(self.devices):
            dev.unrealize()
        self.devices.clear()
        smmu = getattr(self.board, "smmu", None)
        if smmu is not None and hasattr(smmu, "unrealize"):
            smmu.unrealize()
        for f in reversed(self._fds):
            if isinstance(f, int):
                self.k.close(f)
            else:
                f.close()                        # close(2) of the descriptor open() gave
        self._fds.clear()
        if self.ram is not None:
            self.ram.release()
        for va, length in reversed(self._maps):
            self.k.munmap(va, length)
        self._maps.clear()
        self._scratch = None
        for run in self.vcpu_runs:
            run.guest = None                     # the vCPU threads are gone
        self.vcpu_runs = []
        self.vm_fd = self.vgic_fd = self.its_fd = None
        self.vcpu_fds = []
        self.iommufd = None
        self.guest = self.board = self.ram = None
        self._irqchip = None

    def signal_msi(self, address: int, data: int, devid: int) -> int:
        """KVM_SIGNAL_MSI (with the DeviceID) -- what QEMU does for an emulated MSI."""
        return cast(int, self.k.ioctl(cast(int, self.vm_fd), K.KVM_SIGNAL_MSI, K.KvmMsi(
            address_lo=address & 0xFFFF_FFFF, address_hi=address >> 32, data=data,
            flags=K.KVM_MSI_VALID_DEVID, devid=devid)))

    def guest_irq_pending(self) -> bool:
        """Whether any vCPU has an interrupt to take (its virtual IRQ line is up)."""
        return self.board is not None and any(c.irq_pending for c in self.board.gic.cpus)
