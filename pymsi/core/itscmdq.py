"""The ITS command queue's table commands in Python: the one Python definition of what
csrc/itscmd.c does.

``run_commands`` takes the queue's configuration (``ItsCmdq.configure``'s checked
arguments) and the memory as three accessors, so the same code runs behind the twin's
``ItsCmdq.run`` (over a twin :class:`~pymsi.core.Memory`) and behind
:class:`MemoryCmdq`, which :class:`pymsi.hw.its.GicV3Its` uses when its memory is any
other :class:`~pymsi.core.common.PhysMemory` (or its batch translation cache belongs to
the other core).  Commands (GICv3 architecture, 5.3 "ITS commands"): MAPD, MAPC, MAPTI,
MAPI, SYNC, INV and INVALL; the ones that need the rest of the model (MOVI, MOVALL,
DISCARD, INT, CLEAR and the GICv4 V* commands) are handed back (``ITSQ_HANDOFF``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Protocol

from ..errors import raise_errno
from . import gic_formats as F
from .common import (
    ITSQ_DONE,
    ITSQ_DROP_COLLECTION,
    ITSQ_DROP_DEVICE,
    ITSQ_DROP_EVENT,
    ITSQ_ERROR,
    ITSQ_FULL,
    ITSQ_HANDOFF,
    ITSQ_INV,
    ITSQ_INVALL,
    ITSQ_REC_MAX,
    ITSQ_STALL,
    U64_MAX,
    ItsCmdqConfig,
    ItsTable,
    PhysMemory,
    its_cmdq_cfg_args,
)

#: The commands the core runs, as opcode bits (``ops`` of ``ItsCmdq.run``).
CMDQ_COMMANDS = (F.Cmd.MAPD, F.Cmd.MAPC, F.Cmd.MAPTI, F.Cmd.MAPI, F.Cmd.SYNC, F.Cmd.INV,
                 F.Cmd.INVALL)
CMDQ_OPS = sum(1 << int(c) for c in CMDQ_COMMANDS)

_E = F.ItsError

#: (status, GITS_CREADR where the run stopped, commands completed, opcode there, error code,
#: records as a flat list of (kind, a, b))
RunResult = tuple[int, int, int, int, int, list[int]]


class TranslationCache(Protocol):
    """What a run drops from a batch translation cache (``core.ItsCache``)."""

    def remove(self, dev: int, event: int) -> bool: ...
    def clear(self) -> None: ...


def _table_ok(t: tuple[int, ...]) -> bool:
    return t[5] in (4096, 16384, 65536) and 0 < t[4] <= t[5]


def run_commands(cfg: ItsCmdqConfig, read_cmd: Callable[[int], bytes | None],
                 read64: Callable[[int], int], write64: Callable[[int, int], None],
                 itc: TranslationCache | None, creadr: int, cwriter: int,
                 ops: int) -> RunResult:
    """Run the commands from ``creadr`` to ``cwriter`` whose opcode bit is set in ``ops``
    (and that this part runs).  ``read_cmd(addr)`` is the command's 32 bytes or None
    outside RAM; ``read64`` / ``write64`` raise ``OSError`` or ``ValueError`` for an access
    outside RAM, which stops the run as a stall.  A bad configuration or pointer is EINVAL."""
    cq_base, cq_size, nproc, devbits, id_bits, cidbits, dt, ct = cfg
    if (not cq_size or cq_size % 32 or cwriter >= cq_size or cwriter % 32
            or creadr >= cq_size or creadr % 32 or not 1 <= devbits <= 32
            or not 1 <= id_bits <= 32 or not 1 <= cidbits <= 32 or not _table_ok(dt)
            or not _table_ok(ct)):
        raise_errno(-errno.EINVAL, "ItsCmdq.run: bad configuration or pointers")

    def entry_addr(t: tuple[int, ...], index: int) -> int | None:
        valid, indirect, base, span, esize, page = t
        if not valid:
            return None
        if not indirect:
            return (base + index * esize) & U64_MAX if index * esize < span else None
        per_page = page // esize
        l1 = index // per_page
        if l1 * 8 >= span:
            return None
        e = read64((base + l1 * 8) & U64_MAX)
        if not F.L1E_VALID.get(e):
            return None
        return ((F.L1E_ADDR.get(e) & ~(page - 1)) + (index % per_page) * esize) & U64_MAX

    def dte(dev: int) -> tuple[int, int] | None:
        if dev >> devbits:
            return None
        addr = entry_addr(dt, dev)
        if addr is None:
            return None
        d = read64(addr)
        if not F.DTE_V.get(d):
            return None
        return F.DTE_ITT.get(d) << 8, F.DTE_SIZE.get(d) + 1

    def collection_rd(icid: int) -> int | None:
        if icid >> cidbits:
            return None
        addr = entry_addr(ct, icid)
        if addr is None:
            return None
        e = read64(addr)
        return F.CTE_RDBASE.get(e) if F.CTE_V.get(e) else None

    recs: list[int] = []

    def execute(op: int, d0: int, d1: int, d2: int) -> int:
        dev, event = F.C0_DEVICEID.get(d0), F.C1_EVENTID.get(d1)
        if op == F.Cmd.MAPD:
            recs.extend((ITSQ_DROP_DEVICE, dev, 0))
            if itc is not None:
                itc.clear()
            if dev >> devbits:
                return _E.MAPD_DEVICE_OOR
            addr = entry_addr(dt, dev)
            if addr is None:
                return _E.MAPD_DEVICE_OOR
            size = F.C1_SIZE.get(d1)
            if size + 1 > id_bits:
                return _E.MAPD_ITTSIZE_OOR
            write64(addr, F.DTE_V(1) | F.DTE_SIZE(size) | F.DTE_ITT(F.C2_ITT.get(d2))
                    if F.C2_V.get(d2) else 0)
            return 0
        if op == F.Cmd.MAPC:
            icid = F.C2_ICID.get(d2)
            recs.extend((ITSQ_DROP_COLLECTION, icid, 0))
            if itc is not None:
                itc.clear()
            if icid >> cidbits:
                return _E.MAPC_COLLECTION_OOR
            addr = entry_addr(ct, icid)
            if addr is None:
                return _E.MAPC_COLLECTION_OOR
            rdbase, valid = F.C2_RDBASE.get(d2), F.C2_V.get(d2)
            if valid and rdbase >= nproc:
                return _E.MAPC_PROCNUM_OOR
            write64(addr, F.CTE_V(1) | F.CTE_RDBASE.encode(rdbase) if valid else 0)
            return 0
        if op in (F.Cmd.MAPTI, F.Cmd.MAPI):
            recs.extend((ITSQ_DROP_EVENT, dev, event))
            if itc is not None:
                itc.remove(dev, event)
            intid = F.C1_PINTID.get(d1) if op == F.Cmd.MAPTI else event
            icid = F.C2_ICID.get(d2)
            m = dte(dev)
            if m is None:
                return _E.MAPTI_UNMAPPED_DEVICE
            if event >> m[1]:
                return _E.MAPTI_ID_OOR
            if intid < F.LPI_BASE or intid >> id_bits:
                return _E.MAPTI_PHYSICALID_OOR
            if icid >> cidbits:
                return _E.COLLECTION_OOR
            addr = m[0] + event * F.ITE_SIZE
            write64(addr, F.ITE0_V(1) | F.ITE0_INTID(intid))
            write64(addr + 8, F.ITE1_ICID(icid) | F.ITE1_DOORBELL(F.SPURIOUS))
            return 0
        if op == F.Cmd.SYNC:
            return 0 if F.C2_RDBASE.get(d2) < nproc else _E.PROCNUM_OOR
        if op == F.Cmd.INV:
            m = dte(dev)
            if m is None or event >> m[1]:
                return _E.INV_UNMAPPED_INTERRUPT
            addr = m[0] + event * F.ITE_SIZE
            ite0, ite1 = read64(addr), read64(addr + 8)
            if not F.ITE0_V.get(ite0):
                return _E.INV_UNMAPPED_INTERRUPT
            if F.ITE0_VIRTUAL.get(ite0):
                return 0
            proc = collection_rd(F.ITE1_ICID.get(ite1))
            if proc is None:
                return _E.INV_UNMAPPED_INTERRUPT
            if proc >= nproc:
                return _E.PROCNUM_OOR
            recs.extend((ITSQ_INV, proc, F.ITE0_INTID.get(ite0)))
            return 0
        proc = collection_rd(F.C2_ICID.get(d2))                   # INVALL
        if proc is None:
            return _E.INVALL_UNMAPPED_COLLECTION
        if proc >= nproc:
            return _E.PROCNUM_OOR
        recs.extend((ITSQ_INVALL, proc, 0))
        return 0

    status, ncmds, op, code = ITSQ_DONE, 0, 0, 0
    while creadr != cwriter:
        if len(recs) // 3 + 2 > ITSQ_REC_MAX:
            status = ITSQ_FULL
            break
        raw = read_cmd((cq_base + creadr) & U64_MAX)
        if raw is None:
            status = ITSQ_STALL
            break
        d0, d1, d2 = (int.from_bytes(raw[i:i + 8], "little") for i in (0, 8, 16))
        op = F.C0_OP.get(d0)
        if op >= 64 or not ops & CMDQ_OPS & 1 << op:
            status = ITSQ_HANDOFF
            break
        try:
            err = execute(op, d0, d1, d2)
        except (OSError, ValueError):       # a table outside RAM
            status = ITSQ_STALL
            break
        if err:
            status, code = ITSQ_ERROR, int(err)
            break
        ncmds += 1
        creadr = (creadr + 32) % cq_size
    if status in (ITSQ_DONE, ITSQ_FULL):
        op = 0
    return status, creadr, ncmds, op, code, recs


class MemoryCmdq:
    """``ItsCmdq`` over any :class:`~pymsi.core.common.PhysMemory`, with any batch
    translation cache: the same commands and results as the core's, through the memory's
    public calls (what :class:`pymsi.hw.its.GicV3Its` uses when its memory is not a core
    :class:`~pymsi.core.Memory`)."""

    def __init__(self) -> None:
        self._cfg: ItsCmdqConfig = (0, 0, 0, 0, 0, 0, (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0))

    def configure(self, cq_base: int, cq_size: int, nproc: int, devbits: int, id_bits: int,
                  cidbits: int, devices: ItsTable, collections: ItsTable) -> None:
        """As ``ItsCmdq.configure``."""
        self._cfg = its_cmdq_cfg_args(cq_base, cq_size, nproc, devbits, id_bits, cidbits,
                                      devices, collections)

    def run(self, mem: PhysMemory, itc: TranslationCache | None, creadr: int, cwriter: int,
            ops: int) -> RunResult:
        """As ``ItsCmdq.run``."""
        def read_cmd(addr: int) -> bytes | None:
            try:
                return mem.read(addr, 32)
            except (OSError, ValueError):
                return None

        return run_commands(self._cfg, read_cmd, mem.read_u64, mem.write_u64, itc, creadr,
                            cwriter, ops)
