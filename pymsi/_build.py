"""cffi build script for the C core (out-of-line API mode).

setup.py names ``pymsi/_build.py:ffibuilder`` in ``cffi_modules``; the result
is the extension ``pymsi._core_c``.  The declarations handed to cffi are the
block of ``csrc/pymsi.h`` between the cdef markers, so the header is the
single description of the C API.

Extra compiler flags come from ``PYMSI_CFLAGS`` (CI adds ``-Werror``; the
sanitizer job adds ``-fsanitize=address,undefined``).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def cdef_text() -> str:
    """The cffi declarations: the marked block of csrc/pymsi.h."""
    text = (CSRC / "pymsi.h").read_text()
    start = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    return text[start : text.index("/* cdef-end */")]


def _sources() -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in CSRC.glob("*.c"))


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "pymsi._core_c",
    '#include "pymsi.h"\n',
    sources=_sources(),
    include_dirs=[os.path.relpath(CSRC, ROOT)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"]
    + shlex.split(os.environ.get("PYMSI_CFLAGS", "")),
    extra_link_args=shlex.split(os.environ.get("PYMSI_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
