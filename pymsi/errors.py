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
    """Base class of every error pymsi defines (catch it to catch them all); the
    library otherwise raises only ``TypeError`` for a call with the wrong arguments (and
    the C conversion's ``TypeError`` / ``OverflowError`` from the raw hot-path callables
    ``Memory.ram_checker()`` / ``bit_updater()`` return)."""


class BusError(PymsiError, OSError):
    """An access to a physical address that is not RAM (EFAULT)."""

    def __init__(self, message: str = "bus error") -> None:
        super().__init__(_errno.EFAULT, message)


class MsiNotMapped(PymsiError, LookupError):
    """No MSI address entry for this (device, MSI index): never a fallback."""


class InvalidArgument(PymsiError, ValueError):
    """An argument or configuration the model rejects (EINVAL): a bad value in a machine,
    device or boot description (the message names the key, the value and what was
    expected), a hardware model given an impossible configuration.  Kernel calls fail
    with :class:`KernelError` instead, as Linux does."""

    errno = _errno.EINVAL


class AlreadyExists(PymsiError, ValueError):
    """The thing to create overlaps something that exists (EEXIST)."""

    errno = _errno.EEXIST


class OutOfMemory(PymsiError, MemoryError):
    """The model could not allocate host memory (ENOMEM)."""

    errno = _errno.ENOMEM


class KernelError(PymsiError, OSError):
    """A call into the kernel model failed the way Linux fails it: ``.errno`` is the
    errno Linux returns for the same call, positive as OSError's (a syscall's -ENOENT
    is ``.errno == errno.ENOENT``), e.g. ENOENT for a /proc path that
    names no file, EINVAL for a bad argument, EBUSY, ENOSPC, ...  ``.strerror`` says what
    was attempted, ending with the errno's name (``... [EINVAL]``).  Raised by every
    kernel call (``pymsi.kernel``), the UAPI (``pymsi.uapi``) and the VMM built on them."""

    errno: int                          # always given (OSError's may be None)

    def __init__(self, err: int, what: str = "") -> None:
        name = _errno.errorcode.get(err, "ENOTSUPP" if err == 524 else str(err))
        super().__init__(err, f"{what} [{name}]" if what else name)


class OutOfOrder(PymsiError, RuntimeError):
    """A machine or VMM used out of order: booted twice, inspected or run before
    ``boot()`` / ``realize()``, a guest access the VMM does not handle."""


class NotQuiescent(PymsiError, RuntimeError):
    """``VirtualMachine.run()`` still had events to process after ``max_events``:
    something keeps re-arming (an interrupt storm, a timer loop); ``.max_events``
    is the bound that was hit."""

    def __init__(self, max_events: int) -> None:
        super().__init__(f"the machine is not quiescent after {max_events} events")
        self.max_events = max_events


class DeviceModelError(InvalidArgument, LookupError):
    """A device model that cannot be found or made: no model of that name in the
    ``pymsi.devices`` entry points, an import path that names no
    :class:`~pymsi.hw.qdev.PciDeviceModel` (the message names it).  In a device
    description it is the bad value of ``model``, hence also an :class:`InvalidArgument`."""


class InvariantViolation(PymsiError, AssertionError):
    """A property test found an invariant of DESIGN.md broken (raised by
    :mod:`pymsi.testing.invariants`): ``invariant`` (its name), ``step`` (the step of
    the run that broke it) and ``detail`` (what the machine showed)."""

    def __init__(self, invariant: str, step: str, detail: str) -> None:
        super().__init__(f"{invariant} broken at {step!r}: {detail}")
        self.invariant, self.step, self.detail = invariant, step, detail


__all__ = [
    "AlreadyExists",
    "BusError",
    "DeviceModelError",
    "InvalidArgument",
    "InvariantViolation",
    "KernelError",
    "MsiNotMapped",
    "NotQuiescent",
    "OutOfMemory",
    "OutOfOrder",
    "PymsiError",
    "check",
    "raise_errno",
]


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
