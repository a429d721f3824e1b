"""The host kernel model on the interrupt hardware: genirq, MSI, ITS and x86 paths."""

from __future__ import annotations

import pytest

from pymsi.hw.gicv3 import SPURIOUS
from pymsi.kernel.base import KernelError
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.gic import ItsVpe, VcpuCmd, VcpuInfo
from pymsi.kernel.msi import MsiType
from pymsi.machine import ArmVirt, X86Pc

TRANSLATER = 0x0809_0040


def arm(devices=({"msix": 8},), gicv4=False):
    m = ArmVirt(devices=list(devices), smmu=None, gicv4=gicv4)
    return m, m.boot()


def fire(m, k, fn_index, vector):
    d = m.functions[fn_index].notify(vector)
    k.handle_interrupts()
    return d


def test_boot_log_and_its_setup():
    m, k = arm()
    assert any(line.startswith("GICv3: 16 bits of IDs") for line in k.log)
    assert any("ITS@0x8080000" in line for line in k.log)
    assert any("pci 0000:00:01.0" in line for line in k.log)
    # One collection per CPU, mapped by the driver through the command queue.
    assert m.its.stats["command_errors"] == 0 and m.its.stats["commands"] >= 2 * 4
    assert all(rd.lpis_enabled for rd in m.gic.redists)


def test_vectors_run_their_handler_on_their_cpu():
    m, k = arm()
    drv = MsiCountingDriver(k, k.pci.devices[0], 8)
    assert drv.nvec == 8
    dev = k.pci.devices[0]
    for v in range(8):
        desc = dev.msi_descs[v]
        assert (desc.msg.address, desc.msg.data) == (TRANSLATER, v)   # EventID = index
        fire(m, k, 0, v)
    for v in range(8):
        cpus = k.irq.desc(drv.irqs[v]).irq_data.common.effective_affinity
        assert drv.fired[v] == list(cpus)
    assert sorted({c for v in range(8) for c in drv.fired[v]}) == [0, 1, 2, 3]  # spread
    assert len(k.irq.proc_interrupts()) == 1 + 8                      # header + vectors


def test_smp_affinity_moves_with_movi_and_keeps_the_message():
    m, k = arm()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    fn = m.functions[0]
    irq = drv.irqs[1]
    before = fn.msix_entry(1)
    commands = m.its.stats["commands"]
    for cpu in (2, 3, 0):
        k.proc_write(f"/proc/irq/{irq}/smp_affinity", f"{1 << cpu:x}")
        assert k.irq.read_effective_affinity(irq) == f"{1 << cpu:x}"      # 4 CPUs: 1 digit
        fire(m, k, 0, 1)
        assert drv.fired[1][-1] == cpu
    assert fn.msix_entry(1) == before                       # OK_DONE: never rewritten
    assert m.its.stats["commands"] > commands                # MOVI + SYNC went out
    assert k.irq.read_smp_affinity(irq) == "1"


def test_smp_affinity_errors_are_linuxs():
    m, k = arm(devices=({"msix": 4}, {"msix": 4}))
    drv = MsiCountingDriver(k, k.pci.devices[0], 4)
    managed = MsiCountingDriver(k, k.pci.devices[1], 4, flags=MsiType.MSIX | MsiType.AFFINITY)
    irq = drv.irqs[0]
    beyond_nr_cpus = "1" + ",00000000" * 16                  # CPU 512
    cases = [(managed.irqs[0], "1", 5), (irq, "0", 22), (irq, "10", 22), (irq, "xyz", 22),
             (irq, "1,00000000,00000000", 22), (irq, beyond_nr_cpus, 75), (9999, "1", 2)]
    for n, text, err in cases:
        with pytest.raises(KernelError) as e:
            k.proc_write(f"/proc/irq/{n}/smp_affinity", text)
        assert e.value.errno == err, text
    # Managed vectors were spread over the CPUs, one each.
    spread = [k.irq.desc(i).irq_data.common.affinity for i in managed.irqs]
    assert spread == [frozenset({0}), frozenset({1}), frozenset({2}), frozenset({3})]
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "00000006")   # CPUs 1-2: fine
    assert k.irq.read_smp_affinity(irq) == "6"


def test_masking_keeps_the_interrupt_pending_until_unmasked():
    m, k = arm()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    k.irq.disable_irq(drv.irqs[0])
    from pymsi.hw.pci import Delivery

    assert fire(m, k, 0, 0) == Delivery.PENDING
    assert drv.fired[0] == [] and m.functions[0].msix_pending(0)
    k.irq.enable_irq(drv.irqs[0])
    k.handle_interrupts()
    assert len(drv.fired[0]) == 1 and not m.functions[0].msix_pending(0)


def test_free_leaves_nothing_routed():
    m, k = arm()
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 4)
    assert dev.rid in k.its.devices
    drv.remove()
    assert k.its.devices == {} and dev.msi_descs == {}
    fn = m.functions[0]
    assert all(fn.msix_entry(v)[:2] == (0, 0) for v in range(4))   # deactivated: zeroed
    # The device table entry is gone: a write from the device's DeviceID is dropped.
    dropped = m.its.stats["translations_dropped"]
    m.bus.write(TRANSLATER, 0, 4, requester_id=dev.rid)
    assert m.its.stats["translations_dropped"] == dropped + 1
    assert all(c.iar1() == SPURIOUS for c in m.gic.cpus)
    # LPIs and events went back: a new allocation reuses them.
    again = MsiCountingDriver(k, dev, 4)
    fire(m, k, 0, 3)
    assert len(again.fired[3]) == 1


def test_dynamic_msix_allocation():
    m, k = arm()
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 2)
    index, virq = k.msi.msix_alloc_irq_at(dev, 5)
    got = []
    k.irq.request_irq(virq, lambda irq, c: got.append(k.current_cpu) or 1, "dyn", None)
    fire(m, k, 0, 5)
    assert index == 5 and len(got) == 1
    with pytest.raises(KernelError) as e:
        k.msi.msix_alloc_irq_at(dev, 5)
    assert e.value.errno == 16                               # EBUSY
    k.irq.free_irq(virq)
    k.msi.msix_free_irq(dev, 5)
    fire(m, k, 0, 5)
    assert len(got) == 1 and len(drv.fired[0]) == 0


def test_multi_message_msi():
    m, k = arm(devices=({"msi": 4},))
    drv = MsiCountingDriver(k, k.pci.devices[0], 4, flags=MsiType.MSI)
    assert drv.nvec == 4
    for v in range(4):
        fire(m, k, 0, v)
    assert all(len(drv.fired[v]) == 1 for v in range(4))


def test_request_free_errors():
    m, k = arm()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    with pytest.raises(KernelError) as e:
        k.irq.request_irq(drv.irqs[0], lambda i, c: 1, "again")
    assert e.value.errno == 16
    with pytest.raises(KernelError):
        k.irq.free_irq(drv.irqs[0], dev_id="someone else")
    with pytest.raises(KernelError) as e:
        k.msi.alloc_irq_vectors(k.pci.devices[0], 1, 4)
    assert e.value.errno == 22


def test_vlpi_forwarding_through_irq_set_vcpu_affinity():
    m, k = arm(gicv4=True)
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    irq = drv.irqs[1]
    vpt, vprop = k.mm.alloc(0x10000, 0x10000), k.mm.alloc(0x10000, 0x1000)
    k.ram.write(vprop, bytes([0xA3]) * 64)
    vpe = ItsVpe(vpe_id=3, vpt=vpt, vprop=vprop, col=2, doorbell=8190 + 1000)
    k.its.write_prop(vpe.doorbell, 0xA3)
    k.irq.set_vcpu_affinity(irq, VcpuInfo(VcpuCmd.MAP_VLPI, vpe, vintid=8192 + 7))
    cpu2 = m.gic.cpus[2]
    rd2 = 0x080A_0000 + 2 * m.gic.frame_size
    m.bus.write(rd2 + 0x20070, vprop | 15, 8)
    m.bus.write(rd2 + 0x20078, 1 << 63 | vpt, 8)             # vPE resident on CPU 2
    fire(m, k, 0, 1)
    assert drv.fired[1] == [] and cpu2.vcpu_iar1() == 8192 + 7
    cpu2.vcpu_eoir1(8192 + 7)
    with pytest.raises(KernelError) as e:                    # forwarded: no host affinity
        k.irq.set_affinity(irq, frozenset({1}))
    assert e.value.errno == 22
    k.irq.set_vcpu_affinity(irq, VcpuInfo(VcpuCmd.UNMAP_VLPI))
    fire(m, k, 0, 1)
    assert len(drv.fired[1]) == 1 and cpu2.vcpu_iar1() == SPURIOUS
    assert m.its.stats["command_errors"] == 0


@pytest.mark.parametrize("remapping", [False, True])
def test_x86_affinity_change(remapping):
    m = X86Pc(devices=[{"msix": 4}], remapping=remapping)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 4)
    fn = m.functions[0]
    for v in range(4):
        fn.notify(v)
    k.handle_interrupts()
    assert all(len(drv.fired[v]) == 1 for v in range(4))
    irq = drv.irqs[2]
    before = fn.msix_entry(2)
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "8")
    after = fn.msix_entry(2)
    if remapping:
        assert after == before                               # only the IRTE changed
        assert before[0] & 1 << 4                            # remappable format
    else:
        # Flat logical mode (<= 8 CPUs): DM = 1, destination = logical ID of CPU 3.
        assert after != before and (after[0] >> 12) & 0xFF == 1 << 3 and after[0] & 1 << 2
    fn.notify(2)
    k.handle_interrupts()
    assert drv.fired[2] == [drv.fired[2][0], 3]
    assert m.msi.stats["faults"] == 0
    drv.remove()
    fn.notify(2)
    k.handle_interrupts()
    assert len(drv.fired[2]) == 2
