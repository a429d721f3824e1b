"""A VMM driving the MSI designs at random, against its own bookkeeping.

A hypothesis ``RuleBasedStateMachine`` plays the VMM: it describes per-vector
addresses (``VFIO_DEVICE_MSI_IOVA``, or the design's own way), enables and
disables vectors (``SET_IRQS`` eventfd / -1 / count 0), writes
``/proc/irq/N/smp_affinity``, forwards vectors to a guest with GICv4 (KVM irqfd
on an MSI route to the vITS) and lets the guest move them (MOVI), replaces the
device between the paging HWPT and a nested HWPT, maps and unmaps the doorbell
page (``IOMMU_IOAS_MAP_MSI`` / ``IOMMU_IOAS_UNMAP``), fires vectors, and closes
fds (eventfds, the VM, the device file, everything) and opens them again.

The model is only what userspace did and what the design's rules say must
follow from it (the thread's design for ``per-vector``: an address only from
the table, written at allocation and by every forced rewrite after an affinity
change, a rewrite without an entry masks the vector, nothing mapped but what
the VMM mapped; MSI-X pending-bit semantics of the PCI specification).  It is
never read back from the kernel model.  After every step the invariants of the
issue are checked; each design has a flag per invariant saying whether it is
expected to hold (``FLAGS``): the other designs run the same rules and keep the
invariants they can (delivery and isolation everywhere, routing for sw-msi).

Layout (the nested HWPT's stage 1 is built by the "guest" in its memory):

* the device's per-vector addresses are ``POOL[i]``; in the nested HWPT the
  guest maps ``POOL[i]`` to the IPA ``POOL[i] + S1_OFF``, so the VMM must map the
  doorbell page at ``POOL[i]`` for the paging HWPT and at ``POOL[i] + S1_OFF``
  for the nested one (stage 2); the guest also identity-maps the first SW_MSI
  page (QEMU's IORT RMR) and its RAM page.
* a second device on a second IOAS of the same iommufd is the isolation
  witness: it must never see the first device's interrupts or memory.
"""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import Phase, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from test_kvm_vgic import ITT, LPI, Guest, mapc, mapd, mapti, movi

from pymsi.core import Prot
from pymsi.core.pgtable import IoPgtable, TableAllocator
from pymsi.hw.pci import Delivery
from pymsi.machine import ArmVirt
from pymsi.uapi import iommufd as u
from pymsi.uapi import kvm as K
from pymsi.uapi import vfio as V
from pymsi.vmmlib import GuestMem

from kernel_util import errno_of
from smmu_driver import cd_words, pack

PAGE = 0x1000
DOORBELL = 0x0808_0000 + 0x1_0040          # GITS_TRANSLATER of the virt board's ITS (PA)
VITS_DOORBELL = 0x0808_0000 + 0x1_0040     # the guest's vITS GITS_TRANSLATER (guest PA)
LOW = DOORBELL & (PAGE - 1)                # msi_msg_set_addr keeps the low 12 bits
SW_MSI_BASE = 0x0800_0000
RAM_IOVA, RAM2_IOVA = 0x4000_0000, 0x6000_0000
POOL = [0x2000_0000 + i * PAGE for i in range(3)]
S1_OFF = 0x0100_0000
ISO_IOVA = 0x3000_0000                     # the witness device's doorbell IOVA
NVEC = 4
GUEST_DEVID = 0x55
MSIX = V.VFIO_PCI_MSIX_IRQ_INDEX
EFD_TRIG = V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER
SET, CLEAR = V.VFIO_MSI_IOVA_SET, V.VFIO_MSI_IOVA_CLEAR
RW_FIXED = (u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
            | u.IOMMU_IOAS_MAP_WRITEABLE)

def event(what: str) -> None:
    """hypothesis.event, also usable when a rule sequence is replayed by hand."""
    try:
        _event(what)
    except InvalidArgument:
        pass


INVARIANTS = ("routing", "delivery", "stability", "no_alloc", "no_fallback", "isolation")
#: which invariants each design is expected to keep under these rules
FLAGS = {
    "per-vector": frozenset(INVARIANTS),
    "sw-msi": frozenset({"routing", "delivery", "isolation"}),
    "preset": frozenset({"delivery", "isolation"}),
    "dma-cookie": frozenset({"delivery", "isolation"}),
}


class World:
    """The VMM's objects on one booted kernel: an iommufd with two IOASes, a nest
    parent (the paging HWPT) and a nested HWPT over IOAS 1, device 0 on one of them,
    the witness device 1 on IOAS 2 with one vector enabled, and a VM with a vITS
    whose guest has mapped device 0's four events."""

    def __init__(self, m: ArmVirt, k, design: str) -> None:
        self.m, self.k, self.design = m, k, design
        for pdev in k.pci.devices[:2]:              # the devices go to vfio-pci (sysfs)
            k.sysfs_write(f"/sys/bus/pci/devices/{pdev.bdf}/driver_override", "vfio-pci")
            k.sysfs_write("/sys/bus/pci/drivers/vfio-pci/bind", pdev.bdf)
        self.build()

    # -- building (also after everything was closed) -------------------------------------

    def build(self) -> None:
        k = self.k
        self.ictx = k.open("/dev/iommu")
        self.ioas = self.ioas_alloc()
        self.ioas2 = self.ioas_alloc()
        self.va = k.mmap(0x10000)
        self.va2 = k.mmap(PAGE)
        self.map(self.ioas, self.va, RAM_IOVA, 0x10000)
        self.map(self.ioas2, self.va2, RAM2_IOVA, PAGE)
        self.files = [k.open(f"/dev/vfio/devices/vfio{i}") for i in range(2)]
        self.devids = [self.bind(0), self.bind(1)]
        self.parent = self.hwpt_alloc(self.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
        self.nested = self.hwpt_alloc(self.parent, 0, self.guest_vste())
        self.attach(self.parent, 0)
        self.attach(self.ioas2, 1)
        # the witness: one vector, its doorbell mapped where the design needs it
        if self.design == "per-vector":
            self.files[1].ioctl(V.VFIO_DEVICE_MSI_IOVA, V.VfioDeviceMsiIova(
                flags=SET, index=MSIX, start=0, count=1, iova=[ISO_IOVA]))
            self.map_msi(ISO_IOVA, self.ioas2, 1)
        self.wit_efd = k.eventfd()
        self.files[1].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=EFD_TRIG, index=MSIX, start=0, count=1, data=[self.wit_efd.fd]))
        self.new_guest()

    def ioas_alloc(self) -> int:
        a = u.IommuIoasAlloc()
        self.ictx.ioctl(u.IOMMU_IOAS_ALLOC, a)
        return a.out_ioas_id

    def map(self, ioas: int, va: int, iova: int, length: int) -> None:
        self.ictx.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
            flags=RW_FIXED, ioas_id=ioas, user_va=va, length=length, iova=iova))

    def bind(self, i: int) -> int:
        b = V.VfioDeviceBindIommufd(iommufd=self.ictx.fd)
        self.files[i].ioctl(V.VFIO_DEVICE_BIND_IOMMUFD, b)
        self.k.pci.devices[i].set_master()          # the VMM's config write
        return b.out_devid

    def attach(self, pt_id: int, i: int = 0) -> None:
        self.files[i].ioctl(V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                            V.VfioDeviceAttachIommufdPt(pt_id=pt_id))

    def map_msi(self, iova: int, ioas: int | None = None, i: int = 0) -> None:
        self.ictx.ioctl(u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(
            ioas_id=self.ioas if ioas is None else ioas, dev_id=self.devids[i], iova=iova))

    def unmap(self, iova: int, length: int = PAGE) -> None:
        self.ictx.ioctl(u.IOMMU_IOAS_UNMAP, u.IommuIoasUnmap(ioas_id=self.ioas, iova=iova,
                                                             length=length))

    def hwpt_alloc(self, pt_id: int, flags: int, data: bytes = b"") -> int:
        va = 0
        if data:
            va = self.k.mmap(PAGE)
            self.k.user_write(va, data)
        a = u.IommuHwptAlloc(flags=flags, dev_id=self.devids[0], pt_id=pt_id,
                             data_len=len(data), data_uptr=va,
                             data_type=u.IOMMU_HWPT_DATA_ARM_SMMUV3 if data
                             else u.IOMMU_HWPT_DATA_NONE)
        self.ictx.ioctl(u.IOMMU_HWPT_ALLOC, a)
        return a.out_hwpt_id

    def guest_vste(self) -> bytes:
        """The guest's stage 1 (tables and CD in its RAM, reached through the IOAS):
        POOL[i] -> POOL[i] + S1_OFF, the first SW_MSI page and RAM_IOVA identity."""
        gmem = GuestMem(self)
        alloc = TableAllocator(gmem, RAM_IOVA + 0x8000, 0x8000)
        s1 = IoPgtable(gmem, alloc, "s1", ias=48, oas=44)
        for p in POOL:
            s1.map(p, p + S1_OFF, PAGE, Prot.READ | Prot.WRITE)
        for p in (SW_MSI_BASE, RAM_IOVA):
            s1.map(p, p, PAGE, Prot.READ | Prot.WRITE)
        cd = RAM_IOVA + 0x7000
        gmem.write(cd, pack(cd_words(s1.stage1_config(), asid=1)))
        return (1 | 0b101 << 1 | cd).to_bytes(8, "little") + bytes(8)

    def ctx(self):
        return self.ictx.private_data

    def new_guest(self) -> None:
        """A VM with two vCPUs and a vITS; the guest maps device GUEST_DEVID's events
        0..3 to vLPIs LPI+v on collection v % 2; GSI v+1 routes event v (one
        KVM_SET_GSI_ROUTING with all four)."""
        g = Guest(self.k)
        g.cmds(mapd(GUEST_DEVID, 2, ITT), mapc(0, 0), mapc(1, 1),
               *[mapti(GUEST_DEVID, v, LPI + v, v % 2) for v in range(NVEC)])
        entries = [K.KvmIrqRoutingEntry(
            gsi=v + 1, type=K.KVM_IRQ_ROUTING_MSI, flags=K.KVM_MSI_VALID_DEVID,
            u={"msi": {"address_lo": VITS_DOORBELL, "address_hi": 0, "data": v,
                       "devid": GUEST_DEVID}}) for v in range(NVEC)]
        self.k.ioctl(g.vm, K.KVM_SET_GSI_ROUTING, K.KvmIrqRouting(nr=NVEC, entries=entries))
        self.guest = g

    def close_guest(self) -> None:
        g = self.guest
        for fd in [g.vm] + list(g.vcpu_fds) + [fd for fd in list(self.k.files.fds)
                                                if self._is_kvm_dev(fd)]:
            if self.k.files.fds.get(fd) is not None:
                self.k.close(fd)
        self.guest = None

    def _is_kvm_dev(self, fd: int) -> bool:
        f = self.k.files.fds.get(fd)
        return f is not None and type(f.f_op).__module__.endswith(("kvm", "vgic_its"))

    # -- observations -----------------------------------------------------------------

    def entry(self, v: int) -> tuple[int, int, int]:
        return self.m.functions[0].msix_entry(v)

    def irq(self, v: int) -> int:
        return self.k.pci.devices[0].msi_descs[v].irq

    def faults(self) -> int:
        return self.m.smmu.stats["events_recorded"]

    def s2(self):
        d = self.k.pci.devices[0].iommu_group.domain
        return d.parent if d.parent is not None else d

    def fire(self, v: int, i: int = 0) -> Delivery:
        d = self.m.functions[i].notify(v)
        self.settle()
        return d

    def settle(self) -> None:
        self.m.bus.drain()
        self.k.handle_interrupts()

    def vlpis(self) -> set[tuple[int, int]]:
        """(vCPU, vINTID) of every vLPI pending in a vPE table."""
        if self.guest is None:
            return set()
        out = set()
        for c, vpe in self.guest.kvm.vpes.items():
            for v in range(NVEC):
                if self.m.gic.pending_bit(vpe.vpt, LPI + v):
                    out.add((c, LPI + v))
        return out

    def clear_vlpis(self) -> None:
        if self.guest is None:
            return
        for vpe in self.guest.kvm.vpes.values():
            for v in range(NVEC):
                self.m.gic.pending_bit(vpe.vpt, LPI + v, False)

    def snapshot(self):
        """Everything a failed call must leave as it was."""
        pdev = self.k.pci.devices[0]
        core = self.k.vfio_pci.cores[pdev]
        return (bytes(self.m.functions[0].msix_table), bytes(self.m.functions[0].msix_pba),
                sorted(self.k.irq.descs), {v: (d.irq, d.msg) for v, d in pdev.msi_descs.items()},
                pdev.msix_enabled, core.irq_type, sorted(core.ctx),
                {d: dict(dev.events) for d, dev in self.k.its.devices.items()})


class VectorMachine(RuleBasedStateMachine):
    """The VMM at random; subclasses fix ``design`` and the HWPT it starts on."""

    design = "per-vector"
    start = "paging"

    def __init__(self) -> None:
        super().__init__()
        m = ArmVirt(smmu="nested", gicv4=True, devices=[{"msix": NVEC}] * 2,
                    msi_design=self.design)
        self.w = World(m, m.boot(), self.design)
        self.flags = FLAGS[self.design]
        self.pv = self.design == "per-vector"
        self.pending: set[int] = set()          # MSI-X pending bits (hardware state)
        self.faults = self.w.faults()
        self.exp: dict = {self.w.wit_efd: 0}    # eventfd File -> expected count
        self.vlpi: set[tuple[int, int]] = set()
        self.unknown: list[int] = []            # deliveries whose target the model can't say
        self.mapped: set[int] = set()           # doorbell IOVAs the VMM mapped in IOAS 1
        self.kexp: dict[int, int] = {}          # host IRQ -> expected count of interrupts
        self.col = {v: v % 2 for v in range(NVEC)}   # the guest's collections (vCPUs)
        self.reset_device()
        self.mode = "paging"
        if self.start == "nested":
            self.w.attach(self.w.nested)
            self.mode = "nested"

    def reset_device(self) -> None:
        """Model of a freshly bound device 0 (no table, nothing enabled)."""
        self.table: dict[int, int] = {}         # vector -> POOL index (userspace's table)
        self.lookup: dict[int, int | None] = {}  # vector -> address cached at the last compose
        self.addr: dict[int, int] = {}          # vector -> address in the MSI-X entry
        self.masked: dict[int, bool] = {}       # vector -> entry masked (allocated vectors)
        self.rmask: dict[int, bool] = {}        # masked by a rewrite that found no entry
        self.alloc: set[int] = set()
        self.trig: dict = {}                    # vector -> eventfd File
        self.irqfd: dict = {}                   # vector -> eventfd File bound by KVM_IRQFD
        self.enabled = False
        self.no_producer: set[int] = set()

    def device_was_reset(self) -> None:
        """The last close of device 0's file reset the function (vfio_pci_core_disable):
        whatever it held pending is gone, never delivered."""
        if self.pending:
            event("pending bits cleared by the reset at close")
        self.pending.clear()
        fn = self.w.m.functions[0]
        assert not any(fn.msix_pending(v) for v in range(NVEC))

    # -- the model's rules --------------------------------------------------------------

    def expected_address(self, v: int) -> int | None:
        i = self.table.get(v)
        return None if i is None else POOL[i] | LOW

    def reaches(self, addr: int) -> bool:
        """Per-vector: whether the address reaches the doorbell through the HWPT the
        device is on, from what the VMM mapped."""
        page = addr & ~(PAGE - 1)
        if page not in POOL:
            return False
        s2 = page + (S1_OFF if self.mode == "nested" else 0)
        return s2 in self.mapped

    def forwarded(self, v: int) -> bool:
        e = self.trig.get(v)
        return (e is not None and self.irqfd.get(v) is e and self.w.guest is not None
                and v not in self.no_producer)

    def irqfd_gone(self, e) -> None:
        """irqfd_shutdown() reads the eventfd's count while unhooking itself."""
        if e in self.exp:
            self.exp[e] = 0

    def is_open(self, f) -> bool:
        return f.fd is not None and self.w.k.files.fds.get(f.fd) is f

    def deliver(self, v: int) -> None:
        """The vector's message goes out (a fire or a pending bit released)."""
        if not self.pv:
            self.unknown.append(v)
            return
        if not self.reaches(self.addr[v]):
            self.faults += 1
            event("fire faults in the SMMU")
        elif self.forwarded(v):
            self.vlpi.add((self.col[v], LPI + v))
            event("vLPI")
        else:
            self.exp[self.trig[v]] += 1
            self.kexp[self.w.irq(v)] += 1
            event("eventfd signalled")

    def unmask(self, v: int) -> None:
        self.masked[v] = False
        if v in self.pending:
            self.pending.discard(v)
            event("pending delivered at unmask")
            self.deliver(v)

    def rewrite(self, v: int) -> None:
        """The forced rewrite (per-vector only): the table's address, or masked."""
        if not self.pv:
            return
        a = self.expected_address(v)
        if a is None:
            self.masked[v] = True
            self.rmask[v] = True
            event("rewrite without an entry: masked")
            return
        self.lookup[v] = a
        self.addr[v] = a
        if self.rmask.get(v):
            self.rmask[v] = False
            if v in self.trig:
                self.unmask(v)

    def activate(self, v: int) -> None:
        """request_irq(): activation composes from the cached address; the startup's
        affinity setting (before the unmask) is a forced rewrite under per-vector;
        then the producer connects (VMAPTI: another rewrite when forwarded)."""
        self.addr[v] = self.lookup.get(v) or 0
        self.rewrite(v)
        self.unmask(v)
        if self.forwarded(v):
            self.rewrite(v)

    def deactivate(self, v: int) -> None:
        """free_irq(): the producer goes first (unforwarded: a rewrite), then the IRQ
        is shut down: masked and the message zeroed (msi_domain_deactivate)."""
        if self.forwarded(v):
            self.no_producer.add(v)
            self.rewrite(v)
            self.no_producer.discard(v)
        self.trig.pop(v, None)
        self.masked[v] = True
        self.addr[v] = 0

    def allocate(self, v: int) -> None:
        self.alloc.add(v)
        # a new interrupt descriptor counts from 0 (the pending message an enable releases
        # is taken during the ioctl, so the count read afterwards may already include it)
        self.kexp[self.w.irq(v)] = 0
        self.lookup[v] = self.expected_address(v) if self.pv else None
        self.masked[v] = True
        self.rmask[v] = False

    @initialize(full=st.sampled_from([True, True, True, False]))
    def vmm_setup(self, full):
        """Usually what a VMM does first: describe every vector, map the doorbell
        pages for both HWPTs, enable all four vectors; sometimes nothing."""
        event(f"start: {'full VMM set-up' if full else 'bare'}")
        if not full:
            return
        for v in range(NVEC):
            self.set_address(v, v % len(POOL))
        for i in range(len(POOL)):
            self.map_doorbell(i, False)
            self.map_doorbell(i, True)
        self.enable(NVEC)

    # -- rules: addresses ---------------------------------------------------------------

    @rule(v=st.integers(0, NVEC - 1), i=st.integers(0, len(POOL) - 1))
    def set_address(self, v, i):
        f = self.w.files[0]
        if self.design == "preset":
            f.ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
                flags=V.VFIO_IRQ_SET_ACTION_PREPARE | V.VFIO_IRQ_SET_DATA_MSI_IOVA,
                index=MSIX, start=v, count=1, data=[POOL[i]]))
            return
        arg = V.VfioDeviceMsiIova(flags=SET, index=MSIX, start=v, count=1, iova=[POOL[i]])
        if not self.pv:
            assert errno_of(f.ioctl, V.VFIO_DEVICE_MSI_IOVA, arg) == errno.EOPNOTSUPP
            return
        before = self.w.snapshot()
        f.ioctl(V.VFIO_DEVICE_MSI_IOVA, arg)
        assert self.w.snapshot() == before          # step 1 of 2 touches no device
        self.table[v] = i

    @rule(v=st.integers(0, NVEC - 1))
    def clear_address(self, v):
        arg = V.VfioDeviceMsiIova(flags=CLEAR, index=MSIX, start=v, count=1)
        if not self.pv:
            assert errno_of(self.w.files[0].ioctl, V.VFIO_DEVICE_MSI_IOVA, arg) \
                == errno.EOPNOTSUPP
            return
        self.w.files[0].ioctl(V.VFIO_DEVICE_MSI_IOVA, arg)
        self.table.pop(v, None)

    @rule(i=st.integers(0, len(POOL) - 1), nested_page=st.booleans())
    def map_doorbell(self, i, nested_page):
        if self.design == "preset" and not nested_page:
            return          # preset installs the doorbell at POOL[i] itself (in the domain)
        iova = POOL[i] + (S1_OFF if nested_page else 0)
        if iova in self.mapped:
            assert errno_of(self.w.map_msi, iova) == errno.EEXIST
            return
        self.w.map_msi(iova)
        self.mapped.add(iova)

    @rule(i=st.integers(0, len(POOL) - 1), nested_page=st.booleans())
    def unmap_doorbell(self, i, nested_page):
        if self.design == "preset" and not nested_page:
            return          # preset installs the doorbell at POOL[i] itself (in the domain)
        iova = POOL[i] + (S1_OFF if nested_page else 0)
        if iova not in self.mapped:
            assert errno_of(self.w.unmap, iova) == errno.ENOENT
            return
        self.w.unmap(iova)
        self.mapped.discard(iova)

    # -- rules: vectors -----------------------------------------------------------------

    def missing(self, vectors) -> list[int]:
        return [v for v in vectors if v not in self.table]

    @precondition(lambda self: not self.enabled)
    @rule(n=st.integers(1, NVEC))
    def enable(self, n):
        efds = [self.w.k.eventfd() for _ in range(n)]
        arg = V.VfioIrqSet(flags=EFD_TRIG, index=MSIX, start=0, count=n,
                           data=[e.fd for e in efds])
        if self.pv and self.missing(range(n)):
            event("enable without an entry: ENOENT")
            before = self.w.snapshot()
            assert errno_of(self.w.files[0].ioctl, V.VFIO_DEVICE_SET_IRQS, arg) == errno.ENOENT
            assert self.w.snapshot() == before
            assert all(e.f_op.refs == 1 for e in efds)
            return
        if not self.pv and any(v not in self.table for v in range(n)):
            event("enable without an address: another address used")
        assert self.w.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, arg) == 0
        self.enabled = True
        for v in range(n):
            self.allocate(v)
            self.exp[efds[v]] = 0
            self.trig[v] = efds[v]
            self.activate(v)

    @precondition(lambda self: not self.enabled)
    @rule(n=st.integers(1, NVEC), i=st.integers(0, len(POOL) - 1))
    def describe_and_enable(self, n, i):
        """What a VMM does before enabling: an address for every vector that has none
        (per-vector; preset: PREPARE), then SET_IRQS."""
        for v in range(n):
            if v not in self.table:
                self.set_address(v, (i + v) % len(POOL))
        self.enable(n)

    @precondition(lambda self: self.enabled)
    @rule(v=st.integers(0, NVEC - 1), on=st.booleans())
    def trigger(self, v, on):
        efd = self.w.k.eventfd() if on else None
        arg = V.VfioIrqSet(flags=EFD_TRIG, index=MSIX, start=v, count=1,
                           data=[efd.fd if on else -1])
        if on and self.pv and self.missing([v]):
            event("trigger without an entry: ENOENT")
            before = self.w.snapshot()
            assert errno_of(self.w.files[0].ioctl, V.VFIO_DEVICE_SET_IRQS, arg) == errno.ENOENT
            assert self.w.snapshot() == before
            return
        self.w.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, arg)
        if v in self.trig:
            self.deactivate(v)
        if not on:
            return
        if v not in self.alloc:
            event("MSI-X grown")
            self.allocate(v)
        self.exp[efd] = 0
        self.trig[v] = efd
        self.activate(v)

    @precondition(lambda self: self.enabled)
    @rule()
    def disable(self):
        self.w.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_TRIGGER, index=MSIX))
        for v in sorted(self.trig):
            self.deactivate(v)
        self.alloc.clear()
        self.enabled = False

    @precondition(lambda self: self.trig)
    @rule(data=st.data(), cpu=st.integers(0, 3))
    def affinity(self, data, cpu):
        v = data.draw(st.sampled_from(sorted(self.trig)))
        self.do_affinity(v, cpu)

    def do_affinity(self, v, cpu):
        path = f"/proc/irq/{self.w.irq(v)}/smp_affinity"
        if self.pv and self.expected_address(v) is None:
            # Per-vector: the entry is looked up before the ITS is asked (even for a
            # forwarded vector); none means the change is refused and nothing moves.
            event("affinity of a vector without an entry: ENOENT")
            before = self.w.snapshot()
            assert errno_of(self.w.k.proc_write, path, f"{1 << cpu:x}") == errno.ENOENT
            assert self.w.snapshot() == before
            return
        if self.forwarded(v):
            event("affinity of a forwarded vector: EINVAL")
            before = self.w.snapshot()
            assert errno_of(self.w.k.proc_write, path, f"{1 << cpu:x}") == errno.EINVAL
            assert self.w.snapshot() == before
            return
        self.w.k.proc_write(path, f"{1 << cpu:x}")
        self.rewrite(v)

    @precondition(lambda self: self.enabled)
    @rule()
    def fire_all(self):
        """The device raises every vector once, in order."""
        for v in range(NVEC):
            self.fire(v)

    @rule(v=st.integers(0, NVEC - 1))
    def fire(self, v):
        d = self.w.m.functions[0].notify(v)
        event(f"fire -> {d.name}")
        if not self.enabled:
            assert d == Delivery.DISABLED
        elif v not in self.alloc or self.masked[v]:
            assert d == Delivery.PENDING
            event("fire: pending")
            self.pending.add(v)
        else:
            assert d != Delivery.PENDING
            self.deliver(v)
        self.w.settle()

    # -- rules: GICv4 (KVM irqfd + route to the vITS) and the guest's MOVI ----------------

    def forwardable(self) -> list[int]:
        """Vectors with an open trigger, not forwarded, whose old irqfd (if any) the
        VMM can still name."""
        if self.w.guest is None:
            return []
        # Under per-vector a vector without an entry cannot be forwarded (the vCPU
        # affinity is refused with ENOENT: tests/test_msi_designs.py shows it).
        return sorted(v for v, e in self.trig.items()
                      if self.is_open(e) and not self.forwarded(v) and self.describable(v)
                      and (v not in self.irqfd or self.is_open(self.irqfd[v])))

    def describable(self, v):
        """Not per-vector, or the vector has an entry."""
        return not self.pv or self.expected_address(v) is not None

    @precondition(lambda self: self.forwardable())
    @rule(data=st.data())
    def forward(self, data):
        v = data.draw(st.sampled_from(self.forwardable()))
        self.do_forward(v)

    def do_forward(self, v):
        if v in self.irqfd:                           # an old, unconnected irqfd
            old = self.irqfd.pop(v)
            self.w.guest.irqfd(old.fd, v + 1, K.KVM_IRQFD_FLAG_DEASSIGN)
            self.irqfd_gone(old)
        e = self.trig[v]
        self.w.guest.irqfd(e.fd, v + 1)
        self.irqfd[v] = e
        if self.exp[e]:
            # irqfd_assign(): an eventfd already signalled is injected at once (its
            # count is not read); the guest's pending vLPI then moves to the vPE.
            event("irqfd on a signalled eventfd")
            self.vlpi.add((self.col[v], LPI + v))
        event("forwarded")
        self.rewrite(v)                              # its_map_vlpi -> forced rewrite

    @precondition(lambda self: any(self.forwarded(v) and self.is_open(self.trig[v])
                                   for v in self.trig))
    @rule(data=st.data())
    def unforward(self, data):
        v = data.draw(st.sampled_from(sorted(
            v for v in self.trig if self.forwarded(v) and self.is_open(self.trig[v]))))
        self.do_unforward(v)

    def do_unforward(self, v):
        self.w.guest.irqfd(self.irqfd[v].fd, v + 1, K.KVM_IRQFD_FLAG_DEASSIGN)
        self.irqfd_gone(self.irqfd.pop(v))
        self.rewrite(v)

    @precondition(lambda self: self.w.guest is not None)
    @rule(v=st.integers(0, NVEC - 1), vcpu=st.integers(0, 1))
    def guest_movi(self, v, vcpu):
        if self.forwarded(v) and not self.describable(v):
            # The host refuses the VMOVI (ENOENT, shown in tests/test_msi_designs.py);
            # KVM's target and the vPE then differ, which this model does not track.
            event("guest MOVI of a forwarded vector without an entry: skipped")
            return
        self.w.guest.cmds(movi(GUEST_DEVID, v, vcpu))
        self.col[v] = vcpu
        if self.forwarded(v):
            event("VMOVI of a forwarded vector")
            self.rewrite(v)

    # -- rules: HWPTs ---------------------------------------------------------------------

    @rule(nested=st.booleans())
    def replace(self, nested):
        mode = "nested" if nested else "paging"
        self.w.attach(self.w.nested if nested else self.w.parent)
        old, self.mode = self.mode, mode
        if mode != old:
            # Per-vector: once attached to another HWPT, every started vector is
            # written again from its entry (or masked); a message that rewrite
            # releases goes through the new HWPT.  Replacing by the same HWPT does
            # nothing.
            for v in sorted(self.trig):
                self.rewrite(v)

    # -- rules: isolation probes --------------------------------------------------------

    @rule(go=st.integers(0, 2))
    def dma_outside_the_ioas(self, go):
        """Device 0 writes IOAS 2's RAM IOVA: not in its IOAS, so it faults."""
        if go:                                       # rarer than the other rules
            return
        r = self.w.m.bus.dma_write(self.w.k.pci.devices[0].rid, RAM2_IOVA, 1, 4)
        self.w.settle()
        assert not r.ok
        self.faults += 1
        r = self.w.m.bus.dma_write(self.w.k.pci.devices[0].rid, RAM_IOVA + 0x100, 1, 4)
        assert r.ok and self.w.k.user_read(self.w.va + 0x100, 1) == b"\x01"

    @precondition(lambda self: self.alloc)
    @rule(data=st.data(), go=st.integers(0, 2))
    def witness_forges(self, data, go):
        """Device 1 writes device 0's message of a vector: it can only ever raise its
        own events, never device 0's."""
        if go:                                       # rarer than the other rules
            return
        v = data.draw(st.sampled_from(sorted(self.alloc)))
        self.do_witness_forges(v)

    def do_witness_forges(self, v):
        addr, msgdata, _ = self.w.entry(v)
        before = (self.w.wit_efd.f_op.count, self.w.faults())
        self.w.m.bus.dma_write(self.w.k.pci.devices[1].rid, addr, msgdata, 4)
        self.w.settle()
        got, faults = self.w.wit_efd.f_op.count - before[0], self.w.faults() - before[1]
        assert (got, faults) in ((1, 0), (0, 1), (0, 0))
        self.exp[self.w.wit_efd] += got
        self.faults += faults
        event(f"forged write: witness +{got}, faults +{faults}")

    # -- rules: closing and reopening ----------------------------------------------------

    @precondition(lambda self: any(self.is_open(e) for e in self.trig.values()))
    @rule(data=st.data())
    def close_eventfd(self, data):
        """The VMM closes its eventfd: VFIO keeps its reference (the vector still
        signals it); the release's EPOLLHUP shuts KVM's irqfd on it down, so a
        forwarded vector is unforwarded (and, per-vector, rewritten)."""
        v = data.draw(st.sampled_from(sorted(
            v for v, e in self.trig.items() if self.is_open(e))))
        self.do_close_eventfd(v)

    def do_close_eventfd(self, v):
        fwd = self.forwarded(v)
        self.trig[v].close()
        for w, e in list(self.irqfd.items()):
            if e is self.trig[v]:
                self.irqfd_gone(self.irqfd.pop(w))
        if fwd:
            event("eventfd closed: unforwarded")
            self.rewrite(v)

    @rule(go=st.integers(0, 2))
    def close_vm_and_reopen(self, go):
        if go:                                       # rarer than the other rules
            return
        fwd = [v for v in self.trig if self.forwarded(v)]
        self.w.close_guest()
        for e in self.irqfd.values():
            self.irqfd_gone(e)
        self.irqfd.clear()
        for v in fwd:
            self.rewrite(v)                          # unforwarded: VMAPTI undone
        self.w.new_guest()
        self.col = {v: v % 2 for v in range(NVEC)}

    @rule(go=st.integers(0, 2), redo=st.booleans())
    def close_device_and_reopen(self, go, redo):
        """The device file closed (its vectors torn down, the device unbound: its
        table goes) and opened, bound and attached again; ``redo``: the VMM then
        describes and enables every vector again."""
        if go:                                       # rarer than the other rules
            return
        for v in sorted(self.trig):
            self.deactivate(v)
        self.w.files[0].close()
        assert not self.w.k.pci.devices[0].msix_enabled
        self.device_was_reset()
        irqfd = self.irqfd
        self.reset_device()
        self.irqfd = irqfd                           # KVM still holds them (no producer)
        w = self.w
        w.files[0] = w.k.open("/dev/vfio/devices/vfio0")
        w.devids[0] = w.bind(0)
        w.attach(w.nested if self.mode == "nested" else w.parent)
        if redo:
            for v in range(NVEC):
                self.set_address(v, v % len(POOL))
            self.enable(NVEC)

    @rule(go=st.integers(0, 3),
          order=st.permutations(["iommufd", "devices", "eventfds", "vm"]),
          redo=st.booleans())
    def close_everything_and_rebuild(self, go, order, redo):
        """close(2) of every file, in any order: the references each holds (a bound
        device holds its iommufd, VFIO and KVM hold eventfd contexts) make the
        order irrelevant to what is left: nothing."""
        if go:                                       # rarer than the other rules
            return
        if self.pending:
            event("close everything with a vector pending")
        w = self.w
        event(f"closed first: {order[0]}")
        for v in sorted(self.trig):
            self.deactivate(v)
        groups = {"iommufd": [w.ictx], "devices": list(w.files),
                  "eventfds": [e for e in list(self.exp) + list(self.trig.values())
                               if e is not None]}
        for what in order:
            if what == "vm":
                if w.guest is not None:
                    w.close_guest()
                continue
            for f in groups[what]:
                if self.is_open(f):
                    f.close()
        for f in list(w.k.files.fds.values()):       # whatever else the VMM had open
            if f is not None:
                f.close()
        w.guest = None
        self.device_was_reset()
        assert w.k.user_mm.pinned == {}
        assert not w.k.pci.devices[0].msix_enabled and not w.k.pci.devices[1].msix_enabled
        for i in range(2):                           # no domain left from the iommufd
            assert getattr(w.k.pci.devices[i].iommu_group.domain, "iommufd_hwpt",
                           None) is None
        event("everything closed")
        w.build()
        self.exp = {w.wit_efd: 0}
        self.faults = w.faults()
        self.vlpi.clear()
        self.mapped.clear()
        self.col = {v: v % 2 for v in range(NVEC)}
        self.reset_device()
        self.mode = "paging"
        self.vmm_setup(redo)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def delivery(self):
        """Exactly one eventfd signal or vLPI per message, on its own vector, or
        exactly one SMMU fault; the witness device never sees device 0's."""
        self.w.settle()                              # messages a step released
        got = {e: e.f_op.count for e in self.exp}
        vlpi = self.w.vlpis()
        faults = self.w.faults()
        if "delivery" in self.flags or "isolation" in self.flags:
            assert got[self.w.wit_efd] == self.exp[self.w.wit_efd]
        if "delivery" in self.flags:
            extra = {e: got[e] - self.exp[e] for e in self.exp}
            extra_faults = faults - self.faults
            extra_vlpi = vlpi - self.vlpi
            assert self.vlpi <= vlpi
            assert all(n >= 0 for n in extra.values()) and extra_faults >= 0, (
                extra_faults, {e.fd: n for e, n in extra.items()}, self.unknown)
            # what the model could not say (other designs): one outcome per message
            targets = [self.trig.get(v) for v in self.unknown]
            assert sum(extra.values()) + extra_faults + len(extra_vlpi) == len(self.unknown)
            for e, n in extra.items():
                assert n <= targets.count(e)
            for _, vint in extra_vlpi:
                assert vint - LPI in self.unknown
            if self.pv:
                for irq, n in self.kexp.items():
                    desc = self.w.k.irq.descs.get(irq)
                    if desc is not None and any(self.w.irq(v) == irq for v in self.alloc):
                        assert desc.count == n, irq        # its own host LPI, once
            self.exp.update(got)
            self.faults = faults
        self.unknown.clear()
        self.w.clear_vlpis()
        self.vlpi.clear()

    @invariant()
    def stability(self):
        """Each allocated vector holds the address userspace chose (zero while shut
        down) and is masked exactly when the model says."""
        if "stability" not in self.flags:
            return
        for v in self.alloc:
            addr, _data, ctrl = self.w.entry(v)
            assert addr == self.addr[v], (v, hex(addr), hex(self.addr[v]))
            assert bool(ctrl & 1) == self.masked[v], v

    @invariant()
    def routing(self):
        """Every live vector whose doorbell the VMM mapped translates to the physical
        doorbell, and its (DeviceID, EventID) raises its own host LPI."""
        if "routing" not in self.flags:
            return
        rid = self.w.k.pci.devices[0].rid
        its_dev = self.w.k.its.devices.get(rid)
        for v, e in self.trig.items():
            if e is None or self.masked[v]:
                continue
            addr, data, _ = self.w.entry(v)
            if self.pv and not self.reaches(addr):
                continue
            assert self.w.m.smmu.translate(rid, addr, write=True).pa == DOORBELL, v
            if not self.forwarded(v):
                assert its_dev is not None and data in its_dev.events

    @invariant()
    def no_alloc(self):
        """No IOVA or page-table change but the VMM's own: the stage-2 domain maps the
        doorbell exactly where the VMM mapped it, nothing in the SW_MSI window, and
        the IOAS holds RAM and the VMM's doorbell areas only."""
        if "no_alloc" not in self.flags:
            return
        dom = self.w.s2()
        for p in POOL:
            for iova in (p, p + S1_OFF):
                want = DOORBELL if iova in self.mapped else None
                assert dom.iova_to_phys(iova + LOW) == want, hex(iova)
        for n in range(4):
            assert dom.iova_to_phys(SW_MSI_BASE + n * PAGE + LOW) is None
        areas = sorted(a.iova for a in self.w.ctx().ioas(self.w.ioas).areas)
        assert areas == sorted([RAM_IOVA] + list(self.mapped))


def _settings(examples: int, steps: int):
    deep = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
    extra = {"phases": [Phase.generate]} if os.environ.get("PYMSI_SM_NOSHRINK") else {}
    return settings(max_examples=examples * (20 if deep else 1),
                    stateful_step_count=steps * (2 if deep else 1), deadline=None, **extra)


def _machine(design: str, start: str):
    return type(f"Machine_{design.replace('-', '_')}_{start}", (VectorMachine,),
                {"design": design, "start": start})


PerVectorPaging = _machine("per-vector", "paging")
PerVectorNested = _machine("per-vector", "nested")
TestPerVectorPaging = PerVectorPaging.TestCase
TestPerVectorPaging.settings = _settings(40, 40)
TestPerVectorNested = PerVectorNested.TestCase
TestPerVectorNested.settings = _settings(40, 40)

for _design in ("sw-msi", "preset", "dma-cookie"):
    for _start in ("paging", "nested"):
        _cls = _machine(_design, _start)
        _name = f"Test{_design.title().replace('-', '')}{_start.title()}"
        globals()[_name] = _cls.TestCase
        globals()[_name].settings = _settings(25, 30)


def replay(cls, steps) -> VectorMachine:
    """Run ``steps`` ((method name, args...)) on a new machine of ``cls``, checking
    every invariant after each, as hypothesis does."""
    sm = cls()
    checks = [sm.delivery, sm.stability, sm.routing, sm.no_alloc]
    for c in checks:
        c()
    for name, *args in steps:
        getattr(sm, name)(*args)
        for c in checks:
            c()
    return sm


# -- the machine can fail: deliberately broken kernels, fixed short rule sequences ----------


def test_the_machine_passes_the_fixed_sequences_on_the_real_kernel():
    for cls in (PerVectorPaging, PerVectorNested):
        replay(cls, TWO_STEP)
        replay(cls, CLEARED)
        replay(cls, RETRIGGER_CLEARED)
        replay(cls, PENDING_OVER_REBUILD)


TWO_STEP = [("vmm_setup", True), ("set_address", 1, 2), ("do_affinity", 1, 2), ("fire", 1)]
CLEARED = [("vmm_setup", True), ("clear_address", 2), ("do_affinity", 2, 1), ("fire", 2)]
RETRIGGER_CLEARED = [("vmm_setup", True), ("clear_address", 3), ("trigger", 3, True)]


@pytest.mark.parametrize("cls", [PerVectorPaging, PerVectorNested], ids=["paging", "nested"])
def test_a_kernel_without_the_forced_rewrite_is_caught(monkeypatch, cls):
    """The ITS answers OK_DONE; without the forced rewrite the device keeps the old
    address after the two-step update: the stability invariant fails."""
    from pymsi.kernel.msi import PciMsiLayer

    monkeypatch.setattr(PciMsiLayer, "force_rewrite", lambda self, desc: False)
    with pytest.raises(AssertionError):
        replay(cls, TWO_STEP)


def test_a_kernel_that_falls_back_to_the_sw_msi_window_is_caught(monkeypatch):
    """A lookup that answers the SW_MSI window for a cleared vector (what preset
    does) instead of failing: the affinity change goes through to another address,
    the model expects it refused with ENOENT."""
    from pymsi.kernel.iommufd_msi import PAGE_SHIFT, PerVectorMsi

    real = PerVectorMsi.lookup

    def lookup(self, desc):
        try:
            real(self, desc)
        except Exception:
            desc.set_iommu_msi_iova(SW_MSI_BASE, PAGE_SHIFT)

    monkeypatch.setattr(PerVectorMsi, "lookup", lookup)
    with pytest.raises(AssertionError):
        replay(PerVectorPaging, CLEARED)


def test_a_vfio_that_restarts_a_cleared_vector_is_caught(monkeypatch):
    """VFIO checking only the vectors it allocates (not a live one it restarts)
    lets request_irq() revive the address userspace cleared: the machine expects
    ENOENT."""
    from pymsi.kernel.vfio_pci import VfioPciCore

    real = VfioPciCore.check_msi_iovas

    def only_new(self, index, vectors):
        real(self, index, [v for v in vectors if v not in self.pdev.msi_descs])

    monkeypatch.setattr(VfioPciCore, "check_msi_iovas", only_new)
    with pytest.raises(AssertionError):
        replay(PerVectorPaging, RETRIGGER_CLEARED)


def test_restarting_a_cleared_live_vector_is_enoent_and_changes_nothing():
    """What the machine found: a live vector whose entry was cleared, given a new
    eventfd, used to be restarted with the address it had (request_irq's
    activation reuses the descriptor's cached IOVA and its unmask undid the forced
    rewrite's mask).  The trigger is now refused like an enable without an entry."""
    sm = replay(PerVectorPaging, [("vmm_setup", True), ("clear_address", 3)])
    before = sm.w.snapshot()
    efd = sm.w.k.eventfd()
    arg = V.VfioIrqSet(flags=EFD_TRIG, index=MSIX, start=3, count=1, data=[efd.fd])
    assert errno_of(sm.w.files[0].ioctl, V.VFIO_DEVICE_SET_IRQS, arg) == errno.ENOENT
    assert sm.w.snapshot() == before and efd.f_op.refs == 1
    # -1 still tears it down, and with an address again it starts at that address
    sm.trigger(3, False)
    sm.set_address(3, 1)
    sm.trigger(3, True)
    assert sm.w.entry(3)[0] == POOL[1] | LOW and not sm.w.entry(3)[2] & 1


#: A message left pending in the PBA over closing every file is lost: the last close
#: resets the function (vfio_pci_core_disable: FLR, the PBA cleared), so the next
#: enable's unmask releases nothing.  (Before vfio-pci reset at close it was
#: delivered to the new trigger.)
PENDING_OVER_REBUILD = [
    ("vmm_setup", True), ("trigger", 3, False), ("fire", 3), ("disable",),
    ("close_everything_and_rebuild", 0, ["devices", "vm", "iommufd", "eventfds"], True)]
