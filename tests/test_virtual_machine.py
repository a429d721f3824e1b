"""VirtualMachine: the description (keys, values, TOML), boot, run, and delivery end to end.

The expected (vector, vCPU) of every interrupt comes from what the guest reports through
/proc (effective_affinity), never from the model's internal tables.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pymsi.machine import VirtualMachine, load
from pymsi.machine.virtual import DEFAULTS

# -- the description ------------------------------------------------------------------------


@pytest.mark.parametrize("desc,named", [
    ({"vsmmus": "accel"}, "vsmmus"),
    ({"vsmmu": "fast"}, "vsmmu"),
    ({"variant": "per_vector"}, "variant"),
    ({"gicv4": "yes"}, "gicv4"),
    ({"guest_ncpus": 0}, "guest_ncpus"),
    ({"ncpus": True}, "ncpus"),
    ({"guest_ram": 0x1000}, "guest_ram"),
    ({"guest_ram": 0x40_0800}, "guest_ram"),
    ({"backend": "rust"}, "backend"),
    ({"devices": {"msix": 8}}, "devices"),
    ({"devices": [{"msix": 8, "msi_x": 2}]}, "msi_x"),
    ({"devices": [{"msix": 0}]}, "devices[0].msix"),
    ({"devices": [{"msix": 8}, {"msix": 2049}]}, "devices[1].msix"),
    ({"devices": [{"emulated": "no"}]}, "devices[0].emulated"),
    ({"devices": [3]}, "devices[0]"),
    ({"vsmmu": "accel", "devices": [{"msix": 2}, {"msix": 2, "emulated": True}]},
     "devices[1].emulated"),
    ({"vsmmu": "emulated", "devices": [{"msix": 2}]}, "devices[0]"),
])
def test_bad_description_is_a_value_error_naming_it(desc, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        VirtualMachine(**desc)


def test_defaults():
    vm = VirtualMachine()
    assert vm.vsmmu is None and vm.gicv4 is False and vm.variant == "per-vector"
    assert [s.spec for s in vm.slots] == [{"msix": 8}]
    assert not vm.slots[0].emulated
    assert set(vm.desc) == set(DEFAULTS)
    with pytest.raises(RuntimeError, match="boot"):
        vm.run()


def test_toml(tmp_path):
    p = tmp_path / "machine.toml"
    p.write_text('vsmmu = "none"\ngicv4 = true\nvariant = "sw-msi"\nguest_ncpus = 3\n'
                 "[[devices]]\nmsix = 4\nemulated = true\n[[devices]]\nmsi = 2\n")
    vm = load(str(p))
    assert vm.vsmmu is None and vm.gicv4 and vm.variant == "sw-msi"
    assert vm.desc["guest_ncpus"] == 3
    assert [s.spec for s in vm.slots] == [{"msix": 4, "emulated": True}, {"msi": 2}]
    p.write_text('vsmmu = "accel"\n[machine]\nfoo = 1\n')
    with pytest.raises(ValueError, match="machine must be one of .*, not {'foo': 1}"):
        load(str(p))
    p.write_text("[[devices]]\nmsix = 4\nfast = true\n")
    with pytest.raises(ValueError, match="'fast'"):
        load(str(p))
    p.write_text("vsmmu = \n")
    with pytest.raises(ValueError, match="machine.toml"):
        load(str(p))


# -- boot and delivery (VMM-emulated devices: no assignment involved) ---------------------------

def emulated_vm(**kw):
    kw.setdefault("devices", [{"msix": 8, "emulated": True}, {"msix": 3, "emulated": True}])
    kw.setdefault("guest_ncpus", 3)
    kw.setdefault("guest_ram", 0x80_0000 if kw.get("vsmmu") else 0x40_0000)   # + SMMU queues
    return VirtualMachine(**kw).boot()


def fire_all(vm):
    for i, s in enumerate(vm.slots):
        for v in range(s.test.nvec):
            vm.function(i).notify(v)


def test_every_vector_delivered_once_to_its_handler_and_vcpu():
    vm = emulated_vm()
    assert "pci-endpoint-test" in vm.guest.sysfs_read(
        f"/sys/bus/pci/devices/{vm.slots[0].guest_pdev.bdf}/driver")
    fire_all(vm)
    assert vm.run() == 11
    for i, s in enumerate(vm.slots):
        assert sorted(s.test.hits) == [(v, vm.guest_cpu_of(i, v)) for v in range(s.test.nvec)]
    assert vm.run() == 0                              # quiescent: nothing more comes


def test_boot_twice_and_host_function_of_an_emulated_device():
    vm = emulated_vm(devices=[{"msix": 2, "emulated": True}])
    with pytest.raises(RuntimeError):
        vm.boot()
    with pytest.raises(ValueError, match="emulated"):
        vm.host_function(0)
    assert vm.guest_function(0) is vm.function(0)


def test_guest_affinity_moves_interrupts_and_keeps_the_message():
    vm = emulated_vm(devices=[{"msix": 4, "emulated": True}], guest_ncpus=4)
    fn = vm.function(0)
    before = [fn.msix_entry(v) for v in range(4)]
    for v, cpu in ((0, 3), (1, 3), (2, 0), (3, 2), (0, 1)):
        vm.set_guest_affinity(0, v, cpu)
        assert vm.guest_cpu_of(0, v) == cpu
        fn.notify(v)
        assert vm.run() == 1
        assert vm.endpoint(0).hits[-1] == (v, cpu)
    assert [fn.msix_entry(v) for v in range(4)] == before


# -- a state machine of guest-level actions -------------------------------------------------

class GuestActions(RuleBasedStateMachine):
    """Fire vectors, move them between vCPUs, mask / unmask them in the guest; after every
    step each fired, unmasked vector was handled exactly once on the vCPU /proc shows, and a
    masked one exactly once after its unmask."""

    @initialize(nvec=st.integers(1, 6), ncpus=st.integers(1, 4),
                vsmmu=st.sampled_from([None, "emulated"]))
    def boot(self, nvec, ncpus, vsmmu):
        self.vm = emulated_vm(devices=[{"msix": nvec, "emulated": True}], guest_ncpus=ncpus,
                              vsmmu=vsmmu)
        self.ncpus = ncpus
        self.nvec = nvec
        self.expected: list[tuple[int, int]] = []
        self.depth: dict[int, int] = {}          # disable_irq() depth per vector
        self.held: dict[int, int] = {}            # masked vector -> fired (pending) count

    def _cpu(self, v):
        return self.vm.guest_cpu_of(0, v)

    @rule(data=st.data())
    def fire(self, data):
        v = data.draw(st.integers(0, self.nvec - 1))
        self.vm.function(0).notify(v)
        self.vm.run()
        if self.depth.get(v):
            self.held[v] = 1                      # one pending bit, however many fires
        else:
            self.expected.append((v, self._cpu(v)))

    @rule(data=st.data())
    def move(self, data):
        v = data.draw(st.integers(0, self.nvec - 1))
        cpu = data.draw(st.integers(0, self.ncpus - 1))
        self.vm.set_guest_affinity(0, v, cpu)
        assert self._cpu(v) == cpu

    @rule(data=st.data())
    def mask(self, data):
        """disable_irq(): nested, the vector masked in the device on the first."""
        v = data.draw(st.integers(0, self.nvec - 1))
        self.vm.guest.irq.disable_irq(self.vm.guest_irq(0, v))
        self.depth[v] = self.depth.get(v, 0) + 1

    @rule(data=st.data())
    def unmask(self, data):
        """enable_irq(): the last one unmasks; a message held pending is sent then."""
        v = data.draw(st.integers(0, self.nvec - 1))
        if not self.depth.get(v):
            return
        self.vm.guest.irq.enable_irq(self.vm.guest_irq(0, v))
        self.depth[v] -= 1
        self.vm.run()
        if not self.depth[v] and self.held.pop(v, 0):
            self.expected.append((v, self._cpu(v)))

    @invariant()
    def delivered_exactly_as_expected(self):
        if hasattr(self, "vm"):
            assert self.vm.endpoint(0).hits == self.expected


TestGuestActions = GuestActions.TestCase
TestGuestActions.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


# -- the emulated vSMMU with the example device models ---------------------------------------

from pymsi import trace  # noqa: E402

MODELS = [{"model": "edu", "emulated": True}, {"model": "nic", "queues": 16, "emulated": True}]


@pytest.mark.parametrize("variant", ["per-vector", "sw-msi"])
@pytest.mark.parametrize("gicv4", [False, True])
def test_emulated_vsmmu_every_vector_of_edu_and_nic_through_the_guests_stage1(gicv4, variant):
    """Emulated devices signal through the VMM (KVM_SIGNAL_MSI): the host's GIC and MSI
    design play no part, so every configuration delivers."""
    vm = emulated_vm(vsmmu="emulated", devices=MODELS, gicv4=gicv4, variant=variant)
    assert vm.vsmmu_model is not None and vm.vsmmu_model.mode == "emulated"
    assert [s.test.nvec for s in vm.slots] == [1, 16]
    for i, s in enumerate(vm.slots):
        for v in range(s.test.nvec):
            addr, data, _ = vm.function(i).msix_entry(v)
            assert addr != 0x0809_0040                       # a guest IOVA, not the doorbell
            # the guest's own stage 1 takes it to the vITS doorbell page
            assert vm.vsmmu_model.translate_msi(s.guest_fn.rid, addr) == 0x0809_0040
    fire_all(vm)
    assert vm.run() == 17
    for i, s in enumerate(vm.slots):
        assert sorted(s.test.hits) == [(v, vm.guest_cpu_of(i, v)) for v in range(s.test.nvec)]
    assert vm.guest.smmu.events == []


def test_edu_raises_its_interrupt_when_the_guest_asks_it_to():
    """The guest writes edu's INTR_RAISE register (BAR0 0x60): MSI-X vector 0, through the
    vSMMU, to the guest's handler."""
    vm = emulated_vm(vsmmu="emulated", devices=MODELS[:1])
    pdev = vm.slots[0].guest_pdev
    bar0 = pdev.bar_address(0) if hasattr(pdev, "bar_address") else None
    bar0 = bar0 if bar0 is not None else vm.slots[0].guest_fn.bar_address(0)
    vm.guest.bus.write(bar0 + 0x60, 0x1, 4)
    assert vm.run() == 1 and vm.endpoint(0).hits == [(0, vm.guest_cpu_of(0, 0))]
    assert vm.guest.bus.read(bar0 + 0x24, 4) == 0x1          # INTR_STATUS


def test_guest_stage1_fault_on_the_msi_path_lands_in_the_guests_event_queue():
    vm = emulated_vm(vsmmu="emulated", devices=MODELS[1:])
    s = vm.slots[0]
    addr, _, _ = s.guest_fn.msix_entry(3)
    domain = s.guest_pdev.iommu_group.default_domain
    page = addr & ~0xFFF
    vm.guest.iommu.unmap(domain, page, 0x1000)               # the guest drops its MSI page
    domain.flush_iotlb_all()
    s.guest_fn.notify(3)
    assert vm.run() == 0 and s.test.hits == []
    assert [(e.sid, e.iova, e.read) for e in vm.guest.smmu.events] == [
        (s.guest_fn.rid, addr, False)]


def nic_rings(vm, i=0, entries=64):
    """What a NIC driver does at open: a DMA-mapped ring per queue, then CTRL.ENABLE."""
    from pymsi.devices.nic import CTRL_ENABLE, NIC_CTRL, QUEUE_BASE, QUEUE_STRIDE
    from pymsi.kernel.dma_iommu import DmaDirection

    g, s = vm.guest, vm.slots[i]
    pdev, nq = s.guest_pdev, s.guest_fn.queues
    size = nq * entries * 16
    phys = g.mm.alloc(size, 0x1000)
    iova = g.dma_iommu.map_page(pdev, phys, size, DmaDirection.BIDIRECTIONAL)
    bar = s.guest_fn.bar_address(0)
    for q in range(nq):
        g.bus.write(bar + QUEUE_BASE + q * QUEUE_STRIDE, iova + q * entries * 16, 8)
        g.bus.write(bar + QUEUE_BASE + q * QUEUE_STRIDE + 8, entries, 4)
    g.bus.write(bar + NIC_CTRL, CTRL_ENABLE, 4)
    return phys


def test_runs_repeat_from_a_seed():
    """NIC packets arriving at random times on random queues: the same seed gives the
    same trace; the handlers saw one interrupt per packet."""
    def one(seed):
        vm = emulated_vm(vsmmu="emulated", devices=MODELS[1:], seed=seed)
        nic = vm.function(0)
        nic_rings(vm)
        rng = vm.sched.rng
        for _ in range(20):
            nic.receive_later(rng.randrange(1, 10_000), rng.randrange(16))
        with trace.record("irq_handler_entry", clock=vm.sched.now) as rec:
            vm.run()
        return [(r.time_ns, r.fields) for r in rec.records], vm.endpoint(0).hits

    a, b, c = one(7), one(7), one(8)
    assert a == b and a != c
    records, hits = a
    assert len(hits) == 20                                   # one interrupt per packet
    guest = [f for _, f in records if f["kernel"] == "guest"]
    assert [(f["cpu"]) for f in guest] == [cpu for _, cpu in hits]
    assert [t for t, _ in records] == sorted(t for t, _ in records) and records[-1][0] > 0


@pytest.mark.parametrize("variant", ["per-vector", "sw-msi"])
def test_a_dropped_machine_is_freed(variant):
    """Nothing global keeps a machine alive once its user drops it: a long fuzzing run
    builds thousands (the VMM's doorbell registry once held each iommufd file, and with
    it the whole host, from a class-level table)."""
    import gc
    import weakref

    def build():
        vm = VirtualMachine(variant=variant, vsmmu="accel",
                            devices=[{"model": "nic", "queues": 2}]).boot()
        vm.host_function(0).notify(0)
        vm.run()
        assert vm.endpoint(0).hits
        return weakref.ref(vm.host), weakref.ref(vm)

    host, vm = build()
    gc.collect()
    assert host() is None and vm() is None
