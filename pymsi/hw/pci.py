"""PCI functions with MSI and MSI-X, and a host bridge with ECAM and BAR windows.

A :class:`PciFunction` has a type-0 configuration space with a capability
list, memory BARs, an MSI capability (32/64-bit address, multiple message
enable, optional per-vector masking) and an MSI-X capability whose table and
PBA live in a BAR.  :meth:`PciFunction.notify` raises a vector as the hardware
would: nothing while MSI/MSI-X is disabled, a pending bit while the vector is
masked (sent, and cleared, on unmask), otherwise a 32-bit memory write of the
vector's data to its address, issued as DMA with the function's requester ID
(bus << 8 | device << 3 | function) — so it goes through the IOMMU.  With Bus
Master Enable clear the function issues no memory writes at all.  Messages are
posted writes: one the function sends while the bus is busy with another access
(an unmask written through its BAR or configuration space releasing a pending
message) is queued behind that access (see :mod:`pymsi.hw.bus`), so a message
aimed at the function's own MSI-X table is handled after the write that caused
it, never inside it.

:class:`PciHost` is the root complex: an ECAM window for configuration
accesses, and a window on the system bus for each enabled memory BAR.
"""

from __future__ import annotations

import array
import enum
import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .. import core, trace
from .._repr import bounded

# The MSI-X table entry is defined once, in pymsi.core.pci_formats; re-exported.
from ..core.pci_formats import MSIX_CTRL_MASKBIT as MSIX_CTRL_MASKBIT
from ..core.pci_formats import MSIX_ENTRY_ADDR_LO as MSIX_ENTRY_ADDR_LO
from ..core.pci_formats import MSIX_ENTRY_CTRL as MSIX_ENTRY_CTRL
from ..core.pci_formats import MSIX_ENTRY_DATA as MSIX_ENTRY_DATA
from ..core.pci_formats import MSIX_ENTRY_SIZE as MSIX_ENTRY_SIZE
from ..errors import InvalidArgument
from .gicv3 import _BIT_CLEAR, _PENDBASER_PA_MASK
from .gicv3 import Redistributor as _Redistributor

if TYPE_CHECKING:
    from .bus import Bus

# Type-0 header.
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_CODE, HEADER_TYPE, BAR0 = 0x08, 0x09, 0x0E, 0x10
SUBSYS_VENDOR_ID, SUBSYS_ID, CAP_PTR, INT_PIN = 0x2C, 0x2E, 0x34, 0x3D
CMD_IO, CMD_MEMORY, CMD_MASTER, CMD_INTX_DISABLE = 1 << 0, 1 << 1, 1 << 2, 1 << 10
STATUS_CAP_LIST = 1 << 4
CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_EXP = 0x05, 0x11, 0x10
INT_LINE, ROM_ADDRESS = 0x3C, 0x30
# PCI Express capability (offsets from the capability).
EXP_FLAGS, EXP_DEVCAP, EXP_DEVCTL, EXP_DEVSTA = 0x02, 0x04, 0x08, 0x0A
EXP_DEVCAP_FLR = 1 << 28                  # Function Level Reset Capability
EXP_DEVCTL_BCR_FLR = 1 << 15              # Initiate Function Level Reset (reads as 0)
EXP_DEVCTL_PAYLOAD = 0x00E0               # Max_Payload_Size
EXP_DEVCTL_PHANTOM = 0x0200               # Phantom Functions Enable
EXP_DEVCTL_READRQ = 0x7000                # Max_Read_Request_Size
EXP_DEVCTL_RESET = 0x2810                 # reset: relaxed ordering, no snoop, MRRS 512 bytes
EXP_DEVSTA_TRPND = 1 << 5                 # Transactions Pending
# MSI capability (offsets from the capability).
MSI_FLAGS, MSI_ADDR_LO, MSI_ADDR_HI = 0x02, 0x04, 0x08
MSI_DATA_32, MSI_MASK_32, MSI_PENDING_32 = 0x08, 0x0C, 0x10    # without Message Upper Address
MSI_DATA_64, MSI_MASK_64, MSI_PENDING_64 = 0x0C, 0x10, 0x14    # with it (MSI_FLAGS_64BIT)
_MSI_DATA_TO_MASK, _MSI_DATA_TO_PENDING = MSI_MASK_32 - MSI_DATA_32, MSI_PENDING_32 - MSI_DATA_32
MSI_FLAGS_ENABLE, MSI_FLAGS_QMASK, MSI_FLAGS_QSIZE = 1 << 0, 0x7 << 1, 0x7 << 4
MSI_FLAGS_64BIT, MSI_FLAGS_MASKBIT = 1 << 7, 1 << 8
# MSI-X capability.
MSIX_FLAGS, MSIX_TABLE, MSIX_PBA = 0x02, 0x04, 0x08
MSIX_FLAGS_QSIZE, MSIX_FLAGS_MASKALL, MSIX_FLAGS_ENABLE = 0x7FF, 1 << 14, 1 << 15
_MSIX_ENABLE_HI, _MSIX_MASKALL_HI = MSIX_FLAGS_ENABLE >> 8, MSIX_FLAGS_MASKALL >> 8
_SIZE_MASK = {4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}   # the MSI-X table's access sizes
_MSIX_FLAGS_HI = MSIX_FLAGS + 1               # the Message Control byte holding those two bits
_entry_msg = struct.Struct("<QI").unpack_from       # an MSI-X entry's address and data
_FIRE_NONE = core.FIRE_NONE

CONFIG_SIZE = 4096

# Named after QEMU's msi_send_message(): a function's MSI / MSI-X memory write, as it leaves
# the function (before the IOMMU); vector is the MSI-X entry or MSI vector.
trace_msi_send_message = trace.Tracepoint("msi_send_message", "rid", "vector", "address",
                                          "data")


class Delivery(enum.Enum):
    """What :meth:`PciFunction.notify` did with a vector."""

    SENT = "sent"                      # the memory write went out (and was accepted)
    PENDING = "pending"                # masked: pending bit set
    DISABLED = "disabled"              # MSI / MSI-X not enabled: nothing
    NO_VECTOR = "no vector"            # beyond the enabled vectors
    BLOCKED = "blocked"                # Bus Master Enable clear: no memory write
    ABORTED = "aborted"                # the write was aborted (IOMMU fault, nothing there)
    POSTED = "posted"                  # queued behind the bus access in progress



def find_capability(read8: Callable[[int], int], cap_id: int) -> int | None:
    """The offset of capability ``cap_id`` in a configuration space read one byte at a
    time through ``read8``: the list from CAP_PTR, pointers with their low two bits
    cleared, at most 48 hops (as pci_find_capability bounds a looping list), or None."""
    ptr, seen = read8(CAP_PTR) & ~3, 0
    while ptr and seen < 48:
        if read8(ptr) == cap_id:
            return ptr
        ptr = read8(ptr + 1) & ~3
        seen += 1
    return None

@dataclass
class MsiConfig:
    """An MSI capability: ``vectors`` capable (1..32), 64-bit, per-vector masking."""

    vectors: int = 1
    is64: bool = True
    per_vector_mask: bool = True


@dataclass
class MsixConfig:
    """An MSI-X capability: ``vectors`` (1..2048), table and PBA in BAR ``bar``."""

    vectors: int = 8
    bar: int = 0
    table_offset: int = 0
    pba_offset: int = 0x800

    def __repr__(self) -> str:
        return (f"MsixConfig(vectors={self.vectors}, bar={self.bar}, "
                f"table_offset={self.table_offset:#x}, pba_offset={self.pba_offset:#x})")


@dataclass
class Bar:
    """A 32- or 64-bit memory BAR of ``size`` bytes (a power of two, >= 16), in BAR
    register ``reg`` (0..5) when given, else in the next free one."""

    size: int
    is64: bool = True
    prefetchable: bool = False
    reg: int | None = None

    def __repr__(self) -> str:
        return (f"Bar(size={self.size:#x}, is64={self.is64}, prefetchable={self.prefetchable}, "
                f"reg={self.reg})")


@dataclass
class _Stats:
    sent: int = 0
    pending: int = 0
    blocked: int = 0
    aborted: int = 0
    disabled: int = 0
    delivered_from_pending: int = 0


class PciFunction:
    """A PCI Express function (type-0 header) at bus:device.function."""

    #: whether the class sends messages with PciFunction._send (notify inlines it then)
    _own_send = True

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._own_send = cls._send is PciFunction._send

    def __init__(self, bus: int, device: int, function: int = 0, vendor_id: int = 0x1AF4,
                 device_id: int = 0x1000, class_code: int = 0x020000,
                 bars: list[Bar] | None = None, msi: MsiConfig | None = None,
                 msix: MsixConfig | None = None, flr: bool = True, revision: int = 0,
                 subsystem_vendor_id: int = 0, subsystem_id: int = 0) -> None:
        if not (0 <= bus < 256 and 0 <= device < 32 and 0 <= function < 8):
            raise InvalidArgument(f"bad address {bus:02x}:{device:02x}.{function}")
        self.bus, self.device, self.function = bus, device, function
        self.host: PciHost | None = None
        self.bars = list(bars or [])
        self.cfg = bytearray(CONFIG_SIZE)
        self._wmask = bytearray(CONFIG_SIZE)
        self._bar_regs: dict[int, tuple[int, Bar]] = {}   # register offset -> (index, bar)
        self.stats = _Stats()
        self._reset_cfg: bytearray | None = None       # made at the end, then kept by _put
        self._put(VENDOR_ID, vendor_id, 2)
        self._put(DEVICE_ID, device_id, 2)
        self._put(REVISION, revision, 1)
        self._put(CLASS_CODE, class_code, 3)
        self._put(SUBSYS_VENDOR_ID, subsystem_vendor_id, 2)
        self._put(SUBSYS_ID, subsystem_id, 2)
        self._put(COMMAND, 0, 2, wmask=CMD_MEMORY | CMD_MASTER | CMD_INTX_DISABLE | 0x140)
        self._put(INT_PIN, 1, 1)
        reg = BAR0
        self._bar_bir: list[int] = []                      # BAR Indicator of each BAR
        for i, bar in enumerate(self.bars):
            if bar.reg is not None:
                if not isinstance(bar.reg, int) or not BAR0 + 4 * bar.reg >= reg:
                    raise InvalidArgument(f"BAR register {bar.reg!r} is taken or out of order")
                reg = BAR0 + 4 * bar.reg
            self._bar_bir.append((reg - BAR0) // 4)
            if bar.size < 16 or bar.size & (bar.size - 1):
                raise InvalidArgument(f"BAR size {bar.size:#x}")
            if reg + (8 if bar.is64 else 4) > BAR0 + 24:
                raise InvalidArgument("too many BARs")
            flags = (0b100 if bar.is64 else 0) | (0b1000 if bar.prefetchable else 0)
            self._put(reg, flags, 4, wmask=~(bar.size - 1) & 0xFFFF_FFF0)
            if bar.is64:
                self._put(reg + 4, 0, 4, wmask=((~(bar.size - 1)) >> 32) & 0xFFFF_FFFF)
            self._bar_regs[reg] = (i, bar)
            reg += 8 if bar.is64 else 4
        caps = []
        self.msi_cap: int | None = None      # config offset of the MSI capability, if any
        self.msix_cap: int | None = None     # ... and of the MSI-X capability
        self.msi = msi
        self.msix = msix
        self.exp_cap = 0x40
        caps.append((self.exp_cap, CAP_ID_EXP, 0x3C))
        if msi is not None:
            if not 1 <= msi.vectors <= 32 or msi.vectors & (msi.vectors - 1):
                raise InvalidArgument(f"MSI vectors {msi.vectors}")
            self.msi_cap = 0x80
            caps.append((self.msi_cap, CAP_ID_MSI, 0))
        if msix is not None:
            if not 1 <= msix.vectors <= 2048 or msix.bar >= len(self.bars):
                raise InvalidArgument(f"MSI-X vectors {msix.vectors} / BAR {msix.bar}")
            table_end = msix.table_offset + msix.vectors * MSIX_ENTRY_SIZE
            pba_end = msix.pba_offset + (msix.vectors + 63) // 64 * 8
            if (msix.table_offset | msix.pba_offset) & 7 or max(table_end, pba_end) > \
                    self.bars[msix.bar].size or (msix.table_offset < pba_end
                                                 and msix.pba_offset < table_end):
                raise InvalidArgument("MSI-X table / PBA do not fit the BAR")
            self.msix_cap = 0xA0
            caps.append((self.msix_cap, CAP_ID_MSIX, 0))
        self._put(STATUS, STATUS_CAP_LIST, 2)
        self._put(CAP_PTR, caps[0][0], 1)
        for i, (off, cap_id, _) in enumerate(caps):
            self._put(off, cap_id, 1)
            self._put(off + 1, caps[i + 1][0] if i + 1 < len(caps) else 0, 1)
        self._put(self.exp_cap + EXP_FLAGS, 0x0002, 2)        # PCIe v2, endpoint
        self._put(self.exp_cap + EXP_DEVCAP, EXP_DEVCAP_FLR if flr else 0, 4)
        self._put(self.exp_cap + EXP_DEVCTL, EXP_DEVCTL_RESET, 2,
                  wmask=0xFFFF & ~EXP_DEVCTL_BCR_FLR)
        if msi is not None:
            assert self.msi_cap is not None
            flags = ((msi.vectors.bit_length() - 1) << 1 | (MSI_FLAGS_64BIT if msi.is64 else 0)
                     | (MSI_FLAGS_MASKBIT if msi.per_vector_mask else 0))
            self._put(self.msi_cap + MSI_FLAGS, flags, 2, wmask=MSI_FLAGS_ENABLE | MSI_FLAGS_QSIZE)
            self._put(self.msi_cap + MSI_ADDR_LO, 0, 4, wmask=0xFFFF_FFFC)
            if msi.is64:
                self._put(self.msi_cap + MSI_ADDR_HI, 0, 4, wmask=0xFFFF_FFFF)
            self._put(self._msi_data_off, 0, 2, wmask=0xFFFF)
            if msi.per_vector_mask:
                self._put(self._msi_data_off + _MSI_DATA_TO_MASK, 0, 4,
                          wmask=(1 << msi.vectors) - 1)
        if msix is not None:
            assert self.msix_cap is not None
            self._put(self.msix_cap + MSIX_FLAGS, msix.vectors - 1, 2,
                      wmask=MSIX_FLAGS_MASKALL | MSIX_FLAGS_ENABLE)
            bir = self._bar_bir[msix.bar]     # the BAR's register number (64-bit BARs take 2)
            self._put(self.msix_cap + MSIX_TABLE, msix.table_offset | bir, 4)
            self._put(self.msix_cap + MSIX_PBA, msix.pba_offset | bir, 4)
            self.msix_table = bytearray(msix.vectors * MSIX_ENTRY_SIZE)
            for v in range(msix.vectors):                      # every vector masked at reset
                self.msix_table[v * MSIX_ENTRY_SIZE + MSIX_ENTRY_CTRL] = MSIX_CTRL_MASKBIT
            self.msix_pba = bytearray((msix.vectors + 63) // 64 * 8)
        self._reset_cfg = bytearray(self.cfg)                  # what an FLR goes back to
        self.flr_count = 0

    @property
    def rid(self) -> int:
        """Requester ID: bus << 8 | device << 3 | function."""
        return self.bus << 8 | self.device << 3 | self.function

    @property
    def bdf(self) -> str:
        return f"{self.bus:02x}:{self.device:02x}.{self.function}"

    def __repr__(self) -> str:
        ids = f"{self._get(VENDOR_ID, 2):04x}:{self._get(DEVICE_ID, 2):04x}"
        vec = f" msix={self.msix.vectors}" if self.msix is not None else ""
        vec += f" msi={self.msi.vectors}" if self.msi is not None else ""
        return f"{type(self).__name__}({self.bdf} {ids}{vec})"

    # -- configuration space --------------------------------------------------------

    def _put(self, off: int, value: int, size: int, wmask: int = 0) -> None:
        """Set a register's reset value (what an FLR returns it to: HwInit / read-only
        values survive resets) and which of its bits software may write."""
        self._store(off, value, size)
        if self._reset_cfg is not None:
            self._reset_cfg[off:off + size] = self.cfg[off:off + size]
        self._wmask[off : off + size] = (wmask & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _store(self, off: int, value: int, size: int) -> None:
        """The device itself updates a register (read-only bits included)."""
        self.cfg[off : off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _get(self, off: int, size: int) -> int:
        return int.from_bytes(self.cfg[off : off + size], "little")

    @property
    def _msi_data_off(self) -> int:
        # only used with an MSI capability: msi_cap and msi are set together
        return self.msi_cap + (MSI_DATA_64 if self.msi.is64 else MSI_DATA_32)  # type: ignore[operator, union-attr]

    def cfg_read(self, offset: int, size: int = 4) -> int:
        """A configuration read (naturally aligned 1, 2 or 4 bytes)."""
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < CONFIG_SIZE:
            return (1 << 8 * size) - 1 if size in (1, 2, 4) else 0
        return self._get(offset, size)

    def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        """A configuration write: only writable bits change; side effects follow."""
        if size not in (1, 2, 4) or offset % size or not 0 <= offset < CONFIG_SIZE:
            return
        devctl = self.exp_cap + EXP_DEVCTL
        if offset <= devctl + 1 < offset + size and \
                value >> 8 * (devctl + 1 - offset) & (EXP_DEVCTL_BCR_FLR >> 8) and \
                self._get(self.exp_cap + EXP_DEVCAP, 4) & EXP_DEVCAP_FLR:
            self.flr()                            # the rest of the write is lost in the reset
            return
        msix_before = self._msix_masked_all() if self.msix_cap else None
        msi_mask_before = self._msi_masks() if self.msi_cap else None
        old_cmd = self._get(COMMAND, 2)
        for i in range(size):
            byte = (value >> 8 * i) & 0xFF
            m = self._wmask[offset + i]
            self.cfg[offset + i] = (self.cfg[offset + i] & ~m) | (byte & m)
        if self.msi_cap is not None:
            flags = self._get(self.msi_cap + MSI_FLAGS, 2)
            mme = (flags & MSI_FLAGS_QSIZE) >> 4
            mmc = (flags & MSI_FLAGS_QMASK) >> 1
            if mme > mmc:                                   # clamp Multiple Message Enable
                self._store(self.msi_cap + MSI_FLAGS, (flags & ~MSI_FLAGS_QSIZE) | mmc << 4, 2)
            self._deliver_unmasked_msi(msi_mask_before)  # type: ignore[arg-type]  # int with MSI
        if self.msix_cap is not None and msix_before and not self._msix_masked_all():
            assert self.msix is not None                    # set with msix_cap
            for v in range(self.msix.vectors):
                self._deliver_if_unmasked(v)
        if (old_cmd ^ self._get(COMMAND, 2)) & CMD_MEMORY or offset in range(BAR0, BAR0 + 24):
            if self.host is not None:
                self.host.remap_bars(self)

    # -- Function Level Reset --------------------------------------------------------

    def flr(self) -> None:
        """A Function Level Reset (PCIe Initiate FLR): configuration space back to
        its reset values (BARs unassigned, memory decode and Bus Master off, MSI and
        MSI-X disabled, MSI pending bits clear), every MSI-X entry zeroed and masked,
        the PBA clear, then :meth:`device_reset` for the function's own state.
        Statistics are not state of the function and are kept."""
        self.flr_count += 1
        self.cfg[:] = cast(bytearray, self._reset_cfg)     # made by __init__
        if self.msix is not None:
            self.msix_table[:] = bytes(len(self.msix_table))
            for v in range(self.msix.vectors):
                self.msix_table[v * MSIX_ENTRY_SIZE + MSIX_ENTRY_CTRL] = MSIX_CTRL_MASKBIT
            self.msix_pba[:] = bytes(len(self.msix_pba))
        self.device_reset()
        if self.host is not None:
            self.host.remap_bars(self)

    def device_reset(self) -> None:
        """Hook: the device-specific state a reset clears (subclasses override)."""

    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` is programmed (None if unassigned)."""
        for reg, (i, bar) in self._bar_regs.items():
            if i == index:
                addr = self._get(reg, 4) & ~0xF
                if bar.is64:
                    addr |= self._get(reg + 4, 4) << 32
                return addr or None
        return None

    # -- MSI ----------------------------------------------------------------------

    def _msi_masks(self) -> int:
        assert self.msi is not None                # only called with an MSI capability
        if not self.msi.per_vector_mask:
            return 0
        return self._get(self._msi_data_off + _MSI_DATA_TO_MASK, 4)

    def msi_message(self, vector: int) -> tuple[int, int] | None:
        """(address, data) MSI vector ``vector`` would send now, if enabled."""
        if self.msi_cap is None:
            return None
        flags = self._get(self.msi_cap + MSI_FLAGS, 2)
        if not flags & MSI_FLAGS_ENABLE or vector >= 1 << ((flags & MSI_FLAGS_QSIZE) >> 4):
            return None
        addr = self._get(self.msi_cap + MSI_ADDR_LO, 4)
        assert self.msi is not None                # set with msi_cap
        if self.msi.is64:
            addr |= self._get(self.msi_cap + MSI_ADDR_HI, 4) << 32
        n = 1 << ((flags & MSI_FLAGS_QSIZE) >> 4)
        data = (self._get(self._msi_data_off, 2) & ~(n - 1)) | vector
        return addr, data

    def _set_msi_pending(self, vector: int, value: bool) -> None:
        off = self._msi_data_off + _MSI_DATA_TO_PENDING
        bits = self._get(off, 4)
        self._store(off, bits | 1 << vector if value else bits & ~(1 << vector), 4)

    def _deliver_unmasked_msi(self, masks_before: int) -> None:
        assert self.msi is not None                # only called with an MSI capability
        if not self.msi.per_vector_mask:
            return
        pending = self._get(self._msi_data_off + _MSI_DATA_TO_PENDING, 4)
        masks = self._msi_masks()
        for v in range(self.msi.vectors):
            if pending >> v & 1 and not masks >> v & 1:
                msg = self.msi_message(v)
                if msg is not None:
                    self._set_msi_pending(v, False)
                    self.stats.delivered_from_pending += 1
                    self._send(*msg, vector=v)

    # -- MSI-X --------------------------------------------------------------------

    @property
    def msix_enabled(self) -> bool:
        return bool(self.msix_cap and self._get(self.msix_cap + MSIX_FLAGS, 2)
                    & MSIX_FLAGS_ENABLE)

    def _msix_masked_all(self) -> bool:
        flags = self._get(self.msix_cap + MSIX_FLAGS, 2)  # type: ignore[operator]  # MSI-X only
        return not flags & MSIX_FLAGS_ENABLE or bool(flags & MSIX_FLAGS_MASKALL)

    def msix_entry(self, vector: int) -> tuple[int, int, int]:
        """(address, data, vector control) of MSI-X table entry ``vector``."""
        o = vector * MSIX_ENTRY_SIZE
        e = self.msix_table
        a, d, c = o + MSIX_ENTRY_ADDR_LO, o + MSIX_ENTRY_DATA, o + MSIX_ENTRY_CTRL
        return (int.from_bytes(e[a:a + 8], "little"), int.from_bytes(e[d:d + 4], "little"),
                int.from_bytes(e[c:c + 4], "little"))       # ADDR_HI follows ADDR_LO

    def msix_pending(self, vector: int) -> bool:
        return bool(self.msix_pba[vector // 8] >> (vector % 8) & 1)

    def _set_pba(self, vector: int, value: bool) -> None:
        if value:
            self.msix_pba[vector // 8] |= 1 << (vector % 8)
        else:
            self.msix_pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def _deliver_if_unmasked(self, vector: int) -> None:
        if self.msix_pending(vector) and not self._msix_vector_masked(vector):
            self._set_pba(vector, False)
            addr, data, _ = self.msix_entry(vector)
            self.stats.delivered_from_pending += 1
            self._send(addr, data, vector=vector)

    def _msix_vector_masked(self, vector: int) -> bool:
        return self._msix_masked_all() or bool(self.msix_entry(vector)[2] & MSIX_CTRL_MASKBIT)

    def bar_read(self, index: int, offset: int, size: int) -> int:
        """A memory read inside BAR ``index`` (the MSI-X table and PBA live here)."""
        m = self.msix
        if m is not None and index == m.bar and size in (4, 8):
            tab = offset - m.table_offset
            if 0 <= tab < len(self.msix_table) and tab % size == 0:
                return int.from_bytes(self.msix_table[tab : tab + size], "little")
            pba = offset - m.pba_offset
            if 0 <= pba < len(self.msix_pba) and pba % size == 0:
                return int.from_bytes(self.msix_pba[pba : pba + size], "little")
        return 0

    def bar_write(self, index: int, offset: int, value: int, size: int) -> None:
        """A memory write inside BAR ``index``; the PBA is read-only."""
        m = self.msix
        if m is None or index != m.bar or size not in (4, 8):
            return
        tab = offset - m.table_offset
        if 0 <= tab < len(self.msix_table) and tab % size == 0:
            # the bytes of the access (a wider value is cut to its size, as the bus lanes do)
            self.msix_table[tab : tab + size] = (value & _SIZE_MASK[size]).to_bytes(size, "little")
            vector = tab // MSIX_ENTRY_SIZE
            pba = self.msix_pba
            if pba[vector >> 3] >> (vector & 7) & 1:         # pending: deliver if unmasked
                self._deliver_if_unmasked(vector)
            if size == 8 and (tab + 4) // MSIX_ENTRY_SIZE != vector:
                self._deliver_if_unmasked(vector + 1)

    # -- raising vectors -------------------------------------------------------------

    def notify(self, vector: int) -> Delivery:
        """Raise ``vector`` the way the function's hardware would."""
        cap = self.msix_cap
        if cap is not None:
            # msix_enabled, _msix_vector_masked and msix_entry, inline: Message Control's
            # high byte holds Enable (bit 7) and Function Mask (bit 6)
            flags = self.cfg[cap + _MSIX_FLAGS_HI]
            if flags & _MSIX_ENABLE_HI:
                if not 0 <= vector < self.msix.vectors:  # type: ignore[union-attr]  # msix set with msix_cap (hot path: no check)
                    return Delivery.NO_VECTOR
                table = self.msix_table
                o = vector * MSIX_ENTRY_SIZE
                if flags & _MSIX_MASKALL_HI or table[o + MSIX_ENTRY_CTRL] & MSIX_CTRL_MASKBIT:
                    self._set_pba(vector, True)
                    self.stats.pending += 1
                    return Delivery.PENDING
                addr, data = _entry_msg(table, o)           # Message Address, Data
                if not self._own_send:
                    return self._send(addr, data, vector)
                host = self.host                              # _send, inline
                if not self.cfg[COMMAND] & CMD_MASTER or host is None:
                    self.stats.blocked += 1
                    return Delivery.BLOCKED
                rid = self.bus << 8 | self.device << 3 | self.function
                if trace_msi_send_message.enabled:
                    trace_msi_send_message(rid=rid, vector=vector, address=addr, data=data)
                bus = host.bus
                if bus._depth:                  # posted: counted when it is performed
                    bus.dma_write(rid, addr, data, 4, self._count)
                    return Delivery.POSTED
                route = bus._routes.get(rid)
                if route is None:
                    route = bus._msi_route(rid)
                xlated = None
                if route and "dma_write" not in bus.__dict__:      # (not watched)
                    # The one-call route (Bus._msi_route): the SMMU's translate, the RAM
                    # check, the ITS cache hit and the pending bit in C; here, what
                    # dma_write, the ITS's GITS_TRANSLATER write and the redistributor's
                    # set_pending do around them, with the same effects
                    smmu, xl, sid, fire, last, doorbell, its, gic, tps = route
                    if smmu._xl is xl and not (tps[0].enabled or tps[1].enabled
                                               or tps[2].enabled):
                        rc = fire(sid, addr, rid, data, doorbell)
                        if rc >= 0:
                            intid = rc >> 2 & 0xFFFF_FFFF
                            rd = gic.redists[rc >> 34]
                            self.stats.sent += 1
                            bus.stats["dma"] += 1
                            istats = its.stats
                            istats["translations"] += 1
                            if type(rd) is not _Redistributor:
                                # made a subclass since its LPIs were enabled: the bit
                                # put back as it was, then its own set_pending (as the
                                # ITS does for a subclass)
                                if not rc & 3:
                                    gic._bit((rd.pendbaser & _PENDBASER_PA_MASK)
                                             + (intid >> 3), intid & 7, _BIT_CLEAR)
                                if rd.set_pending(intid):
                                    istats["lpis"] += 1
                                if bus._posted:
                                    bus.drain()
                                return Delivery.SENT
                            rd.stats["lpis_set"] += 1
                            pending = rd.pending
                            if intid not in pending:
                                pending.add(intid)
                                rd._fresh.add(intid)
                                if rc & 2:      # its byte is not RAM: as the full path
                                    gic.pending_bit(rd.pendbaser & _PENDBASER_PA_MASK, intid,
                                                    True)
                            elif not rc & 3:    # pending, its bit clear: left clear
                                gic._bit((rd.pendbaser & _PENDBASER_PA_MASK) + (intid >> 3),
                                         intid & 7, _BIT_CLEAR)
                            istats["lpis"] += 1
                            if bus._posted:
                                bus.drain()
                            return Delivery.SENT
                        if rc != _FIRE_NONE:    # translated: the rest of the full path
                            xlated = last()
                if xlated is None:
                    ok = bus.dma_write(rid, addr, data, 4).ok
                else:
                    ok = bus.dma_write(rid, addr, data, 4, _xlated=xlated).ok
                    its._itc_fill(rid, data)    # (the ITS cached it: the route's next time)
                if ok:                          # performed now: _count, inline
                    self.stats.sent += 1
                    return Delivery.SENT
                self.stats.aborted += 1
                return Delivery.ABORTED
        if self.msi_cap is not None and self._get(self.msi_cap + MSI_FLAGS, 2) & MSI_FLAGS_ENABLE:
            msg = self.msi_message(vector)
            if msg is None:
                return Delivery.NO_VECTOR
            if self._msi_masks() >> vector & 1:
                self._set_msi_pending(vector, True)
                self.stats.pending += 1
                return Delivery.PENDING
            return self._send(*msg, vector=vector)
        self.stats.disabled += 1
        return Delivery.DISABLED

    def notify_batch(self, vectors: Sequence[int]) -> list[Delivery]:
        """Raise each of ``vectors``, in order, with the outcome of :meth:`notify` of each
        one at a time (the same messages, PBA bits, statistics, IOMMU events and
        interrupts): returns what became of each.

        The batch entry point of interrupt delivery: the enabled, unmasked MSI-X
        vectors' messages are read from the table and handed to the bus as one
        :meth:`Bus.dma_write_batch <pymsi.hw.bus.Bus.dma_write_batch>` (one IOMMU
        batch translation; the writes that reach the ITS's GITS_TRANSLATER translated
        through its cache and set pending by one core call).  With MSI rather than
        MSI-X, a bus busy with another access, message tracing on, or a class with its
        own ``_send``, it is :meth:`notify` of each.
        """
        cap, host = self.msix_cap, self.host
        cfg = self.cfg
        if (cap is None or not cfg[cap + _MSIX_FLAGS_HI] & _MSIX_ENABLE_HI or host is None
                or not cfg[COMMAND] & CMD_MASTER or not self._own_send or host.bus.busy
                or trace_msi_send_message.enabled):
            return [self.notify(v) for v in vectors]
        try:
            va = array.array("I", vectors)
        except (TypeError, OverflowError):          # not all u32: notify says what each is
            return [self.notify(v) for v in vectors]
        n = len(va)
        if n < 2:
            return [self.notify(v) for v in va]
        addrs = array.array("Q", bytes(8 * n))
        datas, status = array.array("I", bytes(4 * n)), array.array("i", bytes(4 * n))
        ok = core.msix_gather(self.msix_table, self.msix.vectors,  # type: ignore[union-attr]  # as in notify
                              bool(cfg[cap + _MSIX_FLAGS_HI] & _MSIX_MASKALL_HI), va, addrs,
                              datas, status)
        stats = self.stats
        out = [Delivery.SENT] * n
        where = None
        if ok < n:                                   # masked or no such vector: say so
            where = []
            for k in range(n):
                s = status[k]
                if s == 0:
                    where.append(k)
                elif s == 1:
                    self._set_pba(va[k], True)
                    stats.pending += 1
                    out[k] = Delivery.PENDING
                else:
                    out[k] = Delivery.NO_VECTOR
            if not where:
                return out
            addrs = array.array("Q", [addrs[k] for k in where])
            datas = array.array("I", [datas[k] for k in where])
        rid = self.bus << 8 | self.device << 3 | self.function
        done = host.bus.dma_write_batch(rid, addrs, datas, 4)
        sent = sum(done)
        stats.sent += sent
        if sent < len(done):
            stats.aborted += len(done) - sent
            for j, good in enumerate(done):
                if not good:
                    out[j if where is None else where[j]] = Delivery.ABORTED
        return out

    def _send(self, addr: int, data: int, vector: int | None = None) -> Delivery:
        host = self.host
        if not self.cfg[COMMAND] & CMD_MASTER or host is None:
            self.stats.blocked += 1
            return Delivery.BLOCKED
        rid = self.bus << 8 | self.device << 3 | self.function
        if trace_msi_send_message.enabled:
            trace_msi_send_message(rid=rid, vector=vector, address=addr, data=data)
        r = host.bus.dma_write(rid, addr, data, 4, on_done=self._count)
        if r.posted:
            return Delivery.POSTED
        return Delivery.SENT if r.ok else Delivery.ABORTED

    def _count(self, r: Any) -> None:
        """A message's write was performed (now, or later when it was posted)."""
        if r.ok:
            self.stats.sent += 1
        else:
            self.stats.aborted += 1


class _BarWindow:
    """The bus's view of one function's BAR."""

    def __init__(self, fn: PciFunction, index: int) -> None:
        self.fn, self.index = fn, index
        #: ``mmio_read(offset, size)`` / ``mmio_write(offset, value, size)``: the
        #: function's bar_read / bar_write with the BAR index bound (no frame of their own)
        self.mmio_read: Callable[[int, int], int] = functools.partial(fn.bar_read, index)
        self.mmio_write: Callable[[int, int, int], None] = functools.partial(fn.bar_write,
                                                                             index)


class PciHost:
    """A PCIe root complex: ECAM configuration window and BAR windows on ``bus``.

    ECAM offset = bus << 20 | device << 15 | function << 12 | register.
    A function's memory BARs appear on the system bus at their programmed
    addresses while its Command.Memory Space bit is set.
    """

    def __init__(self, bus: Bus, ecam_base: int | None = None, ecam_buses: int = 16) -> None:
        self.bus = bus
        self.functions: dict[int, PciFunction] = {}
        self._windows: dict[tuple[int, int], int] = {}
        self.ecam_size = ecam_buses << 20
        if ecam_base is not None:
            bus.map(ecam_base, self.ecam_size, self, "PCIe ECAM")

    def add(self, fn: PciFunction) -> PciFunction:
        """Plug ``fn`` in."""
        if fn.rid in self.functions:
            raise InvalidArgument(f"{fn.bdf} is taken")
        fn.host = self
        self.functions[fn.rid] = fn
        return fn

    def remove(self, fn: PciFunction) -> None:
        """Unplug ``fn``: its BAR windows go and its configuration space reads all ones."""
        if self.functions.get(fn.rid) is not fn:
            raise InvalidArgument(f"{fn.bdf} is not plugged here")
        for key in [k for k in self._windows if k[0] == fn.rid]:
            self.bus.unmap(self._windows.pop(key))
        del self.functions[fn.rid]
        fn.host = None

    def function(self, rid: int) -> PciFunction | None:
        return self.functions.get(rid)

    def mmio_read(self, offset: int, size: int) -> int:
        fn = self.functions.get(offset >> 12)
        if fn is None:
            return (1 << 8 * size) - 1 if size <= 4 else 0      # no device: all ones
        return fn.cfg_read(offset & 0xFFF, size)

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        fn = self.functions.get(offset >> 12)
        if fn is not None:
            fn.cfg_write(offset & 0xFFF, value, size)

    def remap_bars(self, fn: PciFunction) -> None:
        """Put ``fn``'s enabled BARs where they are programmed (and nowhere else)."""
        for key in [k for k in self._windows if k[0] == fn.rid]:
            self.bus.unmap(self._windows.pop(key))
        if not fn.cfg_read(COMMAND, 2) & CMD_MEMORY:
            return
        for index, bar in enumerate(fn.bars):
            addr = fn.bar_address(index)
            if addr is None:
                continue
            try:
                self.bus.map(addr, bar.size, _BarWindow(fn, index), f"{fn.bdf} BAR{index}")
            except (ValueError, OSError):
                continue                      # a BAR over RAM or another BAR does not decode
            self._windows[(fn.rid, index)] = addr

    def __repr__(self) -> str:
        return bounded(f"<PciHost functions=[{','.join(f.bdf for f in self.functions.values())}]>")
