"""A generic PCI device driver of the kernel model: what a NIC or virtio driver
does with MSI-X (enable, bus master, DMA mask, vectors, handlers)."""

from __future__ import annotations

from collections.abc import Iterable

from .._doc import document_attributes
from .kernel import Kernel  # (at run time: help() and get_type_hints read the attributes)
from .msi import MsiType
from .pci import PciDev, PciDriver


def _remove(dev: PciDev) -> None:
    dev.driver_data._teardown()


def msi_counting_pci_driver(kernel: Kernel, name: str, nvec: int,
                            flags: MsiType = MsiType.MSIX | MsiType.MSI,
                            id_table: Iterable[tuple[int, int]] = ()) -> PciDriver:
    """Register a PCI driver whose probe is a :class:`MsiCountingDriver`."""
    return kernel.pci_register_driver(
        name, lambda d: MsiCountingDriver(kernel, d, nvec, flags, name=name, bind=False),
        _remove, id_table)


@document_attributes
class MsiCountingDriver:
    """Binds to a PciDev: enables it, allocates vectors, installs handlers that count.

    ``fired[vector]`` lists the CPUs each vector's handler ran on.  Built
    directly on an unbound device (``bind=True``) it becomes that device's
    driver in the driver core, under ``name``, so
    ``/sys/bus/pci/drivers/<name>/unbind`` calls its ``remove`` and another
    driver's bind is EBUSY.  Built on a device that already has a driver, or
    by a registered driver's probe (:func:`msi_counting_pci_driver`), it is
    just the probe code run by hand, as before the driver core existed.
    """

    #: the kernel it runs in
    kernel: Kernel
    #: the pci_dev it drives
    dev: PciDev
    #: its driver name (``drv-<bdf>`` by default)
    name: str
    #: how many vectors pci_alloc_irq_vectors() gave
    nvec: int
    #: the Linux IRQ number of each vector (pci_irq_vector()), by vector index
    irqs: list[int]
    #: vector index -> the CPUs its handler ran on, in order
    fired: dict[int, list[int | None]]

    def __init__(self, kernel: Kernel, dev: PciDev, nvec: int,
                 flags: MsiType = MsiType.MSIX | MsiType.MSI, min_vecs: int = 1,
                 name: str | None = None, bind: bool = True) -> None:
        self.kernel, self.dev = kernel, dev
        self.name = name or f"drv-{dev.bdf}"
        core = kernel.pci_driver_core
        if bind and dev.driver is None:
            drv = core.drivers.get(self.name)
            if drv is None:
                drv = PciDriver(self.name, lambda d: MsiCountingDriver(
                    kernel, d, nvec, flags, min_vecs, self.name, bind=False), _remove)
                core.drivers[self.name] = drv
            core.attach_bound(drv, dev, self)
            try:
                self._probe(nvec, flags, min_vecs)
            except BaseException:
                core.abort_bind(dev)
                raise
        else:
            self._probe(nvec, flags, min_vecs)

    def _probe(self, nvec: int, flags: MsiType, min_vecs: int) -> None:
        kernel, dev = self.kernel, self.dev
        dev.enable_device()
        dev.set_master()
        dev.set_dma_mask((1 << 64) - 1)
        self.nvec = kernel.msi.alloc_irq_vectors(dev, min_vecs, nvec, flags)
        self.fired: dict[int, list[int | None]] = {v: [] for v in range(self.nvec)}
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
        """Unbind: the driver's remove() frees the handlers and the vectors."""
        if self.dev.driver_data is self:
            self.kernel.pci_driver_core.release(self.dev)
        else:
            self._teardown()

    def _teardown(self) -> None:
        for v, irq in enumerate(self.irqs):
            self.kernel.irq.free_irq(irq, v)
        self.kernel.msi.free_irq_vectors(self.dev)
        self.dev.set_master(False)
