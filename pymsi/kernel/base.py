"""What every part of the kernel model shares: errno-carrying errors, the
physical page allocator, the printk log, CPU masks."""

from __future__ import annotations

import errno as _errno
from typing import Any

from ..errors import PymsiError


class KernelError(PymsiError, OSError):
    """A kernel call failed the way Linux fails it: ``.errno`` is Linux's errno."""

    def __init__(self, err: int, what: str = "") -> None:
        super().__init__(err, f"{what} [{_errno.errorcode.get(err, err)}]" if what
                         else _errno.errorcode.get(err, str(err)))


def fail(err: int, what: str = "") -> KernelError:
    """The exception for ``-err`` (Linux returns negative errnos; we raise)."""
    return KernelError(err, what)


EINVAL, ENOENT, EIO, EBUSY, ENOMEM, ENOSPC, EEXIST, ENODEV, EPERM = (
    _errno.EINVAL, _errno.ENOENT, _errno.EIO, _errno.EBUSY, _errno.ENOMEM, _errno.ENOSPC,
    _errno.EEXIST, _errno.ENODEV, _errno.EPERM)
EOVERFLOW, EOPNOTSUPP, ENXIO, ETIMEDOUT, ERANGE, EFAULT = (
    _errno.EOVERFLOW, _errno.EOPNOTSUPP, _errno.ENXIO, _errno.ETIMEDOUT, _errno.ERANGE,
    _errno.EFAULT)


class PageAllocator:
    """The kernel's physical memory: naturally aligned, zeroed blocks of RAM.

    Stands in for alloc_pages()/kzalloc() of memory a device can see; freed
    blocks are reused.  Running out is ENOMEM.
    """

    def __init__(self, ram: Any, base: int, size: int) -> None:
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


def cpumask_str(cpus: frozenset[int] | set[int]) -> str:
    """A CPU set as /proc shows it: hex, in comma-separated 32-bit groups."""
    value = sum(1 << c for c in cpus)
    groups = []
    while True:
        groups.append(f"{value & 0xFFFF_FFFF:08x}")
        value >>= 32
        if not value:
            break
    return ",".join(reversed(groups))


def parse_cpumask(text: str, nr_cpu_ids: int) -> frozenset[int]:
    """Parse a /proc CPU mask (hex, comma-separated 32-bit groups), as bitmap_parse().

    Bad characters are EINVAL; set bits at or beyond ``nr_cpu_ids`` are EOVERFLOW.
    """
    s = text.strip()
    if not s:
        raise fail(EINVAL, "empty CPU mask")
    value = 0
    for group in s.split(","):
        if not group or len(group) > 8 or any(c not in "0123456789abcdefABCDEF" for c in group):
            raise fail(EINVAL, f"bad CPU mask {text!r}")
        value = value << 32 | int(group, 16)
    if value >> nr_cpu_ids:
        raise fail(EOVERFLOW, f"CPU mask {text!r} names CPUs beyond {nr_cpu_ids - 1}")
    return frozenset(i for i in range(nr_cpu_ids) if value >> i & 1)
