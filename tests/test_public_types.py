"""No ``Any`` on a public signature where a real type exists (issue 12).

Every public function and method of the package (a public module, or a name the core's two
backends export through ``pymsi.core``; a public class; a name without a leading underscore,
plus ``__init__`` and ``__call__``) is read from the source, and each parameter and return
annotation that mentions ``Any`` must be in ``ALLOWED`` with the reason no real type exists.
An argument a function checks itself is typed ``object`` (it really takes any value), a
buffer is ``Buffer``, a duck type is a Protocol.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pymsi

PKG = Path(pymsi.__file__).resolve().parent        # the package under test (a checkout, or
                                                    # the sanitizer's installed copy)

#: "module:qualname:parameter" (or ":return") -> why no real type exists; one table per area.

#: pymsi.core and pymsi.hw
ALLOWED_CORE_HW: dict[str, str] = {
}


#: pymsi.kernel: the iommu side (iommu core, iommufd, vfio-pci, files, SMMU/VT-d drivers)
ALLOWED_KERNEL_IOMMU: dict[str, str] = {
}


#: pymsi.kernel: the interrupt side (genirq, MSI, GIC/ITS, KVM, PCI), machine, tools
ALLOWED_KERNEL_IRQ: dict[str, str] = {
}


#: pymsi.vmm, pymsi.vmmlib, pymsi.testing, pymsi.uapi
ALLOWED_VMM: dict[str, str] = {
}


ALLOWED = {**ALLOWED_CORE_HW, **ALLOWED_KERNEL_IOMMU, **ALLOWED_KERNEL_IRQ, **ALLOWED_VMM}

_ANY = re.compile(r"\bAny\b")
_PRIVATE_BUT_EXPORTED = {"core/_cbackend.py", "core/_pybackend.py"}


def _public_module(rel: str) -> bool:
    if rel in _PRIVATE_BUT_EXPORTED:
        return True
    return not any(part.startswith("_") and part not in ("__init__.py", "__main__.py")
                   for part in rel.split("/"))


def _public_name(name: str) -> bool:
    return not name.startswith("_") or name in ("__init__", "__call__")


def any_annotations() -> list[str]:
    """Every "module:qualname:parameter" (":return" for the result) whose annotation
    mentions Any, over the package's public signatures."""
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if not _public_module(rel):
            continue
        mod = rel[:-3].replace("/", ".")

        def visit(node: ast.AST, prefix: str, mod: str = mod) -> None:
            for n in ast.iter_child_nodes(node):
                if isinstance(n, ast.ClassDef) and _public_name(n.name):
                    visit(n, f"{prefix}{n.name}.")
                elif (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and _public_name(n.name)):
                    a = n.args
                    params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                    params += [p for p in (a.vararg, a.kwarg) if p is not None]
                    for p in params:
                        if p.annotation is not None and _ANY.search(ast.unparse(p.annotation)):
                            found.append(f"{mod}:{prefix}{n.name}:{p.arg}")
                    if n.returns is not None and _ANY.search(ast.unparse(n.returns)):
                        found.append(f"{mod}:{prefix}{n.name}:return")
                elif isinstance(n, (ast.If, ast.Try)):
                    visit(n, prefix)            # definitions under TYPE_CHECKING / fallbacks

        visit(ast.parse(path.read_text()), "")
    return found


def test_no_any_on_public_signatures() -> None:
    bad = [f for f in any_annotations() if f not in ALLOWED]
    assert not bad, (f"{len(bad)} public parameters or results typed Any where a real type "
                     "exists (type them, or add them to ALLOWED with the reason):\n"
                     + "\n".join(bad))


def test_every_allowed_entry_is_still_there() -> None:
    found = set(any_annotations())
    stale = sorted(k for k in ALLOWED if k not in found)
    assert not stale, f"ALLOWED entries no longer typed Any (remove them): {stale}"


def test_the_scan_sees_a_public_any() -> None:
    # the scanner itself: a known shape of each kind is reported, a private one is not
    src = ("from typing import Any\n"
           "class C:\n    def f(self, x: Any, *a: Any) -> list[Any]: ...\n"
           "    def _g(self, y: Any) -> None: ...\n"
           "def h(z: int, **kw: Any) -> None: ...\n")
    tmp = PKG / "zz_scan_probe.py"
    tmp.write_text(src)
    try:
        found = [f for f in any_annotations() if f.startswith("zz_scan_probe:")]
    finally:
        tmp.unlink()
    assert sorted(found) == ["zz_scan_probe:C.f:a", "zz_scan_probe:C.f:return",
                             "zz_scan_probe:C.f:x", "zz_scan_probe:h:kw"]
