"""The system calls a userspace process makes, as the types a user program is written against.

A VMM (:mod:`pymsi.vmm`) reaches the host kernel only through the user/kernel contract:
it opens device nodes, issues ioctls with the UAPI structures of this package, maps
anonymous memory, reads and writes it (``copy_to_user`` / ``copy_from_user`` as the
process sees them), reads ``/proc/self/pagemap``, makes eventfds and polls them.
:class:`Syscalls` names exactly those calls and :class:`OpenFile` the calls on one open
file, so a user program is typed against the contract and never against the kernel
model's classes (:class:`pymsi.kernel.Kernel` and its ``File`` satisfy both
structurally; nothing here imports the kernel).

Errors are the kernel's: a failing call raises ``OSError`` with Linux's errno.
"""

from __future__ import annotations

from typing import Protocol

from . import IoctlArg, IoctlResult

__all__ = ["OpenFile", "Syscalls"]


class OpenFile(Protocol):
    """An open file as the process holds it (what ``open(2)`` or ``eventfd(2)`` gave):
    its descriptor number and the system calls made on that descriptor."""

    @property
    def fd(self) -> int | None:
        """The descriptor ``open`` returned (None only before it is installed)."""
        ...

    def ioctl(self, cmd: int, arg: IoctlArg = 0) -> IoctlResult:
        """ioctl(2) on this descriptor: the ioctl's non-negative result."""
        ...

    def read(self, count: int = 8) -> object:
        """read(2) of up to ``count`` bytes (an eventfd gives its counter as an int)."""
        ...

    def poll(self) -> int:
        """poll(2): the ready mask (:mod:`pymsi.uapi.eventpoll` bits)."""
        ...

    def pread(self, offset: int, count: int) -> bytes:
        """pread(2): up to ``count`` bytes at ``offset``."""
        ...

    def pwrite(self, offset: int, data: bytes) -> int:
        """pwrite(2): the number of bytes written at ``offset``."""
        ...

    def close(self) -> None:
        """close(2) of this descriptor."""
        ...


class Syscalls(Protocol):
    """The system calls a userspace process (a VMM) makes to its kernel: files and
    ioctls, anonymous memory, the process's own pagemap, eventfds, poll and the
    descriptor limit.  Descriptors are passed by number (as in C)."""

    def open(self, path: str, flags: int = 2) -> OpenFile:
        """open(2) of a device node (``flags``: O_RDWR by default)."""
        ...

    def close(self, fd: int) -> None:
        """close(2)."""
        ...

    def ioctl(self, fd: int, cmd: int, arg: IoctlArg = 0) -> IoctlResult:
        """ioctl(2): the ioctl's non-negative result (a new descriptor for the ones that
        create a file, as KVM_CREATE_VM)."""
        ...

    def read(self, fd: int, count: int = 8) -> object:
        """read(2) of up to ``count`` bytes (an eventfd gives its counter as an int)."""
        ...

    def poll(self, fd: int) -> int:
        """poll(2) of one descriptor: its ready mask."""
        ...

    def eventfd(self, initval: int = 0, flags: int = 0) -> OpenFile:
        """eventfd2(2)."""
        ...

    def mmap(self, length: int, prot: int = 3) -> int:
        """mmap(2) of anonymous private memory (``prot``: PROT_READ | PROT_WRITE by
        default): its page-aligned user address."""
        ...

    def munmap(self, va: int, length: int) -> None:
        """munmap(2)."""
        ...

    def pagemap(self, va: int) -> int | None:
        """A read of /proc/self/pagemap: the host frame behind the page holding ``va``
        (None: mapped, never touched)."""
        ...

    def user_write(self, va: int, data: bytes) -> None:
        """A store of ``data`` to the process's own memory at ``va``."""
        ...

    def user_read(self, va: int, n: int) -> bytes:
        """A load of ``n`` bytes of the process's own memory at ``va``."""
        ...

    def getrlimit_nofile(self) -> tuple[int, int]:
        """getrlimit(RLIMIT_NOFILE): (soft, hard)."""
        ...

    def setrlimit_nofile(self, soft: int, hard: int | None = None) -> None:
        """setrlimit(RLIMIT_NOFILE)."""
        ...
