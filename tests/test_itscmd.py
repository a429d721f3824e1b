"""The ITS command queue's core part (csrc/itscmd.c, ``ItsCmdq``).

1. Differential: the C ``ItsCmdq.run`` against its pure-Python twin on command
   streams built valid (MAPC, MAPD, MAPTI / MAPI, INV, INVALL, SYNC over small
   flat or two-level tables) and then mutated (DeviceIDs and collections out of
   range, ITT sizes too large, ITT / table / queue addresses outside RAM,
   unknown opcodes, flipped bits): same statuses, read pointers, counts, error
   codes, records, tables in memory and batch translation cache.
2. The ITS model over the C core's memory, over the twin's, and over a memory that is
   not a core Memory (the one Python definition, ``core.itscmdq.MemoryCmdq``, through
   the memory's public calls): same tables, statistics, error trace, caches,
   redistributor state, translations and trace records; and with the table commands'
   tracepoints on (the core then runs one command per call) the same as with them off,
   trace records aside.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymsi import trace
from pymsi.core import common as cc
from pymsi.core.itscmdq import MemoryCmdq

from hw_rig import ITS_BASE, TRANSLATER, ItsDriver, Platform

RAM, RAM_SIZE = 0x4000_0000, 0x40_0000
CQ, DT, CT, ITT0 = RAM, RAM + 0x10_0000, RAM + 0x20_0000, RAM + 0x30_0000
OUTSIDE = 0x9000_0000                       # not RAM
OPS = {"MOVI": 0x01, "INT": 0x03, "CLEAR": 0x04, "SYNC": 0x05, "MAPD": 0x08, "MAPC": 0x09,
       "MAPTI": 0x0A, "MAPI": 0x0B, "INV": 0x0C, "INVALL": 0x0D, "MOVALL": 0x0E,
       "DISCARD": 0x0F}
CORE_OPS = sum(1 << OPS[k] for k in ("SYNC", "MAPD", "MAPC", "MAPTI", "MAPI", "INV", "INVALL"))


# -- 1. C against the twin ---------------------------------------------------------------

@st.composite
def setups(draw, mutate=True):
    """A configuration and a valid command stream over it ([opcode, d0, d1, d2, d3]
    each), then (``mutate``) mutations."""
    page = draw(st.sampled_from([4096, 16384, 65536]))
    indirect = draw(st.booleans())
    devbits = draw(st.integers(1, 20))
    id_bits = draw(st.integers(14, 20))
    cidbits = draw(st.integers(1, 16))
    nproc = draw(st.integers(1, 4))
    qpages = draw(st.integers(1, 4))
    ndev = min(1 << devbits, 6)
    fits = min(1 << devbits, 2 * page // 8)          # DeviceIDs a flat table holds
    devs = draw(st.lists(st.one_of(st.integers(0, fits - 1), st.integers(0, (1 << devbits) - 1)),
                         min_size=1, max_size=ndev, unique=True))
    if indirect:                    # devices spread over level-2 pages, some never given one
        devs = [d * draw(st.sampled_from([1, page // 8, page // 8 + 1])) % (1 << devbits)
                for d in devs]
        devs = list(dict.fromkeys(devs))
    cmds = []
    ncol = min(1 << cidbits, 4)
    for icid in range(ncol):
        cmds.append([OPS["MAPC"], 0, 0, 1 << 63 | draw(st.integers(0, nproc - 1)) << 16 | icid,
                     0])
    sizes = {}
    for k, dev in enumerate(devs):
        sizes[dev] = draw(st.integers(0, 4))
        cmds.append([OPS["MAPD"], dev << 32, sizes[dev], 1 << 63 | ITT0 + 0x1000 * k, 0])
    mapped = []
    for _ in range(draw(st.integers(0, 30))):
        dev = draw(st.sampled_from(devs))
        ev = draw(st.integers(0, (2 << sizes[dev]) - 1))
        kind = draw(st.sampled_from(["MAPTI", "MAPI", "INV", "INV", "INVALL", "SYNC", "MOVI",
                                     "INT", "DISCARD"]))
        if kind in ("MAPTI", "MAPI"):
            mapped.append((dev, ev))
        elif mapped and draw(st.booleans()):        # mostly an event mapped before
            dev, ev = draw(st.sampled_from(mapped))
        icid = draw(st.integers(0, ncol - 1))
        if kind == "MAPTI":
            cmds.append([OPS[kind], dev << 32, draw(st.integers(8192, (1 << id_bits) - 1)) << 32
                         | ev, icid, 0])
        elif kind in ("INVALL", "SYNC"):
            cmds.append([OPS[kind], 0, 0, draw(st.integers(0, nproc - 1)) << 16 | icid, 0])
        else:
            cmds.append([OPS[kind], dev << 32, ev, icid, 0])
    cfg = dict(page=page, indirect=indirect, devbits=devbits, id_bits=id_bits,
               cidbits=cidbits, nproc=nproc, qsize=4096 * qpages, dt=DT, ct=CT, cq=CQ,
               l2=[])
    if indirect:                    # level-2 pages for some devices (not necessarily all)
        for dev in devs:
            if draw(st.booleans()):
                cfg["l2"].append((dev // (page // 8), RAM + 0x38_0000 + len(cfg["l2"]) * page))
    # mutations
    for _ in range(draw(st.integers(0, 4)) if mutate else 0):
        m = draw(st.sampled_from(["dev", "size", "itt", "op", "flip", "icid", "rdbase",
                                  "intid", "dt", "ct", "cq", "l2"]))
        i = draw(st.integers(0, len(cmds) - 1))
        c = cmds[i]
        if m == "dev":
            c[1] = draw(st.integers(0, 2**32 - 1)) << 32
        elif m == "size":
            c[2] = c[2] & ~0x1F | draw(st.integers(0, 31))
        elif m == "itt":
            c[3] = c[3] & ~(((1 << 44) - 1) << 8) | draw(st.sampled_from(
                [OUTSIDE, RAM + RAM_SIZE - 0x100, 0])) & ~0xFF
        elif m == "op":
            c[0] = draw(st.integers(0, 255))
        elif m == "flip":
            w = draw(st.integers(0, 3))
            c[w] ^= 1 << draw(st.integers(0, 63))
        elif m == "icid":
            c[3] = c[3] & ~0xFFFF | draw(st.integers(0, 0xFFFF))
        elif m == "rdbase":
            c[3] = c[3] & ~(0xFFFF_FFFF << 16) | draw(st.integers(0, 2**32 - 1)) << 16
        elif m == "intid":
            c[2] = c[2] & 0xFFFF_FFFF | draw(st.integers(0, 2**32 - 1)) << 32
        elif m in ("dt", "ct", "cq"):
            cfg[m] = draw(st.sampled_from([OUTSIDE, RAM + RAM_SIZE - 64, 2**64 - 4096]))
        elif cfg["l2"]:
            j = draw(st.integers(0, len(cfg["l2"]) - 1))
            cfg["l2"][j] = (cfg["l2"][j][0], OUTSIDE)
    cfg["start"] = draw(st.integers(0, cfg["qsize"] // 32 - 1)) * 32
    cmds = cmds[:cfg["qsize"] // 32 - 1]
    cfg["ops"] = CORE_OPS if draw(st.booleans()) else draw(st.integers(0, 2**64 - 1))
    cfg["valid"] = draw(st.sampled_from([(True, True)] * 6 + [(False, True), (True, False)]))
    cfg["itc"] = draw(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=6))
    return cfg, cmds


def _memory(b, cfg, cmds):
    mem = b.Memory()
    mem.add_ram(RAM, RAM_SIZE)
    for l1, l2 in cfg["l2"]:
        if DT + 8 * l1 + 8 <= RAM + RAM_SIZE and DT < RAM + RAM_SIZE:
            mem.write_u64(DT + 8 * l1, 1 << 63 | l2)
    q, at = cfg["qsize"], cfg["start"]
    for c in cmds:
        if RAM <= CQ + at and cfg["cq"] == CQ:
            words = (c[0] | c[1], c[2], c[3], c[4])
            mem.write(CQ + at, b"".join(w.to_bytes(8, "little") for w in words))
        at = (at + 32) % q
    return mem, at


def _table(cfg, which):
    """(valid, indirect, base, span, entry size, page size) of the device (0) or
    collection (1) table: flat tables span two pages, a level-1 table one."""
    page = cfg["page"]
    if which == 0:
        indirect = cfg["indirect"]
        return (cfg["valid"][0], indirect, cfg["dt"], page if indirect else 2 * page, 8, page)
    return (cfg["valid"][1], False, cfg["ct"], page, 8, page)


def _run_all(b, cfg, cmds):
    mem, cwriter = _memory(b, cfg, cmds)
    itc = b.ItsCache()
    for dev, ev in cfg["itc"]:
        itc.set(dev, ev, 8192 + ev, 0)
    q = b.ItsCmdq()
    q.configure(cfg["cq"], cfg["qsize"], cfg["nproc"], cfg["devbits"], cfg["id_bits"],
                cfg["cidbits"], _table(cfg, 0), _table(cfg, 1))
    creadr, outs = cfg["start"], []
    for _ in range(3 * len(cmds) + 4):
        r = q.run(mem, itc, creadr, cwriter, cfg["ops"])
        outs.append(r)
        status, creadr = r[0], r[1]
        if status in (cc.ITSQ_DONE, cc.ITSQ_STALL):
            break
        if status in (cc.ITSQ_ERROR, cc.ITSQ_HANDOFF):
            creadr = (creadr + 32) % cfg["qsize"]
    tables = [mem.read(a, 0x10000) for a in (DT, CT)]
    itts = [mem.read(ITT0 + 0x1000 * k, 0x200) for k in range(8)]
    l2 = [mem.read(RAM + 0x38_0000 + k * cfg["page"], 0x1000) for k in range(len(cfg["l2"]))]
    return outs, tables, itts, l2, len(itc), [itc.get(d, e) for d, e in cfg["itc"]]


@given(setup=setups())
def test_cmdq_run_agrees(backends, setup):
    cfg, cmds = setup
    c, py = (_run_all(b, cfg, cmds) for b in backends)
    assert c == py


@given(setup=setups(mutate=False))
def test_cmdq_runs_valid_streams_to_the_end(backends, setup):
    """Unmutated streams of core commands only: one run, every command done, and the
    ITEs they write are the model's format (a check the twin could not fake alone)."""
    cfg, cmds = setup
    cmds = [c for c in cmds if c[0] in (OPS["MAPC"], OPS["MAPD"], OPS["MAPTI"])]
    cfg = dict(cfg, cq=CQ, dt=DT, ct=CT, l2=[], indirect=False, ops=CORE_OPS,
               valid=(True, True))
    for b in backends:
        mem, cwriter = _memory(b, cfg, cmds)
        q = b.ItsCmdq()
        q.configure(CQ, cfg["qsize"], cfg["nproc"], cfg["devbits"], cfg["id_bits"],
                    cfg["cidbits"], _table(cfg, 0), _table(cfg, 1))
        status, creadr, n, op, code, recs = q.run(mem, None, cfg["start"], cwriter, CORE_OPS)
        bad = [c for c in cmds if c[0] == OPS["MAPD"] and (c[1] >> 32) * 8 >= 2 * cfg["page"]]
        if bad:
            continue                    # a device beyond the flat table: MAPD_DEVICE_OOR
        assert (status, creadr, n, code) == (cc.ITSQ_DONE, cwriter, len(cmds), 0)
        assert len(recs) == 3 * len(cmds)
        devs = {c[1] >> 32: c for c in cmds if c[0] == OPS["MAPD"]}
        for c in cmds:
            if c[0] == OPS["MAPTI"]:
                dev, ev, intid = c[1] >> 32, c[2] & 0xFFFF_FFFF, c[2] >> 32
                itt = devs[dev][3] & ((1 << 52) - 1) & ~0xFF
                later = [x for x in cmds[cmds.index(c) + 1:] if x[0] == OPS["MAPTI"]
                         and x[1] == c[1] and x[2] & 0xFFFF_FFFF == ev]
                if not later:
                    assert mem.read_u64(itt + 16 * ev) == 1 | intid << 32
                    assert mem.read_u64(itt + 16 * ev + 8) == (c[3] & 0xFFFF) | 1023 << 32


ints = st.one_of(st.integers(0, 40), st.integers(-2, 2**64 + 2))


@given(args=st.lists(ints, min_size=8, max_size=8), tables=st.lists(
    st.tuples(st.booleans(), st.booleans(), ints, ints, ints, ints), min_size=2, max_size=2),
    run=st.lists(ints, min_size=3, max_size=3))
def test_cmdq_refuses_bad_configurations_alike(backends, args, tables, run):
    outs = []
    for b in backends:
        mem = b.Memory()
        mem.add_ram(RAM, RAM_SIZE)
        q = b.ItsCmdq()
        try:
            q.configure(*args[:6], *tables)
            got = ("ok", q.run(mem, None, *run))
        except Exception as e:  # the exception class is part of the behaviour compared
            got = ("raise", type(e))
        outs.append(got)
    assert outs[0] == outs[1]


def test_cmdq_rejects_other_objects(backends):
    for b in backends:
        q = b.ItsCmdq()
        with pytest.raises(TypeError):
            q.run(object(), None, 0, 0, 0)
        mem = b.Memory()
        with pytest.raises(TypeError):
            q.run(mem, object(), 0, 0, 0)


# -- 2. the ITS model with and without the core part -------------------------------------

NCPUS = 4


@st.composite
def model_streams(draw):
    """Chunks of commands (each posted with one CWRITER write) with MSIs between them
    (written to GITS_TRANSLATER or given to ``translate_batch``),
    after one that maps collections 0..3, devices 0..4 and some of their events."""
    setup = [[OPS["MAPC"], 0, 1 << 63 | icid << 16 | icid, 0] for icid in range(NCPUS)]
    setup += [[OPS["MAPD"] | dev << 32, 3, 1 << 63 | (1 << 63) - 1, 0] for dev in range(5)]
    setup += [[OPS["MAPTI"] | dev << 32, (8192 + 8 * dev + ev) << 32 | ev, ev % NCPUS, 0]
              for dev in range(5) for ev in draw(st.sets(st.integers(0, 9), max_size=6))]
    chunks = [(setup, [])]
    for _ in range(draw(st.integers(1, 6))):
        cmds = []
        for _ in range(draw(st.integers(1, 8))):
            kind = draw(st.sampled_from(list(OPS) + ["garbage"]))
            dev, ev = draw(st.integers(0, 4)), draw(st.integers(0, 9))
            icid, cpu = draw(st.integers(0, NCPUS + 1)), draw(st.integers(0, NCPUS + 1))
            if kind == "garbage":
                cmds.append([draw(st.integers(0, 2**64 - 1)) for _ in range(4)])
            elif kind == "MAPD":
                itt = draw(st.sampled_from(["ok"] * 5 + [OUTSIDE]))
                cmds.append([OPS[kind] | dev << 32, draw(st.integers(0, 20)),
                             int(draw(st.booleans()) or True) << 63 | (itt if itt != "ok"
                                                                       else -1), 0])
            elif kind == "MAPC":
                cmds.append([OPS[kind], 0, int(draw(st.booleans())) << 63 | cpu << 16 | icid, 0])
            elif kind == "MAPTI":
                cmds.append([OPS[kind] | dev << 32, draw(st.sampled_from(
                    [8192 + draw(st.integers(0, 63)), 100, 1 << 17])) << 32 | ev, icid, 0])
            else:
                cmds.append([OPS[kind] | dev << 32, ev, cpu << 16 | icid,
                             draw(st.integers(0, NCPUS)) << 16])
        # (DeviceID, EventID, through translate_batch: the batch cache's path)
        msis = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9), st.booleans()),
                             max_size=6))
        chunks.append((cmds, msis))
    return chunks


class ForeignMemory:
    """A PhysMemory that is not a core Memory: RAM reached only through public calls."""

    def __init__(self, ram):
        self.ram = ram

    def is_ram(self, addr, size=1):
        return self.ram.is_ram(addr, size)

    def read(self, addr, size):
        return self.ram.read(addr, size)

    def write(self, addr, data):
        self.ram.write(addr, data)

    def read_u32(self, addr):
        return self.ram.read_u32(addr)

    def read_u64(self, addr):
        return self.ram.read_u64(addr)

    def write_u32(self, addr, value):
        self.ram.write_u32(addr, value)

    def write_u64(self, addr, value):
        self.ram.write_u64(addr, value)


def _model_run(backend, foreign, chunks, stall_on_error, traced, indirect):
    p = Platform(ncpus=NCPUS, backend=backend, stall_on_error=stall_on_error,
                 its_memory=ForeignMemory if foreign else None)
    assert isinstance(p.its._cmdq, MemoryCmdq) == foreign
    drv = ItsDriver(p)
    drv.init(indirect=indirect)
    if indirect:
        for dev in (0, 2):
            drv.ensure_l2(dev)
    p.ram.write(drv.prop, bytes([0xA3]) * 64)
    itts = {dev: p.alloc(0x1000, 256) for dev in range(6)}
    rec = trace.Recorder()
    trace.reset()
    if traced:
        trace.enable(traced)
    rec.start()
    b, w = p.bus, p.bus.read(ITS_BASE + 0x88, 8)
    try:
        for cmds, msis in chunks:
            for c in cmds:
                c = list(c)
                if c[0] & 0xFF == OPS["MAPD"] and c[2] & ((1 << 63) - 1) == (1 << 63) - 1:
                    c[2] = c[2] & 1 << 63 | itts[c[0] >> 32 & 0xFF]
                p.ram.write(drv.cmdq + w, b"".join((x & (2**64 - 1)).to_bytes(8, "little")
                                                   for x in c))
                w = (w + 32) % 0x10000
            b.write(ITS_BASE + 0x88, w, 8)
            if p.its.stalled:
                b.write(ITS_BASE + 0x88, w | 1, 8)          # retry once
            for dev, ev, batch in msis:
                if batch:
                    p.its.translate_batch(dev, [ev])
                else:
                    b.write(TRANSLATER, ev, 4, requester_id=dev)
    finally:
        rec.stop()
        trace.reset()
    its = p.its
    rds = [(sorted(rd.pending), sorted(rd._fresh), sorted(rd._config.items()))
           for rd in p.gic.redists]
    mem = [p.ram.read(a, 0x1000) for a in itts.values()]
    tables = [p.ram.read(its._decode_baser(t, its.baser[n])[3], 0x2000)
              for t, n in ((1, 0), (4, 1))]
    itc = None if its._itc is None else sorted(
        (k, its._itc.get(*k)) for k in [(d, e) for d in range(6) for e in range(10)]
        if its._itc.get(*k) is not None)
    return (its.stats, list(its.trace), its.creadr, its.stalled, its._ite_cache,
            its._col_cache, itc, rds, mem, tables,
            [(r.name, r.fields) for r in rec.records])


@given(chunks=model_streams(), stall_on_error=st.booleans(),
       traced=st.sampled_from(["gicv3_its_cmd_sync", "gicv3_its_cmd_*",
                               "gicv3_its_cmd_mapti,gicv3_its_cmd_inv,gicv3_its_*error"]),
       indirect=st.booleans())
def test_model_is_the_same_over_every_memory_traced_or_not(chunks, stall_on_error, traced,
                                                           indirect):
    runs = {(backend, foreign, t): _model_run(backend, foreign, chunks, stall_on_error, t,
                                              indirect)
            for backend in ("c", "python") for foreign in (False, True)
            for t in (None, traced)}
    first = runs["c", False, traced]
    for key, got in runs.items():
        if key[2] == traced:
            assert got == first, key
        else:                                   # untraced: no records, the rest the same
            assert got[:-1] == first[:-1], key
            assert got[-1] == [], key


@pytest.mark.parametrize("backend", ["c", "python"])
@pytest.mark.parametrize("foreign", [False, True])
@pytest.mark.parametrize("remap", ["MAPTI", "MAPD", "MAPC"])
def test_remap_drops_the_batch_translation(backend, foreign, remap):
    """A translation the batch cache holds is gone after a command that changes it: the
    next batch MSI takes the new LPI / target (MAPTI), is dropped (MAPD V=0), or lands
    on the collection's new redistributor (MAPC), on every memory the ITS can have."""
    p = Platform(ncpus=2, backend=backend, its_memory=ForeignMemory if foreign else None)
    drv = ItsDriver(p)
    drv.init()
    lpi0, _ = drv.map_device(7, 2, cpu=0)
    rd0, rd1 = p.gic.redists
    for _ in range(2):          # translated and cached; then copied to the batch cache
        assert p.its.translate_batch(7, [0]) == 1
        assert rd0.clear_pending(lpi0)
    assert len(p.its._itc) == 1
    if remap == "MAPTI":
        new = drv.next_lpi
        drv.set_config(new, 0xA3)
        drv.cmd(OPS["MAPTI"], d0=7 << 32, d1=new << 32 | 0, d2=1)
        drv.cmd(OPS["INV"], d0=7 << 32, d1=0)
        drv.cmd(OPS["SYNC"], d2=1 << 16)
        expect = (1, rd1, new)
    elif remap == "MAPD":
        drv.cmd(OPS["MAPD"], d0=7 << 32, d1=0, d2=0)
        drv.cmd(OPS["SYNC"])
        expect = (0, None, None)
    else:
        drv.cmd(OPS["MAPC"], d2=1 << 63 | 1 << 16 | 0)  # collection 0 -> redistributor 1
        drv.cmd(OPS["SYNC"], d2=1 << 16)
        expect = (1, rd1, lpi0)
    assert p.its.translate_batch(7, [0]) == expect[0]
    assert lpi0 not in rd0.pending
    if expect[1] is not None:
        assert expect[2] in expect[1].pending
