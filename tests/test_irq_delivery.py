"""Interrupt delivery: the core's pending-bit functions (C against the Python twin), and
batch delivery (``PciFunction.notify_batch``) against firing the vectors one at a time."""

from __future__ import annotations

import array

from hypothesis import given, settings
from hypothesis import strategies as st

RAM, RAM_SIZE = 0x1_0000, 0x2000


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as e:  # the exception class is part of the behaviour compared
        return ("raise", type(e))


addresses = st.one_of(st.integers(RAM - 2, RAM + RAM_SIZE + 1), st.integers(0, 2**64 - 1),
                      st.integers(-2, 2**65), st.just(2**64 - 1))
bits = st.one_of(st.integers(0, 7), st.integers(-2, 10), st.just(True), st.just(1.0))


@given(ops=st.lists(st.tuples(addresses, bits, st.sampled_from([None, True, False, 0, 1])),
                    max_size=30))
def test_update_bit_agrees(backends, ops):
    mems = [b.Memory() for b in backends]
    for m in mems:
        m.add_ram(RAM, RAM_SIZE)
    for addr, bit, value in ops:
        outs = [outcome(m.update_bit, addr, bit, value) for m in mems]
        assert outs[0] == outs[1], (addr, bit, value)
    assert [m.read(RAM, RAM_SIZE) for m in mems] == [mems[1].read(RAM, RAM_SIZE)] * 2
    assert mems[0].pages_allocated == mems[1].pages_allocated


@given(items=st.lists(st.tuples(
    st.one_of(st.integers(RAM - 0x100, RAM + RAM_SIZE), st.integers(0, 2**64 - 1),
              st.just(2**64 - 1)),
    st.one_of(st.integers(0, 0x1_0000), st.integers(0, 2**32 - 1))), max_size=40),
    short_old=st.booleans())
def test_pending_batch_agrees(backends, items, short_old):
    mems = [b.Memory() for b in backends]
    outs = []
    for b, m in zip(backends, mems, strict=True):
        m.add_ram(RAM, RAM_SIZE)
        tables = array.array("Q", [t for t, _ in items])
        intids = array.array("I", [i for _, i in items])
        old = array.array("i", [7] * max(0, len(items) - short_old))
        outs.append((outcome(b.pending_batch, m, tables, intids, old), old.tolist()))
    assert outs[0] == outs[1]
    assert mems[0].read(RAM, RAM_SIZE) == mems[1].read(RAM, RAM_SIZE)
    assert mems[0].pages_allocated == mems[1].pages_allocated


@settings(max_examples=20)
@given(st.data())
def test_pending_batch_bad_arguments_alike(backends, data):
    bad = data.draw(st.sampled_from(["mem", "len", "type"]))
    outs = []
    for b in backends:
        m = b.Memory()
        m.add_ram(RAM, RAM_SIZE)
        t, i, o = array.array("Q", [RAM]), array.array("I", [3]), array.array("i", [0])
        if bad == "mem":
            args = (object(), t, i, o)
        elif bad == "len":
            args = (m, t, array.array("I", [3, 4]), o)
        else:
            args = (m, array.array("I", [RAM]), i, o)
        outs.append(outcome(b.pending_batch, *args))
    assert outs[0] == outs[1] and outs[0][0] == "raise"


@given(ops=st.lists(st.tuples(
    st.one_of(st.integers(RAM - 2, RAM + RAM_SIZE + 1), st.just(2**64 - 1), st.just(2**64),
              st.just(-1)),
    st.one_of(st.integers(0, 9), st.just(-1), st.just(2**32)),
    st.one_of(st.integers(-1, 3), st.just(2**31))), max_size=30))
def test_bit_updater_agrees(backends, ops):
    mems = [b.Memory() for b in backends]
    for m in mems:
        m.add_ram(RAM, RAM_SIZE)
    fns = [m.bit_updater() for m in mems]
    for op in ops:
        outs = [outcome(f, *op) for f in fns]
        assert outs[0] == outs[1], op
    assert mems[0].read(RAM, RAM_SIZE) == mems[1].read(RAM, RAM_SIZE)
    assert mems[0].pages_allocated == mems[1].pages_allocated


@given(ops=st.lists(st.tuples(
    st.one_of(st.integers(RAM - 9, RAM + RAM_SIZE + 1), st.integers(0, 2**64 - 1),
              st.just(2**64 - 1), st.just(2**64), st.just(-1), st.just(1.0), st.just(True)),
    st.one_of(st.integers(0, 9), st.sampled_from([0, RAM_SIZE, 2**63, 2**64 - 1, 2**64, -1,
                                                  None]))), max_size=30))
def test_ram_checker_agrees(backends, ops):
    mems = [b.Memory() for b in backends]
    for m in mems:
        m.add_ram(RAM, RAM_SIZE)
        m.add_ram(RAM + RAM_SIZE, 4096)                 # adjacent: one range
    fns = [m.ram_checker() for m in mems]
    for op in ops:
        outs = [outcome(f, *op) for f in fns]
        assert outs[0] == outs[1], op
        if outs[0][0] != "raise" and type(op[0]) is int and type(op[1]) is int:
            assert bool(outs[0][1]) == mems[0].is_ram(*op), op     # what it stands for


# -- batch delivery: PciFunction.notify_batch against notify one vector at a time ----------

NVEC = 16


def _rig(backend):
    from pymsi.vmmlib import Vmm
    vmm = Vmm("sw-msi", smmu="s1", devices=[{"msix": NVEC}], backend=backend)
    vmm.bind()
    vmm.attach(vmm.hwpt_alloc(vmm.ioas), 0)
    efds = [vmm.k.eventfd() for _ in range(NVEC)]
    assert vmm.set_triggers(0, [e.fd for e in efds]) == 0
    return vmm, efds


def _snapshot(vmm, efds):
    m = vmm.m
    fn = m.functions[0]
    rds = []
    for rd in m.gic.redists:
        base = rd.pendbaser & ((1 << 52) - (1 << 16))
        try:
            table = m.ram.read(base + 1024, (1 << rd.id_bits) // 8 - 1024) \
                if rd.lpis_enabled else b""
        except OSError:                         # a pending table that is not RAM
            table = None
        rds.append((sorted(rd.pending), dict(rd.stats), table))
    return {"fn": (fn.stats, bytes(fn.msix_pba)), "bus": dict(m.bus.stats),
            "smmu": dict(m.smmu.stats), "its": (dict(m.its.stats), list(m.its.trace)),
            "gic": dict(m.gic.stats), "rds": rds, "log": list(vmm.k.log),
            "efds": [e.f_op.count for e in efds],
            "cpus": [dict(c.stats) for c in m.gic.cpus]}


vectors_st = st.lists(st.one_of(st.integers(0, NVEC - 1), st.integers(0, NVEC - 1),
                                st.integers(-1, NVEC + 2)), max_size=40)
mutations = st.lists(st.one_of(
    st.tuples(st.just("mask"), st.integers(0, NVEC - 1), st.booleans()),
    st.tuples(st.just("maskall"), st.booleans()),
    st.tuples(st.just("addr"), st.integers(0, NVEC - 1),
              st.sampled_from([0x0, 0x4000_0000, 0x8090040, 0x7000_0000, 0x1234_5000])),
    st.tuples(st.just("data"), st.integers(0, NVEC - 1), st.integers(0, 40)),
    st.tuples(st.just("drop_its_cache")),
    st.tuples(st.just("master"), st.booleans()),
    st.tuples(st.just("handle")),
), max_size=4)


def _mutate(vmm, op):
    from pymsi.hw import pci
    fn = vmm.m.functions[0]
    if op[0] == "mask":
        fn.bar_write(0, op[1] * 16 + 12, int(op[2]), 4)
    elif op[0] == "maskall":
        flags = fn.cfg_read(fn.msix_cap + 2, 2)
        flags = flags | pci.MSIX_FLAGS_MASKALL if op[1] else flags & ~pci.MSIX_FLAGS_MASKALL
        fn.cfg_write(fn.msix_cap + 2, flags, 2)
    elif op[0] == "addr":
        fn.bar_write(0, op[1] * 16, op[2], 8)
    elif op[0] == "data":
        fn.bar_write(0, op[1] * 16 + 8, op[2], 4)
    elif op[0] == "drop_its_cache":
        vmm.m.its.invalidate_cache()
    elif op[0] == "master":
        cmd = fn.cfg_read(pci.COMMAND, 2)
        fn.cfg_write(pci.COMMAND, cmd | pci.CMD_MASTER if op[1] else cmd & ~pci.CMD_MASTER, 2)
    else:
        vmm.k.handle_interrupts()


@settings(max_examples=40, deadline=None)
@given(rounds=st.lists(st.tuples(mutations, vectors_st), min_size=1, max_size=4),
       backend=st.sampled_from(["c", "python"]))
def test_notify_batch_is_notify_of_each(rounds, backend):
    (one, efd1), (batch, efd2) = _rig(backend), _rig(backend)
    f1, f2 = one.m.functions[0], batch.m.functions[0]
    for muts, vectors in rounds:
        for op in muts:
            _mutate(one, op)
            _mutate(batch, op)
        d1 = [f1.notify(v) for v in vectors]
        d2 = f2.notify_batch(vectors)
        assert d1 == d2
        assert _snapshot(one, efd1) == _snapshot(batch, efd2)
        assert one.k.handle_interrupts() == batch.k.handle_interrupts()
        assert _snapshot(one, efd1) == _snapshot(batch, efd2)
        assert one.k.proc_read("/proc/interrupts") == batch.k.proc_read("/proc/interrupts")


def _events(vmm):
    """The SMMU's registers and its event queue's bytes."""
    from pymsi.hw import smmuv3_regs as R
    smmu = vmm.m.smmu
    base, log2 = smmu._queue(R.EVENTQ_BASE, smmu.eventqs)
    return repr(smmu._regs), smmu.memory.read(base, R.EVT_SIZE << log2)


def _full_paths(vmm):
    """Make ``vmm`` take the full path everywhere the interrupt path has an inline one
    (each inlines only for the exact classes it knows): the SMMU's translate, the CPU
    interfaces' IAR/EOIR, the redistributors' set/clear pending, the bus's RAM check."""
    from pymsi.hw import gicv3
    m = vmm.m
    m.smmu.__class__ = type("FullSmmu", (type(m.smmu),), {})
    for c in m.gic.cpus:
        c.__class__ = type("FullCpuIf", (gicv3.CpuInterface,), {})
    for rd in m.gic.redists:
        rd.__class__ = type("FullRedist", (gicv3.Redistributor,), {})
    m.bus._ram_of = None


# What else changes the route of a vector's message: ITS commands (those that drop cached
# translations and those that do not), LPI configuration, affinity (MOVI), the SMMU's
# invalidations, a redistributor's LPIs disabled and enabled again, tracing.
_ITS_OPS = ["DISCARD", "MOVI", "INV", "INVALL", "MAPD0", "INT", "CLEAR", "MAPC", "MAPTI",
            "SYNC"]
route_mutations = st.lists(st.one_of(
    st.tuples(st.just("its"), st.sampled_from(_ITS_OPS), st.integers(0, NVEC - 1),
              st.integers(0, 4)),
    st.tuples(st.just("prop"), st.integers(0, NVEC - 1), st.sampled_from([0, 1, 0xA1, 0x60])),
    st.tuples(st.just("affinity"), st.integers(0, NVEC - 1), st.integers(0, 3)),
    st.tuples(st.just("smmu"), st.sampled_from(["TLBI_NSNH_ALL", "CFGI_STE", "CFGI_ALL"])),
    st.tuples(st.just("lpis"), st.integers(0, 3)),
    st.tuples(st.just("memory"), st.integers(0, NVEC - 1)),
), max_size=3)


def _mutate_route(vmm, op):
    """One of route_mutations; what the kernel refuses is refused alike on both."""
    from pymsi.hw import gicv3
    from pymsi.hw import its as I
    from pymsi.hw import smmuv3_regs as R
    from pymsi.kernel.arm_smmu_v3 import CmdqEnt
    from pymsi.kernel.base import KernelError
    k, m = vmm.k, vmm.m
    fn = m.functions[0]
    dev = fn.rid
    lpis = sorted(rd for rd in m.its._ite_cache.get(dev, {}).values())
    base = min((ite[0] >> 32 for ite in lpis), default=gicv3.LPI_BASE)
    try:
        if op[0] == "its":
            _, name, ev, arg = op
            if name == "MAPD0":                 # the device unmapped (V = 0)
                k.its.send(I.Cmd.MAPD, d0=dev << 32, d1=4, d2=0)
            elif name == "MAPTI":               # remapped to another LPI, collection arg
                k.its.send(I.Cmd.MAPTI, d0=dev << 32, d1=(base + 40 + arg) << 32 | ev, d2=arg)
            elif name == "MAPC":                # collection arg retargeted (or unmapped: 4)
                k.its.send(I.Cmd.MAPC, d2=(arg & 3) << 16 | arg | (0 if arg == 4 else 1 << 63))
            elif name == "INVALL":
                k.its.send(I.Cmd.INVALL, d2=arg)
            elif name == "SYNC":
                k.its.send(I.Cmd.SYNC, d2=(arg & 3) << 16)
            else:
                k.its.send(getattr(I.Cmd, name), d0=dev << 32, d1=ev, d2=arg)
        elif op[0] == "prop":                   # a property byte, then INV (as Linux)
            k.its.write_prop(base + op[1], op[2])
            k.its.send(I.Cmd.INV, d0=dev << 32, d1=op[1])
        elif op[0] == "affinity":
            irqs = sorted(i for i, d in k.irq.descs.items() if d.actions)
            if irqs:
                k.irq.set_affinity(irqs[op[1] % len(irqs)], {op[2]})
        elif op[0] == "smmu":
            if op[1] == "CFGI_STE":
                ent = CmdqEnt(opcode=R.Opcode.CFGI_STE, sid=dev, leaf=True)
            elif op[1] == "CFGI_ALL":
                ent = CmdqEnt(opcode=R.Opcode.CFGI_STE_RANGE, span=R.CFGI_ALL_RANGE)
            else:
                ent = CmdqEnt(opcode=R.Opcode.TLBI_NSNH_ALL)
            k.smmu.cmdq_issue_cmd(ent)
        elif op[0] == "lpis":                   # GICR_CTLR.EnableLPIs off and on again
            rd = m.gic.redists[op[1]]
            rd.mmio_write(gicv3.GICR_CTLR, 0, 4)
            rd.mmio_write(gicv3.GICR_CTLR, gicv3.GICR_CTLR_ENABLE_LPIS, 4)
        else:                                   # pending tables written behind the GIC
            lpi = base + op[1]
            for rd in m.gic.redists:
                table = rd.pendbaser & ((1 << 52) - (1 << 16))
                m.ram.write(table + (lpi >> 3), bytes([0]))
    except KernelError as e:
        return type(e), e.errno
    return None


@settings(max_examples=60, deadline=None)
@given(rounds=st.lists(st.tuples(mutations, route_mutations, vectors_st, st.booleans()),
                       min_size=1, max_size=4),
       backend=st.sampled_from(["c", "python"]))
def test_inline_paths_are_the_full_paths(rounds, backend):
    """The inline cases of the interrupt path and the bus's one-call MSI route (C: the
    SMMU's translate, the ITS cache hit and the pending bit; pymsi.core.msi_router) do
    what the full paths do, whatever happened to the route in between: the same
    deliveries, counters, tables, logs, /proc/interrupts, SMMU events and (with tracing
    on, where the route is not taken) trace records."""
    from pymsi import trace
    (fast, efd1), (full, efd2) = _rig(backend), _rig(backend)
    _full_paths(full)
    for vmm in (fast, full):                    # every vector's route learnt first
        for v in range(NVEC):
            vmm.m.functions[0].notify(v)
        vmm.k.handle_interrupts()
    for muts, route_muts, vectors, traced in rounds:
        outs, records = [], []
        for vmm in (fast, full):
            out = []
            fn = vmm.m.functions[0]
            with trace.record("*" if traced else "-*") as rec:
                for op in muts:
                    _mutate(vmm, op)
                for _ in range(2):              # (e.g. a disabled LPI pending, then its
                    for op in route_muts:       # bit cleared behind the GIC's back)
                        out.append(_mutate_route(vmm, op))
                    for v in vectors:
                        out.append(fn.notify(v))
                        vmm.m.bus.drain()
                        out.append(vmm.k.handle_interrupts())
            outs.append(out)
            records.append([(r.name, r.fields) for r in rec])
        trace.reset()
        assert outs[0] == outs[1]
        assert records[0] == records[1]
        assert _snapshot(fast, efd1) == _snapshot(full, efd2)
        assert fast.k.proc_read("/proc/interrupts") == full.k.proc_read("/proc/interrupts")
        assert _events(fast) == _events(full)
    assert not full.m.bus._routes or not any(full.m.bus._routes.values())


def _fast_and_full(backend):
    (fast, efd1), (full, efd2) = _rig(backend), _rig(backend)
    _full_paths(full)
    for vmm in (fast, full):                    # every vector's route learnt
        for v in range(NVEC):
            vmm.m.functions[0].notify(v)
        vmm.k.handle_interrupts()
    return (fast, efd1), (full, efd2)


def test_route_pending_bit_cleared_behind_the_gic():
    """A disabled LPI stays pending; software clears its pending-table bit; the device
    fires again: the full path writes nothing (the LPI is pending already), nor may the
    route (it put the bit back: the C call sets it, notify clears it again)."""
    for backend in ("c", "python"):
        (fast, efd1), (full, efd2) = _fast_and_full(backend)
        for vmm in (fast, full):
            _mutate_route(vmm, ("prop", 0, 0))
            vmm.m.functions[0].notify(0)
            assert vmm.k.handle_interrupts() == 0 and any(r.pending for r in vmm.m.gic.redists)
            _mutate_route(vmm, ("memory", 0))
            vmm.m.functions[0].notify(0)
            assert vmm.k.handle_interrupts() == 0
        assert _snapshot(fast, efd1) == _snapshot(full, efd2)


def test_route_pending_table_not_ram():
    """A redistributor whose pending table is not RAM (PENDBASER moved while LPIs were
    off): the route's bit write fails and notify counts the table error as the full
    path does."""
    from pymsi.hw import gicv3
    for backend in ("c", "python"):
        (fast, efd1), (full, efd2) = _fast_and_full(backend)
        for vmm in (fast, full):
            for rd in vmm.m.gic.redists:
                rd.mmio_write(gicv3.GICR_CTLR, 0, 4)
                rd.mmio_write(gicv3.GICR_PENDBASER, 0x7_0000_0000 | 1 << 62, 8)     # PTZ
                rd.mmio_write(gicv3.GICR_CTLR, gicv3.GICR_CTLR_ENABLE_LPIS, 4)
            for v in (0, 1, 0, 5):
                vmm.m.functions[0].notify(v)
                vmm.k.handle_interrupts()
        assert fast.m.gic.stats["table_errors"] > 0
        assert _snapshot(fast, efd1) == _snapshot(full, efd2)


def test_route_redistributors_made_a_subclass():
    """Redistributors made instances of a subclass after their LPIs were enabled (what
    pymsi.compare does to observe them): the route hands each LPI to the subclass's
    set_pending, with what the full path leaves behind."""
    from pymsi.hw import gicv3
    for backend in ("c", "python"):
        (obs, efd1), (full, efd2) = _fast_and_full(backend)
        seen = []

        class Observed(gicv3.Redistributor):
            def set_pending(self, intid, seen=seen):
                seen.append(intid)
                return super().set_pending(intid)
        for rd in obs.m.gic.redists:
            rd.__class__ = Observed
        for vmm in (obs, full):
            for v in (0, 1, 2, 1, 9):
                vmm.m.functions[0].notify(v)
                vmm.k.handle_interrupts()
        assert len(seen) == 5
        assert _snapshot(obs, efd1) == _snapshot(full, efd2)


def test_route_not_taken_when_dma_write_is_watched():
    """A harness that replaces the bus's dma_write on the instance sees every message
    (the route, learnt before, is not taken while it is there)."""
    for backend in ("c", "python"):
        (vmm, efds), (ref, efd2) = _fast_and_full(backend)
        bus, real, seen = vmm.m.bus, vmm.m.bus.dma_write, []

        def dma_write(rid, addr, value, size=4, on_done=None, seen=seen, real=real):
            seen.append((rid, value))
            return real(rid, addr, value, size, on_done)
        bus.dma_write = dma_write
        for v in (0, 1, 1, 7):
            for m in (vmm, ref):
                assert m.m.functions[0].notify(v).name == "SENT"
                m.k.handle_interrupts()
        assert [e for _, e in seen] == [0, 1, 1, 7]
        assert _snapshot(vmm, efds) == _snapshot(ref, efd2)


def test_the_route_is_taken():
    """The fast rig really sends through the one-call route (and the full rig does not):
    what test_inline_paths_are_the_full_paths compares is the route against the full path."""
    for backend in ("c", "python"):
        (fast, _), (full, _) = _rig(backend), _rig(backend)
        _full_paths(full)
        for vmm in (fast, full):
            vmm.m.functions[0].bar_write(0, 12, 0, 4)      # vector 0 unmasked
        calls = []
        for vmm in (fast, full):
            fn, bus = vmm.m.functions[0], vmm.m.bus
            fn.notify(0)                                   # learns the route, fills the cache
            vmm.k.handle_interrupts()
            route = bus._routes.get(fn.rid)
            if route:
                fire = route[3]
                route = bus._routes[fn.rid] = route[:3] + (
                    lambda *a, fire=fire, calls=calls: calls.append(a) or fire(*a),) + route[4:]
            assert fn.notify(0).name == "SENT"
            assert vmm.k.handle_interrupts() == 1
        assert len(calls) == 1, backend                    # the fast rig's second notify


def test_notify_batch_traced_is_notify_of_each():
    from pymsi import trace
    (one, efd1), (batch, efd2) = _rig("c"), _rig("c")
    vectors = [0, 1, 2, 1, 5, 0, 15, 3]
    with trace.record("*") as t1:
        d1 = [one.m.functions[0].notify(v) for v in vectors]
    with trace.record("*") as t2:
        d2 = batch.m.functions[0].notify_batch(vectors)
    trace.reset()
    assert d1 == d2 and t1.records and [(r.name, r.fields) for r in t1] == \
        [(r.name, r.fields) for r in t2]
    assert _snapshot(one, efd1) == _snapshot(batch, efd2)


# -- the ITS translation cache for batches and the MSI-X gather: C against the twin --------

u32s = st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1), st.integers(-1, 2**32),
                 st.integers(8190, 8200))


@given(ops=st.lists(st.one_of(
    st.tuples(st.just("set"), u32s, u32s, st.one_of(u32s, st.integers(8192, 70000)),
              st.integers(-1, 5)),
    st.tuples(st.just("get"), u32s, u32s),
    st.tuples(st.just("remove"), u32s, u32s),
    st.tuples(st.just("clear")),
    st.tuples(st.just("lookup"), st.integers(0, 3),
              st.lists(st.one_of(st.integers(0, 3), u32s), max_size=20),
              st.lists(st.one_of(st.integers(0, 70000), st.just(2**32 - 1)), max_size=6)),
), max_size=60))
def test_its_cache_agrees(backends, ops):
    caches = [b.ItsCache() for b in backends]
    for op in ops:
        outs = []
        for b, c in zip(backends, caches, strict=True):
            if op[0] == "set":
                outs.append(outcome(c.set, *op[1:]))
            elif op[0] == "get":
                outs.append(outcome(c.get, *op[1:]))
            elif op[0] == "remove":
                outs.append(outcome(c.remove, *op[1:]))
            elif op[0] == "clear":
                outs.append(outcome(c.clear))
            else:
                _, dev, events, limits = op
                try:
                    ev = array.array("I", events)
                except OverflowError:
                    ev = array.array("I")
                n = len(ev)
                arrs = (array.array("I", [7] * n), array.array("i", [7] * n),
                        array.array("I", [7] * n), array.array("I", [7] * len(limits)))
                r = outcome(b.its_lookup_batch, c, dev, ev, array.array("I", limits), *arrs)
                outs.append((r, [a.tolist() for a in arrs]))
            outs[-1] = (outs[-1], len(c))
        assert outs[0] == outs[1], op
    # the twin's grouping is by construction; check the C grouping is a stable sort too


@given(table=st.binary(min_size=0, max_size=16 * 12), nvec=st.integers(0, 14),
       masked_all=st.booleans(), vectors=st.lists(st.integers(0, 20), max_size=20))
def test_msix_gather_agrees(backends, table, nvec, masked_all, vectors):
    outs = []
    for b in backends:
        n = len(vectors)
        arrs = (array.array("Q", [7] * n), array.array("I", [7] * n), array.array("i", [7] * n))
        r = outcome(b.msix_gather, bytearray(table), nvec, masked_all,
                    array.array("I", vectors), *arrs)
        outs.append((r, [a.tolist() for a in arrs]))
    assert outs[0] == outs[1]


def test_irq_entry_is_the_kernels():
    """Boot makes the GIC driver's handle_irqs the kernel's handle_interrupts; it defers to
    Kernel.handle_interrupts (per-CPU cpu_irq) as soon as cpu_irqs is something else."""
    from pymsi.kernel.kernel import Kernel
    (vmm, efds), (ref, efd2) = _rig("c"), _rig("c")
    k, fn = vmm.k, vmm.m.functions[0]
    assert k.handle_interrupts == k.gic.handle_irqs
    for use_many in (True, False, True):
        if not use_many:
            k.cpu_irqs = ref.k.cpu_irqs = None
        for v in (0, 3, 3, 7):
            fn.notify(v)
            ref.m.functions[0].notify(v)
        assert k.handle_interrupts() == Kernel.handle_interrupts(ref.k) == 3
        assert _snapshot(vmm, efds) == _snapshot(ref, efd2)
        k.cpu_irqs = k.gic.handle_irqs if use_many else k.gic._entry
        ref.k.cpu_irqs = ref.k.gic._entry
