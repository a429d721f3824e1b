"""A PCI test driver that takes MSI-X interrupts (in the spirit of Linux's
drivers/misc/pci_endpoint_test.c): it binds a device, enables up to ``nvec``
MSI-X vectors (MSI if the device has no MSI-X) and requests a handler on each
that records which vector fired on which CPU.

Used in the guest: the same kernel model as the host, so what it records is
what a guest handler saw -- the vector and the vCPU it ran on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._repr import bounded, short
from .irq import IRQ_HANDLED, IrqHandler
from .msi import MsiType
from .pci import PCI_ANY_ID

if TYPE_CHECKING:
    from .kernel import Kernel
    from .pci import PciDev

DRV_NAME = "pci-endpoint-test"


@dataclass(eq=False)
class EndpointTest:
    """struct pci_endpoint_test of one bound device."""

    #: the pci_dev it is bound to
    pdev: PciDev
    #: how many vectors it got
    nvec: int = 0
    #: the Linux IRQ number of each vector, by vector index
    irqs: list[int] = field(default_factory=list)
    #: every interrupt taken, in order: (vector, cpu)
    hits: list[tuple[int, int | None]] = field(default_factory=list)

    def count(self, vector: int) -> int:
        """How many times ``vector`` was handled."""
        return sum(1 for v, _ in self.hits if v == vector)

    def __repr__(self) -> str:
        irqs = f"{self.irqs[0]}..{self.irqs[-1]}" if self.irqs else "-"
        return bounded(f"EndpointTest({short(self.pdev)}, nvec={self.nvec}, irqs={irqs}, "
                       f"hits={len(self.hits)})")


class PciEndpointTestDriver:
    """The driver: ``register()`` makes it claim ``ids`` (default: any device);
    ``tests`` maps each bound device to its :class:`EndpointTest`."""

    def __init__(self, kernel: Kernel, nvec: int = 2048, ids: list[tuple[int, int]] | None = None,
                 name: str = DRV_NAME) -> None:
        self.kernel = kernel
        self.nvec = nvec
        self.ids = [(PCI_ANY_ID, PCI_ANY_ID)] if ids is None else list(ids)
        self.name = name
        self.tests: dict[PciDev, EndpointTest] = {}

    def register(self) -> PciEndpointTestDriver:
        """pci_register_driver(): devices it matches are probed now."""
        self.kernel.pci_register_driver(self.name, self.probe, self.remove, self.ids)
        return self

    def unregister(self) -> None:
        self.kernel.pci_unregister_driver(self.name)

    def probe(self, pdev: PciDev) -> EndpointTest:
        """pci_endpoint_test_probe(): bus mastering, vectors, one handler per vector."""
        k = self.kernel
        pdev.set_master()
        t = EndpointTest(pdev)
        flags = MsiType.MSIX if pdev.msix_vectors() else MsiType.MSI
        t.nvec = k.msi.alloc_irq_vectors(pdev, 1, self.nvec, flags)
        try:
            for v in range(t.nvec):
                irq = k.msi.irq_vector(pdev, v)
                k.irq.request_irq(irq, self._handler(t, v), f"{self.name}.{v}", t)
                t.irqs.append(irq)
        except Exception:
            for irq in t.irqs:
                k.irq.free_irq(irq, t)
            k.msi.free_irq_vectors(pdev)
            raise
        self.tests[pdev] = t
        return t

    def _handler(self, t: EndpointTest, vector: int) -> IrqHandler:
        def pci_endpoint_test_irqhandler(irq: int, dev_id: object) -> int:
            t.hits.append((vector, self.kernel.current_cpu))
            return IRQ_HANDLED
        return pci_endpoint_test_irqhandler

    def remove(self, pdev: PciDev) -> None:
        """pci_endpoint_test_remove(): handlers freed, vectors released."""
        t = self.tests.pop(pdev, None)
        if t is None:
            return
        for irq in t.irqs:
            self.kernel.irq.free_irq(irq, t)
        self.kernel.msi.free_irq_vectors(pdev)
