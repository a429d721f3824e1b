"""iommufd's vIOMMU objects and the arm-smmu-v3 vIOMMU behind them.

What a VMM with an accelerated (nested) virtual SMMUv3 uses, as in Linux 6.17/6.18
(drivers/iommu/iommufd/viommu.c, eventq.c, driver.c, hw_pagetable.c and
drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c):

* :class:`Viommu` (``IOMMU_VIOMMU_ALLOC``, kind "viommu"): a virtual SMMU of one
  physical SMMU over a nest-parent paging HWPT (the guest's stage 2, whose VMID
  the vIOMMU uses).  Nested HWPTs are allocated through it (``IOMMU_HWPT_ALLOC``
  with ``pt_id`` = the vIOMMU: :meth:`Viommu.alloc_hwpt_nested`), and the guest's
  invalidation commands run through it (``IOMMU_HWPT_INVALIDATE`` with
  ``hwpt_id`` = the vIOMMU, :meth:`Viommu.cache_invalidate`): TLBI_NH_* get the
  parent's VMID, TLBI_NSNH_ALL becomes TLBI_NH_ALL of that VMID, CFGI_CD /
  CFGI_CD_ALL / ATC_INV get the physical StreamID of the vDEVICE with the
  guest's StreamID; anything else, or an unknown virtual StreamID, is EIO.
  Linux's arm-smmu-v3 nested domains have no ``cache_invalidate_user`` any more,
  so a nested HWPT id is EOPNOTSUPP there.
* :class:`Vdevice` (``IOMMU_VDEVICE_ALLOC``, kind "vdevice"): a bound device's
  virtual id on the vIOMMU (the guest's StreamID).  A device attached to a
  translating nested HWPT of the vIOMMU must have one (its "vmaster": the SMMU
  driver forwards its stage-1 events with that virtual StreamID).
* :class:`Veventq` (``IOMMU_VEVENTQ_ALLOC``, kind "veventq"): a queue of at most
  ``veventq_depth`` events read from its anonymous file as
  ``struct iommufd_vevent_header`` + the 32-byte SMMU event record with the
  virtual StreamID; when full, one trailing LOST_EVENTS header whose sequence
  moves on with every lost event.

Objects depend on one another through their user counts: a vIOMMU holds its
HWPT, a vDEVICE and a vEVENTQ their vIOMMU (and a nested HWPT of the vIOMMU
holds it too), and a vEVENTQ's open file holds the vEVENTQ; ``IOMMU_DESTROY`` of
an object in use is EBUSY and closing /dev/iommu frees dependents first.  The
vEVENTQ's file holds the context, as iommufd_ctx_get() does; unbinding a device
destroys its vDEVICE first (iommufd_device_pre_destroy()).

Deliberate differences from Linux: a guest command that fails conversion first
has the converted commands before it issued, so ``entry_num`` counts commands
really done (Linux counts them without issuing them); the later bounds on
``entry_num`` / ``entry_len`` / ``veventq_depth`` and the rejection of a read
shorter than a header (2026 fixes) are not modelled: such a read returns 0.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any, cast

from ..hw import smmuv3_regs as R
from ..hw.bits import dwords
from ..uapi import iommufd as uapi
from ..uapi.eventpoll import EPOLLIN, EPOLLRDNORM
from .arm_smmu_v3 import ArmSmmuDomain, ArmSmmuNestedDomain, ArmSmmuV3, Feat
from .base import EEXIST, EFAULT, EINVAL, EIO, ENOENT, EOPNOTSUPP, KernelError, fail
from .files import O_RDWR, File, FileOperations
from .iommufd import HwptNested, HwptPaging, IommufdCtx, IommufdDevice, IommufdObject

if TYPE_CHECKING:
    from .iommu import IommuDevice
    from .kernel import Kernel

E2BIG = _errno.E2BIG
ULONG_MAX = (1 << 64) - 1
INT_MAX = (1 << 31) - 1
CMDQ_BATCH_ENTRIES = 64                # BITS_PER_LONG: Linux issues guest commands in blocks
IOMMU_HWPT_FAULT_ID_VALID = uapi.IOMMU_HWPT_FAULT_ID_VALID
_CMD_SIZE = uapi.IommuViommuArmSmmuv3Invalidate.sizeof
_HDR_SIZE = uapi.IommufdVeventHeader.sizeof


def copy_struct_from_user(kernel: Kernel, ksize: int, uptr: int, usize: int) -> bytes:
    """copy_struct_from_user(): ``usize`` bytes at ``uptr`` as a ``ksize``-byte
    structure: a shorter one is zero-extended, a longer one must be zero beyond
    ``ksize`` (E2BIG); EFAULT if user memory cannot be read."""
    try:
        raw = kernel.user_read(uptr, usize) if usize else b""
    except KernelError:
        raise fail(EFAULT, f"user memory {uptr:#x}+{usize:#x} not readable") from None
    if usize > ksize:
        if any(raw[ksize:]):
            raise fail(E2BIG, "non-zero bytes beyond the structure")
        return raw[:ksize]
    return raw + bytes(ksize - usize)


# -- vIOMMU -------------------------------------------------------------------------------


class Viommu(IommufdObject):
    """struct iommufd_viommu + struct arm_vsmmu: a virtual SMMUv3 over ``hwpt``
    (a nest-parent paging HWPT) on the physical SMMU ``smmu``; ``vdevs`` maps a
    virtual StreamID to its :class:`Vdevice`, ``veventqs`` a vEVENTQ type to its
    queue."""

    kind = "viommu"

    def __init__(self, ctx: IommufdCtx, hwpt: HwptPaging, smmu: ArmSmmuV3, vtype: int) -> None:
        super().__init__(ctx)
        self.hwpt = hwpt
        self.smmu = smmu
        self.type = vtype
        self.vmid: int = cast(ArmSmmuDomain, hwpt.domain).vmid   # a stage-2 nest parent
        self.vdevs: dict[int, Vdevice] = {}
        self.veventqs: dict[int, Veventq] = {}
        hwpt.users += 1

    def destroy(self) -> None:
        """iommufd_viommu_destroy(): the HWPT is free to go."""
        self.hwpt.users -= 1

    # -- driver.c helpers --------------------------------------------------------------

    def find_dev(self, vsid: int) -> IommuDevice | None:
        """iommufd_viommu_find_dev(): the device with virtual id ``vsid``, or None."""
        vdev = self.vdevs.get(vsid)
        return vdev.idev.dev if vdev is not None else None

    def get_vdev_id(self, dev: IommuDevice) -> int | None:
        """iommufd_viommu_get_vdev_id(): the virtual id of ``dev`` (None: ENOENT)."""
        for vsid, vdev in self.vdevs.items():
            if vdev.idev.dev is dev:
                return vsid
        return None

    def report_event(self, vtype: int, data: bytes) -> int:
        """iommufd_viommu_report_event(): queue an event on the vEVENTQ of ``vtype``;
        0, or EOPNOTSUPP when there is no such queue (the driver then logs it)."""
        q = self.veventqs.get(vtype)
        if q is None:
            return EOPNOTSUPP
        q.report(data)
        return 0

    # -- arm_vsmmu ops -----------------------------------------------------------------

    def alloc_hwpt_nested(self, ctx: IommufdCtx, flags: int, data_type: int,
                          data: bytes | tuple[int, int]) -> HwptNested:
        """iommufd_viommu_alloc_hwpt_nested() + arm_vsmmu_alloc_domain_nested(): a
        nested HWPT from the guest's vSTE (``data``: the user data, or its
        ``(uptr, len)``), not yet in the context's table.  EOPNOTSUPP for flags or
        no data, EINVAL for another data type or too short, E2BIG for non-zero
        bytes past the structure, EIO for a vSTE with bits the guest does not own."""
        if flags & ~IOMMU_HWPT_FAULT_ID_VALID:
            raise fail(EOPNOTSUPP, f"nested HWPT flags {flags:#x}")
        ulen = data[1] if isinstance(data, tuple) else len(data)
        if not ulen:
            raise fail(EOPNOTSUPP, "a nested HWPT needs data")
        if data_type != uapi.IOMMU_HWPT_DATA_ARM_SMMUV3:
            raise fail(EINVAL, f"data type {data_type} is not IOMMU_HWPT_DATA_ARM_SMMUV3")
        size = uapi.IommuHwptArmSmmuv3.sizeof
        if ulen < size:
            raise fail(EINVAL, f"data_len {ulen} below {size}")
        if isinstance(data, tuple):
            raw = copy_struct_from_user(ctx.kernel, size, data[0], ulen)
        elif any(data[size:]):
            raise fail(E2BIG, "non-zero bytes beyond the vSTE")
        else:
            raw = bytes(data[:size])
        ste = tuple(dwords(raw))
        try:
            s0, s1 = self.smmu.validate_vste(ste)
        except KernelError:
            raise fail(EIO, f"invalid vSTE {ste[0]:#x} {ste[1]:#x}") from None
        domain = ArmSmmuNestedDomain(self.smmu, cast(ArmSmmuDomain, self.hwpt.domain), (s0, s1))
        domain.vsmmu = self                            # type: ignore[attr-defined]
        domain.parent = self.hwpt.domain
        hwpt = HwptNested(ctx, self.hwpt, domain, self)
        try:
            ctx.msi.hwpt_init(hwpt)
        except BaseException:
            hwpt.destroy()
            raise
        return hwpt

    def convert_user_cmd(self, d0: int, d1: int) -> tuple[int, int]:
        """arm_vsmmu_convert_user_cmd(): the command the physical SMMU gets (EIO for
        a command the guest may not issue or an unknown virtual StreamID)."""
        op = R.CMD_OP.get(d0)
        Op = R.Opcode
        if op == Op.TLBI_NSNH_ALL:
            return Op.TLBI_NH_ALL | R.CMD_TLBI_VMID(self.vmid), 0
        if op in (Op.TLBI_NH_VA, Op.TLBI_NH_VAA, Op.TLBI_NH_ALL, Op.TLBI_NH_ASID):
            return R.CMD_TLBI_VMID.put(d0, self.vmid), d1
        if op in (Op.ATC_INV, Op.CFGI_CD, Op.CFGI_CD_ALL):
            vsid = R.CMD_SID.get(d0)
            dev = self.find_dev(vsid)
            if dev is None:
                raise fail(EIO, f"virtual StreamID {vsid:#x} has no vDEVICE")
            return R.CMD_SID.put(d0, self.smmu.masters[dev].sid), d1
        raise fail(EIO, f"guest command {op:#04x} is not allowed")

    def cache_invalidate(self, cmds: list[tuple[int, int]]) -> tuple[int, KernelError | None]:
        """arm_vsmmu_cache_invalidate(): convert and issue the guest's commands in
        blocks of CMDQ_BATCH_ENTRIES - 1 (each ending with a CMD_SYNC).  Returns
        how many are done and the error that stopped it (None: all done).

        A command that fails to convert first has the converted ones before it
        issued (Linux counts them as done without issuing them)."""
        last = 0
        out: list[tuple[int, int]] = []
        for cur, (d0, d1) in enumerate(cmds):
            try:
                out.append(self.convert_user_cmd(d0, d1))
            except KernelError as e:
                err = self._issue(out)
                if err is not None:
                    return max(cur - 1, 0), err
                return cur, e
            if cur + 1 != len(cmds) and cur + 1 - last != CMDQ_BATCH_ENTRIES - 1:
                continue
            err = self._issue(out)
            if err is not None:
                return cur, err                        # Linux: cur - 1 after cur++
            out, last = [], cur + 1
        return len(cmds), None

    def _issue(self, cmds: list[tuple[int, int]]) -> KernelError | None:
        if not cmds:
            return None
        try:
            self.smmu.cmdq_issue_cmdlist(cmds)
        except KernelError as e:
            return e
        return None


class Vdevice(IommufdObject):
    """struct iommufd_vdevice: bound device ``idev`` known to ``viommu`` by ``virt_id``."""

    kind = "vdevice"

    def __init__(self, ctx: IommufdCtx, viommu: Viommu, idev: IommufdDevice,
                 virt_id: int) -> None:
        super().__init__(ctx)
        self.viommu = viommu
        self.idev = idev
        self.virt_id = virt_id
        viommu.users += 1
        viommu.vdevs[virt_id] = self
        idev.vdev = self

    def destroy(self) -> None:
        """iommufd_vdevice_destroy()."""
        if self.viommu.vdevs.get(self.virt_id) is self:
            del self.viommu.vdevs[self.virt_id]
        self.viommu.users -= 1
        if getattr(self.idev, "vdev", None) is self:
            self.idev.vdev = None


# -- vEVENTQ --------------------------------------------------------------------------------


class _Vevent:
    """struct iommufd_vevent: a header and the event's data (None: LOST_EVENTS)."""

    __slots__ = ("flags", "sequence", "data")

    def __init__(self, flags: int, data: bytes | None) -> None:
        self.flags, self.sequence, self.data = flags, 0, data


class Veventq(IommufdObject, FileOperations):
    """struct iommufd_veventq and its file ``[iommufd-viommu-event]``."""

    kind = "veventq"

    def __init__(self, ctx: IommufdCtx, viommu: Viommu, vtype: int, depth: int) -> None:
        super().__init__(ctx)
        self.viommu = viommu
        self.type = vtype
        self.depth = depth
        self.deliver: list[_Vevent] = []
        self.num_events = 0
        self.sequence = 0
        self.lost = _Vevent(uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS, None)
        self.file: File | None = None
        self.ctx_file: File | None = None
        viommu.users += 1
        viommu.veventqs[vtype] = self

    def destroy(self) -> None:
        """iommufd_veventq_destroy(): pending events go, the vIOMMU is free."""
        self.deliver.clear()
        self.num_events = 0
        if self.viommu.veventqs.get(self.type) is self:
            del self.viommu.veventqs[self.type]
        self.viommu.users -= 1

    # -- producer (iommufd_viommu_report_event + iommufd_vevent_handler) ----------------

    def report(self, data: bytes) -> None:
        if self.num_events == self.depth:
            ev = self.lost
        else:
            ev = _Vevent(0, bytes(data))
            self.num_events += 1
        if self.deliver and self.deliver[-1] is self.lost:
            self.deliver.pop()
        self.deliver.append(ev)
        ev.sequence = self.sequence
        self.sequence = (self.sequence + 1) & INT_MAX

    # -- file operations ------------------------------------------------------------------

    def read(self, file: File, count: int = 4096) -> bytes:
        """iommufd_veventq_fops_read(): whole events (header, then data) while they
        fit in ``count``; a trailing LOST_EVENTS header alone."""
        out = bytearray()
        while self.deliver:
            ev = self.deliver[0]
            room = count - len(out)
            if _HDR_SIZE > room or (ev.data is not None and _HDR_SIZE + len(ev.data) > room):
                break
            self.deliver.pop(0)
            out += uapi.IommufdVeventHeader(flags=ev.flags, sequence=ev.sequence).pack()
            if ev.data is not None:
                out += ev.data
                self.num_events -= 1
        return bytes(out)

    def poll(self, file: File) -> int:
        """iommufd_eventq_fops_poll(): readable while events are queued."""
        return EPOLLIN | EPOLLRDNORM if self.deliver else 0

    def release(self, file: File) -> None:
        """iommufd_eventq_fops_release(): the file's hold on the queue and the context."""
        self.users -= 1
        if self.ctx_file is not None:
            ctx_file, self.ctx_file = self.ctx_file, None
            ctx_file.put()


# -- the arm-smmu-v3 side ---------------------------------------------------------------------


def _smmu_of(ctx: IommufdCtx, dev: Any) -> Any:
    return ctx.kernel.iommu.ops_for(dev)


def arm_smmu_get_viommu_size(smmu: object, vtype: int) -> bool:
    """arm_smmu_get_viommu_size() != 0: an SMMU with nesting, and the ARM_SMMUV3 type
    (the model's SMMUs are coherent, so canwbs holds); ``smmu`` is the device's IOMMU
    driver (:meth:`IommuCore.ops_for`), anything but an :class:`ArmSmmuV3` is False."""
    return (isinstance(smmu, ArmSmmuV3) and bool(smmu.features & Feat.NESTING)
            and vtype == uapi.IOMMU_VIOMMU_TYPE_ARM_SMMUV3)


# -- ioctls ---------------------------------------------------------------------------------


def _get(ctx: IommufdCtx, oid: int, kind: str) -> Any:
    return ctx.get_object(oid, kind)


def ioctl_viommu_alloc(ctx: IommufdCtx, cmd: uapi.IommuViommuAlloc) -> None:
    """iommufd_viommu_alloc_ioctl()."""
    if cmd.flags or cmd.type == uapi.IOMMU_VIOMMU_TYPE_DEFAULT:
        raise fail(EOPNOTSUPP, "vIOMMU flags or default type")
    idev = _get(ctx, cmd.dev_id, "device")
    try:
        smmu: ArmSmmuV3 = _smmu_of(ctx, idev.dev)     # checked just below
        if not arm_smmu_get_viommu_size(smmu, cmd.type):
            raise fail(EOPNOTSUPP, f"no vIOMMU of type {cmd.type} for {idev.dev}")
        hwpt = _get(ctx, cmd.hwpt_id, "hwpt_paging")
        try:
            if not hwpt.nest_parent:
                raise fail(EINVAL, "the vIOMMU's HWPT must be a nesting parent")
            if getattr(hwpt.domain, "smmu", None) is not smmu:
                raise fail(EINVAL, "the nesting parent is on another SMMU")
            viommu = Viommu(ctx, hwpt, smmu, cmd.type)
            cmd.out_viommu_id = ctx.add(viommu)
        finally:
            ctx.put_object(hwpt)
    finally:
        ctx.put_object(idev)


def ioctl_vdevice_alloc(ctx: IommufdCtx, cmd: uapi.IommuVdeviceAlloc) -> None:
    """iommufd_vdevice_alloc_ioctl()."""
    if cmd.virt_id > ULONG_MAX:
        raise fail(EINVAL, "virt_id")
    viommu = _get(ctx, cmd.viommu_id, "viommu")
    try:
        idev = _get(ctx, cmd.dev_id, "device")
        try:
            if _smmu_of(ctx, idev.dev) is not viommu.smmu:
                raise fail(EINVAL, f"{idev.dev} is not behind the vIOMMU's SMMU")
            if getattr(idev, "vdev", None) is not None:
                raise fail(EEXIST, f"{idev.dev} already has a vDEVICE")
            if cmd.virt_id in viommu.vdevs:
                raise fail(EEXIST, f"virtual id {cmd.virt_id:#x} is taken")
            vdev = Vdevice(ctx, viommu, idev, cmd.virt_id)
            try:
                cmd.out_vdevice_id = ctx.add(vdev)
            except BaseException:
                vdev.destroy()
                raise
        finally:
            ctx.put_object(idev)
    finally:
        ctx.put_object(viommu)


def ioctl_hwpt_invalidate(ctx: IommufdCtx, cmd: uapi.IommuHwptInvalidate) -> None:
    """iommufd_hwpt_invalidate(): ``entry_num`` says how many entries were handled,
    also when the call fails."""
    want = cmd.entry_num
    cmd.entry_num = 0
    if getattr(cmd, "__reserved"):
        raise _respond(fail(EOPNOTSUPP, "reserved member set"))
    if want and (not cmd.data_uptr or not cmd.entry_len):
        raise _respond(fail(EINVAL, "entries without data_uptr or entry_len"))
    obj = ctx.objects.get(cmd.hwpt_id)
    if obj is None:
        raise _respond(fail(ENOENT, f"no object {cmd.hwpt_id}"))
    if obj.kind == "hwpt_nested":
        # arm-smmu-v3 nested domains have no cache_invalidate_user (the vIOMMU does it).
        raise _respond(fail(EOPNOTSUPP, "nested HWPT cannot invalidate: use its vIOMMU"))
    if obj.kind != "viommu":
        raise _respond(fail(EINVAL, f"object {cmd.hwpt_id} is a {obj.kind}"))
    obj.users += 1
    try:
        # iommu_copy_struct_from_full_user_array()
        if cmd.data_type != uapi.IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3:
            raise _respond(fail(EINVAL, f"data type {cmd.data_type}"))
        if not want:
            raise _respond(fail(EINVAL, "no entries"))
        cmds = []
        for i in range(want):
            raw = copy_struct_from_user(ctx.kernel, _CMD_SIZE,
                                        cmd.data_uptr + i * cmd.entry_len, cmd.entry_len)
            d = dwords(raw)
            cmds.append((d[0], d[1]))
        done, err = cast(Viommu, obj).cache_invalidate(cmds)    # its kind is "viommu"
        cmd.entry_num = done
        if err is not None:
            raise _respond(err)
    except KernelError as e:
        raise _respond(e) from None
    finally:
        obj.users -= 1


def _respond(e: KernelError) -> KernelError:
    """Mark an error whose call still writes the structure back (iommufd_ucmd_respond
    before returning the error)."""
    e.respond = True                                   # type: ignore[attr-defined]
    return e


def ioctl_veventq_alloc(ctx: IommufdCtx, cmd: uapi.IommuVeventqAlloc) -> None:
    """iommufd_veventq_alloc(): the queue and its file, installed at the lowest free fd."""
    if cmd.flags or getattr(cmd, "__reserved") or cmd.type == uapi.IOMMU_VEVENTQ_TYPE_DEFAULT:
        raise fail(EOPNOTSUPP, "vEVENTQ flags, reserved member or default type")
    if not cmd.veventq_depth:
        raise fail(EINVAL, "zero depth")
    viommu = _get(ctx, cmd.viommu_id, "viommu")
    try:
        if cmd.type in viommu.veventqs:
            raise fail(EEXIST, f"the vIOMMU already has a vEVENTQ of type {cmd.type}")
        files = ctx.kernel.files
        files.alloc_fd()                               # EMFILE before anything changes
        q = Veventq(ctx, viommu, cmd.type, cmd.veventq_depth)
        try:
            oid = ctx.add(q)
        except BaseException:
            q.destroy()
            raise
        file = File(ctx.kernel, q, O_RDWR, private_data=q)
        q.file = file
        q.users += 1                                   # the file's hold
        ctx_file = _ctx_file(ctx)
        if ctx_file is not None:
            q.ctx_file = ctx_file.get()                # iommufd_ctx_get()
        cmd.out_veventq_id = oid
        cmd.out_veventq_fd = files.install(file, cloexec=True)
    finally:
        ctx.put_object(viommu)


def _ctx_file(ctx: IommufdCtx) -> File | None:
    """The /dev/iommu file of the context (the process's descriptor for it)."""
    f: File | None = getattr(ctx, "file", None)
    if f is not None:
        return f
    for f in ctx.kernel.files.open_files().values():
        if f.private_data is ctx and not f.released:
            return f
    return None


def register(ctx_cls: type[IommufdCtx]) -> None:
    """Add the vIOMMU ioctls to /dev/iommu (called from iommufd_init())."""
    ctx_cls.register_op(uapi.IOMMU_VIOMMU_ALLOC, "out_viommu_id", ioctl_viommu_alloc)
    ctx_cls.register_op(uapi.IOMMU_VDEVICE_ALLOC, "virt_id", ioctl_vdevice_alloc)
    ctx_cls.register_op(uapi.IOMMU_HWPT_INVALIDATE, "__reserved", ioctl_hwpt_invalidate)
    ctx_cls.register_op(uapi.IOMMU_VEVENTQ_ALLOC, "out_veventq_fd", ioctl_veventq_alloc)


__all__ = ["Vdevice", "Veventq", "Viommu", "register"]
