"""The two core backends have the same public signatures (issue 12).

A user switches ``PYMSI_BACKEND`` without touching code, and ``help()`` and a type checker
read the signatures: every function and every public method of every class that
``pymsi.core`` takes from its backend must have the same ``inspect.signature`` text
(parameters, defaults, annotations) in ``backend("c")`` and ``backend("python")``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable

import pytest

from pymsi import core

_DUNDERS = ("__init__", "__call__", "__len__", "__repr__", "__iter__", "__contains__")


def _public(name: str) -> bool:
    return not name.startswith("_") or name in _DUNDERS


def signatures(mod: types.ModuleType, name: str) -> dict[str, str]:
    """``{qualified name: signature text}`` of ``mod.name`` and, for a class, of each of
    its public methods and properties (its own and inherited, up to ``object``)."""
    obj = getattr(mod, name)
    if not inspect.isclass(obj):
        return {name: str(inspect.signature(obj))} if callable(obj) else {name: repr(obj)}
    out = {name: str(inspect.signature(obj))}
    for klass in obj.__mro__:
        if klass.__module__ == "builtins":
            continue
        for attr, v in vars(klass).items():
            key = f"{name}.{attr}"
            if not _public(attr) or key in out:
                continue
            if isinstance(v, property):
                v = v.fget
            if isinstance(v, (staticmethod, classmethod)):
                v = v.__func__
            if callable(v):
                out[key] = str(inspect.signature(v))
    return out


def backend_names() -> list[str]:
    """The names of ``pymsi.core.__all__`` that each backend defines itself (not those
    both import from ``pymsi.core.common``)."""
    py = core.backend("python")
    return [n for n in core.__all__
            if getattr(vars(py).get(n), "__module__", None) == py.__name__]


def differences(a: types.ModuleType, b: types.ModuleType,
                names: list[str]) -> list[str]:
    out = []
    for name in names:
        sa, sb = signatures(a, name), signatures(b, name)
        for key in sorted(sa.keys() | sb.keys()):
            if sa.get(key) != sb.get(key):
                out.append(f"{key}:\n  {a.__name__}: {sa.get(key)}\n  {b.__name__}: "
                           f"{sb.get(key)}")
    return out


def test_the_backends_export_the_same_names() -> None:
    c = core.backend("c")
    names = backend_names()
    assert len(names) > 15            # Memory, Iotlb, ..., walk, translate, the batches
    assert [n for n in names if getattr(vars(c).get(n), "__module__", None) != c.__name__] == []


def test_the_backends_have_identical_signatures() -> None:
    bad = differences(core.backend("c"), core.backend("python"), backend_names())
    assert not bad, "signatures differ between the backends:\n" + "\n".join(bad)


def _module(**defs: Callable[..., object]) -> types.ModuleType:
    m = types.ModuleType("probe")
    vars(m).update(defs)
    return m


def test_a_difference_is_seen() -> None:
    # the comparison itself: a default, an annotation, a method, a parameter name
    def f(a: int, b: int = 1) -> int: ...
    def g(a: int, b: int = 2) -> int: ...
    def h(a: int, b: object = 1) -> int: ...
    def k(a: int, c: int = 1) -> int: ...

    class A:
        def m(self) -> None: ...

    class B:
        def m(self) -> None: ...
        def extra(self) -> None: ...

    base = _module(f=f, A=A)
    assert differences(base, _module(f=f, A=A), ["f", "A"]) == []
    for other in (g, h, k):
        assert len(differences(base, _module(f=other, A=A), ["f"])) == 1, other
    found = differences(base, _module(f=f, A=B), ["A"])
    assert len(found) == 1 and found[0].startswith("A.extra:")


@pytest.mark.parametrize("name", ["walk", "translate", "stream_translator", "msi_router",
                                  "Memory.ram_checker", "ItsCmdq.configure"])
def test_the_scan_reaches_each_kind_of_name(name: str) -> None:
    py = core.backend("python")
    found = {k for n in backend_names() for k in signatures(py, n)}
    assert name in found


@pytest.mark.parametrize("name", ["c", "python"])
def test_iotlb_counters_are_read_only_and_count(name: str) -> None:
    # both backends: properties (the twin's were plain attributes, writable)
    b = core.backend(name)
    mem = b.Memory()
    mem.add_ram(0x1000, 0x1000)
    tlb = b.Iotlb(8)
    assert (tlb.capacity, tlb.hits, tlb.misses, tlb.inserts, tlb.evictions) == (8, 0, 0, 0, 0)
    for attr in ("capacity", "hits", "misses", "inserts", "evictions"):
        with pytest.raises(AttributeError):
            setattr(tlb, attr, 5)
    cfg = core.XlateConfig(s2=core.Stage2(vttb=0x1000, tsz=32, sl0=1))
    for _ in range(2):                  # an empty table: a fault each time, nothing cached
        assert b.translate(mem, 0x2000, False, cfg, tlb).fault is not None
    assert (tlb.hits, tlb.misses, tlb.inserts) == (0, 2, 0)


# -- the annotations, as a type checker reads them ----------------------------------------

_USER = '''
from pymsi.core import IpaView, IoPgtable, WalkResult
from pymsi.core._cbackend import Memory as CMemory
from pymsi.core._pybackend import Memory as PyMemory, Streams, stream_translator, msi_router
from pymsi.core._pybackend import ItsCache
from pymsi.hw.bus import Bus
from pymsi.hw.gicv3 import Gicv3
from pymsi.hw.its import GicV3Its
from pymsi.hw.smmuv3 import SMMUv3
from pymsi.hw.x86 import X86MsiController
import array
from pymsi import core

def good(c: CMemory, p: PyMemory, v: IpaView, pt: IoPgtable) -> None:
    for m in (c, p, v):
        Gicv3(m)
        SMMUv3(m)
        X86MsiController(m)
    bus = Bus(c)
    Bus(p)
    bus.attach_iommu(0, 0xFFFF, SMMUv3(p))
    GicV3Its(Gicv3(p), p)
    bus.dma_write_batch(0, array.array("Q", [1]), [2])
    pt.stage1_config(ips=40, tbi1=True)
    f = stream_translator(p, Streams(), wrap=str)
    r = f(1, 2, True)
    x: WalkResult | str | None = r
    fire, last = msi_router(f, p, ItsCache(), p, array.array("I"), array.array("Q"))
    y: int = fire(1, 2, 3, 4, 5)
    z: WalkResult | str | None = last()
    m = core.Memory()                               # whichever backend runs
    Bus(m).attach_iommu(0, 1, SMMUv3(m))
    w: WalkResult = core.translate(m, 0, False, core.XlateConfig(s2=pt.stage2_config()))

def bad(p: PyMemory, bus: Bus, pt: IoPgtable) -> None:
    Bus(object())                                   # E1: not a memory
    bus.attach_iommu(0, 1, object())                # E2: not an IOMMU
    bus.map(0, 4096, object())                      # E3: not an MMIO model
    SMMUv3(p).translate_batch(1, 2, 3, 4)           # E4-E7: not buffers
    pt.stage1_config(ipss=40)                       # E8: no such field
    f = stream_translator(p, Streams())
    s: str = f(1, 2, True)                          # E9: a WalkResult or None
    core.Memory().read("0", 4)                      # E10: an address is an int
'''


def test_a_type_checker_accepts_the_real_objects_and_refuses_others(tmp_path) -> None:
    from typecheck import run_mypy

    user = tmp_path / "user.py"
    user.write_text(_USER)
    out, rc = run_mypy([user], tmp_path)
    assert rc == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = _USER.splitlines()
    where = sorted({int(e.split(":")[1]) for e in errors})
    assert all("# E" in lines[n - 1] for n in where), out   # none in good()
    assert len(where) == 7 and len(errors) == 10, out
