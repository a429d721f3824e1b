"""The pure-Python twin of the C core (csrc/): the same behaviour, in Python.

Every function here mirrors one in csrc/ line for line in what it decides, so
that the two can be compared on any input.  It is the reference the C code is
checked against, and a fallback where the extension is not built.
"""

from __future__ import annotations

import errno
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .._repr import bounded
from ..errors import raise_errno
from . import gic_formats as F
from . import pci_formats as X
from . import vmsa_formats as V
from .common import (
    STATUS_ABORT,
    STATUS_BYPASS,
    STATUS_NO_CONFIG,
    STATUS_NO_ENTRY,
    STREAM_ABORT,
    STREAM_BYPASS,
    STREAM_TRANSLATE,
    U64_MAX,
    Buffer,
    Fault,
    FaultKind,
    IotlbCommands,
    ItsCmdqConfig,
    ItsTable,
    Stage1,
    Stage2,
    TlbKind,
    WalkResult,
    Wrapped,
    XlateConfig,
    batch_views,
    bit_args,
    bytes_arg,
    capacity_arg,
    config_of,
    encode_status,
    int_arg,
    itc_args,
    itc_batch_views,
    its_cmdq_cfg_args,
    level_lsb,
    msi_set_args,
    msix_gather_views,
    obj_arg,
    read_args,
    reserve_arg,
    router_args,
    streams_set_args,
    translate_args,
    walk_args,
)
from .itscmdq import run_commands

if TYPE_CHECKING:
    import array

NAME = "python"

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

_EFAULT = -errno.EFAULT
_EINVAL = -errno.EINVAL
_EEXIST = -errno.EEXIST
_ENOENT = -errno.ENOENT


class Memory:
    """Physical memory: RAM regions over sparse, zero-filled 4 KiB pages.

    A page exists once something was written to it; reads of RAM never
    written give zeroes; an access not entirely inside RAM is a
    :class:`~pymsi.errors.BusError` and changes nothing.
    """

    backend = NAME

    def __init__(self) -> None:
        self._regions: list[tuple[int, int]] = []  # (base, last), sorted
        self._pages: dict[int, bytearray] = {}
        self._alias_srcs: dict[int, Memory] = {}

    def add_ram(self, base: int, size: int) -> None:
        """Declare [base, base + size) as RAM (page aligned, not overlapping)."""
        base, size = int_arg("base", base), int_arg("size", size)
        if not size or base & PAGE_MASK or size & PAGE_MASK or base + size - 1 > U64_MAX:
            raise_errno(_EINVAL, f"add_ram({base:#x}, {size:#x})")
        last = base + size - 1
        for b, lst in self._regions:
            if b <= last and base <= lst:
                raise_errno(_EEXIST, f"add_ram({base:#x}, {size:#x}) overlaps RAM at {b:#x}")
        self._regions.append((base, last))
        self._regions.sort()

    def is_ram(self, addr: int, size: int = 1) -> bool:
        """True if [addr, addr + size) is RAM throughout."""
        return self._is_ram(int_arg("addr", addr), int_arg("size", size))

    def _is_ram(self, addr: int, size: int) -> bool:
        if not size:
            return True
        last = addr + size - 1
        if last > U64_MAX:
            return False
        for b, lst in self._regions:
            if lst < addr:
                continue
            if b > addr:
                return False
            if lst >= last:
                return True
            addr = lst + 1
        return False

    @property
    def regions(self) -> list[tuple[int, int]]:
        """The RAM regions as (base, size), in address order."""
        return [(b, lst - b + 1) for b, lst in self._regions]

    @property
    def pages_allocated(self) -> int:
        """How many 4 KiB pages have been written to (and so exist)."""
        return len(self._pages)

    def _read(self, addr: int, size: int) -> bytes | None:
        if not self._is_ram(addr, size):
            return None
        out = bytearray()
        while size:
            off = addr & PAGE_MASK
            chunk = min(PAGE_SIZE - off, size)
            page = self._pages.get(addr >> PAGE_SHIFT)
            out += page[off : off + chunk] if page is not None else bytes(chunk)
            addr += chunk
            size -= chunk
        return bytes(out)

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes from physical address ``addr``."""
        addr, size = read_args(addr, size)
        data = self._read(addr, size)
        if data is None:
            raise_errno(_EFAULT, f"read of {size} bytes at {addr:#x}")
        return data

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at physical address ``addr``."""
        self._write(int_arg("addr", addr), bytes_arg("data", data))

    def _write(self, addr: int, data: bytes) -> None:
        size = len(data)
        if not self._is_ram(addr, size):
            raise_errno(_EFAULT, f"write of {size} bytes at {addr:#x}")
        pos = 0
        while pos < size:
            off = addr & PAGE_MASK
            chunk = min(PAGE_SIZE - off, size - pos)
            page = self._pages.get(addr >> PAGE_SHIFT)
            if page is None:
                page = self._pages[addr >> PAGE_SHIFT] = bytearray(PAGE_SIZE)
            page[off : off + chunk] = data[pos : pos + chunk]
            addr += chunk
            pos += chunk

    def update_bit(self, addr: int, bit: int, value: bool | None = None) -> bool:
        """Bit ``bit`` (0..7) of the byte at ``addr`` as it was; with ``value``, then set
        (true) or cleared (false) by one read-modify-write of that byte."""
        addr, bit = bit_args(addr, bit)
        data = self._read(addr, 1)
        if data is None:
            raise_errno(_EFAULT, f"bit {bit} of the byte at {addr:#x}")
        byte = data[0]
        if value is not None:
            self._write(addr, bytes([byte | 1 << bit if value else byte & ~(1 << bit)]))
        return bool(byte >> bit & 1)

    def ram_checker(self) -> Callable[[int, int], int]:
        """``f(addr, size)``: :meth:`is_ram` for callers on a hot path that pass exact ints
        (both < 2**64): no argument checks beyond the C conversion's (TypeError,
        OverflowError); returns 1 or 0."""
        return self._is_ram_raw

    def _is_ram_raw(self, addr: int, size: int) -> int:
        for v in (addr, size):
            if not isinstance(v, int):
                raise TypeError(f"an integer is required, not {type(v).__name__}")
            if not 0 <= v <= U64_MAX:
                raise OverflowError(f"integer {v} does not fit")
        return int(self._is_ram(addr, size))

    def bit_updater(self) -> Callable[[int, int, int], int]:
        """``f(addr, bit, op)``: :meth:`update_bit` for callers on a hot path that pass
        exact ints (addr < 2**64, op 0 read / 1 set / 2 clear): no argument checks beyond
        the C conversion's (TypeError, OverflowError), the old bit (0 or 1) or a negative
        errno returned rather than raised."""
        return self._bit_raw

    def _bit_raw(self, addr: int, bit: int, op: int) -> int:
        for v, hi in ((addr, U64_MAX), (bit, 0xFFFF_FFFF), (op, 0x7FFF_FFFF)):
            if not isinstance(v, int):
                raise TypeError(f"an integer is required, not {type(v).__name__}")
            if not (-0x8000_0000 if hi == 0x7FFF_FFFF else 0) <= v <= hi:
                raise OverflowError(f"integer {v} does not fit")
        if bit > 7 or not 0 <= op <= 2:
            return -errno.EINVAL
        data = self._read(addr, 1)
        if data is None:
            return _EFAULT
        byte = data[0]
        if op:
            self._write(addr, bytes([byte | 1 << bit if op == 1 else byte & ~(1 << bit)]))
        return byte >> bit & 1

    def read_u64(self, addr: int) -> int:
        """Little-endian u64 at ``addr``."""
        return int.from_bytes(self._read_n(int_arg("addr", addr), 8), "little")

    def read_u32(self, addr: int) -> int:
        """Little-endian u32 at ``addr``."""
        return int.from_bytes(self._read_n(int_arg("addr", addr), 4), "little")

    def _read_n(self, addr: int, size: int) -> bytes:
        data = self._read(addr, size)
        if data is None:
            raise_errno(_EFAULT, f"read of {size} bytes at {addr:#x}")
        return data

    def write_u64(self, addr: int, value: int) -> None:
        """Store ``value`` as a little-endian u64 at ``addr``."""
        addr = int_arg("addr", addr)
        self._write(addr, int_arg("value", value).to_bytes(8, "little"))

    def write_u32(self, addr: int, value: int) -> None:
        """Store ``value`` as a little-endian u32 at ``addr``."""
        addr = int_arg("addr", addr)
        self._write(addr, int_arg("value", value, 32).to_bytes(4, "little"))

    def alias_page(self, addr: int, src: Memory, src_addr: int) -> None:
        """Make the 4 KiB page at ``addr`` the very page of ``src`` at ``src_addr``.

        Models two address spaces over the same RAM (a VMM's guest-physical
        view of its host pages): afterwards a write through either memory is
        seen through the other.  The page is made in ``src`` if it was never
        written; a page of this memory that already existed (or aliased) is
        re-pointed.  Both addresses must be page aligned and RAM in their
        memory (:class:`~pymsi.errors.InvalidArgument` otherwise).
        """
        addr = int_arg("addr", addr)
        obj_arg("src", src, Memory)
        src_addr = int_arg("src_addr", src_addr)
        what = f"alias_page({addr:#x}, src {src_addr:#x})"
        if addr & PAGE_MASK or src_addr & PAGE_MASK:
            raise_errno(_EINVAL, what)
        if not self._is_ram(addr, PAGE_SIZE) or not src._is_ram(src_addr, PAGE_SIZE):
            raise_errno(_EINVAL, what)
        page = src._pages.get(src_addr >> PAGE_SHIFT)
        if page is None:
            page = src._pages[src_addr >> PAGE_SHIFT] = bytearray(PAGE_SIZE)
        self._pages[addr >> PAGE_SHIFT] = page
        if src is not self:
            self._alias_srcs[id(src)] = src

    def _desc(self, addr: int) -> int | None:
        """The u64 a table walk reads at ``addr``, or None for a bus error."""
        off = addr & PAGE_MASK
        if off <= PAGE_SIZE - 8:
            page = self._pages.get(addr >> PAGE_SHIFT)
            if page is not None:
                return int.from_bytes(page[off : off + 8], "little")
        data = self._read(addr, 8)
        return None if data is None else int.from_bytes(data, "little")

    def __repr__(self) -> str:
        ram = ",".join(f"{b:#x}+{s:#x}" for b, s in self.regions[:4])
        return bounded(f"<Memory {self.backend} ram=[{ram}] pages={self.pages_allocated}>")


# ---------------------------------------------------------------------------
# Table walks (csrc/walk.c)

# the descriptor's one-bit fields as masks (pymsi.core.vmsa_formats)
_VALID, _TABLE, _S1_AP2 = V.DESC_VALID.mask, V.DESC_TABLE.mask, V.DESC_S1_AP2.mask
_S2AP_R, _S2AP_W, _AF = V.DESC_S2AP_R.mask, V.DESC_S2AP_W.mask, V.DESC_AF.mask
_NG, _APTABLE_RO = V.DESC_NG.mask, V.DESC_APTABLE_RO.mask
_OA_LIMIT = V.DESC_OA.mask


class _WalkFault(Exception):
    """Internal: a walk stopped on a fault."""

    def __init__(self, kind: int, stage: int, level: int, ipa: int | None,
                 s1_table_walk: bool = False) -> None:
        self.fault = Fault(stage, FaultKind(kind), level, ipa if stage == 2 else None,
                           s1_table_walk)


def _oa_mask(gshift: int) -> int:
    return _OA_LIMIT & ~((1 << gshift) - 1)


def _block_allowed(gshift: int, level: int) -> bool:
    return level in (1, 2) if gshift == 12 else level == 2


# A leaf: (output address, shift, level, readable, writable, global)
_Leaf = tuple[int, int, int, bool, bool, bool]
_IS_TABLE = 16
_IS_LEAF = 17


def _decode(d: int, g: int, level: int, lsb: int, oas: int) -> tuple[int, int]:
    """(what, address) of descriptor ``d`` read at ``level`` (csrc/walk.c decode())."""
    if not d & _VALID:
        return FaultKind.TRANSLATION, 0
    table = bool(d & _TABLE) and level < 3
    if not d & _TABLE and (level == 3 or not _block_allowed(g, level)):
        return FaultKind.TRANSLATION, 0
    addr = d & _oa_mask(g)
    if not table:
        addr &= ~((1 << lsb) - 1)
    if addr >> oas:
        return FaultKind.ADDRESS_SIZE, addr
    return (_IS_TABLE if table else _IS_LEAF), addr


def _start_table(ttb: int, width: int) -> int:
    return ttb & ~(max(8 << width, 64) - 1)


def _s2_walk(mem: Memory, c: Stage2, ipa: int, write: bool) -> _Leaf:
    g = c.gshift
    stride = g - 3
    level = c.start_level
    ia = 64 - c.tsz
    if ipa >> ia:
        raise _WalkFault(FaultKind.TRANSLATION, 2, 0, ipa)
    if c.vttb >> c.ps:
        raise _WalkFault(FaultKind.ADDRESS_SIZE, 2, 0, ipa)
    lsb = level_lsb(g, level)
    width = ia - lsb
    table = _start_table(c.vttb, width)
    while True:
        idx = (ipa >> lsb) & ((1 << width) - 1)
        d = mem._desc(table + idx * 8)
        if d is None:
            raise _WalkFault(FaultKind.EXTERNAL_ABORT, 2, level, ipa)
        kind, addr = _decode(d, g, level, lsb, c.ps)
        if kind == _IS_TABLE:
            table = addr
            level += 1
            lsb -= stride
            width = stride
            continue
        if kind != _IS_LEAF:
            raise _WalkFault(kind, 2, level, ipa)
        if not d & _AF and not c.affd:
            raise _WalkFault(FaultKind.ACCESS, 2, level, ipa)
        r = bool(d & _S2AP_R)
        w = bool(d & _S2AP_W)
        if not (w if write else r):
            raise _WalkFault(FaultKind.PERMISSION, 2, level, ipa)
        return (addr, lsb, level, r, w, False)


def _s1_walk(mem: Memory, cfg: XlateConfig, va: int, write: bool) -> _Leaf:
    c = cast(Stage1, cfg.s1)                  # the caller walks stage 1 only when there is one
    n = (va >> 55) & 1
    if c.epd1 if n else c.epd0:
        raise _WalkFault(FaultKind.TRANSLATION, 1, 0, None)
    tsz, tbi, had, ttb = (c.tsz1, c.tbi1, c.had1, c.ttb1) if n else (c.tsz0, c.tbi0, c.had0,
                                                                     c.ttb0)
    g = c.gshift[n]
    stride = g - 3
    ia = 64 - tsz
    top = 56 if tbi else 64
    ones = (1 << (top - ia)) - 1
    if ((va >> ia) & ones) != (ones if n else 0):
        raise _WalkFault(FaultKind.TRANSLATION, 1, 0, None)
    if ttb >> c.ips:
        raise _WalkFault(FaultKind.ADDRESS_SIZE, 1, 0, None)
    level = c.start_level[n]
    lsb = level_lsb(g, level)
    width = ia - lsb
    table = _start_table(ttb, width)
    read_only = False
    s2 = cfg.s2
    while True:
        idx = (va >> lsb) & ((1 << width) - 1)
        daddr = table + idx * 8
        if s2 is not None:
            try:
                l2 = _s2_walk(mem, s2, daddr, False)
            except _WalkFault as f:
                f.fault = f.fault._replace(s1_table_walk=True)
                raise
            daddr = l2[0] | (daddr & ((1 << l2[1]) - 1))
        d = mem._desc(daddr)
        if d is None:
            raise _WalkFault(FaultKind.EXTERNAL_ABORT, 1, level, None)
        kind, addr = _decode(d, g, level, lsb, c.ips)
        if kind == _IS_TABLE:
            if not had and d & _APTABLE_RO:
                read_only = True
            table = addr
            level += 1
            lsb -= stride
            width = stride
            continue
        if kind != _IS_LEAF:
            raise _WalkFault(kind, 1, level, None)
        if not d & _AF and not c.affd:
            raise _WalkFault(FaultKind.ACCESS, 1, level, None)
        w = not d & _S1_AP2 and not read_only
        if write and not w:
            raise _WalkFault(FaultKind.PERMISSION, 1, level, None)
        return (addr, lsb, level, True, w, not d & _NG)


def _walk(mem: Memory, cfg: XlateConfig, iova: int, write: bool) -> WalkResult:
    try:
        if cfg.s1 is not None:
            l1 = _s1_walk(mem, cfg, iova, write)
            ipa = l1[0] | (iova & ((1 << l1[1]) - 1))
            if cfg.s2 is not None:
                l2 = _s2_walk(mem, cfg.s2, ipa, write)
                return WalkResult(
                    None,
                    pa=l2[0] | (ipa & ((1 << l2[1]) - 1)),
                    ipa=ipa,
                    page_size=1 << min(l1[1], l2[1]),
                    writable=l1[4] and l2[4],
                    readable=l2[3],
                    s1_writable=l1[4],
                    s2_writable=l2[4],
                    level=l1[2],
                    s2_level=l2[2],
                    is_global=l1[5],
                )
            return WalkResult(None, pa=ipa, ipa=ipa, page_size=1 << l1[1], writable=l1[4],
                              readable=True, s1_writable=l1[4], s2_writable=True,
                              level=l1[2], is_global=l1[5])
        l2 = _s2_walk(mem, cast(Stage2, cfg.s2), iova, write)   # no stage 1: stage 2
        return WalkResult(None, pa=l2[0] | (iova & ((1 << l2[1]) - 1)), ipa=iova,
                          page_size=1 << l2[1], writable=l2[4], readable=l2[3],
                          s1_writable=True, s2_writable=l2[4], level=l2[2], s2_level=l2[2])
    except _WalkFault as f:
        return WalkResult(f.fault)


def walk(
    mem: Memory,
    iova: int,
    write: bool = False,
    s1: Stage1 | None = None,
    s2: Stage2 | None = None,
    cfg: XlateConfig | None = None,
) -> WalkResult:
    """Translate ``iova`` by walking the tables in ``mem`` (no IOTLB)."""
    iova, write, cfg = walk_args(_B, mem, iova, write, s1, s2, cfg)
    return _walk(mem, cfg, iova, write)


# ---------------------------------------------------------------------------
# IOTLB (csrc/iotlb.c)

_GLOBAL = "global"


class _Entry:
    __slots__ = ("va", "ipa", "pa", "shift", "kind", "is_global", "granule", "level",
                 "s2_level", "s1w", "s2r", "s2w", "asid", "vmid", "ref")
    va: int
    ipa: int
    pa: int
    shift: int
    kind: int
    is_global: bool
    granule: int
    level: int
    s2_level: int
    s1w: bool
    s2r: bool
    s2w: bool
    asid: int
    vmid: int
    ref: bool


# (kind, ASID or _GLOBAL, VMID, page shift, input page number)
_TlbKey = tuple[int, "int | str", int, int, int]


class Iotlb(IotlbCommands):
    """An IOTLB: a fixed-capacity cache of translations with CLOCK eviction.

    CLOCK in its second-chance form: entries queue in insertion order, a hit
    sets the entry's reference bit, and a full IOTLB looks at its oldest
    entry: referenced, it loses the bit and requeues as newest; otherwise it
    is evicted.  Entries are tagged by kind (stage 1, stage 2, nested), ASID (global
    entries match every ASID), VMID, page size and input page.  An entry
    stays valid until invalidated, whatever happens to the tables.
    """

    backend = NAME

    def __init__(self, capacity: int = 256) -> None:
        self._capacity = capacity_arg(capacity)
        self._lru: OrderedDict[_TlbKey, _Entry] = OrderedDict()  # CLOCK queue, last = newest
        self._shift_mask = 0
        self._nglobal = 0
        self._hits = self._misses = self._inserts = self._evictions = 0

    @property
    def capacity(self) -> int:
        """Maximum number of entries."""
        return self._capacity

    @property
    def hits(self) -> int:
        """Lookups that found an entry."""
        return self._hits

    @property
    def misses(self) -> int:
        """Lookups that walked."""
        return self._misses

    @property
    def inserts(self) -> int:
        """Entries added."""
        return self._inserts

    @property
    def evictions(self) -> int:
        """Entries evicted (CLOCK)."""
        return self._evictions

    def __len__(self) -> int:
        return len(self._lru)

    def reset_stats(self) -> None:
        """Zero the hit, miss, insert and eviction counters."""
        self._hits = self._misses = self._inserts = self._evictions = 0

    def _remove(self, key: _TlbKey) -> None:
        e = self._lru.pop(key)
        if e.is_global:
            self._nglobal -= 1
        if not self._lru:
            self._shift_mask = 0

    def _lookup(self, kind: int, asid: int, vmid: int, va: int) -> _Entry | None:
        asid_key = 0 if kind == TlbKind.S2 else asid
        mask = self._shift_mask
        shift = 0
        while mask:
            if mask & 1:
                vpn = va >> shift
                key: _TlbKey = (kind, asid_key, vmid, shift, vpn)
                e = self._lru.get(key)
                if e is None and self._nglobal and kind != TlbKind.S2:
                    key = (kind, _GLOBAL, vmid, shift, vpn)
                    e = self._lru.get(key)
                if e is not None:
                    e.ref = True
                    return e
            mask >>= 1
            shift += 1
        return None

    def _insert(self, cfg: XlateConfig, kind: int, va: int, r: WalkResult) -> None:
        if len(self._lru) >= self._capacity:
            lru = self._lru
            while True:                          # the CLOCK hand
                key = next(iter(lru))
                if not lru[key].ref:
                    break
                lru[key].ref = False
                lru.move_to_end(key)
            self._remove(key)
            self._evictions += 1
        e = _Entry()
        # a result without a fault has its page size and addresses
        page_size, ipa, pa = cast(int, r.page_size), cast(int, r.ipa), cast(int, r.pa)
        shift = page_size.bit_length() - 1
        mask = page_size - 1
        e.va = va & ~mask
        e.ipa = ipa & ~mask
        e.pa = pa & ~mask
        e.shift = shift
        e.kind = kind
        e.is_global = kind != TlbKind.S2 and r.is_global
        e.asid = 0 if kind == TlbKind.S2 else cfg.asid
        e.vmid = cfg.vmid
        e.granule = (cfg.s1.gshift[(va >> 55) & 1] if cfg.s1 is not None
                     else cast(Stage2, cfg.s2).gshift)
        e.level = r.level
        e.s2_level = r.s2_level
        e.s1w = r.s1_writable
        e.s2r = r.readable
        e.s2w = r.s2_writable
        e.ref = False
        self._lru[(kind, _GLOBAL if e.is_global else e.asid, e.vmid, shift, va >> shift)] = e
        if e.is_global:
            self._nglobal += 1
        self._shift_mask |= 1 << shift
        self._inserts += 1

    def _invalidate(self, kinds: int, vmid: int | None, asid: int | None,
                    asid_hits_global: bool, rng: tuple[str, int, int] | None) -> int:
        doomed = []
        for key, e in self._lru.items():
            if not kinds & (1 << e.kind):
                continue
            if vmid is not None and e.vmid != vmid:
                continue
            if asid is not None and (not asid_hits_global if e.is_global else e.asid != asid):
                continue
            if rng is not None:
                base = e.ipa if rng[0] == "ipa" else e.va
                last = base + (1 << e.shift) - 1
                if last < rng[1] or base > rng[2]:
                    continue
            doomed.append(key)
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def entries(self) -> list[dict[str, int]]:
        """The cached entries, newest in the CLOCK queue first."""
        out = []
        for e in reversed(self._lru.values()):
            out.append({
                "iova": e.va, "ipa": e.ipa, "pa": e.pa, "shift": e.shift, "kind": int(e.kind),
                "is_global": int(e.is_global), "granule": e.granule, "level": e.level,
                "s2_level": e.s2_level, "s1_writable": int(e.s1w), "s2_readable": int(e.s2r),
                "s2_writable": int(e.s2w), "asid": e.asid, "vmid": e.vmid,
            })
        return out

    def __repr__(self) -> str:
        return f"<Iotlb {NAME} entries={len(self)}/{self.capacity}>"


def _tlb_va(cfg: XlateConfig, iova: int) -> int:
    s1 = cfg.s1
    if s1 is None:
        return iova
    n = (iova >> 55) & 1
    if not (s1.tbi1 if n else s1.tbi0):
        return iova
    return iova | 0xFF00000000000000 if n else iova & 0x00FFFFFFFFFFFFFF


def _translate(mem: Memory, tlb: Iotlb | None, cfg: XlateConfig, iova: int,
               write: bool) -> WalkResult:
    if tlb is None:
        return _walk(mem, cfg, iova, write)
    kind = cfg.kind
    va = _tlb_va(cfg, iova)
    e = tlb._lookup(kind, cfg.asid, cfg.vmid, va)
    if e is not None:
        tlb._hits += 1
        off = va & ((1 << e.shift) - 1)
        if write and not e.s1w:
            return WalkResult(Fault(1, FaultKind.PERMISSION, e.level), tlb_hit=True)
        if not (e.s2w if write else e.s2r):
            return WalkResult(Fault(2, FaultKind.PERMISSION, e.s2_level, e.ipa + off),
                              tlb_hit=True)
        return WalkResult(None, pa=e.pa + off, ipa=e.ipa + off, page_size=1 << e.shift,
                          writable=e.s1w and e.s2w, readable=e.s2r, s1_writable=e.s1w,
                          s2_writable=e.s2w, level=e.level, s2_level=e.s2_level,
                          is_global=e.is_global, tlb_hit=True)
    tlb._misses += 1
    r = _walk(mem, cfg, iova, write)
    if r.fault is None:
        tlb._insert(cfg, kind, va, r)
    return r


def translate(
    mem: Memory,
    iova: int,
    write: bool = False,
    cfg: XlateConfig | None = None,
    tlb: Iotlb | None = None,
    s1: Stage1 | None = None,
    s2: Stage2 | None = None,
) -> WalkResult:
    """Translate ``iova`` through ``tlb`` (if given), walking on a miss."""
    iova, write, cfg = translate_args(_B, mem, iova, write, cfg, tlb, s1, s2)
    return _translate(mem, tlb, cfg, iova, write)


# ---------------------------------------------------------------------------
# MSI address table (csrc/msitable.c)


class MsiTable:
    """The per-(device, MSI index) table of MSI addresses userspace fills.

    ``compose`` is what the IOMMU domain's MSI hook does with it: the
    address is ``(iova & ~((1 << shift) - 1)) | (doorbell_pa & ((1 << shift)
    - 1))``, and shift 0 means the doorbell PA itself (no IOMMU).  A vector
    with no entry raises :class:`~pymsi.errors.MsiNotMapped`.  The MSI index
    is a u16, as ``msi_desc->msi_index`` is in Linux.
    """

    backend = NAME

    def __init__(self) -> None:
        self._d: dict[tuple[int, int], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._d)

    def reserve(self, n: int) -> None:
        """Size the table for ``n`` entries so that set() will not allocate."""
        reserve_arg(n)

    def set(self, dev: int, index: int, iova: int, shift: int = 12) -> None:
        """Describe vector ``index`` of device ``dev``: its MSI IOVA and shift."""
        dev, index, iova, shift = msi_set_args(dev, index, iova, shift)
        self._d[(dev, index)] = (iova, shift)

    def get(self, dev: int, index: int) -> tuple[int, int] | None:
        """(iova, shift) of the vector, or None."""
        dev, index = int_arg("dev", dev, 32), int_arg("index", index, 32)
        return self._d.get((dev, index))

    def remove(self, dev: int, index: int) -> None:
        """Forget the vector's entry (MsiNotMapped if there is none)."""
        dev, index = int_arg("dev", dev, 32), int_arg("index", index, 32)
        if self._d.pop((dev, index), None) is None:
            raise_errno(_ENOENT, f"no MSI entry for device {dev:#x} index {index}")

    def compose(self, dev: int, index: int, doorbell_pa: int) -> int:
        """The MSI address the device must use for this vector."""
        dev, index = int_arg("dev", dev, 32), int_arg("index", index, 32)
        doorbell_pa = int_arg("doorbell_pa", doorbell_pa)
        e = self._d.get((dev, index))
        if e is None:
            raise_errno(_ENOENT, f"no MSI entry for device {dev:#x} index {index}")
        return _compose(e, doorbell_pa)

    def items(self) -> list[tuple[int, int, int, int]]:
        """All entries as (dev, index, iova, shift), sorted."""
        return sorted((d, i, v, s) for (d, i), (v, s) in self._d.items())

    def __repr__(self) -> str:
        return f"<MsiTable {NAME} entries={len(self)}>"


def _compose(entry: tuple[int, int], doorbell_pa: int) -> int:
    iova, shift = entry
    if not shift:
        return doorbell_pa
    low = (1 << shift) - 1
    return (iova & ~low) | (doorbell_pa & low)


# ---------------------------------------------------------------------------
# Batch entry points (csrc/batch.c)


def compose_batch(table: MsiTable, doorbell_pa: int, devs: Buffer, idx: Buffer,
                  out_addr: Buffer, status: Buffer) -> int:
    """Compose the MSI address of every (devs[k], idx[k]); returns how many had an entry."""
    obj_arg("table", table, MsiTable)
    doorbell_pa = int_arg("doorbell_pa", doorbell_pa)
    n, (dv, iv, oa, st) = batch_views([(devs, "u32", "devs"), (idx, "u32", "idx")],
                                      [(out_addr, "u64", "out_addr"), (status, "i32", "status")])
    d = table._d
    ok = 0
    for k in range(n):
        e = d.get((dv[k], iv[k]))
        if e is None:
            oa[k] = 0
            st[k] = STATUS_NO_ENTRY
        else:
            oa[k] = _compose(e, doorbell_pa)
            st[k] = 0
            ok += 1
    return ok


def translate_batch(mem: Memory, cfg: XlateConfig, iovas: Buffer, out_pa: Buffer, status: Buffer,
                    tlb: Iotlb | None = None, write: bool = False) -> int:
    """Translate every iovas[k]; returns how many translated without a fault."""
    obj_arg("mem", mem, Memory)
    cfg = config_of(cfg, None, None)
    n, (iv, op, st) = batch_views([(iovas, "u64", "iovas")],
                                  [(out_pa, "u64", "out_pa"), (status, "i32", "status")])
    obj_arg("tlb", tlb, Iotlb, optional=True)
    ok = 0
    for k in range(n):
        r = _translate(mem, tlb, cfg, iv[k], bool(write))
        op[k] = cast(int, r.pa) if r.fault is None else 0
        st[k] = encode_status(r.fault)
        ok += r.fault is None
    return ok


def msi_batch(table: MsiTable, mem: Memory, cfg: XlateConfig, doorbell_pa: int, devs: Buffer,
              idx: Buffer, out_addr: Buffer, out_pa: Buffer, status: Buffer,
              tlb: Iotlb | None = None) -> int:
    """Compose each vector's MSI address and translate the device's write to it.

    Returns how many vectors reached an output address.
    """
    obj_arg("table", table, MsiTable)
    obj_arg("mem", mem, Memory)
    cfg = config_of(cfg, None, None)
    doorbell_pa = int_arg("doorbell_pa", doorbell_pa)
    n, (_, _, oa, op, st) = batch_views(
        [(devs, "u32", "devs"), (idx, "u32", "idx")],
        [(out_addr, "u64", "out_addr"), (out_pa, "u64", "out_pa"), (status, "i32", "status")])
    obj_arg("tlb", tlb, Iotlb, optional=True)
    ok = compose_batch(table, doorbell_pa, devs, idx, out_addr, status)
    for k in range(n):
        if st[k]:
            op[k] = 0
            continue
        r = _translate(mem, tlb, cfg, oa[k], True)
        op[k] = cast(int, r.pa) if r.fault is None else 0
        st[k] = encode_status(r.fault)
        ok -= r.fault is not None
    return ok


# ---------------------------------------------------------------------------
# Stream configurations and the stream batch (csrc/streams.c)


class Streams:
    """An SMMU's resolved stream configurations, keyed by StreamID.

    Each known StreamID aborts, bypasses, or translates with an
    :class:`XlateConfig`; ``ias`` (0: none) is the input size checked when
    there is no stage 1.  It is a cache the SMMU model fills; the model itself
    decodes STEs and CDs and records events.
    """

    backend = NAME

    def __init__(self) -> None:
        self._d: dict[int, tuple[int, XlateConfig | None, int]] = {}

    def __len__(self) -> int:
        return len(self._d)

    def set(self, sid: int, mode: int, cfg: XlateConfig | None = None, ias: int = 0) -> None:
        """Remember how StreamID ``sid`` is handled."""
        sid, mode, cfg, ias = streams_set_args(sid, mode, cfg, ias)
        self._d[sid] = (mode, cfg if mode == STREAM_TRANSLATE else None, ias)

    def get(self, sid: int) -> tuple[int, XlateConfig | None, int] | None:
        """(mode, cfg, ias) of ``sid``, or None."""
        return self._d.get(int_arg("sid", sid, 32))

    def remove(self, sid: int) -> bool:
        """Forget ``sid``; False if it was not known."""
        return self._d.pop(int_arg("sid", sid, 32), None) is not None

    def clear(self) -> None:
        """Forget every StreamID."""
        self._d.clear()

    def __repr__(self) -> str:
        return f"<Streams {NAME} streams={len(self)}>"


def stream_batch(mem: Memory, streams: Streams, sids: Buffer, iovas: Buffer, out_pa: Buffer,
                 status: Buffer, tlb: Iotlb | None = None, write: bool = False,
                 unresolved: Buffer | None = None) -> int:
    """Translate every (sids[k], iovas[k]) through its stream's configuration.

    Returns how many items were translated or bypassed; the others were
    aborted, faulted (out_pa = the IPA of a stage-2 fault) or are
    STATUS_NO_CONFIG (StreamID not known).  ``unresolved`` (u32, room for every
    item) gets the indexes of those others, in order: the first n - result items.
    """
    obj_arg("mem", mem, Memory)
    obj_arg("streams", streams, Streams)
    outs = [(out_pa, "u64", "out_pa"), (status, "i32", "status")]
    if unresolved is not None:
        outs.append((unresolved, "u32", "unresolved"))
    n, (sv, iv, op, st, *uv) = batch_views([(sids, "u32", "sids"), (iovas, "u64", "iovas")],
                                           outs)
    obj_arg("tlb", tlb, Iotlb, optional=True)
    write = bool(write)
    ok = 0
    for k in range(n):
        e = streams._d.get(sv[k])
        op[k] = 0
        if e is None:
            st[k] = STATUS_NO_CONFIG
            continue
        mode, cfg, ias = e
        if mode == STREAM_ABORT:
            st[k] = STATUS_ABORT
            continue
        if mode == STREAM_BYPASS:
            op[k] = iv[k]
            st[k] = STATUS_BYPASS
        else:
            if ias and ias < 64 and iv[k] >> ias:
                fault = Fault(1, FaultKind.ADDRESS_SIZE, 0)
                r = WalkResult(fault)
            else:
                r = _translate(mem, tlb, cast(XlateConfig, cfg), iv[k], write)
            st[k] = encode_status(r.fault)
            if r.fault is not None:       # a stage-2 fault has its IPA, a result its PA
                op[k] = cast(int, r.fault.ipa) if r.fault.stage == 2 else 0
                continue
            op[k] = cast(int, r.pa)
        ok += 1
    if uv:
        left = 0
        for k in range(n):
            if st[k] != 0 and st[k] != STATUS_BYPASS:
                uv[0][left] = k
                left += 1
    return ok


_B = sys.modules[__name__]


def stream_translator(mem: Memory, streams: Streams, tlb: Iotlb | None = None,
                      wrap: Callable[[WalkResult], Wrapped] | None = None
                      ) -> Callable[[int, int, bool], WalkResult | Wrapped | None]:
    """A function ``(sid, iova, write)`` translating one transaction through ``streams``.

    It returns the :class:`WalkResult` (a fault included) when ``sid`` is a known StreamID
    translated with a configuration and ``iova`` passes its ``ias`` check, and None for
    everything else (unknown, aborting or bypassing StreamID, ``ias`` exceeded), which the
    caller handles on its full path.  With ``wrap`` (a pure function), a successful
    result is returned as ``wrap(result)``.  ``sid`` must be an int of 32 bits, ``iova`` of
    64 and ``write`` a bool or int: otherwise TypeError (not an int) or OverflowError (out
    of range).  (csrc/streams.c: pymsi_stream_translate.)
    """
    obj_arg("mem", mem, Memory)
    obj_arg("streams", streams, Streams)
    obj_arg("tlb", tlb, Iotlb, optional=True)
    d = streams._d

    def translate(sid: int, iova: int, write: bool) -> Any:
        if not (type(sid) is int and 0 <= sid <= 0xFFFF_FFFF and type(iova) is int
                and 0 <= iova <= 0xFFFF_FFFF_FFFF_FFFF and type(write) is bool):
            _stream_args(sid, iova, write)
        e = d.get(sid)
        if e is None or e[0] != STREAM_TRANSLATE:
            return None
        mode, cfg, ias = e
        if ias and ias < 64 and iova >> ias:
            return None
        # STREAM_TRANSLATE entries always hold a configuration; no cast() call on this path
        r = _translate(mem, tlb, cfg, iova, bool(write))  # type: ignore[arg-type]
        return r if wrap is None or r.fault is not None else wrap(r)
    translate._parts = (mem, tlb, d, wrap)       # type: ignore[attr-defined]  # msi_router's
    return translate


def _stream_args(sid: Any, iova: Any, write: Any) -> None:
    """What cffi refuses in pymsi_stream_translate's arguments, refused alike."""
    for v, lo, hi in ((sid, 0, 1 << 32), (iova, 0, 1 << 64), (write, -(1 << 31), 1 << 31)):
        if not isinstance(v, int):                  # as cffi converts the C arguments
            raise TypeError(f"an integer is required, not {type(v).__name__}")
        if not lo <= v < hi:
            raise OverflowError(f"{v} does not fit the C argument")


FIRE_NONE, FIRE_TRANSLATED = -1, -2


def msi_router(translator: Callable[[int, int, bool], Wrapped], ram: Memory, itc: ItsCache,
               gicmem: Memory, limits: array.array[int], tables: array.array[int]
               ) -> tuple[Callable[[int, int, int, int, int], int], Callable[[], Wrapped]]:
    """``(fire, last)``: one MSI write along a cached route in one call (csrc/its.c:
    pymsi_msi_fire).

    ``translator`` is a :func:`stream_translator` of this backend (an SMMU's hit path);
    ``ram`` the memory that says what is RAM on the bus; ``itc`` an ITS's :class:`ItsCache`;
    ``gicmem`` the memory of the LPI pending tables; ``limits`` (array of u32) and
    ``tables`` (array of u64), one item per processor, each processor's LPI limit (0:
    nothing goes this way) and pending table address, read at every call.

    ``fire(sid, iova, dev, event, doorbell)`` is ``translator(sid, iova, True)``; when that
    is a translation to ``doorbell``, not RAM, and ``itc`` has (``dev``, ``event``) with a
    processor below ``len(limits)`` and an INTID in [8192, limits[proc]), it sets the
    INTID's bit in the pending table at tables[proc] and returns ``proc << 34 | intid << 2
    | old`` (old: the bit as it was, or 2 when its byte is not RAM).  Otherwise it returns
    :data:`FIRE_NONE` (-1: the translator did not answer, nothing done) or
    :data:`FIRE_TRANSLATED` (-2: translated, nothing else done; ``last()`` is what the
    translator returned).  Arguments as cffi takes them: TypeError (not an int),
    OverflowError (sid, dev, event beyond 32 bits; iova, doorbell beyond 64).
    """
    parts, _ = router_args(translator, ram, itc, gicmem, limits, tables, Memory, ItsCache)
    mem, tlb, d, wrap = cast("tuple[Memory, Iotlb | None, dict[int, tuple[int, XlateConfig | None, "
                             "int]], Callable[[WalkResult], object] | None]", parts)
    got: list[Any] = [None]
    itcd = itc._d

    def fire(sid: int, iova: int, dev: int, event: int, doorbell: int) -> int:
        for v, hi in ((sid, 32), (iova, 64), (dev, 32), (event, 32), (doorbell, 64)):
            if not isinstance(v, int):              # as cffi converts the C arguments
                raise TypeError(f"an integer is required, not {type(v).__name__}")
            if not 0 <= v < 1 << hi:
                raise OverflowError(f"{v} does not fit the C argument")
        e = d.get(sid)
        if e is None or e[0] != STREAM_TRANSLATE:
            return FIRE_NONE
        cfg, ias = e[1], e[2]
        if ias and ias < 64 and iova >> ias:
            return FIRE_NONE
        # STREAM_TRANSLATE entries always hold a configuration (no cast() on this path)
        r = got[0] = _translate(mem, tlb, cfg, iova, True)  # type: ignore[arg-type]
        if r.fault is not None or r.pa != doorbell or ram._is_ram(doorbell, 4):
            return FIRE_TRANSLATED
        hit = itcd.get((dev, event))
        if hit is None or hit[1] >= len(limits) or not _LPI_BASE <= hit[0] < limits[hit[1]]:
            return FIRE_TRANSLATED
        intid, proc = hit
        addr = tables[proc] + (intid >> 3)
        data = gicmem._read(addr, 1) if addr <= U64_MAX else None
        if data is None:
            old = 2
        else:
            old = data[0] >> (intid & 7) & 1
            gicmem._write(addr, bytes([data[0] | 1 << (intid & 7)]))
        return proc << 34 | intid << 2 | old

    def last() -> Any:
        r = got[0]
        return r if wrap is None or r.fault is not None else wrap(r)
    return fire, last


def pending_batch(mem: Memory, tables: Buffer, intids: Buffer, old: Buffer) -> int:
    """Set bit intids[k] of the pending table at tables[k] for every k (old[k]: the bit
    as it was, 0 or 1, or -EFAULT when its byte is not RAM); returns how many were set."""
    obj_arg("mem", mem, Memory)
    n, (tv, iv, ov) = batch_views([(tables, "u64", "tables"), (intids, "u32", "intids")],
                                  [(old, "i32", "old")])
    ok = 0
    for k in range(n):
        addr = tv[k] + (iv[k] >> 3)
        if addr > U64_MAX:
            ov[k] = _EFAULT
            continue
        data = mem._read(addr, 1)
        if data is None:
            ov[k] = _EFAULT
            continue
        ov[k] = data[0] >> (iv[k] & 7) & 1
        mem._write(addr, bytes([data[0] | 1 << (iv[k] & 7)]))
        ok += 1
    return ok


class ItsCache:
    """An ITS translation cache for batches: (DeviceID, EventID) -> (INTID, processor).

    What :class:`pymsi.hw.its.GicV3Its` keeps of its cached physical translations so
    that :func:`its_lookup_batch` resolves a batch of EventIDs at once.
    """

    backend = NAME

    def __init__(self) -> None:
        self._d: dict[tuple[int, int], tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._d)

    def set(self, dev: int, event: int, intid: int, proc: int) -> None:
        """Cache (intid, proc) for (dev, event)."""
        dev, event = itc_args(dev, event)
        intid, proc = int_arg("intid", intid, 32), int_arg("proc", proc, 32)
        self._d[(dev, event)] = (intid, proc)

    def get(self, dev: int, event: int) -> tuple[int, int] | None:
        """(intid, proc) cached for (dev, event), or None."""
        return self._d.get(itc_args(dev, event))

    def remove(self, dev: int, event: int) -> bool:
        """Drop (dev, event); whether it was there."""
        return self._d.pop(itc_args(dev, event), None) is not None

    def clear(self) -> None:
        """Drop everything."""
        self._d.clear()

    def __repr__(self) -> str:
        return f"<ItsCache {NAME} entries={len(self)}>"


_LPI_BASE = F.LPI_BASE


def its_lookup_batch(cache: ItsCache, dev: int, events: Buffer, limits: Buffer, intids: Buffer,
                     status: Buffer, grouped: Buffer, counts: Buffer) -> int:
    """Look up every (dev, events[k]): status[k] is the processor of a hit whose INTID
    is in [8192, limits[processor]) (the others: -ENOENT), intids[k] its INTID (0 if
    none); the hits' INTIDs go to ``grouped`` by processor, in item order within each,
    counts[p] of them for processor p.  Returns the number of hits."""
    obj_arg("cache", cache, ItsCache)
    dev, n, nproc, (ev, iv, sv, gv, lv, cv) = itc_batch_views(dev, events, limits, intids,
                                                              status, grouped, counts)
    d = cache._d
    runs: list[list[int]] = [[] for _ in range(nproc)]
    for k in range(n):
        e = d.get((dev, ev[k]))
        if e is None or e[1] >= nproc or not _LPI_BASE <= e[0] < lv[e[1]]:
            iv[k] = 0 if e is None else e[0]
            sv[k] = -errno.ENOENT
            continue
        iv[k], sv[k] = e
        runs[e[1]].append(e[0])
    pos = 0
    for p in range(nproc):
        cv[p] = len(runs[p])
        for x in runs[p]:
            gv[pos] = x
            pos += 1
    return pos


def msix_gather(table: Buffer, nvec: int, masked_all: bool, vectors: Buffer, addrs: Buffer,
                datas: Buffer, status: Buffer) -> int:
    """Read the MSI-X entries of vectors[k] from ``table`` (``nvec`` 16-byte entries):
    addrs[k], datas[k] and status[k] 0 (to send), 1 (masked, by its vector control or
    ``masked_all``) or -EINVAL (no such vector: address and data 0).  Returns how many
    are to send."""
    nvec, n, (tv, vv, av, dv, sv) = msix_gather_views(table, nvec, vectors, addrs, datas,
                                                      status)
    ok = 0
    for k in range(n):
        v = vv[k]
        if v >= nvec:
            av[k] = dv[k] = 0
            sv[k] = -errno.EINVAL
            continue
        o = v * X.MSIX_ENTRY_SIZE
        a, d = o + X.MSIX_ENTRY_ADDR_LO, o + X.MSIX_ENTRY_DATA     # ADDR_HI follows ADDR_LO
        av[k] = int.from_bytes(tv[a:a + 8], "little")
        dv[k] = int.from_bytes(tv[d:d + 4], "little")
        if masked_all or tv[o + X.MSIX_ENTRY_CTRL] & X.MSIX_CTRL_MASKBIT:
            sv[k] = 1
            continue
        sv[k] = 0
        ok += 1
    return ok


# -- the ITS command queue (twin of csrc/itscmd.c) ----------------------------------------



class ItsCmdq:
    """The ITS command queue's non-Python-callback part (twin of csrc/itscmd.c): what
    :class:`pymsi.hw.its.GicV3Its` runs of its commands (MAPD, MAPC, MAPTI, MAPI, SYNC,
    INV, INVALL) in one call, over a configuration set by :meth:`configure`."""

    backend = NAME

    def __init__(self) -> None:
        self._cfg: ItsCmdqConfig = (0, 0, 0, 0, 0, 0, (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0))

    def configure(self, cq_base: int, cq_size: int, nproc: int, devbits: int, id_bits: int,
                  cidbits: int, devices: ItsTable, collections: ItsTable) -> None:
        """The queue (base, bytes), the number of redistributors, the ID widths and the
        decoded device and collection tables ((valid, indirect, base, span, entry
        size, page size) each)."""
        self._cfg = its_cmdq_cfg_args(cq_base, cq_size, nproc, devbits, id_bits, cidbits,
                                      devices, collections)

    def run(self, mem: Memory, itc: ItsCache | None, creadr: int, cwriter: int,
            ops: int) -> tuple[int, int, int, int, int, list[int]]:
        """Run the commands from ``creadr`` to ``cwriter`` whose opcode bit is set in
        ``ops`` (and this part runs): (status, creadr where it stopped, commands
        completed, opcode there, error code, records as a flat list of (kind, a, b))."""
        obj_arg("mem", mem, Memory)
        obj_arg("itc", itc, ItsCache, optional=True)
        creadr, cwriter = int_arg("creadr", creadr, 32), int_arg("cwriter", cwriter, 32)
        ops = int_arg("ops", ops)

        # A table access outside RAM raises the memory's BusError (EFAULT), which stops
        # the run as a stall.
        def read64(addr: int) -> int:
            return int.from_bytes(mem._read_n(addr, 8), "little")

        def write64(addr: int, value: int) -> None:
            mem._write(addr, value.to_bytes(8, "little"))

        return run_commands(self._cfg, lambda addr: mem._read(addr, 32), read64, write64,
                            itc, creadr, cwriter, ops)
