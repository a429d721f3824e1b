"""``include/uapi/linux/vfio.h`` (Linux 6.17/6.18): the VFIO ioctls a VMM uses.

The container, group and device ioctls with the device cdev interface
(``/dev/vfio/devices/vfioN``, bound to an iommufd), vfio-pci's fixed region and
interrupt indexes, and the legacy type1 map/unmap.  Structures are CamelCase
classes of the C names (``struct vfio_irq_set`` -> :class:`VfioIrqSet`) with the
C member names; ``argsz`` follows the packed length until assigned.

The block at the end marked NOT UPSTREAM holds the additions this project models:
the RFCv2 "preset MSI IOVA" flags and this project's per-vector ioctl.
"""

from __future__ import annotations

from ._ioctl import _IO
from ._struct import CType, Flex, Struct, aligned_u64, anonymous_union, s32, u8, u16, u32, u64

VFIO_API_VERSION = 0

# Extensions (VFIO_CHECK_EXTENSION)
VFIO_TYPE1_IOMMU = 1
VFIO_SPAPR_TCE_IOMMU = 2
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_EEH = 5
VFIO_SPAPR_TCE_v2_IOMMU = 7
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_TYPE = ord(";")
VFIO_BASE = 100


class VfioInfoCapHeader(Struct):
    """The header of each capability in an INFO ioctl's capability chain."""

    _c_name_ = "vfio_info_cap_header"
    _fields_ = (("id", u16), ("version", u16), ("next", u32))


# --- container and group ioctls ------------------------------------------------------
VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)


class VfioGroupStatus(Struct):
    """Status of a VFIO group."""

    _c_name_ = "vfio_group_status"
    _fields_ = (("argsz", u32), ("flags", u32))


VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1
VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)


# --- device ioctls -------------------------------------------------------------------
class VfioDeviceInfo(Struct):
    """What kind of device, how many regions and interrupt indexes it has."""

    _c_name_ = "vfio_device_info"
    _fields_ = (("argsz", u32), ("flags", u32), ("num_regions", u32), ("num_irqs", u32),
                ("cap_offset", u32), ("pad", u32))


VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_PLATFORM = 1 << 2
VFIO_DEVICE_FLAGS_AMBA = 1 << 3
VFIO_DEVICE_FLAGS_CCW = 1 << 4
VFIO_DEVICE_FLAGS_AP = 1 << 5
VFIO_DEVICE_FLAGS_FSL_MC = 1 << 6
VFIO_DEVICE_FLAGS_CAPS = 1 << 7
VFIO_DEVICE_FLAGS_CDX = 1 << 8
VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)

VFIO_DEVICE_API_PCI_STRING = "vfio-pci"


class VfioRegionInfo(Struct):
    """One region of the device fd: flags, size and its offset in the fd."""

    _c_name_ = "vfio_region_info"
    _fields_ = (("argsz", u32), ("flags", u32), ("index", u32), ("cap_offset", u32),
                ("size", aligned_u64), ("offset", aligned_u64))


VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)

VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1


class VfioRegionSparseMmapArea(Struct):
    """One mmap-able area of a region."""

    _c_name_ = "vfio_region_sparse_mmap_area"
    _fields_ = (("offset", aligned_u64), ("size", aligned_u64))


class VfioRegionInfoCapSparseMmap(Struct):
    """The sparse mmap capability: which parts of a region may be mmap'ed."""

    _c_name_ = "vfio_region_info_cap_sparse_mmap"
    _fields_ = (("header", VfioInfoCapHeader), ("nr_areas", u32), ("reserved", u32),
                ("areas", Flex(VfioRegionSparseMmapArea)))


VFIO_REGION_INFO_CAP_TYPE = 2


class VfioRegionInfoCapType(Struct):
    """The device-specific region type capability."""

    _c_name_ = "vfio_region_info_cap_type"
    _fields_ = (("header", VfioInfoCapHeader), ("type", u32), ("subtype", u32))


VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3


class VfioIrqInfo(Struct):
    """One interrupt index: how many vectors and how they behave."""

    _c_name_ = "vfio_irq_info"
    _fields_ = (("argsz", u32), ("flags", u32), ("index", u32), ("count", u32))


VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3
VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_IRQ_SET_DATA_TYPE_MASK = (VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_DATA_BOOL
                               | VFIO_IRQ_SET_DATA_EVENTFD)
VFIO_IRQ_SET_ACTION_TYPE_MASK = (VFIO_IRQ_SET_ACTION_MASK | VFIO_IRQ_SET_ACTION_UNMASK
                                 | VFIO_IRQ_SET_ACTION_TRIGGER)


class VfioIrqSet(Struct):
    """Signal, mask or unmask vectors [start, start + count) of an interrupt index.

    ``data`` is ``__u8 data[]`` in C; its elements are read the way the DATA flag
    says: bytes for DATA_BOOL, ``__s32`` eventfds for DATA_EVENTFD (-1 tears a
    vector down), ``__u64`` IOVAs for the RFCv2 DATA_MSI_IOVA, nothing for DATA_NONE.
    """

    _c_name_ = "vfio_irq_set"
    _fields_ = (("argsz", u32), ("flags", u32), ("index", u32), ("start", u32),
                ("count", u32), ("data", Flex(u8)))

    def _flex_elem_(self) -> CType | type[Struct]:
        kind = self.flags & (VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_DATA_MSI_IOVA)
        if kind == VFIO_IRQ_SET_DATA_EVENTFD:
            return s32
        if kind == VFIO_IRQ_SET_DATA_MSI_IOVA:
            return u64
        return u8


VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)
VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)

# vfio-pci fixed region indexes
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR1_REGION_INDEX = 1
VFIO_PCI_BAR2_REGION_INDEX = 2
VFIO_PCI_BAR3_REGION_INDEX = 3
VFIO_PCI_BAR4_REGION_INDEX = 4
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_VGA_REGION_INDEX = 8
VFIO_PCI_NUM_REGIONS = 9

# vfio-pci interrupt indexes
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5


class VfioPciDependentDevice(Struct):
    """A device affected by a hot reset (group id or, for cdev users, device id)."""

    _c_name_ = "vfio_pci_dependent_device"
    _fields_ = ((None, anonymous_union(("group_id", u32), ("devid", u32))),
                ("segment", u16), ("bus", u8), ("devfn", u8))


VFIO_PCI_DEVID_OWNED = 0
VFIO_PCI_DEVID_NOT_OWNED = -1


class VfioPciHotResetInfo(Struct):
    """The devices a hot reset of this device would also reset."""

    _c_name_ = "vfio_pci_hot_reset_info"
    _fields_ = (("argsz", u32), ("flags", u32), ("count", u32),
                ("devices", Flex(VfioPciDependentDevice)))


VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0
VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class VfioPciHotReset(Struct):
    """Hot reset, proving ownership of the affected groups (empty for cdev users)."""

    _c_name_ = "vfio_pci_hot_reset"
    _fields_ = (("argsz", u32), ("flags", u32), ("count", u32), ("group_fds", Flex(s32)))


VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_DEVICE_QUERY_GFX_PLANE = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_DEVICE_GET_GFX_DMABUF = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_DEVICE_IOEVENTFD = _IO(VFIO_TYPE, VFIO_BASE + 16)


class VfioDeviceFeature(Struct):
    """Get, set or probe a device feature; the feature's data follows."""

    _c_name_ = "vfio_device_feature"
    _fields_ = (("argsz", u32), ("flags", u32), ("data", Flex(u8)))


VFIO_DEVICE_FEATURE_MASK = 0xFFFF
VFIO_DEVICE_FEATURE_GET = 1 << 16
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_PROBE = 1 << 18
VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)

VFIO_DEVICE_FEATURE_PCI_VF_TOKEN = 0
VFIO_DEVICE_FEATURE_MIGRATION = 1
VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE = 2
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
VFIO_DEVICE_FEATURE_DMA_LOGGING_START = 6
VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP = 7
VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT = 8
VFIO_DEVICE_FEATURE_MIG_DATA_SIZE = 9
VFIO_DEVICE_FEATURE_BUS_MASTER = 10


class VfioDeviceBindIommufd(Struct):
    """Bind the device (cdev fd) to an iommufd; ``out_devid`` is its id there."""

    _c_name_ = "vfio_device_bind_iommufd"
    _fields_ = (("argsz", u32), ("flags", u32), ("iommufd", s32), ("out_devid", u32),
                ("token_uuid_ptr", aligned_u64))


VFIO_DEVICE_BIND_FLAG_TOKEN = 1 << 0
VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)


class VfioDeviceAttachIommufdPt(Struct):
    """Attach (or replace) the device's IOAS / HWPT; ``pt_id`` returns the HWPT used."""

    _c_name_ = "vfio_device_attach_iommufd_pt"
    _fields_ = (("argsz", u32), ("flags", u32), ("pt_id", u32), ("pasid", u32))


VFIO_DEVICE_ATTACH_PASID = 1 << 0
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)


class VfioDeviceDetachIommufdPt(Struct):
    """Detach the device (or one PASID) from its IOAS / HWPT."""

    _c_name_ = "vfio_device_detach_iommufd_pt"
    _fields_ = (("argsz", u32), ("flags", u32), ("pasid", u32))


VFIO_DEVICE_DETACH_PASID = 1 << 0
VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)


# --- type1 IOMMU (legacy container) --------------------------------------------------
class VfioIommuType1Info(Struct):
    """Supported page sizes (and capabilities) of a type1 container."""

    _c_name_ = "vfio_iommu_type1_info"
    _fields_ = (("argsz", u32), ("flags", u32), ("iova_pgsizes", aligned_u64),
                ("cap_offset", u32), ("pad", u32))


VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)


class VfioIommuType1DmaMap(Struct):
    """Map process memory at an IOVA of a type1 container."""

    _c_name_ = "vfio_iommu_type1_dma_map"
    _fields_ = (("argsz", u32), ("flags", u32), ("vaddr", u64), ("iova", u64), ("size", u64))


VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_MAP_FLAG_VADDR = 1 << 2
VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)


class VfioIommuType1DmaUnmap(Struct):
    """Unmap an IOVA range of a type1 container; ``size`` returns the bytes unmapped."""

    _c_name_ = "vfio_iommu_type1_dma_unmap"
    _fields_ = (("argsz", u32), ("flags", u32), ("iova", u64), ("size", u64),
                ("data", Flex(u8)))


VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1
VFIO_DMA_UNMAP_FLAG_VADDR = 1 << 2
VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_IOMMU_ENABLE = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_IOMMU_DISABLE = _IO(VFIO_TYPE, VFIO_BASE + 16)

# The highest upstream VFIO_BASE offset is 21 (VFIO_EEH_PE_OP, sPAPR only).
VFIO_EEH_PE_OP = _IO(VFIO_TYPE, VFIO_BASE + 21)

# =====================================================================================
# NOT UPSTREAM (1): the RFCv2 series "iommu: Add MSI mapping support with nested
# SMMU" (Nicolin Chen, January 2025), patch "vfio/pci: Allow preset MSI IOVAs via
# VFIO_IRQ_SET_ACTION_PREPARE".  ACTION_PREPARE with DATA_MSI_IOVA hands one __u64
# IOVA per vector before the vectors are enabled.  Bit values as in that series.  The
# series also widened the two masks; the widened masks are here under _RFCV2 names so
# that the upstream names keep their upstream values.
# =====================================================================================
VFIO_IRQ_SET_DATA_MSI_IOVA = 1 << 6
VFIO_IRQ_SET_ACTION_PREPARE = 1 << 7
VFIO_IRQ_SET_DATA_TYPE_MASK_RFCV2 = VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_DATA_MSI_IOVA
VFIO_IRQ_SET_ACTION_TYPE_MASK_RFCV2 = VFIO_IRQ_SET_ACTION_TYPE_MASK | VFIO_IRQ_SET_ACTION_PREPARE

# =====================================================================================
# NOT UPSTREAM (2): this project's per-vector MSI address ioctl on the VFIO device.
# SET stores iova[k] as the MSI address of vector start + k of ``index`` (MSI or
# MSI-X), CLEAR removes the entries, GET fills iova[] with them; all-or-nothing.  Its
# number is the next free one after the highest upstream VFIO_BASE offset (21).
# =====================================================================================
VFIO_MSI_IOVA_SET = 1 << 0
VFIO_MSI_IOVA_CLEAR = 1 << 1
VFIO_MSI_IOVA_GET = 1 << 2


class VfioDeviceMsiIova(Struct):
    """NOT UPSTREAM: set / clear / get the MSI IOVAs of vectors [start, start + count)."""

    _c_name_ = "vfio_device_msi_iova"
    _fields_ = (("argsz", u32), ("flags", u32), ("index", u32), ("start", u32),
                ("count", u32), ("__reserved", u32), ("iova", Flex(aligned_u64)))


VFIO_DEVICE_MSI_IOVA = _IO(VFIO_TYPE, VFIO_BASE + 22)

#: ioctl number -> its argument structure (None: an int argument or none), for the
#: ioctls of a device cdev and of the container.
IOCTLS: dict[int, type[Struct] | None] = {
    VFIO_GET_API_VERSION: None,
    VFIO_CHECK_EXTENSION: None,
    VFIO_SET_IOMMU: None,
    VFIO_GROUP_GET_STATUS: VfioGroupStatus,
    VFIO_GROUP_SET_CONTAINER: None,
    VFIO_GROUP_UNSET_CONTAINER: None,
    VFIO_GROUP_GET_DEVICE_FD: None,
    VFIO_DEVICE_GET_INFO: VfioDeviceInfo,
    VFIO_DEVICE_GET_REGION_INFO: VfioRegionInfo,
    VFIO_DEVICE_GET_IRQ_INFO: VfioIrqInfo,
    VFIO_DEVICE_SET_IRQS: VfioIrqSet,
    VFIO_DEVICE_RESET: None,
    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: VfioPciHotResetInfo,
    VFIO_DEVICE_PCI_HOT_RESET: VfioPciHotReset,
    VFIO_DEVICE_FEATURE: VfioDeviceFeature,
    VFIO_DEVICE_BIND_IOMMUFD: VfioDeviceBindIommufd,
    VFIO_DEVICE_ATTACH_IOMMUFD_PT: VfioDeviceAttachIommufdPt,
    VFIO_DEVICE_DETACH_IOMMUFD_PT: VfioDeviceDetachIommufdPt,
    VFIO_DEVICE_MSI_IOVA: VfioDeviceMsiIova,
}

#: Names of this module that are not Linux's (RFCv2 series and this project).
NOT_UPSTREAM = frozenset({
    "VFIO_IRQ_SET_DATA_MSI_IOVA", "VFIO_IRQ_SET_ACTION_PREPARE",
    "VFIO_IRQ_SET_DATA_TYPE_MASK_RFCV2", "VFIO_IRQ_SET_ACTION_TYPE_MASK_RFCV2",
    "VFIO_MSI_IOVA_SET", "VFIO_MSI_IOVA_CLEAR", "VFIO_MSI_IOVA_GET",
    "VfioDeviceMsiIova", "VFIO_DEVICE_MSI_IOVA",
})
