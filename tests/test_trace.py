"""Tracepoints and the deterministic scheduler.

Expected values come from the architecture and the machine's memory map, never from the
code under test: the doorbell is GITS_TRANSLATER = ITS base 0x08080000 + 0x10040; a
device's StreamID / DeviceID is its requester ID (bus << 8 | devfn: 00:01.0 is 0x8); the
host kernel's driver allocates LPIs from 8192; ITS command opcodes and layouts are the
GICv3 architecture's; names are QEMU's (hw/arm/trace-events, hw/intc/trace-events) and
Linux's (include/trace/events/irq.h, kvm.h, arch/arm64/kvm/vgic/trace.h).
"""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_kvm_vgic import Guest, mapc, mapd, mapti, movi

from pymsi import sched, trace
from pymsi.errors import AlreadyExists, InvalidArgument
from pymsi.kernel.dma_iommu import DmaDirection
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.machine import ArmVirt
from pymsi.uapi import kvm as K

DOORBELL = 0x0808_0000 + 0x10040
RID = 0 << 8 | 1 << 3 | 0                     # 00:01.0, the first device on ArmVirt
LPI_BASE = 8192


@pytest.fixture(autouse=True)
def clean_trace():
    trace.reset()
    yield
    trace.reset()


def host(nvec=4, smmu="s1"):
    m = ArmVirt(devices=[{"msix": nvec}], smmu=smmu)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], nvec)
    return m, k, drv


# -- the API ------------------------------------------------------------------------------------


def test_everything_is_off_by_default_and_off_is_silent():
    assert trace.enabled_names() == []
    m, k, drv = host()
    assert all(not tp.enabled for tp in trace.tracepoints())
    assert len(trace.tracepoints("smmuv3_*")) >= 4 and trace.tracepoints("gicv3_its_cmd_*")
    out = io.StringIO()
    with trace.Recorder(stream=out) as rec:
        for v in range(4):
            m.functions[0].notify(v)
        k.handle_interrupts()
    assert all(len(drv.fired[v]) == 1 for v in range(4))       # it did run
    assert len(rec) == 0 and out.getvalue() == ""


def test_enable_and_disable_by_glob():
    changed = trace.enable("smmuv3_translate_*")
    assert "smmuv3_translate_success" in changed and "smmuv3_translate_abort" in changed
    assert all(n.startswith("smmuv3_translate_") for n in changed)
    assert trace.get("smmuv3_translate_success").enabled
    assert not trace.get("smmuv3_record_event").enabled
    trace.enable("gicv3_its_cmd_movi, kvm_set_irq")              # a list, spaces ignored
    assert trace.get("gicv3_its_cmd_movi").enabled and trace.get("kvm_set_irq").enabled
    assert not trace.get("gicv3_its_cmd_mapd").enabled
    trace.enable("*,-gicv3_*")                                    # all but the GIC's
    assert trace.get("irq_handler_entry").enabled
    assert not trace.get("gicv3_its_cmd_movi").enabled
    assert trace.disable("smmuv3_*") and not trace.get("smmuv3_translate_success").enabled
    assert trace.get("irq_handler_entry").enabled
    trace.disable("*")
    assert trace.enabled_names() == []


def test_patterns_apply_to_tracepoints_defined_later():
    trace.enable("test_later_*")
    tp = trace.Tracepoint("test_later_one", "x")
    assert tp.enabled
    assert trace.Tracepoint("test_later_one", "x") is tp          # defined once
    with pytest.raises(AlreadyExists):
        trace.Tracepoint("test_later_one", "y")
    with pytest.raises(InvalidArgument):
        trace.Tracepoint("Bad-Name")
    with trace.Recorder() as rec:
        tp(x=1)
        with pytest.raises(InvalidArgument):                      # an undeclared field
            tp(z=1)
    assert [(r.name, r.fields) for r in rec] == [("test_later_one", {"x": 1})]


def test_bad_patterns_are_errors():
    for bad in ("", " , ", "-", ["smmuv3_*", 3]):
        with pytest.raises(InvalidArgument):
            trace.enable(bad)


def test_record_context_restores_the_previous_state():
    trace.enable("kvm_*")
    with trace.record("smmuv3_*,-kvm_set_irq") as rec:
        assert trace.get("smmuv3_translate_success").enabled
        assert not trace.get("kvm_set_irq").enabled
        trace.get("smmuv3_cmdq_opcode")(opcode="CMD_SYNC", sid=0)
    assert not trace.get("smmuv3_translate_success").enabled
    assert trace.get("kvm_set_irq").enabled and trace.get("kvm_msi_set_irq").enabled
    assert [r.name for r in rec] == ["smmuv3_cmdq_opcode"]
    trace.get("smmuv3_cmdq_opcode")(opcode="CMD_SYNC", sid=0)    # disabled: not recorded
    assert len(rec) == 1


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]),
                       st.one_of(st.integers(-2**64, 2**64), st.text(), st.booleans(),
                                 st.none(), st.binary(max_size=8)), min_size=1))
def test_json_lines_round_trip(fields):
    tp = trace.Tracepoint("test_json", "a", "b", "c")
    trace.enable("test_json")
    out = io.StringIO()
    rec = trace.Recorder(clock=lambda: 1234, stream=out).start()
    try:
        tp(**fields)
        tp(**fields)
    finally:
        rec.stop()
        trace.reset()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines == rec.to_jsonl().splitlines()
    for seq, line in enumerate(lines):
        d = json.loads(line)
        assert d["name"] == "test_json" and d["seq"] == seq and d["time_ns"] == 1234
        want = {k: v.hex() if isinstance(v, bytes) else v for k, v in fields.items()}
        assert d["fields"] == want
    assert trace.load_jsonl(out.getvalue())[1].fields == json.loads(lines[1])["fields"]


def test_write_jsonl_to_a_file(tmp_path):
    m, k, drv = host()
    with trace.record("smmuv3_translate_success") as rec:
        m.functions[0].notify(2)
    path = str(tmp_path / "t.jsonl")
    rec.write_jsonl(path)
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [d["name"] for d in lines] == ["smmuv3_translate_success"]
    assert lines[0]["fields"]["sid"] == RID and lines[0]["fields"]["translated"] == DOORBELL


# -- the call sites: hardware ------------------------------------------------------------------


def test_one_interrupt_on_the_host_step_by_step():
    """SMMU translation -> ITS translation -> LPI pending on a CPU -> the handler on that CPU."""
    m, k, drv = host()
    addr, data, _ = m.functions[0].msix_entry(1)
    with trace.record("msi_send_message,smmuv3_translate_success,gicv3_its_translation_write,"
                      "gicv3_redist_process_lpi,irq_handler_entry") as rec:
        m.functions[0].notify(1)
        k.handle_interrupts()
    names = [r.name for r in rec]
    assert names == ["msi_send_message", "smmuv3_translate_success",
                     "gicv3_its_translation_write", "gicv3_redist_process_lpi",
                     "irq_handler_entry"]
    send, smmu, its, lpi, entry = (r.fields for r in rec)
    assert send == {"rid": RID, "vector": 1, "address": addr, "data": data}
    assert smmu["sid"] == RID and smmu["iova"] == addr and smmu["translated"] == DOORBELL
    assert smmu["stage"] == 1 and smmu["is_write"] is True
    assert its == {"requester_id": RID, "data": data}
    assert lpi["irq"] >= LPI_BASE and lpi["level"] == 1
    assert entry["kernel"] == "host" and entry["cpu"] == lpi["cpu"] == drv.fired[1][0]
    assert entry["irq"] == drv.irqs[1] and entry["name"].endswith("-1")
    assert [r.seq for r in rec] == [0, 1, 2, 3, 4]


def test_its_commands_are_traced_with_their_fields():
    m = ArmVirt(devices=[{"msix": 2}], smmu=None)
    k = m.boot()
    with trace.record("gicv3_its_cmd_*") as rec:
        drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    mapd_ = rec.named("gicv3_its_cmd_mapd")
    assert [r.fields["devid"] for r in mapd_] == [RID] and mapd_[0].fields["valid"] == 1
    mapti_ = rec.named("gicv3_its_cmd_mapti")
    assert sorted(r.fields["eventid"] for r in mapti_) == [0, 1]
    assert all(r.fields["devid"] == RID and r.fields["intid"] >= LPI_BASE for r in mapti_)
    with trace.record("gicv3_its_cmd_movi") as rec:
        k.irq.write_smp_affinity(drv.irqs[1], "4")               # CPU 2
    (mv,) = rec.records
    assert mv.fields["devid"] == RID and mv.fields["eventid"] == 1


def test_its_command_errors_and_dropped_translations():
    m = ArmVirt(devices=[{"msix": 1}], smmu=None)
    m.boot()
    with trace.record("gicv3_its_translation_*") as rec:
        m.its.translate(0x77, 5)                                  # nothing mapped
    assert [r.name for r in rec] == ["gicv3_its_translation_write",
                                     "gicv3_its_translation_error"]
    assert rec.records[1].fields["requester_id"] == 0x77 and rec.records[1].fields["error"]


def test_a_dma_fault_is_traced_as_abort_and_event():
    m, k, drv = host()
    dev = k.pci.devices[0]
    buf = k.mm.alloc(0x1000, 0x1000)
    iova = k.dma_iommu.map_page(dev, buf, 0x1000, DmaDirection.BIDIRECTIONAL)
    k.dma_iommu.unmap_page(dev, iova, 0x1000)
    with trace.record("smmuv3_translate_abort,smmuv3_record_event") as rec:
        assert not m.bus.dma_write(dev.rid, iova, 1, 4).ok
    abort, event = rec.named("smmuv3_translate_abort"), rec.named("smmuv3_record_event")
    assert abort[0].fields == {"sid": RID, "addr": iova, "is_write": True,
                               "event": "F_TRANSLATION"}
    assert event[0].fields == {"type": "F_TRANSLATION", "sid": RID, "addr": iova,
                               "recorded": True}


def test_batch_translations_are_traced_one_by_one():
    import numpy as np

    m, k, drv = host()
    addr = m.functions[0].msix_entry(0)[0]
    sids = np.array([RID, RID], dtype=np.uint32)
    iovas = np.array([addr, 0x7_0000_0000], dtype=np.uint64)
    pa, status = np.zeros(2, np.uint64), np.zeros(2, np.int32)
    with trace.record("smmuv3_translate_*") as rec:
        assert m.smmu.translate_batch(sids, iovas, pa, status, write=True) == 1
    assert [r.name for r in rec] == ["smmuv3_translate_success", "smmuv3_translate_abort"]
    assert int(pa[0]) == DOORBELL


# -- the call sites: KVM -----------------------------------------------------------------------


def test_kvm_and_vgic_its_tracepoints():
    k = ArmVirt(devices=[{"msix": 4}], smmu=None).boot()
    g = Guest(k)
    itt = 0x4000_0000 + 0x80000
    with trace.record("vgic_*,kvm_*") as rec:
        g.cmds(mapd(5, 4, itt), mapc(3, 1), mapti(5, 2, LPI_BASE + 9, 3))
        assert g.signal(5, 2) == 1
        ef = k.eventfd(0)
        efd = ef.fd
        g.route(40, 5, 2)
        g.irqfd(efd, 40)
        ef.write((1).to_bytes(8, "little"))
        g.cmds(movi(5, 2, 3))
        g.k.ioctl(g.vm, K.KVM_IRQFD, K.KvmIrqfd(fd=efd, gsi=40, flags=K.KVM_IRQFD_FLAG_DEASSIGN))
    names = [r.name for r in rec]
    assert names[:3] == ["vgic_its_cmd_mapd", "vgic_its_cmd_mapc", "vgic_its_cmd_mapi"]
    assert rec.records[0].fields == {"device_id": 5, "valid": 1, "num_eventid_bits": 4,
                                     "itt_addr": itt}
    assert rec.records[1].fields == {"collection_id": 3, "valid": 1}
    msi = rec.named("kvm_msi_set_irq")
    assert msi[0].fields == {"address": DOORBELL, "data": 2, "devid": 5}
    trig = rec.named("vgic_its_trigger_msi")
    assert trig[0].fields == {"its": 0x0808_0000, "device_id": 5, "event_id": 2, "ret": 0}
    pend = rec.named("vgic_update_irq_pending")
    assert pend[0].fields == {"vcpu_id": 1, "irq": LPI_BASE + 9, "level": True}
    assert rec.named("kvm_irqfd_assign")[0].fields == {"fd": efd, "gsi": 40, "flags": 0}
    assert rec.named("kvm_irqfd_wakeup") and rec.named("kvm_set_irq")[0].fields["gsi"] == 40
    assert rec.named("vgic_its_cmd_movi")[0].fields == {"device_id": 5, "event_id": 2,
                                                        "collection_id": 3}
    assert rec.named("kvm_irqfd_deassign")[0].fields == {"fd": efd, "gsi": 40}
    # the injection through the irqfd comes after its wakeup, through the same route (the
    # vITS's verdict is traced when it is known, after the LPI it made pending)
    i = names.index("kvm_irqfd_wakeup")
    assert names[i:i + 5] == ["kvm_irqfd_wakeup", "kvm_set_irq", "kvm_msi_set_irq",
                              "vgic_update_irq_pending", "vgic_its_trigger_msi"]


# -- the scheduler -----------------------------------------------------------------------------


def test_events_run_in_time_order_then_in_the_order_scheduled():
    s = sched.Scheduler()
    out = []
    s.schedule(30, out.append, "c")
    s.schedule(10, out.append, "a1")
    s.schedule(10, out.append, "a2")
    ev = s.schedule(20, out.append, "b")
    s.schedule_at(10, lambda: s.schedule(0, out.append, "a3"))
    ev.cancel()
    r = s.run()
    assert out == ["a1", "a2", "a3", "c"] and r.quiescent and r.time_ns == 30 == s.now()
    assert s.pending == 0


def test_run_until_a_time_and_for_a_while():
    s = sched.Scheduler()
    out = []
    for t in (5, 15, 25):
        s.schedule(t, lambda t=t: out.append(s.now()))
    r = s.run(until_ns=15)
    assert out == [5, 15] and not r.quiescent and s.now() == 15
    r = s.run(for_ns=5)
    assert out == [5, 15] and s.now() == 20
    assert s.run().quiescent and out == [5, 15, 25]
    assert s.run(for_ns=100).quiescent and s.now() == 125
    with pytest.raises(InvalidArgument):
        s.run(until_ns=0)
    for bad in (-1, 1.5, "1"):
        with pytest.raises(InvalidArgument):
            s.schedule(bad, print)


def test_idle_hooks_run_until_quiescent_and_a_livelock_stops():
    s = sched.Scheduler()
    work = [3]

    def hook():
        if work[0]:
            work[0] -= 1
            return True
        return False

    s.add_idle_hook(hook)
    r = s.run()
    assert r.quiescent and r.polls == 3 and work == [0]

    def rearm():
        s.schedule(1, rearm)

    s.schedule(0, rearm)
    r = s.run(max_events=50)
    assert not r.quiescent and r.events == 50 and s.now() == 49


def storm(seed, nvec=8, n=40):
    """Random vectors fired at random times on a host machine; the trace of it all."""
    m, k, drv = host(nvec)
    s = sched.Scheduler(seed)
    s.add_idle_hook(k.handle_interrupts)
    for _ in range(n):
        s.schedule(s.rng.randrange(1, 10_000), m.functions[0].notify, s.rng.randrange(nvec))
    with trace.record("smmuv3_translate_success,gicv3_*,irq_handler_entry",
                      clock=s.now) as rec:
        r = s.run()
    assert r.quiescent
    assert sum(len(v) for v in drv.fired.values()) == n
    return rec.to_jsonl()


def test_the_same_seed_gives_the_same_trace():
    a, b = storm(1234), storm(1234)
    assert a == b and len(a.splitlines()) >= 40 * 4
    times = [json.loads(line)["time_ns"] for line in a.splitlines()]
    assert times == sorted(times) and times[-1] > 0
    assert storm(99) != a


def test_the_trace_clock_follows_the_scheduler():
    s = sched.Scheduler()
    old = s.install_trace_clock()
    try:
        tp = trace.Tracepoint("test_clock", "x")
        trace.enable("test_clock")
        with trace.Recorder() as rec:
            s.schedule(700, lambda: tp(x=1))
            s.run()
        assert rec.records[0].time_ns == 700
    finally:
        trace.set_clock(old)


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=60),
       st.integers(0, 2**32))
def test_any_schedule_runs_in_time_then_issue_order(items, seed):
    s = sched.Scheduler(seed)
    ran = []
    events = []
    for i, (delay, cancel) in enumerate(items):
        events.append((s.schedule(delay, ran.append, i), cancel))
    for ev, cancel in events:
        if cancel:
            ev.cancel()
    r = s.run()
    want = sorted((d, i) for i, (d, c) in enumerate(items) if not c)
    assert ran == [i for _, i in want] and r.quiescent and r.events == len(want)
    assert s.now() == (max(d for d, _ in want) if want else 0)
