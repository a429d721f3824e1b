"""The kernel model's userspace interface: files, ioctls, eventfd, mmap, sysfs binding.

Expected values come from Linux's documented behaviour: open(2) / close(2) /
dup(2) / ioctl(2) / read(2) (lowest free descriptor, EBADF, ENOTTY, EINVAL
for a file without the op), eventfd(2) (the counter, EFD_SEMAPHORE, EAGAIN,
the 0xfffffffffffffffe ceiling), mmap(2) / munmap(2), pin_user_pages (a
pinned page outlives its mapping), and the driver core's sysfs files
(drivers/base/bus.c bind_store / unbind_store: ENODEV, EBUSY from
__driver_probe_device; driver_set_override; kernfs: EACCES for a write to a
read-only attribute) — never from the model's own code.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from pymsi.kernel.base import fail
from pymsi.kernel.drivers import MsiCountingDriver, msi_counting_pci_driver
from pymsi.kernel.files import (
    EFD_NONBLOCK,
    EFD_SEMAPHORE,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    FIOCLEX,
    FIONBIO,
    FIONCLEX,
    O_CLOEXEC,
    O_NONBLOCK,
    O_RDONLY,
    O_WRONLY,
    PROT_READ,
    FileOperations,
)
from pymsi.machine import ArmVirt, X86Pc

from kernel_util import errno_of

EBADF, ENOTTY, ENOENT, EINVAL, EAGAIN, EFAULT, EMFILE = (
    errno.EBADF, errno.ENOTTY, errno.ENOENT, errno.EINVAL, errno.EAGAIN, errno.EFAULT,
    errno.EMFILE)
ENODEV, EBUSY, EACCES, EISDIR, EPERM, EIO = (
    errno.ENODEV, errno.EBUSY, errno.EACCES, errno.EISDIR, errno.EPERM, errno.EIO)
U64_MAX = 2**64 - 1
PAGE = 4096
BDF0, BDF1 = "0000:00:01.0", "0000:00:02.0"




def arm(n=2):
    m = ArmVirt(devices=[{"msix": 4}] * n)
    return m, m.boot()


class ToyDev(FileOperations):
    """A test-only character device: counts opens and releases, answers one ioctl."""

    MAGIC = 0x1234

    def __init__(self, refuse_open=False):
        self.opens, self.released, self.refuse_open = 0, [], refuse_open

    def open(self, file):
        if self.refuse_open:
            raise fail(EBUSY, "toy is exclusive")
        self.opens += 1
        file.private_data = {"n": self.opens}

    def release(self, file):
        self.released.append(file)

    def unlocked_ioctl(self, file, cmd, arg):
        if cmd != self.MAGIC:
            raise fail(ENOTTY)
        return arg + 1

    def read(self, file, count):
        return b"t" * count


class Silent(FileOperations):
    """A device with neither ioctl nor read nor write."""


@pytest.fixture
def k():
    return arm()[1]


# -- files ------------------------------------------------------------------------------


def test_fd_numbers_are_lowest_free_from_3(k):
    toy = ToyDev()
    k.register_chrdev("/dev/toy", toy)
    a, b, c = (k.open("/dev/toy") for _ in range(3))
    assert (a.fd, b.fd, c.fd) == (3, 4, 5)
    b.close()
    assert k.open("/dev/toy").fd == 4                    # the hole is filled first
    assert k.dup(a) == 6
    a.close()
    assert k.dup(c) == 3
    assert a.private_data == {"n": 1} and toy.opens == 4


def test_open_errors_use_no_descriptor(k):
    k.register_chrdev("/dev/toy", ToyDev())
    k.register_chrdev("/dev/excl", ToyDev(refuse_open=True))
    assert errno_of(k.open, "/dev/nothing") == ENOENT
    assert errno_of(k.open, "dev/toy") == ENOENT               # not absolute
    assert errno_of(k.open, "/dev/toy", 0o10000000000) == EINVAL
    assert errno_of(k.open, "/dev/excl") == EBUSY               # the device's open refused
    assert errno_of(k.register_chrdev, "/dev/toy", ToyDev()) == errno.EEXIST
    assert k.open("//dev/./toy").fd == 3                        # the VFS collapses these
    k.files.limit = 5
    assert k.open("/dev/toy").fd == 4
    assert errno_of(k.open, "/dev/toy") == EMFILE
    assert errno_of(k.eventfd) == EMFILE
    assert sorted(k.files.open_files()) == [3, 4]


def test_ioctl_dispatch_and_enotty(k):
    k.register_chrdev("/dev/toy", ToyDev())
    k.register_chrdev("/dev/silent", Silent())
    f, s = k.open("/dev/toy"), k.open("/dev/silent")
    assert f.ioctl(ToyDev.MAGIC, 41) == 42
    assert k.ioctl(f.fd, ToyDev.MAGIC, 1) == 2
    assert errno_of(f.ioctl, 0xDEAD, 0) == ENOTTY               # unknown to the device
    assert errno_of(s.ioctl, ToyDev.MAGIC, 0) == ENOTTY         # no unlocked_ioctl at all
    assert errno_of(s.read) == EINVAL and errno_of(s.write, b"x") == EINVAL
    assert f.read(3) == b"ttt"
    w = k.open("/dev/toy", O_WRONLY)
    assert errno_of(w.read, 1) == EBADF                         # not open for reading
    r = k.open("/dev/toy", O_RDONLY)
    assert errno_of(r.write, b"x") == EBADF
    assert not f.f_flags & O_NONBLOCK
    f.ioctl(FIONBIO, 1)                                         # generic, before the device
    assert f.f_flags & O_NONBLOCK
    f.ioctl(FIONBIO, 0)
    assert not f.f_flags & O_NONBLOCK
    c = k.open("/dev/toy", O_CLOEXEC)                           # close-on-exec is per descriptor
    d = k.dup(c)
    assert c.fd in k.files.cloexec and d not in k.files.cloexec
    c.ioctl(FIONCLEX)
    assert c.fd not in k.files.cloexec
    k.ioctl(d, FIOCLEX)
    assert d in k.files.cloexec
    k.close(d)
    assert d not in k.files.cloexec
    assert s.poll() == EPOLLIN | EPOLLOUT                       # no poll op: always ready


def test_closed_descriptor_is_ebadf(k):
    toy = ToyDev()
    k.register_chrdev("/dev/toy", toy)
    f = k.open("/dev/toy")
    f.close()
    assert toy.released == [f]
    for call in (lambda: f.ioctl(ToyDev.MAGIC, 0), f.read, f.close, lambda: k.fget(3),
                 lambda: k.close(3), lambda: k.dup(3), lambda: k.fget(99), lambda: k.fget(-1)):
        assert errno_of(call) == EBADF
    assert toy.released == [f]
    g = k.open("/dev/toy")                                      # reuses number 3
    assert g.fd == 3
    for call in (lambda: f.ioctl(ToyDev.MAGIC, 0), f.close, lambda: k.dup(f)):
        assert errno_of(call) == EBADF                          # f's descriptor is gone
    assert g.ioctl(ToyDev.MAGIC, 0) == 1 and toy.released == [f]


def test_release_runs_once_when_the_last_reference_goes(k):
    toy = ToyDev()
    k.register_chrdev("/dev/toy", toy)
    f = k.open("/dev/toy")
    n2 = k.dup(f)
    held = k.fget(f.fd)                                          # a kernel reference
    assert held is f and f.f_count == 3
    f.close()
    assert toy.released == [] and errno_of(f.ioctl, ToyDev.MAGIC, 0) == EBADF
    assert k.ioctl(n2, ToyDev.MAGIC, 7) == 8                    # the dup still works
    k.close(n2)
    assert toy.released == []                                   # fget's reference holds it
    k.fput(held)
    assert toy.released == [f]
    assert errno_of(k.fput, held) == EINVAL and toy.released == [f]


def test_unregistered_node_keeps_open_files(k):
    toy = ToyDev()
    k.register_chrdev("/dev/toy", toy)
    f = k.open("/dev/toy")
    k.unregister_chrdev("/dev/toy")
    assert errno_of(k.open, "/dev/toy") == ENOENT
    assert f.ioctl(ToyDev.MAGIC, 0) == 1
    assert errno_of(k.unregister_chrdev, "/dev/toy") == ENOENT


def test_process_exit_closes_everything(k):
    toy = ToyDev()
    k.register_chrdev("/dev/toy", toy)
    files = [k.open("/dev/toy") for _ in range(3)]
    ev = k.eventfd()
    k.files.close_all()
    assert toy.released == files[::-1] and ev.f_count == 0 and len(k.files) == 0


# -- eventfd --------------------------------------------------------------------------


def test_eventfd_counter_semantics(k):
    ev = k.eventfd(5)
    assert ev.fd == 3
    assert ev.read() == 5
    assert errno_of(ev.read) == EAGAIN                           # zero: would block
    assert ev.write(2) == 8 and ev.write((3).to_bytes(8, "little")) == 8
    assert ev.read() == 5
    assert errno_of(ev.read, 4) == EINVAL                        # fewer than 8 bytes
    assert errno_of(ev.write, b"\x01\x00") == EINVAL
    assert errno_of(ev.write, U64_MAX) == EINVAL
    assert ev.write(U64_MAX - 1) == 8                            # the largest count
    assert errno_of(ev.write, 1) == EAGAIN                       # would overflow: would block
    assert ev.read() == U64_MAX - 1
    assert errno_of(ev.write, -1) == EINVAL and errno_of(ev.write, 2**64) == EINVAL


def test_eventfd_semaphore_and_nonblock(k):
    ev = k.eventfd(2, EFD_SEMAPHORE | EFD_NONBLOCK)
    assert ev.f_flags & O_NONBLOCK
    assert [ev.read(), ev.read()] == [1, 1]
    assert errno_of(ev.read) == EAGAIN
    ev.write(3)
    assert ev.read() == 1 and ev.private_data.count == 2
    assert errno_of(k.eventfd, 0, 0x40) == EINVAL                # unknown flag
    assert errno_of(k.eventfd, 2**32) == EINVAL                  # initval is an unsigned int
    assert errno_of(k.eventfd, -1) == EINVAL


def test_eventfd_signal_wait_queue_and_fget(k):
    ev = k.eventfd()
    assert k.fget(ev.fd) is ev
    k.fput(ev)
    ctx = k.eventfd_ctx_fdget(ev.fd)
    seen = []
    entry = ctx.add_wait_queue(lambda c, key: seen.append(key))
    for _ in range(3):
        assert k.eventfd_signal(ctx)
    assert seen == [EPOLLIN] * 3 and ev.read() == 3
    ev.write(2)
    assert seen[-1] & EPOLLIN and len(seen) == 5               # the write woke it, the read too
    ev.write(0)                                                  # a write of 0 wakes too
    assert seen[-1] == EPOLLIN and len(seen) == 6
    assert ctx.remove_wait_queue(entry) == 2                    # count returned and cleared
    k.eventfd_signal(ctx)
    assert len(seen) == 6 and ev.read() == 1
    assert errno_of(ctx.remove_wait_queue, entry) == ENOENT
    # a toy file is not an eventfd; a closed number is not a file
    k.register_chrdev("/dev/toy", ToyDev())
    t = k.open("/dev/toy")
    assert errno_of(k.eventfd_ctx_fdget, t.fd) == EINVAL
    assert errno_of(k.eventfd_ctx_fdget, 42) == EBADF
    # close: waiters get EPOLLHUP, the kernel's context reference keeps counting
    hup = []
    ctx.add_wait_queue(lambda c, key: hup.append(key))
    ev.close()
    assert hup == [EPOLLHUP] and ctx.refs == 1
    k.eventfd_signal(ctx)
    assert ctx.count == 1
    ctx.put()
    assert errno_of(ctx.put) == EINVAL


def test_eventfd_signal_saturates_and_does_not_recurse(k):
    a, b = k.eventfd(), k.eventfd()
    ca, cb = a.private_data, b.private_data
    cb.add_wait_queue(lambda c, key: k.eventfd_signal(ca))      # a wake-up that signals again
    assert k.eventfd_signal(cb)
    assert ca.count == 0 and ca.dropped == 1 and any("WARNING" in s for s in k.log)
    b.write(1)                                                   # from a user write's wake-up
    assert ca.count == 0 and ca.dropped == 2
    cb.count, cb.flags = 3, EFD_SEMAPHORE
    assert [cb.do_read(), cb.do_read()] == [1, 1] and cb.count == 1
    cb.flags = 0
    assert cb.do_read() == 1 and cb.do_read() == 0
    a.write(U64_MAX - 1)
    k.eventfd_signal(ca)
    k.eventfd_signal(ca)
    assert ca.count == U64_MAX                                   # eventfd_signal saturates
    assert a.poll() & 0x8                                         # EPOLLERR: overflowed


@given(init=st.integers(0, 2**32 - 1), ops=st.lists(st.one_of(
    st.tuples(st.just("w"), st.one_of(st.integers(0, 2**64 - 1),
                                      st.sampled_from([0, 1, U64_MAX - 1, U64_MAX]))),
    st.tuples(st.just("r"), st.just(0)), st.tuples(st.just("s"), st.just(0))), max_size=20),
    sem=st.booleans())
def test_eventfd_matches_a_reference_counter(init, ops, sem):
    m = ArmVirt(devices=[])
    k = m.boot()
    ev = k.eventfd(init, EFD_SEMAPHORE if sem else 0)
    count = init
    for op, n in ops:
        if op == "w":
            if n == U64_MAX:
                want = EINVAL
            elif count + n > U64_MAX - 1:
                want = EAGAIN
            else:
                want, count = None, count + n
            event(f"write {want}")
            assert errno_of(ev.write, n) == want
        elif op == "s":
            k.eventfd_signal(ev.private_data)
            count = min(count + 1, U64_MAX)
        else:
            if count == 0:
                assert errno_of(ev.read) == EAGAIN
                event("read EAGAIN")
            else:
                got = ev.read()
                assert got == (1 if sem else count)
                count -= got
        assert ev.private_data.count == count


# -- anonymous memory ---------------------------------------------------------------------


def test_mmap_places_page_aligned_disjoint_mappings(k):
    a = k.mmap(1)
    b = k.mmap(3 * PAGE + 1)
    assert a % PAGE == 0 and b % PAGE == 0
    assert b + 4 * PAGE <= a or a + PAGE <= b                     # rounded up, disjoint
    assert errno_of(k.mmap, 0) == EINVAL
    assert errno_of(k.mmap, PAGE, 0x10) == EINVAL
    assert errno_of(k.mmap, 1 << 60) == errno.ENOMEM
    assert k.user_read(b, 8) == bytes(8)                         # anonymous memory is zero
    k.user_write(b + PAGE - 2, b"abcd")                          # across a page boundary
    assert k.user_read(b + PAGE - 3, 6) == b"\0abcd\0"


def test_user_access_outside_mappings_is_efault_and_writes_nothing(k):
    va = k.mmap(2 * PAGE)
    ro = k.mmap(PAGE, PROT_READ)
    before = k.mm.in_use
    assert errno_of(k.user_write, va + PAGE, b"x" * (PAGE + 1)) == EFAULT
    assert errno_of(k.user_read, va - PAGE, 1) == EFAULT or va - PAGE == ro
    assert errno_of(k.user_write, ro, b"x") == EFAULT             # read-only mapping
    assert k.user_read(ro, 1) == b"\0"
    assert k.mm.in_use == before and k.user_read(va + PAGE, 8) == bytes(8)
    assert errno_of(k.user_read, 0x1000, 1) == EFAULT


def test_pin_gives_the_pages_a_dma_would_reach(k):
    va = k.mmap(3 * PAGE)
    k.user_write(va, b"A" * PAGE + b"B" * PAGE)
    pas = k.pin_user_pages(va, 3)
    assert len(set(pas)) == 3 and all(pa % PAGE == 0 for pa in pas)
    assert k.ram.read(pas[1], 4) == b"BBBB"
    k.ram.write(pas[2] + 16, b"dma!")                             # a device writes the page
    assert k.user_read(va + 2 * PAGE + 16, 4) == b"dma!"
    assert k.pin_user_pages(va + 5, 1) == pas[:1]                 # the page holding va
    k.unpin_user_pages(pas[:1])


def test_pin_errors_change_nothing(k):
    va = k.mmap(2 * PAGE)
    ro = k.mmap(PAGE, PROT_READ)
    before = (k.mm.in_use, dict(k.user_mm.pinned))
    assert errno_of(k.pin_user_pages, va, 3) == EFAULT or va + 2 * PAGE == ro
    assert errno_of(k.pin_user_pages, ro, 1) == EFAULT            # write pin of read-only
    assert errno_of(k.pin_user_pages, 0x10_0000, 1) == EFAULT
    assert errno_of(k.pin_user_pages, va, 0) == EINVAL
    assert (k.mm.in_use, dict(k.user_mm.pinned)) == before
    assert len(k.pin_user_pages(ro, 1, write=False)) == 1         # a read pin is fine


def test_munmap_of_pinned_pages_keeps_them_until_unpinned(k):
    base = k.mm.in_use
    va = k.mmap(4 * PAGE)
    k.user_write(va, b"keep" + bytes(PAGE - 4) + b"gone")
    assert k.mm.in_use == base + 2 * PAGE                        # pages come on first touch
    pas = k.pin_user_pages(va, 1)
    k.munmap(va, 4 * PAGE)
    assert errno_of(k.user_read, va, 1) == EFAULT                 # the mapping went
    assert k.mm.in_use == base + PAGE                             # the pinned page did not
    assert k.ram.read(pas[0], 4) == b"keep"
    other = k.mmap(PAGE)
    k.user_write(other, b"new")                                   # cannot reuse a pinned page
    pas2 = k.pin_user_pages(other, 1)
    assert pas2 != pas
    k.unpin_user_pages(pas)
    assert errno_of(k.unpin_user_pages, pas) == EINVAL            # not pinned any more
    k.munmap(other, PAGE)
    assert k.mm.in_use == base + PAGE
    k.unpin_user_pages(pas2)
    assert k.mm.in_use == base and k.user_mm.resident() == 0


def test_munmap_splits_and_checks_arguments(k):
    va = k.mmap(3 * PAGE)
    k.user_write(va, b"a" * 3 * PAGE)
    k.munmap(va + PAGE, PAGE)                                      # a hole in the middle
    assert k.user_read(va, 1) == b"a" and k.user_read(va + 2 * PAGE, 1) == b"a"
    assert errno_of(k.user_read, va + PAGE, 1) == EFAULT
    assert errno_of(k.munmap, va + 1, PAGE) == EINVAL
    assert errno_of(k.munmap, va, 0) == EINVAL
    k.munmap(va, 3 * PAGE)                                         # holes are fine
    assert k.user_mm.vmas == [] and k.user_mm.resident() == 0


# -- sysfs and driver binding -------------------------------------------------------------


class ToyDriver:
    """A test PCI driver: records probe/remove, can refuse the probe."""

    def __init__(self, k, name="toy-pci", refuse=None, ids=()):
        self.k, self.probed, self.removed, self.refuse = k, [], [], refuse
        self.drv = k.pci_register_driver(name, self.probe, self.remove, ids)

    def probe(self, dev):
        if self.refuse is not None:
            raise fail(self.refuse, "probe refuses")
        self.probed.append(dev.bdf)
        return {"bdf": dev.bdf}

    def remove(self, dev):
        self.removed.append(dev.bdf)


def dev_path(bdf, attr=""):
    return f"/sys/bus/pci/devices/{bdf}" + (f"/{attr}" if attr else "")


def binding(k):
    """Everything a failed sysfs write must leave alone."""
    return [(d.bdf, d.driver and d.driver.name, d.driver_data is not None, d.driver_override,
             len(d.msi_descs)) for d in k.pci.devices]


def test_driver_override_read_write(k):
    p = dev_path(BDF0, "driver_override")
    assert k.sysfs_read(p) == "(null)\n"
    k.sysfs_write(p, "vfio-pci\n")
    assert k.sysfs_read(p) == "vfio-pci\n"
    k.sysfs_write(p, "a\nb")                                       # up to the first newline
    assert k.sysfs_read(p) == "a\n"
    k.sysfs_write(p, "\n")
    assert k.sysfs_read(p) == "(null)\n"
    k.sysfs_write(p, "x")
    k.sysfs_write(p, "")
    assert k.sysfs_read(p) == "(null)\n"
    k.sysfs_write(p, "keep")
    assert errno_of(k.sysfs_write, p, "y" * 4095) == EINVAL       # >= PAGE_SIZE - 1
    assert k.sysfs_read(p) == "keep\n"


def test_move_a_device_from_a_host_driver_to_another(k):
    dev = k.pci.devices[0]
    host = MsiCountingDriver(k, dev, 4, name="nic")
    assert k.sysfs_read(dev_path(BDF0, "driver")) == "nic\n"
    toy = ToyDriver(k)
    assert toy.probed == []                                         # no ids, no override
    before = binding(k)
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers/toy-pci/bind", BDF0) == ENODEV
    k.sysfs_write(dev_path(BDF0, "driver_override"), "toy-pci")
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers/toy-pci/bind", BDF0) == EBUSY
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers/toy-pci/unbind", BDF0) == ENODEV
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers/nic/unbind", BDF1) == ENODEV
    assert binding(k)[1:] == before[1:] and dev.driver.name == "nic"
    # unbind through the device's driver link: remove() frees the vectors
    k.sysfs_write(dev_path(BDF0, "driver/unbind"), BDF0 + "\n")
    assert dev.driver is None and dev.msi_descs == {} and k.its.devices == {}
    assert all(irq not in k.irq.descs for irq in host.irqs)
    assert errno_of(k.sysfs_read, dev_path(BDF0, "driver")) == ENOENT
    assert errno_of(k.sysfs_write, dev_path(BDF0, "driver/unbind"), BDF0) == ENOENT
    k.sysfs_write("/sys/bus/pci/drivers/toy-pci/bind", BDF0)
    assert toy.probed == [BDF0] and dev.driver_data == {"bdf": BDF0}
    assert k.sysfs_read(dev_path(BDF0, "driver")) == "toy-pci\n"
    k.sysfs_write("/sys/bus/pci/drivers/toy-pci/unbind", BDF0)
    assert toy.removed == [BDF0] and dev.driver is None
    # and back to a host driver: the device works again
    again = MsiCountingDriver(k, dev, 2, name="nic")
    assert again.nvec == 2 and dev.driver.name == "nic"


def test_bind_errors_change_nothing(k):
    toy = ToyDriver(k)
    k.sysfs_write(dev_path(BDF1, "driver_override"), "other")
    before = binding(k)
    cases = [("/sys/bus/pci/drivers/toy-pci/bind", "0000:00:09.0", ENODEV),
             ("/sys/bus/pci/drivers/toy-pci/bind", BDF1, ENODEV),      # override names another
             ("/sys/bus/pci/drivers/toy-pci/bind", "", ENODEV),
             ("/sys/bus/pci/drivers/nope/bind", BDF0, ENOENT),
             ("/sys/bus/pci/drivers/toy-pci/unbind", BDF0, ENODEV),
             ("/sys/bus/pci/drivers/toy-pci/bind", BDF0, ENODEV),      # no override, no ids
             (dev_path(BDF0, "iommu_group"), "1", EISDIR),           # a link to a directory
             ("/sys/bus/pci/drivers_probe", "0000:00:09.0", ENODEV),
             (dev_path(BDF0, "vendor"), "1", EACCES),
             (dev_path(BDF0), "x", EISDIR),
             (dev_path("0000:00:09.0", "driver_override"), "x", ENOENT),
             ("/sys/bus/usb/drivers/toy-pci/bind", BDF0, ENOENT),
             ("/proc/irq/1/smp_affinity", "1", ENOENT)]
    for path, text, want in cases:
        assert errno_of(k.sysfs_write, path, text) == want, path
        assert binding(k) == before and toy.probed == [] and toy.removed == []
    for path, want in [("/sys/bus/pci/drivers/toy-pci/bind", EACCES),
                       ("/sys/bus/pci/drivers/toy-pci/unbind", EACCES),
                       ("/sys/bus/pci/drivers/toy-pci", EISDIR),
                       ("/sys/bus/pci/drivers/nope/bind", ENOENT),
                       ("relative", ENOENT)]:
        assert errno_of(k.sysfs_read, path) == want, path
    assert k.sysfs_read(dev_path(BDF0, "vendor")) == f"{k.pci.devices[0].vendor:#06x}\n"


def test_failed_probe_leaves_the_device_unbound(k):
    bad = ToyDriver(k, "bad-pci", refuse=EIO)
    k.sysfs_write(dev_path(BDF0, "driver_override"), "bad-pci")
    before = binding(k)
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers/bad-pci/bind", BDF0) == EIO
    assert binding(k) == before and bad.drv.devices == []
    assert k.iommu.group_for(k.pci.devices[0]).kernel_users == 0
    assert errno_of(k.pci_register_driver, "bad-pci", bad.probe) == EBUSY


def test_id_table_binds_at_registration_and_override_wins(k):
    dev0, dev1 = k.pci.devices
    k.sysfs_write(dev_path(BDF1, "driver_override"), "someone-else")
    toy = ToyDriver(k, ids=[(dev0.vendor, 0xFFFF_FFFF)])
    assert toy.probed == [BDF0] and dev1.driver is None            # override excludes dev1
    k.sysfs_write(dev_path(BDF1, "driver_override"), "")
    k.sysfs_write("/sys/bus/pci/drivers_probe", BDF1)
    assert toy.probed == [BDF0, BDF1]
    k.pci_unregister_driver("toy-pci")
    assert sorted(toy.removed) == [BDF0, BDF1] and dev0.driver is dev1.driver is None
    assert errno_of(k.sysfs_read, "/sys/bus/pci/drivers/toy-pci/bind") == ENOENT


def test_registered_msi_driver_and_dma_ownership(k):
    dev = k.pci.devices[0]
    group = k.iommu.group_for(dev)
    assert k.sysfs_read(dev_path(BDF0, "iommu_group")) == f"{group.id}\n"
    msi_counting_pci_driver(k, "cnt", 3, id_table=[(dev.vendor, dev.device)])
    assert dev.driver.name == "cnt" and dev.driver_data.nvec == 3
    # a kernel driver uses the default domain: userspace cannot take the group
    assert errno_of(k.iommu.claim_dma_owner, group, "vfio") == EPERM
    k.sysfs_write("/sys/bus/pci/drivers/cnt/unbind", BDF0)
    assert dev.msi_descs == {} and group.kernel_users == 0
    k.iommu.claim_dma_owner(group, "vfio")
    before = binding(k)
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers_probe", BDF0) is None
    assert binding(k) == before                                     # probe refused: EBUSY
    assert errno_of(MsiCountingDriver, k, dev, 2) == EBUSY and dev.msi_descs == {}
    k.iommu.release_dma_owner(group)
    k.sysfs_write("/sys/bus/pci/drivers_probe", BDF0)
    assert dev.driver.name == "cnt"


def test_remove_that_leaves_vectors_gets_them_freed(k):
    dev = k.pci.devices[0]

    def probe(d):
        return k.msi.alloc_irq_vectors(d, 1, 2, MsiCountingDriver.__init__.__defaults__[0])

    k.pci_register_driver("leaky", probe, lambda d: None, [(dev.vendor, dev.device)])
    assert len(dev.msi_descs) == 2
    k.sysfs_write("/sys/bus/pci/drivers/leaky/unbind", BDF0)
    assert dev.msi_descs == {} and any("WARNING" in s and "leaky" in s for s in k.log)


def test_x86_devices_have_one_vtd_group_each():
    k = X86Pc(devices=[{"msix": 2}] * 2).boot()
    g0 = k.sysfs_read(dev_path(BDF0, "iommu_group"))
    assert g0 != k.sysfs_read(dev_path(k.pci.devices[1].bdf, "iommu_group"))
    # The default domain is identity: the kernel's DMA is untranslated.
    assert k.iommu.group_for(k.pci.devices[0]).domain.type.value == "identity"
    drv = MsiCountingDriver(k, k.pci.devices[0], 2, name="nic")
    k.sysfs_write(dev_path(BDF0, "driver/unbind"), BDF0)
    assert k.pci.devices[0].msi_descs == {} and drv.dev.driver is None


# -- state machines -------------------------------------------------------------------------


class FileRefs(RuleBasedStateMachine):
    """open / dup / close / fget / fput: the count never goes negative, release
    runs exactly once, when the last descriptor and reference are gone."""

    fds = Bundle("fds")
    refs = Bundle("refs")

    def __init__(self):
        super().__init__()
        self.k = ArmVirt(devices=[]).boot()
        self.toy = ToyDev()
        self.k.register_chrdev("/dev/toy", self.toy)
        self.model: dict[int, object] = {}          # fd -> file
        self.held: list[object] = []                # kernel references

    def alive(self, f):
        return f in self.model.values() or f in self.held

    @initialize(target=fds)
    def first(self):
        return self.open(False)

    @rule(target=fds, ev=st.booleans())
    def open(self, ev):
        f = self.k.eventfd() if ev else self.k.open("/dev/toy")
        assert f.fd == min(set(range(3, 64)) - set(self.model))
        self.model[f.fd] = f
        return f.fd

    @rule(target=fds, n=fds)
    def dup(self, n):
        if n not in self.model:
            assert errno_of(self.k.dup, n) == EBADF
            return -1
        m = self.k.dup(n)
        self.model[m] = self.model[n]
        event("dup")
        return m

    @rule(n=fds)
    def close(self, n):
        if n not in self.model:
            assert errno_of(self.k.close, n) == EBADF
            return
        f = self.model.pop(n)
        self.k.close(n)
        assert f.released == (not self.alive(f))
        event("released by close" if f.released else "close")

    @rule(target=refs, n=fds)
    def fget(self, n):
        if n not in self.model:
            assert errno_of(self.k.fget, n) == EBADF
            return None
        f = self.k.fget(n)
        assert f is self.model[n]
        self.held.append(f)
        return f

    @rule(f=consumes(refs))
    def fput(self, f):
        if f is None:
            return
        self.held.remove(f)
        self.k.fput(f)
        assert f.released == (not self.alive(f))
        event("released by fput" if f.released else "fput")

    @rule(n=fds)
    def ioctl(self, n):
        if n not in self.model:
            assert errno_of(self.k.ioctl, n, ToyDev.MAGIC, 0) == EBADF
        elif self.model[n].cdev is None:
            assert errno_of(self.k.ioctl, n, ToyDev.MAGIC, 0) == ENOTTY
        else:
            assert self.k.ioctl(n, ToyDev.MAGIC, 0) == 1

    @invariant()
    def counts(self):
        files = {id(f): f for f in list(self.model.values()) + self.held}
        for f in files.values():
            want = sum(g is f for g in self.model.values()) + sum(g is f for g in self.held)
            assert f.f_count == want > 0 and not f.released
        assert len(self.toy.released) == len(set(map(id, self.toy.released)))
        assert all(f.f_count == 0 for f in self.toy.released)


TestFileRefs = FileRefs.TestCase


class Binding(RuleBasedStateMachine):
    """driver_override / bind / unbind over two devices and three drivers
    (a host MSI driver with an id table, two override-only ones): a device is
    bound to at most one driver, one that matches; a failed write changes nothing."""

    DRIVERS = ["cnt", "toy-a", "toy-b"]

    def __init__(self):
        super().__init__()
        self.m, self.k = arm()
        d = self.k.pci.devices[0]
        self.toys = [ToyDriver(self.k, n) for n in self.DRIVERS[1:]]
        msi_counting_pci_driver(self.k, "cnt", 2, id_table=[(d.vendor, d.device)])

    def matches(self, drv, dev):
        return dev.driver_override == drv if dev.driver_override is not None else drv == "cnt"

    @rule(i=st.integers(0, 1), name=st.sampled_from(["", "\n", "cnt", "toy-a", "toy-b\n"]))
    def override(self, i, name):
        self.k.sysfs_write(dev_path(self.k.pci.devices[i].bdf, "driver_override"), name)
        assert self.k.pci.devices[i].driver_override == (name.strip() or None)

    @rule(i=st.integers(0, 2), drv=st.sampled_from(DRIVERS))
    def bind(self, i, drv):
        bdf = ["0000:00:01.0", "0000:00:02.0", "0000:00:07.0"][i]
        dev = next((d for d in self.k.pci.devices if d.bdf == bdf), None)
        if dev is None or not self.matches(drv, dev):
            want = ENODEV
        elif dev.driver is not None:
            want = EBUSY
        else:
            want = None
        before = binding(self.k)
        got = errno_of(self.k.sysfs_write, f"/sys/bus/pci/drivers/{drv}/bind", bdf)
        event(f"bind {errno.errorcode.get(want, 'ok')}")
        assert got == want
        if want is not None:
            assert binding(self.k) == before
        else:
            assert dev.driver.name == drv

    @rule(i=st.integers(0, 1), drv=st.sampled_from(DRIVERS), via_dev=st.booleans())
    def unbind(self, i, drv, via_dev):
        dev = self.k.pci.devices[i]
        path = f"/sys/bus/pci/drivers/{drv}/unbind"
        if via_dev:
            path = dev_path(dev.bdf, "driver/unbind")
            want = ENOENT if dev.driver is None else None
        else:
            want = None if dev.driver is not None and dev.driver.name == drv else ENODEV
        before = binding(self.k)
        assert errno_of(self.k.sysfs_write, path, dev.bdf) == want
        if want is None:
            assert dev.driver is None and dev.msi_descs == {}
        else:
            assert binding(self.k) == before

    @rule(i=st.integers(0, 1), v=st.integers(0, 1))
    def fire(self, i, v):
        dev = self.k.pci.devices[i]
        self.m.functions[i].notify(v)
        self.k.handle_interrupts()
        if dev.driver is not None and dev.driver.name == "cnt":
            assert len(dev.driver_data.fired[v]) >= 1

    @invariant()
    def consistent(self):
        for dev in self.k.pci.devices:
            drv = dev.driver
            if drv is None:
                assert dev.driver_data is None and dev.msi_descs == {}
                assert errno_of(self.k.sysfs_read, dev_path(dev.bdf, "driver")) == ENOENT
            else:
                assert dev in drv.devices
                assert self.k.sysfs_read(dev_path(dev.bdf, "driver")) == drv.name + "\n"
            group = self.k.iommu.group_for(dev)
            assert group.kernel_users == (drv is not None)
        for drv in self.k.pci_driver_core.drivers.values():
            assert all(d.driver is drv for d in drv.devices)


TestBinding = Binding.TestCase
