"""Descriptor encoders and a table-chain writer, written from the Arm ARM.

Architectural tests build tables by hand with these (not with pymsi's own
builder), so that the walk is checked against the specification's formats.
"""

from __future__ import annotations

OA48 = (1 << 48) - 1
VALID = 1
TABLE = 0b11
BLOCK = 0b01
PAGE = 0b11
AF = 1 << 10
NG = 1 << 11
S1_AP_RO = 1 << 7          # AP[2]
S2AP_R = 1 << 6
S2AP_W = 1 << 7
APTABLE_RO = 1 << 62       # APTable[1]: no writes at lower levels
GRANULE_SHIFTS = {4096: 12, 16384: 14, 65536: 16}


def lsb(gshift: int, level: int) -> int:
    """Lowest VA bit a lookup at ``level`` resolves (D8.2: 9/11/13 bits per level)."""
    return gshift + (gshift - 3) * (3 - level)


def index(va: int, gshift: int, level: int, ia: int, start: int) -> int:
    """Descriptor index at ``level`` for input ``va`` of an ``ia``-bit input size."""
    top = ia if level == start else lsb(gshift, level) + gshift - 3
    return (va >> lsb(gshift, level)) & ((1 << (top - lsb(gshift, level))) - 1)


def table_desc(next_table: int, aptable_ro: bool = False) -> int:
    return (next_table & OA48) | TABLE | (APTABLE_RO if aptable_ro else 0)


def s1_leaf(oa: int, level: int, af: bool = True, ro: bool = False, ng: bool = True) -> int:
    d = oa | (PAGE if level == 3 else BLOCK)
    d |= AF if af else 0
    d |= S1_AP_RO if ro else 0
    d |= NG if ng else 0
    return d


def s2_leaf(oa: int, level: int, r: bool = True, w: bool = True, af: bool = True) -> int:
    d = oa | (PAGE if level == 3 else BLOCK)
    d |= AF if af else 0
    d |= S2AP_R if r else 0
    d |= S2AP_W if w else 0
    return d


class Chain:
    """Writes a path of table descriptors for one input address.

    Tables are placed one granule apart from ``pool``; ``upto(level)``
    returns the address of the descriptor slot the walk reads at ``level``
    after writing table descriptors for every level above it.
    """

    def __init__(self, mem, gshift: int, ia: int, start: int, root: int, pool: int,
                 aptable_ro_at: int | None = None) -> None:
        self.mem, self.g, self.ia, self.start = mem, gshift, ia, start
        self.root, self.pool = root, pool
        self.aptable_ro_at = aptable_ro_at

    def table_at(self, level: int) -> int:
        if level == self.start:
            return self.root
        return self.pool + (level - self.start - 1) * (1 << self.g)

    def upto(self, va: int, level: int) -> int:
        for lv in range(self.start, level):
            slot = self.table_at(lv) + 8 * index(va, self.g, lv, self.ia, self.start)
            self.mem.write_u64(slot, table_desc(self.table_at(lv + 1),
                                                aptable_ro=lv == self.aptable_ro_at))
        return self.table_at(level) + 8 * index(va, self.g, level, self.ia, self.start)


def block_levels(gshift: int) -> tuple[int, ...]:
    """Levels where a block descriptor is valid with 48-bit addresses (D8.3)."""
    return (1, 2) if gshift == 12 else (2,)
