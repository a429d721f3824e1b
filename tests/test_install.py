"""Installing without a C compiler, and never using a stale in-tree build.

* A fresh venv installs the source tree with the compiler hidden (``CC`` and
  ``LDSHARED`` are /bin/false): the install succeeds without the extension, the
  package imports on the pure-Python twin with one warning saying so, and an explicit
  ``PYMSI_BACKEND=c`` fails with the build hint.
* A copy of the package beside its csrc/, with the extension built from those
  sources, uses C; once a C source changes, the build is stale: the default falls back
  to the twin (warning), ``PYMSI_BACKEND=c`` refuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOW = "from pymsi import core; print(core.BACKEND)"


def _env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYMSI_BACKEND", "PYTHONPATH")}
    env.update(kw)
    return env


def _copy_source(dst: Path) -> None:
    for name in ("pymsi", "csrc"):
        shutil.copytree(ROOT / name, dst / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)


def test_install_without_a_compiler(tmp_path):
    if not (ROOT / "setup.py").exists():
        pytest.skip("needs the source tree (setup.py), not an installed copy")
    src = tmp_path / "src"
    _copy_source(src)
    venv.create(tmp_path / "venv", with_pip=True)
    py = tmp_path / "venv" / "bin" / "python"
    r = subprocess.run([py, "-m", "pip", "install", "-q", str(src)], capture_output=True,
                       text=True, env=_env(CC="/bin/false", LDSHARED="/bin/false"))
    assert r.returncode == 0, r.stderr[-3000:]
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert not list(Path(site, "pymsi").glob("_core_c*")), "the extension was built"
    r = subprocess.run([py, "-c", SHOW], capture_output=True, text=True, env=_env(),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python"]
    lines = [ln for ln in r.stderr.splitlines() if "pure-Python core" in ln]
    assert len(lines) == 1 and "RuntimeWarning" in lines[0], r.stderr
    r = subprocess.run([py, "-c", "from pymsi.machine import VirtualMachine; "
                        "vm = VirtualMachine().boot(); vm.function(0).notify(0); vm.run(); "
                        "print(vm.endpoint(0).hits)"], capture_output=True, text=True,
                       env=_env(PYMSI_BACKEND="python"), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "[(0, 0)]", r.stderr
    assert "pure-Python core" not in r.stderr          # chosen: nothing to say
    r = subprocess.run([py, "-c", SHOW], capture_output=True, text=True,
                       env=_env(PYMSI_BACKEND="c"), cwd=tmp_path)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "pip install" in r.stderr and \
        "C compiler" in r.stderr


def test_stale_in_tree_build_is_never_used(tmp_path):
    built = sorted((ROOT / "pymsi").glob("_core_c*.so"))
    if not built or not (ROOT / "csrc").is_dir():
        pytest.skip("needs an in-tree build (pip install -e .)")
    _copy_source(tmp_path)
    shutil.copy(built[0], tmp_path / "pymsi" / built[0].name)

    def show(backend: str | None) -> subprocess.CompletedProcess:
        env = _env(PYTHONPATH=str(tmp_path))
        if backend is not None:
            env["PYMSI_BACKEND"] = backend
        return subprocess.run([sys.executable, "-c", SHOW + "; print(core.__file__)"],
                              capture_output=True, text=True, env=env, cwd=tmp_path)

    r = show(None)
    assert r.stdout.split()[0] == "c", r.stderr          # built from these very sources
    assert r.stdout.split()[1].startswith(str(tmp_path))
    assert "pure-Python" not in r.stderr
    with open(tmp_path / "csrc" / "its.c", "a") as f:
        f.write("\n/* changed after the build */\n")
    r = show(None)
    assert r.returncode == 0 and r.stdout.split()[0] == "python"
    assert "stale build" in r.stderr and "RuntimeWarning" in r.stderr
    r = show("c")
    assert r.returncode != 0 and "stale build" in r.stderr and "pip install" in r.stderr
