"""vfio-pci regions through pread / pwrite, PCIe Function Level Reset, and the resets
vfio-pci does (at first open, at last close, on VFIO_DEVICE_RESET).

Expected values come from the PCI Express specification (Device Capabilities bit 28
"Function Level Reset Capability", Device Control bit 15 "Initiate Function Level
Reset", reads as 0; after an FLR the function's configuration is at its reset values
and MSI-X vectors are masked) and from Linux's documented vfio-pci behaviour
(include/uapi/linux/vfio.h: region offset = index << 40; vfio_pci_config.c: BARs and
the MSI capability virtualized, the MSI-X capability read-only; vfio_pci_rdwr.c: the
MSI-X table reads as all ones and drops writes, EIO when memory decode is off).
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi.hw import pci as P
from pymsi.kernel.files import O_RDONLY
from pymsi.uapi import vfio as V
from pymsi.vmmlib import Vmm

from kernel_util import errno_of

CFG = V.VFIO_PCI_CONFIG_REGION_INDEX << 40
BAR_SIZE = 0x4000                       # make_function's default BAR
PBA_OFF = 0x2000                        # make_function's PBA offset (the table is at 0)
NVEC = 8
EXP = 0x40                              # hw.pci puts the PCIe capability here


def vmm(design: str = "sw-msi", **spec) -> Vmm:
    v = Vmm(design=design, smmu="s1", devices=[{"msix": NVEC, "msi": 4, **spec}])
    v.bind(0)
    v.attach()
    return v


def u32(b: bytes) -> int:
    return int.from_bytes(b, "little")


def cfg_read(f, off: int, n: int = 4) -> int:
    return u32(f.pread(CFG + off, n))


def cfg_write(f, off: int, value: int, n: int = 4) -> int:
    return f.pwrite(CFG + off, value.to_bytes(n, "little"))


# -- pread / pwrite plumbing --------------------------------------------------------------


def test_pread_pwrite_errnos_of_the_file_layer():
    v = vmm()
    k = v.k
    efd = k.eventfd()
    assert errno_of(efd.pread, 0, 8) == errno.ESPIPE           # not seekable
    assert errno_of(k.pread, 99, 4, 0) == errno.EBADF
    assert errno_of(v.files[0].pread, -1, 4) == errno.EINVAL
    assert v.files[0].pread(CFG, 0) == b""
    ro = k.open("/dev/vfio/devices/vfio0", O_RDONLY)
    assert errno_of(ro.pwrite, CFG, b"\0\0\0\0") == errno.EBADF
    # a second file of a bound device is not bound: region access is refused
    assert errno_of(ro.pread, CFG, 4) == errno.EINVAL
    assert k.pread(v.files[0].fd, 2, CFG) == v.files[0].pread(CFG, 2)


def test_config_region_virtualizes_bars_and_msi_and_reads_the_rest_through():
    v = vmm()
    f, fn = v.files[0], v.m.functions[0]
    assert cfg_read(f, P.VENDOR_ID, 2) == 0x1AF4 and cfg_read(f, P.DEVICE_ID, 2) == 0x1041
    bar_before = fn.bar_address(0)
    # BAR sizing: all ones written, the size mask (64-bit memory BAR: type 0b10) read
    cfg_write(f, P.BAR0, 0xFFFF_FFFF)
    cfg_write(f, P.BAR0 + 4, 0xFFFF_FFFF)
    assert cfg_read(f, P.BAR0) == (~(BAR_SIZE - 1) & 0xFFFF_FFF0) | 0b100
    assert cfg_read(f, P.BAR0 + 4) == 0xFFFF_FFFF
    assert fn.bar_address(0) == bar_before                       # never reached the device
    cfg_write(f, P.BAR0, 0x1234_5678)
    assert cfg_read(f, P.BAR0) == 0x1234_4000 | 0b100            # size-aligned
    assert cfg_read(f, P.ROM_ADDRESS) == 0                        # no ROM
    # MSI: enabled in the virtual capability only
    cap = fn.msi_cap
    cfg_write(f, cap + P.MSI_FLAGS, P.MSI_FLAGS_ENABLE, 2)
    assert cfg_read(f, cap + P.MSI_FLAGS, 2) & P.MSI_FLAGS_ENABLE
    assert not fn.cfg_read(cap + P.MSI_FLAGS, 2) & P.MSI_FLAGS_ENABLE
    cfg_write(f, cap + P.MSI_ADDR_LO, 0xDEAD_BEEC)
    assert cfg_read(f, cap + P.MSI_ADDR_LO) == 0xDEAD_BEEC and fn.cfg_read(cap + 4) == 0
    # MSI-X: read-only through VFIO (SET_IRQS owns Enable and Function Mask)
    xcap = fn.msix_cap
    flags = cfg_read(f, xcap + P.MSIX_FLAGS, 2)
    assert flags & P.MSIX_FLAGS_QSIZE == NVEC - 1
    cfg_write(f, xcap + P.MSIX_FLAGS, P.MSIX_FLAGS_ENABLE | P.MSIX_FLAGS_MASKALL, 2)
    assert not fn.msix_enabled and cfg_read(f, xcap + P.MSIX_FLAGS, 2) == flags
    # Command: INTx Disable virtual, Bus Master and Memory to the device
    cmd = fn.cfg_read(P.COMMAND, 2)
    cfg_write(f, P.COMMAND, (cmd | P.CMD_INTX_DISABLE) & ~P.CMD_MASTER, 2)
    assert cfg_read(f, P.COMMAND, 2) & P.CMD_INTX_DISABLE
    assert fn.cfg_read(P.COMMAND, 2) & P.CMD_INTX_DISABLE == cmd & P.CMD_INTX_DISABLE
    assert not fn.cfg_read(P.COMMAND, 2) & P.CMD_MASTER
    cfg_write(f, P.COMMAND, cmd | P.CMD_MASTER, 2)
    assert fn.cfg_read(P.COMMAND, 2) & P.CMD_MASTER
    # the config space is 4 KiB (PCI Express): past it is EFAULT
    assert errno_of(f.pread, CFG + 0x1000, 4) == errno.EFAULT
    assert errno_of(f.pread, CFG + 0xFFE, 4) == errno.EFAULT
    assert len(f.pread(CFG + 1, 7)) == 7                          # unaligned pieces


def test_bar_region_forwards_except_the_msix_table():
    v = vmm()
    f, fn = v.files[0], v.m.functions[0]
    v.enable(2)                                  # vectors 0, 1 live; 2.. masked
    entry0 = fn.msix_entry(0)
    assert entry0[0] and not entry0[2] & 1
    # the table reads as all ones and drops writes
    assert f.pread(0, 16) == b"\xff" * 16
    assert f.pwrite(0, bytes(16)) == 16 and fn.msix_entry(0) == entry0
    assert f.pread(NVEC * 16 - 4, 8) == b"\xff" * 4 + bytes(4)   # table end, then the BAR
    # the PBA reads through: a masked vector fired sets its bit
    v.fire(5)
    assert fn.msix_pending(5)
    assert u32(f.pread(PBA_OFF, 8)) == 1 << 5
    # at and past the end of the BAR: EINVAL; a read crossing it is cut short
    assert errno_of(f.pread, BAR_SIZE, 4) == errno.EINVAL
    assert len(f.pread(BAR_SIZE - 2, 8)) == 2
    # regions that do not exist
    for index in (V.VFIO_PCI_BAR1_REGION_INDEX, V.VFIO_PCI_ROM_REGION_INDEX,
                  V.VFIO_PCI_VGA_REGION_INDEX, V.VFIO_PCI_NUM_REGIONS):
        assert errno_of(f.pread, index << 40, 4) == errno.EINVAL
    # memory decode off: EIO
    cmd = cfg_read(f, P.COMMAND, 2)
    cfg_write(f, P.COMMAND, cmd & ~P.CMD_MEMORY, 2)
    assert errno_of(f.pread, PBA_OFF, 8) == errno.EIO
    cfg_write(f, P.COMMAND, cmd, 2)
    assert u32(f.pread(PBA_OFF, 8)) == 1 << 5


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from([CFG, 0, 6 << 40, 8 << 40, 1 << 44]),
                              st.one_of(st.integers(0, 0x90), st.integers(0, 0x5000)),
                              st.integers(0, 24), st.booleans(),
                              st.integers(0, (1 << 64) - 1)), max_size=25))
def test_any_region_access_is_data_or_a_linux_errno_and_never_touches_msix(ops):
    v = _shared()
    f, fn = v.files[0], v.m.functions[0]
    table = bytes(fn.msix_table)
    for base, off, count, write, value in ops:
        if base == CFG and off in range(P.COMMAND, P.COMMAND + 2) and write:
            continue                                 # keep Memory / Bus Master on
        if base == CFG and off <= EXP + P.EXP_DEVCTL + 1 < off + count and write:
            continue                                 # an FLR is tested on its own
        try:
            if write:
                data = value.to_bytes(8, "little")[:count]
                assert f.pwrite(base + off, data) <= count
            else:
                assert len(f.pread(base + off, count)) <= count
        except OSError as e:
            assert e.errno in (errno.EINVAL, errno.EFAULT, errno.EIO)
    assert bytes(fn.msix_table) == table
    assert fn.msix_enabled


_SHARED: list[Vmm] = []


def _shared() -> Vmm:
    if not _SHARED:
        v = vmm()
        v.enable(NVEC)
        _SHARED.append(v)
    return _SHARED[0]


# -- Function Level Reset in the hardware --------------------------------------------------


class Counting(P.PciFunction):
    resets = 0

    def device_reset(self) -> None:
        self.resets += 1


def test_flr_returns_the_function_to_its_reset_state():
    fn = Counting(0, 1, bars=[P.Bar(0x4000)], msix=P.MsixConfig(4, pba_offset=0x800),
                  msi=P.MsiConfig(4))
    reset_cfg = bytes(fn.cfg)
    assert fn.cfg_read(EXP + P.EXP_DEVCAP) & (1 << 28)
    fn.cfg_write(P.BAR0, 0x1000_0000)
    fn.cfg_write(P.COMMAND, P.CMD_MEMORY | P.CMD_MASTER, 2)
    fn.cfg_write(fn.msix_cap + P.MSIX_FLAGS, P.MSIX_FLAGS_ENABLE, 2)
    fn.bar_write(0, 16, 0xABCD, 4)                            # entry 1 address
    fn.notify(1)                                              # masked: pending
    assert fn.msix_pending(1)
    fn.cfg_write(EXP + P.EXP_DEVCTL, 1 << 15, 2)
    assert bytes(fn.cfg) == reset_cfg and fn.resets == 1
    assert not fn.msix_pending(1) and fn.msix_entry(1) == (0, 0, 1)
    assert fn.cfg_read(EXP + P.EXP_DEVCTL, 2) & (1 << 15) == 0    # reads as 0
    # a function without the capability ignores the bit
    plain = Counting(0, 2, bars=[P.Bar(0x4000)], flr=False)
    plain.cfg_write(P.COMMAND, P.CMD_MEMORY, 2)
    plain.cfg_write(EXP + P.EXP_DEVCTL, 1 << 15, 2)
    assert plain.resets == 0 and plain.cfg_read(P.COMMAND, 2) == P.CMD_MEMORY


# -- vfio-pci resets ------------------------------------------------------------------------


def test_vfio_resets_at_first_open_and_at_last_close():
    v = Vmm(design="sw-msi", smmu="s1", devices=[{"msix": NVEC}])
    fn = v.m.functions[0]
    assert fn.flr_count == 0
    v.bind(0)
    v.attach()
    assert fn.flr_count == 1                              # vfio_pci_core_enable
    v.enable(2)
    v.fire(5)                                             # pending in the PBA
    assert fn.msix_enabled and fn.msix_pending(5)
    v.files[0].close()
    assert fn.flr_count == 2                              # vfio_pci_core_disable
    assert not fn.msix_enabled and not fn.msix_pending(5)
    assert not fn.cfg_read(P.COMMAND, 2) & P.CMD_MASTER   # no DMA once closed
    assert fn.bar_address(0) == v.k.pci.devices[0].bars_by_index[0]   # state restored


def test_vfio_device_reset_keeps_the_interrupt_setup_and_clears_pending():
    v = vmm()
    f, fn = v.files[0], v.m.functions[0]
    info = V.VfioDeviceInfo()
    f.ioctl(V.VFIO_DEVICE_GET_INFO, info)
    assert info.flags & V.VFIO_DEVICE_FLAGS_RESET
    v.enable(4)
    entries = [fn.msix_entry(i) for i in range(NVEC)]
    v.fire(6)
    assert fn.msix_pending(6)
    before = fn.flr_count
    assert f.ioctl(V.VFIO_DEVICE_RESET) == 0
    assert fn.flr_count == before + 1
    assert [fn.msix_entry(i) for i in range(4)] == entries[:4]      # restored from descs
    assert not fn.msix_pending(6) and fn.msix_enabled
    assert v.fire(2) == P.Delivery.SENT and v.counts() == [0, 0, 1, 0]
    # Initiate FLR written through the config region resets the same way
    cfg_write(f, EXP + P.EXP_DEVCTL, 1 << 15, 2)
    assert fn.flr_count == before + 2 and fn.msix_enabled
    assert v.fire(3) == P.Delivery.SENT and v.counts() == [0, 0, 1, 1]


def test_a_function_without_flr_cannot_be_reset_through_vfio():
    v = vmm(flr=False)
    f, fn = v.files[0], v.m.functions[0]
    info = V.VfioDeviceInfo()
    f.ioctl(V.VFIO_DEVICE_GET_INFO, info)
    assert not info.flags & V.VFIO_DEVICE_FLAGS_RESET
    assert errno_of(f.ioctl, V.VFIO_DEVICE_RESET) == errno.EINVAL
    assert not cfg_read(f, EXP + P.EXP_DEVCAP) & (1 << 28)
    v.enable(2)
    cfg_write(f, EXP + P.EXP_DEVCTL, 1 << 15, 2)           # nothing happens
    assert fn.flr_count == 0 and fn.msix_enabled


def test_device_control_as_vfio_pci_virtualizes_it():
    """vfio_pci_config.c init_pci_cap_exp_perm: the user may not set Phantom Functions
    (the IOMMU would see requester IDs it does not know); Max_Payload_Size is virtual
    (the function keeps the one the host set for its link); Max_Read_Request_Size is
    virtual and the function gets it (pcie_set_readrq)."""
    v = vmm()
    f, fn = v.files[0], v.m.functions[0]
    ctl = EXP + P.EXP_DEVCTL
    phys = fn.cfg_read(ctl, 2)
    mps, phantom, mrrs = 0x1 << 5, 1 << 9, 0x5 << 12            # 256 B, enable, 4096 B
    cfg_write(f, ctl, (phys & ~(0xE0 | 0x7000)) | mps | phantom | mrrs, 2)
    user = cfg_read(f, ctl, 2)
    assert user & 0xE0 == mps and user & 0x7000 == mrrs and not user & phantom
    now = fn.cfg_read(ctl, 2)
    assert now & 0xE0 == phys & 0xE0                           # MPS untouched
    assert not now & phantom and now & 0x7000 == mrrs
    assert fn.flr_count == 1                                   # (the bind's), no FLR


def test_set_irqs_works_with_memory_decode_off_and_leaves_it_off():
    """The user turned memory decode off (a guest's reset does, on its way): VFIO turns it
    on while it programs the MSI-X table in the BAR, then back off."""
    v = vmm()
    f, fn = v.files[0], v.m.functions[0]
    cmd = cfg_read(f, P.COMMAND, 2)
    cfg_write(f, P.COMMAND, cmd & ~P.CMD_MEMORY, 2)
    assert v.enable(2) == 0
    assert fn.msix_enabled and fn.msix_entry(1)[0]
    assert not fn.cfg_read(P.COMMAND, 2) & P.CMD_MEMORY
    assert v.disable() == 0 and not fn.msix_enabled
    assert not fn.cfg_read(P.COMMAND, 2) & P.CMD_MEMORY
    cfg_write(f, P.COMMAND, cmd, 2)
    assert v.enable(2) == 0 and v.fire(1) == P.Delivery.SENT and v.counts() == [0, 1]
