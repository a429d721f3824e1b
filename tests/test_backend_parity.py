"""Differential fuzzing of the whole public core API: C against the Python twin.

Every entry point of ``pymsi.core`` is called on both backends with the same
arguments, drawn from a mix of valid values and garbage (bools, negative and
oversized ints, floats, numpy scalars, ``__index__`` / ``__int__`` objects,
None, strings, objects of the wrong type, several bad arguments at once).
The two must agree exactly: the same return value or the same exception class
(and errno), and the same state afterwards.  Independently of agreement, an
exception must be one the README's "Arguments" rules allow (never an
AttributeError, OverflowError, KeyError or a bare MemoryError).
"""

from __future__ import annotations

import array
import errno
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import Phase, event, example, given, settings
from hypothesis import strategies as st

from pymsi import core, errors
from pymsi.core import (
    IoPgtable,
    IpaView,
    Prot,
    Stage1,
    Stage2,
    TableAllocator,
    XlateConfig,
    common,
    encode_status,
    status_fault,
)

from core_args import Buf, Ref

RAM, RAM_SIZE = 0x1_0000, 0x1_0000
RAM2, RAM2_SIZE = 0x4000_0000, 0x2000
POOL = RAM + 0x8000                 # page-table pool: the top half of RAM
MAPPED = 0x1000_0000                # IOVA mapped by the stage-1 tables to RAM

ALLOWED = (TypeError, errors.InvalidArgument, errors.BusError, errors.MsiNotMapped,
           errors.AlreadyExists, errors.OutOfMemory)


class Index:
    """An integer-like object: has ``__index__`` only."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v

    def __repr__(self) -> str:
        return f"Index({self.v:#x})"


class IntOnly:
    """Converts with int() (``__int__``) but is not an integer (no ``__index__``)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __int__(self) -> int:
        return self.v

    def __repr__(self) -> str:
        return f"IntOnly({self.v})"


U64 = 2**64

# -- garbage --------------------------------------------------------------

garbage = st.one_of(
    st.booleans(),
    st.integers(max_value=-1),
    st.integers(min_value=U64, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, U64 - 1).map(np.uint64),
    st.integers(-(2**31), 2**31 - 1).map(np.int32),
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.floats(-1e3, 1e3).map(np.float64),
    st.booleans().map(np.bool_),
    st.integers(-5, 2**65).map(Index),
    st.integers(0, 2**16).map(IntOnly),
    st.integers(0, 100).map(lambda v: Fraction(v, 1)),
    st.none(),
    st.text(max_size=3),
    st.sampled_from([Ref("mem"), Ref("other_mem"), Ref("tlb"), Ref("other_tlb"),
                     Ref("table"), Ref("streams"), Ref("cfg_s1"), Stage1(), object()]),
)


def arg(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value, or an integer-like form of it (garbage comes from ``steps``)."""
    return st.one_of(valid, valid, valid.map(
        lambda v: Index(v) if type(v) is int and v >= 0 else v), valid.map(
        lambda v: np.uint64(v) if type(v) is int and 0 <= v < U64 else v))


def obj(name: str) -> st.SearchStrategy:
    """The backend's own object ``name`` (garbage comes from ``steps``)."""
    return st.just(Ref(name))


addrs = st.one_of(st.integers(RAM - 16, RAM + RAM_SIZE + 16), st.integers(0, U64 - 1),
                  st.integers(RAM2, RAM2 + RAM2_SIZE), st.just(MAPPED + 0x10),
                  st.integers(U64 - 0x2000, U64 - 1))
sizes = st.one_of(st.integers(0, 64), st.sampled_from([0x1000, 0x2000, 0x1_0000]),
                  st.sampled_from([2**30, 2**30 + 1, 2**40, 2**63, U64 - 1]))
small = st.integers(0, 8)
ipas = st.one_of(st.integers(0, 0x9000), st.integers(0, U64 - 1))
u16s = st.one_of(small, st.integers(0, 0xFFFF), st.just(0x1_0000))
u32s = st.one_of(small, st.integers(0, 2**32 - 1), st.just(2**32))
u64s = st.one_of(small, st.integers(0, U64 - 1))
flags = st.one_of(st.booleans(), st.integers(0, 2), st.none())
cfgs = st.sampled_from([Ref("cfg_s1"), Ref("cfg_s1"), Ref("cfg_s2"), Ref("cfg_nested"), None])
tlbs = st.sampled_from([Ref("tlb"), None])


def bufs(code: str, values: st.SearchStrategy) -> st.SearchStrategy:
    # Mostly 4 items, so that the inputs of a batch usually agree in length.
    vals = st.one_of(*[st.lists(values, min_size=4, max_size=4)] * 4, st.lists(values, max_size=6))
    return st.one_of(
        *[vals.map(lambda v: Buf(code, v))] * 8,
        vals.map(lambda v: Buf(code, v, "numpy")),
        vals.map(lambda v: Buf(code, v, "bytes")), vals.map(lambda v: Buf(code, v, "list")),
    )


def out_bufs(code: str) -> st.SearchStrategy:
    return st.one_of(*[st.integers(6, 8).map(lambda n: Buf(code, [7] * n))] * 8,
                     st.integers(0, 7).map(lambda n: Buf(code, [7] * n)),
                     st.integers(0, 7).map(lambda n: Buf(code, [7] * n, "numpy")),
                     st.integers(0, 3).map(lambda n: Buf(code, [7] * n, "bytes")),
                     st.just(Buf("b" if code != "b" else "h", [7] * 8)))


# -- the entry points -----------------------------------------------------

def _mem(b, s, name, *a):
    return getattr(s["mem"], name)(*a)


def _tlb(b, s, name, *a, **kw):
    return getattr(s["tlb"], name)(*a, **kw)


def _table(b, s, name, *a):
    return getattr(s["table"], name)(*a)


def _streams(b, s, name, *a):
    return getattr(s["streams"], name)(*a)


OPS: dict[str, tuple[Any, list[st.SearchStrategy]]] = {
    "mem.add_ram": (lambda b, s, *a: _mem(b, s, "add_ram", *a),
                    [arg(st.integers(0, 2**40).map(lambda x: x * 4096)),
                     arg(st.one_of(st.integers(0, 16).map(lambda x: x * 4096),
                                   st.sampled_from([2**62, U64 - 4095])))]),
    "mem.is_ram": (lambda b, s, *a: _mem(b, s, "is_ram", *a), [arg(addrs), arg(sizes)]),
    "mem.read": (lambda b, s, *a: _mem(b, s, "read", *a), [arg(addrs), arg(sizes)]),
    "mem.write": (lambda b, s, *a: _mem(b, s, "write", *a),
                  [arg(addrs), st.one_of(st.binary(max_size=24),
                                         st.binary(max_size=8).map(bytearray),
                                         st.binary(max_size=8).map(memoryview),
                                         st.lists(st.integers(0, 255), max_size=4),
                                         st.integers(0, 3))]),
    "mem.read_u64": (lambda b, s, *a: _mem(b, s, "read_u64", *a), [arg(addrs)]),
    "mem.read_u32": (lambda b, s, *a: _mem(b, s, "read_u32", *a), [arg(addrs)]),
    "mem.write_u64": (lambda b, s, *a: _mem(b, s, "write_u64", *a), [arg(addrs), arg(u64s)]),
    "mem.write_u32": (lambda b, s, *a: _mem(b, s, "write_u32", *a),
                      [arg(addrs), arg(st.one_of(u32s, u64s))]),
    "walk": (lambda b, s, m, iova, w, s1, s2, cfg: b.walk(m, iova, w, s1=s1, s2=s2, cfg=cfg),
             [obj("mem"), arg(addrs), flags,
              st.one_of(*[st.none()] * 6, st.just(Stage1(epd0=True))),
              st.one_of(*[st.none()] * 6, st.just(Stage2(0, 24, 1))),
              cfgs]),
    "translate": (lambda b, s, m, iova, w, cfg, tlb, s1, s2:
                  b.translate(m, iova, w, cfg=cfg, tlb=tlb, s1=s1, s2=s2),
                  [obj("mem"), arg(addrs), flags,
                   cfgs, tlbs,
                   st.one_of(*[st.none()] * 6, st.just(Stage1(epd0=True))),
                   st.one_of(*[st.none()] * 6, st.just(Stage2(0, 24, 1)))]),
    "Stage1": (lambda b, s, *a: Stage1(*a),
               [arg(addrs), arg(st.integers(14, 40)), arg(st.sampled_from([4096, 16384, 65536,
                                                                          8192])),
                arg(addrs), arg(st.integers(14, 40)), arg(st.sampled_from([4096, 65536])),
                flags, flags, arg(st.sampled_from([32, 40, 48, 52])), flags, flags, flags,
                flags, flags]),
    "Stage2": (lambda b, s, *a: Stage2(*a),
               [arg(addrs), arg(st.integers(14, 40)), arg(st.integers(0, 4)),
                arg(st.sampled_from([4096, 16384, 65536, 8192])),
                arg(st.sampled_from([32, 40, 48, 52])), flags]),
    "XlateConfig": (lambda b, s, *a: XlateConfig(*a),
                    [st.one_of(st.none(), st.just(Stage1())),
                     st.one_of(st.none(), st.just(Stage2(0, 24, 1))),
                     arg(u16s), arg(u16s)]),
    "Iotlb": (lambda b, s, *a: b.Iotlb(*a),
              [arg(st.one_of(small, st.sampled_from([256, 2**24 + 1, 2**40])))]),
    "tlb.invalidate_all": (lambda b, s: _tlb(b, s, "invalidate_all"), []),
    "tlb.invalidate_vmid": (lambda b, s, *a: _tlb(b, s, "invalidate_vmid", *a),
                            [arg(u16s), flags]),
    "tlb.invalidate_asid": (lambda b, s, *a: _tlb(b, s, "invalidate_asid", *a),
                            [arg(u16s), arg(u16s)]),
    "tlb.invalidate_va": (lambda b, s, v, st_, sz, asid: _tlb(b, s, "invalidate_va", v, st_, sz,
                                                              asid=asid),
                          [arg(u16s), arg(addrs), arg(st.one_of(st.integers(0, 2**40),
                                                                st.just(U64), st.just(U64 + 1))),
                           st.one_of(st.none(), arg(u16s))]),
    "tlb.invalidate_ipa": (lambda b, s, *a: _tlb(b, s, "invalidate_ipa", *a),
                           [arg(u16s), arg(addrs), arg(st.integers(0, 2**40))]),
    "tlb.reset_stats": (lambda b, s: _tlb(b, s, "reset_stats"), []),
    "table.reserve": (lambda b, s, *a: _table(b, s, "reserve", *a),
                      [arg(st.one_of(small, st.integers(0, 200), st.sampled_from(
                          [2**12, 2**24 + 1, 2**40, 2**62, U64 - 1])))]),
    "table.set": (lambda b, s, *a: _table(b, s, "set", *a),
                  [arg(st.one_of(small, u32s)), arg(st.one_of(small, u16s, u32s)), arg(u64s),
                   arg(st.integers(0, 65))]),
    "table.get": (lambda b, s, *a: _table(b, s, "get", *a), [arg(u32s), arg(u16s)]),
    "table.remove": (lambda b, s, *a: _table(b, s, "remove", *a), [arg(small), arg(small)]),
    "table.compose": (lambda b, s, *a: _table(b, s, "compose", *a),
                      [arg(small), arg(small), arg(u64s)]),
    "compose_batch": (lambda b, s, *a: b.compose_batch(*a),
                      [obj("table"), arg(u64s),
                       bufs("I", small), bufs("I", small), out_bufs("Q"), out_bufs("i")]),
    "translate_batch": (lambda b, s, m, cfg, iv, op, sts, tlb, w:
                        b.translate_batch(m, cfg, iv, op, sts, tlb=tlb, write=w),
                        [obj("mem"), cfgs,
                         bufs("Q", addrs), out_bufs("Q"), out_bufs("i"),
                         tlbs, flags]),
    "msi_batch": (lambda b, s, t, m, cfg, db, d, i, oa, op, sts, tlb:
                  b.msi_batch(t, m, cfg, db, d, i, oa, op, sts, tlb=tlb),
                  [obj("table"),
                   obj("mem"), cfgs,
                   arg(u64s), bufs("I", small), bufs("I", small), out_bufs("Q"),
                   out_bufs("Q"), out_bufs("i"), tlbs]),
    "streams.set": (lambda b, s, *a: _streams(b, s, "set", *a),
                    [arg(st.one_of(small, u32s)), arg(st.integers(0, 4)),
                     cfgs, arg(st.sampled_from([0, 32, 48, 64, 65]))]),
    "streams.get": (lambda b, s, *a: _streams(b, s, "get", *a), [arg(st.one_of(small, u32s))]),
    "streams.remove": (lambda b, s, *a: _streams(b, s, "remove", *a),
                       [arg(st.one_of(small, u32s))]),
    "streams.clear": (lambda b, s: _streams(b, s, "clear"), []),
    "stream_batch": (lambda b, s, m, strs, sids, iv, op, sts, tlb, w:
                     b.stream_batch(m, strs, sids, iv, op, sts, tlb=tlb, write=w),
                     [obj("mem"),
                      obj("streams"), bufs("I", small),
                      bufs("Q", addrs), out_bufs("Q"), out_bufs("i"),
                      tlbs, flags]),
    "TableAllocator": (lambda b, s, m, base, size: TableAllocator(m, base, size),
                       [obj("mem"), arg(addrs), arg(sizes)]),
    "alloc.alloc": (lambda b, s, *a: s["alloc"].alloc(*a),
                    [arg(st.sampled_from([4096, 64, 8192, 3, 0, 2**40]))]),
    "pt.map": (lambda b, s, *a: s["pt"].map(*a),
               [arg(st.one_of(st.integers(0, 64).map(lambda x: x << 12), addrs)),
                arg(st.one_of(st.integers(0, 15).map(lambda x: RAM + (x << 12)), addrs)),
                arg(st.one_of(st.integers(1, 4).map(lambda x: x << 12), sizes)),
                arg(st.integers(0, 63))]),
    "pt.unmap": (lambda b, s, *a: s["pt"].unmap(*a),
                 [arg(st.one_of(st.integers(0, 64).map(lambda x: x << 12), addrs)),
                  arg(st.one_of(st.integers(1, 4).map(lambda x: x << 12), sizes))]),
    "pt.iova_to_phys": (lambda b, s, *a: s["pt"].iova_to_phys(*a),
                        [arg(st.one_of(st.integers(0, 2**20), st.just(MAPPED + 5), addrs))]),
    "IoPgtable": (lambda b, s, m, fmt, g, ias, oas: IoPgtable(m, s["alloc"], fmt, g, ias, oas),
                  [obj("mem"),
                   st.sampled_from(["s1", "s2"]),
                   arg(st.sampled_from([4096, 16384, 8192])), arg(st.integers(24, 49)),
                   arg(st.sampled_from([40, 48, 41]))]),
    "ipa.read": (lambda b, s, *a: s["ipa"].read(*a), [arg(ipas), arg(sizes)]),
    "ipa.is_ram": (lambda b, s, *a: s["ipa"].is_ram(*a), [arg(ipas), arg(sizes)]),
    "ipa.write": (lambda b, s, *a: s["ipa"].write(*a), [arg(ipas), st.one_of(
        st.binary(max_size=24), st.lists(st.integers(0, 255), max_size=4))]),
    "ipa.read_u64": (lambda b, s, *a: s["ipa"].read_u64(*a), [arg(ipas)]),
    "ipa.write_u64": (lambda b, s, *a: s["ipa"].write_u64(*a), [arg(ipas), arg(u64s)]),
    "ipa.write_u32": (lambda b, s, *a: s["ipa"].write_u32(*a),
                      [arg(ipas), arg(st.one_of(u32s, u64s))]),
    "IpaView": (lambda b, s, m, t: IpaView(m, t), [obj("mem"), obj("s2pt")]),
    "status_fault": (lambda b, s, *a: status_fault(*a),
                     [arg(st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(
                         [0, -2, 1, 2, common.STATUS_FAULT | 0x1311,
                          common.STATUS_FAULT, common.STATUS_FAULT | 6, 2**31, 2**40])))]),
}


def build(b: Any) -> dict[str, Any]:
    """Fresh objects of backend ``b``: RAM with stage-1 tables, a table, an IOTLB, streams."""
    s: dict[str, Any] = {}
    m = s["mem"] = b.Memory()
    m.add_ram(RAM, RAM_SIZE)
    m.add_ram(RAM2, RAM2_SIZE)
    alloc = s["alloc"] = TableAllocator(m, POOL, 0x8000)
    pt = s["pt"] = IoPgtable(m, alloc, "s1", 4096, 32, 40)
    pt.map(MAPPED, RAM, 0x4000, Prot.READ | Prot.WRITE)
    s2pt = s["s2pt"] = IoPgtable(m, alloc, "s2", 4096, 32, 40)
    s2pt.map(0, RAM, 0x8000, Prot.READ | Prot.WRITE)           # IPA [0, 32K) -> RAM
    s["ipa"] = IpaView(m, s2pt)
    s["tlb"] = b.Iotlb(4)
    t = s["table"] = b.MsiTable()
    t.set(1, 0, MAPPED, 12)
    t.set(2, 3, 0xFFFF_0000, 0)
    st_ = s["streams"] = b.Streams()
    st_.set(1, common.STREAM_TRANSLATE, CFGS["cfg_s1"])
    st_.set(2, common.STREAM_BYPASS)
    return s


_S1 = Stage1(ttb0=POOL, tsz0=32, ips=40)
CFGS = {
    "cfg_s1": XlateConfig(_S1, asid=1, vmid=1),
    "cfg_s2": XlateConfig(None, Stage2(RAM, 32, 1, ps=40), vmid=2),
    "cfg_nested": XlateConfig(_S1, Stage2(RAM, 32, 1, ps=40), asid=3, vmid=3),
}


def resolve(v: Any, s: dict[str, Any], other: dict[str, Any]) -> Any:
    if isinstance(v, Ref):
        if v.name.startswith("other_"):
            return other[v.name[6:]]
        return CFGS[v.name] if v.name in CFGS else s[v.name]
    if isinstance(v, Buf):
        return v.make()
    return v


def norm(v: Any) -> Any:
    """A comparable form of a return value (type included)."""
    if v is None or isinstance(v, (bool, int, bytes, float, str)):
        return (type(v).__name__, v)
    if isinstance(v, (tuple, list)):
        return (type(v).__name__, [norm(x) for x in v])
    if isinstance(v, (Stage1, Stage2, XlateConfig)):
        return repr(v)
    if hasattr(v, "capacity"):                      # a new Iotlb
        return ("Iotlb", v.capacity, len(v))
    return type(v).__name__


def snapshot(s: dict[str, Any]) -> Any:
    m, t, tlb, strs = s["mem"], s["table"], s["tlb"], s["streams"]
    return (m.regions, m.pages_allocated, m.read(RAM, RAM_SIZE), m.read(RAM2, RAM2_SIZE),
            len(t), t.items(), len(tlb), tlb.entries(), tlb.hits, tlb.misses, tlb.inserts,
            tlb.evictions, tlb.capacity, len(strs), [strs.get(k) for k in range(8)],
            s["alloc"].in_use, s["alloc"]._next)


def call(fn: Any, b: Any, s: dict[str, Any], args: list[Any]) -> tuple:
    try:
        out = ("ok", norm(fn(b, s, *args)))
    except Exception as e:  # the exception class is the behaviour compared
        out = ("raise", type(e).__name__, getattr(e, "errno", None))
        assert isinstance(e, ALLOWED), f"{type(e).__name__}: {e}"
    return out


@st.composite
def ops(draw: Any) -> tuple[str, tuple]:
    """One call: valid arguments, then up to three of them replaced by garbage."""
    name = draw(st.sampled_from(sorted(OPS)))
    args = [draw(a) for a in OPS[name][1]]
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3])) if args else 0):
        args[draw(st.integers(0, len(args) - 1))] = draw(garbage)
    return name, tuple(args)


def run(backends: Any, steps: list[tuple[str, tuple]]) -> None:
    states = [build(b) for b in backends]
    for name, args in steps:
        fn = OPS[name][0]
        outs, bufs_after = [], []
        for b, s, other in zip(backends, states, states[::-1], strict=True):
            real = [resolve(a, s, other) for a in args]
            outs.append(call(fn, b, s, real))
            bufs_after.append([bytes(memoryview(a).cast("B")) if isinstance(
                a, (array.array, np.ndarray)) else None for a in real])
        event(f"{name}: {outs[0][0]}{'' if outs[0][0] == 'ok' else ' ' + outs[0][1]}")
        assert outs[0] == outs[1], (name, args, outs)
        assert bufs_after[0] == bufs_after[1], (name, args)
        assert snapshot(states[0]) == snapshot(states[1]), (name, args)


# Each example is a few calls out of ~40 entry points: run four times the
# profile's examples (deep profile included) so that each gets a fair share.
@settings(max_examples=4 * settings().max_examples)
@given(steps=st.lists(ops(), min_size=1, max_size=6))
def test_backends_agree_on_any_arguments(backends, steps):
    run(backends, steps)


# -- explicit regressions: each case issue 8 reported, with the chosen rule ----

def outcome(backends: Any, name: str, *args: Any) -> tuple:
    """Run one call on both backends; assert they agree; return the C outcome."""
    states = [build(b) for b in backends]
    outs = []
    for b, s, other in zip(backends, states, states[::-1], strict=True):
        outs.append(call(OPS[name][0], b, s, [resolve(a, s, other) for a in args]))
    assert outs[0] == outs[1], outs
    assert snapshot(states[0]) == snapshot(states[1])
    return outs[0]


def raised(cls: type) -> tuple:
    return ("raise", cls.__name__, getattr(cls, "errno", None) if cls is not errors.BusError
            else errno.EFAULT)


@pytest.mark.parametrize("value", [np.uint64(RAM), np.int32(RAM), np.int64(RAM), Index(RAM)])
def test_integer_like_arguments_are_integers(backends, value):
    """Anything with __index__ (numpy integers, Index) is taken as the integer."""
    assert outcome(backends, "mem.read", value, 8) == ("ok", ("bytes", bytes(8)))
    assert outcome(backends, "table.get", Index(1), np.uint32(0)) == (
        "ok", ("tuple", [("int", MAPPED), ("int", 12)]))


@pytest.mark.parametrize("value", [True, False, 1.0, np.float64(1.0), IntOnly(RAM),
                                   Fraction(RAM, 1), np.bool_(True), None, "0x10000",
                                   object()])
def test_non_integers_are_type_errors(backends, value):
    for name, args in (("mem.read", (value, 8)), ("mem.read", (RAM, value)),
                       ("mem.write_u64", (RAM, value)), ("table.set", (1, 1, value, 12)),
                       ("streams.set", (3, common.STREAM_BYPASS, None, value)),
                       ("streams.set", (3, value, None, 0)),
                       ("walk", (Ref("mem"), value, False, None, None, Ref("cfg_s1"))),
                       ("translate", (Ref("mem"), value, False, Ref("cfg_s1"), Ref("tlb"),
                                      None, None)),
                       ("table.reserve", (value,)), ("mem.is_ram", (value, 1))):
        assert outcome(backends, name, *args) == raised(TypeError), (name, args)


@pytest.mark.parametrize("value", [-1, U64, 2**70, np.int32(-1), Index(-1)])
def test_out_of_range_integers_are_invalid(backends, value):
    for name, args in (("mem.read_u64", (value,)), ("mem.is_ram", (value, 1)),
                       ("mem.is_ram", (RAM, value)), ("table.compose", (1, 0, value)),
                       ("streams.remove", (value,)),
                       ("translate", (Ref("mem"), value, False, Ref("cfg_s1"), None, None,
                                      None))):
        assert outcome(backends, name, *args) == raised(errors.InvalidArgument), (name, args)


@pytest.mark.parametrize("name,args", [
    ("walk", (Ref("mem"), MAPPED, False, None, None, Stage1())),
    ("walk", (Ref("other_mem"), MAPPED, False, None, None, Ref("cfg_s1"))),
    ("translate", (Ref("mem"), MAPPED, False, Ref("cfg_s1"), Ref("other_tlb"), None, None)),
    ("translate", (Ref("mem"), MAPPED, False, Ref("cfg_s1"), Ref("table"), None, None)),
    ("translate", (Ref("mem"), MAPPED, False, "cfg", None, None, None)),
    ("translate", (object(), MAPPED, False, Ref("cfg_s1"), None, None, None)),
    ("translate_batch", (Ref("mem"), Ref("cfg_s1"), Buf("Q", [MAPPED]), Buf("Q", [0]),
                         Buf("i", [0]), Ref("other_tlb"), False)),
    ("msi_batch", (Ref("mem"), Ref("mem"), Ref("cfg_s1"), 0, Buf("I", [1]), Buf("I", [0]),
                   Buf("Q", [0]), Buf("Q", [0]), Buf("i", [0]), None)),
    ("compose_batch", (Ref("streams"), 0, Buf("I", [1]), Buf("I", [0]), Buf("Q", [0]),
                       Buf("i", [0]))),
    ("stream_batch", (Ref("mem"), Ref("table"), Buf("I", [1]), Buf("Q", [0]), Buf("Q", [0]),
                      Buf("i", [0]), None, False)),
    ("streams.set", (3, common.STREAM_TRANSLATE, Stage1(), 0)),
    ("XlateConfig", (Stage2(0, 24, 1), None, 0, 0)),
    ("TableAllocator", (None, POOL, 0x1000)),
])
def test_wrong_object_types_are_type_errors(backends, name, args):
    """A cfg / tlb / mem / table / streams of the wrong type: TypeError, never AttributeError."""
    assert outcome(backends, name, *args) == raised(TypeError)


def test_arguments_are_checked_in_signature_order(backends):
    # The first bad argument decides, whatever the later ones are.
    assert outcome(backends, "table.set", -1, 1.5, 0, 12) == raised(errors.InvalidArgument)
    assert outcome(backends, "table.set", 1.5, -1, 0, 12) == raised(TypeError)
    # Each argument is checked whole (type, then range) before the next one.
    assert outcome(backends, "table.set", 1, 0x1_0000, 0, 1.5) == raised(errors.InvalidArgument)
    assert outcome(backends, "table.set", 1, 0xFFFF, 0, 1.5) == raised(TypeError)
    assert outcome(backends, "mem.read", -1, "x") == raised(errors.InvalidArgument)
    assert outcome(backends, "mem.read", "x", -1) == raised(TypeError)
    assert outcome(backends, "mem.read", 0, 2**63) == raised(errors.InvalidArgument)
    assert outcome(backends, "mem.write_u32", U64, 1.5) == raised(errors.InvalidArgument)
    assert outcome(backends, "translate", Ref("mem"), -1, False, Ref("cfg_s1"), "tlb", None,
                   None) == raised(errors.InvalidArgument)
    assert outcome(backends, "translate", Ref("mem"), MAPPED, False, Ref("cfg_s1"), "tlb",
                   Stage1(), None) == raised(TypeError)
    assert outcome(backends, "walk", Ref("mem"), MAPPED, False, Stage1(), None,
                   Ref("cfg_s1")) == raised(errors.InvalidArgument)   # both cfg and s1
    assert outcome(backends, "msi_batch", Ref("table"), Ref("mem"), Ref("cfg_s1"), -1,
                   "devs", Buf("I", [0]), Buf("Q", [0]), Buf("Q", [0]), Buf("i", [0]),
                   "tlb") == raised(errors.InvalidArgument)
    assert outcome(backends, "streams.set", 3, 9, "cfg", 1.5) == raised(errors.InvalidArgument)
    assert outcome(backends, "streams.set", 3, common.STREAM_TRANSLATE, None,
                   1.5) == raised(TypeError)
    assert outcome(backends, "streams.set", 3, common.STREAM_TRANSLATE, None,
                   0) == raised(errors.InvalidArgument)


@pytest.mark.parametrize("size", [2**30 + 1, 2**40, 2**63, U64 - 1])
def test_huge_reads_fail_before_allocating(backends, size):
    """Above MAX_ACCESS a read is InvalidArgument, even inside (huge) RAM."""
    assert outcome(backends, "mem.read", RAM, size) == raised(errors.InvalidArgument)
    for b in backends:
        m = b.Memory()
        m.add_ram(1 << 62, 1 << 62)
        with pytest.raises(errors.InvalidArgument):
            m.read(1 << 62, size)
        assert m.pages_allocated == 0
    assert core.MAX_ACCESS == 2**30 and core.MSI_RESERVE_MAX == 2**24


@pytest.mark.parametrize("n", [2**24 + 1, 2**40, 2**62, U64 - 1])
def test_huge_reserve_is_out_of_memory_and_changes_nothing(backends, n):
    assert outcome(backends, "table.reserve", n) == raised(errors.OutOfMemory)
    for b in backends:
        t = b.MsiTable()
        t.set(7, 1, 0x8000_0000, 12)
        with pytest.raises(errors.OutOfMemory) as e:
            t.reserve(n)
        assert e.value.errno == errno.ENOMEM
        assert t.items() == [(7, 1, 0x8000_0000, 12)] and len(t) == 1
        t.set(7, 2, 0x8000_1000, 12)
        assert t.compose(7, 2, 0x0809_0040) == 0x8000_1040


def test_reserve_up_to_the_limit_works(backends):
    assert outcome(backends, "table.reserve", 2**24) == ("ok", ("NoneType", None))


def test_is_ram_follows_the_integer_rule(backends):
    assert outcome(backends, "mem.is_ram", RAM, 0) == ("ok", ("bool", True))
    assert outcome(backends, "mem.is_ram", U64 - 1, 2) == ("ok", ("bool", False))
    assert outcome(backends, "mem.is_ram", Index(RAM), np.uint64(8)) == ("ok", ("bool", True))
    assert outcome(backends, "mem.is_ram", RAM, -1) == raised(errors.InvalidArgument)
    assert outcome(backends, "mem.is_ram", 2.0, 1) == raised(TypeError)


def test_streams_set_with_floats(backends):
    assert outcome(backends, "streams.set", 3.0, common.STREAM_BYPASS, None,
                   0) == raised(TypeError)
    assert outcome(backends, "streams.set", 3, float(common.STREAM_BYPASS), None,
                   0) == raised(TypeError)
    assert outcome(backends, "streams.get", 1.0) == raised(TypeError)
    assert outcome(backends, "streams.set", 3, common.STREAM_BYPASS, None,
                   Index(48)) == ("ok", ("NoneType", None))


def test_write_takes_bytes_like_data_only(backends):
    assert outcome(backends, "mem.write", RAM, bytearray(b"ab")) == ("ok", ("NoneType", None))
    assert outcome(backends, "mem.write", RAM, 2**40) == raised(TypeError)
    assert outcome(backends, "mem.write", RAM, [1, 2]) == raised(TypeError)
    assert outcome(backends, "mem.write", RAM, "ab") == raised(TypeError)


def test_status_helpers_follow_the_integer_rule():
    assert status_fault(np.int32(common.STATUS_FAULT | 0x0211)).level == 2
    with pytest.raises(TypeError):
        status_fault(1.5)
    with pytest.raises(errors.InvalidArgument):
        status_fault(2**31)
    with pytest.raises(errors.InvalidArgument):
        status_fault(common.STATUS_FAULT | 6)       # no fault kind 6
    assert status_fault(encode_status(None)) is None


@example(steps=[("mem.read", (RAM, 2**63))])
@example(steps=[("table.reserve", (2**62,))])
@example(steps=[("streams.set", (1, 1.0, None, 0))])
@example(steps=[("mem.is_ram", (-1, np.float64(2)))])
@example(steps=[("translate", (Ref("mem"), MAPPED, True, Ref("cfg_s1"), Ref("other_tlb"), None,
                               None))])
@example(steps=[("table.set", (True, np.uint64(1), Index(MAPPED), np.int32(12)))])
@example(steps=[("table.set", (Index(1), np.uint64(1), Index(MAPPED), np.int32(12))),
                ("table.compose", (1, 1, 0x0809_0040))])
@settings(phases=[Phase.explicit])
@given(steps=st.lists(ops(), min_size=1, max_size=2))
def test_regressions_through_the_fuzzer(backends, steps):
    """The issue's cases as fuzzer inputs (only these examples run)."""
    run(backends, steps)
