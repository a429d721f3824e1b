"""The VMM's spine: page aliasing in the core, guest RAM, the guest's board and vCPU interface.

``Memory.alias_page`` is checked on both backends against an oracle that
tracks which backing cell each (memory, page) names, and C against Python on
the same random operation sequences.
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymsi import errors

PAGE = 4096
A_BASE = 0x4000_0000   # "guest" memory
B_BASE = 0x8000_0000   # "host" memory
NPAGES = 4


def two_memories(mod):
    a, b = mod.Memory(), mod.Memory()
    a.add_ram(A_BASE, NPAGES * PAGE)
    b.add_ram(B_BASE, NPAGES * PAGE)
    return a, b


# -- alias_page: basic behaviour ------------------------------------------------------------

def test_alias_write_either_side_seen_by_the_other(core):
    a, b = two_memories(core)
    b.write(B_BASE + 2 * PAGE + 8, b"host")
    a.alias_page(A_BASE, b, B_BASE + 2 * PAGE)
    assert a.read(A_BASE + 8, 4) == b"host"
    a.write_u64(A_BASE + PAGE - 8, 0x1122334455667788)
    assert b.read_u64(B_BASE + 3 * PAGE - 8) == 0x1122334455667788
    # the neighbouring pages are untouched and still separate
    assert a.read(A_BASE + PAGE, 8) == bytes(8)
    assert b.read(B_BASE + PAGE, 8) == bytes(8)


def test_alias_makes_the_source_page(core):
    a, b = two_memories(core)
    assert b.pages_allocated == 0
    a.alias_page(A_BASE + PAGE, b, B_BASE)
    assert b.pages_allocated == 1 and a.pages_allocated == 1
    b.write_u32(B_BASE + 4, 7)
    assert a.read_u32(A_BASE + PAGE + 4) == 7


def test_alias_repoints_an_existing_page(core):
    a, b = two_memories(core)
    a.write(A_BASE, b"own!")
    a.alias_page(A_BASE, b, B_BASE)          # own page replaced by b's (zero) page
    assert a.read(A_BASE, 4) == bytes(4)
    b.write(B_BASE + PAGE, b"next")
    a.alias_page(A_BASE, b, B_BASE + PAGE)   # re-point an alias
    assert a.read(A_BASE, 4) == b"next"
    a.write(A_BASE, b"NEXT")
    assert b.read(B_BASE, 4) == bytes(4) and b.read(B_BASE + PAGE, 4) == b"NEXT"
    assert a.pages_allocated == 1


def test_alias_within_one_memory(core):
    a, _ = two_memories(core)
    a.alias_page(A_BASE, a, A_BASE + 3 * PAGE)
    a.write(A_BASE + 3 * PAGE + 100, b"x")
    assert a.read(A_BASE + 100, 1) == b"x"
    a.alias_page(A_BASE, a, A_BASE)          # a page aliasing itself changes nothing
    assert a.read(A_BASE + 100, 1) == b"x"


@pytest.mark.parametrize("addr,src_addr", [
    (A_BASE + 8, B_BASE),                    # unaligned
    (A_BASE, B_BASE + 0x800),                # unaligned source
    (A_BASE + NPAGES * PAGE, B_BASE),        # not RAM here
    (A_BASE, B_BASE - PAGE),                 # not RAM in the source
    (0, 0),
])
def test_alias_bad_addresses_are_einval_and_change_nothing(core, addr, src_addr):
    a, b = two_memories(core)
    b.write(B_BASE, b"keep")
    with pytest.raises(errors.InvalidArgument):
        a.alias_page(addr, b, src_addr)
    assert a.pages_allocated == 0 and b.pages_allocated == 1


def test_alias_wrong_types(core):
    a, _ = two_memories(core)
    with pytest.raises(TypeError):
        a.alias_page(A_BASE, object(), B_BASE)
    with pytest.raises(TypeError):
        a.alias_page("x", a, A_BASE)


def test_alias_keeps_the_source_alive_and_frees_cleanly(core):
    a, b = two_memories(core)
    b.write(B_BASE, b"data")
    a.alias_page(A_BASE, b, B_BASE)
    del b
    gc.collect()
    assert a.read(A_BASE, 4) == b"data"
    a.write(A_BASE, b"more")
    assert a.read(A_BASE, 4) == b"more"
    del a
    gc.collect()


def test_alias_source_freed_first_in_c_keeps_the_page(backends):
    """The C pages are reference counted: freeing one owner leaves the other's page valid."""
    c = backends[0]
    a, b = two_memories(c)
    b.write(B_BASE, b"held")
    a.alias_page(A_BASE, b, B_BASE)
    a._alias_srcs.clear()                    # drop the Python reference: b really goes
    del b
    gc.collect()
    assert a.read(A_BASE, 4) == b"held"


# -- alias_page: oracle and differential ----------------------------------------------------

MEMS = ("a", "b")
BASES = {"a": A_BASE, "b": B_BASE}

ops = st.lists(st.one_of(
    st.tuples(st.just("alias"), st.sampled_from(MEMS), st.integers(0, NPAGES - 1),
              st.sampled_from(MEMS), st.integers(0, NPAGES - 1)),
    st.tuples(st.just("write"), st.sampled_from(MEMS), st.integers(0, NPAGES * PAGE - 1),
              st.binary(min_size=1, max_size=64)),
), max_size=30)


def run_ops(mod, seq):
    a, b = two_memories(mod)
    mems = {"a": a, "b": b}
    for op in seq:
        if op[0] == "alias":
            _, dst, dpage, src, spage = op
            mems[dst].alias_page(BASES[dst] + dpage * PAGE, mems[src], BASES[src] + spage * PAGE)
        else:
            _, m, off, data = op
            data = data[: NPAGES * PAGE - off]
            mems[m].write(BASES[m] + off, data)
    return {m: mems[m].read(BASES[m], NPAGES * PAGE) for m in MEMS}


def oracle(seq):
    """Which cell each (memory, page) names, and the cells' bytes."""
    cell = {(m, p): (m, p) for m in MEMS for p in range(NPAGES)}
    data = {k: bytearray(PAGE) for k in cell}
    for op in seq:
        if op[0] == "alias":
            _, dst, dpage, src, spage = op
            cell[(dst, dpage)] = cell[(src, spage)]
        else:
            _, m, off, payload = op
            for i, byte in enumerate(payload[: NPAGES * PAGE - off]):
                page, po = divmod(off + i, PAGE)
                data[cell[(m, page)]][po] = byte
    return {m: b"".join(bytes(data[cell[(m, p)]]) for p in range(NPAGES)) for m in MEMS}


@given(ops)
def test_alias_matches_the_oracle(core, seq):
    assert run_ops(core, seq) == oracle(seq)


@given(ops)
def test_alias_c_matches_python(backends, seq):
    c, py = backends
    assert run_ops(c, seq) == run_ops(py, seq)


# -- Kernel.pagemap and the VMM's guest RAM ---------------------------------------------------

import errno  # noqa: E402

from pymsi.machine import ArmVirt  # noqa: E402
from pymsi.vmm.memory import GuestRam, guest_memory, host_pfns  # noqa: E402

SMALL_RAM = 0x40_0000          # 4 MiB: enough for the guest kernel's GIC / ITS tables


def errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    return 0


@pytest.fixture
def host():
    m = ArmVirt(smmu="nested")
    return m, m.boot()


def test_pagemap(host):
    m, k = host
    va = k.mmap(3 * PAGE)
    assert errno_of(k.pagemap, va - PAGE) == errno.EFAULT
    assert errno_of(k.pagemap, va + 3 * PAGE) == errno.EFAULT
    assert k.pagemap(va + PAGE) is None                # mapped, never touched
    k.user_write(va + PAGE + 5, b"x")
    pfn = k.pagemap(va + PAGE + 0xFFF)
    assert m.ram.read(pfn * PAGE + 5, 1) == b"x"       # the host page really holds it
    assert k.pagemap(va) is None
    assert errno_of(host_pfns, k, va, 2) == errno.EINVAL


def test_guest_memory_is_the_vmm_pages(host):
    m, k = host
    ram = GuestRam(k, m.ram, 0x4000_0000, SMALL_RAM)
    assert ram.mem.regions == [(0x4000_0000, SMALL_RAM)]
    assert ram.mem.backend == m.ram.backend
    # the guest writes, the VMM reads its user memory, and back
    ram.mem.write(0x4000_0000 + 0x12345, b"guest")
    assert k.user_read(ram.va + 0x12345, 5) == b"guest"
    k.user_write(ram.va + SMALL_RAM - 4, b"vmm!")
    assert ram.mem.read(0x4000_0000 + SMALL_RAM - 4, 4) == b"vmm!"
    assert ram.hva(0x4000_0000 + 0x2000) == ram.va + 0x2000
    # distinct host pages, none of them shared with the host kernel's own allocations
    assert len(set(ram.pfns)) == SMALL_RAM // PAGE
    assert not ram.mem.is_ram(0x4000_0000 + SMALL_RAM, 1)


def test_guest_ram_registered_with_kvm_and_the_ioas(host):
    """KVM's memory slot and the IOAS (stage 2) reach the very bytes the guest wrote."""
    from pymsi.kernel.kvm import Kvm
    from pymsi.uapi import iommufd as u
    from pymsi.uapi import kvm as K

    m, k = host
    ram = GuestRam(k, m.ram, 0x4000_0000, SMALL_RAM)
    ictx = k.open("/dev/iommu")
    a = u.IommuIoasAlloc()
    ictx.ioctl(u.IOMMU_IOAS_ALLOC, a)
    ram.ioas_map(ictx, a.out_ioas_id)
    kvm_dev = k.open("/dev/kvm")
    vm = kvm_dev.ioctl(K.KVM_CREATE_VM, 0)
    ram.kvm_set_user_memory_region(vm, 0)
    ram.mem.write(0x4000_0000 + 0x3000, b"\x11\x22\x33\x44")
    kvm = k.fget(vm).private_data
    assert isinstance(kvm, Kvm)
    assert kvm.read_guest(0x4000_0000 + 0x3000, 4) == b"\x11\x22\x33\x44"
    ioas = ictx.private_data.ioas(a.out_ioas_id)
    # the IOAS pinned the same host frames the guest view aliases
    for i in (0, 3, SMALL_RAM // PAGE - 1):
        assert ioas.iova_to_phys(0x4000_0000 + i * PAGE) == ram.pfns[i] * PAGE
    assert m.ram.read(ram.pfns[3] * PAGE, 4) == b"\x11\x22\x33\x44"


def test_guest_memory_rejects_non_ram_host_frames(host):
    m, _ = host
    with pytest.raises(errors.InvalidArgument):
        guest_memory(m.ram, [(0x4000_0000, [0x1])])     # PFN 1 is not host RAM


# -- the guest boots on the VMM's board; MSIs reach its handlers ------------------------------

from pymsi.hw.its import Cmd  # noqa: E402
from pymsi.kernel.boot import boot_arm  # noqa: E402
from pymsi.kernel.pci_endpoint_test import PciEndpointTestDriver  # noqa: E402
from pymsi.machine.platforms import make_function  # noqa: E402
from pymsi.uapi import kvm as K  # noqa: E402
from pymsi.vmm.vmm import Vmm  # noqa: E402
from pymsi.vmmlib import msi_route  # noqa: E402

DOORBELL = 0x0809_0040        # the guest's vITS GITS_TRANSLATER (QEMU virt)


class Guest:
    """A host, a VMM with ``ncpus`` vCPUs, one VMM-emulated MSI-X function on the guest's
    PCI bus (nothing assigned), the guest booted with the endpoint test driver bound."""

    def __init__(self, ncpus: int = 2, nvec: int = 4, gicv4: bool = False) -> None:
        self.m = ArmVirt(smmu="nested", gicv4=gicv4)
        self.k = self.m.boot()
        self.vmm = Vmm(self.k, self.m.ram, ncpus=ncpus, ram_size=SMALL_RAM, kernel=boot_arm)
        self.board = self.vmm.realize()
        self.fn = self.board.pci.add(make_function(0, 1, {"msix": nvec}))
        self.g = self.vmm.boot_guest()
        self.drv = PciEndpointTestDriver(self.g).register()
        self.t = self.drv.tests[self.g.pci.devices[0]]

    def irq(self, v):
        return self.t.irqs[v]

    def cpu_of(self, v):
        """The vCPU the guest says vector ``v`` is on (/proc/irq/N/effective_affinity)."""
        mask = int(self.g.proc_read(f"/proc/irq/{self.irq(v)}/effective_affinity"), 16)
        assert mask & (mask - 1) == 0 and mask
        return mask.bit_length() - 1

    def run(self):
        self.board.bus.drain()
        return self.g.handle_interrupts()


def test_guest_boots_on_kvm():
    t = Guest(ncpus=3)
    log = "\n".join(t.g.log)
    assert "GICv3: 16 bits of IDs, LPIs on, 3 redistributors" in log
    assert "ITS@0x8080000: 16-bit DeviceIDs" in log and "GICv3" in log
    assert t.g.gic.version == 3 and t.g.gic.rd_base == {
        0: 0x080A_0000, 1: 0x080C_0000, 2: 0x080E_0000}
    kvm = t.k.fget(t.vmm.vm_fd).private_data
    vits = kvm.its_list()[0]
    assert vits.enabled and not vits.errors
    # its_cpu_init_collections(): collection n on vCPU n, through KVM's MAPC
    assert {c: col.target_addr for c, col in vits.collections.items()} == {0: 0, 1: 1, 2: 2}
    assert all(v.lpis_enabled for v in kvm.vcpus.values())
    # the guest's tables live in guest RAM, i.e. in the VMM's pages
    assert t.vmm.ram.contains(t.g.its.cmdq, 0x10000)


def test_device_dma_to_kvms_gic_frames_is_a_decode_error():
    """KVM's in-kernel vGIC / vITS registers are not on a device's path (QEMU registers
    no memory region for them; only the ITS translater): a device's read or write there
    is a failed transaction and changes nothing, while the vCPUs reach them and a
    device's MSI write to GITS_TRANSLATER still is an MSI."""
    from pymsi.hw import gicv3 as G
    from pymsi.hw import its as I

    t = Guest(ncpus=2, nvec=2)
    bus, rid = t.board.bus, t.fn.rid
    gicd, gicr, its = t.board.GICD, t.board.GICR, t.board.ITS
    before = {a: bus.read(a, 4) for a in (gicd + G.GICD_CTLR, gicr + G.GICR_CTLR,
                                          its + I.GITS_CTLR)}
    cwriter = bus.read(its + I.GITS_CWRITER, 8)
    assert before[its + I.GITS_CTLR] & 1 and before[gicr + G.GICR_CTLR] & 1   # the guest's
    for addr, value, size in ((gicd + G.GICD_CTLR, 0, 4), (gicr + G.GICR_CTLR, 0, 4),
                              (gicr + G.GICR_PROPBASER, 0, 8), (its + I.GITS_CTLR, 0, 4),
                              (its + I.GITS_CWRITER, cwriter + 0x20, 8),
                              (its + I.GITS_TRANSLATER, 0, 8)):
        r = bus.dma_write(rid, addr, value, size)
        assert not r.ok and r.bus_error, hex(addr)
        r = bus.dma_read(rid, addr, size)
        assert not r.ok and r.bus_error and r.value is None, hex(addr)
    assert {a: bus.read(a, 4) for a in before} == before
    assert bus.read(its + I.GITS_CWRITER, 8) == cwriter
    assert t.board.its_window.stats["msis"] == 0
    t.fn.notify(1)                                    # the doorbell write: an MSI
    assert t.run() == 1 and t.board.its_window.stats["msis"] == 1


def test_device_msi_reaches_the_guest_handler_on_its_vcpu():
    t = Guest(ncpus=2, nvec=4)
    assert t.t.nvec == 4
    for v in range(4):
        addr, data, ctrl = t.fn.msix_entry(v)
        assert (addr, data, ctrl) == (DOORBELL, v, 0)      # no vIOMMU: the raw doorbell
    for v in range(4):
        t.fn.notify(v)
        assert t.run() == 1
        assert t.t.hits[-1] == (v, t.cpu_of(v))
    assert sorted(t.t.hits) == [(v, t.cpu_of(v)) for v in range(4)]
    assert {c for _, c in t.t.hits} == {0, 1}              # spread over both vCPUs
    assert t.board.its_window.stats == {"msis": 4, "msi_errors": 0, "dma_decode_errors": 0}
    assert t.run() == 0                                    # nothing left


def test_signal_msi_and_irqfd_reach_the_guest():
    t = Guest(ncpus=2, nvec=2)
    rid = t.fn.rid
    assert t.vmm.signal_msi(DOORBELL, 1, rid) == 1
    t.run()
    assert t.t.hits == [(1, t.cpu_of(1))]
    # an irqfd on a GSI routed to (doorbell, EventID 0, DeviceID rid)
    k, vm = t.k, t.vmm.vm_fd
    k.ioctl(vm, K.KVM_SET_GSI_ROUTING, K.KvmIrqRouting(nr=1, entries=[msi_route(5, rid, 0)]))
    efd = k.eventfd()
    k.ioctl(vm, K.KVM_IRQFD, K.KvmIrqfd(fd=efd.fd, gsi=5))
    efd.write(1)
    assert t.run() == 1
    assert t.t.hits[-1] == (0, t.cpu_of(0))
    # an MSI for an event the guest never mapped is taken by nobody
    assert t.vmm.signal_msi(DOORBELL, 7, rid) == 0
    assert t.vmm.signal_msi(DOORBELL, 0, rid + 1) == 0
    assert t.run() == 0 and len(t.t.hits) == 2


def test_guest_movi_moves_the_interrupt_and_keeps_the_message():
    t = Guest(ncpus=4, nvec=2)
    before = t.fn.msix_entry(0)
    kvm = t.k.fget(t.vmm.vm_fd).private_data
    for cpu in (3, 1, 2, 0, 3):
        t.g.proc_write(f"/proc/irq/{t.irq(0)}/smp_affinity", f"{1 << cpu:x}")
        assert t.cpu_of(0) == cpu
        assert t.fn.msix_entry(0) == before                # MOVI: the message stays
        t.fn.notify(0)
        t.run()
        assert t.t.hits[-1] == (0, cpu)
    # the vITS followed the guest's MOVIs (KVM's LPI targets)
    lpi = t.g.irq.desc(t.irq(0)).irq_data.parent_data.hwirq
    assert kvm.lpis[lpi].target_vcpu == 3


def test_vcpu_interface_priorities_and_mask():
    """Two LPIs pending on one vCPU: the higher priority (lower value) is taken first;
    ICC_PMR masks what is not above it; a taken LPI is not taken twice."""
    t = Guest(ncpus=1, nvec=2)
    g = t.g
    lpi0 = g.irq.desc(t.irq(0)).irq_data.parent_data.hwirq
    g.its.write_prop(lpi0, 0x80 | 0b11)                    # priority 0x80, group 1, enabled
    dev = g.its.devices[t.fn.rid]
    g.its.send(Cmd.INV,
               d0=dev.device_id << 32, d1=lpi0 - dev.lpi_base, sync_cpu=0)
    cpuif = t.board.gic.cpus[0]
    t.fn.notify(1)
    t.fn.notify(0)
    t.board.bus.drain()
    cpuif.pmr = 0x80                                       # 0x80 and 0xA0 both masked
    assert not cpuif.irq_pending and g.handle_interrupts() == 0
    cpuif.pmr = 0x90                                       # only 0x80 passes
    assert g.handle_interrupts() == 1 and t.t.hits == [(0, 0)]
    cpuif.pmr = 0xF0
    assert g.handle_interrupts() == 1 and t.t.hits == [(0, 0), (1, 0)]
    assert cpuif.stats["acks"] == cpuif.stats["eois"] == 2
    spurious = cpuif.stats["spurious"]
    assert cpuif.iar1() == 1023 and cpuif.stats["spurious"] == spurious + 1


# -- firmware RMRs: the guest's IOMMU core identity-maps them ---------------------------------

RMR = (0x0800_0000, 0x0010_0000)


@pytest.mark.parametrize("honour", [True, False])
def test_iort_rmr_is_identity_mapped_in_the_dma_domain(honour):
    """A kernel booted on firmware describing an RMR maps it 1:1 in each device's DMA
    domain (and keeps it out of the IOVA allocator); one without RMR support does not."""
    m = ArmVirt(smmu="s1", devices=[{"msix": 2}])
    m.iort_rmrs = [RMR]
    m.honour_rmr = honour
    k = m.boot()
    dev = k.pci.devices[0]
    domain = dev.iommu_group.default_domain
    rid = dev.rid
    for off in (0, 0x40, 0x9_0040, RMR[1] - 4):
        iova = RMR[0] + off
        mapped = domain.iova_to_phys(iova)
        hw = m.smmu.translate(rid, iova, write=True).pa      # what the SMMU does with it
        if honour:
            assert mapped == iova and hw == iova
        else:
            assert mapped is None and hw is None
    assert domain.iova_to_phys(RMR[0] + RMR[1]) is None       # only the region
    from pymsi.kernel.iommu import ResvType

    direct = [(r.start, r.length) for r in k.iommu.get_resv_regions(dev)
              if r.type == ResvType.DIRECT]
    assert direct == ([RMR] if honour else [])
    shift = domain.cookie.iovad.shift                         # never handed out for DMA
    reserved = (RMR[0] >> shift, (RMR[0] + RMR[1] - 1) >> shift)
    assert (reserved in domain.cookie.iovad.allocated) == honour


def test_the_sw_msi_window_is_defined_once_below_its_users():
    """The host's SW_MSI window (arm-smmu-v3's reserved region), the IORT RMR the VMM
    describes over it and vmmlib's (start, end) form are all the one (base, size) of
    hw.virt_map -- not copies that could drift apart."""
    from pymsi import vmmlib
    from pymsi.hw import virt_map
    from pymsi.kernel import iommu
    from pymsi.vmm import board

    base, size = virt_map.IORT_RMR_SW_MSI
    assert (base, size) == RMR                                 # 0x8000000, 1 MiB (QEMU virt)
    assert board.IORT_RMR is virt_map.IORT_RMR_SW_MSI
    assert iommu.MSI_IOVA_BASE is virt_map.SW_MSI_BASE
    assert iommu.MSI_IOVA_LENGTH is virt_map.SW_MSI_SIZE
    assert vmmlib.RMR == (base, base + size)


# -- GICv4: a physical MSI straight into the guest (no KVM on the path) -----------------------

from pymsi.uapi import vfio as V  # noqa: E402


@pytest.mark.parametrize("pcpus,vcpus", [(4, 2), (2, 5)])
def test_gicv4_direct_injection_reaches_the_guest_vcpu(pcpus, vcpus):
    """A host function assigned through vfio-pci (by hand here: the test plays the VMM's
    vfio part) whose vectors' irqfds are routed to the guest's (DeviceID, EventID): with
    GICv4 the host LPI becomes a vLPI of the vCPU's vPE; the guest acknowledges it on its
    vCPU interface from the vPE's pending table, and a guest MOVI moves it (VMOVI)."""
    m = ArmVirt(ncpus=pcpus, smmu="nested", gicv4=True, devices=[{"msix": 4}],
                msi_design="sw-msi")
    k = m.boot()
    vmm = Vmm(k, m.ram, ncpus=vcpus, ram_size=SMALL_RAM, kernel=boot_arm)
    board = vmm.realize()
    gfn = board.pci.add(make_function(0, 1, {"msix": 4}))    # what the guest sees
    g = vmm.boot_guest()
    t = PciEndpointTestDriver(g).register().tests[g.pci.devices[0]]
    pdev = k.pci.devices[0]
    k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
    k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
    dev = k.open("/dev/vfio/devices/vfio0")
    dev.ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, V.VfioDeviceBindIommufd(iommufd=vmm.iommufd.fd))
    dev.ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, V.VfioDeviceAttachIommufdPt(pt_id=vmm.ioas_id))
    efds = [k.eventfd() for _ in range(4)]
    k.ioctl(vmm.vm_fd, K.KVM_SET_GSI_ROUTING, K.KvmIrqRouting(
        nr=4, entries=[msi_route(v, gfn.rid, v) for v in range(4)]))
    for v, e in enumerate(efds):
        k.ioctl(vmm.vm_fd, K.KVM_IRQFD, K.KvmIrqfd(fd=e.fd, gsi=v))
    dev.ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
        flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
        index=V.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=4, data=[e.fd for e in efds]))
    pdev.set_master()
    hw = m.functions[0]

    def fire(v):
        hw.notify(v)
        m.bus.drain()
        k.handle_interrupts()
        return g.handle_interrupts()

    cpuifs = board.gic.cpus
    for v in range(4):
        assert fire(v) == 1
        assert t.hits[-1] == (v, int(g.proc_read(
            f"/proc/irq/{t.irqs[v]}/effective_affinity"), 16).bit_length() - 1)
    assert sum(c.stats["direct_acks"] for c in cpuifs) == 4       # all through the vPE
    assert [e.f_op.count for e in efds] == [0] * 4                # never through the eventfd
    moves = [1, 0, vcpus - 1, vcpus - 2, 0]
    for cpu in moves:
        g.proc_write(f"/proc/irq/{t.irqs[2]}/smp_affinity", f"{1 << cpu:x}")
        assert fire(2) == 1 and t.hits[-1] == (2, cpu)
    # vLPIs pending for several vCPUs sharing a physical CPU are all taken, each on its own
    for v in range(4):
        hw.notify(v)
    m.bus.drain()
    assert g.handle_interrupts() == 4
    assert sorted(t.hits[-4:]) == [(v, int(g.proc_read(
        f"/proc/irq/{t.irqs[v]}/effective_affinity"), 16).bit_length() - 1) for v in range(4)]
    assert sum(c.stats["direct_acks"] for c in cpuifs) == 8 + len(moves)


# -- guest accesses to KVM's devices never raise ---------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from([0x0800_0000, 0x0808_0000, 0x080A_0000, 0x080C_0000]),
    st.integers(0, 0x1_FFFF), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**64 - 1),
    st.booleans(), st.booleans()), max_size=40))
def test_random_guest_mmio_to_the_vgic_and_vits_never_raises(ops):
    """A fresh guest per example (so a failure replays alone).  Random vCPU accesses to
    KVM's frames never raise; random device accesses (DMA) there are all decode errors
    but a translater write, and leave the vITS's registers as they were."""
    t = Guest(ncpus=2, nvec=2)
    bus, rid = t.board.bus, t.fn.rid
    for base, off, size, value, write, dma in ops:
        limit = 0x1_0000 if base == 0x0800_0000 else 0x2_0000
        off = (off % limit) & ~(size - 1)
        value &= (1 << 8 * size) - 1
        if dma:
            regs = [bus.read(0x0808_0000 + g, 8) for g in (0x0, 0x80, 0x88)]
            r = bus.dma_write(rid, base + off, value, size) if write else \
                bus.dma_read(rid, base + off, size)
            translater = write and base + off == DOORBELL and size in (2, 4)
            assert r.ok == translater and r.bus_error != translater
            assert [bus.read(0x0808_0000 + g, 8) for g in (0x0, 0x80, 0x88)] == regs
        elif write:
            bus.write(base + off, value, size)
        else:
            bus.read(base + off, size)
    t.fn.notify(0)
    t.run()
    for c in t.board.gic.cpus:             # the vCPU interface is still consistent
        c.pmr, c.igrpen1 = 0xF0, 1
        while c.iar1() != 1023:
            c.eoir1(0)
