"""The MSI core (kernel/irq/msi.c) and the PCI/MSI layer (drivers/pci/msi/).

An :class:`MsiDesc` describes one vector of a device: its msi_index, the
message last written (the cached message), and the IOMMU IOVA and shift the
IOMMU layer chose for it (``iommu_msi_iova`` / ``iommu_msi_shift``, as in
Linux, the IOVA stored shifted).  The PCI/MSI domain sits on top of an MSI
parent (the ITS, or the x86 vector / remapping domain): allocating vectors
creates descriptors, allocates them through the hierarchy and activates
them early, which composes the message (the topmost level with an
``irq_compose_msi_msg`` builds it and :func:`msi_msg_set_addr` applies the
IOMMU's answer) and writes it into the device (MSI capability or MSI-X
table, with the vector masked while its entry changes).  Changing affinity
re-composes and re-writes the message unless the parent answered
IRQ_SET_MASK_OK_DONE — except under the per-vector MSI design, where
:meth:`PciMsiLayer.force_rewrite` writes the message again after every
successful affinity change (from /proc, kernel code or the KVM vCPU path),
looking the address up in the per-vector table, because the chip's "done"
says nothing about an address userspace may have changed since.

The driver-facing calls follow Linux: ``pci_alloc_irq_vectors`` and the
freeing calls as in 6.1 (drivers/pci/msi/msi.c), ``pci_msix_alloc_irq_at`` /
``pci_msix_free_irq`` as introduced in 6.2.  Arguments are checked in
Linux's order with its errnos, and a call that fails leaves descriptors,
the device and the parent domain as they were.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .._repr import bounded, short
from ..core import pci_formats as X
from ..hw import pci as P
from .base import EBUSY, EINVAL, ENOSPC, ENOTSUPP, ERANGE, KernelError, cpumask_arg, fail
from .irq import (
    IRQ_SET_MASK_OK_DONE,
    IrqChip,
    IrqData,
    IrqDomain,
    IrqDomainOps,
)

if TYPE_CHECKING:
    from .gic import VcpuInfo
    from .iommufd_msi import PerVectorMsi
    from .irq import IrqAllocArg
    from .kernel import Kernel
    from .pci import PciDev

#: An MSI-X entry's four 32-bit words, in order: address low / high, data, vector control.
_ENTRY_WORDS = (X.MSIX_ENTRY_ADDR_LO, X.MSIX_ENTRY_ADDR_HI, X.MSIX_ENTRY_DATA, X.MSIX_ENTRY_CTRL)


@dataclass(frozen=True)
class MsiMsg:
    """struct msi_msg."""

    address_lo: int = 0
    address_hi: int = 0
    data: int = 0

    @property
    def address(self) -> int:
        return self.address_hi << 32 | self.address_lo

    @classmethod
    def of(cls, address: int, data: int) -> MsiMsg:
        return cls(address & 0xFFFF_FFFF, address >> 32, data & 0xFFFF_FFFF)


@dataclass(eq=False)
class MsiDesc:
    """struct msi_desc: one MSI / MSI-X vector of a device.

    Fields: ``dev`` (the pci_dev), ``msi_index`` (the vector's index in the MSI-X
    table, or in the MSI block), ``irq`` (its Linux IRQ, 0 before allocation),
    ``msg`` (the :class:`MsiMsg` last written to the device: a cache, as Linux's),
    ``iommu_msi_iova`` / ``iommu_msi_shift`` (the IOVA the IOMMU layer chose for the
    doorbell, stored >> shift; shift 0: none, the doorbell PA is used -- read it as
    :attr:`iommu_msi_addr`), ``affinity`` (the CPU set it was allocated with; None:
    any), ``managed`` (kernel-managed affinity, ``PCI_IRQ_AFFINITY``), ``is_msix``,
    ``msix_ctrl`` (the cached MSI-X Vector Control word: bit 0 = masked),
    ``iommu_release`` (undoes what the IOMMU prepared, when the vector is freed),
    ``rewrite_masked`` (masked by a failed per-vector forced rewrite).
    """

    dev: PciDev
    msi_index: int
    irq: int = 0
    msg: MsiMsg = field(default_factory=MsiMsg)       # the message last written (cache)
    iommu_msi_iova: int = 0                           # IOVA >> shift
    iommu_msi_shift: int = 0
    affinity: frozenset[int] | None = None
    managed: bool = False
    is_msix: bool = True
    msix_ctrl: int = 1                                # cached vector control (masked)
    iommu_release: Any = None                         # undoes what the IOMMU prepared
    rewrite_masked: bool = False                      # masked by a failed forced rewrite

    def set_iommu_msi_iova(self, iova: int, shift: int) -> None:
        """msi_desc_set_iommu_msi_iova()."""
        self.iommu_msi_iova = iova >> shift if shift else 0
        self.iommu_msi_shift = shift

    @property
    def iommu_msi_addr(self) -> int | None:
        """The IOVA the IOMMU layer chose (None: no translation, the PA is used)."""
        return self.iommu_msi_iova << self.iommu_msi_shift if self.iommu_msi_shift else None

    def __repr__(self) -> str:
        dev = getattr(self.dev, "bdf", None) or short(self.dev)
        return bounded(f"<msi_desc {dev} #{self.msi_index} irq={self.irq} "
                       f"msg={self.msg.address:#x}/{self.msg.data:#x}>")


def msi_msg_set_addr(desc: MsiDesc | None, msi_addr: int) -> int:
    """msi_msg_set_addr(): the address the device must write, given the doorbell PA.

    With an IOMMU IOVA and shift s it is (iova with the low s bits cleared) |
    (PA & ((1 << s) - 1)); shift 0 means the PA itself.
    """
    if desc is None or not desc.iommu_msi_shift:
        return msi_addr
    s = desc.iommu_msi_shift
    return (desc.iommu_msi_iova << s) | (msi_addr & ((1 << s) - 1))


def irq_chip_compose_msi_msg(d: IrqData) -> MsiMsg:
    """irq_chip_compose_msi_msg(): the topmost level able to compose does it
    (the ITS; with interrupt remapping the IR level, not the vector below it)."""
    pos: IrqData | None = d
    while pos is not None:                      # down the levels, top first
        chip = pos.chip
        if chip is not None and chip.irq_compose_msi_msg is not None:
            msg: MsiMsg = chip.irq_compose_msi_msg(pos)
            return msg
        pos = pos.parent_data
    raise fail(EINVAL, f"IRQ {d.irq}: no level composes MSI messages")


class MsiType(enum.Flag):
    """PCI_IRQ_* flags of pci_alloc_irq_vectors()."""

    MSI = 1
    MSIX = 2
    AFFINITY = 4


@dataclass
class MsiAllocInfo:
    """msi_alloc_info_t: what the parent domains need to allocate a vector."""

    dev: PciDev
    desc: MsiDesc
    parent_data: Any = None       # the parent's per-device state (the ITS's its_device)


class PciMsiChip(IrqChip):
    """The PCI-MSI / PCI-MSI-X irq_chip: masks in the device, messages written to it."""

    name = "PCI-MSI"

    def __init__(self, layer: PciMsiLayer) -> None:
        self.layer = layer

    def irq_mask(self, d: IrqData) -> None:
        self.layer.mask_vector(d.common.msi_desc, True)
        super().irq_mask(d)

    def irq_unmask(self, d: IrqData) -> None:
        desc = d.common.msi_desc
        if desc is not None and desc.rewrite_masked:
            return          # per-vector: no address to aim at; stays masked (device and ITS)
        super().irq_unmask(d)
        self.layer.mask_vector(desc, False)

    def irq_write_msi_msg(self, d: IrqData, msg: MsiMsg) -> None:
        self.layer.write_msg(d.common.msi_desc, msg)

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """msi_domain_set_affinity(): ask the parent; rewrite the message unless DONE
        (per-vector design: rewritten even then, see :meth:`PciMsiLayer.force_rewrite`).

        Per-vector design: the vector's table entry is looked up first; a started
        vector without one is refused with ENOENT and nothing changes (no MOVI,
        affinity unchanged).  The message is then composed from that entry."""
        desc = d.common.msi_desc
        saved = self.layer.lookup_first(d)
        try:
            parent = d.parent_data
            assert parent is not None and parent.chip is not None   # the PCI/MSI level has one
            ret = parent.chip.irq_set_affinity(parent, mask, force)
        except BaseException:
            if saved is not None:
                desc.set_iommu_msi_iova(*saved)
            raise
        if ret >= 0 and ret != IRQ_SET_MASK_OK_DONE:
            if saved is not None:
                self.layer.force_rewrite(desc)
            else:
                msg = irq_chip_compose_msi_msg(d)
                self.irq_write_msi_msg(d, msg)
        elif ret == IRQ_SET_MASK_OK_DONE:
            self.layer.force_rewrite(desc)
        elif saved is not None:
            desc.set_iommu_msi_iova(*saved)
        return ret

    def irq_set_vcpu_affinity(self, d: IrqData, info: VcpuInfo) -> None:
        """irq_chip_set_vcpu_affinity_parent(), then the per-vector forced rewrite
        (the KVM vLPI map / move path changes the interrupt behind VFIO's back).
        Per-vector: mapping or moving a started vector without a table entry is
        refused with ENOENT before the parent is asked (no VMAPTI / VMOVI sent);
        taking it back from the vCPU (UNMAP_VLPI) is never refused — KVM cannot
        keep it — and the rewrite after it masks a vector without an entry."""
        from .gic import VcpuCmd

        desc = d.common.msi_desc
        if getattr(info, "cmd", None) == VcpuCmd.UNMAP_VLPI:
            super().irq_set_vcpu_affinity(d, info)
            self.layer.force_rewrite(desc)
            return
        saved = self.layer.lookup_first(d)
        try:
            super().irq_set_vcpu_affinity(d, info)
        except BaseException:
            if saved is not None:
                desc.set_iommu_msi_iova(*saved)
            raise
        self.layer.force_rewrite(desc)


class PciMsiDomainOps(IrqDomainOps):
    """The msi_domain_ops of a PCI/MSI domain."""

    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: IrqAllocArg) -> None:
        arg = cast(MsiAllocInfo, arg)                 # what _alloc_desc_irq passes
        domain.alloc_irqs_parent(virq, nr, arg)
        for i in range(nr):
            desc = arg.desc
            hwirq = desc.msi_index | desc.dev.rid << 11       # pci_msi_domain_calc_hwirq()
            d = domain.set_hwirq_and_chip(virq + i, hwirq, domain.host_data.chip)
            d.common.msi_desc = desc
            desc.irq = virq + i

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        domain.free_irqs_parent(virq, nr)

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        """msi_domain_activate(): compose the message and write it to the device."""
        msg = irq_chip_compose_msi_msg(d)
        # this level's chip is PciMsiChip, which writes messages
        d.chip.irq_write_msi_msg(d, msg)  # type: ignore[union-attr, misc]

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        """msi_domain_deactivate(): an all-zero message."""
        d.chip.irq_write_msi_msg(d, MsiMsg())  # type: ignore[union-attr, misc]  # as above


def spread_affinity(nvec: int, cpus: frozenset[int]) -> list[frozenset[int]]:
    """irq_create_affinity_masks(), simply: vectors spread evenly over the CPUs."""
    order = sorted(cpus)
    if nvec <= len(order):
        per, extra = divmod(len(order), nvec)
        out, start = [], 0
        for v in range(nvec):
            n = per + (1 if v < extra else 0)
            out.append(frozenset(order[start : start + n]))
            start += n
        return out
    return [frozenset({order[v % len(order)]}) for v in range(nvec)]


MSI_ANY_INDEX = 0xFFFF_FFFF          # pci_msix_alloc_irq_at(): the first free entry


def _c_int(value: Any, what: str) -> int:
    """An ``unsigned int`` argument as the C callee sees it once it is stored in
    an ``int``: modulo 2**32, then signed (so -1 and 0xFFFFFFFF are the same)."""
    if not isinstance(value, int):
        raise fail(EINVAL, f"{what} must be an integer, not {value!r}")
    u32: int = value & 0xFFFF_FFFF
    return u32 - (1 << 32) if u32 >> 31 else u32


class PciMsiLayer:
    """The PCI/MSI layer over one MSI parent domain (``parent``).

    ``parent_prepare(dev, nvec)`` is the parent's msi_prepare (the ITS creates
    the device's ITT there); ``parent_release(dev)`` runs when the last
    vector of a device is freed.  ``chip_name`` is what /proc/interrupts shows
    for its interrupts ("ITS-MSI", "PCI-MSI", "IR-PCI-MSI"), ``handler_name``
    the flow handler name x86 shows after a dash ("edge"; default: "edge" on
    x86_64, none on arm64).  ``multi_msi`` (MSI_FLAG_MULTI_PCI_MSI) says the
    parent can give an MSI device more than one vector; ``msix_alloc_dyn``
    (MSI_FLAG_PCI_MSIX_ALLOC_DYN) that MSI-X vectors can be added and removed
    while MSI-X is on.

    Every call checks its arguments in Linux's order and fails with Linux's
    errno, and a call that fails leaves the device, its descriptors and the
    interrupt hierarchy as they were.
    """

    def __init__(self, kernel: Kernel, parent: IrqDomain, name: str = "PCI-MSI",
                 parent_prepare: Callable[[PciDev, int], object] | None = None,
                 parent_release: Callable[[PciDev], None] | None = None,
                 chip_name: str | None = None, handler_name: str | None = None,
                 multi_msi: bool = True, msix_alloc_dyn: bool = True) -> None:
        self.kernel = kernel
        self.chip = PciMsiChip(self)
        self.chip.name = chip_name or name
        if handler_name is None and getattr(kernel, "arch", "arm64") == "x86_64":
            handler_name = "edge"
        self.handler_name = handler_name
        self.multi_msi = multi_msi
        self.msix_alloc_dyn = msix_alloc_dyn
        self.domain = IrqDomain(kernel.irq, name, PciMsiDomainOps(), parent=parent,
                                host_data=self)
        self.parent_prepare = parent_prepare
        self.parent_release = parent_release
        self.stats = {"forced_rewrites": 0}

    def _warn(self, dev: PciDev, what: str) -> None:
        """A WARN_ON in the Linux path: the splat goes to dmesg."""
        self.kernel.printk(f"WARNING: {dev}: {what}")

    # -- device access (config space and the MSI-X table, through the bus) -----------

    def write_msg(self, desc: MsiDesc, msg: MsiMsg) -> None:
        """__pci_write_msi_msg(): MSI-X entries are rewritten with the vector masked."""
        dev = desc.dev
        if desc.is_msix:
            entry = dev.msix_table + X.MSIX_ENTRY_SIZE * desc.msi_index
            unmasked = not desc.msix_ctrl & X.MSIX_CTRL_MASKBIT
            if unmasked:
                dev.mmio_write(entry + X.MSIX_ENTRY_CTRL, desc.msix_ctrl | X.MSIX_CTRL_MASKBIT)
            dev.mmio_write(entry + X.MSIX_ENTRY_ADDR_LO, msg.address_lo)
            dev.mmio_write(entry + X.MSIX_ENTRY_ADDR_HI, msg.address_hi)
            dev.mmio_write(entry + X.MSIX_ENTRY_DATA, msg.data)
            if unmasked:
                dev.mmio_write(entry + X.MSIX_ENTRY_CTRL, desc.msix_ctrl)
        else:
            cap = cast(int, dev.msi_cap)           # an MSI (not MSI-X) vector: the function has MSI
            is64 = dev.cfg_read(cap + P.MSI_FLAGS, 2) & P.MSI_FLAGS_64BIT
            dev.cfg_write(cap + P.MSI_ADDR_LO, msg.address_lo)
            if is64:
                dev.cfg_write(cap + P.MSI_ADDR_HI, msg.address_hi)
            dev.cfg_write(cap + (P.MSI_DATA_64 if is64 else P.MSI_DATA_32), msg.data & 0xFFFF, 2)
        desc.msg = msg

    def _msi_mask_reg(self, dev: Any) -> int | None:
        """Config offset of the MSI Mask Bits register (None: no per-vector masking)."""
        flags = dev.cfg_read(dev.msi_cap + P.MSI_FLAGS, 2)
        if not flags & P.MSI_FLAGS_MASKBIT:
            return None
        reg: int = dev.msi_cap + (P.MSI_MASK_64 if flags & P.MSI_FLAGS_64BIT else P.MSI_MASK_32)
        return reg

    def _msi_multi_mask(self, dev: Any) -> int:
        """msi_multi_mask(): a mask bit for every vector the function is capable of."""
        multi_cap = (dev.cfg_read(dev.msi_cap + P.MSI_FLAGS, 2) & P.MSI_FLAGS_QMASK) >> 1
        return 0xFFFF_FFFF if multi_cap >= 5 else (1 << (1 << multi_cap)) - 1

    def mask_vector(self, desc: MsiDesc, mask: bool) -> None:
        dev = desc.dev
        if desc.is_msix:
            desc.msix_ctrl = (desc.msix_ctrl & ~X.MSIX_CTRL_MASKBIT
                              | (X.MSIX_CTRL_MASKBIT if mask else 0))
            dev.mmio_write(dev.msix_table + X.MSIX_ENTRY_SIZE * desc.msi_index
                           + X.MSIX_ENTRY_CTRL, desc.msix_ctrl)
        else:
            off = self._msi_mask_reg(dev)
            if off is None:                          # no per-vector masking: parent only
                return
            bits = dev.cfg_read(off)
            dev.cfg_write(off, bits | 1 << desc.msi_index if mask
                          else bits & ~(1 << desc.msi_index))

    # -- the per-vector design's forced rewrite ------------------------------------------

    def per_vector_hooks(self, dev: PciDev) -> PerVectorMsi | None:
        """The iommufd MSI design of the context owning ``dev``'s group if it is
        "per-vector" (attached or not: a bound device in the blocked domain too)."""
        iommu = getattr(self.kernel, "iommu", None)
        group = iommu.group_for(dev) if iommu is not None else None
        hooks = getattr(getattr(group, "owner", None), "msi", None)
        return hooks if getattr(hooks, "name", None) == "per-vector" else None

    def lookup_first(self, d: IrqData) -> tuple[int, int] | None:
        """Per-vector design, before an affinity change reaches the parent: look
        the vector's entry up (ENOENT for none, raised only once the interrupt
        is started — at startup :meth:`force_rewrite` masks it instead).
        Returns the descriptor's previous (IOVA, shift) to restore on a parent
        failure, None when the design does not apply."""
        desc = d.common.msi_desc
        if desc is None or not desc.irq or not d.common.activated:
            return None
        hooks = self.per_vector_hooks(desc.dev)
        if hooks is None:
            return None
        saved = (desc.iommu_msi_addr or 0, desc.iommu_msi_shift)
        try:
            hooks.lookup(desc)
        except KernelError:
            if d.common.started:
                raise
            return None
        return saved

    def force_rewrite(self, desc: MsiDesc | None) -> bool:
        """Write ``desc``'s message to the device again, freshly composed (design
        per-vector only; returns whether a message was written).

        The prepare step is the table lookup (no allocation, no page-table
        change); the compose is the parent's (the ITS's) as at activation.  A
        vector whose table entry was cleared cannot be composed: it is masked in
        the device and the kernel log says why — no fallback to another address —
        until a later forced rewrite finds an entry again and unmasks it.
        """
        if desc is None or not desc.irq:
            return False
        hooks = self.per_vector_hooks(desc.dev)
        if hooks is None:
            return False
        d = self.kernel.irq.desc(desc.irq).irq_data
        if not d.common.activated:
            return False
        try:
            hooks.lookup(desc)
        except KernelError as e:
            if not desc.rewrite_masked:
                d.chip.irq_mask(d)  # type: ignore[union-attr]  # an activated vector has its chip
            desc.rewrite_masked = True
            self.kernel.printk(f"{desc.dev}: MSI vector {desc.msi_index} (IRQ {desc.irq}) "
                               f"masked: no per-vector MSI address ({e})")
            return False
        self.stats["forced_rewrites"] += 1
        self.write_msg(desc, irq_chip_compose_msi_msg(d))
        if desc.rewrite_masked:
            # It has an address again: unmask what the failed rewrite masked, unless
            # the interrupt is disabled (then enable_irq unmasks it).
            desc.rewrite_masked = False
            if not self.kernel.irq.desc(desc.irq).depth:
                d.chip.irq_unmask(d)  # type: ignore[union-attr]  # as above
        return True

    # -- allocation ------------------------------------------------------------------

    def _alloc_desc_irq(self, dev: PciDev, desc: MsiDesc) -> int:
        info = MsiAllocInfo(dev, desc, getattr(dev, "msi_parent_data", None))
        virq = self.kernel.irq.domain_alloc_irqs(self.domain, 1, info)
        irq_desc = self.kernel.irq.desc(virq)
        irq_desc.handler_name = self.handler_name
        d = irq_desc.irq_data
        d.common.managed = desc.managed
        if desc.affinity:
            d.common.affinity = desc.affinity
        try:
            self.kernel.irq.activate(d)              # MSI_FLAG_ACTIVATE_EARLY
        except Exception:
            self.kernel.irq.domain_free_irqs(virq, 1)
            if desc.iommu_release is not None:
                desc.iommu_release(desc)
                desc.iommu_release = None
            raise
        return virq

    def _affinity_vectors(self, minvec: int, maxvec: int) -> int:
        """irq_calc_affinity_vectors() with no pre/post vectors: at most one
        vector per possible CPU."""
        ncpus: int = self.kernel.ncpus
        return min(ncpus, maxvec & 0xFFFF_FFFF)

    def alloc_irq_vectors(self, dev: PciDev, min_vecs: int, max_vecs: int,
                          flags: MsiType | int = MsiType.MSIX | MsiType.MSI) -> int:
        """pci_alloc_irq_vectors(_affinity)() of Linux 6.1: MSI-X if the flags ask
        for it and it works, else MSI; returns the number of vectors.

        The error is the one of the last mode tried: ENOSPC if the flags ask
        for neither MSI nor MSI-X, ERANGE when ``max_vecs < min_vecs``, EINVAL
        for no vectors asked for (``max_vecs`` 0, or ``min_vecs`` 0 for MSI),
        no such capability, or a mode already on, ENOSPC when fewer than
        ``min_vecs`` vectors are possible.  With PCI_IRQ_AFFINITY there is at
        most one vector per CPU, each managed and pinned.
        """
        minvec, maxvec = _c_int(min_vecs, "min_vecs"), _c_int(max_vecs, "max_vecs")
        if isinstance(flags, MsiType):
            flags = flags.value
        elif not isinstance(flags, int):
            raise fail(EINVAL, f"flags must be PCI_IRQ_* bits, not {flags!r}")
        affd = bool(flags & MsiType.AFFINITY.value)
        err: KernelError = fail(ENOSPC, f"{dev}: no MSI or MSI-X requested")
        for kind, enable in ((MsiType.MSIX, self._enable_msix_range),
                             (MsiType.MSI, self._enable_msi_range)):
            if not flags & kind.value:
                continue
            try:
                return enable(dev, minvec, maxvec, affd)
            except KernelError as e:
                err = e
        raise err

    def _enable_msix_range(self, dev: PciDev, minvec: int, maxvec: int, affd: bool) -> int:
        """__pci_enable_msix_range() + __pci_enable_msix()."""
        if maxvec < minvec:
            raise fail(ERANGE, f"{dev}: max_vecs {maxvec} < min_vecs {minvec}")
        if dev.msix_enabled:
            self._warn(dev, "MSI-X already enabled")
            raise fail(EINVAL, f"{dev}: MSI-X already enabled")
        nvec = maxvec
        while True:
            if affd:
                nvec = self._affinity_vectors(minvec, nvec)
                if nvec < minvec:
                    raise fail(ENOSPC, f"{dev}: only {nvec} CPUs for {minvec} vectors")
            if nvec < 1:                                 # pci_msi_supported()
                raise fail(EINVAL, f"{dev}: no vectors asked for")
            hwsize = dev.msix_vectors()
            if not hwsize:
                raise fail(EINVAL, f"{dev} has no MSI-X capability")
            if nvec > hwsize:
                if hwsize < minvec:
                    raise fail(ENOSPC, f"{dev}: only {hwsize} MSI-X vectors")
                nvec = hwsize
                continue
            if dev.msi_enabled:
                raise fail(EINVAL, f"{dev}: can't enable MSI-X (MSI IRQ already assigned)")
            self._enable(dev, MsiType.MSIX, nvec, affd)
            return nvec

    def _enable_msi_range(self, dev: PciDev, minvec: int, maxvec: int, affd: bool) -> int:
        """__pci_enable_msi_range()."""
        if minvec < 1:                                   # pci_msi_supported(dev, minvec)
            raise fail(EINVAL, f"{dev}: min_vecs must be at least 1 for MSI")
        if dev.msix_enabled:
            raise fail(EINVAL, f"{dev}: can't enable MSI (MSI-X already enabled)")
        if maxvec < minvec:
            raise fail(ERANGE, f"{dev}: max_vecs {maxvec} < min_vecs {minvec}")
        if dev.msi_enabled:
            self._warn(dev, "MSI already enabled")
            raise fail(EINVAL, f"{dev}: MSI already enabled")
        count = dev.msi_vectors()
        if not count:
            raise fail(EINVAL, f"{dev} has no MSI capability")
        if count < minvec:
            raise fail(ENOSPC, f"{dev}: only {count} MSI vectors")
        nvec = min(count, maxvec)
        while True:
            if affd:
                nvec = self._affinity_vectors(minvec, nvec)
                if nvec < minvec:
                    raise fail(ENOSPC, f"{dev}: only {nvec} CPUs for {minvec} vectors")
            if nvec > 1 and not self.multi_msi:          # pci_msi_domain_check_cap(): 1
                if 1 < minvec:
                    raise fail(ENOSPC, f"{dev}: {self.domain.name} gives MSI one vector")
                nvec = 1
                continue
            self._enable(dev, MsiType.MSI, nvec, affd)
            return nvec

    def _snapshot_device(self, dev: Any, is_msix: bool) -> tuple[Any, ...]:
        """What enabling touches in the function, to put back if it fails: the
        command register, the capability's control word and, for MSI, its
        message registers and mask bits (MSI-X entries: :meth:`_entry_words`)."""
        cmd = dev.cfg_read(P.COMMAND, 2)
        if is_msix:
            ctrl = dev.cfg_read(dev.msix_cap + P.MSIX_FLAGS, 2)
            return cmd, ctrl, None, None
        ctrl = dev.cfg_read(dev.msi_cap + P.MSI_FLAGS, 2)
        off = self._msi_mask_reg(dev)
        msg = [(o, dev.cfg_read(dev.msi_cap + o)) for o in self._msi_msg_regs(dev)]
        return cmd, ctrl, None if off is None else dev.cfg_read(off), msg

    @staticmethod
    def _msi_msg_regs(dev: Any) -> tuple[int, ...]:
        """Offsets of the MSI capability's message registers (64-bit or not)."""
        if dev.cfg_read(dev.msi_cap + P.MSI_FLAGS, 2) & P.MSI_FLAGS_64BIT:
            return P.MSI_ADDR_LO, P.MSI_ADDR_HI, P.MSI_DATA_64
        return P.MSI_ADDR_LO, P.MSI_DATA_32

    def _entry_words(self, dev: Any, index: int) -> list[int]:
        """The four words of MSI-X table entry ``index`` (address lo/hi, data, control)."""
        base = dev.msix_table + X.MSIX_ENTRY_SIZE * index
        return [dev.mmio_read(base + o) for o in _ENTRY_WORDS]

    def _restore_entry(self, dev: Any, index: int, words: list[int]) -> None:
        base = dev.msix_table + X.MSIX_ENTRY_SIZE * index
        ctrl = base + X.MSIX_ENTRY_CTRL
        dev.mmio_write(ctrl, words[3] | X.MSIX_CTRL_MASKBIT)   # masked while the message changes
        for o, w in zip(_ENTRY_WORDS[:3], words[:3], strict=True):
            dev.mmio_write(base + o, w)
        dev.mmio_write(ctrl, words[3])

    def _restore_device(self, dev: Any, is_msix: bool, snap: tuple[Any, ...],
                        entries: dict[int, list[int]]) -> None:
        cmd, ctrl, mask_bits, msg = snap
        if is_msix:
            for index, words in entries.items():
                self._restore_entry(dev, index, words)
            dev.cfg_write(dev.msix_cap + P.MSIX_FLAGS, ctrl, 2)
        else:
            dev.cfg_write(dev.msi_cap + P.MSI_FLAGS, ctrl, 2)
            for o, w in msg:
                dev.cfg_write(dev.msi_cap + o, w)
            off = self._msi_mask_reg(dev)
            if off is not None and mask_bits is not None:
                dev.cfg_write(off, mask_bits)
        dev.cfg_write(P.COMMAND, cmd, 2)

    def _enable(self, dev: PciDev, kind: MsiType, nvec: int, managed: bool) -> None:
        """msix_capability_init() / msi_capability_init(): all vectors or none."""
        is_msix = kind == MsiType.MSIX
        masks = spread_affinity(nvec, self.kernel.online_cpus) if managed else [None] * nvec
        descs = [MsiDesc(dev, i, affinity=masks[i], managed=managed, is_msix=is_msix)
                 for i in range(nvec)]
        snap = self._snapshot_device(dev, is_msix)
        vector_ctrl: dict[int, list[int]] = {}
        parent_data = dev.msi_parent_data
        done: list[MsiDesc] = []
        try:
            if is_msix:
                # msix_capability_init(): function-masked and enabled while entries are set up.
                dev.msix_control(enable=True, maskall=True)
                for desc in descs:
                    vector_ctrl[desc.msi_index] = self._entry_words(dev, desc.msi_index)
                    self.mask_vector(desc, True)
            else:
                # msi_capability_init(): the vectors start masked (all the function
                # can have), each unmasked when its interrupt starts up.
                off = self._msi_mask_reg(dev)
                if off is not None:
                    dev.cfg_write(off, dev.cfg_read(off) | self._msi_multi_mask(dev))
            if self.parent_prepare is not None:
                dev.msi_parent_data = self.parent_prepare(dev, dev.msix_vectors() if is_msix
                                                          else nvec)
            for desc in descs:
                self._alloc_desc_irq(dev, desc)
                dev.msi_descs[desc.msi_index] = desc
                done.append(desc)
        except Exception:
            for desc in done:
                self._free_desc(dev, desc)
            if (self.parent_release is not None and dev.msi_parent_data is not None
                    and parent_data is None):
                self.parent_release(dev)
            dev.msi_parent_data = parent_data
            self._restore_device(dev, is_msix, snap, vector_ctrl)
            raise
        if is_msix:
            dev.msix_control(enable=True, maskall=False)
            dev.msix_enabled = True
        else:
            dev.msi_control(enable=True, nvec=nvec)
            dev.msi_enabled = True

    def msix_alloc_irq_at(self, dev: PciDev, index: int | None = None,
                          affinity: Iterable[int] | None = None) -> tuple[int, int]:
        """pci_msix_alloc_irq_at(): one more MSI-X vector at ``index`` (None or
        MSI_ANY_INDEX: the first free entry); returns (index, virq).

        ENOTSUPP unless MSI-X is on and the domain allocates dynamically;
        ERANGE for an index beyond the table, EBUSY for one in use or a full
        table (the xarray's answers); EINVAL for an affinity with no online
        CPU.  ``affinity`` makes the vector managed, as an irq_affinity_desc does.
        """
        if not dev.msix_enabled or not self.msix_alloc_dyn or dev.msix_cap is None:
            raise fail(ENOTSUPP, f"{dev}: MSI-X is not on, or has no dynamic allocation")
        idx = MSI_ANY_INDEX if index is None else _c_int(index, "index") & 0xFFFF_FFFF
        aff = None
        if affinity is not None:
            aff = cpumask_arg(affinity, self.kernel.nr_cpumask_bits)
            if not aff & self.kernel.online_cpus:
                raise fail(EINVAL, f"{dev}: no online CPU in the affinity")
        n = dev.msix_vectors()
        if idx == MSI_ANY_INDEX:
            free = next((i for i in range(n) if i not in dev.msi_descs), None)
            if free is None:
                raise fail(EBUSY, f"{dev}: every MSI-X entry is in use")
            idx = free
        elif idx >= n:
            raise fail(ERANGE, f"{dev}: MSI-X index {idx} beyond the table of {n}")
        elif idx in dev.msi_descs:
            raise fail(EBUSY, f"{dev}: MSI-X index {idx} is in use")
        desc = MsiDesc(dev, idx, affinity=aff, managed=aff is not None)
        words = self._entry_words(dev, idx)
        parent_data = dev.msi_parent_data
        try:
            if parent_data is None and self.parent_prepare is not None:
                dev.msi_parent_data = self.parent_prepare(dev, n)    # msi_prepare, again
            self.mask_vector(desc, True)
            virq = self._alloc_desc_irq(dev, desc)
        except Exception:
            if parent_data is None and dev.msi_parent_data is not None:
                if self.parent_release is not None:
                    self.parent_release(dev)
                dev.msi_parent_data = None
            self._restore_entry(dev, idx, words)
            raise
        dev.msi_descs[idx] = desc
        return idx, virq

    def _free_desc(self, dev: PciDev, desc: MsiDesc) -> None:
        self.kernel.irq.domain_free_irqs(desc.irq, 1)
        if desc.iommu_release is not None:
            desc.iommu_release(desc)
            desc.iommu_release = None
        dev.msi_descs.pop(desc.msi_index, None)

    def _release_parent(self, dev: PciDev) -> None:
        if not dev.msi_descs and self.parent_release is not None \
                and dev.msi_parent_data is not None:
            self.parent_release(dev)
            dev.msi_parent_data = None

    def msix_free_irq(self, dev: PciDev, index: int) -> None:
        """pci_msix_free_irq(): free the MSI-X vector at ``index``; MSI-X stays on.

        Linux WARNs and does nothing for a negative index or a device whose
        domain cannot free MSI-X vectors one by one (MSI mode, or nothing
        on): the model prints the same warning and raises EINVAL, changing
        nothing.  No vector at ``index`` is nothing to do.  A vector whose
        handler is still requested is freed anyway (the handler goes with it).
        """
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            self._warn(dev, f"pci_msix_free_irq: bad index {index!r}")
            raise fail(EINVAL, f"{dev}: bad MSI-X index {index!r}")
        if not dev.msix_enabled or not self.msix_alloc_dyn or dev.msix_cap is None:
            self._warn(dev, "pci_msix_free_irq: not in MSI-X mode with dynamic allocation")
            raise fail(EINVAL, f"{dev}: not in MSI-X mode")
        desc = dev.msi_descs.get(index)
        if desc is None:
            return
        self._free_desc(dev, desc)
        self._release_parent(dev)

    def free_irq_vectors(self, dev: PciDev) -> None:
        """pci_free_irq_vectors() = pci_disable_msix() + pci_disable_msi().

        Nothing to do when neither mode is on (twice is fine).  MSI-X: every
        vector masked, MSI-X off, INTx back on, then the vectors freed; MSI:
        MSI off, INTx on, mask bits cleared, vectors freed.  Like Linux 6.1 it
        never fails: a vector whose handler is still requested is freed with
        it, and dmesg gets a WARNING for it.
        """
        if dev.msix_enabled:
            for desc in dev.msi_descs.values():
                self.mask_vector(desc, True)
            dev.msix_control(enable=False, maskall=False)
            dev.intx(True)
            dev.msix_enabled = False
        elif dev.msi_enabled:
            dev.msi_control(enable=False, nvec=1)
            dev.intx(True)
            dev.msi_enabled = False
            off = self._msi_mask_reg(dev)
            if off is not None:                      # returned unmasked, as found
                dev.cfg_write(off, dev.cfg_read(off) & ~self._msi_multi_mask(dev))
        else:
            return
        for desc in sorted(dev.msi_descs.values(), key=lambda x: x.msi_index):
            self._free_desc(dev, desc)
        self._release_parent(dev)

    def irq_vector(self, dev: PciDev, nr: int) -> int:
        """pci_irq_vector()."""
        desc = dev.msi_descs.get(nr) if isinstance(nr, int) else None
        if desc is None:
            raise fail(EINVAL, f"{dev}: no vector {nr}")
        irq: int = desc.irq
        return irq
