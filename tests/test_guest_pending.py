"""The guest path's pending structures agree with what they stand for.

- GICv4: the GIC's copy of a resident vPE's pending vINTIDs (``Gicv3.vpending``) answers
  every acknowledge as a scan of the table in memory would, through random vLPI sets and
  clears (resident or not), loads and unloads of the vPE, and direct writes to the table
  while it is not resident (seen at the next load).
- KVM: ``kvm.lpi_pending`` is exactly the VM's LPIs whose ``pending_latch`` is set, through
  random MSIs, acknowledges and LPI removals.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi.hw.gicv3 import LPI_BASE, PRIORITY_MASK, SPURIOUS

from hw_rig import Platform

RD = 0x080A_0000
VPROP, VPEND = 0x20070, 0x20078
NV = 64                                      # vINTIDs 8192..8255


def scan_best(p: Platform, vprop: int, vpt: int, bits: int, below: int):
    """The acknowledge as the model did it before the copy: a scan of the whole table."""
    table = int.from_bytes(p.ram.read(vpt + LPI_BASE // 8, (1 << bits) // 8 - LPI_BASE // 8),
                           "little")
    best = None
    while table:
        low = table & -table
        v = LPI_BASE + low.bit_length() - 1
        table ^= low
        cfg = p.ram.read(vprop + v - LPI_BASE, 1)[0]
        key = (cfg & PRIORITY_MASK, v)
        if cfg & 1 and key[0] < below and (best is None or key < best):
            best = key
    return best


ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, NV - 1)),
    st.tuples(st.just("clear"), st.integers(0, NV - 1)),
    st.tuples(st.just("raw"), st.integers(0, NV - 1), st.booleans()),
    st.tuples(st.just("cfg"), st.integers(0, NV - 1), st.integers(0, 255)),
    st.tuples(st.just("load"), st.booleans()),
    st.tuples(st.just("ack"), st.integers(0, 0x100)),
), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ops, st.sampled_from([14, 16]))
def test_vpe_pending_copy_answers_as_a_table_scan(seq, idbits):
    p = Platform(ncpus=1, gicv4=True)
    vprop, vpt = p.alloc(1 << 16), p.alloc(1 << 13, align=0x10000)
    for v in range(NV):
        p.ram.write(vprop + v, bytes([0xA1 - 4 * (v % 5)]))
    rd, cpu = p.gic.redists[0], p.gic.cpus[0]
    p.bus.write(RD + VPROP, vprop | (idbits - 1), 8)
    p.bus.write(RD + VPEND, 1 << 63 | vpt, 8)
    resident = True
    for op in seq:
        kind = op[0]
        if kind == "set":
            rd.set_vlpi_pending(vpt, 16, LPI_BASE + op[1], SPURIOUS)
        elif kind == "clear":
            rd.clear_vlpi_pending(vpt, LPI_BASE + op[1])
        elif kind == "raw" and not resident:     # software owns the table only while unloaded
            addr = vpt + (LPI_BASE + op[1]) // 8
            b = p.ram.read(addr, 1)[0]
            bit = 1 << (LPI_BASE + op[1]) % 8
            p.ram.write(addr, bytes([b | bit if op[2] else b & ~bit]))
        elif kind == "cfg":                      # property bytes are read at each look
            p.ram.write(vprop + op[1], bytes([op[2]]))
        elif kind == "load":
            resident = op[1]
            p.bus.write(RD + VPEND, (1 << 63 | vpt) if resident else 0, 8)
        elif kind == "ack" and resident:
            bits = min(idbits, p.gic.id_bits)
            want = scan_best(p, vprop, vpt, bits, op[1])
            assert rd.highest_vpending(op[1]) == want
            cpu.vpmr = op[1]
            cpu.vactive.clear()
            got = cpu.vcpu_iar1()
            assert got == (SPURIOUS if want is None else want[1])
    if resident:
        bits = min(idbits, p.gic.id_bits)
        assert rd.highest_vpending() == scan_best(p, vprop, vpt, bits, 0x100)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fire", "ack", "drop"]), st.integers(0, 3)),
                max_size=30))
def test_kvm_pending_set_is_the_pending_latches(seq):
    from pymsi.machine import VirtualMachine

    vm = VirtualMachine(devices=[{"msix": 4}], guest_ncpus=1).boot()
    kvm = next(iter(vm.host.kvm.vms))
    cpuif = kvm.vcpus[next(iter(kvm.vcpus))].cpuif
    its = next(d for d in kvm.devices if hasattr(d, "translation_cache"))
    for kind, i in seq:
        lpis = sorted(kvm.lpis.values(), key=lambda x: x.intid)
        if kind == "fire":
            vm.host_function(0).notify(i)
            vm.machine.bus.drain()
            vm.host.handle_interrupts()
        elif kind == "ack":
            intid = cpuif.iar1()
            if intid != SPURIOUS:
                cpuif.eoir1(intid)
        elif kind == "drop" and lpis:
            lpis[i % len(lpis)].pending_latch = False
        assert kvm.lpi_pending == {x for x in kvm.lpis.values() if x.pending_latch}
    assert its.translation_cache is not None
    vm.run()
    assert kvm.lpi_pending == set()
