"""``include/uapi/linux/iommufd.h`` (Linux 6.17/6.18): the /dev/iommu ioctls.

Every ioctl number, flag, enum value and argument structure of the header, named
as there; structures are CamelCase classes of the C names
(``struct iommu_ioas_map`` -> :class:`IommuIoasMap`) whose members keep the C
names.  Each ioctl passes its structure with ``size`` first; here ``size``
follows the packed length until assigned (see :mod:`pymsi.uapi._struct`).

The block at the end marked NOT UPSTREAM holds this project's own additions.
"""

from __future__ import annotations

from ._ioctl import _IO
from ._struct import Array, Struct, aligned_le64, aligned_u64, anonymous_union, s32, u8, u16, u32

IOMMUFD_TYPE = ord(";")

# --- command numbers (the enum in header order) --------------------------------------
IOMMUFD_CMD_BASE = 0x80
IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82
IOMMUFD_CMD_IOAS_COPY = 0x83
IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84
IOMMUFD_CMD_IOAS_MAP = 0x85
IOMMUFD_CMD_IOAS_UNMAP = 0x86
IOMMUFD_CMD_OPTION = 0x87
IOMMUFD_CMD_VFIO_IOAS = 0x88
IOMMUFD_CMD_HWPT_ALLOC = 0x89
IOMMUFD_CMD_GET_HW_INFO = 0x8A
IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8B
IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8C
IOMMUFD_CMD_HWPT_INVALIDATE = 0x8D
IOMMUFD_CMD_FAULT_QUEUE_ALLOC = 0x8E
IOMMUFD_CMD_IOAS_MAP_FILE = 0x8F
IOMMUFD_CMD_VIOMMU_ALLOC = 0x90
IOMMUFD_CMD_VDEVICE_ALLOC = 0x91
IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92
IOMMUFD_CMD_VEVENTQ_ALLOC = 0x93
IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94


# --- objects and IOAS ----------------------------------------------------------------
class IommuDestroy(Struct):
    """Destroy any object by id."""

    _c_name_ = "iommu_destroy"
    _fields_ = (("size", u32), ("id", u32))


IOMMU_DESTROY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)


class IommuIoasAlloc(Struct):
    """Allocate an IO address space; ``out_ioas_id`` is its id."""

    _c_name_ = "iommu_ioas_alloc"
    _fields_ = (("size", u32), ("flags", u32), ("out_ioas_id", u32))


IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)


class IommuIovaRange(Struct):
    """An inclusive IOVA interval [start, last]."""

    _c_name_ = "iommu_iova_range"
    _fields_ = (("start", aligned_u64), ("last", aligned_u64))


class IommuIoasIovaRanges(Struct):
    """Read the allowed IOVA ranges of an IOAS into a user array of IommuIovaRange."""

    _c_name_ = "iommu_ioas_iova_ranges"
    _fields_ = (("size", u32), ("ioas_id", u32), ("num_iovas", u32), ("__reserved", u32),
                ("allowed_iovas", aligned_u64), ("out_iova_alignment", aligned_u64))


IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)


class IommuIoasAllowIovas(Struct):
    """Pin a list of IOVA ranges as always allowed in an IOAS."""

    _c_name_ = "iommu_ioas_allow_iovas"
    _fields_ = (("size", u32), ("ioas_id", u32), ("num_iovas", u32), ("__reserved", u32),
                ("allowed_iovas", aligned_u64))


IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOW_IOVAS)

# enum iommufd_ioas_map_flags
IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class IommuIoasMap(Struct):
    """Map user memory at an IOVA (chosen by the kernel unless FIXED_IOVA)."""

    _c_name_ = "iommu_ioas_map"
    _fields_ = (("size", u32), ("flags", u32), ("ioas_id", u32), ("__reserved", u32),
                ("user_va", aligned_u64), ("length", aligned_u64), ("iova", aligned_u64))


IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)


class IommuIoasMapFile(Struct):
    """Map a range of a memfd at an IOVA."""

    _c_name_ = "iommu_ioas_map_file"
    _fields_ = (("size", u32), ("flags", u32), ("ioas_id", u32), ("fd", s32),
                ("start", aligned_u64), ("length", aligned_u64), ("iova", aligned_u64))


IOMMU_IOAS_MAP_FILE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)


class IommuIoasCopy(Struct):
    """Copy an existing mapping of one IOAS into another."""

    _c_name_ = "iommu_ioas_copy"
    _fields_ = (("size", u32), ("flags", u32), ("dst_ioas_id", u32), ("src_ioas_id", u32),
                ("length", aligned_u64), ("dst_iova", aligned_u64), ("src_iova", aligned_u64))


IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_COPY)


class IommuIoasUnmap(Struct):
    """Unmap whole mappings inside [iova, iova + length); length returns the bytes unmapped."""

    _c_name_ = "iommu_ioas_unmap"
    _fields_ = (("size", u32), ("ioas_id", u32), ("iova", aligned_u64), ("length", aligned_u64))


IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)

# enum iommufd_option / enum iommufd_option_ops
IOMMU_OPTION_RLIMIT_MODE = 0
IOMMU_OPTION_HUGE_PAGES = 1
IOMMU_OPTION_OP_SET = 0
IOMMU_OPTION_OP_GET = 1


class IommuOption(Struct):
    """Set or get a global or per-object option."""

    _c_name_ = "iommu_option"
    _fields_ = (("size", u32), ("option_id", u32), ("op", u16), ("__reserved", u16),
                ("object_id", u32), ("val64", aligned_u64))


IOMMU_OPTION = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)

# enum iommufd_vfio_ioas_op
IOMMU_VFIO_IOAS_GET = 0
IOMMU_VFIO_IOAS_SET = 1
IOMMU_VFIO_IOAS_CLEAR = 2


class IommuVfioIoas(Struct):
    """Get or set the IOAS used by the VFIO container compatibility layer."""

    _c_name_ = "iommu_vfio_ioas"
    _fields_ = (("size", u32), ("ioas_id", u32), ("op", u16), ("__reserved", u16))


IOMMU_VFIO_IOAS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VFIO_IOAS)

# --- HW page tables ------------------------------------------------------------------
# enum iommufd_hwpt_alloc_flags
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0
IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
IOMMU_HWPT_ALLOC_PASID = 1 << 3

# enum iommu_hwpt_vtd_s1_flags
IOMMU_VTD_S1_SRE = 1 << 0
IOMMU_VTD_S1_EAFE = 1 << 1
IOMMU_VTD_S1_WPE = 1 << 2


class IommuHwptVtdS1(Struct):
    """Intel VT-d stage-1 page table description (IOMMU_HWPT_DATA_VTD_S1)."""

    _c_name_ = "iommu_hwpt_vtd_s1"
    _fields_ = (("flags", aligned_u64), ("pgtbl_addr", aligned_u64), ("addr_width", u32),
                ("__reserved", u32))


class IommuHwptArmSmmuv3(Struct):
    """The first two doublewords of a guest STE (IOMMU_HWPT_DATA_ARM_SMMUV3), little-endian."""

    _c_name_ = "iommu_hwpt_arm_smmuv3"
    _fields_ = (("ste", Array(aligned_le64, 2)),)


# enum iommu_hwpt_data_type
IOMMU_HWPT_DATA_NONE = 0
IOMMU_HWPT_DATA_VTD_S1 = 1
IOMMU_HWPT_DATA_ARM_SMMUV3 = 2


class IommuHwptAlloc(Struct):
    """Allocate a HW page table: paging from an IOAS, or nested from a parent / vIOMMU."""

    _c_name_ = "iommu_hwpt_alloc"
    _fields_ = (("size", u32), ("flags", u32), ("dev_id", u32), ("pt_id", u32),
                ("out_hwpt_id", u32), ("__reserved", u32), ("data_type", u32),
                ("data_len", u32), ("data_uptr", aligned_u64), ("fault_id", u32),
                ("__reserved2", u32))


IOMMU_HWPT_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)

# --- hardware information ------------------------------------------------------------
# enum iommu_hw_info_vtd_flags
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0


class IommuHwInfoVtd(Struct):
    """Intel VT-d capability registers."""

    _c_name_ = "iommu_hw_info_vtd"
    _fields_ = (("flags", u32), ("__reserved", u32), ("cap_reg", aligned_u64),
                ("ecap_reg", aligned_u64))


class IommuHwInfoArmSmmuv3(Struct):
    """Arm SMMUv3 ID registers: IDR0..IDR5, IIDR, AIDR."""

    _c_name_ = "iommu_hw_info_arm_smmuv3"
    _fields_ = (("flags", u32), ("__reserved", u32), ("idr", Array(u32, 6)), ("iidr", u32),
                ("aidr", u32))


class IommuHwInfoTegra241Cmdqv(Struct):
    """NVIDIA Tegra241 CMDQV parameters."""

    _c_name_ = "iommu_hw_info_tegra241_cmdqv"
    _fields_ = (("flags", u32), ("version", u8), ("log2vcmdqs", u8), ("log2vsids", u8),
                ("__reserved", u8))


# enum iommu_hw_info_type
IOMMU_HW_INFO_TYPE_NONE = 0
IOMMU_HW_INFO_TYPE_DEFAULT = 0
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_INFO_TYPE_ARM_SMMUV3 = 2
IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV = 3

# enum iommufd_hw_capabilities
IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0
IOMMU_HW_CAP_PCI_PASID_EXEC = 1 << 1
IOMMU_HW_CAP_PCI_PASID_PRIV = 1 << 2

# enum iommufd_hw_info_flags
IOMMU_HW_INFO_FLAG_INPUT_TYPE = 1 << 0


class IommuHwInfo(Struct):
    """Query the IOMMU behind a bound device; type-specific data goes to ``data_uptr``."""

    _c_name_ = "iommu_hw_info"
    _fields_ = (("size", u32), ("flags", u32), ("dev_id", u32), ("data_len", u32),
                ("data_uptr", aligned_u64),
                (None, anonymous_union(("in_data_type", u32), ("out_data_type", u32))),
                ("out_max_pasid_log2", u8), ("__reserved", Array(u8, 3)),
                ("out_capabilities", aligned_u64))


IOMMU_GET_HW_INFO = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)

# --- dirty tracking ------------------------------------------------------------------
# enum iommufd_hwpt_set_dirty_tracking_flags
IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1


class IommuHwptSetDirtyTracking(Struct):
    """Turn dirty tracking of a HWPT on or off."""

    _c_name_ = "iommu_hwpt_set_dirty_tracking"
    _fields_ = (("size", u32), ("flags", u32), ("hwpt_id", u32), ("__reserved", u32))


IOMMU_HWPT_SET_DIRTY_TRACKING = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)

# enum iommufd_hwpt_get_dirty_bitmap_flags
IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1


class IommuHwptGetDirtyBitmap(Struct):
    """Read (and by default clear) the dirty bits of an IOVA range into a user bitmap."""

    _c_name_ = "iommu_hwpt_get_dirty_bitmap"
    _fields_ = (("size", u32), ("hwpt_id", u32), ("flags", u32), ("__reserved", u32),
                ("iova", aligned_u64), ("length", aligned_u64), ("page_size", aligned_u64),
                ("data", aligned_u64))


IOMMU_HWPT_GET_DIRTY_BITMAP = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)

# --- cache invalidation --------------------------------------------------------------
# enum iommu_hwpt_invalidate_data_type
IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 = 0
IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 = 1

# enum iommu_hwpt_vtd_s1_invalidate_flags
IOMMU_VTD_INV_FLAGS_LEAF = 1 << 0


class IommuHwptVtdS1Invalidate(Struct):
    """One VT-d stage-1 invalidation request."""

    _c_name_ = "iommu_hwpt_vtd_s1_invalidate"
    _fields_ = (("addr", aligned_u64), ("npages", aligned_u64), ("flags", u32),
                ("__reserved", u32))


class IommuViommuArmSmmuv3Invalidate(Struct):
    """One 128-bit SMMUv3 command (TLBI_NH_*, TLBI_NSNH_ALL, ATC_INV, CFGI_CD*), little-endian."""

    _c_name_ = "iommu_viommu_arm_smmuv3_invalidate"
    _fields_ = (("cmd", Array(aligned_le64, 2)),)


class IommuHwptInvalidate(Struct):
    """Run an array of invalidation requests against a nested HWPT or a vIOMMU."""

    _c_name_ = "iommu_hwpt_invalidate"
    _fields_ = (("size", u32), ("hwpt_id", u32), ("data_uptr", aligned_u64),
                ("data_type", u32), ("entry_len", u32), ("entry_num", u32),
                ("__reserved", u32))


IOMMU_HWPT_INVALIDATE = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_INVALIDATE)

# --- I/O page faults -----------------------------------------------------------------
# enum iommu_hwpt_pgfault_flags
IOMMU_PGFAULT_FLAGS_PASID_VALID = 1 << 0
IOMMU_PGFAULT_FLAGS_LAST_PAGE = 1 << 1

# enum iommu_hwpt_pgfault_perm
IOMMU_PGFAULT_PERM_READ = 1 << 0
IOMMU_PGFAULT_PERM_WRITE = 1 << 1
IOMMU_PGFAULT_PERM_EXEC = 1 << 2
IOMMU_PGFAULT_PERM_PRIV = 1 << 3


class IommuHwptPgfault(Struct):
    """One page fault message read from a fault queue fd."""

    _c_name_ = "iommu_hwpt_pgfault"
    _fields_ = (("flags", u32), ("dev_id", u32), ("pasid", u32), ("grpid", u32),
                ("perm", u32), ("__reserved", u32), ("addr", aligned_u64), ("length", u32),
                ("cookie", u32))


# enum iommufd_page_response_code
IOMMUFD_PAGE_RESP_SUCCESS = 0
IOMMUFD_PAGE_RESP_INVALID = 1


class IommuHwptPageResponse(Struct):
    """The response written back to a fault queue fd."""

    _c_name_ = "iommu_hwpt_page_response"
    _fields_ = (("cookie", u32), ("code", u32))


class IommuFaultAlloc(Struct):
    """Allocate a fault queue object and its fd."""

    _c_name_ = "iommu_fault_alloc"
    _fields_ = (("size", u32), ("flags", u32), ("out_fault_id", u32), ("out_fault_fd", u32))


IOMMU_FAULT_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_FAULT_QUEUE_ALLOC)

# --- vIOMMU, vDEVICE, vEVENTQ, HW queues ---------------------------------------------
# enum iommu_viommu_type
IOMMU_VIOMMU_TYPE_DEFAULT = 0
IOMMU_VIOMMU_TYPE_ARM_SMMUV3 = 1
IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV = 2


class IommuViommuTegra241Cmdqv(Struct):
    """Output of a Tegra241 CMDQV vIOMMU allocation: the VINTF page0 mmap window."""

    _c_name_ = "iommu_viommu_tegra241_cmdqv"
    _fields_ = (("out_vintf_mmap_offset", aligned_u64), ("out_vintf_mmap_length", aligned_u64))


class IommuViommuAlloc(Struct):
    """Allocate a virtual IOMMU over a nesting parent HWPT."""

    _c_name_ = "iommu_viommu_alloc"
    _fields_ = (("size", u32), ("flags", u32), ("type", u32), ("dev_id", u32),
                ("hwpt_id", u32), ("out_viommu_id", u32), ("data_len", u32),
                ("__reserved", u32), ("data_uptr", aligned_u64))


IOMMU_VIOMMU_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VIOMMU_ALLOC)


class IommuVdeviceAlloc(Struct):
    """Give a bound device a virtual id (the guest StreamID for SMMUv3) on a vIOMMU."""

    _c_name_ = "iommu_vdevice_alloc"
    _fields_ = (("size", u32), ("viommu_id", u32), ("dev_id", u32), ("out_vdevice_id", u32),
                ("virt_id", aligned_u64))


IOMMU_VDEVICE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VDEVICE_ALLOC)


class IommuIoasChangeProcess(Struct):
    """Move the pinned-page accounting of every file mapping to the calling process."""

    _c_name_ = "iommu_ioas_change_process"
    _fields_ = (("size", u32), ("__reserved", u32))


IOMMU_IOAS_CHANGE_PROCESS = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)

# enum iommu_veventq_flag
IOMMU_VEVENTQ_FLAG_LOST_EVENTS = 1 << 0


class IommufdVeventHeader(Struct):
    """The header before each event read from a vEVENTQ fd."""

    _c_name_ = "iommufd_vevent_header"
    _fields_ = (("flags", u32), ("sequence", u32))


# enum iommu_veventq_type
IOMMU_VEVENTQ_TYPE_DEFAULT = 0
IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 = 1
IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV = 2


class IommuVeventArmSmmuv3(Struct):
    """A 256-bit SMMUv3 event record whose StreamID is the virtual one, little-endian."""

    _c_name_ = "iommu_vevent_arm_smmuv3"
    _fields_ = (("evt", Array(aligned_le64, 4)),)


class IommuVeventTegra241Cmdqv(Struct):
    """A Tegra241 CMDQV error map event."""

    _c_name_ = "iommu_vevent_tegra241_cmdqv"
    _fields_ = (("lvcmdq_err_map", Array(aligned_le64, 2)),)


class IommuVeventqAlloc(Struct):
    """Allocate a virtual event queue on a vIOMMU; events are read from ``out_veventq_fd``."""

    _c_name_ = "iommu_veventq_alloc"
    _fields_ = (("size", u32), ("flags", u32), ("viommu_id", u32), ("type", u32),
                ("veventq_depth", u32), ("out_veventq_id", u32), ("out_veventq_fd", u32),
                ("__reserved", u32))


IOMMU_VEVENTQ_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_VEVENTQ_ALLOC)

# enum iommu_hw_queue_type
IOMMU_HW_QUEUE_TYPE_DEFAULT = 0
IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV = 1


class IommuHwQueueAlloc(Struct):
    """Allocate a HW-accelerated queue of a vIOMMU over guest memory."""

    _c_name_ = "iommu_hw_queue_alloc"
    _fields_ = (("size", u32), ("flags", u32), ("viommu_id", u32), ("type", u32),
                ("index", u32), ("out_hw_queue_id", u32), ("nesting_parent_iova", aligned_u64),
                ("length", aligned_u64))


IOMMU_HW_QUEUE_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HW_QUEUE_ALLOC)

# =====================================================================================
# NOT UPSTREAM: this project's additions (not in any Linux release).
#
# IOMMU_IOAS_MAP_MSI maps the MSI doorbell page of a bound device at an IOVA of an
# IOAS, write-only, as MMIO: userspace chooses where every vector's doorbell lives
# (the per-vector MSI address design).  Upstream lists such an ioctl as future work.
# Its command number is the next free one after the last upstream command
# (IOMMUFD_CMD_HW_QUEUE_ALLOC = 0x94 in Linux 6.17/6.18).
# =====================================================================================
IOMMUFD_CMD_IOAS_MAP_MSI = 0x95


class IommuIoasMapMsi(Struct):
    """NOT UPSTREAM: map the doorbell page of device ``dev_id`` at ``iova`` in ``ioas_id``."""

    _c_name_ = "iommu_ioas_map_msi"
    _fields_ = (("size", u32), ("flags", u32), ("ioas_id", u32), ("dev_id", u32),
                ("iova", aligned_u64))


IOMMU_IOAS_MAP_MSI = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_MSI)

# IOMMU_OPTION_MSI_DESIGN (an option id of IOMMU_OPTION, object_id 0): the MSI address
# design of the context, val64 an index into ("dma-cookie", "sw-msi", "preset",
# "per-vector"); SET is EBUSY once the context has a bound device.  Far above
# upstream's option ids (0, 1; the posted SW_MSI_START / SW_MSI_SIZE would be 2, 3).
IOMMU_OPTION_MSI_DESIGN = 0x100
#: the designs IOMMU_OPTION_MSI_DESIGN's val64 indexes
IOMMU_MSI_DESIGN_NAMES = ("dma-cookie", "sw-msi", "preset", "per-vector")

#: ioctl number -> its argument structure, for dispatch and checks.
IOCTLS: dict[int, type[Struct]] = {
    IOMMU_DESTROY: IommuDestroy,
    IOMMU_IOAS_ALLOC: IommuIoasAlloc,
    IOMMU_IOAS_ALLOW_IOVAS: IommuIoasAllowIovas,
    IOMMU_IOAS_COPY: IommuIoasCopy,
    IOMMU_IOAS_IOVA_RANGES: IommuIoasIovaRanges,
    IOMMU_IOAS_MAP: IommuIoasMap,
    IOMMU_IOAS_UNMAP: IommuIoasUnmap,
    IOMMU_OPTION: IommuOption,
    IOMMU_VFIO_IOAS: IommuVfioIoas,
    IOMMU_HWPT_ALLOC: IommuHwptAlloc,
    IOMMU_GET_HW_INFO: IommuHwInfo,
    IOMMU_HWPT_SET_DIRTY_TRACKING: IommuHwptSetDirtyTracking,
    IOMMU_HWPT_GET_DIRTY_BITMAP: IommuHwptGetDirtyBitmap,
    IOMMU_HWPT_INVALIDATE: IommuHwptInvalidate,
    IOMMU_FAULT_QUEUE_ALLOC: IommuFaultAlloc,
    IOMMU_IOAS_MAP_FILE: IommuIoasMapFile,
    IOMMU_VIOMMU_ALLOC: IommuViommuAlloc,
    IOMMU_VDEVICE_ALLOC: IommuVdeviceAlloc,
    IOMMU_IOAS_CHANGE_PROCESS: IommuIoasChangeProcess,
    IOMMU_VEVENTQ_ALLOC: IommuVeventqAlloc,
    IOMMU_HW_QUEUE_ALLOC: IommuHwQueueAlloc,
    IOMMU_IOAS_MAP_MSI: IommuIoasMapMsi,
}

#: Names of this module that are this project's, not Linux's.
NOT_UPSTREAM = frozenset({"IOMMUFD_CMD_IOAS_MAP_MSI", "IOMMU_IOAS_MAP_MSI", "IommuIoasMapMsi",
                          "IOMMU_OPTION_MSI_DESIGN", "IOMMU_MSI_DESIGN_NAMES"})
