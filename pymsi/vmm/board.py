"""The guest's machine: QEMU's arm64 "virt" board as the VMM builds it over KVM.

:class:`VirtBoard` has the attributes :func:`pymsi.kernel.boot.boot_arm` reads
of a board (the same as :class:`pymsi.machine.ArmVirt`), so the guest boots
the very kernel model the host runs:

* ``bus`` -- the guest-physical address space: guest RAM (a
  :class:`pymsi.core.Memory` aliasing the VMM's host pages), and windows
  - GICD 0x08000000, GICR 0x080A0000, ITS 0x08080000 -> KVM's in-kernel
    devices: a vCPU's load or store there is handled by KVM inside KVM_RUN and
    never exits to the VMM (:class:`KvmMmioWindow`, through the CPU each vCPU's
    KVM_RUN handed over in its ``struct kvm_run``);
  - an MSI write *from a device* reaching the ITS doorbell (GITS_TRANSLATER,
    0x08090040) -> the VMM's translater region: KVM_SIGNAL_MSI with the
    requester ID as DeviceID (QEMU's ``kvm_its_send_msi``).  Any other device
    access (DMA) to these frames is a decode error: QEMU registers no memory
    region there for KVM's in-kernel GIC (only the translater), and for an
    assigned device the IPA is not in stage 2;
  - the vSMMU's registers at 0x09050000 (when the VMM has one), and the
    virtual PCI host (ECAM 0x3F000000, BARs in the MMIO window 0x10000000);
* ``gic.cpus`` -- the vCPUs' virtual CPU interfaces: the guest executes on
  the vCPUs (inside KVM_RUN), so its ICC_* accesses are the vCPU's ICV_* which
  KVM backs;
* firmware facts: ``iort_rmrs``, the IORT reserved memory ranges the VMM
  describes (QEMU's ``virt-acpi-build.c``: the host's MSI window 0x8000000,
  1 MiB), which the guest's IOMMU core identity-maps unless
  ``honour_rmr`` is False (a guest that ignores them).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

from ..errors import AlreadyExists, BusError
from ..hw import its as I
from ..hw import smmuv3_regs as R
from ..hw.bus import Bus
from ..hw.pci import PciHost
from ..hw.virt_map import (
    IORT_RMR_SW_MSI,
    VIRT_GIC_DIST,
    VIRT_GIC_ITS,
    VIRT_GIC_REDIST,
    VIRT_MEM,
    VIRT_PCIE_ECAM,
    VIRT_PCIE_MMIO,
    VIRT_SMMU,
)
from ..uapi import kvm as K

if TYPE_CHECKING:
    from ..core import Memory
    from ..uapi.syscalls import Syscalls
    from .smmuv3 import VirtualSmmuV3

#: QEMU virt's IORT RMR: the host's SW_MSI window the guest must identity-map.
IORT_RMR = IORT_RMR_SW_MSI


class KvmMmioWindow:
    """A window of KVM's in-kernel devices on the guest's address space (QEMU maps no
    memory region there: KVM_MMIO_BUS handles it).  A vCPU's access (no requester
    ID) is done on the CPU in guest mode (``cpu``: a ``KvmRun.guest`` from KVM_RUN),
    KVM's answer or, for an address no in-kernel device claims, RAZ/WI; a device's
    access (DMA, with a requester ID) is a decode error (:class:`BusError`, which the
    bus reports to the device as a failed transaction)."""

    def __init__(self, runs: list[K.KvmRun], base: int, name: str) -> None:
        self.runs = runs
        self.base = base
        self.name = name
        self.stats = {"dma_decode_errors": 0}

    def _cpu(self, requester_id: int | None, what: str, offset: int) -> K.GuestModeCpu:
        if requester_id is not None:
            self.stats["dma_decode_errors"] += 1
            raise BusError(f"device {requester_id:#x} {what} {self.name}+{offset:#x}: "
                           "no memory region (KVM's in-kernel GIC)")
        cpu = next((r.guest for r in self.runs if r.guest is not None), None)
        if cpu is None:
            raise BusError(f"{what} {self.name}+{offset:#x}: no vCPU is running")
        return cpu

    def mmio_read(self, offset: int, size: int, requester_id: int | None = None) -> int:
        v = self._cpu(requester_id, "read of", offset).mmio_read(self.base + offset, size)
        return 0 if v is None else v

    def mmio_write(self, offset: int, value: int, size: int,
                   requester_id: int | None = None) -> None:
        self._cpu(requester_id, "write to", offset).mmio_write(self.base + offset, value, size)


class ItsTranslaterWindow(KvmMmioWindow):
    """The vITS frame on the guest's bus.  CPU accesses (no requester ID) are
    KVM's (the in-kernel vITS); a device's write to GITS_TRANSLATER is the VMM's
    translater region (QEMU's ``kvm_arm_its`` exposes only that): KVM_SIGNAL_MSI
    (address, data, devid = requester ID); any other device access is a decode error."""

    def __init__(self, k: Syscalls, vm_fd: int, runs: list[K.KvmRun], base: int) -> None:
        super().__init__(runs, base, "ITS (KVM)")
        self.k = k
        self.vm_fd = vm_fd
        self.stats.update({"msis": 0, "msi_errors": 0})

    def mmio_write(self, offset: int, value: int, size: int,
                   requester_id: int | None = None) -> None:
        if requester_id is not None and offset == I.GITS_TRANSLATER and size in (2, 4):
            self.kvm_its_send_msi(value & 0xFFFF_FFFF, requester_id)
            return
        super().mmio_write(offset, value, size, requester_id)

    def kvm_its_send_msi(self, data: int, devid: int) -> None:
        """KVM_SIGNAL_MSI for a device's write to the doorbell; a refusal is
        dropped (the device's write was accepted by the interconnect)."""
        addr = self.base + I.GITS_TRANSLATER
        self.stats["msis"] += 1
        try:
            self.k.ioctl(self.vm_fd, K.KVM_SIGNAL_MSI, K.KvmMsi(
                address_lo=addr & 0xFFFF_FFFF, address_hi=addr >> 32, data=data,
                flags=K.KVM_MSI_VALID_DEVID, devid=devid))
        except OSError:
            self.stats["msi_errors"] += 1


class VirtBoard:
    """The guest's "virt" board: what the guest kernel boots on (see module doc).

    ``ram`` is the guest-physical RAM (a :class:`pymsi.core.Memory`), ``runs`` each
    vCPU's ``struct kvm_run`` (:class:`pymsi.uapi.kvm.KvmRun`) after KVM_RUN: the CPU
    the guest executes on,
    ``smmu`` the VMM's vSMMU model (or None), ``emulated_smmu`` whether DMA of the
    virtual PCI functions goes through it.
    """

    RAM_BASE = VIRT_MEM
    GICD, ITS, GICR = VIRT_GIC_DIST, VIRT_GIC_ITS, VIRT_GIC_REDIST
    SMMU = VIRT_SMMU
    ECAM, ECAM_BUSES = VIRT_PCIE_ECAM, 16
    PCI_MMIO = VIRT_PCIE_MMIO
    GICR_FRAME = 0x2_0000                 # RD_base + SGI_base: KVM's vGICv3 redistributor
    KERNEL_IMAGE = 0x10_0000              # the guest kernel's own image: not allocatable
    kernel_name = "guest"                 # what the kernel booted here calls itself

    def __init__(self, k: Syscalls, vm_fd: int, ram: Memory, ram_gpa: int, ram_size: int,
                 runs: list[K.KvmRun], smmu: VirtualSmmuV3 | None = None,
                 emulated_smmu: bool = False, msi_design: str = "per-vector",
                 iort_rmrs: list[tuple[int, int]] | None = None,
                 honour_rmr: bool = True) -> None:
        self.ncpus = len(runs)
        self.ram = ram
        self.ram_gpa, self.ram_size = ram_gpa, ram_size
        self.bus = Bus(ram)
        self.bus.map(self.GICD, K.KVM_VGIC_V3_DIST_SIZE,
                     KvmMmioWindow(runs, self.GICD, "GICD (KVM)"), "GICD (KVM)", attrs=True)
        self.bus.map(self.GICR, self.GICR_FRAME * self.ncpus,
                     KvmMmioWindow(runs, self.GICR, "GICR (KVM)"), "GICR (KVM)", attrs=True)
        self.its_window = ItsTranslaterWindow(k, vm_fd, runs, self.ITS)
        self.bus.map(self.ITS, K.KVM_VGIC_V3_ITS_SIZE, self.its_window, "ITS (KVM)",
                     attrs=True)
        # the vCPUs' interfaces (each run's guest is set: KVM_RUN came first)
        self.gic = SimpleNamespace(cpus=[cast(K.GuestModeCpu, r.guest).cpuif for r in runs])
        self.smmu: VirtualSmmuV3 | None = None
        self.emulated_smmu = False
        if smmu is not None:
            self.attach_smmu(smmu, emulated_smmu)
        self.pci = PciHost(self.bus, self.ECAM, self.ECAM_BUSES)
        self.msi_design = msi_design
        self.iort_rmrs = [IORT_RMR] if iort_rmrs is None else list(iort_rmrs)
        self.honour_rmr = honour_rmr

    def attach_smmu(self, smmu: VirtualSmmuV3, emulated: bool) -> None:
        """Put the vSMMU's registers at 0x09050000; ``emulated``: the VMM translates the
        DMA (and MSIs) of the functions on the guest's PCI bus through it."""
        if self.smmu is not None:
            raise AlreadyExists("the board already has a vSMMU")
        self.bus.map(self.SMMU, R.MMIO_SIZE, smmu, "vSMMUv3")
        if emulated:
            self.bus.attach_iommu(0, 0xFFFF, smmu)
        self.smmu = smmu
        self.emulated_smmu = emulated

    @property
    def kernel_memory(self) -> tuple[int, int]:
        """The guest RAM the guest kernel allocates from (all but its image)."""
        return self.ram_gpa + self.KERNEL_IMAGE, self.ram_size - self.KERNEL_IMAGE
