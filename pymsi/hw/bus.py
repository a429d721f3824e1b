"""The system bus: one host-physical address space of RAM and MMIO windows.

RAM is a :class:`pymsi.core.Memory`; a model is mapped at a base address and
sees ``mmio_read(offset, size)`` / ``mmio_write(offset, value, size)`` relative
to it.  A model that needs transaction attributes (the ITS needs the requester
ID of an MSI write: it is the DeviceID) is mapped with ``attrs=True`` and also
receives ``requester_id=``.  An access to nothing is a
:class:`~pymsi.errors.BusError` for the caller, as a bus error would be.

Device DMA goes through the IOMMU attached to the device's requester-ID range
(:meth:`Bus.attach_iommu`), then the bus; an IOMMU abort is reported to the
device as a failed transaction (:class:`DmaResult`), never as an exception.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import AlreadyExists, BusError, InvalidArgument

_SIZES = (1, 2, 4, 8)


class MmioWindow(NamedTuple):
    """A model mapped on the bus."""

    base: int
    size: int
    model: Any
    name: str
    attrs: bool


class DmaResult(NamedTuple):
    """What became of a device's DMA.

    ``ok`` is False when the IOMMU aborted it (``iommu`` holds its result)
    or the translated address hit nothing (``bus_error``).  ``pa`` is where
    it went; ``value`` what a read returned.
    """

    ok: bool
    pa: int | None
    value: int | None = None
    iommu: Any = None
    bus_error: bool = False


class Bus:
    """A host-physical address space: RAM plus MMIO windows of models."""

    def __init__(self, ram: Any) -> None:
        self.ram = ram
        self._windows: list[MmioWindow] = []
        self._bases: list[int] = []
        self._iommus: list[tuple[int, int, Any, Callable[[int], int]]] = []
        self.stats = {"dma": 0, "dma_aborted": 0, "dma_bus_errors": 0}

    # -- topology ------------------------------------------------------------

    def map(self, base: int, size: int, model: Any, name: str = "", attrs: bool = False) -> None:
        """Put ``model``'s registers at [base, base + size)."""
        if size <= 0 or base < 0 or base + size > 1 << 64:
            raise InvalidArgument(f"MMIO window {name} [{base:#x}, +{size:#x})")
        if self.ram.is_ram(base, 1) or self.ram.is_ram(base + size - 1, 1):
            raise AlreadyExists(f"MMIO window {name} overlaps RAM")
        for w in self._windows:
            if base < w.base + w.size and w.base < base + size:
                raise AlreadyExists(f"MMIO window {name} overlaps {w.name}")
        i = bisect.bisect(self._bases, base)
        self._bases.insert(i, base)
        self._windows.insert(i, MmioWindow(base, size, model, name or type(model).__name__,
                                           attrs))

    def unmap(self, base: int) -> None:
        """Remove the window that starts at ``base``."""
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise InvalidArgument(f"no MMIO window at {base:#x}")
        del self._bases[i]
        del self._windows[i]

    def window(self, addr: int) -> MmioWindow | None:
        """The MMIO window containing ``addr``, if any."""
        i = bisect.bisect(self._bases, addr) - 1
        if i >= 0:
            w = self._windows[i]
            if addr < w.base + w.size:
                return w
        return None

    @property
    def windows(self) -> list[MmioWindow]:
        """The MMIO windows, by address."""
        return list(self._windows)

    def attach_iommu(self, first_rid: int, last_rid: int, iommu: Any,
                     sid_of: Callable[[int], int] = lambda rid: rid) -> None:
        """Route DMA from requester IDs [first_rid, last_rid] through ``iommu``.

        ``sid_of`` maps a requester ID to the IOMMU's StreamID (identity on
        QEMU's virt board and most ACPI IORT tables).
        """
        self._iommus.append((first_rid, last_rid, iommu, sid_of))

    def iommu_for(self, rid: int) -> tuple[Any, int] | None:
        """(iommu, StreamID) that DMA from ``rid`` goes through, if any."""
        for first, last, iommu, sid_of in self._iommus:
            if first <= rid <= last:
                return iommu, sid_of(rid)
        return None

    # -- CPU / host-physical accesses --------------------------------------

    def read(self, addr: int, size: int = 4, requester_id: int | None = None) -> int:
        """A ``size``-byte little-endian read at a physical address."""
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        if self.ram.is_ram(addr, size):
            return int.from_bytes(self.ram.read(addr, size), "little")
        w = self.window(addr)
        if w is None or addr + size > w.base + w.size:
            raise BusError(f"read of {size} bytes at {addr:#x}: nothing there")
        if w.attrs:
            return w.model.mmio_read(addr - w.base, size, requester_id=requester_id)
        return w.model.mmio_read(addr - w.base, size)

    def write(self, addr: int, value: int, size: int = 4, requester_id: int | None = None) -> None:
        """A ``size``-byte little-endian write at a physical address."""
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        value &= (1 << (8 * size)) - 1
        if self.ram.is_ram(addr, size):
            self.ram.write(addr, value.to_bytes(size, "little"))
            return
        w = self.window(addr)
        if w is None or addr + size > w.base + w.size:
            raise BusError(f"write of {size} bytes at {addr:#x}: nothing there")
        if w.attrs:
            w.model.mmio_write(addr - w.base, value, size, requester_id=requester_id)
        else:
            w.model.mmio_write(addr - w.base, value, size)

    def write32(self, addr: int, value: int) -> None:
        """A 32-bit write (what MSIs and interrupt-signalling models use)."""
        self.write(addr, value, 4)

    # -- device DMA -----------------------------------------------------------

    def dma_write(self, rid: int, addr: int, value: int, size: int = 4) -> DmaResult:
        """A device's memory write: through its IOMMU (if any), then the bus."""
        return self._dma(rid, addr, size, value)

    def dma_read(self, rid: int, addr: int, size: int = 4) -> DmaResult:
        """A device's memory read."""
        return self._dma(rid, addr, size, None)

    def _dma(self, rid: int, addr: int, size: int, value: int | None) -> DmaResult:
        self.stats["dma"] += 1
        pa = addr
        route = self.iommu_for(rid)
        r = None
        if route is not None:
            iommu, sid = route
            r = iommu.translate(sid, addr, write=value is not None)
            if r.pa is None:
                self.stats["dma_aborted"] += 1
                return DmaResult(False, None, None, r)
            pa = r.pa
        try:
            if value is None:
                return DmaResult(True, pa, self.read(pa, size, requester_id=rid), r)
            self.write(pa, value, size, requester_id=rid)
        except BusError:
            self.stats["dma_bus_errors"] += 1
            return DmaResult(False, pa, None, r, bus_error=True)
        return DmaResult(True, pa, None, r)
