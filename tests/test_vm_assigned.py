"""The whole stack with assigned devices: the physical edu and NIC functions, through
vfio-pci in the VMM, to the guest's handlers -- under every MSI design, nested
(accelerated vSMMU) and not, with and without GICv4.

Expected outcomes are stated here from the design table in DESIGN.md section 4 and the
README's invariant table (what ``pymsi compare`` shows on the host alone), and the
(vector, vCPU) each interrupt must reach comes from what the guest reports through
/proc -- never from the model's own tables.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from pymsi import trace
from pymsi.kernel.msi import MsiMsg
from pymsi.machine import VirtualMachine
from pymsi.machine.platforms import MSI_DESIGNS
from pymsi.testing.machines import AssignedGuest

DOORBELL_GPA = 0x0809_0040
SW_MSI = 0x0800_0040                # the host's SW_MSI window, first page + GITS_TRANSLATER
MODELS = [{"model": "edu"}, {"model": "nic", "queues": 16}]

#: (vsmmu, design) that cannot deliver: the guest's MSI address is a gIOVA under nesting,
#: and these designs put the doorbell where the guest's stage 1 does not lead (README:
#: "preset | nested | BROKEN", "dma-cookie | nested | BROKEN").
BROKEN = {("accel", "preset"), ("accel", "dma-cookie")}


def boot(**kw):
    kw.setdefault("devices", MODELS)
    kw.setdefault("guest_ncpus", 3)
    return VirtualMachine(**kw).boot()


def fire_all(vm):
    for i, s in enumerate(vm.slots):
        for v in range(s.test.nvec):
            vm.host_function(i).notify(v)


def expected(vm, i):
    return [(v, vm.guest_cpu_of(i, v)) for v in range(vm.endpoint(i).nvec)]


def host_smmu_events(vm):
    return vm.machine.smmu.stats["events_recorded"]


@pytest.mark.parametrize("design", MSI_DESIGNS)
@pytest.mark.parametrize("gicv4", [False, True])
@pytest.mark.parametrize("vsmmu", [None, "accel"])
def test_every_vector_of_both_devices_once_to_its_handler_and_vcpu(vsmmu, gicv4, design):
    vm = boot(vsmmu=vsmmu, gicv4=gicv4, variant=design)
    assert [s.test.nvec for s in vm.slots] == [1, 16]
    guest_addr = vm.guest_function(1).msix_entry(0)[0]
    phys_addr = vm.host_function(1).msix_entry(0)[0]
    if vsmmu is None:
        assert guest_addr == DOORBELL_GPA                  # no vIOMMU: the doorbell GPA
    else:
        assert guest_addr != DOORBELL_GPA                  # a guest IOVA (its MSI page)
    # where the physical function writes, per design
    if design == "per-vector":
        assert phys_addr == guest_addr                     # the VMM's (= guest's) address
    elif design == "preset" and vsmmu is None:
        assert phys_addr == guest_addr
    elif design in ("sw-msi", "dma-cookie") and not (design == "dma-cookie" and vsmmu):
        assert phys_addr == SW_MSI                         # the kernel's window
    events = host_smmu_events(vm)
    fire_all(vm)
    handled = vm.run()
    if (vsmmu, design) in BROKEN:
        assert handled == 0
        assert all(s.test.hits == [] for s in vm.slots)
        assert host_smmu_events(vm) - events == 17          # every write faulted, recorded
        return
    assert handled == 17
    for i in range(2):
        assert sorted(vm.endpoint(i).hits) == expected(vm, i)
    assert host_smmu_events(vm) == events
    assert vm.run() == 0
    if gicv4:                                               # straight into the vPEs
        direct = sum(c.stats["direct_acks"] for c in vm.board.gic.cpus)
        assert direct == 17


@pytest.mark.parametrize("gicv4", [False, True])
@pytest.mark.parametrize("vsmmu", [None, "accel"])
def test_guest_affinity_moves_the_interrupt_and_the_address_stays(vsmmu, gicv4):
    """The guest's MOVI reaches KVM's vITS; with GICv4 KVM moves the vLPI on the host ITS
    (VMOVI, the path behind VFIO's back); without, the host has nothing to do."""
    vm = boot(vsmmu=vsmmu, gicv4=gicv4, variant="per-vector", guest_ncpus=4)
    nic = vm.host_function(1)
    before = [nic.msix_entry(v)[:2] for v in range(16)]
    for v, cpu in ((0, 3), (5, 3), (0, 1), (15, 0), (5, 2), (0, 3)):
        old = vm.guest_cpu_of(1, v)
        with trace.record("vgic_its_cmd_movi,gicv3_its_cmd_movi,gicv3_its_cmd_vmovi") as rec:
            vm.set_guest_affinity(1, v, cpu)
        moved = int(old != cpu)
        assert len(rec.named("vgic_its_cmd_movi")) == moved
        assert len(rec.named("gicv3_its_cmd_vmovi")) == (moved if gicv4 else 0)
        assert rec.named("gicv3_its_cmd_movi") == []
        assert vm.guest_cpu_of(1, v) == cpu
        nic.notify(v)
        assert vm.run() == 1
        assert vm.endpoint(1).hits[-1] == (v, cpu)
    assert [nic.msix_entry(v)[:2] for v in range(16)] == before


@pytest.mark.parametrize("vsmmu", [None, "accel"])
def test_guest_reprograms_a_vector(vsmmu):
    """The guest rewrites vector 2's message with vector 7's (masked while it writes): the
    VMM follows (route update; per-vector: the address re-described), and vector 2 of the
    device now raises the guest's event of vector 7 -- on vector 7's vCPU."""
    vm = boot(vsmmu=vsmmu, variant="per-vector")
    g = vm.guest
    descs = vm.slots[1].guest_pdev.msi_descs
    own = MsiMsg.of(descs[2].msg.address, descs[2].msg.data)
    g.msi.write_msg(descs[2], MsiMsg.of(descs[7].msg.address, descs[7].msg.data))
    vm.host_function(1).notify(2)
    assert vm.run() == 1
    assert vm.endpoint(1).hits == [(7, vm.guest_cpu_of(1, 7))]
    g.msi.write_msg(descs[2], own)
    vm.host_function(1).notify(2)
    assert vm.run() == 1 and vm.endpoint(1).hits[-1] == (2, vm.guest_cpu_of(1, 2))


@pytest.mark.parametrize("gicv4", [False, True])
@pytest.mark.parametrize("vsmmu", [None, "accel"])
def test_guest_resets_the_device_and_its_vectors_work_again(vsmmu, gicv4):
    vm = boot(vsmmu=vsmmu, gicv4=gicv4, variant="per-vector")
    resets = vm.guest_function(1).vstats.resets
    vm.slots[1].guest_pdev.reset_function()              # the guest's FLR, through VFIO
    assert vm.guest_function(1).vstats.resets == resets + 1
    fire_all(vm)
    assert vm.run() == 17
    for i in range(2):
        assert sorted(vm.endpoint(i).hits) == expected(vm, i)


def test_a_vmm_reset_leaves_the_physical_nic_quiet_as_the_guest_sees_it():
    """The VMM resets the assigned NIC (a machine reset: nobody restores it afterwards):
    the guest reads COMMAND 0, and the physical function is no bus master either and has
    no ring, so a packet arriving now is dropped without a DMA write (PCIe 6.6.2, QEMU's
    vfio_pci_pre_reset)."""
    vm = boot(vsmmu=None, variant="per-vector")
    nic = vm.host_function(1)
    assert nic.cfg_read(0x04, 2) & 0x6 == 0x6         # the guest driver enabled it
    vm.guest_function(1).reset()
    assert vm.guest_function(1).cfg_read(0x04, 2) == 0
    assert nic.cfg_read(0x04, 2) & 0x6 == 0           # Memory, Bus Master off
    writes = nic.dma_stats["writes"]
    assert not nic.receive(0)
    assert nic.dma_stats["writes"] == writes


def test_guest_stage1_fault_on_the_msi_path_reaches_the_guests_vsmmu_event_queue():
    """Accelerated vSMMU: the guest takes its MSI page away (unmap + TLBI, forwarded to the
    host); the physical function's MSI faults in the physical SMMU's stage 1, which is the
    guest's: the record crosses the vEVENTQ into the guest's event queue, with the vSID."""
    vm = boot(vsmmu="accel", variant="per-vector")
    s = vm.slots[1]
    addr = s.guest_fn.msix_entry(4)[0]
    domain = s.guest_pdev.iommu_group.default_domain
    vm.guest.iommu.unmap(domain, addr & ~0xFFF, 0x1000)
    domain.flush_iotlb_all()
    vm.host_function(1).notify(4)
    assert vm.run() == 0 and s.test.hits == []
    assert [(e.sid, e.iova, e.read) for e in vm.guest.smmu.events] == [
        (s.guest_fn.rid, addr, False)]
    assert vm.vsmmu_model.stats["events_propagated"] == 1


def test_sw_msi_nested_needs_the_guest_to_honour_the_rmr():
    """sw-msi under nesting only works because the guest identity-maps the host's window
    (the IORT RMR QEMU describes); a guest that ignores it faults the MSI in its own stage 1,
    and the record reaches its vSMMU event queue."""
    vm = boot(vsmmu="accel", variant="sw-msi", honour_rmr=False)
    vm.host_function(1).notify(0)
    assert vm.run() == 0
    assert [(e.sid, e.iova) for e in vm.guest.smmu.events] == [
        (vm.guest_function(1).rid, SW_MSI)]


@pytest.mark.parametrize("gicv4", [False, True])
@pytest.mark.parametrize("first_flr", [False, True])
def test_an_lpi_pending_while_disabled_across_an_flr(gicv4, first_flr):
    """The guest writes vector 1's message into vector 0's entry and disables vector 1's
    interrupt (which masks vector 1 in the device, not vector 0); vector 0 fires, so
    vector 1's LPI becomes pending while disabled.  The guest then resets the function
    (FLR) and enables the interrupt again.

    GICv3: the pending state is KVM's (pending_latch) and the interrupt is taken.  GICv4
    without ``first_flr``: the reprogramming found the LPI forwarded from host vector 1
    (kvm_vgic_v4_set_forwarding skips a mapped vLPI), and masking vector 1 unset that, so
    the MSI went through the irqfd into pending_latch, which the FLR's set_forwarding
    carries to the vPE: taken.  GICv4 with an FLR after the reprogramming: the VMM turns
    the vectors on again in order, so host vector 0 now forwards vector 1's LPI, the MSI
    lands in the vPE's pending table, and the second FLR unsets the forwarding with
    its_vlpi_unmap's DISCARD, clearing that bit with nothing carried back: lost, as on
    Linux."""
    vm = boot(vsmmu=None, gicv4=gicv4, variant="per-vector",
              devices=[{"model": "nic", "queues": 2}])
    descs = vm.slots[0].guest_pdev.msi_descs
    vm.guest.msi.write_msg(descs[0], MsiMsg.of(descs[1].msg.address, descs[1].msg.data))
    vm.run()
    if first_flr:
        vm.slots[0].guest_pdev.reset_function()
        vm.run()
    irq = vm.guest_irq(0, 1)
    vm.guest.irq.disable_irq(irq)
    vm.host_function(0).notify(0)
    vm.run()
    assert vm.endpoint(0).hits == []
    vm.slots[0].guest_pdev.reset_function()
    vm.run()
    vm.guest.irq.enable_irq(irq)
    vm.run()
    lost = gicv4 and first_flr
    assert vm.endpoint(0).hits == ([] if lost else [(1, vm.guest_cpu_of(0, 1))])


# -- a state machine of guest-level actions on assigned devices ---------------------------------

class NicGuest(AssignedGuest):
    """pymsi.testing's assigned-device guest machine: fire, move, mask / unmask,
    reprogram and reset from the guest, each interrupt taken once on its vCPU (GICv4
    forwarding and what an FLR does to a pending vLPI included)."""


TestAssignedGuest = NicGuest.TestCase
TestAssignedGuest.settings = settings(max_examples=30, stateful_step_count=15, deadline=None)


def test_a_nic_with_2048_vectors():
    """2048 vectors: an eventfd each in the VMM (two once masked), past the 1024
    descriptors of a login shell -- the VMM raises its RLIMIT_NOFILE to the hard limit
    first, as QEMU does."""
    vm = boot(vsmmu="accel", gicv4=True, variant="per-vector",
              devices=[{"model": "nic", "queues": 2048}])
    t = vm.endpoint(0)
    assert t.nvec == 2048
    nic = vm.host_function(0)
    for v in range(2048):
        nic.notify(v)
    assert vm.run() == 2048
    assert sorted(t.hits) == expected(vm, 0)
    assert len(vm.host.files) > 2048


def test_rlimit_nofile():
    from pymsi.machine import ArmVirt

    k = ArmVirt(smmu=None).boot()
    soft, hard = k.getrlimit_nofile()
    assert (soft, hard) == (1024, 524288)
    for bad in ((hard + 1, hard), (5, 4), (-1, 4), (True, 4)):
        with pytest.raises(OSError) as e:
            k.setrlimit_nofile(*bad)
        assert e.value.errno == (1 if bad[1] > hard else 22)
    with pytest.raises(OSError) as e:
        k.setrlimit_nofile(10, hard + 1)
    assert e.value.errno == 1                                 # EPERM: raising the hard limit
    k.setrlimit_nofile(5)
    assert k.getrlimit_nofile() == (5, hard)
    fds = [k.eventfd() for _ in range(2)]                    # 3 and 4
    with pytest.raises(OSError) as e:
        k.eventfd()
    assert e.value.errno == 24                                # EMFILE
    k.setrlimit_nofile(6, 6)                                  # lowering the hard limit is fine
    k.eventfd()
    with pytest.raises(OSError):
        k.setrlimit_nofile(7, 7)
    assert len(fds) == 2


@pytest.mark.parametrize("vsmmu,gicv4", [(None, False), ("accel", True)])
def test_the_vmm_exits_and_the_host_keeps_nothing_of_the_vm(vsmmu, gicv4):
    """The VMM gives back what it opened and mapped (and only that); the host state each
    of those held is checked on the host's side, object by object."""
    vm = boot(vsmmu=vsmmu, gicv4=gicv4, variant="per-vector")
    k = vm.host
    fire_all(vm)
    assert vm.run() == 17
    nvecs = [s.test.nvec for s in vm.slots]
    ictx = vm.vmm.iommufd.private_data                   # the host's side of the VMM's iommufd
    ioas = ictx.ioas(vm.vmm.ioas_id)
    kvm = k.kvm.vms[0]
    bystander = k.eventfd()                               # some other descriptor of the process
    bystander_va = k.mmap(0x1000)                         # and some other mapping
    k.user_write(bystander_va, b"keep")
    assert k.user_mm.pinned and ioas.areas and ictx.objects and kvm.irqfds
    bypass = getattr(k, "irqbypass", None)
    assert not gicv4 or (bypass is not None and bypass.consumers)
    vm.shutdown()
    # what the VMM held is gone on the host's side
    assert not k.kvm.vms and kvm.destroyed and not kvm.irqfds
    assert not ictx.objects and not ioas.areas           # HWPTs, vIOMMU, IOAS (its areas)
    assert not k.user_mm.pinned                          # guest RAM unpinned and unmapped
    assert bypass is None or not bypass.consumers        # KVM's irqfd consumers unregistered
    assert not any(isinstance(f.f_op, type(bystander.f_op)) and f is not bystander
                   for f in k.files.open_files().values())   # the VMM's eventfds closed
    # ... and nothing else: the process's other descriptor and mapping stay
    assert bystander.poll() is not None and bystander.write(1) == 8
    assert k.user_read(bystander_va, 4) == b"keep"
    assert set(k.files.open_files()) == {bystander.fd}
    for s, nvec in zip(vm.slots, nvecs, strict=True):
        fn = s.host_fn
        assert not fn.msix_enabled                      # vfio-pci turned it off and reset it
        assert all(fn.msix_entry(v)[2] & 1 for v in range(nvec))
    # the devices' DMA is blocked again: a write to where guest RAM was aborts
    for p in k.pci.devices:
        assert vm.machine.smmu.translate(p.rid, 0x4000_0000, write=True).pa is None
    with pytest.raises(RuntimeError):
        vm.run()


def test_after_exit_nothing_the_vm_left_reaches_the_hosts_reused_frames():
    """Guest RAM's host frames go back to the host at exit; the guest-physical view (which
    a guest kernel, board or vSMMU may still hold) must not alias them any more: the host
    reusing a frame is invisible through it, and a write through it does not land there."""
    vm = boot(vsmmu=None, variant="per-vector")
    ram = vm.vmm.ram
    gmem, gpa, pfns = ram.mem, ram.gpa, list(ram.pfns)
    board, guest = vm.board, vm.guest
    gmem.write(gpa, b"guest!")
    assert vm.machine.ram.read(pfns[0] * 0x1000, 6) == b"guest!"      # one copy while it runs
    vm.shutdown()
    assert vm.guest is vm.board is vm.driver is None
    assert all(s.guest_fn is None and s.guest_pdev is None for s in vm.slots)
    host = vm.machine.ram
    for i in (0, 1, len(pfns) // 2, len(pfns) - 1):                   # the host reuses them
        host.write(pfns[i] * 0x1000, b"HOSTDATA")
        assert gmem.read(gpa + i * 0x1000, 8) != b"HOSTDATA"
        assert board.bus.read(gpa + i * 0x1000, 8) != int.from_bytes(b"HOSTDATA", "little")
    gmem.write(gpa + 0x1000, b"stale")                                 # a late write through it
    assert host.read(pfns[1] * 0x1000, 8) == b"HOSTDATA"
    assert guest is not None
