"""Bit-field helpers for register and in-memory structure layouts."""

from __future__ import annotations

from ..errors import InvalidArgument


class Field:
    """Bits [hi:lo] of an integer (a register, or a doubleword of a structure)."""

    __slots__ = ("lo", "hi", "mask", "width")

    def __init__(self, hi: int, lo: int | None = None) -> None:
        self.lo = hi if lo is None else lo
        self.hi = hi
        self.width = self.hi - self.lo + 1
        self.mask = ((1 << self.width) - 1) << self.lo

    def __repr__(self) -> str:
        return f"Field({self.hi}, {self.lo})"

    def get(self, word: int) -> int:
        """The field's value in ``word``."""
        return (word & self.mask) >> self.lo

    def put(self, word: int, value: int) -> int:
        """``word`` with the field set to ``value`` (which must fit)."""
        if value < 0 or value << self.lo & ~self.mask:
            raise InvalidArgument(f"{value:#x} does not fit in bits [{self.hi}:{self.lo}]")
        return (word & ~self.mask) | (value << self.lo)

    def __call__(self, value: int) -> int:
        """The field set to ``value`` in an otherwise zero word."""
        return self.put(0, value)

    def encode(self, value: int) -> int:
        """``value``'s low ``width`` bits at the field's position (what a driver building a
        command does: the bits that do not fit are dropped, not an error)."""
        return value << self.lo & self.mask


def dwords(data: bytes) -> list[int]:
    """Little-endian 64-bit doublewords of ``data``."""
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def pack_dwords(words: list[int]) -> bytes:
    """The little-endian bytes of a list of 64-bit doublewords."""
    return b"".join(w.to_bytes(8, "little") for w in words)


def merge_access(old: int, offset: int, value: int, size: int) -> int:
    """A 64-bit register after a ``size``-byte write at byte ``offset`` (0 or 4) of it.

    A 64-bit write replaces it; a 32-bit write replaces the half it hits.
    """
    if size == 8:
        return value & (2**64 - 1)
    shift = 32 if offset & 4 else 0
    return (old & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
