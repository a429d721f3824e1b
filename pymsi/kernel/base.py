"""What every part of the kernel model shares: errno-carrying errors, the
physical page allocator, the printk log, CPU masks."""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from ..errors import KernelError as KernelError  # (defined in pymsi.errors; re-exported)

if TYPE_CHECKING:
    from ..core.pgtable import TableMemory


def fail(err: int, what: str = "") -> KernelError:
    """The exception for ``-err`` (Linux returns negative errnos; we raise)."""
    return KernelError(err, what)


EINVAL, ENOENT, EIO, EBUSY, ENOMEM, ENOSPC, EEXIST, ENODEV, EPERM = (
    _errno.EINVAL, _errno.ENOENT, _errno.EIO, _errno.EBUSY, _errno.ENOMEM, _errno.ENOSPC,
    _errno.EEXIST, _errno.ENODEV, _errno.EPERM)
EOVERFLOW, EOPNOTSUPP, ENXIO, ETIMEDOUT, ERANGE, EFAULT = (
    _errno.EOVERFLOW, _errno.EOPNOTSUPP, _errno.ENXIO, _errno.ETIMEDOUT, _errno.ERANGE,
    _errno.EFAULT)
ENOTSUPP = 524          # Linux-internal (include/linux/errno.h), not a userspace errno


class PageAllocator:
    """The kernel's physical memory: naturally aligned, zeroed blocks of RAM.

    Stands in for alloc_pages()/kzalloc() of memory a device can see; freed
    blocks are reused.  Running out is ENOMEM.
    """

    def __init__(self, ram: TableMemory, base: int, size: int) -> None:
        if not ram.is_ram(base, size):
            raise fail(EINVAL, f"kernel memory [{base:#x}, +{size:#x}) is not RAM")
        self.ram, self.base, self.end = ram, base, base + size
        self._next = base
        self._free: dict[int, list[int]] = {}
        self.in_use = 0

    def alloc(self, size: int, align: int | None = None) -> int:
        """A zeroed block of ``size`` bytes aligned to ``align`` (default: its own
        size rounded up to a power of two, as page allocations are)."""
        size = max(size, 8)
        align = max(align or 1 << (size - 1).bit_length(), 8)
        for blk in self._free.get(size, []):
            if blk % align == 0:
                self._free[size].remove(blk)
                break
        else:
            blk = (self._next + align - 1) & ~(align - 1)
            if blk + size > self.end:
                raise fail(ENOMEM, f"no {size} bytes of kernel memory left")
            self._next = blk + size
        self.ram.write(blk, bytes(size))
        self.in_use += size
        return blk

    def free(self, addr: int, size: int) -> None:
        size = max(size, 8)
        self._free.setdefault(size, []).append(addr)
        self.in_use -= size


def cpumask_str(cpus: frozenset[int] | set[int], nbits: int | None = None) -> str:
    """A CPU set as /proc prints it ("%*pb"): hex in comma-separated 32-bit
    groups, most significant first, ``nbits`` (nr_cpu_ids) wide — the first
    group has only the digits its bits need, so 4 CPUs print as one digit.
    Without ``nbits``, just enough whole 32-bit groups for the set."""
    value = sum(1 << c for c in cpus)
    if nbits is None:
        nbits = max(32, (value.bit_length() + 31) // 32 * 32)
    groups: list[str] = []
    first = nbits % 32 or 32
    for i in range((nbits + 31) // 32 * 32 - 32, -1, -32):
        width = (first + 3) // 4 if not groups else 8
        groups.append(f"{value >> i & ((1 << (first if not groups else 32)) - 1):0{width}x}")
    return ",".join(groups)


def cpulist_str(cpus: frozenset[int] | set[int]) -> str:
    """A CPU set as /proc prints a ``*_list`` file ("%*pbl"): ascending ranges,
    ``"0-3,6"``; a lone CPU alone, ``"5"``; the empty set as ``""``."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _user_text(text: object, what: str) -> bytes:
    """The bytes a write(2) of ``text`` hands a parser, up to the first newline or NUL
    (a ``str`` as its UTF-8 bytes); anything but text is EINVAL naming ``what``."""
    if isinstance(text, str):
        buf = text.encode()
    elif isinstance(text, (bytes, bytearray, memoryview)):
        buf = bytes(text)
    else:
        raise fail(EINVAL, f"{what} is text, not {type(text).__name__}")
    for stop in (0x0A, 0x00):
        cut = buf.find(stop)
        if cut >= 0:
            buf = buf[:cut]
    return buf


def _cpulist_num(buf: bytes, i: int, lastbit: int, text: object) -> tuple[int, int]:
    """bitmap_getnum(): ``N`` is the last bit; else decimal digits (EINVAL for none,
    EOVERFLOW beyond an unsigned int)."""
    if i < len(buf) and buf[i] == 0x4E:                  # 'N'
        return lastbit, i + 1
    j = i
    while j < len(buf) and 0x30 <= buf[j] <= 0x39:
        j += 1
    if j == i:
        raise fail(EINVAL, f"CPU list {text!r}: a number expected")
    n = int(buf[i:j])
    if n >> 32:
        raise fail(EOVERFLOW, f"CPU list {text!r}: {n} does not fit an unsigned int")
    return n, j


def parse_cpulist(text: str | bytes, nmaskbits: int) -> frozenset[int]:
    """A CPU list as cpumask_parselist_user() / bitmap_parselist() read it.

    The input ends at the first newline or NUL.  Regions are separated by any run of
    commas and whitespace; a region is ``a``, ``a-b`` or ``all``, optionally followed by
    a pattern ``:used/group`` (the first ``used`` CPUs of every ``group`` from ``a``);
    ``N`` stands for the last CPU (``nmaskbits - 1``).  A number that is not one is
    EINVAL, one beyond an unsigned int EOVERFLOW; a range backwards, a group of 0 or
    more used than the group is EINVAL; a CPU at or beyond ``nmaskbits`` is ERANGE.
    """
    buf = _user_text(text, "a CPU list")
    lastbit = nmaskbits - 1
    cpus: set[int] = set()
    i, n = 0, len(buf)
    while True:
        while i < n and _region_end(buf[i]):
            i += 1
        if i >= n:
            return frozenset(cpus)
        if buf[i:i + 3].lower() == b"all":
            start, end, i = 0, lastbit, i + 3
        else:
            start, i = _cpulist_num(buf, i, lastbit, text)
            end = start
            if i < n and not _region_end(buf[i]):
                if buf[i] != 0x2D:                        # '-'
                    raise fail(EINVAL, f"CPU list {text!r}: '-' expected")
                end, i = _cpulist_num(buf, i + 1, lastbit, text)
        off = group = end + 1
        if i < n and not _region_end(buf[i]):
            if buf[i] != 0x3A:                            # ':'
                raise fail(EINVAL, f"CPU list {text!r}: ':' expected")
            off, i = _cpulist_num(buf, i + 1, lastbit, text)
            if i >= n or buf[i] != 0x2F:                  # '/'
                raise fail(EINVAL, f"CPU list {text!r}: '/' expected")
            group, i = _cpulist_num(buf, i + 1, lastbit, text)
        if start > end or group == 0 or off > group:
            raise fail(EINVAL, f"CPU list {text!r}: bad region")
        if end >= nmaskbits:
            raise fail(ERANGE, f"CPU list {text!r} names CPUs beyond {lastbit}")
        for base in range(start, end + 1, group):
            cpus.update(range(base, min(end + 1, base + off)))


# lib/ctype.c: the bytes isspace() is true for (Latin-1 NBSP included).
_KSPACE = frozenset(b" \t\n\v\f\r\xa0")
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}


def _region_end(c: int) -> bool:
    """bitmap_parse()'s group separator: a comma or any isspace() byte."""
    return c == 0x2C or c in _KSPACE


def parse_cpumask(text: str | bytes, nmaskbits: int) -> frozenset[int]:
    """A hex CPU mask as cpumask_parse_user() / bitmap_parse() read it.

    The input ends at the first newline or NUL.  It is read backwards in
    groups of at most 8 hex digits (32 bits each), separated by any run of
    commas and whitespace, so ``"1,,2"``, ``" 1 "``, ``","`` and ``""`` are
    all accepted (the last two as the empty mask).  A non-hex byte inside a
    group is EINVAL; a ninth hex digit in a group, more groups than
    ``nmaskbits`` needs, or a set bit at or beyond ``nmaskbits`` is
    EOVERFLOW.  Like Linux, the byte just before a full 8-digit group is
    consumed unchecked when it is not a hex digit (so ``"0x00000001"`` is 1,
    while ``"0x1"`` is EINVAL).  A ``str`` is taken as its UTF-8 bytes.
    """
    buf = _user_text(text, "a CPU mask")
    chunks_left = (nmaskbits + 31) // 32
    value, chunk, end = 0, 0, len(buf) - 1
    while True:
        while end >= 0 and _region_end(buf[end]):
            end -= 1
        if end < 0:
            break
        if not chunks_left:
            raise fail(EOVERFLOW, f"CPU mask {text!r}: more than {nmaskbits} bits")
        chunks_left -= 1
        word = 0
        for shift in range(0, 32, 4):
            digit = _HEX.get(buf[end])
            end -= 1
            if digit is None:
                raise fail(EINVAL, f"CPU mask {text!r}: not a hex digit")
            word |= digit << shift
            if end < 0 or _region_end(buf[end]):
                break
        else:
            nxt = buf[end]
            end -= 1
            if nxt in _HEX:
                raise fail(EOVERFLOW, f"CPU mask {text!r}: a group of more than 8 digits")
        value |= word << (32 * chunk)
        chunk += 1
    if value >> nmaskbits:
        raise fail(EOVERFLOW, f"CPU mask {text!r} names CPUs beyond {nmaskbits - 1}")
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


def cpumask_arg(mask: object, nmaskbits: int) -> frozenset[int]:
    """A cpumask passed to a kernel call: a set of CPU numbers.

    A struct cpumask holds unsigned bit numbers below nr_cpumask_bits, so a
    member that is not such a number (negative, too large, not an integer)
    cannot be expressed: EINVAL, as for a mask with no usable CPU.
    """
    try:
        cpus = frozenset(cast("Iterable[object]", mask))      # TypeError: not iterable
    except TypeError:
        raise fail(EINVAL, f"not a CPU mask: {mask!r}") from None
    for c in cpus:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < nmaskbits:
            raise fail(EINVAL, f"not a CPU number: {c!r}")
    return cast("frozenset[int]", cpus)           # every member checked an int above
