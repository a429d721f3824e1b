"""PCI function model: configuration space, BARs, MSI and MSI-X semantics."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pymsi.hw.pci import Bar, Delivery, MsiConfig, MsixConfig, PciFunction

from hw_rig import DOORBELL
from hw_rig import sink_rig as rig


def test_header_capabilities_and_bar_sizing():
    r = rig()
    fn = r.pci.add(PciFunction(2, 3, 1, vendor_id=0x1AF4, device_id=0x1044,
                               bars=[Bar(0x4000), Bar(0x1000, is64=False)],
                               msi=MsiConfig(4), msix=MsixConfig(8, bar=0)))
    assert fn.rid == 2 << 8 | 3 << 3 | 1
    assert r.cfg_read(fn, 0x00) == 0x1044_1AF4
    r.cfg_write(fn, 0x00, 0)                                  # read-only
    assert r.cfg_read(fn, 0x00) == 0x1044_1AF4
    assert r.cfg_read(fn, 0x06, 2) & 0x10                     # capabilities list
    caps, ptr = [], r.cfg_read(fn, 0x34, 1)
    while ptr:
        caps.append(r.cfg_read(fn, ptr, 1))
        ptr = r.cfg_read(fn, ptr + 1, 1)
    assert caps == [0x10, 0x05, 0x11]                         # PCIe, MSI, MSI-X
    r.cfg_write(fn, 0x10, 0xFFFF_FFFF)
    r.cfg_write(fn, 0x14, 0xFFFF_FFFF)
    assert r.cfg_read(fn, 0x10) == 0xFFFF_C004                # 16 KiB, 64-bit memory
    assert r.cfg_read(fn, 0x14) == 0xFFFF_FFFF
    r.cfg_write(fn, 0x18, 0xFFFF_FFFF)
    assert r.cfg_read(fn, 0x18) == 0xFFFF_F000                # 4 KiB, 32-bit
    missing = r.ecam_base + (0x0501 << 12)
    assert r.bus.read(missing, 4) == 0xFFFF_FFFF              # no function: all ones


def test_bars_decode_only_with_memory_space_enabled():
    r = rig()
    fn = r.pci.add(PciFunction(0, 1, bars=[Bar(0x4000)], msix=MsixConfig(4, bar=0)))
    r.cfg_write(fn, 0x10, 0x1000_0000)
    r.cfg_write(fn, 0x14, 0)
    assert r.bus.window(0x1000_0000) is None
    r.cfg_write(fn, 0x04, 0x2, 2)
    assert r.bus.window(0x1000_0000).name == "00:01.0 BAR0"
    assert r.bus.read(0x1000_000C) == 1                        # vector 0 masked at reset
    r.cfg_write(fn, 0x10, 0x2000_0000)                         # move the BAR
    assert r.bus.window(0x1000_0000) is None and r.bus.window(0x2000_0000) is not None
    r.cfg_write(fn, 0x04, 0, 2)
    assert r.bus.window(0x2000_0000) is None


def test_msi_multiple_message_and_per_vector_masking():
    r = rig()
    fn = r.pci.add(PciFunction(0, 2, msi=MsiConfig(8, is64=True, per_vector_mask=True)))
    cap = fn.msi_cap
    r.cfg_write(fn, 0x04, 0x4, 2)                              # bus master
    assert fn.notify(0) == Delivery.DISABLED
    r.cfg_write(fn, cap + 4, DOORBELL | 0x40)
    r.cfg_write(fn, cap + 8, 0)
    r.cfg_write(fn, cap + 0xC, 0x20, 2)                        # data base
    r.cfg_write(fn, cap + 2, 1 | 5 << 4, 2)                   # enable, asks for 32: clamped
    assert (r.cfg_read(fn, cap + 2, 2) >> 4) & 7 == 3          # MME clamped to MMC (8)
    assert fn.notify(5) == Delivery.SENT
    assert fn.notify(8) == Delivery.NO_VECTOR
    r.cfg_write(fn, cap + 0x10, 1 << 3)                       # mask vector 3
    assert fn.notify(3) == Delivery.PENDING
    assert fn.notify(3) == Delivery.PENDING                    # coalesces
    assert r.cfg_read(fn, cap + 0x14) == 1 << 3                # pending bit
    r.cfg_write(fn, cap + 0x14, 0)                             # pending bits are read-only
    assert r.cfg_read(fn, cap + 0x14) == 1 << 3
    r.cfg_write(fn, cap + 0x10, 0)                             # unmask: delivered once
    assert r.cfg_read(fn, cap + 0x14) == 0
    assert r.sink.got == [(fn.rid, 0x40, 0x25), (fn.rid, 0x40, 0x23)]


def test_msi_32bit_layout():
    r = rig()
    fn = r.pci.add(PciFunction(0, 3, msi=MsiConfig(2, is64=False, per_vector_mask=True)))
    cap = fn.msi_cap
    assert not r.cfg_read(fn, cap + 2, 2) & 1 << 7            # not 64-bit capable
    r.cfg_write(fn, 0x04, 0x4, 2)
    r.cfg_write(fn, cap + 4, DOORBELL | 0x80 | 3)              # low two bits are zero
    assert r.cfg_read(fn, cap + 4) == DOORBELL | 0x80
    r.cfg_write(fn, cap + 8, 0x7, 2)                           # data at +8 in this layout
    r.cfg_write(fn, cap + 0xC, 0b10)                           # mask bits at +0xC
    r.cfg_write(fn, cap + 2, 1 | 1 << 4, 2)
    assert fn.notify(0) == Delivery.SENT and fn.notify(1) == Delivery.PENDING
    assert r.cfg_read(fn, cap + 0x10) == 0b10                  # pending bits at +0x10
    assert r.sink.got == [(fn.rid, 0x80, 0x6)]                 # data 7 & ~1 | vector 0


def test_msix_pending_bits_and_function_mask():
    r = rig()
    fn = r.add_msix_device(0, 4, vectors=4, bar_addr=0x1000_0000)
    r.msix_program(fn, 1, DOORBELL | 0x40, 0x11, masked=True)
    r.msix_enable(fn)
    assert fn.notify(1) == Delivery.PENDING
    assert r.bus.read(fn.bar_base + 0x2000) == 1 << 1          # PBA
    r.bus.write(fn.bar_base + 0x2000, 0)                       # PBA is read-only
    assert fn.msix_pending(1)
    r.msix_enable(fn, maskall=True)
    r.bus.write(fn.bar_base + 16 + 12, 0)                      # unmask vector: function masked
    assert r.sink.got == [] and fn.msix_pending(1)
    r.msix_enable(fn, maskall=False)                           # now it goes, once
    assert r.sink.got == [(fn.rid, 0x40, 0x11)] and not fn.msix_pending(1)
    assert fn.notify(1) == Delivery.SENT
    r.msix_enable(fn, enable=False)
    assert fn.notify(1) == Delivery.DISABLED
    assert len(r.sink.got) == 2


class MsixMachine(RuleBasedStateMachine):
    """Random enable / function mask / vector mask / notify on MSI-X: every raised
    vector is delivered exactly once, when it is unmasked, or stays pending."""

    N = 4

    def __init__(self):
        super().__init__()
        self.r = rig()
        self.fn = self.r.add_msix_device(0, 7, vectors=self.N, bar_addr=0x1000_0000)
        for v in range(self.N):
            self.r.msix_program(self.fn, v, DOORBELL | 0x40, v, masked=True)
        self.enabled, self.maskall = False, False
        self.masked = [True] * self.N
        self.pending = [False] * self.N
        self.expected = [0] * self.N

    def _flush(self):
        if not self.enabled or self.maskall:
            return
        for v in range(self.N):
            if self.pending[v] and not self.masked[v]:
                self.pending[v] = False
                self.expected[v] += 1

    @rule(enable=st.booleans(), maskall=st.booleans())
    def control(self, enable, maskall):
        self.r.msix_enable(self.fn, enable=enable, maskall=maskall)
        self.enabled, self.maskall = enable, maskall
        self._flush()

    @rule(v=st.integers(0, N - 1), masked=st.booleans())
    def vector_mask(self, v, masked):
        self.r.bus.write(self.fn.bar_base + 16 * v + 12, int(masked))
        self.masked[v] = masked
        self._flush()

    @rule(v=st.integers(0, N - 1))
    def notify(self, v):
        d = self.fn.notify(v)
        if not self.enabled:
            assert d == Delivery.DISABLED
        elif self.maskall or self.masked[v]:
            assert d == Delivery.PENDING
            self.pending[v] = True
        else:
            assert d == Delivery.SENT
            self.expected[v] += 1

    @invariant()
    def nothing_lost_or_duplicated(self):
        got = [0] * self.N
        for _, _, data in self.r.sink.got:
            got[data] += 1
        assert got == self.expected
        assert [self.fn.msix_pending(v) for v in range(self.N)] == self.pending


TestMsixMachine = MsixMachine.TestCase


class MsiMachine(RuleBasedStateMachine):
    """The same for MSI with per-vector masking."""

    N = 4

    def __init__(self):
        super().__init__()
        self.r = rig()
        self.fn = self.r.pci.add(PciFunction(0, 8, msi=MsiConfig(self.N)))
        self.cap = self.fn.msi_cap
        self.r.cfg_write(self.fn, 0x04, 0x4, 2)
        self.r.cfg_write(self.fn, self.cap + 4, DOORBELL)
        self.r.cfg_write(self.fn, self.cap + 0xC, 0x100, 2)
        self.enabled = False
        self.mask = 0
        self.pending = 0
        self.expected = [0] * self.N

    @rule(enable=st.booleans())
    def control(self, enable):
        self.r.cfg_write(self.fn, self.cap + 2, int(enable) | 2 << 4, 2)
        self.enabled = enable
        self._flush()

    def _flush(self):
        if not self.enabled:
            return
        for v in range(self.N):
            if self.pending >> v & 1 and not self.mask >> v & 1:
                self.pending &= ~(1 << v)
                self.expected[v] += 1

    @rule(mask=st.integers(0, 2**N - 1))
    def set_mask(self, mask):
        self.r.cfg_write(self.fn, self.cap + 0x10, mask)
        self.mask = mask
        self._flush()

    @rule(v=st.integers(0, N - 1))
    def notify(self, v):
        d = self.fn.notify(v)
        if not self.enabled:
            assert d == Delivery.DISABLED
        elif self.mask >> v & 1:
            assert d == Delivery.PENDING
            self.pending |= 1 << v
        else:
            assert d == Delivery.SENT
            self.expected[v] += 1

    @invariant()
    def nothing_lost_or_duplicated(self):
        got = [0] * self.N
        for _, _, data in self.r.sink.got:
            got[data - 0x100] += 1
        assert got == self.expected
        assert self.r.cfg_read(self.fn, self.cap + 0x14) == self.pending


TestMsiMachine = MsiMachine.TestCase


def test_a_bar_at_its_register_number():
    """Bar(reg=n) puts the BAR in register n (QEMU's pci_register_bar region number);
    the registers before it are unimplemented (read 0, size to 0); an MSI-X BIR names
    the register; an overlapping or out-of-range register is refused."""
    import pytest

    from pymsi.errors import InvalidArgument
    from pymsi.hw import pci as P

    fn = P.PciFunction(0, 1, bars=[P.Bar(0x1000, is64=False, reg=1), P.Bar(0x4000, reg=3)],
                       msix=P.MsixConfig(4, bar=1, table_offset=0, pba_offset=0x800))
    fn.cfg_write(P.BAR0, 0xFFFF_FFFF)
    assert fn.cfg_read(P.BAR0) == 0
    fn.cfg_write(P.BAR0 + 4, 0xFFFF_FFFF)
    assert fn.cfg_read(P.BAR0 + 4) == 0xFFFF_F000
    assert fn.cfg_read(P.BAR0 + 12) & 0b110 == 0b100                    # 64-bit at 3
    assert fn.cfg_read(fn.msix_cap + P.MSIX_TABLE) & 7 == 3
    for bars in ([P.Bar(0x1000, reg=1), P.Bar(0x1000, reg=2)], [P.Bar(0x1000, reg=5)],
                 [P.Bar(0x1000, is64=False, reg=-1)]):
        with pytest.raises(InvalidArgument):
            P.PciFunction(0, 2, bars=bars)


def test_an_msix_table_write_wider_than_its_size_keeps_its_low_bytes():
    # a 4-byte store carries 4 bytes: the model never raises on a value wider than that
    from pymsi.hw.pci import Bar, MsixConfig, PciFunction

    fn = PciFunction(0, 1, bars=[Bar(0x4000)], msix=MsixConfig(4, bar=0))
    fn.bar_write(0, fn.msix.table_offset, (1 << 32) | 0x1234_5678, 4)
    fn.bar_write(0, fn.msix.table_offset + 16, -1, 8)
    assert fn.msix_entry(0)[0] & 0xFFFF_FFFF == 0x1234_5678
    assert fn.msix_entry(1)[0] == 0xFFFF_FFFF_FFFF_FFFF
