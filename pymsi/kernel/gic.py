"""The GICv3 and ITS drivers (drivers/irqchip/irq-gic-v3.c, irq-gic-v3-its.c).

The GICv3 driver finds each CPU's redistributor, sets up the CPU interfaces
and gives LPIs a domain ("GICv3") whose hwirq is the INTID.  The ITS driver
allocates the LPI property and pending tables, the ITS's device / collection
(/ vPE) tables and command queue, maps one collection per CPU, and provides
the MSI parent domain ("ITS"): per device an ITT sized for a power of two of
events (MAPD), per vector an EventID and an LPI (MAPTI on activation,
DISCARD on deactivation).  Its chip composes the message (GITS_TRANSLATER's
PA, data = EventID, through the IOMMU's answer for the descriptor), masks
through the LPI property byte plus INV, moves an interrupt with MOVI and
answers IRQ_SET_MASK_OK_DONE — the message stays — and forwards an LPI to a
vPE with irq_set_vcpu_affinity (GICv4: VMAPP, DISCARD + VMAPTI, VMOVI).

Probe and command stream follow Linux 6.1 (checked against a capture of it,
tests/data/arm64_smmuv3_s1.json): GITS_PIDR2 must say GICv3/GICv4; an
enabled ITS is quiesced; all GITS_BASER<n> are zeroed, then each typed one is
sized (page size 64K, 16K, 4K, whichever reads back; two-level if the table
would exceed two pages and Indirect sticks) and programmed inner-shareable
RaWaWb, falling back to what the ITS keeps; GITS_CBASER likewise; GITS_CTLR
is enabled last by read-modify-write.  A command whose builder names a
collection (MAPC, INVALL, MAPTI, INV, DISCARD, MOVI) is followed by a SYNC
to it — MOVI's SYNC goes to the collection the event leaves — and MAPD by
none; the pair is posted with one GITS_CWRITER write and checked to have been
consumed.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..core import gic_formats as F
from ..hw import gicv3 as G
from ..hw import its as I
from .base import EBUSY, EINVAL, EIO, ENODEV, ENOSPC, ENXIO, fail
from .irq import IRQ_NONE as _IRQ_NONE
from .irq import IRQ_SET_MASK_OK_DONE, GenIrq, IrqChip, IrqData, IrqDomain, IrqDomainOps
from .irq import trace_irq_handler_entry as _TRACE_ENTRY
from .irq import trace_irq_handler_exit as _TRACE_EXIT
from .msi import MsiAllocInfo, MsiMsg, msi_msg_set_addr

if TYPE_CHECKING:
    from .irq import IrqAllocArg
    from .kernel import Kernel
    from .pci import PciDev

_pack_cmd = struct.Struct("<4Q").pack          # one 32-byte ITS command
_SYNC = int(I.Cmd.SYNC)
_CWRITER_OFFSET = I.CWRITER_OFFSET.mask
# handle_irqs inlines these only for the classes it knows (a subclass keeps its override)
_CPUIF = G.CpuInterface
_RD = G.Redistributor
_PRIO, _PENDBASER_PA, _CLEAR = G.PRIORITY_MASK, G._PENDBASER_PA_MASK, G._BIT_CLEAR
_RUN_HANDLERS = GenIrq.run_handlers
_NOT_EOI = (F.SPURIOUS, 1022, 1021, 1020)       # what eoir1 counts as a bad EOI

LPI_BASE = F.LPI_BASE
LPI_PROP_DEFAULT_PRIO = 0xA0
LPI_PROP_GROUP1 = 1 << 1
LPI_PROP_ENABLED = 1 << 0
LPI_NRBITS = 16
ITS_CMD_QUEUE_SZ = 0x10000
ITS_PAGE = 0x10000
GITS_BASER_NR_REGS = 8
GITS_BASER_PAGES_MAX = 256
ITS_MAX_VPEID_BITS = 16
CTLR_IMDE = 1 << 1                     # GITS_CTLR.ImDe (GICv4.1)
ACK_POLLS = 16


def _page_round(size: int) -> int:
    """A size rounded up to whole 4 KiB kernel pages (get_order's granularity)."""
    return 1 << max((size - 1).bit_length(), 12)


class GicChip(IrqChip):
    """The GICv3 level of an LPI: nothing to do but EOI, which the CPU does."""

    name = "GICv3"


class GicDomainOps(IrqDomainOps):
    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: IrqAllocArg) -> None:
        hwirqs = cast("list[int]", arg)          # the LPIs the ITS level picked
        for i in range(nr):
            domain.set_hwirq_and_chip(virq + i, hwirqs[i], domain.host_data.chip)


class GicDriver:
    """irq-gic-v3: distributor, redistributors, CPU interfaces, the LPI domain."""

    def __init__(self, kernel: Kernel, gicd_base: int, gicr_base: int,
                 cpu_interfaces: list[G.CpuInterface]) -> None:
        self.kernel = kernel
        self.gicd_base, self.gicr_base = gicd_base, gicr_base
        self.cpuifs = cpu_interfaces          # ICC_* system registers of each CPU
        #: the kernel's cpu_irqs while it is this driver's handle_irqs (boot sets both)
        self._entry: Any = None
        self.chip = GicChip()
        self.domain = IrqDomain(kernel.irq, "GICv3", GicDomainOps(), host_data=self)
        self.rd_base: dict[int, int] = {}

    def probe(self) -> None:
        b = self.kernel.bus
        typer = b.read(self.gicd_base + G.GICD_TYPER)
        self.id_bits = G.GICD_TYPER_IDBITS.get(typer) + 1
        self.has_lpis = bool(G.GICD_TYPER_LPIS.get(typer))
        self.version = b.read(self.gicd_base + G.GICD_PIDR2) >> 4 & 0xF
        b.write(self.gicd_base + G.GICD_CTLR, G.GICD_CTLR_ENABLE_G1)
        frame = G.GICV4_FRAME if self.version >= 4 else G.GICV3_FRAME
        addr = self.gicr_base
        while True:                                   # gic_iterate_rdists()
            typer = b.read(addr + G.GICR_TYPER, 8)
            self.rd_base[G.GICR_TYPER_PROCESSOR_NUMBER.get(typer)] = addr
            if G.GICR_TYPER_LAST.get(typer):
                break
            addr += frame
        for cpu in self.kernel.online_cpus:
            if cpu not in self.rd_base:
                raise fail(EINVAL, f"CPU{cpu} has no redistributor")
            b.write(self.rd_base[cpu] + G.GICR_WAKER, 0)
            cpuif = self.cpuifs[cpu]
            cpuif.pmr = 0xF0                           # DEFAULT_PMR_VALUE
            cpuif.igrpen1 = 1
        lpis = "on" if self.has_lpis else "off"
        self.kernel.printk(f"GICv3: {self.id_bits} bits of IDs, LPIs {lpis}, "
                           f"{len(self.rd_base)} redistributors")

    def handle_irq(self, cpu: int) -> int:
        """gic_handle_irq() on ``cpu``: acknowledge, dispatch and EOI until nothing is left."""
        intid = self.cpuifs[cpu].iar1()
        if intid == G.SPURIOUS:                 # the usual answer of an idle CPU
            return 0
        return self._handle_from(cpu, intid)

    def _handle_from(self, cpu: int, intid: int) -> int:
        """The rest of handle_irq once ``intid`` was acknowledged."""
        cpuif = self.cpuifs[cpu]
        kernel = self.kernel
        iar1, eoir1 = cpuif.iar1, cpuif.eoir1
        handle, domain = kernel.irq.handle_domain_irq, self.domain
        n = 0
        while intid != G.SPURIOUS:
            if not handle(domain, intid, cpu):
                kernel.printk(f"GICv3: spurious interrupt {intid} on CPU{cpu}")
            eoir1(intid)
            n += 1
            intid = iar1()
        return n

    def handle_irqs(self, cpus: Iterable[int] | None = None) -> int:
        """:meth:`handle_irq` on each of ``cpus`` in turn (the kernel's IRQ entry on all
        of them); returns how many interrupts ran.

        With ``cpus`` None it is ``Kernel.handle_interrupts`` (boot makes it the
        kernel's, one frame instead of two): the online CPUs in order, while this is the
        kernel's ``cpu_irqs``; otherwise the kernel's own method."""
        if cpus is None:                        # Kernel.handle_interrupts, inline
            kernel = self.kernel
            if kernel.cpu_irqs is not self._entry:
                return type(kernel).handle_interrupts(kernel)
            online = kernel.online_cpus
            if online is not kernel._cpu_order_of:        # sorted once per CPU set
                kernel._cpu_order, kernel._cpu_order_of = tuple(sorted(online)), online
            cpus = kernel._cpu_order
        # The hot path of every interrupt.  Inline, each with the same effects: the
        # IAR of a CPU interface with nothing pending (the spurious answer and its
        # count, without a frame), handle_domain_irq, run_handlers' case of one handler
        # without tracing, and EOIR.
        n = 0
        cpuifs, spurious = self.cpuifs, G.SPURIOUS
        for cpu in cpus:
            cpuif = cpuifs[cpu]
            if type(cpuif) is _CPUIF:
                if not cpuif._rd.pending:
                    cpuif.stats["spurious"] += 1         # iar1() of an idle CPU
                    continue
                plain = True
                rd = cpuif._rd
                pending = rd.pending
                if len(pending) == 1 and type(rd) is _RD and cpuif.igrpen1 and \
                        not rd._rekey_all:
                    # iar1()'s case of one LPI pending on a Redistributor, inline: it is
                    # the candidate if enabled and above the masks; acknowledged, its
                    # pending bit cleared in the table
                    below = cpuif.pmr if cpuif.pmr < 0x100 else 0x100
                    active = cpuif.active
                    if active and active[-1] < below:
                        below = active[-1]
                    (intid,) = pending
                    cfg = rd._config.get(intid)
                    if cfg is None:
                        cfg = rd.config(intid)
                    if cfg & 1 and cfg & _PRIO < below:
                        pending.discard(intid)
                        gic = rd.gic
                        bit = gic._bit
                        table = rd.pendbaser & _PENDBASER_PA
                        if bit is None or bit(table + (intid >> 3), intid & 7, _CLEAR) < 0:
                            gic.pending_bit(table, intid, False)
                        active.append(cfg & _PRIO)
                        cpuif.stats["acks"] += 1
                    else:
                        cpuif.stats["spurious"] += 1
                        continue
                else:
                    intid = cpuif.iar1()
            else:
                plain = False
                intid = cpuif.iar1()
            if intid == spurious:
                continue
            kernel = self.kernel
            genirq = kernel.irq
            revmap, descs = self.domain.revmap, genirq.descs
            if plain:                   # a CpuInterface (the guest's vGIC one is not)
                rd, cstats, active = cpuif._rd, cpuif.stats, cpuif.active
            fast = plain and type(genirq).run_handlers is _RUN_HANDLERS
            while intid != spurious:   # _handle_from with handle_domain_irq, inline
                virq = revmap.get(intid)
                if virq is None:
                    kernel.printk(f"GICv3: spurious interrupt {intid} on CPU{cpu}")
                else:
                    desc = descs[virq]
                    actions = desc.actions
                    if fast and len(actions) == 1 and not (_TRACE_ENTRY.enabled
                                                           or _TRACE_EXIT.enabled):
                        kstat = desc.kstat                  # run_handlers, inline
                        kstat[cpu] = kstat.get(cpu, 0) + 1
                        kernel.current_cpu = cpu
                        a = actions[0]
                        try:
                            handled = _IRQ_NONE | a.handler(desc.irq, a.dev_id)
                        finally:
                            kernel.current_cpu = None
                        if handled == _IRQ_NONE:
                            desc.spurious += 1
                    else:
                        genirq.run_handlers(desc, cpu)
                if plain:                                   # eoir1, inline
                    if not active or intid in _NOT_EOI:
                        cstats["bad_eois"] += 1
                    else:
                        active.pop()
                        cstats["eois"] += 1
                    n += 1
                    if not rd.pending:
                        cstats["spurious"] += 1             # the final iar1(), inline
                        break
                else:
                    cpuif.eoir1(intid)
                    n += 1
                intid = cpuif.iar1()
        return n

    def __repr__(self) -> str:
        return (f"<GicDriver {self.kernel.name} gicd={self.gicd_base:#x} "
                f"gicr={self.gicr_base:#x} cpus={len(self.cpuifs)}>")


class VcpuCmd(enum.Enum):
    """The ITS's its_vcpu_info commands."""

    MAP_VLPI = "map"
    UNMAP_VLPI = "unmap"


@dataclass(eq=False)
class ItsVpe:
    """struct its_vpe: a vCPU as the GICv4 sees it."""

    vpe_id: int
    vpt: int                    # virtual pending table (64 KiB aligned)
    vprop: int                  # virtual LPI property table (the VM's)
    col: int                    # the CPU it is mapped to (VMAPP / VMOVP target)
    doorbell: int = F.SPURIOUS  # physical LPI rung when a vLPI arrives while not resident
    mapped: bool = False


@dataclass
class VcpuInfo:
    """struct its_cmd_info: what irq_set_vcpu_affinity() carries to the ITS."""

    cmd: VcpuCmd
    vpe: ItsVpe | None = None
    vintid: int = 0
    doorbell: bool = True


@dataclass(eq=False)
class ItsDevice:
    """struct its_device: a DeviceID, its ITT and its events."""

    device_id: int
    nr_ites: int
    itt: int
    itt_size: int
    lpi_base: int
    nr_lpis: int
    events: dict[int, int] = field(default_factory=dict)     # event -> CPU (col_map)
    vlpi: dict[int, VcpuInfo] = field(default_factory=dict)  # forwarded events
    users: int = 0
    free_from: int = 0          # every event below this one is allocated

    def __repr__(self) -> str:
        return (f"ItsDevice(device_id={self.device_id:#x}, itt={self.itt:#x}, "
                f"lpi_base={self.lpi_base}, nr_lpis={self.nr_lpis}, events={len(self.events)}, "
                f"vlpi={len(self.vlpi)})")


class ItsChip(IrqChip):
    """its_irq_chip."""

    name = "ITS"

    def __init__(self, its: ItsDriver) -> None:
        self.its = its

    def _event(self, d: IrqData) -> tuple[ItsDevice, int]:
        dev: ItsDevice = d.chip_data
        return dev, d.hwirq - dev.lpi_base

    def irq_mask(self, d: IrqData) -> None:
        self.its.lpi_update_config(d, enable=False)

    def irq_unmask(self, d: IrqData) -> None:
        self.its.lpi_update_config(d, enable=True)

    def irq_compose_msi_msg(self, d: IrqData) -> MsiMsg:
        """its_irq_compose_msi_msg(): GITS_TRANSLATER and the EventID, IOMMU applied."""
        dev, event = self._event(d)
        return MsiMsg.of(msi_msg_set_addr(d.common.msi_desc, self.its.translater), event)

    def irq_set_affinity(self, d: IrqData, mask: frozenset[int], force: bool) -> int:
        """its_set_affinity(): MOVI to the chosen CPU's collection; the message stays."""
        dev, event = self._event(d)
        if event in dev.vlpi:
            raise fail(EINVAL, "LPI is forwarded to a vCPU")
        old = dev.events[event]
        load = self.its.lpi_count(d)
        load[old] -= 1                          # moving back to where it is costs nothing
        try:
            cpu = self.its.select_cpu(mask, load)
        finally:
            load[old] += 1
        if cpu != old:
            # its_build_movi_cmd() syncs the collection the event was on: the map is
            # updated only after the command.
            self.its.send(I.Cmd.MOVI, d0=F.C0_DEVICEID.encode(dev.device_id),
                          d1=F.C1_EVENTID.encode(event),
                          d2=F.C2_ICID.encode(cpu), sync_cpu=old)
            dev.events[event] = cpu
            load[old] -= 1
            load[cpu] += 1
        d.common.effective_affinity = frozenset({cpu})
        return IRQ_SET_MASK_OK_DONE

    def irq_set_vcpu_affinity(self, d: IrqData, info: VcpuInfo) -> None:
        self.its.set_vcpu_affinity(d, info)


class ItsDomainOps(IrqDomainOps):
    """its_domain_ops."""

    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: IrqAllocArg) -> None:
        info = cast(MsiAllocInfo, arg)             # the PCI/MSI level's msi_alloc_info_t
        its: ItsDriver = domain.host_data
        dev: ItsDevice = info.parent_data
        free, events = [], dev.events
        for e in range(dev.free_from, dev.nr_lpis):      # the first nr free, lowest first
            if e not in events:
                free.append(e)
                if len(free) == nr:
                    break
        if len(free) < nr:
            raise fail(ENOSPC, f"ITS device {dev.device_id:#x} has no free events")
        # iommu_dma_prepare_msi(): where must the device write to reach the doorbell?
        its.kernel.iommu.dma_prepare_msi(info.desc, its.translater)
        hwirqs = [dev.lpi_base + e for e in free[:nr]]
        domain.alloc_irqs_parent(virq, nr, hwirqs)
        for i, hwirq in enumerate(hwirqs):
            domain.set_hwirq_and_chip(virq + i, hwirq, its.chip, dev)
            dev.events[hwirq - dev.lpi_base] = -1          # allocated, not yet routed
            dev.users += 1
        if free:
            dev.free_from = free[-1] + 1

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        its: ItsDriver = domain.host_data
        for i in range(nr):
            d = its.kernel.irq.irq_data_at(virq + i, domain)
            dev: ItsDevice = d.chip_data
            its.write_prop(d.hwirq, LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1)
            dev.events.pop(d.hwirq - dev.lpi_base, None)
            dev.free_from = min(dev.free_from, d.hwirq - dev.lpi_base)
            dev.users -= 1
        domain.free_irqs_parent(virq, nr)

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        """its_irq_domain_activate(): pick a CPU, MAPTI to its collection."""
        its: ItsDriver = domain.host_data
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        load = its.load[bool(d.common.managed)]           # lpi_count(d), inline
        cpu = its.select_cpu(d.common.affinity or its.kernel.online_cpus, load)
        its.send(I.Cmd.MAPTI, d0=F.C0_DEVICEID.encode(dev.device_id),
                 d1=F.C1_PINTID.encode(d.hwirq) | F.C1_EVENTID.encode(event),
                 d2=F.C2_ICID.encode(cpu), sync_cpu=cpu)
        dev.events[event] = cpu
        load[cpu] += 1
        d.common.effective_affinity = frozenset({cpu})

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        """its_irq_domain_deactivate(): DISCARD the event."""
        its: ItsDriver = domain.host_data
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        cpu = dev.events.get(event, -1)
        its.send(I.Cmd.DISCARD, d0=F.C0_DEVICEID.encode(dev.device_id),
                 d1=F.C1_EVENTID.encode(event),
                 sync_cpu=max(cpu, 0))
        if cpu >= 0:
            its.lpi_count(d)[cpu] -= 1
        dev.vlpi.pop(event, None)
        d.common.forwarded_to_vcpu = False
        dev.events[event] = -1


class ItsDriver:
    """struct its_node: one ITS, its tables and command queue, the "ITS" MSI domain."""

    def __init__(self, kernel: Kernel, gic: GicDriver, base: int) -> None:
        self.kernel, self.gic, self.base = kernel, gic, base
        self.translater = base + I.GITS_TRANSLATER
        self.chip = ItsChip(self)
        self.domain = IrqDomain(kernel.irq, "ITS", ItsDomainOps(), parent=gic.domain,
                                host_data=self, isolated_msi=True)
        self.devices: dict[int, ItsDevice] = {}
        self.vpes: dict[int, ItsVpe] = {}
        self._lpi_free: list[tuple[int, int]] = []       # free [base, end) ranges
        # cpu_lpi_count: LPIs routed to each CPU, managed and unmanaged counted apart.
        self.load = {managed: dict.fromkeys(kernel.online_cpus, 0) for managed in (False, True)}

    # -- probe -------------------------------------------------------------------------

    def _reg(self, off: int, size: int = 8) -> int:
        value: int = self.kernel.bus.read(self.base + off, size)
        return value

    def _wreg(self, off: int, value: int, size: int = 8) -> None:
        self.kernel.bus.write(self.base + off, value, size)

    def probe(self) -> None:
        """its_probe_one() + its_init(): identify, quiesce, tables, queue, collections."""
        k = self.kernel
        if self._reg(I.GITS_PIDR2, 4) & I.PIDR2_ARCHREV.mask not in (I.PIDR2_ARCHREV(3),
                                                                      I.PIDR2_ARCHREV(4)):
            k.printk(f"ITS@{self.base:#x}: No ITS detected, giving up")
            raise fail(ENODEV, "no ITS at this address")
        self._force_quiescent()
        for n in range(GITS_BASER_NR_REGS):               # its_reset_one()
            self._wreg(I.GITS_BASER + 8 * n, 0)
        typer = self._reg(I.GITS_TYPER)
        self.ite_size = I.TYPER_ITT_ENTRY_SIZE.get(typer) + 1
        self.devbits = I.TYPER_DEVBITS.get(typer) + 1
        self.id_bits = I.TYPER_ID_BITS.get(typer) + 1
        self.virtual = bool(I.TYPER_VIRTUAL.get(typer))
        self.indirect_dt = False
        self.tables: dict[I.BaserType, tuple[int, bool, int, int]] = {}
        self._alloc_tables()
        self._setup_cmdq()
        ctlr = self._reg(I.GITS_CTLR, 4) | I.CTLR_ENABLED
        self._wreg(I.GITS_CTLR, ctlr, 4)
        self._init_lpis()
        for cpu in sorted(k.online_cpus):                 # its_cpu_init_collections()
            self.send(I.Cmd.MAPC, d2=F.C2_V(1) | F.C2_RDBASE.encode(cpu) | F.C2_ICID.encode(cpu),
                      sync_cpu=cpu)
            self.send(I.Cmd.INVALL, d2=F.C2_ICID.encode(cpu), sync_cpu=cpu)
        k.printk(f"ITS@{self.base:#x}: {self.devbits}-bit DeviceIDs, {self.id_bits}-bit "
                 f"EventIDs, ITE {self.ite_size} bytes, {'GICv4' if self.virtual else 'GICv3'}")

    def _force_quiescent(self) -> None:
        """its_force_quiescent(): an enabled ITS is disabled and must become quiescent."""
        ctlr = self._reg(I.GITS_CTLR, 4)
        if not ctlr & I.CTLR_ENABLED and ctlr & I.CTLR_QUIESCENT:
            return
        self._wreg(I.GITS_CTLR, ctlr & ~(I.CTLR_ENABLED | CTLR_IMDE), 4)
        for _ in range(ACK_POLLS):
            if self._reg(I.GITS_CTLR, 4) & I.CTLR_QUIESCENT:
                return
        raise fail(EBUSY, "ITS did not become quiescent")

    def _write_baser(self, n: int, value: int) -> int:
        """its_write_baser(): write GITS_BASER<n>, return what reads back."""
        self._wreg(I.GITS_BASER + 8 * n, value)
        return self._reg(I.GITS_BASER + 8 * n)

    def _probe_psz(self, n: int) -> int:
        """its_probe_baser_psz(): the largest of 64K / 16K / 4K pages the table takes."""
        for psz, code in ((0x10000, 2), (0x4000, 1), (0x1000, 0)):
            val = I.BASER_PAGE_SIZE.put(self._reg(I.GITS_BASER + 8 * n), code)
            if I.BASER_PAGE_SIZE.get(self._write_baser(n, val)) == code:
                return psz
        raise fail(ENXIO, f"GITS_BASER{n} takes no page size")

    def _alloc_tables(self) -> None:
        """its_alloc_tables(): size, allocate and program each GITS_BASER<n> that has a
        type, asking for inner-shareable RaWaWb memory and taking what sticks."""
        cache, shr = I.CACHE_RAWAWB, I.SH_INNER
        for n in range(GITS_BASER_NR_REGS):
            baser = self._reg(I.GITS_BASER + 8 * n)
            btype = I.BASER_TYPE.get(baser)
            if not btype:
                continue
            psz = self._probe_psz(n)
            esz = I.BASER_ENTRY_SIZE.get(baser) + 1
            size, indirect = psz, False
            if btype in (I.BaserType.DEVICES, I.BaserType.VPES):
                if btype == I.BaserType.VPES and not self.virtual:
                    continue
                ids = self.devbits if btype == I.BaserType.DEVICES else ITS_MAX_VPEID_BITS
                tsz = esz
                if esz << ids > 2 * psz:                  # its_parse_indirect_baser()
                    probe = (I.BASER_SHAREABILITY(I.SH_INNER)
                             | I.BASER_INNER_CACHE(I.CACHE_RAWAWB) | I.BASER_INDIRECT(1))
                    indirect = bool(I.BASER_INDIRECT.get(self._write_baser(n, probe)))
                    if indirect:
                        ids -= (psz // esz).bit_length() - 1
                        tsz = 8                               # GITS_LVL1_ENTRY_SIZE
                size = max(_page_round(tsz << ids), psz)
            pages = min(size // psz, GITS_BASER_PAGES_MAX)
            table = self.kernel.mm.alloc(pages * psz, psz)
            while True:                                       # its_setup_baser()
                val = (table | I.BASER_TYPE(btype) | I.BASER_ENTRY_SIZE(esz - 1)
                       | I.BASER_SIZE(pages - 1) | I.BASER_INNER_CACHE(cache)
                       | I.BASER_SHAREABILITY(shr) | I.BASER_VALID(1)
                       | I.BASER_INDIRECT(int(indirect))
                       | I.BASER_PAGE_SIZE({0x1000: 0, 0x4000: 1, 0x10000: 2}[psz]))
                got = self._write_baser(n, val)
                if (val ^ got) & I.BASER_SHAREABILITY.mask:   # shareability did not stick
                    shr = I.BASER_SHAREABILITY.get(got)
                    if shr == I.SH_NONE:
                        cache = I.CACHE_NC
                    continue
                break
            if val != got:
                self.kernel.mm.free(table, pages * psz)
                raise fail(ENXIO, f"GITS_BASER{n} doesn't stick: {val:#x} {got:#x}")
            self.tables[I.BaserType(btype)] = (table, indirect, esz, psz)
            if btype == I.BaserType.DEVICES:
                self.dt, self.indirect_dt, self.dt_esz, self.dt_psz = table, indirect, esz, psz
            cache = I.BASER_INNER_CACHE.get(got)              # the next table asks the same
            shr = I.BASER_SHAREABILITY.get(got)

    def _setup_cmdq(self) -> None:
        """The command queue: GITS_CBASER (inner-shareable RaWaWb, or non-cacheable if
        shareability does not stick), then GITS_CWRITER = 0."""
        self.cmdq = self.kernel.mm.alloc(ITS_CMD_QUEUE_SZ, ITS_CMD_QUEUE_SZ)
        baser = (self.cmdq | I.BASER_INNER_CACHE(I.CACHE_RAWAWB)
                 | I.BASER_SHAREABILITY(I.SH_INNER) | I.CBASER_SIZE(ITS_CMD_QUEUE_SZ // 4096 - 1)
                 | I.CBASER_VALID(1))
        self._wreg(I.GITS_CBASER, baser)
        got = self._reg(I.GITS_CBASER)
        if (got ^ baser) & I.BASER_SHAREABILITY.mask and not I.BASER_SHAREABILITY.get(got):
            baser &= ~(I.BASER_SHAREABILITY.mask | I.BASER_INNER_CACHE.mask)
            baser |= I.BASER_INNER_CACHE(I.CACHE_NC)
            self._wreg(I.GITS_CBASER, baser)
        self._wreg(I.GITS_CWRITER, 0)
        self.cmd_write = 0

    def _init_lpis(self) -> None:
        """its_cpu_init_lpis(): one property table, a pending table per CPU, LPIs on."""
        k, mm, b = self.kernel, self.kernel.mm, self.kernel.bus
        self.lpi_bits = min(self.gic.id_bits, LPI_NRBITS)
        nr = 1 << self.lpi_bits
        self.prop = mm.alloc(nr, ITS_PAGE)
        k.ram.write(self.prop, bytes([LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1]) * (nr - LPI_BASE))
        self._lpi_free = [(LPI_BASE, nr)]
        for cpu in sorted(k.online_cpus):
            rd = self.gic.rd_base[cpu]
            pend = mm.alloc(max(nr // 8, ITS_PAGE), ITS_PAGE)
            b.write(rd + G.GICR_PROPBASER, self.prop | (self.lpi_bits - 1), 8)
            b.write(rd + G.GICR_PENDBASER, pend, 8)
            b.write(rd + G.GICR_CTLR, G.GICR_CTLR_ENABLE_LPIS)

    # -- commands -----------------------------------------------------------------------

    def _queue_full(self) -> None:
        """its_allocate_entry() giving up: the queue does not drain."""
        self.kernel.printk(f"ITS@{self.base:#x}: ITS queue not draining")
        raise fail(EIO, "ITS command queue full")

    def send(self, op: I.Cmd, d0: int = 0, d1: int = 0, d2: int = 0, d3: int = 0,
             sync_cpu: int | None = None) -> None:
        """its_send_single_command(): the command and, when its builder names a
        collection (``sync_cpu``), a SYNC to it; one GITS_CWRITER write for both
        (32-bit, as Linux's writel_relaxed), then wait until GITS_CREADR passes them.

        Like Linux, the driver checks its own parameters; it can only see the
        queue progress (a stalled queue times out as EIO).
        """
        # its_allocate_entry() + build for the command and its SYNC: per command a
        # GITS_CREADR read (queue full?) and its 32 bytes written to the queue
        # (the ITS reads the queue only once GITS_CWRITER moves, so a command and its
        # SYNC are written with one 64-byte store unless the command ends the queue)
        k = self.kernel
        bus, ram, creadr = k.bus, k.ram, self.base + I.GITS_CREADR
        w = self.cmd_write
        nxt = (w + 32) % ITS_CMD_QUEUE_SZ
        if nxt == bus.read(creadr, 8) & _CWRITER_OFFSET:
            self._queue_full()
        cmd = _pack_cmd(d0 | op, d1, d2, d3)
        if sync_cpu is not None:
            sync = _pack_cmd(_SYNC, 0, F.C2_RDBASE.encode(sync_cpu), 0)
            after = (nxt + 32) % ITS_CMD_QUEUE_SZ
            if after == bus.read(creadr, 8) & _CWRITER_OFFSET:
                ram.write(self.cmdq + w, cmd)
                self.cmd_write = nxt
                self._queue_full()
            if nxt:
                ram.write(self.cmdq + w, cmd + sync)
            else:                                         # the command ends the queue
                ram.write(self.cmdq + w, cmd)
                ram.write(self.cmdq, sync)
            nxt = after
        else:
            ram.write(self.cmdq + w, cmd)
        w = self.cmd_write = nxt
        bus.write(self.base + I.GITS_CWRITER, w, 4)
        r = bus.read(creadr, 8)
        if r != w:                                        # its_wait_for_range_completion()
            self.kernel.printk(f"ITS@{self.base:#x}: queue stuck at {r:#x} (CWRITER {w:#x})")
            raise fail(EIO, "ITS command queue timeout")

    # -- LPIs and devices ------------------------------------------------------------------

    def alloc_lpis(self, n: int) -> int:
        """its_lpi_alloc(): a free range of ``n`` LPIs (first fit)."""
        for i, (lo, hi) in enumerate(self._lpi_free):
            if hi - lo >= n:
                self._lpi_free[i] = (lo + n, hi)
                return lo
        raise fail(ENOSPC, "out of LPIs")

    def free_lpis(self, base: int, n: int) -> None:
        self._lpi_free.append((base, base + n))
        self._lpi_free.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in self._lpi_free:
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            elif hi > lo:
                merged.append((lo, hi))
        self._lpi_free = merged

    def write_prop(self, lpi: int, byte: int) -> None:
        self.kernel.ram.write(self.prop + lpi - LPI_BASE, bytes([byte]))

    def lpi_update_config(self, d: IrqData, enable: bool) -> None:
        """lpi_update_config(): the property byte, then INV so the GIC rereads it."""
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        if event in dev.vlpi:
            vpe = dev.vlpi[event].vpe
            assert vpe is not None                        # a forwarded event has its vPE
            vintid = dev.vlpi[event].vintid
            cur = self.kernel.ram.read(vpe.vprop + vintid - LPI_BASE, 1)[0]
            self.kernel.ram.write(vpe.vprop + vintid - LPI_BASE,
                                  bytes([cur | 1 if enable else cur & ~1]))
            self.send(I.Cmd.INV, d0=F.C0_DEVICEID.encode(dev.device_id),
                      d1=F.C1_EVENTID.encode(event))
            self.send(I.Cmd.VSYNC, d1=F.C1_VPEID.encode(vpe.vpe_id))
            return
        self.write_prop(d.hwirq, LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1
                        | (LPI_PROP_ENABLED if enable else 0))
        self.send(I.Cmd.INV, d0=F.C0_DEVICEID.encode(dev.device_id), d1=F.C1_EVENTID.encode(event),
                  sync_cpu=max(dev.events.get(event, 0), 0))

    def lpi_count(self, d: IrqData) -> dict[int, int]:
        """its_read_lpi_count()'s table for ``d``: managed interrupts are balanced
        against managed ones only, unmanaged against unmanaged (Linux 6.1)."""
        return self.load[bool(d.common.managed)]

    def select_cpu(self, mask: frozenset[int], load: dict[int, int] | None = None) -> int:
        """its_select_cpu() / cpumask_pick_least_loaded(): the online CPU in ``mask``
        with the fewest LPIs in ``load`` (default: the unmanaged count), lowest first."""
        cpus = mask & self.kernel.online_cpus
        if not cpus:
            raise fail(EINVAL, "no online CPU in the affinity mask")
        load = self.load[False] if load is None else load
        best, best_load = -1, 0
        for c in cpus:                          # the key (load, CPU) is unique: no sort
            n = load.get(c, 0)
            if best < 0 or n < best_load or (n == best_load and c < best):
                best, best_load = c, n
        return best

    def _alloc_table_entry(self, btype: I.BaserType, index: int) -> None:
        """its_alloc_table_entry(): with a two-level table, the level-2 page that holds
        ``index`` (allocated and made valid in the level-1 table if missing)."""
        table = self.tables.get(btype)
        if table is None or not table[1]:
            return
        base, _, esz, psz = table
        l1 = base + 8 * (index // (psz // esz))
        if not F.L1E_VALID.get(self.kernel.ram.read_u64(l1)):
            page = self.kernel.mm.alloc(psz, psz)
            self.kernel.ram.write_u64(l1, F.L1E_VALID(1) | F.L1E_ADDR(page))

    def msi_prepare(self, dev: PciDev, nvec: int) -> ItsDevice:
        """its_msi_prepare(): an ITS device (ITT, MAPD) for ``dev``'s DeviceID."""
        device_id = dev.rid                               # IORT: identity on virt
        if device_id >> self.devbits:
            raise fail(EINVAL, f"DeviceID {device_id:#x} too wide")
        existing = self.devices.get(device_id)
        if existing is not None:
            return existing
        nr_ites = max(2, 1 << (nvec - 1).bit_length())
        self._alloc_table_entry(I.BaserType.DEVICES, device_id)
        itt_size = max(nr_ites * self.ite_size, 256)
        itt = self.kernel.mm.alloc(itt_size, 256)
        lpi_base = self.alloc_lpis(nr_ites)
        # its_build_mapd_cmd() names no collection: MAPD is not followed by a SYNC.
        self.send(I.Cmd.MAPD, d0=F.C0_DEVICEID.encode(device_id),
                  d1=F.C1_SIZE.encode(nr_ites.bit_length() - 2),
                  d2=F.C2_V(1) | F.C2_ITT.encode(itt >> 8))
        itsdev = ItsDevice(device_id, nr_ites, itt, itt_size, lpi_base, nr_ites)
        self.devices[device_id] = itsdev
        return itsdev

    def msi_release(self, dev: PciDev) -> None:
        """its_free_device(): once the last event is gone, MAPD V=0, free ITT and LPIs."""
        itsdev = self.devices.get(dev.rid)
        if itsdev is None or itsdev.users:
            return
        self.send(I.Cmd.MAPD, d0=F.C0_DEVICEID.encode(itsdev.device_id), d1=0, d2=0)
        self.kernel.mm.free(itsdev.itt, itsdev.itt_size)
        self.free_lpis(itsdev.lpi_base, itsdev.nr_lpis)
        del self.devices[itsdev.device_id]

    # -- GICv4 -------------------------------------------------------------------------------

    def map_vpe(self, vpe: ItsVpe) -> None:
        """its_map_vm() for one vPE: VMAPP (+ VINVALL)."""
        if not self.virtual:
            raise fail(EINVAL, "this ITS is not GICv4")
        if vpe.mapped:
            return
        self._alloc_table_entry(I.BaserType.VPES, vpe.vpe_id)
        vpeid = F.C1_VPEID.encode(vpe.vpe_id)
        self.send(I.Cmd.VMAPP, d1=vpeid, d2=F.C2_V(1) | F.C2_RDBASE.encode(vpe.col),
                  d3=F.C3_VPT_ADDR.encode(vpe.vpt >> 16) | F.C3_VPT_SIZE.encode(self.id_bits - 1))
        self.send(I.Cmd.VINVALL, d1=vpeid)
        self.send(I.Cmd.VSYNC, d1=vpeid)
        vpe.mapped = True
        self.vpes[vpe.vpe_id] = vpe

    def unmap_vpe(self, vpe: ItsVpe) -> None:
        """its_vpe_irq_domain_deactivate() for one vPE: VMAPP V=0 on this ITS (no
        VSYNC after: the vPE no longer exists there); forgotten by the driver."""
        if not vpe.mapped:
            return
        self.send(I.Cmd.VMAPP, d1=F.C1_VPEID.encode(vpe.vpe_id), d2=0)
        vpe.mapped = False
        if self.vpes.get(vpe.vpe_id) is vpe:
            del self.vpes[vpe.vpe_id]

    def move_vpe(self, vpe: ItsVpe, cpu: int) -> None:
        """its_vpe_set_affinity(): VMOVP to another redistributor."""
        vpeid = F.C1_VPEID.encode(vpe.vpe_id)
        self.send(I.Cmd.VMOVP, d1=vpeid, d2=F.C2_RDBASE.encode(cpu))
        self.send(I.Cmd.VSYNC, d1=vpeid)
        vpe.col = cpu

    def set_vcpu_affinity(self, d: IrqData, info: VcpuInfo) -> None:
        """its_irq_set_vcpu_affinity(): map / unmap an event as a vLPI."""
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        if info.cmd == VcpuCmd.MAP_VLPI:
            vpe = info.vpe
            assert vpe is not None                        # MAP_VLPI names the vPE
            self.map_vpe(vpe)
            db = vpe.doorbell if info.doorbell else F.SPURIOUS
            vpeid = F.C1_VPEID.encode(vpe.vpe_id)
            old = dev.vlpi.get(event)
            if old is not None:                           # already forwarded: move it
                self.send(I.Cmd.VMOVI, d0=F.C0_DEVICEID.encode(dev.device_id),
                          d1=vpeid | F.C1_EVENTID.encode(event),
                          d2=F.C2_DOORBELL.encode(db) | F.C2_D(1))
            else:
                self.send(I.Cmd.DISCARD, d0=F.C0_DEVICEID.encode(dev.device_id),
                          d1=F.C1_EVENTID.encode(event),
                          sync_cpu=max(dev.events.get(event, 0), 0))
                self.send(I.Cmd.VMAPTI, d0=F.C0_DEVICEID.encode(dev.device_id),
                          d1=vpeid | F.C1_EVENTID.encode(event),
                          d2=F.C2_DOORBELL.encode(db) | F.C2_VINTID.encode(info.vintid))
            self.send(I.Cmd.VSYNC, d1=vpeid)
            dev.vlpi[event] = info
            d.common.forwarded_to_vcpu = True
        elif info.cmd == VcpuCmd.UNMAP_VLPI:
            if event not in dev.vlpi:
                raise fail(EINVAL, "LPI is not forwarded")
            cpu = max(dev.events.get(event, 0), 0)
            self.send(I.Cmd.DISCARD, d0=F.C0_DEVICEID.encode(dev.device_id),
                      d1=F.C1_EVENTID.encode(event))
            self.send(I.Cmd.MAPTI, d0=F.C0_DEVICEID.encode(dev.device_id),
                      d1=F.C1_PINTID.encode(d.hwirq) | F.C1_EVENTID.encode(event),
                      d2=F.C2_ICID.encode(cpu), sync_cpu=cpu)
            del dev.vlpi[event]
            d.common.forwarded_to_vcpu = False
            self.lpi_update_config(d, enable=True)
        else:
            raise fail(EINVAL, f"unknown vCPU command {info.cmd}")

    def __repr__(self) -> str:
        return (f"<ItsDriver {self.kernel.name} base={self.base:#x} devices={len(self.devices)} "
                f"vpes={len(self.vpes)}>")
