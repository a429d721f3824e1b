"""pymsi's exceptions, and the one place where error codes become exceptions.

The C core returns negative errno values; the pure-Python twin produces the
same codes; :func:`raise_errno` turns either into an exception.  Every class
also derives from the built-in exception a Python caller would expect, so
``except LookupError`` or ``except OSError`` work as usual, and the ``OSError``
ones carry the errno Linux would return.
"""

from __future__ import annotations

import errno as _errno
from typing import NoReturn


class PymsiError(Exception):
    """Base class of every pymsi error."""


class BusError(PymsiError, OSError):
    """An access to a physical address that is not RAM (EFAULT)."""

    def __init__(self, message: str = "bus error") -> None:
        super().__init__(_errno.EFAULT, message)


class MsiNotMapped(PymsiError, LookupError):
    """No MSI address entry for this (device, MSI index): never a fallback."""


class InvalidArgument(PymsiError, ValueError):
    """An argument or configuration the model (or Linux) rejects (EINVAL)."""

    errno = _errno.EINVAL


class AlreadyExists(PymsiError, ValueError):
    """The thing to create overlaps something that exists (EEXIST)."""

    errno = _errno.EEXIST


class OutOfMemory(PymsiError, MemoryError):
    """The model could not allocate host memory (ENOMEM)."""

    errno = _errno.ENOMEM


_BY_ERRNO: dict[int, type[PymsiError]] = {
    _errno.EFAULT: BusError,
    _errno.ENOENT: MsiNotMapped,
    _errno.EINVAL: InvalidArgument,
    _errno.EEXIST: AlreadyExists,
    _errno.ENOMEM: OutOfMemory,
}


def raise_errno(rc: int, what: str) -> NoReturn:
    """Raise the exception for a negative errno-style return code ``rc``.

    ``what`` says what was attempted; it becomes the message.
    """
    code = -rc
    cls = _BY_ERRNO.get(code)
    message = f"{what} [{_errno.errorcode.get(code, code)}]"
    if cls is None:
        raise OSError(code, message)
    raise cls(message)


def check(rc: int, what: str) -> int:
    """Return ``rc`` if it is not negative, else raise for it."""
    if rc < 0:
        raise_errno(rc, what)
    return rc
