"""What both core backends share: translation configurations, results, faults.

The configuration objects model the fields an SMMUv3 context descriptor
(stage 1) and stream table entry (stage 2) carry for a VMSAv8-64 walk.  They
validate themselves on construction the way the SMMU validates a CD or STE
(an illegal combination is :class:`~pymsi.errors.InvalidArgument`), and derive
the walk geometry (start level, concatenated tables) once.
"""

from __future__ import annotations

import enum
import errno
from typing import Any, NamedTuple

from ..errors import InvalidArgument

GRANULES = {4096: 12, 16384: 14, 65536: 16}
ADDRESS_SIZES = (32, 36, 40, 42, 44, 48)
U64_MAX = (1 << 64) - 1

# Per-item batch status (see csrc/pymsi.h).
STATUS_OK = 0
STATUS_NO_ENTRY = -errno.ENOENT
STATUS_FAULT = 1 << 16
STATUS_BYPASS = 1
STATUS_ABORT = 2
STATUS_NO_CONFIG = -errno.EAGAIN

# Stream modes of a Streams map (csrc/streams.c).
STREAM_ABORT = 1
STREAM_BYPASS = 2
STREAM_TRANSLATE = 3


class FaultKind(enum.IntEnum):
    """The translation fault kinds of VMSAv8-64 (values match the C core)."""

    TRANSLATION = 1
    ADDRESS_SIZE = 2
    ACCESS = 3
    PERMISSION = 4
    EXTERNAL_ABORT = 5


class TlbKind(enum.IntEnum):
    """Which stages produced a cached translation."""

    S1 = 1
    S2 = 2
    S12 = 3


class Fault(NamedTuple):
    """A translation fault.

    ``stage`` is 1 or 2; ``level`` the lookup level (0-3) it was detected at;
    ``ipa`` the intermediate physical address that faulted, for stage-2
    faults only; ``s1_table_walk`` is true for a stage-2 fault taken while
    translating the address of a stage-1 table (nested translation).
    """

    stage: int
    kind: FaultKind
    level: int
    ipa: int | None = None
    s1_table_walk: bool = False

    def __str__(self) -> str:
        what = "access flag" if self.kind == FaultKind.ACCESS else self.kind.name.lower()
        text = f"stage {self.stage} {what.replace('_', ' ')} fault, level {self.level}"
        if self.ipa is not None:
            text += f", IPA {self.ipa:#x}"
        if self.s1_table_walk:
            text += " (fetching a stage-1 table)"
        return text


class WalkResult(NamedTuple):
    """The outcome of one translation: a fault, or where the access goes.

    ``pa`` is the output address; ``ipa`` the stage-1 output (for stage 2
    only, the input; for stage 1 only, ``pa``); ``page_size`` the size of the
    translation (the smaller of the two stages when nested); ``level`` the
    leaf level of the first stage used and ``s2_level`` that of stage 2.
    Stage 1 cannot express write-only, so ``readable`` is stage 2's read
    permission.  ``tlb_hit`` says the result came from the IOTLB.
    """

    fault: Fault | None
    pa: int | None = None
    ipa: int | None = None
    page_size: int | None = None
    writable: bool = False
    readable: bool = False
    s1_writable: bool = False
    s2_writable: bool = False
    level: int = 0
    s2_level: int = 0
    is_global: bool = False
    tlb_hit: bool = False


def _check_range(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{name}={value!r}: must be an integer in [{lo}, {hi}]")
    return value


def _granule_shift(name: str, granule: Any) -> int:
    if granule not in GRANULES or isinstance(granule, bool):
        raise InvalidArgument(f"{name}={granule!r}: granule must be 4096, 16384 or 65536")
    return GRANULES[granule]


def _address_size(name: str, bits: Any) -> int:
    if bits not in ADDRESS_SIZES or isinstance(bits, bool):
        raise InvalidArgument(f"{name}={bits!r}: must be one of {ADDRESS_SIZES}")
    return bits


def level_lsb(gshift: int, level: int) -> int:
    """Lowest input-address bit resolved by a lookup at ``level``."""
    return gshift + (gshift - 3) * (3 - level)


def s1_start_level(gshift: int, tsz: int) -> int:
    """Initial lookup level of a stage-1 table of input size 64 - tsz."""
    stride = gshift - 3
    return 4 - (64 - tsz - gshift + stride - 1) // stride


def s2_start_level(gshift: int, sl0: int) -> int | None:
    """Initial lookup level that S2SL0 selects for the granule (None: reserved)."""
    table = {12: (2, 1, 0), 14: (3, 2, 1), 16: (3, 2, 1)}[gshift]
    return table[sl0] if 0 <= sl0 < 3 else None


def s2_sl0_for_level(gshift: int, level: int) -> int:
    """The S2SL0 encoding of an initial lookup level (inverse of s2_start_level)."""
    return (2 - level) if gshift == 12 else (3 - level)


class Stage1:
    """The stage-1 translation controls of an SMMUv3 context descriptor.

    Two translation tables (TTB0 for the bottom of the VA space, TTB1 for the
    top; VA[55] selects), each with its own TnSZ (16..39), granule, EPDn
    (walks disabled), HADn (APTable ignored) and TBIn (top byte ignored);
    IPS bounds the output (an IPA when nested) and AFFD turns access flag
    faults off.  Only enabled tables are validated.
    """

    __slots__ = (
        "ttb0", "tsz0", "granule0", "ttb1", "tsz1", "granule1", "epd0", "epd1",
        "ips", "affd", "had0", "had1", "tbi0", "tbi1", "gshift", "start_level",
    )

    def __init__(
        self,
        ttb0: int = 0,
        tsz0: int = 16,
        granule0: int = 4096,
        ttb1: int = 0,
        tsz1: int = 0,
        granule1: int = 4096,
        epd0: bool = False,
        epd1: bool = True,
        ips: int = 48,
        affd: bool = False,
        had0: bool = False,
        had1: bool = False,
        tbi0: bool = False,
        tbi1: bool = False,
    ) -> None:
        self.ttb0 = _check_range("ttb0", ttb0, 0, U64_MAX)
        self.ttb1 = _check_range("ttb1", ttb1, 0, U64_MAX)
        self.epd0, self.epd1 = bool(epd0), bool(epd1)
        self.ips = _address_size("ips", ips)
        self.affd, self.had0, self.had1 = bool(affd), bool(had0), bool(had1)
        self.tbi0, self.tbi1 = bool(tbi0), bool(tbi1)
        self.tsz0, self.tsz1, self.granule0, self.granule1 = tsz0, tsz1, granule0, granule1
        gshift = [0, 0]
        start = [0, 0]
        for n, (epd, tsz, granule) in enumerate(((epd0, tsz0, granule0), (epd1, tsz1, granule1))):
            if epd:
                continue
            gshift[n] = _granule_shift(f"granule{n}", granule)
            _check_range(f"tsz{n}", tsz, 16, 39)
            start[n] = s1_start_level(gshift[n], tsz)
        self.gshift = tuple(gshift)
        self.start_level = tuple(start)

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__[:14])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stage1) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__[:14])
        return f"Stage1({fields})"


class Stage2:
    """The stage-2 translation controls of an SMMUv3 stream table entry.

    S2TTB (``vttb``), S2T0SZ (``tsz``, 16..39), S2SL0 (``sl0``), S2TG
    (``granule``), S2PS (``ps``, output size in bits) and S2AFFD.  The start
    level may resolve up to 4 more bits than one table holds: up to 16
    concatenated tables, selected by the top IPA bits.  An S2SL0 inconsistent
    with S2T0SZ is rejected, as the SMMU rejects such an STE.
    """

    __slots__ = ("vttb", "tsz", "sl0", "granule", "ps", "affd", "gshift", "start_level",
                 "concat")

    def __init__(
        self,
        vttb: int,
        tsz: int,
        sl0: int,
        granule: int = 4096,
        ps: int = 48,
        affd: bool = False,
    ) -> None:
        self.vttb = _check_range("vttb", vttb, 0, U64_MAX)
        self.tsz = _check_range("tsz", tsz, 16, 39)
        self.sl0 = _check_range("sl0", sl0, 0, 3)
        self.granule = granule
        self.gshift = _granule_shift("granule", granule)
        self.ps = _address_size("ps", ps)
        self.affd = bool(affd)
        start = s2_start_level(self.gshift, sl0)
        if start is None:
            raise InvalidArgument(f"sl0={sl0}: reserved for a {granule}-byte granule")
        width = 64 - tsz - level_lsb(self.gshift, start)
        if not 1 <= width <= self.gshift - 3 + 4:
            raise InvalidArgument(
                f"sl0={sl0} (level {start}) is inconsistent with tsz={tsz} for a "
                f"{granule}-byte granule"
            )
        self.start_level = start
        self.concat = 1 << max(0, width - (self.gshift - 3))

    def _key(self) -> tuple:
        return (self.vttb, self.tsz, self.sl0, self.granule, self.ps, self.affd)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stage2) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Stage2(vttb={:#x}, tsz={}, sl0={}, granule={}, ps={}, affd={})".format(
            *self._key()
        )


class XlateConfig:
    """How one stream is translated: stage 1, stage 2 or both, and its tags.

    ``asid`` (from the CD) and ``vmid`` (from the STE) tag IOTLB entries.
    Backends may cache a prepared form of the configuration on the object, so
    treat it as immutable.
    """

    __slots__ = ("s1", "s2", "asid", "vmid", "_prepared")

    def __init__(
        self,
        s1: Stage1 | None = None,
        s2: Stage2 | None = None,
        asid: int = 0,
        vmid: int = 0,
    ) -> None:
        if s1 is None and s2 is None:
            raise InvalidArgument("a translation needs stage 1, stage 2 or both")
        if s1 is not None and not isinstance(s1, Stage1):
            raise InvalidArgument(f"s1={s1!r} is not a Stage1")
        if s2 is not None and not isinstance(s2, Stage2):
            raise InvalidArgument(f"s2={s2!r} is not a Stage2")
        self.s1 = s1
        self.s2 = s2
        self.asid = _check_range("asid", asid, 0, 0xFFFF)
        self.vmid = _check_range("vmid", vmid, 0, 0xFFFF)
        self._prepared: Any = None

    @property
    def kind(self) -> TlbKind:
        """The IOTLB entry kind translations under this configuration produce."""
        if self.s1 is not None:
            return TlbKind.S12 if self.s2 is not None else TlbKind.S1
        return TlbKind.S2

    def __repr__(self) -> str:
        return f"XlateConfig(s1={self.s1!r}, s2={self.s2!r}, asid={self.asid}, vmid={self.vmid})"


def config_of(cfg: XlateConfig | None, s1: Stage1 | None, s2: Stage2 | None) -> XlateConfig:
    """The configuration named by either ``cfg`` or the ``s1``/``s2`` pair."""
    if cfg is not None:
        if s1 is not None or s2 is not None:
            raise InvalidArgument("give either cfg or s1/s2, not both")
        if not isinstance(cfg, XlateConfig):
            raise InvalidArgument(f"cfg={cfg!r} is not an XlateConfig")
        return cfg
    return XlateConfig(s1, s2)


def status_fault(status: int) -> Fault | None:
    """The fault a positive batch status encodes (None for other statuses).

    The IPA is not carried by a status, so ``Fault.ipa`` is None.
    """
    if status < STATUS_FAULT:
        return None
    return Fault(
        stage=(status >> 4) & 0xF,
        kind=FaultKind(status & 0xF),
        level=(status >> 8) & 0xF,
        s1_table_walk=bool((status >> 12) & 1),
    )


def encode_status(fault: Fault | None) -> int:
    """The batch status of a translation outcome (inverse of status_fault)."""
    if fault is None:
        return STATUS_OK
    return (
        STATUS_FAULT
        | int(fault.kind)
        | fault.stage << 4
        | fault.level << 8
        | int(fault.s1_table_walk) << 12
    )


_FORMATS = {
    "u32": ({"I", "=I", "<I", "@I"}, 4),
    "u64": ({"Q", "=Q", "<Q", "@Q", "L", "=L", "<L", "@L"}, 8),
    "i32": ({"i", "=i", "<i", "@i"}, 4),
}


def buffer_view(obj: Any, kind: str, name: str, writable: bool = False) -> memoryview:
    """A flat memoryview of ``obj`` checked to hold ``kind`` items.

    ``kind`` is ``u32``, ``u64`` or ``i32``; typed arrays (``array.array``,
    numpy) qualify by their format, so a buffer of the wrong type is refused
    rather than reinterpreted.
    """
    try:
        mv = memoryview(obj)
    except TypeError:
        raise InvalidArgument(f"{name}: needs an object with the buffer protocol") from None
    formats, size = _FORMATS[kind]
    if mv.format not in formats or mv.itemsize != size:
        raise InvalidArgument(f"{name}: needs {kind} items, got format {mv.format!r}")
    if not mv.c_contiguous:
        raise InvalidArgument(f"{name}: needs a contiguous buffer")
    if writable and mv.readonly:
        raise InvalidArgument(f"{name}: needs a writable buffer")
    if mv.ndim != 1:
        mv = mv.cast("B").cast(mv.format.lstrip("=<@"))
    return mv


Buffer = tuple[Any, str, str]      # (object, "u32" | "u64" | "i32", argument name)


def batch_views(inputs: list[Buffer], outputs: list[Buffer]) -> tuple[int, list[memoryview]]:
    """The checked views of a batch call's buffers, inputs then outputs.

    Every input must hold the same number of items ``n``, every output at
    least ``n`` and be writable; nothing is written before all are checked.
    """
    ins = [buffer_view(obj, kind, name) for obj, kind, name in inputs]
    n = len(ins[0])
    if any(len(v) != n for v in ins):
        raise InvalidArgument(" and ".join(b[2] for b in inputs) + " differ in length")
    outs = [buffer_view(obj, kind, name, writable=True) for obj, kind, name in outputs]
    for (_, _, name), mv in zip(outputs, outs, strict=True):
        if len(mv) < n:
            raise InvalidArgument(f"{name}: holds {len(mv)} items, needs {n}")
    return n, ins + outs


def int_arg(name: str, value: Any, bits: int = 64) -> int:
    """``value`` checked to be an int of ``bits`` unsigned bits (TypeError /
    InvalidArgument otherwise), as the C backend's argument conversion does."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise InvalidArgument(f"{name}={value:#x} does not fit in {bits} bits")
    return value


_ALL_KINDS = (1 << TlbKind.S1) | (1 << TlbKind.S2) | (1 << TlbKind.S12)
_S1_KINDS = (1 << TlbKind.S1) | (1 << TlbKind.S12)
_S2_KINDS = (1 << TlbKind.S2) | (1 << TlbKind.S12)


def _range(start: int, size: int) -> tuple[int, int]:
    _check_range("start", start, 0, U64_MAX)
    _check_range("size", size, 1, 1 << 64)
    return start, min(start + size - 1, U64_MAX)


class IotlbCommands:
    """IOTLB invalidations, one per SMMUv3 TLBI command family.

    Each returns how many entries it removed.  Backends provide
    ``_invalidate(kinds, vmid, asid, asid_hits_global, range)``.
    """

    def _invalidate(self, kinds: int, vmid: int | None, asid: int | None,
                    asid_hits_global: bool, rng: tuple[str, int, int] | None) -> int:
        raise NotImplementedError

    def invalidate_all(self) -> int:
        """Everything (TLBI_NSNH_ALL)."""
        return self._invalidate(_ALL_KINDS, None, None, True, None)

    def invalidate_vmid(self, vmid: int, stage1_only: bool = False) -> int:
        """All entries of a VMID (TLBI_S12_VMALL), or only its stage-1 and
        nested ones (TLBI_NH_ALL)."""
        _check_range("vmid", vmid, 0, 0xFFFF)
        return self._invalidate(_S1_KINDS if stage1_only else _ALL_KINDS, vmid, None, True,
                                None)

    def invalidate_asid(self, asid: int, vmid: int) -> int:
        """Non-global stage-1/nested entries of an ASID (TLBI_NH_ASID)."""
        _check_range("asid", asid, 0, 0xFFFF)
        _check_range("vmid", vmid, 0, 0xFFFF)
        return self._invalidate(_S1_KINDS, vmid, asid, False, None)

    def invalidate_va(self, vmid: int, start: int, size: int, asid: int | None = None) -> int:
        """Stage-1/nested entries overlapping an input range: of one ASID and the
        global ones (TLBI_NH_VA), or of every ASID when ``asid`` is None
        (TLBI_NH_VAA)."""
        _check_range("vmid", vmid, 0, 0xFFFF)
        if asid is not None:
            _check_range("asid", asid, 0, 0xFFFF)
        first, last = _range(start, size)
        return self._invalidate(_S1_KINDS, vmid, asid, True, ("input", first, last))

    def invalidate_ipa(self, vmid: int, start: int, size: int) -> int:
        """Entries whose stage-2 input overlaps an IPA range (TLBI_S2_IPA).

        Nested entries are included: invalidating more than the architecture
        requires is always allowed, and it keeps combined entries coherent.
        """
        _check_range("vmid", vmid, 0, 0xFFFF)
        first, last = _range(start, size)
        return self._invalidate(_S2_KINDS, vmid, None, True, ("ipa", first, last))
