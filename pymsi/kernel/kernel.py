"""The kernel: what the subsystems hang off, and boot on a machine."""

from __future__ import annotations

from typing import Any

from .._repr import cpus
from .base import EFAULT, EINVAL, ENOENT, EPERM, PageAllocator, fail
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
    UserMm,
    do_eventfd,
    do_open,
    eventfd_ctx_fdget,
)
from .iommu import DomainType, IommuCore
from .pci import PciDriver, PciDriverCore


class Kernel:
    """One Linux-like kernel instance (a host, or a guest inside a VMM).

    ``bus`` is the physical address space it runs on; ``mem`` the RAM range
    it may allocate from; ``ncpus`` its online CPUs; ``arch`` "arm64" or
    "x86_64" (what /proc/interrupts shows depends on it).
    """

    def __init__(self, bus: Any, mem: tuple[int, int], ncpus: int = 4, name: str = "host",
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
        self.cpu_irqs: Any = None
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

    def proc_write(self, path: str, text: str | bytes) -> None:
        """A write to a /proc file the model implements (ENOENT for any other path)."""
        target = self._proc_irq(path)
        if target is not None and target[1] == "smp_affinity":
            self.irq.write_smp_affinity(target[0], text)
            return
        raise fail(ENOENT, f"{path}: no such file")

    def proc_read(self, path: str) -> str:
        """A read of a /proc file the model implements: /proc/interrupts and
        /proc/irq/<irq>/{smp_affinity,effective_affinity} (ENOENT otherwise)."""
        if isinstance(path, str) and [p for p in path.split("/") if p not in ("", ".")] == [
                "proc", "interrupts"] and path.startswith("/"):
            return "".join(line + "\n" for line in self.irq.proc_interrupts())
        target = self._proc_irq(path)
        if target is not None and target[1] in ("smp_affinity", "effective_affinity"):
            irq = self.irq.proc_desc(target[0]).irq
            if target[1] == "smp_affinity":
                return self.irq.read_smp_affinity(irq) + "\n"
            return self.irq.read_effective_affinity(irq) + "\n"
        raise fail(ENOENT, f"{path}: no such file")

    def pci_windows(self) -> list[tuple[int, int]]:
        """Host bridge memory windows (bus addresses) that DMA must not use."""
        return list(self._pci_windows)

    # -- character devices, files, eventfd (the VMM's system calls) ------------------------

    def register_chrdev(self, path: str, fops: FileOperations, data: Any = None) -> CharDev:
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

    def ioctl(self, fd: int | File, cmd: int, arg: Any = 0) -> Any:
        """ioctl(2) by descriptor number."""
        return self.files.ioctl(fd, cmd, arg)

    def read(self, fd: int | File, count: int = 8) -> Any:
        """read(2) by descriptor number."""
        return self.files.read(fd, count)

    def write(self, fd: int | File, data: Any) -> Any:
        """write(2) by descriptor number."""
        return self.files.write(fd, data)

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

    def pci_register_driver(self, name: str, probe: Any, remove: Any = None,
                            id_table: Any = ()) -> PciDriver:
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

    def sysfs_read(self, path: str) -> str:
        """A read of a sysfs file under /sys/bus/pci (ENOENT for any other path)."""
        return self.pci_driver_core.sysfs_read(self._sys_parts(path))

    def sysfs_write(self, path: str, text: str | bytes) -> None:
        """A write to a sysfs file under /sys/bus/pci (ENOENT for any other path).

        A failed write changes nothing."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "surrogateescape")
        if not isinstance(text, str):
            raise fail(EINVAL, f"sysfs takes text, not {type(text).__name__}")
        self.pci_driver_core.sysfs_write(self._sys_parts(path), text)

    def __repr__(self) -> str:
        irqs = len(self.irq.descs) if hasattr(self, "irq") else 0
        return (f"<Kernel {self.name} {self.arch} cpus={cpus(self.online_cpus)} "
                f"irqs={irqs}>")
