"""genirq (kernel/irq/): interrupt descriptors, hierarchical domains, chips, affinity.

Linux interrupt numbers (virqs) name :class:`IrqDesc` objects.  A virq
allocated in a hierarchy of :class:`IrqDomain` (PCI-MSI -> ITS -> GIC, or
PCI-MSI -> [interrupt remapping ->] x86 vector) has one :class:`IrqData` per
level, each with its level's hwirq and :class:`IrqChip`.  Activation,
affinity changes and MSI composition walk that chain as Linux does, and a
chip's ``irq_set_affinity`` answers IRQ_SET_MASK_OK (the caller re-composes
and rewrites the MSI), OK_NOCOPY, or OK_DONE (nothing more to do: the ITS
answers this after MOVI).  ``/proc/irq/N/smp_affinity`` is :meth:`GenIrq.
write_smp_affinity`, with Linux's errors: ENOENT until the interrupt was
first requested (register_irq_proc), EIO for a managed interrupt, the
bitmap_parse() errors of the mask (:func:`~pymsi.kernel.base.parse_cpumask`),
EINVAL for a mask with no online CPU.  :meth:`GenIrq.proc_interrupts` prints
/proc/interrupts as kernel/irq/proc.c's show_interrupts() does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from .. import trace
from .._repr import bounded, cpus
from .base import (
    EBUSY,
    EINVAL,
    EIO,
    ENOENT,
    ENOSPC,
    KernelError,
    cpumask_arg,
    cpumask_str,
    fail,
    parse_cpulist,
    parse_cpumask,
)

# Linux's include/trace/events/irq.h, plus which kernel (host or guest) and CPU ran it
# (what a trace's header line gives).
trace_irq_handler_entry = trace.Tracepoint("irq_handler_entry", "kernel", "cpu", "irq", "name")
trace_irq_handler_exit = trace.Tracepoint("irq_handler_exit", "kernel", "cpu", "irq", "ret")

IRQ_SET_MASK_OK = 0
IRQ_SET_MASK_OK_NOCOPY = 1
IRQ_SET_MASK_OK_DONE = 2
IRQ_HANDLED, IRQ_NONE = 1, 0

IrqHandler = Callable[[int, Any], int]

if TYPE_CHECKING:
    from .gic import VcpuInfo
    from .kernel import Kernel
    from .msi import MsiAllocInfo

#: what irq_domain_alloc_irqs() hands each level's ``alloc`` (Linux's ``void *arg``): the
#: msi_alloc_info_t of an MSI hierarchy, or, at the GICv3 level, the LPI numbers the ITS
#: picked (its_irq_gic_domain_alloc's fwspec)
IrqAllocArg = Union["MsiAllocInfo", list[int]]


class IrqChip:
    """struct irq_chip: the operations one domain level offers for its interrupts.

    Subclasses override what their hardware supports; the defaults here are
    the "parent" helpers (irq_chip_mask_parent & co.), so a level without
    its own operation passes it down the hierarchy.
    """

    name = "chip"

    def irq_mask(self, d: IrqData) -> None:
        if d.parent_data is not None:
            d.parent_data.chip.irq_mask(d.parent_data)  # type: ignore[union-attr]  # every allocated level has its chip

    def irq_unmask(self, d: IrqData) -> None:
        if d.parent_data is not None:
            d.parent_data.chip.irq_unmask(d.parent_data)  # type: ignore[union-attr]  # every allocated level has its chip

    def irq_eoi(self, d: IrqData) -> None:
        if d.parent_data is not None:
            d.parent_data.chip.irq_eoi(d.parent_data)  # type: ignore[union-attr]  # every allocated level has its chip

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        if d.parent_data is not None:
            return d.parent_data.chip.irq_set_affinity(d.parent_data, mask, force)  # type: ignore[union-attr]  # as above
        raise fail(EINVAL, f"{self.name} cannot set affinity")

    def irq_set_vcpu_affinity(self, d: IrqData, info: VcpuInfo) -> None:
        if d.parent_data is not None:
            d.parent_data.chip.irq_set_vcpu_affinity(d.parent_data, info)  # type: ignore[union-attr]  # every allocated level has its chip
            return
        raise fail(EINVAL, f"{self.name} cannot forward to a vCPU")

    # MSI capable levels implement these.
    irq_compose_msi_msg: Callable[[IrqData], Any] | None = None
    irq_write_msi_msg: Callable[[IrqData, Any], None] | None = None


@dataclass
class IrqCommonData:
    """struct irq_common_data: what all levels of one interrupt share."""

    affinity: frozenset[int] = frozenset()
    effective_affinity: frozenset[int] = frozenset()
    msi_desc: Any = None
    managed: bool = False                 # IRQD_AFFINITY_MANAGED
    level: bool = False                   # IRQD_LEVEL (MSIs are edge)
    activated: bool = False
    started: bool = False
    forwarded_to_vcpu: bool = False

    def __repr__(self) -> str:
        return (f"IrqCommonData(affinity={cpus(self.affinity)}, "
                f"effective={cpus(self.effective_affinity)}, managed={self.managed}, "
                f"activated={self.activated}, started={self.started}, "
                f"forwarded={self.forwarded_to_vcpu})")


@dataclass(eq=False)
class IrqData:
    """struct irq_data: one interrupt at one level of the domain hierarchy."""

    irq: int
    hwirq: int = 0
    chip: IrqChip | None = None
    domain: IrqDomain | None = None
    parent_data: IrqData | None = None
    chip_data: Any = None
    common: IrqCommonData = field(default_factory=IrqCommonData)

    def levels(self) -> list[IrqData]:
        out: list[IrqData] = []
        d: IrqData | None = self
        while d is not None:
            out.append(d)
            d = d.parent_data
        return out

    def __repr__(self) -> str:
        dom = self.domain.name if self.domain is not None else "-"
        return bounded(f"<irq_data {self.irq} {dom} hwirq={self.hwirq:#x}>")


@dataclass(eq=False)
class IrqAction:
    """struct irqaction: a handler installed by request_irq()."""

    handler: IrqHandler
    name: str
    dev_id: Any

    def __repr__(self) -> str:
        return bounded(f"<irqaction {self.name} "
                       f"{getattr(self.handler, '__name__', '?')}>")


@dataclass(eq=False)
class IrqDesc:
    """struct irq_desc: a Linux interrupt number and everything about it."""

    irq: int
    irq_data: IrqData
    actions: list[IrqAction] = field(default_factory=list)
    depth: int = 1                        # disabled until started
    kstat: dict[int, int] = field(default_factory=dict)     # per-CPU counts
    spurious: int = 0
    handler_name: str | None = None       # desc->name: the flow handler's ("edge")
    proc_registered: bool = False         # /proc/irq/<irq>/ exists (register_irq_proc)
    pending_mask: frozenset[int] | None = None   # a move the chip could not do yet

    @property
    def name(self) -> str:
        return ",".join(a.name for a in self.actions)

    @property
    def count(self) -> int:
        return sum(self.kstat.values())

    def __repr__(self) -> str:
        d = self.irq_data
        dom = d.domain.name if d.domain is not None else "-"
        return bounded(f"<irq_desc {self.irq} {dom} hwirq={d.hwirq:#x} "
                       f"actions={self.name or '-'} count={self.count}>")


class IrqDomainOps:
    """struct irq_domain_ops for hierarchical domains."""

    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: IrqAllocArg) -> None:
        raise fail(EINVAL, f"{domain.name} cannot allocate")

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        pass

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        pass

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        pass


class IrqDomain:
    """struct irq_domain: a hwirq number space, one level of a hierarchy."""

    def __init__(self, genirq: GenIrq, name: str, ops: IrqDomainOps,
                 parent: IrqDomain | None = None, host_data: object = None,
                 isolated_msi: bool = False) -> None:
        self.genirq, self.name, self.ops, self.parent = genirq, name, ops, parent
        #: the driver's data for the domain (its ``void *host_data``: the ITS driver, ...)
        self.host_data: Any = host_data
        self.isolated_msi = isolated_msi      # IRQ_DOMAIN_FLAG_ISOLATED_MSI
        self.revmap: dict[int, int] = {}      # hwirq -> virq

    def __repr__(self) -> str:
        return f"<irq_domain {self.name}>"

    def set_hwirq_and_chip(self, virq: int, hwirq: int, chip: IrqChip,
                           chip_data: object = None) -> IrqData:
        """irq_domain_set_hwirq_and_chip()."""
        d = self.genirq.irq_data_at(virq, self)
        d.hwirq, d.chip, d.chip_data = hwirq, chip, chip_data
        self.revmap[hwirq] = virq
        return d

    def alloc_irqs_parent(self, virq: int, nr: int, arg: IrqAllocArg) -> None:
        """irq_domain_alloc_irqs_parent()."""
        if self.parent is None:
            raise fail(EINVAL, f"{self.name} has no parent")
        self.genirq._alloc_level(self.parent, virq, nr, arg)

    def free_irqs_parent(self, virq: int, nr: int) -> None:
        if self.parent is not None:
            self.genirq._free_level(self.parent, virq, nr)

    def find_mapping(self, hwirq: int) -> int | None:
        """irq_find_mapping()."""
        return self.revmap.get(hwirq)


class GenIrq:
    """The generic interrupt layer of one kernel."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.descs: dict[int, IrqDesc] = {}
        self._next_irq = 1
        self.nr_irqs = 64                     # NR_IRQS; grows as descriptors are added
        self.default_affinity = frozenset(kernel.online_cpus)

    # -- descriptors ------------------------------------------------------------------

    def _alloc_descs(self, nr: int) -> int:
        """irq_alloc_descs(): ``nr`` consecutive free interrupt numbers."""
        if nr <= 0:
            raise fail(EINVAL, "nr_irqs must be positive")
        base, descs = self._next_irq, self.descs
        if nr == 1:
            while base in descs:
                base += 1
        else:
            while any(base + i in descs for i in range(nr)):
                base += 1
        if base + nr > 1 << 20:
            raise fail(ENOSPC, "no interrupt numbers left")
        for i in range(nr):
            irq = base + i
            self.descs[irq] = IrqDesc(irq, IrqData(irq))
        self._next_irq = base + nr
        self.nr_irqs = max(self.nr_irqs, base + nr)      # irq_expand_nr_irqs()
        return base

    def desc(self, irq: int) -> IrqDesc:
        """irq_to_desc(), for a call given ``irq``: EINVAL when there is none."""
        d = self.descs.get(irq) if isinstance(irq, int) else None
        if d is None:
            raise fail(EINVAL, f"no interrupt {irq}")
        return d

    def irq_data_at(self, virq: int, domain: IrqDomain) -> IrqData:
        """The IrqData of ``virq`` at ``domain``'s level (irq_domain_get_irq_data)."""
        d: IrqData | None = self.desc(virq).irq_data
        while d is not None:                     # down the levels, top first
            if d.domain is domain:
                return d
            d = d.parent_data
        raise fail(EINVAL, f"interrupt {virq} has no level in {domain.name}")

    # -- hierarchical allocation --------------------------------------------------------

    def domain_alloc_irqs(self, domain: IrqDomain, nr: int, arg: IrqAllocArg) -> int:
        """irq_domain_alloc_irqs(): descriptors plus every level; all or nothing."""
        virq = self._alloc_descs(nr)
        try:
            for i in range(nr):
                top = self.descs[virq + i].irq_data
                top.domain = domain
                d = top
                parent = domain.parent
                while parent is not None:                 # irq_domain_alloc_irq_data()
                    d.parent_data = IrqData(virq + i, domain=parent, common=top.common)
                    d = d.parent_data
                    parent = parent.parent
            domain.ops.alloc(domain, virq, nr, arg)
        except Exception:
            for i in range(nr):
                self.descs.pop(virq + i, None)
            self._next_irq = min(self._next_irq, virq)
            raise
        return virq

    def _alloc_level(self, domain: IrqDomain, virq: int, nr: int, arg: IrqAllocArg) -> None:
        domain.ops.alloc(domain, virq, nr, arg)

    def _free_level(self, domain: IrqDomain, virq: int, nr: int) -> None:
        domain.ops.free(domain, virq, nr)
        for i in range(nr):
            d = self.irq_data_at(virq + i, domain)
            domain.revmap.pop(d.hwirq, None)

    def domain_free_irqs(self, virq: int, nr: int) -> None:
        """irq_domain_free_irqs(): deactivate, free every level, then the descriptors.

        Like Linux it does not look for handlers: a descriptor freed with an
        action still installed loses it, and Linux warns when it removes the
        /proc/irq/<irq> directory the action's entry is still in.
        """
        descs = [self.desc(virq + i) for i in range(nr)]     # all exist, or EINVAL
        for desc in descs:
            if desc.actions:
                self.kernel.printk(
                    f"WARNING: remove_proc_entry: removing non-empty directory "
                    f"'irq/{desc.irq}', leaking at least '{desc.actions[0].name}'")
            if desc.irq_data.common.activated:
                self.deactivate(desc.irq_data)
        domain = descs[0].irq_data.domain
        assert domain is not None                       # allocated through a domain
        self._free_level(domain, virq, nr)
        for desc in descs:
            desc.actions.clear()
            del self.descs[desc.irq]

    # -- activation -------------------------------------------------------------------------

    def activate(self, top: IrqData, reserve: bool = False) -> None:
        """irq_domain_activate_irq(): parents first, then each level up to the top."""
        if top.common.activated:
            return
        levels = top.levels()
        done = []
        try:
            for d in reversed(levels):
                assert d.domain is not None             # every allocated level has one
                d.domain.ops.activate(d.domain, d, reserve)
                done.append(d)
        except Exception:
            for d in reversed(done):
                assert d.domain is not None
                d.domain.ops.deactivate(d.domain, d)
            raise
        top.common.activated = True

    def deactivate(self, top: IrqData) -> None:
        """irq_domain_deactivate_irq(): the top first, down to the root."""
        if not top.common.activated:
            return
        for d in top.levels():
            assert d.domain is not None                 # every allocated level has one
            d.domain.ops.deactivate(d.domain, d)
        top.common.activated = False

    # -- request / free ---------------------------------------------------------------------

    def request_irq(self, irq: int, handler: IrqHandler, name: str, dev_id: object = None) -> None:
        """request_irq(): install ``handler``; the first one starts the interrupt."""
        desc = self.desc(irq)
        if handler is None or not callable(handler):
            raise fail(EINVAL, f"IRQ {irq}: no handler")
        if desc.irq_data.chip is None:
            raise fail(EINVAL, f"interrupt {irq} has no chip")
        if desc.actions:
            raise fail(EBUSY, f"interrupt {irq} is already requested")
        desc.actions.append(IrqAction(handler, name, dev_id))
        try:
            self._startup(desc)
        except Exception:
            desc.actions.clear()
            raise
        desc.proc_registered = True                     # register_irq_proc()

    def _startup(self, desc: IrqDesc) -> None:
        """irq_startup(): affinity set up, activated, unmasked."""
        d = desc.irq_data
        common = d.common
        if not common.affinity:
            common.affinity = self.default_affinity
        self.activate(d)
        self._set_affinity(desc, common.affinity, force=False)
        assert d.chip is not None                       # request_irq checked
        d.chip.irq_unmask(d)
        common.started = True
        desc.depth = 0

    def free_irq(self, irq: int, dev_id: object = None) -> None:
        """free_irq(): remove the handler; the last one shuts the interrupt down."""
        desc = self.desc(irq)
        for a in desc.actions:
            if a.dev_id is dev_id:
                desc.actions.remove(a)
                break
        else:
            raise fail(ENOENT, f"trying to free already-free IRQ {irq}")
        if not desc.actions:
            d = desc.irq_data
            assert d.chip is not None                   # request_irq checked
            d.chip.irq_mask(d)
            self.deactivate(d)
            d.common.started = False
            desc.depth = 1

    def disable_irq(self, irq: int) -> None:
        desc = self.desc(irq)
        if desc.depth == 0:
            desc.irq_data.chip.irq_mask(desc.irq_data)  # type: ignore[union-attr]  # every allocated level has its chip
        desc.depth += 1

    def enable_irq(self, irq: int) -> None:
        desc = self.desc(irq)
        if desc.depth == 0:
            self.kernel.printk(f"WARNING: Unbalanced enable for IRQ {irq}")
            raise fail(EINVAL, f"unbalanced enable for IRQ {irq}")
        desc.depth -= 1
        if desc.depth == 0:
            desc.irq_data.chip.irq_unmask(desc.irq_data)  # type: ignore[union-attr]  # every allocated level has its chip

    # -- affinity -----------------------------------------------------------------------------

    def _set_affinity(self, desc: IrqDesc, mask: frozenset[int], force: bool) -> int:
        """irq_do_set_affinity(): ask the chip; record the new affinity unless NOCOPY.

        Only the online CPUs of ``mask`` are offered to the chip (the whole
        mask when forced); none online and not forced is EINVAL.
        """
        d = desc.irq_data
        if d.chip is None:
            raise fail(EINVAL, f"IRQ {desc.irq} has no chip")
        online = mask & self.kernel.online_cpus
        if not online and not (force and mask):
            raise fail(EINVAL, f"IRQ {desc.irq}: no online CPU in {cpumask_str(mask)}")
        if not d.common.activated:
            d.common.affinity = mask
            return IRQ_SET_MASK_OK
        if desc.pending_mask is not None and not force:
            desc.pending_mask = mask              # a move is pending: it takes the new mask
            return IRQ_SET_MASK_OK
        try:
            ret = d.chip.irq_set_affinity(d, mask if force else online, force)
        except KernelError as e:
            if e.errno != EBUSY or force:
                raise
            # irq_try_set_affinity(): the vector management is busy with an earlier
            # move; GENERIC_PENDING_IRQ keeps the mask and moves at a later interrupt.
            desc.pending_mask = mask
            return IRQ_SET_MASK_OK
        if ret in (IRQ_SET_MASK_OK, IRQ_SET_MASK_OK_DONE):
            d.common.affinity = mask
        return ret

    def irq_move_irq(self, irq: int) -> None:
        """irq_move_irq(), from a chip's ack: carry out a pending move, if any.

        Busy again leaves it pending; a mask with no online CPU left is dropped."""
        desc = self.descs.get(irq)
        if desc is None or desc.pending_mask is None:
            return
        mask, desc.pending_mask = desc.pending_mask, None
        try:
            self._set_affinity(desc, mask, False)
        except KernelError:
            pass

    def set_affinity(self, irq: int, mask: Iterable[int], force: bool = False) -> int:
        """irq_set_affinity(): ``mask`` is a set of CPU numbers (a struct cpumask:
        unsigned bit numbers below nr_cpumask_bits, anything else is EINVAL)."""
        desc = self.desc(irq)
        return self._set_affinity(desc, cpumask_arg(mask, self.kernel.nr_cpumask_bits),
                                  bool(force))

    def proc_desc(self, irq: int) -> IrqDesc:
        """The descriptor behind /proc/irq/<irq>/: ENOENT until first requested."""
        desc = self.descs.get(irq) if isinstance(irq, int) else None
        if desc is None or not desc.proc_registered:
            raise fail(ENOENT, f"/proc/irq/{irq} does not exist")
        return desc

    def write_smp_affinity(self, irq: int, text: str | bytes, list_format: bool = False
                           ) -> None:
        """A write to /proc/irq/<irq>/smp_affinity (write_irq_affinity()), or to
        smp_affinity_list with ``list_format``.

        In Linux's order: no such directory (ENOENT), an interrupt user space
        may not move (managed, or no chip able to: EIO), the mask as
        bitmap_parse() reads it (EINVAL / EOVERFLOW; the list as bitmap_parselist()
        does: EINVAL / EOVERFLOW / ERANGE), no online CPU in it (EINVAL), then
        irq_set_affinity()'s own errors.
        """
        desc = self.proc_desc(irq)
        d = desc.irq_data
        if d.common.managed or d.chip is None:
            raise fail(EIO, f"IRQ {irq}: affinity cannot be set from user space")
        mask = (parse_cpulist if list_format else parse_cpumask)(
            text, self.kernel.nr_cpumask_bits)
        if not mask & self.kernel.online_cpus:
            raise fail(EINVAL, f"IRQ {irq}: no online CPU in the mask")
        self._set_affinity(desc, mask, False)

    def smp_affinity(self, irq: int) -> frozenset[int]:
        """The CPUs /proc/irq/<irq>/smp_affinity shows (show_irq_affinity()): the
        affinity, or the mask of a move still pending; EINVAL for no such interrupt."""
        desc = self.desc(irq)
        mask = desc.pending_mask if desc.pending_mask is not None else desc.irq_data.common.affinity
        return mask

    def irq_get_affinity_mask(self, irq: int) -> frozenset[int]:
        """irq_get_affinity_mask(): the affinity (irq_common_data.affinity; a pending
        move not yet carried out is not in it); EINVAL for no such interrupt."""
        return self.desc(irq).irq_data.common.affinity

    def irq_get_effective_affinity_mask(self, irq: int) -> frozenset[int]:
        """irq_data_get_effective_affinity_mask(): the CPUs the interrupt is routed to
        now (one CPU for an ITS LPI or an x86 vector); EINVAL for no such interrupt."""
        return self.desc(irq).irq_data.common.effective_affinity

    def read_smp_affinity(self, irq: int) -> str:
        """/proc/irq/<irq>/smp_affinity's text, without the newline (nr_cpu_ids wide)."""
        return cpumask_str(self.smp_affinity(irq), self.kernel.ncpus)

    def read_effective_affinity(self, irq: int) -> str:
        """/proc/irq/<irq>/effective_affinity's text, without the newline."""
        return cpumask_str(self.irq_get_effective_affinity_mask(irq), self.kernel.ncpus)

    def set_vcpu_affinity(self, irq: int, info: VcpuInfo) -> None:
        """irq_set_vcpu_affinity(): forward to (or take back from) a vCPU."""
        d = self.desc(irq).irq_data
        d.chip.irq_set_vcpu_affinity(d, info)  # type: ignore[union-attr]  # every allocated level has its chip

    irq_set_vcpu_affinity = set_vcpu_affinity      # Linux's names, as other code calls them
    irq_set_affinity = set_affinity

    # -- delivery --------------------------------------------------------------------------------

    def handle_domain_irq(self, domain: IrqDomain, hwirq: int, cpu: int) -> bool:
        """generic_handle_domain_irq(): run the handlers of ``hwirq`` on ``cpu``."""
        virq = domain.revmap.get(hwirq)          # find_mapping, inline
        if virq is None:
            return False
        self.run_handlers(self.descs[virq], cpu)
        return True

    def run_handlers(self, desc: IrqDesc, cpu: int) -> None:
        """handle_irq_event() on ``cpu`` (kernel.current_cpu is smp_processor_id())."""
        kstat = desc.kstat
        kstat[cpu] = kstat.get(cpu, 0) + 1
        kernel = self.kernel
        kernel.current_cpu = cpu
        handled = IRQ_NONE
        actions = desc.actions
        try:
            if len(actions) == 1 and not (trace_irq_handler_entry.enabled
                                          or trace_irq_handler_exit.enabled):
                a = actions[0]                  # the usual case: one handler, no tracing
                handled |= a.handler(desc.irq, a.dev_id)
            else:
                for a in list(actions):
                    if trace_irq_handler_entry.enabled:
                        trace_irq_handler_entry(kernel=kernel.name, cpu=cpu, irq=desc.irq,
                                                name=a.name)
                    ret = a.handler(desc.irq, a.dev_id)
                    if trace_irq_handler_exit.enabled:
                        trace_irq_handler_exit(kernel=kernel.name, cpu=cpu, irq=desc.irq,
                                               ret=ret)
                    handled |= ret
        finally:
            kernel.current_cpu = None
        if handled == IRQ_NONE:
            desc.spurious += 1

    def proc_interrupts(self) -> list[str]:
        """/proc/interrupts as show_interrupts() prints it, one string per line.

        A header of the online CPUs, then per interrupt that has a handler or
        has ever fired: the number right-aligned in a width that fits
        ``nr_irqs`` (at least 3), a 10-wide count per online CPU, the chip name
        right-aligned in 8, the hwirq in the same width as the number, the
        trigger (``Edge`` / ``Level``) left-aligned in 8 where the architecture
        has GENERIC_IRQ_SHOW_LEVEL (arm64, not x86), ``-`` and the flow
        handler's name (x86's "edge") left-aligned in 8, then the handlers'
        names.  The architecture's own lines (IPIs, ``Err:``) are not modelled.
        """
        prec, j = 3, 1000
        while prec < 10 and j <= self.nr_irqs:
            prec, j = prec + 1, j * 10
        cpus = sorted(self.kernel.online_cpus)
        lines = [" " * (prec + 8) + "".join(f"CPU{c:<8d}" for c in cpus)]
        show_level = getattr(self.kernel, "generic_irq_show_level", True)
        for irq in sorted(self.descs):
            desc = self.descs[irq]
            if not desc.actions and not any(desc.kstat.get(c, 0) for c in cpus):
                continue
            d = desc.irq_data
            line = f"{irq:>{prec}d}: " + "".join(f"{desc.kstat.get(c, 0):10d} " for c in cpus)
            if d.chip is None:
                line += f" {'None':>8}"
            else:
                line += f" {d.chip.name or '-':>8}"
            line += f" {d.hwirq:>{prec}d}" if d.domain is not None else " " * (prec + 1)
            if show_level:
                line += f" {'Level' if d.common.level else 'Edge':<8}"
            if desc.handler_name:
                line += f"-{desc.handler_name:<8}"
            if desc.actions:
                line += "  " + ", ".join(a.name for a in desc.actions)
            lines.append(line)
        return lines

    def __repr__(self) -> str:
        return f"<GenIrq {self.kernel.name} irqs={len(self.descs)} nr_irqs={self.nr_irqs}>"
