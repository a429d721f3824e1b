"""A page-table builder in the manner of Linux's io-pgtable-arm.

:class:`IoPgtable` keeps VMSAv8-64 stage-1 or stage-2 tables in a
:class:`~pymsi.core.Memory`, writing real descriptors: map / unmap /
iova_to_phys, block mappings wherever size and alignment allow, blocks split
when only part of them is unmapped, tables freed when they empty.  The table
pages come from a :class:`TableAllocator` over a RAM range.

Descriptor bits follow what Linux writes for the same ``prot``: stage 1 sets
AF and nG, AP[1] unless PRIV, AP[2] for read-only, AttrIndx 1 (cacheable, SH
inner) for CACHE, 2 for MMIO, 0 otherwise (SH outer), UXN|PXN for NOEXEC;
stage 2 sets S2AP from READ/WRITE, MemAttr device / write-back / non-cacheable,
AF.  Deliberate differences from Linux: a prot with neither READ nor WRITE is
refused instead of silently mapping nothing, and unmap skips holes instead
of stopping at the first one.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

from ..errors import AlreadyExists, BusError, InvalidArgument, OutOfMemory
from . import vmsa_formats as V
from .common import (
    ADDRESS_SIZES,
    GRANULES,
    Stage1,
    Stage1Fields,
    Stage2,
    Stage2Fields,
    bytes_arg,
    int_arg,
    integer,
    level_lsb,
    read_args,
    s1_start_level,
    s2_sl0_for_level,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


class Prot(enum.IntFlag):
    """IOMMU mapping permissions and attributes (Linux's IOMMU_* values)."""

    READ = 1
    WRITE = 2
    CACHE = 4
    NOEXEC = 8
    MMIO = 16
    PRIV = 32


# descriptor fields (pymsi.core.vmsa_formats), as masks where one bit is tested
_OA_MASK = V.DESC_OA.mask
_AF, _NG = V.DESC_AF.mask, V.DESC_NG.mask
_VALID, _TABLE = V.DESC_VALID.mask, V.DESC_TABLE.mask
_TABLE_DESC = _VALID | _TABLE               # a table descriptor, or a page at level 3


_MEMORY_METHODS = ("is_ram", "read", "write", "read_u64", "write_u64")


class TableMemory(Protocol):
    """What the builder needs of the memory holding its tables: a core
    :class:`~pymsi.core.Memory` or an IpaView."""

    def is_ram(self, addr: int, size: int = 1) -> bool: ...
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def read_u64(self, addr: int) -> int: ...
    def write_u64(self, addr: int, value: int) -> None: ...


class TablePool(Protocol):
    """Where the builder gets table pages: a :class:`TableAllocator`, or any allocator
    with the same two calls (the kernel model's page allocator)."""

    def alloc(self, size: int) -> int: ...
    def free(self, addr: int, size: int) -> None: ...


def _memory(name: str, mem: TableMemory) -> TableMemory:
    """``mem`` checked to offer the memory methods the builder uses (TypeError)."""
    if not all(callable(getattr(mem, m, None)) for m in _MEMORY_METHODS):
        raise TypeError(f"{name} must be a core Memory or IpaView, not {type(mem).__name__}")
    return mem


class TableAllocator:
    """Hands out zeroed, naturally aligned table memory from a RAM range."""

    def __init__(self, mem: TableMemory, base: int, size: int) -> None:
        _memory("mem", mem)
        base, size = int_arg("base", base), int_arg("size", size)
        if not mem.is_ram(base, size):
            raise InvalidArgument(f"table pool [{base:#x}, +{size:#x}) is not RAM")
        self.mem = mem
        self.base = base
        self.end = base + size
        self._next = base
        self._free: dict[int, list[int]] = {}
        self.in_use = 0

    def alloc(self, size: int) -> int:
        """A zeroed block of ``size`` bytes aligned to ``size`` (a power of two)."""
        size = integer("size", size)
        if size <= 0 or size & (size - 1):
            raise InvalidArgument(f"table size {size} is not a power of two")
        free = self._free.get(size)
        if free:
            addr = free.pop()
        else:
            addr = (self._next + size - 1) & ~(size - 1)
            if addr + size > self.end:
                raise OutOfMemory(f"table pool exhausted ({size} bytes wanted)")
            self._next = addr + size
        self.mem.write(addr, bytes(size))
        self.in_use += size
        return addr

    def free(self, addr: int, size: int) -> None:
        """Give a block back for reuse."""
        self._free.setdefault(size, []).append(addr)
        self.in_use -= size


class IoPgtable:
    """Stage-1 (``fmt="s1"``) or stage-2 (``fmt="s2"``) tables for one domain.

    ``ias``/``oas`` are the input and output sizes in bits.  Stage 2 uses
    concatenated start-level tables the way Linux does (when the level-0
    table would hold at most 16 entries, start at level 1 instead), unless
    ``start_level`` asks for a specific one.  ``ttbr1`` builds tables for the
    top of the VA space (stage 1 only).
    """

    def __init__(
        self,
        mem: TableMemory,
        alloc: TablePool,
        fmt: str = "s1",
        granule: int = 4096,
        ias: int = 48,
        oas: int = 48,
        start_level: int | None = None,
        ttbr1: bool = False,
    ) -> None:
        _memory("mem", mem)
        if not (callable(getattr(alloc, "alloc", None)) and callable(getattr(alloc, "free", None))):
            raise TypeError(f"alloc must be a TableAllocator, not {type(alloc).__name__}")
        if fmt not in ("s1", "s2"):
            raise InvalidArgument(f"fmt={fmt!r}: must be 's1' or 's2'")
        granule, ias, oas = integer("granule", granule), integer("ias", ias), integer("oas", oas)
        if start_level is not None:
            start_level = integer("start_level", start_level)
        if granule not in GRANULES:
            raise InvalidArgument(f"granule={granule!r}: must be 4096, 16384 or 65536")
        if not 25 <= ias <= 48:
            raise InvalidArgument(f"ias={ias!r}: must be 25..48")
        if oas not in ADDRESS_SIZES:
            raise InvalidArgument(f"oas={oas!r}: must be one of {ADDRESS_SIZES}")
        if ttbr1 and fmt != "s1":
            raise InvalidArgument("ttbr1 tables are stage 1 only")
        self.mem = mem
        self.alloc = alloc
        self.fmt = fmt
        self.granule = granule
        self.gshift = GRANULES[granule]
        self.stride = self.gshift - 3
        self.ias = ias
        self.oas = oas
        self.ttbr1 = ttbr1
        level = s1_start_level(self.gshift, 64 - ias)
        if fmt == "s2" and start_level is None and level == 0 and ias - level_lsb(
            self.gshift, 0
        ) <= 4:
            level = 1
        if start_level is not None:
            if fmt != "s2":
                raise InvalidArgument("start_level only applies to stage 2")
            level = start_level
        self.start_level = level
        if fmt == "s2":
            # Validates the geometry exactly as the SMMU would (S2SL0 vs S2T0SZ).
            Stage2(0, 64 - ias, s2_sl0_for_level(self.gshift, level) if 0 <= level <= 3
                   else 3, granule, oas)
        self._pgd_bytes = max(8 << (ias - level_lsb(self.gshift, level)), 64)
        self.pgd = alloc.alloc(self._pgd_bytes)

    # -- geometry ----------------------------------------------------------

    @property
    def pgsizes(self) -> list[int]:
        """Mapping sizes this format can use: the page and the allowed blocks."""
        sizes = [1 << self.gshift]
        for level in (2, 1):
            if level >= self.start_level and self._block_ok(level):
                sizes.append(1 << level_lsb(self.gshift, level))
        return sizes

    def _block_ok(self, level: int) -> bool:
        return level in (1, 2) if self.gshift == 12 else level == 2

    def _table_bytes(self, level: int) -> int:
        return self._pgd_bytes if level == self.start_level else self.granule

    def _index(self, va: int, level: int) -> int:
        width = (self.ias - level_lsb(self.gshift, level) if level == self.start_level
                 else self.stride)
        return (va >> level_lsb(self.gshift, level)) & ((1 << width) - 1)

    def _input(self, iova: int, size: int) -> int:
        """``iova`` as an offset into this table's input space (checked)."""
        if self.ttbr1:
            top = (1 << (64 - self.ias)) - 1
            if iova >> self.ias != top:
                raise InvalidArgument(f"iova {iova:#x} is not in the TTB1 range")
            iova &= (1 << self.ias) - 1
        if iova < 0 or iova + size > 1 << self.ias:
            raise InvalidArgument(f"[{iova:#x}, +{size:#x}) exceeds the {self.ias}-bit input")
        return iova

    def stage1_config(self, **kw: Unpack[Stage1Fields]) -> Stage1:
        """A :class:`Stage1` that walks these tables (extra fields via ``kw``)."""
        if self.fmt != "s1":
            raise InvalidArgument("stage1_config() of a stage-2 table")
        base: Stage1Fields
        if self.ttbr1:
            base = Stage1Fields(ttb1=self.pgd, tsz1=64 - self.ias, granule1=self.granule,
                                epd0=True, epd1=False, ips=self.oas)
        else:
            base = Stage1Fields(ttb0=self.pgd, tsz0=64 - self.ias, granule0=self.granule,
                                ips=self.oas)
        base.update(kw)
        return Stage1(**base)

    def stage2_config(self, **kw: Unpack[Stage2Fields]) -> Stage2:
        """A :class:`Stage2` that walks these tables (extra fields via ``kw``)."""
        if self.fmt != "s2":
            raise InvalidArgument("stage2_config() of a stage-1 table")
        base = Stage2Fields(vttb=self.pgd, tsz=64 - self.ias,
                            sl0=s2_sl0_for_level(self.gshift, self.start_level),
                            granule=self.granule, ps=self.oas)
        base.update(kw)
        return Stage2(**base)

    # -- descriptors -------------------------------------------------------

    def leaf_bits(self, prot: Prot) -> int:
        """The attribute bits of a leaf descriptor for ``prot`` (no type, no address)."""
        bits = _AF
        if self.fmt == "s1":
            bits |= _NG
            if not prot & Prot.PRIV:
                bits |= V.DESC_S1_AP1(1)
            if not prot & Prot.WRITE and prot & Prot.READ:
                bits |= V.DESC_S1_AP2(1)
            if prot & Prot.MMIO:
                bits |= V.DESC_S1_ATTRINDX(2)         # Linux's MAIR index for device memory
            elif prot & Prot.CACHE:
                bits |= V.DESC_S1_ATTRINDX(1)         # and for cacheable memory
            if prot & Prot.NOEXEC:
                bits |= V.DESC_S1_PXN(1) | V.DESC_S1_UXN(1)
        else:
            if prot & Prot.READ:
                bits |= V.DESC_S2AP_R(1)
            if prot & Prot.WRITE:
                bits |= V.DESC_S2AP_W(1)
            if prot & Prot.MMIO:
                bits |= V.DESC_S2_MEMATTR(0b0001)     # Device-nGnRE
            elif prot & Prot.CACHE:
                bits |= V.DESC_S2_MEMATTR(0b1111)     # Normal, write-back
            else:
                bits |= V.DESC_S2_MEMATTR(0b0101)     # Normal, non-cacheable
            if prot & Prot.NOEXEC:
                bits |= V.DESC_S2_XN(0b11)
        bits |= V.DESC_SH(3) if prot & Prot.CACHE else V.DESC_SH(2)   # inner / outer
        return bits

    def _leaf(self, pa: int, level: int, attrs: int) -> int:
        return pa | attrs | (_TABLE_DESC if level == 3 else _VALID)   # page, or block

    def _rd(self, addr: int) -> int:
        return self.mem.read_u64(addr)

    def _wr(self, addr: int, value: int) -> None:
        self.mem.write_u64(addr, value)

    # -- map ---------------------------------------------------------------

    def map(self, iova: int, paddr: int, size: int, prot: Prot | int) -> None:
        """Map [iova, iova + size) to [paddr, ...) with the largest sizes that fit.

        Overlapping an existing mapping is :class:`AlreadyExists` (EEXIST), and
        whatever this call mapped before that is unmapped again.
        """
        iova, paddr = int_arg("iova", iova), int_arg("paddr", paddr)
        size, prot = int_arg("size", size), Prot(int_arg("prot", prot))
        g = self.granule
        if size <= 0 or (iova | paddr | size) & (g - 1):
            raise InvalidArgument(f"map({iova:#x}, {paddr:#x}, {size:#x}): not {g}-aligned")
        if not prot & (Prot.READ | Prot.WRITE):
            raise InvalidArgument("prot needs READ or WRITE")
        if paddr + size > 1 << self.oas:
            raise InvalidArgument(f"{paddr:#x}+{size:#x} exceeds the {self.oas}-bit output")
        va = self._input(iova, size)
        attrs = self.leaf_bits(prot)
        done = 0
        try:
            while done < size:
                pgsize = max(s for s in self.pgsizes
                             if not (va + done) & (s - 1) and not (paddr + done) & (s - 1)
                             and s <= size - done)
                self._install(va + done, paddr + done, pgsize, attrs)
                done += pgsize
        except Exception:
            if done:
                self._unmap_range(self.pgd, self.start_level, 0, va, va + done)
            raise

    def _install(self, va: int, pa: int, pgsize: int, attrs: int) -> None:
        level, table = self.start_level, self.pgd
        leaf_level = next(lv for lv in range(3, -1, -1)
                          if 1 << level_lsb(self.gshift, lv) == pgsize)
        while True:
            addr = table + 8 * self._index(va, level)
            d = self._rd(addr)
            if level == leaf_level:
                if d & _VALID:
                    raise AlreadyExists(f"{va:#x} is already mapped")
                self._wr(addr, self._leaf(pa, level, attrs))
                return
            if not d & _VALID:
                nxt = self.alloc.alloc(self.granule)
                self._wr(addr, nxt | _TABLE_DESC)
            elif d & _TABLE:
                nxt = d & _OA_MASK & ~(self.granule - 1)
            else:
                raise AlreadyExists(f"{va:#x} is inside a block mapping")
            table, level = nxt, level + 1

    # -- unmap -------------------------------------------------------------

    def unmap(self, iova: int, size: int) -> int:
        """Unmap whatever lies in [iova, iova + size); returns the bytes unmapped.

        A block only partly inside the range is split into the next level's
        mappings first; tables left empty are freed.
        """
        iova, size = int_arg("iova", iova), int_arg("size", size)
        g = self.granule
        if size <= 0 or (iova | size) & (g - 1):
            raise InvalidArgument(f"unmap({iova:#x}, {size:#x}): not {g}-aligned")
        va = self._input(iova, size)
        return self._unmap_range(self.pgd, self.start_level, 0, va, va + size)

    def _unmap_range(self, table: int, level: int, table_va: int, start: int, end: int) -> int:
        lsb = level_lsb(self.gshift, level)
        esize = 1 << lsb
        unmapped = 0
        va = max(start, table_va) & ~(esize - 1)
        while va < end:
            s, e = max(start, va), min(end, va + esize)
            addr = table + 8 * self._index(va, level)
            d = self._rd(addr)
            if d & _VALID:
                if level < 3 and d & _TABLE:
                    nxt = d & _OA_MASK & ~(self.granule - 1)
                    unmapped += self._unmap_range(nxt, level + 1, va, s, e)
                    if not any(self.mem.read(nxt, self.granule)):
                        self._wr(addr, 0)
                        self.alloc.free(nxt, self.granule)
                elif s == va and e == va + esize:
                    self._wr(addr, 0)
                    unmapped += esize
                else:
                    nxt = self._split(d, level)
                    self._wr(addr, nxt | _TABLE_DESC)
                    unmapped += self._unmap_range(nxt, level + 1, va, s, e)
            va += esize
        return unmapped

    def _split(self, block: int, level: int) -> int:
        """A next-level table that maps what ``block`` maps, with its attributes."""
        lsb = level_lsb(self.gshift, level)
        sub = 1 << (lsb - self.stride)
        attrs = block & ~(_OA_MASK & ~((1 << self.gshift) - 1)) & ~_TABLE_DESC
        pa = block & _OA_MASK & ~((1 << lsb) - 1)
        nxt = self.alloc.alloc(self.granule)
        entries = b"".join(
            self._leaf(pa + i * sub, level + 1, attrs).to_bytes(8, "little")
            for i in range(1 << self.stride)
        )
        self.mem.write(nxt, entries)
        return nxt

    # -- lookup ------------------------------------------------------------

    def iova_to_phys(self, iova: int) -> int | None:
        """The output address ``iova`` maps to, or None."""
        va = self._input(int_arg("iova", iova), 1)
        table, level = self.pgd, self.start_level
        while True:
            d = self._rd(table + 8 * self._index(va, level))
            if not d & _VALID:
                return None
            lsb = level_lsb(self.gshift, level)
            if level < 3 and d & _TABLE:
                table, level = d & _OA_MASK & ~(self.granule - 1), level + 1
                continue
            return (d & _OA_MASK & ~((1 << lsb) - 1)) | (va & ((1 << lsb) - 1))

    def free(self) -> None:
        """Unmap everything and give every table page back."""
        self._unmap_range(self.pgd, self.start_level, 0, 0, 1 << self.ias)
        self.alloc.free(self.pgd, self._pgd_bytes)


class IpaView:
    """Guest-physical memory as the guest sees it: IPAs translated by stage 2.

    Offers the memory methods :class:`IoPgtable` and a guest driver use
    (read/write, u32/u64, is_ram), translating each page through the
    stage-2 tables ``s2`` into the host ``mem``.  An IPA that stage 2 does
    not map is a :class:`~pymsi.errors.BusError`, as an access the VMM
    cannot back would be.
    """

    def __init__(self, mem: TableMemory, s2: IoPgtable) -> None:
        _memory("mem", mem)
        if not isinstance(s2, IoPgtable):
            raise TypeError(f"s2 must be an IoPgtable, not {type(s2).__name__}")
        if s2.fmt != "s2":
            raise InvalidArgument("IpaView needs stage-2 tables")
        self.mem = mem
        self.s2 = s2

    def _chunks(self, ipa: int, size: int) -> list[tuple[int, int]]:
        out = []
        g = self.s2.granule
        while size:
            chunk = min(g - (ipa & (g - 1)), size)
            pa = self.s2.iova_to_phys(ipa) if 0 <= ipa < 1 << self.s2.ias else None
            if pa is None or not self.mem.is_ram(pa, chunk):
                raise BusError(f"IPA {ipa:#x} is not backed by RAM")
            out.append((pa, chunk))
            ipa += chunk
            size -= chunk
        return out

    def is_ram(self, ipa: int, size: int = 1) -> bool:
        """True if every byte of [ipa, ipa + size) is backed by host RAM."""
        ipa, size = int_arg("ipa", ipa), int_arg("size", size)
        try:
            self._chunks(ipa, size)
        except BusError:
            return False
        return True

    def read(self, ipa: int, size: int) -> bytes:
        """``size`` bytes at ``ipa`` (at most MAX_ACCESS, like Memory.read)."""
        ipa, size = read_args(ipa, size)
        return b"".join(self.mem.read(pa, n) for pa, n in self._chunks(ipa, size))

    def write(self, ipa: int, data: bytes) -> None:
        """Write ``data`` at ``ipa`` (all of it or, on a bus error, none)."""
        ipa, data = int_arg("ipa", ipa), bytes_arg("data", data)
        pos = 0
        for pa, n in self._chunks(ipa, len(data)):
            self.mem.write(pa, data[pos : pos + n])
            pos += n

    def read_u64(self, ipa: int) -> int:
        """Little-endian u64 at ``ipa``."""
        return int.from_bytes(self.read(ipa, 8), "little")

    def write_u64(self, ipa: int, value: int) -> None:
        """Store a little-endian u64 at ``ipa``."""
        ipa = int_arg("ipa", ipa)
        self.write(ipa, int_arg("value", value).to_bytes(8, "little"))

    def read_u32(self, ipa: int) -> int:
        """Little-endian u32 at ``ipa``."""
        return int.from_bytes(self.read(ipa, 4), "little")

    def write_u32(self, ipa: int, value: int) -> None:
        """Store a little-endian u32 at ``ipa``."""
        ipa = int_arg("ipa", ipa)
        self.write(ipa, int_arg("value", value, 32).to_bytes(4, "little"))
