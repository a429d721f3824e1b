"""Backend selection with PYMSI_BACKEND, and the error when C is not built."""

from __future__ import annotations

import os
import subprocess
import sys


def run(code: str, backend: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYMSI_BACKEND", None)
    if backend is not None:
        env["PYMSI_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_default_is_c_and_python_can_be_chosen():
    show = "from pymsi import core; print(core.BACKEND, type(core.Memory()).__module__)"
    assert run(show, None).stdout.split() == ["c", "pymsi.core._cbackend"]
    assert run(show, "c").stdout.split() == ["c", "pymsi.core._cbackend"]
    assert run(show, "python").stdout.split() == ["python", "pymsi.core._pybackend"]


def test_missing_extension_says_how_to_build():
    code = "import sys; sys.modules['pymsi._core_c'] = None; from pymsi import core"
    r = run(code, "c")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "pip install" in r.stderr
    assert run(code, "python").returncode == 0   # the twin needs no extension


def test_unknown_backend_is_refused():
    r = run("from pymsi import core", "fortran")
    assert r.returncode != 0 and "unknown PYMSI_BACKEND" in r.stderr
