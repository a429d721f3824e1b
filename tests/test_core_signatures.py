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
    c, py = core.backend("c"), core.backend("python")
    names = backend_names()
    assert len(names) > 15            # Memory, Iotlb, ..., walk, translate, the batches
    assert [n for n in names if not hasattr(c, n)] == []


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
    for other, name in ((g, "f"), (h, "f"), (k, "f")):
        assert len(differences(base, _module(f=other, A=A), ["f"])) == 1, other
    found = differences(base, _module(f=f, A=B), ["A"])
    assert len(found) == 1 and found[0].startswith("A.extra:")


@pytest.mark.parametrize("name", ["walk", "translate", "stream_translator", "msi_router",
                                  "Memory.ram_checker", "ItsCmdq.configure"])
def test_the_scan_reaches_each_kind_of_name(name: str) -> None:
    py = core.backend("python")
    found = {k for n in backend_names() for k in signatures(py, n)}
    assert name in found
