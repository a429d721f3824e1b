"""Errors read the same on both backends: for every entry point of ``pymsi.core`` (each
function and each public method, found by introspection so that a new one cannot be
missed), called with valid arguments of which some are replaced by values of the wrong
type or out of range, the C backend raises the same exception class with the same
message text as the pure-Python twin (``addr must be an integer, not str``, never
cffi's wording), or returns the same value.

The three raw hot-path callables (``Memory.ram_checker()``, ``Memory.bit_updater()``
and ``stream_translator()``'s result) are documented as doing no checks beyond the C
conversion: for them only the exception class is compared.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi import core
from pymsi.core import Stage1, Stage2, XlateConfig

from core_args import Buf, Ref

C, P = core.backend("c"), core.backend("python")
RAM, RAM_SIZE = 0x1_0000, 0x1_0000
U64 = 2**64

#: the objects a backend makes, and its functions
CLASSES = ("Memory", "Iotlb", "MsiTable", "Streams", "ItsCache", "ItsCmdq")
FUNCTIONS = ("walk", "translate", "compose_batch", "translate_batch", "msi_batch",
             "stream_batch", "stream_translator", "pending_batch", "its_lookup_batch",
             "msix_gather", "msi_router")


def entry_points() -> list[tuple[str, str | None]]:
    """(name, method) of every public entry point both backends have."""
    out: list[tuple[str, str | None]] = [(n, None) for n in CLASSES + FUNCTIONS]
    for cls in CLASSES:
        for m in dir(getattr(P, cls)):
            if not m.startswith("_") and callable(getattr(getattr(P, cls), m)) and \
                    hasattr(getattr(C, cls), m):
                out.append((cls, m))
    return out


def test_every_function_is_exported_by_both():
    names = {n for n in core.__all__ if callable(getattr(core, n))}
    shared = {"IoPgtable", "IpaView", "Prot", "TableAllocator", "Stage1", "Stage2",
              "XlateConfig", "Fault", "FaultKind", "TlbKind", "WalkResult", "backend",
              "encode_status", "status_fault"}          # one definition, no twin
    assert names - shared == set(CLASSES + FUNCTIONS)


# -- arguments -----------------------------------------------------------------------------


garbage = st.one_of(
    st.text(max_size=2), st.none(), st.floats(allow_nan=False), st.integers(max_value=-1),
    st.integers(min_value=U64, max_value=2**70), st.sampled_from([object(), b"x", [1], 1j]),
    st.sampled_from([Ref("Memory"), Ref("Iotlb"), Ref("MsiTable"), Ref("Streams"),
                     Ref("ItsCache"), Stage1(), XlateConfig(Stage1())]),
)
ints = st.one_of(st.integers(0, 8), st.integers(RAM - 8, RAM + RAM_SIZE + 8),
                 st.integers(0, U64 - 1), st.sampled_from([2**16, 2**32, U64 - 1]),
                 st.sampled_from([RAM, RAM + 0x1000, RAM + RAM_SIZE - 0x1000]))


def buf(draw_codes: str = "BIiQq") -> st.SearchStrategy:
    return st.builds(Buf, st.sampled_from(list(draw_codes)),
                     st.lists(st.integers(0, 127), max_size=6))


BY_NAME: dict[str, st.SearchStrategy] = {
    "mem": st.just(Ref("Memory")), "src": st.just(Ref("Memory")),
    "tlb": st.sampled_from([Ref("Iotlb"), None]), "table": st.just(Ref("MsiTable")),
    "streams": st.just(Ref("Streams")), "cache": st.just(Ref("ItsCache")),
    "itc": st.sampled_from([Ref("ItsCache"), None]),
    "cfg": st.sampled_from([XlateConfig(Stage1(ttb0=RAM, tsz0=32, ips=40), asid=1),
                            XlateConfig(None, Stage2(RAM, 32, 1, ps=40), vmid=2), None]),
    "s1": st.sampled_from([None, Stage1(epd0=True)]),
    "s2": st.sampled_from([None, Stage2(0, 24, 1)]),
    "write": st.booleans(), "masked_all": st.booleans(), "stage1_only": st.booleans(),
    "value": st.one_of(st.none(), st.booleans(), ints), "data": st.binary(max_size=9),
    "wrap": st.none(), "unresolved": st.none(),
    "size": st.one_of(st.integers(0, 16), st.sampled_from([0x1000, 0x2000, 2**30, 2**40])),
    "base": st.one_of(st.sampled_from([RAM, RAM + 0x1000, RAM + RAM_SIZE, 0x4000_0000]), ints),
    "bit": st.integers(0, 9), "shift": st.integers(0, 65), "mode": st.integers(0, 4),
    "capacity": st.one_of(st.integers(0, 8), st.just(2**40)), "n": st.integers(0, 300),
    "nvec": st.integers(0, 4),
}
BUFFERS = ("devs", "idx", "out_addr", "status", "iovas", "out_pa", "sids", "tables",
           "intids", "old", "events", "limits", "grouped", "counts", "vectors", "addrs",
           "datas")


def valid(name: str, function: str) -> st.SearchStrategy:
    if function == "msix_gather" and name == "table":        # the MSI-X table's bytes
        return st.builds(Buf, st.just("bytearray"), st.lists(st.integers(0, 255),
                                                             max_size=64))
    if name in BY_NAME:
        return BY_NAME[name]
    if name in BUFFERS:
        return buf()
    return ints                   # addresses, IDs, indexes, ASIDs, VMIDs, ...


@st.composite
def calls(draw: Any) -> tuple[str, str | None, list[Any], dict[str, Any]]:
    name, method = draw(st.sampled_from(entry_points()))
    target = getattr(P, name) if method is None else getattr(getattr(P, name), method)
    params = [p for p in inspect.signature(target).parameters.values() if p.name != "self"]
    args, kw = [], {}
    for p in params:
        if p.default is not inspect.Parameter.empty and draw(st.booleans()):
            continue                                  # keep the default
        v = draw(valid(p.name, name))
        if p.default is inspect.Parameter.empty:
            args.append(v)
        else:
            kw[p.name] = v
    slots = len(args) + len(kw)
    for _ in range(draw(st.sampled_from([0, 1, 1, 2])) if slots else 0):
        i = draw(st.integers(0, slots - 1))
        if i < len(args):
            args[i] = draw(garbage)
        else:
            kw[list(kw)[i - len(args)]] = draw(garbage)
    return name, method, args, kw


def objects(b: Any) -> dict[str, Any]:
    m = b.Memory()
    m.add_ram(RAM, RAM_SIZE)
    t = b.MsiTable()
    t.set(1, 0, 0x1000, 12)
    return {"Memory": m, "Iotlb": b.Iotlb(4), "MsiTable": t, "Streams": b.Streams(),
            "ItsCache": b.ItsCache(), "ItsCmdq": b.ItsCmdq()}


def resolve(v: Any, objs: dict[str, Any]) -> Any:
    if isinstance(v, Ref):
        return objs[v.name]
    if isinstance(v, Buf):
        return v.make()
    return v


def outcome(b: Any, objs: dict[str, Any], name: str, method: str | None, args: list[Any],
            kw: dict[str, Any]) -> tuple:
    a = [resolve(v, objs) for v in args]
    k = {key: resolve(v, objs) for key, v in kw.items()}
    f = getattr(b, name) if method is None else getattr(objs[name], method)
    try:
        r = f(*a, **k)
    except Exception as e:  # the class and the text are what is compared
        return ("raise", type(e).__name__, str(e))
    if callable(r):
        return ("ok", "callable")
    if isinstance(r, (int, bytes, bool, type(None), tuple, list)):
        return ("ok", repr(r))
    return ("ok", type(r).__name__)


RAW = {("Memory", "ram_checker"), ("Memory", "bit_updater"), ("stream_translator", None)}


@settings(max_examples=4 * settings().max_examples)
@given(steps=st.lists(calls(), min_size=1, max_size=5))
def test_same_exception_class_and_text(steps):
    """A few calls on the same objects (errors that depend on state count too)."""
    objs = {C: objects(C), P: objects(P)}
    for name, method, args, kw in steps:
        c = outcome(C, objs[C], name, method, args, kw)
        p = outcome(P, objs[P], name, method, args, kw)
        assert c == p, (name, method, args, kw)
        if c[0] == "raise":
            assert "cdata" not in c[2] and "ctype" not in c[2] and \
                "initializer for" not in c[2]


RAW_CALLS = [
    ("Memory", "ram_checker", ("a", 1)), ("Memory", "ram_checker", (U64, 1)),
    ("Memory", "bit_updater", (None, 1, 0)), ("Memory", "bit_updater", (U64, 1, 0)),
    ("stream_translator", None, ("a", 1, True)), ("stream_translator", None, (1, U64, True)),
]


@pytest.mark.parametrize("name,method,args", RAW_CALLS)
def test_hot_path_callables_raise_the_same_class(name, method, args):
    def run(b):
        objs = objects(b)
        f = objs[name].__getattribute__(method)() if method else \
            b.stream_translator(objs["Memory"], objs["Streams"], objs["Iotlb"])
        try:
            f(*args)
        except Exception as e:  # the class is compared
            return type(e)
        return None

    assert run(C) is run(P) is not None


@pytest.mark.parametrize("call,text", [
    (lambda b, o: o["Memory"].read("0x10", 4), "addr must be an integer, not str"),
    (lambda b, o: o["Memory"].write_u32(RAM, 2**33),
     "value=0x200000000: must be in [0x0, 0xffffffff]"),
    (lambda b, o: b.walk(o["Memory"], 1.5), "iova must be an integer, not float"),
    (lambda b, o: o["Memory"].add_ram(RAM, 0x1000),
     f"add_ram({RAM:#x}, 0x1000) overlaps RAM at {RAM:#x} [EEXIST]"),
    (lambda b, o: o["ItsCache"].set(1, 2, "x", 0), "intid must be an integer, not str"),
])
def test_known_messages(call, text):
    """What the messages say, independently of either backend's code."""
    for b in (C, P):
        with pytest.raises(Exception) as e:
            call(b, objects(b))
        assert str(e.value) == text, b.NAME
