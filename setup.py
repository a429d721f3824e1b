"""Build the C core with cffi (out-of-line API mode); metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["pymsi/_build.py:ffibuilder"])
