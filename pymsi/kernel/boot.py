"""Booting a kernel on a machine: the order Linux probes things in."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .arm_smmu_v3 import ArmSmmuV3
from .gic import GicDriver, ItsDriver
from .intel_iommu import IntelIommu
from .iommu import DomainType
from .iommufd import iommufd_init
from .iommufd_msi import MSI_DESIGNS
from .irq import GenIrq
from .kernel import Kernel
from .kvm import kvm_init
from .msi import PciMsiLayer
from .pci import PciHostBridge
from .vfio_pci import vfio_pci_init
from .x86 import IntelIr, VectorDomain

if TYPE_CHECKING:
    from ..hw.bus import Bus
    from ..hw.gicv3 import CpuInterface
    from ..machine.platforms import X86Pc


class BoardGic(Protocol):
    """The GIC of a board as :func:`boot_arm` sees it: each CPU's ICC_* system register
    interface (a :class:`~pymsi.hw.gicv3.Gicv3`, or a VMM's vCPUs' interfaces)."""

    @property
    def cpus(self) -> list[CpuInterface]: ...


class BoardSmmu(Protocol):
    """What :func:`boot_arm` does with a board's SMMU (the physical model, or a VMM's
    virtual one): give its wired interrupts to the driver's handler."""

    irq: Callable[[str], None] | None


class ArmBoard(Protocol):
    """What :func:`boot_arm` reads of an arm64 board: :class:`~pymsi.machine.ArmVirt`, or
    a VMM's guest board (:class:`pymsi.vmm.board.VirtBoard`).  Optional, read with
    getattr: ``kernel_name`` (default "host"), ``honour_rmr`` (True), ``iort_rmrs``
    (none) and ``msi_design`` ("per-vector")."""

    @property
    def bus(self) -> Bus:
        """The physical address space the kernel runs on."""

    @property
    def ncpus(self) -> int: ...

    @property
    def kernel_memory(self) -> tuple[int, int]:
        """(base, size) of the RAM the kernel allocates from."""

    @property
    def GICD(self) -> int: ...

    @property
    def GICR(self) -> int: ...

    @property
    def ITS(self) -> int: ...

    @property
    def SMMU(self) -> int: ...

    @property
    def ECAM(self) -> int: ...

    @property
    def ECAM_BUSES(self) -> int: ...

    @property
    def PCI_MMIO(self) -> tuple[int, int]: ...

    @property
    def gic(self) -> BoardGic: ...

    @property
    def smmu(self) -> BoardSmmu | None:
        """The SMMU model (None: none); its ``irq`` becomes the driver's handler."""


def boot_arm(m: ArmBoard, default_domain: DomainType | None = None) -> Kernel:
    """GICv3, ITS and its PCI/MSI domain, SMMUv3, then PCI enumeration, iommufd,
    vfio-pci, KVM: a kernel on machine ``m`` (an :class:`~pymsi.machine.ArmVirt`, or a
    VMM's board with the same attributes).  ``default_domain``: the default domain type
    of IOMMU groups (None: DMA)."""
    k = Kernel(m.bus, m.kernel_memory, ncpus=m.ncpus, name=getattr(m, "kernel_name", "host"),
               default_domain=DomainType.DMA if default_domain is None else default_domain)
    if getattr(m, "honour_rmr", True):           # a kernel with IORT RMR support (6.0+)
        k.iommu.firmware_rmrs = list(getattr(m, "iort_rmrs", ()))
    k.irq = GenIrq(k)
    k.gic = GicDriver(k, m.GICD, m.GICR, m.gic.cpus)
    k.gic.probe()
    k.its = ItsDriver(k, k.gic, m.ITS)
    k.its.probe()
    k.msi = PciMsiLayer(k, k.its.domain, "ITS-PCI-MSI", parent_prepare=k.its.msi_prepare,
                        parent_release=k.its.msi_release, chip_name="ITS-MSI")
    k.smmu = None
    if m.smmu is not None:
        k.smmu = ArmSmmuV3(k, m.SMMU)
        m.smmu.irq = k.smmu.handle_irq
        k.smmu.probe()
    k.pci = PciHostBridge(k, m.ECAM, m.ECAM_BUSES, m.PCI_MMIO)
    for dev in k.pci.scan():
        dev.enable_device()
        k.iommu.probe_device(dev)
    k.cpu_irq = k.gic.handle_irq
    k.cpu_irqs = k.gic._entry = k.gic.handle_irqs
    # the IRQ entry in one frame (same effects): an instance attribute over the method
    k.handle_interrupts = k.gic.handle_irqs  # type: ignore[method-assign]
    iommufd_init(k)
    _set_msi_design(k, m)
    vfio_pci_init(k)
    kvm_init(k)
    return k


def boot_x86(m: X86Pc) -> Kernel:
    """The vector domain, interrupt remapping if the machine has it on, PCI: a kernel on
    machine ``m`` (an :class:`~pymsi.machine.X86Pc`)."""
    k = Kernel(m.bus, m.kernel_memory, ncpus=m.ncpus, arch="x86_64")
    k.irq = GenIrq(k)
    k.vector = VectorDomain(k, m.msi.lapics)
    parent = k.vector.domain
    k.ir = None
    if m.remapping:
        k.ir = IntelIr(k, k.vector, m.IR_UNIT)
        k.ir.enable()
        parent = k.ir.domain
    name = "IR-PCI-MSI" if m.remapping else "PCI-MSI"      # pci_msi_ir_controller / ...
    k.msi = PciMsiLayer(k, parent, name,
                        parent_prepare=k.ir.msi_prepare if k.ir is not None else None,
                        multi_msi=bool(m.remapping))   # MSI_FLAG_MULTI_PCI_MSI only with IR
    k.intel_iommu = IntelIommu(k, m.IR_UNIT)          # DMA remapping: identity by default
    k.intel_iommu.register()
    k.pci = PciHostBridge(k, m.ECAM, m.ECAM_BUSES, m.PCI_MMIO)
    for dev in k.pci.scan():
        dev.enable_device()
        k.iommu.probe_device(dev)
    k.cpu_irq = k.vector.handle_irq
    iommufd_init(k)
    _set_msi_design(k, m)
    vfio_pci_init(k)
    return k


def _set_msi_design(k: Kernel, m: ArmBoard | X86Pc) -> None:
    """The machine's ``msi_design`` becomes the default of new iommufd contexts."""
    design = getattr(m, "msi_design", "per-vector")
    assert design in MSI_DESIGNS, design
    assert k.iommufd is not None                  # iommufd_init made it
    k.iommufd.msi_design = design
