"""The user/kernel contract (pymsi.uapi) against the Linux UAPI headers.

Every expected number below was worked out by hand from the headers
(include/uapi/linux/{iommufd,vfio,kvm}.h, arch/arm64/include/uapi/asm/kvm.h,
asm-generic/ioctl.h) and the LP64 C layout rules, not read back from the code:
e.g. IOMMU_IOAS_ALLOC = _IO(';', 0x81) = 0x3b << 8 | 0x81 = 0x3b81, and
KVM_IRQFD = _IOW(0xae, 0x76, 32 bytes) = 1 << 30 | 32 << 16 | 0xae << 8 | 0x76.
"""

from __future__ import annotations

import inspect
import struct

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from pymsi.uapi import (
    _IO,
    _IOC_DIR,
    _IOC_NR,
    _IOC_SIZE,
    _IOC_TYPE,
    _IOR,
    _IOW,
    _IOWR,
    ioctl_name,
)
from pymsi.uapi import iommufd as I  # noqa: N812
from pymsi.uapi import kvm as K  # noqa: N812
from pymsi.uapi import vfio as V  # noqa: N812
from pymsi.uapi._struct import (
    Array,
    CType,
    Flex,
    Struct,
    Union,
    aligned_u64,
    anonymous_union,
    iter_members,
    s32,
    u8,
    u16,
    u32,
    u64,
)

MODULES = (I, V, K)


def _structs(mod):
    return [c for _, c in inspect.getmembers(mod, inspect.isclass)
            if issubclass(c, Struct) and c.__module__ == mod.__name__]


ALL_STRUCTS = [c for m in MODULES for c in _structs(m)]

# --- ioctl numbers ---------------------------------------------------------------------

IOCTL_NUMBERS = {
    # iommufd: _IO(';', IOMMUFD_CMD_*), the enum counting up from 0x80
    I.IOMMU_DESTROY: 0x3B80,
    I.IOMMU_IOAS_ALLOC: 0x3B81,
    I.IOMMU_IOAS_ALLOW_IOVAS: 0x3B82,
    I.IOMMU_IOAS_COPY: 0x3B83,
    I.IOMMU_IOAS_IOVA_RANGES: 0x3B84,
    I.IOMMU_IOAS_MAP: 0x3B85,
    I.IOMMU_IOAS_UNMAP: 0x3B86,
    I.IOMMU_OPTION: 0x3B87,
    I.IOMMU_VFIO_IOAS: 0x3B88,
    I.IOMMU_HWPT_ALLOC: 0x3B89,
    I.IOMMU_GET_HW_INFO: 0x3B8A,
    I.IOMMU_HWPT_SET_DIRTY_TRACKING: 0x3B8B,
    I.IOMMU_HWPT_GET_DIRTY_BITMAP: 0x3B8C,
    I.IOMMU_HWPT_INVALIDATE: 0x3B8D,
    I.IOMMU_FAULT_QUEUE_ALLOC: 0x3B8E,
    I.IOMMU_IOAS_MAP_FILE: 0x3B8F,
    I.IOMMU_VIOMMU_ALLOC: 0x3B90,
    I.IOMMU_VDEVICE_ALLOC: 0x3B91,
    I.IOMMU_IOAS_CHANGE_PROCESS: 0x3B92,
    I.IOMMU_VEVENTQ_ALLOC: 0x3B93,
    I.IOMMU_HW_QUEUE_ALLOC: 0x3B94,
    I.IOMMU_IOAS_MAP_MSI: 0x3B95,  # not upstream: next free after 0x94
    # vfio: _IO(';', 100 + n)
    V.VFIO_GET_API_VERSION: 0x3B64,
    V.VFIO_CHECK_EXTENSION: 0x3B65,
    V.VFIO_DEVICE_GET_INFO: 0x3B6B,
    V.VFIO_DEVICE_GET_REGION_INFO: 0x3B6C,
    V.VFIO_DEVICE_GET_IRQ_INFO: 0x3B6D,
    V.VFIO_DEVICE_SET_IRQS: 0x3B6E,
    V.VFIO_DEVICE_RESET: 0x3B6F,
    V.VFIO_DEVICE_FEATURE: 0x3B75,
    V.VFIO_DEVICE_BIND_IOMMUFD: 0x3B76,
    V.VFIO_DEVICE_ATTACH_IOMMUFD_PT: 0x3B77,
    V.VFIO_DEVICE_DETACH_IOMMUFD_PT: 0x3B78,
    V.VFIO_EEH_PE_OP: 0x3B79,
    V.VFIO_DEVICE_MSI_IOVA: 0x3B7A,  # not upstream: next free after 100 + 21
    # kvm: dir << 30 | size << 16 | 0xae << 8 | nr
    K.KVM_GET_API_VERSION: 0xAE00,
    K.KVM_CREATE_VM: 0xAE01,
    K.KVM_CHECK_EXTENSION: 0xAE03,
    K.KVM_GET_VCPU_MMAP_SIZE: 0xAE04,
    K.KVM_CREATE_VCPU: 0xAE41,
    K.KVM_SET_USER_MEMORY_REGION: 0x4020AE46,
    K.KVM_SET_GSI_ROUTING: 0x4008AE6A,
    K.KVM_IRQFD: 0x4020AE76,
    K.KVM_SIGNAL_MSI: 0x4020AEA5,
    K.KVM_ARM_VCPU_INIT: 0x4020AEAE,
    K.KVM_ARM_PREFERRED_TARGET: 0x8020AEAF,
    K.KVM_CREATE_DEVICE: 0xC00CAEE0,
    K.KVM_SET_DEVICE_ATTR: 0x4018AEE1,
    K.KVM_GET_DEVICE_ATTR: 0x4018AEE2,
    K.KVM_HAS_DEVICE_ATTR: 0x4018AEE3,
}


@pytest.mark.parametrize("got,want", list(IOCTL_NUMBERS.items()),
                         ids=[hex(w) for w in IOCTL_NUMBERS.values()])
def test_ioctl_numbers_are_linux_values(got, want):
    assert got == want


def test_constants_are_linux_values():
    assert (I.IOMMUFD_TYPE, V.VFIO_TYPE, V.VFIO_BASE, K.KVMIO) == (0x3B, 0x3B, 100, 0xAE)
    assert (I.IOMMU_IOAS_MAP_FIXED_IOVA, I.IOMMU_IOAS_MAP_WRITEABLE,
            I.IOMMU_IOAS_MAP_READABLE) == (1, 2, 4)
    assert (I.IOMMU_HWPT_ALLOC_NEST_PARENT, I.IOMMU_HWPT_ALLOC_DIRTY_TRACKING,
            I.IOMMU_HWPT_FAULT_ID_VALID, I.IOMMU_HWPT_ALLOC_PASID) == (1, 2, 4, 8)
    assert (I.IOMMU_HWPT_DATA_NONE, I.IOMMU_HWPT_DATA_VTD_S1,
            I.IOMMU_HWPT_DATA_ARM_SMMUV3) == (0, 1, 2)
    assert I.IOMMU_HW_INFO_TYPE_ARM_SMMUV3 == 2 and I.IOMMU_VIOMMU_TYPE_ARM_SMMUV3 == 1
    assert I.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 == 1
    assert I.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 == 1 and I.IOMMU_VEVENTQ_FLAG_LOST_EVENTS == 1
    assert (I.IOMMU_OPTION_RLIMIT_MODE, I.IOMMU_OPTION_HUGE_PAGES,
            I.IOMMU_OPTION_OP_SET, I.IOMMU_OPTION_OP_GET) == (0, 1, 0, 1)
    assert (V.VFIO_IRQ_SET_DATA_NONE, V.VFIO_IRQ_SET_DATA_BOOL, V.VFIO_IRQ_SET_DATA_EVENTFD,
            V.VFIO_IRQ_SET_ACTION_MASK, V.VFIO_IRQ_SET_ACTION_UNMASK,
            V.VFIO_IRQ_SET_ACTION_TRIGGER) == (1, 2, 4, 8, 16, 32)
    assert V.VFIO_IRQ_SET_DATA_TYPE_MASK == 0x07 and V.VFIO_IRQ_SET_ACTION_TYPE_MASK == 0x38
    # RFCv2 "preset MSI IOVAs": data bit 6, action bit 7
    assert (V.VFIO_IRQ_SET_DATA_MSI_IOVA, V.VFIO_IRQ_SET_ACTION_PREPARE) == (0x40, 0x80)
    assert V.VFIO_IRQ_SET_DATA_TYPE_MASK_RFCV2 == 0x47
    assert V.VFIO_IRQ_SET_ACTION_TYPE_MASK_RFCV2 == 0xB8
    assert (V.VFIO_MSI_IOVA_SET, V.VFIO_MSI_IOVA_CLEAR, V.VFIO_MSI_IOVA_GET) == (1, 2, 4)
    assert (V.VFIO_PCI_INTX_IRQ_INDEX, V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX,
            V.VFIO_PCI_ERR_IRQ_INDEX, V.VFIO_PCI_REQ_IRQ_INDEX, V.VFIO_PCI_NUM_IRQS) == tuple(
                range(6))
    assert V.VFIO_PCI_CONFIG_REGION_INDEX == 7 and V.VFIO_PCI_NUM_REGIONS == 9
    assert (V.VFIO_IRQ_INFO_EVENTFD, V.VFIO_IRQ_INFO_MASKABLE, V.VFIO_IRQ_INFO_AUTOMASKED,
            V.VFIO_IRQ_INFO_NORESIZE) == (1, 2, 4, 8)
    assert (V.VFIO_DEVICE_FLAGS_RESET, V.VFIO_DEVICE_FLAGS_PCI, V.VFIO_DEVICE_FLAGS_CAPS) == (
        1, 2, 0x80)
    assert (V.VFIO_REGION_INFO_FLAG_READ, V.VFIO_REGION_INFO_FLAG_WRITE,
            V.VFIO_REGION_INFO_FLAG_MMAP, V.VFIO_REGION_INFO_FLAG_CAPS) == (1, 2, 4, 8)
    assert V.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE == 3
    assert (K.KVM_CAP_IRQ_ROUTING, K.KVM_CAP_IRQFD, K.KVM_CAP_SIGNAL_MSI,
            K.KVM_CAP_MSI_DEVID) == (25, 32, 77, 131)
    assert (K.KVM_IRQ_ROUTING_IRQCHIP, K.KVM_IRQ_ROUTING_MSI, K.KVM_MSI_VALID_DEVID) == (1, 2, 1)
    assert (K.KVM_IRQFD_FLAG_DEASSIGN, K.KVM_IRQFD_FLAG_RESAMPLE) == (1, 2)
    assert (K.KVM_DEV_TYPE_ARM_VGIC_V3, K.KVM_DEV_TYPE_ARM_VGIC_ITS) == (7, 8)
    assert (K.KVM_DEV_ARM_VGIC_GRP_ADDR, K.KVM_DEV_ARM_VGIC_GRP_CTRL,
            K.KVM_VGIC_ITS_ADDR_TYPE, K.KVM_DEV_ARM_VGIC_CTRL_INIT) == (0, 4, 4, 0)


def test_ioc_decoders_and_encoders():
    assert (_IOC_DIR(K.KVM_IRQFD), _IOC_TYPE(K.KVM_IRQFD), _IOC_NR(K.KVM_IRQFD),
            _IOC_SIZE(K.KVM_IRQFD)) == (1, 0xAE, 0x76, 32)
    assert _IOC_DIR(K.KVM_CREATE_DEVICE) == 3 and _IOC_SIZE(K.KVM_CREATE_DEVICE) == 12
    assert _IO(";", 0x81) == _IO(0x3B, 0x81) == 0x3B81
    assert _IOR("A", 1, 4) == 0x80044101 and _IOWR("A", 1, 4) == 0xC0044101
    for bad in (lambda: _IOW(0xAE, 0x100, 4), lambda: _IOW(0x100, 1, 4),
                lambda: _IOW(0xAE, 1, 1 << 14), lambda: _IO(0xAE, -1)):
        with pytest.raises(ValueError):
            bad()


def test_ioctl_numbers_and_names_do_not_collide():
    numbers = [n for m in MODULES for n in m.IOCTLS]
    assert len(numbers) == len(set(numbers))
    # iommufd and VFIO share type ';': their number ranges must stay apart
    vfio_nrs = {_IOC_NR(n) for n in V.IOCTLS}
    iommufd_nrs = {_IOC_NR(n) for n in I.IOCTLS}
    assert not vfio_nrs & iommufd_nrs
    names = {}
    for m in MODULES:
        own = {n for n, v in vars(m).items()
               if not n.startswith("_") and n not in ("IOCTLS", "NOT_UPSTREAM", "annotations")
               and (n.isupper() or n[0].isupper() and getattr(v, "__module__", "") == m.__name__)}
        for n in own:
            assert n not in names, f"{n} in both {names[n]} and {m.__name__}"
            names[n] = m.__name__
    assert len(names) > 300


def test_not_upstream_names_exist_and_are_marked():
    for m in MODULES:
        for n in m.NOT_UPSTREAM:
            assert hasattr(m, n)
    assert "IommuIoasMapMsi" in I.NOT_UPSTREAM and "VFIO_DEVICE_MSI_IOVA" in V.NOT_UPSTREAM
    assert "IOMMU_OPTION_MSI_DESIGN" in I.NOT_UPSTREAM
    assert I.IOMMU_OPTION_MSI_DESIGN not in (I.IOMMU_OPTION_RLIMIT_MODE, I.IOMMU_OPTION_HUGE_PAGES)
    src = inspect.getsource(I) + inspect.getsource(V)
    assert src.count("NOT UPSTREAM") >= 3


def test_struct_class_names_are_the_c_names_in_camel_case():
    for cls in ALL_STRUCTS:
        if not cls._c_name_:
            continue
        camel = "".join(p[:1].upper() + p[1:] for p in cls._c_name_.split("_"))
        assert cls.__name__ == camel


# --- layouts ---------------------------------------------------------------------------

SIZES = {
    I.IommuDestroy: 8, I.IommuIoasAlloc: 12, I.IommuIovaRange: 16, I.IommuIoasIovaRanges: 32,
    I.IommuIoasAllowIovas: 24, I.IommuIoasMap: 40, I.IommuIoasMapFile: 40,
    I.IommuIoasCopy: 40, I.IommuIoasUnmap: 24, I.IommuOption: 24, I.IommuVfioIoas: 12,
    I.IommuHwptVtdS1: 24, I.IommuHwptArmSmmuv3: 16, I.IommuHwptAlloc: 48,
    I.IommuHwInfoVtd: 24, I.IommuHwInfoArmSmmuv3: 40, I.IommuHwInfoTegra241Cmdqv: 8,
    I.IommuHwInfo: 40, I.IommuHwptSetDirtyTracking: 16, I.IommuHwptGetDirtyBitmap: 48,
    I.IommuHwptVtdS1Invalidate: 24, I.IommuViommuArmSmmuv3Invalidate: 16,
    I.IommuHwptInvalidate: 32, I.IommuHwptPgfault: 40, I.IommuHwptPageResponse: 8,
    I.IommuFaultAlloc: 16, I.IommuViommuTegra241Cmdqv: 16, I.IommuViommuAlloc: 40,
    I.IommuVdeviceAlloc: 24, I.IommuIoasChangeProcess: 8, I.IommufdVeventHeader: 8,
    I.IommuVeventArmSmmuv3: 32, I.IommuVeventTegra241Cmdqv: 16, I.IommuVeventqAlloc: 32,
    I.IommuHwQueueAlloc: 40, I.IommuIoasMapMsi: 24,
    V.VfioInfoCapHeader: 8, V.VfioGroupStatus: 8, V.VfioDeviceInfo: 24,
    V.VfioRegionInfo: 32, V.VfioRegionSparseMmapArea: 16, V.VfioRegionInfoCapSparseMmap: 16,
    V.VfioRegionInfoCapType: 16, V.VfioIrqInfo: 16, V.VfioIrqSet: 20,
    V.VfioPciDependentDevice: 8, V.VfioPciHotResetInfo: 12, V.VfioPciHotReset: 12,
    V.VfioDeviceFeature: 8, V.VfioDeviceBindIommufd: 24, V.VfioDeviceAttachIommufdPt: 16,
    V.VfioDeviceDetachIommufdPt: 12, V.VfioIommuType1Info: 24, V.VfioIommuType1DmaMap: 32,
    V.VfioIommuType1DmaUnmap: 24, V.VfioDeviceMsiIova: 24,
    K.KvmIrqRoutingIrqchip: 8, K.KvmIrqRoutingMsi: 16, K.KvmIrqRoutingS390Adapter: 32,
    K.KvmIrqRoutingHvSint: 8, K.KvmIrqRoutingXenEvtchn: 12, K.KvmIrqRoutingEntryU: 32,
    K.KvmIrqRoutingEntry: 48, K.KvmIrqRouting: 8, K.KvmIrqfd: 32, K.KvmMsi: 32,
    K.KvmUserspaceMemoryRegion: 32,
    K.KvmVcpuInit: 32, K.KvmCreateDevice: 12, K.KvmDeviceAttr: 24,
}

OFFSETS = {
    (I.IommuIoasAlloc, "out_ioas_id"): 8,
    (I.IommuIoasIovaRanges, "allowed_iovas"): 16,
    (I.IommuIoasIovaRanges, "out_iova_alignment"): 24,
    (I.IommuIoasMap, "user_va"): 16, (I.IommuIoasMap, "length"): 24, (I.IommuIoasMap, "iova"): 32,
    (I.IommuIoasMapFile, "fd"): 12, (I.IommuIoasCopy, "src_iova"): 32,
    (I.IommuIoasUnmap, "iova"): 8, (I.IommuIoasUnmap, "length"): 16,
    (I.IommuOption, "op"): 8, (I.IommuOption, "object_id"): 12, (I.IommuOption, "val64"): 16,
    (I.IommuVfioIoas, "op"): 8,
    (I.IommuHwptAlloc, "out_hwpt_id"): 16, (I.IommuHwptAlloc, "data_type"): 24,
    (I.IommuHwptAlloc, "data_len"): 28, (I.IommuHwptAlloc, "data_uptr"): 32,
    (I.IommuHwptAlloc, "fault_id"): 40, (I.IommuHwptAlloc, "__reserved2"): 44,
    (I.IommuHwInfoArmSmmuv3, "idr"): 8, (I.IommuHwInfoArmSmmuv3, "iidr"): 32,
    (I.IommuHwInfoArmSmmuv3, "aidr"): 36,
    (I.IommuHwInfo, "data_uptr"): 16, (I.IommuHwInfo, "in_data_type"): 24,
    (I.IommuHwInfo, "out_data_type"): 24, (I.IommuHwInfo, "out_max_pasid_log2"): 28,
    (I.IommuHwInfo, "__reserved"): 29, (I.IommuHwInfo, "out_capabilities"): 32,
    (I.IommuHwptGetDirtyBitmap, "data"): 40,
    (I.IommuHwptInvalidate, "data_uptr"): 8, (I.IommuHwptInvalidate, "entry_num"): 24,
    (I.IommuHwptPgfault, "addr"): 24, (I.IommuHwptPgfault, "cookie"): 36,
    (I.IommuViommuAlloc, "out_viommu_id"): 20, (I.IommuViommuAlloc, "data_uptr"): 32,
    (I.IommuVdeviceAlloc, "virt_id"): 16, (I.IommuVeventqAlloc, "out_veventq_fd"): 24,
    (I.IommuHwQueueAlloc, "nesting_parent_iova"): 24,
    (I.IommuIoasMapMsi, "dev_id"): 12, (I.IommuIoasMapMsi, "iova"): 16,
    (V.VfioRegionInfo, "size"): 16, (V.VfioRegionInfo, "offset"): 24,
    (V.VfioRegionInfoCapSparseMmap, "nr_areas"): 8, (V.VfioRegionInfoCapSparseMmap, "areas"): 16,
    (V.VfioIrqSet, "count"): 16, (V.VfioIrqSet, "data"): 20,
    (V.VfioPciDependentDevice, "devid"): 0, (V.VfioPciDependentDevice, "devfn"): 7,
    (V.VfioPciHotResetInfo, "devices"): 12,
    (V.VfioDeviceBindIommufd, "iommufd"): 8, (V.VfioDeviceBindIommufd, "out_devid"): 12,
    (V.VfioDeviceBindIommufd, "token_uuid_ptr"): 16,
    (V.VfioDeviceAttachIommufdPt, "pt_id"): 8, (V.VfioDeviceAttachIommufdPt, "pasid"): 12,
    (V.VfioDeviceDetachIommufdPt, "pasid"): 8,
    (V.VfioIommuType1Info, "iova_pgsizes"): 8, (V.VfioIommuType1DmaMap, "size"): 24,
    (V.VfioDeviceMsiIova, "count"): 16, (V.VfioDeviceMsiIova, "__reserved"): 20,
    (V.VfioDeviceMsiIova, "iova"): 24,
    (K.KvmIrqRoutingMsi, "devid"): 12, (K.KvmIrqRoutingMsi, "pad"): 12,
    (K.KvmIrqRoutingEntry, "u"): 16, (K.KvmIrqRoutingEntry, "u.msi.address_lo"): 16,
    (K.KvmIrqRoutingEntry, "u.msi.devid"): 28, (K.KvmIrqRoutingEntry, "u.irqchip.pin"): 20,
    (K.KvmIrqRoutingEntry, "u.pad"): 16, (K.KvmIrqRouting, "entries"): 8,
    (K.KvmIrqfd, "resamplefd"): 12, (K.KvmIrqfd, "pad"): 16,
    (K.KvmMsi, "flags"): 12, (K.KvmMsi, "devid"): 16, (K.KvmMsi, "pad"): 20,
    (K.KvmDeviceAttr, "attr"): 8, (K.KvmDeviceAttr, "addr"): 16,
    (K.KvmCreateDevice, "flags"): 8,
    (K.KvmUserspaceMemoryRegion, "guest_phys_addr"): 8,
    (K.KvmUserspaceMemoryRegion, "memory_size"): 16,
    (K.KvmUserspaceMemoryRegion, "userspace_addr"): 24,
}


@pytest.mark.parametrize("cls,size", list(SIZES.items()), ids=[c.__name__ for c in SIZES])
def test_sizeof_is_c_sizeof(cls, size):
    assert cls.sizeof == size
    assert len(cls().pack()) == size


@pytest.mark.parametrize("key,off", list(OFFSETS.items()),
                         ids=[f"{c.__name__}.{f}" for c, f in OFFSETS])
def test_offsetof_is_c_offsetof(key, off):
    cls, path = key
    assert cls.offsetof(path) == off


def test_every_struct_has_a_checked_size():
    assert set(ALL_STRUCTS) <= set(SIZES)


def test_layout_rules_on_synthetic_structs():
    class A(Struct):
        _fields_ = (("a", u8), ("b", u32))

    class B(Struct):
        _fields_ = (("a", u32), ("b", u64))

    class C(Struct):
        _fields_ = (("a", u64), ("b", u8))

    class D(Struct):
        _fields_ = (("a", u16), ("b", u8))

    class E(Union):
        _fields_ = (("a", u8), ("b", u32), ("c", Array(u16, 3)))

    class F(Struct):
        _fields_ = (("a", u32), ("x", Flex(aligned_u64)))

    class G(Struct):
        _fields_ = (("a", u64), ("b", u32), ("d", Flex(u8)))

    class H(Struct):
        _fields_ = (("a", u8), ("e", E), ("z", u8))

    assert (A.offsetof("b"), A.sizeof) == (4, 8)
    assert (B.offsetof("b"), B.sizeof) == (8, 16)
    assert (C.offsetof("b"), C.sizeof) == (8, 16)
    assert (D.offsetof("b"), D.sizeof, D.alignof) == (2, 4, 2)
    assert (E.offsetof("c"), E.sizeof, E.alignof) == (0, 8, 4)
    assert (F.offsetof("x"), F.sizeof) == (8, 8)
    assert (G.offsetof("d"), G.sizeof) == (12, 16)
    assert (H.offsetof("e"), H.offsetof("e.b"), H.offsetof("z"), H.sizeof) == (4, 4, 12, 16)
    g = G(a=1, b=2, d=[7, 8])
    assert g.pack() == struct.pack("<QI", 1, 2) + bytes([7, 8]) + bytes(2)
    g.d = [1, 2, 3, 4, 5]
    assert g.pack() == struct.pack("<QI", 1, 2) + bytes([1, 2, 3, 4, 5])


def test_bad_declarations_are_refused():
    with pytest.raises(TypeError):
        class Dup(Struct):
            _fields_ = (("a", u32), ("a", u32))
    with pytest.raises(TypeError):
        class FlexNotLast(Struct):
            _fields_ = (("d", Flex(u8)), ("a", u32))
    with pytest.raises(TypeError):
        class Clash(Struct):
            _fields_ = (("pack", u32),)
    with pytest.raises(TypeError):
        Array(Array(u8, 2), 2)  # type: ignore[arg-type]


# --- values, checks, bytes -------------------------------------------------------------

def test_pack_matches_a_hand_built_c_buffer():
    m = I.IommuIoasMap(flags=I.IOMMU_IOAS_MAP_FIXED_IOVA | I.IOMMU_IOAS_MAP_READABLE,
                       ioas_id=2, user_va=0x7F00_0000_1000, length=0x2000, iova=0x8000_0000)
    assert m.pack() == struct.pack("<IIIIQQQ", 40, 5, 2, 0, 0x7F00_0000_1000, 0x2000,
                                   0x8000_0000)
    e = K.KvmIrqRoutingEntry(gsi=33, type=K.KVM_IRQ_ROUTING_MSI, flags=K.KVM_MSI_VALID_DEVID)
    e.u.msi.address_lo = 0x0809_0040
    e.u.msi.address_hi = 0
    e.u.msi.data = 17
    e.u.msi.devid = 0x10
    assert e.pack() == struct.pack("<IIII IIII 16x", 33, 2, 1, 0, 0x0809_0040, 0, 17, 0x10)
    assert e.u.pad[3] == 0x10 and e.u.msi.pad == 0x10  # union members share bytes
    r = K.KvmIrqRouting(nr=1, entries=[e])
    assert r.pack() == struct.pack("<II", 1, 0) + e.pack()


def test_range_checked_assignment_changes_nothing_on_failure():
    m = I.IommuIoasMap(iova=5)
    for bad in (1 << 64, -1):
        with pytest.raises(ValueError):
            m.iova = bad
    with pytest.raises(TypeError):
        m.iova = "5"
    with pytest.raises(TypeError):
        m.iova = 5.0
    assert m.iova == 5
    b = V.VfioDeviceBindIommufd(iommufd=-1)
    assert b.iommufd == -1
    with pytest.raises(ValueError):
        b.iommufd = 1 << 31
    with pytest.raises(ValueError):
        b.out_devid = 1 << 32
    h = I.IommuHwptArmSmmuv3(ste=[1, 2])
    with pytest.raises(ValueError):
        h.ste = [3, 1 << 64]
    with pytest.raises(ValueError):
        h.ste = [3]
    assert list(h.ste) == [1, 2]
    h.ste[1] = 9
    assert h.ste == [1, 9] and h.ste[-1] == 9
    with pytest.raises(IndexError):
        h.ste[2] = 0
    with pytest.raises(ValueError):
        K.KvmIrqfd(pad=bytes(15))
    assert K.KvmIrqfd(pad=bytes(range(16))).pad[15] == 15


def test_unknown_members_are_errors():
    with pytest.raises(TypeError):
        I.IommuIoasAlloc(out_ioas=1)
    a = I.IommuIoasAlloc()
    with pytest.raises(AttributeError):
        a.out_ioas = 1  # type: ignore[attr-defined]


def test_anonymous_union_members_share_bytes():
    h = I.IommuHwInfo(in_data_type=I.IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
    assert h.out_data_type == 2
    h.out_data_type = 0
    assert h.in_data_type == 0
    d = V.VfioPciDependentDevice(devid=0xFFFF_FFFF, segment=1, bus=2, devfn=3)
    assert d.group_id == 0xFFFF_FFFF
    assert d.pack() == struct.pack("<IHBB", 0xFFFF_FFFF, 1, 2, 3)


def test_nested_members_assign_by_copy_or_dict():
    e = K.KvmIrqRoutingEntry(type=K.KVM_IRQ_ROUTING_MSI,
                             u={"msi": K.KvmIrqRoutingMsi(address_lo=0x1000, data=3, devid=7)})
    assert (e.u.msi.address_lo, e.u.msi.data, e.u.msi.devid) == (0x1000, 3, 7)
    msi = e.u.msi.copy()
    msi.data = 4
    assert e.u.msi.data == 3  # a copy is detached
    e.u.msi = msi
    assert e.u.msi.data == 4
    with pytest.raises(ValueError):
        e.u = {"msi": {"data": 1 << 32}}
    assert e.u.msi.data == 4
    with pytest.raises(TypeError):
        e.u.msi = K.KvmIrqRoutingIrqchip()


def test_size_member_follows_packed_length_until_assigned():
    assert I.IommuIoasAlloc().size == 12
    assert V.VfioDeviceAttachIommufdPt().argsz == 16
    s = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
                     index=V.VFIO_PCI_MSIX_IRQ_INDEX, start=0, count=2, data=[10, -1])
    assert s.argsz == 20 + 2 * 4
    s.data.append(11)
    assert s.argsz == 32 and s.pack()[:4] == struct.pack("<I", 32)
    s.argsz = 7
    assert s.argsz == 7 and s.pack()[:4] == struct.pack("<I", 7)
    assert s.set_size() is s and s.argsz == 32
    assert V.VfioIrqSet(argsz=3).argsz == 3
    msi = V.VfioDeviceMsiIova(flags=V.VFIO_MSI_IOVA_SET, index=V.VFIO_PCI_MSIX_IRQ_INDEX,
                              count=3, iova=[0x800_0000, 0x800_1000, 0x800_2000])
    assert msi.argsz == 24 + 3 * 8
    assert V.VfioIrqSet.unpack(s.pack()).argsz == 32
    assert V.VfioRegionInfo._size_field_ == "argsz" and K.KvmIrqfd._size_field_ is None
    with pytest.raises(TypeError):
        K.KvmIrqfd().set_size()


def test_vfio_irq_set_data_follows_the_data_flag():
    base = V.VFIO_IRQ_SET_ACTION_TRIGGER
    b = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_BOOL | base, count=3, data=[1, 0, 1])
    assert b.pack()[20:] == bytes([1, 0, 1]) and b.argsz == 23
    e = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_EVENTFD | base, count=2, data=[5, -1])
    assert e.pack()[20:] == struct.pack("<ii", 5, -1)
    with pytest.raises(ValueError):
        e.data = [1 << 31]
    p = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_MSI_IOVA | V.VFIO_IRQ_SET_ACTION_PREPARE,
                     count=2, data=[0x0800_0000, 0xFFFF_0000_0000])
    assert p.pack()[20:] == struct.pack("<QQ", 0x0800_0000, 0xFFFF_0000_0000)
    assert V.VfioIrqSet.unpack(p.pack()).data == [0x0800_0000, 0xFFFF_0000_0000]
    n = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_NONE | base, count=0)
    assert n.pack() == struct.pack("<IIIII", 20, 0x21, 0, 0, 0)
    # elements are checked again at pack time: the flag decides how they are read
    e.data = [300]
    e.flags = V.VFIO_IRQ_SET_DATA_BOOL | base
    with pytest.raises(ValueError):
        e.pack()
    raw = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_BOOL | base, count=2, data=b"\x01\x00")
    assert raw.pack()[20:] == b"\x01\x00" and raw.argsz == 22


def test_unpack_reads_what_it_needs():
    with pytest.raises(ValueError):
        I.IommuIoasMap.unpack(bytes(39))
    m = I.IommuIoasMap.unpack(bytes(range(40)) + b"extra")
    assert m.ioas_id == int.from_bytes(bytes(range(8, 12)), "little")
    r = V.VfioDeviceMsiIova.unpack(bytes(24) + struct.pack("<QQ", 1, 2) + b"\x01", nflex=1)
    assert r.iova == [1]
    with pytest.raises(ValueError):
        V.VfioDeviceMsiIova.unpack(bytes(24) + bytes(8), nflex=2)
    assert V.VfioDeviceMsiIova.unpack(bytes(24) + bytes(15)).iova == [0]


def test_flexible_array_of_structures_round_trips():
    entries = [K.KvmIrqRoutingEntry(gsi=g, type=K.KVM_IRQ_ROUTING_MSI,
                                    flags=K.KVM_MSI_VALID_DEVID,
                                    u={"msi": {"address_lo": 0x0809_0040, "data": g,
                                               "devid": 8}})
               for g in range(3)]
    r = K.KvmIrqRouting(nr=3, entries=entries)
    data = r.pack()
    assert len(data) == 8 + 3 * 48
    back = K.KvmIrqRouting.unpack(data)
    assert back == r and [e.u.msi.data for e in back.entries] == [0, 1, 2]
    with pytest.raises(TypeError):
        K.KvmIrqRouting(entries=[K.KvmIrqfd()])
    info = V.VfioRegionInfoCapSparseMmap(
        header={"id": V.VFIO_REGION_INFO_CAP_SPARSE_MMAP, "version": 1}, nr_areas=1,
        areas=[V.VfioRegionSparseMmapArea(offset=0x2000, size=0x1000)])
    assert info.pack() == struct.pack("<HHIIIQQ", 1, 1, 0, 1, 0, 0x2000, 0x1000)


def test_copy_and_equality():
    a = I.IommuHwptAlloc(flags=I.IOMMU_HWPT_ALLOC_NEST_PARENT, dev_id=1, pt_id=2)
    b = a.copy()
    assert a == b and a is not b
    b.pt_id = 3
    assert a != b and a.pt_id == 2
    assert I.IommuDestroy(id=1) != I.IommuIoasChangeProcess()
    assert "pt_id=2" in repr(a)


# --- property tests: build valid structures, mutate them field by field ----------------

SCALAR_STRUCTS = [c for c in ALL_STRUCTS if c._flex_ is None]


def _scalars(cls):
    """(path, offset, ctype) of every scalar, array elements included."""
    out = []
    for path, off, t in iter_members(cls):
        if isinstance(t, CType):
            out.append((path, off, t))
        elif isinstance(t, Array):
            out.extend((f"{path}[{i}]", off + i * t.ctype.size, t.ctype) for i in range(t.n))
    return out


def _get(obj, path):
    head, _, idx = path.partition("[")
    for part in head.split("."):
        obj = getattr(obj, part)
    return obj[int(idx[:-1])] if idx else obj


def _set(obj, path, value):
    head, _, idx = path.partition("[")
    *parents, last = head.split(".")
    for part in parents:
        obj = getattr(obj, part)
    if idx:
        getattr(obj, last)[int(idx[:-1])] = value
    else:
        setattr(obj, last, value)


@st.composite
def struct_and_mutation(draw):
    cls = draw(st.sampled_from(SCALAR_STRUCTS))
    raw = draw(st.binary(min_size=cls.sizeof, max_size=cls.sizeof))
    path, off, ct = draw(st.sampled_from(_scalars(cls)))
    value = draw(st.integers(ct.lo, ct.hi))
    return cls, raw, path, off, ct, value


@given(struct_and_mutation())
def test_bytes_round_trip_and_field_writes_touch_only_their_bytes(case):
    cls, raw, path, off, ct, value = case
    event(cls.__name__)
    obj = cls.unpack(raw)
    assert obj.pack() == raw
    assert _get(obj, path) == ct.codec.unpack_from(raw, off)[0]
    _set(obj, path, value)
    assert _get(obj, path) == value
    want = bytearray(raw)
    ct.codec.pack_into(want, off, value)
    assert obj.pack() == bytes(want)
    again = cls.unpack(obj.pack())
    assert again == obj and _get(again, path) == value


@given(st.data())
def test_out_of_range_writes_are_refused_and_change_nothing(data):
    cls = data.draw(st.sampled_from(SCALAR_STRUCTS))
    path, off, ct = data.draw(st.sampled_from(_scalars(cls)))
    obj = cls.unpack(data.draw(st.binary(min_size=cls.sizeof, max_size=cls.sizeof)))
    before = obj.pack()
    bad = data.draw(st.one_of(st.integers(ct.hi + 1, ct.hi + (1 << 70)),
                              st.integers(ct.lo - (1 << 70), ct.lo - 1)))
    event("above" if bad > ct.hi else "below")
    with pytest.raises(ValueError):
        _set(obj, path, bad)
    assert obj.pack() == before


FLEX_CASES = {
    "irq_set_eventfd": (V.VfioIrqSet, V.VFIO_IRQ_SET_DATA_EVENTFD, s32),
    "irq_set_bool": (V.VfioIrqSet, V.VFIO_IRQ_SET_DATA_BOOL, u8),
    "irq_set_msi_iova": (V.VfioIrqSet, V.VFIO_IRQ_SET_DATA_MSI_IOVA, u64),
    "msi_iova": (V.VfioDeviceMsiIova, V.VFIO_MSI_IOVA_SET, aligned_u64),
    "hot_reset": (V.VfioPciHotReset, 0, s32),
}


@given(st.sampled_from(sorted(FLEX_CASES)), st.data())
def test_flexible_arrays_round_trip_with_argsz(name, data):
    cls, flags, ct = FLEX_CASES[name]
    event(name)
    items = data.draw(st.lists(st.integers(ct.lo, ct.hi), max_size=12))
    obj = cls(flags=flags, count=len(items))
    setattr(obj, cls._flex_[0], items)
    packed = obj.pack()
    assert len(packed) == cls.sizeof + len(items) * ct.size == obj.argsz
    assert packed[cls.sizeof:] == b"".join(ct.codec.pack(v) for v in items)
    back = cls.unpack(packed)
    assert getattr(back, cls._flex_[0]) == items and back == obj


def test_anonymous_union_helper_builds_a_union():
    U = anonymous_union(("a", u32), ("b", u16))  # noqa: N806
    assert issubclass(U, Union) and U.sizeof == 4


def test_offsetofend_gives_linux_minimum_sizes():
    # vfio_pci_core_ioctl: minsz = offsetofend(struct vfio_irq_set, count) = 20
    assert V.VfioIrqSet.offsetofend("count") == 20
    assert V.VfioDeviceBindIommufd.offsetofend("out_devid") == 16
    assert I.IommuHwptAlloc.offsetofend("data_uptr") == 40
    assert K.KvmIrqRoutingEntry.offsetofend("u.msi.devid") == 32
    assert I.IommuHwInfoArmSmmuv3.offsetofend("idr") == 32
    with pytest.raises(KeyError):
        I.IommuIoasMap.offsetofend("nope")


def test_flex_items_reads_raw_bytes_with_the_implied_type():
    s = V.VfioIrqSet(flags=V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
                     count=2, data=struct.pack("<ii", 7, -1) + b"\x00")
    assert s.flex_items() == [7, -1]
    s.data = [3]
    assert s.flex_items() == [3]
    with pytest.raises(TypeError):
        I.IommuIoasMap().flex_items()


def test_ioctl_name_reverse_lookup():
    assert ioctl_name(0x3B81) == "IOMMU_IOAS_ALLOC"
    assert ioctl_name(0x3B6E) == "VFIO_DEVICE_SET_IRQS"
    assert ioctl_name(0x4020AE76) == "KVM_IRQFD"
    assert ioctl_name(0x3B7A) == "VFIO_DEVICE_MSI_IOVA"
    assert ioctl_name(0x1234) == "0x1234"
    for m in MODULES:
        for number in m.IOCTLS:
            assert getattr(m, ioctl_name(number)) == number
