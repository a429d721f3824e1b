"""PCI in the kernel (drivers/pci/): ECAM host bridge, enumeration, struct pci_dev.

The generic ECAM host bridge scans bus/device/function through configuration
space, sizes each memory BAR and assigns it from the bridge's MMIO window,
and walks the capability list for MSI and MSI-X.  A :class:`PciDev` carries
what the MSI layer and the IOMMU need: its requester ID, DMA mask, MSI-X
table address and its MSI descriptors.
"""

from __future__ import annotations

from typing import Any

from ..hw import pci as P
from .base import EINVAL, ENOSPC, fail


class PciDev:
    """struct pci_dev: one function, as the kernel sees it."""

    is_pci = True

    def __init__(self, kernel: Any, bridge: PciHostBridge, bus: int, devfn: int) -> None:
        self.kernel, self.bridge = kernel, bridge
        self.bus, self.devfn = bus, devfn
        self.rid = bus << 8 | devfn
        self.vendor = self.cfg_read(P.VENDOR_ID, 2)
        self.device = self.cfg_read(P.DEVICE_ID, 2)
        self.class_code = self.cfg_read(P.CLASS_CODE - 1) >> 8
        self.dma_mask = (1 << 32) - 1                 # until the driver sets a wider one
        self.iommu_group = None
        self.msi_descs: dict[int, Any] = {}
        self.msi_parent_data: Any = None
        self.msi_enabled = False                      # dev->msi_enabled (the kernel's view)
        self.msix_enabled = False                     # dev->msix_enabled
        self.bars: list[tuple[int, int]] = []         # (address, size) of memory BARs
        self.msi_cap = self.find_capability(P.CAP_ID_MSI)
        self.msix_cap = self.find_capability(P.CAP_ID_MSIX)
        self.msix_table = 0

    @property
    def bdf(self) -> str:
        return f"0000:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"

    def __repr__(self) -> str:
        return f"pci {self.bdf}"

    # -- configuration space (ECAM) and MMIO ----------------------------------------

    def _ecam(self, reg: int) -> int:
        return self.bridge.ecam_base + (self.rid << 12) + reg

    def cfg_read(self, reg: int, size: int = 4) -> int:
        return self.kernel.bus.read(self._ecam(reg), size)

    def cfg_write(self, reg: int, value: int, size: int = 4) -> None:
        self.kernel.bus.write(self._ecam(reg), value, size)

    def mmio_read(self, addr: int, size: int = 4) -> int:
        return self.kernel.bus.read(addr, size)

    def mmio_write(self, addr: int, value: int, size: int = 4) -> None:
        self.kernel.bus.write(addr, value, size)

    def find_capability(self, cap_id: int) -> int | None:
        """pci_find_capability()."""
        if not self.cfg_read(P.STATUS, 2) & P.STATUS_CAP_LIST:
            return None
        ptr, seen = self.cfg_read(P.CAP_PTR, 1) & ~3, 0
        while ptr and seen < 48:
            if self.cfg_read(ptr, 1) == cap_id:
                return ptr
            ptr = self.cfg_read(ptr + 1, 1) & ~3
            seen += 1
        return None

    def set_master(self, on: bool = True) -> None:
        """pci_set_master() / pci_clear_master()."""
        cmd = self.cfg_read(P.COMMAND, 2)
        self.cfg_write(P.COMMAND, cmd | P.CMD_MASTER if on else cmd & ~P.CMD_MASTER, 2)

    def enable_device(self) -> None:
        """pci_enable_device_mem(): decode the memory BARs."""
        self.cfg_write(P.COMMAND, self.cfg_read(P.COMMAND, 2) | P.CMD_MEMORY, 2)

    def set_dma_mask(self, mask: int) -> None:
        """dma_set_mask()."""
        if mask < (1 << 24) - 1:
            raise fail(EINVAL, "DMA mask too small")
        self.dma_mask = mask

    # -- MSI / MSI-X capability control ------------------------------------------------

    def msix_vectors(self) -> int:
        if self.msix_cap is None:
            return 0
        return (self.cfg_read(self.msix_cap + P.MSIX_FLAGS, 2) & P.MSIX_FLAGS_QSIZE) + 1

    def msi_vectors(self) -> int:
        if self.msi_cap is None:
            return 0
        return 1 << ((self.cfg_read(self.msi_cap + P.MSI_FLAGS, 2) & P.MSI_FLAGS_QMASK) >> 1)

    def intx(self, enable: bool) -> None:
        """pci_intx(): INTx Disable cleared (``enable``) or set in the command register."""
        cmd = self.cfg_read(P.COMMAND, 2)
        new = cmd & ~P.CMD_INTX_DISABLE if enable else cmd | P.CMD_INTX_DISABLE
        if new != cmd:
            self.cfg_write(P.COMMAND, new, 2)

    def msix_control(self, enable: bool, maskall: bool) -> None:
        flags = self.cfg_read(self.msix_cap + P.MSIX_FLAGS, 2)
        flags &= ~(P.MSIX_FLAGS_ENABLE | P.MSIX_FLAGS_MASKALL)
        flags |= (P.MSIX_FLAGS_ENABLE if enable else 0) | (P.MSIX_FLAGS_MASKALL if maskall else 0)
        if enable:
            # INTx off while MSI-X is on (pci_intx_for_msi).
            self.cfg_write(P.COMMAND, self.cfg_read(P.COMMAND, 2) | P.CMD_INTX_DISABLE, 2)
            bir_off = self.cfg_read(self.msix_cap + P.MSIX_TABLE)
            self.msix_table = self.bars_by_index[bir_off & 7] + (bir_off & ~7)
        self.cfg_write(self.msix_cap + P.MSIX_FLAGS, flags, 2)

    def msi_control(self, enable: bool, nvec: int) -> None:
        flags = self.cfg_read(self.msi_cap + P.MSI_FLAGS, 2)
        flags &= ~(P.MSI_FLAGS_ENABLE | P.MSI_FLAGS_QSIZE)
        if enable:
            # Multiple Message Enable: log2 of nvec rounded up to a power of two.
            flags |= P.MSI_FLAGS_ENABLE | (nvec - 1).bit_length() << 4
            self.cfg_write(P.COMMAND, self.cfg_read(P.COMMAND, 2) | P.CMD_INTX_DISABLE, 2)
        self.cfg_write(self.msi_cap + P.MSI_FLAGS, flags, 2)


class PciHostBridge:
    """pci-host-generic: an ECAM window and an MMIO window for BARs."""

    def __init__(self, kernel: Any, ecam_base: int, nr_buses: int, mmio: tuple[int, int]) -> None:
        self.kernel = kernel
        self.ecam_base, self.nr_buses = ecam_base, nr_buses
        self.mmio_base, self.mmio_size = mmio
        self._next_mmio = self.mmio_base
        self.devices: list[PciDev] = []
        kernel._pci_windows.append((self.mmio_base, self.mmio_base + self.mmio_size - 1))

    def _assign(self, size: int) -> int:
        addr = (self._next_mmio + size - 1) & ~(size - 1)
        if addr + size > self.mmio_base + self.mmio_size:
            raise fail(ENOSPC, "PCI MMIO window exhausted")
        self._next_mmio = addr + size
        return addr

    def scan(self) -> list[PciDev]:
        """pci_scan_root_bus(): find every function, size and assign its BARs."""
        b = self.kernel.bus
        for bus in range(self.nr_buses):
            for dev in range(32):
                for fn in range(8):
                    devfn = dev << 3 | fn
                    base = self.ecam_base + ((bus << 8 | devfn) << 12)
                    if b.read(base + P.VENDOR_ID, 2) == 0xFFFF:
                        if fn == 0:
                            break
                        continue
                    pdev = PciDev(self.kernel, self, bus, devfn)
                    self._setup_bars(pdev)
                    self.devices.append(pdev)
                    self.kernel.printk(f"pci {pdev.bdf}: [{pdev.vendor:04x}:{pdev.device:04x}]"
                                       f" class {pdev.class_code:#08x}")
                    if fn == 0 and not b.read(base + P.HEADER_TYPE, 1) & 0x80:
                        break
        return self.devices

    def _setup_bars(self, pdev: PciDev) -> None:
        """Size each memory BAR (write all ones, read back) and give it an address."""
        pdev.bars_by_index = {}
        reg, index = P.BAR0, 0
        while reg < P.BAR0 + 24:
            orig = pdev.cfg_read(reg)
            pdev.cfg_write(reg, 0xFFFF_FFFF)
            lo = pdev.cfg_read(reg)
            if lo == 0 or lo & 1:                       # unimplemented or I/O
                pdev.cfg_write(reg, orig)
                reg, index = reg + 4, index + 1
                continue
            is64 = (lo >> 1) & 3 == 2
            mask = lo & ~0xF
            if is64:
                pdev.cfg_write(reg + 4, 0xFFFF_FFFF)
                mask |= pdev.cfg_read(reg + 4) << 32
            else:
                mask |= 0xFFFF_FFFF << 32
            size = (~mask & ((1 << 64) - 1)) + 1
            addr = self._assign(size)
            pdev.cfg_write(reg, addr & 0xFFFF_FFFF)
            if is64:
                pdev.cfg_write(reg + 4, addr >> 32)
            pdev.bars.append((addr, size))
            pdev.bars_by_index[index] = addr
            step = 8 if is64 else 4
            reg, index = reg + step, index + step // 4
