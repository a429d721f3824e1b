"""The VMM's layering (DESIGN.md section 3) and the system-call contract it is typed against.

The VMM (``pymsi.vmm``), the hardware models (``pymsi.hw``) and the core (``pymsi.core``)
never import the kernel model, not even lazily inside a function or under
``TYPE_CHECKING``, directly or through another module of the package: the VMM reaches
the host kernel only through system calls.  Its ``k`` is typed with
:class:`pymsi.uapi.syscalls.Syscalls`; mypy checks that the kernel model's ``Kernel``
(and its ``File``, and KVM's CPU in guest mode) satisfy those Protocols structurally,
and that a kernel lacking a call the VMM makes does not.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import pymsi

from typecheck import run_mypy

ROOT = Path(pymsi.__file__).resolve().parent.parent   # beside the package under test
PKG = ROOT / "pymsi"
#: the layers that must not reach the kernel model
LAYERS = ("pymsi/vmm/", "pymsi/hw/", "pymsi/core/")
KERNEL = "pymsi.kernel"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module of the package ``path`` imports anywhere: at module level, inside
    functions and classes, under ``if TYPE_CHECKING:`` or ``try:``, relative imports
    resolved, ``from a import b`` counting ``a`` and ``a.b``, and the string argument
    of ``importlib.import_module`` / ``__import__``."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)]
                name = ".".join(base + ([n.module] if n.module else []))
            else:
                name = n.module or ""
            found.add(name)
            found.update(f"{name}.{a.name}" for a in n.names)
        elif (isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant)
              and isinstance(n.args[0].value, str)
              and ((isinstance(n.func, ast.Attribute) and n.func.attr == "import_module")
                   or (isinstance(n.func, ast.Name)
                       and n.func.id in ("import_module", "__import__")))):
            found.add(n.args[0].value)
    return {m for m in found if m == "pymsi" or m.startswith("pymsi.")}


def _is_kernel(name: str) -> bool:
    return name == KERNEL or name.startswith(KERNEL + ".")


def kernel_imports() -> list[str]:
    """``"module -> ... -> pymsi.kernel.x"`` for each module of the VMM, hardware and core
    layers that reaches the kernel model, directly or through other modules of the
    package (importing ``a.b.c`` imports ``a`` and ``a.b`` too)."""
    graph = {_module(p): imports_of(p) for p in PKG.rglob("*.py")}
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(LAYERS):
            continue
        start = _module(path)
        came_from: dict[str, str | None] = {start: None}
        todo = [start]
        while todo:
            cur = todo.pop()
            for dep in sorted(graph.get(cur, ())):
                parts = dep.split(".")
                for i in range(1, len(parts) + 1):
                    step = ".".join(parts[:i])
                    if step not in came_from:
                        came_from[step] = cur
                        todo.append(step)
        hits = sorted(m for m in came_from if _is_kernel(m))
        if hits:
            chain, at = [], hits[0]
            while at is not None:
                chain.append(at)
                at = came_from[at]
            bad.append(" -> ".join(reversed(chain)))
    return bad


def test_vmm_hw_and_core_never_import_the_kernel_model() -> None:
    bad = kernel_imports()
    assert not bad, "the VMM / hw / core layers reach the kernel model:\n" + "\n".join(bad)


def test_the_layering_scan_sees_every_shape_of_import(tmp_path: Path) -> None:
    # the scan itself: each way of importing the kernel is reported, through a chain too
    probes = {
        PKG / "vmm" / "zz_probe_lazy.py":
            "def f():\n    from ..kernel import files\n    return files\n",
        PKG / "vmm" / "zz_probe_tc.py":
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pymsi.kernel.kernel import Kernel\n",
        PKG / "hw" / "zz_probe_importlib.py":
            "import importlib\nK = importlib.import_module('pymsi.kernel.files')\n",
        PKG / "core" / "zz_probe_pkg.py": "from .. import kernel\n",
        PKG / "zz_probe_mid.py": "import pymsi.kernel.iommu\n",
        PKG / "vmm" / "zz_probe_chain.py": "from .. import zz_probe_mid\n",
        PKG / "vmm" / "zz_probe_clean.py": "from ..uapi import kvm\n",
    }
    for path, src in probes.items():
        path.write_text(src)
    try:
        found = [b for b in kernel_imports() if "zz_probe" in b]
    finally:
        for path in probes:
            path.unlink()
    assert sorted(b.split(" -> ")[0] for b in found) == [
        "pymsi.core.zz_probe_pkg", "pymsi.hw.zz_probe_importlib", "pymsi.vmm.zz_probe_chain",
        "pymsi.vmm.zz_probe_lazy", "pymsi.vmm.zz_probe_tc"]
    chain = next(b for b in found if b.startswith("pymsi.vmm.zz_probe_chain"))
    assert chain.split(" -> ")[1] == "pymsi.zz_probe_mid"
    assert not any(b.startswith("pymsi.zz_probe_mid") for b in found)   # not a VMM layer


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for this module's checks (the package is analysed once)."""
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(tmp_path: Path, cache: Path, src: str) -> tuple[str, int]:
    f = tmp_path / "check_syscalls.py"
    f.write_text(textwrap.dedent(src))
    return run_mypy([f], cache)


def test_the_kernel_model_satisfies_the_vmms_system_call_protocols(
        tmp_path: Path, mypy_cache: Path) -> None:
    # the call a harness makes (machine/virtual.py's): the booted host Kernel as the VMM's k
    out, rc = _mypy(tmp_path, mypy_cache, """
        from pymsi.kernel.boot import boot_arm
        from pymsi.kernel.files import File
        from pymsi.kernel.kernel import Kernel
        from pymsi.kernel.kvm import GuestCpu
        from pymsi.machine import ArmVirt
        from pymsi.uapi.kvm import GuestModeCpu
        from pymsi.uapi.syscalls import OpenFile, Syscalls
        from pymsi.vmm.vmm import Vmm

        def host_vmm(m: ArmVirt) -> Vmm:
            k: Kernel = m.boot()
            return Vmm(k, m.ram)

        def guest_of(m: ArmVirt) -> Kernel:     # the board satisfies what boot_arm reads
            return Vmm(m.boot(), m.ram, kernel=boot_arm).boot_guest()

        def surface(k: Kernel, f: File, cpu: GuestCpu) -> tuple[Syscalls, OpenFile, GuestModeCpu]:
            return k, f, cpu
        """)
    assert rc == 0, out


def test_a_kernel_without_a_call_the_vmm_makes_is_refused(
        tmp_path: Path, mypy_cache: Path) -> None:
    # the check can fail: the Kernel with mmap(2) gone, and an open() returning no file
    out, rc = _mypy(tmp_path, mypy_cache, """
        from pymsi.kernel.kernel import Kernel
        from pymsi.uapi.syscalls import Syscalls

        class NoMmap(Kernel):
            mmap = None  # type: ignore[assignment]

        class OpenGivesInt(Kernel):
            def open(self, path: str, flags: int = 2) -> int:  # type: ignore[override]
                return 3

        def a(k: NoMmap) -> Syscalls:
            return k

        def b(k: OpenGivesInt) -> Syscalls:
            return k
        """)
    assert rc == 1, out
    assert ':13: error: Incompatible return value type (got "NoMmap", expected "Syscalls")' \
        in out, out
    assert ':16: error: Incompatible return value type (got "OpenGivesInt", ' \
        'expected "Syscalls")' in out, out
    assert out.count(": error:") == 2, out
