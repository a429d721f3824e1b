"""A generic PCI device driver of the kernel model: what a NIC or virtio driver
does with MSI-X (enable, bus master, DMA mask, vectors, handlers)."""

from __future__ import annotations

from typing import Any

from .msi import MsiType


class MsiCountingDriver:
    """Binds to a PciDev: enables it, allocates vectors, installs handlers that count.

    ``fired[vector]`` lists the CPUs each vector's handler ran on.
    """

    def __init__(self, kernel: Any, dev: Any, nvec: int,
                 flags: MsiType = MsiType.MSIX | MsiType.MSI, min_vecs: int = 1,
                 name: str | None = None) -> None:
        self.kernel, self.dev = kernel, dev
        self.name = name or f"drv-{dev.bdf}"
        dev.enable_device()
        dev.set_master()
        dev.set_dma_mask((1 << 64) - 1)
        self.nvec = kernel.msi.alloc_irq_vectors(dev, min_vecs, nvec, flags)
        self.fired: dict[int, list[int]] = {v: [] for v in range(self.nvec)}
        self.irqs = [kernel.msi.irq_vector(dev, v) for v in range(self.nvec)]
        done = []
        try:
            for v, irq in enumerate(self.irqs):
                kernel.irq.request_irq(irq, self._handler, f"{self.name}-{v}", v)
                done.append((irq, v))
        except Exception:                 # probe failed: undo it all, as a driver's error path
            for irq, v in done:
                kernel.irq.free_irq(irq, v)
            kernel.msi.free_irq_vectors(dev)
            raise

    def _handler(self, irq: int, vector: int) -> int:
        self.fired[vector].append(self.kernel.current_cpu)     # smp_processor_id()
        return 1

    def remove(self) -> None:
        """The driver's remove(): free the handlers and the vectors."""
        for v, irq in enumerate(self.irqs):
            self.kernel.irq.free_irq(irq, v)
        self.kernel.msi.free_irq_vectors(self.dev)
        self.dev.set_master(False)
