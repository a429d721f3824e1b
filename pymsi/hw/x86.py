"""An x86-style MSI controller: the affinity lives in the message.

Writes to the interrupt address range (0xFEE00000, 1 MiB) are interrupt
messages.  In the compatibility format the address carries the destination
APIC ID (bits [19:12]) and the data the vector (bits [7:0]) and delivery mode
(bits [10:8]), so moving an interrupt to another CPU means writing a new
message into the device.  With the interrupt-remapping unit enabled (modelled
on Intel VT-d: an interrupt remapping table of 128-bit IRTEs at IRTA, switched
on with GCMD.IRE), devices send remappable-format messages (address bit 4)
carrying a handle; destination and vector come from the IRTE, so a move only
rewrites the table entry.  Messages that cannot be delivered are dropped and
recorded as faults; nothing a device writes makes the model raise.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .bits import Field

MSI_BASE, MSI_SIZE = 0xFEE0_0000, 0x10_0000
ADDR_DEST, ADDR_RH, ADDR_DM, ADDR_FORMAT = Field(19, 12), Field(3), Field(2), Field(4)
ADDR_HANDLE_LO, ADDR_SHV, ADDR_HANDLE_HI = Field(19, 5), Field(3), Field(2)
DATA_VECTOR, DATA_DELIVERY, DATA_TRIGGER = Field(7, 0), Field(10, 8), Field(15)
DELIVERY_FIXED, DELIVERY_LOWEST = 0, 1

# Remapping unit registers (VT-d offsets).
GCMD, GSTS, IRTA = 0x18, 0x1C, 0xB8
GCMD_IRE, GCMD_SIRTP, GCMD_CFI = 1 << 25, 1 << 24, 1 << 23
IRTA_ADDR, IRTA_EIME, IRTA_SIZE = Field(63, 12), Field(11), Field(3, 0)
IRTE_PRESENT, IRTE_FPD, IRTE_DM, IRTE_VECTOR, IRTE_DEST = Field(0), Field(1), Field(2), \
    Field(23, 16), Field(63, 32)
IRTE_SID, IRTE_SQ, IRTE_SVT = Field(15, 0), Field(17, 16), Field(19, 18)   # of the high qword
IRTE_MODE = Field(15)


class LocalApic:
    """One CPU's local APIC, as far as fixed MSIs need: IRR, ISR, acknowledge, EOI.

    Priority is the vector's class (vector >> 4); an interrupt is delivered
    when its class is above that of the highest in-service vector.
    """

    def __init__(self, apic_id: int) -> None:
        self.apic_id = apic_id
        self.irr: set[int] = set()
        self.isr: list[int] = []
        self.received = 0

    def accept(self, vector: int) -> None:
        """An interrupt arrives (a second one before it is serviced merges)."""
        self.received += 1
        self.irr.add(vector)

    def ack(self) -> int | None:
        """The CPU takes the highest-priority deliverable vector (None: none)."""
        if not self.irr:
            return None
        vector = max(self.irr)
        if self.isr and vector >> 4 <= self.isr[-1] >> 4:
            return None
        self.irr.discard(vector)
        self.isr.append(vector)
        return vector

    def eoi(self) -> None:
        if self.isr:
            self.isr.pop()


class X86MsiController:
    """The interrupt message window and (optionally used) remapping unit.

    Map the controller at :data:`MSI_BASE` with ``attrs=True`` (it needs the
    requester ID for IRTE source validation), and :attr:`remap_regs` wherever
    the remapping unit's registers live.
    """

    def __init__(self, memory: Any, ncpus: int = 4) -> None:
        self.memory = memory
        self.lapics = [LocalApic(i) for i in range(ncpus)]
        self.gcmd = 0
        self.irta = 0
        self.faults: deque[tuple[str, int | None, int, int]] = deque(maxlen=1024)
        self.stats = {"messages": 0, "delivered": 0, "faults": 0}
        self.remap_regs = _RemapRegisters(self)

    @property
    def remapping(self) -> bool:
        return bool(self.gcmd & GCMD_IRE)

    def mmio_read(self, offset: int, size: int = 4, requester_id: int | None = None) -> int:
        return 0

    def mmio_write(self, offset: int, value: int, size: int = 4,
                   requester_id: int | None = None) -> None:
        """A device's interrupt message: address MSI_BASE + ``offset``, data ``value``."""
        self.stats["messages"] += 1
        addr = MSI_BASE + offset
        if ADDR_FORMAT.get(addr):
            self._remappable(addr, value, requester_id)
        elif self.remapping and not self.gcmd & GCMD_CFI:
            self._fault("compatibility format blocked", requester_id, addr, value)
        else:
            dest, vector = ADDR_DEST.get(addr), DATA_VECTOR.get(value)
            self._deliver(dest, bool(ADDR_DM.get(addr)), vector, DATA_DELIVERY.get(value),
                          requester_id, addr, value)

    def _remappable(self, addr: int, data: int, rid: int | None) -> None:
        if not self.remapping:
            self._fault("remappable format while remapping is off", rid, addr, data)
            return
        index = ADDR_HANDLE_LO.get(addr) | ADDR_HANDLE_HI.get(addr) << 15
        if ADDR_SHV.get(addr):
            index += data & 0xFFFF
        entries = 1 << (IRTA_SIZE.get(self.irta) + 1)
        if index >= entries:
            self._fault("index beyond the table", rid, addr, data)
            return
        base = IRTA_ADDR.get(self.irta) << 12
        try:
            raw = self.memory.read(base + 16 * index, 16)
        except (OSError, ValueError):
            self._fault("IRTE not readable", rid, addr, data)
            return
        lo, hi = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        if not IRTE_PRESENT.get(lo):
            self._fault("IRTE not present", rid, addr, data)
            return
        if IRTE_SVT.get(hi) == 1 and IRTE_SQ.get(hi) == 0 and rid != IRTE_SID.get(hi):
            self._fault("source-id check failed", rid, addr, data)
            return
        dest = IRTE_DEST.get(lo)
        if not IRTA_EIME.get(self.irta):
            dest = (dest >> 8) & 0xFF                  # xAPIC: ID in bits [47:40]
        self._deliver(dest, bool(IRTE_DM.get(lo)), IRTE_VECTOR.get(lo), DELIVERY_FIXED, rid,
                      addr, data)

    def _deliver(self, dest: int, logical: bool, vector: int, mode: int, rid: int | None,
                 addr: int, data: int) -> None:
        if vector < 16 or mode not in (DELIVERY_FIXED, DELIVERY_LOWEST):
            self._fault("illegal vector or delivery mode", rid, addr, data)
            return
        if logical:                                  # flat logical mode: a CPU bitmask
            targets = [a for a in self.lapics if a.apic_id < 8 and dest >> a.apic_id & 1]
            if mode == DELIVERY_LOWEST:
                targets = targets[:1]
        else:
            targets = [a for a in self.lapics if a.apic_id == dest]
        if not targets:
            self._fault("no such destination", rid, addr, data)
            return
        for lapic in targets:
            lapic.accept(vector)
        self.stats["delivered"] += 1

    def _fault(self, why: str, rid: int | None, addr: int, data: int) -> None:
        self.stats["faults"] += 1
        self.faults.append((why, rid, addr, data))


class _RemapRegisters:
    """GCMD / GSTS / IRTA of the remapping unit (VT-d register offsets)."""

    def __init__(self, ctl: X86MsiController) -> None:
        self.ctl = ctl
        self._irta_pending = 0

    def mmio_read(self, offset: int, size: int = 4) -> int:
        if offset == GSTS:
            return self.ctl.gcmd & (GCMD_IRE | GCMD_CFI) | (GCMD_SIRTP if self.ctl.irta else 0)
        if offset == IRTA:
            return self._irta_pending if size == 8 else self._irta_pending & 0xFFFF_FFFF
        return 0

    def mmio_write(self, offset: int, value: int, size: int = 4) -> None:
        if offset == IRTA:
            self._irta_pending = value if size == 8 else (self._irta_pending & ~0xFFFF_FFFF) | value
        elif offset == IRTA + 4:
            self._irta_pending = (self._irta_pending & 0xFFFF_FFFF) | value << 32
        elif offset == GCMD:
            if value & GCMD_SIRTP:                   # latch the table pointer
                self.ctl.irta = self._irta_pending
            self.ctl.gcmd = value & (GCMD_IRE | GCMD_CFI)
