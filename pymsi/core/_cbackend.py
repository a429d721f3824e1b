"""The C backend: thin Python objects over the cffi extension ``pymsi._core_c``.

Each class and function has the same name, signature and behaviour as its
twin in ``_pybackend``; the work happens in csrc/.  Arguments follow the
shared rules of :mod:`pymsi.core.common`: a call goes straight to C when every
integer argument is an exact ``int`` (cffi then range-checks it), and
otherwise, or when cffi refuses an argument, the shared checks run in
signature order and raise what the twin raises.  Every negative return goes
through :func:`pymsi.errors.check`.
"""

from __future__ import annotations

import errno
import functools
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .._core_c import ffi, lib
from .._csrc import csrc_hash, tree_csrc
from .._repr import bounded
from ..errors import OutOfMemory, check, raise_errno
from .common import (
    ITSQ_REC_MAX,
    MAX_ACCESS,
    Buffer,
    Fault,
    FaultKind,
    IotlbCommands,
    ItsTable,
    Stage1,
    Stage2,
    WalkResult,
    Wrapped,
    XlateConfig,
    batch_views,
    bit_args,
    bytes_arg,
    capacity_arg,
    config_of,
    int_arg,
    itc_args,
    itc_batch_views,
    its_cmdq_cfg_args,
    msi_set_args,
    msix_gather_views,
    obj_arg,
    pair_config,
    read_args,
    reserve_arg,
    router_args,
    streams_set_args,
    translate_args,
    walk_args,
)

if TYPE_CHECKING:
    import array


def _check_fresh() -> None:
    """Refuse an in-tree build made from other sources than the csrc/ beside it."""
    csrc = tree_csrc()
    if csrc is None:                        # installed: no sources to compare with
        return
    built = ffi.string(lib.pymsi_csrc_hash()).decode() if hasattr(
        lib, "pymsi_csrc_hash") else "(no fingerprint)"
    now = csrc_hash(csrc)
    if built != now:
        from .. import _core_c

        raise ImportError(f"stale build: {_core_c.__file__} was built from other C sources "
                          f"({built[:12]}) than {csrc} has now ({now[:12]})")


_check_fresh()


NAME = "c"
_NULL = ffi.NULL
# The per-call entry points, bound once (a cffi lib attribute lookup per call
# costs about as much as the argument type checks).
_msi_compose = lib.pymsi_msi_compose
_msi_get = lib.pymsi_msi_get
_translate = lib.pymsi_translate
_walk = lib.pymsi_walk
_mem_read_u64 = lib.pymsi_mem_read_u64
_mem_read_u32 = lib.pymsi_mem_read_u32
_mem_write_u64 = lib.pymsi_mem_write_u64
_mem_write_u32 = lib.pymsi_mem_write_u32
_mem_is_ram = lib.pymsi_mem_is_ram
_mem_bit = lib.pymsi_mem_bit
_its_cmdq_run = lib.pymsi_its_cmdq_run


def _refused(check_args: Any, *args: Any) -> None:
    """After cffi refused an argument: raise what the shared checks raise.

    ``check_args`` raises for the first bad argument in signature order; if
    it finds none, the original exception is re-raised by the caller.
    """
    check_args(*args)


class Memory:
    """Physical memory: RAM regions over sparse, zero-filled 4 KiB pages.

    A page exists once something was written to it; reads of RAM never
    written give zeroes; an access not entirely inside RAM is a
    :class:`~pymsi.errors.BusError` and changes nothing.
    """

    backend = NAME
    __slots__ = ("_p", "_u64", "_u32", "_res", "_resbuf", "_alias_srcs", "__weakref__")

    def __init__(self) -> None:
        p = lib.pymsi_mem_new()
        if p == ffi.NULL:
            raise OutOfMemory("pymsi_mem_new")
        self._p = ffi.gc(p, lib.pymsi_mem_free)
        self._u64 = ffi.new("uint64_t *")
        self._u32 = ffi.new("uint32_t *")
        self._res = ffi.new("struct pymsi_result *")
        self._resbuf = ffi.buffer(self._res)
        self._alias_srcs: dict[int, Memory] = {}

    def add_ram(self, base: int, size: int) -> None:
        """Declare [base, base + size) as RAM (page aligned, not overlapping)."""
        base, size = int_arg("base", base), int_arg("size", size)
        rc = lib.pymsi_mem_add_ram(self._p, base, size)
        what = f"add_ram({base:#x}, {size:#x})"
        if rc == -errno.EEXIST:                 # the twin's text: the region it overlaps
            at = next((b for b, n in self.regions if b <= base + size - 1 and base < b + n),
                      None)
            if at is not None:
                what += f" overlaps RAM at {at:#x}"
        check(rc, what)

    def is_ram(self, addr: int, size: int = 1) -> bool:
        """True if [addr, addr + size) is RAM throughout."""
        if type(addr) is not int or type(size) is not int:
            addr, size = _addr_size(addr, size)
        try:
            return bool(_mem_is_ram(self._p, addr, size))
        except OverflowError:
            _refused(_addr_size, addr, size)
            raise

    @property
    def regions(self) -> list[tuple[int, int]]:
        """The RAM regions as (base, size), in address order."""
        n = lib.pymsi_mem_regions(self._p, ffi.NULL, ffi.NULL, 0)
        bases = ffi.new("uint64_t[]", n)
        sizes = ffi.new("uint64_t[]", n)
        lib.pymsi_mem_regions(self._p, bases, sizes, n)
        return [(bases[i], sizes[i]) for i in range(n)]

    @property
    def pages_allocated(self) -> int:
        """How many 4 KiB pages have been written to (and so exist)."""
        return lib.pymsi_mem_pages(self._p)

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes from physical address ``addr``."""
        if type(addr) is not int or type(size) is not int or size > MAX_ACCESS or size < 0:
            addr, size = read_args(addr, size)
        try:
            ram = _mem_is_ram(self._p, addr, size)
        except OverflowError:
            _refused(read_args, addr, size)
            raise
        if not ram:
            check(-errno.EFAULT, f"read of {size} bytes at {addr:#x}")
        buf = ffi.new("uint8_t[]", size)
        rc = lib.pymsi_mem_read(self._p, addr, buf, size)
        if rc < 0:
            raise_errno(rc, f"read at {addr:#x}")
        return ffi.buffer(buf, size)[:]

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at physical address ``addr``."""
        if type(addr) is not int or type(data) is not bytes:
            addr, data = int_arg("addr", addr), bytes_arg("data", data)
        try:
            rc = lib.pymsi_mem_write(self._p, addr, ffi.from_buffer(data), len(data))
        except OverflowError:
            _refused(int_arg, "addr", addr)
            raise
        if rc < 0:
            raise_errno(rc, f"write of {len(data)} bytes at {addr:#x}")

    def update_bit(self, addr: int, bit: int, value: bool | None = None) -> bool:
        """Bit ``bit`` (0..7) of the byte at ``addr`` as it was; with ``value``, then set
        (true) or cleared (false) by one read-modify-write of that byte."""
        op = 0 if value is None else 1 if value else 2
        if type(addr) is not int or type(bit) is not int or not 0 <= bit <= 7:
            addr, bit = bit_args(addr, bit)
        try:
            rc = _mem_bit(self._p, addr, bit, op)
        except OverflowError:
            _refused(bit_args, addr, bit)
            raise
        if rc < 0:
            raise_errno(rc, f"bit {bit} of the byte at {addr:#x}")
        return rc == 1

    def ram_checker(self) -> Callable[[int, int], int]:
        """``f(addr, size)``: :meth:`is_ram` for callers on a hot path that pass exact ints
        (both < 2**64): no argument checks beyond the C conversion's (TypeError,
        OverflowError); returns 1 or 0.  One C call, no Python frame."""
        return functools.partial(_mem_is_ram, self._p)

    def bit_updater(self) -> Callable[[int, int, int], int]:
        """``f(addr, bit, op)``: :meth:`update_bit` for callers on a hot path that pass
        exact ints (addr < 2**64, op 0 read / 1 set / 2 clear): no argument checks beyond
        the C conversion's (TypeError, OverflowError), the old bit (0 or 1) or a negative
        errno returned rather than raised.  One C call, no Python frame."""
        return functools.partial(_mem_bit, self._p)

    def read_u64(self, addr: int) -> int:
        """Little-endian u64 at ``addr``."""
        if type(addr) is not int:
            addr = int_arg("addr", addr)
        try:
            rc = _mem_read_u64(self._p, addr, self._u64)
        except OverflowError:
            _refused(int_arg, "addr", addr)
            raise
        if rc:
            raise_errno(rc, f"read of 8 bytes at {addr:#x}")
        return self._u64[0]

    def read_u32(self, addr: int) -> int:
        """Little-endian u32 at ``addr``."""
        if type(addr) is not int:
            addr = int_arg("addr", addr)
        try:
            rc = _mem_read_u32(self._p, addr, self._u32)
        except OverflowError:
            _refused(int_arg, "addr", addr)
            raise
        if rc < 0:
            raise_errno(rc, f"read of 4 bytes at {addr:#x}")
        return self._u32[0]

    def write_u64(self, addr: int, value: int) -> None:
        """Store ``value`` as a little-endian u64 at ``addr``."""
        if type(addr) is not int or type(value) is not int:
            addr, value = _u64_pair(addr, value)
        try:
            rc = _mem_write_u64(self._p, addr, value)
        except OverflowError:
            _refused(_u64_pair, addr, value)
            raise
        if rc:
            raise_errno(rc, f"write of 8 bytes at {addr:#x}")

    def write_u32(self, addr: int, value: int) -> None:
        """Store ``value`` as a little-endian u32 at ``addr``."""
        if type(addr) is not int or type(value) is not int:
            addr, value = _u32_pair(addr, value)
        try:
            rc = _mem_write_u32(self._p, addr, value)
        except OverflowError:
            _refused(_u32_pair, addr, value)
            raise
        if rc < 0:
            raise_errno(rc, f"write of 4 bytes at {addr:#x}")

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
        check(lib.pymsi_mem_alias_page(self._p, addr, src._p, src_addr),
              f"alias_page({addr:#x}, src {src_addr:#x})")
        if src is not self:
            self._alias_srcs[id(src)] = src

    def __repr__(self) -> str:
        ram = ",".join(f"{b:#x}+{s:#x}" for b, s in self.regions[:4])
        return bounded(f"<Memory {self.backend} ram=[{ram}] pages={self.pages_allocated}>")


def _addr_size(addr: Any, size: Any) -> tuple[int, int]:
    return int_arg("addr", addr), int_arg("size", size)


def _u64_pair(addr: Any, value: Any) -> tuple[int, int]:
    return int_arg("addr", addr), int_arg("value", value)


def _u32_pair(addr: Any, value: Any) -> tuple[int, int]:
    return int_arg("addr", addr), int_arg("value", value, 32)


def _prepare(cfg: XlateConfig) -> Any:
    """The C form of a configuration, built once and kept on the object."""
    c = cfg._prepared
    if c is not None:
        return c
    c = ffi.new("struct pymsi_xlate_cfg *")
    s1, s2 = cfg.s1, cfg.s2
    if s1 is not None:
        c.has_s1 = 1
        c.s1.ips = s1.ips
        c.s1.affd = s1.affd
        for n, (epd, ttb, tsz, had, tbi) in enumerate(
            ((s1.epd0, s1.ttb0, s1.tsz0, s1.had0, s1.tbi0),
             (s1.epd1, s1.ttb1, s1.tsz1, s1.had1, s1.tbi1))
        ):
            tt = c.s1.tt[n]
            tt.ttb = ttb
            tt.tbi = tbi
            if not epd:
                tt.enabled = 1
                tt.tsz = tsz
                tt.gshift = s1.gshift[n]
                tt.start_level = s1.start_level[n]
                tt.had = had
    if s2 is not None:
        c.has_s2 = 1
        c.s2.vttb = s2.vttb
        c.s2.tsz = s2.tsz
        c.s2.gshift = s2.gshift
        c.s2.start_level = s2.start_level
        c.s2.ps = s2.ps
        c.s2.affd = s2.affd
    c.asid = cfg.asid
    c.vmid = cfg.vmid
    rc = lib.pymsi_cfg_check(c)
    if rc < 0:
        raise_errno(rc, repr(cfg))
    cfg._prepared = c
    return c


_KINDS = {int(k): k for k in FaultKind}
# struct pymsi_result read in one go: 4 x u64, then 12 x u8 (csrc/pymsi.h); the
# C core writes its flags as 0 or 1, so they unpack as bools.
_RESULT = struct.Struct("=4Q3B?4?2B2?")
if ffi.offsetof("struct pymsi_result", "tlb_hit") != _RESULT.size - 1:
    raise ImportError("pymsi._core_c does not match csrc/pymsi.h: rebuild it")


_new = tuple.__new__
# Results are immutable tuples and a pure function of the C result's bytes:
# the ones seen recently are reused rather than rebuilt (bounded).
_RESULTS: dict[bytes, WalkResult] = {}
_RESULTS_MAX = 4096
_results_get = _RESULTS.get


def _build(raw: bytes) -> WalkResult:
    """The WalkResult of a struct pymsi_result's bytes (and remember it)."""
    (pa, ipa, size, fipa, kind, stage, level, s1tw, w, r, s1w, s2w, lvl, s2lvl, glob,
     hit) = _RESULT.unpack_from(raw)
    if kind:
        fault = _new(Fault, (stage, _KINDS[kind], level, fipa if stage == 2 else None, s1tw))
        res = _new(WalkResult, (fault, None, None, None, False, False, False, False, 0, 0,
                                False, hit))
    else:
        res = _new(WalkResult, (None, pa, ipa, size, w, r, s1w, s2w, lvl, s2lvl, glob, hit))
    if len(_RESULTS) >= _RESULTS_MAX:
        _RESULTS.clear()
    _RESULTS[raw] = res
    return res


def _result(buf: Any) -> WalkResult:
    raw = buf[:]
    return _results_get(raw) or _build(raw)


def walk(
    mem: Memory,
    iova: int,
    write: bool = False,
    s1: Stage1 | None = None,
    s2: Stage2 | None = None,
    cfg: XlateConfig | None = None,
) -> WalkResult:
    """Translate ``iova`` by walking the tables in ``mem`` (no IOTLB)."""
    if cfg is None and type(s1) is Stage1 and (s2 is None or type(s2) is Stage2):
        # walk(mem, iova, s1=, s2=): the pair's configuration is cached on s1.
        last = s1._cfg
        cfg = last[1] if last is not None and last[0] is s2 else pair_config(s1, s2)
        s1 = s2 = None
        if type(iova) is not int:
            iova, write, cfg = walk_args(_B, mem, iova, write, None, None, cfg)
    elif type(iova) is not int or cfg is None or s1 is not None or s2 is not None:
        iova, write, cfg = walk_args(_B, mem, iova, write, s1, s2, cfg)
    try:
        c = cfg._prepared or _prepare(cfg)
        rc = _walk(mem._p, c, iova, bool(write), mem._res)
    except Exception:
        _refused(walk_args, _B, mem, iova, write, s1, s2, cfg)
        raise
    if rc:
        raise_errno(rc, "walk")
    raw = mem._resbuf[:]
    return _results_get(raw) or _build(raw)


class Iotlb(IotlbCommands):
    """An IOTLB: a fixed-capacity cache of translations with CLOCK eviction.

    Entries are tagged by kind (stage 1, stage 2, nested), ASID (global
    entries match every ASID), VMID, page size and input page.  An entry
    stays valid until invalidated, whatever happens to the tables.
    """

    backend = NAME
    __slots__ = ("_p", "_stats", "_spec")

    def __init__(self, capacity: int = 256) -> None:
        capacity = capacity_arg(capacity)
        p = lib.pymsi_tlb_new(capacity)
        if p == ffi.NULL:
            raise OutOfMemory("pymsi_tlb_new")
        self._p = ffi.gc(p, lib.pymsi_tlb_free)
        self._stats = ffi.new("struct pymsi_tlb_stats *")
        self._spec = ffi.new("struct pymsi_tlbi *")

    def _stat(self, name: str) -> int:
        lib.pymsi_tlb_get_stats(self._p, self._stats)
        return getattr(self._stats, name)

    @property
    def capacity(self) -> int:
        """Maximum number of entries."""
        return self._stat("capacity")

    @property
    def hits(self) -> int:
        """Lookups that found an entry."""
        return self._stat("hits")

    @property
    def misses(self) -> int:
        """Lookups that walked."""
        return self._stat("misses")

    @property
    def inserts(self) -> int:
        """Entries added."""
        return self._stat("inserts")

    @property
    def evictions(self) -> int:
        """Entries evicted (CLOCK)."""
        return self._stat("evictions")

    def __len__(self) -> int:
        return self._stat("count")

    def reset_stats(self) -> None:
        """Zero the hit, miss, insert and eviction counters."""
        lib.pymsi_tlb_reset_stats(self._p)

    def _invalidate(self, kinds: int, vmid: int | None, asid: int | None,
                    asid_hits_global: bool, rng: tuple[str, int, int] | None) -> int:
        s = self._spec
        s.kinds = kinds
        s.match_vmid = vmid is not None
        s.vmid = vmid or 0
        s.match_asid = asid is not None
        s.asid = asid or 0
        s.asid_hits_global = asid_hits_global
        if rng is None:
            s.range = lib.PYMSI_TLBI_RANGE_NONE
            s.start, s.last = 0, 0
        else:
            s.range = lib.PYMSI_TLBI_RANGE_IPA if rng[0] == "ipa" else lib.PYMSI_TLBI_RANGE_INPUT
            s.start, s.last = rng[1], rng[2]
        return check(lib.pymsi_tlb_invalidate(self._p, s), "IOTLB invalidation")

    def entries(self) -> list[dict[str, int]]:
        """The cached entries, newest in the CLOCK queue first."""
        n = len(self)
        buf = ffi.new("struct pymsi_tlb_entry_info[]", max(n, 1))
        lib.pymsi_tlb_entries(self._p, buf, n)
        names = ("iova", "ipa", "pa", "shift", "kind", "is_global", "granule", "level",
                 "s2_level", "s1_writable", "s2_readable", "s2_writable", "asid", "vmid")
        return [{k: getattr(buf[i], k) for k in names} for i in range(n)]

    def __repr__(self) -> str:
        return f"<Iotlb {NAME} entries={len(self)}/{self.capacity}>"


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
    if cfg is None and type(s1) is Stage1 and (s2 is None or type(s2) is Stage2):
        # translate(..., s1=, s2=): the pair's configuration is cached on s1.
        last = s1._cfg
        cfg = last[1] if last is not None and last[0] is s2 else pair_config(s1, s2)
        s1 = s2 = None
        if type(iova) is not int:
            iova, write, cfg = translate_args(_B, mem, iova, write, cfg, tlb, None, None)
    elif type(iova) is not int or cfg is None or s1 is not None or s2 is not None:
        iova, write, cfg = translate_args(_B, mem, iova, write, cfg, tlb, s1, s2)
    try:
        c = cfg._prepared or _prepare(cfg)
        rc = _translate(mem._p, _NULL if tlb is None else tlb._p, c, iova,
                                 bool(write), mem._res)
    except Exception:
        _refused(translate_args, _B, mem, iova, write, cfg, tlb, s1, s2)
        raise
    if rc:
        raise_errno(rc, "translate")
    raw = mem._resbuf[:]
    return _results_get(raw) or _build(raw)


class MsiTable:
    """The per-(device, MSI index) table of MSI addresses userspace fills.

    ``compose`` is what the IOMMU domain's MSI hook does with it: the
    address is ``(iova & ~((1 << shift) - 1)) | (doorbell_pa & ((1 << shift)
    - 1))``, and shift 0 means the doorbell PA itself (no IOMMU).  A vector
    with no entry raises :class:`~pymsi.errors.MsiNotMapped`.  The MSI index
    is a u16, as ``msi_desc->msi_index`` is in Linux.
    """

    backend = NAME
    __slots__ = ("_p", "_u64", "_u32")

    def __init__(self) -> None:
        p = lib.pymsi_msi_new()
        if p == ffi.NULL:
            raise OutOfMemory("pymsi_msi_new")
        self._p = ffi.gc(p, lib.pymsi_msi_free)
        self._u64 = ffi.new("uint64_t *")
        self._u32 = ffi.new("uint32_t *")

    def __len__(self) -> int:
        return lib.pymsi_msi_count(self._p)

    def reserve(self, n: int) -> None:
        """Size the table for ``n`` entries so that set() will not allocate."""
        n = reserve_arg(n)
        check(lib.pymsi_msi_reserve(self._p, n), f"reserve({n})")

    def set(self, dev: int, index: int, iova: int, shift: int = 12) -> None:
        """Describe vector ``index`` of device ``dev``: its MSI IOVA and shift."""
        dev, index, iova, shift = msi_set_args(dev, index, iova, shift)
        check(lib.pymsi_msi_set(self._p, dev, index, iova, shift),
              f"MSI entry ({dev:#x}, {index}) shift {shift}")

    def get(self, dev: int, index: int) -> tuple[int, int] | None:
        """(iova, shift) of the vector, or None."""
        if type(dev) is not int or type(index) is not int:
            dev, index = _vector(dev, index)
        try:
            rc = _msi_get(self._p, dev, index, self._u64, self._u32)
        except OverflowError:
            _refused(_vector, dev, index)
            raise
        return None if rc else (self._u64[0], self._u32[0])

    def remove(self, dev: int, index: int) -> None:
        """Forget the vector's entry (MsiNotMapped if there is none)."""
        dev, index = _vector(dev, index)
        check(lib.pymsi_msi_remove(self._p, dev, index),
              f"no MSI entry for device {dev:#x} index {index}")

    def compose(self, dev: int, index: int, doorbell_pa: int) -> int:
        """The MSI address the device must use for this vector."""
        if type(dev) is not int or type(index) is not int or type(doorbell_pa) is not int:
            dev, index, doorbell_pa = _compose_args(dev, index, doorbell_pa)
        try:
            rc = _msi_compose(self._p, dev, index, doorbell_pa, self._u64)
        except OverflowError:
            _refused(_compose_args, dev, index, doorbell_pa)
            raise
        if rc:
            raise_errno(rc, f"no MSI entry for device {dev:#x} index {index}")
        return self._u64[0]

    def items(self) -> list[tuple[int, int, int, int]]:
        """All entries as (dev, index, iova, shift), sorted."""
        n = len(self)
        m = max(n, 1)
        devs, idx = ffi.new("uint32_t[]", m), ffi.new("uint32_t[]", m)
        iova, shift = ffi.new("uint64_t[]", m), ffi.new("uint8_t[]", m)
        lib.pymsi_msi_items(self._p, devs, idx, iova, shift, n)
        return sorted((devs[i], idx[i], iova[i], shift[i]) for i in range(n))

    def __repr__(self) -> str:
        return f"<MsiTable {NAME} entries={len(self)}>"


def _vector(dev: Any, index: Any) -> tuple[int, int]:
    return int_arg("dev", dev, 32), int_arg("index", index, 32)


def _compose_args(dev: Any, index: Any, doorbell_pa: Any) -> tuple[int, int, int]:
    return int_arg("dev", dev, 32), int_arg("index", index, 32), int_arg("doorbell_pa",
                                                                          doorbell_pa)


_CTYPES = {"I": "uint32_t[]", "i": "int32_t[]", "Q": "uint64_t[]", "L": "uint64_t[]",
           "B": "uint8_t[]"}


def _c(views: list[memoryview]) -> list[Any]:
    """cffi arrays over checked buffer views (no copy)."""
    return [ffi.from_buffer(_CTYPES[mv.format[-1]], mv, require_writable=not mv.readonly)
            for mv in views]


def _tlb(tlb: Iotlb | None) -> Any:
    t = obj_arg("tlb", tlb, Iotlb, optional=True)
    return _NULL if t is None else t._p


def compose_batch(table: MsiTable, doorbell_pa: int, devs: Buffer, idx: Buffer,
                  out_addr: Buffer, status: Buffer) -> int:
    """Compose the MSI address of every (devs[k], idx[k]); returns how many had an entry."""
    obj_arg("table", table, MsiTable)
    doorbell_pa = int_arg("doorbell_pa", doorbell_pa)
    n, views = batch_views([(devs, "u32", "devs"), (idx, "u32", "idx")],
                           [(out_addr, "u64", "out_addr"), (status, "i32", "status")])
    dc, ic, oc, sc = _c(views)
    return check(lib.pymsi_compose_batch(table._p, doorbell_pa, dc, ic, n, oc, sc),
                 "compose_batch")


def translate_batch(mem: Memory, cfg: XlateConfig, iovas: Buffer, out_pa: Buffer, status: Buffer,
                    tlb: Iotlb | None = None, write: bool = False) -> int:
    """Translate every iovas[k]; returns how many translated without a fault."""
    obj_arg("mem", mem, Memory)
    c = _prepare(config_of(cfg, None, None))
    n, views = batch_views([(iovas, "u64", "iovas")],
                           [(out_pa, "u64", "out_pa"), (status, "i32", "status")])
    t = _tlb(tlb)
    write = bool(write)
    ic, oc, sc = _c(views)
    return check(lib.pymsi_translate_batch(mem._p, t, c, write, ic, n, oc, sc),
                 "translate_batch")


def msi_batch(table: MsiTable, mem: Memory, cfg: XlateConfig, doorbell_pa: int, devs: Buffer,
              idx: Buffer, out_addr: Buffer, out_pa: Buffer, status: Buffer,
              tlb: Iotlb | None = None) -> int:
    """Compose each vector's MSI address and translate the device's write to it.

    Returns how many vectors reached an output address.
    """
    obj_arg("table", table, MsiTable)
    obj_arg("mem", mem, Memory)
    c = _prepare(config_of(cfg, None, None))
    doorbell_pa = int_arg("doorbell_pa", doorbell_pa)
    n, views = batch_views(
        [(devs, "u32", "devs"), (idx, "u32", "idx")],
        [(out_addr, "u64", "out_addr"), (out_pa, "u64", "out_pa"), (status, "i32", "status")])
    t = _tlb(tlb)
    dc, ic, oac, opc, sc = _c(views)
    return check(lib.pymsi_msi_batch(table._p, mem._p, t, c, doorbell_pa, dc, ic, n,
                                     oac, opc, sc), "msi_batch")


class Streams:
    """An SMMU's resolved stream configurations, keyed by StreamID.

    Each known StreamID aborts, bypasses, or translates with an
    :class:`XlateConfig`; ``ias`` (0: none) is the input size checked when
    there is no stage 1.  It is a cache the SMMU model fills; the model itself
    decodes STEs and CDs and records events.
    """

    backend = NAME
    __slots__ = ("_p", "_d")

    def __init__(self) -> None:
        p = lib.pymsi_streams_new()
        if p == ffi.NULL:
            raise OutOfMemory("pymsi_streams_new")
        self._p = ffi.gc(p, lib.pymsi_streams_free)
        self._d: dict[int, tuple[int, XlateConfig | None, int]] = {}

    def __len__(self) -> int:
        return lib.pymsi_streams_count(self._p)

    def set(self, sid: int, mode: int, cfg: XlateConfig | None = None, ias: int = 0) -> None:
        """Remember how StreamID ``sid`` is handled."""
        sid, mode, cfg, ias = streams_set_args(sid, mode, cfg, ias)
        c = _prepare(cfg) if mode == lib.PYMSI_STREAM_TRANSLATE and cfg is not None else _NULL
        check(lib.pymsi_streams_set(self._p, sid, mode, c, ias),
              f"stream {sid:#x} mode {mode} ias {ias}")
        self._d[sid] = (mode, cfg if mode == lib.PYMSI_STREAM_TRANSLATE else None, ias)

    def get(self, sid: int) -> tuple[int, XlateConfig | None, int] | None:
        """(mode, cfg, ias) of ``sid``, or None."""
        if type(sid) is not int or not 0 <= sid <= 0xFFFF_FFFF:
            sid = int_arg("sid", sid, 32)
        return self._d.get(sid)

    def remove(self, sid: int) -> bool:
        """Forget ``sid``; False if it was not known."""
        sid = int_arg("sid", sid, 32)
        rc = lib.pymsi_streams_remove(self._p, sid)
        self._d.pop(sid, None)
        return rc == 0

    def clear(self) -> None:
        """Forget every StreamID."""
        lib.pymsi_streams_clear(self._p)
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
    n, views = batch_views([(sids, "u32", "sids"), (iovas, "u64", "iovas")], outs)
    t = _tlb(tlb)
    write = bool(write)
    sc, ic, oc, stc, *uc = _c(views)
    return check(lib.pymsi_stream_batch(mem._p, t, streams._p, write, sc, ic, n,
                                        oc, stc, uc[0] if uc else _NULL), "stream_batch")


def stream_translator(mem: Memory, streams: Streams, tlb: Iotlb | None = None,
                      wrap: Callable[[WalkResult], Wrapped] | None = None
                      ) -> Callable[[int, int, bool], WalkResult | Wrapped | None]:
    """A function ``(sid, iova, write)`` translating one transaction through ``streams``.

    It returns the :class:`WalkResult` (a fault included) when ``sid`` is a known StreamID
    translated with a configuration and ``iova`` passes its ``ias`` check, and None for
    everything else (unknown, aborting or bypassing StreamID, ``ias`` exceeded), which the
    caller handles on its full path.  With ``wrap`` (a pure function), a successful
    result is returned as ``wrap(result)``; results may be reused between calls (they are
    immutable and a pure function of the C result).  ``sid`` must be an int of 32 bits,
    ``iova`` of 64 and ``write`` a bool or int: otherwise TypeError (not an int) or
    OverflowError (out of range).  It is the SMMU model's per-call hit path: the stream
    probe and the IOTLB translate in one C call, no argument parsing beyond the C types'.
    """
    obj_arg("mem", mem, Memory)
    obj_arg("streams", streams, Streams)
    fn, mp, tp, sp = lib.pymsi_stream_translate, mem._p, _tlb(tlb), streams._p
    res, buf = mem._res, mem._resbuf
    seen: dict[bytes, Any] = {}
    seen_get = seen.get

    def result(raw: bytes) -> Any:
        w = _results_get(raw) or _build(raw)
        r: WalkResult | Wrapped = w if wrap is None or w.fault is not None else wrap(w)
        if len(seen) >= _RESULTS_MAX:
            seen.clear()
        seen[raw] = r
        return r

    def translate(sid: int, iova: int, write: bool) -> Any:
        if fn(mp, tp, sp, sid, iova, write, res):
            return None
        raw = buf[:]
        return seen_get(raw) or result(raw)

    def last() -> Any:
        """What translate() would have returned for the result in ``res`` now."""
        raw = buf[:]
        return seen_get(raw) or result(raw)
    translate._parts = (mem, tp, sp, res, last)     # type: ignore[attr-defined]  # msi_router's
    return translate


FIRE_NONE, FIRE_TRANSLATED = lib.PYMSI_FIRE_NONE, lib.PYMSI_FIRE_TRANSLATED


def msi_router(translator: Callable[[int, int, bool], Wrapped], ram: Memory, itc: ItsCache,
               gicmem: Memory, limits: array.array[int], tables: array.array[int]
               ) -> tuple[Callable[[int, int, int, int, int], int], Callable[[], Wrapped]]:
    """``(fire, last)``: one MSI write along a cached route in one C call
    (pymsi_msi_fire): see the Python core's ``msi_router``.  ``fire`` is the C function
    bound to its objects (no Python frame); ``limits`` and ``tables`` are read in place
    at every call."""
    parts, n = router_args(translator, ram, itc, gicmem, limits, tables, Memory, ItsCache)
    mem, tp, sp, res, last = cast("tuple[Memory, object, object, object, Callable[[], Wrapped]]",
                                  parts)
    fire = functools.partial(lib.pymsi_msi_fire, mem._p, tp, sp, ram._p, itc._p, gicmem._p,
                             ffi.from_buffer("uint32_t[]", limits),
                             ffi.from_buffer("uint64_t[]", tables), n, res)
    return fire, last


_B = sys.modules[__name__]


def pending_batch(mem: Memory, tables: Buffer, intids: Buffer, old: Buffer) -> int:
    """Set bit intids[k] of the pending table at tables[k] for every k (old[k]: the bit
    as it was, 0 or 1, or -EFAULT when its byte is not RAM); returns how many were set."""
    obj_arg("mem", mem, Memory)
    n, views = batch_views([(tables, "u64", "tables"), (intids, "u32", "intids")],
                           [(old, "i32", "old")])
    tc, ic, oc = _c(views)
    return check(lib.pymsi_pending_batch(mem._p, tc, ic, n, oc), "pending_batch")


class ItsCache:
    """An ITS translation cache for batches: (DeviceID, EventID) -> (INTID, processor).

    What :class:`pymsi.hw.its.GicV3Its` keeps of its cached physical translations so
    that :func:`its_lookup_batch` resolves a batch of EventIDs in C.
    """

    backend = NAME
    __slots__ = ("_p", "_u32a", "_u32b")

    def __init__(self) -> None:
        p = lib.pymsi_itc_new()
        if p == ffi.NULL:
            raise OutOfMemory("pymsi_itc_new")
        self._p = ffi.gc(p, lib.pymsi_itc_free)
        self._u32a = ffi.new("uint32_t *")
        self._u32b = ffi.new("uint32_t *")

    def __len__(self) -> int:
        return lib.pymsi_itc_count(self._p)

    def set(self, dev: int, event: int, intid: int, proc: int) -> None:
        """Cache (intid, proc) for (dev, event)."""
        dev, event = itc_args(dev, event)
        intid, proc = int_arg("intid", intid, 32), int_arg("proc", proc, 32)
        check(lib.pymsi_itc_set(self._p, dev, event, intid, proc), "ItsCache.set")

    def get(self, dev: int, event: int) -> tuple[int, int] | None:
        """(intid, proc) cached for (dev, event), or None."""
        dev, event = itc_args(dev, event)
        if lib.pymsi_itc_get(self._p, dev, event, self._u32a, self._u32b) < 0:
            return None
        return self._u32a[0], self._u32b[0]

    def remove(self, dev: int, event: int) -> bool:
        """Drop (dev, event); whether it was there."""
        dev, event = itc_args(dev, event)
        return lib.pymsi_itc_remove(self._p, dev, event) == 0

    def clear(self) -> None:
        """Drop everything."""
        lib.pymsi_itc_clear(self._p)

    def __repr__(self) -> str:
        return f"<ItsCache {NAME} entries={len(self)}>"


def its_lookup_batch(cache: ItsCache, dev: int, events: Buffer, limits: Buffer, intids: Buffer,
                     status: Buffer, grouped: Buffer, counts: Buffer) -> int:
    """Look up every (dev, events[k]): status[k] is the processor of a hit whose INTID
    is in [8192, limits[processor]) (the others: -ENOENT), intids[k] its INTID (0 if
    none); the hits' INTIDs go to ``grouped`` by processor, in item order within each,
    counts[p] of them for processor p.  Returns the number of hits."""
    obj_arg("cache", cache, ItsCache)
    dev, n, nproc, views = itc_batch_views(dev, events, limits, intids, status, grouped,
                                           counts)
    ec, ic, sc, gc, lc, cc = _c(views)
    return lib.pymsi_itc_lookup_batch(cache._p, dev, ec, n, lc, nproc, ic, sc, gc, cc)


def msix_gather(table: Buffer, nvec: int, masked_all: bool, vectors: Buffer, addrs: Buffer,
                datas: Buffer, status: Buffer) -> int:
    """Read the MSI-X entries of vectors[k] from ``table`` (``nvec`` 16-byte entries):
    addrs[k], datas[k] and status[k] 0 (to send), 1 (masked, by its vector control or
    ``masked_all``) or -EINVAL (no such vector: address and data 0).  Returns how many
    are to send."""
    nvec, n, views = msix_gather_views(table, nvec, vectors, addrs, datas, status)
    tc, vc, ac, dc, sc = _c(views)
    return lib.pymsi_msix_gather(tc, nvec, bool(masked_all), vc, n, ac, dc, sc)


class ItsCmdq:
    """The ITS command queue's C part (csrc/itscmd.c): what
    :class:`pymsi.hw.its.GicV3Its` runs of its commands (MAPD, MAPC, MAPTI, MAPI, SYNC,
    INV, INVALL) without Python, over a configuration set by :meth:`configure`."""

    backend = NAME
    __slots__ = ("_cfg", "_run", "_rec")

    def __init__(self) -> None:
        self._cfg = ffi.new("struct pymsi_its_cfg *")
        self._run = ffi.new("struct pymsi_its_run *")
        self._rec = ffi.new("uint64_t[]", 3 * ITSQ_REC_MAX)

    def configure(self, cq_base: int, cq_size: int, nproc: int, devbits: int, id_bits: int,
                  cidbits: int, devices: ItsTable, collections: ItsTable) -> None:
        """The queue (base, bytes), the number of redistributors, the ID widths and the
        decoded device and collection tables ((valid, indirect, base, span, entry
        size, page size) each)."""
        (cq_base, cq_size, nproc, devbits, id_bits, cidbits, dt, ct) = its_cmdq_cfg_args(
            cq_base, cq_size, nproc, devbits, id_bits, cidbits, devices, collections)
        c = self._cfg
        c.cq_base, c.cq_size, c.nproc = cq_base, cq_size, nproc
        c.devbits, c.id_bits, c.cidbits = devbits, id_bits, cidbits
        for t, (valid, indirect, base, span, esize, page) in ((c.devices, dt),
                                                                (c.collections, ct)):
            t.valid, t.indirect, t.base, t.span, t.esize, t.page = (valid, indirect, base,
                                                                    span, esize, page)

    def run(self, mem: Memory, itc: ItsCache | None, creadr: int, cwriter: int,
            ops: int) -> tuple[int, int, int, int, int, list[int]]:
        """Run the commands from ``creadr`` to ``cwriter`` whose opcode bit is set in
        ``ops`` (and C runs): (status, creadr where it stopped, commands completed,
        opcode there, error code, records as a flat list of (kind, a, b))."""
        if type(mem) is not Memory:
            obj_arg("mem", mem, Memory)
        if itc is not None and type(itc) is not ItsCache:
            obj_arg("itc", itc, ItsCache, optional=True)
        if type(creadr) is not int or type(cwriter) is not int or type(ops) is not int:
            creadr, cwriter = int_arg("creadr", creadr, 32), int_arg("cwriter", cwriter, 32)
            ops = int_arg("ops", ops)
        r = self._run
        try:
            r.creadr = creadr
            st = _its_cmdq_run(mem._p, self._cfg, _NULL if itc is None else itc._p, ops,
                               cwriter, r, self._rec, ITSQ_REC_MAX)
        except OverflowError:
            int_arg("creadr", creadr, 32), int_arg("cwriter", cwriter, 32)
            int_arg("ops", ops)
            raise
        if st < 0:
            raise_errno(st, "ItsCmdq.run: bad configuration or pointers")
        n = r.nrec
        return st, r.creadr, r.ncmds, r.op, r.code, ffi.unpack(self._rec, 3 * n) if n else []
