"""Two hosts: an Arm "virt" board (GICv3 + ITS, SMMUv3) and an x86 PC (MSIs to the
local APICs, optional interrupt remapping), each with a PCIe host bridge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from .. import core
from .._doc import document_attributes
from .._repr import bounded
from ..hw.bus import Bus
from ..hw.gicv3 import Gicv3
from ..hw.its import GicV3Its
from ..hw.pci import Bar, MsiConfig, MsixConfig, PciFunction, PciHost
from ..hw.qdev import PciDeviceModel, find_device_model
from ..hw.smmuv3 import SMMUv3
from ..hw.virt_map import (
    VIRT_GIC_DIST,
    VIRT_GIC_ITS,
    VIRT_GIC_REDIST,
    VIRT_MEM,
    VIRT_PCIE_ECAM,
    VIRT_PCIE_MMIO,
    VIRT_SMMU,
)
from ..hw.x86 import MSI_BASE, MSI_SIZE, X86MsiController
from .desc import MSI_DESIGNS, ArmVirtDesc, BootOptions, PciFunctionDesc, X86PcDesc

if TYPE_CHECKING:
    from ..kernel.kernel import Kernel

__all__ = ["MSI_DESIGNS", "ArmVirt", "X86Pc", "make_function", "plug_function"]

#: what a machine's ``devices`` argument takes: descriptions or their dict forms
DeviceSpecs = Sequence[PciFunctionDesc | Mapping[str, object]]

def make_function(bus: int, dev: int, spec: PciFunctionDesc | Mapping[str, object]
                  ) -> PciFunction:
    """The PCI function a :class:`~pymsi.machine.desc.PciFunctionDesc` (or its dict form,
    e.g. ``{"msix": 8}``, ``{"model": "nic", "queues": 16}``) describes, at bus ``bus``,
    device ``dev``; an unknown key or a bad value is
    :class:`~pymsi.errors.InvalidArgument` naming it.  A device model is realized when it
    is plugged in (:func:`plug_function`)."""
    d = PciFunctionDesc.coerce(spec)
    if d.model is not None:
        cls = find_device_model(d.model)
        return cls(bus, dev, d.function, **d.properties)
    return PciFunction(
        bus, dev, d.function, vendor_id=d.vendor, device_id=d.device,
        bars=[Bar(d.bar0_size())],
        msi=MsiConfig(d.msi, per_vector_mask=d.msi_mask) if d.msi else None,
        msix=MsixConfig(d.msix, bar=0, table_offset=0, pba_offset=d.pba_offset())
        if d.msix else None,
        flr=d.flr,
    )


def plug_function(host: PciHost, fn: PciFunction) -> PciFunction:
    """Put ``fn`` on ``host``; a device model is realized (QEMU's realize on plug)."""
    if isinstance(fn, PciDeviceModel):
        return fn.plug(host)
    return host.add(fn)


_M = TypeVar("_M", bound="_Machine")


class _Machine:
    """What both machines have: RAM, the system bus, a PCIe host with functions."""

    RAM_BASE: int
    ECAM: int
    ECAM_BUSES: int

    #: the description the machine was built from (its constructor's arguments, checked)
    description: ArmVirtDesc | X86PcDesc
    #: the physical memory (pymsi.core.Memory): RAM from RAM_BASE
    ram: Any
    #: the CPUs
    ncpus: int
    #: the physical address space: RAM and the devices' register frames
    bus: Bus
    #: the PCIe host bridge (ECAM, the functions on bus 0)
    pci: PciHost
    #: the PCI functions of ``devices``, in order (bus 0, slot 1 on)
    functions: list[PciFunction]

    def _init_common(self, d: ArmVirtDesc | X86PcDesc) -> None:
        self.description = d
        #: the MSI address design a kernel booted here gives new iommufd contexts
        self.msi_design = d.msi_design
        impl = core.backend(d.backend) if d.backend else core
        self.ncpus = d.ncpus
        self.ram = impl.Memory()
        self.ram.add_ram(self.RAM_BASE, d.ram_size)
        self.ram_size = d.ram_size
        self.bus = Bus(self.ram)

    def _add_pci(self, devices: tuple[PciFunctionDesc, ...]) -> None:
        self.pci = PciHost(self.bus, self.ECAM, self.ECAM_BUSES)
        self.functions = [plug_function(self.pci, make_function(0, slot, spec))
                          for slot, spec in enumerate(devices, start=1)]

    @classmethod
    def _from(cls: type[_M], d: Any) -> _M:
        return cls(**{f.name: getattr(d, f.name) for f in fields(d)})

    @property
    def kernel_memory(self) -> tuple[int, int]:
        """The RAM a kernel booted here allocates from (all but the first 16 MiB)."""
        return self.RAM_BASE + 0x0100_0000, self.ram_size - 0x0100_0000

    def __repr__(self) -> str:
        fns = ",".join(f.bdf for f in getattr(self, "functions", [])[:8])
        return bounded(f"<{type(self).__name__} ncpus={self.ncpus} ram={self.RAM_BASE:#x}"
                       f"+{self.ram_size:#x} functions=[{fns}] msi_design={self.msi_design}>")


@document_attributes
class ArmVirt(_Machine):
    """QEMU's arm64 "virt" board, as far as MSIs go.

    RAM at 0x40000000; GICv3 distributor 0x08000000, ITS 0x08080000
    (GITS_TRANSLATER 0x08090040), redistributors 0x080A0000; SMMUv3
    0x09050000 in front of the PCIe host (ECAM 0x3F000000, MMIO window
    0x10000000).  ``devices`` are function specs put on bus 0 from slot 1.

    ``smmu`` is the SMMU's stages ("s1", "s2", "nested"; None: no SMMU) and
    the keyword options are its other ID-register choices.  The defaults are
    what QEMU's virt SMMUv3 advertises (QEMU 7.2, tests/data: IDR0 0x0d40101a,
    IDR1 0x02730010, IDR3 0x1404, IDR5 0x74): stage 1 only, 44-bit OAS, 16-bit
    StreamIDs, no SubstreamIDs, 2^19-entry queues, 2-level stream tables, no
    2-level CD tables, RIL, HAD, wired interrupts (no MSI), no SEV, all three
    granules.  The one field that differs is IDR3.BBML (QEMU: 2), which the
    model leaves 0: it does not model break-before-make levels.

    ``msi_design`` is the MSI address design of the iommufd contexts of a kernel
    booted here ("dma-cookie", "sw-msi", "preset", "per-vector").  ``boot`` holds the
    default options of :meth:`boot`.

    The arguments are the fields of :class:`~pymsi.machine.desc.ArmVirtDesc` (documented
    there); a bad value is :class:`~pymsi.errors.InvalidArgument` naming it.  A
    description (or its dict / TOML form) builds a machine with :meth:`from_description`.
    """

    RAM_BASE = VIRT_MEM
    GICD, ITS, GICR = VIRT_GIC_DIST, VIRT_GIC_ITS, VIRT_GIC_REDIST
    SMMU = VIRT_SMMU
    ECAM, ECAM_BUSES = VIRT_PCIE_ECAM, 16
    PCI_MMIO = VIRT_PCIE_MMIO

    #: the GICv3 (v4) model: distributor, redistributors, CPU interfaces
    gic: Gicv3
    #: the GIC's ITS
    its: GicV3Its
    #: the SMMUv3 in front of the PCIe host (None: built with ``smmu=None``)
    smmu: SMMUv3 | None

    def __init__(self, ncpus: int = 4, ram_size: int = 0x2000_0000, gicv4: bool = False,
                 smmu: str | None = "s1", devices: DeviceSpecs | None = None,
                 backend: str | None = None, *, oas: int = 44, sidsize: int = 16,
                 ssidsize: int = 0, cmdqs: int = 19, eventqs: int = 19,
                 granules: tuple[int, ...] = (4096, 16384, 65536), ril: bool = True,
                 had: bool = True, msi: bool = False, sev: bool = False,
                 two_level: bool = True, cd2l: bool = False,
                 msi_design: str = "per-vector",
                 boot: BootOptions | Mapping[str, object] | None = None) -> None:
        # devices and boot as given: ArmVirtDesc's __post_init__ checks and converts them
        d = ArmVirtDesc(ncpus=ncpus, ram_size=ram_size, gicv4=gicv4, smmu=smmu,
                        devices=() if devices is None else devices,  # type: ignore[arg-type]
                        backend=backend, oas=oas,
                        sidsize=sidsize, ssidsize=ssidsize, cmdqs=cmdqs, eventqs=eventqs,
                        granules=granules, ril=ril, had=had, msi=msi, sev=sev,
                        two_level=two_level, cd2l=cd2l, msi_design=msi_design,
                        boot=BootOptions() if boot is None else boot)  # type: ignore[arg-type]
        self._init_common(d)
        smmu, backend = d.smmu, d.backend
        self.gic = Gicv3(self.ram, ncpus=ncpus, gicv4=gicv4)
        self.its = GicV3Its(self.gic, self.ram)
        self.bus.map(self.GICD, 0x1_0000, self.gic.gicd, "GICD")
        self.bus.map(self.GICR, self.gic.gicr.size, self.gic.gicr, "GICR")
        self.bus.map(self.ITS, 0x2_0000, self.its, "ITS", attrs=True)
        self.smmu = None
        if smmu is not None:
            self.smmu = SMMUv3(self.ram, stages=smmu, oas=d.oas, sidsize=d.sidsize,
                               ssidsize=d.ssidsize, cmdqs=d.cmdqs, eventqs=d.eventqs,
                               granules=d.granules, ril=d.ril, had=d.had, msi=d.msi,
                               sev=d.sev, two_level=d.two_level, cd2l=d.cd2l,
                               msi_write=self.bus.write32, backend=backend)
            self.bus.map(self.SMMU, 0x2_0000, self.smmu, "SMMUv3")
            self.bus.attach_iommu(0, 0xFFFF, self.smmu)
        self._add_pci(d.devices)

    @classmethod
    def from_description(cls, desc: ArmVirtDesc | Mapping[str, object]) -> ArmVirt:
        """The machine ``desc`` describes (a dict is checked as
        :meth:`ArmVirtDesc.from_dict <pymsi.machine.desc.ArmVirtDesc.from_dict>` does)."""
        return cls._from(ArmVirtDesc.coerce(desc))

    def boot(self, *, default_domain: str | None = None) -> Kernel:
        """Boot a host kernel on this machine (:func:`pymsi.kernel.boot.boot_arm`: GICv3,
        ITS, SMMUv3, PCI enumeration, iommufd, vfio-pci, KVM) and return it.

        ``default_domain``: the default domain type of IOMMU groups, "dma" (translated
        through dma-iommu) or "identity" (passthrough); None: the machine's
        ``boot`` option (:class:`~pymsi.machine.desc.BootOptions`), else "dma".  A bad
        value is :class:`~pymsi.errors.InvalidArgument`.
        """
        from ..kernel.boot import boot_arm
        from ..kernel.iommu import DomainType

        opts = BootOptions(default_domain=default_domain)
        dd = opts.default_domain or self.description.boot.default_domain  # type: ignore[union-attr]
        return boot_arm(self, default_domain=None if dd is None else DomainType(dd))


@document_attributes
class X86Pc(_Machine):
    """A PC: RAM, the 0xFEE00000 interrupt message window with local APICs, an
    Intel-style interrupt remapping unit at 0xFED90000 (IRTEs, interrupt entry
    cache, invalidation queue; the kernel uses it when ``remapping``), PCIe.

    The arguments are the fields of :class:`~pymsi.machine.desc.X86PcDesc` (documented
    there); a bad value is :class:`~pymsi.errors.InvalidArgument` naming it.
    """

    #: the 0xFEE00000 window: local APICs, the interrupt remapping unit's tables
    msi: X86MsiController

    RAM_BASE, IR_UNIT = 0x0010_0000, 0xFED9_0000
    ECAM, ECAM_BUSES = 0xE000_0000, 16
    PCI_MMIO = (0xC000_0000, 0x2000_0000)

    def __init__(self, ncpus: int = 4, ram_size: int = 0x1000_0000, remapping: bool = False,
                 devices: DeviceSpecs | None = None, backend: str | None = None,
                 msi_design: str = "per-vector") -> None:
        # devices as given: X86PcDesc's __post_init__ checks and converts them
        d = X86PcDesc(ncpus=ncpus, ram_size=ram_size, remapping=remapping,
                      devices=() if devices is None else devices,  # type: ignore[arg-type]
                      backend=backend,
                      msi_design=msi_design)
        self._init_common(d)
        self.remapping = d.remapping
        self.msi = X86MsiController(self.ram, ncpus=ncpus)
        self.bus.map(MSI_BASE, MSI_SIZE, self.msi, "interrupt messages", attrs=True)
        self.bus.map(self.IR_UNIT, 0x1000, self.msi.remap_regs, "DMAR")
        self._add_pci(d.devices)

    @classmethod
    def from_description(cls, desc: X86PcDesc | Mapping[str, object]) -> X86Pc:
        """The machine ``desc`` describes (a dict is checked as
        :meth:`X86PcDesc.from_dict <pymsi.machine.desc.X86PcDesc.from_dict>` does)."""
        return cls._from(X86PcDesc.coerce(desc))

    def boot(self) -> Kernel:
        """Boot a host kernel on this machine (:func:`pymsi.kernel.boot.boot_x86`: the
        vector domain, interrupt remapping when ``remapping``, the PCI/MSI domain, DMA
        remapping in identity, PCI enumeration, iommufd, vfio-pci) and return it.  It
        takes no options."""
        from ..kernel.boot import boot_x86

        return boot_x86(self)
