"""Helpers shared by the kernel-model tests."""

from __future__ import annotations

from pymsi.kernel.base import KernelError


def errno_of(fn, *args, **kw):
    """None if the call succeeds, else the KernelError's errno (any other
    exception fails the test)."""
    try:
        fn(*args, **kw)
    except KernelError as e:
        return e.errno
    return None
