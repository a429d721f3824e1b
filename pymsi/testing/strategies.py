"""Hypothesis strategies for the objects a pymsi user builds.

Every strategy takes keyword-only arguments, in hypothesis's own style: a plain value
fixes a parameter, ``None`` lets the strategy choose.  Where a structure has a valid
form, the strategy builds it valid first and then (``valid=False``, or ``mutate=True``)
mutates it -- bit flips, fields pushed out of range, bytes inserted or deleted -- so that
the inputs lie near the boundary of what the model accepts rather than in pure noise.

Formats are pymsi's own single definitions: STE/CD fields from
:mod:`pymsi.hw.smmuv3_regs`, ITS commands from :class:`pymsi.hw.its.Cmd`, stage
configurations from :mod:`pymsi.core`, ioctl structs from :mod:`pymsi.uapi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, cast, overload

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, SearchStrategy

from ..core import Prot, Stage1, Stage2, XlateConfig
from ..core import gic_formats as F
from ..errors import InvalidArgument
from ..hw import smmuv3_regs as R
from ..uapi import iommufd as I  # noqa: E741
from ..uapi import vfio as V

if TYPE_CHECKING:
    from ..machine.desc import ArmVirtDesc, PciFunctionDesc
    from ..uapi import Struct

_T = TypeVar("_T")

U64 = (1 << 64) - 1
GRANULES = (4096, 16384, 65536)
ADDRESS_SIZES = (32, 36, 40, 42, 44, 48)
MSI_DESIGNS = ("dma-cookie", "sw-msi", "preset", "per-vector")


def _opt(value: _T | SearchStrategy[_T] | None, default: SearchStrategy[_T]) -> SearchStrategy[_T]:
    """``value`` as a strategy: None -> ``default``, a strategy as is, else just it."""
    if value is None:
        return default
    if isinstance(value, SearchStrategy):
        return value
    return st.just(value)


def _flip(draw: DrawFn, word: int, bits: int = 64) -> int:
    """``word`` with 1-3 random bits flipped."""
    for _ in range(draw(st.integers(1, 3))):
        word ^= 1 << draw(st.integers(0, bits - 1))
    return word


def mutated(value: int, *, bits: int = 64) -> SearchStrategy[int]:
    """``value`` (a register or a descriptor word of ``bits`` bits) unchanged, with one bit
    flipped, with one field of up to 12 bits replaced by random bits, or replaced whole
    by a random value -- a quarter each; the kind drawn is reported as a hypothesis
    ``event`` ("mutation: keep/bit/field/random")."""

    @st.composite
    def build(draw: DrawFn) -> int:
        how = draw(st.sampled_from(["keep", "bit", "field", "random"]))
        event(f"mutation: {how}")
        if how == "bit":
            return value ^ 1 << draw(st.integers(0, bits - 1))
        if how == "field":
            lo = draw(st.integers(0, bits - 1))
            hi = draw(st.integers(lo, min(bits - 1, lo + 11)))
            mask = ((1 << (hi - lo + 1)) - 1) << lo
            return (value & ~mask) | (draw(st.integers(0, U64)) << lo & mask)
        if how == "random":
            return draw(st.integers(0, (1 << bits) - 1))
        return value

    return build()


# -- stage configurations and page tables -----------------------------------------------------


def table_bases(*, ram: tuple[int, int] | None = None) -> SearchStrategy[int]:
    """Table base addresses: mostly inside ``ram`` (base, size), sometimes any 64-bit value."""
    if ram is None:
        return st.integers(0, U64)
    base, size = ram
    inside = st.integers(base, base + size - 1)
    return st.one_of(inside, inside, inside, st.integers(0, U64))


def stage1_configs(*, granule: int | None = None, ttb: int | SearchStrategy[int] | None = None,
                   ips: int | None = None) -> SearchStrategy[Stage1]:
    """:class:`pymsi.core.Stage1` controls (what a CD holds): both tables with random
    TnSZ (16..39), granule (``granule`` fixes both), EPDn (a quarter disabled), HADn,
    TBIn, IPS and AFFD.  ``ttb`` is a strategy (or value) for TTB0/TTB1 (default: any
    64-bit value, so unaligned and out-of-range bases occur)."""
    g = _opt(granule, st.sampled_from(GRANULES))
    bases = _opt(ttb, st.integers(0, U64))

    @st.composite
    def build(draw: DrawFn) -> Stage1:
        kw: dict[str, Any] = {}
        for n in (0, 1):
            kw[f"epd{n}"] = draw(st.integers(0, 3)) == 0
            kw[f"ttb{n}"] = draw(bases)
            kw[f"tsz{n}"] = draw(st.integers(16, 39))
            kw[f"granule{n}"] = draw(g)
            kw[f"had{n}"] = draw(st.booleans())
            kw[f"tbi{n}"] = draw(st.booleans())
        kw["ips"] = draw(_opt(ips, st.sampled_from(ADDRESS_SIZES)))
        kw["affd"] = draw(st.booleans())
        return Stage1(**kw)

    return build()


def stage2_configs(*, granule: int | None = None, vttb: int | SearchStrategy[int] | None = None,
                   ps: int | None = None) -> SearchStrategy[Stage2]:
    """:class:`pymsi.core.Stage2` controls (what an STE holds): S2T0SZ 16..39 with an
    S2SL0 consistent with it (the geometries the SMMU rejects are drawn again), the
    granule, S2PS and S2AFFD."""
    g = _opt(granule, st.sampled_from(GRANULES))
    bases = _opt(vttb, st.integers(0, U64))

    @st.composite
    def build(draw: DrawFn) -> Stage2:
        while True:
            try:
                return Stage2(vttb=draw(bases), tsz=draw(st.integers(16, 39)),
                              sl0=draw(st.integers(0, 2)), granule=draw(g),
                              ps=draw(_opt(ps, st.sampled_from(ADDRESS_SIZES))),
                              affd=draw(st.booleans()))
            except InvalidArgument:
                continue

    return build()


def xlate_configs(*, stages: str | None = None, ttb: int | SearchStrategy[int] | None = None,
                  granule: int | None = None) -> SearchStrategy[XlateConfig]:
    """:class:`pymsi.core.XlateConfig`: stage 1 (``stages="s1"``), stage 2 (``"s2"``) or
    both (``"nested"``; None: any), from :func:`stage1_configs` / :func:`stage2_configs`,
    with small ASIDs and VMIDs (so IOTLB tags collide)."""
    which_st = _opt(stages, st.sampled_from(("s1", "s2", "nested")))

    @st.composite
    def build(draw: DrawFn) -> XlateConfig:
        which = draw(which_st)
        s1 = draw(stage1_configs(granule=granule, ttb=ttb)) if which != "s2" else None
        s2 = draw(stage2_configs(granule=granule, vttb=ttb)) if which != "s1" else None
        return XlateConfig(s1, s2, asid=draw(st.integers(0, 3)), vmid=draw(st.integers(0, 3)))

    return build()


@dataclass(frozen=True)
class Mapping:
    """One ``IoPgtable.map(iova, pa, size, prot)`` call."""

    iova: int
    pa: int
    size: int
    prot: Prot


def page_tables(*, granule: int = 4096, ias: int = 48, oas: int = 44, max_mappings: int = 8,
                blocks: bool = True) -> SearchStrategy[list[Mapping]]:
    """The mappings of one domain's page table, for :class:`pymsi.core.pgtable.IoPgtable`:
    up to ``max_mappings`` non-overlapping, granule-aligned ranges of the ``ias``-bit input
    space (pages, and with ``blocks`` level-2 block sizes), each to a ``oas``-bit output
    address with READ/WRITE permissions (at least one)."""
    shift = granule.bit_length() - 1
    sizes = [granule, 4 * granule] + ([1 << (shift + shift - 3)] if blocks else [])
    prots = st.sampled_from([Prot.READ, Prot.WRITE, Prot.READ | Prot.WRITE])

    @st.composite
    def build(draw: DrawFn) -> list[Mapping]:
        out: list[Mapping] = []
        used: list[tuple[int, int]] = []
        for _ in range(draw(st.integers(1, max_mappings))):
            size = draw(st.sampled_from(sizes))
            iova = draw(st.integers(0, ((1 << ias) - size) // size)) * size
            if any(iova < e and s < iova + size for s, e in used):
                continue
            pa = draw(st.integers(0, ((1 << oas) - size) // size)) * size
            used.append((iova, iova + size))
            out.append(Mapping(iova, pa, size, draw(prots)))
        return out

    return build()


# -- MSI tables -------------------------------------------------------------------------------


def msi_tables(*, max_devices: int = 4, max_vectors: int = 64, page_shift: int = 12
               ) -> SearchStrategy[dict[tuple[int, int], tuple[int, int]]]:
    """The contents of a :class:`pymsi.core.MsiTable` (what ``VFIO_DEVICE_MSI_IOVA`` fills):
    ``{(device key, vector): (iova, shift)}`` for up to ``max_devices`` devices with
    vectors below ``max_vectors``; IOVAs page-aligned (``page_shift``) 48-bit values,
    several vectors sharing a page as VMMs do."""
    pages = st.integers(0, (1 << (48 - page_shift)) - 1).map(lambda p: p << page_shift)

    @st.composite
    def build(draw: DrawFn) -> dict[tuple[int, int], tuple[int, int]]:
        shared = draw(st.lists(pages, min_size=1, max_size=4))
        keys = st.tuples(st.integers(0, max_devices - 1), st.integers(0, max_vectors - 1))
        iovas = st.one_of(st.sampled_from(shared), pages)
        return draw(st.dictionaries(keys, iovas.map(lambda a: (a, page_shift)),
                                    max_size=max_devices * 8))

    return build()


# -- SMMUv3 STE and CD words ------------------------------------------------------------------


def _mutate_words(draw: DrawFn, words: list[int]) -> list[int]:
    """Bit flips in 1-3 words, or a field-sized chunk replaced by random bits."""
    words = list(words)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(words) - 1))
        if draw(st.booleans()):
            words[i] = _flip(draw, words[i])
        else:
            lo = draw(st.integers(0, 60))
            width = draw(st.integers(1, 64 - lo))
            mask = ((1 << width) - 1) << lo
            words[i] = (words[i] & ~mask) | (draw(st.integers(0, U64)) & mask)
    return words


def ste_words(*, valid: bool = True, config: int | None = None,
              ctxptr: int | SearchStrategy[int] | None = None,
              s2ttb: int | SearchStrategy[int] | None = None,
              vmid: int | SearchStrategy[int] | None = None,
              oas: int = 44) -> SearchStrategy[list[int]]:
    """The 8 doublewords of a stream table entry (:mod:`pymsi.hw.smmuv3_regs` layout).

    ``valid=True``: a well-formed STE for an SMMU with an ``oas``-bit output size -- V set,
    Config abort / bypass / S1 / S2 / nested (``config`` fixes it), S1ContextPtr
    ``ctxptr`` (a strategy or value; default any 64-byte aligned address below
    2**oas), S1CDMax 0, a stage 2 with S2T0SZ / S2SL0 / S2TG / S2PS consistent with each
    other and with ``oas``, at ``s2ttb``.  ``valid=False``: one of those mutated (bit
    flips, random fields), or now and then pure random words."""
    configs = _opt(config, st.sampled_from([int(c) for c in R.SteConfig]))
    ctx = _opt(ctxptr, st.integers(0, (1 << (oas - 6)) - 1).map(lambda a: a << 6))
    vmids = _opt(vmid, st.integers(0, 7))
    ps_choices = [b for b in ADDRESS_SIZES if b <= oas]

    @st.composite
    def build(draw: DrawFn) -> list[int]:
        if not valid and draw(st.integers(0, 4)) == 0:
            return draw(st.lists(st.integers(0, U64), min_size=8, max_size=8))
        cfg = draw(configs)
        w = [0] * 8
        w[0] = R.STE0_V(1) | R.STE0_CONFIG(cfg) | R.STE0_S1CTXPTR(draw(ctx) >> 6 & (
            (1 << 46) - 1))
        w[1] = R.STE1_S1DSS(R.S1DSS_SSID0) | R.STE1_S1CIR(1) | R.STE1_S1COR(1) | R.STE1_S1CSH(3)
        if cfg & 0b110 == 0b110:                   # S2 or nested: a stage 2
            ps = draw(st.sampled_from(ps_choices))
            base = _opt(s2ttb, st.integers(0, (1 << (ps - 16)) - 1).map(lambda a: a << 16))
            while True:
                try:
                    s2 = Stage2(vttb=draw(base), tsz=draw(st.integers(64 - ps, 39)),
                                sl0=draw(st.integers(0, 2)), granule=draw(st.sampled_from(
                                    GRANULES)), ps=ps, affd=draw(st.booleans()))
                    break
                except InvalidArgument:
                    continue
            w[2] = (R.STE2_S2VMID(draw(vmids)) | R.STE2_S2T0SZ(s2.tsz) | R.STE2_S2SL0(s2.sl0)
                    | R.STE2_S2TG(R.GRANULE_TG[s2.granule])
                    | R.STE2_S2PS(R.OAS_BITS.index(s2.ps)) | R.STE2_S2AA64(1)
                    | R.STE2_S2AFFD(int(s2.affd)) | R.STE2_S2PTW(1) | R.STE2_S2R(1))
            w[3] = R.STE3_S2TTB(s2.vttb >> 4 & ((1 << 48) - 1))
        return w if valid else _mutate_words(draw, w)

    return build()


def cd_words(*, valid: bool = True, ttb0: int | SearchStrategy[int] | None = None,
             asid: int | SearchStrategy[int] | None = None,
             granule: int | None = None, oas: int = 44) -> SearchStrategy[list[int]]:
    """The 8 doublewords of a stage-1 context descriptor (:mod:`pymsi.hw.smmuv3_regs`).

    ``valid=True``: V, AA64, R, A set, TTB0 ``ttb0`` (default any 64 KiB-aligned address
    below 2**oas) with T0SZ 16..39 and TG0 ``granule``, TTB1 walks disabled (EPD1), IPS
    ``oas``, ASID ``asid``.  ``valid=False``: that CD mutated, or now and then random
    words."""
    grans = _opt(granule, st.sampled_from(GRANULES))
    ttbs = _opt(ttb0, st.integers(0, (1 << (oas - 16)) - 1).map(lambda a: a << 16))
    asids = _opt(asid, st.integers(0, 0xFFFF))

    @st.composite
    def build(draw: DrawFn) -> list[int]:
        if not valid and draw(st.integers(0, 4)) == 0:
            return draw(st.lists(st.integers(0, U64), min_size=8, max_size=8))
        g = draw(grans)
        w = [0] * 8
        w[0] = (R.CD0_T0SZ(draw(st.integers(16, 39))) | R.CD0_TG0(R.GRANULE_TG[g])
                | R.CD0_IR0(1) | R.CD0_OR0(1) | R.CD0_SH0(3) | R.CD0_EPD1(1) | R.CD0_V(1)
                | R.CD0_IPS(R.OAS_BITS.index(oas)) | R.CD0_AA64(1) | R.CD0_R(1) | R.CD0_A(1)
                | R.CD0_ASET(1) | R.CD0_ASID(draw(asids)))
        w[1] = R.CD1_TTB0(draw(ttbs) >> 4 & ((1 << 48) - 1))
        return w if valid else _mutate_words(draw, w)

    return build()


# -- ITS commands -------------------------------------------------------------------------------

ITS_COMMAND_NAMES = ("MAPD", "MAPC", "MAPTI", "MAPI", "MOVI", "DISCARD", "INT", "CLEAR", "INV",
                     "INVALL", "SYNC", "MOVALL")
# Opcodes that change the ITS's mappings (MOVI, MAPD, MAPC, MAPTI, MAPI, DISCARD).
_MAPPING_OPCODES = (0x01, 0x08, 0x09, 0x0A, 0x0B, 0x0F)


class ItsCommandFields(TypedDict):
    """The fields of a named command :func:`its_commands` draws (see there)."""

    dev: int
    ev: int
    icid: int
    v: bool
    size: int
    lpi: int
    cpu: int
    cpu2: int


def its_commands(*, valid: bool | None = None, devices: int = 4, events: int = 8,
                 collections: int = 5, cpus: int = 4, lpi_base: int = F.LPI_BASE
                 ) -> SearchStrategy[tuple[str, ItsCommandFields | list[int]]]:
    """A GICv3 ITS command over a small universe, as ``(name, fields)``.

    A named command's fields are ``dev`` (0..``devices``: the last one never mapped),
    ``ev`` (a few past ``events``), ``icid`` (0..``collections``), ``v``, ``size`` (0..3
    EventID bits - 1), ``lpi`` (an LPI from ``lpi_base`` or an invalid INTID), ``cpu`` and
    ``cpu2`` (a redistributor, sometimes one past ``cpus``): the caller encodes them (its
    own encoder is what is under test).  ``valid=False`` (or None, now and then) gives
    ``("garbage", [d0, d1, d2, d3])``: random doublewords whose opcode is not one that
    changes mappings (so a reference model need not decode it)."""
    names = list(ITS_COMMAND_NAMES) + (["garbage"] if valid is None else [])
    if valid is False:
        names = ["garbage"]

    @st.composite
    def build(draw: DrawFn) -> tuple[str, ItsCommandFields | list[int]]:
        kind = draw(st.sampled_from(names))
        if kind == "garbage":
            words = [draw(st.integers(0, U64)) for _ in range(4)]
            if words[0] & 0xFF in _MAPPING_OPCODES:
                words[0] ^= 0x80
            return kind, words
        return kind, ItsCommandFields(
            dev=draw(st.integers(0, devices)), ev=draw(st.integers(0, events + 2)),
            icid=draw(st.integers(0, collections)), v=draw(st.booleans()),
            size=draw(st.integers(0, 3)),
            lpi=draw(st.sampled_from([lpi_base + draw(st.integers(0, 63)), 100, 1 << 17])),
            cpu=draw(st.integers(0, cpus + 1)), cpu2=draw(st.integers(0, cpus)))

    return build()


# -- CPU masks and /proc inputs -----------------------------------------------------------------


def cpu_masks(*, ncpus: int = 4, min_size: int = 0, max_size: int | None = None
              ) -> SearchStrategy[frozenset[int]]:
    """A set of CPUs below ``ncpus`` (an affinity mask as a CPU set)."""
    return st.frozensets(st.integers(0, ncpus - 1), min_size=min_size,
                         max_size=ncpus if max_size is None else max_size)


_SEPARATORS = [b",", b",,", b" ", b", ", b"\t", b"\xa0"]
_PIECES = [b",", b" ", b",,", b"\t", b"\xa0", b", ", b"\n", b"\x00"]


def proc_inputs(*, valid: bool | None = None, max_groups: int = 18) -> SearchStrategy[bytes]:
    """What a user writes to ``/proc/irq/N/smp_affinity``: comma-separated groups of hex
    digits (Linux's bitmap_parse format).  ``valid=True``: well-formed masks, 1-8 digits a
    group, mixed case.  Otherwise (None) those built with leading zeros (overflowing
    groups), odd separators, prefixes and trailing junk, then mutated byte by byte:
    inserted, deleted and replaced bytes."""

    @st.composite
    def build(draw: DrawFn) -> bytes:
        groups = draw(st.lists(st.integers(0, 0xFFFF_FFFF), min_size=int(bool(valid)),
                               max_size=max_groups))
        out = b""
        for i, g in enumerate(groups):
            digits = "0" * (0 if valid else draw(st.integers(0, 9))) + f"{g:x}"
            if draw(st.booleans()):
                digits = digits.upper()
            out += digits.encode()
            if i != len(groups) - 1:
                out += b"," if valid else draw(st.sampled_from(_SEPARATORS))
        if valid:
            return out + draw(st.sampled_from([b"", b"\n"]))
        if draw(st.booleans()):
            out = draw(st.sampled_from([b"", b" ", b",", b"0x", b"x", b"\n"])) + out
        if draw(st.booleans()):
            out += draw(st.sampled_from([b"", b" ", b",", b"\n", b"\nzz", b"\x00"]))
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            at = draw(st.integers(0, len(out)))
            byte = draw(st.one_of(st.integers(0, 255).map(lambda b: bytes([b])),
                                  st.sampled_from(_PIECES),
                                  st.sampled_from([b"0", b"f", b"F", b"g", b"x", b"-"])))
            if op == "insert":
                out = out[:at] + byte + out[at:]
            elif op == "delete" and at < len(out):
                out = out[:at] + out[at + 1:]
            elif at < len(out):
                out = out[:at] + byte[:1] + out[at + 1:]
        return out

    return build()


# -- device and machine descriptions ------------------------------------------------------------


class PciFunctionDict(TypedDict, total=False):
    """A PCI function's description in dict form, as :func:`device_descriptions` draws it
    (the keys :class:`pymsi.machine.desc.PciFunctionDesc` takes, that strategy's subset)."""

    msix: int
    msi: int
    msi_mask: bool
    flr: bool


class ArmVirtKeywords(TypedDict):
    """Keyword arguments of :class:`pymsi.machine.ArmVirt` as :func:`machine_descriptions`
    draws them."""

    ncpus: int
    smmu: str | None
    gicv4: bool
    msi_design: str
    devices: list[PciFunctionDict]


@overload
def device_descriptions(*, max_vectors: int = 32, msi: bool | None = None,
                        msix: bool | None = None, typed: Literal[False] = False
                        ) -> SearchStrategy[PciFunctionDict]: ...
@overload
def device_descriptions(*, max_vectors: int = 32, msi: bool | None = None,
                        msix: bool | None = None, typed: Literal[True]
                        ) -> SearchStrategy[PciFunctionDesc]: ...
@overload
def device_descriptions(*, max_vectors: int = 32, msi: bool | None = None,
                        msix: bool | None = None, typed: bool
                        ) -> SearchStrategy[PciFunctionDict] | SearchStrategy[PciFunctionDesc]: ...
def device_descriptions(*, max_vectors: int = 32, msi: bool | None = None,
                        msix: bool | None = None, typed: bool = False
                        ) -> SearchStrategy[PciFunctionDict] | SearchStrategy[PciFunctionDesc]:
    """A PCI function description as ``ArmVirt(devices=[...])`` takes it: ``{"msix": n}``
    and/or ``{"msi": n}`` (MSI: a power of two up to 32), sometimes ``"flr": False`` or
    ``"msi_mask": False``.  ``msi`` / ``msix`` force a capability on or off; at least one
    is present.  ``typed``: the :class:`pymsi.machine.desc.PciFunctionDesc` instead of
    its dict form."""
    if typed:
        from ..machine.desc import PciFunctionDesc

        return device_descriptions(max_vectors=max_vectors, msi=msi, msix=msix).map(
            PciFunctionDesc.from_dict)

    @st.composite
    def build(draw: DrawFn) -> PciFunctionDict:
        has_x = draw(st.booleans()) if msix is None else msix
        has_m = (draw(st.booleans()) or not has_x) if msi is None else msi
        d: PciFunctionDict = {}
        if has_x:
            d["msix"] = draw(st.integers(1, max_vectors))
        if has_m:
            d["msi"] = draw(st.sampled_from([n for n in (1, 2, 4, 8, 16, 32)
                                             if n <= max(1, max_vectors)]))
            if draw(st.integers(0, 3)) == 0:
                d["msi_mask"] = False
        if draw(st.integers(0, 3)) == 0:
            d["flr"] = False
        return d

    return build()


@overload
def machine_descriptions(*, max_devices: int = 3, max_vectors: int = 16,
                         smmu: str | SearchStrategy[str | None] | None = None,
                         msi_design: str | SearchStrategy[str] | None = None,
                         typed: Literal[False] = False) -> SearchStrategy[ArmVirtKeywords]: ...
@overload
def machine_descriptions(*, max_devices: int = 3, max_vectors: int = 16,
                         smmu: str | SearchStrategy[str | None] | None = None,
                         msi_design: str | SearchStrategy[str] | None = None,
                         typed: Literal[True]) -> SearchStrategy[ArmVirtDesc]: ...
@overload
def machine_descriptions(*, max_devices: int = 3, max_vectors: int = 16,
                         smmu: str | SearchStrategy[str | None] | None = None,
                         msi_design: str | SearchStrategy[str] | None = None,
                         typed: bool) -> (SearchStrategy[ArmVirtKeywords]
                                          | SearchStrategy[ArmVirtDesc]): ...
def machine_descriptions(*, max_devices: int = 3, max_vectors: int = 16,
                         smmu: str | SearchStrategy[str | None] | None = None,
                         msi_design: str | SearchStrategy[str] | None = None,
                         typed: bool = False
                         ) -> SearchStrategy[ArmVirtKeywords] | SearchStrategy[ArmVirtDesc]:
    """Keyword arguments of :class:`pymsi.machine.ArmVirt`: ``ncpus`` 1..8, ``smmu``
    ("s1", "s2", "nested" or None), ``gicv4``, ``msi_design`` (one of the four) and 1..
    ``max_devices`` :func:`device_descriptions` -- ``ArmVirt(**d).boot()`` boots it.
    ``typed``: the :class:`pymsi.machine.desc.ArmVirtDesc` instead
    (``ArmVirt.from_description(d)``)."""
    if typed:
        from ..machine.desc import ArmVirtDesc

        return machine_descriptions(max_devices=max_devices, max_vectors=max_vectors,
                                    smmu=smmu, msi_design=msi_design).map(
            ArmVirtDesc.from_dict)
    return cast("SearchStrategy[ArmVirtKeywords]", st.fixed_dictionaries({
        "ncpus": st.integers(1, 8),
        "smmu": _opt(smmu, st.sampled_from(["s1", "s2", "nested", None])),
        "gicv4": st.booleans(),
        "msi_design": _opt(msi_design, st.sampled_from(MSI_DESIGNS)),
        "devices": st.lists(device_descriptions(max_vectors=max_vectors), min_size=1,
                            max_size=max_devices),
    }))


# -- UAPI calls ---------------------------------------------------------------------------------


@dataclass
class UapiCall:
    """One ioctl a VMM makes: ``file`` ("iommufd" or "vfio"), the request number and
    the argument struct; ``valid`` says whether it was built well-formed or mutated, and
    ``mutation`` which scalar field was changed, from what to what."""

    file: str
    request: int
    arg: Struct
    valid: bool
    mutation: tuple[str, int, int] | None = None


def _iovas(draw: DrawFn, n: int) -> list[int]:
    return [draw(st.integers(0, (1 << 36) - 1)) << 12 for _ in range(n)]


def uapi_calls(*, valid: bool | None = None, ioas_id: int = 1, dev_id: int = 1,
               max_vectors: int = 8) -> SearchStrategy[UapiCall]:
    """An iommufd or VFIO ioctl with its argument: IOMMU_IOAS_ALLOC / MAP / UNMAP /
    MAP_MSI, IOMMU_OPTION, VFIO_DEVICE_MSI_IOVA (SET / CLEAR / GET), VFIO_DEVICE_SET_IRQS
    (eventfd triggers, DATA_NONE).  Built valid for an IOAS ``ioas_id`` and a bound device
    ``dev_id``; ``valid=False`` (or None, half the time) then mutates one scalar field
    (a reserved member set, flags with unknown bits, ids off by one, sizes unaligned or
    huge, counts past the flexible array).  Running one: ``file.ioctl(call.request,
    call.arg)``; a bad call must fail with Linux's errno and change nothing."""

    @st.composite
    def build(draw: DrawFn) -> UapiCall:
        ok = draw(st.booleans()) if valid is None else valid
        kind = draw(st.sampled_from(["ioas_alloc", "map", "unmap", "map_msi", "option",
                                     "msi_iova", "set_irqs"]))
        iova = draw(st.integers(0x10, 0x1000)) << 16
        if kind == "ioas_alloc":
            call = UapiCall("iommufd", I.IOMMU_IOAS_ALLOC, I.IommuIoasAlloc(), True)
        elif kind == "map":
            call = UapiCall("iommufd", I.IOMMU_IOAS_MAP, I.IommuIoasMap(
                flags=I.IOMMU_IOAS_MAP_FIXED_IOVA | I.IOMMU_IOAS_MAP_READABLE
                | I.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=ioas_id, user_va=0,
                length=draw(st.integers(1, 4)) << 12, iova=iova), True)
        elif kind == "unmap":
            call = UapiCall("iommufd", I.IOMMU_IOAS_UNMAP, I.IommuIoasUnmap(
                ioas_id=ioas_id, iova=iova, length=draw(st.integers(1, 4)) << 12), True)
        elif kind == "map_msi":
            call = UapiCall("iommufd", I.IOMMU_IOAS_MAP_MSI, I.IommuIoasMapMsi(
                ioas_id=ioas_id, dev_id=dev_id, iova=iova), True)
        elif kind == "option":
            call = UapiCall("iommufd", I.IOMMU_OPTION, I.IommuOption(
                option_id=I.IOMMU_OPTION_MSI_DESIGN, op=I.IOMMU_OPTION_OP_GET), True)
        elif kind == "msi_iova":
            n = draw(st.integers(1, max_vectors))
            flags = draw(st.sampled_from([V.VFIO_MSI_IOVA_SET, V.VFIO_MSI_IOVA_CLEAR,
                                          V.VFIO_MSI_IOVA_GET]))
            items = _iovas(draw, n) if flags != V.VFIO_MSI_IOVA_CLEAR else []
            call = UapiCall("vfio", V.VFIO_DEVICE_MSI_IOVA, V.VfioDeviceMsiIova(
                flags=flags, index=V.VFIO_PCI_MSIX_IRQ_INDEX,
                start=draw(st.integers(0, max_vectors - n)), count=n, iova=items), True)
        else:
            n = draw(st.integers(0, max_vectors))
            call = UapiCall("vfio", V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
                flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
                index=V.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=n, data=[-1] * n), True)
        if not ok:
            _mutate_call(draw, call)
        return call

    return build()


def _mutate_call(draw: DrawFn, call: UapiCall) -> None:
    """One scalar field of ``call.arg`` made wrong (as :func:`uapi_calls` describes)."""
    arg = call.arg
    fields = [name for name in ("flags", "ioas_id", "dev_id", "length", "iova", "size",
                                "option_id", "op", "object_id", "index", "start", "count",
                                "__reserved")
              if hasattr(arg, name) and isinstance(getattr(arg, name), int)]
    name = draw(st.sampled_from(fields))
    old = getattr(arg, name)
    new = draw(st.sampled_from([old + 1, old ^ 0x800, 0xFFFF_FFFF, old | 0x8000_0000,
                                old + 0x7FF]))
    if new == old:
        new = old + 1
    try:
        setattr(arg, name, new)
    except ValueError:                               # wider than the field: its largest value
        new = (1 << (8 * _field_size(arg, name))) - 1
        if new == old:
            new = old - 1
        setattr(arg, name, new)
    call.valid = False
    call.mutation = (name, old, new)


def _field_size(arg: Struct, name: str) -> int:
    """Bytes of scalar member ``name`` of a uapi struct (4 when unknown)."""
    for field_name, ctype in getattr(type(arg), "_fields_", ()):
        if field_name == name:
            return int(getattr(ctype, "size", 4))
    return 4


__all__ = ["ITS_COMMAND_NAMES", "ArmVirtKeywords", "ItsCommandFields", "Mapping",
           "PciFunctionDict", "UapiCall", "cd_words", "cpu_masks",
           "device_descriptions", "its_commands", "machine_descriptions", "msi_tables",
           "mutated", "page_tables", "proc_inputs", "stage1_configs", "stage2_configs",
           "ste_words", "table_bases", "uapi_calls", "xlate_configs"]
