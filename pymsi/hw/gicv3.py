"""A GICv3 (optionally GICv4) interrupt controller, as much as LPIs need.

The distributor (GICD) says what the GIC supports; each CPU has a
redistributor (GICR) whose LPI configuration table (GICR_PROPBASER: one byte
per LPI, bit 0 enable, bits [7:2] priority) and pending table
(GICR_PENDBASER: one bit per INTID, the first 1 KiB reserved) live in memory,
and a CPU interface whose ICC_IAR1 / ICC_EOIR1 acknowledge and end interrupts.
LPIs are set pending by an ITS; a disabled LPI stays pending and is only
signalled once enabled.  Like hardware, a redistributor caches LPI
configuration: a changed property byte is seen after an INV / INVALL (ITS
command or GICR_INVLPIR / GICR_INVALLR), or when LPIs are enabled.

With GICv4 each redistributor also has a VLPI frame (GICR_VPROPBASER /
GICR_VPENDBASER): writing VPENDBASER with Valid makes a vPE resident there, and
the virtual CPU interface (:meth:`CpuInterface.vcpu_iar1`) acknowledges its
pending vLPIs from its virtual pending table.

The model is a single security state (GICD_CTLR.DS = 1): LPIs are Group 1
and an LPI's priority is its property byte & 0xFC; lower values are higher
priorities, and ties go to the lower INTID.
"""

from __future__ import annotations

import array
import heapq
from collections.abc import Collection
from typing import TYPE_CHECKING

from .. import trace
from ..core.gic_formats import LPI_BASE as LPI_BASE  # defined once, re-exported
from ..core.gic_formats import SPURIOUS as SPURIOUS
from ..errors import InvalidArgument
from .bits import Field, merge_access

if TYPE_CHECKING:
    from ..core.common import PhysMemory

# GICD
GICD_CTLR, GICD_TYPER, GICD_IIDR, GICD_PIDR2 = 0x0000, 0x0004, 0x0008, 0xFFE8
GICD_CTLR_DS, GICD_CTLR_ARE, GICD_CTLR_ENABLE_G1 = 1 << 6, 1 << 4, 1 << 1
GICD_TYPER_IDBITS, GICD_TYPER_LPIS, GICD_TYPER_CPUNUMBER = Field(23, 19), Field(17), Field(7, 5)
# GICR: RD_base frame
GICR_CTLR, GICR_IIDR, GICR_TYPER, GICR_WAKER = 0x00, 0x04, 0x08, 0x14
GICR_PROPBASER, GICR_PENDBASER = 0x70, 0x78
GICR_INVLPIR, GICR_INVALLR, GICR_SYNCR, GICR_PIDR2 = 0xA0, 0xB0, 0xC0, 0xFFE8
GICR_CTLR_ENABLE_LPIS = 1 << 0
GICR_TYPER_PLPIS, GICR_TYPER_VLPIS, GICR_TYPER_LAST = Field(0), Field(1), Field(4)
GICR_TYPER_PROCESSOR_NUMBER, GICR_TYPER_AFFINITY = Field(23, 8), Field(63, 32)
GICR_WAKER_PROCESSOR_SLEEP, GICR_WAKER_CHILDREN_ASLEEP = 1 << 1, 1 << 2
PROPBASER_IDBITS, PROPBASER_PA = Field(4, 0), Field(51, 12)
PENDBASER_PA, PENDBASER_PTZ = Field(51, 16), Field(62)
# GICR: VLPI_base frame (GICv4), at RD_base + 0x20000
VLPI_FRAME = 0x20000
GICR_VPROPBASER, GICR_VPENDBASER = 0x70, 0x78
VPROPBASER_IDBITS, VPROPBASER_PA = Field(4, 0), Field(51, 12)
VPENDBASER_PA, VPENDBASER_VALID = Field(51, 16), Field(63)
GICV3_FRAME, GICV4_FRAME = 0x20000, 0x40000
PRIORITY_MASK = 0xFC
_PENDBASER_PA_MASK = PENDBASER_PA.mask          # the table address, already shifted into place
_BIT_READ, _BIT_SET, _BIT_CLEAR = 0, 1, 2        # the ops of Memory.bit_updater


# Tracepoints named after QEMU's redistributor functions (hw/intc/arm_gicv3_redist.c).
trace_gicv3_redist_process_lpi = trace.Tracepoint(
    "gicv3_redist_process_lpi", "cpu", "irq", "level",
    doc="an LPI made pending (level 1) on the redistributor of cpu; dropped is level -1")
trace_gicv3_redist_process_vlpi = trace.Tracepoint(
    "gicv3_redist_process_vlpi", "cpu", "irq", "vptaddr", "doorbell", "level",
    doc="a vLPI made pending in the vPE pending table at vptaddr (doorbell raised if not "
        "resident on cpu)")


_VPENDBASER_VALID_MASK = VPENDBASER_VALID.mask
_VPENDBASER_PA_MASK, _VPENDBASER_PA_LO = VPENDBASER_PA.mask, VPENDBASER_PA.lo


class Redistributor:
    """One CPU's redistributor: LPI tables in memory, pending state, config cache."""

    def __init__(self, gic: Gicv3, cpu: int) -> None:
        self.gic, self.cpu = gic, cpu
        self.ctlr = 0
        self.propbaser = 0
        self.pendbaser = 0
        self.waker = GICR_WAKER_PROCESSOR_SLEEP | GICR_WAKER_CHILDREN_ASLEEP
        self.pending: set[int] = set()
        self._config: dict[int, int] = {}      # cached property bytes
        # Acknowledge order without scanning: a heap of (priority, INTID) of enabled pending
        # LPIs with lazy deletion.  _keyed holds the key each INTID was last pushed with (an
        # entry is live while the INTID is pending and its key is still that one); _fresh the
        # pending INTIDs not yet keyed (their property byte is read, through the config cache,
        # at the next highest_pending, as the scan did); _rekey_all forces a rebuild after
        # INVALL or a table change.
        self._heap: list[tuple[int, int]] = []
        self._keyed: dict[int, int] = {}
        self._fresh: set[int] = set()
        self._rekey_all = True
        #: 1 << id_bits while LPIs are enabled, else 0: an INTID below it (and >= 8192)
        #: can be made pending (PROPBASER is fixed while LPIs are enabled)
        self._lpi_limit = 0
        self.vpropbaser = 0
        self.vpendbaser = 0
        self._vdecoded: tuple[int, int, int | None, int, int] = (-1, -1, None, 0, 0)
        self.stats = {"lpis_set": 0, "lpis_dropped": 0, "vlpis_set": 0, "doorbells": 0,
                      "vpe_loads_over_valid": 0}

    @property
    def lpis_enabled(self) -> bool:
        return bool(self.ctlr & GICR_CTLR_ENABLE_LPIS)

    @property
    def id_bits(self) -> int:
        """INTID bits the LPI tables cover (PROPBASER.IDbits + 1, at most the GIC's)."""
        return min(PROPBASER_IDBITS.get(self.propbaser) + 1, self.gic.id_bits)

    def lpi_in_range(self, intid: int) -> bool:
        return LPI_BASE <= intid < 1 << self.id_bits

    # -- LPI state, as the ITS drives it ---------------------------------------

    def set_pending(self, intid: int) -> bool:
        """Make LPI ``intid`` pending here; False if it was dropped."""
        # (the hot path of every MSI: lpis_enabled, lpi_in_range and the pending table
        # address computed inline)
        if not LPI_BASE <= intid < self._lpi_limit:
            self.stats["lpis_dropped"] += 1
            if trace_gicv3_redist_process_lpi.enabled:
                trace_gicv3_redist_process_lpi(cpu=self.cpu, irq=intid, level=-1)
            return False
        self.stats["lpis_set"] += 1
        if trace_gicv3_redist_process_lpi.enabled:
            trace_gicv3_redist_process_lpi(cpu=self.cpu, irq=intid, level=1)
        pending = self.pending
        if intid not in pending:
            gic = self.gic
            pending.add(intid)
            self._fresh.add(intid)
            bit = gic._bit
            if bit is None or bit((self.pendbaser & _PENDBASER_PA_MASK) + (intid >> 3),
                                  intid & 7, _BIT_SET) < 0:
                gic.pending_bit(self.pendbaser & _PENDBASER_PA_MASK, intid, True)
        return True

    def set_pending_batch(self, intids: Collection[int]) -> None:
        """:meth:`set_pending` of each of ``intids`` (all in range, LPIs enabled, no
        tracing: the caller checked), their new pending bits set by one core call."""
        new = self._take_pending(intids)
        if new:
            gic = self.gic
            n = len(new)
            old = array.array("i", bytes(4 * n))
            table = self.pendbaser & _PENDBASER_PA_MASK
            # set_pending_batch is used only when the GIC has _pending_batch
            ok = gic._pending_batch(gic.memory,  # type: ignore[misc]
                                    array.array("Q", [table]) * n, array.array("I", new), old)
            if ok < n:
                gic.stats["table_errors"] += n - ok

    def _take_pending(self, intids: Collection[int]) -> set[int]:
        """The state side of :meth:`set_pending_batch`: counted, made pending; returns the
        INTIDs that were not pending (whose bits the caller sets)."""
        self.stats["lpis_set"] += len(intids)
        new = set(intids)
        new -= self.pending
        if new:
            self.pending |= new
            self._fresh |= new
        return new

    def clear_pending(self, intid: int) -> bool:
        """Make LPI ``intid`` not pending; True if it was pending."""
        pending = self.pending
        if intid not in pending:
            return False
        pending.discard(intid)
        gic = self.gic
        bit = gic._bit
        if bit is None or bit((self.pendbaser & _PENDBASER_PA_MASK) + (intid >> 3),
                              intid & 7, _BIT_CLEAR) < 0:
            gic.pending_bit(self.pendbaser & _PENDBASER_PA_MASK, intid, False)
        return True

    def _write_pending_bit(self, intid: int, value: bool) -> None:
        self.gic.pending_bit(self.pendbaser & _PENDBASER_PA_MASK, intid, value)

    def config(self, intid: int) -> int:
        """The (cached) property byte of ``intid``; 0 (disabled) if unreadable."""
        cfg = self._config.get(intid)
        if cfg is None:
            addr = (PROPBASER_PA.get(self.propbaser) << 12) + intid - LPI_BASE
            try:
                cfg = self.gic.memory.read(addr, 1)[0]
            except (OSError, ValueError):
                self.gic.stats["table_errors"] += 1
                cfg = 0
            self._config[intid] = cfg
        return cfg

    def invalidate(self, intid: int | None = None) -> None:
        """Drop cached configuration: one LPI (INV) or all of them (INVALL)."""
        if intid is None:
            self._config.clear()
            self._rekey_all = True
        else:
            self._config.pop(intid, None)
            self._fresh.add(intid)

    def highest_pending(self, below: int = 0x100) -> tuple[int, int] | None:
        """(priority, INTID) of the best enabled pending LPI with priority < ``below``."""
        pending, keyed, heap = self.pending, self._keyed, self._heap
        if self._rekey_all:
            self._rekey_all = False
            heap.clear()
            keyed.clear()
            self._fresh = set(pending)
        if self._fresh:
            config = self._config
            for intid in self._fresh:
                if intid not in pending:
                    continue
                cfg = config.get(intid)
                if cfg is None:
                    cfg = self.config(intid)
                prio = cfg & PRIORITY_MASK if cfg & 1 else None
                if keyed.get(intid, -1) != prio:
                    if prio is None:
                        keyed.pop(intid, None)
                    else:
                        keyed[intid] = prio
                        heapq.heappush(heap, (prio, intid))
            self._fresh.clear()
        while heap:
            prio, intid = top = heap[0]
            if intid in pending and keyed.get(intid) == prio:
                return top if prio < below else None
            heapq.heappop(heap)
            if intid not in pending and keyed.get(intid) == prio:
                del keyed[intid]
        return None

    # -- GICv4: vLPIs ----------------------------------------------------------

    @property
    def resident_vpt(self) -> int | None:
        """The virtual pending table of the vPE resident here, if any."""
        v = self.vpendbaser
        if not v & _VPENDBASER_VALID_MASK:
            return None
        return (v & _VPENDBASER_PA_MASK) >> _VPENDBASER_PA_LO << 16

    def set_vlpi_pending(self, vpt: int, vpt_bits: int, vintid: int, doorbell: int) -> bool:
        """Make vLPI ``vintid`` of the vPE whose pending table is ``vpt`` pending.

        The bit is set in the vPE's table; if the vPE is not resident here the
        doorbell LPI (unless 1023) is raised instead.
        """
        if not LPI_BASE <= vintid < 1 << vpt_bits:
            self.stats["lpis_dropped"] += 1
            return False
        if self.gic.pending_bit(vpt, vintid, True) is None:
            return False
        self.stats["vlpis_set"] += 1
        if trace_gicv3_redist_process_vlpi.enabled:
            trace_gicv3_redist_process_vlpi(cpu=self.cpu, irq=vintid, vptaddr=vpt,
                                            doorbell=doorbell, level=1)
        if self.resident_vpt != vpt and doorbell != SPURIOUS:
            self.stats["doorbells"] += 1
            self.set_pending(doorbell)
        return True

    def clear_vlpi_pending(self, vpt: int, vintid: int) -> bool:
        """Clear vLPI ``vintid`` in the vPE's pending table; True if it was pending."""
        return bool(self.gic.pending_bit(vpt, vintid, False))

    def _vdecode(self) -> tuple[int, int, int | None, int, int]:
        """(VPENDBASER, VPROPBASER, the resident table, its INTID bits, the property
        table) as last decoded: highest_vpending decodes again when a register changed."""
        self._vdecoded = (self.vpendbaser, self.vpropbaser, self.resident_vpt,
                          min(VPROPBASER_IDBITS.get(self.vpropbaser) + 1, self.gic.id_bits),
                          VPROPBASER_PA.get(self.vpropbaser) << 12)
        return self._vdecoded

    def highest_vpending(self, below: int = 0x100) -> tuple[int, int] | None:
        """(priority, vINTID) of the resident vPE's best enabled pending vLPI.

        The pending vINTIDs come from the GIC's copy of the resident table
        (:meth:`Gicv3.vpending`: read from memory once per residency, then kept up to date
        where the table is written); each one's property byte is read from memory."""
        vc = self._vdecoded
        if vc[0] != self.vpendbaser or vc[1] != self.vpropbaser:
            vc = self._vdecode()
        vpt = vc[2]
        if vpt is None:
            return None
        gic = self.gic
        bits = vc[3]
        got = gic._vpend.get(vpt)
        pend = got[1] if got is not None and got[0] >= bits else gic.vpending(vpt, bits)
        if not pend:
            return None
        vprop = vc[4]
        mem = gic.memory
        top = 1 << bits
        best = None
        for vintid in pend:
            if not LPI_BASE <= vintid < top:
                continue
            try:
                cfg = mem.read(vprop + vintid - LPI_BASE, 1)[0]
            except (OSError, ValueError):
                continue
            key = (cfg & PRIORITY_MASK, vintid)
            if cfg & 1 and key[0] < below and (best is None or key < best):
                best = key
        return best

    # -- registers -------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if offset >= VLPI_FRAME and self.gic.gicv4:
            off = offset - VLPI_FRAME
            value = {GICR_VPROPBASER: self.vpropbaser,
                     GICR_VPENDBASER: self.vpendbaser}.get(off & ~7, 0)
            return value if size == 8 else (value >> (8 * (off & 4))) & 0xFFFF_FFFF
        typer = (GICR_TYPER_PLPIS(1) | GICR_TYPER_VLPIS(int(self.gic.gicv4))
                 | GICR_TYPER_LAST(int(self.cpu == len(self.gic.redists) - 1))
                 | GICR_TYPER_PROCESSOR_NUMBER(self.cpu) | GICR_TYPER_AFFINITY(self.cpu))
        regs64 = {GICR_TYPER: typer, GICR_PROPBASER: self.propbaser,
                  GICR_PENDBASER: self.pendbaser}
        if offset & ~7 in regs64:
            value = regs64[offset & ~7]
            return value if size == 8 else (value >> (8 * (offset & 4))) & 0xFFFF_FFFF
        return {GICR_CTLR: self.ctlr, GICR_IIDR: 0x43B, GICR_WAKER: self.waker,
                GICR_SYNCR: 0, GICR_PIDR2: (4 if self.gic.gicv4 else 3) << 4}.get(offset, 0)

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        if offset >= VLPI_FRAME and self.gic.gicv4:
            off = offset - VLPI_FRAME
            reg = off & ~7
            if reg in (GICR_VPROPBASER, GICR_VPENDBASER):
                old = getattr(self, "vpropbaser" if reg == GICR_VPROPBASER else "vpendbaser")
                new = merge_access(old, off & 4, value, size)
                if reg == GICR_VPENDBASER and VPENDBASER_VALID.get(old) and \
                        VPENDBASER_VALID.get(new):
                    # GICv4: loading a vPE over a resident one (Valid already set) is
                    # UNPREDICTABLE; the model takes the new value and counts it
                    self.stats["vpe_loads_over_valid"] += 1
                setattr(self, "vpropbaser" if reg == GICR_VPROPBASER else "vpendbaser", new)
                if reg == GICR_VPENDBASER:     # a residency starts or ends: the table is
                    vp = self.gic._vpend       # read afresh at the next look
                    vp.pop(VPENDBASER_PA.get(old) << 16, None)
                    vp.pop(VPENDBASER_PA.get(new) << 16, None)
            return
        reg = offset & ~7
        if reg in (GICR_PROPBASER, GICR_PENDBASER):
            if self.lpis_enabled:
                return                         # fixed while LPIs are enabled
            name = "propbaser" if reg == GICR_PROPBASER else "pendbaser"
            setattr(self, name, merge_access(getattr(self, name), offset & 4, value, size))
        elif offset == GICR_CTLR:
            if value & GICR_CTLR_ENABLE_LPIS and not self.lpis_enabled:
                self.ctlr |= GICR_CTLR_ENABLE_LPIS
                self._enable_lpis()
            elif not value & GICR_CTLR_ENABLE_LPIS and self.lpis_enabled:
                self.ctlr &= ~GICR_CTLR_ENABLE_LPIS
                self._lpi_limit = 0
                self._routed()
                self.pending.clear()            # state stays in the table in memory
                self._config.clear()
                self._rekey_all = True
        elif offset == GICR_WAKER:
            sleep = value & GICR_WAKER_PROCESSOR_SLEEP
            self.waker = sleep | (GICR_WAKER_CHILDREN_ASLEEP if sleep else 0)
        elif reg == GICR_INVLPIR:
            self.invalidate(value & 0xFFFF_FFFF)
        elif reg == GICR_INVALLR:
            self.invalidate()

    def _routed(self) -> None:
        """Tell the GIC's per-processor arrays that MSI routes read (see Gicv3) this
        redistributor's LPI limit (an exact Redistributor's only: a subclass takes the
        full path) and pending table; called wherever the limit changes (PENDBASER is
        fixed while LPIs are enabled)."""
        gic = self.gic
        gic._fire_limits[self.cpu] = self._lpi_limit if type(self) is Redistributor else 0
        gic._fire_tables[self.cpu] = self.pendbaser & _PENDBASER_PA_MASK

    def _enable_lpis(self) -> None:
        """Start using the tables: load pending state unless PTZ says it is zero."""
        self._config.clear()
        self.pending.clear()
        self._rekey_all = True
        self._lpi_limit = 1 << self.id_bits
        self._routed()
        if PENDBASER_PTZ.get(self.pendbaser):
            return
        base = PENDBASER_PA.get(self.pendbaser) << 16
        nbytes = (1 << self.id_bits) // 8 - LPI_BASE // 8
        try:
            table = int.from_bytes(self.gic.memory.read(base + LPI_BASE // 8, nbytes), "little")
        except (OSError, ValueError):
            self.gic.stats["table_errors"] += 1
            return
        while table:
            low = table & -table
            self.pending.add(LPI_BASE + low.bit_length() - 1)
            table ^= low

    def __repr__(self) -> str:
        return (f"<Redistributor cpu={self.cpu} lpis={int(self.lpis_enabled)} "
                f"propbaser={self.propbaser:#x} pendbaser={self.pendbaser:#x} "
                f"pending={len(self.pending)}>")


class CpuInterface:
    """One CPU's GIC CPU interface (the ICC_* system registers) for Group 1.

    ``pmr`` (ICC_PMR_EL1) masks priorities at or above it and resets to 0
    (everything masked); ``igrpen1`` (ICC_IGRPEN1_EL1) enables Group 1.  The
    virtual interface (ICV_*) serves the vPE resident on this CPU.
    """

    def __init__(self, gic: Gicv3, cpu: int) -> None:
        self.gic, self.cpu = gic, cpu
        self._rd = gic.redists[cpu]            # this CPU's redistributor
        self.pmr = 0
        self.igrpen1 = 0
        self.active: list[int] = []            # active priorities, innermost last
        self.vactive: list[int] = []
        #: ICH_VMCR_EL2.VPMR: the running vCPU's priority mask, which the hypervisor loads
        #: (0x100: nothing masked, the model's value until one is loaded)
        self.vpmr = 0x100
        self.stats = {"acks": 0, "spurious": 0, "eois": 0, "bad_eois": 0}

    @property
    def running_priority(self) -> int:
        return self.active[-1] if self.active else 0x100

    def hppir1(self) -> int:
        """ICC_HPPIR1_EL1: the INTID that an acknowledge would return now."""
        best = self._candidate()
        return SPURIOUS if best is None else best[1]

    def _candidate(self) -> tuple[int, int] | None:
        if not self.igrpen1:
            return None
        rd = self.gic.redists[self.cpu]
        if not rd.pending:                     # the common case: nothing to look at
            return None
        below = self.pmr if self.pmr < 0x100 else 0x100
        active = self.active
        if active and active[-1] < below:
            below = active[-1]
        return rd.highest_pending(below)

    @property
    def irq_pending(self) -> bool:
        """Whether the CPU's IRQ line is asserted."""
        return self._candidate() is not None

    def iar1(self) -> int:
        """ICC_IAR1_EL1: acknowledge the highest-priority pending LPI (1023: none)."""
        # _candidate and the redistributor's clear_pending, inline (once per interrupt)
        rd = self._rd
        pending = rd.pending
        if self.igrpen1 and pending:
            below = self.pmr if self.pmr < 0x100 else 0x100
            active = self.active
            if active and active[-1] < below:
                below = active[-1]
            if len(pending) == 1 and not rd._rekey_all:
                # One LPI pending: it is the candidate if enabled and above the mask (what
                # highest_pending would answer, without keying it into the heap; a heap
                # entry it may have is dropped lazily once it is no longer pending)
                (intid,) = pending
                cfg = rd._config.get(intid)
                if cfg is None:
                    cfg = rd.config(intid)
                best = (cfg & PRIORITY_MASK, intid) if cfg & 1 and \
                    cfg & PRIORITY_MASK < below else None
            else:
                best = rd.highest_pending(below)
            if best is not None:
                prio, intid = best
                if type(rd) is Redistributor:             # clear_pending, inline
                    pending.discard(intid)                # (LPIs have no active state)
                    gic = rd.gic
                    bit = gic._bit
                    if bit is None or bit((rd.pendbaser & _PENDBASER_PA_MASK) + (intid >> 3),
                                          intid & 7, _BIT_CLEAR) < 0:
                        gic.pending_bit(rd.pendbaser & _PENDBASER_PA_MASK, intid, False)
                else:
                    rd.clear_pending(intid)
                active.append(prio)
                self.stats["acks"] += 1
                return intid
        self.stats["spurious"] += 1
        return SPURIOUS

    def eoir1(self, intid: int) -> None:
        """ICC_EOIR1_EL1: priority drop (and deactivation) for ``intid``."""
        if not self.active or intid in (SPURIOUS, 1022, 1021, 1020):
            self.stats["bad_eois"] += 1
            return
        self.active.pop()
        self.stats["eois"] += 1

    # -- the virtual CPU interface (GICv4 direct injection) -----------------------

    def _vbelow(self) -> int:
        return min(self.vpmr, self.vactive[-1] if self.vactive else 0x100)

    def vcpu_iar1(self) -> int:
        """ICV_IAR1_EL1 of the resident vPE: acknowledge its best pending vLPI above
        the virtual priority mask and the running priority."""
        rd = self.gic.redists[self.cpu]
        va = self.vactive
        top = va[-1] if va else 0x100
        best = rd.highest_vpending(self.vpmr if self.vpmr < top else top)    # _vbelow()
        if best is None:
            return SPURIOUS
        prio, vintid = best
        rd.clear_vlpi_pending(rd.resident_vpt, vintid)  # type: ignore[arg-type]  # vPE resident
        self.vactive.append(prio)
        return vintid

    def vlpi_idle(self) -> bool:
        """True when :meth:`vcpu_iar1` would read 1023 whatever the masks: no vPE
        resident, or the GIC's copy of the resident table is loaded and empty (False:
        it may not, or the copy is not loaded yet).  Reads only."""
        rd = self.gic.redists[self.cpu]
        vc = rd._vdecoded
        if vc[0] != rd.vpendbaser or vc[1] != rd.vpropbaser:
            return False
        if vc[2] is None:
            return True
        got = self.gic._vpend.get(vc[2])
        return got is not None and got[0] >= vc[3] and not got[1]

    def vcpu_hppir1(self) -> int:
        """ICV_HPPIR1_EL1 of the resident vPE: the vINTID ``vcpu_iar1`` would return."""
        rd = self.gic.redists[self.cpu]
        best = rd.highest_vpending(self._vbelow())
        return SPURIOUS if best is None else best[1]

    def vcpu_eoir1(self, vintid: int) -> None:
        """ICV_EOIR1_EL1."""
        if self.vactive:
            self.vactive.pop()

    def __repr__(self) -> str:
        return f"<CpuInterface cpu={self.cpu} pmr={self.pmr:#x} igrpen1={self.igrpen1}>"


class Gicv3:
    """A GICv3 (``gicv4=True``: GICv4) with ``ncpus`` redistributors and CPU interfaces.

    ``memory`` is where LPI tables live (RAM).  Map :attr:`gicd` and
    :attr:`gicr` on the bus: the redistributor region holds one frame per CPU
    (128 KiB, or 256 KiB with the GICv4 VLPI frame).
    """

    def __init__(self, memory: PhysMemory, ncpus: int = 4, gicv4: bool = False,
                 id_bits: int = 16):
        if not 1 <= ncpus <= 256 or not 14 <= id_bits <= 24:
            raise InvalidArgument("ncpus must be 1..256 and id_bits 14..24")
        self.memory = memory
        #: the memory's one-call bit update (pymsi.core.Memory.bit_updater), if it has one:
        #: f(addr, bit, op) -> old bit, or a negative errno
        self._bit = memory.bit_updater() if hasattr(memory, "bit_updater") else None
        #: pymsi.core.pending_batch of the memory's backend, if it is a core Memory
        self._pending_batch = None
        if self._bit is not None:
            from .. import core
            # (a core Memory: it has bit_updater, and the name of its backend)
            name: str = memory.backend  # type: ignore[attr-defined]
            self._pending_batch = core.backend(name).pending_batch
        self.gicv4 = gicv4
        self.id_bits = id_bits
        #: Per processor, what an MSI's one-call route (pymsi.core.msi_router, set up by
        #: the bus) reads: the LPI limit of an exact Redistributor while its LPIs are
        #: enabled (0 otherwise: the full path), and its pending table's address
        self._fire_limits = array.array("I", bytes(4 * ncpus))
        self._fire_tables = array.array("Q", bytes(8 * ncpus))
        self.redists = [Redistributor(self, cpu) for cpu in range(ncpus)]
        self.cpus = [CpuInterface(self, cpu) for cpu in range(ncpus)]
        self.gicd = _Distributor(self)
        self.gicr = _RedistributorRegion(self)
        self.stats = {"table_errors": 0}
        #: The pending vINTIDs of resident virtual pending tables, by table address: read
        #: from memory at the first look after the table became resident (a GICR_VPENDBASER
        #: write drops the copy), then updated by every write through :meth:`pending_bit`.
        #: Software may not write a resident vPE's table (GICv4: UNPREDICTABLE), so a
        #: direct memory write to one is not seen until the vPE is loaded again.
        self._vpend: dict[int, tuple[int, set[int]]] = {}   # vpt -> (INTID bits read, set)

    def vpending(self, vpt: int, bits: int) -> set[int] | None:
        """The pending vINTIDs (>= 8192) of the virtual pending table at ``vpt`` covering
        ``bits`` INTID bits (None if unreadable); the set is the GIC's copy, not to be
        modified (it may hold vINTIDs beyond ``bits``: callers filter)."""
        got = self._vpend.get(vpt)
        if got is not None and got[0] >= bits:
            return got[1]
        try:
            table = int.from_bytes(self.memory.read(vpt + LPI_BASE // 8,
                                                    (1 << bits) // 8 - LPI_BASE // 8), "little")
        except (OSError, ValueError):
            return None
        pend = set()
        while table:
            low = table & -table
            pend.add(LPI_BASE + low.bit_length() - 1)
            table ^= low
        self._vpend[vpt] = (bits, pend)
        return pend

    def pending_bit(self, table: int, intid: int, value: bool | None = None) -> bool | None:
        """Read (and with ``value``, set or clear) ``intid``'s bit in a pending table
        in memory; returns the bit as it was, None if the table is not readable."""
        bit = self._bit
        if bit is not None:                 # one call into the core: read-modify-write
            try:
                rc = bit(table + (intid >> 3), intid & 7,
                         _BIT_READ if value is None else _BIT_SET if value else _BIT_CLEAR)
            except (OverflowError, TypeError):
                rc = -1
            if rc < 0:
                self.stats["table_errors"] += 1
                return None
            if value is not None and self._vpend:
                self._vpend_update(table, intid, value)
            return bool(rc)
        addr = table + intid // 8
        bit = 1 << intid % 8
        try:
            byte = self.memory.read(addr, 1)[0]
            if value is not None:
                self.memory.write(addr, bytes([byte | bit if value else byte & ~bit]))
                if self._vpend:
                    self._vpend_update(table, intid, value)
        except (OSError, ValueError):
            self.stats["table_errors"] += 1
            return None
        return bool(byte & bit)

    def _vpend_update(self, table: int, intid: int, value: bool) -> None:
        """Keep the copy of a resident virtual pending table in step with a write to it."""
        got = self._vpend.get(table)
        if got is not None:
            if value:
                got[1].add(intid)
            else:
                got[1].discard(intid)

    @property
    def frame_size(self) -> int:
        return GICV4_FRAME if self.gicv4 else GICV3_FRAME

    def redistributor(self, processor_number: int) -> Redistributor | None:
        """The redistributor an ITS RDbase (a processor number: PTA = 0) names."""
        if 0 <= processor_number < len(self.redists):
            return self.redists[processor_number]
        return None

    def __repr__(self) -> str:
        return (f"<Gicv3{'/v4' if self.gicv4 else ''} ncpus={len(self.redists)} "
                f"id_bits={self.id_bits}>")


class _Distributor:
    """GICD: the GIC's identification and global enables (no SPIs modelled)."""

    def __init__(self, gic: Gicv3) -> None:
        self.gic = gic
        self.ctlr = GICD_CTLR_DS | GICD_CTLR_ARE

    def mmio_read(self, offset: int, size: int) -> int:
        if offset == GICD_CTLR:
            return self.ctlr
        if offset == GICD_TYPER:
            return (GICD_TYPER_IDBITS(self.gic.id_bits - 1) | GICD_TYPER_LPIS(1)
                    | GICD_TYPER_CPUNUMBER(min(len(self.gic.redists), 8) - 1))
        if offset == GICD_IIDR:
            return 0x43B
        if offset == GICD_PIDR2:
            return (4 if self.gic.gicv4 else 3) << 4
        return 0

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        if offset == GICD_CTLR:
            self.ctlr = GICD_CTLR_DS | GICD_CTLR_ARE | (value & (GICD_CTLR_ENABLE_G1 | 1))


class _RedistributorRegion:
    """The contiguous frames of every redistributor."""

    def __init__(self, gic: Gicv3) -> None:
        self.gic = gic

    @property
    def size(self) -> int:
        return self.gic.frame_size * len(self.gic.redists)

    def mmio_read(self, offset: int, size: int) -> int:
        cpu, off = divmod(offset, self.gic.frame_size)
        return self.gic.redists[cpu].mmio_read(off, size)

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        cpu, off = divmod(offset, self.gic.frame_size)
        self.gic.redists[cpu].mmio_write(off, value, size)
