"""Build the C core with cffi (out-of-line API mode); metadata is in pyproject.toml.

The C extension is optional: where it cannot be built (no C compiler), the install
still succeeds, says so, and pymsi runs on its pure-Python twin.  ``PYMSI_REQUIRE_C=1``
(CI) makes a failed build fail the install.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that leaves the extension out, with a note, when it cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any build failure: compiler, linker, headers
            self._skip(e)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            self._skip(e)

    @staticmethod
    def _skip(e: Exception) -> None:
        if os.environ.get("PYMSI_REQUIRE_C", "") not in ("", "0"):
            raise e
        print(f"pymsi: the C extension could not be built ({type(e).__name__}: {e}); "
              "installing without it: pymsi will use its pure-Python core (same behaviour, "
              "slower). Install a C compiler and reinstall to get the C core.",
              file=sys.stderr)


setup(cffi_modules=["pymsi/_build.py:ffibuilder"], cmdclass={"build_ext": OptionalBuildExt})
