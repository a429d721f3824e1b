"""The guest-physical memory map of QEMU's Arm ``virt`` board (``hw/arm/virt.c``,
``base_memmap``), the one place its addresses are written down.

Both the host board model (:class:`pymsi.machine.ArmVirt`) and the VMM's virtual
devices (:mod:`pymsi.vmm`) place their windows here; the VMM cannot import the
machine layer, so the map lives in ``hw``.  Names are QEMU's ``VIRT_*`` indices.
"""

from __future__ import annotations

VIRT_GIC_DIST = 0x0800_0000          # GICv3 distributor
VIRT_GIC_ITS = 0x0808_0000           # ITS (two 64 KiB frames; GITS_TRANSLATER in the second)
VIRT_GIC_REDIST = 0x080A_0000        # GICv3 redistributors
VIRT_SMMU = 0x0905_0000              # SMMUv3 (two 64 KiB register pages)
VIRT_PCIE_MMIO = (0x1000_0000, 0x2EFF_0000)   # PCIe 32-bit MMIO window: base, size
VIRT_PCIE_ECAM = 0x3F00_0000         # PCIe ECAM (16 buses, 1 MiB each)
VIRT_MEM = 0x4000_0000               # RAM

#: The host's software MSI window (base, size): where arm-smmu-v3 puts its SW_MSI
#: reserved region (Linux's ``MSI_IOVA_BASE`` / ``MSI_IOVA_LENGTH``) -- on this map the
#: GIC frames -- and the IORT RMR QEMU's virt describes to a guest over it so the guest
#: identity-maps it.  Defined once here (a board fact below kernel and VMM).
SW_MSI_BASE, SW_MSI_SIZE = 0x0800_0000, 0x0010_0000
IORT_RMR_SW_MSI = (SW_MSI_BASE, SW_MSI_SIZE)

__all__ = ["IORT_RMR_SW_MSI", "SW_MSI_BASE", "SW_MSI_SIZE",
           "VIRT_GIC_DIST", "VIRT_GIC_ITS", "VIRT_GIC_REDIST", "VIRT_MEM", "VIRT_PCIE_ECAM",
           "VIRT_PCIE_MMIO", "VIRT_SMMU"]
