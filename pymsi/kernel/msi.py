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
IRQ_SET_MASK_OK_DONE.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .base import EBUSY, EINVAL, ENOSPC, fail
from .irq import (
    IRQ_SET_MASK_OK_DONE,
    IrqChip,
    IrqData,
    IrqDomain,
    IrqDomainOps,
)


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
    """struct msi_desc: one MSI / MSI-X vector of a device."""

    dev: Any
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

    def set_iommu_msi_iova(self, iova: int, shift: int) -> None:
        """msi_desc_set_iommu_msi_iova()."""
        self.iommu_msi_iova = iova >> shift if shift else 0
        self.iommu_msi_shift = shift

    @property
    def iommu_msi_addr(self) -> int | None:
        """The IOVA the IOMMU layer chose (None: no translation, the PA is used)."""
        return self.iommu_msi_iova << self.iommu_msi_shift if self.iommu_msi_shift else None


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
    pos = next((level for level in d.levels()
                if level.chip is not None and level.chip.irq_compose_msi_msg is not None), None)
    if pos is None:
        raise fail(EINVAL, f"IRQ {d.irq}: no level composes MSI messages")
    return pos.chip.irq_compose_msi_msg(pos)


class MsiType(enum.Flag):
    """PCI_IRQ_* flags of pci_alloc_irq_vectors()."""

    MSI = 1
    MSIX = 2
    AFFINITY = 4


@dataclass
class MsiAllocInfo:
    """msi_alloc_info_t: what the parent domains need to allocate a vector."""

    dev: Any
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
        super().irq_unmask(d)
        self.layer.mask_vector(d.common.msi_desc, False)

    def irq_write_msi_msg(self, d: IrqData, msg: MsiMsg) -> None:
        self.layer.write_msg(d.common.msi_desc, msg)

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """msi_domain_set_affinity(): ask the parent; rewrite the message unless DONE."""
        ret = d.parent_data.chip.irq_set_affinity(d.parent_data, mask, force)
        if ret >= 0 and ret != IRQ_SET_MASK_OK_DONE:
            msg = irq_chip_compose_msi_msg(d)
            self.irq_write_msi_msg(d, msg)
        return ret


class PciMsiDomainOps(IrqDomainOps):
    """The msi_domain_ops of a PCI/MSI domain."""

    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: MsiAllocInfo) -> None:
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
        d.chip.irq_write_msi_msg(d, msg)

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        """msi_domain_deactivate(): an all-zero message."""
        d.chip.irq_write_msi_msg(d, MsiMsg())


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


class PciMsiLayer:
    """The PCI/MSI layer over one MSI parent domain (``parent``).

    ``parent_prepare(dev, nvec)`` is the parent's msi_prepare (the ITS creates
    the device's ITT there); ``parent_release(dev)`` runs when the last
    vector of a device is freed.
    """

    multi_msi = True          # MSI_FLAG_MULTI_PCI_MSI: the parent can do multi-message MSI

    def __init__(self, kernel: Any, parent: IrqDomain, name: str = "PCI-MSI",
                 parent_prepare: Any = None, parent_release: Any = None) -> None:
        self.kernel = kernel
        self.chip = PciMsiChip(self)
        self.domain = IrqDomain(kernel.irq, name, PciMsiDomainOps(), parent=parent,
                                host_data=self)
        self.parent_prepare = parent_prepare
        self.parent_release = parent_release

    # -- device access (config space and the MSI-X table, through the bus) -----------

    def write_msg(self, desc: MsiDesc, msg: MsiMsg) -> None:
        """__pci_write_msi_msg(): MSI-X entries are rewritten with the vector masked."""
        dev = desc.dev
        if desc.is_msix:
            entry = dev.msix_table + 16 * desc.msi_index
            unmasked = not desc.msix_ctrl & 1
            if unmasked:
                dev.mmio_write(entry + 12, desc.msix_ctrl | 1)
            dev.mmio_write(entry, msg.address_lo)
            dev.mmio_write(entry + 4, msg.address_hi)
            dev.mmio_write(entry + 8, msg.data)
            if unmasked:
                dev.mmio_write(entry + 12, desc.msix_ctrl)
        else:
            cap = dev.msi_cap
            is64 = dev.cfg_read(cap + 2, 2) & (1 << 7)
            dev.cfg_write(cap + 4, msg.address_lo)
            if is64:
                dev.cfg_write(cap + 8, msg.address_hi)
            dev.cfg_write(cap + (0xC if is64 else 0x8), msg.data & 0xFFFF, 2)
        desc.msg = msg

    def mask_vector(self, desc: MsiDesc, mask: bool) -> None:
        dev = desc.dev
        if desc.is_msix:
            desc.msix_ctrl = (desc.msix_ctrl & ~1) | int(mask)
            dev.mmio_write(dev.msix_table + 16 * desc.msi_index + 12, desc.msix_ctrl)
        else:
            cap = dev.msi_cap
            flags = dev.cfg_read(cap + 2, 2)
            if not flags & (1 << 8):                 # no per-vector masking: parent only
                return
            off = cap + (0x10 if flags & (1 << 7) else 0xC)
            bits = dev.cfg_read(off)
            dev.cfg_write(off, bits | 1 << desc.msi_index if mask
                          else bits & ~(1 << desc.msi_index))

    # -- allocation ------------------------------------------------------------------

    def _alloc_desc_irq(self, dev: Any, desc: MsiDesc) -> int:
        info = MsiAllocInfo(dev, desc, getattr(dev, "msi_parent_data", None))
        virq = self.kernel.irq.domain_alloc_irqs(self.domain, 1, info)
        d = self.kernel.irq.desc(virq).irq_data
        d.common.managed = desc.managed
        if desc.affinity:
            d.common.affinity = desc.affinity
        try:
            self.kernel.irq.activate(d)              # MSI_FLAG_ACTIVATE_EARLY
        except Exception:
            self.kernel.irq.domain_free_irqs(virq, 1)
            raise
        return virq

    def alloc_irq_vectors(self, dev: Any, min_vecs: int, max_vecs: int,
                          flags: MsiType = MsiType.MSIX | MsiType.MSI) -> int:
        """pci_alloc_irq_vectors(_affinity)(): MSI-X if possible, else MSI; returns nvec."""
        if dev.msi_descs:
            raise fail(EINVAL, f"{dev} already has vectors")
        if not 1 <= min_vecs <= max_vecs:
            raise fail(EINVAL, "bad vector counts")
        errors = []
        for kind in (MsiType.MSIX, MsiType.MSI):
            if not flags & kind:
                continue
            cap_vecs = dev.msix_vectors() if kind == MsiType.MSIX else dev.msi_vectors()
            if not cap_vecs:
                continue
            nvec = min(max_vecs, cap_vecs)
            if kind == MsiType.MSI:
                nvec = 1 << (nvec.bit_length() - 1)   # a power of two
                if not self.multi_msi:                # pci_msi_domain_check_cap()
                    nvec = 1
            if nvec < min_vecs:
                errors.append(fail(ENOSPC, f"{dev}: only {cap_vecs} vectors"))
                continue
            try:
                self._enable(dev, kind, nvec, bool(flags & MsiType.AFFINITY))
            except OSError as e:
                errors.append(e)
                continue
            return nvec
        raise errors[0] if errors else fail(EINVAL, f"{dev} has no MSI capability")

    def _enable(self, dev: Any, kind: MsiType, nvec: int, managed: bool) -> None:
        is_msix = kind == MsiType.MSIX
        masks = spread_affinity(nvec, self.kernel.online_cpus) if managed else [None] * nvec
        descs = [MsiDesc(dev, i, affinity=masks[i], managed=managed, is_msix=is_msix)
                 for i in range(nvec)]
        if is_msix:
            # msix_capability_init(): function-masked and enabled while entries are set up.
            dev.msix_control(enable=True, maskall=True)
            for desc in descs:
                self.mask_vector(desc, True)
        if self.parent_prepare is not None:
            dev.msi_parent_data = self.parent_prepare(dev, dev.msix_vectors() if is_msix
                                                      else nvec)
        done = []
        try:
            for desc in descs:
                self._alloc_desc_irq(dev, desc)
                dev.msi_descs[desc.msi_index] = desc
                done.append(desc)
        except Exception:
            for desc in done:
                self._free_desc(dev, desc)
            self._disable(dev, is_msix)
            raise
        if is_msix:
            dev.msix_control(enable=True, maskall=False)
        else:
            dev.msi_control(enable=True, nvec=nvec)

    def msix_alloc_irq_at(self, dev: Any, index: int | None = None,
                          affinity: frozenset[int] | None = None) -> tuple[int, int]:
        """pci_msix_alloc_irq_at(): one more MSI-X vector at ``index`` (or the first free)."""
        if not dev.msix_enabled():
            raise fail(EINVAL, f"{dev}: MSI-X is not enabled")
        n = dev.msix_vectors()
        if index is None:
            index = next((i for i in range(n) if i not in dev.msi_descs), None)
            if index is None:
                raise fail(ENOSPC, f"{dev}: every MSI-X entry is in use")
        if not 0 <= index < n:
            raise fail(EINVAL, f"{dev}: MSI-X index {index} beyond the table")
        if index in dev.msi_descs:
            raise fail(EBUSY, f"{dev}: MSI-X index {index} is in use")
        desc = MsiDesc(dev, index, affinity=affinity, managed=affinity is not None)
        self.mask_vector(desc, True)
        virq = self._alloc_desc_irq(dev, desc)
        dev.msi_descs[index] = desc
        return index, virq

    def _free_desc(self, dev: Any, desc: MsiDesc) -> None:
        self.kernel.irq.domain_free_irqs(desc.irq, 1)
        if desc.iommu_release is not None:
            desc.iommu_release(desc)
            desc.iommu_release = None
        dev.msi_descs.pop(desc.msi_index, None)

    def msix_free_irq(self, dev: Any, index: int) -> None:
        """pci_msix_free_irq()."""
        desc = dev.msi_descs.get(index)
        if desc is None:
            raise fail(EINVAL, f"{dev}: no MSI-X vector {index}")
        self._free_desc(dev, desc)
        if not dev.msi_descs and self.parent_release is not None:
            self.parent_release(dev)
            dev.msi_parent_data = None

    def free_irq_vectors(self, dev: Any) -> None:
        """pci_free_irq_vectors(): every vector, then MSI / MSI-X disabled."""
        is_msix = dev.msix_enabled()
        for desc in sorted(dev.msi_descs.values(), key=lambda x: x.msi_index):
            self._free_desc(dev, desc)
        self._disable(dev, is_msix)
        if self.parent_release is not None:
            self.parent_release(dev)
            dev.msi_parent_data = None

    def _disable(self, dev: Any, is_msix: bool) -> None:
        if is_msix:
            dev.msix_control(enable=False, maskall=False)
        else:
            dev.msi_control(enable=False, nvec=1)

    def irq_vector(self, dev: Any, nr: int) -> int:
        """pci_irq_vector()."""
        desc = dev.msi_descs.get(nr)
        if desc is None:
            raise fail(EINVAL, f"{dev}: no vector {nr}")
        return desc.irq
