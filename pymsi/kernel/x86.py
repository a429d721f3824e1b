"""The x86 side, following Linux 6.1: the vector domain (arch/x86/kernel/apic/vector.c)
and Intel interrupt remapping (drivers/iommu/intel/irq_remapping.c, dmar.c).

APIC routing is what 6.1 picks without x2APIC: flat logical mode with up to 8
CPUs (destination = logical ID 1 << cpu, DM = 1), physical flat beyond that
(destination = APIC ID).

Without remapping the MSI parent is the vector domain: an interrupt gets a
vector on one CPU, the message carries both (address 0xFEE00000 | destination
<< 12 | DM, data = vector), and changing affinity picks a new CPU and vector
and answers IRQ_SET_MASK_OK, so the PCI/MSI level re-composes and rewrites
the device's message.  The vector domain cannot do multi-message MSI.

A move keeps the previous vector assigned (vector_irq on the old CPU still
maps it) with the move in progress.  The first interrupt that arrives on the
new vector sends IRQ_MOVE_CLEANUP_VECTOR (0x20, never given to a device; the
first device vector is 0x21) as an IPI to the old CPU, whose cleanup handler
frees the old vector, unless that vector is still pending in its IRR, in which
case it sends itself the cleanup IPI again (the pending interrupt, of higher
priority, runs first).  A move asked for while one is still in progress is
kept pending and done at a later interrupt (GENERIC_PENDING_IRQ).

With remapping an "INTEL-IR" domain sits in between: the message is a handle
into the interrupt remapping table (65536 IRTEs, IRTA.S = 0xF), a move
rewrites only the IRTE (followed by an interrupt entry cache flush through
the invalidation queue and a wait descriptor the driver polls, as
``qi_flush_iec`` does after every IRTE change) and sends the cleanup IPI at
once; the answer is IRQ_SET_MASK_OK_DONE.  Multi-message MSI gets an aligned
block of IRTEs and one message (SHV = 1, handle = first index, data =
subhandle 0) whose low data bits, ORed in by the device, select the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ..hw import pci as P
from ..hw import x86 as X
from .base import EBUSY, EINVAL, ENOSPC, fail
from .irq import (
    IRQ_SET_MASK_OK,
    IRQ_SET_MASK_OK_DONE,
    IrqChip,
    IrqData,
    IrqDomain,
    IrqDomainOps,
)
from .msi import MsiMsg

if TYPE_CHECKING:
    from .kernel import Kernel
    from .msi import MsiAllocInfo
    from .pci import PciDev

FIRST_EXTERNAL_VECTOR = 0x20
IRQ_MOVE_CLEANUP_VECTOR = FIRST_EXTERNAL_VECTOR       # 6.1: the lowest external vector
FIRST_DEVICE_VECTOR = IRQ_MOVE_CLEANUP_VECTOR + 1
IA32_SYSCALL_VECTOR = 0x80                            # a system vector (IA32 emulation)
FIRST_SYSTEM_VECTOR = 0xEC
NR_FLAT_CPUS = 8                                      # flat logical mode: up to 8 CPUs


@dataclass(eq=False)
class ApicData:
    """struct apic_chip_data: an interrupt's vector and CPU, and a move's previous ones."""

    irq: int
    vector: int = 0
    cpu: int = 0
    prev_vector: int = 0
    prev_cpu: int = 0
    move_in_progress: bool = False
    cleanup_queued: bool = False          # on the old CPU's cleanup list (clist hashed)


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
        """__irq_msi_compose_msg(): destination, destination mode and vector."""
        apicd: ApicData = d.chip_data
        addr = (X.MSI_BASE | X.ADDR_DEST(self.vec.dest_apicid(apicd.cpu))
                | X.ADDR_DM(int(self.vec.logical)))
        return MsiMsg.of(addr, X.DATA_VECTOR(apicd.vector) | X.DATA_DELIVERY(X.DELIVERY_FIXED))

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """apic_set_affinity(): a vector on a CPU of ``mask``.  A move still in progress
        is EBUSY, which genirq turns into a pending move (irq_try_set_affinity)."""
        self.vec.assign(d, mask)
        return IRQ_SET_MASK_OK


class VectorDomainOps(IrqDomainOps):
    # arg: irq.IrqAllocArg (the msi_alloc_info_t of the MSI level above), unused here
    def alloc(self, domain: IrqDomain, virq: int, nr: int,
              arg: MsiAllocInfo | list[int]) -> None:
        for i in range(nr):
            domain.set_hwirq_and_chip(virq + i, virq + i, domain.host_data.chip,
                                      ApicData(virq + i))

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        for i in range(nr):
            domain.host_data.release(domain.genirq.irq_data_at(virq + i, domain))

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        domain.host_data.assign(d, d.common.affinity or domain.host_data.kernel.online_cpus)

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        domain.host_data.release(d)


class VectorDomain:
    """The x86 vector domain: per-CPU vector tables (vector_irq), moves and cleanup."""

    def __init__(self, kernel: Kernel, lapics: list[X.LocalApic]) -> None:
        self.kernel = kernel
        self.lapics = lapics                    # the CPUs' local APICs
        self.chip = ApicChip(self)
        self.domain = IrqDomain(kernel.irq, "VECTOR", VectorDomainOps(), host_data=self)
        self.vector_irq: dict[int, dict[int, int]] = {c: {} for c in kernel.online_cpus}
        self.cleanup_list: dict[int, list[ApicData]] = {c: [] for c in kernel.online_cpus}
        self.logical = kernel.ncpus <= NR_FLAT_CPUS     # apic_flat, else apic_physflat

    def dest_apicid(self, cpu: int) -> int:
        """calc_dest_apicid(): flat logical ID 1 << cpu, or the physical APIC ID."""
        return 1 << cpu if self.logical else self.lapics[cpu].apic_id

    @staticmethod
    def reserved(vector: int) -> bool:
        """System vectors the matrix never hands to a device."""
        return vector in (IRQ_MOVE_CLEANUP_VECTOR, IA32_SYSCALL_VECTOR)

    def _free_vector(self, cpu: int) -> int | None:
        table = self.vector_irq[cpu]
        return next((v for v in range(FIRST_DEVICE_VECTOR, FIRST_SYSTEM_VECTOR)
                     if v not in table and not self.reserved(v)), None)

    def assign(self, d: IrqData, mask: frozenset[int]) -> None:
        """assign_vector_locked(): keep the vector if its CPU is still allowed; EBUSY
        while a move is in progress; else the CPU of ``mask`` with the most free
        vectors and its lowest free vector, keeping the old one until cleanup."""
        apicd: ApicData = d.chip_data
        cpus = sorted(mask & self.kernel.online_cpus)
        if not cpus:
            raise fail(EINVAL, "no online CPU in the mask")
        if apicd.vector and apicd.cpu in cpus:
            return
        if apicd.move_in_progress or apicd.cleanup_queued:
            raise fail(EBUSY, f"IRQ {d.irq}: vector move in progress")
        cpu = min(cpus, key=lambda c: (len(self.vector_irq[c]), c))
        vector = self._free_vector(cpu)
        if vector is None:
            raise fail(ENOSPC, f"CPU{cpu} has no free vector")
        if apicd.vector:                                  # apic_update_vector()
            apicd.prev_vector, apicd.prev_cpu = apicd.vector, apicd.cpu
            apicd.move_in_progress = True
        self.vector_irq[cpu][vector] = d.irq
        apicd.vector, apicd.cpu = vector, cpu
        d.common.effective_affinity = frozenset({cpu})

    def release(self, d: IrqData) -> None:
        """clear_irq_vector(): the vector and any previous one, and the pending cleanup."""
        apicd: ApicData = d.chip_data
        if apicd is None:
            return
        if apicd.vector:
            self.vector_irq[apicd.cpu].pop(apicd.vector, None)
        if apicd.prev_vector:
            self.vector_irq[apicd.prev_cpu].pop(apicd.prev_vector, None)
        if apicd.cleanup_queued:
            self.cleanup_list[apicd.prev_cpu].remove(apicd)
        apicd.vector = apicd.prev_vector = 0
        apicd.move_in_progress = apicd.cleanup_queued = False

    def _send_ipi(self, from_cpu: int, to_cpu: int, vector: int) -> None:
        """apic->send_IPI(): through the sending CPU's ICR."""
        icr = (X.ICR_VECTOR(vector) | X.ICR_DELIVERY(X.DELIVERY_FIXED)
               | X.ICR_DEST_LOGICAL(int(self.logical)) | X.ICR_DEST(self.dest_apicid(to_cpu)))
        self.lapics[from_cpu].write_icr(icr)

    def send_cleanup(self, apicd: ApicData, from_cpu: int) -> None:
        """__send_cleanup_vector(): queue the old vector on its CPU's cleanup list and
        send that CPU IRQ_MOVE_CLEANUP_VECTOR."""
        if not apicd.move_in_progress:
            return
        apicd.move_in_progress = False
        apicd.cleanup_queued = True
        self.cleanup_list[apicd.prev_cpu].append(apicd)
        self._send_ipi(from_cpu, apicd.prev_cpu, IRQ_MOVE_CLEANUP_VECTOR)

    def move_cleanup(self, cpu: int) -> None:
        """sysvec_irq_move_cleanup() on ``cpu``: free each moved-away vector unless it is
        still pending in this CPU's IRR; then try again later (a self IPI)."""
        lapic = self.lapics[cpu]
        for apicd in list(self.cleanup_list[cpu]):
            if lapic.irr_pending(apicd.prev_vector):
                lapic.write_icr(X.ICR_VECTOR(IRQ_MOVE_CLEANUP_VECTOR)
                                | X.ICR_SHORTHAND(X.SHORTHAND_SELF))
                continue
            self.vector_irq[cpu].pop(apicd.prev_vector, None)      # free_moved_vector()
            self.cleanup_list[cpu].remove(apicd)
            apicd.prev_vector = 0
            apicd.cleanup_queued = False

    def _complete_move(self, irq: int, cpu: int, vector: int) -> None:
        """irq_complete_move() + irq_move_irq() in apic_ack_edge()."""
        apicd: ApicData = self.kernel.irq.irq_data_at(irq, self.domain).chip_data
        if apicd.move_in_progress and vector == apicd.vector and cpu == apicd.cpu:
            self.send_cleanup(apicd, cpu)
        self.kernel.irq.irq_move_irq(irq)

    def handle_irq(self, cpu: int) -> int:
        """common_interrupt() / system vectors: take every deliverable vector on ``cpu``."""
        lapic = self.lapics[cpu]
        n = 0
        while (vector := lapic.ack()) is not None:
            if vector == IRQ_MOVE_CLEANUP_VECTOR:
                lapic.eoi()                                 # ack_APIC_irq() comes first
                self.move_cleanup(cpu)
                n += 1
                continue
            irq = self.vector_irq[cpu].get(vector)
            if irq is None:
                self.kernel.printk(f"do_IRQ: {cpu}.{vector} No irq handler for vector")
            else:
                self.kernel.current_cpu = cpu
                try:
                    self._complete_move(irq, cpu, vector)
                finally:
                    self.kernel.current_cpu = None
                self.kernel.irq.run_handlers(self.kernel.irq.descs[irq], cpu)
            lapic.eoi()
            n += 1
        return n


# -- Intel interrupt remapping --------------------------------------------------------

@dataclass(eq=False)
class IrteData:
    """struct intel_ir_data / irq_2_iommu: an interrupt's IRTE."""

    index: int                # irte_index + sub_handle: the entry this interrupt uses
    base: int                 # irte_index: the first entry of the block (the handle)
    sub_handle: int
    sid: int


@dataclass
class X86MsiPrepare:
    """What pci_msi_prepare() records for a device: plain MSI wants contiguous entries."""

    nvec: int
    contiguous: bool
    blocks: dict[int, int] = field(default_factory=dict)


def irte_words(vector: int, dest_apicid: int, logical: bool, sid: int) -> tuple[int, int]:
    """prepare_irte() + set_msi_sid(): present, DM, RH = 1, fixed delivery, edge, vector,
    xAPIC destination (ID in DST[15:8]), SVT = 1 (verify the full requester ID)."""
    lo = (X.IRTE_PRESENT(1) | X.IRTE_DM(int(logical)) | X.IRTE_RH(1)
          | X.IRTE_DLM(X.DELIVERY_FIXED) | X.IRTE_VECTOR(vector)
          | X.IRTE_XAPIC_DEST(dest_apicid & 0xFF))
    hi = X.IRTE_SID(sid) | X.IRTE_SQ(0) | X.IRTE_SVT(1)
    return lo, hi


class IrChip(IrqChip):
    """intel_ir_chip: the message is a handle; the IRTE holds CPU and vector."""

    name = "INTEL-IR"

    def __init__(self, ir: IntelIr) -> None:
        self.ir = ir

    def irq_compose_msi_msg(self, d: IrqData) -> MsiMsg:
        """fill_msi_msg(): remappable format, handle = the block's first IRTE, SHV,
        data = subhandle 0 (the message the device holds for the whole block)."""
        ird: IrteData = d.chip_data
        base = ird.base
        addr = (X.MSI_BASE | X.ADDR_HANDLE_LO(base & 0x7FFF) | X.ADDR_FORMAT(1)
                | X.ADDR_SHV(1) | X.ADDR_HANDLE_HI(base >> 15))
        return MsiMsg.of(addr, 0)

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """intel_ir_set_affinity(): new vector via the parent, the IRTE rewritten and
        flushed, then the old vector's cleanup sent at once."""
        parent = cast(IrqData, d.parent_data)            # the vector domain's level
        ret = cast(IrqChip, parent.chip).irq_set_affinity(parent, mask, force)
        if ret < 0 or ret != IRQ_SET_MASK_OK:
            return ret
        self.ir.write_irte(d)
        cpu = self.ir.kernel.current_cpu
        self.ir.vector.send_cleanup(parent.chip_data, 0 if cpu is None else cpu)
        d.common.effective_affinity = parent.common.effective_affinity
        return IRQ_SET_MASK_OK_DONE


class IrDomainOps(IrqDomainOps):
    # arg: irq.IrqAllocArg; below the PCI-MSI level it is always an msi_alloc_info_t
    def alloc(self, domain: IrqDomain, virq: int, nr: int,
              arg: MsiAllocInfo | list[int]) -> None:
        arg = cast("MsiAllocInfo", arg)
        ir: IntelIr = domain.host_data
        prep = arg.parent_data if isinstance(arg.parent_data, X86MsiPrepare) else None
        desc = arg.desc
        block = prep is not None and prep.contiguous and prep.nvec > 1
        blocks = prep.blocks if prep is not None else {}
        if block and desc.msi_index and 0 in blocks:
            base, sub = blocks[0], desc.msi_index
        else:
            base, sub = ir.alloc_irte(cast(X86MsiPrepare, prep).nvec if block else 1), 0
            if block:
                blocks[0] = base
        ir.get_irte(base, nr)
        try:
            domain.alloc_irqs_parent(virq, nr, arg)
        except Exception:
            ir.put_irte(base, nr)
            raise
        for i in range(nr):
            ird = IrteData(base + sub + i, base, sub + i, arg.dev.rid)
            domain.set_hwirq_and_chip(virq + i, ird.index, ir.chip, ird)

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        ir: IntelIr = domain.host_data
        for i in range(nr):
            d = ir.kernel.irq.irq_data_at(virq + i, domain)
            ir.clear_irte(d.chip_data.index)
            ir.put_irte(d.chip_data.base)
        domain.free_irqs_parent(virq, nr)

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        domain.host_data.write_irte(d)

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        domain.host_data.modify_irte(d.chip_data.index, 0, 0)


class IntelIr:
    """Intel interrupt remapping: the IRTE table and the invalidation queue, driven
    through the DMAR unit's registers."""

    QI_IN_USE, QI_DONE = 0, 1
    QI_ENTRIES = 256                         # one page of 128-bit descriptors (QS = 0)

    def __init__(self, kernel: Kernel, vector: VectorDomain, regs_base: int,
                 entries: int = 65536) -> None:
        self.kernel, self.vector, self.regs = kernel, vector, regs_base
        self.entries = entries                           # INTR_REMAP_TABLE_ENTRIES
        self.chip = IrChip(self)
        self.domain = IrqDomain(kernel.irq, "INTEL-IR", IrDomainOps(), parent=vector.domain,
                                host_data=self, isolated_msi=True)
        self._used: set[int] = set()
        self._blocks: dict[int, list[int]] = {}        # base -> [entries, users]
        self.gcmd = 0                                    # the driver's copy of GCMD
        self.qi_tail = 0
        self.qi_errors = 0

    # -- bring-up -----------------------------------------------------------------

    def _gcmd(self, bits: int, on: bool = True) -> None:
        """Set or clear persistent GCMD bits, keeping the others (iommu->gcmd)."""
        self.gcmd = self.gcmd | bits if on else self.gcmd & ~bits
        self.kernel.bus.write(self.regs + X.GCMD, self.gcmd)

    def enable(self) -> None:
        """dmar_enable_qi(), then intel_setup_irq_remapping() and its enable: table,
        IRTA, SIRTP, a global IEC flush, IRE (compatibility format stays blocked)."""
        b, k = self.kernel.bus, self.kernel
        ecap = b.read(self.regs + X.ECAP, 8)
        if not ecap & X.ECAP_QI or not ecap & X.ECAP_IR:
            raise fail(EINVAL, "DMAR unit without queued invalidation / remapping")
        self.queue = k.mm.alloc(16 * self.QI_ENTRIES, 4096)
        self.status = k.mm.alloc(8, 8)
        b.write(self.regs + X.IQT, 0, 8)
        b.write(self.regs + X.IQA, self.queue | X.IQA_QS(0), 8)
        self._gcmd(X.GCMD_QIE)
        k.printk("DMAR: dmar0: Using Queued invalidation")
        self.table = k.mm.alloc(16 * self.entries, 4096)
        size_field = self.entries.bit_length() - 2          # 2^(S+1) entries
        b.write(self.regs + X.IRTA, self.table | X.IRTA_SIZE(size_field), 8)
        b.write(self.regs + X.GCMD, self.gcmd | X.GCMD_SIRTP)   # one-shot
        self.qi_submit([X.iec_descriptor()])                  # qi_global_iec()
        self._gcmd(X.GCMD_IRE)
        k.printk("DMAR-IR: Enabled IRQ remapping in xapic mode")

    # -- the invalidation queue ----------------------------------------------------

    def _put(self, slot: int, desc: tuple[int, int]) -> None:
        self.kernel.ram.write(self.queue + 16 * slot,
                              desc[0].to_bytes(8, "little") + desc[1].to_bytes(8, "little"))

    def qi_submit(self, descs: list[tuple[int, int]]) -> None:
        """qi_submit_sync(): the descriptors, a wait descriptor writing QI_DONE to the
        status word, a tail write, and polling the status (recovering from IQE)."""
        k, b = self.kernel, self.kernel.bus
        k.ram.write(self.status, self.QI_IN_USE.to_bytes(4, "little"))
        wait = X.wait_descriptor(self.status, self.QI_DONE)
        for desc in descs:
            self._put(self.qi_tail, desc)
            self.qi_tail = (self.qi_tail + 1) % self.QI_ENTRIES
        wait_slot = self.qi_tail
        self._put(wait_slot, wait)
        self.qi_tail = (self.qi_tail + 1) % self.QI_ENTRIES
        b.write(self.regs + X.IQT, X.IQ_QT(self.qi_tail), 8)
        if int.from_bytes(k.ram.read(self.status, 4), "little") == self.QI_DONE:
            return
        if b.read(self.regs + X.FSTS) & X.FSTS_IQE:              # qi_check_fault()
            head = X.IQ_QH.get(b.read(self.regs + X.IQH, 8))
            self._put(head, wait)                                 # skip the bad one
            b.write(self.regs + X.FSTS, X.FSTS_IQE)
            self.qi_errors += 1
            raise fail(EINVAL, "invalidation queue error")
        raise fail(EINVAL, "invalidation wait did not complete")

    def flush_iec(self, index: int, mask: int = 0) -> None:
        """qi_flush_iec(): index-selective invalidation of 2^mask entries."""
        self.qi_submit([X.iec_descriptor(index, mask)])

    # -- the remapping table -------------------------------------------------------

    def alloc_irte(self, count: int = 1) -> int:
        """alloc_irte(): a free block of ``count`` (rounded up to a power of two)
        entries, aligned to its size; it goes back to the table when the last
        interrupt using it is freed (:meth:`put_irte`)."""
        n = 1 << (count - 1).bit_length()
        for base in range(0, self.entries, n):
            if not any(base + i in self._used for i in range(n)):
                self._used.update(range(base, base + n))
                self._blocks[base] = [n, 0]
                return base
        raise fail(ENOSPC, "interrupt remapping table is full")

    def get_irte(self, base: int, nr: int = 1) -> None:
        """``nr`` more interrupts use the block at ``base``."""
        self._blocks[base][1] += nr

    def put_irte(self, base: int, nr: int = 1) -> None:
        """``nr`` interrupts stopped using the block at ``base``; the last frees it."""
        block = self._blocks[base]
        block[1] -= nr
        if block[1] <= 0:
            del self._blocks[base]
            self._used.difference_update(range(base, base + block[0]))

    def modify_irte(self, index: int, lo: int, hi: int) -> None:
        """modify_irte(): write the 128-bit entry, then flush it from the IEC."""
        self.kernel.ram.write(self.table + 16 * index,
                              lo.to_bytes(8, "little") + hi.to_bytes(8, "little"))
        self.flush_iec(index, 0)

    def write_irte(self, d: IrqData) -> None:
        """intel_ir_reconfigure_irte(): destination and vector of the parent level."""
        apicd: ApicData = cast(IrqData, d.parent_data).chip_data
        ird: IrteData = d.chip_data
        lo, hi = irte_words(apicd.vector, self.vector.dest_apicid(apicd.cpu),
                            self.vector.logical, ird.sid)
        self.modify_irte(ird.index, lo, hi)

    def clear_irte(self, index: int) -> None:
        """free_irte(): the entry cleared and flushed."""
        self.modify_irte(index, 0, 0)

    def msi_prepare(self, dev: PciDev, nvec: int) -> X86MsiPrepare:
        """pci_msi_prepare(): MSI (not MSI-X) vectors need contiguous IRTEs."""
        # MSI-X is already enabled (function-masked) in the capability when its vectors
        # are prepared; an MSI device's is not.
        msix = dev.msix_cap is not None and bool(
            dev.cfg_read(dev.msix_cap + P.MSIX_FLAGS, 2) & P.MSIX_FLAGS_ENABLE)
        return X86MsiPrepare(nvec, not msix)
