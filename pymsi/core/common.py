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
import operator
from collections.abc import Sequence
from types import ModuleType
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    NamedTuple,
    Protocol,
    SupportsIndex,
    TypedDict,
    TypeVar,
    cast,
    overload,
)

if TYPE_CHECKING:
    #: An object exporting the buffer protocol (array.array, bytearray, memoryview, a numpy
    #: array): what the batch entry points read from or write into.
    from typing_extensions import Buffer as Buffer
else:
    Buffer = memoryview | bytearray   # the same meaning at run time, for help() and inspect

from ..errors import InvalidArgument, OutOfMemory
from .pci_formats import MSIX_ENTRY_SIZE

_T = TypeVar("_T")
#: What a stream translator's ``wrap`` makes of a successful WalkResult (the result type
#: of ``stream_translator`` and of ``msi_router``'s ``last``).
Wrapped = TypeVar("Wrapped")

GRANULES = {4096: 12, 16384: 14, 65536: 16}
ADDRESS_SIZES = (32, 36, 40, 42, 44, 48)
U64_MAX = (1 << 64) - 1
MAX_ACCESS = 1 << 30        # the largest Memory.read, in bytes
MSI_RESERVE_MAX = 1 << 24   # the most entries MsiTable.reserve sizes a table for

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


class PhysMemory(Protocol):
    """Physical memory as a hardware model reads and writes it (its tables, queues and
    DMA): a :class:`~pymsi.core.Memory` of either backend, an
    :class:`~pymsi.core.IpaView`, or anything else with these calls and their
    behaviour (an access not entirely inside RAM is a :class:`~pymsi.errors.BusError`
    and changes nothing)."""

    def is_ram(self, addr: int, size: int = 1) -> bool: ...
    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...
    def read_u32(self, addr: int) -> int: ...
    def read_u64(self, addr: int) -> int: ...
    def write_u32(self, addr: int, value: int) -> None: ...
    def write_u64(self, addr: int, value: int) -> None: ...


# -- Arguments -------------------------------------------------------------
#
# One set of rules for every public entry point of both backends (README,
# "The core API", Arguments).  The Python twin runs these checks up front; the
# C backend calls its extension directly when every integer argument is an
# exact int and falls back to the same checks when the call cannot proceed,
# so both raise the same exception for the same arguments.

def integer(name: str, value: object) -> int:
    """``value`` as an int: anything with ``__index__`` (numpy integer scalars
    included) except bool; anything else (bool, float, str, None, ...) is
    TypeError.  A bool where a number is expected is a misplaced flag."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        return int(operator.index(cast(SupportsIndex, value)))
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, not {type(value).__name__}") from None


def range_arg(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi]: TypeError / InvalidArgument otherwise."""
    v = integer(name, value)
    if not lo <= v <= hi:
        raise InvalidArgument(f"{name}={v:#x}: must be in [{lo:#x}, {hi:#x}]")
    return v


def int_arg(name: str, value: object, bits: int = 64) -> int:
    """``value`` as an int of ``bits`` unsigned bits (TypeError / InvalidArgument)."""
    if type(value) is int and value >= 0 and not value >> bits:
        return value
    return range_arg(name, value, 0, (1 << bits) - 1)


@overload
def obj_arg(name: str, value: object, cls: type[_T] | tuple[type[_T], ...],
            optional: Literal[False] = False) -> _T: ...
@overload
def obj_arg(name: str, value: object, cls: type[_T] | tuple[type[_T], ...],
            optional: bool) -> _T | None: ...
def obj_arg(name: str, value: object, cls: type[_T] | tuple[type[_T], ...],
            optional: bool = False) -> _T | None:
    """``value`` checked to be a ``cls`` (or None when ``optional``): TypeError otherwise."""
    if (optional and value is None) or isinstance(value, cls):
        return value            # (isinstance narrows ``value`` to ``_T``, None when optional)
    want = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
    raise TypeError(f"{name} must be a {want}{' or None' if optional else ''}, "
                    f"not {type(value).__name__}")


def bytes_arg(name: str, data: object) -> bytes:
    """``data`` as bytes: any object with the buffer protocol, else TypeError."""
    if type(data) is bytes:
        return data
    try:
        return memoryview(cast("Buffer", data)).tobytes()
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(data).__name__}") from None


def _granule_shift(name: str, granule: object) -> int:
    granule = integer(name, granule)
    if granule not in GRANULES:
        raise InvalidArgument(f"{name}={granule!r}: granule must be 4096, 16384 or 65536")
    return GRANULES[granule]


def _address_size(name: str, bits: object) -> int:
    n = integer(name, bits)
    if n not in ADDRESS_SIZES:
        raise InvalidArgument(f"{name}={n!r}: must be one of {ADDRESS_SIZES}")
    return n


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


_set = object.__setattr__


def _immutable(self: Any, name: str, value: Any = None) -> None:
    raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")


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
        "ips", "affd", "had0", "had1", "tbi0", "tbi1", "gshift", "start_level", "_cfg",
    )
    ttb0: int
    tsz0: int
    granule0: int
    ttb1: int
    tsz1: int
    granule1: int
    epd0: bool
    epd1: bool
    ips: int
    affd: bool
    had0: bool
    had1: bool
    tbi0: bool
    tbi1: bool
    gshift: tuple[int, int]
    start_level: tuple[int, int]
    _cfg: tuple[Stage2 | None, XlateConfig] | None   # the last pairing, see pair_config

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
        # Signature order; the TnSZ / granule of a table are only range-checked
        # when the table is enabled (EPDn clear), as the SMMU checks a CD.
        ttb0 = int_arg("ttb0", ttb0)
        tsz0 = integer("tsz0", tsz0)
        granule0 = integer("granule0", granule0)
        ttb1 = int_arg("ttb1", ttb1)
        tsz1 = integer("tsz1", tsz1)
        granule1 = integer("granule1", granule1)
        epd0, epd1 = bool(epd0), bool(epd1)
        ips = _address_size("ips", ips)
        gshift = [0, 0]
        start = [0, 0]
        for n, (epd, tsz, granule) in enumerate(((epd0, tsz0, granule0),
                                                 (epd1, tsz1, granule1))):
            if epd:
                continue
            range_arg(f"tsz{n}", tsz, 16, 39)
            gshift[n] = _granule_shift(f"granule{n}", granule)
            start[n] = s1_start_level(gshift[n], tsz)
        for name, value in zip(self.__slots__, (
                ttb0, tsz0, granule0, ttb1, tsz1, granule1, epd0, epd1, ips, bool(affd),
                bool(had0), bool(had1), bool(tbi0), bool(tbi1), tuple(gshift), tuple(start),
                None), strict=True):
            _set(self, name, value)

    __setattr__ = _immutable
    __delattr__ = _immutable

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__slots__[:14])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stage1) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        # the fields that differ from the constructor's defaults, table bases in hex
        fields = ", ".join(f"{f}={v:#x}" if f.startswith("ttb") else f"{f}={v!r}"
                           for f, v, d in zip(self.__slots__[:14],
                                              (getattr(self, f) for f in self.__slots__[:14]),
                                              _STAGE1_DEFAULTS, strict=True) if v != d)
        return f"Stage1({fields})"


_STAGE1_DEFAULTS = (0, 16, 4096, 0, 0, 4096, False, True, 48, False, False, False, False, False)


class Stage2:
    """The stage-2 translation controls of an SMMUv3 stream table entry.

    S2TTB (``vttb``), S2T0SZ (``tsz``, 16..39), S2SL0 (``sl0``), S2TG
    (``granule``), S2PS (``ps``, output size in bits) and S2AFFD.  The start
    level may resolve up to 4 more bits than one table holds: up to 16
    concatenated tables, selected by the top IPA bits.  An S2SL0 inconsistent
    with S2T0SZ is rejected, as the SMMU rejects such an STE.
    """

    __slots__ = ("vttb", "tsz", "sl0", "granule", "ps", "affd", "gshift", "start_level",
                 "concat", "_cfg")
    vttb: int
    tsz: int
    sl0: int
    granule: int
    ps: int
    affd: bool
    gshift: int
    start_level: int
    concat: int
    _cfg: XlateConfig | None

    def __init__(
        self,
        vttb: int,
        tsz: int,
        sl0: int,
        granule: int = 4096,
        ps: int = 48,
        affd: bool = False,
    ) -> None:
        vttb = int_arg("vttb", vttb)
        tsz = range_arg("tsz", tsz, 16, 39)
        sl0 = range_arg("sl0", sl0, 0, 3)
        gshift = _granule_shift("granule", granule)
        granule = integer("granule", granule)
        ps = _address_size("ps", ps)
        start = s2_start_level(gshift, sl0)
        if start is None:
            raise InvalidArgument(f"sl0={sl0}: reserved for a {granule}-byte granule")
        width = 64 - tsz - level_lsb(gshift, start)
        if not 1 <= width <= gshift - 3 + 4:
            raise InvalidArgument(
                f"sl0={sl0} (level {start}) is inconsistent with tsz={tsz} for a "
                f"{granule}-byte granule"
            )
        for name, value in zip(self.__slots__, (
                vttb, tsz, sl0, granule, ps, bool(affd), gshift, start,
                1 << max(0, width - (gshift - 3)), None), strict=True):
            _set(self, name, value)

    __setattr__ = _immutable
    __delattr__ = _immutable

    def _key(self) -> tuple[int, int, int, int, int, bool]:
        return (self.vttb, self.tsz, self.sl0, self.granule, self.ps, self.affd)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stage2) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Stage2(vttb={:#x}, tsz={}, sl0={}, granule={}, ps={}, affd={})".format(
            *self._key()
        )


class Stage1Fields(TypedDict, total=False):
    """The keyword arguments of :class:`Stage1` (``IoPgtable.stage1_config(**fields)``)."""

    ttb0: int
    tsz0: int
    granule0: int
    ttb1: int
    tsz1: int
    granule1: int
    epd0: bool
    epd1: bool
    ips: int
    affd: bool
    had0: bool
    had1: bool
    tbi0: bool
    tbi1: bool


class Stage2Fields(TypedDict, total=False):
    """The keyword arguments of :class:`Stage2` (``IoPgtable.stage2_config(**fields)``)."""

    vttb: int
    tsz: int
    sl0: int
    granule: int
    ps: int
    affd: bool


class XlateConfig:
    """How one stream is translated: stage 1, stage 2 or both, and its tags.

    ``asid`` (from the CD) and ``vmid`` (from the STE) tag IOTLB entries.
    The configuration is an immutable value; backends cache its prepared form
    (the C backend: the C struct, built once) on the object.
    """

    __slots__ = ("s1", "s2", "asid", "vmid", "_prepared")
    s1: Stage1 | None
    s2: Stage2 | None
    asid: int
    vmid: int
    _prepared: Any

    def __init__(
        self,
        s1: Stage1 | None = None,
        s2: Stage2 | None = None,
        asid: int = 0,
        vmid: int = 0,
    ) -> None:
        obj_arg("s1", s1, Stage1, optional=True)
        obj_arg("s2", s2, Stage2, optional=True)
        asid = range_arg("asid", asid, 0, 0xFFFF)
        vmid = range_arg("vmid", vmid, 0, 0xFFFF)
        if s1 is None and s2 is None:
            raise InvalidArgument("a translation needs stage 1, stage 2 or both")
        _set(self, "s1", s1)
        _set(self, "s2", s2)
        _set(self, "asid", asid)
        _set(self, "vmid", vmid)
        _set(self, "_prepared", None)

    def __setattr__(self, name: str, value: Any) -> None:
        # Only the backends' cache of the prepared form may be (re)set.
        if name != "_prepared":
            _immutable(self, name)
        _set(self, name, value)

    __delattr__ = _immutable

    @property
    def kind(self) -> TlbKind:
        """The IOTLB entry kind translations under this configuration produce."""
        if self.s1 is not None:
            return TlbKind.S12 if self.s2 is not None else TlbKind.S1
        return TlbKind.S2

    def __repr__(self) -> str:
        s1 = "None" if self.s1 is None else f"Stage1(ttb0={self.s1.ttb0:#x}, ...)"
        s2 = "None" if self.s2 is None else f"Stage2(vttb={self.s2.vttb:#x}, ...)"
        return f"XlateConfig(s1={s1}, s2={s2}, asid={self.asid}, vmid={self.vmid})"


def config_of(cfg: XlateConfig | None, s1: Stage1 | None, s2: Stage2 | None) -> XlateConfig:
    """The configuration named by either ``cfg`` or the ``s1``/``s2`` pair.

    The three are type-checked by the caller in its signature order, or here.
    """
    obj_arg("cfg", cfg, XlateConfig, optional=True)
    obj_arg("s1", s1, Stage1, optional=True)
    obj_arg("s2", s2, Stage2, optional=True)
    if cfg is not None:
        if s1 is not None or s2 is not None:
            raise InvalidArgument("give either cfg or s1/s2, not both")
        return cfg
    return pair_config(s1, s2)


def pair_config(s1: Stage1 | None, s2: Stage2 | None) -> XlateConfig:
    """The XlateConfig(s1, s2) of a walk or translate given ``s1=``/``s2=``.

    Both stages are immutable, so the configuration (and the prepared form a
    backend caches on it) is built once and kept on the stage 1 (the last
    stage 2 it was paired with) or, for stage 2 alone, on the stage 2.
    """
    if s1 is not None:
        last = s1._cfg
        if last is not None and last[0] is s2:
            return last[1]
        cfg = XlateConfig(s1, s2)
        _set(s1, "_cfg", (s2, cfg))
        return cfg
    cfg2 = s2._cfg if s2 is not None else None
    if cfg2 is None:
        cfg2 = XlateConfig(s1, s2)
        _set(s2, "_cfg", cfg2)
    return cfg2


# -- Argument checks of each entry point, shared by both backends -----------
#
# ``b`` is the backend module (its Memory, Iotlb, MsiTable, Streams classes).
# Each returns the converted arguments, or raises for the first bad one in
# signature order.

def walk_args(b: ModuleType, mem: object, iova: object, write: object, s1: object, s2: object,
              cfg: object) -> tuple[int, bool, XlateConfig]:
    """Checks of ``walk(mem, iova, write, s1, s2, cfg)``."""
    if (isinstance(mem, b.Memory) and type(iova) is int and 0 <= iova <= U64_MAX
            and s1 is None and s2 is None and type(cfg) is XlateConfig):
        return iova, bool(write), cfg
    obj_arg("mem", mem, b.Memory)
    iova = int_arg("iova", iova)
    st1 = obj_arg("s1", s1, Stage1, optional=True)
    st2 = obj_arg("s2", s2, Stage2, optional=True)
    c = obj_arg("cfg", cfg, XlateConfig, optional=True)
    return iova, bool(write), config_of(c, st1, st2)


def translate_args(b: ModuleType, mem: object, iova: object, write: object, cfg: object,
                   tlb: object, s1: object, s2: object) -> tuple[int, bool, XlateConfig]:
    """Checks of ``translate(mem, iova, write, cfg, tlb, s1, s2)``."""
    if (isinstance(mem, b.Memory) and type(iova) is int and 0 <= iova <= U64_MAX
            and type(cfg) is XlateConfig and (tlb is None or isinstance(tlb, b.Iotlb))
            and s1 is None and s2 is None):
        return iova, bool(write), cfg
    obj_arg("mem", mem, b.Memory)
    iova = int_arg("iova", iova)
    c = obj_arg("cfg", cfg, XlateConfig, optional=True)
    obj_arg("tlb", tlb, b.Iotlb, optional=True)
    st1 = obj_arg("s1", s1, Stage1, optional=True)
    st2 = obj_arg("s2", s2, Stage2, optional=True)
    return iova, bool(write), config_of(c, st1, st2)


def read_args(addr: object, size: object) -> tuple[int, int]:
    """Checks of ``Memory.read(addr, size)``: at most MAX_ACCESS bytes."""
    addr = int_arg("addr", addr)
    size = int_arg("size", size)
    if size > MAX_ACCESS:
        raise InvalidArgument(f"read of {size:#x} bytes: at most {MAX_ACCESS:#x} at a time")
    return addr, size


def reserve_arg(n: object) -> int:
    """Checks of ``MsiTable.reserve(n)``: more than MSI_RESERVE_MAX is ENOMEM."""
    count = int_arg("n", n)
    if count > MSI_RESERVE_MAX:
        raise OutOfMemory(f"reserve({count:#x}): at most {MSI_RESERVE_MAX:#x} entries")
    return count


def msi_set_args(dev: object, index: object, iova: object,
                 shift: object) -> tuple[int, int, int, int]:
    """Checks of ``MsiTable.set(dev, index, iova, shift)``: index a u16, shift 0..63."""
    return (int_arg("dev", dev, 32), range_arg("index", index, 0, 0xFFFF),
            int_arg("iova", iova), range_arg("shift", shift, 0, 63))


def streams_set_args(sid: object, mode: object, cfg: object,
                     ias: object) -> tuple[int, int, XlateConfig | None, int]:
    """Checks of ``Streams.set(sid, mode, cfg, ias)``."""
    sid = int_arg("sid", sid, 32)
    mode = integer("mode", mode)
    if mode not in (STREAM_ABORT, STREAM_BYPASS, STREAM_TRANSLATE):
        raise InvalidArgument(f"stream {sid:#x}: mode {mode} is not a STREAM_* mode")
    c = obj_arg("cfg", cfg, XlateConfig, optional=True)
    ias = range_arg("ias", ias, 0, 64)
    if mode == STREAM_TRANSLATE and c is None:
        raise InvalidArgument(f"stream {sid:#x}: translating needs an XlateConfig")
    return sid, mode, c, ias


def status_fault(status: int) -> Fault | None:
    """The fault a positive batch status encodes (None for other statuses).

    A status is an int32; a fault status with no valid fault kind is
    InvalidArgument.  The IPA is not carried by a status, so ``Fault.ipa`` is
    None.
    """
    if type(status) is int:
        f = _STATUS_FAULTS.get(status)
        if f is not None:
            return f
    status = range_arg("status", status, -(1 << 31), (1 << 31) - 1)
    if status < STATUS_FAULT:
        return None
    if status & 0xF not in _KINDS:
        raise InvalidArgument(f"status {status:#x}: no fault kind {status & 0xF}")
    f = Fault(
        stage=(status >> 4) & 0xF,
        kind=FaultKind(status & 0xF),
        level=(status >> 8) & 0xF,
        s1_table_walk=bool((status >> 12) & 1),
    )
    if len(_STATUS_FAULTS) >= 4096:
        _STATUS_FAULTS.clear()
    _STATUS_FAULTS[status] = f           # (a Fault is an immutable value)
    return f


_KINDS = frozenset(int(k) for k in FaultKind)
_STATUS_FAULTS: dict[int, Fault] = {}


def encode_status(fault: Fault | None) -> int:
    """The batch status of a translation outcome (inverse of status_fault)."""
    if fault is None:
        return STATUS_OK
    obj_arg("fault", fault, Fault)
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
    "u8": ({"B", "=B", "<B", "@B"}, 1),
}


def buffer_view(obj: object, kind: str, name: str, writable: bool = False) -> memoryview:
    """A flat memoryview of ``obj`` checked to hold ``kind`` items.

    ``kind`` is ``u32``, ``u64`` or ``i32``; typed arrays (``array.array``,
    numpy) qualify by their format, so a buffer of the wrong type is refused
    rather than reinterpreted.
    """
    try:
        mv = memoryview(cast("Buffer", obj))
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
        mv = mv.cast("B").cast(mv.format.lstrip("=<@"))  # type: ignore[call-overload]
        # (typeshed knows cast() only for literal formats; this one is checked above)
    return mv


BufferSpec = tuple[object, str, str]   # (object, "u32" | "u64" | "i32", argument name)


def batch_views(inputs: Sequence[BufferSpec],
                outputs: Sequence[BufferSpec]) -> tuple[int, list[memoryview]]:
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


_ALL_KINDS = (1 << TlbKind.S1) | (1 << TlbKind.S2) | (1 << TlbKind.S12)
_S1_KINDS = (1 << TlbKind.S1) | (1 << TlbKind.S12)
_S2_KINDS = (1 << TlbKind.S2) | (1 << TlbKind.S12)


def _range(start: int, size: int) -> tuple[int, int]:
    start = range_arg("start", start, 0, U64_MAX)
    size = range_arg("size", size, 1, 1 << 64)
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
        vmid = range_arg("vmid", vmid, 0, 0xFFFF)
        return self._invalidate(_S1_KINDS if stage1_only else _ALL_KINDS, vmid, None, True,
                                None)

    def invalidate_asid(self, asid: int, vmid: int) -> int:
        """Non-global stage-1/nested entries of an ASID (TLBI_NH_ASID)."""
        asid = range_arg("asid", asid, 0, 0xFFFF)
        vmid = range_arg("vmid", vmid, 0, 0xFFFF)
        return self._invalidate(_S1_KINDS, vmid, asid, False, None)

    def invalidate_va(self, vmid: int, start: int, size: int, asid: int | None = None) -> int:
        """Stage-1/nested entries overlapping an input range: of one ASID and the
        global ones (TLBI_NH_VA), or of every ASID when ``asid`` is None
        (TLBI_NH_VAA)."""
        vmid = range_arg("vmid", vmid, 0, 0xFFFF)
        first, last = _range(start, size)
        if asid is not None:
            asid = range_arg("asid", asid, 0, 0xFFFF)
        return self._invalidate(_S1_KINDS, vmid, asid, True, ("input", first, last))

    def invalidate_ipa(self, vmid: int, start: int, size: int) -> int:
        """Entries whose stage-2 input overlaps an IPA range (TLBI_S2_IPA).

        Nested entries are included: invalidating more than the architecture
        requires is always allowed, and it keeps combined entries coherent.
        """
        vmid = range_arg("vmid", vmid, 0, 0xFFFF)
        first, last = _range(start, size)
        return self._invalidate(_S2_KINDS, vmid, None, True, ("ipa", first, last))


def capacity_arg(capacity: object) -> int:
    """Checks of ``Iotlb(capacity)``: 1 .. 2**24 entries."""
    return range_arg("capacity", capacity, 1, 1 << 24)


def bit_args(addr: object, bit: object) -> tuple[int, int]:
    """The checked arguments of ``Memory.update_bit``: a 64-bit address, a bit 0..7."""
    return int_arg("addr", addr), range_arg("bit", bit, 0, 7)


def router_arrays(limits: object, tables: object) -> int:
    """The per-processor arrays of ``msi_router`` (read by it at every call, so kept
    as they are): an ``array('I')`` of limits and an ``array('Q')`` of pending table
    addresses of one length, at least 1 (TypeError / InvalidArgument); the length."""
    import array
    if not (isinstance(limits, array.array) and limits.typecode == "I"
            and isinstance(tables, array.array) and tables.typecode == "Q"):
        raise TypeError("msi_router: limits must be an array('I') and tables an array('Q')")
    if len(limits) != len(tables) or not limits:
        raise InvalidArgument(f"msi_router: limits ({len(limits)}) and tables "
                              f"({len(tables)}) need one item per processor, at least one")
    return len(limits)


def router_args(translator: object, ram: object, itc: object, gicmem: object, limits: object,
                tables: object, memory: type, cache: type) -> tuple[tuple[object, ...], int]:
    """The checked arguments of ``msi_router`` on the core whose ``Memory`` and
    ``ItsCache`` classes are ``memory`` and ``cache``: the translator's parts (a
    ``stream_translator`` of that core, else TypeError) and the number of processors."""
    parts = getattr(translator, "_parts", None)
    if not isinstance(parts, tuple) or not isinstance(parts[0], memory):
        raise TypeError("translator: a stream_translator of this core is required")
    obj_arg("ram", ram, memory)
    obj_arg("itc", itc, cache)
    obj_arg("gicmem", gicmem, memory)
    return parts, router_arrays(limits, tables)


def itc_args(dev: object, event: object) -> tuple[int, int]:
    """(DeviceID, EventID) of an ITS translation cache call: u32 each."""
    return int_arg("dev", dev, 32), int_arg("event", event, 32)


def itc_batch_views(dev: object, events: object, limits: object, intids: object,
                    status: object, grouped: object,
                    counts: object) -> tuple[int, int, int, list[memoryview]]:
    """The checked arguments of ``its_lookup_batch``: dev, n, nproc and the views
    (events, intids, status, grouped, limits, counts)."""
    dev = int_arg("dev", dev, 32)
    n, views = batch_views([(events, "u32", "events")],
                           [(intids, "u32", "intids"), (status, "i32", "status"),
                            (grouped, "u32", "grouped")])
    nproc, more = batch_views([(limits, "u32", "limits")], [(counts, "u32", "counts")])
    return dev, n, nproc, views + more


def msix_gather_views(table: object, nvec: object, vectors: object, addrs: object,
                      datas: object, status: object) -> tuple[int, int, list[memoryview]]:
    """The checked arguments of ``msix_gather``: nvec, n and the views (table, vectors,
    addrs, datas, status); the table must hold ``nvec`` 16-byte entries."""
    nvec = int_arg("nvec", nvec, 32)
    tv = buffer_view(table, "u8", "table")
    need = MSIX_ENTRY_SIZE * nvec
    if len(tv) < need:
        raise InvalidArgument(f"table: holds {len(tv)} bytes, needs {need}")
    n, views = batch_views([(vectors, "u32", "vectors")],
                           [(addrs, "u64", "addrs"), (datas, "u32", "datas"),
                            (status, "i32", "status")])
    return nvec, n, [tv] + views


# -- the ITS command queue (csrc/itscmd.c) ------------------------------------------------

ITSQ_DONE, ITSQ_HANDOFF, ITSQ_ERROR, ITSQ_STALL, ITSQ_FULL = 0, 1, 2, 3, 4
ITSQ_DROP_EVENT, ITSQ_DROP_DEVICE, ITSQ_DROP_COLLECTION = 1, 2, 3
ITSQ_INV, ITSQ_INVALL = 5, 6
ITSQ_REC_MAX = 64           # records one ItsCmdq.run returns at most (then ITSQ_FULL)


#: A decoded GITS_BASER<n> as :meth:`ItsCmdq.configure` takes it: (valid, indirect, base,
#: span, entry size, page size).
ItsTable = tuple[int, int, int, int, int, int]


def its_table_args(name: str, t: object) -> ItsTable:
    """A decoded GITS_BASER<n> (valid, indirect, base, span, entry size, page size),
    each checked to fit its C field."""
    try:
        valid, indirect, base, span, esize, page = cast("tuple[object, ...]", t)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be (valid, indirect, base, span, esize, page)") from None
    return (int(bool(valid)), int(bool(indirect)), int_arg(f"{name}.base", base),
            int_arg(f"{name}.span", span), int_arg(f"{name}.esize", esize, 32),
            int_arg(f"{name}.page", page, 32))


ItsCmdqConfig = tuple[int, int, int, int, int, int, ItsTable, ItsTable]


def its_cmdq_cfg_args(cq_base: object, cq_size: object, nproc: object, devbits: object,
                      id_bits: object, cidbits: object, devices: object,
                      collections: object) -> ItsCmdqConfig:
    """The checked arguments of ``ItsCmdq.configure`` (each fits its C field; what the
    values mean is checked by ``run``, which refuses a bad configuration with EINVAL)."""
    return (int_arg("cq_base", cq_base), int_arg("cq_size", cq_size, 32),
            int_arg("nproc", nproc, 32), int_arg("devbits", devbits, 8),
            int_arg("id_bits", id_bits, 8), int_arg("cidbits", cidbits, 8),
            its_table_args("devices", devices), its_table_args("collections", collections))
