"""MSI delivery end to end: a PCI function's vector, through the bus (and the
SMMU), to the ITS and a redistributor, acknowledged on a CPU; GICv4 direct
injection; and the x86-style controller where affinity lives in the message."""

from __future__ import annotations

import pytest

from pymsi import core
from pymsi.hw.gicv3 import SPURIOUS
from pymsi.hw.pci import Delivery
from pymsi.hw.smmuv3 import SMMUv3
from pymsi.hw.x86 import MSI_BASE, X86MsiController

from hw_rig import (
    CLEAR,
    DISCARD,
    INT,
    ITS_BASE,
    MOVALL,
    SYNC,
    TRANSLATER,
    VINVALL,
    VMAPP,
    VMAPTI,
    VMOVI,
    VMOVP,
    VSYNC,
    ItsDriver,
    PciRig,
    Platform,
)
from smmu_driver import Driver as SmmuDriver
from smmu_driver import cd_words, ste_words


@pytest.fixture
def p():
    plat = Platform(ncpus=4)
    plat.drv = ItsDriver(plat)
    plat.drv.init()
    return plat


def ack_all(p):
    """Acknowledge everything pending: {cpu: [INTIDs]}."""
    out = {}
    for cpu, cpuif in enumerate(p.gic.cpus):
        while (intid := cpuif.iar1()) != SPURIOUS:
            out.setdefault(cpu, []).append(intid)
            cpuif.eoir1(intid)
    return out


def test_msix_vector_arrives_as_its_lpi_moves_with_movi_and_stops_after_discard(p):
    fn = p.add_msix_device(0, 1, vectors=4)
    lpis = p.drv.map_device(fn.rid, 4, cpu=1)
    for v in range(4):
        p.msix_program(fn, v, TRANSLATER, v)                # data = EventID
    p.msix_enable(fn)
    assert fn.notify(2) == Delivery.SENT
    assert ack_all(p) == {1: [lpis[2]]}
    before = p.msix_entry(fn, 2)
    p.drv.movi(fn.rid, 2, cpu=3)
    assert fn.notify(2) == Delivery.SENT
    assert ack_all(p) == {3: [lpis[2]]}
    assert p.msix_entry(fn, 2) == before                     # the message did not change
    p.drv.cmd(DISCARD, d0=fn.rid << 32, d1=2)
    p.drv.cmd(SYNC, d2=3 << 16)
    dropped = p.its.stats["translations_dropped"]
    assert fn.notify(2) == Delivery.SENT                    # the write happens...
    assert ack_all(p) == {}                                   # ...and raises nothing
    assert p.its.stats["translations_dropped"] == dropped + 1
    assert fn.notify(0) == Delivery.SENT and ack_all(p) == {1: [lpis[0]]}


def test_two_level_device_table(p):
    plat = Platform()
    plat.drv = ItsDriver(plat)
    plat.drv.init(indirect=True)
    fn = plat.add_msix_device(3, 4, vectors=1)
    plat.drv.ensure_l2(fn.rid)
    (lpi,) = plat.drv.map_device(fn.rid, 1, cpu=2)
    plat.msix_program(fn, 0, TRANSLATER, 0)
    plat.msix_enable(fn)
    fn.notify(0)
    assert ack_all(plat) == {2: [lpi]}
    # A DeviceID whose L1 entry has no L2 page: MAPD is refused and recorded.
    errors = plat.its.stats["command_errors"]
    plat.drv.cmd(0x08, d0=0x9000 << 32, d1=0, d2=1 << 63 | plat.alloc(256, 256))
    assert plat.its.stats["command_errors"] == errors + 1


def test_priorities_pmr_and_disabled_lpis(p):
    fn = p.add_msix_device(0, 1, vectors=3)
    lpis = p.drv.map_device(fn.rid, 3, cpu=0)
    for v in range(3):
        p.msix_program(fn, v, TRANSLATER, v)
    p.msix_enable(fn)
    p.drv.set_config(lpis[1], 0x83)                          # higher priority (0x80)
    p.drv.set_config(lpis[2], 0xA2)                          # disabled
    for ev in (1, 2):
        p.drv.cmd(0x0C, d0=fn.rid << 32, d1=ev)             # INV
    for v in range(3):
        fn.notify(v)
    cpu = p.gic.cpus[0]
    assert cpu.iar1() == lpis[1]                             # highest priority first
    assert cpu.iar1() == SPURIOUS                            # same-priority-or-lower waits
    cpu.eoir1(lpis[1])
    assert cpu.iar1() == lpis[0]
    cpu.eoir1(lpis[0])
    assert cpu.iar1() == SPURIOUS                            # lpis[2] pending but disabled
    assert lpis[2] in p.gic.redists[0].pending
    p.drv.set_config(lpis[2], 0xA3)
    assert cpu.iar1() == SPURIOUS                            # cached config: not yet seen
    p.drv.cmd(0x0C, d0=fn.rid << 32, d1=2)                  # INV
    cpu.pmr = 0xA0                                           # masks priority 0xa0 and below
    assert cpu.iar1() == SPURIOUS
    cpu.pmr = 0xF0
    assert cpu.iar1() == lpis[2]


def test_mapi_uses_the_eventid_as_the_lpi(p):
    fn = p.add_msix_device(0, 5, vectors=1)
    itt = p.alloc(256, 256)
    p.drv.cmd(0x08, d0=fn.rid << 32, d1=13, d2=1 << 63 | itt)   # 2^14 events
    p.drv.cmd(0x0B, d0=fn.rid << 32, d1=8200, d2=3)              # MAPI: LPI 8200 on CPU 3
    p.drv.set_config(8200, 0xA3)
    p.msix_program(fn, 0, TRANSLATER, 8200)
    p.msix_enable(fn)
    fn.notify(0)
    assert ack_all(p) == {3: [8200]}


def test_int_clear_movall_and_pending_table_in_memory(p):
    fn = p.add_msix_device(0, 2, vectors=2)
    lpis = p.drv.map_device(fn.rid, 2, cpu=0)
    p.drv.cmd(INT, d0=fn.rid << 32, d1=0)
    p.drv.cmd(INT, d0=fn.rid << 32, d1=1)
    p.drv.cmd(CLEAR, d0=fn.rid << 32, d1=1)
    rd0 = p.gic.redists[0]
    assert rd0.pending == {lpis[0]}
    pend = (rd0.pendbaser >> 16) << 16
    assert p.ram.read(pend + lpis[0] // 8, 1)[0] >> (lpis[0] % 8) & 1
    p.drv.cmd(MOVALL, d2=0 << 16, d3=2 << 16)
    assert rd0.pending == set() and p.gic.redists[2].pending == {lpis[0]}
    assert ack_all(p) == {2: [lpis[0]]}


def test_bad_commands_are_recorded_not_raised(p):
    its = p.its
    before = its.stats["command_errors"]
    p.drv.cmd(0x08, d0=1 << 48, d1=0, d2=1 << 63)               # MAPD: DeviceID beyond 16 bits
    p.drv.cmd(0x0A, d0=0x77 << 32, d1=8192 << 32, d2=0)         # MAPTI: device not mapped
    p.drv.cmd(0x09, d2=1 << 63 | 99 << 16 | 5)                  # MAPC: no CPU 99
    p.drv.cmd(0x01, d0=0x77 << 32, d1=0, d2=0)                  # MOVI: nothing mapped
    p.drv.cmd(0x7E)                                             # no such command
    p.drv.cmd(VMAPP)                                            # GICv4 command on GICv3
    assert its.stats["command_errors"] == before + 6
    reasons = [t[2] for t in list(its.trace)[-6:]]
    assert reasons == ["MAPD_DEVICE_OOR", "MAPTI_UNMAPPED_DEVICE", "MAPC_PROCNUM_OOR",
                       "MOVI_UNMAPPED_INTERRUPT", "UNKNOWN_COMMAND", "UNKNOWN_COMMAND"]
    # Translation writes that cannot be translated are dropped, whoever writes them.
    p.bus.write(TRANSLATER, 5, 4, requester_id=0x1234)
    p.bus.write(TRANSLATER, 5, 4)
    assert its.stats["translations_dropped"] == 2 and ack_all(p) == {}


def test_stall_on_memory_error_and_retry():
    plat = Platform()
    plat.drv = ItsDriver(plat)
    plat.drv.init()
    fn = plat.add_msix_device(0, 1, vectors=1)
    plat.drv.map_device(fn.rid, 1)
    # An ITT in no RAM: the MAPTI cannot write its entry.
    plat.drv.cmd(0x08, d0=9 << 32, d1=0, d2=1 << 63 | 0x7000_0000)
    plat.drv.cmd(0x0A, d0=9 << 32, d1=8300 << 32, d2=0, check=False)
    creadr = plat.bus.read(ITS_BASE + 0x90, 8)
    assert creadr & 1 and plat.its.stats["stalls"] == 1          # Stalled
    plat.drv.cmd(SYNC, check=False)                              # queued behind the stall
    assert plat.bus.read(ITS_BASE + 0x90, 8) == creadr
    # Software fixes the command (turn it into a SYNC) and retries.
    plat.ram.write(plat.drv.cmdq + (creadr & ~1), (0x05).to_bytes(8, "little") + bytes(24))
    w = plat.bus.read(ITS_BASE + 0x88, 8)
    plat.bus.write(ITS_BASE + 0x88, w | 1, 8)
    assert plat.bus.read(ITS_BASE + 0x90, 8) == w


def test_parameter_errors_can_stall_instead():
    plat = Platform(stall_on_error=True)
    plat.drv = ItsDriver(plat)
    plat.drv.init()
    plat.drv.cmd(0x7E, check=False)
    assert plat.bus.read(ITS_BASE + 0x90, 8) & 1


def test_msi_through_the_smmu_to_the_its():
    """Nested SMMU in front of the device: gIOVA -> gPA (vITS doorbell) -> PA."""
    plat = Platform()
    plat.drv = ItsDriver(plat)
    plat.drv.init()
    smmu = SMMUv3(plat.ram, stages="nested", msi_write=plat.bus.write32)
    plat.bus.map(0x0905_0000, 0x2_0000, smmu, "SMMU")
    plat.bus.attach_iommu(0, 0xFFFF, smmu)
    sdrv = SmmuDriver(smmu, plat.ram, plat.alloc(0x40_0000), 0x40_0000)
    sdrv.init()
    alloc = core.TableAllocator(plat.ram, plat.alloc(0x40_0000), 0x40_0000)
    s2 = core.IoPgtable(plat.ram, alloc, fmt="s2", ias=40)
    s2.map(0x4000_0000, 0x4000_0000, 0x1000_0000, core.Prot.READ | core.Prot.WRITE)
    s2.map(TRANSLATER & ~0xFFF, TRANSLATER & ~0xFFF, 0x1000,
           core.Prot.WRITE | core.Prot.MMIO)
    s1 = core.IoPgtable(plat.ram, alloc, fmt="s1", ias=48, oas=40)
    s1.map(0xFFFF_F000, TRANSLATER & ~0xFFF, 0x1000, core.Prot.WRITE | core.Prot.MMIO)
    fn = plat.add_msix_device(0, 1, vectors=2)
    cd = sdrv.write_cd(cd_words(s1.stage1_config(), asid=1))
    sdrv.write_ste(fn.rid, ste_words(7, ctxptr=cd, s2=s2.stage2_config(), vmid=1))
    lpis = plat.drv.map_device(fn.rid, 2, cpu=2)
    plat.msix_program(fn, 0, 0xFFFF_F040, 0)
    plat.msix_program(fn, 1, 0xFFFF_E040, 1)                 # an IOVA nobody mapped
    plat.msix_enable(fn)
    assert fn.notify(0) == Delivery.SENT
    assert ack_all(plat) == {2: [lpis[0]]}
    assert fn.notify(1) == Delivery.ABORTED                  # the SMMU faulted the write
    assert ack_all(plat) == {}
    (ev,) = sdrv.events()
    assert (ev.type, ev.sid, ev.input_addr) == (0x10, fn.rid, 0xFFFF_E040)


def test_bus_master_enable_gates_msi_writes(p):
    fn = p.add_msix_device(0, 1, vectors=1)
    (lpi,) = p.drv.map_device(fn.rid, 1)
    p.msix_program(fn, 0, TRANSLATER, 0)
    p.msix_enable(fn)
    p.cfg_write(fn, 0x04, 0x2, 2)                            # memory on, bus master off
    assert fn.notify(0) == Delivery.BLOCKED and ack_all(p) == {}
    p.cfg_write(fn, 0x04, 0x6, 2)
    assert fn.notify(0) == Delivery.SENT and ack_all(p) == {0: [lpi]}


# --- GICv4: direct injection of a device event into a vPE --------------------------


def test_gicv4_vlpi_direct_injection_doorbell_and_moves():
    p = Platform(ncpus=4, gicv4=True)
    drv = ItsDriver(p)
    drv.init()
    b = p.bus
    fn = p.add_msix_device(0, 1, vectors=2)
    drv.map_device(fn.rid, 2, cpu=0)                         # physical first, as Linux does
    vprop = p.alloc(1 << 16)
    p.ram.write(vprop, bytes([0xA3]) * 64)                   # vLPIs 8192.. enabled
    vpts = {vpe: p.alloc(1 << 13, align=0x10000) for vpe in (1, 2)}
    doorbell = 8500
    drv.set_config(doorbell, 0xA3)
    drv.cmd(0x0C, d0=fn.rid << 32, d1=0)                     # (INV: config reload)
    for vpe, cpu in ((1, 2), (2, 3)):
        drv.cmd(VMAPP, d1=vpe << 32, d2=1 << 63 | cpu << 16, d3=vpts[vpe] | (16 - 1))
    # Move event 0 to vPE 1 as vINTID 8192+5 (DISCARD, then VMAPTI with a doorbell).
    drv.cmd(DISCARD, d0=fn.rid << 32, d1=0)
    drv.cmd(VMAPTI, d0=fn.rid << 32, d1=1 << 32 | 0, d2=doorbell << 32 | (8192 + 5))
    drv.cmd(VSYNC, d1=1 << 32)
    p.msix_program(fn, 0, TRANSLATER, 0)
    p.msix_program(fn, 1, TRANSLATER, 1)
    p.msix_enable(fn)
    cpu2 = p.gic.cpus[2]

    def make_resident(cpu: int, vpe: int | None) -> None:
        rd = 0x080A_0000 + cpu * p.gic.frame_size
        b.write(rd + 0x20070, vprop | (16 - 1), 8)
        b.write(rd + 0x20078, (1 << 63 | vpts[vpe]) if vpe else 0, 8)

    make_resident(2, 1)
    fn.notify(0)
    assert cpu2.vcpu_iar1() == 8192 + 5                       # straight into the guest
    assert cpu2.iar1() == SPURIOUS                            # no physical interrupt
    cpu2.vcpu_eoir1(8192 + 5)
    make_resident(2, None)                                    # vPE 1 descheduled
    fn.notify(0)
    assert cpu2.iar1() == doorbell                            # the doorbell rings instead
    cpu2.eoir1(doorbell)
    make_resident(2, 1)                                       # rescheduled: still pending
    assert cpu2.vcpu_iar1() == 8192 + 5
    cpu2.vcpu_eoir1(8192 + 5)
    # VMOVI to vPE 2 (resident on CPU 3), and VMOVP vPE 2 to CPU 1.
    drv.cmd(VMOVI, d0=fn.rid << 32, d1=2 << 32 | 0, d2=1023 << 32 | 1)
    make_resident(3, 2)
    fn.notify(0)
    assert p.gic.cpus[3].vcpu_iar1() == 8192 + 5
    drv.cmd(VMOVP, d1=2 << 32, d2=1 << 16)
    make_resident(3, None)
    make_resident(1, 2)
    fn.notify(0)
    assert p.gic.cpus[1].vcpu_iar1() == 8192 + 5
    drv.cmd(VINVALL, d1=2 << 32)
    drv.cmd(VINVALL, d1=9 << 32)                             # vPE 9 was never mapped
    assert p.its.stats["command_errors"] == 1
    # The physical event 1 still goes where it was mapped.
    fn.notify(1)
    assert ack_all(p) == {0: [8193]}


# --- x86: affinity in the message ------------------------------------------------------


def x86_platform():
    mem = core.Memory()
    mem.add_ram(0x1000_0000, 0x100_0000)
    plat = PciRig(mem, ecam_base=0xE000_0000)
    ctl = X86MsiController(mem, ncpus=4)
    plat.bus.map(MSI_BASE, 0x10_0000, ctl, "interrupt messages", attrs=True)
    plat.bus.map(0xFED9_0000, 0x1000, ctl.remap_regs, "IR unit")
    return plat, ctl


def test_x86_affinity_change_rewrites_the_message():
    plat, ctl = x86_platform()
    fn = plat.add_msix_device(0, 3, vectors=2, bar_addr=0xC000_0000)
    plat.msix_program(fn, 0, MSI_BASE | 1 << 12, 0x41)      # CPU 1, vector 0x41
    plat.msix_enable(fn)
    fn.notify(0)
    assert ctl.lapics[1].ack() == 0x41
    ctl.lapics[1].eoi()
    before = plat.msix_entry(fn, 0)
    # Moving to CPU 2 (new vector too) means writing a new message into the device.
    plat.msix_program(fn, 0, MSI_BASE | 2 << 12, 0x52)
    assert plat.msix_entry(fn, 0) != before
    fn.notify(0)
    assert ctl.lapics[2].ack() == 0x52 and ctl.lapics[1].ack() is None


def test_x86_remapping_table_moves_without_touching_the_device():
    plat, ctl = x86_platform()
    table = 0x1000_0000
    regs = 0xFED9_0000
    plat.bus.write(regs + 0xB8, table | 7, 8)                 # IRTA: 2^8 entries, xAPIC
    plat.bus.write(regs + 0x18, 1 << 24)                      # SIRTP: latch IRTA
    plat.bus.write(regs + 0x18, 1 << 25)                      # IRE

    def irte(index, dest, vector, sid=None):
        lo = 1 | vector << 16 | (dest << 8) << 32
        hi = 0 if sid is None else sid | 1 << 18             # SVT=1: verify requester ID
        plat.ram.write(table + 16 * index, lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))

    fn = plat.add_msix_device(0, 3, vectors=1, bar_addr=0xC000_0000)
    irte(5, dest=1, vector=0x61, sid=fn.rid)
    msg_addr = MSI_BASE | (5 << 5) | 1 << 4 | 1 << 3          # remappable, handle 5, SHV
    plat.msix_program(fn, 0, msg_addr, 0)           # subhandle 0
    plat.msix_enable(fn)
    fn.notify(0)
    assert ctl.lapics[1].ack() == 0x61
    before = plat.msix_entry(fn, 0)
    irte(5, dest=3, vector=0x71, sid=fn.rid)                  # move: the IRTE only
    # ... and invalidate it in the interrupt entry cache (VT-d 6.5.2.7: type 4, G = 1
    # index-selective, IIDX in bits 47:32) through the invalidation queue.
    queue = table + 0x2000
    plat.bus.write(regs + 0x90, queue, 8)                     # IQA: 256 descriptors
    plat.bus.write(regs + 0x18, 1 << 26 | 1 << 25)            # QIE (IRE stays on)
    plat.ram.write(queue, (0x4 | 1 << 4 | 5 << 32).to_bytes(8, "little") + bytes(8))
    plat.bus.write(regs + 0x88, 1 << 4, 8)                    # IQT: one descriptor
    assert plat.bus.read(regs + 0x80, 8) == 1 << 4            # IQH caught up
    fn.notify(0)
    assert ctl.lapics[3].ack() == 0x71
    assert plat.msix_entry(fn, 0) == before
    # Another requester may not use this entry; compatibility format is blocked.
    plat.bus.write(msg_addr, 0, 4, requester_id=0x99)
    plat.bus.write(MSI_BASE | 1 << 12, 0x41, 4, requester_id=fn.rid)
    assert [f[0] for f in ctl.faults] == ["source-id check failed",
                                          "compatibility format blocked"]
    assert all(a.ack() is None for a in ctl.lapics)
