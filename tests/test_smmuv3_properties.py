"""Property tests of the SMMUv3 model: garbage never crashes it, queues stay sane."""

from __future__ import annotations

import array

from hypothesis import given
from hypothesis import strategies as st

from pymsi import core
from pymsi.hw.smmuv3 import Outcome
from pymsi.hw.smmuv3_regs import EventType
from pymsi.testing import strategies as pst

from smmu_driver import CMDQ_CONS, CMDQ_PROD, GERROR, GERRORN, pack, ste_words
from test_smmuv3 import PT_POOL, RAM, RW, TARGET, Env

u64 = st.integers(0, 2**64 - 1)
CD_AT = RAM + 0x0140_0000
KNOWN_EVENTS = {int(e) for e in EventType}


def ste_like():
    """STE words: well-formed ones (Config abort/bypass/S1/S2/nested, the CD at CD_AT, the
    stage 2 at PT_POOL) mutated, or random words (pymsi.testing's)."""
    return pst.ste_words(valid=False, ctxptr=CD_AT, s2ttb=PT_POOL)


def cd_like():
    """CD words: a well-formed CD with TTB0 at PT_POOL, mutated, or random words."""
    return pst.cd_words(valid=False, ttb0=PT_POOL)


def garbage_env(ste, cd, leaf, backend=None):
    e = Env(backend=backend)
    e.drv.init(evtq_log2=3)
    pt = e.s1_table(ias=48)
    pt.map(0, TARGET, 0x20_0000, RW)
    e.mem.write(CD_AT, pack(cd))
    e.mem.write_u64(PT_POOL + 8, leaf)               # something for walks to trip on
    e.drv.write_ste(5, ste)
    return e


transactions = st.lists(st.tuples(u64 | st.integers(0, 2**40), st.booleans(),
                                  st.none() | st.integers(0, 255)), min_size=1, max_size=6)


@given(ste=ste_like(), cd=cd_like(), leaf=u64, txns=transactions)
def test_random_ste_and_cd_never_crash(ste, cd, leaf, txns):
    e = garbage_env(ste, cd, leaf)
    recorded = 0
    for iova, write, ssid in txns:
        r = e.smmu.translate(5, iova, write, ssid=ssid)
        assert r.outcome in Outcome
        if r.outcome is Outcome.TRANSLATED:
            assert r.pa is not None and r.fault is None and r.event is None
        elif r.outcome is Outcome.BYPASSED:
            assert r.pa == iova
        else:
            assert r.pa is None
            assert r.event is None or int(r.event) in KNOWN_EVENTS
        recorded += r.recorded
    evs = e.drv.events()
    assert len(evs) == min(recorded, 8)
    for ev in evs:
        assert ev.type in KNOWN_EVENTS and ev.sid == 5


commands = st.lists(
    st.tuples(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13,
                               0x28, 0x2A, 0x30, 0x46, 0x7F, 0x40, 0x00]) | st.integers(0, 255),
              u64, u64),
    max_size=30,
)


@given(cmds=commands, batches=st.lists(st.integers(1, 5), min_size=1, max_size=10),
       acks=st.lists(st.booleans(), min_size=10, max_size=10))
def test_random_command_streams_keep_queue_pointers_consistent(cmds, batches, acks):
    e = Env()
    e.drv.init(cmdq_log2=3)                           # 8 slots: the queue wraps
    s, log2 = e.smmu, 3
    mod = 2 << log2
    pending = list(cmds)
    for step, n in enumerate(batches):
        prod, cons = s.mmio_read(CMDQ_PROD) % mod, s.mmio_read(CMDQ_CONS) & (mod - 1)
        free = (1 << log2) - ((prod - cons) % mod)
        for op, d0, d1 in pending[:min(n, free)]:
            idx = prod & ((1 << log2) - 1)
            e.mem.write(e.drv.cmdq + 16 * idx, pack([(d0 & ~0xFF) | op, d1]))
            prod = (prod + 1) % mod
        del pending[:min(n, free)]
        s.mmio_write(CMDQ_PROD, prod)
        cons_reg = s.mmio_read(CMDQ_CONS)
        cons = cons_reg & (mod - 1)
        assert (prod - cons) % mod <= 1 << log2          # CONS never passes PROD
        err_active = bool((s.mmio_read(GERROR) ^ s.mmio_read(GERRORN)) & 1)
        if cons != prod:
            assert err_active and cons_reg >> 24 & 0x7F in (1, 2)   # stopped on an error
        if err_active and acks[step % len(acks)]:
            idx = cons & ((1 << log2) - 1)
            e.mem.write(e.drv.cmdq + 16 * idx, pack([0x46, 0]))   # fix it as Linux does
            s.mmio_write(GERRORN, s.mmio_read(GERROR))
            assert s.mmio_read(CMDQ_CONS) & (mod - 1) == prod or (
                (s.mmio_read(GERROR) ^ s.mmio_read(GERRORN)) & 1)


@given(items=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 0x60_0000)), max_size=30),
       write=st.booleans())
def test_batch_equals_translate_per_item(items, write):
    def build():
        e = Env()
        e.drv.init()
        pt, _ = e.s1_stream(1, record=True)
        pt.map(0x10_0000, TARGET, 0x10_0000, core.Prot.READ)
        s2 = e.s2_stream(2, vmid=3)
        s2.map(0x40_0000, TARGET, 0x1000, RW)
        e.drv.write_ste(3, ste_words(4))
        e.drv.write_ste(4, ste_words(0))
        e.drv.write_ste(5, ste_words(6, valid=False))
        return e

    a, b = build(), build()
    n = len(items)
    sids = array.array("I", [s for s, _ in items])
    iovas = array.array("Q", [i for _, i in items])
    for _ in range(2):          # first resolving the streams, then with them all cached
        one = [a.smmu.translate(s, i, write) for s, i in items]
        pas, sts = array.array("Q", [1] * n), array.array("i", [1] * n)
        ok = b.smmu.translate_batch(sids, iovas, pas, sts, write)
        assert ok == sum(r.outcome is not Outcome.ABORTED for r in one)
        assert list(pas) == [r.pa or 0 for r in one]
        key = [(v.type, v.sid, v.input_addr, v.ipa, v.read, v.s2, v.cls)
               for v in a.drv.events()]
        assert [(v.type, v.sid, v.input_addr, v.ipa, v.read, v.s2, v.cls)
                for v in b.drv.events()] == key
        assert (a.smmu.tlb.hits, a.smmu.tlb.misses) == (b.smmu.tlb.hits, b.smmu.tlb.misses)


@given(ste=ste_like(), cd=cd_like(), leaf=u64, txns=transactions)
def test_smmu_on_c_and_python_backends_agree(ste, cd, leaf, txns):
    envs = [garbage_env(ste, cd, leaf, backend) for backend in ("c", "python")]
    results = [[e.smmu.translate(5, i, w, ssid=s) for i, w, s in txns] for e in envs]
    assert results[0] == results[1]
    assert envs[0].drv.events() == envs[1].drv.events()
