"""The x86 side: the vector domain (arch/x86/kernel/apic/vector.c) and Intel
interrupt remapping (drivers/iommu/intel/irq_remapping.c).

Without remapping the MSI parent is the vector domain: an interrupt gets a
vector on one CPU, the message carries both (address 0xFEE00000 | APIC ID <<
12, data = vector), and changing affinity picks a new CPU and vector and
answers IRQ_SET_MASK_OK, so the PCI/MSI level re-composes and rewrites the
device's message.  With remapping an "INTEL-IR" domain sits in between: the
message is a handle into the interrupt remapping table (IRTE), a move only
rewrites the IRTE, and the answer is IRQ_SET_MASK_OK_DONE.
"""

from __future__ import annotations

from typing import Any

from ..hw import x86 as X
from .base import EINVAL, ENOSPC, fail
from .irq import IRQ_SET_MASK_OK, IRQ_SET_MASK_OK_DONE, IrqChip, IrqData, IrqDomain, IrqDomainOps
from .msi import MsiMsg

FIRST_EXTERNAL_VECTOR, FIRST_SYSTEM_VECTOR = 0x20, 0xEC


class ApicChip(IrqChip):
    """lapic_controller / x86_vector chip: owns the (CPU, vector) of an interrupt."""

    name = "APIC"

    def __init__(self, vec: VectorDomain) -> None:
        self.vec = vec

    def irq_mask(self, d: IrqData) -> None:
        pass                                   # masking is done in the device

    def irq_unmask(self, d: IrqData) -> None:
        pass

    def irq_compose_msi_msg(self, d: IrqData) -> MsiMsg:
        """x86_vector_msi_compose_msg(): destination and vector in the message."""
        cpu, vector = d.chip_data
        return MsiMsg.of(X.MSI_BASE | cpu << 12, vector)

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """apic_set_affinity(): a vector on a CPU of ``mask``; the message must change."""
        self.vec.assign(d, mask)
        return IRQ_SET_MASK_OK


class VectorDomainOps(IrqDomainOps):
    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: Any) -> None:
        for i in range(nr):
            domain.set_hwirq_and_chip(virq + i, virq + i, domain.host_data.chip, None)

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        domain.host_data.assign(d, d.common.affinity or domain.host_data.kernel.online_cpus)

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        domain.host_data.release(d)


class VectorDomain:
    """The x86 vector domain: per-CPU vector tables (vector_irq)."""

    def __init__(self, kernel: Any, lapics: list) -> None:
        self.kernel = kernel
        self.lapics = lapics                    # the CPUs' local APICs
        self.chip = ApicChip(self)
        self.domain = IrqDomain(kernel.irq, "VECTOR", VectorDomainOps(), host_data=self)
        self.vector_irq: dict[int, dict[int, int]] = {c: {} for c in kernel.online_cpus}

    def assign(self, d: IrqData, mask: frozenset[int]) -> None:
        """assign_irq_vector(): keep the current vector if its CPU is still allowed,
        else the least loaded CPU in ``mask`` and its lowest free vector."""
        cpus = sorted(mask & self.kernel.online_cpus)
        if not cpus:
            raise fail(EINVAL, "no online CPU in the mask")
        if d.chip_data is not None and d.chip_data[0] in cpus:
            return
        cpu = min(cpus, key=lambda c: (len(self.vector_irq[c]), c))
        table = self.vector_irq[cpu]
        vector = next((v for v in range(FIRST_EXTERNAL_VECTOR, FIRST_SYSTEM_VECTOR)
                       if v not in table), None)
        if vector is None:
            raise fail(ENOSPC, f"CPU{cpu} has no free vector")
        self.release(d)
        table[vector] = d.irq
        d.chip_data = (cpu, vector)
        d.common.effective_affinity = frozenset({cpu})

    def release(self, d: IrqData) -> None:
        if d.chip_data is not None:
            cpu, vector = d.chip_data
            self.vector_irq[cpu].pop(vector, None)
            d.chip_data = None

    def handle_irq(self, cpu: int) -> int:
        """common_interrupt(): take every deliverable vector on ``cpu``."""
        lapic = self.lapics[cpu]
        n = 0
        while (vector := lapic.ack()) is not None:
            irq = self.vector_irq[cpu].get(vector)
            if irq is None:
                self.kernel.printk(f"do_IRQ: {cpu}.{vector:#x} No irq handler for vector")
            else:
                self.kernel.irq.run_handlers(self.kernel.irq.descs[irq], cpu)
            lapic.eoi()
            n += 1
        return n


class IrChip(IrqChip):
    """intel_ir_chip: the message is a handle; the IRTE holds CPU and vector."""

    name = "INTEL-IR"

    def __init__(self, ir: IntelIr) -> None:
        self.ir = ir

    def irq_compose_msi_msg(self, d: IrqData) -> MsiMsg:
        """fill_msi_msg(): remappable format, handle = IRTE index, SHV, subhandle 0."""
        index = d.chip_data
        addr = X.MSI_BASE | (index & 0x7FFF) << 5 | 1 << 4 | 1 << 3 | (index >> 15) << 2
        return MsiMsg.of(addr, 0)

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """intel_ir_set_affinity(): new vector via the parent, then only the IRTE changes."""
        ret = d.parent_data.chip.irq_set_affinity(d.parent_data, mask, force)
        if ret < 0:
            return ret
        self.ir.write_irte(d)
        d.common.effective_affinity = d.parent_data.common.effective_affinity
        return IRQ_SET_MASK_OK_DONE


class IrDomainOps(IrqDomainOps):
    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: Any) -> None:
        ir: IntelIr = domain.host_data
        domain.alloc_irqs_parent(virq, nr, arg)
        for i in range(nr):
            index = ir.alloc_irte()
            domain.set_hwirq_and_chip(virq + i, index, ir.chip, index)
            ir.sid[index] = arg.dev.rid

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        ir: IntelIr = domain.host_data
        for i in range(nr):
            d = ir.kernel.irq.irq_data_at(virq + i, domain)
            ir.clear_irte(d.chip_data)
        domain.free_irqs_parent(virq, nr)

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        domain.host_data.write_irte(d)

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        domain.host_data.clear_irte(d.chip_data, keep=True)


class IntelIr:
    """Intel interrupt remapping: the IRTE table, enabled through the unit's registers."""

    def __init__(self, kernel: Any, vector: VectorDomain, regs_base: int, entries: int = 256):
        self.kernel, self.vector, self.regs = kernel, vector, regs_base
        self.entries = entries
        self.chip = IrChip(self)
        self.domain = IrqDomain(kernel.irq, "INTEL-IR", IrDomainOps(), parent=vector.domain,
                                host_data=self, isolated_msi=True)
        self.sid: dict[int, int] = {}
        self._used: set[int] = set()

    def enable(self) -> None:
        """intel_setup_irq_remapping() + enable: table, IRTA, SIRTP, IRE."""
        b = self.kernel.bus
        self.table = self.kernel.mm.alloc(16 * self.entries, 4096)
        size_field = self.entries.bit_length() - 2          # 2^(S+1) entries
        b.write(self.regs + X.IRTA, self.table | size_field, 8)
        b.write(self.regs + X.GCMD, X.GCMD_SIRTP)
        b.write(self.regs + X.GCMD, X.GCMD_IRE)
        self.kernel.printk("DMAR-IR: Enabled IRQ remapping in xapic mode")

    def alloc_irte(self) -> int:
        index = next((i for i in range(self.entries) if i not in self._used), None)
        if index is None:
            raise fail(ENOSPC, "interrupt remapping table is full")
        self._used.add(index)
        return index

    def write_irte(self, d: IrqData) -> None:
        """modify_irte(): present, destination (xAPIC: ID << 8), vector, source ID."""
        cpu, vector = d.parent_data.chip_data
        index = d.chip_data
        lo = 1 | vector << 16 | (cpu << 8) << 32
        hi = self.sid[index] | 1 << 18                      # SVT = verify the requester ID
        self.kernel.ram.write(self.table + 16 * index,
                              lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))

    def clear_irte(self, index: int, keep: bool = False) -> None:
        self.kernel.ram.write(self.table + 16 * index, bytes(16))
        if not keep:
            self._used.discard(index)
            self.sid.pop(index, None)
