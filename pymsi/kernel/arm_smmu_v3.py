"""The arm-smmu-v3 driver (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c and -iommufd.c).

It drives an SMMUv3 only through its registers (on the kernel's bus) and the
structures it puts in kernel memory, as Linux does: it reads the ID registers,
allocates the stream table (2-level with STRTAB_SPLIT 8 when the SMMU has it,
else linear, every STE "abort" — Linux with ``disable_bypass``), the command
and event queues, resets and enables the SMMU, and registers with the IOMMU
core.  Domains are io-pgtable-arm tables (stage 1 with an ASID and one CD in
a per-master linear CD table, or stage 2 with a VMID), the identity (bypass
STE) and blocked (abort STE) singletons, and nested domains that merge a
guest's vSTE (stage 1 in guest memory) with a stage-2 parent.  A nested domain
made through an iommufd vIOMMU (``domain.vsmmu``) gives its masters a
"vmaster": their stage-1 fault and bad-config events go, with the virtual
StreamID, to the vIOMMU's vEVENTQ instead of the log (arm_smmu_handle_event()).

Which Linux: the reset sequence, the command encodings and the attach
stream are Linux 6.1's, checked against a capture of a real 6.1 kernel on
QEMU's virt (tests/data/arm64_smmuv3_s1.json, tests/test_linux_streams.py):
CFGI_ALL and TLBI_NSNH_ALL each with its own CMD_SYNC; a CMD_SYNC always
carries MSH = Inner Shareable and MSIATTR = Inner/Outer Write-Back, and
completes by MSI into its own queue slot when the SMMU signals with MSIs
(Linux's MSIPOLL), else by SEV / polling CMDQ_CONS; every STE write ends with
PREFETCH_CONFIG for the StreamID; a DMA default domain's TLB is flushed once
the device is on it (TLBI_NH_ASID for stage 1, TLBI_S12_VMALL for stage 2);
the CD's MAIR is the sign-extended value io-pgtable-arm computes; queues are
at most 1 MiB (2^16 commands, 2^15 events: Debian's CONFIG_CMA_ALIGNMENT=8).
The STE / CD update sequence deliberately follows Linux 6.10 instead
(arm_smmu_write_entry(): hitless where one doubleword in use changes, else
break-before-make; each step published with CFGI_STE / CFGI_CD + CMD_SYNC):
Linux 6.1 wrote a domain's CD before any device was on the domain, so its
two CD steps were bare CMD_SYNCs without CFGI_CD.  Every unmap is followed by
a TLBI by range (strict mode).  A command error is recovered as
arm_smmu_cmdq_skip_err() does (an illegal command is replaced by a CMD_SYNC),
logged, and reported to the submitter as EIO.  Event records are
decoded, kept in :attr:`ArmSmmuV3.events` and logged.

Deliberate differences from Linux: a command error fails the submitting call
with EIO (Linux only logs it); a TLBI by range carries no TTL hint (the table
builder does not report leaf levels, and a wrong hint lets hardware keep the
entry); without RIL, one TLBI
per page (not per leaf) up to 512 pages and the whole ASID / VMID beyond;
STE and CD updates decide "hitless or break-before-make" per doubleword, not
per bit; vSTE validation fails with EINVAL where Linux returns EIO; nesting
parents need IOMMU_HWPT_ALLOC_NEST_PARENT (``domain_alloc_paging(dev, flags)``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, cast

from .._repr import bounded, short
from ..core import IoPgtable, Prot
from ..errors import AlreadyExists, InvalidArgument
from ..hw import smmuv3_regs as R
from ..hw.bits import Field, dwords, pack_dwords
from ..uapi import iommufd as uapi
from .base import (
    EBUSY,
    EEXIST,
    EINVAL,
    EIO,
    ENODEV,
    ENOENT,
    ENOSPC,
    ENXIO,
    EOPNOTSUPP,
    ERANGE,
    ETIMEDOUT,
    fail,
)
from .iommu import (
    IOMMU_MMIO,
    IOMMU_NOEXEC,
    IOMMU_WRITE,
    MSI_IOVA_BASE,
    MSI_IOVA_LENGTH,
    DomainType,
    Geometry,
    IommuDevice,
    IommuDomain,
    IommuOps,
    ResvRegion,
    ResvType,
)

if TYPE_CHECKING:
    from .iommufd_viommu import Viommu
    from .kernel import Kernel

STRTAB_SPLIT = 8
STRTAB_L1_MAX_LOG2SIZE = 25            # a 256 KiB L1 table, as Linux caps it
# Q_MAX_SZ_SHIFT = PAGE_SHIFT + CONFIG_CMA_ALIGNMENT (12 + 8, Debian's arm64 6.1): queues
# of at most 1 MiB, so 2^16 commands of 16 bytes and 2^15 events of 32.
CMDQ_MAX_SHIFT, EVTQ_MAX_SHIFT = 16, 15
ACK_POLLS = 16
CMDQ_MAX_TLBI_OPS = 512                # without RIL, more pages than this: invalidate all
IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0  # uapi iommufd.h

# CR1 / CR2 and the memory attributes the driver asks for.
CR1_TABLE_SH, CR1_TABLE_OC, CR1_TABLE_IC = Field(11, 10), Field(9, 8), Field(7, 6)
CR1_QUEUE_SH, CR1_QUEUE_OC, CR1_QUEUE_IC = Field(5, 4), Field(3, 2), Field(1, 0)
CR2_PTM, CR2_RECINVSID = 1 << 2, 1 << 1
CACHE_WBRA, SH_ISH, MSIATTR_OIWB = 1, 3, 0xF
STE1_SHCFG_INCOMING = 1
# io-pgtable-arm's MAIR (attributes NC, WBRWA, DEVICE_nGnRE, INC_OWBRWA).  Linux computes
# it in a C int, so the 0xF4 in the top byte sign-extends into the upper half: the value
# a real Linux 6.1 writes to CD dword 3 (tests/data).
CD_MAIR = 0xFFFF_FFFF_F404_FF44

# Events arm_smmu_handle_event() handles (the others are only logged).
_VEVENT_TYPES = frozenset({R.EventType.C_BAD_STE, R.EventType.F_STREAM_DISABLED,
                           R.EventType.C_BAD_SUBSTREAMID, R.EventType.C_BAD_CD,
                           R.EventType.F_TRANSLATION, R.EventType.F_ADDR_SIZE,
                           R.EventType.F_ACCESS, R.EventType.F_PERMISSION})
_GRANULE_PGSIZES = {4096: (1 << 12) | (1 << 21) | (1 << 30), 16384: (1 << 14) | (1 << 25),
                    65536: (1 << 16) | (1 << 29)}
_CERROR = {R.CERROR_NONE: "No error", R.CERROR_ILL: "Illegal command",
           R.CERROR_ABT: "Abort on command fetch", R.CERROR_ATC_INV_SYNC: "ATC invalidate timeout"}
_GERRORS = ((R.GERROR_SFM_ERR, "device has entered Service Failure Mode!"),
            (R.GERROR_MSI_GERROR_ABT_ERR, "GERROR MSI write aborted"),
            (R.GERROR_MSI_EVTQ_ABT_ERR, "EVTQ MSI write aborted"),
            (R.GERROR_MSI_CMDQ_ABT_ERR, "CMDQ MSI write aborted"),
            (R.GERROR_EVTQ_ABT_ERR, "EVTQ write aborted -- events may have been lost"))


class Feat(enum.IntFlag):
    """ARM_SMMU_FEAT_*: what the ID registers advertise (the driver's own bit order)."""

    TWO_LVL_STRTAB = 1 << 0
    TWO_LVL_CDTAB = 1 << 1
    TT_LE = 1 << 2
    TT_BE = 1 << 3
    SEV = 1 << 4
    MSI = 1 << 5
    COHERENCY = 1 << 6
    TRANS_S1 = 1 << 7
    TRANS_S2 = 1 << 8
    HYP = 1 << 9
    RANGE_INV = 1 << 10
    NESTING = 1 << 11


@dataclass
class CmdqEnt:
    """struct arm_smmu_cmdq_ent: one command before it is encoded."""

    opcode: int
    sid: int = 0
    ssid: int = 0
    leaf: bool = False
    span: int = 0                      # CFGI_STE_RANGE: Range (31 = all)
    asid: int = 0
    vmid: int = 0
    addr: int = 0                      # TLBI: VA or IPA
    num: int = 0
    scale: int = 0
    tg: int = 0
    ttl: int = 0
    msiaddr: int = 0                   # CMD_SYNC: 0 = complete by SEV


def arm_smmu_cmdq_build_cmd(ent: CmdqEnt) -> tuple[int, int]:
    """The two doublewords of a command (ENOENT for an opcode the driver never sends)."""
    op, Op = ent.opcode, R.Opcode
    d0, d1 = R.CMD_OP(op), 0
    if op == Op.PREFETCH_CONFIG:
        d0 |= R.CMD_SID(ent.sid)
    elif op in (Op.CFGI_STE, Op.CFGI_CD):
        d0 |= R.CMD_SID(ent.sid) | (R.CMD_SSID(ent.ssid) if op == Op.CFGI_CD else 0)
        d1 |= R.CMD_LEAF(int(ent.leaf))
    elif op == Op.CFGI_STE_RANGE:
        d0 |= R.CMD_SID(ent.sid)
        d1 |= R.CMD_STE_RANGE(ent.span)
    elif op == Op.CFGI_CD_ALL:
        d0 |= R.CMD_SID(ent.sid)
    elif op in (Op.TLBI_NH_ALL, Op.TLBI_S12_VMALL):
        d0 |= R.CMD_TLBI_VMID(ent.vmid)
    elif op == Op.TLBI_NH_ASID:
        d0 |= R.CMD_TLBI_VMID(ent.vmid) | R.CMD_TLBI_ASID(ent.asid)
    elif op in (Op.TLBI_NH_VA, Op.TLBI_NH_VAA, Op.TLBI_S2_IPA):
        d0 |= (R.CMD_TLBI_NUM(ent.num) | R.CMD_TLBI_SCALE(ent.scale)
               | R.CMD_TLBI_VMID(ent.vmid))
        if op == Op.TLBI_NH_VA:
            d0 |= R.CMD_TLBI_ASID(ent.asid)
        d1 |= R.CMD_LEAF(int(ent.leaf)) | R.CMD_TLBI_TTL(ent.ttl) | R.CMD_TLBI_TG(ent.tg)
        d1 |= (R.CMD_TLBI_IPA(ent.addr >> 12) if op == Op.TLBI_S2_IPA
               else R.CMD_TLBI_ADDR(ent.addr >> 12))
    elif op == Op.SYNC:
        # MSH and MSIATTR are set whether or not the SYNC completes by MSI (Linux 6.1).
        d0 |= R.CMD_SYNC_MSH(SH_ISH) | R.CMD_SYNC_MSIATTR(MSIATTR_OIWB)
        if ent.msiaddr:
            d0 |= R.CMD_SYNC_CS(R.SYNC_CS_IRQ) | R.CMD_SYNC_MSIDATA(0)
            d1 |= R.CMD_SYNC_MSIADDR(ent.msiaddr >> 2)
        else:
            d0 |= R.CMD_SYNC_CS(R.SYNC_CS_SEV)
    elif op != Op.TLBI_NSNH_ALL:
        raise fail(ENOENT, f"unknown command opcode {op:#x}")
    return d0, d1


@dataclass
class ArmSmmuQueue:
    """struct arm_smmu_queue: ``1 << shift`` entries of ``ent_size`` bytes at ``base``;
    PROD/CONS hold an index in their low ``shift`` bits and a wrap bit above it."""

    base: int
    shift: int
    ent_size: int
    prod_reg: int
    cons_reg: int
    prod: int = 0

    @property
    def entries(self) -> int:
        return 1 << self.shift

    @property
    def wrap_mask(self) -> int:
        return (2 << self.shift) - 1

    def slot(self, ptr: int) -> int:
        return self.base + (ptr & (self.entries - 1)) * self.ent_size

    def inc(self, ptr: int) -> int:
        return (ptr + 1) & self.wrap_mask

    def space(self, prod: int, cons: int) -> int:
        return self.entries - ((prod - cons) & self.wrap_mask)

    def q_base(self) -> int:
        return R.Q_BASE_RWA(1) | R.Q_BASE_ADDR(self.base >> 5) | R.Q_BASE_LOG2SIZE(self.shift)


class ArmSmmuEvent(NamedTuple):
    """One event record as the driver decoded it."""

    type: int
    name: str
    sid: int
    ssid: int | None
    iova: int                  # the input address
    ipa: int
    fetch_addr: int
    read: bool                 # RnW
    s2: bool
    event_class: str           # "CD", "TT" or "IN"
    raw: tuple[int, ...]


def decode_event(record: bytes) -> ArmSmmuEvent:
    """arm_smmu_decode_event(): a 32-byte event record."""
    w = dwords(record)
    etype = R.EVT0_TYPE.get(w[0])
    try:
        name = R.EventType(etype).name
    except ValueError:
        name = "UNKNOWN"
    return ArmSmmuEvent(
        type=etype, name=name, sid=R.EVT0_SID.get(w[0]),
        ssid=R.EVT0_SSID.get(w[0]) if R.EVT0_SSV.get(w[0]) else None, iova=w[2],
        ipa=R.EVT3_IPA.get(w[3]) << 12, fetch_addr=R.EVT3_FETCH_ADDR.get(w[3]) << 3,
        read=bool(R.EVT1_RNW.get(w[1])), s2=bool(R.EVT1_S2.get(w[1])),
        event_class=R.EventClass(R.EVT1_CLASS.get(w[1])).name
        if R.EVT1_CLASS.get(w[1]) < 3 else "RES", raw=tuple(w))


class _Ida:
    """An ID allocator (ida_alloc_range): the lowest free ID in [lo, hi]."""

    def __init__(self, lo: int, hi: int, what: str) -> None:
        self.lo, self.hi, self.what = lo, hi, what
        self.used: set[int] = set()

    def alloc(self) -> int:
        for i in range(self.lo, self.hi + 1):
            if i not in self.used:
                self.used.add(i)
                return i
        raise fail(ENOSPC, f"no free {self.what}")

    def free(self, i: int) -> None:
        self.used.discard(i)


@dataclass(eq=False)
class ArmSmmuMaster:
    """struct arm_smmu_master: a device's StreamID, CD table and current domain."""

    dev: IommuDevice
    sid: int
    cd_table: int | None = None        # one CD (S1CDMAX 0, linear)
    domain: IommuDomain | None = None
    vmaster: tuple[Viommu, int] | None = None   # (vIOMMU, virtual StreamID) of a nested domain

    def __repr__(self) -> str:
        cd = "-" if self.cd_table is None else f"{self.cd_table:#x}"
        return bounded(f"ArmSmmuMaster({short(self.dev)}, sid={self.sid:#x}, cd_table={cd}, "
                       f"domain={short(self.domain)})")


class ArmSmmuDomain(IommuDomain):
    """struct arm_smmu_domain: a paging domain, stage 1 (ASID, CD) or stage 2 (VMID).

    ``nest_parent`` marks a stage-2 domain a nested domain may sit on: its
    unmaps also invalidate the stage-1 entries of its VMID (TLBI_NH_ALL).
    """

    def __init__(self, smmu: ArmSmmuV3, stage: int, nest_parent: bool = False) -> None:
        self.smmu, self.stage, self.nest_parent = smmu, stage, nest_parent
        self.masters: set[ArmSmmuMaster] = set()
        self.nested: set[ArmSmmuNestedDomain] = set()     # children of a nesting parent
        self.asid = self.vmid = 0
        self.freed = False
        granule = smmu.granule
        if stage == 1:
            fmt, ias, oas = "s1", 48, min(smmu.ias, 48)
            self.asid = smmu.asid_ida.alloc()
        else:
            fmt, ias, oas = "s2", min(smmu.ias, 48), smmu.oas
            self.vmid = smmu.vmid_ida.alloc()
        try:
            self.pgtbl = IoPgtable(smmu.kernel.ram, smmu.kernel.mm, fmt=fmt, granule=granule,
                                   ias=ias, oas=oas)
        except BaseException as e:
            self._release_id()
            if isinstance(e, InvalidArgument):
                raise fail(EINVAL, str(e)) from None
            raise
        super().__init__(DomainType.UNMANAGED, smmu, sum(self.pgtbl.pgsizes),
                         Geometry(0, (1 << ias) - 1, True))

    def _release_id(self) -> None:
        if self.stage == 1:
            self.smmu.asid_ida.free(self.asid)
        else:
            self.smmu.vmid_ida.free(self.vmid)

    def map_pages(self, iova: int, paddr: int, size: int, prot: Prot) -> None:
        """io-pgtable map (no TLB maintenance: the SMMU does not cache invalid entries)."""
        try:
            self.pgtbl.map(iova, paddr, size, prot)
        except AlreadyExists as e:
            raise fail(EEXIST, str(e)) from None
        except InvalidArgument as e:
            raise fail(EINVAL, str(e)) from None

    def unmap_pages(self, iova: int, size: int) -> int:
        """io-pgtable unmap, then TLBI by range and CMD_SYNC; returns the bytes unmapped."""
        try:
            unmapped = self.pgtbl.unmap(iova, size)
        except InvalidArgument as e:
            raise fail(EINVAL, str(e)) from None
        if unmapped:
            self.smmu.tlb_inv_range_domain(self, iova, size)
        return unmapped

    def iova_to_phys(self, iova: int) -> int | None:
        try:
            return self.pgtbl.iova_to_phys(iova)
        except InvalidArgument:
            return None

    def flush_iotlb_all(self) -> None:
        """arm_smmu_flush_iotlb_all() -> arm_smmu_tlb_inv_context(): TLBI_NH_ASID for
        stage 1, TLBI_S12_VMALL for stage 2, then CMD_SYNC."""
        Op = R.Opcode
        ent = (CmdqEnt(Op.TLBI_NH_ASID, asid=self.asid) if self.stage == 1
               else CmdqEnt(Op.TLBI_S12_VMALL, vmid=self.vmid))
        self.smmu.cmdq_issue_cmdlist([ent])

    def free(self) -> None:
        """arm_smmu_domain_free_paging(): tables, TLB entries, ASID / VMID."""
        if self.freed:
            return
        if self.masters or self.nested:
            raise fail(EBUSY, "domain still has devices or nested domains attached")
        self.pgtbl.free()
        self.flush_iotlb_all()
        self._release_id()
        self.freed = True


class ArmSmmuNestedDomain(IommuDomain):
    """struct arm_smmu_nested_domain: a guest's vSTE (stage 1 in guest memory) on a
    stage-2 parent; the STE written is the guest's stage-1 fields plus the parent's."""

    def __init__(self, smmu: ArmSmmuV3, parent: ArmSmmuDomain, ste: tuple[int, int]) -> None:
        super().__init__(DomainType.NESTED, smmu, 0, parent.geometry)
        self.smmu, self.s2_parent, self.ste = smmu, parent, ste
        self.parent = parent
        self.masters: set[ArmSmmuMaster] = set()
        parent.nested.add(self)

    def iova_to_phys(self, iova: int) -> int | None:
        return None                    # stage 1 belongs to the guest

    def cache_invalidate_user(self, cmds: Iterable[tuple[int, int]],
                              vsid_to_sid: Mapping[int, int] | None = None) -> None:
        """arm_vsmmu_cache_invalidate(): run a guest's invalidation commands.

        TLBI_NH_* get the parent's VMID; CFGI_CD / CFGI_CD_ALL get the physical
        StreamID (through ``vsid_to_sid``, or a StreamID attached to this
        domain).  Anything else, or an unknown vSID, is EIO.
        """
        Op, out = R.Opcode, []
        sids = {m.sid for m in self.masters}
        for d0, d1 in cmds:
            op = R.CMD_OP.get(d0)
            if op in (Op.TLBI_NH_ALL, Op.TLBI_NH_ASID, Op.TLBI_NH_VA, Op.TLBI_NH_VAA):
                d0 = R.CMD_TLBI_VMID.put(d0, self.s2_parent.vmid)
            elif op in (Op.CFGI_CD, Op.CFGI_CD_ALL):
                vsid = R.CMD_SID.get(d0)
                sid = vsid_to_sid.get(vsid) if vsid_to_sid is not None else vsid
                if sid is None or sid not in sids:
                    raise fail(EIO, f"vSID {vsid:#x} is not attached to this nested domain")
                d0 = R.CMD_SID.put(d0, sid)
            else:
                raise fail(EIO, f"guest command {op:#x} is not allowed")
            out.append((d0, d1))
        self.smmu.cmdq_issue_cmdlist(out)

    def free(self) -> None:
        """The guest's stage-1 entries of this VMID go with it."""
        if self.masters:
            raise fail(EBUSY, "domain still has devices attached")
        if self in self.s2_parent.nested:
            self.s2_parent.nested.discard(self)
            self.smmu.cmdq_issue_cmdlist([CmdqEnt(R.Opcode.TLBI_NH_ALL,
                                                  vmid=self.s2_parent.vmid)])


class ArmSmmuV3(IommuOps):
    """struct arm_smmu_device + arm_smmu_ops: one SMMUv3 at MMIO ``base`` translating
    requester IDs [first_rid, last_rid] (StreamID = requester ID).

    ``cmdq_shift`` / ``evtq_shift`` bound the queue sizes (log2 entries) below
    what IDR1 allows.  The machine wires the SMMU's interrupts to
    :meth:`handle_irq`.
    """

    def __init__(self, kernel: Kernel, base: int, first_rid: int = 0, last_rid: int = 0xFFFF,
                 *, cmdq_shift: int = CMDQ_MAX_SHIFT, evtq_shift: int = EVTQ_MAX_SHIFT) -> None:
        self.kernel, self.base = kernel, base
        self.first_rid, self.last_rid = first_rid, last_rid
        self._cmdq_max, self._evtq_max = cmdq_shift, evtq_shift
        self.features = Feat(0)
        self.masters: dict[IommuDevice, ArmSmmuMaster] = {}
        self.events: list[ArmSmmuEvent] = []
        self.l2_strtab: dict[int, int] = {}
        self.stats = {"commands": 0, "syncs": 0, "cmdq_errors": 0, "events": 0,
                      "events_lost": 0, "gerrors": 0, "cmdq_sync_irqs": 0,
                      "events_forwarded": 0}
        self.probed = False
        self._in_gerror = self._gerror_again = False
        self._identity = IommuDomain(DomainType.IDENTITY, self)
        self._blocked = IommuDomain(DomainType.BLOCKED, self)

    # -- registers --------------------------------------------------------------------

    def readl(self, off: int) -> int:
        return cast(int, self.kernel.bus.read(self.base + off, 4))

    def writel(self, off: int, value: int) -> None:
        self.kernel.bus.write(self.base + off, value, 4)

    def writeq(self, off: int, value: int) -> None:
        self.kernel.bus.write(self.base + off, value, 8)

    def _log(self, msg: str) -> None:
        self.kernel.printk(f"arm-smmu-v3: {msg}")

    def _write_reg_sync(self, off: int, value: int, ack: int) -> None:
        """arm_smmu_write_reg_sync(): write, then poll the ACK register."""
        self.writel(off, value)
        for _ in range(ACK_POLLS):
            if self.readl(ack) == value:
                return
        self._log(f"register {off:#x} not acknowledged ({self.readl(ack):#x} != {value:#x})")
        raise fail(ETIMEDOUT, f"SMMU register {off:#x} write not acknowledged")

    # -- probe ------------------------------------------------------------------------

    def probe(self) -> None:
        """arm_smmu_device_probe(): ID registers, structures, reset, registration."""
        self._log("probing hardware configuration...")
        self._hw_probe()
        self._init_structures()
        self._device_reset()
        self.probed = True
        self.kernel.iommu.device_register(
            self, claims=lambda dev: self.first_rid <= getattr(dev, "rid", -1) <= self.last_rid)

    def _hw_probe(self) -> None:
        """arm_smmu_device_hw_probe()."""
        f = Feat(0)
        idr0 = self.readl(R.IDR0)
        if R.IDR0_ST_LEVEL.get(idr0) == 1:
            f |= Feat.TWO_LVL_STRTAB
        if R.IDR0_CD2L.get(idr0):
            f |= Feat.TWO_LVL_CDTAB
        endian = R.IDR0_TTENDIAN.get(idr0)        # 0 mixed, 2 little, 3 big
        f |= (Feat.TT_LE if endian in (0, 2) else Feat(0)) | \
            (Feat.TT_BE if endian in (0, 3) else Feat(0))
        if not f & Feat.TT_LE:
            raise fail(ENXIO, "little-endian translation tables not supported")
        for bit, feat in ((R.IDR0_HYP, Feat.HYP), (R.IDR0_COHACC, Feat.COHERENCY),
                          (R.IDR0_MSI, Feat.MSI), (R.IDR0_SEV, Feat.SEV),
                          (R.IDR0_S1P, Feat.TRANS_S1), (R.IDR0_S2P, Feat.TRANS_S2)):
            if bit.get(idr0):
                f |= feat
        if not f & (Feat.TRANS_S1 | Feat.TRANS_S2):
            self._log("no translation support!")
            raise fail(ENXIO, "SMMU has no translation stages")
        if f & Feat.TRANS_S1 and f & Feat.TRANS_S2:
            f |= Feat.NESTING
        ttf = R.IDR0_TTF.get(idr0)
        if not ttf & 2:
            self._log("AArch64 table format not supported!")
            raise fail(ENXIO, "no AArch64 table format")
        self.asid_bits = 16 if R.IDR0_ASID16.get(idr0) else 8
        self.vmid_bits = 16 if R.IDR0_VMID16.get(idr0) else 8
        idr1 = self.readl(R.IDR1)
        self.cmdq_shift = min(R.IDR1_CMDQS.get(idr1), self._cmdq_max)
        self.evtq_shift = min(R.IDR1_EVENTQS.get(idr1), self._evtq_max)
        self.ssid_bits = R.IDR1_SSIDSIZE.get(idr1)
        self.sid_bits = R.IDR1_SIDSIZE.get(idr1)
        if self.sid_bits <= STRTAB_SPLIT:
            f &= ~Feat.TWO_LVL_STRTAB
        if R.IDR3_RIL.get(self.readl(R.IDR3)):
            f |= Feat.RANGE_INV
        idr5 = self.readl(R.IDR5)
        oas = R.IDR5_OAS.get(idr5)
        if oas >= 5:                                # 52-bit needs LPA: use 48 bits
            oas = 5
        self.oas = R.OAS_BITS[oas]
        self.pgsize_bitmap = 0
        for bit, granule in ((R.IDR5_GRAN4K, 4096), (R.IDR5_GRAN16K, 16384),
                             (R.IDR5_GRAN64K, 65536)):
            if bit.get(idr5):
                self.pgsize_bitmap |= _GRANULE_PGSIZES[granule]
        if not self.pgsize_bitmap:
            raise fail(ENXIO, "no supported translation granule")
        # The granule of every domain: PAGE_SIZE (4K) if possible, else the smallest.
        self.granule = 4096 if self.pgsize_bitmap & 4096 else next(
            g for g in (16384, 65536) if self.pgsize_bitmap & g)
        self.ias = max(40 if ttf == 3 else 0, self.oas)
        self.features = f
        self.asid_ida = _Ida(1, (1 << self.asid_bits) - 1, "ASID")
        self.vmid_ida = _Ida(1, (1 << self.vmid_bits) - 1, "VMID")
        self._log(f"ias {self.ias}-bit, oas {self.oas}-bit (features {int(f):#010x})")

    def _init_structures(self) -> None:
        """arm_smmu_init_structures(): queues and stream table in kernel memory."""
        mm = self.kernel.mm
        self.cmdq = ArmSmmuQueue(mm.alloc(max(R.CMD_SIZE << self.cmdq_shift, 64)),
                                 self.cmdq_shift, R.CMD_SIZE, R.CMDQ_PROD, R.CMDQ_CONS)
        self.evtq = ArmSmmuQueue(mm.alloc(max(R.EVT_SIZE << self.evtq_shift, 64)),
                                 self.evtq_shift, R.EVT_SIZE, R.EVENTQ_PROD_PAGE1,
                                 R.EVENTQ_CONS_PAGE1)
        if self.features & Feat.TWO_LVL_STRTAB:
            log2size = min(self.sid_bits, STRTAB_L1_MAX_LOG2SIZE)
            if log2size < self.sid_bits:
                self._log(f"2-level strtab only covers {log2size}/{self.sid_bits} bits of SID")
            self.strtab = mm.alloc(max(8 << (log2size - STRTAB_SPLIT), 64))
            self.strtab_base_cfg = (R.STRTAB_CFG_FMT(R.STRTAB_FMT_2LVL)
                                    | R.STRTAB_CFG_SPLIT(STRTAB_SPLIT)
                                    | R.STRTAB_CFG_LOG2SIZE(log2size))
        else:
            log2size = self.sid_bits
            self.strtab = mm.alloc(R.STE_SIZE << log2size)
            self.kernel.ram.write(self.strtab, pack_dwords(self.make_abort_ste()) * (1 << log2size))
            self.strtab_base_cfg = (R.STRTAB_CFG_FMT(R.STRTAB_FMT_LINEAR)
                                    | R.STRTAB_CFG_LOG2SIZE(log2size))
        self.strtab_log2size = log2size

    def _device_reset(self) -> None:
        """arm_smmu_device_reset(): program the SMMU from scratch and enable it."""
        if self.readl(R.CR0) & R.CR0_SMMUEN:
            self._log("SMMU currently enabled! Resetting...")
            self.writel(R.GBPA, R.GBPA_UPDATE | R.GBPA_ABORT)
            if self.readl(R.GBPA) & R.GBPA_UPDATE:
                raise fail(ETIMEDOUT, "GBPA not updated")
        self._write_reg_sync(R.CR0, 0, R.CR0ACK)
        self.writel(R.CR1, CR1_TABLE_SH(SH_ISH) | CR1_TABLE_OC(CACHE_WBRA)
                    | CR1_TABLE_IC(CACHE_WBRA) | CR1_QUEUE_SH(SH_ISH)
                    | CR1_QUEUE_OC(CACHE_WBRA) | CR1_QUEUE_IC(CACHE_WBRA))
        self.writel(R.CR2, CR2_PTM | CR2_RECINVSID)
        self.writeq(R.STRTAB_BASE, R.STRTAB_BASE_RA(1) | R.STRTAB_BASE_ADDR(self.strtab >> 6))
        self.writel(R.STRTAB_BASE_CFG, self.strtab_base_cfg)
        self.writeq(R.CMDQ_BASE, self.cmdq.q_base())
        self.writel(R.CMDQ_PROD, 0)
        self.writel(R.CMDQ_CONS, 0)
        self.cmdq.prod = 0
        enables = R.CR0_CMDQEN
        self._write_reg_sync(R.CR0, enables, R.CR0ACK)
        Op = R.Opcode
        # Each with its own CMD_SYNC (arm_smmu_cmdq_issue_cmd_with_sync).
        self.cmdq_issue_cmd(CmdqEnt(Op.CFGI_STE_RANGE, span=R.CFGI_ALL_RANGE))
        if self.features & Feat.HYP:
            self.cmdq_issue_cmd(CmdqEnt(Op.TLBI_EL2_ALL))
        self.cmdq_issue_cmd(CmdqEnt(Op.TLBI_NSNH_ALL))
        self.writeq(R.EVENTQ_BASE, self.evtq.q_base())
        self.writel(R.EVENTQ_PROD_PAGE1, 0)
        self.writel(R.EVENTQ_CONS_PAGE1, 0)
        enables |= R.CR0_EVENTQEN
        self._write_reg_sync(R.CR0, enables, R.CR0ACK)
        # arm_smmu_setup_irqs(): wired interrupts (MSI addresses cleared).
        self._write_reg_sync(R.IRQ_CTRL, 0, R.IRQ_CTRLACK)
        self.writeq(R.GERROR_IRQ_CFG0, 0)
        self.writeq(R.EVENTQ_IRQ_CFG0, 0)
        irqs = R.IRQ_CTRL_EVENTQ_IRQEN | R.IRQ_CTRL_GERROR_IRQEN
        self._write_reg_sync(R.IRQ_CTRL, irqs, R.IRQ_CTRLACK)
        enables |= R.CR0_SMMUEN
        self._write_reg_sync(R.CR0, enables, R.CR0ACK)

    # -- command queue ---------------------------------------------------------------

    def cmdq_issue_cmdlist(self, cmds: Iterable[CmdqEnt | tuple[int, int]],
                           sync: bool = True) -> None:
        """arm_smmu_cmdq_issue_cmdlist(): queue commands (encoded, or raw (d0, d1)
        doublewords), advance CMDQ_PROD, and with ``sync`` end with a CMD_SYNC and
        wait for it.  A command error during the call is recovered and raised as EIO."""
        q, ram = self.cmdq, self.kernel.ram
        raw: list[tuple[int, int] | None] = [
            c if isinstance(c, tuple) else arm_smmu_cmdq_build_cmd(c) for c in cmds]
        ncmds = len(raw)
        if sync:
            raw.append(None)                       # the CMD_SYNC, built once its slot is known
        errors = self.stats["cmdq_errors"]
        sync_slot = None
        i = 0
        while i < len(raw):
            free = q.space(q.prod, self.readl(q.cons_reg) & q.wrap_mask)
            if not free:
                self._cmdq_poll(q.prod, None)      # wait for room
                continue
            for item in raw[i : i + free]:
                slot = q.slot(q.prod)
                if item is None:
                    sync_slot = slot if self.features & Feat.MSI else None
                    item = arm_smmu_cmdq_build_cmd(CmdqEnt(R.Opcode.SYNC,
                                                           msiaddr=sync_slot or 0))
                ram.write(slot, pack_dwords(list(item)))
                q.prod = q.inc(q.prod)
            i += min(free, len(raw) - i)
            self.writel(q.prod_reg, q.prod)
        self.stats["commands"] += ncmds
        if sync:
            self.stats["syncs"] += 1
            self._cmdq_poll(q.prod, sync_slot)
        if self.stats["cmdq_errors"] != errors:
            raise fail(EIO, "SMMU command queue error (command skipped)")

    def _cmdq_poll(self, target: int, sync_slot: int | None) -> None:
        """Wait for CMDQ_CONS to reach ``target`` (and, with MSIPOLL, for the CMD_SYNC's
        MSI to have zeroed its slot); recover a command error on the way."""
        q = self.cmdq
        for _ in range(q.entries + 2):
            cons = self.readl(q.cons_reg)
            done = (cons & q.wrap_mask) == target
            if done and (sync_slot is None or self.kernel.ram.read_u32(sync_slot) == 0):
                return
            if not done and (self.readl(R.GERROR) ^ self.readl(R.GERRORN)) & R.GERROR_CMDQ_ERR:
                self.handle_irq("gerror")          # what the wired interrupt does
                continue
            break
        self._log(f"CMD_SYNC timeout at {target:#010x} [hwprod {self.readl(q.prod_reg):#010x}, "
                  f"hwcons {self.readl(q.cons_reg):#010x}]")
        raise fail(ETIMEDOUT, "CMD_SYNC timeout")

    def cmdq_skip_err(self) -> None:
        """arm_smmu_cmdq_skip_err(): log a command error; an illegal command is
        replaced by a CMD_SYNC so the queue can go on (GERRORN is acked by the caller)."""
        cons = self.readl(R.CMDQ_CONS)
        err = R.CMDQ_CONS_ERR.get(cons)
        self.stats["cmdq_errors"] += 1
        self._log(f"CMDQ error (cons {cons:#010x}): {_CERROR.get(err, 'Unknown')}")
        if err == R.CERROR_ABT:
            self._log("retrying command fetch")
            return
        if err != R.CERROR_ILL:
            return
        slot = self.cmdq.slot(cons)
        bad = dwords(self.kernel.ram.read(slot, R.CMD_SIZE))
        self._log("skipping command in error state:")
        for d in bad:
            self._log(f"\t{d:#018x}")
        sync = arm_smmu_cmdq_build_cmd(CmdqEnt(R.Opcode.SYNC))
        self.kernel.ram.write(slot, pack_dwords(list(sync)))

    def cmdq_issue_cmd(self, ent: CmdqEnt, sync: bool = True) -> None:
        """One command (then a CMD_SYNC)."""
        self.cmdq_issue_cmdlist([ent], sync)

    # -- interrupts ------------------------------------------------------------------

    def handle_irq(self, line: str) -> None:
        """The SMMU's wired interrupts: "eventq", "gerror" or "cmdq_sync"."""
        if line == "eventq":
            self.evtq_drain()
        elif line == "gerror":
            if self._in_gerror:                    # acking GERRORN raised another one
                self._gerror_again = True
                return
            self._in_gerror = True
            try:
                for _ in range(self.cmdq.entries + 2):
                    self._gerror_again = False
                    self.gerror_handler()
                    if not self._gerror_again:
                        break
            finally:
                self._in_gerror = False
        elif line == "cmdq_sync":
            self.stats["cmdq_sync_irqs"] += 1      # CMD_SYNC completion is polled

    def gerror_handler(self) -> None:
        """arm_smmu_gerror_handler(): report active global errors and acknowledge them."""
        gerror, gerrorn = self.readl(R.GERROR), self.readl(R.GERRORN)
        active = (gerror ^ gerrorn) & R.GERROR_MASK
        if not active:
            return
        self.stats["gerrors"] += 1
        self._log(f"unexpected global error reported ({active:#010x}), this could be serious")
        for bit, text in _GERRORS:
            if active & bit:
                self._log(text)
        if active & R.GERROR_SFM_ERR:
            self.writel(R.CR0, 0)
        if active & R.GERROR_CMDQ_ERR:
            self.cmdq_skip_err()
        self.writel(R.GERRORN, gerror)

    def evtq_drain(self) -> list[ArmSmmuEvent]:
        """arm_smmu_evtq_thread(): consume and decode every pending event record; a
        stage-1 event of a master with a vmaster goes to its vIOMMU's vEVENTQ, the
        others are logged and returned (also appended to :attr:`events`)."""
        q, ram = self.evtq, self.kernel.ram
        new: list[ArmSmmuEvent] = []
        while True:
            prod = self.readl(q.prod_reg)
            cons = self.readl(q.cons_reg)
            if (prod & R.Q_OVF) != (cons & R.Q_OVF):
                self.stats["events_lost"] += 1
                self._log("EVTQ overflow detected -- events lost")
            if (prod & q.wrap_mask) == (cons & q.wrap_mask):
                self.writel(q.cons_reg, (cons & q.wrap_mask) | (prod & R.Q_OVF))
                break
            while (cons & q.wrap_mask) != (prod & q.wrap_mask):
                ev = decode_event(ram.read(q.slot(cons), R.EVT_SIZE))
                if not self.handle_event(ev):
                    new.append(ev)
                    self._log_event(ev)
                cons = q.inc(cons)
            self.writel(q.cons_reg, cons | (prod & R.Q_OVF))
        self.events += new
        self.stats["events"] += len(new)
        return new

    def handle_event(self, ev: ArmSmmuEvent) -> bool:
        """arm_smmu_handle_event() without stall: True if a vmaster's vEVENTQ took the
        event (a stage-1 fault or bad config of a master on a nested domain)."""
        if (ev.type not in _VEVENT_TYPES or ev.s2 or R.EVT1_STALL.get(ev.raw[1])):
            return False
        master = next((m for m in self.masters.values() if m.sid == ev.sid), None)
        if master is None or master.vmaster is None:
            return False
        viommu, vsid = master.vmaster
        w = list(ev.raw)
        w[0] = R.EVT0_SID.put(w[0], vsid)              # arm_vmaster_report_event()
        if viommu.report_event(uapi.IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, pack_dwords(w)):
            return False
        self.stats["events_forwarded"] += 1
        return True

    def _log_event(self, ev: ArmSmmuEvent) -> None:
        ssid = "-" if ev.ssid is None else f"{ev.ssid:#x}"
        where = (f" fetch {ev.fetch_addr:#x}"
                 if ev.type in (R.EventType.F_STE_FETCH, R.EventType.F_CD_FETCH) else "")
        self._log(f"event {ev.type:#04x} received: {ev.name} sid {ev.sid:#x} ssid {ssid} "
                  f"iova {ev.iova:#x} ipa {ev.ipa:#x} {'read' if ev.read else 'write'} "
                  f"S2 {int(ev.s2)} class {ev.event_class}{where}")

    # -- stream table and context descriptors ------------------------------------------

    def make_abort_ste(self) -> list[int]:
        return [R.STE0_V(1) | R.STE0_CONFIG(R.SteConfig.ABORT)] + [0] * 7

    def make_bypass_ste(self) -> list[int]:
        return [R.STE0_V(1) | R.STE0_CONFIG(R.SteConfig.BYPASS),
                R.STE1_SHCFG(STE1_SHCFG_INCOMING)] + [0] * 6

    def make_cdtable_ste(self, master: ArmSmmuMaster) -> list[int]:
        """arm_smmu_make_cdtable_ste(): stage 1 through the master's linear CD table."""
        ste = [0] * 8
        ste[0] = (R.STE0_V(1) | R.STE0_CONFIG(R.SteConfig.S1) | R.STE0_S1FMT(R.S1FMT_LINEAR)
                  | R.STE0_S1CTXPTR(cast(int, master.cd_table) >> 6) | R.STE0_S1CDMAX(0))
        ste[1] = (R.STE1_S1DSS(R.S1DSS_SSID0) | R.STE1_S1CIR(CACHE_WBRA)
                  | R.STE1_S1COR(CACHE_WBRA) | R.STE1_S1CSH(SH_ISH))
        return ste

    def make_s2_domain_ste(self, domain: ArmSmmuDomain) -> list[int]:
        """arm_smmu_make_s2_domain_ste(): VTCR fields from the io-pgtable configuration."""
        s2 = domain.pgtbl.stage2_config()
        ste = [0] * 8
        ste[0] = R.STE0_V(1) | R.STE0_CONFIG(R.SteConfig.S2)
        ste[1] = R.STE1_SHCFG(STE1_SHCFG_INCOMING)
        ste[2] = (R.STE2_S2VMID(domain.vmid) | R.STE2_S2T0SZ(s2.tsz) | R.STE2_S2SL0(s2.sl0)
                  | R.STE2_S2IR0(CACHE_WBRA) | R.STE2_S2OR0(CACHE_WBRA) | R.STE2_S2SH0(SH_ISH)
                  | R.STE2_S2TG(R.GRANULE_TG[s2.granule]) | R.STE2_S2PS(R.OAS_BITS.index(s2.ps))
                  | R.STE2_S2AA64(1) | R.STE2_S2PTW(1) | R.STE2_S2R(1))
        ste[3] = R.STE3_S2TTB(s2.vttb >> 4)
        return ste

    def make_nested_ste(self, domain: ArmSmmuNestedDomain) -> list[int]:
        """arm_smmu_make_nested_domain_ste(): the guest's stage 1 on the parent's stage 2."""
        g0, g1 = domain.ste
        cfg = R.STE0_CONFIG.get(g0) if R.STE0_V.get(g0) else R.SteConfig.ABORT
        if cfg == R.SteConfig.S1:
            ste = self.make_s2_domain_ste(domain.s2_parent)
            ste[0] = R.STE0_V(1) | R.STE0_CONFIG(R.SteConfig.NESTED) | (g0 & ~R.STE0_CONFIG.mask)
            ste[1] |= g1
            return ste
        if cfg == R.SteConfig.BYPASS:
            return self.make_s2_domain_ste(domain.s2_parent)
        return self.make_abort_ste()

    def make_s1_cd(self, domain: ArmSmmuDomain) -> list[int]:
        """arm_smmu_make_s1_cd(): TTB0 walks, TTB1 disabled (EPD1), faults recorded."""
        s1 = domain.pgtbl.stage1_config()
        cd = [0] * 8
        cd[0] = (R.CD0_T0SZ(s1.tsz0) | R.CD0_TG0(R.GRANULE_TG[s1.granule0])
                 | R.CD0_IR0(CACHE_WBRA) | R.CD0_OR0(CACHE_WBRA) | R.CD0_SH0(SH_ISH)
                 | R.CD0_EPD1(1) | R.CD0_V(1) | R.CD0_IPS(R.OAS_BITS.index(s1.ips))
                 | R.CD0_AA64(1) | R.CD0_R(1) | R.CD0_A(1) | R.CD0_ASET(1)
                 | R.CD0_ASID(domain.asid))
        cd[1] = R.CD1_TTB0(s1.ttb0 >> 4)
        cd[3] = CD_MAIR
        return cd

    def _ste_addr(self, sid: int) -> int:
        if not self.features & Feat.TWO_LVL_STRTAB:
            return self.strtab + sid * R.STE_SIZE
        l2 = self._init_l2_strtab(sid)
        return l2 + (sid & ((1 << STRTAB_SPLIT) - 1)) * R.STE_SIZE

    def _init_l2_strtab(self, sid: int) -> int:
        """arm_smmu_init_l2_strtab(): the L2 table covering ``sid``, abort STEs."""
        l1 = sid >> STRTAB_SPLIT
        l2 = self.l2_strtab.get(l1)
        if l2 is None:
            l2 = self.kernel.mm.alloc(R.STE_SIZE << STRTAB_SPLIT)
            self.kernel.ram.write(l2, pack_dwords(self.make_abort_ste())
                                  * (1 << STRTAB_SPLIT))
            self.kernel.ram.write_u64(self.strtab + 8 * l1, R.L1STD_SPAN(STRTAB_SPLIT + 1)
                                      | R.L1STD_L2PTR(l2 >> 6))
            self.l2_strtab[l1] = l2
        return l2

    @staticmethod
    def _ste_used(w0: int) -> set[int]:
        """Doublewords the SMMU reads for an STE whose dword 0 is ``w0``."""
        if not R.STE0_V.get(w0) or R.STE0_CONFIG.get(w0) == R.SteConfig.ABORT:
            return {0}
        if R.STE0_CONFIG.get(w0) in (R.SteConfig.BYPASS, R.SteConfig.S1):
            return {0, 1}
        return {0, 1, 2, 3}

    @staticmethod
    def _cd_used(w0: int) -> set[int]:
        return {0, 1, 3} if R.CD0_V.get(w0) else {0}

    def _write_entry(self, addr: int, target: list[int], valid: int,
                     used: Callable[[int], set[int]], sync: Callable[[], None]) -> None:
        """arm_smmu_write_entry(), per doubleword: first the doublewords the live entry
        ignores, then the one that matters (hitless) and a clean-up; if more than one
        doubleword in use must change, break-before-make through V=0.  Each step that
        changed something is published (``sync``)."""
        ram = self.kernel.ram
        cur = dwords(ram.read(addr, 64))

        def update(idx: Iterable[int]) -> None:
            changed = [i for i in idx if cur[i] != target[i]]
            for i in changed:
                ram.write_u64(addr + 8 * i, target[i])
                cur[i] = target[i]
            if changed:
                sync()

        live = used(cur[0])
        update(i for i in range(1, 8) if i not in live)
        critical = [i for i in used(target[0]) if cur[i] != target[i]]
        if len(critical) > 1:
            cur[0] &= ~valid
            ram.write_u64(addr, cur[0])
            sync()
            update(range(1, 8))
        update(critical)
        update(range(8))

    def write_ste(self, master: ArmSmmuMaster, target: list[int]) -> None:
        """arm_smmu_write_ste(), published with CFGI_STE (leaf) + CMD_SYNC, then a
        PREFETCH_CONFIG for the StreamID ("likely to be used soon"; no SYNC)."""
        ent = CmdqEnt(R.Opcode.CFGI_STE, sid=master.sid, leaf=True)
        self._write_entry(self._ste_addr(master.sid), target, R.STE0_V.mask, self._ste_used,
                          lambda: self.cmdq_issue_cmd(ent))
        self.cmdq_issue_cmd(CmdqEnt(R.Opcode.PREFETCH_CONFIG, sid=master.sid), sync=False)

    def write_cd(self, master: ArmSmmuMaster, target: list[int]) -> None:
        """arm_smmu_write_cd_entry() for SSID 0, published with CFGI_CD + CMD_SYNC."""
        if master.cd_table is None:
            master.cd_table = self.kernel.mm.alloc(R.CD_SIZE)
        ent = CmdqEnt(R.Opcode.CFGI_CD, sid=master.sid, ssid=0, leaf=True)
        self._write_entry(master.cd_table, target, R.CD0_V.mask, self._cd_used,
                          lambda: self.cmdq_issue_cmd(ent))

    # -- TLB maintenance -------------------------------------------------------------

    def tlb_inv_range_domain(self, domain: ArmSmmuDomain, iova: int, size: int) -> None:
        """arm_smmu_tlb_inv_range_domain(): TLBI_NH_VA (stage 1) or TLBI_S2_IPA (stage 2)
        over [iova, iova + size), range form when IDR3.RIL, else one per page (or the
        whole ASID / VMID from CMDQ_MAX_TLBI_OPS pages, as Linux's SVA path does); a
        nesting parent also drops its VMID's stage-1 entries.  Then CMD_SYNC."""
        Op = R.Opcode
        if domain.stage == 1:
            proto = CmdqEnt(Op.TLBI_NH_VA, asid=domain.asid, leaf=True)
        else:
            proto = CmdqEnt(Op.TLBI_S2_IPA, vmid=domain.vmid, leaf=True)
        gshift = domain.pgtbl.gshift
        cmds = []
        end = iova + size
        iova &= ~((1 << gshift) - 1)
        if not self.features & Feat.RANGE_INV and end - iova >= CMDQ_MAX_TLBI_OPS << gshift:
            cmds.append(CmdqEnt(Op.TLBI_NH_ASID, asid=domain.asid) if domain.stage == 1
                        else CmdqEnt(Op.TLBI_S12_VMALL, vmid=domain.vmid))
        elif self.features & Feat.RANGE_INV:
            tg = (gshift - 10) // 2
            pages = (end - iova + (1 << gshift) - 1) >> gshift
            while pages:
                scale = (pages & -pages).bit_length() - 1
                num = (pages >> scale) & 31
                cmds.append(_with(proto, addr=iova, tg=tg, num=num - 1, scale=scale))
                iova += num << (scale + gshift)
                pages -= num << scale
        else:
            for addr in range(iova, end, 1 << gshift):
                cmds.append(_with(proto, addr=addr))
        if domain.nest_parent:
            cmds.append(CmdqEnt(Op.TLBI_NH_ALL, vmid=domain.vmid))
        self.cmdq_issue_cmdlist(cmds)

    # -- IommuOps ----------------------------------------------------------------------

    def probe_device(self, dev: IommuDevice) -> ArmSmmuMaster:
        """arm_smmu_probe_device(): StreamID = requester ID; its L2 table on demand."""
        if not self.probed:
            raise fail(ENODEV, "SMMU not probed")
        master = self.masters.get(dev)
        if master is not None:
            return master
        sid = dev.rid
        if sid >> self.strtab_log2size:
            raise fail(ERANGE, f"StreamID {sid:#x} beyond the stream table")
        self._ste_addr(sid)
        master = self.masters[dev] = ArmSmmuMaster(dev, sid)
        return master

    def release_device(self, dev: IommuDevice) -> None:
        """arm_smmu_release_device(): abort STE, CD table freed."""
        master = self.masters.pop(dev, None)
        if master is None:
            return
        self.write_ste(master, self.make_abort_ste())
        self._detach(master)
        if master.cd_table is not None:
            self.kernel.mm.free(master.cd_table, R.CD_SIZE)
            master.cd_table = None

    def device_group(self, dev: IommuDevice) -> Hashable:
        return dev

    def domain_alloc_paging(self, dev: IommuDevice, flags: int = 0) -> ArmSmmuDomain:
        """arm_smmu_domain_alloc_paging_flags(): stage 1 when the SMMU has it, stage 2
        otherwise or for IOMMU_HWPT_ALLOC_NEST_PARENT."""
        if flags & ~IOMMU_HWPT_ALLOC_NEST_PARENT:
            raise fail(EOPNOTSUPP, f"domain flags {flags:#x}")
        if flags & IOMMU_HWPT_ALLOC_NEST_PARENT:
            if not self.features & Feat.NESTING:
                raise fail(EOPNOTSUPP, "SMMU cannot nest")
            return ArmSmmuDomain(self, 2, nest_parent=True)
        return ArmSmmuDomain(self, 1 if self.features & Feat.TRANS_S1 else 2)

    def domain_alloc_nested(self, dev: IommuDevice, parent: IommuDomain,
                            data: object) -> IommuDomain:
        """arm_vsmmu_alloc_domain_nested(): ``data`` is the guest's vSTE (dwords 0..1, or
        an object with ``.ste`` such as struct iommu_hwpt_arm_smmuv3) on a stage-2 nesting
        parent of this SMMU; anything else is EINVAL."""
        if not self.features & Feat.NESTING:
            raise fail(EOPNOTSUPP, "SMMU cannot nest")
        if (not isinstance(parent, ArmSmmuDomain) or parent.smmu is not self
                or parent.stage != 2 or not parent.nest_parent or parent.freed):
            raise fail(EINVAL, "a nested domain needs a stage-2 nesting parent of this SMMU")
        ste = getattr(data, "ste", data)
        if not isinstance(ste, Sequence):
            raise fail(EINVAL, f"a vSTE is two 64-bit doublewords, not {type(ste).__name__}")
        return ArmSmmuNestedDomain(self, parent, self.validate_vste(ste))

    @staticmethod
    def validate_vste(ste: Sequence[int]) -> tuple[int, int]:
        """arm_smmu_validate_vste(): V=0 is abort; only guest-owned stage-1 fields
        (R.STE{0,1}_NESTING_ALLOWED), Config abort / bypass / S1 and EATS abort / full
        ATS are accepted (EIO otherwise: Linux keeps EIO for invalid STE data).  EATS
        is taken out of the vSTE: the host sets the physical STE's (this SMMU model has
        no ATS, so it stays 0)."""
        if len(ste) != 2 or not all(isinstance(w, int) and 0 <= w < 1 << 64 for w in ste):
            raise fail(EINVAL, "a vSTE is two 64-bit doublewords")
        s0, s1 = ste
        if not R.STE0_V.get(s0):
            return 0, 0
        if s0 & ~R.STE0_NESTING_ALLOWED or s1 & ~R.STE1_NESTING_ALLOWED:
            raise fail(EIO, f"vSTE sets bits the guest does not own ({s0:#x}, {s1:#x})")
        if R.STE0_CONFIG.get(s0) not in (R.SteConfig.ABORT, R.SteConfig.BYPASS, R.SteConfig.S1):
            raise fail(EIO, f"vSTE Config {R.STE0_CONFIG.get(s0):#05b} is not allowed")
        if R.STE1_EATS.get(s1) not in (R.EATS_ABT, R.EATS_TRANS):
            raise fail(EIO, f"vSTE EATS {R.STE1_EATS.get(s1):#04b} is not allowed")
        return s0, s1 & ~R.STE1_EATS.mask

    def identity_domain(self) -> IommuDomain:
        return self._identity

    def blocked_domain(self) -> IommuDomain:
        return self._blocked

    def attach_dev(self, domain: IommuDomain, dev: IommuDevice) -> None:
        """arm_smmu_attach_dev() and the static domains' attach: build and install the STE."""
        master = self.masters.get(dev)
        if master is None:
            raise fail(ENODEV, f"{dev} was not probed by this SMMU")
        uses_cd, vmaster = False, None
        if domain is self._identity:
            ste = self.make_bypass_ste()
        elif domain is self._blocked:
            ste = self.make_abort_ste()
        elif isinstance(domain, ArmSmmuDomain) and domain.smmu is self and not domain.freed:
            if domain.stage == 1:
                self.write_cd(master, self.make_s1_cd(domain))
                ste, uses_cd = self.make_cdtable_ste(master), True
            else:
                ste = self.make_s2_domain_ste(domain)
        elif isinstance(domain, ArmSmmuNestedDomain) and domain.smmu is self:
            vmaster = self._prepare_vmaster(domain, dev)
            ste = self.make_nested_ste(domain)
        else:
            raise fail(EINVAL, f"cannot attach {domain!r} to {dev}")
        self.write_ste(master, ste)
        if not uses_cd and master.cd_table is not None:
            self.write_cd(master, [0] * 8)        # arm_smmu_clear_cd()
        self._detach(master)
        master.domain, master.vmaster = domain, vmaster
        if isinstance(domain, (ArmSmmuDomain, ArmSmmuNestedDomain)):
            domain.masters.add(master)

    @staticmethod
    def _prepare_vmaster(domain: ArmSmmuNestedDomain,
                         dev: IommuDevice) -> tuple[Viommu, int] | None:
        """arm_smmu_attach_prepare_vmaster(): a nested domain made through a vIOMMU
        (``domain.vsmmu``) reports the master's events with its vDEVICE's virtual
        StreamID; a translating vSTE needs one (ENOENT), abort / bypass do not."""
        viommu = getattr(domain, "vsmmu", None)
        if viommu is None:
            return None
        vsid = viommu.get_vdev_id(dev)
        if vsid is not None:
            return viommu, vsid
        if R.STE0_V.get(domain.ste[0]) and R.STE0_CONFIG.get(domain.ste[0]) == R.SteConfig.S1:
            raise fail(ENOENT, f"{dev} has no vDEVICE on the nested domain's vIOMMU")
        return None

    def _detach(self, master: ArmSmmuMaster) -> None:
        old = master.domain
        if isinstance(old, (ArmSmmuDomain, ArmSmmuNestedDomain)):
            old.masters.discard(master)
        master.domain = master.vmaster = None

    def hw_info(self, dev: IommuDevice, want: int) -> tuple[bytes, int]:
        """arm_smmu_hw_info(): struct iommu_hw_info_arm_smmuv3 with IDR0..IDR5, IIDR and
        AIDR read from the SMMU as they are (no bit masked); EOPNOTSUPP when another
        type is asked for (no implementation-specific info here)."""
        if want not in (uapi.IOMMU_HW_INFO_TYPE_DEFAULT, uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3):
            raise fail(EOPNOTSUPP, f"hw_info type {want}")
        info = uapi.IommuHwInfoArmSmmuv3(
            idr=[self.readl(R.IDR0 + 4 * i) for i in range(6)],
            iidr=self.readl(R.IIDR), aidr=self.readl(R.AIDR))
        return info.pack(), uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3

    def get_resv_regions(self, dev: IommuDevice) -> list[ResvRegion]:
        """arm_smmu_get_resv_regions(): the software-managed MSI window."""
        return [ResvRegion(MSI_IOVA_BASE, MSI_IOVA_LENGTH, IOMMU_WRITE | IOMMU_NOEXEC | IOMMU_MMIO,
                           ResvType.SW_MSI)]


def _with(proto: CmdqEnt, **kw: int) -> CmdqEnt:
    return CmdqEnt(**{**proto.__dict__, **kw})


__all__ = [
    "ArmSmmuDomain", "ArmSmmuEvent", "ArmSmmuMaster", "ArmSmmuNestedDomain", "ArmSmmuQueue",
    "ArmSmmuV3", "CmdqEnt", "Feat", "IOMMU_HWPT_ALLOC_NEST_PARENT", "STRTAB_SPLIT",
    "arm_smmu_cmdq_build_cmd", "decode_event",
]
