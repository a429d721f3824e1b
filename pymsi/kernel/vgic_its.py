"""KVM's emulated ITS (arch/arm64/kvm/vgic/vgic-its.c) and GICv4 forwarding (vgic-v4.c).

The guest programs the vITS through its MMIO frame (:class:`VgicItsEmul`:
GITS_CTLR, IIDR, TYPER, CBASER, CWRITER, CREADR, BASER0 = device table,
BASER1 = collection table, the ID registers) and posts commands in a queue in
its own memory.  As in KVM, devices, collections and translations are kept in
kernel lists, not in the guest's tables (those are only checked: an ID must
have an entry in the table the guest gave, a two-level table's level-1 entry
read from guest memory); a DISCARD / MAPD V=0 clears the guest's entry as KVM
does.  Every command runs as soon as CWRITER moves; a command with bad
parameters (or unreadable) is skipped: GITS_CREADR moves past it, nothing
stalls and the guest sees no error (KVM drops the handler's E_ITS_* code;
here it is kept in ``errors`` for inspection).

An MSI reaching the vITS (KVM_SIGNAL_MSI, an irqfd) is translated through
(DeviceID, EventID) -> ITE -> LPI and collection -> vCPU: the LPI's
``pending_latch`` is set (``kvm.vlpi_pending`` lists them), or, for an LPI
forwarded to a GICv4 vPE, the host ITS is told to make it pending.

GICv4 forwarding (:func:`set_forwarding` / :func:`unset_forwarding`, called
from the irq-bypass connect of an irqfd and a VFIO vector): the irqfd's MSI
route is resolved through the vITS to the guest's LPI and vCPU, and the host
IRQ is mapped to that vLPI on the vCPU's vPE with
``irq_set_vcpu_affinity(MAP_VLPI)``.  A guest MOVI of a forwarded event maps it
again on the new vPE (the ITS driver sends VMOVI); DISCARD unmaps it.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, cast

from .. import trace
from ..core import gic_formats as F
from ..hw import its as I
from ..hw.bits import Field, merge_access
from .base import KernelError

if TYPE_CHECKING:
    from .kvm import Kvm, MsiRoute

EBUSY, ENODEV, EFAULT = _errno.EBUSY, _errno.ENODEV, _errno.EFAULT

GIC_LPI_OFFSET = F.LPI_BASE          # KVM's name for the first LPI
INTERRUPT_ID_BITS_ITS = 16
VITS_TYPER_IDBITS = 16
VITS_TYPER_DEVBITS = 16
VITS_MAX_DEVID = (1 << VITS_TYPER_DEVBITS) - 1
ITE_ESZ = DTE_ESZ = CTE_ESZ = 8                   # ITS table ABI v0
ITS_CMD_SIZE = 32

# Tracepoints as Linux's arch/arm64/kvm/vgic/trace.h (traced as a command is taken from the
# queue), and vgic_update_irq_pending when an MSI makes an LPI pending.
_TP = trace.Tracepoint
_DEV_EV = ("device_id", "event_id")
trace_vgic_its_cmd_mapd = _TP("vgic_its_cmd_mapd", "device_id", "valid", "num_eventid_bits",
                              "itt_addr")
trace_vgic_its_cmd_mapc = _TP("vgic_its_cmd_mapc", "collection_id", "valid")
trace_vgic_its_cmd_mapi = _TP("vgic_its_cmd_mapi", *_DEV_EV)
trace_vgic_its_cmd_movi = _TP("vgic_its_cmd_movi", "device_id", "event_id", "collection_id")
trace_vgic_its_cmd_discard = _TP("vgic_its_cmd_discard", *_DEV_EV)
trace_vgic_its_cmd_clear = _TP("vgic_its_cmd_clear", *_DEV_EV)
trace_vgic_its_cmd_int = _TP("vgic_its_cmd_int", *_DEV_EV)
trace_vgic_its_cmd_inv = _TP("vgic_its_cmd_inv", *_DEV_EV)
trace_vgic_its_cmd_movall = _TP("vgic_its_cmd_movall", "vcpu_source", "vcpu_target")
trace_vgic_its_cmd_invall = _TP("vgic_its_cmd_invall", "collection_id", "vcpu_id")
trace_vgic_update_irq_pending = _TP("vgic_update_irq_pending", "vcpu_id", "irq", "level")
SZ_64K = 0x10000
# GITS_IIDR: Revision 0 (the ABI), ProductID 0x4B ('K'), Implementer Arm (0x43B).
GITS_IIDR_KVM = 0x4B << 24 | 0x43B
GITS_IDREGS_BASE = 0xFFD0
GITS_PIDR2_VALUE = 3 << 4 | 0x0B                  # GICv3, Arm JEP106
GITS_BASER_RO_MASK = I.BASER_ENTRY_SIZE.mask | I.BASER_TYPE.mask
CACHE_RAWB = 3
INITIAL_BASER_VALUE = (I.BASER_INNER_CACHE(CACHE_RAWB) | I.BASER_SHAREABILITY(I.SH_INNER)
                       | I.BASER_PAGE_SIZE(2))    # 64K pages
GICR_PROPBASER_ADDRESS = Field(51, 12)
GICR_PENDBASER_ADDRESS = Field(51, 16)
LPI_PROP_ENABLED, LPI_PROP_GROUP1, LPI_PROP_PRIORITY_MASK = 1, 2, 0xFC
E = I.ItsError                                    # KVM's E_ITS_* codes are the architecture's


@dataclass(eq=False)
class VgicLpi:
    """struct vgic_irq of an LPI: shared by every ITE that maps its INTID."""

    intid: int
    target_vcpu: int | None = None
    pending_latch: bool = False
    enabled: bool = False
    priority: int = 0
    hw: bool = False                   # forwarded to a GICv4 vPE
    host_irq: int | None = None
    refs: int = 1

    # Not a dataclass field (no annotation): the set of pending LPIs of the VM this one
    # belongs to (Kvm.lpi_pending), kept up to date by the ``pending_latch`` setter below;
    # None outside a VM's table.
    _pset = None


class _Latched(Protocol):
    """What the ``pending_latch`` property of VgicLpi keeps (instance attributes outside
    the dataclass fields)."""

    _latch: bool
    _pset: set[Any] | None


def _get_latch(self: _Latched) -> bool:
    return self._latch


def _set_latch(self: _Latched, value: bool) -> None:
    self._latch = value
    ps = self._pset
    if ps is not None:
        if value:
            ps.add(self)
        else:
            ps.discard(self)


# pending_latch is a dataclass field (its default, constructor argument and repr are as
# declared) read and written through a property that keeps the VM's pending set exact.
VgicLpi.pending_latch = property(_get_latch, _set_latch)  # type: ignore[assignment]


@dataclass(eq=False)
class ItsCollection:
    """struct its_collection: ``target_addr`` a vCPU id, None while not mapped."""

    coll_id: int
    target_addr: int | None = None


@dataclass(eq=False)
class ItsIte:
    """struct its_ite: one event's LPI and collection."""

    event_id: int
    irq: VgicLpi
    collection: ItsCollection | None

    def __repr__(self) -> str:
        coll = None if self.collection is None else self.collection.coll_id
        return f"ItsIte(event_id={self.event_id}, intid={self.irq.intid}, collection={coll})"


@dataclass(eq=False)
class ItsDev:
    """struct its_device: a DeviceID the guest mapped with MAPD."""

    device_id: int
    itt_addr: int
    num_eventid_bits: int
    ites: dict[int, ItsIte] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"ItsDev(device_id={self.device_id:#x}, itt_addr={self.itt_addr:#x}, "
                f"num_eventid_bits={self.num_eventid_bits}, ites={len(self.ites)})")


def _mapped(c: ItsCollection | None) -> TypeGuard[ItsCollection]:
    """its_is_collection_mapped()."""
    return c is not None and c.target_addr is not None


class _CmdError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class VgicItsEmul:
    """The vITS state and its guest interface; mixed into the KVM device (``self.kvm``)."""

    kvm: Kvm

    def _its_reset(self) -> None:
        self.enabled = False
        self.cbaser = 0
        self.cwriter = 0
        self.creadr = 0
        self.baser_device_table = (INITIAL_BASER_VALUE | I.BASER_TYPE(int(I.BaserType.DEVICES))
                                   | I.BASER_ENTRY_SIZE(DTE_ESZ - 1))
        self.baser_coll_table = (INITIAL_BASER_VALUE
                                 | I.BASER_TYPE(int(I.BaserType.COLLECTIONS))
                                 | I.BASER_ENTRY_SIZE(CTE_ESZ - 1))
        self.its_devices: dict[int, ItsDev] = {}
        #: the LPI translation cache (its->translation_cache): (DeviceID, EventID) -> LPI
        #: of MSIs that were injected, dropped whenever a command or register write could
        #: change a translation, as KVM's vgic_its_invalidate_cache() callers do
        self.translation_cache: dict[tuple[int, int], VgicLpi] = {}
        self.cache_stats = {"hits": 0, "misses": 0, "invalidations": 0}
        self.collections: dict[int, ItsCollection] = {}
        #: (command, E_ITS_* or -errno) of every command KVM dropped, in order.
        self.errors: list[tuple[str, int]] = []

    # -- MMIO (vgic_its_registers) ------------------------------------------------------

    @property
    def typer(self) -> int:
        return (I.TYPER_PHYSICAL(1) | I.TYPER_DEVBITS(VITS_TYPER_DEVBITS - 1)
                | I.TYPER_ID_BITS(VITS_TYPER_IDBITS - 1) | I.TYPER_ITT_ENTRY_SIZE(ITE_ESZ - 1))

    def _regs64(self) -> dict[int, int]:
        return {I.GITS_TYPER: self.typer, I.GITS_CBASER: self.cbaser,
                I.GITS_CWRITER: self.cwriter, I.GITS_CREADR: self.creadr,
                I.GITS_BASER: self.baser_device_table, I.GITS_BASER + 8: self.baser_coll_table}

    def its_mmio_read(self, offset: int, size: int) -> int:
        """A guest read of the ITS frame at ``offset``: RAZ outside the registers."""
        reg = offset & ~7
        regs64 = self._regs64()
        if GITS_BASER_2 <= reg < I.GITS_BASER + 64:
            regs64[reg] = 0
        if reg in regs64 and (size == 8 and not offset & 7 or size == 4 and not offset & 3):
            v = regs64[reg]
            return v if size == 8 else (v >> (8 * (offset & 4))) & 0xFFFF_FFFF
        if size != 4 or offset & 3:
            return 0
        if offset == I.GITS_CTLR:
            quiescent = I.CTLR_QUIESCENT if self.creadr == self.cwriter else 0
            return (I.CTLR_ENABLED if self.enabled else 0) | quiescent
        if offset == I.GITS_IIDR:
            return GITS_IIDR_KVM
        if offset == I.GITS_PIDR2:
            return GITS_PIDR2_VALUE
        return 0

    def its_mmio_write(self, offset: int, value: int, size: int) -> None:
        """A guest write to the ITS frame: WI outside the writable registers."""
        reg = offset & ~7
        if reg in (I.GITS_CBASER, I.GITS_CWRITER, I.GITS_BASER, I.GITS_BASER + 8):
            if not (size == 8 and not offset & 7 or size == 4 and not offset & 3):
                return
            if reg == I.GITS_CBASER:
                self._write_cbaser(merge_access(self.cbaser, offset & 4, value, size))
            elif reg == I.GITS_CWRITER:
                self._write_cwriter(merge_access(self.cwriter, offset & 4, value, size))
            else:
                self._write_baser(reg == I.GITS_BASER, offset & 4, value, size)
            return
        if offset == I.GITS_CTLR and size == 4:
            self._write_ctlr(value)

    def _write_ctlr(self, value: int) -> None:
        """vgic_mmio_write_its_ctlr(): enabling needs valid CBASER, device and
        collection tables; then whatever the queue holds runs."""
        enable = bool(value & I.CTLR_ENABLED)
        if not self.enabled and enable and not (
                I.BASER_VALID.get(self.baser_device_table)
                and I.BASER_VALID.get(self.baser_coll_table)
                and I.CBASER_VALID.get(self.cbaser)):
            return
        self.enabled = enable
        if not enable:
            self.invalidate_cache()
        self._process_commands()

    def _write_cbaser(self, value: int) -> None:
        """vgic_mmio_write_its_cbaser(): only while disabled; CREADR and CWRITER go to 0."""
        if self.enabled:
            return
        self.cbaser = value & I.CBASER_WRITABLE
        self.creadr = 0
        self.cwriter = 0

    def _cmd_buffer_size(self) -> int:
        return (I.CBASER_SIZE.get(self.cbaser) + 1) << 12

    def _write_cwriter(self, value: int) -> None:
        """vgic_mmio_write_its_cwriter(): an offset beyond the queue is ignored."""
        reg = value & I.CWRITER_OFFSET.mask
        if reg >= self._cmd_buffer_size():
            return
        self.cwriter = reg
        self._process_commands()

    def _write_baser(self, device: bool, high: int, value: int, size: int) -> None:
        """vgic_mmio_write_its_baser(): only while disabled; type and entry size are
        read-only, the page size is always 64K and PA[51:48] (bits 15:12) is not
        supported; clearing Valid forgets the devices (collections)."""
        if self.enabled:
            return
        old = self.baser_device_table if device else self.baser_coll_table
        new = merge_access(old, high, value, size)
        new = (new & ~GITS_BASER_RO_MASK) | (old & GITS_BASER_RO_MASK)
        new = I.BASER_PAGE_SIZE.put(new, 2) & ~(0xF << 12)
        if device:
            self.baser_device_table = new
            if not I.BASER_VALID.get(new):
                for dev in list(self.its_devices.values()):
                    self._free_device(dev)
        else:
            self.baser_coll_table = new
            if not I.BASER_VALID.get(new):
                for coll_id in list(self.collections):
                    self._free_collection(coll_id)

    # -- guest memory and tables ---------------------------------------------------------

    def _read_guest(self, gpa: int, n: int) -> bytes:
        return self.kvm.read_guest(gpa, n)

    def _check_id(self, baser: int, id_: int) -> int | None:
        """vgic_its_check_id(): the guest address of entry ``id_`` in the table, or None."""
        l1_size = (I.BASER_SIZE.get(baser) + 1) * SZ_64K
        btype = I.BASER_TYPE.get(baser)
        base = baser & (((1 << 48) - 1) & ~(SZ_64K - 1))
        esz = I.BASER_ENTRY_SIZE.get(baser) + 1
        if btype == I.BaserType.DEVICES:
            if id_ > VITS_MAX_DEVID:
                return None
        elif btype == I.BaserType.COLLECTIONS:
            if id_ >= 1 << 16:
                return None
        else:
            return None
        if not I.BASER_INDIRECT.get(baser):
            return base + id_ * esz if id_ < l1_size // esz else None
        index = id_ // (SZ_64K // esz)
        if index >= l1_size // 8:
            return None
        try:
            ptr = int.from_bytes(self._read_guest(base + index * 8, 8), "little")
        except KernelError:
            return None
        if not ptr >> 63:
            return None
        return (ptr & (((1 << 52) - 1) & ~(SZ_64K - 1))) + (id_ % (SZ_64K // esz)) * esz

    def _write_entry(self, gpa: int, value: int, esz: int) -> None:
        """vgic_its_write_entry_lock(): a failed write is the command's error."""
        try:
            self.kvm.write_guest(gpa, value.to_bytes(esz, "little"))
        except KernelError as e:
            raise _CmdError(-e.errno) from None

    # -- LPIs (vgic-its.c / vgic-mmio-v3.c) ---------------------------------------------------

    def _max_lpis(self) -> int:
        """max_lpis_propbaser()."""
        return 1 << min((self.kvm.propbaser & 0x1F) + 1, INTERRUPT_ID_BITS_ITS)

    def update_lpi_config(self, irq: VgicLpi, filter_vcpu: int | None = None) -> int:
        """update_lpi_config(): the guest's property byte -> priority / enabled (and the
        vPE's property table for a forwarded LPI); -EFAULT if unreadable."""
        propbase = GICR_PROPBASER_ADDRESS.get(self.kvm.propbaser) << 12
        try:
            prop = self._read_guest(propbase + irq.intid - GIC_LPI_OFFSET, 1)[0]
        except KernelError as e:
            return -e.errno
        if filter_vcpu is None or filter_vcpu == irq.target_vcpu:
            irq.priority = prop & LPI_PROP_PRIORITY_MASK
            irq.enabled = bool(prop & LPI_PROP_ENABLED)
        if irq.hw:
            self.kvm.write_vprop(irq)
        return 0

    def _sync_pending(self, irq: VgicLpi) -> int:
        """vgic_v3_lpi_sync_pending_status(): the bit in the target's pending table."""
        vcpu = self.kvm.vcpus.get(irq.target_vcpu) if irq.target_vcpu is not None else None
        if vcpu is None:
            return 0
        pendbase = GICR_PENDBASER_ADDRESS.get(vcpu.pendbaser) << 16
        try:
            byte = self._read_guest(pendbase + irq.intid // 8, 1)[0]
        except KernelError as e:
            return -e.errno
        irq.pending_latch = bool(byte & 1 << irq.intid % 8)
        return 0

    def _add_lpi(self, intid: int, vcpu: int | None) -> VgicLpi:
        """vgic_add_lpi(): the VM's LPI for ``intid``; an existing one is shared as it
        is, a new one has its configuration and pending state read from guest memory."""
        lpis = self.kvm.lpis
        irq = lpis.get(intid)
        if irq is not None:
            irq.refs += 1
            return irq
        irq = lpis[intid] = VgicLpi(intid, target_vcpu=vcpu)
        irq._pset = getattr(self.kvm, "lpi_pending", None)
        ret = self.update_lpi_config(irq) or self._sync_pending(irq)
        if ret:
            self.kvm.put_lpi(irq)
            raise _CmdError(ret)
        return irq

    def _update_affinity(self, irq: VgicLpi, vcpu: int | None) -> None:
        """update_affinity(): a new target; a forwarded LPI is mapped again on the
        new vCPU's vPE (its_map_vlpi: the ITS driver moves it with VMOVI)."""
        irq.target_vcpu = vcpu
        if irq.hw and vcpu is not None:
            try:
                self.kvm.map_vlpi(cast(int, irq.host_irq), irq)       # hw: it has one
            except KernelError as e:
                # KVM ignores a command handler's error (the guest sees the command
                # done); the host refused to move the vLPI, which stays where it was.
                self.kvm.kernel.printk(f"kvm: moving vLPI {irq.intid} failed: {e}")

    def _free_ite(self, dev: ItsDev, ite: ItsIte) -> None:
        """its_free_ite(): a forwarded LPI is unmapped from its vPE, the LPI dropped."""
        del dev.ites[ite.event_id]
        if ite.irq.hw:
            self.kvm.unmap_vlpi(ite.irq)
        self.kvm.put_lpi(ite.irq)

    def _free_device(self, dev: ItsDev) -> None:
        self.invalidate_cache()
        for ite in list(dev.ites.values()):
            self._free_ite(dev, ite)
        del self.its_devices[dev.device_id]

    def _free_collection(self, coll_id: int) -> None:
        """vgic_its_free_collection(): ITEs on it keep no collection."""
        coll = self.collections.pop(coll_id, None)
        if coll is None:
            return
        self.invalidate_cache()
        for dev in self.its_devices.values():
            for ite in dev.ites.values():
                if ite.collection is coll:
                    ite.collection = None

    def _find_ite(self, device_id: int, event_id: int) -> ItsIte | None:
        dev = self.its_devices.get(device_id)
        return None if dev is None else dev.ites.get(event_id)

    def _vcpu_of(self, coll: ItsCollection | None) -> int | None:
        """collection_to_vcpu()."""
        if not _mapped(coll) or coll.target_addr not in self.kvm.vcpus:
            return None
        return coll.target_addr

    def resolve_lpi(self, devid: int, eventid: int) -> tuple[int, VgicLpi | None]:
        """vgic_its_resolve_lpi(): (0, the LPI), or (-EBUSY | E_ITS_INT_UNMAPPED_INTERRUPT,
        None): -EBUSY while the vITS is disabled or the vCPU's LPIs are off."""
        if not self.enabled:
            return -EBUSY, None
        ite = self._find_ite(devid, eventid)
        if ite is None or not _mapped(ite.collection):
            return int(E.INT_UNMAPPED_INTERRUPT), None
        vcpu = self._vcpu_of(ite.collection)
        if vcpu is None:
            return int(E.INT_UNMAPPED_INTERRUPT), None
        if not self.kvm.vcpus[vcpu].lpis_enabled:
            return -EBUSY, None
        return 0, ite.irq

    def invalidate_cache(self) -> None:
        """vgic_its_invalidate_cache(): forget every cached translation."""
        if self.translation_cache:
            self.translation_cache.clear()
        self.cache_stats["invalidations"] += 1

    def translate_msi(self, devid: int, eventid: int) -> int:
        """vgic_its_trigger_msi(): 0 when the LPI was made pending (a forwarded one
        through the host ITS), else resolve_lpi's code.  A translation that succeeds is
        cached (vgic_its_cache_translation) and the next MSI with the same (DeviceID,
        EventID) takes it from the cache without walking the device and ITE lists."""
        key = (devid, eventid)
        irq = self.translation_cache.get(key)
        if irq is None:
            self.cache_stats["misses"] += 1
            ret, found = self.resolve_lpi(devid, eventid)
            if ret:
                return ret
            irq = self.translation_cache[key] = cast(VgicLpi, found)    # ret 0: an LPI
        else:
            self.cache_stats["hits"] += 1
        if irq.hw:
            # a forwarded LPI has its host IRQ (no cast() call on the hit path)
            self.kvm.host_set_pending(irq.host_irq, True)  # type: ignore[arg-type]
            return 0
        irq.pending_latch = True
        if trace_vgic_update_irq_pending.enabled:
            trace_vgic_update_irq_pending(vcpu_id=irq.target_vcpu, irq=irq.intid, level=True)
        return 0

    # -- the command queue --------------------------------------------------------------

    def _process_commands(self) -> None:
        """vgic_its_process_commands(): every command from CREADR to CWRITER; one that
        cannot be read is skipped, as one the handler refuses."""
        if not self.enabled:
            return
        base = I.CBASER_PA.get(self.cbaser) << 12
        size = self._cmd_buffer_size()
        while self.cwriter != self.creadr:
            try:
                raw = self._read_guest(base + self.creadr, ITS_CMD_SIZE)
            except KernelError as e:
                self.errors.append(("read", -e.errno))
            else:
                cmd = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, 32, 8)]
                self._handle_command(cmd)
            self.creadr += ITS_CMD_SIZE
            if self.creadr == size:
                self.creadr = 0

    def _trace_command(self, op: int, cmd: list[int]) -> None:
        d0, d1, d2, d3 = cmd
        dev, ev = F.C0_DEVICEID.get(d0), F.C1_EVENTID.get(d1)
        C = I.Cmd
        if op == C.MAPD and trace_vgic_its_cmd_mapd.enabled:
            trace_vgic_its_cmd_mapd(device_id=dev, valid=F.C2_V.get(d2),
                                    num_eventid_bits=F.C1_SIZE.get(d1),
                                    itt_addr=F.C2_ITT.get(d2) << 8)
        elif op == C.MAPC and trace_vgic_its_cmd_mapc.enabled:
            trace_vgic_its_cmd_mapc(collection_id=F.C2_ICID.get(d2), valid=F.C2_V.get(d2))
        elif op in (C.MAPI, C.MAPTI) and trace_vgic_its_cmd_mapi.enabled:
            trace_vgic_its_cmd_mapi(device_id=dev, event_id=ev)
        elif op == C.MOVI and trace_vgic_its_cmd_movi.enabled:
            trace_vgic_its_cmd_movi(device_id=dev, event_id=ev, collection_id=F.C2_ICID.get(d2))
        elif op == C.MOVALL and trace_vgic_its_cmd_movall.enabled:
            trace_vgic_its_cmd_movall(vcpu_source=F.C2_RDBASE.get(d2) & 0xFFFF_FFFF,
                                      vcpu_target=F.C3_RDBASE2.get(d3) & 0xFFFF_FFFF)
        elif op == C.INVALL and trace_vgic_its_cmd_invall.enabled:
            vcpu = self._vcpu_of(self.collections.get(F.C2_ICID.get(d2)))
            trace_vgic_its_cmd_invall(collection_id=F.C2_ICID.get(d2),
                                      vcpu_id=-1 if vcpu is None else vcpu)
        else:
            tp = _DEV_EV_TRACE.get(op)
            if tp is not None and tp.enabled:
                tp(device_id=dev, event_id=ev)

    def _handle_command(self, cmd: list[int]) -> None:
        op = F.C0_OP.get(cmd[0])
        self._trace_command(op, cmd)
        handler = _HANDLERS.get(op)
        name = I.Cmd(op).name if handler else f"opcode {op:#x}"
        try:
            if handler is None:
                raise _CmdError(-ENODEV)
            handler(self, cmd)
        except _CmdError as e:
            self.errors.append((name, e.code))

    def _cmd_mapd(self, cmd: list[int]) -> None:
        device_id = F.C0_DEVICEID.get(cmd[0])
        valid = F.C2_V.get(cmd[2])
        num_eventid_bits = F.C1_SIZE.get(cmd[1])
        itt_addr = F.C2_ITT.get(cmd[2]) << 8
        gpa = self._check_id(self.baser_device_table, device_id)
        if gpa is None:
            raise _CmdError(E.MAPD_DEVICE_OOR)
        if valid and num_eventid_bits > VITS_TYPER_IDBITS:
            raise _CmdError(E.MAPD_ITTSIZE_OOR)
        dev = self.its_devices.get(device_id)
        if dev is not None:                     # UNPREDICTABLE: KVM unmaps it first
            self._free_device(dev)
        if not valid:
            self._write_entry(gpa, 0, DTE_ESZ)
            return
        self.its_devices[device_id] = ItsDev(device_id, itt_addr, num_eventid_bits + 1)

    def _cmd_mapc(self, cmd: list[int]) -> None:
        valid = F.C2_V.get(cmd[2])
        coll_id = F.C2_ICID.get(cmd[2])
        target = F.C2_RDBASE.get(cmd[2]) & 0xFFFF_FFFF
        if not valid:                           # no target check for an unmap
            self._free_collection(coll_id)
            return
        if target not in self.kvm.vcpus:        # kvm_get_vcpu_by_id()
            raise _CmdError(E.MAPC_PROCNUM_OOR)
        coll = self.collections.get(coll_id)
        if coll is None:
            if self._check_id(self.baser_coll_table, coll_id) is None:
                raise _CmdError(E.MAPC_COLLECTION_OOR)
            self.collections[coll_id] = ItsCollection(coll_id, target)
            return
        coll.target_addr = target
        for dev in self.its_devices.values():          # update_affinity_collection()
            for ite in dev.ites.values():
                if ite.collection is coll:
                    self._update_affinity(ite.irq, self._vcpu_of(coll))

    def _check_event_id(self, dev: ItsDev, event_id: int) -> bool:
        """vgic_its_check_event_id(): in range and its ITE in guest memory."""
        if event_id >> dev.num_eventid_bits:
            return False
        return self.kvm.gpa_visible(dev.itt_addr + event_id * ITE_ESZ)

    def _cmd_mapi(self, cmd: list[int]) -> None:
        device_id = F.C0_DEVICEID.get(cmd[0])
        event_id = F.C1_EVENTID.get(cmd[1])
        coll_id = F.C2_ICID.get(cmd[2])
        lpi_nr = F.C1_PINTID.get(cmd[1]) if F.C0_OP.get(cmd[0]) == I.Cmd.MAPTI else event_id
        dev = self.its_devices.get(device_id)
        if dev is None:
            raise _CmdError(E.MAPTI_UNMAPPED_DEVICE)
        if not self._check_event_id(dev, event_id):
            raise _CmdError(E.MAPTI_ID_OOR)
        if not GIC_LPI_OFFSET <= lpi_nr < self._max_lpis():
            raise _CmdError(E.MAPTI_PHYSICALID_OOR)
        if event_id in dev.ites:                       # UNPREDICTABLE: KVM keeps the old one
            return
        coll = self.collections.get(coll_id)
        new_coll = None
        if coll is None:
            if self._check_id(self.baser_coll_table, coll_id) is None:
                raise _CmdError(E.MAPC_COLLECTION_OOR)
            coll = new_coll = self.collections[coll_id] = ItsCollection(coll_id)
        try:
            irq = self._add_lpi(lpi_nr, self._vcpu_of(coll))
        except _CmdError:
            if new_coll is not None:
                del self.collections[coll_id]
            raise
        dev.ites[event_id] = ItsIte(event_id, irq, coll)

    _cmd_mapti = _cmd_mapi

    def _cmd_movi(self, cmd: list[int]) -> None:
        ite = self._find_ite(F.C0_DEVICEID.get(cmd[0]), F.C1_EVENTID.get(cmd[1]))
        if ite is None:
            raise _CmdError(E.MOVI_UNMAPPED_INTERRUPT)
        if not _mapped(ite.collection):
            raise _CmdError(E.MOVI_UNMAPPED_COLLECTION)
        coll = self.collections.get(F.C2_ICID.get(cmd[2]))
        if not _mapped(coll):
            raise _CmdError(E.MOVI_UNMAPPED_COLLECTION)
        ite.collection = coll
        self.invalidate_cache()
        self._update_affinity(ite.irq, self._vcpu_of(coll))

    def _cmd_discard(self, cmd: list[int]) -> None:
        device_id, event_id = F.C0_DEVICEID.get(cmd[0]), F.C1_EVENTID.get(cmd[1])
        ite = self._find_ite(device_id, event_id)
        if ite is None or not _mapped(ite.collection):
            raise _CmdError(E.DISCARD_UNMAPPED_INTERRUPT)
        dev = self.its_devices[device_id]
        self.invalidate_cache()
        self._free_ite(dev, ite)
        self._write_entry(dev.itt_addr + event_id * ITE_ESZ, 0, ITE_ESZ)

    def _cmd_clear(self, cmd: list[int]) -> None:
        ite = self._find_ite(F.C0_DEVICEID.get(cmd[0]), F.C1_EVENTID.get(cmd[1]))
        if ite is None:
            raise _CmdError(E.CLEAR_UNMAPPED_INTERRUPT)
        ite.irq.pending_latch = False
        if ite.irq.hw:
            self.kvm.host_set_pending(cast(int, ite.irq.host_irq), False)   # hw: it has one

    def _cmd_int(self, cmd: list[int]) -> None:
        ret = self.translate_msi(F.C0_DEVICEID.get(cmd[0]), F.C1_EVENTID.get(cmd[1]))
        if ret:
            raise _CmdError(ret)

    def _cmd_inv(self, cmd: list[int]) -> None:
        ite = self._find_ite(F.C0_DEVICEID.get(cmd[0]), F.C1_EVENTID.get(cmd[1]))
        if ite is None:
            raise _CmdError(E.INV_UNMAPPED_INTERRUPT)
        ret = self.update_lpi_config(ite.irq)
        if ret:
            raise _CmdError(ret)

    def _cmd_invall(self, cmd: list[int]) -> None:
        coll = self.collections.get(F.C2_ICID.get(cmd[2]))
        if not _mapped(coll):
            raise _CmdError(E.INVALL_UNMAPPED_COLLECTION)
        vcpu = self._vcpu_of(coll)
        for irq in list(self.kvm.lpis.values()):      # vgic_its_invall()
            if irq.target_vcpu == vcpu:
                self.update_lpi_config(irq, vcpu)

    def _cmd_movall(self, cmd: list[int]) -> None:
        t1 = F.C2_RDBASE.get(cmd[2]) & 0xFFFF_FFFF
        t2 = F.C3_RDBASE2.get(cmd[3]) & 0xFFFF_FFFF
        if t1 not in self.kvm.vcpus or t2 not in self.kvm.vcpus:   # kvm_get_vcpu_by_id()
            raise _CmdError(E.MOVALL_PROCNUM_OOR)
        if t1 == t2:
            return
        self.kvm.invalidate_all_its_caches()
        for irq in list(self.kvm.lpis.values()):
            if irq.target_vcpu == t1:
                self._update_affinity(irq, t2)

    def _cmd_sync(self, cmd: list[int]) -> None:
        """Everything is done when the command runs."""


GITS_BASER_2 = I.GITS_BASER + 16

_HANDLERS = {int(I.Cmd.MAPD): VgicItsEmul._cmd_mapd, int(I.Cmd.MAPC): VgicItsEmul._cmd_mapc,
             int(I.Cmd.MAPTI): VgicItsEmul._cmd_mapti, int(I.Cmd.MAPI): VgicItsEmul._cmd_mapi,
             int(I.Cmd.MOVI): VgicItsEmul._cmd_movi, int(I.Cmd.DISCARD): VgicItsEmul._cmd_discard,
             int(I.Cmd.CLEAR): VgicItsEmul._cmd_clear, int(I.Cmd.INT): VgicItsEmul._cmd_int,
             int(I.Cmd.INV): VgicItsEmul._cmd_inv, int(I.Cmd.INVALL): VgicItsEmul._cmd_invall,
             int(I.Cmd.MOVALL): VgicItsEmul._cmd_movall, int(I.Cmd.SYNC): VgicItsEmul._cmd_sync}


# -- GICv4 forwarding (vgic-v4.c) ------------------------------------------------------------


def supports_direct_msis(kvm: Kvm) -> bool:
    """vgic_supports_direct_msis(): a GICv4 host ITS and a vITS in the VM."""
    its = getattr(kvm.kernel, "its", None)
    return its is not None and bool(getattr(its, "virtual", False)) and bool(kvm.its_list())


def set_forwarding(kvm: Kvm, host_irq: int, route: MsiRoute) -> int:
    """kvm_vgic_v4_set_forwarding(): map ``host_irq`` to the vLPI the MSI ``route``
    resolves to.  0 without GICv4 or when the route's address is no vITS (not
    forwarded, silently); 0 as well when the guest has not mapped the event (the
    bypass pair stays connected, the interrupt goes through the irqfd)."""
    if not supports_direct_msis(kvm):
        return 0
    its = kvm.its_of_route(route)
    if its is None:
        return 0
    ret, irq = its.resolve_lpi(route.devid, route.data)
    if ret or irq is None:                      # (0 always comes with the LPI)
        return 0
    if irq.hw:                                  # already mapped: the VMM remapped
        return 0
    try:
        kvm.map_vlpi(host_irq, irq)
    except KernelError as e:
        return -e.errno
    irq.hw, irq.host_irq = True, host_irq
    if irq.pending_latch:                       # the pending state goes to the vPE
        kvm.host_set_pending(host_irq, True)
        irq.pending_latch = False
    return 0


def unset_forwarding(kvm: Kvm, host_irq: int) -> int:
    """kvm_vgic_v4_unset_forwarding(): the LPI forwarded from ``host_irq`` (if any)
    goes back to software injection; the host IRQ to its host LPI."""
    irq = next((i for i in kvm.lpis.values() if i.hw and i.host_irq == host_irq), None)
    if irq is None:
        return 0
    kvm.unmap_vlpi(irq)
    return 0


__all__ = ["ItsCollection", "ItsDev", "ItsIte", "VgicItsEmul", "VgicLpi", "set_forwarding",
           "supports_direct_msis", "unset_forwarding"]

_DEV_EV_TRACE = {int(I.Cmd.DISCARD): trace_vgic_its_cmd_discard,
                 int(I.Cmd.CLEAR): trace_vgic_its_cmd_clear,
                 int(I.Cmd.INT): trace_vgic_its_cmd_int, int(I.Cmd.INV): trace_vgic_its_cmd_inv}
