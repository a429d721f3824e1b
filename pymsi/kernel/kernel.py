"""The kernel: what the subsystems hang off, and boot on a machine."""

from __future__ import annotations

from typing import Any

from .base import EINVAL, ENOENT, PageAllocator, fail
from .dma_iommu import DmaIommu
from .iommu import DomainType, IommuCore


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
        self.nr_cpumask_bits = 512               # NR_CPUS of an arm64/x86 defconfig
        self.log: list[str] = []
        self.iommu = IommuCore(self, default_domain)
        self.dma_iommu = DmaIommu(self)
        self._pci_windows: list[tuple[int, int]] = []
        self.current_cpu: int | None = None      # the CPU running an interrupt handler

    def printk(self, msg: str) -> None:
        """Append a line to the kernel log (dmesg)."""
        self.log.append(msg)

    def handle_interrupts(self) -> int:
        """Let every CPU take the interrupts pending for it (the IRQ exception
        entry: gic_handle_irq / common_interrupt); returns how many ran."""
        return sum(self.cpu_irq(cpu) for cpu in sorted(self.online_cpus))

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
