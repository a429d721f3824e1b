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
        table = m.ram.read(base + 1024, (1 << rd.id_bits) // 8 - 1024) if rd.lpis_enabled else b""
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


@settings(max_examples=40, deadline=None)
@given(rounds=st.lists(st.tuples(mutations, vectors_st), min_size=1, max_size=4),
       backend=st.sampled_from(["c", "python"]))
def test_inline_paths_are_the_full_paths(rounds, backend):
    (fast, efd1), (full, efd2) = _rig(backend), _rig(backend)
    _full_paths(full)
    f1, f2 = fast.m.functions[0], full.m.functions[0]
    for muts, vectors in rounds:
        for op in muts:
            _mutate(fast, op)
            _mutate(full, op)
        for v in vectors:
            assert f1.notify(v) == f2.notify(v)
            fast.m.bus.drain()
            full.m.bus.drain()
            assert fast.k.handle_interrupts() == full.k.handle_interrupts()
        assert _snapshot(fast, efd1) == _snapshot(full, efd2)
        assert fast.k.proc_read("/proc/interrupts") == full.k.proc_read("/proc/interrupts")
        assert _events(fast) == _events(full)


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
