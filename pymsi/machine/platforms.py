"""Two hosts: an Arm "virt" board (GICv3 + ITS, SMMUv3) and an x86 PC (MSIs to the
local APICs, optional interrupt remapping), each with a PCIe host bridge."""

from __future__ import annotations

from typing import Any

from .. import core
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

#: The MSI address designs (pymsi.kernel.iommufd_msi.MSI_DESIGNS, named here so that
#: the machine layer does not import the kernel to check the argument).
MSI_DESIGNS = ("dma-cookie", "sw-msi", "preset", "per-vector")


def make_function(bus: int, dev: int, spec: dict[str, Any]) -> PciFunction:
    """A PCI function from a small spec: {"msix": n} and/or {"msi": n}, ids, BAR size,
    "flr": False for a function without Function Level Reset; or
    a device model, {"model": "edu"} / {"model": "nic", "queues": n} /
    {"model": "pkg.mod:Class", ...}: the other keys are the model's properties (an unknown
    model or property is an error naming it).  A model is realized when it is plugged in
    (:func:`plug_function`)."""
    if "model" in spec:
        props = dict(spec)
        cls = find_device_model(props.pop("model"))
        function = props.pop("function", 0)
        return cls(bus, dev, function, **props)
    msix = spec.get("msix")
    msi = spec.get("msi")
    # The table at 0 and the PBA at 0x2000 in a 16 KiB BAR, as far as 512 vectors fit;
    # a larger table pushes the PBA to the page after it and grows the BAR to fit both.
    pba = max(0x2000, ((msix or 0) * 16 + 0xFFF) & ~0xFFF)
    bar_size = 0x4000
    while bar_size < pba + 0x1000:
        bar_size <<= 1
    bars = [Bar(spec.get("bar_size", bar_size))]
    return PciFunction(
        bus, dev, spec.get("function", 0), vendor_id=spec.get("vendor", 0x1AF4),
        device_id=spec.get("device", 0x1041), bars=bars,
        msi=MsiConfig(msi, per_vector_mask=spec.get("msi_mask", True)) if msi else None,
        msix=MsixConfig(msix, bar=0, table_offset=0, pba_offset=pba) if msix else None,
        flr=spec.get("flr", True),          # "flr": False, a function without FLR
    )


def plug_function(host: PciHost, fn: PciFunction) -> PciFunction:
    """Put ``fn`` on ``host``; a device model is realized (QEMU's realize on plug)."""
    if isinstance(fn, PciDeviceModel):
        return fn.plug(host)
    return host.add(fn)


class _Machine:
    """What both machines have: RAM, the system bus, a PCIe host with functions."""

    RAM_BASE: int
    ECAM: int
    ECAM_BUSES: int

    def _init_common(self, ncpus: int, ram_size: int, backend: str | None,
                     msi_design: str = "per-vector") -> None:
        if msi_design not in MSI_DESIGNS:
            raise ValueError(f"msi_design must be one of {MSI_DESIGNS}, not {msi_design!r}")
        #: the MSI address design a kernel booted here gives new iommufd contexts
        self.msi_design = msi_design
        impl = core.backend(backend) if backend else core
        self.ncpus = ncpus
        self.ram = impl.Memory()
        self.ram.add_ram(self.RAM_BASE, ram_size)
        self.ram_size = ram_size
        self.bus = Bus(self.ram)

    def _add_pci(self, devices: list[dict] | None) -> None:
        self.pci = PciHost(self.bus, self.ECAM, self.ECAM_BUSES)
        self.functions = [plug_function(self.pci, make_function(0, slot, spec))
                          for slot, spec in enumerate(devices or [], start=1)]

    @property
    def kernel_memory(self) -> tuple[int, int]:
        """The RAM a kernel booted here allocates from (all but the first 16 MiB)."""
        return self.RAM_BASE + 0x0100_0000, self.ram_size - 0x0100_0000

    def __repr__(self) -> str:
        fns = ",".join(f.bdf for f in getattr(self, "functions", [])[:8])
        return bounded(f"<{type(self).__name__} ncpus={self.ncpus} ram={self.RAM_BASE:#x}"
                       f"+{self.ram_size:#x} functions=[{fns}] msi_design={self.msi_design}>")


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
    booted here ("dma-cookie", "sw-msi", "preset", "per-vector").
    """

    RAM_BASE = VIRT_MEM
    GICD, ITS, GICR = VIRT_GIC_DIST, VIRT_GIC_ITS, VIRT_GIC_REDIST
    SMMU = VIRT_SMMU
    ECAM, ECAM_BUSES = VIRT_PCIE_ECAM, 16
    PCI_MMIO = VIRT_PCIE_MMIO

    def __init__(self, ncpus: int = 4, ram_size: int = 0x2000_0000, gicv4: bool = False,
                 smmu: str | None = "s1", devices: list[dict] | None = None,
                 backend: str | None = None, *, oas: int = 44, sidsize: int = 16,
                 ssidsize: int = 0, cmdqs: int = 19, eventqs: int = 19,
                 granules: tuple[int, ...] = (4096, 16384, 65536), ril: bool = True,
                 had: bool = True, msi: bool = False, sev: bool = False,
                 two_level: bool = True, cd2l: bool = False,
                 msi_design: str = "per-vector") -> None:
        self._init_common(ncpus, ram_size, backend, msi_design)
        self.gic = Gicv3(self.ram, ncpus=ncpus, gicv4=gicv4)
        self.its = GicV3Its(self.gic, self.ram)
        self.bus.map(self.GICD, 0x1_0000, self.gic.gicd, "GICD")
        self.bus.map(self.GICR, self.gic.gicr.size, self.gic.gicr, "GICR")
        self.bus.map(self.ITS, 0x2_0000, self.its, "ITS", attrs=True)
        self.smmu = None
        if smmu is not None:
            self.smmu = SMMUv3(self.ram, stages=smmu, oas=oas, sidsize=sidsize,
                               ssidsize=ssidsize, cmdqs=cmdqs, eventqs=eventqs,
                               granules=granules, ril=ril, had=had, msi=msi, sev=sev,
                               two_level=two_level, cd2l=cd2l, msi_write=self.bus.write32,
                               backend=backend)
            self.bus.map(self.SMMU, 0x2_0000, self.smmu, "SMMUv3")
            self.bus.attach_iommu(0, 0xFFFF, self.smmu)
        self._add_pci(devices)

    def boot(self, **kw: Any):
        """Boot a host kernel on this machine."""
        from ..kernel.boot import boot_arm

        return boot_arm(self, **kw)


class X86Pc(_Machine):
    """A PC: RAM, the 0xFEE00000 interrupt message window with local APICs, an
    Intel-style interrupt remapping unit at 0xFED90000 (IRTEs, interrupt entry
    cache, invalidation queue; the kernel uses it when ``remapping``), PCIe."""

    RAM_BASE, IR_UNIT = 0x0010_0000, 0xFED9_0000
    ECAM, ECAM_BUSES = 0xE000_0000, 16
    PCI_MMIO = (0xC000_0000, 0x2000_0000)

    def __init__(self, ncpus: int = 4, ram_size: int = 0x1000_0000, remapping: bool = False,
                 devices: list[dict] | None = None, backend: str | None = None,
                 msi_design: str = "per-vector") -> None:
        self._init_common(ncpus, ram_size, backend, msi_design)
        self.remapping = remapping
        self.msi = X86MsiController(self.ram, ncpus=ncpus)
        self.bus.map(MSI_BASE, MSI_SIZE, self.msi, "interrupt messages", attrs=True)
        self.bus.map(self.IR_UNIT, 0x1000, self.msi.remap_regs, "DMAR")
        self._add_pci(devices)

    def boot(self, **kw: Any):
        from ..kernel.boot import boot_x86

        return boot_x86(self, **kw)
