"""The device-model plugin API and its two devices, seen from the host kernel's drivers.

Expected values come from the devices' specifications (QEMU's docs/specs/edu.rst for edu:
ID 0x010000ed, PCI 1234:11e8, liveness inverts, factorial, interrupt status values 0x001 /
0x100, DMA buffer at 0x40000; the NIC's register table in pymsi/devices/nic.py's
docstring), from the PCI specification (configuration header offsets, the MSI-X
capability) and from the machine (a device's requester ID is bus << 8 | devfn, slot 1 is
00:01.0 = 0x8; SMMU event F_TRANSLATION = 0x10; the ITS doorbell 0x08090040).
"""

from __future__ import annotations

import json
import math
from importlib import metadata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pymsi import sched, trace
from pymsi.errors import BusError, InvalidArgument
from pymsi.hw.pci import Delivery
from pymsi.hw.qdev import DeviceModelError, MmioBar, PciDeviceModel, find_device_model
from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.msi import MsiType
from pymsi.machine import ArmVirt
from pymsi.machine.platforms import make_function

# PCI configuration header (PCI Local Bus spec 3.0, 6.1)
VENDOR_ID, DEVICE_ID, COMMAND, CLASS_REV, SUBSYS = 0x00, 0x02, 0x04, 0x08, 0x2C
BAR0 = 0x10
# edu (docs/specs/edu.rst)
ID, LIVE, FACT, STATUS, IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64
DMA_SRC, DMA_DST, DMA_CNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
DMA_BUF = 0x40000
RID1 = 0x08                                      # 00:01.0
F_TRANSLATION = 0x10
EVT_SIZE = 32
DOORBELL = 0x0809_0040


class EduDriver:
    """What Linux's edu driver does: enable, bus master, a 28-bit DMA mask, one vector whose
    handler reads the interrupt status and acknowledges it."""

    def __init__(self, k, dev, flags=MsiType.MSIX | MsiType.MSI):
        self.k, self.dev = k, dev
        dev.enable_device()
        dev.set_master()
        dev.set_dma_mask((1 << 28) - 1)
        assert k.msi.alloc_irq_vectors(dev, 1, 1, flags) == 1
        self.irq = k.msi.irq_vector(dev, 0)
        self.seen: list[tuple[int, int]] = []          # (interrupt status, cpu)
        k.irq.request_irq(self.irq, self.handler, "edu", self)
        self.bar = dev.bars[0][0]

    def rd(self, off, size=4):
        return self.dev.mmio_read(self.bar + off, size)

    def wr(self, off, value, size=4):
        self.dev.mmio_write(self.bar + off, value, size)

    def handler(self, irq, dev_id):
        status = self.rd(IRQ_STATUS)
        self.seen.append((status, self.k.current_cpu))
        self.wr(IRQ_ACK, status)
        return 1


def edu_host(smmu="s1", **props):
    m = ArmVirt(devices=[{"model": "edu", **props}], smmu=smmu)
    k = m.boot()
    return m, k, k.pci.devices[0]


# -- edu: the host driver's view -------------------------------------------------------------


def test_edu_config_space_as_the_kernel_enumerates_it():
    m, k, dev = edu_host()
    assert (dev.vendor, dev.device) == (0x1234, 0x11E8)
    assert dev.cfg_read(CLASS_REV) >> 24 == 0xFF              # class: other
    assert dev.rid == RID1
    assert dev.msix_cap is not None and dev.msi_cap is not None
    assert dev.msix_vectors() == 1 and dev.msi_vectors() == 1
    # BAR 0 is 1 MiB of 32-bit memory: the all-ones probe reads back ~(1 MiB - 1)
    assert dev.bars[0][1] == 1 << 20
    assert dev.cfg_read(BAR0) & 0xF == 0
    assert isinstance(m.functions[0], PciDeviceModel) and m.functions[0].realized


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=25)
def test_edu_id_and_liveness(value):
    m, k, dev = _EDU
    drv = _EDU_DRV
    assert drv.rd(ID) == 0x010000ED
    drv.wr(LIVE, value)
    assert drv.rd(LIVE) == value ^ 0xFFFF_FFFF


_EDU = edu_host()
_EDU_DRV = EduDriver(_EDU[1], _EDU[2])


@pytest.mark.parametrize("n", [0, 1, 5, 12, 13, 20, 33, 34, 1000])
def test_edu_factorial_wraps_at_32_bits(n):
    drv = _EDU_DRV
    drv.wr(FACT, n)
    assert drv.rd(STATUS) & 1 == 0                             # done (no scheduler: at once)
    assert drv.rd(FACT) == math.factorial(n) % 2**32


def test_edu_factorial_takes_time_and_interrupts_when_asked():
    m, k, dev = edu_host()
    s = sched.Scheduler()
    m.functions[0].scheduler = s
    drv = EduDriver(k, dev)
    drv.wr(STATUS, 0x80)                                       # interrupt when done
    drv.wr(FACT, 10)
    assert drv.rd(STATUS) == 0x81                              # computing
    drv.wr(FACT, 3)                                            # ignored while computing
    s.add_idle_hook(k.handle_interrupts)
    assert s.run().quiescent and s.now() > 0
    assert drv.rd(FACT) == math.factorial(10) and drv.rd(STATUS) == 0x80
    assert [st_ for st_, _ in drv.seen] == [0x001]
    assert drv.rd(IRQ_STATUS) == 0                             # the handler acknowledged it


@pytest.mark.parametrize("flags", [MsiType.MSIX, MsiType.MSI])
def test_edu_raise_reaches_the_host_handler_by_msix_or_msi(flags):
    m, k, dev = edu_host()
    drv = EduDriver(k, dev, flags)
    assert dev.msix_enabled == (flags == MsiType.MSIX)
    with trace.record("smmuv3_translate_success") as rec:
        drv.wr(IRQ_RAISE, 0x1234)
    k.handle_interrupts()
    assert [s for s, _ in drv.seen] == [0x1234]
    assert drv.rd(IRQ_STATUS) == 0
    (t,) = rec.records                                         # the MSI went through the SMMU
    assert t.fields["sid"] == RID1 and t.fields["translated"] == DOORBELL
    drv.wr(IRQ_RAISE, 0x1)
    drv.wr(IRQ_RAISE, 0x4)
    k.handle_interrupts()
    assert [s for s, _ in drv.seen][1:] == [0x5]               # two MSIs, one pending LPI


def test_edu_dma_round_trip_through_the_smmu():
    m, k, dev = edu_host()
    drv = EduDriver(k, dev)
    src, dst = k.mm.alloc(0x2000, 0x1000), k.mm.alloc(0x2000, 0x1000)
    data = bytes((i * 7 + 3) & 0xFF for i in range(0x300))
    m.ram.write(src + 0x10, data)
    s_iova = k.dma_iommu.map_page(dev, src, 0x1000, DmaDirection.TO_DEVICE)
    d_iova = k.dma_iommu.map_page(dev, dst, 0x1000, DmaDirection.FROM_DEVICE)
    assert s_iova < 1 << 28 and s_iova != src                  # an IOVA, not the PA
    with trace.record("smmuv3_translate_success") as rec:
        drv.wr(DMA_SRC, s_iova + 0x10, 8)
        drv.wr(DMA_DST, DMA_BUF + 0x100, 8)
        drv.wr(DMA_CNT, len(data), 8)
        drv.wr(DMA_CMD, 0x1 | 0x4, 8)                          # RAM -> edu, interrupt
        k.handle_interrupts()
        assert drv.rd(DMA_CMD, 8) & 1 == 0
        drv.wr(DMA_SRC, DMA_BUF + 0x100, 8)
        drv.wr(DMA_DST, d_iova + 0x20, 8)
        drv.wr(DMA_CMD, 0x1 | 0x2 | 0x4, 8)                    # edu -> RAM, interrupt
        k.handle_interrupts()
    assert m.ram.read(dst + 0x20, len(data)) == data
    assert m.ram.read(dst, 0x20) == bytes(0x20)
    assert [s for s, _ in drv.seen] == [0x100, 0x100]
    iovas = {r.fields["iova"] & ~0xFFF for r in rec if r.fields["iova"] != DOORBELL}
    assert {s_iova, d_iova} <= iovas


def test_edu_dma_to_an_unmapped_iova_faults_in_the_smmu():
    m, k, dev = edu_host()
    drv = EduDriver(k, dev)
    dst = k.mm.alloc(0x1000, 0x1000)
    iova = k.dma_iommu.map_page(dev, dst, 0x1000, DmaDirection.FROM_DEVICE)
    k.dma_iommu.unmap_page(dev, iova, 0x1000)
    prod = m.smmu.mmio_read(0xA8)                              # EVENTQ_PROD (page 0 alias)
    drv.wr(DMA_SRC, DMA_BUF, 8)
    drv.wr(DMA_DST, iova, 8)
    drv.wr(DMA_CNT, 64, 8)
    drv.wr(DMA_CMD, 0x1 | 0x2, 8)
    assert m.ram.read(dst, 64) == bytes(64)                    # nothing landed
    f = m.functions[0]
    assert f.dma_stats["faults"] >= 1
    # an F_TRANSLATION record for our StreamID and IOVA in the event queue
    evq = m.smmu.mmio_read(0xA0, 8) & ((1 << 52) - 1) & ~0x1F
    slot = prod & ((1 << (m.smmu.mmio_read(0xA0, 8) & 0x1F)) - 1)
    rec = m.ram.read(evq + slot * EVT_SIZE, EVT_SIZE)
    w0 = int.from_bytes(rec[0:8], "little")
    assert w0 & 0xFF == F_TRANSLATION and w0 >> 32 == RID1
    assert int.from_bytes(rec[16:24], "little") == iova


def test_edu_dma_outside_its_buffer_and_bad_accesses_are_ignored():
    m, k, dev = edu_host()
    drv = EduDriver(k, dev)
    f = m.functions[0]
    drv.wr(DMA_SRC, 0, 8)
    drv.wr(DMA_DST, DMA_BUF + 0xFF0, 8)
    drv.wr(DMA_CNT, 0x100, 8)                                  # runs off the buffer's end
    drv.wr(DMA_CMD, 0x1, 8)
    assert f.dma_errors == 1 and f.dma_stats["reads"] == 0
    assert drv.rd(ID, 2) == 0xFFFF and drv.rd(ID + 1, 1) == 0xFF
    drv.wr(LIVE, 5, 2)                                         # wrong size: nothing
    assert drv.rd(LIVE) == 0xFFFF_FFFF


def test_no_dma_without_bus_master():
    m, k, dev = edu_host()
    EduDriver(k, dev)
    dev.set_master(False)
    f = m.functions[0]
    assert not f.dma_read(0x1000, 4).ok and f.dma_stats["blocked"] == 1


@given(st.lists(st.tuples(st.booleans(), st.integers(0, (1 << 20) - 8),
                          st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1)),
                max_size=40))
@settings(max_examples=40)
def test_edu_never_raises_on_any_register_access(ops):
    drv = _EDU_DRV
    for is_write, off, size, value in ops:
        off -= off % size
        if is_write:
            drv.wr(off, value & ((1 << 8 * size) - 1), size)
        else:
            assert 0 <= drv.rd(off, size) < 1 << 8 * size
    _EDU[1].handle_interrupts()
    assert drv.rd(ID) == 0x010000ED


# -- the NIC --------------------------------------------------------------------------------

NIC_CTRL, NIC_DROPPED, Q0, QS = 0x8, 0xC, 0x1000, 0x20
RING_LO, RING_HI, RING_SIZE, HEAD, DOORBELL_REG = 0x0, 0x4, 0x8, 0xC, 0x10


class NicDriver:
    """Rings in one DMA-mapped buffer, one vector per queue, handlers that read the
    descriptor at the tail and ring the doorbell."""

    def __init__(self, k, dev, queues, ring=4):
        self.k, self.dev, self.queues, self.ring = k, dev, queues, ring
        self.drv = MsiCountingDriver(k, dev, queues, MsiType.MSIX)
        assert self.drv.nvec == queues
        self.bar = dev.bars[0][0]
        nbytes = queues * ring * 16
        size = max(0x1000, (nbytes + 0xFFF) & ~0xFFF)
        self.mem = k.mm.alloc(size, 0x1000)
        self.iova = k.dma_iommu.map_page(dev, self.mem, size, DmaDirection.FROM_DEVICE)
        for q in range(queues):
            base = self.iova + q * ring * 16
            self.wr(Q0 + q * QS + RING_LO, base & 0xFFFF_FFFF)
            self.wr(Q0 + q * QS + RING_HI, base >> 32)
            self.wr(Q0 + q * QS + RING_SIZE, ring)
        self.wr(NIC_CTRL, 1)

    def rd(self, off):
        return self.dev.mmio_read(self.bar + off, 4)

    def wr(self, off, value):
        self.dev.mmio_write(self.bar + off, value, 4)

    def desc(self, q, slot):
        raw = self.k.ram.read(self.mem + (q * self.ring + slot) * 16, 16)
        return (int.from_bytes(raw[0:8], "little"), int.from_bytes(raw[8:12], "little"),
                int.from_bytes(raw[12:14], "little"), int.from_bytes(raw[14:16], "little"))


def nic_host(queues):
    m = ArmVirt(devices=[{"model": "nic", "queues": queues}], smmu="s1", ram_size=0x2000_0000)
    k = m.boot()
    return m, k, k.pci.devices[0], m.functions[0]


def test_nic_packets_land_in_the_ring_and_raise_their_queues_vector():
    m, k, dev, nic = nic_host(4)
    d = NicDriver(k, dev, 4)
    assert d.rd(0x0) == 0x4E494331 and d.rd(0x4) == 4
    for q in (2, 0, 2, 3):
        assert nic.receive(q, length=100 + q)
        k.handle_interrupts()
    assert [len(d.drv.fired[q]) for q in range(4)] == [1, 0, 2, 1]
    nic.receive(1)
    nic.receive(1)                                # two MSIs, one pending LPI: one handler run
    k.handle_interrupts()
    assert len(d.drv.fired[1]) == 1
    assert d.desc(2, 0) == (0, 102, 2, 1) and d.desc(0, 0) == (1, 100, 0, 1)
    assert d.desc(2, 1) == (2, 102, 2, 1) and d.desc(3, 0) == (3, 103, 3, 1)
    assert d.rd(Q0 + 2 * QS + HEAD) == 2 and d.rd(Q0 + 1 * QS + HEAD) == 2
    assert d.rd(Q0 + 0 * QS + HEAD) == 1


def test_nic_full_ring_drops_until_the_doorbell_frees_it():
    m, k, dev, nic = nic_host(2)
    d = NicDriver(k, dev, 2, ring=4)
    assert all(nic.receive(1) and k.handle_interrupts() for _ in range(4))
    assert not nic.receive(1) and d.rd(NIC_DROPPED) == 1
    d.wr(Q0 + QS + DOORBELL_REG, 9)                            # beyond HEAD: ignored
    assert d.rd(Q0 + QS + DOORBELL_REG) == 0 and not nic.receive(1)
    d.wr(Q0 + QS + DOORBELL_REG, 3)                            # consumed three
    assert [nic.receive(1) and k.handle_interrupts() for _ in range(4)] == [1, 1, 1, False]
    assert d.desc(1, 0)[0] == 4                                # the 5th packet wrapped to 0
    assert len(d.drv.fired[1]) == 7


def test_nic_ring_at_an_unmapped_iova_faults_and_drops():
    m, k, dev, nic = nic_host(2)
    d = NicDriver(k, dev, 2)
    d.wr(Q0 + RING_LO, 0x0F00_0000)                            # never mapped
    d.wr(Q0 + RING_SIZE, 4)
    before = m.smmu.stats["events_recorded"]
    assert not nic.receive(0)
    assert m.smmu.stats["events_recorded"] > before
    k.handle_interrupts()
    assert d.drv.fired[0] == [] and d.rd(NIC_DROPPED) == 1


def test_nic_with_2048_vectors_every_queue_delivered_once():
    m, k, dev, nic = nic_host(2048)
    assert dev.msix_vectors() == 2048
    d = NicDriver(k, dev, 2048, ring=1)
    for q in range(2048):
        assert nic.receive(q)
    k.handle_interrupts()
    assert all(len(d.drv.fired[q]) == 1 for q in range(2048))
    assert len({k.msi.irq_vector(dev, q) for q in range(2048)}) == 2048
    assert d.desc(2047, 0) == (2047, 64, 2047, 1)


def test_nic_queue_count_is_checked():
    for bad in (0, 2049, "4", True):
        with pytest.raises(InvalidArgument):
            make_function(0, 1, {"model": "nic", "queues": bad})


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 0x2000 - 8),
                          st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1)),
                max_size=40), st.lists(st.integers(0, 3), max_size=10))
@settings(max_examples=30)
def test_nic_never_raises_on_any_register_access(ops, packets):
    m, k, dev, nic = _NIC
    bar = dev.bars[0][0]
    for is_write, off, size, value in ops:
        off -= off % size
        if is_write:
            dev.mmio_write(bar + off, value & ((1 << 8 * size) - 1), size)
        else:
            assert 0 <= dev.mmio_read(bar + off, size) < 1 << 8 * size
    for q in packets:
        nic.receive(q)
    k.handle_interrupts()
    assert dev.mmio_read(bar, 4) == 0x4E494331


_NIC = nic_host(4)
NicDriver(_NIC[1], _NIC[2], 4)


# -- a user's device, found by import path ----------------------------------------------------


class Counter(PciDeviceModel):
    """Counts writes to BAR 0; raises MSI-X vector 0 every ``every`` writes; has a
    vendor-specific configuration register at 0xC0 that reads the count."""

    VENDOR_ID, DEVICE_ID = 0x1234, 0xC0DE
    BARS = (MmioBar(0x1000),)
    MSIX_VECTORS = 2
    PROPERTIES = {"every": 4}

    def realize(self) -> None:
        self.count = 0
        self.unrealized = False
        self.config_init(0xC0, 0, 4)

    def unrealize(self) -> None:
        self.unrealized = True

    def read(self, offset: int, size: int) -> int:
        return self.count if offset == 0 else 0

    def write(self, offset: int, value: int, size: int) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.msix_notify(1)

    def config_read(self, offset: int, size: int) -> int:
        if offset == 0xC0 and size == 4:
            return self.count
        return super().config_read(offset, size)


def test_a_device_in_a_test_file_found_by_import_path():
    assert find_device_model("test_qdev:Counter") is Counter
    m = ArmVirt(devices=[{"model": "test_qdev:Counter", "every": 3}], smmu="s1")
    k = m.boot()
    dev = k.pci.devices[0]
    assert (dev.vendor, dev.device) == (0x1234, 0xC0DE)
    drv = MsiCountingDriver(k, dev, 2)
    bar = dev.bars[0][0]
    for _ in range(7):
        dev.mmio_write(bar + 8, 1, 4)
        k.handle_interrupts()
    assert dev.mmio_read(bar, 4) == 7 and dev.cfg_read(0xC0) == 7
    assert drv.fired[1] and len(drv.fired[1]) == 2 and drv.fired[0] == []
    # unplug: unrealize ran, the BAR window and the configuration space are gone
    fn = m.functions[0]
    fn.unplug()
    assert fn.unrealized and not fn.realized and fn.host is None
    with pytest.raises(BusError):
        m.bus.read(bar, 4)
    assert dev.cfg_read(VENDOR_ID, 2) == 0xFFFF


def test_msix_notify_while_msix_is_off_does_nothing():
    fn = make_function(0, 1, {"model": "test_qdev:Counter"})
    assert fn.msix_notify(0) is Delivery.DISABLED and fn.msi_notify(0) is Delivery.DISABLED


def test_unknown_models_and_properties_are_errors_naming_them():
    with pytest.raises(DeviceModelError, match="'warp-drive'"):
        ArmVirt(devices=[{"model": "warp-drive"}])
    with pytest.raises(InvalidArgument, match="'speed'"):
        ArmVirt(devices=[{"model": "edu", "speed": 3}])
    with pytest.raises(DeviceModelError, match="nosuchmodule"):
        find_device_model("nosuchmodule:Dev")
    with pytest.raises(DeviceModelError, match="NoSuch"):
        find_device_model("test_qdev:NoSuch")
    with pytest.raises(DeviceModelError, match="not a PciDeviceModel"):
        find_device_model("test_qdev:EduDriver")
    for bad in ("", None, 3, "test_qdev:"):
        with pytest.raises(DeviceModelError):
            find_device_model(bad)


def test_the_shipped_models_are_entry_points():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="pymsi.devices")}
    assert eps["edu"] == "pymsi.devices.edu:EduDevice"
    assert eps["nic"] == "pymsi.devices.nic:MultiQueueNic"
    assert find_device_model("edu").DEVICE_ID == 0x11E8


def test_a_realize_that_refuses_undoes_the_plug():
    class Refuses(Counter):
        def realize(self) -> None:
            raise InvalidArgument("no")

    m = ArmVirt(devices=[{"msix": 1}], smmu=None)
    fn = Refuses(0, 5)
    with pytest.raises(InvalidArgument):
        fn.plug(m.pci)
    assert m.pci.function(fn.rid) is None and fn.host is None


# -- reproducible runs ------------------------------------------------------------------------


def packet_storm(seed):
    m, k, dev, nic = nic_host(8)
    d = NicDriver(k, dev, 8, ring=64)
    s = sched.Scheduler(seed)
    nic.scheduler = s
    s.add_idle_hook(k.handle_interrupts)
    for _ in range(60):
        nic.receive_later(s.rng.randrange(1, 50_000), s.rng.randrange(8),
                          s.rng.randrange(60, 1500))
    with trace.record("smmuv3_translate_success,gicv3_redist_process_lpi,irq_handler_entry",
                      clock=s.now) as rec:
        assert s.run().quiescent
    assert sum(map(len, d.drv.fired.values())) == 60
    lengths = [d.desc(q, i)[1] for q in range(8) for i in range(d.rd(Q0 + q * QS + HEAD))]
    return rec.to_jsonl(), lengths


def test_the_same_seed_gives_the_same_run():
    (ta, la), (tb, lb) = packet_storm(7), packet_storm(7)
    assert ta == tb and la == lb and len(la) == 60
    assert all(json.loads(line)["time_ns"] > 0 for line in ta.splitlines())
    tc, lc = packet_storm(8)
    assert tc != ta and lc != la


# -- a model as the physical function a VMM is given through VFIO -------------------------------


def test_edu_assigned_through_vfio_dmas_into_the_ioas_and_signals_the_eventfd():
    from pymsi import vmmlib

    # the guest's RAM sits at 1 GiB: beyond edu's default 28-bit DMA mask (a property)
    vmm = vmmlib.Vmm("sw-msi", smmu="s1", devices=[{"model": "edu", "dma_mask": 2**32 - 1}],
                     ram_size=0x10_0000)
    vmm.bind()
    vmm.attach()
    assert vmm.enable(1) == 0
    edu = vmm.m.functions[0]
    assert edu.msix_enabled
    bar = vmm.k.pci.devices[0].bars[0][0]
    gpa = vmmlib.RAM_GPA + 0x3000                          # IOVA = GPA in the IOAS
    vmm.k.user_write(vmm.va + 0x3000, b"guest data")
    bus = vmm.m.bus                                        # the VMM's mmap of BAR 0
    bus.write(bar + DMA_SRC, gpa, 8)
    bus.write(bar + DMA_DST, DMA_BUF, 8)
    bus.write(bar + DMA_CNT, 10, 8)
    bus.write(bar + DMA_CMD, 0x1 | 0x4, 8)                 # RAM -> edu, interrupt
    vmm.m.bus.drain()
    vmm.k.handle_interrupts()
    assert bytes(edu.dma_buf[:10]) == b"guest data"
    assert vmm.counts() == [1]                             # the vector's eventfd fired
    bus.write(bar + DMA_SRC, DMA_BUF, 8)
    bus.write(bar + DMA_DST, gpa + 0x100, 8)
    bus.write(bar + DMA_CMD, 0x1 | 0x2, 8)                 # edu -> RAM
    assert vmm.k.user_read(vmm.va + 0x3100, 10) == b"guest data"
    bus.write(bar + DMA_DST, vmmlib.RAM_GPA + 0x10_0000, 8)   # past the IOAS: a fault
    before = vmm.smmu_events()
    bus.write(bar + DMA_CMD, 0x1 | 0x2, 8)
    assert vmm.smmu_events() > before


# -- any bus, any IOMMU: a model sees only its bus ----------------------------------------------


class OffsetIommu:
    """An IOMMU that maps IOVA -> IOVA + 0x4000_0000 for one StreamID and aborts the rest."""

    def __init__(self, sid):
        self.sid, self.seen = sid, []

    def translate(self, sid, iova, write=False):
        from pymsi.hw.smmuv3 import Outcome, SmmuResult

        self.seen.append((sid, iova, write))
        if sid != self.sid:
            return SmmuResult(Outcome.ABORTED, None)
        return SmmuResult(Outcome.TRANSLATED, iova + 0x4000_0000)


def test_dma_goes_through_the_iommu_of_the_bus_with_the_requester_id(core):
    from pymsi.hw.bus import Bus
    from pymsi.hw.pci import PciHost

    ram = core.Memory()
    ram.add_ram(0x4000_0000, 0x10_0000)
    bus = Bus(ram)
    host = PciHost(bus, 0x3F00_0000, 16)
    rid = 3 << 8 | 4 << 3 | 1                                   # 03:04.1
    iommu = OffsetIommu(rid)
    bus.attach_iommu(0, 0xFFFF, iommu)
    fn = find_device_model("edu")(3, 4, 1).plug(host)
    fn.cfg_write(COMMAND, 0x6, 2)                               # memory + bus master
    ram.write(0x4000_1000, b"abcdefgh")
    assert fn.dma_read_bytes(0x1000, 8) == b"abcdefgh"
    assert fn.dma_write(0x2000, 0x1122334455667788, 8).ok
    assert ram.read(0x4000_2000, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert {s for s, _, _ in iommu.seen} == {rid}
    assert (rid, 0x2000, True) in iommu.seen and (rid, 0x1000, False) in iommu.seen
    iommu.sid = 0                                              # now it aborts ours
    assert fn.dma_read_bytes(0x1000, 8) is None and fn.dma_stats["faults"] == 1
    assert not fn.dma_write_bytes(0x2000, b"x")


# -- the NIC's rings under any sequence of driver and wire actions -----------------------------


class NicRings(RuleBasedStateMachine):
    """After every step: HEAD and DOORBELL as the driver can expect, every descriptor the
    device wrote in the slot it belongs to, every accepted packet's vector handled once."""

    Q = 3

    def __init__(self):
        super().__init__()
        self.m, self.k, self.dev, self.nic = nic_host(self.Q)
        self.d = NicDriver(self.k, self.dev, self.Q, ring=4)
        self.size = [4] * self.Q
        self.head = [0] * self.Q
        self.tail = [0] * self.Q
        self.ring: list[dict[int, int]] = [{} for _ in range(self.Q)]   # slot -> packet id
        self.next_id = 0
        self.dropped = 0
        self.handled = [0] * self.Q

    @rule(q=st.integers(0, Q - 1), length=st.integers(0, 9000))
    def packet(self, q, length):
        ok = self.nic.receive(q, length)
        room = self.size[q] and self.head[q] - self.tail[q] < self.size[q]
        assert ok == bool(room)
        if ok:
            self.ring[q][self.head[q] % self.size[q]] = self.next_id
            self.next_id += 1
            self.head[q] += 1
            self.handled[q] += 1
            assert self.d.desc(q, (self.head[q] - 1) % self.size[q])[1:] == (
                length & 0xFFFF_FFFF, q, 1)
        else:
            self.dropped += 1
        self.k.handle_interrupts()

    @rule(q=st.integers(0, Q - 1), n=st.integers(-2, 6))
    def doorbell(self, q, n):
        value = (self.tail[q] + n) & 0xFFFF_FFFF
        self.d.wr(Q0 + q * QS + DOORBELL_REG, value)
        if 0 <= n <= self.head[q] - self.tail[q]:
            self.tail[q] += n

    @rule(q=st.integers(0, Q - 1), size=st.sampled_from([0, 1, 2, 3, 4, 5]))
    def resize(self, q, size):
        self.d.wr(Q0 + q * QS + RING_SIZE, size)
        if size in (0, 1, 2, 4):                                 # a power of two or 0
            self.size[q], self.head[q], self.tail[q], self.ring[q] = size, 0, 0, {}

    @invariant()
    def registers_and_rings(self):
        for q in range(self.Q):
            assert self.d.rd(Q0 + q * QS + HEAD) == self.head[q]
            assert self.d.rd(Q0 + q * QS + DOORBELL_REG) == self.tail[q]
            for slot, pkt in self.ring[q].items():
                assert self.d.desc(q, slot)[0] == pkt
            assert len(self.d.drv.fired[q]) == self.handled[q]
        assert self.d.rd(NIC_DROPPED) == self.dropped


NicRings.TestCase.settings = settings(max_examples=25, stateful_step_count=30)
test_nic_rings = NicRings.TestCase


def test_models_on_the_x86_machine_too():
    from pymsi.machine import X86Pc

    m = X86Pc(devices=[{"model": "edu"}, {"model": "nic", "queues": 16}])
    k = m.boot()
    edu = EduDriver(k, k.pci.devices[0])
    edu.wr(IRQ_RAISE, 0x40)
    k.handle_interrupts()
    assert [s for s, _ in edu.seen] == [0x40]
    drv = MsiCountingDriver(k, k.pci.devices[1], 16)
    assert m.functions[1].msix_notify(5) is Delivery.SENT
    k.handle_interrupts()
    assert len(drv.fired[5]) == 1 and sum(map(len, drv.fired.values())) == 1


# -- Function Level Reset of a model (PCIe Base 6.6.2: internal state back to initial) ------

EXP_DEVCTL = 0x40 + 0x08                   # the PCI Express capability this API puts at 0x40
BCR_FLR = 1 << 15


def _plugged(model):
    from pymsi import core
    from pymsi.hw.bus import Bus
    from pymsi.hw.pci import PciHost

    ram = core.Memory()
    ram.add_ram(0x4000_0000, 0x10_0000)
    bus = Bus(ram)
    model.plug(PciHost(bus, ecam_base=0x3F00_0000, ecam_buses=1))
    s = sched.Scheduler()
    model.scheduler = s
    model.cfg_write(BAR0, 0x1000_0000)
    model.cfg_write(COMMAND, 0x6, 2)                     # memory, bus master
    return ram, s


def _flr(model):
    model.cfg_write(EXP_DEVCTL, BCR_FLR, 2)


class Identified(Counter):
    REVISION, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x7, 0x1AF4, 0x1100

    def realize(self) -> None:
        super().realize()
        self.config_init(0xC4, 0xA5A5_0001, 4, wmask=0xFF)


def test_an_flr_keeps_the_identity_and_the_registers_a_model_declared():
    """Revision, Subsystem IDs (HwInit) and a config_init register's reset value survive
    an FLR; its writable bits go back to that value."""
    fn = Identified(0, 1)
    _plugged(fn)
    fn.cfg_write(0xC4, 0x33, 1)
    assert fn.cfg_read(0xC4) == 0xA5A5_0033
    _flr(fn)
    assert fn.flr_count == 1
    assert fn.cfg_read(CLASS_REV) & 0xFF == 0x7
    assert fn.cfg_read(SUBSYS) == 0x1100 << 16 | 0x1AF4
    assert fn.cfg_read(0xC4) == 0xA5A5_0001
    assert fn.cfg_read(COMMAND, 2) == 0 and fn.cfg_read(BAR0) == 0
    edu = find_device_model("edu")(0, 2)
    edu.flr()
    assert edu.cfg_read(CLASS_REV) == 0xFF00_0010                # class other, revision 0x10


EDU_REGS = (ID, LIVE, FACT, STATUS, IRQ_STATUS, DMA_SRC, DMA_DST, DMA_CNT, DMA_CMD)


def test_an_flr_resets_the_edu_and_cancels_its_work():
    edu = find_device_model("edu")(0, 1)
    fresh = find_device_model("edu")(0, 2)
    ram, s = _plugged(edu)
    _plugged(fresh)
    regs = [(LIVE, 0x1234), (STATUS, 0x80), (IRQ_RAISE, 0x40), (DMA_SRC, DMA_BUF),
            (DMA_DST, 0x4000_0000), (DMA_CNT, 8), (FACT, 5), (DMA_CMD, 0x7)]
    for off, value in regs:
        edu.bar_write(0, off, value, 4)
    assert edu.bar_read(0, STATUS, 4) == 0x81 and edu.dma_busy
    _flr(edu)
    assert [edu.bar_read(0, r, 4) for r in EDU_REGS] == \
        [fresh.bar_read(0, r, 4) for r in EDU_REGS]
    assert not edu.dma_busy and not edu.intx_level
    assert s.pending == 0
    s.run()
    assert edu.bar_read(0, FACT, 4) == 0 and edu.bar_read(0, STATUS, 4) == 0
    assert edu.dma_stats["writes"] == 0 and edu.stats.sent == 0


def test_an_flr_resets_the_nic_and_drops_its_scheduled_packets():
    nic = find_device_model("nic")(0, 1, queues=2)
    ram, s = _plugged(nic)
    nic.bar_write(0, 0x8, 1, 4)                                 # CTRL.ENABLE
    nic.bar_write(0, 0x1000, 0x4000_0000, 4)                   # queue 0 ring
    nic.bar_write(0, 0x1008, 16, 4)
    assert nic.receive(0)
    nic.receive_later(1000, 0)
    writes = nic.dma_stats["writes"]
    _flr(nic)
    assert [nic.bar_read(0, off, 4) for off in (0x8, 0xC, 0x1000, 0x1004, 0x1008, 0x100C,
                                               0x1010)] == [0] * 7
    assert s.pending == 0
    s.run()
    assert nic.dma_stats["writes"] == writes and nic.packets == 0
    # the driver sets it up again: it works as a fresh one
    nic.cfg_write(COMMAND, 0x6, 2)
    nic.bar_write(0, 0x8, 1, 4)
    nic.bar_write(0, 0x1000, 0x4000_0000, 4)
    nic.bar_write(0, 0x1008, 16, 4)
    assert nic.receive(0) and nic.bar_read(0, 0x100C, 4) == 1
