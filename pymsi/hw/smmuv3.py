"""An Arm SMMUv3, programmed through its registers and in-memory structures.

A driver brings it up as it would the real thing: it allocates a stream table,
context descriptors and page tables in memory, points the STRTAB/CMDQ/EVENTQ
registers at them, enables the queues and the SMMU through CR0, issues
commands by advancing CMDQ_PROD, and reads fault records out of the event
queue.  Device transactions come in through :meth:`SMMUv3.translate` (one) or
:meth:`SMMUv3.translate_batch` (many, in C) and are translated with the core's
walks and IOTLB.

Like hardware, the SMMU caches what it fetched: a changed STE, CD or page
table entry is not seen until the matching CFGI or TLBI command.  Invalid
configurations are never cached, so every transaction that meets one records
its own C_BAD_* event.  Guest-controlled input never raises: it produces an
event record, a command error (CMDQ_CONS.ERR, GERROR.CMDQ_ERR), a global error
or an aborted transaction.

The SMMU's own outgoing interrupts (event queue, GERROR and CMD_SYNC MSIs, and
the wired lines) are posted: they are queued while the SMMU is busy (handling a
register write and the commands it starts, or a :meth:`SMMUv3.translate_batch`)
and sent in order when that operation is done, at most ``posted_budget``
(:data:`~pymsi.hw.bus.POSTED_BUDGET`) per operation; the rest wait for the next
operation or :meth:`SMMUv3.drain`.  An MSI aimed at the SMMU's
own registers (say CMDQ_PROD) therefore runs commands after the current ones,
never inside them, and never in the middle of a batch of translations.  A
failed MSI write is reported when it is made (GERROR.MSI_*_ABT_ERR).

Deliberate choices where the architecture leaves room (or QEMU differs):
page 1 aliases page 0; CFGI_STE also drops the stream's cached CDs (invalidating
more is always allowed); TLBI_S2_IPA also drops nested entries whose IPA it
covers; a full event queue sets EVENTQ_PROD.OVFLG and drops the record (QEMU
raises EVTQ_ABT_ERR instead); stall is not supported (STALL_MODEL = 0b01), so
CD.S / STE.S2S set are illegal; HTTU is not implemented.

Two hooks that hardware does not have let a VMM build its virtual SMMU on this
model (:mod:`pymsi.vmm.smmuv3`): :attr:`SMMUv3.on_command` sees every command
the SMMU carried out (and may fail it), :meth:`SMMUv3.read_ste` reads an STE
without caching it or recording anything.
"""

from __future__ import annotations

import array
import enum
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from .. import core, trace
from ..core import Fault, FaultKind, Stage1, Stage2, WalkResult, XlateConfig
from ..core.common import Buffer, PhysMemory, batch_views, int_arg
from ..errors import InvalidArgument
from . import smmuv3_regs as R
from .bits import dwords, pack_dwords
from .bus import POSTED_BUDGET

_ERRORS = (OSError, ValueError)

# Tracepoints, named and (mostly) with the fields of QEMU's hw/arm/trace-events.  ``stage``
# is 1, 2 or 3 (nested) as QEMU's SMMUStage; ``ipa`` is the stage-1 output.
trace_smmuv3_translate_success = trace.Tracepoint(
    "smmuv3_translate_success", "sid", "iova", "ipa", "translated", "is_write", "stage",
    "tlb_hit")
trace_smmuv3_translate_abort = trace.Tracepoint(
    "smmuv3_translate_abort", "sid", "addr", "is_write", "event")
trace_smmuv3_translate_bypass = trace.Tracepoint(
    "smmuv3_translate_bypass", "sid", "addr", "is_write")
trace_smmuv3_translate_disable = trace.Tracepoint(
    "smmuv3_translate_disable", "sid", "addr", "is_write", "abort")
trace_smmuv3_record_event = trace.Tracepoint(
    "smmuv3_record_event", "type", "sid", "addr", "recorded")
trace_smmuv3_cmdq_opcode = trace.Tracepoint("smmuv3_cmdq_opcode", "opcode", "sid")


class Outcome(enum.Enum):
    """What happened to a transaction."""

    TRANSLATED = "translated"
    BYPASSED = "bypassed"
    ABORTED = "aborted"


class SmmuResult(NamedTuple):
    """The outcome of one transaction through the SMMU.

    ``pa`` is where it goes (None when aborted); ``fault`` the translation
    fault (as in the core) if one stopped it; ``event`` the event type the
    SMMU raised for it, whether or not it was recorded (``recorded``);
    ``walk`` the core's translation result, when one was made.
    """

    outcome: Outcome
    pa: int | None
    fault: Fault | None = None
    event: R.EventType | None = None
    recorded: bool = False
    walk: WalkResult | None = None

    @property
    def aborted(self) -> bool:
        return self.outcome is Outcome.ABORTED

    @property
    def bypassed(self) -> bool:
        return self.outcome is Outcome.BYPASSED


class Event(NamedTuple):
    """A decoded event record."""

    type: int
    sid: int
    ssid: int | None
    input_addr: int
    ipa: int
    fetch_addr: int
    rnw: bool
    s2: bool
    event_class: int
    ttrnw: bool
    pnu: bool
    ind: bool

    @classmethod
    def decode(cls, record: bytes) -> Event:
        """Decode a 32-byte record read from the event queue."""
        w = dwords(record)
        return cls(
            type=R.EVT0_TYPE.get(w[0]), sid=R.EVT0_SID.get(w[0]),
            ssid=R.EVT0_SSID.get(w[0]) if R.EVT0_SSV.get(w[0]) else None,
            input_addr=w[2], ipa=R.EVT3_IPA.get(w[3]) << 12,
            fetch_addr=R.EVT3_FETCH_ADDR.get(w[3]) << 3, rnw=bool(R.EVT1_RNW.get(w[1])),
            s2=bool(R.EVT1_S2.get(w[1])), event_class=R.EVT1_CLASS.get(w[1]),
            ttrnw=bool(R.EVT1_TTRNW.get(w[1])), pnu=bool(R.EVT1_PNU.get(w[1])),
            ind=bool(R.EVT1_IND.get(w[1])),
        )


_new = tuple.__new__
_TRANSLATED = Outcome.TRANSLATED
_TRANSLATE = core.STREAM_TRANSLATE
_SMMUEN = R.CR0_SMMUEN
_EVT_TYPE, _EVT_SID, _EVT_SSID = R.EVT0_TYPE.lo, R.EVT0_SID.lo, R.EVT0_SSID.lo
_EVT_SSV, _EVT_PNU, _EVT_RNW = R.EVT0_SSV(1), R.EVT1_PNU(1), R.EVT1_RNW(1)
_EVT_S2, _EVT_TTRNW, _EVT_CLASS = R.EVT1_S2(1), R.EVT1_TTRNW(1), R.EVT1_CLASS.lo

_FAULT_EVENT = {
    FaultKind.TRANSLATION: R.EventType.F_TRANSLATION,
    FaultKind.ADDRESS_SIZE: R.EventType.F_ADDR_SIZE,
    FaultKind.ACCESS: R.EventType.F_ACCESS,
    FaultKind.PERMISSION: R.EventType.F_PERMISSION,
    FaultKind.EXTERNAL_ABORT: R.EventType.F_WALK_EABT,
}


class _ConfigError(Exception):
    """Internal: fetching or decoding configuration raised an event."""

    def __init__(self, event: R.EventType, fetch_addr: int = 0, fault: Fault | None = None,
                 record: bool = True, event_class: int = R.EventClass.CD) -> None:
        self.event, self.fetch_addr, self.fault = event, fetch_addr, fault
        self.record, self.event_class = record, event_class


class _Stream(NamedTuple):
    """A resolved stream configuration (what the config cache holds)."""

    mode: int                       # core.STREAM_ABORT / BYPASS / TRANSLATE
    cfg: XlateConfig | None
    record_s1: bool                 # CD.R
    record_s2: bool                 # STE.S2R
    ias: int                        # input size checked with no stage 1 (0: none)


class _Ste(NamedTuple):
    config: int
    s1fmt: int
    s1ctxptr: int
    s1cdmax: int
    s1dss: int
    s2: Stage2 | None
    vmid: int
    s2r: bool


class _Cd(NamedTuple):
    s1: Stage1
    asid: int
    record: bool


class SMMUv3:
    """An Arm SMMUv3 (IHI 0070) for one PCIe root complex's streams.

    ``memory`` is the physical memory its tables, queues and translations
    live in (a :class:`pymsi.core.Memory`).  ``stages`` is "s1", "s2" or
    "nested" (both); ``oas`` the output address size in bits; ``sidsize`` /
    ``ssidsize`` the StreamID / SubstreamID widths; ``cmdqs`` / ``eventqs``
    the largest queue sizes (log2 entries); ``ril`` range invalidation;
    ``msi`` whether it signals with MSIs (writes through ``msi_write``)
    instead of only its wired interrupts; ``sev`` / ``cd2l`` what IDR0.SEV / CD2L
    advertise; ``irq`` is called with "eventq",
    "gerror" or "cmdq_sync" when a wired interrupt fires.  ``backend``
    ("c" or "python") picks the core backend explicitly (``memory`` must be
    of the same backend); by default it is the one ``pymsi.core`` exports.
    """

    def __init__(
        self,
        memory: PhysMemory,
        stages: str = "nested",
        oas: int = 48,
        sidsize: int = 16,
        ssidsize: int = 8,
        cmdqs: int = 19,
        eventqs: int = 19,
        granules: tuple[int, ...] = (4096, 16384, 65536),
        ril: bool = True,
        had: bool = True,
        msi: bool = False,
        two_level: bool = True,
        sev: bool = True,
        cd2l: bool = True,
        tlb_capacity: int = 1024,
        irq: Callable[[str], None] | None = None,
        msi_write: Callable[[int, int], None] | None = None,
        backend: str | None = None,
    ) -> None:
        if stages not in ("s1", "s2", "nested"):
            raise InvalidArgument(f"stages={stages!r}: must be 's1', 's2' or 'nested'")
        if oas not in R.OAS_BITS[:6]:
            raise InvalidArgument(f"oas={oas}: must be one of {R.OAS_BITS[:6]}")
        if not 1 <= sidsize <= 32 or not 0 <= ssidsize <= 20:
            raise InvalidArgument("sidsize must be 1..32 and ssidsize 0..20")
        if not set(granules) <= {4096, 16384, 65536} or not granules:
            raise InvalidArgument(f"granules={granules!r}")
        self.memory = memory
        self.s1p = stages in ("s1", "nested")
        self.s2p = stages in ("s2", "nested")
        self.oas = oas
        self.sidsize, self.ssidsize = sidsize, ssidsize
        self.cmdqs, self.eventqs = cmdqs, eventqs
        self.granules = frozenset(granules)
        self.ril, self.had, self.msi, self.two_level = ril, had, msi, two_level
        self.sev, self.cd2l = sev, cd2l              # only advertised (IDR0.SEV / CD2L)
        self.irq = irq
        self.msi_write = msi_write
        #: Called with (dword0, dword1) after each command the SMMU carried out; a
        #: False answer makes that command fail with CERROR_ILL.  Hardware has no such
        #: thing: it is where a VMM's virtual SMMU built on this model acts on the
        #: guest's commands (QEMU's smmuv3-accel forwards them from its command loop).
        self.on_command: Callable[[int, int], bool] | None = None
        impl = core.backend(backend) if backend is not None else core
        self._core = impl
        self.tlb = impl.Iotlb(tlb_capacity)
        self._streams = impl.Streams()
        self._translate = impl.translate
        try:
            # The per-call hit path: the stream's probe in the C copy of the config
            # cache and the IOTLB translate in one call (None: take the full path).
            self._hit = impl.stream_translator(memory, self._streams, self.tlb,
                                               wrap=_translated)
        except TypeError:                   # a memory of another kind: full path only
            self._hit = _no_hit
        self._xl = _no_hit                  # self._hit while SMMUEN is set
        self._scratch = array.array("I")    # the batch's unresolved items
        self.irq_counts = {"eventq": 0, "gerror": 0, "cmdq_sync": 0}
        self.stats = {"events_recorded": 0, "events_dropped": 0, "events_suppressed": 0,
                      "commands": 0, "sev": 0}
        self._idr = self._make_idr()
        self.posted_budget = POSTED_BUDGET  # interrupts sent per operation at most
        self._busy = 0                      # operations in progress (nesting)
        self._flushing = False              # the outbox loop is running
        self._outbox: deque[tuple[str, int, int, int]] = deque()
        self.reset()

    # ------------------------------------------------------------------ ID

    def _make_idr(self) -> dict[int, int]:
        idr0 = (R.IDR0_S2P(int(self.s2p)) | R.IDR0_S1P(int(self.s1p)) | R.IDR0_TTF(2)
                | R.IDR0_COHACC(1) | R.IDR0_ASID16(1) | R.IDR0_VMID16(int(self.s2p))
                | R.IDR0_MSI(int(self.msi)) | R.IDR0_SEV(int(self.sev))
                | R.IDR0_CD2L(int(self.cd2l))
                | R.IDR0_TTENDIAN(2) | R.IDR0_STALL_MODEL(1) | R.IDR0_TERM_MODEL(1)
                | R.IDR0_ST_LEVEL(int(self.two_level)))
        idr1 = (R.IDR1_SIDSIZE(self.sidsize) | R.IDR1_SSIDSIZE(self.ssidsize)
                | R.IDR1_EVENTQS(self.eventqs) | R.IDR1_CMDQS(self.cmdqs))
        idr3 = R.IDR3_HAD(int(self.had)) | R.IDR3_RIL(int(self.ril))
        idr5 = (R.IDR5_OAS(R.OAS_BITS.index(self.oas)) | R.IDR5_GRAN4K(4096 in self.granules)
                | R.IDR5_GRAN16K(16384 in self.granules) | R.IDR5_GRAN64K(65536 in self.granules))
        return {R.IDR0: idr0, R.IDR1: idr1, R.IDR2: 0, R.IDR3: idr3, R.IDR4: 0, R.IDR5: idr5,
                R.IIDR: 0x43B, R.AIDR: 0x01}  # IIDR: Arm's JEP106 code; AIDR: SMMUv3.1

    def reset(self) -> None:
        """Put every register in its reset state and drop all cached state."""
        self._regs: dict[int, int] = {}
        self._gbpa = 0
        self._set_cr0(0)
        self._outbox.clear()
        self._flush_config()
        self.tlb.invalidate_all()

    # ------------------------------------------------------------ registers

    def _reg(self, off: int) -> int:
        return self._regs.get(off, 0)

    def _reg64(self, off: int) -> int:
        return self._reg(off) | self._reg(off + 4) << 32

    def mmio_read(self, offset: int, size: int = 4) -> int:
        """Read a register (32-bit, or 64-bit for the 64-bit registers)."""
        off = offset & ~R.PAGE1
        if size == 8 and not off & 7:
            return self._read32(off) | self._read32(off + 4) << 32
        if size != 4 or off & 3:
            return 0
        return self._read32(off)

    def _read32(self, off: int) -> int:
        if off in self._idr:
            return self._idr[off]
        if off in (R.CR0, R.CR0ACK):
            return self._cr0
        if off == R.GBPA:
            return self._gbpa
        if off == R.IRQ_CTRLACK:
            return self._reg(R.IRQ_CTRL)
        return self._reg(off)

    def mmio_write(self, offset: int, value: int, size: int = 4) -> None:
        """Write a register; writes the architecture ignores are ignored."""
        off = offset & ~R.PAGE1
        self._busy += 1
        try:
            if size == 8 and not off & 7:
                self._write32(off, value & 0xFFFF_FFFF)
                self._write32(off + 4, (value >> 32) & 0xFFFF_FFFF)
            elif size == 4 and not off & 3:
                self._write32(off, value & 0xFFFF_FFFF)
        finally:
            self._busy -= 1
        if self._outbox and not self._busy:
            self._send_outbox()

    def _set_cr0(self, v: int) -> None:
        self._cr0 = v
        self._xl = self._hit if v & _SMMUEN else _no_hit

    def _write32(self, off: int, v: int) -> None:
        regs = self._regs
        if off == R.CR0:
            self._set_cr0(v & R.CR0_MASK)
            if self._cr0 & R.CR0_CMDQEN:
                self._process_commands()
        elif off == R.CR1 or off == R.CR2:
            regs[off] = v & (0xFFF if off == R.CR1 else 0x7)
        elif off == R.GBPA:
            if v & R.GBPA_UPDATE:
                self._gbpa = v & R.GBPA_MASK
        elif off == R.IRQ_CTRL:
            regs[off] = v & 0x7
        elif off == R.GERRORN:
            regs[off] = v & R.GERROR_MASK
            if self._cr0 & R.CR0_CMDQEN:
                self._process_commands()
        elif off in (R.STRTAB_BASE, R.STRTAB_BASE + 4, R.STRTAB_BASE_CFG):
            if not self._cr0 & R.CR0_SMMUEN:
                regs[off] = v
        elif off in (R.CMDQ_BASE, R.CMDQ_BASE + 4, R.CMDQ_CONS):
            if not self._cr0 & R.CR0_CMDQEN:
                regs[off] = v & (0x7F0F_FFFF if off == R.CMDQ_CONS else 0xFFFF_FFFF)
        elif off == R.CMDQ_PROD:
            regs[off] = v & 0xF_FFFF
            if self._cr0 & R.CR0_CMDQEN:
                self._process_commands()
        elif off in (R.EVENTQ_BASE, R.EVENTQ_BASE + 4, R.EVENTQ_PROD):
            if not self._cr0 & R.CR0_EVENTQEN:
                regs[off] = v & (0x800F_FFFF if off == R.EVENTQ_PROD else 0xFFFF_FFFF)
        elif off == R.EVENTQ_CONS:
            regs[off] = v & 0x800F_FFFF
        elif off in (R.GERROR_IRQ_CFG0, R.GERROR_IRQ_CFG0 + 4, R.GERROR_IRQ_CFG1,
                     R.GERROR_IRQ_CFG2, R.EVENTQ_IRQ_CFG0, R.EVENTQ_IRQ_CFG0 + 4,
                     R.EVENTQ_IRQ_CFG1, R.EVENTQ_IRQ_CFG2):
            regs[off] = v
        # everything else (ID registers, CR0ACK, GERROR, ...) is read-only

    # ------------------------------------------------------------- queues

    def _queue(self, base_reg: int, maxlog: int) -> tuple[int, int]:
        base = self._reg64(base_reg)
        return R.Q_BASE_ADDR.get(base) << 5, min(R.Q_BASE_LOG2SIZE.get(base), maxlog)

    def _gerror(self, bit: int) -> None:
        """Raise a global error unless it is already active."""
        if (self._reg(R.GERROR) ^ self._reg(R.GERRORN)) & bit:
            return
        self._regs[R.GERROR] = self._reg(R.GERROR) ^ bit
        if self._reg(R.IRQ_CTRL) & R.IRQ_CTRL_GERROR_IRQEN:
            self._signal("gerror", R.GERROR_IRQ_CFG0, R.GERROR_IRQ_CFG1,
                         R.GERROR_MSI_GERROR_ABT_ERR)

    def _signal(self, line: str, cfg0: int, cfg1: int, abt_bit: int) -> None:
        """Fire an interrupt: an MSI if configured, else the wired line."""
        addr = R.IRQ_CFG0_ADDR.get(self._reg64(cfg0)) << 2 if self.msi else 0
        self._post(line, addr, self._reg(cfg1) if addr else 0, abt_bit)

    def _post(self, line: str, addr: int, data: int, abt_bit: int) -> None:
        """Queue an interrupt (an MSI when ``addr``, else the wired ``line``); it is
        sent now unless an operation is in progress, then when it is done."""
        self._outbox.append((line, addr, data, abt_bit))
        if not self._busy:
            self._send_outbox()

    def _send_outbox(self, budget: int | None = None) -> int:
        """Send queued interrupts in order (and those they cause), at most ``budget``."""
        if self._flushing:
            return 0                       # the loop further up the stack sends it
        if budget is None:
            budget = self.posted_budget
        self._flushing = True
        sent = 0
        try:
            box = self._outbox
            while box and sent < budget:
                line, addr, data, abt_bit = box.popleft()
                sent += 1
                if addr:
                    if not self._msi_write(addr, data) and abt_bit:
                        self._gerror(abt_bit)
                    continue
                self.irq_counts[line] += 1
                if self.irq is not None:
                    self.irq(line)
        finally:
            self._flushing = False
        return sent

    def drain(self, budget: int | None = None) -> int:
        """Send up to ``budget`` interrupts still queued (after an operation ran
        out of its budget); returns how many were sent."""
        if self._busy:
            return 0
        return self._send_outbox(budget)

    @property
    def pending_interrupts(self) -> int:
        """How many outgoing interrupts are queued."""
        return len(self._outbox)

    def _msi_write(self, addr: int, data: int) -> bool:
        try:
            if self.msi_write is not None:
                self.msi_write(addr, data)
            else:
                self.memory.write_u32(addr, data)
        except _ERRORS:
            return False
        return True

    def record_event(self, words: list[int]) -> bool:
        """Put an event record in the event queue (the SMMU's own act).

        Returns False if it was dropped: queue disabled, full (overflow flag
        set) or not writable (GERROR.EVTQ_ABT_ERR).
        """
        ok = self._record_event(words)
        if trace_smmuv3_record_event.enabled:
            self._trace_event(words, ok)
        return ok

    def _record_event(self, words: list[int]) -> bool:
        if not self._cr0 & R.CR0_EVENTQEN:
            self.stats["events_dropped"] += 1
            return False
        base, log2 = self._queue(R.EVENTQ_BASE, self.eventqs)
        prod, cons = self._reg(R.EVENTQ_PROD), self._reg(R.EVENTQ_CONS)
        mask = (1 << log2) - 1
        wrap = 1 << log2
        pidx, cidx = prod & mask, cons & mask
        if pidx == cidx and (prod & wrap) != (cons & wrap):
            if (prod & R.Q_OVF) == (cons & R.Q_OVF):
                self._regs[R.EVENTQ_PROD] = prod ^ R.Q_OVF
            self.stats["events_dropped"] += 1
            return False
        try:
            self.memory.write(base + pidx * R.EVT_SIZE, pack_dwords(words))
        except _ERRORS:
            self._gerror(R.GERROR_EVTQ_ABT_ERR)
            self.stats["events_dropped"] += 1
            return False
        nxt = ((prod & (wrap | mask)) + 1) & ((wrap << 1) - 1)
        self._regs[R.EVENTQ_PROD] = (prod & R.Q_OVF) | nxt
        self.stats["events_recorded"] += 1
        if self._reg(R.IRQ_CTRL) & R.IRQ_CTRL_EVENTQ_IRQEN:
            self._signal("eventq", R.EVENTQ_IRQ_CFG0, R.EVENTQ_IRQ_CFG1,
                         R.GERROR_MSI_EVTQ_ABT_ERR)
        return True

    def _trace_event(self, words: list[int], recorded: bool) -> None:
        etype = R.EVT0_TYPE.get(words[0])
        try:
            name = R.EventType(etype).name
        except ValueError:
            name = f"{etype:#x}"
        trace_smmuv3_record_event(type=name, sid=R.EVT0_SID.get(words[0]),
                                  addr=words[2] if len(words) > 2 else 0,
                                  recorded=recorded)

    def _event(self, etype: int, sid: int, ssid: int | None = None, iova: int = 0,
               write: bool = False, s2: bool = False, event_class: int = 0, ipa: int = 0,
               fetch_addr: int = 0) -> list[int]:
        # (Every value here was checked to fit its field: the StreamID and SubstreamID
        # against SIDSIZE / SSIDSIZE, the rest are the model's own constants.)
        w0 = etype << _EVT_TYPE | sid << _EVT_SID
        if ssid is not None:
            w0 |= _EVT_SSV | ssid << _EVT_SSID
        w1 = _EVT_PNU | (0 if write else _EVT_RNW) | (_EVT_S2 if s2 else 0) \
            | event_class << _EVT_CLASS
        if event_class == R.EventClass.TT:
            w1 |= _EVT_TTRNW                     # table walks read
        w3 = (ipa & R.EVT3_IPA.mask) if ipa else (fetch_addr & R.EVT3_FETCH_ADDR.mask)
        return [w0, w1, iova, w3]

    # ----------------------------------------------------------- commands

    def _process_commands(self) -> None:
        if (self._reg(R.GERROR) ^ self._reg(R.GERRORN)) & R.GERROR_CMDQ_ERR:
            return                                 # stopped until acknowledged
        base, log2 = self._queue(R.CMDQ_BASE, self.cmdqs)
        mask, wrap = (1 << log2) - 1, 1 << log2
        while True:
            prod = self._reg(R.CMDQ_PROD) & ((wrap << 1) - 1)
            cons_reg = self._reg(R.CMDQ_CONS)
            cons = cons_reg & ((wrap << 1) - 1)
            if prod == cons:
                return
            try:
                cmd = dwords(self.memory.read(base + (cons & mask) * R.CMD_SIZE, R.CMD_SIZE))
            except _ERRORS:
                self._command_error(R.CERROR_ABT)
                return
            if not self._execute(cmd):
                self._command_error(R.CERROR_ILL)
                return
            self.stats["commands"] += 1
            nxt = (cons + 1) & ((wrap << 1) - 1)
            self._regs[R.CMDQ_CONS] = (cons_reg & R.CMDQ_CONS_ERR.mask) | nxt

    def _command_error(self, code: int) -> None:
        self._regs[R.CMDQ_CONS] = R.CMDQ_CONS_ERR.put(self._reg(R.CMDQ_CONS), code)
        self._gerror(R.GERROR_CMDQ_ERR)

    def _execute(self, cmd: list[int]) -> bool:
        """Carry out one command; False if it is illegal (or :attr:`on_command` refused it)."""
        if not self._execute_builtin(cmd):
            return False
        hook = self.on_command
        return hook is None or hook(cmd[0], cmd[1]) is not False

    def _execute_builtin(self, cmd: list[int]) -> bool:
        d0, d1 = cmd
        try:
            op = R.Opcode(R.CMD_OP.get(d0))
        except ValueError:
            return False
        sid = R.CMD_SID.get(d0)
        if trace_smmuv3_cmdq_opcode.enabled:
            trace_smmuv3_cmdq_opcode(opcode=op.name, sid=sid)
        Op = R.Opcode
        if op in (Op.CFGI_STE, Op.CFGI_STE_RANGE, Op.CFGI_CD, Op.CFGI_CD_ALL, Op.PREFETCH_CONFIG,
                  Op.PREFETCH_ADDR):
            if R.CMD_SSEC.get(d0):
                return False
            if op == Op.CFGI_STE:
                self._invalidate_streams(sid, sid)
            elif op == Op.CFGI_STE_RANGE:
                rng = R.CMD_STE_RANGE.get(d1)
                if rng == R.CFGI_ALL_RANGE:
                    self._flush_config()
                else:
                    span = (1 << (rng + 1)) - 1
                    self._invalidate_streams(sid & ~span, (sid & ~span) + span)
            elif op == Op.CFGI_CD:
                self._invalidate_cd(sid, R.CMD_SSID.get(d0))
            elif op == Op.CFGI_CD_ALL:
                self._invalidate_cd(sid, None)
            return True                               # PREFETCH_*: a hint, nothing to do
        vmid = R.CMD_TLBI_VMID.get(d0) if self.s2p else 0
        tlb = self.tlb
        if op == Op.TLBI_NH_ALL:
            tlb.invalidate_vmid(vmid, stage1_only=True)
        elif op == Op.TLBI_NH_ASID:
            tlb.invalidate_asid(R.CMD_TLBI_ASID.get(d0), vmid)
        elif op in (Op.TLBI_NH_VA, Op.TLBI_NH_VAA):
            start, size = self._tlbi_range(d0, d1, R.CMD_TLBI_ADDR.get(d1) << 12)
            asid = R.CMD_TLBI_ASID.get(d0) if op == Op.TLBI_NH_VA else None
            tlb.invalidate_va(vmid, start, size, asid=asid)
        elif op == Op.TLBI_S12_VMALL:
            if not self.s2p:
                return False
            tlb.invalidate_vmid(vmid)
        elif op == Op.TLBI_S2_IPA:
            if not self.s2p:
                return False
            start, size = self._tlbi_range(d0, d1, R.CMD_TLBI_IPA.get(d1) << 12)
            tlb.invalidate_ipa(vmid, start, size)
        elif op == Op.TLBI_NSNH_ALL:
            tlb.invalidate_all()
        elif op == Op.SYNC:
            self._sync(d0, d1)
        else:
            # EL2 TLBIs (no HYP), ATC_INV (no ATS), PRI_RESP (no PRI), RESUME and
            # STALL_TERM (no stall): not supported by this SMMU, so illegal.
            return False
        return True

    def _tlbi_range(self, d0: int, d1: int, addr: int) -> tuple[int, int]:
        """The (start, size) a TLBI by address covers."""
        tg = R.CMD_TLBI_TG.get(d1) if self.ril else 0
        if not tg:
            return addr, 1                             # every entry covering addr
        pages = (R.CMD_TLBI_NUM.get(d0) + 1) << R.CMD_TLBI_SCALE.get(d0)
        return addr, pages << (tg * 2 + 10)

    def _sync(self, d0: int, d1: int) -> None:
        cs = R.CMD_SYNC_CS.get(d0)
        if cs == R.SYNC_CS_IRQ:
            addr = R.CMD_SYNC_MSIADDR.get(d1) << 2 if self.msi else 0
            self._post("cmdq_sync", addr, R.CMD_SYNC_MSIDATA.get(d0) if addr else 0,
                       R.GERROR_MSI_CMDQ_ABT_ERR)
        elif cs == R.SYNC_CS_SEV:
            self.stats["sev"] += 1

    # -------------------------------------------------------- config cache

    def _flush_config(self) -> None:
        self._ste_cache: dict[int, _Ste] = {}
        self._cd_cache: dict[tuple[int, int], _Cd] = {}
        # Resolved streams: transactions without a SubstreamID by StreamID (the
        # hot path), with one by (StreamID, SubstreamID).
        self._by_sid: dict[int, _Stream] = {}
        self._by_ssid: dict[tuple[int, int], _Stream] = {}
        self._streams.clear()

    def _invalidate_streams(self, first: int, last: int) -> None:
        for sid in [s for s in self._ste_cache if first <= s <= last]:
            del self._ste_cache[sid]
        for key in [k for k in self._cd_cache if first <= k[0] <= last]:
            del self._cd_cache[key]
        for key in [k for k in self._by_ssid if first <= k[0] <= last]:
            del self._by_ssid[key]
        for sid in [k for k in self._by_sid if first <= k <= last]:
            del self._by_sid[sid]
            self._streams.remove(sid)

    def _invalidate_cd(self, sid: int, ssid: int | None) -> None:
        for key in [k for k in self._cd_cache if k[0] == sid and ssid in (None, k[1])]:
            del self._cd_cache[key]
        for key in [k for k in self._by_ssid if k[0] == sid and ssid in (None, k[1])]:
            del self._by_ssid[key]
        if sid in self._by_sid:                 # it may use CD 0 (S1DSS or no substreams)
            del self._by_sid[sid]
            self._streams.remove(sid)

    # ------------------------------------------------------- STE and CD

    def _fetch(self, addr: int, size: int, event: R.EventType) -> list[int]:
        try:
            return dwords(self.memory.read(addr, size))
        except _ERRORS:
            raise _ConfigError(event, fetch_addr=addr) from None

    def read_ste(self, sid: int) -> list[int] | None:
        """The eight doublewords of ``sid``'s STE as the SMMU would fetch them now
        (bypassing its configuration cache), or None when there is none to fetch
        (C_BAD_STREAMID or F_STE_FETCH).  Records nothing.  Hardware has no such
        thing: a VMM's accelerated virtual SMMU reads the guest's STE this way
        (QEMU's smmu_find_ste()) to install it on the host."""
        try:
            return self._fetch(self._ste_address(sid), R.STE_SIZE, R.EventType.F_STE_FETCH)
        except _ConfigError:
            return None

    def _fetch_ste(self, sid: int) -> _Ste:
        ste = self._ste_cache.get(sid)
        if ste is not None:
            return ste
        addr = self._ste_address(sid)
        ste = self._decode_ste(self._fetch(addr, R.STE_SIZE, R.EventType.F_STE_FETCH))
        self._ste_cache[sid] = ste
        return ste

    def _ste_address(self, sid: int) -> int:
        """Where ``sid``'s STE is (through the level-1 descriptor of a 2-level table)."""
        cfg = self._reg(R.STRTAB_BASE_CFG)
        base = R.STRTAB_BASE_ADDR.get(self._reg64(R.STRTAB_BASE)) << 6
        log2size = min(R.STRTAB_CFG_LOG2SIZE.get(cfg), self.sidsize)
        if sid >> log2size:
            raise _ConfigError(R.EventType.C_BAD_STREAMID)
        if R.STRTAB_CFG_FMT.get(cfg) == R.STRTAB_FMT_2LVL and self.two_level:
            split = R.STRTAB_CFG_SPLIT.get(cfg)
            split = 6 if split <= 6 else (8 if split <= 8 else 10)
            l1 = self._fetch(base + (sid >> split) * 8, 8, R.EventType.F_STE_FETCH)[0]
            span = R.L1STD_SPAN.get(l1)
            index = sid & ((1 << split) - 1)
            if not span or index >> (min(span, split + 1) - 1):
                raise _ConfigError(R.EventType.C_BAD_STREAMID)
            return (R.L1STD_L2PTR.get(l1) << 6) + index * R.STE_SIZE
        return base + sid * R.STE_SIZE

    def _decode_ste(self, w: list[int]) -> _Ste:
        bad = _ConfigError(R.EventType.C_BAD_STE)
        if not R.STE0_V.get(w[0]):
            raise bad
        config = R.STE0_CONFIG.get(w[0])
        # (iter(): before Python 3.12 `in` on the enum class refuses a non-member int)
        if config not in iter(R.SteConfig):  # type: ignore[operator]
            raise bad
        s1 = config in (R.SteConfig.S1, R.SteConfig.NESTED)
        s2 = config in (R.SteConfig.S2, R.SteConfig.NESTED)
        if (s1 and not self.s1p) or (s2 and not self.s2p):
            raise bad
        s1fmt, cdmax = R.STE0_S1FMT.get(w[0]), R.STE0_S1CDMAX.get(w[0])
        ctx = R.STE0_S1CTXPTR.get(w[0]) << 6
        if s1 and (s1fmt == 3 or cdmax > self.ssidsize or (s1fmt and not cdmax)
                   or ctx >> self.oas):
            raise bad
        stage2, vmid, s2r = None, 0, False
        if s2:
            w2 = w[2]
            granule = R.TG_GRANULE.get(R.STE2_S2TG.get(w2))
            ps = R.OAS_BITS[min(R.STE2_S2PS.get(w2), R.OAS_BITS.index(self.oas))] \
                if R.STE2_S2PS.get(w2) < 7 else None
            ttb = R.STE3_S2TTB.get(w[3]) << 4
            tsz = R.STE2_S2T0SZ.get(w2)
            if (granule not in self.granules or ps is None or not R.STE2_S2AA64.get(w2)
                    or R.STE2_S2ENDI.get(w2) or R.STE2_S2S.get(w2) or ttb >> ps
                    or 64 - tsz > ps):
                raise bad
            try:
                stage2 = Stage2(vttb=ttb, tsz=tsz, sl0=R.STE2_S2SL0.get(w2), granule=granule,
                                ps=ps, affd=bool(R.STE2_S2AFFD.get(w2)))
            except InvalidArgument:
                raise bad from None
            vmid, s2r = R.STE2_S2VMID.get(w2), bool(R.STE2_S2R.get(w2))
        return _Ste(config, s1fmt, ctx, cdmax, R.STE1_S1DSS.get(w[1]), stage2, vmid, s2r)

    def _cd_address(self, ste: _Ste, ssid: int) -> int:
        """Where the CD for ``ssid`` is (a PA; through stage 2 when nested)."""
        if ste.s1fmt == R.S1FMT_LINEAR:
            addr = ste.s1ctxptr + ssid * R.CD_SIZE
        else:
            split = 6 if ste.s1fmt == R.S1FMT_4K_L2 else 10
            l1_addr = self._ipa_to_pa(ste, ste.s1ctxptr + (ssid >> split) * 8)
            l1 = self._fetch(l1_addr, 8, R.EventType.F_CD_FETCH)[0]
            if not R.L1CD_V.get(l1):
                raise _ConfigError(R.EventType.C_BAD_CD)
            addr = (R.L1CD_L2PTR.get(l1) << 12) + (ssid & ((1 << split) - 1)) * R.CD_SIZE
        return self._ipa_to_pa(ste, addr)

    def _ipa_to_pa(self, ste: _Ste, ipa: int) -> int:
        """A CD-related address: an IPA that stage 2 translates when nested."""
        if ste.s2 is None:
            return ipa
        r = self._core.walk(self.memory, ipa, False, s2=ste.s2)
        if r.fault is not None:
            kind = _FAULT_EVENT[r.fault.kind]
            raise _ConfigError(kind, fault=r.fault, record=ste.s2r
                               or kind == R.EventType.F_WALK_EABT, event_class=R.EventClass.CD)
        pa: int = r.pa
        return pa

    def _fetch_cd(self, sid: int, ste: _Ste, ssid: int) -> _Cd:
        cd = self._cd_cache.get((sid, ssid))
        if cd is not None:
            return cd
        addr = self._cd_address(ste, ssid)
        cd = self._decode_cd(self._fetch(addr, R.CD_SIZE, R.EventType.F_CD_FETCH))
        self._cd_cache[(sid, ssid)] = cd
        return cd

    def _decode_cd(self, w: list[int]) -> _Cd:
        bad = _ConfigError(R.EventType.C_BAD_CD)
        w0 = w[0]
        if (not R.CD0_V.get(w0) or not R.CD0_AA64.get(w0) or not R.CD0_A.get(w0)
                or R.CD0_S.get(w0) or R.CD0_HA.get(w0) or R.CD0_HD.get(w0)
                or R.CD0_ENDI.get(w0) or R.CD0_IPS.get(w0) > 5):
            raise bad
        ips = R.OAS_BITS[min(R.CD0_IPS.get(w0), R.OAS_BITS.index(self.oas))]
        epd = (bool(R.CD0_EPD0.get(w0)), bool(R.CD0_EPD1.get(w0)))
        granule = (R.TG_GRANULE.get(R.CD0_TG0.get(w0)), R.TG1_GRANULE.get(R.CD0_TG1.get(w0)))
        tsz = (R.CD0_T0SZ.get(w0), R.CD0_T1SZ.get(w0))
        ttb = (R.CD1_TTB0.get(w[1]) << 4, R.CD2_TTB1.get(w[2]) << 4)
        for n in (0, 1):
            if epd[n]:
                continue
            if granule[n] not in self.granules or not 16 <= tsz[n] <= 39 or ttb[n] >> ips:
                raise bad
        tbi = R.CD0_TBI.get(w0)
        s1 = Stage1(
            ttb0=ttb[0], tsz0=tsz[0], granule0=granule[0] or 4096, ttb1=ttb[1], tsz1=tsz[1],
            granule1=granule[1] or 4096, epd0=epd[0], epd1=epd[1], ips=ips,
            affd=bool(R.CD0_AFFD.get(w0)), had0=self.had and bool(R.CD1_HAD0.get(w[1])),
            had1=self.had and bool(R.CD2_HAD1.get(w[2])), tbi0=bool(tbi & 1),
            tbi1=bool(tbi & 2),
        )
        return _Cd(s1, R.CD0_ASID.get(w0), bool(R.CD0_R.get(w0)))

    def _resolve(self, sid: int, ssid: int | None) -> _Stream:
        """Fetch and decode the configuration for (sid, ssid), caching it."""
        ste = self._fetch_ste(sid)
        if ste.config == R.SteConfig.ABORT:
            st = _Stream(core.STREAM_ABORT, None, False, False, 0)
        elif ste.config == R.SteConfig.BYPASS:
            st = _Stream(core.STREAM_BYPASS, None, False, False, 0)
        elif ste.config == R.SteConfig.S2:
            # With no CD, STE.S2R also governs the (stage 1) input-size fault.
            st = _Stream(core.STREAM_TRANSLATE, XlateConfig(s2=ste.s2, vmid=ste.vmid), ste.s2r,
                         ste.s2r, self.oas)
        else:
            cd_index = ssid
            if ssid is None:
                if ste.s1cdmax and ste.s1dss == R.S1DSS_TERMINATE:
                    raise _ConfigError(R.EventType.F_STREAM_DISABLED)
                if ste.s1cdmax and ste.s1dss == R.S1DSS_BYPASS:
                    if ste.s2 is None:
                        st = _Stream(core.STREAM_BYPASS, None, False, False, 0)
                    else:
                        st = _Stream(core.STREAM_TRANSLATE, XlateConfig(s2=ste.s2,
                                                                        vmid=ste.vmid),
                                     ste.s2r, ste.s2r, self.oas)
                    return self._cache(sid, ssid, st)
                cd_index = 0
            elif ssid >> ste.s1cdmax:
                raise _ConfigError(R.EventType.C_BAD_SUBSTREAMID)
            cd = self._fetch_cd(sid, ste, cast(int, cd_index))     # 0 when ssid is None
            st = _Stream(core.STREAM_TRANSLATE,
                         XlateConfig(cd.s1, ste.s2, asid=cd.asid, vmid=ste.vmid),
                         cd.record, ste.s2r, 0)
        return self._cache(sid, ssid, st)

    def _cache(self, sid: int, ssid: int | None, st: _Stream) -> _Stream:
        if ssid is None:
            self._by_sid[sid] = st
            self._streams.set(sid, st.mode, st.cfg, st.ias)
        else:
            self._by_ssid[(sid, ssid)] = st
        return st

    # -------------------------------------------------------- translation

    def translate(self, sid: int, iova: int, write: bool = False,
                  ssid: int | None = None) -> SmmuResult:
        """Translate one transaction from StreamID ``sid`` (and SubstreamID).

        ``sid`` must fit SIDSIZE bits, ``ssid`` (None: no SubstreamID) SSIDSIZE
        bits and ``iova`` 64 bits: these are the caller's (the harness's) side of
        the transaction, so anything else is a :class:`TypeError` or
        :class:`~pymsi.errors.InvalidArgument` before the SMMU does anything.  A
        StreamID beyond the programmed stream table is the guest's business: it
        gives C_BAD_STREAMID.
        """
        if ssid is None and type(sid) is int and type(iova) is int:
            # The hit path: a StreamID whose translating configuration is cached.
            try:
                r = self._xl(sid, iova, write)      # an SmmuResult, or a faulting WalkResult
            except (TypeError, OverflowError):      # bad arguments: the full path says
                r = None
            if r is not None:
                if r[0] is _TRANSLATED:
                    if trace_smmuv3_translate_success.enabled:
                        self._trace_success(sid, iova, write, r.walk)
                    return r
                return self._fault_event(r, self._by_sid[sid], sid, None, iova, write)
        if type(sid) is not int or type(iova) is not int or (
                ssid is not None and type(ssid) is not int):
            self._check_args(sid, iova, ssid)
        if not self._cr0 & _SMMUEN:
            self._check_args(sid, iova, ssid)
            if trace_smmuv3_translate_disable.enabled:
                trace_smmuv3_translate_disable(sid=sid, addr=iova, is_write=write,
                                               abort=bool(self._gbpa & R.GBPA_ABORT))
            if self._gbpa & R.GBPA_ABORT:
                return SmmuResult(Outcome.ABORTED, None)
            return SmmuResult(Outcome.BYPASSED, iova)
        st = self._by_sid.get(sid) if ssid is None else self._by_ssid.get((sid, ssid))
        if st is None:
            self._check_args(sid, iova, ssid)
            try:
                st = self._resolve(sid, ssid)
            except _ConfigError as e:
                return self._config_event(e, sid, ssid, iova, write)
        if st.mode == _TRANSLATE:
            if st.ias and iova >> st.ias:
                self._check_args(sid, iova, ssid)
                w = WalkResult(Fault(1, FaultKind.ADDRESS_SIZE, 0))
            else:
                w = self._translate(self.memory, iova, write, st.cfg, self.tlb)
                if w.fault is None:
                    if trace_smmuv3_translate_success.enabled:
                        self._trace_success(sid, iova, write, w, st.cfg)
                    return _new(SmmuResult, (_TRANSLATED, w.pa, None, None, False, w))
            return self._fault_event(w, st, sid, ssid, iova, write)
        self._check_args(sid, iova, ssid)
        if st.mode == core.STREAM_BYPASS:
            if trace_smmuv3_translate_bypass.enabled:
                trace_smmuv3_translate_bypass(sid=sid, addr=iova, is_write=write)
            return SmmuResult(Outcome.BYPASSED, iova)
        if trace_smmuv3_translate_abort.enabled:
            trace_smmuv3_translate_abort(sid=sid, addr=iova, is_write=write, event=None)
        return SmmuResult(Outcome.ABORTED, None)

    def _trace_success(self, sid: int, iova: int, write: bool, w: WalkResult,
                       cfg: XlateConfig | None = None) -> None:
        if cfg is None:
            cfg = cast(XlateConfig, self._by_sid[sid].cfg)   # the stream translated
        trace_smmuv3_translate_success(
            sid=sid, iova=iova, ipa=w.ipa, translated=w.pa, is_write=write,
            stage=(1 if cfg.s1 is not None else 0) | (2 if cfg.s2 is not None else 0),
            tlb_hit=w.tlb_hit)

    def _check_args(self, sid: Any, iova: Any, ssid: Any) -> None:
        """The host arguments of a transaction, checked (see :meth:`translate`)."""
        int_arg("sid", sid, self.sidsize)
        int_arg("iova", iova, 64)
        if ssid is not None:
            int_arg("ssid", ssid, self.ssidsize)

    def _config_event(self, e: _ConfigError, sid: int, ssid: int | None, iova: int,
                      write: bool) -> SmmuResult:
        f = e.fault
        if f is not None:                  # a stage-2 fault while fetching a CD
            words = self._event(e.event, sid, ssid, iova, write, s2=True,
                                event_class=e.event_class,
                                ipa=cast(int, f.ipa) if e.event != R.EventType.F_WALK_EABT
                                else 0,
                                fetch_addr=f.ipa or 0)
        else:
            words = self._event(e.event, sid, ssid, iova, write, fetch_addr=e.fetch_addr)
        recorded = self.record_event(words) if e.record else False
        if not e.record:
            self.stats["events_suppressed"] += 1
        if trace_smmuv3_translate_abort.enabled:
            trace_smmuv3_translate_abort(sid=sid, addr=iova, is_write=write, event=e.event.name)
        return SmmuResult(Outcome.ABORTED, None, f, e.event, recorded)

    def _fault_event(self, w: WalkResult, st: _Stream, sid: int, ssid: int | None, iova: int,
                     write: bool) -> SmmuResult:
        f = cast(Fault, w.fault)                    # called for a faulted walk only
        etype = _FAULT_EVENT[f.kind]
        eabt = etype == R.EventType.F_WALK_EABT
        record = eabt or (st.record_s2 if f.stage == 2 else st.record_s1)
        recorded = False
        if record:
            cls = R.EventClass.TT if f.s1_table_walk or eabt else R.EventClass.IN
            words = self._event(etype, sid, ssid, iova, write, s2=f.stage == 2,
                                event_class=cls, ipa=(f.ipa or 0) if not eabt else 0)
            recorded = self.record_event(words)
        else:
            self.stats["events_suppressed"] += 1
        if trace_smmuv3_translate_abort.enabled:
            trace_smmuv3_translate_abort(sid=sid, addr=iova, is_write=write, event=etype.name)
        return SmmuResult(Outcome.ABORTED, None, f, etype, recorded, w)

    def translate_batch(self, sids: Buffer, iovas: Buffer, out_pa: Buffer, status: Buffer,
                        write: bool = False) -> int:
        """Translate many transactions (no SubstreamID), in one C call where possible.

        Fills ``out_pa`` and ``status`` (the core's batch statuses: 0
        translated, STATUS_BYPASS, STATUS_ABORT, or a fault code) as one
        :meth:`translate` per item would, events included, in item order.
        Returns how many items were translated or bypassed.  A StreamID that does
        not fit SIDSIZE is :class:`~pymsi.errors.InvalidArgument` before any event
        is recorded (the outputs may be partly written).  Interrupts the batch's
        events raise are sent when the whole batch is done.
        """
        n, (sv, iv, op, st) = batch_views([(sids, "u32", "sids"), (iovas, "u64", "iovas")],
                                          [(out_pa, "u64", "out_pa"), (status, "i32", "status")])
        self._busy += 1
        try:
            return self._translate_batch(n, sv, iv, op, st, write)
        finally:
            self._busy -= 1
            if self._outbox and not self._busy:
                self._send_outbox()

    def _translate_batch(self, n: int, sv: Any, iv: Any, op: Any, st: Any,
                         write: bool) -> int:
        if trace_smmuv3_translate_success.enabled or trace_smmuv3_translate_abort.enabled:
            return self._translate_batch_traced(n, sv, iv, op, st, write)
        if self._cr0 & R.CR0_SMMUEN:
            scratch = self._scratch
            if len(scratch) < n:
                scratch = self._scratch = array.array("I", bytes(4 * n))
            ok: int = self._core.stream_batch(self.memory, self._streams, sv, iv, op, st,
                                         tlb=self.tlb, write=write, unresolved=scratch)
            if ok == n:
                return ok
            # Only the items C left unresolved come back to Python (n - ok of them).
            todo: Any = scratch[:n - ok]
        else:
            for k in range(n):
                st[k] = core.STATUS_NO_CONFIG           # the slow path handles them
            ok, todo = 0, range(n)
        # An invalid StreamID is never in C's cache, so it is among the unresolved.
        if todo and max(sv[k] for k in todo) >> self.sidsize:
            bad = max(sv[k] for k in todo)
            raise InvalidArgument(f"sid={bad:#x} does not fit in {self.sidsize} bits")
        for k in todo:
            s = st[k]
            if s >= core.STATUS_FAULT:             # translated in C, faulted: record it
                fault = cast(Fault, core.status_fault(s))   # a fault status has a fault
                if fault.stage == 2:
                    fault = fault._replace(ipa=op[k])
                self._fault_event(WalkResult(fault), self._by_sid[sv[k]], sv[k],
                                  None, iv[k], write)
                op[k] = 0
            elif s == core.STATUS_NO_CONFIG:       # first transaction of the stream
                r = self.translate(sv[k], iv[k], write)
                op[k] = 0 if r.pa is None else r.pa
                st[k] = _status_of(r)
            ok += st[k] in (0, core.STATUS_BYPASS)
        return ok

    def _translate_batch_traced(self, n: int, sv: Any, iv: Any, op: Any, st: Any,
                                write: bool) -> int:
        """The batch one item at a time, so each translation is traced."""
        if n and max(sv) >> self.sidsize:
            raise InvalidArgument(f"sid={max(sv):#x} does not fit in {self.sidsize} bits")
        ok = 0
        for k in range(n):
            r = self.translate(sv[k], iv[k], write)
            op[k] = 0 if r.pa is None else r.pa
            st[k] = _status_of(r)
            ok += st[k] in (0, core.STATUS_BYPASS)
        return ok

    def __repr__(self) -> str:
        stages = "nested" if self.s1p and self.s2p else "s1" if self.s1p else "s2"
        return (f"<SMMUv3 {stages} oas={self.oas} sidsize={self.sidsize} "
                f"smmuen={int(bool(self._cr0 & 1))} tlb={len(self.tlb)}>")


def _translated(w: WalkResult) -> SmmuResult:
    return _new(SmmuResult, (_TRANSLATED, w.pa, None, None, False, w))


def _no_hit(sid: int, iova: int, write: bool) -> None:
    """The hit path while the SMMU is disabled (or has no C copy of its config cache)."""
    return None


def _status_of(r: SmmuResult) -> int:
    if r.outcome is Outcome.TRANSLATED:
        return 0
    if r.outcome is Outcome.BYPASSED:
        return core.STATUS_BYPASS
    return core.STATUS_ABORT if r.fault is None else core.encode_status(r.fault)


__all__ = ["SMMUv3", "SmmuResult", "Outcome", "Event"]
