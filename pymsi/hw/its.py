"""A GICv3 Interrupt Translation Service (with the GICv4 direct-injection subset).

Software gives it memory for its device, collection (and vPE) tables through
GITS_BASER<n> (flat or two-level) and a command queue through GITS_CBASER,
then enables it (GITS_CTLR) and posts 32-byte commands by advancing
GITS_CWRITER.  A 32-bit write of an EventID to GITS_TRANSLATER (ITS base +
0x10040), made by a device whose requester ID is the DeviceID, is translated
through the device table, the device's interrupt translation table and the
collection table into an LPI made pending on a redistributor — or, for an
event mapped with VMAPTI, into a vLPI of a vPE (and its doorbell when the vPE
is not resident).

The in-memory table formats are IMPLEMENTATION DEFINED; this ITS uses its own
(device/collection entries 8 bytes, vPE entries and ITEs 16 bytes, which
GITS_BASER.Entry_Size and GITS_TYPER.ITT_entry_size advertise).  RDbase is a
processor number (GITS_TYPER.PTA = 0).  Commands run as soon as CWRITER
moves.  A command with bad parameters is ignored and recorded (or, with
``stall_on_error``, stalls the queue — the architecture allows either); a
memory error reading a command or a table stalls it (GITS_CREADR.Stalled)
until software writes GITS_CWRITER with Retry set or rewrites GITS_CBASER.  A
translation that fails is dropped and recorded.  Nothing a guest writes makes
the model raise.

Translation cache.  Like a real ITS, this one caches what a translation reads
from its tables — per (DeviceID, EventID) the interrupt translation entry, per
collection its target processor, per vPE its table entry — so an MSI does not
re-read memory.  Only successful reads are cached.  An entry is dropped by the
command that changes it, as the architecture requires software to issue one:
MAPD drops the device's events; MAPTI, MAPI, MOVI, DISCARD, VMAPTI, VMAPI and
VMOVI drop their (DeviceID, EventID); MAPC drops the collection; VMAPP and
VMOVP drop the vPE; writing GITS_CTLR (enable or disable), GITS_BASER<n> or
resetting drops everything.  INV / INVALL / VINVALL concern LPI configuration,
not translation, and drop nothing here.  Software that edits the tables in
memory without the command sees the stale translation until it issues it.
Commands (INT, CLEAR, MOVI, ...) always read the tables themselves.
"""

from __future__ import annotations

import array
import enum
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import trace
from ..core import common as _cc
from ..core.common import PhysMemory
from ..core.gic_formats import (
    C0_DEVICEID,
    C0_OP,
    C1_EVENTID,
    C1_PINTID,
    C1_SIZE,
    C1_VPEID,
    C2_D,
    C2_DOORBELL,
    C2_ICID,
    C2_ITT,
    C2_RDBASE,
    C2_V,
    C2_VINTID,
    C3_RDBASE2,
    C3_VPT_ADDR,
    C3_VPT_SIZE,
    CTE_RDBASE,
    CTE_SIZE_BYTES,
    CTE_V,
    DTE_ITT,
    DTE_SIZE,
    DTE_SIZE_BYTES,
    DTE_V,
    ITE0_INTID,
    ITE0_V,
    ITE0_VIRTUAL,
    ITE1_DOORBELL,
    ITE1_ICID,
    ITE1_VPEID,
    ITE_SIZE,
    L1E_ADDR,
    L1E_VALID,
    VPE0_RDBASE,
    VPE0_V,
    VPE0_VPT_SIZE,
    VPE_SIZE_BYTES,
)
from ..core.gic_formats import Cmd as Cmd  # the formats are defined once there
from ..core.gic_formats import ItsError as ItsError
from ..core.itscmdq import CMDQ_COMMANDS, CMDQ_OPS, MemoryCmdq
from .bits import Field, merge_access
from .gicv3 import (
    _BIT_SET,
    _PENDBASER_PA_MASK,
    LPI_BASE,
    PENDBASER_PA,
    SPURIOUS,
    Gicv3,
    trace_gicv3_redist_process_lpi,
)
from .gicv3 import Redistributor as _Redistributor

GITS_CTLR, GITS_IIDR, GITS_TYPER = 0x0000, 0x0004, 0x0008
GITS_CBASER, GITS_CWRITER, GITS_CREADR = 0x0080, 0x0088, 0x0090
GITS_BASER = 0x0100
GITS_PIDR2 = 0xFFE8
# GITS_PIDR2: ArchRev [7:4] (3 = GICv3, 4 = GICv4), JEDEC [3] and JEP106 identity [2:0]
# (Arm's code 0x3B); a GICv3 ITS reads 0x3B.
PIDR2_ARCHREV, PIDR2_ARM_JEP106 = Field(7, 4), 0xB
# Memory attributes of GITS_BASER<n> / GITS_CBASER: InnerCache [61:59], OuterCache [55:53],
# Shareability [11:10] (same positions in both registers).
BASER_INNER_CACHE, BASER_OUTER_CACHE, BASER_SHAREABILITY = Field(61, 59), Field(55, 53), \
    Field(11, 10)
CACHE_NC, CACHE_RAWAWB = 1, 7                # InnerCache: Non-cacheable, RaWaWb
SH_NONE, SH_INNER = 0, 1                     # Shareability: Non-shareable, Inner Shareable
GITS_TRANSLATER = 0x10040
ITS_SIZE = 0x20000

CTLR_ENABLED, CTLR_QUIESCENT = 1 << 0, 1 << 31
TYPER_PHYSICAL, TYPER_VIRTUAL, TYPER_ITT_ENTRY_SIZE = Field(0), Field(1), Field(7, 4)
TYPER_ID_BITS, TYPER_DEVBITS, TYPER_PTA, TYPER_HCC = Field(12, 8), Field(17, 13), Field(19), \
    Field(31, 24)
TYPER_CIDBITS, TYPER_CIL, TYPER_VMOVP = Field(35, 32), Field(36), Field(37)
CBASER_SIZE, CBASER_PA, CBASER_VALID = Field(7, 0), Field(51, 12), Field(63)
CWRITER_RETRY, CWRITER_OFFSET = Field(0), Field(19, 5)
CREADR_STALLED = Field(0)
BASER_SIZE, BASER_PAGE_SIZE, BASER_PA = Field(7, 0), Field(9, 8), Field(47, 12)
BASER_ENTRY_SIZE, BASER_TYPE, BASER_INDIRECT, BASER_VALID = Field(52, 48), Field(58, 56), \
    Field(62), Field(63)
BASER_WRITABLE = (BASER_VALID.mask | BASER_INDIRECT.mask | 0x07 << 59 | 0x07 << 53
                  | BASER_PA.mask | 3 << 10 | BASER_PAGE_SIZE.mask | BASER_SIZE.mask)
CBASER_WRITABLE = CBASER_VALID.mask | 0x07 << 59 | 0x07 << 53 | CBASER_PA.mask | 3 << 10 | 0xFF
PAGE_SIZES = (4096, 16384, 65536, 65536)


class BaserType(enum.IntEnum):
    """GITS_BASER<n>.Type."""

    NONE = 0
    DEVICES = 1
    VPES = 2
    COLLECTIONS = 4


class _Error(Exception):
    def __init__(self, code: ItsError) -> None:
        self.code = code


class _Stall(Exception):
    """A memory error: the command queue stops."""


_ITE0_VIRTUAL, _ITE1_ICID = ITE0_VIRTUAL.mask, ITE1_ICID.mask
_CWRITER_OFFSET = CWRITER_OFFSET.mask
_PENDBASER_PA = PENDBASER_PA.mask
ENTRY_SIZE = {BaserType.DEVICES: DTE_SIZE_BYTES, BaserType.COLLECTIONS: CTE_SIZE_BYTES,
              BaserType.VPES: VPE_SIZE_BYTES}

# Tracepoints, named and with the fields of QEMU's hw/intc/trace-events (one per command,
# traced as the command is taken from the queue, before it runs).
_TP = trace.Tracepoint
_CMD_TRACE: dict[Cmd, tuple[trace.Tracepoint, Callable[[int, int, int, int, int],
                                                   dict[str, int]]]] = {
    Cmd.MOVI: (_TP("gicv3_its_cmd_movi", "devid", "eventid", "icid"),
               lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev, "icid": C2_ICID.get(d2)}),
    Cmd.INT: (_TP("gicv3_its_cmd_int", "devid", "eventid"),
              lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev}),
    Cmd.CLEAR: (_TP("gicv3_its_cmd_clear", "devid", "eventid"),
                lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev}),
    Cmd.SYNC: (_TP("gicv3_its_cmd_sync", "rdbase"),
               lambda dev, ev, d1, d2, d3: {"rdbase": C2_RDBASE.get(d2)}),
    Cmd.MAPD: (_TP("gicv3_its_cmd_mapd", "devid", "size", "ittaddr", "valid"),
               lambda dev, ev, d1, d2, d3: {"devid": dev, "size": C1_SIZE.get(d1),
                                            "ittaddr": C2_ITT.get(d2) << 8,
                                            "valid": C2_V.get(d2)}),
    Cmd.MAPC: (_TP("gicv3_its_cmd_mapc", "icid", "rdbase", "valid"),
               lambda dev, ev, d1, d2, d3: {"icid": C2_ICID.get(d2), "rdbase": C2_RDBASE.get(d2),
                                            "valid": C2_V.get(d2)}),
    Cmd.MAPTI: (_TP("gicv3_its_cmd_mapti", "devid", "eventid", "icid", "intid"),
                lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev,
                                             "icid": C2_ICID.get(d2), "intid": C1_PINTID.get(d1)}),
    Cmd.MAPI: (_TP("gicv3_its_cmd_mapi", "devid", "eventid", "icid"),
               lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev, "icid": C2_ICID.get(d2)}),
    Cmd.INV: (_TP("gicv3_its_cmd_inv", "devid", "eventid"),
              lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev}),
    Cmd.INVALL: (_TP("gicv3_its_cmd_invall", "icid"),
                 lambda dev, ev, d1, d2, d3: {"icid": C2_ICID.get(d2)}),
    Cmd.MOVALL: (_TP("gicv3_its_cmd_movall", "rd1", "rd2"),
                 lambda dev, ev, d1, d2, d3: {"rd1": C2_RDBASE.get(d2), "rd2": C3_RDBASE2.get(d3)}),
    Cmd.DISCARD: (_TP("gicv3_its_cmd_discard", "devid", "eventid"),
                  lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev}),
    Cmd.VMOVI: (_TP("gicv3_its_cmd_vmovi", "devid", "eventid", "vpeid", "dbvalid", "doorbell"),
                lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev,
                                             "vpeid": C1_VPEID.get(d1), "dbvalid": C2_D.get(d2),
                                             "doorbell": C2_DOORBELL.get(d2)}),
    Cmd.VMOVP: (_TP("gicv3_its_cmd_vmovp", "vpeid", "rdbase"),
                lambda dev, ev, d1, d2, d3: {"vpeid": C1_VPEID.get(d1),
                                             "rdbase": C2_RDBASE.get(d2)}),
    Cmd.VSYNC: (_TP("gicv3_its_cmd_vsync", "vpeid"),
                lambda dev, ev, d1, d2, d3: {"vpeid": C1_VPEID.get(d1)}),
    Cmd.VMAPP: (_TP("gicv3_its_cmd_vmapp", "vpeid", "rdbase", "valid", "vptaddr", "vptsize"),
                lambda dev, ev, d1, d2, d3: {"vpeid": C1_VPEID.get(d1),
                                             "rdbase": C2_RDBASE.get(d2), "valid": C2_V.get(d2),
                                             "vptaddr": C3_VPT_ADDR.get(d3) << 16,
                                             "vptsize": C3_VPT_SIZE.get(d3)}),
    Cmd.VMAPTI: (_TP("gicv3_its_cmd_vmapti", "devid", "eventid", "vpeid", "vintid", "doorbell"),
                 lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev,
                                              "vpeid": C1_VPEID.get(d1),
                                              "vintid": C2_VINTID.get(d2),
                                              "doorbell": C2_DOORBELL.get(d2)}),
    Cmd.VMAPI: (_TP("gicv3_its_cmd_vmapi", "devid", "eventid", "vpeid", "doorbell"),
                lambda dev, ev, d1, d2, d3: {"devid": dev, "eventid": ev,
                                             "vpeid": C1_VPEID.get(d1),
                                             "doorbell": C2_DOORBELL.get(d2)}),
    Cmd.VINVALL: (_TP("gicv3_its_cmd_vinvall", "vpeid"),
                  lambda dev, ev, d1, d2, d3: {"vpeid": C1_VPEID.get(d1)}),
}
trace_gicv3_its_cmd_unknown = _TP("gicv3_its_cmd_unknown", "cmd")
trace_gicv3_its_cmd_error = _TP("gicv3_its_cmd_error", "cmd", "error",
                                doc="a command ignored (or stalling) with an error code")
trace_gicv3_its_translation_write = _TP(
    "gicv3_its_translation_write", "requester_id", "data",
    doc="a write of an EventID to GITS_TRANSLATER by DeviceID requester_id")
trace_gicv3_its_translation_error = _TP(
    "gicv3_its_translation_error", "requester_id", "data", "error",
    doc="a translation dropped (no DeviceID, ITS disabled, unmapped, memory error)")


class GicV3Its:
    """A GICv3 ITS attached to ``gic``, using ``memory`` for its tables and queue.

    ``devbits`` / ``id_bits`` / ``cidbits`` are the DeviceID, EventID and
    collection ID widths it advertises; ``gicv4`` adds the vPE table and the
    V* commands (default: whatever the GIC is).  ``trace`` keeps the last
    errors and dropped translations for inspection.
    """

    def __init__(self, gic: Gicv3, memory: PhysMemory, devbits: int = 16, id_bits: int = 16,
                 cidbits: int = 16, gicv4: bool | None = None,
                 stall_on_error: bool = False) -> None:
        self.gic, self.memory = gic, memory
        self.gicv4 = gic.gicv4 if gicv4 is None else gicv4
        self.devbits, self.id_bits, self.cidbits = devbits, id_bits, cidbits
        self.stall_on_error = stall_on_error
        # The batch view of the translation cache (see translate_batch): a core ItsCache
        # of the GIC memory's backend, when the GIC can set pending bits in batch.
        self._core: Any = None                  # the cffi core module (untyped)
        self._itc: Any = None                   # its core.ItsCache
        if gic._pending_batch is not None:
            from .. import core
            # (a core Memory: the GIC found its backend's pending_batch)
            self._core = core.backend(gic.memory.backend)  # type: ignore[attr-defined]
            self._itc = self._core.ItsCache()
        # GITS_TYPER is constant (it depends only on construction parameters): computed once.
        self.typer = (TYPER_PHYSICAL(1) | TYPER_VIRTUAL(int(self.gicv4))
                      | TYPER_ITT_ENTRY_SIZE(ITE_SIZE - 1) | TYPER_ID_BITS(id_bits - 1)
                      | TYPER_DEVBITS(devbits - 1) | TYPER_CIDBITS(cidbits - 1)
                      | TYPER_CIL(1) | TYPER_VMOVP(int(self.gicv4)))
        # The command queue's table commands (MAPD, MAPC, MAPTI, MAPI, SYNC, INV,
        # INVALL) run in the core (csrc/itscmd.c or its twin) when the memory is a core
        # Memory and the batch cache, if any, is of the same core; over any other memory,
        # the same Python definition (core.itscmdq) through the memory's public calls.
        self._cmdq: Any = MemoryCmdq()          # or a core.ItsCmdq (untyped, cffi)
        self._cmdq_key: tuple[int, int, int, int] | None = None
        mcore = _core_of(memory)
        if mcore is not None and (self._itc is None or self._core is mcore):
            self._cmdq = mcore.ItsCmdq()
        self.trace: deque[tuple[str, str, str]] = deque(maxlen=1024)
        self.stats = {"commands": 0, "command_errors": 0, "stalls": 0, "translations": 0,
                      "translations_dropped": 0, "lpis": 0, "vlpis": 0}
        self.reset()

    def reset(self) -> None:
        self.ctlr = 0
        self.cbaser = 0
        self.cwriter = 0
        self.creadr = 0
        self.stalled = False
        types = [BaserType.DEVICES, BaserType.COLLECTIONS,
                 BaserType.VPES if self.gicv4 else BaserType.NONE] + [BaserType.NONE] * 5
        self.baser = [self._baser_ro(t) for t in types]
        self._baser_dec: list[_DecodedBaser | None] = [None] * 3   # _entry_addr's decoded BASERs
        self._cq: tuple[int | None, int, int] = (None, 0, 0)   # (CBASER, queue base, size)
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        """Drop every cached translation (what disabling the ITS does)."""
        self._ite_cache: dict[int, dict[int, tuple[int, int]]] = {}   # dev -> event -> ITE
        self._col_cache: dict[int, int] = {}                           # ICID -> processor
        self._vpe_cache: dict[int, tuple[int, int, int]] = {}          # vPEID -> _vpe()
        if self._itc is not None:
            self._itc.clear()

    @staticmethod
    def _baser_ro(t: BaserType) -> int:
        if t == BaserType.NONE:
            return 0
        return BASER_TYPE(int(t)) | BASER_ENTRY_SIZE(ENTRY_SIZE[t] - 1)

    # -- registers ------------------------------------------------------------

    def mmio_read(self, offset: int, size: int = 4, requester_id: int | None = None) -> int:
        reg = offset & ~7
        if reg == GITS_CREADR:
            v = self.creadr | int(self.stalled)
        elif reg == GITS_CWRITER:
            v = self.cwriter
        elif reg == GITS_TYPER:
            v = self.typer
        elif reg == GITS_CBASER:
            v = self.cbaser
        elif GITS_BASER <= reg < GITS_BASER + 64:
            v = self.baser[(reg - GITS_BASER) // 8]
        else:
            if offset == GITS_CTLR:
                return self.ctlr | (0 if self.ctlr & CTLR_ENABLED else CTLR_QUIESCENT)
            if offset == GITS_IIDR:
                return 0x43B
            if offset == GITS_PIDR2:
                return PIDR2_ARCHREV(4 if self.gicv4 else 3) | PIDR2_ARM_JEP106
            return 0
        return v if size == 8 else (v >> (8 * (offset & 4))) & 0xFFFF_FFFF

    def mmio_write(self, offset: int, value: int, size: int = 4,
                   requester_id: int | None = None) -> None:
        if offset == GITS_TRANSLATER and size in (2, 4):
            event_id = value & 0xFFFF_FFFF
            if self.ctlr & CTLR_ENABLED and not trace_gicv3_its_translation_write.enabled:
                # translate()'s cache hit path, inline (the write of every MSI)
                per = self._ite_cache.get(requester_id)  # type: ignore[arg-type]  # None: a miss
                if per is not None:
                    ite = per.get(event_id)
                    if ite is not None and not ite[0] & _ITE0_VIRTUAL:
                        proc = self._col_cache.get(ite[1] & _ITE1_ICID)
                        redists = self.gic.redists
                        if proc is not None and 0 <= proc < len(redists):
                            stats = self.stats
                            stats["translations"] += 1
                            rd = redists[proc]
                            intid = ite[0] >> 32
                            if (type(rd) is not _Redistributor
                                    or not LPI_BASE <= intid < rd._lpi_limit
                                    or trace_gicv3_redist_process_lpi.enabled):
                                if rd.set_pending(intid):
                                    stats["lpis"] += 1
                                return
                            # set_pending's case of an LPI in range, no tracing, inline
                            rd.stats["lpis_set"] += 1
                            pending = rd.pending
                            if intid not in pending:
                                pending.add(intid)
                                rd._fresh.add(intid)
                                gic = rd.gic
                                bit = gic._bit
                                table = rd.pendbaser & _PENDBASER_PA_MASK
                                if bit is None or bit(table + (intid >> 3), intid & 7,
                                                      _BIT_SET) < 0:
                                    gic.pending_bit(table, intid, True)
                            stats["lpis"] += 1
                            return
            self.translate(requester_id, event_id)
            return
        if offset == GITS_CWRITER and size in (4, 8):  # the driver's write: merge_access inline
            new = value & 0xFFFF_FFFF_FFFF_FFFF if size == 8 else \
                self.cwriter & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
            self.cwriter = new & _CWRITER_OFFSET
            if self.stalled and new & 1:                # CWRITER.Retry
                self.stalled = False
            self._process()
            return
        reg, high = offset & ~7, offset & 4
        enabled = self.ctlr & CTLR_ENABLED
        if offset == GITS_CTLR:
            self.ctlr = value & CTLR_ENABLED
            self.invalidate_cache()
            if self.ctlr:
                self._process()
        elif reg == GITS_CBASER and not enabled:
            self.cbaser = merge_access(self.cbaser, high, value, size) & CBASER_WRITABLE
            self.creadr = 0
            self.stalled = False
        elif reg == GITS_CWRITER:
            new = merge_access(self.cwriter, high, value, size)
            self.cwriter = CWRITER_OFFSET.mask & new
            if self.stalled and CWRITER_RETRY.get(new):
                self.stalled = False
            self._process()
        elif GITS_BASER <= reg < GITS_BASER + 64 and not enabled:
            n = (reg - GITS_BASER) // 8
            if BASER_TYPE.get(self.baser[n]):
                self.invalidate_cache()
                new = merge_access(self.baser[n], high, value, size) & BASER_WRITABLE
                self.baser[n] = (self.baser[n] & ~BASER_WRITABLE) | new

    def mmio_write_batch(self, offset: int, values: Iterable[int], size: int = 4,
                         requester_id: int | None = None) -> None:
        """:meth:`mmio_write` of each of ``values`` at ``offset``, in order; writes of
        EventIDs to GITS_TRANSLATER go through :meth:`translate_batch`."""
        if offset == GITS_TRANSLATER and size in (2, 4):
            if not (isinstance(values, array.array) and values.typecode == "I"):
                values = array.array("I", [v & 0xFFFF_FFFF for v in values])
            self.translate_batch(requester_id, values)
            return
        for v in values:
            self.mmio_write(offset, v, size, requester_id=requester_id)

    def translate_batch(self, device_id: int | None, event_ids: Iterable[int]) -> int:
        """:meth:`translate` of each of ``event_ids`` (u32) from ``device_id``, in order,
        with the same outcome (pending LPIs, pending tables, statistics, trace
        records); returns how many were not dropped.

        The cached physical translations are looked up in C
        (:func:`pymsi.core.its_lookup_batch` over :attr:`_itc`, the part of the
        translation cache that batches see: it holds only what the cache holds and is
        dropped with it), and their LPIs made pending per redistributor by
        :meth:`Redistributor.set_pending_batch`, whose new pending bits are set by one
        core call.  An event the batch cache misses is looked up in the translation
        cache (and copied to the batch cache) or is one :meth:`translate`.  With
        tracing on it is :meth:`translate` of each."""
        gic = self.gic
        itc = self._itc
        if (itc is None or device_id is None or not 0 <= device_id <= 0xFFFF_FFFF
                or not self.ctlr & CTLR_ENABLED or trace_gicv3_its_translation_write.enabled
                or trace_gicv3_redist_process_lpi.enabled):
            return sum(self.translate(device_id, e) for e in event_ids)
        c = self._core
        ev = event_ids if isinstance(event_ids, array.array) and event_ids.typecode == "I" \
            else array.array("I", event_ids)
        n = len(ev)
        redists = gic.redists
        nred = len(redists)
        zeros = bytes(4 * n)
        intids, status = array.array("I", zeros), array.array("i", zeros)
        grouped, counts = array.array("I", zeros), array.array("I", bytes(4 * nred))
        limits = array.array("I", [rd._lpi_limit for rd in redists])
        placed: int = c.its_lookup_batch(itc, device_id, ev, limits, intids, status, grouped,
                                         counts)
        extra: dict[int, list[int]] = {}
        done = more = 0
        if placed < n:
            per = self._ite_cache.get(device_id)
            cols, translate = self._col_cache, self.translate
            for k in range(n):
                if status[k] >= 0:
                    continue
                e = ev[k]
                ite = None if per is None else per.get(e)
                if ite is not None and not ite[0] & _ITE0_VIRTUAL:
                    proc = cols.get(ite[1] & _ITE1_ICID)
                    if proc is not None and 0 <= proc < nred:
                        intid = ite[0] >> 32
                        if LPI_BASE <= intid < limits[proc]:
                            itc.set(device_id, e, intid, proc)
                            extra.setdefault(proc, []).append(intid)
                            more += 1
                            continue
                done += translate(device_id, e)
                if per is None:
                    per = self._ite_cache.get(device_id)
        stats = self.stats
        stats["translations"] += placed + more
        stats["lpis"] += placed + more
        tables, new = array.array("Q"), array.array("I")
        off = 0
        for p in range(nred):                   # per redistributor: its state, then ...
            cnt = counts[p]
            add = extra.get(p)
            if cnt or add:
                lst = grouped[off:off + cnt]
                if add:
                    lst.extend(add)
                rd = redists[p]
                fresh = rd._take_pending(lst)
                if fresh:
                    new.extend(fresh)
                    tables.extend(array.array("Q", [rd.pendbaser & _PENDBASER_PA]) * len(fresh))
            off += cnt
        if new:                                 # ... every new pending bit in one core call
            n = len(new)
            # set whenever _itc is (__init__)
            ok = gic._pending_batch(gic.memory, tables, new,  # type: ignore[misc]
                                    array.array("i", bytes(4 * n)))
            if ok < n:
                gic.stats["table_errors"] += n - ok
        return done + placed + more

    def _itc_fill(self, device_id: int, event_id: int) -> None:
        """Copy the translation cache's physical entry for (``device_id``, ``event_id``)
        and its collection's target, when both are cached, to :attr:`_itc` (the part of
        the cache that batches and the bus's one-call MSI routes see; dropped with it)."""
        itc = self._itc
        per = self._ite_cache.get(device_id)
        ite = None if per is None else per.get(event_id)
        if itc is None or ite is None or ite[0] & _ITE0_VIRTUAL:
            return
        proc = self._col_cache.get(ite[1] & _ITE1_ICID)
        if proc is not None and 0 <= proc < len(self.gic.redists) and \
                0 <= device_id <= 0xFFFF_FFFF and 0 <= event_id <= 0xFFFF_FFFF:
            itc.set(device_id, event_id, ite[0] >> 32, proc)

    # -- command queue ------------------------------------------------------------

    def _process(self) -> None:
        if not self.ctlr & CTLR_ENABLED or self.stalled or not CBASER_VALID.get(self.cbaser):
            return
        cq = self._cq
        if cq[0] != self.cbaser:                # decoded once per CBASER value
            cq = self._cq = (self.cbaser, CBASER_PA.get(self.cbaser) << 12,
                             (CBASER_SIZE.get(self.cbaser) + 1) * 4096)
        base, qsize = cq[1], cq[2]
        if self.cwriter >= qsize or self.creadr >= qsize:
            self._note("queue", "CWRITER", "offset beyond the command queue")
            return
        self._process_core(base, qsize)

    def _step(self, base: int, qsize: int) -> bool:
        """Take the command at GITS_CREADR, one the core does not run, and run it here;
        False if the queue stalled."""
        try:
            cmd = self._read_command(base + self.creadr)
            self._execute(cmd)
        except _Stall:
            self._stall_memory()
            return False
        except _Error as e:
            if self._command_error(C0_OP.get(cmd[0]), e.code):
                return False
        self.stats["commands"] += 1
        self.creadr = (self.creadr + 32) % qsize
        return True

    def _stall_memory(self) -> None:
        """A memory error reading the command at GITS_CREADR or a table: stalled."""
        self.stalled = True
        self.stats["stalls"] += 1
        self._note("command", f"at {self.creadr:#x}", "memory error: stalled")

    def _command_error(self, op: int, code: ItsError) -> bool:
        """Record a command ignored with ``code`` (or stall on it); True if stalled."""
        self.stats["command_errors"] += 1
        name = _opname(op)
        self._note("command", name, code.name)
        if trace_gicv3_its_cmd_error.enabled:
            trace_gicv3_its_cmd_error(cmd=name, error=code.name)
        if self.stall_on_error:
            self.stalled = True
            self.stats["stalls"] += 1
            return True
        return False

    def _process_core(self, base: int, qsize: int) -> None:
        """The queue through the core's :class:`~pymsi.core.ItsCmdq`: it runs the table
        commands (MAPD, MAPC, MAPTI, MAPI, SYNC, INV, INVALL) in one call and hands back
        their cache drops and redistributor invalidations, applied here in command
        order; any other command runs in :meth:`_step`.  With one of the table commands'
        tracepoints on, the core runs one command per call, after its tracepoint fired.
        Errors and stalls are recorded as :meth:`_step` records them."""
        cmdq, redists = self._cmdq, self.gic.redists
        key = (self.cbaser, self.baser[0], self.baser[1], len(redists))
        if key != self._cmdq_key:               # configured once per register values
            dt = self._decode_baser(BaserType.DEVICES, self.baser[0])
            ct = self._decode_baser(BaserType.COLLECTIONS, self.baser[1])
            cmdq.configure(base, qsize, len(redists), self.devbits, self.id_bits,
                           self.cidbits, dt[1:], ct[1:])
            self._cmdq_key = key
        traced = (_TP_MAPD.enabled or _TP_MAPC.enabled or _TP_MAPTI.enabled
                  or _TP_MAPI.enabled or _TP_SYNC.enabled or _TP_INV.enabled
                  or _TP_INVALL.enabled)
        stats, memory, itc = self.stats, self.memory, self._itc
        while self.creadr != self.cwriter:
            end = self.cwriter
            if traced:                          # one command, after its tracepoint
                end = (self.creadr + 32) % qsize
                try:
                    d0, d1, d2, d3 = self._read_command(base + self.creadr)
                except _Stall:
                    self._stall_memory()
                    return
                tp = _CORE_TRACEPOINTS.get(C0_OP.get(d0))
                if tp is not None and tp[0].enabled:
                    tp[0](**tp[1](C0_DEVICEID.get(d0), C1_EVENTID.get(d1), d1, d2, d3))
            status, self.creadr, n, op, code, recs = cmdq.run(memory, itc, self.creadr,
                                                              end, CMDQ_OPS)
            stats["commands"] += n
            if recs:
                ite_cache = self._ite_cache
                for i in range(0, len(recs), 3):
                    kind, a, b = recs[i], recs[i + 1], recs[i + 2]
                    if kind == _REC_DROP_EVENT:
                        per = ite_cache.get(a)
                        if per is not None:
                            per.pop(b, None)
                    elif kind == _REC_INV:
                        redists[a].invalidate(b)
                    elif kind == _REC_DROP_DEVICE:
                        ite_cache.pop(a, None)
                    elif kind == _REC_DROP_COLLECTION:
                        self._col_cache.pop(a, None)
                    else:                       # INVALL
                        redists[a].invalidate()
            if status == _ITSQ_DONE:
                continue                        # at GITS_CWRITER (or, traced, the next one)
            if status == _ITSQ_HANDOFF:
                if not self._step(base, qsize):
                    return
            elif status == _ITSQ_ERROR:
                if self._command_error(op, ItsError(code)):
                    return
                stats["commands"] += 1
                self.creadr = (self.creadr + 32) % qsize
            elif status == _ITSQ_STALL:
                self._stall_memory()
                return

    def _read_command(self, addr: int) -> tuple[int, ...]:
        try:
            return _unpack4(self.memory.read(addr, 32))
        except (OSError, ValueError):
            raise _Stall() from None           # a command queue outside RAM: stall

    def _note(self, kind: str, what: str, why: str) -> None:
        self.trace.append((kind, what, why))

    def _read64(self, addr: int) -> int:
        try:
            value: int = self.memory.read_u64(addr)
        except (OSError, ValueError):
            raise _Stall() from None
        return value

    def _write64(self, addr: int, value: int) -> None:
        try:
            self.memory.write_u64(addr, value)
        except (OSError, ValueError):
            raise _Stall() from None

    def _entry_addr(self, t: BaserType, index: int) -> int | None:
        """Where table ``t`` keeps entry ``index`` (None: not provided)."""
        n: int = _TABLE_BASER[t]  # type: ignore[assignment]  # every table asked for has one
        baser = self.baser[n]
        dec = self._baser_dec[n]
        if dec is None or dec[0] != baser:      # decoded once per GITS_BASER<n> value
            dec = self._baser_dec[n] = self._decode_baser(t, baser)
        _, valid, indirect, base, span, esize, page = dec
        if not valid:
            return None
        if not indirect:
            return base + index * esize if index * esize < span else None
        per_page = page // esize
        l1 = index // per_page
        if l1 * 8 >= span:
            return None
        entry = self._read64(base + l1 * 8)
        if not L1E_VALID.get(entry):
            return None
        return (L1E_ADDR.get(entry) & ~(page - 1)) + (index % per_page) * esize

    @staticmethod
    def _decode_baser(t: BaserType, baser: int) -> _DecodedBaser:
        """(baser, valid, indirect, base, span, entry size, page size) of table ``t``."""
        page = PAGE_SIZES[BASER_PAGE_SIZE.get(baser)]
        return (baser, bool(BASER_VALID.get(baser)) and BASER_TYPE.get(baser) == t,
                bool(BASER_INDIRECT.get(baser)), BASER_PA.get(baser) << 12,
                (BASER_SIZE.get(baser) + 1) * page, ENTRY_SIZE[t], page)

    def _dte(self, device_id: int) -> tuple[int, int] | None:
        """(ITT address, EventID bits) of a mapped device."""
        if device_id >> self.devbits:
            return None
        addr = self._entry_addr(BaserType.DEVICES, device_id)
        if addr is None:
            return None
        d = self._read64(addr)
        if not DTE_V.get(d):
            return None
        return DTE_ITT.get(d) << 8, DTE_SIZE.get(d) + 1

    def _ite_addr(self, device_id: int, event_id: int, missing: ItsError) -> int:
        dte = self._dte(device_id)
        if dte is None or event_id >> dte[1]:
            raise _Error(missing)
        return dte[0] + event_id * ITE_SIZE

    def _ite(self, device_id: int, event_id: int, missing: ItsError) -> tuple[int, list[int]]:
        addr = self._ite_addr(device_id, event_id, missing)
        ite = [self._read64(addr), self._read64(addr + 8)]
        if not ITE0_V.get(ite[0]):
            raise _Error(missing)
        return addr, ite

    def _collection_rd(self, icid: int) -> int | None:
        """Processor number a mapped collection targets."""
        if icid >> self.cidbits:
            return None
        addr = self._entry_addr(BaserType.COLLECTIONS, icid)
        if addr is None:
            return None
        c = self._read64(addr)
        return CTE_RDBASE.get(c) if CTE_V.get(c) else None

    def _vpe(self, vpeid: int) -> tuple[int, int, int] | None:
        """(VPT address, VPT bits, processor number) of a mapped vPE."""
        if vpeid >> 16 or not self.gicv4:
            return None
        addr = self._entry_addr(BaserType.VPES, vpeid)
        if addr is None:
            return None
        d0 = self._read64(addr)
        if not VPE0_V.get(d0):
            return None
        return self._read64(addr + 8), VPE0_VPT_SIZE.get(d0) + 1, VPE0_RDBASE.get(d0)

    def _rd(self, procnum: int, err: ItsError) -> _Redistributor:
        rd = self.gic.redistributor(procnum)
        if rd is None:
            raise _Error(err)
        return rd

    def _execute(self, cmd: tuple[int, ...]) -> None:
        d0, d1, d2, d3 = cmd
        op = C0_OP.get(d0)
        dev, event = C0_DEVICEID.get(d0), C1_EVENTID.get(d1)
        known = _CMD_TABLE.get(op)
        if known is None:
            if trace_gicv3_its_cmd_unknown.enabled:
                trace_gicv3_its_cmd_unknown(cmd=op)
            raise _Error(ItsError.UNKNOWN_COMMAND)
        name, tp, fields, drop = known
        if op >= 0x20 and not self.gicv4:
            if trace_gicv3_its_cmd_unknown.enabled:
                trace_gicv3_its_cmd_unknown(cmd=op)
            raise _Error(ItsError.UNKNOWN_COMMAND)
        if tp.enabled:
            tp(**fields(dev, event, d1, d2, d3))
        if drop:                                        # what the command invalidates
            itc = self._itc
            if drop == _DROP_EVENT:
                per = self._ite_cache.get(dev)
                if per is not None:
                    per.pop(event, None)
                if itc is not None:
                    itc.remove(dev, event)
            else:
                self._vpe_cache.pop(C1_VPEID.get(d1), None)
        getattr(self, name)(dev, event, d1, d2, d3)

    # physical commands
    def _target(self, ite: Sequence[int], missing: ItsError) -> _Redistributor:
        """The redistributor a physical ITE's collection targets."""
        rd = self._collection_rd(ITE1_ICID.get(ite[1]))
        if rd is None:
            raise _Error(missing)
        return self._rd(rd, ItsError.PROCNUM_OOR)

    def _cmd_movi(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        addr, ite = self._ite(dev, event, ItsError.MOVI_UNMAPPED_INTERRUPT)
        if ITE0_VIRTUAL.get(ite[0]):
            raise _Error(ItsError.MOVI_UNMAPPED_INTERRUPT)
        new_icid = C2_ICID.get(d2)
        new_rd = self._collection_rd(new_icid)
        if new_rd is None:
            raise _Error(ItsError.MOVI_UNMAPPED_COLLECTION)
        old = self._target(ite, ItsError.MOVI_UNMAPPED_COLLECTION)
        new = self._rd(new_rd, ItsError.PROCNUM_OOR)
        intid = ITE0_INTID.get(ite[0])
        if old is not new and old.clear_pending(intid):
            new.set_pending(intid)
        self._write64(addr + 8, ITE1_ICID.put(ite[1], new_icid))

    def _cmd_movall(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        src = self._rd(C2_RDBASE.get(d2), ItsError.MOVALL_PROCNUM_OOR)
        dst = self._rd(C3_RDBASE2.get(d3), ItsError.MOVALL_PROCNUM_OOR)
        if src is dst:
            return
        for intid in sorted(src.pending):
            src.clear_pending(intid)
            dst.set_pending(intid)

    def _cmd_discard(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        addr, ite = self._ite(dev, event, ItsError.DISCARD_UNMAPPED_INTERRUPT)
        self._set_state(ite, False, ItsError.DISCARD_UNMAPPED_INTERRUPT)
        self._write64(addr, 0)
        self._write64(addr + 8, 0)

    def _cmd_int(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        _, ite = self._ite(dev, event, ItsError.INT_UNMAPPED_INTERRUPT)
        self._set_state(ite, True, ItsError.INT_UNMAPPED_INTERRUPT)

    def _cmd_clear(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        _, ite = self._ite(dev, event, ItsError.CLEAR_UNMAPPED_INTERRUPT)
        self._set_state(ite, False, ItsError.CLEAR_UNMAPPED_INTERRUPT)

    # GICv4 commands
    def _cmd_vmapp(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        vpeid = C1_VPEID.get(d1)
        addr = self._entry_addr(BaserType.VPES, vpeid)
        if addr is None:
            raise _Error(ItsError.VPE_OOR)
        if not C2_V.get(d2):
            self._write64(addr, 0)
            return
        rdbase = C2_RDBASE.get(d2)
        size = C3_VPT_SIZE.get(d3)
        if self.gic.redistributor(rdbase) is None:
            raise _Error(ItsError.PROCNUM_OOR)
        if size + 1 > self.id_bits:
            raise _Error(ItsError.VIRTUAL_ID_OOR)
        self._write64(addr + 8, C3_VPT_ADDR.get(d3) << 16)
        self._write64(addr, VPE0_V(1) | VPE0_VPT_SIZE(size) | VPE0_RDBASE(rdbase & 0xFFFF))

    def _map_virtual(self, dev: int, event: int, vpeid: int, vintid: int,
                     doorbell: int) -> None:
        dte = self._dte(dev)
        if dte is None:
            raise _Error(ItsError.MAPTI_UNMAPPED_DEVICE)
        if event >> dte[1]:
            raise _Error(ItsError.MAPTI_ID_OOR)
        vpe = self._vpe(vpeid)
        if vpe is None:
            raise _Error(ItsError.UNMAPPED_VPE)
        if not LPI_BASE <= vintid < 1 << vpe[1] or not (
                doorbell == SPURIOUS or LPI_BASE <= doorbell < 1 << self.id_bits):
            raise _Error(ItsError.VIRTUAL_ID_OOR)
        addr = dte[0] + event * ITE_SIZE
        self._write64(addr, ITE0_V(1) | ITE0_VIRTUAL(1) | ITE0_INTID(vintid))
        self._write64(addr + 8, ITE1_VPEID(vpeid) | ITE1_DOORBELL(doorbell))

    def _cmd_vmapti(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        self._map_virtual(dev, event, C1_VPEID.get(d1), C2_VINTID.get(d2),
                          C2_DOORBELL.get(d2))

    def _cmd_vmapi(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        self._map_virtual(dev, event, C1_VPEID.get(d1), event, C2_DOORBELL.get(d2))

    def _cmd_vmovi(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        addr, ite = self._ite(dev, event, ItsError.MOVI_UNMAPPED_INTERRUPT)
        if not ITE0_VIRTUAL.get(ite[0]):
            raise _Error(ItsError.NOT_VIRTUAL)
        old = self._vpe(ITE1_VPEID.get(ite[1]))
        new_id = C1_VPEID.get(d1)
        new = self._vpe(new_id)
        if old is None or new is None:
            raise _Error(ItsError.UNMAPPED_VPE)
        vintid = ITE0_INTID.get(ite[0])
        if vintid >> new[1]:
            raise _Error(ItsError.VIRTUAL_ID_OOR)
        old_rd = self._rd(old[2], ItsError.PROCNUM_OOR)
        if old[0] != new[0] and old_rd.clear_vlpi_pending(old[0], vintid):
            self._rd(new[2], ItsError.PROCNUM_OOR).set_vlpi_pending(new[0], new[1], vintid,
                                                                    SPURIOUS)
        d1new = ITE1_VPEID.put(ite[1], new_id)
        if C2_D.get(d2):
            d1new = ITE1_DOORBELL.put(d1new, C2_DOORBELL.get(d2))
        self._write64(addr + 8, d1new)

    def _cmd_vmovp(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        vpeid = C1_VPEID.get(d1)
        addr = self._entry_addr(BaserType.VPES, vpeid)
        if addr is None or self._vpe(vpeid) is None:
            raise _Error(ItsError.UNMAPPED_VPE)
        rdbase = C2_RDBASE.get(d2)
        self._rd(rdbase, ItsError.PROCNUM_OOR)
        self._write64(addr, VPE0_RDBASE.put(self._read64(addr), rdbase & 0xFFFF))

    def _cmd_vsync(self, dev: int, event: int, d1: int, d2: int, d3: int) -> None:
        if self._vpe(C1_VPEID.get(d1)) is None:
            raise _Error(ItsError.UNMAPPED_VPE)

    _cmd_vinvall = _cmd_vsync     # vLPI configuration is read from memory, not cached

    def _set_state(self, ite: Sequence[int], pending: bool, missing: ItsError,
                   cached: bool = False) -> None:
        """Set (INT, translation) or clear (CLEAR, DISCARD) an ITE's interrupt."""
        intid = ITE0_INTID.get(ite[0])
        if ITE0_VIRTUAL.get(ite[0]):
            if cached:
                vpeid = ITE1_VPEID.get(ite[1])
                vpe = self._vpe_cache.get(vpeid)
                if vpe is None:
                    vpe = self._vpe(vpeid)
                    if vpe is not None:
                        self._vpe_cache[vpeid] = vpe
            else:
                vpe = self._vpe(ITE1_VPEID.get(ite[1]))
            if vpe is None:
                raise _Error(ItsError.UNMAPPED_VPE)
            rd = self._rd(vpe[2], ItsError.PROCNUM_OOR)
            if pending:
                if rd.set_vlpi_pending(vpe[0], vpe[1], intid, ITE1_DOORBELL.get(ite[1])):
                    self.stats["vlpis"] += 1
            else:
                rd.clear_vlpi_pending(vpe[0], intid)
            return
        if cached:
            icid = ITE1_ICID.get(ite[1])
            proc = self._col_cache.get(icid)
            if proc is None:
                proc = self._collection_rd(icid)
                if proc is None:
                    raise _Error(ItsError.UNMAPPED_COLLECTION)
                self._col_cache[icid] = proc
            rd = self._rd(proc, ItsError.PROCNUM_OOR)
        else:
            rd = self._target(ite, ItsError.UNMAPPED_COLLECTION)
        if pending:
            if rd.set_pending(intid):
                self.stats["lpis"] += 1
        else:
            rd.clear_pending(intid)

    # -- translation --------------------------------------------------------------

    def translate(self, device_id: int | None, event_id: int) -> bool:
        """A write of ``event_id`` to GITS_TRANSLATER by ``device_id``; False if dropped."""
        stats = self.stats
        stats["translations"] += 1
        if trace_gicv3_its_translation_write.enabled:
            trace_gicv3_its_translation_write(requester_id=device_id, data=event_id)
        elif self.ctlr & CTLR_ENABLED:
            # The hit path of the translation cache, inline: a cached physical ITE whose
            # collection is cached too (what _set_state(cached=True) does for it).
            per = self._ite_cache.get(device_id)  # type: ignore[arg-type]  # None: a miss
            if per is not None:
                ite = per.get(event_id)
                if ite is not None and not ite[0] & _ITE0_VIRTUAL:
                    proc = self._col_cache.get(ite[1] & _ITE1_ICID)
                    redists = self.gic.redists
                    if proc is not None and 0 <= proc < len(redists):
                        if redists[proc].set_pending(ite[0] >> 32):
                            stats["lpis"] += 1
                        return True
        try:
            if device_id is None:
                raise _Error(ItsError.NO_DEVICE_ID)
            if not self.ctlr & CTLR_ENABLED:
                raise _Error(ItsError.DISABLED)
            per = self._ite_cache.get(device_id)
            ite = None if per is None else per.get(event_id)
            if ite is None:
                _, read = self._ite(device_id, event_id, ItsError.INT_UNMAPPED_INTERRUPT)
                ite = (read[0], read[1])
                if per is None:
                    per = self._ite_cache[device_id] = {}
                per[event_id] = ite
            self._set_state(ite, True, ItsError.INT_UNMAPPED_INTERRUPT, cached=True)
            return True
        except _Error as e:
            why = e.code.name
        except _Stall:
            why = "memory error"
        self.stats["translations_dropped"] += 1
        self._note("translate", f"DeviceID {device_id} EventID {event_id:#x}", why)
        if trace_gicv3_its_translation_error.enabled:
            trace_gicv3_its_translation_error(requester_id=device_id, data=event_id, error=why)
        return False

    def __repr__(self) -> str:
        return (f"<GicV3Its enabled={self.ctlr & 1} devbits={self.devbits} "
                f"id_bits={self.id_bits} gicv4={int(self.gicv4)} cbaser={self.cbaser:#x}>")


# Commands run here that drop the cached translation of their (DeviceID, EventID) (MAPD,
# MAPC, MAPTI and MAPI drop theirs in the core's run, which reports what it dropped).
_DROPS_EVENT = frozenset({Cmd.MOVI, Cmd.DISCARD, Cmd.VMAPTI, Cmd.VMAPI, Cmd.VMOVI})


# What a command drops from the translation caches (see _execute).
_DROP_EVENT, _DROP_VPE = 1, 4
_DROPS = {**dict.fromkeys(_DROPS_EVENT, _DROP_EVENT), Cmd.VMAPP: _DROP_VPE, Cmd.VMOVP: _DROP_VPE}
# opcode (a plain int: no enum hashing per command) -> (handler method's name,
# tracepoint, its fields, what it drops from the caches) of the commands run here.  The
# core's table commands (core.itscmdq.CMDQ_COMMANDS) never reach _execute: the core runs
# every one of them and hands back only the others.
_CMD_TABLE = {int(c): (f"_cmd_{c.name.lower()}", *_CMD_TRACE[c], _DROPS.get(c, 0))
              for c in Cmd if c not in CMDQ_COMMANDS}
# BaserType (its value as an index: no enum hashing) -> GITS_BASER<n> that describes it
_TABLE_BASER = (None, 0, 2, None, 1)
# (baser, valid, indirect, base, span, entry size, page size): ItsModel._decode_baser
_DecodedBaser = tuple[int, bool, bool, int, int, int, int]
_unpack4 = struct.Struct("<4Q").unpack


# The tracepoints of the commands the core's ItsCmdq runs, by opcode: with one of them on,
# _process_core fires it and has the core run one command per call.
_CORE_TRACEPOINTS = {int(c): _CMD_TRACE[c] for c in CMDQ_COMMANDS}    # (tracepoint, fields)
# (in CMDQ_COMMANDS' order)
_TP_MAPD, _TP_MAPC, _TP_MAPTI, _TP_MAPI, _TP_SYNC, _TP_INV, _TP_INVALL = (
    tp for tp, _ in _CORE_TRACEPOINTS.values())
_ITSQ_DONE, _ITSQ_HANDOFF, _ITSQ_ERROR, _ITSQ_STALL = (_cc.ITSQ_DONE, _cc.ITSQ_HANDOFF,
                                                       _cc.ITSQ_ERROR, _cc.ITSQ_STALL)
_REC_DROP_EVENT, _REC_DROP_DEVICE, _REC_DROP_COLLECTION, _REC_INV = (
    _cc.ITSQ_DROP_EVENT, _cc.ITSQ_DROP_DEVICE, _cc.ITSQ_DROP_COLLECTION, _cc.ITSQ_INV)


def _core_of(memory: Any) -> Any:
    """The core backend module whose Memory ``memory`` is (None: not a core Memory)."""
    name = getattr(memory, "backend", None)
    if name not in ("c", "python"):
        return None
    from .. import core
    try:
        mod = core.backend(name)
    except ImportError:
        return None
    return mod if type(memory) is mod.Memory else None


def _opname(d0: int) -> str:
    try:
        return Cmd(d0 & 0xFF).name
    except ValueError:
        return f"opcode {d0 & 0xFF:#x}"
