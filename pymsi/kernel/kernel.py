"""The kernel: what the subsystems hang off, and boot on a machine."""

from __future__ import annotations

from typing import Any

from .base import ENOENT, PageAllocator, fail
from .dma_iommu import DmaIommu
from .iommu import DomainType, IommuCore


class Kernel:
    """One Linux-like kernel instance (a host, or a guest inside a VMM).

    ``bus`` is the physical address space it runs on; ``mem`` the RAM range
    it may allocate from; ``ncpus`` its online CPUs.
    """

    def __init__(self, bus: Any, mem: tuple[int, int], ncpus: int = 4, name: str = "host",
                 default_domain: DomainType = DomainType.DMA) -> None:
        self.name = name
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

    def proc_write(self, path: str, text: str) -> None:
        """A write to a /proc file the model implements."""
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["proc", "irq"] and parts[3] == "smp_affinity":
            self.irq.write_smp_affinity(int(parts[2]), text)
            return
        raise fail(ENOENT, path)

    def pci_windows(self) -> list[tuple[int, int]]:
        """Host bridge memory windows (bus addresses) that DMA must not use."""
        return list(self._pci_windows)
