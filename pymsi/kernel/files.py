"""The kernel model's userspace plumbing: files, eventfd, anonymous memory, sysfs.

What a VMM process sees of Linux, and what the kernel side of iommufd, VFIO
and KVM plug into:

* character devices (:meth:`CharDevRegistry.register`, like ``cdev_add`` +
  devtmpfs), ``open(2)`` giving a :class:`File` (struct file: ``f_op``,
  ``private_data``, a reference count) installed in the process's
  :class:`FdTable` at the lowest free descriptor; ``ioctl`` / ``read`` /
  ``write`` / ``close`` / ``dup`` with Linux's errnos, and ``fget`` / ``fput``
  for kernel code that holds on to a file given by number;
* ``eventfd(2)`` (:class:`EventfdCtx`): the counter, EFD_SEMAPHORE,
  EFD_NONBLOCK, ``eventfd_signal`` for interrupt handlers, and wait-queue
  callbacks (what KVM irqfd registers to be woken on each signal);
* anonymous ``mmap`` (:class:`UserMm`): page-aligned user VAs backed lazily by
  pages of the kernel's allocator, ``pin_user_pages`` / ``unpin_user_pages``
  (a pinned page outlives its mapping), and user memory access helpers.

The model has one process (the VMM): ``k.files`` and ``k.user_mm``.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._repr import bounded
from ..uapi import IoctlResult as IoctlResult  # re-exported: ioctl's result
from ..uapi.eventpoll import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT  # noqa: F401 (re-exported)
from .base import EEXIST, EFAULT, EINVAL, ENOENT, ENOMEM, fail

if TYPE_CHECKING:
    from ..core.common import Buffer
    from ..uapi import IoctlArg
    from .kernel import Kernel


EBADF, ENOTTY, EAGAIN, EMFILE = _errno.EBADF, _errno.ENOTTY, _errno.EAGAIN, _errno.EMFILE
ESPIPE = _errno.ESPIPE

# open(2) flags (include/uapi/asm-generic/fcntl.h; the same on arm64 and x86-64).
O_RDONLY, O_WRONLY, O_RDWR, O_ACCMODE = 0, 1, 2, 3
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
_OPEN_FLAGS = O_ACCMODE | O_NONBLOCK | O_CLOEXEC

# Generic ioctls do_vfs_ioctl() handles before the file's own (asm-generic/ioctls.h).
FIONCLEX, FIOCLEX, FIONBIO = 0x5450, 0x5451, 0x5421

# eventfd(2) flags (include/uapi/linux/eventfd.h).
EFD_SEMAPHORE = 1
EFD_CLOEXEC = O_CLOEXEC
EFD_NONBLOCK = O_NONBLOCK
ULLONG_MAX = (1 << 64) - 1

# poll(2) event bits as wake-up keys: pymsi.uapi.eventpoll (re-exported here).

NR_OPEN_DEFAULT = 1024          # RLIMIT_NOFILE soft limit of a login shell
NR_OPEN_HARD = 524288           # its hard limit (systemd's default since v240)

# mmap(2) (asm-generic/mman-common.h); anonymous private mappings only.
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4
PAGE_SIZE = 0x1000
MMAP_BASE = 0x7F00_0000_0000    # mappings are placed top-down below this
MMAP_MIN_ADDR = 0x1_0000        # vm.mmap_min_addr


class FileOperations:
    """struct file_operations: a device overrides what it supports.

    ``open(file)`` runs before the descriptor is installed (raise to refuse);
    ``release(file)`` runs once, when the last reference goes.  A missing
    ``unlocked_ioctl`` is ENOTTY, a missing ``read`` / ``write`` EINVAL, as
    in Linux; an ioctl handler raises ENOTTY for a command it does not know.
    ``pread(file, offset, count) -> bytes`` / ``pwrite(file, offset, data) -> int``
    are the positioned read / write (``read_iter`` / ``write_iter`` with a
    ``ppos``); a file without them is not seekable: pread(2) / pwrite(2) on it
    is ESPIPE.
    """

    def open(self, file: File) -> None:
        """Called by open(2) once the struct file exists."""

    def release(self, file: File) -> None:
        """Called when the last reference to the file is dropped."""

    unlocked_ioctl: Callable[[File, int, IoctlArg], IoctlResult] | None = None
    read: Callable[[File, int], int | bytes] | None = None
    write: Callable[[File, int | Buffer], int] | None = None
    poll: Callable[[File], int] | None = None
    pread: Callable[[File, int, int], bytes] | None = None
    pwrite: Callable[[File, int, bytes], int] | None = None


@dataclass
class CharDev:
    """A device node: its path under /dev, its operations, and the driver's data
    (what ``file.cdev.data`` gives the open handler, like a cdev's container)."""

    path: str
    fops: FileOperations
    data: Any = None

    def __repr__(self) -> str:
        return bounded(f"CharDev({self.path!r}, {type(self.fops).__name__})")


class File:
    """struct file: an open device, shared by every descriptor and kernel
    reference to it; ``release`` runs when ``f_count`` reaches zero.

    The methods a test calls (``ioctl``, ``read``, ``write``, ``close``,
    ``poll``) are the system calls on the descriptor ``open`` returned
    (``self.fd``): once that descriptor is closed they fail with EBADF, even
    if a ``dup`` of it or a kernel reference keeps the file alive.
    """

    def __init__(self, kernel: Kernel, fops: FileOperations, flags: int,
                 cdev: CharDev | None = None, private_data: object = None) -> None:
        self.kernel = kernel
        self.f_op = fops
        self.f_flags = flags
        self.cdev = cdev
        #: the driver's ``void *private_data``: each driver reads back its own type
        self.private_data: Any = private_data
        self.f_count = 1
        self.released = False
        self.fd: int | None = None

    def __repr__(self) -> str:
        name = self.cdev.path if self.cdev is not None else type(self.f_op).__name__
        return f"<file {name} fd={self.fd} count={self.f_count}>"

    # -- reference counting (get_file / fput) ------------------------------------------

    def get(self) -> File:
        """get_file(): one more reference (kernel code keeping the file)."""
        if self.released:
            raise fail(EBADF, "get_file() on a released file")
        self.f_count += 1
        return self

    def put(self) -> None:
        """fput(): drop a reference; the last one calls ``release`` exactly once."""
        if self.f_count <= 0:
            self.kernel.printk("WARNING: fput() on a file with no references")
            raise fail(EINVAL, "fput() without a reference")
        self.f_count -= 1
        if self.f_count == 0:
            self.released = True
            self.f_op.release(self)

    # -- the system calls on self.fd ----------------------------------------------------

    def _files(self) -> FdTable:
        files: FdTable = self.kernel.files
        return files

    def ioctl(self, cmd: int, arg: IoctlArg = 0) -> IoctlResult:
        """ioctl(2) on this descriptor: ``arg`` an int or the command's UAPI structure
        (filled in place); the result Linux's return value (see :data:`IoctlResult`)."""
        return self._files().ioctl(self._fd(), cmd, arg)

    def read(self, count: int = 8) -> int | bytes:
        """read(2) on this descriptor: the bytes read (an eventfd gives its counter as
        an int)."""
        return self._files().read(self._fd(), count)

    def write(self, data: int | Buffer) -> int:
        """write(2) on this descriptor: the bytes written (an eventfd also takes its u64
        as an int)."""
        return self._files().write(self._fd(), data)

    def poll(self) -> int:
        """poll(2) of this descriptor: the ready mask."""
        return self._files().poll(self._fd())

    def pread(self, offset: int, count: int) -> bytes:
        """pread(2) on this descriptor: up to ``count`` bytes at ``offset``."""
        return self._files().pread(self._fd(), count, offset)

    def pwrite(self, offset: int, data: bytes) -> int:
        """pwrite(2) on this descriptor: the number of bytes written at ``offset``."""
        return self._files().pwrite(self._fd(), data, offset)

    def close(self) -> None:
        """close(2) of this descriptor."""
        self._files().close(self._fd())

    def _fd(self) -> int:
        # Our descriptor, unless it was closed (and perhaps reused by another file).
        return self.fd if self.fd is not None and self._files().fds.get(self.fd) is self else -1


class FdTable:
    """struct files_struct of the process: descriptor numbers -> files.

    ``open`` installs at the lowest free number (0-2 are taken by the
    process's stdio, so the first device gets 3); more than ``limit`` open
    descriptors is EMFILE.
    """

    def __init__(self, kernel: Kernel, limit: int = NR_OPEN_DEFAULT) -> None:
        self.kernel = kernel
        self.limit = limit
        self.hard_limit = max(limit, NR_OPEN_HARD)
        self.fds: dict[int, File | None] = {0: None, 1: None, 2: None}   # stdio, not modelled
        self._fd_hint = 0          # every descriptor below this one is in use
        self.cloexec: set[int] = set()

    def __contains__(self, fd: object) -> bool:
        return isinstance(fd, int) and self.fds.get(fd) is not None

    def __len__(self) -> int:
        return sum(1 for f in self.fds.values() if f is not None)

    def open_files(self) -> dict[int, File]:
        """The descriptors that name a modelled file."""
        return {n: f for n, f in self.fds.items() if f is not None}

    def _lookup(self, fd: object) -> File:
        if type(fd) is int:                    # the common case: an open descriptor number
            f = self.fds.get(fd)
            if f is not None:
                return f
        if isinstance(fd, File):
            fd = fd._fd()
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise fail(EBADF, f"not a file descriptor: {fd!r}")
        f = self.fds.get(fd)
        if f is None:
            raise fail(EBADF, f"fd {fd} is not open")
        return f

    def alloc_fd(self) -> int:
        """get_unused_fd_flags(): the lowest free number."""
        n = self._fd_hint
        while n in self.fds:
            n += 1
        self._fd_hint = n
        if n >= self.limit:
            raise fail(EMFILE, "too many open files")
        return n

    def install(self, file: File, cloexec: bool = False) -> int:
        """fd_install() of a new file (whose one reference the table takes)."""
        n = self.alloc_fd()
        self.fds[n] = file
        if cloexec:
            self.cloexec.add(n)
        if file.fd is None:
            file.fd = n
        return n

    def fget(self, fd: int) -> File:
        """fget(): the file behind ``fd`` with a new reference (fput it), or EBADF."""
        return self._lookup(fd).get()

    def dup(self, fd: int | File) -> int:
        """dup(2): a new descriptor (lowest free) for the same file."""
        f = self._lookup(fd)
        n = self.alloc_fd()
        f.get()
        self.fds[n] = f
        return n

    def close(self, fd: int | File) -> None:
        """close(2): the descriptor goes; the file is released with its last reference."""
        f = self._lookup(fd)
        n = fd._fd() if isinstance(fd, File) else fd
        del self.fds[n]
        self._fd_hint = min(self._fd_hint, n)
        self.cloexec.discard(n)
        f.put()

    def close_all(self) -> None:
        """Process exit: every descriptor closed, highest first."""
        for n in sorted(self.open_files(), reverse=True):
            self.close(n)

    def ioctl(self, fd: int | File, cmd: int, arg: IoctlArg = 0) -> IoctlResult:
        """ioctl(2): the generic commands first (do_vfs_ioctl), then the file's own."""
        f = self._lookup(fd)
        n = fd._fd() if isinstance(fd, File) else fd
        if cmd == FIOCLEX:
            self.cloexec.add(n)
            return 0
        if cmd == FIONCLEX:
            self.cloexec.discard(n)
            return 0
        if cmd == FIONBIO:
            on = arg.value if hasattr(arg, "value") else arg
            f.f_flags = f.f_flags | O_NONBLOCK if on else f.f_flags & ~O_NONBLOCK
            return 0
        return vfs_ioctl(f, cmd, arg)

    def read(self, fd: int | File, count: int = 8) -> int | bytes:
        """read(2): EBADF for a file not open for reading, EINVAL without a read op."""
        f = self._lookup(fd)
        if (f.f_flags & O_ACCMODE) not in (O_RDONLY, O_RDWR):
            raise fail(EBADF, "file not open for reading")
        if f.f_op.read is None:
            raise fail(EINVAL, "file cannot be read")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise fail(EINVAL, f"bad count {count!r}")
        return f.f_op.read(f, count)

    def write(self, fd: int | File, data: int | Buffer) -> int:
        """write(2): EBADF for a file not open for writing, EINVAL without a write op."""
        f = self._lookup(fd)
        if (f.f_flags & O_ACCMODE) not in (O_WRONLY, O_RDWR):
            raise fail(EBADF, "file not open for writing")
        if f.f_op.write is None:
            raise fail(EINVAL, "file cannot be written")
        return f.f_op.write(f, data)

    def pread(self, fd: int | File, count: int, offset: int) -> bytes:
        """pread(2): EBADF for a file not open for reading, ESPIPE for one that is
        not seekable, EINVAL for a negative offset or count."""
        f = self._lookup(fd)
        if (f.f_flags & O_ACCMODE) not in (O_RDONLY, O_RDWR):
            raise fail(EBADF, "file not open for reading")
        if f.f_op.pread is None:
            raise fail(ESPIPE, "illegal seek")
        for v in (count, offset):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise fail(EINVAL, f"bad pread count / offset {v!r}")
        if count == 0:
            return b""
        return bytes(f.f_op.pread(f, offset, count))

    def pwrite(self, fd: int | File, data: bytes | bytearray | memoryview, offset: int) -> int:
        """pwrite(2): EBADF for a file not open for writing, ESPIPE for one that is
        not seekable, EINVAL for a negative offset, EFAULT for data that is not bytes."""
        f = self._lookup(fd)
        if (f.f_flags & O_ACCMODE) not in (O_WRONLY, O_RDWR):
            raise fail(EBADF, "file not open for writing")
        if f.f_op.pwrite is None:
            raise fail(ESPIPE, "illegal seek")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise fail(EINVAL, f"bad pwrite offset {offset!r}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise fail(EFAULT, f"pwrite of {type(data).__name__}, not a buffer")
        if not len(data):
            return 0
        return f.f_op.pwrite(f, offset, bytes(data))

    def poll(self, fd: int | File) -> int:
        """poll(2) of one descriptor: a file without a poll op is always ready."""
        f = self._lookup(fd)
        if f.f_op.poll is None:
            return EPOLLIN | EPOLLOUT
        return f.f_op.poll(f)


def vfs_ioctl(file: File, cmd: int, arg: IoctlArg) -> IoctlResult:
    """vfs_ioctl(): the file's unlocked_ioctl, ENOTTY when it has none."""
    if file.released:
        raise fail(EBADF, "ioctl on a released file")
    if file.f_op.unlocked_ioctl is None:
        raise fail(ENOTTY, "inappropriate ioctl for device")
    return file.f_op.unlocked_ioctl(file, cmd, arg)


class CharDevRegistry:
    """The device nodes of /dev (cdev_add + devtmpfs, by path)."""

    def __init__(self) -> None:
        self.nodes: dict[str, CharDev] = {}

    def register(self, path: str, fops: FileOperations, data: object = None) -> CharDev:
        """Make ``path`` open ``fops``; EEXIST when the node exists, EINVAL for a
        path that is not absolute.  ``data`` is the driver's, opaque here (``cdev.data``)."""
        norm = _normpath(path)
        if norm is None:
            raise fail(EINVAL, "a device node path is absolute")
        path = norm
        if path in self.nodes:
            raise fail(EEXIST, f"{path} exists")
        node = self.nodes[path] = CharDev(path, fops, data)
        return node

    def unregister(self, path: str) -> None:
        """Remove the node (open files keep working, as after cdev_del)."""
        norm = _normpath(path)
        if norm not in self.nodes:
            raise fail(ENOENT, f"{path}: no such device node")
        del self.nodes[norm]

    def lookup(self, path: str) -> CharDev:
        norm = _normpath(path)
        node = self.nodes.get(norm) if norm is not None else None
        if node is None:
            raise fail(ENOENT, f"{path}: no such file or directory")
        return node


def _normpath(path: object) -> str | None:
    """An absolute path with repeated slashes and "." components removed."""
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return "/" + "/".join(p for p in path.split("/") if p not in ("", "."))


def do_open(kernel: Kernel, path: str, flags: int = O_RDWR) -> File:
    """open(2) of a device node: the file, installed at the lowest free descriptor.

    ENOENT for no node; EINVAL for flags the model does not know; the device's
    ``open`` may refuse, and then no descriptor is used.
    """
    if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~_OPEN_FLAGS:
        raise fail(EINVAL, f"unsupported open flags {flags!r}")
    node = kernel.chrdevs.lookup(path)
    files = kernel.files
    files.alloc_fd()                                      # EMFILE before the device is touched
    file = File(kernel, node.fops, flags & ~O_CLOEXEC, cdev=node)
    node.fops.open(file)
    files.install(file, cloexec=bool(flags & O_CLOEXEC))
    return file


# -- eventfd ------------------------------------------------------------------------------


@dataclass
class WaitQueueEntry:
    """wait_queue_entry_t: ``func(ctx, key)`` runs on each wake-up with the poll mask."""

    func: Callable[[EventfdCtx, int], object]


class EventfdCtx(FileOperations):
    """struct eventfd_ctx (and its file operations): a 64-bit counter.

    Kernel code holds the context, not the file: ``ctx.get()`` / ``ctx.put()``
    (eventfd_ctx_fdget / eventfd_ctx_put), so a signal after userspace closed
    the eventfd still counts, unseen.
    """

    def __init__(self, kernel: Kernel, count: int, flags: int) -> None:
        self.kernel = kernel
        self.count = count
        self.flags = flags
        self.refs = 1                     # the file's reference
        self.wqh: list[WaitQueueEntry] = []
        self.signals = 0                  # kernel-side signals taken (for tests)
        self.dropped = 0                  # signals refused because of recursion

    def __repr__(self) -> str:
        return f"<eventfd count={self.count}>"

    def get(self) -> EventfdCtx:
        self.refs += 1
        return self

    def put(self) -> None:
        if self.refs <= 0:
            self.kernel.printk("WARNING: eventfd_ctx_put() without a reference")
            raise fail(EINVAL, "eventfd_ctx_put() without a reference")
        self.refs -= 1

    # -- wait queue ---------------------------------------------------------------

    def add_wait_queue(self, func: Callable[[EventfdCtx, int], object]) -> WaitQueueEntry:
        """add_wait_queue(): ``func(ctx, key)`` runs on every wake-up until removed."""
        entry = WaitQueueEntry(func)
        self.wqh.append(entry)
        return entry

    def remove_wait_queue(self, entry: WaitQueueEntry) -> int:
        """eventfd_ctx_remove_wait_queue(): unhook and return (and clear) the count."""
        if entry not in self.wqh:
            raise fail(ENOENT, "not on this wait queue")
        self.wqh.remove(entry)
        count, self.count = self.count, 0
        return count

    def _wake(self, key: int) -> None:
        """Run the wait-queue callbacks; an eventfd_signal() from inside one is
        refused (current->in_eventfd)."""
        _SIGNAL_DEPTH[0] += 1
        try:
            for entry in list(self.wqh):
                entry.func(self, key)
        finally:
            _SIGNAL_DEPTH[0] -= 1

    def do_read(self) -> int:
        """eventfd_ctx_do_read(): take the count (1 with EFD_SEMAPHORE) without
        the file, as KVM irqfd does on each wake-up; 0 when there is none."""
        value = min(self.count, 1) if self.flags & EFD_SEMAPHORE else self.count
        self.count -= value
        return value

    def signal(self, mask: int = 0) -> bool:
        """eventfd_signal(): add 1 (saturating at ULLONG_MAX) and wake the waiters.

        A signal from inside a wake-up callback (of a signal, read, write or
        release of any eventfd) is refused with a WARNING, as Linux does to stop
        recursion; returns whether the signal was taken.
        """
        if _SIGNAL_DEPTH[0]:
            self.dropped += 1
            self.kernel.printk("WARNING: eventfd_signal() from an eventfd wake-up dropped")
            return False
        if self.count < ULLONG_MAX:
            self.count += 1
        self.signals += 1
        if self.wqh:                            # no waiters: _wake would do nothing
            self._wake(EPOLLIN | mask)
        return True

    # -- file operations ----------------------------------------------------------

    def read(self, file: File, count: int = 8) -> int:
        """read(2): the counter (then 0), or 1 (then one less) with EFD_SEMAPHORE.

        A zero counter is EAGAIN even without EFD_NONBLOCK: a model cannot block.
        """
        if count < 8:
            raise fail(EINVAL, "eventfd read of fewer than 8 bytes")
        if self.count == 0:
            raise fail(EAGAIN, "eventfd counter is zero")
        value = 1 if self.flags & EFD_SEMAPHORE else self.count
        self.count -= value
        self._wake(EPOLLOUT)
        return value

    def write(self, file: File, data: object) -> int:
        """write(2) of a u64 (an int, or 8 little-endian bytes): add it to the counter.

        ULLONG_MAX is EINVAL; a sum beyond ULLONG_MAX - 1 is EAGAIN (it would block).
        """
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) < 8:
                raise fail(EINVAL, "eventfd write of fewer than 8 bytes")
            value = int.from_bytes(bytes(data[:8]), "little")
        elif isinstance(data, int) and not isinstance(data, bool) and 0 <= data <= ULLONG_MAX:
            value = data
        else:
            raise fail(EINVAL, f"not a u64: {data!r}")
        if value == ULLONG_MAX:
            raise fail(EINVAL, "eventfd write of 0xffffffffffffffff")
        if ULLONG_MAX - self.count <= value:
            raise fail(EAGAIN, "eventfd counter would overflow")
        self.count += value
        self._wake(EPOLLIN)               # even for 0: an irqfd fires on any write
        return 8

    def poll(self, file: File) -> int:
        mask = 0
        if self.count > 0:
            mask |= EPOLLIN
        if self.count == ULLONG_MAX:
            mask |= EPOLLERR
        if ULLONG_MAX - 1 > self.count:
            mask |= EPOLLOUT
        return mask

    def release(self, file: File) -> None:
        """eventfd_release(): waiters get EPOLLHUP, the file's context reference goes."""
        self._wake(EPOLLHUP)
        self.put()


_SIGNAL_DEPTH = [0]       # eventfd_signal() nesting, across every context (per CPU in Linux)


def do_eventfd(kernel: Kernel, initval: int = 0, flags: int = 0) -> File:
    """eventfd2(2): a new eventfd file at the lowest free descriptor.

    ``initval`` is the C ``unsigned int``: a value that is not one is EINVAL
    (C would truncate it); unknown flags are EINVAL.
    """
    if isinstance(flags, bool) or not isinstance(flags, int) or \
            flags & ~(EFD_SEMAPHORE | EFD_CLOEXEC | EFD_NONBLOCK):
        raise fail(EINVAL, f"bad eventfd flags {flags!r}")
    if isinstance(initval, bool) or not isinstance(initval, int) or not 0 <= initval < 1 << 32:
        raise fail(EINVAL, f"bad eventfd initial value {initval!r}")
    kernel.files.alloc_fd()
    ctx = EventfdCtx(kernel, initval, flags & EFD_SEMAPHORE)
    file = File(kernel, ctx, O_RDWR | (flags & EFD_NONBLOCK), private_data=ctx)
    kernel.files.install(file, cloexec=bool(flags & EFD_CLOEXEC))
    return file


def eventfd_ctx_fdget(kernel: Kernel, fd: int) -> EventfdCtx:
    """eventfd_ctx_fdget(): the context of eventfd ``fd`` with a reference
    (EBADF for no file, EINVAL for a file that is not an eventfd)."""
    file = kernel.files._lookup(fd)
    if not isinstance(file.f_op, EventfdCtx):
        raise fail(EINVAL, f"fd {fd} is not an eventfd")
    return file.f_op.get()


# -- anonymous user memory ------------------------------------------------------------


@dataclass
class UserPage:
    """A page of host RAM behind user memory; ``pins`` keeps it after munmap."""

    pa: int
    pins: int = 0
    mapped: bool = True


@dataclass
class Vma:
    """struct vm_area_struct of an anonymous private mapping."""

    start: int
    end: int
    prot: int
    pages: dict[int, UserPage] = field(default_factory=dict)     # VA of page -> page

    def __repr__(self) -> str:
        return (f"Vma(start={self.start:#x}, end={self.end:#x}, prot={self.prot}, "
                f"pages={len(self.pages)})")


class UserMm:
    """The process's address space (struct mm_struct): anonymous mappings
    placed top-down below ``MMAP_BASE``, each page allocated from the kernel's
    page allocator on first touch and freed when neither mapped nor pinned."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.vmas: list[Vma] = []             # sorted by start, disjoint
        self.pinned: dict[int, UserPage] = {}     # PA -> page with pins > 0

    # -- mmap / munmap ------------------------------------------------------------

    def _gap(self, length: int) -> int:
        top = MMAP_BASE
        for vma in sorted(self.vmas, key=lambda v: -v.start):
            if vma.start >= top:
                continue
            if vma.end <= top - length:
                return top - length
            top = vma.start
        if top - length >= MMAP_MIN_ADDR:
            return top - length
        raise fail(ENOMEM, "no room in the user address space")

    def mmap(self, length: int, prot: int = PROT_READ | PROT_WRITE) -> int:
        """mmap(NULL, length, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0): the VA."""
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise fail(EINVAL, f"bad mmap length {length!r}")
        if isinstance(prot, bool) or not isinstance(prot, int) or \
                prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC):
            raise fail(EINVAL, f"bad mmap prot {prot!r}")
        length = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if length > MMAP_BASE - MMAP_MIN_ADDR:
            raise fail(ENOMEM, "mapping larger than the address space")
        va = self._gap(length)
        self.vmas.append(Vma(va, va + length, prot))
        self.vmas.sort(key=lambda v: v.start)
        return va

    def munmap(self, va: int, length: int) -> None:
        """munmap(2): unaligned ``va`` or a zero length is EINVAL; holes are fine.
        Pages not pinned go back to the allocator; pinned ones stay until unpinned."""
        if isinstance(va, bool) or not isinstance(va, int) or va % PAGE_SIZE or \
                isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise fail(EINVAL, f"bad munmap({va!r}, {length!r})")
        end = va + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        keep: list[Vma] = []
        for vma in self.vmas:
            if vma.end <= va or vma.start >= end:
                keep.append(vma)
                continue
            if vma.start < va:
                keep.append(Vma(vma.start, va, vma.prot,
                                {a: p for a, p in vma.pages.items() if a < va}))
            if vma.end > end:
                keep.append(Vma(end, vma.end, vma.prot,
                                {a: p for a, p in vma.pages.items() if a >= end}))
            for a, page in vma.pages.items():
                if va <= a < end:
                    page.mapped = False
                    if not page.pins:
                        self.kernel.mm.free(page.pa, PAGE_SIZE)
        self.vmas = sorted(keep, key=lambda v: v.start)

    # -- pages ----------------------------------------------------------------------

    def _vma(self, va: int) -> Vma | None:
        for vma in self.vmas:
            if vma.start <= va < vma.end:
                return vma
        return None

    def _check(self, va: int, length: int, need: int) -> list[tuple[Vma, int]]:
        """(vma, page VA) for every page of [va, va + length), or EFAULT."""
        if isinstance(va, bool) or not isinstance(va, int) or va < 0 or \
                isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise fail(EFAULT, f"bad user range {va!r}, {length!r}")
        out = []
        page = va & ~(PAGE_SIZE - 1)
        while page < va + length:
            vma = self._vma(page)
            if vma is None or vma.prot & need != need:
                raise fail(EFAULT, f"user address {page:#x} not mapped for access {need}")
            out.append((vma, page))
            page += PAGE_SIZE
        return out

    def _page(self, vma: Vma, page_va: int) -> UserPage:
        """The page behind ``page_va``, allocated (zeroed) on first touch."""
        page = vma.pages.get(page_va)
        if page is None:
            page = vma.pages[page_va] = UserPage(self.kernel.mm.alloc(PAGE_SIZE, PAGE_SIZE))
        return page

    def _need_pages(self, pages: list[tuple[Vma, int]]) -> None:
        """ENOMEM up front, so a failed call allocates nothing."""
        missing = sum(1 for vma, a in pages if a not in vma.pages)
        mm = self.kernel.mm
        free_blocks = len(mm._free.get(PAGE_SIZE, []))
        room = (mm.end - ((mm._next + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))) // PAGE_SIZE
        if missing > free_blocks + max(room, 0):
            raise fail(ENOMEM, "out of memory for user pages")

    def pin_user_pages(self, va: int, npages: int, write: bool = True) -> list[int]:
        """pin_user_pages(FOLL_LONGTERM [| FOLL_WRITE]): the host PAs of ``npages``
        pages from the page holding ``va``; all or nothing (EFAULT when any page
        is unmapped, or not writable for a write pin)."""
        if isinstance(npages, bool) or not isinstance(npages, int) or npages <= 0:
            raise fail(EINVAL, f"bad page count {npages!r}")
        start = va & ~(PAGE_SIZE - 1) if isinstance(va, int) else va
        pages = self._check(start, npages * PAGE_SIZE, PROT_WRITE if write else PROT_READ)
        self._need_pages(pages)
        out = []
        for vma, a in pages:
            page = self._page(vma, a)
            page.pins += 1
            self.pinned[page.pa] = page
            out.append(page.pa)
        return out

    def unpin_user_pages(self, pas: list[int]) -> None:
        """unpin_user_pages(): a page neither mapped nor pinned any more is freed.
        A PA that is not pinned is EINVAL (Linux WARNs) and nothing is unpinned."""
        counts: dict[int, int] = {}
        for pa in pas:
            counts[pa] = counts.get(pa, 0) + 1
        for pa, n in counts.items():
            page = self.pinned.get(pa)
            if page is None or page.pins < n:
                self.kernel.printk(f"WARNING: unpin of a page not pinned: {pa:#x}")
                raise fail(EINVAL, f"page {pa:#x} is not pinned")
        for pa in pas:
            page = self.pinned[pa]
            page.pins -= 1
            if not page.pins:
                del self.pinned[pa]
                if not page.mapped:
                    self.kernel.mm.free(page.pa, PAGE_SIZE)

    # -- copy_to_user / copy_from_user ------------------------------------------------

    def write(self, va: int, data: bytes) -> None:
        """Store ``data`` at user address ``va`` (EFAULT, nothing written, if any
        byte is outside a writable mapping)."""
        data = bytes(data)
        pages = self._check(va, len(data), PROT_WRITE)
        self._need_pages(pages)
        off = 0
        while off < len(data):
            a = va + off
            vma = self._vma(a)
            assert vma is not None
            page = self._page(vma, a & ~(PAGE_SIZE - 1))
            n = min(len(data) - off, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
            self.kernel.ram.write(page.pa + (a & (PAGE_SIZE - 1)), data[off:off + n])
            off += n

    def read(self, va: int, n: int) -> bytes:
        """``n`` bytes from user address ``va`` (an untouched page reads as zeros,
        like the zero page; EFAULT outside readable mappings)."""
        self._check(va, n, PROT_READ)
        out = bytearray()
        while len(out) < n:
            a = va + len(out)
            vma = self._vma(a)
            assert vma is not None
            take = min(n - len(out), PAGE_SIZE - (a & (PAGE_SIZE - 1)))
            page = vma.pages.get(a & ~(PAGE_SIZE - 1))
            out += (bytes(self.kernel.ram.read(page.pa + (a & (PAGE_SIZE - 1)), take))
                    if page is not None else bytes(take))
        return bytes(out)

    def resident(self) -> int:
        """Pages of host RAM behind the process: mapped or pinned."""
        pas = {p.pa for v in self.vmas for p in v.pages.values()} | set(self.pinned)
        return len(pas)
