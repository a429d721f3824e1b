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
Every command is followed by a SYNC and checked to have been consumed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..hw import gicv3 as G
from ..hw import its as I
from .base import EINVAL, EIO, ENOSPC, fail
from .irq import IRQ_SET_MASK_OK_DONE, IrqChip, IrqData, IrqDomain, IrqDomainOps
from .msi import MsiAllocInfo, MsiMsg, msi_msg_set_addr

LPI_BASE = 8192
LPI_PROP_DEFAULT_PRIO = 0xA0
LPI_PROP_GROUP1 = 1 << 1
LPI_PROP_ENABLED = 1 << 0
LPI_NRBITS = 16
ITS_CMD_QUEUE_SZ = 0x10000
ITS_PAGE = 0x10000


class GicChip(IrqChip):
    """The GICv3 level of an LPI: nothing to do but EOI, which the CPU does."""

    name = "GICv3"


class GicDomainOps(IrqDomainOps):
    def alloc(self, domain: IrqDomain, virq: int, nr: int, arg: list[int]) -> None:
        for i in range(nr):
            domain.set_hwirq_and_chip(virq + i, arg[i], domain.host_data.chip)


class GicDriver:
    """irq-gic-v3: distributor, redistributors, CPU interfaces, the LPI domain."""

    def __init__(self, kernel: Any, gicd_base: int, gicr_base: int, cpu_interfaces: list) -> None:
        self.kernel = kernel
        self.gicd_base, self.gicr_base = gicd_base, gicr_base
        self.cpuifs = cpu_interfaces          # ICC_* system registers of each CPU
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
        cpuif = self.cpuifs[cpu]
        n = 0
        while (intid := cpuif.iar1()) != G.SPURIOUS:
            if not self.kernel.irq.handle_domain_irq(self.domain, intid, cpu):
                self.kernel.printk(f"GICv3: spurious interrupt {intid} on CPU{cpu}")
            cpuif.eoir1(intid)
            n += 1
        return n


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
    doorbell: int = 1023        # physical LPI rung when a vLPI arrives while not resident
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
        self.its.load[old] -= 1                 # moving back to where it is costs nothing
        try:
            cpu = self.its.select_cpu(mask)
        finally:
            self.its.load[old] += 1
        if cpu != old:
            self.its.send(I.Cmd.MOVI, d0=dev.device_id << 32, d1=event, d2=cpu, sync_cpu=cpu)
            dev.events[event] = cpu
            self.its.load[old] -= 1
            self.its.load[cpu] += 1
        d.common.effective_affinity = frozenset({cpu})
        return IRQ_SET_MASK_OK_DONE

    def irq_set_vcpu_affinity(self, d: IrqData, info: VcpuInfo) -> None:
        self.its.set_vcpu_affinity(d, info)


class ItsDomainOps(IrqDomainOps):
    """its_domain_ops."""

    def alloc(self, domain: IrqDomain, virq: int, nr: int, info: MsiAllocInfo) -> None:
        its: ItsDriver = domain.host_data
        dev: ItsDevice = info.parent_data
        free = [e for e in range(dev.nr_lpis) if e not in dev.events]
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

    def free(self, domain: IrqDomain, virq: int, nr: int) -> None:
        its: ItsDriver = domain.host_data
        for i in range(nr):
            d = its.kernel.irq.irq_data_at(virq + i, domain)
            dev: ItsDevice = d.chip_data
            its.write_prop(d.hwirq, LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1)
            dev.events.pop(d.hwirq - dev.lpi_base, None)
            dev.users -= 1
        domain.free_irqs_parent(virq, nr)

    def activate(self, domain: IrqDomain, d: IrqData, reserve: bool) -> None:
        """its_irq_domain_activate(): pick a CPU, MAPTI to its collection."""
        its: ItsDriver = domain.host_data
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        cpu = its.select_cpu(d.common.affinity or its.kernel.online_cpus)
        its.send(I.Cmd.MAPTI, d0=dev.device_id << 32, d1=d.hwirq << 32 | event, d2=cpu,
                 sync_cpu=cpu)
        dev.events[event] = cpu
        its.load[cpu] += 1
        d.common.effective_affinity = frozenset({cpu})

    def deactivate(self, domain: IrqDomain, d: IrqData) -> None:
        """its_irq_domain_deactivate(): DISCARD the event."""
        its: ItsDriver = domain.host_data
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        cpu = dev.events.get(event, -1)
        its.send(I.Cmd.DISCARD, d0=dev.device_id << 32, d1=event, sync_cpu=max(cpu, 0))
        if cpu >= 0:
            its.load[cpu] -= 1
        dev.vlpi.pop(event, None)
        d.common.forwarded_to_vcpu = False
        dev.events[event] = -1


class ItsDriver:
    """struct its_node: one ITS, its tables and command queue, the "ITS" MSI domain."""

    def __init__(self, kernel: Any, gic: GicDriver, base: int) -> None:
        self.kernel, self.gic, self.base = kernel, gic, base
        self.translater = base + I.GITS_TRANSLATER
        self.chip = ItsChip(self)
        self.domain = IrqDomain(kernel.irq, "ITS", ItsDomainOps(), parent=gic.domain,
                                host_data=self, isolated_msi=True)
        self.devices: dict[int, ItsDevice] = {}
        self.vpes: dict[int, ItsVpe] = {}
        self._lpi_free: list[tuple[int, int]] = []       # free [base, end) ranges
        self.load = dict.fromkeys(kernel.online_cpus, 0)

    # -- probe -------------------------------------------------------------------------

    def _reg(self, off: int, size: int = 8) -> int:
        return self.kernel.bus.read(self.base + off, size)

    def _wreg(self, off: int, value: int, size: int = 8) -> None:
        self.kernel.bus.write(self.base + off, value, size)

    def probe(self) -> None:
        """its_probe_one() + its_init(): tables, queue, collections, LPI tables."""
        k, mm = self.kernel, self.kernel.mm
        typer = self._reg(I.GITS_TYPER)
        self.ite_size = I.TYPER_ITT_ENTRY_SIZE.get(typer) + 1
        self.devbits = I.TYPER_DEVBITS.get(typer) + 1
        self.id_bits = I.TYPER_ID_BITS.get(typer) + 1
        self.virtual = bool(I.TYPER_VIRTUAL.get(typer))
        self._wreg(I.GITS_CTLR, 0, 4)
        self.indirect_dt = False
        for n in range(8):                               # its_alloc_tables()
            baser = self._reg(I.GITS_BASER + 8 * n)
            btype = I.BASER_TYPE.get(baser)
            if not btype:
                continue
            esz = I.BASER_ENTRY_SIZE.get(baser) + 1
            if btype == I.BaserType.COLLECTIONS:       # one page: far more than CPUs
                size, indirect = ITS_PAGE, False
            else:
                ids = self.devbits if btype == I.BaserType.DEVICES else 16
                indirect = btype == I.BaserType.DEVICES and (esz << ids) > 2 * ITS_PAGE
                size = ITS_PAGE if indirect else min(max(esz << ids, ITS_PAGE), 256 * ITS_PAGE)
            table = mm.alloc(size, ITS_PAGE)
            value = (I.BASER_VALID(1) | I.BASER_INDIRECT(int(indirect)) | table
                     | I.BASER_PAGE_SIZE(2) | I.BASER_SIZE(size // ITS_PAGE - 1))
            self._wreg(I.GITS_BASER + 8 * n, value)
            if btype == I.BaserType.DEVICES:
                self.dt, self.indirect_dt, self.dt_esz = table, indirect, esz
        self.cmdq = mm.alloc(ITS_CMD_QUEUE_SZ, ITS_CMD_QUEUE_SZ)
        self._wreg(I.GITS_CBASER, I.CBASER_VALID(1) | self.cmdq | (ITS_CMD_QUEUE_SZ // 4096 - 1))
        self._wreg(I.GITS_CWRITER, 0)
        self._wreg(I.GITS_CTLR, I.CTLR_ENABLED, 4)
        self._init_lpis()
        for cpu in sorted(k.online_cpus):                 # its_cpu_init_collections()
            self.send(I.Cmd.MAPC, d2=1 << 63 | cpu << 16 | cpu, sync_cpu=cpu)
            self.send(I.Cmd.INVALL, d2=cpu, sync_cpu=cpu)
        k.printk(f"ITS@{self.base:#x}: {self.devbits}-bit DeviceIDs, {self.id_bits}-bit "
                 f"EventIDs, ITE {self.ite_size} bytes, {'GICv4' if self.virtual else 'GICv3'}")

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

    def _post(self, words: tuple[int, int, int, int]) -> None:
        w = self._reg(I.GITS_CWRITER)
        self.kernel.ram.write(self.cmdq + w, b"".join(x.to_bytes(8, "little") for x in words))
        w = (w + 32) % ITS_CMD_QUEUE_SZ
        self._wreg(I.GITS_CWRITER, w)
        r = self._reg(I.GITS_CREADR)
        if r != w:                                        # its_wait_for_range_completion()
            self.kernel.printk(f"ITS@{self.base:#x}: queue stuck at {r:#x} (CWRITER {w:#x})")
            raise fail(EIO, "ITS command queue timeout")

    def send(self, op: I.Cmd, d0: int = 0, d1: int = 0, d2: int = 0, d3: int = 0,
             sync_cpu: int | None = None) -> None:
        """its_send_single_command(): the command, then a SYNC to the target CPU.

        Like Linux, the driver checks its own parameters; it can only see the
        queue progress (a stalled queue times out as EIO).
        """
        self._post((d0 | int(op), d1, d2, d3))
        if sync_cpu is not None:
            self._post((int(I.Cmd.SYNC), 0, sync_cpu << 16, 0))

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
        merged = []
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
            vintid = dev.vlpi[event].vintid
            cur = self.kernel.ram.read(vpe.vprop + vintid - LPI_BASE, 1)[0]
            self.kernel.ram.write(vpe.vprop + vintid - LPI_BASE,
                                  bytes([cur | 1 if enable else cur & ~1]))
            self.send(I.Cmd.INV, d0=dev.device_id << 32, d1=event)
            self.send(I.Cmd.VSYNC, d1=vpe.vpe_id << 32)
            return
        self.write_prop(d.hwirq, LPI_PROP_DEFAULT_PRIO | LPI_PROP_GROUP1
                        | (LPI_PROP_ENABLED if enable else 0))
        self.send(I.Cmd.INV, d0=dev.device_id << 32, d1=event,
                  sync_cpu=max(dev.events.get(event, 0), 0))

    def select_cpu(self, mask: frozenset[int]) -> int:
        """its_select_cpu(): the least loaded online CPU in ``mask``."""
        cpus = sorted(mask & self.kernel.online_cpus)
        if not cpus:
            raise fail(EINVAL, "no online CPU in the affinity mask")
        return min(cpus, key=lambda c: (self.load.get(c, 0), c))

    def msi_prepare(self, dev: Any, nvec: int) -> ItsDevice:
        """its_msi_prepare(): an ITS device (ITT, MAPD) for ``dev``'s DeviceID."""
        device_id = dev.rid                               # IORT: identity on virt
        if device_id >> self.devbits:
            raise fail(EINVAL, f"DeviceID {device_id:#x} too wide")
        existing = self.devices.get(device_id)
        if existing is not None:
            return existing
        nr_ites = max(2, 1 << (nvec - 1).bit_length())
        if self.indirect_dt:                              # its_alloc_device_table()
            per_page = ITS_PAGE // self.dt_esz
            l1 = self.dt + 8 * (device_id // per_page)
            if not self.kernel.ram.read_u64(l1) >> 63:
                self.kernel.ram.write_u64(l1, 1 << 63 | self.kernel.mm.alloc(ITS_PAGE,
                                                                             ITS_PAGE))
        itt_size = max(nr_ites * self.ite_size, 256)
        itt = self.kernel.mm.alloc(itt_size, 256)
        lpi_base = self.alloc_lpis(nr_ites)
        self.send(I.Cmd.MAPD, d0=device_id << 32, d1=nr_ites.bit_length() - 2,
                  d2=1 << 63 | itt, sync_cpu=0)
        itsdev = ItsDevice(device_id, nr_ites, itt, itt_size, lpi_base, nr_ites)
        self.devices[device_id] = itsdev
        return itsdev

    def msi_release(self, dev: Any) -> None:
        """its_free_device(): once the last event is gone, MAPD V=0, free ITT and LPIs."""
        itsdev = self.devices.get(dev.rid)
        if itsdev is None or itsdev.users:
            return
        self.send(I.Cmd.MAPD, d0=itsdev.device_id << 32, d1=0, d2=0, sync_cpu=0)
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
        self.send(I.Cmd.VMAPP, d1=vpe.vpe_id << 32, d2=1 << 63 | vpe.col << 16,
                  d3=vpe.vpt | (self.id_bits - 1))
        self.send(I.Cmd.VINVALL, d1=vpe.vpe_id << 32)
        self.send(I.Cmd.VSYNC, d1=vpe.vpe_id << 32)
        vpe.mapped = True
        self.vpes[vpe.vpe_id] = vpe

    def move_vpe(self, vpe: ItsVpe, cpu: int) -> None:
        """its_vpe_set_affinity(): VMOVP to another redistributor."""
        self.send(I.Cmd.VMOVP, d1=vpe.vpe_id << 32, d2=cpu << 16)
        self.send(I.Cmd.VSYNC, d1=vpe.vpe_id << 32)
        vpe.col = cpu

    def set_vcpu_affinity(self, d: IrqData, info: VcpuInfo) -> None:
        """its_irq_set_vcpu_affinity(): map / unmap an event as a vLPI."""
        dev: ItsDevice = d.chip_data
        event = d.hwirq - dev.lpi_base
        if info.cmd == VcpuCmd.MAP_VLPI:
            vpe = info.vpe
            self.map_vpe(vpe)
            db = vpe.doorbell if info.doorbell else 1023
            old = dev.vlpi.get(event)
            if old is not None:                           # already forwarded: move it
                self.send(I.Cmd.VMOVI, d0=dev.device_id << 32, d1=vpe.vpe_id << 32 | event,
                          d2=db << 32 | 1)
            else:
                self.send(I.Cmd.DISCARD, d0=dev.device_id << 32, d1=event)
                self.send(I.Cmd.VMAPTI, d0=dev.device_id << 32, d1=vpe.vpe_id << 32 | event,
                          d2=db << 32 | info.vintid)
            self.send(I.Cmd.VSYNC, d1=vpe.vpe_id << 32)
            dev.vlpi[event] = info
            d.common.forwarded_to_vcpu = True
        elif info.cmd == VcpuCmd.UNMAP_VLPI:
            if event not in dev.vlpi:
                raise fail(EINVAL, "LPI is not forwarded")
            cpu = max(dev.events.get(event, 0), 0)
            self.send(I.Cmd.DISCARD, d0=dev.device_id << 32, d1=event)
            self.send(I.Cmd.MAPTI, d0=dev.device_id << 32, d1=d.hwirq << 32 | event, d2=cpu)
            del dev.vlpi[event]
            d.common.forwarded_to_vcpu = False
            self.lpi_update_config(d, enable=True)
        else:
            raise fail(EINVAL, f"unknown vCPU command {info.cmd}")
