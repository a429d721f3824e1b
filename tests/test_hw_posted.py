"""Posted writes: a model's write to its own (or another model's) registers is handled
after the access that caused it, in order, never inside it; nothing recurses, nothing
raises, and a livelock the guest sets up is bounded per access.  Also the ITS stall on
a command queue outside RAM and the SMMU's checks of its host arguments."""

from __future__ import annotations

import array

import pytest

from pymsi import core
from pymsi.errors import InvalidArgument
from pymsi.hw.bus import POSTED_BUDGET, Bus
from pymsi.hw.pci import Bar, Delivery, MsixConfig, PciFunction, PciHost
from pymsi.hw.smmuv3 import SMMUv3

from hw_rig import DOORBELL, ITS_BASE, PCI_MMIO, SMMU_BASE, ItsDriver, Platform, Sink
from hw_rig import sink_rig as rig
from smmu_driver import (
    CMDQ_CONS,
    CMDQ_PROD,
    CR0,
    EVENTQ_IRQ_CFG0,
    EVENTQ_IRQ_CFG1,
    GERROR,
    GERRORN,
    IRQ_CTRL,
    Driver,
    cd_words,
    pack,
    ste_words,
)

RAM, RAM_SIZE = 0x4000_0000, 0x0400_0000
POOL, PT_POOL, TARGET = RAM + 0x0100_0000, RAM + 0x0200_0000, RAM
SYNC, CFGI_STE_RANGE, TLBI_NSNH_ALL = 0x46, 0x04, 0x30
CS_IRQ = 1 << 12
GERROR_IRQ_CFG0, GERROR_IRQ_CFG1 = 0x68, 0x70
CMDQ_ERR, MSI_CMDQ_ABT_ERR = 1 << 0, 1 << 4
HOLE = 0x7000_0000




def sync_msi(addr: int, data: int) -> tuple[int, int]:
    """A CMD_SYNC that signals completion with an MSI of ``data`` to ``addr``."""
    return SYNC | CS_IRQ | data << 32, addr & ~3


class SmmuOnBus:
    """RAM, a bus, an SMMU with MSIs at SMMU_BASE whose MSIs are posted on the bus."""

    def __init__(self, cmdq_log2: int = 6, on_bus: bool = True) -> None:
        self.mem = core.Memory()
        self.mem.add_ram(RAM, RAM_SIZE)
        self.bus = Bus(self.mem)
        if on_bus:
            self.smmu = SMMUv3(self.mem, msi=True, msi_write=self.bus.write32)
            self.bus.map(SMMU_BASE, 0x2_0000, self.smmu, "SMMU")
        else:                   # no bus: the MSI callback writes straight into the model
            self.smmu = SMMUv3(self.mem, msi=True, msi_write=self._direct)
        self.drv = Driver(self.smmu, self.mem, POOL, 0x80_0000)
        self.drv.init(cmdq_log2=cmdq_log2)
        self.msi_log: list[tuple[int, int, int]] = []

    def _direct(self, addr: int, data: int) -> None:
        self.msi_log.append((addr, data, self.smmu.stats["events_recorded"]))
        if not SMMU_BASE <= addr < SMMU_BASE + 0x2_0000:
            raise OSError("nothing there")
        self.smmu.mmio_write(addr - SMMU_BASE, data, 4)

    def queue(self, cmds: list[tuple[int, int]], at: int = 0) -> None:
        """Put commands in the queue from index ``at`` without moving PROD."""
        for k, (d0, d1) in enumerate(cmds):
            self.mem.write(self.drv.cmdq + 16 * (at + k), pack([d0, d1]))

    def reg(self, off: int) -> int:
        return self.smmu.mmio_read(off)


# --- the SMMU's MSIs aimed at its own registers ------------------------------------------


@pytest.mark.parametrize("on_bus", [True, False])
def test_cmd_sync_msi_to_cmdq_prod_runs_the_next_commands_after_the_sync(on_bus):
    """The SYNC at index 0 signals by writing 3 to CMDQ_PROD: the SMMU finishes the
    SYNC (CONS = 1) and only then takes the write, running commands 1 and 2."""
    r = SmmuOnBus(on_bus=on_bus)
    prod0 = r.reg(CMDQ_PROD)
    assert prod0 == r.reg(CMDQ_CONS) & 0xFFFFF
    base = prod0 & 63
    r.queue([sync_msi(SMMU_BASE + CMDQ_PROD, base + 3), (TLBI_NSNH_ALL, 0),
             sync_msi(HOLE, 0)], at=base)
    before = r.smmu.stats["commands"]
    r.smmu.mmio_write(CMDQ_PROD, base + 1)
    assert r.smmu.stats["commands"] - before == 3
    assert r.reg(CMDQ_CONS) & 0xFFFFF == r.reg(CMDQ_PROD) == base + 3
    # The last SYNC's MSI went nowhere: reported as an aborted CMD_SYNC MSI.
    assert (r.reg(GERROR) ^ r.reg(GERRORN)) == MSI_CMDQ_ABT_ERR
    assert r.smmu.pending_interrupts == 0


def ping_pong(r: SmmuOnBus) -> int:
    """Fill a 2-entry queue with two SYNCs whose MSIs write CMDQ_PROD: the first one
    processed re-fills the queue (the other wrap), and so does the second."""
    p = r.reg(CMDQ_PROD) & 3
    assert p == r.reg(CMDQ_CONS) & 3
    first, second = p & 1, (p & 1) ^ 1
    r.queue([sync_msi(SMMU_BASE + CMDQ_PROD, p)], at=first)
    r.queue([sync_msi(SMMU_BASE + CMDQ_PROD, p ^ 2)], at=second)
    return p ^ 2                          # the PROD that starts it: both entries


def test_sync_msi_ping_pong_is_bounded_and_resumes_on_drain():
    """A livelock on hardware; the model returns after its budget and continues on
    drain()."""
    r = SmmuOnBus(cmdq_log2=1)
    go = ping_pong(r)
    before = r.smmu.stats["commands"]
    r.bus.write(SMMU_BASE + CMDQ_PROD, go)
    ran = r.smmu.stats["commands"] - before
    assert 2 * POSTED_BUDGET <= ran <= 2 * POSTED_BUDGET + 4
    assert r.bus.pending_writes > 0 and r.bus.stats["drain_budget_exhausted"] == 1
    assert r.bus.drain(10) == 10
    assert r.smmu.stats["commands"] - before == ran + 20
    # The SMMU without a bus: its own outbox is bounded the same way.
    d = SmmuOnBus(cmdq_log2=1, on_bus=False)
    go = ping_pong(d)
    before = d.smmu.stats["commands"]
    d.smmu.mmio_write(CMDQ_PROD, go)
    ran = d.smmu.stats["commands"] - before
    assert 2 * POSTED_BUDGET <= ran <= 2 * POSTED_BUDGET + 4
    assert d.smmu.pending_interrupts > 0
    assert d.smmu.drain(5) == 5
    assert d.smmu.stats["commands"] - before == ran + 10


@pytest.mark.parametrize("on_bus", [True, False])
def test_gerror_msi_to_gerrorn_is_handled_after_the_error(on_bus):
    """GERROR's MSI acknowledges the error itself (data CMDQ_ERR to GERRORN).  The SMMU
    stops on the illegal command, then takes the write: acknowledged, it retries the
    command (CONS never moved), fails again and toggles GERROR; the second MSI writes the
    same GERRORN, which leaves that error active, so the queue stays stopped."""
    r = SmmuOnBus(on_bus=on_bus)
    r.smmu.mmio_write(GERROR_IRQ_CFG0, (SMMU_BASE + GERRORN) & ~3, 8)
    r.smmu.mmio_write(GERROR_IRQ_CFG1, CMDQ_ERR)
    r.smmu.mmio_write(IRQ_CTRL, 0b101)
    base = r.reg(CMDQ_PROD) & 63
    r.queue([(0xFF, 0)], at=base)                  # illegal
    r.smmu.mmio_write(CMDQ_PROD, base + 1)
    assert (r.reg(GERROR), r.reg(GERRORN)) == (0, CMDQ_ERR)
    assert r.reg(CMDQ_CONS) >> 24 & 0x7F == 1      # CERROR_ILL, CONS still at the command
    assert r.reg(CMDQ_CONS) & 0xFFFFF == base
    assert r.smmu.pending_interrupts == 0
    if not on_bus:
        assert [m[:2] for m in r.msi_log] == [(SMMU_BASE + GERRORN, CMDQ_ERR)] * 2


def batch_rig(on_bus: bool = True):
    """SID 8 translates through stage 1; the event queue's MSI writes CMDQ_PROD, and
    the command behind it invalidates every cached configuration."""
    r = SmmuOnBus(on_bus=on_bus)
    alloc = core.TableAllocator(r.mem, PT_POOL, 0x80_0000)
    pt = core.IoPgtable(r.mem, alloc, fmt="s1", ias=48, oas=48)
    pt.map(0x10_0000, TARGET, 0x4000, core.Prot.READ | core.Prot.WRITE)
    cd = r.drv.write_cd(cd_words(pt.stage1_config(), asid=1))
    r.drv.write_ste(8, ste_words(5, ctxptr=cd))
    base = r.reg(CMDQ_PROD) & 63
    r.queue([(CFGI_STE_RANGE, 31)], at=base)      # CFGI_ALL
    r.smmu.mmio_write(EVENTQ_IRQ_CFG0, (SMMU_BASE + CMDQ_PROD) & ~3, 8)
    r.smmu.mmio_write(EVENTQ_IRQ_CFG1, base + 1)
    return r, base


def test_event_msi_running_cfgi_waits_for_the_end_of_the_batch():
    r, base = batch_rig()
    n = 6
    sids = array.array("I", [8] * n)
    iovas = array.array("Q", [0x10_0000] + [0x90_0000 + k * 0x1000 for k in range(1, n)])
    pas, st = array.array("Q", [0] * n), array.array("i", [0] * n)
    r.smmu.mmio_write(EVENTQ_IRQ_CFG1, base)       # first batch: no commands yet
    assert r.smmu.translate_batch(sids, iovas, pas, st) == 1      # resolves the stream
    r.drv.events()
    r.smmu.mmio_write(EVENTQ_IRQ_CFG1, base + 1)
    cons = r.reg(CMDQ_CONS) & 0xFFFFF
    assert r.smmu.translate_batch(sids, iovas, pas, st, write=True) == 1   # 5 faults in C
    assert pas[0] == TARGET and all(core.status_fault(s).kind == core.FaultKind.TRANSLATION
                                    for s in st[1:])
    evs = r.drv.events()
    assert [(e.type, e.input_addr) for e in evs] == [(0x10, i) for i in iovas[1:]]
    assert r.reg(CMDQ_CONS) & 0xFFFFF == cons + 1                  # the CFGI ran, after
    assert r.smmu.translate(8, 0x10_0000).pa == TARGET             # refetched, same answer


def test_batch_stays_consistent_when_its_first_event_flushes_the_caches():
    """Without a cached stream the batch's events come from the per-item slow path; the
    CFGI the first event's MSI starts must not run between items either."""
    r, base = batch_rig(on_bus=False)
    n = 4
    sids = array.array("I", [8, 8, 0x5000, 8])
    iovas = array.array("Q", [0x90_0000, 0x10_0000, 0, 0x10_1000])
    pas, st = array.array("Q", [0] * n), array.array("i", [0] * n)
    assert r.smmu.translate_batch(sids, iovas, pas, st) == 2
    assert list(pas) == [0, TARGET, 0, TARGET + 0x1000]
    assert [e.type for e in r.drv.events()] == [0x10, 0x02]       # F_TRANSLATION, BAD_STREAMID
    # Both MSIs were sent once both events were in the queue.
    assert r.msi_log == [(SMMU_BASE + CMDQ_PROD, base + 1, 2)] * 2
    assert r.reg(CMDQ_CONS) & 0xFFFFF == base + 1


# --- a PCI function's messages aimed at its own MSI-X table ----------------------------


def chain_device(r, vectors: int):
    fn = r.pci.add(PciFunction(0, 1, 0, bars=[Bar(0x10000)],
                               msix=MsixConfig(vectors, bar=0, table_offset=0,
                                               pba_offset=0x8000)))
    r.cfg_write(fn, 0x10, PCI_MMIO)
    r.cfg_write(fn, 0x14, 0)
    r.cfg_write(fn, 0x04, 0x6, 2)
    fn.bar_base = PCI_MMIO
    return fn


def test_msix_messages_unmasking_the_next_vector_do_not_recurse():
    """Vector k's message is a write of 0 to vector k+1's control word (unmask); the last
    vector's goes to a doorbell.  With every vector pending, unmasking vector 0 releases
    them all, one after the other, each after the write that released it."""
    vectors = 2048
    r = rig()
    fn = chain_device(r, vectors)
    for v in range(vectors):
        target = (PCI_MMIO + 16 * (v + 1) + 12) if v + 1 < vectors else DOORBELL + 0x40
        r.msix_program(fn, v, target, 0 if v + 1 < vectors else 0x1234, masked=True)
    r.msix_enable(fn)
    for v in range(vectors):
        assert fn.notify(v) == Delivery.PENDING
    r.bus.write(PCI_MMIO + 12, 0)                            # unmask vector 0
    assert fn.stats.sent == vectors and fn.stats.delivered_from_pending == vectors
    assert not any(fn.msix_pending(v) for v in range(vectors))
    assert all(r.msix_entry(fn, v)[2] == 0 for v in range(vectors))
    assert r.sink.got == [(fn.rid, 0x40, 0x1234)]
    assert r.bus.pending_writes == 0


def test_message_released_inside_an_access_is_posted_then_counted():
    """An unmask through the BAR sends the pending message after the BAR write; notify()
    from inside an access reports POSTED."""
    r = rig()
    fn = chain_device(r, 2)
    r.msix_program(fn, 0, DOORBELL, 7, masked=True)
    r.msix_enable(fn)
    assert fn.notify(0) == Delivery.PENDING
    seen = []

    class Probe:
        """A register whose write makes the function raise vector 1 (like a doorbell)."""

        def mmio_read(self, offset, size):
            return 0

        def mmio_write(self, offset, value, size):
            seen.append(fn.notify(1))
            seen.append(len(r.sink.got))

    r.bus.map(0x0A00_0000, 0x1000, Probe(), "probe")
    r.msix_program(fn, 1, DOORBELL + 4, 9)
    r.bus.write(0x0A00_0000, 1)
    assert seen == [Delivery.POSTED, 0]                       # queued behind the write
    assert r.sink.got == [(fn.rid, 4, 9)] and fn.stats.sent == 1
    r.bus.write(PCI_MMIO + 12, 0)                            # unmask vector 0
    assert r.sink.got[-1] == (fn.rid, 0, 7) and fn.stats.sent == 2


def test_dma_data_then_msi_arrive_in_order_with_the_smmu_events_between():
    """A device writes data (one write faults in the SMMU, whose event MSI goes to a
    sink), then its MSI: the sink sees the SMMU's event MSI before the device's MSI."""
    r = SmmuOnBus()
    sink = Sink()
    r.bus.map(DOORBELL, 0x1000, sink, "doorbell", attrs=True)
    r.bus.attach_iommu(0, 0xFFFF, r.smmu)
    r.drv.write_ste(0x10, ste_words(4))                       # bypass
    r.smmu.mmio_write(EVENTQ_IRQ_CFG0, DOORBELL + 0x10, 8)
    r.smmu.mmio_write(EVENTQ_IRQ_CFG1, 0xE)
    got = [r.bus.dma_write(0x10, TARGET, 0x11), r.bus.dma_write(0x11, TARGET + 4, 0x22),
           r.bus.dma_write(0x10, DOORBELL, 0x55)]
    assert [g.ok for g in got] == [True, False, True]
    assert r.mem.read_u32(TARGET) == 0x11 and r.mem.read_u32(TARGET + 4) == 0
    assert sink.got == [(None, 0x10, 0xE), (0x10, 0, 0x55)]


# --- the ITS: every memory error stalls ----------------------------------------------


@pytest.mark.parametrize("where", [HOLE, 0xFFFF_FFFF_F000])
def test_its_command_queue_outside_ram_stalls(where):
    p = Platform()
    drv = ItsDriver(p)
    drv.init()
    b = p.bus
    b.write(ITS_BASE + 0x0, 0)                                # disable to move CBASER
    b.write(ITS_BASE + 0x80, 1 << 63 | where & 0x000F_FFFF_FFFF_F000 | 0, 8)
    b.write(ITS_BASE + 0x88, 0, 8)
    b.write(ITS_BASE + 0x0, 1)
    assert b.read(ITS_BASE + 0x90, 8) == 0
    done = p.its.stats["commands"]
    b.write(ITS_BASE + 0x88, 32, 8)                           # one command, in no RAM
    assert b.read(ITS_BASE + 0x90, 8) == 0 | 1                # Stalled, nothing read
    assert p.its.stats["stalls"] == 1 and p.its.stats["commands"] == done
    b.write(ITS_BASE + 0x88, 32 | 1, 8)                       # retry: stalls again
    assert b.read(ITS_BASE + 0x90, 8) == 1 and p.its.stats["stalls"] == 2
    # Rewriting CBASER (ITS disabled) clears the stall; a queue in RAM works again.
    b.write(ITS_BASE + 0x0, 0)
    b.write(ITS_BASE + 0x80, 1 << 63 | drv.cmdq | 15, 8)
    b.write(ITS_BASE + 0x88, 0, 8)
    b.write(ITS_BASE + 0x0, 1)
    drv.cmd(0x05, d2=0)                                       # SYNC
    assert b.read(ITS_BASE + 0x90, 8) == 32


# --- the SMMU's host arguments --------------------------------------------------------


@pytest.fixture
def smmu_env():
    r = SmmuOnBus()
    r.drv.write_ste(0x10, ste_words(4))                       # bypass
    return r


@pytest.mark.parametrize("args, exc", [
    ((1 << 16, 0), InvalidArgument), ((-1, 0), InvalidArgument),
    ((0x10, 1 << 64), InvalidArgument), ((0x10, -1), InvalidArgument),
    ((0x10, 0, False, 1 << 8), InvalidArgument), ((0x10, 0, False, -1), InvalidArgument),
    ((0x10, 1.0), TypeError), (("16", 0), TypeError), ((True, 0), TypeError),
    ((0x10, 0, False, 2.0), TypeError),
])
@pytest.mark.parametrize("smmuen", [True, False])
def test_translate_checks_its_host_arguments_up_front(smmu_env, args, exc, smmuen):
    s = smmu_env.smmu
    assert s.translate(0x10, 0x1234).pa == 0x1234             # cached: the fast path
    if not smmuen:
        s.mmio_write(CR0, 0b1100)
    before = (dict(s.stats), smmu_env.reg(0x100A8))
    with pytest.raises(exc):
        s.translate(*args)
    assert (dict(s.stats), smmu_env.reg(0x100A8)) == before   # no event, nothing counted


def test_translate_batch_checks_sids_before_recording_anything(smmu_env):
    s = smmu_env.smmu
    sids = array.array("I", [0x77, 1 << 16])
    iovas = array.array("Q", [0, 0])
    pas, st = array.array("Q", [0, 0]), array.array("i", [0, 0])
    before = smmu_env.reg(0x100A8)
    with pytest.raises(InvalidArgument):
        s.translate_batch(sids, iovas, pas, st)
    assert smmu_env.reg(0x100A8) == before and s.stats["events_recorded"] == 0
    # Within SIDSIZE but beyond the stream table: the guest's problem, an event.
    sids[1] = 0xFFFF
    assert s.translate_batch(sids, iovas, pas, st) == 0
    assert smmu_env.reg(0x100A8) == before + 2


def test_vlpi_frame_reads_and_a_vpropbaser_wider_than_the_gic():
    """A 32-bit read of a VLPI-frame register returns its half; VPROPBASER.IDbits beyond
    GICD_TYPER.IDbits behaves as GICD_TYPER.IDbits (the tables are still usable)."""
    p = Platform(ncpus=1, gicv4=True)
    rd = 0x080A_0000
    vprop, vpt = p.alloc(1 << 16), p.alloc(1 << 13, align=0x10000)
    p.ram.write(vprop + 1, bytes([0xA1]))                     # vINTID 8193 enabled
    p.ram.write(vpt + 8193 // 8, bytes([1 << (8193 % 8)]))    # and pending
    p.bus.write(rd + 0x20070, vprop | 31, 8)                  # IDbits 32 > the GIC's 16
    p.bus.write(rd + 0x20078, 1 << 63 | vpt, 8)
    assert p.gic.cpus[0].vcpu_iar1() == 8193
    assert p.bus.read(rd + 0x20078, 4) == vpt
    assert p.bus.read(rd + 0x2007C, 4) == 1 << 31
    assert p.bus.read(rd + 0x20070, 8) == vprop | 31


def test_posted_write_whose_target_went_away_is_dropped_and_counted():
    """Two CMD_SYNC MSIs from one CMDQ_PROD write: the first turns off a function's
    Memory Space (its BAR stops decoding), so the second, aimed at that BAR and accepted
    when it was issued, finds nothing when it is performed."""
    r = SmmuOnBus()
    ecam = 0x3F00_0000
    PciHost(r.bus, ecam).add(fn := PciFunction(0, 1, 0, bars=[Bar(0x4000)],
                                               msix=MsixConfig(2, bar=0, pba_offset=0x2000)))
    r.bus.write(ecam + (fn.rid << 12) + 0x10, PCI_MMIO)
    r.bus.write(ecam + (fn.rid << 12) + 0x14, 0)
    r.bus.write(ecam + (fn.rid << 12) + 0x04, 0x6, 2)
    assert r.bus.window(PCI_MMIO) is not None
    base = r.reg(CMDQ_PROD) & 63
    r.queue([sync_msi(ecam + (fn.rid << 12) + 0x04, 0x4), sync_msi(PCI_MMIO + 12, 0)],
            at=base)
    r.bus.write(SMMU_BASE + CMDQ_PROD, base + 2)
    assert r.reg(CMDQ_CONS) & 0xFFFFF == base + 2
    assert fn.cfg_read(0x04, 2) & 0x6 == 0x4 and r.bus.window(PCI_MMIO) is None
    assert r.bus.stats["posted"] == 2 and r.bus.stats["posted_dropped"] == 1
    assert fn.msix_entry(0)[2] == 1                           # still masked: never written
