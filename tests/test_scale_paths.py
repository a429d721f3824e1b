"""The set-up paths made linear for issue 11 give the results the scanning code gave.

- KVM_SET_GSI_ROUTING reuses the table of the previous call when the new one extends it
  and looks again only at the irqfds of the GSIs that changed: every call's table,
  errno and irqfd routes must equal a table built from scratch by the reference below
  (kvm_set_irq_routing's checks, as the model had them), for entries handed as
  structures or as bytes.
- The VMM's routing commit appends new routes to the bytes it sent last: what KVM
  receives must be the whole table in GSI order, whatever was added, changed or
  released since.
- The lowest free descriptor / GSI come from a hint: always the lowest free.
- The irq-bypass manager finds producers and consumers by token through an index: the
  same pairs, return values and lists as a scan.
"""

from __future__ import annotations

import errno

from hypothesis import given, settings
from hypothesis import strategies as st
from test_kvm import DOORBELL, make_vm, msi_entry

from pymsi.kernel import kvm as KV
from pymsi.kernel.base import KernelError
from pymsi.kernel.irqbypass import IrqBypass, IrqBypassConsumer, IrqBypassProducer
from pymsi.machine import ArmVirt
from pymsi.uapi import kvm as K
from pymsi.vmm.kvm_irqchip import KvmIrqchip

EINVAL = errno.EINVAL


def reference_routing(ue):
    """kvm_set_irq_routing()'s checks and table, field by field (the model before)."""
    table = {}
    for e in ue:
        if e.gsi >= KV.KVM_MAX_IRQ_ROUTES:
            raise KernelError(EINVAL, "gsi")
    for e in ue:
        if e.type == K.KVM_IRQ_ROUTING_MSI:
            if e.flags & ~K.KVM_MSI_VALID_DEVID:
                raise KernelError(EINVAL, "flags")
            m = e.u.msi
            route = KV.MsiRoute(e.gsi, m.address_hi << 32 | m.address_lo, m.data, e.flags,
                                m.devid)
        elif e.type == K.KVM_IRQ_ROUTING_IRQCHIP:
            if e.flags:
                raise KernelError(EINVAL, "flags")
            c = e.u.irqchip
            if c.irqchip >= KV.KVM_NR_IRQCHIPS or c.pin >= KV.KVM_IRQCHIP_NUM_PINS:
                raise KernelError(EINVAL, "pin")
            route = KV.IrqchipRoute(e.gsi, c.irqchip, c.pin)
        else:
            raise KernelError(EINVAL, "type")
        for old in table.get(e.gsi, []):
            if not (isinstance(old, KV.IrqchipRoute) and isinstance(route, KV.IrqchipRoute)
                    and old.irqchip != route.irqchip):
                raise KernelError(EINVAL, "twice")
        table.setdefault(e.gsi, []).append(route)
    return table


# one entry: mostly valid MSI routes on a few GSIs, some irqchip routes, some invalid ones
ENTRY = st.one_of(
    st.tuples(st.just("msi"), st.integers(0, 9), st.integers(0, 3), st.integers(0, 3),
              st.sampled_from([K.KVM_MSI_VALID_DEVID, K.KVM_MSI_VALID_DEVID, 0, 2])),
    st.tuples(st.just("chip"), st.integers(0, 9), st.integers(0, 2), st.integers(0, 3),
              st.sampled_from([0, 0, 0, 1])),
    st.tuples(st.just("far"), st.just(4096), st.just(0), st.just(0), st.just(1)),
    st.tuples(st.just("type"), st.integers(0, 9), st.sampled_from([0, 4]), st.just(0),
              st.just(0)),
)


def make_entry(spec):
    kind, gsi, a, b, flags = spec
    if kind in ("msi", "far"):
        return msi_entry(gsi, DOORBELL, data=a, devid=b, flags=flags)
    if kind == "chip":
        pin = 988 if b == 3 else b
        return K.KvmIrqRoutingEntry(gsi=gsi, type=K.KVM_IRQ_ROUTING_IRQCHIP, flags=flags,
                                    u={"irqchip": {"irqchip": a, "pin": pin}})
    return K.KvmIrqRoutingEntry(gsi=gsi, type=a)


# each step: keep the last table sent and add entries (the common case), or drop some
# of its last entries and add others, or start again
STEP = st.tuples(st.sampled_from(["extend", "extend", "trim", "new"]),
                 st.integers(0, 3), st.lists(ENTRY, max_size=4), st.booleans())

_K = ArmVirt(devices=[{"msix": 4}]).boot()


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(STEP, min_size=1, max_size=12), irqfd_gsis=st.lists(
    st.integers(0, 9), max_size=4, unique=True))
def test_incremental_routing_equals_a_fresh_table(steps, irqfd_gsis):
    k = _K
    vm, _, _, _ = make_vm(k)
    kvm = k.files.fds[vm].private_data
    efds = [k.eventfd() for _ in irqfd_gsis]
    for efd, gsi in zip(efds, irqfd_gsis, strict=True):
        k.ioctl(vm, K.KVM_IRQFD, K.KvmIrqfd(fd=efd.fd, gsi=gsi, flags=0))
    expected: dict = {}
    last: list = []
    for how, trim, extra, as_bytes in steps:
        if how == "extend":
            specs = last + extra
        elif how == "trim":
            specs = last[:max(0, len(last) - trim)] + extra
        else:
            specs = list(extra)
        entries = [make_entry(s) for s in specs]
        try:
            want = reference_routing(entries)
            want_err = None
        except KernelError as e:
            want, want_err = None, e.errno
        flex = b"".join(e.pack() for e in entries) if as_bytes else entries
        arg = K.KvmIrqRouting(nr=len(entries), flags=0, entries=flex)
        try:
            assert k.ioctl(vm, K.KVM_SET_GSI_ROUTING, arg) == 0
            err = None
        except KernelError as e:
            err = e.errno
        assert err == want_err
        if want is not None:
            expected = want
            last = specs
        assert kvm.routing == expected
        for f in kvm.irqfds:
            routes = expected.get(f.gsi, [])
            assert f.irq_entry == (routes[0] if len(routes) == 1 else None)
    for efd in efds:
        efd.close()
    k.close(vm)


class _RecordingKernel:
    def __init__(self):
        self.tables = []

    def ioctl(self, fd, cmd, arg):
        assert cmd == K.KVM_SET_GSI_ROUTING
        self.tables.append((arg.nr, arg.flex_items()))
        return 0


OP = st.one_of(st.tuples(st.just("add"), st.integers(0, 7)),
               st.tuples(st.just("update"), st.integers(0, 7)),
               st.tuples(st.just("release"), st.integers(0, 12)),
               st.tuples(st.just("commit"), st.just(0)))


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(OP, max_size=30), first=st.integers(0, 2))
def test_vmm_commit_sends_the_whole_table_in_gsi_order(ops, first):
    rk = _RecordingKernel()
    chip = KvmIrqchip(rk, 0, first_gsi=first, max_routes=first + 8)
    for op, x in ops:
        if op == "add":
            try:
                gsi = chip.add_msi_route(DOORBELL, x, 8)
            except OSError as e:
                assert e.errno == errno.ENOSPC and len(chip.routes) == 8
            else:
                free = [g for g in range(first, first + 8) if g not in chip.routes or g == gsi]
                assert gsi == min(free)
        elif op == "update" and chip.routes:
            gsi = sorted(chip.routes)[x % len(chip.routes)]
            chip.update_msi_route(gsi, DOORBELL, x + 100, 9)
        elif op == "release":
            chip.release_virq(x)
        else:
            chip.commit_routes()
            nr, items = rk.tables[-1]
            assert nr == len(items) == len(chip.routes)
            got = [(e.gsi, e.type, e.flags, e.u.msi.address_hi << 32 | e.u.msi.address_lo,
                    e.u.msi.data, e.u.msi.devid) for e in items]
            want = [(g, K.KVM_IRQ_ROUTING_MSI, K.KVM_MSI_VALID_DEVID, r.address, r.data,
                     r.devid) for g, r in sorted(chip.routes.items())]
            assert got == want


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=40))
def test_lowest_free_descriptor(ops):
    files = _K.files
    opened = []
    for open_, i in ops:
        if open_ or not opened:
            before = set(files.fds)
            lowest = next(n for n in range(len(before) + 1) if n not in before)
            efd = _K.eventfd()
            assert efd.fd == lowest
            opened.append(efd)
        else:
            opened.pop(i % len(opened)).close()
    for efd in opened:
        efd.close()


class _ScanBypass:
    """The manager as a scan of its two lists (the model before)."""

    def __init__(self):
        self.producers, self.consumers = [], []

    def register_producer(self, prod):
        if prod.token is None:
            return -EINVAL
        if any(p is prod or p.token is prod.token for p in self.producers):
            return -errno.EBUSY
        cons = next((c for c in self.consumers if c.token is prod.token), None)
        if cons is not None:
            ret = IrqBypass._connect(prod, cons)
            if ret:
                return ret
        self.producers.append(prod)
        return 0

    def unregister_producer(self, prod):
        if prod not in self.producers:
            return
        if prod.consumer is not None:
            IrqBypass._disconnect(prod, prod.consumer)
        self.producers.remove(prod)

    def register_consumer(self, cons):
        if cons.token is None or cons.add_producer is None or cons.del_producer is None:
            return -EINVAL
        if any(c is cons or c.token is cons.token for c in self.consumers):
            return -errno.EBUSY
        prod = next((p for p in self.producers if p.token is cons.token), None)
        if prod is not None:
            ret = IrqBypass._connect(prod, cons)
            if ret:
                return ret
        self.consumers.append(cons)
        return 0

    def unregister_consumer(self, cons):
        if cons not in self.consumers:
            return
        if cons.producer is not None:
            IrqBypass._disconnect(cons.producer, cons)
        self.consumers.remove(cons)


BYPASS_OP = st.tuples(st.sampled_from(["reg_p", "reg_c", "unreg_p", "unreg_c"]),
                      st.integers(0, 5), st.integers(0, 3), st.booleans())


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(BYPASS_OP, max_size=30))
def test_irqbypass_index_equals_a_scan(ops):
    tokens = [object() for _ in range(3)] + [None]

    def world(mgr):
        log = []

        def add(cons, prod, fail):
            log.append(("add", id_of[cons], id_of[prod]))
            return -5 if fail else 0

        def dele(cons, prod):
            log.append(("del", id_of[cons], id_of[prod]))
        id_of = {}
        prods, conss = [], []
        for i in range(6):
            p = IrqBypassProducer(tokens[i % 4], i)
            c = IrqBypassConsumer(tokens[(i + 1) % 4],
                                  lambda c, p, i=i: add(c, p, i == 5), dele)
            id_of[p], id_of[c] = ("p", i), ("c", i)
            prods.append(p)
            conss.append(c)
        rets = []
        for op, i, _, _ in ops:
            if op == "reg_p":
                rets.append(mgr.register_producer(prods[i]))
            elif op == "reg_c":
                rets.append(mgr.register_consumer(conss[i]))
            elif op == "unreg_p":
                rets.append(mgr.unregister_producer(prods[i]))
            else:
                rets.append(mgr.unregister_consumer(conss[i]))
            rets.append(([id_of[p] for p in mgr.producers], [id_of[c] for c in mgr.consumers],
                         [id_of.get(p.consumer) for p in prods]))
        return rets, log

    assert world(IrqBypass()) == world(_ScanBypass())
