"""VirtualMachine's idle pass: skipping the hooks that cannot have work changes nothing.

Two machines built from one description run the same guest-level actions, one calling
every idle hook on every pass (``fast_idle = False``), the other skipping the hooks that
cannot have work; every trace record (all tracepoints on), every run's result, every
delivery and every counter of the CPU interfaces, the vCPU interfaces and the buses must
be the same.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymsi import trace
from pymsi.machine import VirtualMachine

ASSIGNED = {"vsmmu": "accel", "variant": "per-vector", "devices": [{"msix": 4}]}
EMULATED = {"vsmmu": "emulated", "guest_ncpus": 3, "guest_ram": 0x80_0000,
            "devices": [{"model": "edu", "emulated": True},
                        {"model": "nic", "queues": 4, "emulated": True}]}

action = st.one_of(
    st.tuples(st.just("fire"), st.integers(0, 1), st.integers(0, 15)),
    st.tuples(st.just("move"), st.integers(0, 1), st.integers(0, 15), st.integers(0, 3)),
    st.tuples(st.just("mask"), st.integers(0, 1), st.integers(0, 15)),
    st.tuples(st.just("unmask"), st.integers(0, 1), st.integers(0, 15)),
    st.tuples(st.just("later"), st.integers(1, 5000), st.integers(0, 15)),
    st.tuples(st.just("run_for"), st.integers(1, 8000)),
)


def _snapshot(vm):
    host_gic, guest_gic = vm.host.gic, vm.guest.gic
    return {
        "host_cpuifs": [dict(c.stats) for c in host_gic.cpuifs],
        "host_vcpuifs": [(c.vpmr, list(c.vactive)) for c in host_gic.cpuifs],
        "guest_active": [list(c.active) for c in guest_gic.cpuifs],
        "guest_cpuifs": [dict(c.stats) for c in guest_gic.cpuifs],
        "host_bus": dict(vm.machine.bus.stats),
        "guest_bus": dict(vm.board.bus.stats),
        "handled": vm.guest_handled,
        "hits": [list(s.test.hits) if s.test is not None else None for s in vm.slots],
        "now": vm.sched.now(),
        "events": vm.sched.events_run,
    }


def _play(desc, fast, actions):
    vm = VirtualMachine(**desc).boot()
    vm.fast_idle = fast
    out = []
    depth: dict[tuple[int, int], int] = {}
    with trace.record("*", clock=vm.sched.now) as rec:
        out.append(vm.run())
        for a in actions:
            kind = a[0]
            if kind == "run_for":
                out.append(("run_for", vm.run(for_ns=a[1])))
                continue
            if kind == "later":
                slot = next((s for s in vm.slots if hasattr(s.guest_fn, "receive_later")),
                            None)
                if slot is not None:
                    slot.guest_fn.receive_later(a[1], a[2] % slot.guest_fn.queues)
                continue
            i = a[1] % len(vm.slots)
            s = vm.slots[i]
            if s.test is None:
                continue
            v = a[2] % s.test.nvec
            if kind == "fire":
                vm.function(i).notify(v)
            elif kind == "move":
                vm.set_guest_affinity(i, v, a[3] % vm.desc["guest_ncpus"])
            elif kind == "mask":
                vm.guest.irq.disable_irq(vm.guest_irq(i, v))
                depth[i, v] = depth.get((i, v), 0) + 1
            elif depth.get((i, v)):
                vm.guest.irq.enable_irq(vm.guest_irq(i, v))
                depth[i, v] -= 1
            out.append((kind, vm.run()))
        out.append(vm.run())
    records = [(r.time_ns, r.name, repr(sorted(r.fields.items()))) for r in rec.records]
    snap = _snapshot(vm)
    vm.shutdown()
    return out, records, snap


@pytest.mark.parametrize("desc", [
    ASSIGNED, dict(ASSIGNED, gicv4=True), dict(ASSIGNED, vsmmu=None),
    EMULATED, dict(EMULATED, gicv4=True)],
    ids=["accel", "accel-gicv4", "paging", "emulated", "emulated-gicv4"])
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(actions=st.lists(action, max_size=14))
def test_skipping_idle_hooks_changes_nothing(desc, actions):
    trace.reset()
    try:
        slow = _play(desc, False, actions)
        fast = _play(desc, True, actions)
    finally:
        trace.reset()
    assert fast[0] == slow[0]
    assert fast[2] == slow[2]
    assert fast[1] == slow[1]


def test_fires_are_delivered_with_the_idle_hooks_skipped():
    vm = VirtualMachine(**ASSIGNED).boot()
    assert vm.fast_idle
    spurious = [c.stats["spurious"] for c in vm.guest.gic.cpuifs]
    fn = vm.host_function(0)
    for v in range(4):
        fn.notify(v)
        assert vm.run() == 1
    assert vm.run() == 0
    # every pass counted one spurious acknowledge per online vCPU, skipped or not
    assert all(c.stats["spurious"] > s for c, s in zip(vm.guest.gic.cpuifs, spurious,
                                                         strict=True))
