"""mypy, as the tests run it: on the pymsi under test (a checkout, or the sanitizer's installed
copy with no pyproject.toml beside it), with the project's options given explicitly so the
result does not depend on where the tests run."""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

from mypy import api

import pymsi

#: The directory holding the pymsi package under test.
PKG_ROOT = Path(pymsi.__file__).resolve().parent.parent

#: pyproject.toml's [tool.mypy] (strict, Python 3.10), with the package's own modules
#: followed silently: only the checked snippet's errors are reported.
OPTIONS = ["--strict", "--python-version", "3.10", "--follow-imports", "silent",
           "--no-color-output"]


def run_mypy(files: list[Path], cache: Path) -> tuple[str, int]:
    """(mypy's output, its exit status: 0 clean, 1 errors, 2 a failed run) for ``files``."""
    config = cache / "mypy.ini"
    config.write_text("[mypy]\n")                  # no config file found by location
    env_before = os.environ.get("MYPYPATH")
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if PKG_ROOT not in installed:                  # a checkout, or a --target install
        os.environ["MYPYPATH"] = str(PKG_ROOT)
    try:
        out, err, rc = api.run([*OPTIONS, "--config-file", str(config), "--cache-dir",
                                str(cache), "--python-executable", sys.executable,
                                *map(str, files)])
    finally:
        if env_before is None:
            os.environ.pop("MYPYPATH", None)
        else:
            os.environ["MYPYPATH"] = env_before
    return out + err, rc
