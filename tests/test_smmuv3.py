"""The SMMUv3 model, brought up and driven through registers and memory."""

from __future__ import annotations

import pytest

from pymsi import core
from pymsi.hw.smmuv3 import Outcome, SMMUv3

from smmu_driver import (
    CMDQ_BASE,
    CMDQ_CONS,
    CMDQ_PROD,
    CR0,
    CR0ACK,
    EVENTQ_CONS,
    EVENTQ_PROD,
    GBPA,
    GERROR,
    GERRORN,
    IDR0,
    IDR1,
    IDR3,
    IDR5,
    IRQ_CTRL,
    IRQ_CTRLACK,
    Driver,
    cd_words,
    pack,
    ste_words,
)

RAM, RAM_SIZE = 0x4000_0000, 0x0200_0000
POOL = RAM + 0x0100_0000          # the driver's tables and queues
PT_POOL = RAM + 0x0180_0000       # page tables
TARGET = RAM                      # what devices' DMA lands on
HOLE = 0x7000_0000                # not RAM
RW = core.Prot.READ | core.Prot.WRITE

E_BAD_STREAMID, E_STE_FETCH, E_BAD_STE, E_STREAM_DISABLED = 0x02, 0x03, 0x04, 0x06
E_BAD_SUBSTREAMID, E_CD_FETCH, E_BAD_CD, E_WALK_EABT = 0x08, 0x09, 0x0A, 0x0B
E_TRANSLATION, E_ADDR_SIZE, E_ACCESS, E_PERMISSION = 0x10, 0x11, 0x12, 0x13
CLASS_CD, CLASS_TT, CLASS_IN = 0, 1, 2


class Env:
    def __init__(self, stages="nested", backend=None, **kw):
        self.mem = (core.backend(backend) if backend else core).Memory()
        self.mem.add_ram(RAM, RAM_SIZE)
        self.irqs = []
        self.smmu = SMMUv3(self.mem, stages=stages, irq=self.irqs.append, backend=backend,
                           **kw)
        self.drv = Driver(self.smmu, self.mem, POOL, 0x80_0000)
        self.pt_alloc = core.TableAllocator(self.mem, PT_POOL, 0x80_0000)

    def s1_table(self, **kw):
        return core.IoPgtable(self.mem, self.pt_alloc, fmt="s1", **kw)

    def s2_table(self, **kw):
        return core.IoPgtable(self.mem, self.pt_alloc, fmt="s2", **kw)

    def s1_stream(self, sid, asid=1, record=True, **cdkw):
        pt = self.s1_table(ias=48, oas=48)
        cd = self.drv.write_cd(cd_words(pt.stage1_config(), asid, record=record, **cdkw))
        self.drv.write_ste(sid, ste_words(5, ctxptr=cd))
        return pt, cd

    def s2_stream(self, sid, vmid=1, s2r=True, ias=40):
        pt = self.s2_table(ias=ias, oas=48)
        self.drv.write_ste(sid, ste_words(6, s2=pt.stage2_config(), vmid=vmid, s2r=s2r))
        return pt

    def nested_stream(self, sid, vmid=1, asid=1):
        """Stage 2 identity-maps RAM (so guest tables are readable), stage 1 on top."""
        s2 = self.s2_table(ias=40, oas=48)
        s2.map(RAM, RAM, RAM_SIZE, RW)
        s1 = self.s1_table(ias=48, oas=40)
        cd = self.drv.write_cd(cd_words(s1.stage1_config(), asid))
        self.drv.write_ste(sid, ste_words(7, ctxptr=cd, s2=s2.stage2_config(), vmid=vmid))
        return s1, s2, cd


@pytest.fixture
def env():
    e = Env()
    e.drv.init()
    return e


# --- registers ------------------------------------------------------------------


@pytest.mark.parametrize("stages,s1p,s2p", [("s1", 1, 0), ("s2", 0, 1), ("nested", 1, 1)])
def test_id_registers_advertise_the_build(stages, s1p, s2p):
    e = Env(stages, oas=44, sidsize=12, granules=(4096, 65536), ril=False)
    idr0, idr1, idr3, idr5 = (e.smmu.mmio_read(r) for r in (IDR0, IDR1, IDR3, IDR5))
    assert (idr0 & 1, idr0 >> 1 & 1) == (s2p, s1p)
    assert idr0 >> 2 & 3 == 2                        # AArch64 tables
    assert idr0 >> 27 & 3 == 1                       # 2-level stream tables
    assert idr1 & 0x3F == 12
    assert idr3 >> 10 & 1 == 0                       # no RIL
    assert idr5 & 7 == 4                             # 44-bit OAS
    assert (idr5 >> 4 & 1, idr5 >> 5 & 1, idr5 >> 6 & 1) == (1, 0, 1)
    e.smmu.mmio_write(IDR0, 0)                        # read-only
    assert e.smmu.mmio_read(IDR0) == idr0


def test_cr0ack_irqctrlack_and_reserved_bits():
    e = Env()
    s = e.smmu
    s.mmio_write(CR0, 0xFFFF_FFFF)
    assert s.mmio_read(CR0ACK) == 0x1F
    s.mmio_write(CR0, 0)
    s.mmio_write(IRQ_CTRL, 0xFF)
    assert s.mmio_read(IRQ_CTRLACK) == 0b111
    assert s.mmio_read(0x123) == 0 and s.mmio_read(0x20, 2) == 0   # unaligned / bad size


def test_disabled_smmu_follows_gbpa():
    e = Env()
    s = e.smmu
    r = s.translate(5, 0x1234)
    assert r.outcome is Outcome.BYPASSED and r.pa == 0x1234
    s.mmio_write(GBPA, 1 << 20)                       # no UPDATE: ignored
    assert s.mmio_read(GBPA) == 0 and s.translate(5, 0x1234).bypassed
    s.mmio_write(GBPA, 1 << 31 | 1 << 20)
    assert s.mmio_read(GBPA) == 1 << 20               # UPDATE reads back clear
    assert s.translate(5, 0x1234).aborted
    assert s.stats["events_recorded"] == 0 and s.stats["events_dropped"] == 0


def test_bring_up_and_translate_all_three_kinds(env):
    s1, _ = env.s1_stream(0x8)
    s1.map(0x10_0000, TARGET, 0x1000, RW)
    s2 = env.s2_stream(0x10)
    s2.map(0x20_0000, TARGET + 0x2000, 0x1000, RW)
    n1, n2, _ = env.nested_stream(0x18, vmid=2)
    n1.map(0xFFFF_F000, RAM + 0x5000, 0x1000, RW)
    for sid, iova, pa in ((0x8, 0x10_0040, TARGET + 0x40), (0x10, 0x20_0040, TARGET + 0x2040),
                          (0x18, 0xFFFF_F040, RAM + 0x5040)):
        r = env.smmu.translate(sid, iova, write=True)
        assert r.outcome is Outcome.TRANSLATED and r.pa == pa
        assert r.fault is None and r.event is None
    assert env.drv.events() == []


def test_linear_stream_table(env):
    e = Env()
    e.drv.init(two_level=False, log2size=6)
    s1, _ = e.s1_stream(63)
    s1.map(0x1000, TARGET, 0x1000, RW)
    assert e.smmu.translate(63, 0x1008).pa == TARGET + 8
    assert e.smmu.translate(64, 0x1008).event == E_BAD_STREAMID
    assert [(v.type, v.sid) for v in e.drv.events()] == [(E_BAD_STREAMID, 64)]


def test_bypass_and_abort_stes(env):
    env.drv.write_ste(1, ste_words(4))
    env.drv.write_ste(2, ste_words(0))
    assert env.smmu.translate(1, 0xABC000).pa == 0xABC000
    r = env.smmu.translate(2, 0xABC000)
    assert r.aborted and r.event is None               # abort STE: no event
    assert env.drv.events() == []


# --- events, each on purpose ------------------------------------------------------


def test_bad_streamid_events():
    # SIDSIZE 20, a table of 2^16: beyond LOG2SIZE (but a StreamID the SMMU takes),
    # and in a 2-level table with no L2 behind the L1 descriptor.
    env = Env(sidsize=20)
    env.drv.init(log2size=16)
    r1 = env.smmu.translate(1 << 16, 0)
    r2 = env.smmu.translate(0x300, 0)
    # An L2 table with SPAN covering only 4 STEs: index 4 is beyond it.
    l2 = env.drv.alloc.alloc(4096)
    env.mem.write_u64(env.drv.strtab + 8 * 5, l2 | 3)
    r3 = env.smmu.translate((5 << 8) | 4, 0)
    r4 = env.smmu.translate((1 << 20) - 1, 0, ssid=3)
    assert r1.event == r2.event == r3.event == r4.event == E_BAD_STREAMID
    assert [(v.type, v.sid) for v in env.drv.events()] == [
        (E_BAD_STREAMID, 1 << 16), (E_BAD_STREAMID, 0x300), (E_BAD_STREAMID, 0x504),
        (E_BAD_STREAMID, (1 << 20) - 1)]


def test_ste_fetch_abort(env):
    env.mem.write_u64(env.drv.strtab + 8 * 7, HOLE | 9)        # L2 table in no RAM
    r = env.smmu.translate(0x701, 0x1000)
    assert r.aborted and r.event == E_STE_FETCH
    (ev,) = env.drv.events()
    assert (ev.type, ev.sid, ev.fetch) == (E_STE_FETCH, 0x701, HOLE + 64)


@pytest.mark.parametrize("why", [
    "invalid", "reserved config", "bad sl0", "too many concatenated", "ttb beyond oas",
    "aarch32 stage 2", "cdmax beyond ssidsize", "context beyond oas",
])
def test_bad_ste_events(env, why):
    s2 = core.Stage2(vttb=PT_POOL, tsz=24, sl0=1)
    words = {
        "invalid": lambda: ste_words(6, s2=s2, valid=False),
        "reserved config": lambda: ste_words(2),
        "bad sl0": lambda: [w if i != 2 else w & ~(3 << 38) | (3 << 38)
                            for i, w in enumerate(ste_words(6, s2=s2))],
        "too many concatenated": lambda: [w if i != 2 else (w & ~(0x3F << 32)) | (16 << 32)
                                          for i, w in enumerate(ste_words(6, s2=s2))],
        "ttb beyond oas": lambda: ste_words(6, s2=core.Stage2(vttb=1 << 48, tsz=24, sl0=1)),
        "aarch32 stage 2": lambda: ste_words(6, s2=s2, s2aa64=False),
        "cdmax beyond ssidsize": lambda: ste_words(5, ctxptr=PT_POOL, cdmax=9),
        "context beyond oas": lambda: ste_words(5, ctxptr=1 << 49),
    }[why]()
    env.drv.write_ste(3, words)
    for _ in range(2):                                   # not cached: every time
        r = env.smmu.translate(3, 0x1000)
        assert r.aborted and r.event == E_BAD_STE
    assert [(v.type, v.sid) for v in env.drv.events()] == [(E_BAD_STE, 3)] * 2


def test_stage_not_implemented_is_a_bad_ste():
    e = Env("s1")
    e.drv.init()
    e.drv.write_ste(1, ste_words(6, s2=core.Stage2(vttb=PT_POOL, tsz=24, sl0=1)))
    assert e.smmu.translate(1, 0).event == E_BAD_STE


def test_substreams(env):
    pt = env.s1_table(ias=48)
    pt.map(0x4000, TARGET + 0x4000, 0x1000, RW)
    table = env.drv.alloc.alloc(64 * 4)
    for ssid in range(4):
        env.drv.write_cd(cd_words(pt.stage1_config(), asid=10 + ssid), at=table + 64 * ssid)
    env.drv.write_ste(9, ste_words(5, ctxptr=table, cdmax=2, s1dss=0))
    assert env.smmu.translate(9, 0x4008, ssid=3).pa == TARGET + 0x4008
    r = env.smmu.translate(9, 0x4008, ssid=4)            # 2^S1CDMax = 4 substreams
    assert r.event == E_BAD_SUBSTREAMID
    r = env.smmu.translate(9, 0x4008)                    # no SSID, S1DSS = terminate
    assert r.event == E_STREAM_DISABLED
    env.drv.write_ste(9, ste_words(5, ctxptr=table, cdmax=2, s1dss=2))
    assert env.smmu.translate(9, 0x4008).pa == TARGET + 0x4008   # S1DSS = use SSID 0
    env.drv.write_ste(9, ste_words(5, ctxptr=table, cdmax=2, s1dss=1))
    assert env.smmu.translate(9, 0x4008).bypassed                 # S1DSS = bypass
    evs = env.drv.events()
    assert [(v.type, v.ssid) for v in evs] == [(E_BAD_SUBSTREAMID, 4), (E_STREAM_DISABLED, None)]


def test_two_level_cd_table(env):
    pt = env.s1_table(ias=48)
    pt.map(0x4000, TARGET, 0x1000, RW)
    l1 = env.drv.alloc.alloc(4096)
    l2 = env.drv.alloc.alloc(64 * 64)
    env.mem.write_u64(l1 + 8 * 2, l2 | 1)               # SSIDs 128..191 (4K leaf tables)
    env.drv.write_cd(cd_words(pt.stage1_config(), asid=7), at=l2 + 64 * 5)
    env.drv.write_ste(4, ste_words(5, ctxptr=l1, cdmax=8, s1fmt=1, s1dss=2))
    assert env.smmu.translate(4, 0x4010, ssid=128 + 5).pa == TARGET + 0x10
    assert env.smmu.translate(4, 0x4010, ssid=64).event == E_BAD_CD   # L1 entry not valid


def test_cd_fetch_abort_and_bad_cds(env):
    env.drv.write_ste(1, ste_words(5, ctxptr=HOLE))
    assert env.smmu.translate(1, 0).event == E_CD_FETCH
    s1 = env.s1_table(ias=48).stage1_config()
    bad = {
        "invalid": cd_words(s1, 1, valid=False),
        "aarch32": cd_words(s1, 1, aa64=False),
        "t0sz": [cd_words(s1, 1)[0] & ~0x3F | 12] + cd_words(s1, 1)[1:],
        "tg0": [cd_words(s1, 1)[0] | 3 << 6] + cd_words(s1, 1)[1:],
        "ttb beyond ips": cd_words(core.Stage1(ttb0=1 << 41, tsz0=16, ips=40), 1),
        "no abort (A=0)": [cd_words(s1, 1)[0] & ~(1 << 46)] + cd_words(s1, 1)[1:],
        "stall (S=1)": [cd_words(s1, 1)[0] | 1 << 44] + cd_words(s1, 1)[1:],
        "HA without HTTU": [cd_words(s1, 1)[0] | 1 << 43] + cd_words(s1, 1)[1:],
        "HD without HTTU": [cd_words(s1, 1)[0] | 1 << 42] + cd_words(s1, 1)[1:],
    }
    for sid, words in enumerate(bad.values(), start=2):
        cd = env.drv.write_cd(words)
        env.drv.write_ste(sid, ste_words(5, ctxptr=cd))
        assert env.smmu.translate(sid, 0).event == E_BAD_CD
    evs = env.drv.events()
    assert (evs[0].type, evs[0].fetch) == (E_CD_FETCH, HOLE)
    assert [(v.type, v.sid) for v in evs[1:]] == [(E_BAD_CD, sid) for sid in range(2, 11)]


def test_cd_with_ttb1_tbi_and_had(env):
    """TTB1 through a CD (TG1 has its own encoding), with TBI and HAD decoded."""
    pt = env.s1_table(ias=39, ttbr1=True)
    pt.map(0xFFFF_FFC0_0000_0000, TARGET, 0x1000, RW)
    s1 = pt.stage1_config(tbi1=True, had1=True)
    cd = env.drv.write_cd(cd_words(s1, asid=2))
    env.drv.write_ste(0x30, ste_words(5, ctxptr=cd))
    assert env.smmu.translate(0x30, 0xFFFF_FFC0_0000_0010).pa == TARGET + 0x10
    assert env.smmu.translate(0x30, 0x12FF_FFC0_0000_0010).pa == TARGET + 0x10   # tagged
    assert env.smmu.translate(0x30, 0x10).event == E_TRANSLATION               # EPD0


def test_translation_faults_and_their_records(env):
    pt, _ = env.s1_stream(0x8)
    pt.map(0x10_0000, TARGET, 0x1000, core.Prot.READ)
    pt.map(0x30_0000, HOLE, 0x1000, RW)                 # output outside RAM: fine (MMIO)
    assert env.smmu.translate(0x8, 0x30_0004, True).pa == HOLE + 4
    r = env.smmu.translate(0x8, 0x20_0000)              # unmapped
    assert r.fault == core.Fault(1, core.FaultKind.TRANSLATION, 3) and r.recorded
    r = env.smmu.translate(0x8, 0x10_0010, write=True)  # read-only
    assert r.event == E_PERMISSION
    evs = env.drv.events()
    assert [(v.type, v.sid, v.input_addr, v.read, v.s2, v.cls) for v in evs] == [
        (E_TRANSLATION, 0x8, 0x20_0000, True, False, CLASS_IN),
        (E_PERMISSION, 0x8, 0x10_0010, False, False, CLASS_IN)]


def test_access_flag_address_size_and_walk_abort(env):
    pt, _ = env.s1_stream(0x8)
    pt.map(0x10_0000, TARGET, 0x1000, RW)
    pt.map(0x1000_0000, TARGET, 0x1000, RW)
    # Clear AF in one leaf, point a table at no RAM for another.
    leaf_table = pt.pgd
    for level in range(3):
        leaf_table = env.mem.read_u64(leaf_table + 8 * ((0x10_0000 >> (39 - 9 * level))
                                                         & 0x1FF)) & 0xFFFF_FFFF_F000
    slot = leaf_table + 8 * 0x100
    env.mem.write_u64(slot, env.mem.read_u64(slot) & ~(1 << 10))
    assert env.smmu.translate(0x8, 0x10_0000).event == E_ACCESS
    l2 = env.mem.read_u64(pt.pgd) & 0xFFFF_FFFF_F000                   # L0[0] -> L1 table
    env.mem.write_u64(l2 + 8 * 0, HOLE | 3)                             # L1[0] -> no RAM
    r = env.smmu.translate(0x8, 0x1000_0000)                            # walks into the hole
    assert r.event == E_WALK_EABT and r.fault.kind == core.FaultKind.EXTERNAL_ABORT
    # Output beyond the CD's IPS: an address size fault.
    pt2 = env.s1_table(ias=48, oas=48)
    pt2.map(0x2000, 1 << 44, 0x1000, RW)
    cd = env.drv.write_cd(cd_words(pt2.stage1_config(ips=40), 3))
    env.drv.write_ste(0x9, ste_words(5, ctxptr=cd))
    assert env.smmu.translate(0x9, 0x2000).event == E_ADDR_SIZE
    evs = env.drv.events()
    assert [v.type for v in evs] == [E_ACCESS, E_WALK_EABT, E_ADDR_SIZE]
    assert evs[1].cls == CLASS_TT


def test_record_bits(env):
    env.s1_stream(0x8, record=False)
    env.s2_stream(0x10, s2r=False)
    r1 = env.smmu.translate(0x8, 0x5000)
    r2 = env.smmu.translate(0x10, 0x5000)
    assert r1.event == r2.event == E_TRANSLATION and not r1.recorded and not r2.recorded
    assert env.drv.events() == [] and env.smmu.stats["events_suppressed"] == 2


def test_stage2_and_nested_fault_records(env):
    env.s2_stream(0x10, ias=40)
    r = env.smmu.translate(0x10, 0x1234_5678, write=True)
    assert r.fault == core.Fault(2, core.FaultKind.TRANSLATION, 1, ipa=0x1234_5678)  # empty table
    r = env.smmu.translate(0x10, 1 << 44)                 # beyond S2T0SZ's 40 bits
    assert r.fault == core.Fault(2, core.FaultKind.TRANSLATION, 0, ipa=1 << 44)
    r = env.smmu.translate(0x10, 1 << 48)                 # beyond IAS (= OAS) with no S1
    assert r.fault == core.Fault(1, core.FaultKind.ADDRESS_SIZE, 0)
    n1, _, _ = env.nested_stream(0x18)
    n1.map(0x1000, 0x6000_0000, 0x1000, RW)                # IPA stage 2 does not map
    r = env.smmu.translate(0x18, 0x1008)
    assert r.fault.stage == 2 and not r.fault.s1_table_walk
    # A stage-1 table outside what stage 2 maps: a stage-2 fault on the table walk.
    n1.map(0x40_0000_0000, TARGET, 0x1000, RW)
    env.mem.write_u64(n1.pgd + 8 * (0x40_0000_0000 >> 39), 0x6100_0000 | 3)
    r = env.smmu.translate(0x18, 0x40_0000_0000)
    assert r.fault.s1_table_walk and r.fault.stage == 2
    evs = env.drv.events()
    assert [(v.type, v.s2, v.cls, v.ipa) for v in evs] == [
        (E_TRANSLATION, True, CLASS_IN, 0x1234_5000),
        (E_TRANSLATION, True, CLASS_IN, 1 << 44),
        (E_ADDR_SIZE, False, CLASS_IN, 0),
        (E_TRANSLATION, True, CLASS_IN, 0x6000_0000),
        (E_TRANSLATION, True, CLASS_TT, 0x6100_0000)]
    assert evs[0].read is False and evs[2].read is True


def test_nested_cd_behind_stage2(env):
    """In nested mode the CD pointer is an IPA; a stage-2 fault there is CLASS CD."""
    s2 = env.s2_table(ias=40)
    s2.map(RAM, RAM, 0x0100_0000, RW)                      # not the page-table pool
    env.drv.write_cd(cd_words(core.Stage1(ttb0=RAM, tsz0=16, ips=40), 1))
    env.drv.write_ste(0x20, ste_words(7, ctxptr=0x5000_0000, s2=s2.stage2_config(), vmid=3))
    r = env.smmu.translate(0x20, 0x1000)
    assert r.event == E_TRANSLATION and r.fault.stage == 2
    (ev,) = env.drv.events()
    assert (ev.cls, ev.s2, ev.ipa) == (CLASS_CD, True, 0x5000_0000)


# --- commands and caches -----------------------------------------------------------------


def test_changed_ste_is_seen_only_after_cfgi_ste(env):
    env.drv.write_ste(1, ste_words(4))
    assert env.smmu.translate(1, 0x1000).bypassed
    env.drv.write_ste(1, ste_words(0), sync=False)
    assert env.smmu.translate(1, 0x1000).bypassed          # cached
    env.drv.cmd("CFGI_STE", sid=2)
    env.drv.sync()
    assert env.smmu.translate(1, 0x1000).bypassed          # another SID: still cached
    env.drv.cmd("CFGI_STE", sid=1)
    env.drv.sync()
    assert env.smmu.translate(1, 0x1000).aborted


@pytest.mark.parametrize("rng,first,last", [(0, 0x10, 0x11), (3, 0x10, 0x1F), (31, 0, 0xFFFF)])
def test_cfgi_ste_range_and_all(env, rng, first, last):
    sids = (0x0F, 0x10, 0x11, 0x12, 0x1F, 0x20)
    for sid in sids:
        env.drv.write_ste(sid, ste_words(4))
        env.smmu.translate(sid, 0)
        env.drv.write_ste(sid, ste_words(0), sync=False)
    env.drv.cmd("CFGI_STE_RANGE", sid=0x11, d1=rng)
    env.drv.sync()
    for sid in sids:
        assert env.smmu.translate(sid, 0).aborted == (first <= sid <= last)


def test_cfgi_cd_and_cd_all(env):
    pt = env.s1_table(ias=48)
    pt.map(0x1000, TARGET, 0x1000, RW)
    pt.map(0x1000_0000, TARGET + 0x8000, 0x1000, RW)
    table = env.drv.alloc.alloc(64 * 2)
    for ssid in (0, 1):
        env.drv.write_cd(cd_words(pt.stage1_config(), 5), at=table + 64 * ssid)
    env.drv.write_ste(2, ste_words(5, ctxptr=table, cdmax=1, s1dss=2))
    assert env.smmu.translate(2, 0x1000, ssid=1).pa == TARGET
    assert env.smmu.translate(2, 0x1000, ssid=0).pa == TARGET
    # Make both CDs invalid in memory: nothing changes until invalidated.
    for ssid in (0, 1):
        env.mem.write_u64(table + 64 * ssid, 0)
    assert env.smmu.translate(2, 0x1000, ssid=1).pa == TARGET
    assert env.smmu.translate(2, 0x1000, ssid=0).pa == TARGET
    env.drv.cmd("CFGI_CD", sid=2, ssid=1)
    env.drv.sync()
    assert env.smmu.translate(2, 0x1000, ssid=1).event == E_BAD_CD
    assert env.smmu.translate(2, 0x1000, ssid=0).pa == TARGET
    env.drv.cmd("CFGI_CD_ALL", sid=2)
    env.drv.sync()
    assert env.smmu.translate(2, 0x1000, ssid=0).event == E_BAD_CD


def remap(pt, iova, pa):
    pt.unmap(iova, 0x1000)
    pt.map(iova, pa, 0x1000, RW)


@pytest.mark.parametrize("command", ["NH_VA", "NH_VA_range", "NH_VAA", "NH_ASID", "NH_ALL",
                                     "S12_VMALL", "NSNH_ALL"])
def test_stage1_tlbi_commands(command):
    e = Env()
    e.drv.init()
    pt, _ = e.s1_stream(0x8, asid=3)
    pt.map(0x10_0000, TARGET, 0x1000, RW)
    assert e.smmu.translate(0x8, 0x10_0000).pa == TARGET
    remap(pt, 0x10_0000, TARGET + 0x3000)
    assert e.smmu.translate(0x8, 0x10_0000).pa == TARGET             # stale
    d = e.drv
    {"NH_VA": lambda: d.tlbi_va(0, 3, 0x10_0000),
     "NH_VA_range": lambda: d.tlbi_va(0, 3, 0x0F_E000, pages=3, tg=1),
     "NH_VAA": lambda: d.tlbi_va(0, None, 0x10_0000),
     "NH_ASID": lambda: d.cmd("TLBI_NH_ASID", d0=3 << 48),
     "NH_ALL": lambda: d.cmd("TLBI_NH_ALL"),
     "S12_VMALL": lambda: d.cmd("TLBI_S12_VMALL"),
     "NSNH_ALL": lambda: d.cmd("TLBI_NSNH_ALL")}[command]()
    d.sync()
    assert e.smmu.translate(0x8, 0x10_0000).pa == TARGET + 0x3000


def test_tlbi_misses_what_it_does_not_cover(env):
    pt, _ = env.s1_stream(0x8, asid=3)
    pt.map(0x10_0000, TARGET, 0x1000, RW)
    env.smmu.translate(0x8, 0x10_0000)
    remap(pt, 0x10_0000, TARGET + 0x3000)
    env.drv.tlbi_va(0, 4, 0x10_0000)                     # another ASID
    env.drv.tlbi_va(0, 3, 0x10_1000)                     # the next page
    env.drv.tlbi_va(0, 3, 0x0F_E000, pages=2, tg=1)      # the two pages before
    env.drv.cmd("TLBI_S2_IPA", d1=0x10_0000)             # stage 2 only
    env.drv.sync()
    assert env.smmu.translate(0x8, 0x10_0000).pa == TARGET


def test_tlbi_s2_ipa(env):
    s2 = env.s2_stream(0x10, vmid=4)
    s2.map(0x20_0000, TARGET, 0x1000, RW)
    assert env.smmu.translate(0x10, 0x20_0000).pa == TARGET
    remap(s2, 0x20_0000, TARGET + 0x7000)
    env.drv.cmd("TLBI_NH_ALL", d0=4 << 32)               # stage 1 only: no effect
    env.drv.cmd("TLBI_S2_IPA", d0=5 << 32, d1=0x20_0000)  # another VMID
    env.drv.sync()
    assert env.smmu.translate(0x10, 0x20_0000).pa == TARGET
    env.drv.cmd("TLBI_S2_IPA", d0=4 << 32, d1=0x20_0000)
    env.drv.sync()
    assert env.smmu.translate(0x10, 0x20_0000).pa == TARGET + 0x7000


def test_prefetch_is_legal_and_changes_nothing(env):
    env.drv.cmd("PREFETCH_CONFIG", sid=3)
    env.drv.cmd("PREFETCH_ADDR", sid=3, d1=0x1000)
    env.drv.sync()
    assert env.smmu.mmio_read(CMDQ_CONS) >> 24 == 0


def test_illegal_command_stops_the_queue_until_acknowledged(env):
    env.drv.write_ste(1, ste_words(4))
    env.smmu.translate(1, 0)
    env.drv.write_ste(1, ste_words(0), sync=False)
    cons0 = env.smmu.mmio_read(CMDQ_CONS)
    env.drv.raw_cmd(0x7F)                                # no such opcode
    env.drv.cmd("CFGI_STE", sid=1)                       # queued behind it
    cons = env.smmu.mmio_read(CMDQ_CONS)
    assert cons & 0xFFFFF == cons0 & 0xFFFFF and cons >> 24 & 0x7F == 1   # ERR = ILL
    gerror = env.smmu.mmio_read(GERROR)
    assert (gerror ^ env.smmu.mmio_read(GERRORN)) & 1
    assert env.smmu.translate(1, 0).bypassed             # the CFGI was not executed
    env.drv.cmd("CFGI_STE", sid=1)                       # more PROD writes: still stopped
    assert env.smmu.translate(1, 0).bypassed
    # The driver replaces the bad command with a SYNC and acknowledges.
    idx = cons & ((1 << env.drv.cmdq_log2) - 1)
    env.mem.write(env.drv.cmdq + 16 * idx, pack([0x46, 0]))
    env.smmu.mmio_write(GERRORN, gerror)
    assert env.smmu.mmio_read(CMDQ_CONS) & 0xFFFFF == env.smmu.mmio_read(CMDQ_PROD)
    assert env.smmu.translate(1, 0).aborted
    assert "gerror" in env.irqs


def test_unsupported_commands_are_illegal():
    for stages, d0 in (("s1", 0x28), ("s1", 0x2A), ("nested", 0x40), ("nested", 0x44),
                       ("nested", 0x20), ("nested", 0x03 | 1 << 10)):
        e = Env(stages)
        e.drv.init()
        e.drv.raw_cmd(d0)
        assert e.smmu.mmio_read(CMDQ_CONS) >> 24 & 0x7F == 1, (stages, hex(d0))


def test_command_fetch_abort(env):
    e = Env()
    e.drv.init()
    e.smmu.mmio_write(CR0, 4 | 1)                          # CMDQ off to move it
    e.smmu.mmio_write(CMDQ_BASE, HOLE | 4, 8)
    e.smmu.mmio_write(CMDQ_PROD, 0)
    e.smmu.mmio_write(CMDQ_CONS, 0)
    e.smmu.mmio_write(CR0, 4 | 8 | 1)
    e.smmu.mmio_write(CMDQ_PROD, 1)
    assert e.smmu.mmio_read(CMDQ_CONS) >> 24 & 0x7F == 2   # ERR = ABT


def test_sync_completion_by_msi_write():
    e = Env(msi=True)
    e.drv.init()
    flag = e.drv.alloc.alloc(64)
    e.mem.write_u32(flag, 0xFFFF_FFFF)
    e.drv.cmd("SYNC", d0=1 << 12 | 0x1234 << 32, d1=flag)  # CS = IRQ, MSIData, MSIAddr
    assert e.mem.read_u32(flag) == 0x1234
    e2 = Env()
    e2.drv.init()
    e2.drv.cmd("SYNC", d0=1 << 12)
    assert e2.irqs.count("cmdq_sync") == 1


def test_event_queue_overflow():
    e = Env()
    e.drv.init(evtq_log2=2)                                # 4 entries
    for k in range(6):
        e.smmu.translate(0x900 + k, 0)                     # C_BAD_STREAMID each
    prod, cons = e.smmu.mmio_read(EVENTQ_PROD), e.smmu.mmio_read(EVENTQ_CONS)
    assert prod >> 31 != cons >> 31                        # overflow flagged
    assert e.smmu.stats["events_dropped"] == 2
    evs = e.drv.events()                                   # acknowledges the overflow too
    assert [v.sid for v in evs] == [0x900, 0x901, 0x902, 0x903]
    assert e.smmu.mmio_read(EVENTQ_CONS) >> 31 == e.smmu.mmio_read(EVENTQ_PROD) >> 31
    e.smmu.translate(0x999, 0)
    assert [v.sid for v in e.drv.events()] == [0x999]
    assert e.irqs.count("eventq") == 5


def test_events_dropped_while_the_event_queue_is_off(env):
    env.smmu.mmio_write(CR0, 1 | 8)
    env.smmu.translate(0x900, 0)
    assert env.smmu.stats["events_dropped"] == 1
    env.smmu.mmio_write(CR0, 1 | 8 | 4)
    assert env.drv.events() == []


# --- the batch path ---------------------------------------------------------------


def test_batch_matches_one_translate_per_item():
    import array

    def setup():
        e = Env()
        e.drv.init()
        pt, _ = e.s1_stream(0x8)
        pt.map(0x10_0000, TARGET, 0x4000, RW)
        e.drv.write_ste(0x9, ste_words(4))
        e.drv.write_ste(0xA, ste_words(0))
        s2 = e.s2_stream(0x10, vmid=2)
        s2.map(0x20_0000, TARGET, 0x1000, RW)
        return e

    items = [(0x8, 0x10_0008), (0x8, 0x10_3000), (0x9, 0x55), (0xA, 0x66), (0x8, 0x50_0000),
             (0x10, 0x20_0010), (0x10, 0x30_0000), (0x77, 0), (0x8, 0x10_1000), (0xFFFF, 0)]
    e1, e2 = setup(), setup()
    one = [e1.smmu.translate(s, i) for s, i in items]
    sids = array.array("I", [s for s, _ in items])
    iovas = array.array("Q", [i for _, i in items])
    pas, st = array.array("Q", [0] * len(items)), array.array("i", [0] * len(items))
    for _ in range(2):                       # first resolves streams, then all in C
        ok = e2.smmu.translate_batch(sids, iovas, pas, st)
        assert ok == sum(1 for r in one if r.outcome is not Outcome.ABORTED)
        for k, r in enumerate(one):
            assert pas[k] == (r.pa or 0)
            if r.fault is not None:
                assert core.status_fault(st[k]).kind == r.fault.kind
            elif r.aborted:
                assert st[k] == core.STATUS_ABORT
    ev1 = [(v.type, v.sid, v.input_addr, v.ipa) for v in e1.drv.events()]
    ev2 = [(v.type, v.sid, v.input_addr, v.ipa) for v in e2.drv.events()]
    assert ev2 == ev1 + ev1


# --- the hit path against the full path --------------------------------------------


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as e:                   # noqa: BLE001 - the class is the answer
        return type(e)


@pytest.mark.parametrize("backend", ["c", "python"])
def test_hit_path_answers_as_the_full_path(backend):
    """SMMUv3.translate's one-call hit path (a cached translating stream) gives what its
    full path gives, bad host arguments, faults, events and IOTLB counters included."""
    from pymsi.hw import smmuv3

    def setup():
        e = Env(backend=backend)
        e.drv.init()
        pt, _ = e.s1_stream(0x8)
        pt.map(0x10_0000, TARGET, 0x4000, core.Prot.READ)
        s2 = e.s2_stream(0x10, vmid=2)
        s2.map(0x20_0000, TARGET, 0x1000, RW)
        e.drv.write_ste(0x9, ste_words(4))
        for sid in (0x8, 0x10, 0x9):
            e.smmu.translate(sid, 0x10_0000 if sid == 0x8 else 0x20_0000)   # cache them
        return e

    fast, full = setup(), setup()
    full.smmu._hit = smmuv3._no_hit          # never the one-call path
    full.smmu._xl = smmuv3._no_hit
    calls = [(0x8, 0x10_0008, False), (0x8, 0x10_0008, True), (0x8, 0x10_3000, False),
             (0x8, 0x50_0000, False), (0x10, 0x20_0010, True), (0x10, 0x30_0000, False),
             (0x10, 1 << 41, False), (0x9, 0x55, False), (0x8, -1, False),
             (0x8, 1 << 64, False), (0x8, 0x10_0000, None), (0x8, 0x10_0000, 2),
             (True, 0x10_0000, False), (0x8, True, False), (1 << 32, 0, False),
             (0x8, 1.0, False), (-8, 0, False), (0x8, 0x10_0000, "yes")]
    got = [_outcome(fast.smmu.translate, *c) for c in calls]
    want = [_outcome(full.smmu.translate, *c) for c in calls]
    assert got == want
    assert fast.drv.events() == full.drv.events()
    assert (fast.smmu.tlb.hits, fast.smmu.tlb.misses) == (full.smmu.tlb.hits,
                                                          full.smmu.tlb.misses)
    assert fast.smmu.stats == full.smmu.stats
    # Disabled: bypass (GBPA) whatever was cached.
    fast.smmu.mmio_write(CR0, 1 << 3 | 1 << 2)
    assert fast.smmu.translate(0x8, 0x10_0008).outcome is Outcome.BYPASSED


@pytest.mark.parametrize("backend", ["c", "python"])
def test_batch_with_few_faults_matches_one_translate_per_item(backend):
    """A batch whose streams are all cached: the faulting items (the only ones Python
    visits) record the same events, in item order, as one translate per item."""
    import array

    def setup():
        e = Env(backend=backend)
        e.drv.init(evtq_log2=8)
        pt, _ = e.s1_stream(0x8)
        pt.map(0x10_0000, TARGET, 0x40_0000, core.Prot.READ)
        s2 = e.s2_stream(0x10, vmid=2)
        s2.map(0x20_0000, TARGET, 0x1000, RW)
        e.drv.write_ste(0x9, ste_words(4))
        return e

    n = 200
    items = [(0x8, 0x10_0000 + 0x1000 * k) for k in range(n)]
    for k, it in ((3, (0x8, 0x90_0000)), (50, (0x10, 0x30_0000)), (51, (0x9, 7)),
                  (120, (0x10, 0x20_0040)), (199, (0x8, 0x91_0000))):
        items[k] = it
    e1, e2 = setup(), setup()
    sids = array.array("I", [s for s, _ in items])
    iovas = array.array("Q", [i for _, i in items])
    pas, st = array.array("Q", [0] * n), array.array("i", [0] * n)
    for write in (False, True, False):
        one = [e1.smmu.translate(s, i, write) for s, i in items]
        ok = e2.smmu.translate_batch(sids, iovas, pas, st, write)
        assert ok == sum(1 for r in one if r.outcome is not Outcome.ABORTED)
        assert list(pas) == [r.pa or 0 for r in one]
        for k, r in enumerate(one):
            if r.fault is not None:
                assert core.status_fault(st[k]).kind == r.fault.kind
        assert e2.drv.events() == e1.drv.events()
    from pymsi.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        e2.smmu.translate_batch(array.array("I", [0x8, 1 << 20]), array.array("Q", [0, 0]),
                                pas, st)
    assert e2.drv.events() == []
