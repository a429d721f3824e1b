"""The kernel: what the subsystems hang off, and boot on a machine."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from errno import EACCES, EISDIR
from typing import TYPE_CHECKING, Any

from .._doc import document_attributes
from .._repr import cpus
from .base import (
    EFAULT,
    EINVAL,
    EIO,
    ENOENT,
    EPERM,
    PageAllocator,
    cpulist_str,
    cpumask_str,
    fail,
    parse_cpumask,
)
from .dma_iommu import DmaIommu
from .files import (
    O_RDWR,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    CharDev,
    CharDevRegistry,
    EventfdCtx,
    FdTable,
    File,
    FileOperations,
    IoctlResult,
    UserMm,
    do_eventfd,
    do_open,
    eventfd_ctx_fdget,
)
from .iommu import DomainType, IommuCore
from .irq import GenIrq
from .pci import PciDev, PciDriver, PciDriverCore, PciHostBridge

if TYPE_CHECKING:
    from ..hw.bus import Bus
    from ..uapi import IoctlArg
    from .arm_smmu_v3 import ArmSmmuV3
    from .gic import GicDriver, ItsDriver
    from .intel_iommu import IntelIommu
    from .iommufd import Iommufd
    from .irqbypass import IrqBypass
    from .kvm import KvmDev
    from .msi import PciMsiLayer
    from .vfio_pci import VfioPciDriver
    from .x86 import IntelIr, VectorDomain

#: the /proc/irq/<irq>/ files the model serves; the first two are writable
_PROC_IRQ_FILES = ("smp_affinity", "smp_affinity_list", "effective_affinity",
                   "effective_affinity_list")


@document_attributes
class Kernel:
    """One Linux-like kernel instance (a host, or a guest inside a VMM).

    ``bus`` is the physical address space it runs on; ``mem`` the RAM range
    it may allocate from; ``ncpus`` its online CPUs; ``arch`` "arm64" or
    "x86_64" (what /proc/interrupts shows depends on it).

    A kernel is made by booting a machine (``ArmVirt(...).boot()``,
    ``X86Pc(...).boot()``, :mod:`pymsi.kernel.boot`), which fills in the subsystems
    declared below; one the machine has not got is None (``k.gic`` on x86, ``k.smmu``
    without an SMMU).  What a harness uses:

    * the files: :meth:`proc_read` / :meth:`proc_write` (/proc/interrupts,
      /proc/irq/default_smp_affinity, /proc/irq/N/smp_affinity[_list],
      effective_affinity[_list]), :meth:`sysfs_read` / :meth:`sysfs_write`
      (/sys/bus/pci: driver_override, bind, unbind, drivers_probe, vendor, device,
      driver, iommu_group, msi_irqs/N), the system calls (:meth:`open`, :meth:`ioctl`,
      :meth:`eventfd`, :meth:`mmap`, ...);
    * affinity as CPU sets: :meth:`irq_get_affinity`, :meth:`irq_get_effective_affinity`
      (what /proc shows, as ``frozenset[int]``), ``k.irq.set_affinity(irq, {cpus})``;
    * the subsystems' own Linux-named calls (``k.msi.alloc_irq_vectors``,
      ``k.irq.request_irq``, ...).

    Every call fails as Linux does, with :class:`~pymsi.errors.KernelError` carrying
    Linux's errno, and changes nothing when it fails.
    """

    #: "host", or the name a VMM gives its guest kernel
    name: str
    #: "arm64" or "x86_64"
    arch: str
    #: the physical address space the kernel runs on (pymsi.hw.bus.Bus)
    bus: Any
    #: the physical memory (pymsi.core.Memory) behind ``bus``
    ram: Any
    #: the kernel's page allocator over its RAM range
    mm: PageAllocator
    #: nr_cpu_ids
    ncpus: int
    #: the online CPUs (cpu_online_mask)
    online_cpus: frozenset[int]
    #: the kernel log (dmesg), one string per printk
    log: list[str]
    #: the IOMMU core (groups, domains, default domains, reserved regions)
    iommu: IommuCore
    #: dma-iommu: the DMA API on IOMMU domains (IOVA allocation, MSI cookies)
    dma_iommu: DmaIommu
    #: the one user process's descriptor table
    files: FdTable
    #: ... and its address space (anonymous mmap, pinning)
    user_mm: UserMm
    #: the character device nodes (/dev/...)
    chrdevs: CharDevRegistry
    #: the PCI driver core: drivers, binding, /sys/bus/pci
    pci_driver_core: PciDriverCore
    #: the generic interrupt layer: irq_desc per Linux IRQ number, domains, request_irq,
    #: affinity, /proc/interrupts
    irq: GenIrq
    #: the PCI host bridge: ``k.pci.devices`` are the enumerated pci_devs
    pci: PciHostBridge
    #: the PCI/MSI layer: pci_alloc_irq_vectors, pci_irq_vector, msi_desc
    msi: PciMsiLayer
    #: arm64: the GICv3 driver (distributor, redistributors, CPU interfaces)
    gic: GicDriver | None = None
    #: arm64: the GICv3 ITS driver (devices, LPIs, collections; its MSI domain)
    its: ItsDriver | None = None
    #: arm64: the arm-smmu-v3 driver (None: the machine has no SMMU)
    smmu: ArmSmmuV3 | None = None
    #: x86: the vector domain (local APIC vectors per CPU)
    vector: VectorDomain | None = None
    #: x86: the interrupt remapping driver (None: remapping off)
    ir: IntelIr | None = None
    #: x86: the DMA remapping driver (identity by default)
    intel_iommu: IntelIommu | None = None
    #: /dev/iommu: IOAS, devices, HWPTs, the vIOMMU
    iommufd: Iommufd | None = None
    #: the vfio-pci driver (its device cdevs under /dev/vfio/devices)
    vfio_pci: VfioPciDriver | None = None
    #: arm64: /dev/kvm (VMs, vCPUs, vGIC, vITS, irqfd, routing)
    kvm: KvmDev | None = None
    #: the irqbypass manager (VFIO's producers, KVM's consumers), once either registers
    irqbypass: IrqBypass | None = None
    #: the IRQ exception entry of one CPU (the interrupt controller driver's): takes
    #: what is pending for ``cpu``, returns how many interrupts ran
    cpu_irq: Callable[[int], int]

    def __init__(self, bus: Bus, mem: tuple[int, int], ncpus: int = 4, name: str = "host",
                 default_domain: DomainType = DomainType.DMA, arch: str = "arm64") -> None:
        if arch not in ("arm64", "x86_64"):
            raise fail(EINVAL, f"unknown architecture {arch!r}")
        self.name = name
        self.arch = arch
        self.generic_irq_show_level = arch == "arm64"     # CONFIG_GENERIC_IRQ_SHOW_LEVEL
        self.bus = bus
        self.ram = bus.ram
        self.mm = PageAllocator(self.ram, *mem)
        self.ncpus = ncpus
        self.online_cpus = frozenset(range(ncpus))
        self._cpu_order: tuple[int, ...] = ()
        self._cpu_order_of: frozenset[int] | None = None
        #: the interrupt controller driver's entry for many CPUs at once (cpu_irq on each
        #: of them, in order), when it has one
        # the IRQ entry on a tuple of CPUs (GicDriver.handle_irqs), once booted
        self.cpu_irqs: Callable[[tuple[int, ...]], int] | None = None
        self.nr_cpumask_bits = 512               # NR_CPUS of an arm64/x86 defconfig
        self.log: list[str] = []
        self.iommu = IommuCore(self, default_domain)
        self.dma_iommu = DmaIommu(self)
        self._pci_windows: list[tuple[int, int]] = []
        self.current_cpu: int | None = None      # the CPU running an interrupt handler
        self.chrdevs = CharDevRegistry()
        self.files = FdTable(self)               # the (one) user process: its descriptors
        self.user_mm = UserMm(self)              # ... and its address space
        self.pci_driver_core = PciDriverCore(self)

    def printk(self, msg: str) -> None:
        """Append a line to the kernel log (dmesg)."""
        self.log.append(msg)

    def handle_interrupts(self) -> int:
        """Let every CPU take the interrupts pending for it (the IRQ exception
        entry: gic_handle_irq / common_interrupt); returns how many ran."""
        online = self.online_cpus
        if online is not self._cpu_order_of:            # sorted once per CPU set
            self._cpu_order, self._cpu_order_of = tuple(sorted(online)), online
        many = self.cpu_irqs
        if many is not None:
            return many(self._cpu_order)
        cpu_irq = self.cpu_irq
        n = 0
        for cpu in self._cpu_order:
            n += cpu_irq(cpu)
        return n

    @staticmethod
    def _proc_irq(path: str) -> tuple[int, str] | None:
        """(irq, file) for an absolute /proc/irq/<irq>/<file> path, else None.

        Path resolution as the VFS does it: repeated slashes collapse, "."
        is skipped; a directory name is the interrupt number in decimal as
        /proc prints it ("%d": no sign, no leading zeros), anything else
        names no directory.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if len(parts) != 4 or parts[:2] != ["proc", "irq"]:
            return None
        name = parts[2]
        if not name.isascii() or not name.isdigit() or (name != "0" and name[0] == "0"):
            return None
        return int(name), parts[3]

    @staticmethod
    def _proc_parts(path: Any) -> list[str] | None:
        if not isinstance(path, str) or not path.startswith("/"):
            return None
        return [p for p in path.split("/") if p not in ("", ".")]

    def proc_write(self, path: str, text: str | bytes) -> None:
        """A write to a /proc file (as root), as Linux answers it:

        * /proc/irq/<irq>/smp_affinity -- a hex mask (bitmap_parse());
          /proc/irq/<irq>/smp_affinity_list -- a CPU list (bitmap_parselist(): ``0-3,6``),
          with write_irq_affinity()'s errors (:meth:`GenIrq.write_smp_affinity
          <pymsi.kernel.irq.GenIrq.write_smp_affinity>`);
        * /proc/irq/default_smp_affinity -- a hex mask: the affinity interrupts get when
          first requested (EINVAL for a mask with no online CPU);
        * a file that exists and is read-only (/proc/interrupts, effective_affinity[_list])
          is EIO (procfs has no write for it); any other path ENOENT.
        """
        parts = self._proc_parts(path)
        if parts == ["proc", "irq", "default_smp_affinity"]:
            mask = parse_cpumask(text, self.nr_cpumask_bits)
            if not mask & self.online_cpus:
                raise fail(EINVAL, "default_smp_affinity: no online CPU in the mask")
            self.irq.default_affinity = mask
            return
        target = self._proc_irq(path)
        if target is not None and target[1] in ("smp_affinity", "smp_affinity_list"):
            self.irq.write_smp_affinity(target[0], text,
                                        list_format=target[1] == "smp_affinity_list")
            return
        if parts == ["proc", "interrupts"]:
            raise fail(EIO, f"{path} is read-only")
        if target is not None and target[1] in _PROC_IRQ_FILES:
            self.irq.proc_desc(target[0])                # ENOENT before EIO
            raise fail(EIO, f"{path} is read-only")
        raise fail(ENOENT, f"{path}: no such file")

    def proc_read(self, path: str) -> str:
        """A read of a /proc file, with the newline Linux ends it with:

        * /proc/interrupts (show_interrupts());
        * /proc/irq/default_smp_affinity (hex, nr_cpu_ids wide);
        * /proc/irq/<irq>/smp_affinity, effective_affinity -- hex masks ("%*pb",
          ``"4"`` for CPU 2 of 4); smp_affinity_list, effective_affinity_list -- CPU
          lists ("%*pbl", ``"0-2"``); the directory exists once the IRQ was first
          requested (ENOENT before, and for any other path).

        :meth:`irq_get_affinity` / :meth:`irq_get_effective_affinity` give the same as
        CPU sets.
        """
        parts = self._proc_parts(path)
        if parts == ["proc", "interrupts"]:
            return "".join(line + "\n" for line in self.irq.proc_interrupts())
        if parts == ["proc", "irq", "default_smp_affinity"]:
            return cpumask_str(self.irq.default_affinity, self.ncpus) + "\n"
        target = self._proc_irq(path)
        if target is not None and target[1] in _PROC_IRQ_FILES:
            irq = self.irq.proc_desc(target[0]).irq
            kind = target[1]
            cpus = (self.irq.smp_affinity(irq) if kind.startswith("smp")
                    else self.irq.irq_get_effective_affinity_mask(irq))
            text = cpulist_str(cpus) if kind.endswith("_list") else \
                cpumask_str(cpus, self.ncpus)
            return text + "\n"
        raise fail(ENOENT, f"{path}: no such file")

    def irq_get_affinity(self, irq: int) -> frozenset[int]:
        """The CPUs interrupt ``irq`` may go to, as /proc/irq/<irq>/smp_affinity shows
        them (a move still pending included); EINVAL for no such interrupt."""
        return self.irq.smp_affinity(irq)

    def irq_get_effective_affinity(self, irq: int) -> frozenset[int]:
        """The CPUs interrupt ``irq`` is routed to now, as
        /proc/irq/<irq>/effective_affinity shows them; EINVAL for no such interrupt."""
        return self.irq.irq_get_effective_affinity_mask(irq)

    def pci_windows(self) -> list[tuple[int, int]]:
        """Host bridge memory windows (bus addresses) that DMA must not use."""
        return list(self._pci_windows)

    # -- character devices, files, eventfd (the VMM's system calls) ------------------------

    def register_chrdev(self, path: str, fops: FileOperations, data: object = None) -> CharDev:
        """cdev_add() + the devtmpfs node: ``open(path)`` reaches ``fops``."""
        return self.chrdevs.register(path, fops, data)

    def unregister_chrdev(self, path: str) -> None:
        """cdev_del(): the node goes; files already open keep working."""
        self.chrdevs.unregister(path)

    def open(self, path: str, flags: int = O_RDWR) -> File:
        """open(2) of a device node: ENOENT when there is none."""
        return do_open(self, path, flags)

    def close(self, fd: int | File) -> None:
        """close(2)."""
        self.files.close(fd)

    def dup(self, fd: int | File) -> int:
        """dup(2): the lowest free descriptor for the same file."""
        return self.files.dup(fd)

    def ioctl(self, fd: int | File, cmd: int, arg: IoctlArg = 0) -> IoctlResult:
        """ioctl(2) by descriptor number: its return value (what the file's
        unlocked_ioctl returns: 0, a new descriptor, a count ...; VFIO's region info
        returns its capability chain as bytes, where Linux writes it after the struct)."""
        return self.files.ioctl(fd, cmd, arg)

    def read(self, fd: int | File, count: int = 8) -> int | bytes:
        """read(2) by descriptor number: an eventfd's 8-byte counter as the int it
        holds, the bytes read from any other file."""
        ret: int | bytes = self.files.read(fd, count)
        return ret

    def write(self, fd: int | File, data: int | bytes | bytearray | memoryview) -> int:
        """write(2) by descriptor number: the number of bytes written."""
        ret: int = self.files.write(fd, data)
        return ret

    def poll(self, fd: int | File) -> int:
        """poll(2) of one descriptor: its ready mask (EPOLLIN, ...)."""
        return self.files.poll(fd)

    def pread(self, fd: int | File, count: int, offset: int) -> bytes:
        """pread(2): up to ``count`` bytes at ``offset`` (ESPIPE: not seekable)."""
        return self.files.pread(fd, count, offset)

    def pwrite(self, fd: int | File, data: bytes, offset: int) -> int:
        """pwrite(2): bytes written at ``offset`` (ESPIPE: not seekable)."""
        return self.files.pwrite(fd, data, offset)

    def fget(self, fd: int) -> File:
        """fget(): the file behind a descriptor number, with a reference the
        caller drops with ``fput`` (EBADF when the number is not open)."""
        return self.files.fget(fd)

    @staticmethod
    def fput(file: File) -> None:
        """fput(): drop a reference taken by ``fget`` / ``File.get``."""
        file.put()

    def setrlimit_nofile(self, soft: int, hard: int | None = None) -> None:
        """setrlimit(RLIMIT_NOFILE, {soft, hard}) of the process: EINVAL for a soft limit
        above the hard one, EPERM for raising the hard limit (an unprivileged process);
        descriptors already open stay."""
        hard = self.files.hard_limit if hard is None else hard
        if isinstance(soft, bool) or not isinstance(soft, int) or \
                isinstance(hard, bool) or not isinstance(hard, int) or not 0 <= soft <= hard:
            raise fail(EINVAL, f"bad RLIMIT_NOFILE {soft!r}/{hard!r}")
        if hard > self.files.hard_limit:
            raise fail(EPERM, "raising the hard RLIMIT_NOFILE needs CAP_SYS_RESOURCE")
        self.files.limit, self.files.hard_limit = soft, hard

    def getrlimit_nofile(self) -> tuple[int, int]:
        """getrlimit(RLIMIT_NOFILE): (soft, hard)."""
        return self.files.limit, self.files.hard_limit

    def eventfd(self, initval: int = 0, flags: int = 0) -> File:
        """eventfd2(2)."""
        return do_eventfd(self, initval, flags)

    def eventfd_ctx_fdget(self, fd: int) -> EventfdCtx:
        """eventfd_ctx_fdget(): the context (with a reference) of eventfd ``fd``."""
        return eventfd_ctx_fdget(self, fd)

    @staticmethod
    def eventfd_signal(ctx: EventfdCtx) -> bool:
        """eventfd_signal(): add 1 and wake the waiters (what an interrupt handler calls)."""
        return ctx.signal()

    # -- anonymous user memory ------------------------------------------------------------

    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE) -> int:
        """mmap(2) of anonymous private memory: a page-aligned user VA."""
        return self.user_mm.mmap(length, prot)

    def munmap(self, va: int, length: int) -> None:
        """munmap(2): pinned pages outlive the mapping until unpinned."""
        self.user_mm.munmap(va, length)

    def pin_user_pages(self, va: int, npages: int, write: bool = True) -> list[int]:
        """pin_user_pages(): host PAs of the pages from ``va`` on (EFAULT if unmapped)."""
        return self.user_mm.pin_user_pages(va, npages, write)

    def unpin_user_pages(self, pas: list[int]) -> None:
        """unpin_user_pages()."""
        self.user_mm.unpin_user_pages(pas)

    def pagemap(self, va: int) -> int | None:
        """A read of /proc/self/pagemap for the page holding ``va``: the PFN of the
        host page behind it (what a VMM reads to learn where its RAM is), None when
        the page is mapped but not present (never touched); EFAULT outside every
        mapping (the model's choice: Linux reports an all-zero entry there)."""
        if isinstance(va, bool) or not isinstance(va, int) or va < 0:
            raise fail(EFAULT, f"bad user address {va!r}")
        page_va = va & ~(PAGE_SIZE - 1)
        vma = self.user_mm._vma(page_va)
        if vma is None:
            raise fail(EFAULT, f"user address {va:#x} is not mapped")
        page = vma.pages.get(page_va)
        return None if page is None else page.pa // PAGE_SIZE

    def user_write(self, va: int, data: bytes) -> None:
        """copy_to_user(): EFAULT (nothing written) outside writable mappings."""
        self.user_mm.write(va, data)

    def user_read(self, va: int, n: int) -> bytes:
        """copy_from_user(): EFAULT outside readable mappings."""
        return self.user_mm.read(va, n)

    # -- the PCI driver core and sysfs --------------------------------------------------

    def pci_register_driver(self, name: str, probe: Callable[[PciDev], object],
                            remove: Callable[[PciDev], None] | None = None,
                            id_table: Iterable[tuple[int, int]] = ()) -> PciDriver:
        """pci_register_driver(): EBUSY for a name in use; unbound devices it
        matches are probed at once."""
        return self.pci_driver_core.register(PciDriver(name, probe, remove, id_table))

    def pci_unregister_driver(self, name: str) -> None:
        """pci_unregister_driver(): its devices are unbound (remove) first."""
        self.pci_driver_core.unregister(name)

    @staticmethod
    def _sys_parts(path: Any) -> list[str]:
        if not isinstance(path, str) or not path.startswith("/"):
            raise fail(ENOENT, f"{path!r}: no such file")
        return [p for p in path.split("/") if p not in ("", ".")]

    def _msi_irqs(self, parts: list[str]) -> str | None:
        """/sys/bus/pci/devices/<bdf>/msi_irqs[/<irq>]: None for another path; "" for
        the directory; "msi" / "msix" for a file; ENOENT for no such entry."""
        if len(parts) < 6 or parts[:4] != ["sys", "bus", "pci", "devices"] or \
                parts[5] != "msi_irqs":
            return None
        dev = next((d for d in self.pci_driver_core.devices() if d.bdf == parts[4]), None)
        if dev is None or not dev.msi_descs or len(parts) > 7:
            raise fail(ENOENT, f"/{'/'.join(parts)}: no such file")
        if len(parts) == 6:
            return ""
        for desc in dev.msi_descs.values():
            if str(desc.irq) == parts[6]:
                return "msix" if desc.is_msix else "msi"
        raise fail(ENOENT, f"/{'/'.join(parts)}: no such file")

    def sysfs_read(self, path: str) -> str:
        """A read of a sysfs file under /sys/bus/pci, with its newline (ENOENT for any
        other path, EISDIR for a directory, EACCES for a write-only file):

        * devices/<bdf>/vendor, device (``0x1af4``), driver_override (``(null)`` when
          unset), driver and iommu_group (the link's target name);
        * devices/<bdf>/msi_irqs/<irq> -- ``msix`` or ``msi``, one file per Linux IRQ
          number of the device's vectors while it has them.
        """
        parts = self._sys_parts(path)
        kind = self._msi_irqs(parts)
        if kind is not None:
            if not kind:
                raise fail(EISDIR, f"{path}: a directory")
            return kind + "\n"
        return self.pci_driver_core.sysfs_read(parts)

    def sysfs_write(self, path: str, text: str | bytes) -> None:
        """A write to a sysfs file under /sys/bus/pci (ENOENT for any other path):
        devices/<bdf>/driver_override, drivers/<name>/bind and unbind, drivers_probe.
        EACCES for a read-only file (vendor, device, msi_irqs/<irq>), EISDIR for a
        directory.

        A failed write changes nothing."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "surrogateescape")
        if not isinstance(text, str):
            raise fail(EINVAL, f"sysfs takes text, not {type(text).__name__}")
        parts = self._sys_parts(path)
        kind = self._msi_irqs(parts)
        if kind is not None:
            raise fail(EISDIR if not kind else EACCES, f"{path}: read-only")
        self.pci_driver_core.sysfs_write(parts, text)

    def __repr__(self) -> str:
        irqs = len(self.irq.descs) if hasattr(self, "irq") else 0
        return (f"<Kernel {self.name} {self.arch} cpus={cpus(self.online_cpus)} "
                f"irqs={irqs}>")
