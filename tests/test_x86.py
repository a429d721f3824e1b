"""x86: vector moves with 6.1's cleanup IPI, multi-message MSI through interrupt
remapping, IRTE formats and the VT-d interrupt entry cache / invalidation queue.

Expected values are derived from the Intel VT-d specification (9.10 IRTE, 6.5.2
invalidation descriptors, 10.4 registers), the Intel SDM (MSI address / data,
flat logical destinations) and what Linux 6.1 does, not from the model.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from pymsi import core
from pymsi.hw.x86 import MSI_BASE, X86MsiController
from pymsi.kernel.base import KernelError
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.msi import MsiType
from pymsi.machine import X86Pc

DMAR = X86Pc.IR_UNIT
IRTA, IQH, IQT, IQA, FSTS, ICS, GCMD, GSTS = 0xB8, 0x80, 0x88, 0x90, 0x34, 0x9C, 0x18, 0x1C


def drain(k, limit=50):
    """Let the CPUs take interrupts until none is left (IPIs can chain)."""
    for _ in range(limit):
        if not k.handle_interrupts():
            return
    raise AssertionError("interrupts keep coming")


def no_handler_lines(k):
    return [line for line in k.log if "No irq handler" in line]


def irte_of(m, index):
    """(lo, hi) of IRTE ``index``, the table found through IRTA as hardware finds it."""
    table = m.bus.read(DMAR + IRTA, 8) & ~0xFFF
    raw = m.ram.read(table + 16 * index, 16)
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def handle_of(addr):
    """Remappable-format MSI address: handle[14:0] in bits 19:5, handle[15] in bit 2."""
    assert addr & 1 << 4, "not a remappable-format message"
    return (addr >> 5) & 0x7FFF | ((addr >> 2) & 1) << 15


def cpu_of(k, irq):
    (cpu,) = k.irq.desc(irq).irq_data.common.effective_affinity
    return cpu


# --- vector moves ---------------------------------------------------------------------


@pytest.mark.parametrize("remapping", [False, True])
def test_interrupt_pending_in_old_irr_is_handled_once_after_a_move(remapping):
    m = X86Pc(devices=[{"msix": 2}], remapping=remapping)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    fn = m.functions[0]
    irq = drv.irqs[0]
    old = cpu_of(k, irq)
    fn.notify(0)                                  # latched in the old CPU's IRR ...
    assert m.msi.lapics[old].irr
    new = (old + 1) % 4
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", f"{1 << new:x}")   # ... then moved
    assert cpu_of(k, irq) == new
    drain(k)
    assert drv.fired[0] == [old]                  # the pending one ran once, where it was
    assert no_handler_lines(k) == []
    fn.notify(0)                                  # the next one arrives at the new place
    drain(k)
    assert drv.fired[0] == [old, new]
    # Cleanup has run: the old CPU no longer maps the moved-away vector.
    assert list(k.vector.vector_irq[old].values()).count(irq) == 0
    assert list(k.vector.vector_irq[new].values()).count(irq) == 1
    assert m.msi.stats["faults"] == 0


@pytest.mark.parametrize("remapping", [False, True])
def test_old_vector_stays_until_the_cleanup_ipi(remapping):
    """6.1: the new CPU sends IRQ_MOVE_CLEANUP_VECTOR (0x20) to the old one on the first
    interrupt on the new vector (with remapping: right after the IRTE is flushed)."""
    m = X86Pc(devices=[{"msix": 1}], remapping=remapping)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    irq = drv.irqs[0]
    old = cpu_of(k, irq)
    (old_vec,) = [v for v, i in k.vector.vector_irq[old].items() if i == irq]
    k.irq.set_affinity(irq, frozenset({(old + 2) % 4}))
    assert k.vector.vector_irq[old].get(old_vec) == irq          # still assigned
    if not remapping:
        assert 0x20 not in m.msi.lapics[old].irr                 # nothing sent yet
        m.functions[0].notify(0)
        k.handle_interrupts()
    assert 0x20 in m.msi.lapics[old].irr                         # the cleanup IPI
    assert m.msi.stats["ipis"] == 1
    drain(k)
    assert old_vec not in k.vector.vector_irq[old]


def test_cleanup_waits_while_the_old_vector_is_pending():
    """sysvec_irq_move_cleanup: an old vector still set in the IRR is not freed; the
    handler sends itself the cleanup IPI again, and the pending interrupt runs first."""
    m = X86Pc(devices=[{"msix": 1}], remapping=True)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    irq = drv.irqs[0]
    old = cpu_of(k, irq)
    (old_vec,) = [v for v, i in k.vector.vector_irq[old].items() if i == irq]
    m.functions[0].notify(0)                                     # pending on the old CPU
    k.irq.set_affinity(irq, frozenset({(old + 1) % 4}))          # IR: cleanup IPI at once
    lapic = m.msi.lapics[old]
    assert lapic.irr == {old_vec, 0x20}
    lapic.irr.discard(0x20)                                      # the CPU takes the IPI ...
    k.vector.move_cleanup(old)                                   # ... before the device one
    assert k.vector.vector_irq[old].get(old_vec) == irq          # not freed
    assert lapic.irr == {old_vec, 0x20}                          # self IPI re-sent
    drain(k)
    assert drv.fired[0] == [old] and old_vec not in k.vector.vector_irq[old]
    assert no_handler_lines(k) == []


def test_a_move_while_one_is_in_progress_is_done_later():
    """assign_vector_locked() is EBUSY during a move; genirq keeps the mask pending and
    applies it at a later interrupt (user space sees success)."""
    m = X86Pc(devices=[{"msix": 1}])
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    irq, fn = drv.irqs[0], m.functions[0]
    k.irq.set_affinity(irq, frozenset({1}))
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "4")           # no error
    assert cpu_of(k, irq) == 1
    # show_irq_affinity() shows the pending mask while the move waits (a later write
    # replaces it), the effective affinity stays where the vector is.
    assert k.proc_read(f"/proc/irq/{irq}/smp_affinity") == "4\n"
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "8")
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "4")
    assert k.proc_read(f"/proc/irq/{irq}/effective_affinity") == "2\n"
    for _ in range(3):
        fn.notify(0)
        drain(k)
    assert cpu_of(k, irq) == 2
    assert drv.fired[0][0] == 1 and drv.fired[0][-1] == 2 and len(drv.fired[0]) == 3


def test_a_forced_move_while_one_is_in_progress_is_ebusy_and_changes_nothing():
    """Only an unforced move becomes pending (irq_try_set_affinity); a forced one during
    a move in progress gets assign_vector_locked()'s EBUSY, and nothing moves."""
    m = X86Pc(devices=[{"msix": 1}])
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    irq = drv.irqs[0]
    k.irq.set_affinity(irq, frozenset({1}))
    entry = m.functions[0].msix_entry(0)
    with pytest.raises(KernelError) as e:
        k.irq.set_affinity(irq, frozenset({2}), force=True)
    assert e.value.errno == errno.EBUSY
    assert k.irq.desc(irq).pending_mask is None
    assert k.proc_read(f"/proc/irq/{irq}/smp_affinity") == "2\n"
    assert m.functions[0].msix_entry(0) == entry and cpu_of(k, irq) == 1


def test_vector_0x20_and_0x80_are_never_given_to_a_device():
    m = X86Pc(ncpus=1, devices=[{"msix": 128}])
    k = m.boot()
    MsiCountingDriver(k, k.pci.devices[0], 128)
    vectors = [m.functions[0].msix_entry(i)[1] & 0xFF for i in range(128)]
    assert len(set(vectors)) == 128
    assert min(vectors) == 0x21                                  # FIRST_EXTERNAL_VECTOR + 1
    assert 0x20 not in vectors and 0x80 not in vectors
    assert max(vectors) == 0x21 + 128                            # one skipped (0x80)


# --- multi-message MSI ------------------------------------------------------------------


def test_multi_msi_without_remapping_is_one_vector():
    m = X86Pc(devices=[{"msi": 4}])
    k = m.boot()
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 4, flags=MsiType.MSI)
    assert drv.nvec == 1
    m.functions[0].notify(0)
    drain(k)
    assert len(drv.fired[0]) == 1
    drv.remove()
    with pytest.raises(KernelError) as e:
        k.msi.alloc_irq_vectors(dev, 2, 4, MsiType.MSI)
    assert e.value.errno == 28                                   # ENOSPC
    assert not dev.msi_descs


def test_multi_msi_with_remapping_uses_an_aligned_irte_block():
    m = X86Pc(devices=[{"msix": 1}, {"msi": 4}], remapping=True)
    k = m.boot()
    first = MsiCountingDriver(k, k.pci.devices[0], 1)            # takes an IRTE first
    drv = MsiCountingDriver(k, k.pci.devices[1], 4, flags=MsiType.MSI)
    assert drv.nvec == 4
    fn = m.functions[1]
    addr, data = fn.msi_message(0)
    assert addr & 1 << 3 and data == 0                           # SHV, subhandle 0
    handle = handle_of(addr)
    first_handle = handle_of(m.functions[0].msix_entry(0)[0])
    assert handle % 4 == 0 and handle != first_handle
    # Each vector's IRTE is handle + vector number, with its own (destination, vector).
    irtes = [irte_of(m, handle + v) for v in range(4)]
    assert all(lo & 1 for lo, _ in irtes)
    assert len({(lo >> 40 & 0xFF, lo >> 16 & 0xFF) for lo, _ in irtes}) == 4
    for v in range(4):
        for i in range(4):
            k.irq.set_affinity(drv.irqs[i], frozenset({i}))
        fn.notify(v)
        drain(k)
    for v in range(4):
        assert drv.fired[v] == [v]                               # its own handler, own CPU
    assert m.msi.stats["faults"] == 0 and first.fired[0] == []
    drv.remove()
    assert all(not irte_of(m, handle + v)[0] & 1 for v in range(4))


# --- IRTE format -------------------------------------------------------------------------


@pytest.mark.parametrize("ncpus", [8, 9])
def test_irte_destination_modes(ncpus):
    m = X86Pc(ncpus=ncpus, devices=[{"msix": ncpus}], remapping=True)
    k = m.boot()
    assert m.bus.read(DMAR + IRTA, 8) & 0xF == 0xF               # S = 15: 2^16 entries
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, ncpus)
    for cpu in range(ncpus):
        irq = drv.irqs[cpu]
        k.irq.set_affinity(irq, frozenset({cpu}))
        lo, hi = irte_of(m, handle_of(m.functions[0].msix_entry(cpu)[0]))
        assert lo & 1                                             # P
        assert (lo >> 5) & 7 == 0                                 # DLM: fixed
        assert (lo >> 4) & 1 == 0                                 # TM: edge
        assert (lo >> 15) & 1 == 0                                # IM: remapped
        if ncpus <= 8:                                            # flat logical
            assert (lo >> 2) & 1 == 1 and (lo >> 3) & 1 == 1      # DM = 1, RH = 1
            assert (lo >> 40) & 0xFF == 1 << cpu                  # xAPIC DST[15:8]
        else:                                                     # physical flat
            assert (lo >> 2) & 1 == 0
            assert (lo >> 40) & 0xFF == cpu
        assert hi & 0xFFFF == dev.rid and (hi >> 16) & 3 == 0 and (hi >> 18) & 3 == 1
        m.functions[0].notify(cpu)
        drain(k)
        assert drv.fired[cpu] == [cpu]


def test_remapping_table_has_65536_entries():
    m = X86Pc(devices=[{"msix": 1}], remapping=True)
    k = m.boot()
    MsiCountingDriver(k, k.pci.devices[0], 1)
    assert k.ir.entries == 65536
    # Hardware accepts a handle near the top of the table (and faults beyond it: none).
    lo = 1 | 1 << 2 | 1 << 3 | 0x77 << 16 | (1 << 1) << 40       # CPU 1, vector 0x77
    table = m.bus.read(DMAR + IRTA, 8) & ~0xFFF
    m.ram.write(table + 16 * 0xFFFF, lo.to_bytes(8, "little") + bytes(8))
    addr = MSI_BASE | 0x7FFF << 5 | 1 << 4 | 1 << 2              # handle 0xFFFF, no SHV
    m.bus.write(addr, 0, 4, requester_id=0x10)
    assert m.msi.lapics[1].irr == {0x77} and m.msi.stats["faults"] == 0


# --- interrupt entry cache and invalidation queue ----------------------------------------------


def test_irte_change_is_not_seen_until_the_iec_is_invalidated():
    m = X86Pc(devices=[{"msix": 1}], remapping=True)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 1)
    fn = m.functions[0]
    irq = drv.irqs[0]
    old = cpu_of(k, irq)
    fn.notify(0)                                                 # the unit caches the IRTE
    drain(k)
    index = handle_of(fn.msix_entry(0)[0])
    lo, hi = irte_of(m, index)
    target = (old + 1) % 4
    new_lo = (lo & ~(0xFF << 16) & ~(0xFF << 40)) | 0x99 << 16 | (1 << target) << 40
    table = m.bus.read(DMAR + IRTA, 8) & ~0xFFF
    m.ram.write(table + 16 * index, new_lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))
    fn.notify(0)                                                 # no flush: the stale entry
    assert 0x99 not in m.msi.lapics[target].irr and m.msi.lapics[old].irr
    drain(k)
    k.ir.flush_iec(index)                                        # index-selective IEC
    fn.notify(0)
    assert m.msi.lapics[target].irr == {0x99}


def test_driver_flushes_after_every_irte_change():
    m = X86Pc(devices=[{"msix": 2}], remapping=True)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    fn = m.functions[0]
    for step, cpu in enumerate([1, 3, 0, 2, 1]):
        k.irq.set_affinity(drv.irqs[1], frozenset({cpu}))
        fn.notify(1)
        drain(k)
        assert drv.fired[1][step] == cpu
    assert m.msi.stats["iec_invalidations"] >= 5
    assert m.bus.read(DMAR + FSTS) == 0
    # The queue is drained: head caught up with tail.
    assert m.bus.read(DMAR + IQH, 8) == m.bus.read(DMAR + IQT, 8)


def qi_rig(qs=0):
    mem = core.Memory()
    mem.add_ram(0x100000, 0x100000)
    ctl = X86MsiController(mem, ncpus=2)
    regs = ctl.remap_regs
    queue = 0x100000
    regs.mmio_write(IQA, queue | qs, 8)
    regs.mmio_write(GCMD, 1 << 26)                               # QIE
    return mem, ctl, regs, queue


def put_desc(mem, queue, slot, qw0, qw1):
    mem.write(queue + 16 * slot, qw0.to_bytes(8, "little") + qw1.to_bytes(8, "little"))


def test_wait_descriptor_status_write_and_interrupt_flag():
    mem, ctl, regs, queue = qi_rig()
    assert regs.mmio_read(GSTS) & 1 << 26                        # QIES
    status = 0x180000
    put_desc(mem, queue, 0, 0x5 | 1 << 5 | 0xABCD << 32, status)  # SW, data 0xabcd
    put_desc(mem, queue, 1, 0x5 | 1 << 4, 0)                      # IF
    regs.mmio_write(IQT, 2 << 4, 8)
    assert mem.read_u32(status) == 0xABCD
    assert regs.mmio_read(ICS) == 1                              # IWC
    regs.mmio_write(ICS, 1)
    assert regs.mmio_read(ICS) == 0
    assert regs.mmio_read(IQH, 8) == 2 << 4


def test_bad_descriptor_sets_iqe_and_stops_at_it():
    mem, ctl, regs, queue = qi_rig()
    status = 0x180000
    put_desc(mem, queue, 0, 0x4, 0)                               # global IEC: fine
    put_desc(mem, queue, 1, 0xF, 0)                               # type 0xf: invalid
    put_desc(mem, queue, 2, 0x5 | 1 << 5 | 1 << 32, status)
    regs.mmio_write(IQT, 3 << 4, 8)
    assert regs.mmio_read(FSTS) & 1 << 4                         # IQE
    assert regs.mmio_read(IQH, 8) == 1 << 4                      # at the bad one
    assert mem.read_u32(status) == 0                             # nothing after it ran
    put_desc(mem, queue, 1, 0x4, 0)                               # software fixes it
    regs.mmio_write(FSTS, 1 << 4)                                # and clears IQE
    assert regs.mmio_read(FSTS) == 0 and mem.read_u32(status) == 1
    # A tail beyond the queue (QS = 0: 256 entries) is an error too.
    regs.mmio_write(IQT, 300 << 4, 8)
    assert regs.mmio_read(FSTS) & 1 << 4


DESC_MUTATIONS = st.one_of(
    st.tuples(st.just("flip0"), st.integers(0, 63)),
    st.tuples(st.just("flip1"), st.integers(0, 63)),
    st.tuples(st.just("raw"), st.integers(0, 2**64 - 1)),
)


@given(
    descs=st.lists(st.tuples(st.sampled_from(["iec-global", "iec-index", "wait-sw", "wait-if"]),
                             st.integers(0, 0xFFFF), st.integers(0, 31),
                             st.lists(DESC_MUTATIONS, max_size=2)),
                   min_size=1, max_size=12),
    tail=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    regs_garbage=st.lists(st.tuples(st.integers(0, 0xFFF), st.integers(0, 2**64 - 1),
                                    st.sampled_from([1, 2, 4, 8])), max_size=6),
    iqa=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_invalidation_queue_garbage_never_escapes(descs, tail, regs_garbage, iqa):
    mem, ctl, regs, queue = qi_rig()
    status = 0x180000
    all_valid = True
    for slot, (kind, index, im, muts) in enumerate(descs):
        if kind == "iec-global":
            qw0, qw1 = 0x4, 0
        elif kind == "iec-index":
            qw0, qw1 = 0x4 | 1 << 4 | im << 27 | index << 32, 0
        elif kind == "wait-sw":
            qw0, qw1 = 0x5 | 1 << 5 | (slot + 1) << 32, status + 4 * slot
        else:
            qw0, qw1 = 0x5 | 1 << 4, 0
        for what, arg in muts:
            all_valid = False
            if what == "flip0":
                qw0 ^= 1 << arg
            elif what == "flip1":
                qw1 ^= 1 << arg
            else:
                qw0 = arg
        put_desc(mem, queue, slot, qw0, qw1)
    if iqa is not None:
        all_valid = False
        regs.mmio_write(IQA, iqa, 8)
    qt = len(descs) << 4 if tail is None else tail
    if tail is not None:
        all_valid = False
    regs.mmio_write(IQT, qt, 8)
    for off, value, size in regs_garbage:
        if off in (IRTA, IRTA + 4, GCMD):
            continue                                              # keep the unit in QI mode
        regs.mmio_write(off, value, size)
        regs.mmio_read(off, size)
    error = regs.qi_error.split(" 0x")[0] if regs.qi_error else None
    event(f"IQE: {error}" if regs.mmio_read(FSTS) & 1 << 4 else "no IQE")
    head = regs.mmio_read(IQH, 8) >> 4
    iqa_now = regs.mmio_read(IQA, 8)
    size = 1 << ((iqa_now & 7) + 8)
    assert head < size
    if regs.mmio_read(GSTS) & 1 << 26 and not regs.mmio_read(FSTS) & 1 << 4:
        assert head == (regs.mmio_read(IQT, 8) >> 4)             # drained
    if all_valid and not regs_garbage:
        assert not regs.mmio_read(FSTS) & 1 << 4
        for slot, (kind, *_rest) in enumerate(descs):
            if kind == "wait-sw":
                assert mem.read_u32(status + 4 * slot) == slot + 1


@given(writes=st.lists(st.tuples(st.integers(0, 0xFFFFF), st.integers(0, 2**32 - 1),
                                 st.one_of(st.none(), st.integers(0, 0xFFFF))), max_size=20),
       reg_writes=st.lists(st.tuples(st.integers(0, 0xFFF), st.integers(0, 2**64 - 1)),
                           max_size=8))
def test_message_window_and_registers_never_raise(writes, reg_writes):
    mem = core.Memory()
    mem.add_ram(0x100000, 0x100000)
    ctl = X86MsiController(mem, ncpus=4)
    for off, value in reg_writes:
        ctl.remap_regs.mmio_write(off, value, 8)
    for off, data, rid in writes:
        ctl.mmio_write(off, data, 4, requester_id=rid)
    event(f"faults: {min(ctl.stats['faults'], 3)}")
    assert all(v >= 16 for a in ctl.lapics for v in a.irr)       # no illegal vector arrives


# --- property: moves and fires --------------------------------------------------------------

OPS = st.lists(st.one_of(
    st.tuples(st.just("fire"), st.integers(0, 1)),
    st.tuples(st.just("move"), st.integers(0, 1), st.integers(1, 15)),
    st.tuples(st.just("handle"), st.just(0)),
), max_size=25)


@pytest.mark.parametrize("remapping", [False, True])
@given(ops=OPS)
def test_every_fire_is_handled_once_where_it_was_aimed(remapping, ops):
    m = X86Pc(devices=[{"msix": 2}], remapping=remapping)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 2)
    fn = m.functions[0]
    expected: dict[int, list[int]] = {0: [], 1: []}
    outstanding = set()
    for op in ops:
        if op[0] == "fire":
            v = op[1]
            if v in outstanding:                   # a second edge would merge in the IRR
                drain(k)
                outstanding.clear()
            expected[v].append(cpu_of(k, drv.irqs[v]))
            fn.notify(v)
            outstanding.add(v)
        elif op[0] == "move":
            mask = frozenset(c for c in range(4) if op[2] >> c & 1)
            if op[1] in outstanding:
                event("moved with its fire still pending")
            k.irq.set_affinity(drv.irqs[op[1]], mask)
            event("move kept pending" if k.irq.desc(drv.irqs[op[1]]).pending_mask is not None
                  else "move done")
        else:
            if any(a.irr for a in m.msi.lapics):
                event("handled with interrupts pending")
            drain(k)
            outstanding.clear()
    drain(k)
    assert drv.fired == expected
    assert no_handler_lines(k) == []
    assert m.msi.stats["faults"] == 0


@pytest.mark.parametrize("remapping,chip", [(False, "PCI-MSI"), (True, "IR-PCI-MSI")])
def test_proc_interrupts_chip_name(remapping, chip):
    """Linux names the x86 PCI/MSI chip IR-PCI-MSI with remapping, PCI-MSI without."""
    m = X86Pc(devices=[{"msix": 1}], remapping=remapping)
    k = m.boot()
    MsiCountingDriver(k, k.pci.devices[0], 1, name="nic")
    (line,) = [x for x in k.irq.proc_interrupts() if "nic-0" in x]
    assert chip in line.split()
    assert k.msi.domain.name == chip


def test_multi_msi_failing_midway_leaves_nothing_behind():
    """One CPU has 0xEC - 0x21 - 1 (0x80) = 202 device vectors: 200 taken by one device,
    a 4-vector MSI block then runs out at its third vector (ENOSPC) and must leave the
    remapping table, the vector table and the device as they were."""
    m = X86Pc(ncpus=1, devices=[{"msix": 200}, {"msi": 4}], remapping=True)
    k = m.boot()
    MsiCountingDriver(k, k.pci.devices[0], 200)
    used_before = set(k.ir._used)
    vectors_before = dict(k.vector.vector_irq[0])
    dev = k.pci.devices[1]
    with pytest.raises(KernelError) as e:
        k.msi.alloc_irq_vectors(dev, 4, 4, MsiType.MSI)
    assert e.value.errno == 28                                   # ENOSPC
    assert k.ir._used == used_before
    assert k.vector.vector_irq[0] == vectors_before
    assert not dev.msi_descs and m.functions[1].msi_message(0) is None
    # Two vectors do fit, and get a 2-aligned block.
    drv = MsiCountingDriver(k, dev, 2, flags=MsiType.MSI, min_vecs=2)
    assert drv.nvec == 2 and handle_of(m.functions[1].msi_message(0)[0]) % 2 == 0
