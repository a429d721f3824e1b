"""PCI in the kernel (drivers/pci/): ECAM host bridge, enumeration, struct pci_dev.

The generic ECAM host bridge scans bus/device/function through configuration
space, sizes each memory BAR and assigns it from the bridge's MMIO window,
and walks the capability list for MSI and MSI-X.  A :class:`PciDev` carries
what the MSI layer and the IOMMU need: its requester ID, DMA mask, MSI-X
table address and its MSI descriptors.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core import pci_formats as X
from ..hw import pci as P
from .base import EBUSY, EINVAL, ENODEV, ENOENT, ENOSPC, KernelError, fail

if TYPE_CHECKING:
    from .kernel import Kernel

EISDIR, EACCES, ENOTTY = _errno.EISDIR, _errno.EACCES, _errno.ENOTTY


class PciDev:
    """struct pci_dev: one function, as the kernel sees it."""

    is_pci = True
    # set later, not in __init__ (read with getattr where they may be missing):
    bars_by_index: dict[int, int]          # BAR index -> address (PciHostBridge._setup_bars)
    uses_default_domain: bool              # counted in iommu_group.kernel_users
    _saved_msi_mask: int | None            # MSI mask bits kept across reset_function

    def __init__(self, kernel: Kernel, bridge: PciHostBridge, bus: int, devfn: int) -> None:
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
        self.driver: PciDriver | None = None          # dev->driver
        self.driver_data: Any = None                  # what probe returned (drvdata)
        self.driver_override: str | None = None

    @property
    def bdf(self) -> str:
        return f"0000:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"

    def __repr__(self) -> str:
        return f"pci {self.bdf}"

    # -- configuration space (ECAM) and MMIO ----------------------------------------

    def _ecam(self, reg: int) -> int:
        return self.bridge.ecam_base + (self.rid << 12) + reg

    def cfg_read(self, reg: int, size: int = 4) -> int:
        value: int = self.kernel.bus.read(self._ecam(reg), size)
        return value

    def cfg_write(self, reg: int, value: int, size: int = 4) -> None:
        self.kernel.bus.write(self._ecam(reg), value, size)

    def mmio_read(self, addr: int, size: int = 4) -> int:
        value: int = self.kernel.bus.read(addr, size)
        return value

    def mmio_write(self, addr: int, value: int, size: int = 4) -> None:
        self.kernel.bus.write(addr, value, size)

    def find_capability(self, cap_id: int) -> int | None:
        """pci_find_capability()."""
        if not self.cfg_read(P.STATUS, 2) & P.STATUS_CAP_LIST:
            return None
        return P.find_capability(lambda off: self.cfg_read(off, 1), cap_id)

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
        assert self.msix_cap is not None            # only called for a function with MSI-X
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
        assert self.msi_cap is not None             # only called for a function with MSI
        flags = self.cfg_read(self.msi_cap + P.MSI_FLAGS, 2)
        flags &= ~(P.MSI_FLAGS_ENABLE | P.MSI_FLAGS_QSIZE)
        if enable:
            # Multiple Message Enable: log2 of nvec rounded up to a power of two.
            flags |= P.MSI_FLAGS_ENABLE | (nvec - 1).bit_length() << 4
            self.cfg_write(P.COMMAND, self.cfg_read(P.COMMAND, 2) | P.CMD_INTX_DISABLE, 2)
        self.cfg_write(self.msi_cap + P.MSI_FLAGS, flags, 2)


    # -- reset (drivers/pci/pci.c) -----------------------------------------------------

    def save_state(self) -> PciSavedState:
        """pci_save_state(): the header's 16 dwords and the PCIe Device Control
        (MSI / MSI-X are restored from the descriptors, not saved)."""
        exp = self.find_capability(P.CAP_ID_EXP)
        return PciSavedState(tuple(self.cfg_read(4 * i) for i in range(16)),
                             None if exp is None else self.cfg_read(exp + P.EXP_DEVCTL, 2))

    def restore_state(self, saved: PciSavedState) -> None:
        """pci_restore_state(): the header dwords last to first, each only when it
        differs (so the command register comes after the BARs), the PCIe Device
        Control, then the MSI / MSI-X state from the descriptors."""
        for i in reversed(range(16)):
            if self.cfg_read(4 * i) != saved.header[i]:
                self.cfg_write(4 * i, saved.header[i])
        exp = self.find_capability(P.CAP_ID_EXP)
        if exp is not None and saved.devctl is not None:
            self.cfg_write(exp + P.EXP_DEVCTL, saved.devctl & ~P.EXP_DEVCTL_BCR_FLR, 2)
        self.restore_msi_state()

    def restore_msi_state(self) -> None:
        """pci_restore_msi_state(): MSI — disabled, message and mask bits written
        from the descriptor, then enabled with its Multiple Message Enable; MSI-X —
        enabled function-masked, each entry's message and vector control written
        from its descriptor, then the function mask cleared."""
        descs = sorted(self.msi_descs.values(), key=lambda d: d.msi_index)
        if self.msi_enabled and self.msi_cap is not None and descs:
            self.intx(False)
            flags = self.cfg_read(self.msi_cap + P.MSI_FLAGS, 2)
            self.cfg_write(self.msi_cap + P.MSI_FLAGS, flags & ~P.MSI_FLAGS_ENABLE, 2)
            is64 = flags & P.MSI_FLAGS_64BIT
            msg = descs[0].msg
            self.cfg_write(self.msi_cap + P.MSI_ADDR_LO, msg.address_lo)
            if is64:
                self.cfg_write(self.msi_cap + P.MSI_ADDR_HI, msg.address_hi)
            self.cfg_write(self.msi_cap + (P.MSI_DATA_64 if is64 else P.MSI_DATA_32),
                           msg.data & 0xFFFF, 2)
            mask_reg = getattr(self, "_saved_msi_mask", None)
            if flags & P.MSI_FLAGS_MASKBIT and mask_reg is not None:
                self.cfg_write(self.msi_cap + (P.MSI_MASK_64 if is64 else P.MSI_MASK_32),
                               mask_reg)
            self.msi_control(True, len(descs))
        if self.msix_enabled and self.msix_cap is not None:
            self.intx(False)
            self.msix_control(enable=True, maskall=True)
            for d in descs:
                entry = self.msix_table + X.MSIX_ENTRY_SIZE * d.msi_index
                self.mmio_write(entry + X.MSIX_ENTRY_ADDR_LO, d.msg.address_lo)
                self.mmio_write(entry + X.MSIX_ENTRY_ADDR_HI, d.msg.address_hi)
                self.mmio_write(entry + X.MSIX_ENTRY_DATA, d.msg.data)
                self.mmio_write(entry + X.MSIX_ENTRY_CTRL, d.msix_ctrl)
            self.msix_control(enable=True, maskall=False)

    def has_flr(self) -> bool:
        """pcie_reset_flr(dev, PCI_RESET_PROBE): Device Capabilities says FLR."""
        exp = self.find_capability(P.CAP_ID_EXP)
        return exp is not None and bool(self.cfg_read(exp + P.EXP_DEVCAP) & P.EXP_DEVCAP_FLR)

    def pcie_flr(self) -> None:
        """pcie_flr(): wait for Transactions Pending to clear, Initiate FLR, wait
        for the function to answer configuration reads again (ENOTTY without FLR)."""
        if not self.has_flr():
            raise fail(ENOTTY, f"{self.bdf}: no reset method")
        exp = self.find_capability(P.CAP_ID_EXP)
        assert exp is not None                      # has_flr found it
        if self.cfg_read(exp + P.EXP_DEVSTA, 2) & P.EXP_DEVSTA_TRPND:
            self.kernel.printk(f"pci {self.bdf}: timed out waiting for pending transaction; "
                               "performing function level reset anyway")
        ctl = self.cfg_read(exp + P.EXP_DEVCTL, 2)
        self.cfg_write(exp + P.EXP_DEVCTL, ctl | P.EXP_DEVCTL_BCR_FLR, 2)
        if self.cfg_read(P.VENDOR_ID, 2) == 0xFFFF:          # pci_dev_wait()
            raise fail(ENOTTY, f"{self.bdf}: not ready after FLR")

    def reset_function(self) -> None:
        """pci_reset_function() / pci_try_reset_function(): save the state, disable
        (command register down to INTx Disable), FLR, restore the state.  ENOTTY,
        with nothing changed, when the function cannot be reset."""
        if not self.has_flr():
            raise fail(ENOTTY, f"{self.bdf}: no reset method")
        saved = self.save_state()
        if self.msi_cap is not None and self.msi_enabled:
            flags = self.cfg_read(self.msi_cap + P.MSI_FLAGS, 2)
            if flags & P.MSI_FLAGS_MASKBIT:
                self._saved_msi_mask = self.cfg_read(
                    self.msi_cap + (P.MSI_MASK_64 if flags & P.MSI_FLAGS_64BIT else P.MSI_MASK_32))
        self.cfg_write(P.COMMAND, P.CMD_INTX_DISABLE, 2)   # pci_dev_save_and_disable()
        try:
            self.pcie_flr()
        finally:
            self.restore_state(saved)
            self._saved_msi_mask = None


class PciSavedState:
    """struct pci_saved_state: what pci_save_state() keeps of a function."""

    def __init__(self, header: tuple[int, ...], devctl: int | None) -> None:
        self.header = header
        self.devctl = devctl


class PciHostBridge:
    """pci-host-generic: an ECAM window and an MMIO window for BARs."""

    def __init__(self, kernel: Kernel, ecam_base: int, nr_buses: int,
                 mmio: tuple[int, int]) -> None:
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


# -- the driver core for PCI (drivers/base/dd.c, drivers/pci/pci-driver.c) -------------

PCI_ANY_ID = 0xFFFF_FFFF
PAGE_SIZE = 0x1000


class PciDriver:
    """struct pci_driver: a name, ``probe(dev)`` returning the driver data (or
    raising to refuse the device), ``remove(dev)``, and the (vendor, device)
    pairs it claims (PCI_ANY_ID matches any).  A driver with no ids binds only
    to devices whose driver_override names it (vfio-pci without ``ids=``)."""

    def __init__(self, name: str, probe: Callable[[PciDev], object],
                 remove: Callable[[PciDev], None] | None = None,
                 id_table: Iterable[tuple[int, int]] = ()) -> None:
        self.name = name
        self.probe = probe
        self.remove = remove
        self.id_table = [tuple(i) for i in id_table]
        self.devices: list[PciDev] = []
        #: struct device_driver.driver_managed_dma: the driver (vfio-pci) manages DMA
        #: ownership itself and does not use the group's default domain
        self.driver_managed_dma = False

    def __repr__(self) -> str:
        return f"<pci_driver {self.name}>"

    def match_id(self, dev: PciDev) -> bool:
        return any(v in (PCI_ANY_ID, dev.vendor) and d in (PCI_ANY_ID, dev.device)
                   for v, d in self.id_table)


class PciDriverCore:
    """The PCI bus's drivers and bindings, and their sysfs files under /sys/bus/pci.

    ``bind`` / ``unbind`` / ``driver_override`` behave as Linux's driver core:
    a driver matches a device through driver_override alone when it is set,
    else through its id table; probe first makes the device use its IOMMU
    group's default domain (EBUSY while userspace owns the group's DMA) and a
    probe that fails leaves the device unbound; remove undoes it all.
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.drivers: dict[str, PciDriver] = {}

    # -- devices ---------------------------------------------------------------------

    def devices(self) -> list[PciDev]:
        pci = getattr(self.kernel, "pci", None)
        return list(pci.devices) if pci is not None else []

    def find_device(self, bdf: str) -> PciDev | None:
        """bus_find_device_by_name(): the name compared as sysfs_streq does
        (one trailing newline ignored)."""
        if bdf.endswith("\n"):
            bdf = bdf[:-1]
        return next((d for d in self.devices() if d.bdf == bdf), None)

    # -- drivers ---------------------------------------------------------------------

    def register(self, drv: PciDriver) -> PciDriver:
        """pci_register_driver(): EBUSY for a name in use; then every unbound
        device it matches is probed (a refusing probe is logged, not fatal)."""
        if not isinstance(drv.name, str) or not drv.name or "/" in drv.name:
            raise fail(EINVAL, f"bad driver name {drv.name!r}")
        if drv.name in self.drivers:
            raise fail(EBUSY, f"driver {drv.name} is already registered")
        self.drivers[drv.name] = drv
        for dev in self.devices():
            if dev.driver is None and self.match(drv, dev):
                try:
                    self.probe(drv, dev)
                except KernelError as e:
                    self.kernel.printk(f"{drv.name} {dev.bdf}: probe failed with error "
                                       f"-{e.errno}")
        return drv

    def unregister(self, name: str) -> None:
        """pci_unregister_driver(): every bound device is released first."""
        drv = self.drivers.get(name)
        if drv is None:
            raise fail(ENODEV, f"no driver {name}")
        for dev in list(drv.devices):
            self.release(dev)
        del self.drivers[name]

    @staticmethod
    def match(drv: PciDriver, dev: PciDev) -> bool:
        """pci_bus_match(): driver_override decides alone when it is set."""
        if dev.driver_override is not None:
            return dev.driver_override == drv.name
        return drv.match_id(dev)

    def probe(self, drv: PciDriver, dev: PciDev) -> None:
        """really_probe(): EBUSY if bound; DMA use of the default domain; probe."""
        if dev.driver is not None:
            raise fail(EBUSY, f"{dev.bdf} is bound to {dev.driver.name}")
        if not drv.driver_managed_dma:
            self._use_default_domain(dev)
        dev.driver = drv
        try:
            data = drv.probe(dev)
        except BaseException:
            dev.driver = None
            self._unuse_default_domain(dev)
            raise
        dev.driver_data = data
        drv.devices.append(dev)

    def attach_bound(self, drv: PciDriver, dev: PciDev, data: object) -> None:
        """Record a binding whose probe ran outside the core (a driver object
        built directly on the device, as the tests' MsiCountingDriver is)."""
        if dev.driver is not None:
            raise fail(EBUSY, f"{dev.bdf} is bound to {dev.driver.name}")
        self._use_default_domain(dev)
        dev.driver, dev.driver_data = drv, data
        drv.devices.append(dev)

    def abort_bind(self, dev: PciDev) -> None:
        """Undo :meth:`attach_bound` after the driver's own probe failed."""
        drv = dev.driver
        if drv is not None:
            drv.devices.remove(dev)
            dev.driver, dev.driver_data = None, None
            self._unuse_default_domain(dev)

    def release(self, dev: PciDev) -> None:
        """device_release_driver(): remove(), then what a driver left behind
        (its MSI vectors, with a warning) and the default-domain use."""
        drv = dev.driver
        if drv is None:
            return
        if drv.remove is not None:
            drv.remove(dev)
        msi = getattr(self.kernel, "msi", None)
        if dev.msi_descs and msi is not None:
            self.kernel.printk(f"WARNING: {drv.name} {dev.bdf}: remove left "
                               f"{len(dev.msi_descs)} MSI vectors allocated; freeing them")
            msi.free_irq_vectors(dev)
        drv.devices.remove(dev)
        dev.driver, dev.driver_data = None, None
        self._unuse_default_domain(dev)

    def _use_default_domain(self, dev: PciDev) -> None:
        """iommu_device_use_default_domain(): a kernel driver needs the group
        on its default domain, with no user owner."""
        group = dev.iommu_group
        if group is None:
            return
        if group.owner is not None:
            raise fail(EBUSY, f"{dev.bdf}: its IOMMU group is owned by userspace")
        group.kernel_users += 1
        dev.uses_default_domain = True

    def _unuse_default_domain(self, dev: PciDev) -> None:
        group = dev.iommu_group
        if not getattr(dev, "uses_default_domain", False):
            return
        dev.uses_default_domain = False
        if group is not None and group.kernel_users:
            group.kernel_users -= 1

    # -- sysfs -----------------------------------------------------------------------

    def _resolve(self, parts: list[str]) -> tuple[str, Any, str | None]:
        """(kind, object, attribute) for a path under /sys/bus/pci, or ENOENT."""
        if parts[:3] != ["sys", "bus", "pci"]:
            raise fail(ENOENT)
        rest = parts[3:]
        if rest[:1] == ["devices"] and len(rest) >= 2:
            dev = next((d for d in self.devices() if d.bdf == rest[1]), None)
            if dev is None:
                raise fail(ENOENT)
            if len(rest) == 2:
                return "dir", dev, None
            if rest[2] == "driver" and dev.driver is not None and len(rest) >= 3:
                return self._resolve(["sys", "bus", "pci", "drivers", dev.driver.name]
                                     + rest[3:]) if len(rest) > 3 else ("link", dev, "driver")
            if len(rest) == 3 and rest[2] in ("driver_override", "vendor", "device"):
                return "attr", dev, rest[2]
            if len(rest) == 3 and rest[2] == "iommu_group" and dev.iommu_group is not None:
                return "link", dev, "iommu_group"
            raise fail(ENOENT)
        if rest[:1] == ["drivers"] and len(rest) >= 2:
            drv = self.drivers.get(rest[1])
            if drv is None:
                raise fail(ENOENT)
            if len(rest) == 2:
                return "dir", drv, None
            if len(rest) == 3 and rest[2] in ("bind", "unbind"):
                return "attr", drv, rest[2]
            if len(rest) == 3 and any(d.bdf == rest[2] for d in drv.devices):
                return "dir", drv, None                 # the link to a bound device
            raise fail(ENOENT)
        if rest in ([], ["devices"], ["drivers"]):
            return "dir", None, None
        if rest == ["drivers_probe"]:
            return "attr", None, "drivers_probe"
        raise fail(ENOENT)

    _READABLE = {"driver_override", "vendor", "device"}
    _WRITABLE = {"driver_override", "bind", "unbind", "drivers_probe"}

    def sysfs_read(self, parts: list[str]) -> str:
        kind, obj, attr = self._resolve(parts)
        if kind == "dir":
            raise fail(EISDIR)
        if kind == "link":
            # A symlink: reading through it is a directory; the model answers
            # with the link target's name (readlink's last component).
            return (obj.driver.name if attr == "driver" else str(obj.iommu_group.id)) + "\n"
        if attr not in self._READABLE:
            raise fail(EACCES, "write-only attribute")
        if attr == "driver_override":
            return f"{obj.driver_override if obj.driver_override is not None else '(null)'}\n"
        return f"{obj.vendor if attr == 'vendor' else obj.device:#06x}\n"

    def sysfs_write(self, parts: list[str], text: str) -> None:
        kind, obj, attr = self._resolve(parts)
        if kind in ("dir", "link"):                     # a link here names a directory
            raise fail(EISDIR)
        if attr not in self._WRITABLE:
            raise fail(EACCES, "read-only attribute")
        if attr == "driver_override":
            self._set_override(obj, text)
        elif attr == "bind":
            dev = self.find_device(text)
            if dev is None or not self.match(obj, dev):
                raise fail(ENODEV, f"{text!r}: no such device for {obj.name}")
            self.probe(obj, dev)
        elif attr == "unbind":
            dev = self.find_device(text)
            if dev is None or dev.driver is not obj:
                raise fail(ENODEV, f"{text!r} is not bound to {obj.name}")
            self.release(dev)
        else:                                            # drivers_probe
            dev = self.find_device(text)
            if dev is None:
                raise fail(ENODEV, f"{text!r}: no such device")
            self.attach_any(dev)

    def attach_any(self, dev: PciDev) -> None:
        """device_attach(): the first registered driver that matches and probes."""
        if dev.driver is not None:
            return
        for drv in list(self.drivers.values()):
            if self.match(drv, dev):
                try:
                    self.probe(drv, dev)
                    return
                except KernelError as e:
                    self.kernel.printk(f"{drv.name} {dev.bdf}: probe failed with error "
                                       f"-{e.errno}")

    @staticmethod
    def _set_override(dev: PciDev, text: str) -> None:
        """driver_set_override(): the text up to the first newline (a NUL ends it
        first); empty, or a lone newline, clears; PAGE_SIZE - 1 bytes or more is
        EINVAL."""
        if len(text.encode()) >= PAGE_SIZE - 1:
            raise fail(EINVAL, "driver_override too long")
        text = text.split("\0", 1)[0].split("\n", 1)[0]
        dev.driver_override = text or None
