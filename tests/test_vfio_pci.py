"""vfio-pci with the device cdev, driven through the uapi structures.

Expected values come from Linux's documented behaviour (include/uapi/linux/vfio.h,
drivers/vfio/pci/vfio_pci_core.c and vfio_pci_intrs.c, drivers/vfio/device_cdev.c):
the cdev refuses every ioctl but BIND_IOMMUFD with EINVAL until bound; region
offsets are ``index << 40``; SET_IRQS validation is vfio_set_irqs_validate_and_prepare
(EINVAL); MSI/MSI-X MASK/UNMASK have no handler (ENOTTY); an fd of -1 tears a
vector down; count 0 + DATA_NONE disables; dynamic MSI-X grows at run time.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pymsi.kernel.base import KernelError
from pymsi.machine import ArmVirt, X86Pc
from pymsi.uapi import vfio as V

from kernel_util import errno_of

EINVAL, ENOTTY, EBADF, ENODEV, ENOENT, EBUSY = (
    errno.EINVAL, errno.ENOTTY, errno.EBADF, errno.ENODEV, errno.ENOENT, errno.EBUSY)
MSI, MSIX = V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX
TRIG = V.VFIO_IRQ_SET_ACTION_TRIGGER
EFD, NONE, BOOL = V.VFIO_IRQ_SET_DATA_EVENTFD, V.VFIO_IRQ_SET_DATA_NONE, V.VFIO_IRQ_SET_DATA_BOOL
NVEC = 8                          # vectors of each function below (MSI-X and MSI)




def machine(kind="arm", n=2, msi=NVEC):
    spec = {"msix": NVEC, "msi": msi}
    m = (ArmVirt if kind == "arm" else X86Pc)(devices=[spec] * n)
    return m, m.boot()


def to_vfio(k, i=0):
    bdf = k.pci.devices[i].bdf
    k.sysfs_write(f"/sys/bus/pci/devices/{bdf}/driver_override", "vfio-pci")
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", bdf)
    return bdf


def open_bound(k, i=0, minor=None):
    to_vfio(k, i)
    f = k.open(f"/dev/vfio/devices/vfio{i if minor is None else minor}")
    f.private_data._grant_access()
    # The VMM sets Bus Master through the config region (a pwrite not modelled yet).
    k.pci.devices[i].set_master()
    return f


def irq_set(index, start, count, flags, data=()):
    return V.VfioIrqSet(flags=flags, index=index, start=start, count=count, data=list(data))


def state(k, i=0):
    """What SET_IRQS may change: the device's MSI state and its handlers."""
    pdev = k.pci.devices[i]
    core = k.vfio_pci.cores.get(pdev)
    return (pdev.msi_enabled, pdev.msix_enabled, sorted(pdev.msi_descs),
            None if core is None else (core.irq_type, {v: c.trigger for v, c in
                                                       core.ctx.items()}))


@pytest.fixture(params=["arm", "x86"])
def mk(request):
    return machine(request.param)


# -- binding and the cdev ---------------------------------------------------------------


def test_vfio_pci_binds_only_through_driver_override(mk):
    m, k = mk
    bdf = k.pci.devices[0].bdf
    # No id table: a plain bind is ENODEV and no node appears.
    assert errno_of(k.sysfs_write, "/sys/bus/pci/drivers/vfio-pci/bind", bdf) == ENODEV
    assert errno_of(k.open, "/dev/vfio/devices/vfio0") == ENOENT
    to_vfio(k, 0)
    assert k.sysfs_read(f"/sys/bus/pci/devices/{bdf}/driver") == "vfio-pci\n"
    f = k.open("/dev/vfio/devices/vfio0")
    to_vfio(k, 1)
    k.open("/dev/vfio/devices/vfio1")
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", bdf)
    assert errno_of(k.open, "/dev/vfio/devices/vfio0") == ENOENT
    # The already-open file of a removed device answers ENODEV.
    assert errno_of(f.ioctl, V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()) == ENODEV
    f.close()
    # Rebinding takes the lowest free minor again.
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", bdf)
    k.open("/dev/vfio/devices/vfio0")


def test_unbound_file_refuses_everything_but_bind(mk):
    m, k = mk
    to_vfio(k)
    f = k.open("/dev/vfio/devices/vfio0")
    for cmd, arg in ((V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()),
                     (V.VFIO_DEVICE_GET_IRQ_INFO, V.VfioIrqInfo(index=MSIX)),
                     (V.VFIO_DEVICE_RESET, 0), (0x1234, 0)):
        assert errno_of(f.ioctl, cmd, arg) == EINVAL
    # BIND_IOMMUFD validates first, then needs an open fd, then an iommufd model.
    bind = V.VfioDeviceBindIommufd(iommufd=f.fd)
    bind.argsz = 12
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD, bind) == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                    V.VfioDeviceBindIommufd(flags=2, iommufd=f.fd)) == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                    V.VfioDeviceBindIommufd(iommufd=999)) == EBADF
    if getattr(k, "iommufd", None) is None:
        assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                        V.VfioDeviceBindIommufd(iommufd=f.fd)) == ENODEV
    assert errno_of(f.ioctl, V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()) == EINVAL
    assert f.f_count == 1                        # the failed binds kept no reference


def fake_iommufd(k):
    """Stand in for iommufd: every bind answers device id 7; returns the calls seen."""
    seen = []

    class FakeIommufd:
        def bind_device(self, ictx, pdev):
            seen.append((ictx, pdev))
            return 7

    k.iommufd = FakeIommufd()
    return seen


def test_bind_with_an_iommufd_stores_the_devid(mk):
    m, k = mk
    seen = fake_iommufd(k)
    to_vfio(k)
    f = k.open("/dev/vfio/devices/vfio0")
    other = k.eventfd()
    bind = V.VfioDeviceBindIommufd(iommufd=other.fd)
    assert f.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, bind) == 0
    assert bind.out_devid == 7 and seen == [(other, k.pci.devices[0])]
    assert f.ioctl(V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()) == 0
    # A second bind of the same file is EINVAL.
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                    V.VfioDeviceBindIommufd(iommufd=other.fd)) == EINVAL


def test_bind_negative_iommufd_and_vf_token_on_a_plain_pf_are_einval(mk):
    m, k = mk
    seen = fake_iommufd(k)
    to_vfio(k)
    f = k.open("/dev/vfio/devices/vfio0")
    other = k.eventfd()
    before = other.f_count
    # iommufd < 0: EINVAL before any fd lookup (not EBADF)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD,
                    V.VfioDeviceBindIommufd(iommufd=-1)) == EINVAL
    # a VF token: its UUID must be readable (EFAULT), and a plain PF takes none (EINVAL)
    tok = V.VFIO_DEVICE_BIND_FLAG_TOKEN
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD, V.VfioDeviceBindIommufd(
        flags=tok, iommufd=other.fd, token_uuid_ptr=0x10)) == errno.EFAULT
    uuid = k.mmap(0x1000)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_BIND_IOMMUFD, V.VfioDeviceBindIommufd(
        flags=tok, iommufd=other.fd, token_uuid_ptr=uuid)) == EINVAL
    assert seen == [] and other.f_count == before
    assert errno_of(f.ioctl, V.VFIO_DEVICE_GET_INFO, V.VfioDeviceInfo()) == EINVAL  # unbound
    assert f.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, V.VfioDeviceBindIommufd(iommufd=other.fd)) == 0


# -- info ioctls ----------------------------------------------------------------------


def test_get_info(mk):
    m, k = mk
    f = open_bound(k)
    info = V.VfioDeviceInfo()
    assert f.ioctl(V.VFIO_DEVICE_GET_INFO, info) == 0
    assert info.flags == V.VFIO_DEVICE_FLAGS_PCI | V.VFIO_DEVICE_FLAGS_RESET
    assert (info.num_regions, info.num_irqs) == (9, 5)
    small = V.VfioDeviceInfo(argsz=15)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_GET_INFO, small) == EINVAL
    assert small.num_regions == 0


def test_get_region_info(mk):
    m, k = mk
    f = open_bound(k)
    pdev = k.pci.devices[0]
    rw = V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
    # BAR0 holds the MSI-X table (make_function puts it there): MSIX_MAPPABLE cap.
    r = V.VfioRegionInfo(index=0)
    r.argsz = V.VfioRegionInfo.sizeof + 8
    caps = f.ioctl(V.VFIO_DEVICE_GET_REGION_INFO, r)
    assert r.flags == rw | V.VFIO_REGION_INFO_FLAG_MMAP | V.VFIO_REGION_INFO_FLAG_CAPS
    assert r.size == pdev.bars[0][1] == 0x4000 and r.offset == 0
    assert r.cap_offset == 32
    assert V.VfioInfoCapHeader.unpack(caps) == V.VfioInfoCapHeader(
        id=V.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, version=1, next=0)
    # Too small for the chain: argsz says what is needed, no chain copied.
    r = V.VfioRegionInfo(index=0)
    assert f.ioctl(V.VFIO_DEVICE_GET_REGION_INFO, r) == b""
    assert r.argsz == 40 and r.cap_offset == 0
    for i in range(1, 6):                          # unimplemented BARs
        r = V.VfioRegionInfo(index=i)
        f.ioctl(V.VFIO_DEVICE_GET_REGION_INFO, r)
        assert (r.flags, r.size, r.offset) == (0, 0, i << 40)
    r = V.VfioRegionInfo(index=V.VFIO_PCI_CONFIG_REGION_INDEX)
    f.ioctl(V.VFIO_DEVICE_GET_REGION_INFO, r)
    assert r.flags == rw and r.offset == 7 << 40 and r.size in (256, 4096)
    for bad in (V.VFIO_PCI_VGA_REGION_INDEX, 9, 0xFFFF_FFFF):
        r = V.VfioRegionInfo(index=bad)
        assert errno_of(f.ioctl, V.VFIO_DEVICE_GET_REGION_INFO, r) == EINVAL
        assert r.size == 0
    r = V.VfioRegionInfo(index=0, argsz=31)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_GET_REGION_INFO, r) == EINVAL


def test_get_irq_info(mk):
    m, k = mk
    f = open_bound(k)

    def info(index, argsz=None):
        i = V.VfioIrqInfo(index=index)
        if argsz is not None:
            i.argsz = argsz
        f.ioctl(V.VFIO_DEVICE_GET_IRQ_INFO, i)
        return i.flags, i.count

    ev = V.VFIO_IRQ_INFO_EVENTFD
    assert info(MSI) == (ev | V.VFIO_IRQ_INFO_NORESIZE, NVEC)
    assert info(MSIX) == (ev, NVEC)                  # dynamic MSI-X: no NORESIZE
    assert info(V.VFIO_PCI_REQ_IRQ_INDEX) == (ev | V.VFIO_IRQ_INFO_NORESIZE, 1)
    assert info(V.VFIO_PCI_INTX_IRQ_INDEX)[0] == (ev | V.VFIO_IRQ_INFO_MASKABLE
                                                  | V.VFIO_IRQ_INFO_AUTOMASKED)
    assert errno_of(info, 5) == EINVAL
    assert errno_of(info, MSIX, argsz=15) == EINVAL
    k.msi.msix_alloc_dyn = False
    assert info(MSIX) == (ev | V.VFIO_IRQ_INFO_NORESIZE, NVEC)


# -- SET_IRQS -----------------------------------------------------------------------------


@pytest.mark.parametrize("index", [MSI, MSIX])
def test_trigger_signals_exactly_that_vectors_eventfd(mk, index):
    m, k = mk
    f = open_bound(k)
    if index == MSI and not k.msi.multi_msi:
        n = 1
    else:
        n = 4
    efds = [k.eventfd() for _ in range(n)]
    assert f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(index, 0, n, EFD | TRIG,
                                                    [e.fd for e in efds])) == 0
    pdev = k.pci.devices[0]
    assert pdev.msix_enabled == (index == MSIX) and pdev.msi_enabled == (index == MSI)
    for v in range(n):
        m.functions[0].notify(v)
        k.handle_interrupts()
        counts = [e.f_op.count for e in efds]
        assert counts == [1 if i == v else 0 for i in range(n)]
        assert efds[v].read() == 1
    # Loopback: DATA_NONE signals every vector in range, DATA_BOOL the true ones.
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(index, 0, n, NONE | TRIG))
    assert [e.f_op.count for e in efds] == [1] * n
    if n > 1:
        f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(index, 0, 2, BOOL | TRIG, [0, 1]))
        assert [e.f_op.count for e in efds][:2] == [1, 2]
    # -1 tears the last vector down: its eventfd is no longer signalled.
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(index, n - 1, 1, EFD | TRIG, [-1]))
    before = efds[n - 1].f_op.count
    m.functions[0].notify(n - 1)
    k.handle_interrupts()
    assert efds[n - 1].f_op.count == before
    # count 0 + DATA_NONE disables everything.
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(index, 0, 0, NONE | TRIG))
    assert not pdev.msix_enabled and not pdev.msi_enabled and not pdev.msi_descs
    assert all(e.f_op.refs == 1 for e in efds)       # vfio dropped its references


def test_msi_on_x86_without_remapping_returns_the_count():
    m, k = machine("x86")
    f = open_bound(k)
    efds = [k.eventfd() for _ in range(2)]
    before = state(k)
    # pci_alloc_irq_vectors(1, 2, MSI) gives 1 without IR: vfio returns it.
    assert f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSI, 0, 2, EFD | TRIG,
                                                    [e.fd for e in efds])) == 1
    assert state(k) == before


def test_dynamic_msix_growth(mk):
    m, k = mk
    f = open_bound(k)
    a, b = k.eventfd(), k.eventfd()
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 1, EFD | TRIG, [a.fd]))
    pdev = k.pci.devices[0]
    assert sorted(pdev.msi_descs) == [0]
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 5, 1, EFD | TRIG, [b.fd]))
    assert sorted(pdev.msi_descs) == [0, 5]
    m.functions[0].notify(5)
    k.handle_interrupts()
    assert (a.f_op.count, b.f_op.count) == (0, 1)
    # Torn down, the vector stays allocated until MSI-X goes off.
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 5, 1, EFD | TRIG, [-1]))
    assert sorted(pdev.msi_descs) == [0, 5]
    # Without dynamic allocation, a vector beyond those enabled is EINVAL.
    k.msi.msix_alloc_dyn = False
    before = state(k)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS,
                    irq_set(MSIX, 6, 1, EFD | TRIG, [b.fd])) == EINVAL
    assert state(k) == before


def test_set_irqs_validation_changes_nothing(mk):
    m, k = mk
    f = open_bound(k)
    e = k.eventfd()
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 2, EFD | TRIG, [e.fd, e.fd]))
    before = state(k)
    bad = [
        irq_set(MSIX, 0, 1, EFD | NONE | TRIG, [e.fd]),        # two data types
        irq_set(MSIX, 0, 1, TRIG, [e.fd]),                     # no data type
        irq_set(MSIX, 0, 1, EFD | TRIG | (1 << 9), [e.fd]),    # unknown flag
        irq_set(5, 0, 1, NONE | TRIG),                         # index >= num irqs
        irq_set(MSIX, NVEC, 1, NONE | TRIG),                   # start beyond
        irq_set(MSIX, NVEC - 1, 2, NONE | TRIG),               # start + count beyond
        irq_set(MSIX, 1, 0xFFFF_FFFF, NONE | TRIG),            # count >= U32_MAX - start
        irq_set(MSI, 0, 1, EFD | TRIG, [e.fd]),                # MSI while MSI-X is on
    ]
    short = irq_set(MSIX, 0, 2, EFD | TRIG, [e.fd, e.fd])
    short.argsz = 20 + 7
    bad.append(short)
    small = irq_set(MSIX, 0, 0, NONE | TRIG)
    small.argsz = 19
    bad.append(small)
    for s in bad:
        err = errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS, s)
        assert err == EINVAL, s
        assert state(k) == before, s
    # Mixed actions and MSI/MSI-X MASK/UNMASK have no handler: ENOTTY.
    for flags in (NONE | TRIG | V.VFIO_IRQ_SET_ACTION_MASK, NONE | V.VFIO_IRQ_SET_ACTION_MASK,
                  NONE | V.VFIO_IRQ_SET_ACTION_UNMASK, NONE):
        assert errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 1, flags)) == ENOTTY
        assert state(k) == before


def test_bad_eventfd_on_enable_leaves_nothing_enabled(mk):
    m, k = mk
    f = open_bound(k)
    e = k.eventfd()
    notev = k.open("/dev/vfio/devices/vfio0")
    before = state(k)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS,
                    irq_set(MSIX, 0, 2, EFD | TRIG, [e.fd, notev.fd])) == EINVAL
    assert state(k) == before and e.f_op.refs == 1


def test_failure_on_an_enabled_index_tears_the_block_down(mk):
    """vfio_msi_set_block(): vectors start..failing-1 lose their triggers (Linux)."""
    m, k = mk
    f = open_bound(k)
    e = k.eventfd()
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 3, EFD | TRIG, [e.fd] * 3))
    assert errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS,
                    irq_set(MSIX, 0, 2, EFD | TRIG, [e.fd, 999])) == EBADF
    core = k.vfio_pci.cores[k.pci.devices[0]]
    assert sorted(core.ctx) == [2]
    assert k.pci.devices[0].msix_enabled


def test_disable_when_nothing_enabled_is_einval(mk):
    m, k = mk
    f = open_bound(k)
    assert errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 0, NONE | TRIG)) \
        == EINVAL
    assert errno_of(f.ioctl, V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 1, NONE | TRIG)) \
        == EINVAL


def test_reset_and_close(mk):
    m, k = mk
    f = open_bound(k)
    e = k.eventfd()
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 1, EFD | TRIG, [e.fd]))
    assert f.ioctl(V.VFIO_DEVICE_RESET) == 0
    m.functions[0].notify(0)
    k.handle_interrupts()
    assert e.f_op.count == 1                 # pci_try_reset_function restores MSI-X
    f.close()
    pdev = k.pci.devices[0]
    assert not pdev.msix_enabled and not pdev.msi_descs and e.f_op.refs == 1


def test_unbind_with_vectors_on_frees_them(mk):
    m, k = mk
    f = open_bound(k)
    e = k.eventfd()
    f.ioctl(V.VFIO_DEVICE_SET_IRQS, irq_set(MSIX, 0, 2, EFD | TRIG, [e.fd, e.fd]))
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/unbind", k.pci.devices[0].bdf)
    assert not k.pci.devices[0].msi_descs and e.f_op.refs == 1
    assert errno_of(f.ioctl, V.VFIO_DEVICE_RESET) == ENODEV
    f.close()


# -- a state machine of SET_IRQS with a reference model -------------------------------------


class SetIrqsMachine(RuleBasedStateMachine):
    """Random SET_IRQS calls on MSI/MSI-X against a model of vfio_pci_intrs.c and of
    the function's masking: a vector raised while it has no trigger (masked: not
    allocated, not started up, or shut down) is latched pending by the function and
    sent when a later request_irq unmasks it; the latch outlives a disable."""

    def __init__(self):
        super().__init__()
        # One MSI vector: tearing down one vector of a multi-vector MSI block
        # zeroes the block's shared address (see the report), not modelled here.
        self.m, self.k = machine("arm", n=1, msi=1)
        self.f = open_bound(self.k)
        self.efds = [self.k.eventfd() for _ in range(3)]
        self.mode = None              # None, MSI or MSIX
        self.nvec = 0                 # vectors enabled at the start
        self.allocated: set[int] = set()
        self.triggers: dict[int, int] = {}      # vector -> efd index
        self.pending = {MSI: set(), MSIX: set()}
        self.counts = [0, 0, 0]

    def _call(self, s):
        try:
            res = self.f.ioctl(V.VFIO_DEVICE_SET_IRQS, s), None
        except KernelError as e:
            res = None, e.errno
        self.k.handle_interrupts()
        return res

    @rule(index=st.sampled_from([MSI, MSIX]), start=st.integers(0, NVEC),
          picks=st.lists(st.integers(-1, 3), min_size=0, max_size=4))
    def set_eventfds(self, index, start, picks):
        fds = [-1 if p == -1 else 999 if p == 3 else self.efds[p].fd for p in picks]
        count = len(fds)
        res, err = self._call(irq_set(index, start, count, EFD | TRIG, fds))
        # Reference model.
        fail_at = None
        enabling = False
        num = NVEC if index == MSIX else 1
        if start >= num or start + count > num:
            exp = EINVAL
        elif self.mode == index and count == 0:
            exp = None
        elif self.mode not in (None, index):
            exp = EINVAL
        elif self.mode is None and count == 0 and start == 0:
            exp = errno.ERANGE                  # pci_alloc_irq_vectors(1, 0)
        else:
            exp = None
            enabling = self.mode is None
            allocated = set(range(start + count)) if enabling else self.allocated
            for v, fd in zip(range(start, start + count), fds, strict=False):
                # vfio_msi_set_vector_signal(): the IRQ first, then the eventfd.
                if fd >= 0 and v not in allocated and index == MSI:
                    exp, fail_at = EINVAL, v
                    break
                if fd == 999:
                    exp, fail_at = EBADF, v
                    break
        event(f"index={index} mode={self.mode} err={exp}")
        assert err == exp, (err, exp, start, picks)
        if exp is not None and fail_at is None:
            return
        end = start + count if fail_at is None else fail_at
        installed = [v for v, p in zip(range(start, end), picks, strict=False) if p >= 0]
        if enabling:
            self.mode, self.nvec = index, start + count
            self.allocated = set(range(start + count))
        if err is None:
            for v, p in zip(range(start, start + count), picks, strict=False):
                self.triggers.pop(v, None)
                if p >= 0:
                    self.triggers[v] = p
                    self.allocated.add(v)
        else:
            # vfio_msi_set_block(): the failing vector lost its old trigger first,
            # then every vector from start up to it is torn down; a failed enable
            # disables again.
            for v in range(start, fail_at + 1):
                self.triggers.pop(v, None)
            if index == MSIX:
                self.allocated |= set(installed)
            if enabling:
                self._disabled()
        # request_irq unmasked it: the held message goes out and the CPU takes it at
        # once, signalling the trigger just installed -- even if a later vector of the
        # same call fails and tears this one down again.
        for v, p in zip(range(start, end), picks, strict=False):
            if p >= 0 and v in self.pending[index]:
                self.pending[index].discard(v)
                self.counts[p] += 1
        self._check_counts()

    def _disabled(self):
        self.mode, self.nvec, self.allocated, self.triggers = None, 0, set(), {}

    def _check_counts(self):
        assert [e.f_op.count for e in self.efds] == self.counts

    @rule(index=st.sampled_from([MSI, MSIX]))
    def disable(self, index):
        res, err = self._call(irq_set(index, 0, 0, NONE | TRIG))
        exp = None if self.mode == index else EINVAL
        assert err == exp
        if err is None:
            self._disabled()
        self._check_counts()

    @rule(v=st.integers(0, NVEC - 1))
    def fire(self, v):
        self.m.functions[0].notify(v)
        self.k.handle_interrupts()
        if v in self.triggers:
            self.counts[self.triggers[v]] += 1
        elif self.mode == MSIX or (self.mode == MSI and v < 1 << (self.nvec - 1).bit_length()):
            self.pending[self.mode].add(v)
        event(f"fire hit={v in self.triggers} mode={self.mode}")
        self._check_counts()

    @invariant()
    def matches(self):
        core = self.k.vfio_pci.cores[self.k.pci.devices[0]]
        want = {MSI: MSI, MSIX: MSIX, None: V.VFIO_PCI_NUM_IRQS}[self.mode]
        assert core.irq_type == want
        assert {v: c.trigger for v, c in core.ctx.items()} == \
            {v: self.efds[p].f_op for v, p in self.triggers.items()}


TestSetIrqsMachine = SetIrqsMachine.TestCase
TestSetIrqsMachine.settings = settings(stateful_step_count=15,
                                       deadline=None)
