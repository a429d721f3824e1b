"""The four MSI address designs and the forced rewrite, driven like a VMM drives Linux.

Every test acts as the VMM: /dev/iommu (IOAS, user memory mapped), the VFIO cdev
(bind, attach, SET_IRQS with eventfds), and fires the device's vectors on the
physical function.  Expected values come from the architecture and Linux, not
from the code under test:

* the doorbell is GITS_TRANSLATER = ITS base + 0x10040 = 0x08090040 on the virt
  board (DESIGN.md section 5), so a message address keeps its low 12 bits 0x040
  (msi_msg_set_addr with PAGE_SHIFT);
* arm-smmu-v3's SW_MSI window starts at 0x8000000 (MSI_IOVA_BASE): dma-cookie's
  first MSI page and sw-msi's pgoff 0 are both there (Linux 6.15 iommufd_sw_msi:
  ``sw_msi_start + pgoff * PAGE_SIZE``; 64 map ids per context, then EOVERFLOW);
* the ITS answers IRQ_SET_MASK_OK_DONE to an affinity change, and
  msi_domain_set_affinity() then writes nothing (upstream); only the per-vector
  design forces the rewrite (the thread's requirement);
* the per-vector design is the thread's: missing entry = ENOENT with nothing
  changed, no implicit mapping (an unmapped doorbell faults in the SMMU, is
  recorded, and delivers nothing), two-step update.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pymsi import vmmlib
from pymsi.core import Prot
from pymsi.hw.pci import Delivery
from pymsi.kernel.base import KernelError
from pymsi.kernel.iommu import ResvRegion, ResvType
from pymsi.kernel.iommufd_msi import MSI_DESIGNS
from pymsi.kernel.msi import MsiDesc, MsiType
from pymsi.machine import ArmVirt, X86Pc
from pymsi.uapi import iommufd as u
from pymsi.uapi import vfio as V

from kernel_util import errno_of

ENOENT, EINVAL, EOPNOTSUPP, EOVERFLOW, EBUSY, EEXIST, ENODEV = (
    errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP, errno.EOVERFLOW, errno.EBUSY, errno.EEXIST,
    errno.ENODEV)
PAGE = 0x1000
DOORBELL = 0x0808_0000 + 0x1_0040          # GITS_TRANSLATER of the virt board's ITS
SW_MSI_BASE = 0x0800_0000                   # arm-smmu-v3 MSI_IOVA_BASE
RAM_IOVA = 0x4000_0000
MSIX, MSI = V.VFIO_PCI_MSIX_IRQ_INDEX, V.VFIO_PCI_MSI_IRQ_INDEX
EFD_TRIG = V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER
SET, CLEAR, GET = V.VFIO_MSI_IOVA_SET, V.VFIO_MSI_IOVA_CLEAR, V.VFIO_MSI_IOVA_GET
NVEC = 4


def piova(v: int) -> int:
    """The IOVA the VMM chooses for vector ``v`` (one page each, away from RAM)."""
    return 0x2000_0000 + v * PAGE


class Vmm(vmmlib.Vmm):
    """The shared VMM steps (:class:`pymsi.vmmlib.Vmm`) and this file's own helpers."""

    def __init__(self, design: str = "per-vector", smmu: str = "s1", n: int = 1,
                 resv: list | None = None, machine=None) -> None:
        super().__init__(design, smmu=smmu, n=n, resv=resv, machine=machine)

    def per_vector(self, n: int = NVEC, i: int = 0, index: int = MSIX) -> None:
        """Describe and map every vector (the thread's VMM steps)."""
        self.msi_iova(SET, 0, [piova(v) for v in range(n)], index=index, i=i)
        if i == 0:
            for v in range(n):
                self.map_msi(piova(v), i)

    def snapshot(self, i: int = 0):
        """Device config space, MSI-X table, and the kernel's vector state."""
        pdev = self.k.pci.devices[i]
        fn = self.m.functions[i]
        core = self.k.vfio_pci.cores[pdev]
        return (bytes(pdev.cfg_read(o, 1) for o in range(0x100)),
                bytes(fn.msix_table), sorted(self.k.irq.descs),
                {v: (d.irq, d.msg) for v, d in pdev.msi_descs.items()},
                pdev.msix_enabled, pdev.msi_enabled, core.irq_type,
                {v: (c.irq, c.trigger) for v, c in core.ctx.items()},
                {d: dict(dev.events) for d, dev in self.k.its.devices.items()},
                self.m.its.stats.get("command_errors"))


def live_per_vector(machine=None) -> Vmm:
    """A bound, attached per-vector device with every vector described and MSI-X on."""
    vmm = Vmm("per-vector") if machine is None else Vmm(machine=machine)
    vmm.bind()
    vmm.attach()
    vmm.per_vector()
    assert vmm.enable() == 0
    return vmm


def count_table_writes(vmm: Vmm, i: int = 0) -> list:
    """Record the kernel's writes to the function's MSI-X table (address/data words)."""
    pdev = vmm.k.pci.devices[i]
    writes: list = []
    orig = pdev.mmio_write

    def spy(addr, value, *a, **kw):
        off = addr - pdev.msix_table
        if 0 <= off < 16 * NVEC and off % 16 != 12:
            writes.append((off // 16, off % 16, value))
        return orig(addr, value, *a, **kw)

    pdev.mmio_write = spy
    return writes


# -- end to end, each design -------------------------------------------------------------


def expected_address(design: str, v: int) -> int:
    if design in ("per-vector", "preset"):
        return piova(v) | (DOORBELL & (PAGE - 1))
    return SW_MSI_BASE | (DOORBELL & (PAGE - 1))     # dma-cookie page 0 / sw-msi pgoff 0


@pytest.mark.parametrize("design", MSI_DESIGNS)
def test_each_design_delivers_every_vector_to_exactly_its_eventfd(design):
    vmm = Vmm(design)
    vmm.bind()
    vmm.attach()
    if design == "per-vector":
        vmm.per_vector()
    elif design == "preset":
        vmm.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=V.VFIO_IRQ_SET_ACTION_PREPARE | V.VFIO_IRQ_SET_DATA_MSI_IOVA, index=MSIX,
            start=0, count=NVEC, data=[piova(v) for v in range(NVEC)]))
    assert vmm.enable() == 0
    for v in range(NVEC):
        addr = vmm.entry(v)[0]
        assert addr == expected_address(design, v)
        # The SMMU takes it to the physical doorbell (and the domain agrees).
        assert smmu_pa(vmm, addr) == DOORBELL
        assert vmm.s2_domain().iova_to_phys(addr) == DOORBELL
        assert vmm.fire(v) == Delivery.SENT
        assert vmm.counts() == [1 if w <= v else 0 for w in range(NVEC)]
    assert vmm.smmu_events() == 0


def test_per_vector_maps_nothing_on_compose_and_reserves_no_window():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    vmm.per_vector()
    dom = vmm.domain()
    mapped = {iova: dom.iova_to_phys(iova) for iova in
              [SW_MSI_BASE] + [piova(v) for v in range(NVEC)]}
    assert vmm.enable() == 0
    # Composing allocated no IOVA and changed no page table.
    assert {iova: dom.iova_to_phys(iova) for iova in mapped} == mapped
    assert dom.iova_to_phys(SW_MSI_BASE) is None
    # The SW_MSI window stays usable IOVA for the VMM (no implicit reservation).
    ioas = vmm.ctx().ioas(vmm.ioas)
    assert not ioas._resv_hit(SW_MSI_BASE, SW_MSI_BASE + PAGE - 1)


def test_per_vector_keeps_msi_and_msix_tables_apart():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.msi_iova(SET, 0, [0x3000_0000], index=MSI)
    vmm.msi_iova(SET, 0, [0x3100_0000, 0x3200_0000], index=MSIX)
    assert vmm.get_iovas(0, 1, index=MSI) == [0x3000_0000]
    assert vmm.get_iovas(0, 2, index=MSIX) == [0x3100_0000, 0x3200_0000]
    vmm.msi_iova(CLEAR, 0, count=1, index=MSIX)
    assert vmm.get_iovas(0, 1, index=MSI) == [0x3000_0000]
    assert vmm.get_iovas(0, 2, index=MSIX) == [0, 0x3200_0000]


def test_per_vector_msi_has_one_address_for_all_its_vectors():
    """The MSI capability has one address register (PCI): the entry of vector 0
    serves every vector of a multi-message MSI, and only vector 0 can be set."""
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    assert errno_of(vmm.msi_iova, SET, 0, [piova(0), piova(1)], index=MSI) == EINVAL
    assert errno_of(vmm.msi_iova, SET, 1, [piova(1)], index=MSI) == EINVAL
    vmm.per_vector(n=1, index=MSI)
    assert vmm.enable(n=2, index=MSI) == 0
    fn = vmm.m.functions[0]
    for v in range(2):
        addr, _data = fn.msi_message(v)
        assert addr == piova(0) | 0x40
        assert vmm.fire(v) == Delivery.SENT
    assert vmm.counts() == [1, 1]


# -- per-vector error paths ------------------------------------------------------------------


def test_per_vector_missing_entry_is_enoent_and_changes_nothing():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    vmm.per_vector(n=NVEC - 1)                # the last vector has no address
    before = vmm.snapshot()
    assert errno_of(vmm.enable) == ENOENT
    assert vmm.snapshot() == before
    assert all(e.f_op.refs == 1 for e in vmm.efds)   # no eventfd reference kept


def test_per_vector_missing_entry_on_a_live_device_keeps_the_other_vectors():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    vmm.per_vector(n=2)
    assert vmm.enable(n=2) == 0
    before = vmm.snapshot()
    # Vector 1 gets a new trigger and vector 3 (no address) is added: all or nothing.
    efds = [vmm.k.eventfd() for _ in range(3)]
    arg = V.VfioIrqSet(flags=EFD_TRIG, index=MSIX, start=1, count=3,
                       data=[efds[0].fd, -1, efds[2].fd])
    assert errno_of(vmm.files[0].ioctl, V.VFIO_DEVICE_SET_IRQS, arg) == ENOENT
    assert vmm.snapshot() == before
    for v in range(2):
        vmm.fire(v)
    assert vmm.counts() == [1, 1]


def test_kernel_alloc_path_is_all_or_nothing_too():
    """Under VFIO the check comes first; pci_alloc_irq_vectors itself must also put
    back every MSI-X entry word it touched when a vector cannot be prepared."""
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    vmm.per_vector(n=2)
    pdev = vmm.k.pci.devices[0]
    fn = vmm.m.functions[0]
    for v in range(NVEC):                          # stale contents a previous user left
        for w in range(3):
            fn.msix_table[16 * v + 4 * w:16 * v + 4 * w + 4] = \
                (0x1111_0000 + 16 * v + w).to_bytes(4, "little")
    before = vmm.snapshot()
    with pytest.raises(KernelError) as e:
        vmm.k.msi.alloc_irq_vectors(pdev, NVEC, NVEC, MsiType.MSIX)
    assert e.value.errno == ENOENT
    assert vmm.snapshot() == before


def test_unmapped_doorbell_faults_in_the_smmu_and_signals_nothing():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    vmm.msi_iova(SET, 0, [piova(v) for v in range(NVEC)])   # no IOMMU_IOAS_MAP_MSI
    assert vmm.enable() == 0
    assert vmm.entry(0)[0] == piova(0) | 0x040
    before = vmm.smmu_events()
    vmm.fire(0)
    assert vmm.counts() == [0] * NVEC
    assert vmm.smmu_events() == before + 1
    vmm.k.smmu.evtq_drain()
    ev = vmm.k.smmu.events[-1]              # decoded by the driver's event handler
    assert ev.type == 0x10 and ev.iova == piova(0) | 0x040 and not ev.read
    assert ev.sid == vmm.k.pci.devices[0].rid


def test_ioas_unmap_of_the_msi_area_stops_delivery():
    vmm = live_per_vector()
    vmm.ictx.ioctl(u.IOMMU_IOAS_UNMAP, u.IommuIoasUnmap(ioas_id=vmm.ioas, iova=piova(1),
                                                         length=PAGE))
    before = vmm.smmu_events()
    vmm.fire(1)
    vmm.fire(0)
    assert vmm.counts() == [1, 0, 0, 0] and vmm.smmu_events() == before + 1


def test_map_msi_checks_like_ioas_map():
    vmm = Vmm("per-vector")
    vmm.bind()
    devid = vmm.devids[0]

    def mm(iova, **kw):
        arg = dict(ioas_id=vmm.ioas, dev_id=devid, iova=iova)
        arg.update(kw)
        return errno_of(vmm.ictx.ioctl, u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(**arg))

    assert mm(piova(0) + 0x40) == EINVAL            # unaligned
    assert mm(RAM_IOVA) == EEXIST                   # over the RAM area
    assert mm(piova(0), flags=1) == EOPNOTSUPP
    assert mm(piova(0), dev_id=devid + 7) == ENOENT
    assert mm(piova(0), ioas_id=devid) == ENOENT    # not an IOAS
    vmm.map_msi(piova(0))
    assert mm(piova(0)) == EEXIST
    # An ordinary area: write-only MMIO in every attached domain.
    vmm.attach()
    dom = vmm.domain()
    assert dom.iova_to_phys(piova(0) + 0x40) == DOORBELL
    area = vmm.ctx().ioas(vmm.ioas).area_at(piova(0))
    assert area.prot & Prot.MMIO and area.prot & Prot.WRITE and not area.prot & Prot.READ
    # Not user memory: a writeable IOMMU_IOAS_COPY of it is refused.
    assert errno_of(vmm.ictx.ioctl, u.IOMMU_IOAS_COPY, u.IommuIoasCopy(
        flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_WRITEABLE,
        dst_ioas_id=vmm.ioas, src_ioas_id=vmm.ioas, length=PAGE, dst_iova=piova(8),
        src_iova=piova(0))) == errno.EPERM
    # Nor a read-only one: the doorbell never becomes readable memory in another IOAS.
    a = u.IommuIoasAlloc()
    vmm.ictx.ioctl(u.IOMMU_IOAS_ALLOC, a)
    assert errno_of(vmm.ictx.ioctl, u.IOMMU_IOAS_COPY, u.IommuIoasCopy(
        flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE,
        dst_ioas_id=a.out_ioas_id, src_ioas_id=vmm.ioas, length=PAGE, dst_iova=0x5000_0000,
        src_iova=piova(0))) == errno.EPERM
    assert vmm.ctx().ioas(a.out_ioas_id).areas == []


def test_map_msi_into_the_sw_msi_window_is_refused_where_it_is_reserved():
    vmm = Vmm("sw-msi")
    vmm.bind()
    vmm.attach()
    assert errno_of(vmm.ictx.ioctl, u.IOMMU_IOAS_MAP_MSI, u.IommuIoasMapMsi(
        ioas_id=vmm.ioas, dev_id=vmm.devids[0], iova=SW_MSI_BASE)) == EINVAL


@pytest.mark.parametrize("design", ["dma-cookie", "sw-msi", "preset"])
def test_msi_iova_ioctl_is_eopnotsupp_under_the_other_designs(design):
    vmm = Vmm(design)
    vmm.bind()
    assert errno_of(vmm.msi_iova, SET, 0, [piova(0)]) == EOPNOTSUPP


@pytest.mark.parametrize("design", MSI_DESIGNS)
def test_x86_msis_are_not_translated_so_per_vector_is_eopnotsupp(design):
    """x86 (VT-d + interrupt remapping): the device's reserved region is IOMMU_RESV_MSI
    [0xfee00000, 0xfeefffff], MSIs bypass translation; the per-vector ioctls are
    EOPNOTSUPP and every design delivers with the remapping-format message."""
    vmm = Vmm(machine=X86Pc(remapping=True, devices=[{"msix": NVEC, "msi": NVEC}],
                            msi_design=design))
    vmm.bind()
    vmm.attach()
    assert errno_of(vmm.msi_iova, SET, 0, [piova(0)]) == EOPNOTSUPP
    assert errno_of(vmm.msi_iova, GET, 0, [0]) == EOPNOTSUPP
    assert errno_of(vmm.map_msi, piova(0)) == EOPNOTSUPP
    assert vmm.enable() == 0
    for v in range(NVEC):
        assert vmm.entry(v)[0] >> 20 == 0xFEE                  # the interrupt window
        vmm.fire(v)
    assert vmm.counts() == [1] * NVEC


def test_hw_msi_region_on_arm_is_eopnotsupp_too():
    """The check is the device's IOMMU_RESV_MSI region, not the architecture."""
    vmm = Vmm("per-vector", resv=[ResvRegion(0xFEE0_0000, 0x10_0000, Prot.WRITE | Prot.MMIO,
                                             ResvType.MSI)])
    vmm.bind()
    assert errno_of(vmm.msi_iova, SET, 0, [piova(0)]) == EOPNOTSUPP
    assert errno_of(vmm.map_msi, piova(0)) == EOPNOTSUPP


# The VFIO_DEVICE_MSI_IOVA EINVAL table: a valid SET, then one field made wrong.
MUTATIONS = {
    "argsz_header": lambda a: setattr(a, "argsz", 20),
    "argsz_array": lambda a: setattr(a, "argsz", 24 + 8 * (a.count - 1)),
    "flags_none": lambda a: setattr(a, "flags", 0),
    "flags_two": lambda a: setattr(a, "flags", SET | GET),
    "flags_set_clear": lambda a: setattr(a, "flags", SET | CLEAR),
    "flags_unknown": lambda a: setattr(a, "flags", SET | 1 << 3),
    "reserved": lambda a: setattr(a, "__reserved", 1),
    "index_intx": lambda a: setattr(a, "index", V.VFIO_PCI_INTX_IRQ_INDEX),
    "index_err": lambda a: setattr(a, "index", V.VFIO_PCI_ERR_IRQ_INDEX),
    "index_big": lambda a: setattr(a, "index", 0x8000_0002),
    "count_zero": lambda a: setattr(a, "count", 0),
    "start_past": lambda a: setattr(a, "start", NVEC),
    "range_past": lambda a: setattr(a, "start", NVEC - a.count + 1),
    "count_huge": lambda a: setattr(a, "count", 0xFFFF_FFFF),
    "iova_unaligned": lambda a: a.iova.__setitem__(a.count - 1, piova(9) | 0x40),
    "iova_zero": lambda a: a.iova.__setitem__(0, 0),
    "array_short": lambda a: setattr(a, "iova", list(a.iova)[:a.count - 1]),
}


@pytest.fixture(scope="module")
def einval_vmm():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.msi_iova(SET, 0, [0x7000_0000 + PAGE * v for v in range(NVEC)])
    return vmm


@settings(max_examples=100, deadline=None)
@given(start=st.integers(0, NVEC - 1), data=st.data(),
       mutation=st.sampled_from(sorted(MUTATIONS)))
def test_msi_iova_einval_table(einval_vmm, start, data, mutation):
    vmm = einval_vmm
    count = data.draw(st.integers(1, NVEC - start))
    iovas = [data.draw(st.integers(1, 0xFFFF).map(lambda p: p * PAGE)) for _ in range(count)]
    arg = V.VfioDeviceMsiIova(flags=SET, index=MSIX, start=start, count=count, iova=iovas)
    if mutation == "array_short" and count == 1 or mutation == "range_past" and count == 1 \
            and start == NVEC - 1:
        mutation = "flags_none"
    MUTATIONS[mutation](arg)
    event(f"mutation={mutation}")
    before = vmm.get_iovas()
    assert errno_of(vmm.files[0].ioctl, V.VFIO_DEVICE_MSI_IOVA, arg) == EINVAL
    assert vmm.get_iovas() == before
    # The unmutated call is accepted (and is then undone).
    ok = V.VfioDeviceMsiIova(flags=SET, index=MSIX, start=start, count=count, iova=iovas)
    vmm.files[0].ioctl(V.VFIO_DEVICE_MSI_IOVA, ok)
    assert vmm.get_iovas(start, count) == iovas
    vmm.msi_iova(SET, 0, before)


def test_msi_iova_get_reports_zero_for_none_and_clear_of_none_is_fine():
    vmm = Vmm("per-vector")
    vmm.bind()
    assert vmm.get_iovas() == [0] * NVEC
    vmm.msi_iova(CLEAR, 0, count=NVEC)
    vmm.msi_iova(SET, 1, [piova(5), piova(6)])
    assert vmm.get_iovas() == [0, piova(5), piova(6), 0]
    vmm.msi_iova(CLEAR, 2, count=2)
    assert vmm.get_iovas() == [0, piova(5), 0, 0]


# -- sw-msi ------------------------------------------------------------------------------------


def test_sw_msi_65th_page_is_eoverflow():
    """The board has one ITS, so the 65 doorbell pages are presented through the
    design's prepare hook directly (what iommu_dma_prepare_msi would call), each
    with a distinct fake doorbell address."""
    vmm = Vmm("sw-msi")
    vmm.bind()
    vmm.attach()
    hooks = vmm.ctx().msi
    dom = vmm.domain()
    pdev = vmm.k.pci.devices[0]
    fake = [0x0A00_0000 + PAGE * n + 0x40 for n in range(65)]
    for n in range(64):
        desc = MsiDesc(pdev, 0)
        hooks.prepare(dom, desc, fake[n])
        assert desc.iommu_msi_addr == SW_MSI_BASE + PAGE * n
        assert dom.iova_to_phys(SW_MSI_BASE + PAGE * n) == fake[n] & ~0xFFF
    desc = MsiDesc(pdev, 0)
    hooks.prepare(dom, desc, fake[3] + 8)           # a page it has: reused
    assert desc.iommu_msi_addr == SW_MSI_BASE + PAGE * 3
    with pytest.raises(KernelError) as e:
        hooks.prepare(dom, MsiDesc(pdev, 0), fake[64])
    assert e.value.errno == EOVERFLOW
    assert dom.iova_to_phys(SW_MSI_BASE + PAGE * 64) is None


def test_sw_msi_is_reinstalled_when_the_device_moves_to_another_domain():
    vmm = Vmm("sw-msi")
    vmm.bind()
    vmm.attach()
    assert vmm.enable() == 0
    first = vmm.domain()
    # A second IOAS with the same RAM: replace into its (automatic) paging domain.
    a = u.IommuIoasAlloc()
    vmm.ictx.ioctl(u.IOMMU_IOAS_ALLOC, a)
    vmm.ictx.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
        flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
        | u.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=a.out_ioas_id, user_va=vmm.va,
        length=0x10000, iova=RAM_IOVA))
    vmm.attach(a.out_ioas_id)
    second = vmm.domain()
    assert second is not first
    assert second.iova_to_phys(SW_MSI_BASE + 0x40) == DOORBELL
    vmm.fire(2)
    assert vmm.counts() == [0, 0, 1, 0]


def test_sw_msi_without_a_sw_msi_region_leaves_the_message_unchanged():
    vmm = Vmm("sw-msi", resv=[])
    vmm.bind()
    vmm.attach()
    assert vmm.enable() == 0
    assert vmm.entry(0)[0] == DOORBELL            # the PA; the SMMU has no mapping for it
    before = vmm.smmu_events()
    vmm.fire(0)
    assert vmm.counts() == [0] * NVEC and vmm.smmu_events() == before + 1


# -- preset (RFCv2) ------------------------------------------------------------------------------


def prepare(vmm, start, iovas, index=MSIX):
    return vmm.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
        flags=V.VFIO_IRQ_SET_ACTION_PREPARE | V.VFIO_IRQ_SET_DATA_MSI_IOVA, index=index,
        start=start, count=len(iovas), data=list(iovas)))


def test_preset_falls_back_to_the_sw_msi_window_and_reads_only_at_enable():
    vmm = Vmm("preset")
    vmm.bind()
    vmm.attach()
    prepare(vmm, 0, [piova(0), piova(1)])          # vectors 2 and 3: none given
    assert vmm.enable() == 0
    assert [vmm.entry(v)[0] for v in range(NVEC)] == [
        piova(0) | 0x40, piova(1) | 0x40, SW_MSI_BASE | 0x40, SW_MSI_BASE | 0x40]
    for v in range(NVEC):
        vmm.fire(v)
    assert vmm.counts() == [1] * NVEC
    # A later PREPARE changes nothing until MSI-X is enabled again.
    prepare(vmm, 2, [piova(7)])
    vmm.k.proc_write(f"/proc/irq/{vmm.irq(2)}/smp_affinity", "2")
    assert vmm.entry(2)[0] == SW_MSI_BASE | 0x40
    vmm.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
        flags=V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_TRIGGER, index=MSIX))
    assert vmm.enable() == 0
    assert vmm.entry(2)[0] == piova(7) | 0x40


def test_prepare_is_einval_outside_the_preset_design():
    vmm = Vmm("per-vector")
    vmm.bind()
    assert errno_of(prepare, vmm, 0, [piova(0)]) == EINVAL


# -- dma-cookie ---------------------------------------------------------------------------------


def test_dma_cookie_maps_on_demand_in_the_window():
    vmm = Vmm("dma-cookie")
    vmm.bind()
    vmm.attach()
    dom = vmm.domain()
    assert dom.iova_to_phys(SW_MSI_BASE) is None
    assert vmm.enable() == 0
    assert dom.iova_to_phys(SW_MSI_BASE + 0x40) == DOORBELL      # mapped by the compose path


# -- forced rewrite --------------------------------------------------------------------------------


@pytest.mark.parametrize("design", ["per-vector", "sw-msi"])
def test_proc_affinity_rewrites_only_under_per_vector(design):
    vmm = Vmm(design)
    vmm.bind()
    vmm.attach()
    if design == "per-vector":
        vmm.per_vector()
    assert vmm.enable() == 0
    writes = count_table_writes(vmm)
    before = [vmm.entry(v) for v in range(NVEC)]
    for cpu_mask in ("1", "4", "8", "2"):
        vmm.k.proc_write(f"/proc/irq/{vmm.irq(1)}/smp_affinity", cpu_mask)
    assert [vmm.entry(v) for v in range(NVEC)] == before        # the address is kept
    if design == "per-vector":
        assert len(writes) == 4 * 3 and {w[0] for w in writes} == {1}
    else:
        assert writes == []                                     # OK_DONE: upstream
    vmm.fire(1)
    assert vmm.counts() == [0, 1, 0, 0]


def test_kernel_irq_set_affinity_rewrites_under_per_vector():
    vmm = live_per_vector()
    writes = count_table_writes(vmm)
    vmm.k.irq.irq_set_affinity(vmm.irq(3), frozenset({2}))
    assert [w[0] for w in writes] == [3, 3, 3]
    assert vmm.entry(3)[0] == piova(3) | 0x40


def test_two_step_update_of_a_live_vector():
    vmm = live_per_vector()
    new = 0x2800_0000
    vmm.map_msi(new)
    table = bytes(vmm.m.functions[0].msix_table)
    # Step 1: the address changes in VFIO; the device is not touched.
    vmm.msi_iova(SET, 2, [new])
    assert bytes(vmm.m.functions[0].msix_table) == table
    assert vmm.get_iovas() == [piova(0), piova(1), new, piova(3)]
    # Step 2: an affinity set writes the new address.
    vmm.k.proc_write(f"/proc/irq/{vmm.irq(2)}/smp_affinity", "4")
    assert vmm.entry(2)[0] == new | 0x40
    vmm.ictx.ioctl(u.IOMMU_IOAS_UNMAP, u.IommuIoasUnmap(ioas_id=vmm.ioas, iova=piova(2),
                                                         length=PAGE))
    vmm.fire(2)
    assert vmm.counts() == [0, 0, 1, 0]


def its_cmds(vmm: Vmm) -> list:
    """Every ITS command the driver sends from now on (opcode names)."""
    sent: list = []
    its = vmm.k.its
    orig = its.send

    def spy(cmd, *a, **kw):
        sent.append(cmd)
        return orig(cmd, *a, **kw)

    its.send = spy
    return sent


def test_affinity_change_of_a_cleared_vector_is_refused_with_nothing_moved():
    vmm = live_per_vector()
    vmm.msi_iova(CLEAR, 1, count=1)
    before = vmm.entry(1)
    irq = vmm.irq(1)
    aff = vmm.k.irq.read_smp_affinity(irq)
    eff = vmm.k.irq.read_effective_affinity(irq)
    sent = its_cmds(vmm)
    with pytest.raises(KernelError) as e:
        vmm.k.proc_write(f"/proc/irq/{irq}/smp_affinity", "2")
    assert e.value.errno == ENOENT
    assert sent == [] and vmm.entry(1) == before
    assert vmm.k.irq.read_smp_affinity(irq) == aff
    assert vmm.k.irq.read_effective_affinity(irq) == eff
    assert vmm.fire(1) == Delivery.SENT and vmm.counts() == [0, 1, 0, 0]
    # An address again: the affinity change goes through, composed from the new entry.
    vmm.msi_iova(SET, 1, [piova(3)])
    vmm.k.proc_write(f"/proc/irq/{irq}/smp_affinity", "2")
    assert vmm.entry(1)[0] == piova(3) | 0x40 and not vmm.entry(1)[2] & 1


def test_rewrite_of_a_cleared_vector_masks_it_and_logs():
    # A forced rewrite that finds no entry (here: the re-attach of a device one of
    # whose live vectors lost its entry) masks the vector instead of aiming it anywhere.
    vmm = live_per_vector()
    vmm.msi_iova(CLEAR, 1, count=1)
    before = vmm.entry(1)
    vmm.files[0].ioctl(V.VFIO_DEVICE_DETACH_IOMMUFD_PT, V.VfioDeviceDetachIommufdPt())
    vmm.attach()
    assert vmm.entry(1)[:2] == before[:2]          # no other address written
    assert vmm.entry(1)[2] & 1                     # masked in the device
    assert any("vector 1" in line and "masked" in line for line in vmm.k.log)
    assert vmm.fire(1) == Delivery.PENDING
    assert vmm.counts() == [0] * NVEC
    # An address again, then a forced rewrite: written, unmasked, the pending one delivered.
    vmm.msi_iova(SET, 1, [piova(3)])
    vmm.k.msi.force_rewrite(vmm.k.pci.devices[0].msi_descs[1])
    vmm.m.bus.drain()
    vmm.k.handle_interrupts()
    assert vmm.entry(1)[0] == piova(3) | 0x40 and not vmm.entry(1)[2] & 1
    assert vmm.counts() == [0, 1, 0, 0]


def test_new_trigger_on_a_live_vector_without_entry_is_enoent():
    vmm = live_per_vector()
    vmm.msi_iova(CLEAR, 1, count=1)
    before = vmm.entry(1)
    e = vmm.k.eventfd()
    with pytest.raises(KernelError) as err:
        vmm.files[0].ioctl(V.VFIO_DEVICE_SET_IRQS, V.VfioIrqSet(
            flags=EFD_TRIG, index=MSIX, start=1, count=1, data=[e.fd]))
    assert err.value.errno == ENOENT
    assert vmm.entry(1) == before                  # the old trigger still there
    assert vmm.fire(1) == Delivery.SENT and vmm.counts() == [0, 1, 0, 0]


def test_started_vector_without_entry_stays_masked_after_startup():
    # Freed trigger, entry cleared, then the IRQ requested again behind VFIO's
    # check: the forced rewrite of startup masks it and the startup unmask keeps it.
    vmm = live_per_vector()
    vmm.msi_iova(CLEAR, 1, count=1)
    irq = vmm.irq(1)
    k = vmm.k
    k.irq.free_irq(irq, k.irq.desc(irq).actions[0].dev_id)
    k.irq.request_irq(irq, lambda *a: 1, "test", None)
    assert vmm.entry(1)[2] & 1
    assert vmm.fire(1) == Delivery.PENDING


def test_msi_without_mask_bits_is_masked_in_the_its_by_a_failed_rewrite():
    m = ArmVirt(smmu="s1", devices=[{"msi": 1, "msi_mask": False}], msi_design="per-vector")
    vmm = Vmm(machine=m)
    vmm.bind()
    vmm.attach()
    vmm.msi_iova(SET, 0, [piova(0)], index=MSI)
    vmm.map_msi(piova(0))
    assert vmm.enable(1, index=MSI) == 0
    vmm.msi_iova(CLEAR, 0, count=1, index=MSI)
    vmm.files[0].ioctl(V.VFIO_DEVICE_DETACH_IOMMUFD_PT, V.VfioDeviceDetachIommufdPt())
    vmm.attach()
    assert any("masked" in line for line in vmm.k.log)
    vmm.fire(0)
    vmm.m.bus.drain()
    vmm.k.handle_interrupts()
    assert vmm.counts() == [0]                     # the LPI is disabled in the ITS


def test_bound_unattached_device_uses_the_per_vector_design():
    vmm = Vmm("per-vector")
    vmm.bind()
    with pytest.raises(KernelError) as e:
        vmm.enable()
    assert e.value.errno == ENOENT
    assert vmm.k.pci.devices[0].msi_descs == {}
    # With entries, enabled while blocked: the table's IOVAs, not the doorbell PA.
    vmm.per_vector()
    assert vmm.enable() == 0
    assert [vmm.entry(v)[0] for v in range(NVEC)] == [piova(v) | 0x40 for v in range(NVEC)]
    vmm.attach()
    assert vmm.fire(0) == Delivery.SENT and vmm.counts() == [1, 0, 0, 0]


def test_attach_rewrites_live_vectors_from_the_table():
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.per_vector()
    assert vmm.enable() == 0
    vmm.msi_iova(SET, 2, [piova(3)])               # changed while blocked
    vmm.attach()
    assert vmm.entry(2)[0] == piova(3) | 0x40


def test_vcpu_affinity_forces_the_rewrite():
    from pymsi.kernel.gic import ItsVpe, VcpuCmd, VcpuInfo

    vmm = live_per_vector(
        ArmVirt(gicv4=True, devices=[{"msix": NVEC}], msi_design="per-vector"))
    k = vmm.k
    new = 0x2900_0000
    vmm.map_msi(new)
    vmm.msi_iova(SET, 0, [new])
    vpt, vprop = k.mm.alloc(0x10000, 0x10000), k.mm.alloc(0x10000, 0x1000)
    vpe = ItsVpe(vpe_id=1, vpt=vpt, vprop=vprop, col=1)
    writes = count_table_writes(vmm)
    k.irq.irq_set_vcpu_affinity(vmm.irq(0), VcpuInfo(VcpuCmd.MAP_VLPI, vpe, vintid=8192))
    assert vmm.entry(0)[0] == new | 0x40 and {w[0] for w in writes} == {0}


def test_vcpu_affinity_of_a_cleared_vector_is_refused_before_the_its():
    from pymsi.kernel.gic import ItsVpe, VcpuCmd, VcpuInfo

    vmm = live_per_vector(
        ArmVirt(gicv4=True, devices=[{"msix": NVEC}], msi_design="per-vector"))
    k = vmm.k
    vmm.msi_iova(CLEAR, 0, count=1)
    vpt, vprop = k.mm.alloc(0x10000, 0x10000), k.mm.alloc(0x10000, 0x1000)
    vpe = ItsVpe(vpe_id=1, vpt=vpt, vprop=vprop, col=1)
    before = vmm.entry(0)
    sent = its_cmds(vmm)
    with pytest.raises(KernelError) as e:
        k.irq.irq_set_vcpu_affinity(vmm.irq(0), VcpuInfo(VcpuCmd.MAP_VLPI, vpe, vintid=8192))
    assert e.value.errno == ENOENT
    assert sent == [] and vmm.entry(0) == before and not vpe.mapped
    assert not k.irq.desc(vmm.irq(0)).irq_data.common.forwarded_to_vcpu


# -- IOMMU_OPTION and the machine default ----------------------------------------------------------


def option(ictx, op, val=0, option_id=u.IOMMU_OPTION_MSI_DESIGN, object_id=0):
    arg = u.IommuOption(option_id=option_id, op=op, val64=val, object_id=object_id)
    ictx.ioctl(u.IOMMU_OPTION, arg)
    return arg.val64


def test_machine_default_and_iommu_option_msi_design():
    for design in MSI_DESIGNS:
        m = ArmVirt(devices=[{"msix": 1}], msi_design=design)
        k = m.boot()
        assert k.iommufd.msi_design == design
        ictx = k.open("/dev/iommu")
        assert option(ictx, u.IOMMU_OPTION_OP_GET) == MSI_DESIGNS.index(design)
    assert ArmVirt().msi_design == X86Pc().msi_design == "per-vector"
    with pytest.raises(ValueError):
        ArmVirt(msi_design="cookie")
    vmm = Vmm("per-vector")
    ictx = vmm.ictx
    option(ictx, u.IOMMU_OPTION_OP_SET, MSI_DESIGNS.index("sw-msi"))
    assert vmm.ctx().msi.name == "sw-msi"
    assert option(ictx, u.IOMMU_OPTION_OP_GET) == 1
    assert errno_of(option, ictx, u.IOMMU_OPTION_OP_SET, 4) == EINVAL
    assert errno_of(option, ictx, u.IOMMU_OPTION_OP_SET, 0, object_id=1) == EOPNOTSUPP
    assert errno_of(option, ictx, 7) == EOPNOTSUPP
    assert errno_of(option, ictx, u.IOMMU_OPTION_OP_GET,
                    option_id=u.IOMMU_OPTION_RLIMIT_MODE + 0x55) == EOPNOTSUPP
    option(ictx, u.IOMMU_OPTION_OP_SET, 3)
    vmm.bind()
    assert errno_of(option, ictx, u.IOMMU_OPTION_OP_SET, 1) == EBUSY
    assert vmm.ctx().msi.name == "per-vector"
    # Another context of the same kernel keeps the machine's default.
    other = vmm.k.open("/dev/iommu")
    assert option(other, u.IOMMU_OPTION_OP_GET) == 3


# -- nested: a guest stage 1 over the IOAS (stage 2) -------------------------------------------


GuestMem = vmmlib.GuestMem


GIOVA = 0x5000_0000                 # the guest's MSI IOVAs (stage-1 input)
VITS_PAGE = 0x0809_0000             # the guest's vITS doorbell page (an IPA)


def nested_vmm(design: str, guest_maps: dict[int, int]) -> Vmm:
    """A nest-parent paging HWPT on the IOAS, and a nested HWPT from a guest vSTE
    whose stage 1 (built in guest memory) maps ``guest_maps`` (gIOVA -> IPA page)."""
    from pymsi.core.pgtable import IoPgtable, TableAllocator

    from smmu_driver import cd_words, pack

    vmm = Vmm(design, smmu="nested")
    devid = vmm.bind()

    def hwpt_alloc(pt_id, flags=0, data=b""):
        va = 0
        if data:
            va = vmm.k.mmap(PAGE)
            vmm.k.user_write(va, data)
        a = u.IommuHwptAlloc(flags=flags, dev_id=devid, pt_id=pt_id, data_len=len(data),
                             data_uptr=va, data_type=u.IOMMU_HWPT_DATA_ARM_SMMUV3 if data
                             else u.IOMMU_HWPT_DATA_NONE)
        vmm.ictx.ioctl(u.IOMMU_HWPT_ALLOC, a)
        return a.out_hwpt_id

    parent = hwpt_alloc(vmm.ioas, u.IOMMU_HWPT_ALLOC_NEST_PARENT)
    gmem = GuestMem(vmm)
    alloc = TableAllocator(gmem, RAM_IOVA + 0x8000, 0x8000)
    s1 = IoPgtable(gmem, alloc, "s1", ias=48, oas=44)
    for giova, ipa in guest_maps.items():
        s1.map(giova, ipa, PAGE, Prot.READ | Prot.WRITE)
    cd = RAM_IOVA + 0x7000
    gmem.write(cd, pack(cd_words(s1.stage1_config(), asid=1)))
    vste = (1 | 0b101 << 1 | cd).to_bytes(8, "little") + bytes(8)
    vmm.nested = hwpt_alloc(parent, 0, vste)
    vmm.parent = parent
    vmm.attach(vmm.nested)
    return vmm


def smmu_pa(vmm: Vmm, addr: int, i: int = 0) -> int | None:
    return vmm.m.smmu.translate(vmm.k.pci.devices[i].rid, addr, write=True).pa


def test_per_vector_nested_routes_through_both_stages():
    vmm = nested_vmm("per-vector", {GIOVA + v * PAGE: VITS_PAGE for v in range(NVEC)})
    vmm.msi_iova(SET, 0, [GIOVA + v * PAGE for v in range(NVEC)])
    vmm.map_msi(VITS_PAGE)                  # the ITS page at the vITS doorbell's IPA
    assert vmm.enable() == 0
    for v in range(NVEC):
        addr = vmm.entry(v)[0]
        assert addr == GIOVA + v * PAGE + 0x40
        assert smmu_pa(vmm, addr) == DOORBELL
        vmm.fire(v)
    assert vmm.counts() == [1] * NVEC
    # Affinity keeps the guest's address (and rewrites it).
    writes = count_table_writes(vmm)
    vmm.k.proc_write(f"/proc/irq/{vmm.irq(2)}/smp_affinity", "8")
    assert vmm.entry(2)[0] == GIOVA + 2 * PAGE + 0x40 and len(writes) == 3


def test_sw_msi_nested_needs_the_guest_to_identity_map_the_window():
    vmm = nested_vmm("sw-msi", {SW_MSI_BASE: SW_MSI_BASE})     # the IORT RMR
    assert vmm.enable() == 0
    assert vmm.entry(0)[0] == SW_MSI_BASE | 0x40
    # Installed in the nest parent (stage 2), not in the guest's tables.
    assert vmm.s2_domain().iova_to_phys(SW_MSI_BASE + 0x40) == DOORBELL
    vmm.fire(0)
    assert vmm.counts() == [1, 0, 0, 0]


def test_sw_msi_nested_without_the_identity_map_faults():
    vmm = nested_vmm("sw-msi", {})
    assert vmm.enable() == 0
    before = vmm.smmu_events()
    vmm.fire(0)
    assert vmm.counts() == [0] * NVEC and vmm.smmu_events() == before + 1


def test_dma_cookie_nested_sends_the_pa_which_faults_under_the_guest_stage1():
    vmm = nested_vmm("dma-cookie", {})
    assert vmm.enable() == 0
    assert vmm.entry(0)[0] == DOORBELL           # no cookie on a nested domain
    before = vmm.smmu_events()
    vmm.fire(0)
    assert vmm.counts() == [0] * NVEC and vmm.smmu_events() == before + 1


# -- property: any sequence of set / clear / affinity / fire keeps the chosen address ----------

POOL = [0x2000_0000 + k * PAGE for k in range(3)]   # mapped with IOMMU_IOAS_MAP_MSI
UNMAPPED = 0x2F00_0000                              # described, never mapped

OPS = st.one_of(
    st.tuples(st.just("set"), st.integers(0, NVEC - 1), st.sampled_from(POOL + [UNMAPPED])),
    st.tuples(st.just("clear"), st.integers(0, NVEC - 1), st.just(0)),
    st.tuples(st.just("aff"), st.integers(0, NVEC - 1), st.integers(0, 3)),
    st.tuples(st.just("fire"), st.integers(0, NVEC - 1), st.just(0)),
    st.tuples(st.just("reattach"), st.just(0), st.just(0)),
)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OPS, max_size=25))
def test_per_vector_address_stability_property(ops):
    """Model: the device holds the address of the last successful forced rewrite; an
    affinity change without an entry is ENOENT with nothing changed; a forced
    rewrite (re-attach) without an entry masks the vector (a fire leaves it pending) until a
    later rewrite with an entry unmasks it, delivering the pending message at the
    new address; a fire reaches the eventfd iff its page is mapped, else the SMMU
    records a fault."""
    vmm = Vmm("per-vector")
    vmm.bind()
    vmm.attach()
    for p in POOL:
        vmm.map_msi(p)
    table = {v: POOL[v % len(POOL)] for v in range(NVEC)}
    vmm.msi_iova(SET, 0, [table[v] for v in range(NVEC)])
    assert vmm.enable() == 0
    written, masked, pending = dict(table), dict.fromkeys(table, False), set()
    counts, faults = [0] * NVEC, vmm.smmu_events()

    def deliver(v):
        nonlocal faults
        if written[v] in POOL:
            counts[v] += 1
        else:
            faults += 1

    def rewrite(v):
        written[v] = table[v]
        if masked[v]:
            masked[v] = False
            if v in pending:
                pending.discard(v)
                deliver(v)
                event("pending delivered at the new address")

    for op, v, arg in ops:
        event(op)
        if op == "set":
            vmm.msi_iova(SET, v, [arg])
            table[v] = arg
        elif op == "clear":
            vmm.msi_iova(CLEAR, v, count=1)
            table[v] = None
        elif op == "aff":
            try:
                vmm.k.proc_write(f"/proc/irq/{vmm.irq(v)}/smp_affinity", f"{1 << arg:x}")
            except KernelError as e:
                # No entry: the change is refused and nothing moves.
                assert table[v] is None and e.errno == ENOENT
                event("aff without an entry: ENOENT")
            else:
                assert table[v] is not None
                rewrite(v)
        elif op == "reattach":
            # A detach and attach force a rewrite of every live vector: one without
            # an entry is masked, one with an entry written (and unmasked).
            vmm.files[0].ioctl(V.VFIO_DEVICE_DETACH_IOMMUFD_PT, V.VfioDeviceDetachIommufdPt())
            vmm.attach()
            for w in range(NVEC):
                if table[w] is None:
                    masked[w] = True
                    event("reattach without an entry: masked")
                else:
                    rewrite(w)
        else:
            d = vmm.fire(v)
            if masked[v]:
                assert d == Delivery.PENDING
                pending.add(v)
            else:
                deliver(v)
        vmm.m.bus.drain()
        vmm.k.handle_interrupts()
        for w in range(NVEC):
            addr, _data, ctrl = vmm.entry(w)
            assert addr == written[w] | 0x40
            assert bool(ctrl & 1) == masked[w]
        assert vmm.counts() == counts
        assert vmm.smmu_events() == faults


def test_second_msi_cookie_on_a_domain_is_eexist():
    # iommu_get_msi_cookie(): EINVAL for a domain that is not unmanaged, EEXIST for
    # one that already has a cookie (of any kind); the first cookie stays.
    from pymsi.kernel.iommu import MSI_IOVA_BASE, IommuCookieType

    vmm = Vmm("dma-cookie")
    pdev = vmm.k.pci.devices[0]
    dom = vmm.k.iommu.domain_alloc_paging(pdev)
    vmm.k.dma_iommu.get_msi_cookie(dom, MSI_IOVA_BASE)
    cookie = dom.cookie
    assert errno_of(vmm.k.dma_iommu.get_msi_cookie, dom, MSI_IOVA_BASE + PAGE) == EEXIST
    assert dom.cookie is cookie and dom.cookie_type == IommuCookieType.DMA_MSI
    other = vmm.k.iommu.domain_alloc_paging(pdev)
    other.cookie_type = IommuCookieType.IOMMUFD
    assert errno_of(vmm.k.dma_iommu.get_msi_cookie, other, MSI_IOVA_BASE) == EEXIST


def test_unforwarding_a_cleared_vector_is_never_refused_and_masks_it():
    """Taking a vLPI back from the vCPU cannot be refused (KVM has already let it go):
    under per-vector a vector whose entry was cleared meanwhile goes back to its host
    LPI and is masked by the forced rewrite, never aimed at another address."""
    from pymsi.hw import its as I
    from pymsi.kernel.gic import ItsVpe, VcpuCmd, VcpuInfo

    vmm = live_per_vector(
        ArmVirt(gicv4=True, devices=[{"msix": NVEC}], msi_design="per-vector"))
    k = vmm.k
    vpt, vprop = k.mm.alloc(0x10000, 0x10000), k.mm.alloc(0x10000, 0x1000)
    vpe = ItsVpe(vpe_id=1, vpt=vpt, vprop=vprop, col=1)
    k.irq.irq_set_vcpu_affinity(vmm.irq(0), VcpuInfo(VcpuCmd.MAP_VLPI, vpe, vintid=8192))
    vmm.msi_iova(CLEAR, 0, count=1)
    before = vmm.entry(0)
    sent = its_cmds(vmm)
    k.irq.irq_set_vcpu_affinity(vmm.irq(0), VcpuInfo(VcpuCmd.UNMAP_VLPI))
    assert I.Cmd.MAPTI in sent                     # back on its host LPI
    assert vmm.entry(0)[:2] == before[:2] and vmm.entry(0)[2] & 1
    assert any("masked" in line for line in k.log)
