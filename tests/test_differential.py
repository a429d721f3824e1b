"""The C backend against its pure-Python twin, on random and garbage input.

Every core function is driven with the same input on both backends and must
give the same answer: the same translation or fault, the same IOTLB
contents and counters, the same MSI table, the same batch outputs, the same
exceptions.
"""

from __future__ import annotations

import array
import random

import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi import errors
from pymsi.core import Stage2, XlateConfig, encode_status
from pymsi.testing.strategies import table_bases, xlate_configs

RAM = 0x0001_0000           # 64 KiB aligned
RAM_SIZE = 0x1_0000         # one 64 KiB table's worth of descriptors: most reads hit one
RAM2 = 0x4000_0000
RAM2_SIZE = 0x2000
GRANULES = (4096, 16384, 65536)


def fill(seed: int) -> bytes:
    """RAM full of descriptors: garbage, tables pointing back into RAM, leaves."""
    rnd = random.Random(seed)
    out = bytearray()
    for _ in range(RAM_SIZE // 8):
        kind = rnd.random()
        if kind < 0.1:
            d = rnd.getrandbits(64)
        elif kind < 0.65:
            d = (RAM + rnd.randrange(RAM_SIZE // 4096) * 4096) | 0b11
            d |= rnd.getrandbits(2) << 61            # APTable bits
            if rnd.random() < 0.05:
                d |= 1 << rnd.randrange(32, 52)      # beyond some output size
        else:
            base = rnd.choice([RAM + rnd.randrange(RAM_SIZE // 4096) * 4096, RAM2,
                               0x0809_0000, rnd.getrandbits(48)]) & ~0xFFF
            d = base | rnd.getrandbits(8) << 2 | rnd.choice([0b01, 0b11, 0b01, 0b11, 0b10])
            d |= (rnd.random() < 0.85) << 10 | rnd.getrandbits(1) << 11
        out += d.to_bytes(8, "little")
    return bytes(out)


addresses = st.one_of(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**48 - 1),
    st.integers(RAM, RAM + RAM_SIZE - 1),
    st.integers(0, 2**40 - 1).map(lambda a: a | (0xFFFF << 48)),
    st.integers(0, 0xFF).map(lambda t: (t << 56) | 0x1234_5000),
)
def iovas_for(cfg):
    """Input addresses, most of them inside what ``cfg`` can translate."""
    choices = [addresses]
    if cfg.s1 is not None:
        for n, tsz in ((0, cfg.s1.tsz0), (1, cfg.s1.tsz1)):
            if 16 <= tsz <= 39:
                ia = 64 - tsz
                top = ((1 << tsz) - 1) << ia if n else 0
                choices += [st.integers(0, (1 << ia) - 1).map(lambda a, t=top: a | t)] * 3
    else:
        ia = 64 - cfg.s2.tsz
        choices += [st.integers(0, (1 << ia) - 1)] * 3
    return st.one_of(*choices)


def configs():
    """Stage 1, stage 2 or nested, tables mostly in RAM (pymsi.testing's)."""
    return xlate_configs(ttb=table_bases(ram=(RAM, RAM_SIZE)))


def memories(backends, seed):
    mems = []
    for b in backends:
        m = b.Memory()
        m.add_ram(RAM, RAM_SIZE)
        m.add_ram(RAM2, RAM2_SIZE)
        m.write(RAM, fill(seed))
        mems.append(m)
    return mems


@given(seed=st.integers(0, 2**32), cfg=configs(), data=st.data())
def test_walks_agree_on_garbage(backends, seed, cfg, data):
    iovas = data.draw(st.lists(iovas_for(cfg), min_size=1, max_size=8))
    mc, mp = memories(backends, seed)
    bc, bp = backends
    for iova in iovas:
        for write in (False, True):
            assert bc.walk(mc, iova, write, cfg=cfg) == bp.walk(mp, iova, write, cfg=cfg)


tlb_ops = st.lists(
    st.one_of(
        st.tuples(st.just("tr"), st.integers(0, 2), addresses, st.booleans()),
        st.tuples(st.just("poke"), st.integers(0, RAM_SIZE // 8 - 1), st.integers(0, 2**64 - 1)),
        st.tuples(st.just("all")),
        st.tuples(st.just("vmid"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("asid"), st.integers(0, 3), st.integers(0, 3)),
        st.tuples(st.just("va"), st.integers(0, 3), addresses, st.integers(1, 2**40),
                  st.one_of(st.none(), st.integers(0, 3))),
        st.tuples(st.just("ipa"), st.integers(0, 3), addresses, st.integers(1, 2**40)),
    ),
    max_size=40,
)


@given(seed=st.integers(0, 2**32), cfgs=st.lists(configs(), min_size=3, max_size=3),
       cap=st.integers(1, 6), ops=tlb_ops)
def test_iotlb_agrees(backends, seed, cfgs, cap, ops):
    mems = memories(backends, seed)
    tlbs = [b.Iotlb(cap) for b in backends]
    for op in ops:
        outs = []
        for b, m, t in zip(backends, mems, tlbs, strict=True):
            if op[0] == "tr":
                outs.append(b.translate(m, op[2], op[3], cfg=cfgs[op[1]], tlb=t))
            elif op[0] == "poke":
                m.write_u64(RAM + 8 * op[1], op[2])
            elif op[0] == "all":
                outs.append(t.invalidate_all())
            elif op[0] == "vmid":
                outs.append(t.invalidate_vmid(op[1], stage1_only=op[2]))
            elif op[0] == "asid":
                outs.append(t.invalidate_asid(op[1], op[2]))
            elif op[0] == "va":
                outs.append(t.invalidate_va(op[1], op[2], op[3], asid=op[4]))
            else:
                outs.append(t.invalidate_ipa(op[1], op[2], op[3]))
        if outs:
            assert outs[0] == outs[1], op
        assert tlbs[0].entries() == tlbs[1].entries()
    stats = [(t.hits, t.misses, t.inserts, t.evictions, len(t)) for t in tlbs]
    assert stats[0] == stats[1]


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as e:  # the exception class is part of the behaviour compared
        return ("raise", type(e))


ints = st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1), st.integers(-3, 2**65),
                 st.integers(0, 0x1_0000))


@given(ops=st.lists(st.tuples(st.sampled_from(["set", "get", "remove", "compose"]),
                              ints, ints, ints, ints), max_size=40))
def test_msi_table_agrees(backends, ops):
    tables = [b.MsiTable() for b in backends]
    for name, a, b, c, d in ops:
        outs = []
        for t in tables:
            if name == "set":
                outs.append(outcome(t.set, a, b, c, d))
            elif name == "get":
                outs.append(outcome(t.get, a, b))
            elif name == "remove":
                outs.append(outcome(t.remove, a, b))
            else:
                outs.append(outcome(t.compose, a, b, c))
        assert outs[0] == outs[1], (name, a, b, c, d)
    assert tables[0].items() == tables[1].items()


@given(ops=st.lists(st.one_of(
    st.tuples(st.just("add"), ints.map(lambda x: x * 4096 % 2**66), ints.map(lambda x: x * 4096)),
    st.tuples(st.just("write"), addresses, st.binary(max_size=20)),
    st.tuples(st.just("read"), addresses, st.integers(0, 20)),
    st.tuples(st.just("u32"), addresses, ints),
    st.tuples(st.just("u64"), addresses, ints),
), max_size=30))
def test_memory_agrees(backends, ops):
    mems = [b.Memory() for b in backends]
    for m in mems:
        m.add_ram(RAM, RAM_SIZE)
    for op in ops:
        outs = []
        for m in mems:
            if op[0] == "add":
                outs.append(outcome(m.add_ram, op[1], op[2]))
            elif op[0] == "write":
                outs.append(outcome(m.write, op[1], op[2]))
            elif op[0] == "read":
                outs.append(outcome(m.read, op[1], op[2]))
            elif op[0] == "u32":
                outs.append((outcome(m.write_u32, op[1], op[2]), outcome(m.read_u32, op[1])))
            else:
                outs.append((outcome(m.write_u64, op[1], op[2]), outcome(m.read_u64, op[1])))
        assert outs[0] == outs[1], op
    assert mems[0].regions == mems[1].regions
    assert mems[0].pages_allocated == mems[1].pages_allocated


@given(seed=st.integers(0, 2**32), cfg=configs(),
       entries=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7), addresses,
                                  st.integers(0, 63)), max_size=12),
       vectors=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 8)), max_size=24),
       doorbell=addresses, cap=st.integers(1, 8))
def test_batches_agree(backends, seed, cfg, entries, vectors, doorbell, cap):
    mems = memories(backends, seed)
    n = len(vectors)
    results = []
    for b, m in zip(backends, mems, strict=True):
        t = b.MsiTable()
        for dev, idx, iova, shift in entries:
            t.set(dev, idx, iova, shift)
        tlb = b.Iotlb(cap)
        devs = array.array("I", [v[0] for v in vectors])
        idx = array.array("I", [v[1] for v in vectors])
        addrs, pas = array.array("Q", [7] * n), array.array("Q", [7] * n)
        st1 = array.array("i", [7] * n)
        ok = b.msi_batch(t, m, cfg, doorbell, devs, idx, addrs, pas, st1, tlb=tlb)
        caddrs, cst = array.array("Q", [7] * n), array.array("i", [7] * n)
        cok = b.compose_batch(t, doorbell, devs, idx, caddrs, cst)
        tpas, tst = array.array("Q", [7] * n), array.array("i", [7] * n)
        tok = b.translate_batch(m, cfg, caddrs, tpas, tst, tlb=tlb, write=False)
        results.append((ok, list(addrs), list(pas), list(st1), cok, list(caddrs), list(cst),
                        tok, list(tpas), list(tst), tlb.entries(), tlb.hits, tlb.misses))
    assert results[0] == results[1]


def test_c_backend_is_really_c(backends):
    bc, bp = backends
    assert (bc.NAME, bp.NAME) == ("c", "python")
    assert type(bc.Memory()).__module__.endswith("_cbackend")


@pytest.mark.parametrize("bad", [-1, 2**64, 2**70])
def test_translate_rejects_bad_addresses_alike(backends, bad):
    for b in backends:
        m = b.Memory()
        with pytest.raises(errors.InvalidArgument):
            b.walk(m, bad, s2=Stage2(vttb=0, tsz=24, sl0=1))


@given(granules=st.tuples(st.sampled_from(GRANULES), st.sampled_from(GRANULES)),
       maps=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(1, 3)),
                     min_size=1, max_size=6),
       pokes=st.lists(st.tuples(st.integers(0, 0x3FFF), st.integers(0, 2**64 - 1)),
                      max_size=3),
       probes=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 0xFFFF)),
                       min_size=1, max_size=10),
       )
def test_walks_agree_on_corrupted_nested_tables(backends, granules, maps, pokes, probes):
    """Valid nested tables (built by the builder), then a few words corrupted."""
    from pymsi.core import IoPgtable, IpaView, TableAllocator

    g1, g2 = granules
    host, tables, guest_ram = 0x8000_0000, 0x9000_0000, 0x4000_0000
    results = []
    for b in backends:
        m = b.Memory()
        m.add_ram(host, 0x100_0000)
        m.add_ram(tables, 0x100_0000)
        s2 = IoPgtable(m, TableAllocator(m, tables, 0x80_0000), fmt="s2", granule=g2, ias=40)
        s2.map(guest_ram, host, 0x100_0000, 3)
        gv = IpaView(m, s2)
        s1 = IoPgtable(gv, TableAllocator(gv, guest_ram + 0x80_0000, 0x80_0000), fmt="s1",
                       granule=g1, ias=48, oas=40)
        for va_page, pa_page, n in maps:
            try:
                s1.map(va_page * g1, guest_ram + pa_page * g1, n * g1, 3)
            except errors.AlreadyExists:
                pass
        for off, value in pokes:
            m.write_u64(tables + 8 * off, value)
            m.write_u64(host + 0x80_0000 + 8 * off, value)
        cfg = XlateConfig(s1.stage1_config(ips=40), s2.stage2_config(), asid=1, vmid=1)
        out = []
        for which, page, off in probes:
            va_page, _, n = maps[which % len(maps)]
            iova = (va_page + page) * g1 + (off % g1)   # mostly inside a mapped run
            out.append((b.walk(m, iova, False, cfg=cfg), b.walk(m, iova, True, cfg=cfg)))
        results.append(out)
    assert results[0] == results[1]


def _streams(b, cfgs, streams, removals):
    """A backend's Streams built from drawn (sid, mode, config index, ias) entries, then
    the drawn StreamIDs removed; with what each removal returned."""
    s = b.Streams()
    for sid, mode, which, ias in streams:
        s.set(sid, mode, cfgs[which % len(cfgs)], ias)
    return s, [s.remove(sid) for sid in removals]


@given(seed=st.integers(0, 2**32), cfgs=st.lists(configs(), min_size=1, max_size=3),
       streams=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 3), st.integers(0, 2),
                                  st.sampled_from([0, 0, 32, 40, 48, 64])), max_size=8),
       removals=st.lists(st.integers(0, 6), max_size=3),
       items=st.lists(st.tuples(st.integers(0, 7), addresses), max_size=24),
       write=st.booleans(), cap=st.integers(1, 8), with_left=st.booleans(),
       extra=st.integers(0, 2))
def test_stream_batches_agree(backends, seed, cfgs, streams, removals, items, write, cap,
                              with_left, extra):
    mems = memories(backends, seed)
    results = []
    for b, m in zip(backends, mems, strict=True):
        s, removed = _streams(b, cfgs, streams, removals)
        tlb = b.Iotlb(cap)
        n = len(items)
        sids = array.array("I", [i[0] for i in items])
        iovas = array.array("Q", [i[1] for i in items])
        pas, sts = array.array("Q", [7] * n), array.array("i", [7] * n)
        left = array.array("I", [7] * (n + extra))
        ok = b.stream_batch(m, s, sids, iovas, pas, sts, tlb=tlb, write=write,
                            unresolved=left if with_left else None)
        if with_left:
            assert list(left[:n - ok]) == [k for k in range(n) if sts[k] not in (0, 1)]
        results.append((removed, len(s), ok, list(pas), list(sts), tlb.entries(), list(left)))
    assert results[0] == results[1]


_BAD_ARGS = st.sampled_from([-1, 2**32, 2**64, 1.5, None, "1", True])


@given(seed=st.integers(0, 2**32), cfgs=st.lists(configs(), min_size=1, max_size=3),
       streams=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 3), st.integers(0, 2),
                                  st.sampled_from([0, 0, 32, 40, 48, 64])), max_size=8),
       removals=st.lists(st.integers(0, 6), max_size=3),
       items=st.lists(st.tuples(st.one_of(st.integers(0, 7), _BAD_ARGS),
                                st.one_of(addresses, addresses, _BAD_ARGS),
                                st.one_of(st.booleans(), st.booleans(),
                                          st.sampled_from([2, -1, 2**31, None]))),
                      max_size=24),
       cap=st.one_of(st.none(), st.integers(1, 8)), wrapped=st.booleans())
def test_stream_translators_agree(backends, seed, cfgs, streams, removals, items, cap,
                                  wrapped):
    """stream_translator: the same result (or None, or exception class) item by item, the
    same IOTLB afterwards; and on the valid items, what stream_batch says of them."""
    mems = memories(backends, seed)
    results = []
    for b, m in zip(backends, mems, strict=True):
        s, _ = _streams(b, cfgs, streams, removals)
        tlb = None if cap is None else b.Iotlb(cap)
        fn = b.stream_translator(m, s, tlb, wrap=(lambda w: ("ok", w)) if wrapped else None)
        out = []
        for sid, iova, write in items:
            try:
                out.append(fn(sid, iova, write))
            except Exception as e:
                out.append(type(e))
        results.append((out, None if tlb is None else (tlb.entries(), tlb.hits, tlb.misses)))
        # A translated item is what the batch gives it (status and output).
        for (sid, iova, write), r in zip(items, out, strict=True):
            if r is None or isinstance(r, type) or type(sid) is not int:
                continue
            if wrapped and r[0] == "ok":
                r = r[1]
            pas, sts = array.array("Q", [7]), array.array("i", [7])
            b.stream_batch(m, s, array.array("I", [sid]), array.array("Q", [iova]), pas, sts,
                           write=bool(write))
            assert sts[0] == encode_status(r.fault)
            assert pas[0] == (r.pa if r.fault is None else
                              (r.fault.ipa if r.fault.stage == 2 else 0))
    assert results[0] == results[1]


def test_stream_translator_leaves_the_full_path_to_the_caller(backends):
    """None for an unknown, aborting or bypassing StreamID and past ``ias``."""
    from pymsi.core import STREAM_ABORT, STREAM_BYPASS, STREAM_TRANSLATE

    cfg = XlateConfig(s2=Stage2(vttb=RAM, tsz=24, sl0=1, granule=4096, ps=40))
    for b in backends:
        m = b.Memory()
        s = b.Streams()
        s.set(1, STREAM_ABORT)
        s.set(2, STREAM_BYPASS)
        s.set(3, STREAM_TRANSLATE, cfg, 32)
        fn = b.stream_translator(m, s)
        assert [fn(sid, 0x1000, False) for sid in (0, 1, 2)] == [None] * 3
        assert fn(3, 1 << 32, True) is None
        assert fn(3, 0x1000, True).fault is not None          # no RAM: a walk fault
        with pytest.raises(TypeError):
            b.stream_translator(m, s, tlb=object())


# -- msi_router: one MSI write along a cached route (csrc/its.c pymsi_msi_fire) ------------

_U32_BAD = st.sampled_from([-1, 2**32, 1.5, None, "1"])
_U64_BAD = st.sampled_from([-1, 2**64, 1.5, None])
_PT, _PT_SIZE = 0x10_0000, 0x1_0000          # page tables (and a RAM page at its end)
_PEND, _PEND_SIZE = 0x20_0000, 0x2000        # pending tables
_DOORBELL = 0x0809_0000                      # not RAM: an ITS's page


def _route_memory(b, pages):
    """A memory with page tables mapping IOVA page k to pages[k] = (pa, writable)."""
    from pymsi.core import Prot
    from pymsi.core.pgtable import IoPgtable, TableAllocator
    m = b.Memory()
    m.add_ram(_PT, _PT_SIZE)
    m.add_ram(_PEND, _PEND_SIZE)
    pt = IoPgtable(m, TableAllocator(m, _PT, _PT_SIZE - 0x1000), "s1", 4096, 32, 40)
    for k, (pa, writable) in enumerate(pages):
        if pa is not None:
            pt.map(k << 12, pa, 4096, Prot.READ | (Prot.WRITE if writable else 0))
    return m, XlateConfig(pt.stage1_config())


@settings(max_examples=300)
@given(pages=st.lists(st.tuples(
           st.sampled_from([None, _DOORBELL, _DOORBELL, _DOORBELL, _DOORBELL + 0x1000,
                            _PT + _PT_SIZE - 0x1000]),
           st.sampled_from([True, True, True, False])), min_size=1, max_size=4),
       cached=st.lists(st.one_of(st.none(), *[st.tuples(
           st.one_of(st.integers(8190, 8300), st.integers(8192, 8300), st.integers(8192, 70000),
                     st.just(2**32 - 1)), st.sampled_from([0, 0, 1, 4]))] * 3),
           min_size=4, max_size=4),
       limits=st.lists(st.sampled_from([0, 8192, 8200, 1 << 16, 1 << 16, 1 << 16, 2**32 - 1]),
                       min_size=1, max_size=4),
       tables=st.lists(st.one_of(st.integers(_PEND, _PEND + _PEND_SIZE - 1),
                                 st.just(_PEND), st.integers(0, 2**64 - 1), st.just(2**64 - 1)),
                       min_size=4, max_size=4),
       items=st.lists(st.one_of(*[
           st.tuples(st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5]),
                     st.sampled_from([0, 0, 0, 1, 2, 5]).map(lambda k: k << 12 | 0x40),
                     st.integers(0, 1), st.integers(0, 1),
                     st.sampled_from(["its page", "its page", "its page", _DOORBELL + 0x40, 0]))
       ] * 3,
           st.tuples(st.one_of(st.integers(0, 5), _U32_BAD), st.one_of(addresses, _U64_BAD),
                     st.one_of(st.integers(0, 2), _U32_BAD), st.one_of(st.integers(0, 3), _U32_BAD),
                     st.one_of(addresses, _U64_BAD))), min_size=1, max_size=24),
       cap=st.one_of(st.none(), st.integers(1, 8)), wrapped=st.booleans())
def test_msi_routers_agree(backends, pages, cached, limits, tables, items, cap, wrapped):
    """msi_router's fire: the same answer (or exception class) item by item, the same
    translation handed back by last(), the same memory (pending bits) and IOTLB
    afterwards.  StreamIDs 0-2 translate through a page table mapping IOVA pages to the
    doorbell (writable or not), another page, RAM or nothing; 3 bypasses, 4 aborts, 5 is
    not known."""
    from pymsi.core import STREAM_ABORT, STREAM_BYPASS, STREAM_TRANSLATE
    results = []
    for b in backends:
        m, cfg = _route_memory(b, pages)
        s = b.Streams()
        for sid in (0, 1, 2):
            s.set(sid, STREAM_TRANSLATE, cfg, 0)
        s.set(3, STREAM_BYPASS)
        s.set(4, STREAM_ABORT)
        tlb = None if cap is None else b.Iotlb(cap)
        xl = b.stream_translator(m, s, tlb, wrap=(lambda w: ("ok", w)) if wrapped else None)
        itc = b.ItsCache()
        for k, entry in enumerate(cached):      # (DeviceID, EventID) = (k // 2, k % 2)
            if entry is not None:
                itc.set(k // 2, k % 2, *entry)
        lim = array.array("I", limits)
        tab = array.array("Q", (tables * 2)[:len(limits)])
        fire, last = b.msi_router(xl, m, itc, m, lim, tab)
        out = []
        for sid, iova, dev, event, doorbell in items:
            if doorbell == "its page":          # where the page of iova is mapped, if it is
                page = pages[iova >> 12][0] if iova >> 12 < len(pages) else None
                doorbell = 0 if page is None else page + 0x40
            try:
                rc = fire(sid, iova, dev, event, doorbell)
            except Exception as e:  # the exception class is part of the behaviour compared
                out.append(type(e))
                continue
            note_event(f"fire: {rc if rc < 0 else ('set', 'no RAM')[rc & 3 == 2]}")
            out.append((rc, last() if rc == b.FIRE_TRANSLATED else None))
        results.append((out, m.read(_PT, _PT_SIZE), m.read(_PEND, _PEND_SIZE),
                        None if tlb is None else (tlb.entries(), tlb.hits, tlb.misses)))
    assert results[0] == results[1]


def test_msi_router_bad_arguments_alike(backends):
    """msi_router refuses what is not its backend's, or arrays not as it reads them, with
    the same exception class on both cores."""
    outs = []
    for b in backends:
        other = backends[1] if b is backends[0] else backends[0]
        m, itc, s = b.Memory(), b.ItsCache(), b.Streams()
        xl = b.stream_translator(m, s)
        lim, tab = array.array("I", [0]), array.array("Q", [0])
        cases = [(xl, m, itc, m, lim, tab),
                 (other.stream_translator(other.Memory(), other.Streams()), m, itc, m, lim, tab),
                 (lambda *a: None, m, itc, m, lim, tab),
                 (xl, object(), itc, m, lim, tab), (xl, m, other.ItsCache(), m, lim, tab),
                 (xl, m, itc, other.Memory(), lim, tab),
                 (xl, m, itc, m, array.array("Q", [0]), tab), (xl, m, itc, m, [0], tab),
                 (xl, m, itc, m, lim, array.array("Q", [0, 0])),
                 (xl, m, itc, m, array.array("I"), array.array("Q"))]
        row = []
        for args in cases:
            try:
                b.msi_router(*args)
                row.append("ok")
            except Exception as e:  # the exception class is part of the behaviour compared
                row.append(type(e))
        outs.append(row)
    assert outs[0] == outs[1]
    assert outs[0][0] == "ok" and "ok" not in outs[0][1:]
