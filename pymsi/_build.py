"""cffi build script for the C core (out-of-line API mode).

setup.py names ``pymsi/_build.py:ffibuilder`` in ``cffi_modules``; the result
is the extension ``pymsi._core_c``.  The declarations handed to cffi are the
block of ``csrc/pymsi.h`` between the cdef markers, so the header is the
single description of the C API.

Extra compiler flags come from ``PYMSI_CFLAGS`` (CI adds ``-Werror``; the
sanitizer job adds ``-fsanitize=address,undefined``).

The extension also gets ``pymsi_csrc_hash()``: the fingerprint of the sources it was
built from (:mod:`pymsi._csrc`), so that a stale in-tree build is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path
from types import ModuleType

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def cdef_text() -> str:
    """The cffi declarations: the marked block of csrc/pymsi.h."""
    text = (CSRC / "pymsi.h").read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")]


def _csrc_module() -> ModuleType:
    """pymsi/_csrc.py, loaded by path (this script runs outside the package)."""
    spec = importlib.util.spec_from_file_location("_pymsi_csrc", Path(__file__).with_name(
        "_csrc.py"))
    assert spec is not None and spec.loader is not None     # a .py file that exists
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sources() -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in CSRC.glob("*.c"))


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.cdef("const char *pymsi_csrc_hash(void);")
_HASH = _csrc_module().csrc_hash(CSRC)
ffibuilder.set_source(
    "pymsi._core_c",
    '#include "pymsi.h"\n'
    f'const char *pymsi_csrc_hash(void) {{ return "{_HASH}"; }}\n',
    sources=_sources(),
    include_dirs=[os.path.relpath(CSRC, ROOT)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"]
    + shlex.split(os.environ.get("PYMSI_CFLAGS", "")),
    extra_link_args=shlex.split(os.environ.get("PYMSI_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
