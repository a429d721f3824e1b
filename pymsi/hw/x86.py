"""An x86-style MSI controller: the affinity lives in the message.

Writes to the interrupt address range (0xFEE00000, 1 MiB) are interrupt
messages.  In the compatibility format the address carries the destination
(bits [19:12]: an APIC ID, or in flat logical mode (DM, bit 2) a bitmask of
logical IDs, CPU n having logical ID 1 << n) and the data the vector (bits
[7:0]) and delivery mode (bits [10:8]), so moving an interrupt to another CPU
means writing a new message into the device.

With the interrupt-remapping unit enabled (modelled on Intel VT-d: a table of
128-bit IRTEs at IRTA with 2^(IRTA.S + 1) entries, switched on with GCMD.IRE),
devices send remappable-format messages (address bit 4) carrying a handle
(plus the subhandle in the data when SHV is set: multi-message MSI ORs the
vector number into it); destination mode, redirection hint, delivery mode,
vector and destination come from the IRTE, so a move only rewrites the table
entry.  The unit keeps the IRTEs it used in an interrupt entry cache (IEC) and
goes on using a cached entry until software invalidates it with an IEC
invalidation descriptor through the invalidation queue (IQA / IQH / IQT,
GCMD.QIE; 128-bit descriptors; wait descriptors write a status dword or set
ICS.IWC).  A malformed queue (tail beyond the queue, an unreadable or invalid
descriptor, 256-bit descriptors) sets FSTS.IQE and stops the queue at the bad
descriptor until software clears IQE.

Messages that cannot be delivered are dropped and recorded as faults; nothing
a device or the driver writes makes the model raise.  Each local APIC has an
IRR / ISR and an interrupt command register (ICR) for IPIs between CPUs.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .bits import Field

if TYPE_CHECKING:
    from ..core.common import PhysMemory

MSI_BASE, MSI_SIZE = 0xFEE0_0000, 0x10_0000
ADDR_DEST, ADDR_RH, ADDR_DM, ADDR_FORMAT = Field(19, 12), Field(3), Field(2), Field(4)
ADDR_HANDLE_LO, ADDR_SHV, ADDR_HANDLE_HI = Field(19, 5), Field(3), Field(2)
DATA_VECTOR, DATA_DELIVERY, DATA_TRIGGER = Field(7, 0), Field(10, 8), Field(15)
DATA_SUBHANDLE = Field(15, 0)
DELIVERY_FIXED, DELIVERY_LOWEST = 0, 1

# Local APIC interrupt command register (64-bit view of ICR_LO / ICR_HI, xAPIC).
ICR_VECTOR, ICR_DELIVERY, ICR_DEST_LOGICAL = Field(7, 0), Field(10, 8), Field(11)
ICR_SHORTHAND, ICR_DEST = Field(19, 18), Field(63, 56)
SHORTHAND_NONE, SHORTHAND_SELF, SHORTHAND_ALL, SHORTHAND_OTHERS = 0, 1, 2, 3

# Remapping unit registers (VT-d 10.4 offsets).
VER, CAP, ECAP, GCMD, GSTS = 0x00, 0x08, 0x10, 0x18, 0x1C
FSTS, IQH, IQT, IQA, ICS, IRTA = 0x34, 0x80, 0x88, 0x90, 0x9C, 0xB8
GCMD_QIE, GCMD_IRE, GCMD_SIRTP, GCMD_CFI = 1 << 26, 1 << 25, 1 << 24, 1 << 23
GSTS_QIES, GSTS_IRES, GSTS_IRTPS, GSTS_CFIS = GCMD_QIE, GCMD_IRE, GCMD_SIRTP, GCMD_CFI
FSTS_IQE = 1 << 4                                   # invalidation queue error
ICS_IWC = 1 << 0                                    # invalidation wait descriptor complete
ECAP_QI, ECAP_IR = 1 << 1, 1 << 3
VER_1_0 = 0x10
IRTA_ADDR, IRTA_EIME, IRTA_SIZE = Field(63, 12), Field(11), Field(3, 0)
IQA_ADDR, IQA_DW, IQA_QS = Field(63, 12), Field(11), Field(2, 0)
IQ_QH = IQ_QT = Field(18, 4)                        # index of a 128-bit descriptor

# Interrupt remapping table entry (VT-d 9.10), low and high qwords.
IRTE_PRESENT, IRTE_FPD, IRTE_DM, IRTE_RH = Field(0), Field(1), Field(2), Field(3)
IRTE_TM, IRTE_DLM, IRTE_MODE = Field(4), Field(7, 5), Field(15)
IRTE_VECTOR, IRTE_DEST = Field(23, 16), Field(63, 32)
IRTE_SID, IRTE_SQ, IRTE_SVT = Field(15, 0), Field(17, 16), Field(19, 18)   # of the high qword
IRTE_XAPIC_DEST = Field(47, 40)                     # xAPIC mode: the 8-bit ID in DST[15:8]

# Invalidation descriptors (VT-d 6.5.2), 128-bit form.
QI_TYPE_LO, QI_TYPE_HI = Field(3, 0), Field(11, 9)
QI_CC, QI_IOTLB, QI_DEV_TLB, QI_IEC, QI_WAIT = 0x1, 0x2, 0x3, 0x4, 0x5
QI_IEC_G, QI_IEC_IM, QI_IEC_IIDX = Field(4), Field(31, 27), Field(47, 32)
QI_IEC_RSVD0 = Field(8, 5).mask | Field(26, 12).mask | Field(63, 48).mask
QI_WAIT_IF, QI_WAIT_SW, QI_WAIT_FN, QI_WAIT_PD = Field(4), Field(5), Field(6), Field(7)
QI_WAIT_DATA, QI_WAIT_ADDR = Field(63, 32), Field(63, 2)
QI_WAIT_RSVD0 = Field(8).mask | Field(31, 12).mask
QI_WAIT_RSVD1 = Field(1, 0).mask

FIRST_VECTOR = 16                                  # 0..15 are illegal as interrupt vectors


def qi_type(qw0: int) -> int:
    """The descriptor type: Type[3:0] in bits 3:0, Type[6:4] in bits 11:9."""
    return QI_TYPE_LO.get(qw0) | QI_TYPE_HI.get(qw0) << 4


def iec_descriptor(index: int | None = None, mask: int = 0) -> tuple[int, int]:
    """An interrupt entry cache invalidate descriptor: global (``index`` None) or
    the 2^``mask`` entries from ``index`` (index-selective)."""
    if index is None:
        return QI_IEC, 0
    return QI_IEC | QI_IEC_G(1) | QI_IEC_IM(mask) | QI_IEC_IIDX(index), 0


def wait_descriptor(status_addr: int | None = None, status: int = 1,
                    interrupt_flag: bool = False, fence: bool = False) -> tuple[int, int]:
    """An invalidation wait descriptor: writes ``status`` to ``status_addr`` (SW) and/or
    sets ICS.IWC (IF) once every earlier descriptor has completed."""
    qw0 = QI_WAIT | QI_WAIT_IF(int(interrupt_flag)) | QI_WAIT_FN(int(fence))
    qw1 = 0
    if status_addr is not None:
        qw0 |= QI_WAIT_SW(1) | QI_WAIT_DATA(status)
        qw1 = status_addr & QI_WAIT_ADDR.mask
    return qw0, qw1


class LocalApic:
    """One CPU's local APIC, as far as fixed interrupts need: IRR, ISR, acknowledge,
    EOI, and the ICR through which the CPU sends IPIs.

    Priority is the vector's class (vector >> 4); an interrupt is delivered
    when its class is above that of the highest in-service vector.  The
    logical destination register holds 1 << APIC ID (flat model) for IDs < 8.
    """

    def __init__(self, apic_id: int, system: X86MsiController | None = None) -> None:
        self.apic_id = apic_id
        self.system = system
        self.irr: set[int] = set()
        self.isr: list[int] = []
        self.received = 0

    @property
    def logical_id(self) -> int:
        """The flat-model logical ID (LDR[31:24]); 0 (no logical destination) from ID 8."""
        return 1 << self.apic_id if self.apic_id < 8 else 0

    def accept(self, vector: int) -> None:
        """An interrupt arrives (a second one before it is serviced merges)."""
        self.received += 1
        self.irr.add(vector)

    def irr_pending(self, vector: int) -> bool:
        """Whether ``vector``'s bit is set in the IRR (a read of APIC_IRR)."""
        return vector in self.irr

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

    def write_icr(self, icr: int) -> None:
        """A write of the ICR (high half first, as the low half sends): an IPI."""
        if self.system is not None:
            self.system.send_ipi(self, icr)


class X86MsiController:
    """The interrupt message window, the local APICs and the remapping unit.

    Map the controller at :data:`MSI_BASE` with ``attrs=True`` (it needs the
    requester ID for IRTE source validation), and :attr:`remap_regs` wherever
    the remapping unit's registers live.
    """

    def __init__(self, memory: PhysMemory, ncpus: int = 4) -> None:
        self.memory = memory
        self.lapics = [LocalApic(i, self) for i in range(ncpus)]
        self.gcmd = 0
        self.irta = 0
        self.iec: dict[int, tuple[int, int]] = {}       # interrupt entry cache: index -> IRTE
        self.faults: deque[tuple[str, int | None, int, int]] = deque(maxlen=1024)
        self.stats = {"messages": 0, "delivered": 0, "faults": 0, "ipis": 0,
                      "iec_hits": 0, "iec_invalidations": 0, "qi_descriptors": 0,
                      "qi_errors": 0}
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
            self._deliver(dest, bool(ADDR_DM.get(addr)), bool(ADDR_RH.get(addr)), vector,
                          DATA_DELIVERY.get(value), requester_id, addr, value)

    def send_ipi(self, src: LocalApic, icr: int) -> None:
        """An IPI written to ``src``'s ICR (fixed delivery; physical or flat logical)."""
        vector, shorthand = ICR_VECTOR.get(icr), ICR_SHORTHAND.get(icr)
        if vector < FIRST_VECTOR or ICR_DELIVERY.get(icr) != DELIVERY_FIXED:
            self._fault("illegal IPI", None, icr >> 32, icr & 0xFFFF_FFFF)
            return
        if shorthand == SHORTHAND_SELF:
            targets = [src]
        elif shorthand == SHORTHAND_ALL:
            targets = list(self.lapics)
        elif shorthand == SHORTHAND_OTHERS:
            targets = [a for a in self.lapics if a is not src]
        else:
            targets = self._targets(ICR_DEST.get(icr), bool(ICR_DEST_LOGICAL.get(icr)))
        self.stats["ipis"] += 1
        for lapic in targets:
            lapic.accept(vector)

    def _irte(self, index: int, rid: int | None, addr: int, data: int
              ) -> tuple[int, int] | None:
        """The IRTE at ``index``: from the IEC, else read from the table (and cached)."""
        cached = self.iec.get(index)
        if cached is not None:
            self.stats["iec_hits"] += 1
            return cached
        base = IRTA_ADDR.get(self.irta) << 12
        try:
            raw = self.memory.read(base + 16 * index, 16)
        except (OSError, ValueError, OverflowError):
            self._fault("IRTE not readable", rid, addr, data)
            return None
        lo, hi = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
        if IRTE_PRESENT.get(lo):
            self.iec[index] = (lo, hi)                  # only present entries are cached
        return lo, hi

    def _remappable(self, addr: int, data: int, rid: int | None) -> None:
        if not self.remapping:
            self._fault("remappable format while remapping is off", rid, addr, data)
            return
        index = ADDR_HANDLE_LO.get(addr) | ADDR_HANDLE_HI.get(addr) << 15
        if ADDR_SHV.get(addr):
            index += DATA_SUBHANDLE.get(data)
        entries = 1 << (IRTA_SIZE.get(self.irta) + 1)
        if index >= entries:
            self._fault("index beyond the table", rid, addr, data)
            return
        irte = self._irte(index, rid, addr, data)
        if irte is None:
            return
        lo, hi = irte
        if not IRTE_PRESENT.get(lo):
            self._fault("IRTE not present", rid, addr, data)
            return
        if IRTE_MODE.get(lo):
            self._fault("posted IRTE (not supported)", rid, addr, data)
            return
        if IRTE_SVT.get(hi) == 1 and IRTE_SQ.get(hi) == 0 and rid != IRTE_SID.get(hi):
            self._fault("source-id check failed", rid, addr, data)
            return
        dest = IRTE_DEST.get(lo)
        if not IRTA_EIME.get(self.irta):
            dest = IRTE_XAPIC_DEST.get(lo)
        self._deliver(dest, bool(IRTE_DM.get(lo)), bool(IRTE_RH.get(lo)), IRTE_VECTOR.get(lo),
                      IRTE_DLM.get(lo), rid, addr, data)

    def _targets(self, dest: int, logical: bool) -> list[LocalApic]:
        if logical:                                  # flat logical mode: a CPU bitmask
            return [a for a in self.lapics if dest & a.logical_id]
        return [a for a in self.lapics if a.apic_id == dest]

    def _deliver(self, dest: int, logical: bool, hint: bool, vector: int, mode: int,
                 rid: int | None, addr: int, data: int) -> None:
        if vector < FIRST_VECTOR or mode not in (DELIVERY_FIXED, DELIVERY_LOWEST):
            self._fault("illegal vector or delivery mode", rid, addr, data)
            return
        targets = self._targets(dest, logical)
        if logical and (mode == DELIVERY_LOWEST or hint):
            targets = targets[:1]                    # one of the set (lowest priority)
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
    """The remapping unit's registers (VT-d offsets): VER / CAP / ECAP, GCMD / GSTS,
    FSTS, the invalidation queue (IQH / IQT / IQA / ICS) and IRTA."""

    def __init__(self, ctl: X86MsiController) -> None:
        self.ctl = ctl
        self._irta_pending = 0
        self.fsts = 0
        self.iqh = self.iqt = self.iqa = 0
        self.ics = 0
        self.qi_error: str | None = None              # why IQE was last set

    # -- registers -----------------------------------------------------------------

    def _gsts(self) -> int:
        return (self.ctl.gcmd & (GCMD_IRE | GCMD_CFI | GCMD_QIE)
                | (GSTS_IRTPS if self.ctl.irta else 0))

    def _reg64(self, offset: int) -> tuple[int, int] | None:
        """(register base, value) of the 64-bit register ``offset`` falls in."""
        regs = {CAP: 0, ECAP: ECAP_QI | ECAP_IR, IQH: self.iqh, IQT: self.iqt, IQA: self.iqa,
                IRTA: self._irta_pending}
        base = offset & ~7
        return (base, regs[base]) if base in regs else None

    def mmio_read(self, offset: int, size: int = 4) -> int:
        if offset == VER:
            return VER_1_0
        if offset == GSTS:
            return self._gsts()
        if offset == FSTS:
            return self.fsts
        if offset == ICS:
            return self.ics
        reg = self._reg64(offset)
        if reg is None:
            return 0
        value = reg[1] >> (8 * (offset & 7))
        return value & ((1 << (8 * min(size, 8))) - 1)

    def mmio_write(self, offset: int, value: int, size: int = 4) -> None:
        value &= (1 << (8 * min(max(size, 1), 8))) - 1
        if offset == GCMD:
            self._gcmd(value)
        elif offset == FSTS:
            if value & FSTS_IQE and self.fsts & FSTS_IQE:   # RW1C: software recovered
                self.fsts &= ~FSTS_IQE
                self.qi_error = None
                self._run_queue()
        elif offset == ICS:
            self.ics &= ~(value & ICS_IWC)
        elif offset & ~7 in (IRTA, IQA, IQT):
            self._write64(offset, value, size)

    def _write64(self, offset: int, value: int, size: int) -> None:
        base = offset & ~7
        old = {IRTA: self._irta_pending, IQA: self.iqa, IQT: self.iqt}[base]
        if size >= 8 and offset == base:
            new = value
        else:
            shift = 8 * (offset & 7)
            width = (1 << (8 * min(size, 8 - (offset & 7)))) - 1
            new = (old & ~(width << shift)) | (value & width) << shift
        new &= (1 << 64) - 1
        if base == IRTA:
            self._irta_pending = new
        elif base == IQA:
            self.iqa = new & (IQA_ADDR.mask | IQA_DW.mask | IQA_QS.mask)
        else:
            self.iqt = new & IQ_QT.mask
            self._run_queue()

    def _gcmd(self, value: int) -> None:
        ctl = self.ctl
        if value & GCMD_SIRTP:                   # latch the table pointer (one-shot)
            ctl.irta = self._irta_pending
        was_qi = ctl.gcmd & GCMD_QIE
        ctl.gcmd = value & (GCMD_IRE | GCMD_CFI | GCMD_QIE)
        if was_qi and not ctl.gcmd & GCMD_QIE:
            self.iqh = 0                         # disabling the queue resets its head
        elif ctl.gcmd & GCMD_QIE and not was_qi:
            self._run_queue()

    # -- the invalidation queue ------------------------------------------------------

    def _error(self, why: str) -> None:
        """Invalidation queue error: FSTS.IQE, IQH left at the offending descriptor."""
        self.fsts |= FSTS_IQE
        self.qi_error = why
        self.ctl.stats["qi_errors"] += 1

    def _run_queue(self) -> None:
        """Fetch and execute descriptors from IQH up to IQT (in order, each once)."""
        if not self.ctl.gcmd & GCMD_QIE or self.fsts & FSTS_IQE:
            return
        if IQA_DW.get(self.iqa):
            self._error("256-bit descriptors are not supported")
            return
        size = 1 << (IQA_QS.get(self.iqa) + 8)
        tail = IQ_QT.get(self.iqt)
        if tail >= size:
            self._error("tail beyond the queue")
            return
        base = IQA_ADDR.get(self.iqa) << 12
        head = IQ_QH.get(self.iqh)
        for _ in range(size):
            if head == tail:
                break
            try:
                raw = self.ctl.memory.read(base + 16 * head, 16)
            except (OSError, ValueError, OverflowError):
                self._error("descriptor not readable")
                return
            why = self._execute(int.from_bytes(raw[:8], "little"),
                                int.from_bytes(raw[8:], "little"))
            if why is not None:
                self._error(why)
                return
            head = (head + 1) % size
            self.iqh = IQ_QH(head)

    def _execute(self, qw0: int, qw1: int) -> str | None:
        """Run one descriptor; the reason it is invalid, or None."""
        ctl = self.ctl
        kind = qi_type(qw0)
        ctl.stats["qi_descriptors"] += 1
        if kind in (QI_CC, QI_IOTLB, QI_DEV_TLB):
            return None                          # no DMA remapping caches in this model
        if kind == QI_IEC:
            if qw0 & QI_IEC_RSVD0 or qw1:
                return "reserved field set in an IEC descriptor"
            ctl.stats["iec_invalidations"] += 1
            if not QI_IEC_G.get(qw0):
                ctl.iec.clear()
            else:
                count = 1 << QI_IEC_IM.get(qw0)
                first = QI_IEC_IIDX.get(qw0) & ~(count - 1)
                for index in [i for i in ctl.iec if first <= i < first + count]:
                    del ctl.iec[index]
            return None
        if kind == QI_WAIT:
            if qw0 & QI_WAIT_RSVD0 or qw1 & QI_WAIT_RSVD1:
                return "reserved field set in a wait descriptor"
            if QI_WAIT_SW.get(qw0):
                addr = QI_WAIT_ADDR.get(qw1) << 2
                data = QI_WAIT_DATA.get(qw0).to_bytes(4, "little")
                if ctl.memory.is_ram(addr, 4):    # a status write elsewhere goes nowhere
                    ctl.memory.write(addr, data)
            if QI_WAIT_IF.get(qw0):
                self.ics |= ICS_IWC
            return None
        return f"invalid descriptor type {kind:#x}"
