"""The ioctl request number encoding of asm-generic/ioctl.h (arm64 and x86-64).

A request number packs four fields: ``nr`` (bits 7:0), ``type`` (bits 15:8),
``size`` of the argument (bits 29:16) and the transfer direction (bits 31:30,
``_IOC_WRITE`` = 1: userspace writes to the kernel, ``_IOC_READ`` = 2).  The one
definition here is used by :mod:`pymsi.uapi.iommufd`, :mod:`~pymsi.uapi.vfio`
and :mod:`~pymsi.uapi.kvm`.  The encoders take a type as an int or a one-character
string (``';'``) and a size as an int or a :class:`~pymsi.uapi._struct.Struct`
class (its ``sizeof``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidArgument

if TYPE_CHECKING:
    from ._struct import Struct

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

__all__ = [
    "_IOC", "_IO", "_IOR", "_IOW", "_IOWR", "_IOC_DIR", "_IOC_TYPE", "_IOC_NR", "_IOC_SIZE",
    "_IOC_NONE", "_IOC_WRITE", "_IOC_READ",
]


def _field(value: int, bits: int, what: str) -> int:
    if not isinstance(value, int) or value < 0 or value >= 1 << bits:
        raise InvalidArgument(f"ioctl {what} {value!r} does not fit in {bits} bits")
    return value


def _type(t: int | str) -> int:
    return ord(t) if isinstance(t, str) else t


def _size(size: int | type[Struct]) -> int:
    return size if isinstance(size, int) else size.sizeof


def _IOC(direction: int, type_: int | str, nr: int, size: int | type[Struct]) -> int:
    """The request number with these four fields."""
    return (_field(direction, _IOC_DIRBITS, "dir") << _IOC_DIRSHIFT
            | _field(_type(type_), _IOC_TYPEBITS, "type") << _IOC_TYPESHIFT
            | _field(nr, _IOC_NRBITS, "nr") << _IOC_NRSHIFT
            | _field(_size(size), _IOC_SIZEBITS, "size") << _IOC_SIZESHIFT)


def _IO(type_: int | str, nr: int) -> int:
    """A request with no argument size encoded (iommufd and VFIO use these)."""
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int | str, nr: int, size: int | type[Struct]) -> int:
    """A request whose argument the kernel writes back to userspace."""
    return _IOC(_IOC_READ, type_, nr, size)


def _IOW(type_: int | str, nr: int, size: int | type[Struct]) -> int:
    """A request whose argument userspace passes in."""
    return _IOC(_IOC_WRITE, type_, nr, size)


def _IOWR(type_: int | str, nr: int, size: int | type[Struct]) -> int:
    """A request whose argument goes both ways."""
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, size)


def _IOC_DIR(request: int) -> int:
    """The direction field of a request number."""
    return (request >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def _IOC_TYPE(request: int) -> int:
    """The type field of a request number."""
    return (request >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def _IOC_NR(request: int) -> int:
    """The number field of a request number."""
    return (request >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def _IOC_SIZE(request: int) -> int:
    """The argument size field of a request number."""
    return (request >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)
