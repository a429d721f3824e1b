"""A QEMU-virt-like platform for the interrupt hardware tests, and a test-side
GIC/ITS driver that brings them up the way Linux does (from the GICv3
specification's register and command formats; its encodings are its own)."""

from __future__ import annotations

from pymsi import core
from pymsi.hw.bus import Bus
from pymsi.hw.gicv3 import Gicv3
from pymsi.hw.its import GicV3Its
from pymsi.hw.pci import Bar, MsixConfig, PciFunction, PciHost

RAM, RAM_SIZE = 0x4000_0000, 0x1000_0000
GICD_BASE, ITS_BASE, GICR_BASE = 0x0800_0000, 0x0808_0000, 0x080A_0000
TRANSLATER = ITS_BASE + 0x1_0040
ECAM_BASE, PCI_MMIO = 0x3F00_0000, 0x1000_0000
SMMU_BASE = 0x0905_0000

# ITS command opcodes and registers.
MOVI, INT, CLEAR, SYNC, MAPD, MAPC, MAPTI, MAPI, INV, INVALL, MOVALL, DISCARD = (
    0x01, 0x03, 0x04, 0x05, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F)
VMOVI, VMOVP, VSYNC, VMAPP, VMAPTI, VMAPI, VINVALL = 0x21, 0x22, 0x25, 0x29, 0x2A, 0x2B, 0x2D
GITS_CTLR, GITS_TYPER, GITS_CBASER, GITS_CWRITER, GITS_CREADR = 0x0, 0x8, 0x80, 0x88, 0x90
GITS_BASER = 0x100
GICR_CTLR, GICR_PROPBASER, GICR_PENDBASER = 0x00, 0x70, 0x78
GICR_VPROPBASER, GICR_VPENDBASER = 0x20070, 0x20078


class PciRig:
    """A bus with a PCIe host (ECAM window) and what a driver does to its functions."""

    def __init__(self, ram, ecam_base: int = ECAM_BASE) -> None:
        self.ram = ram
        self.bus = Bus(ram)
        self.ecam_base = ecam_base
        self.pci = PciHost(self.bus, ecam_base)

    def add_msix_device(self, bus: int, dev: int, vectors: int = 4,
                        bar_addr: int = PCI_MMIO) -> PciFunction:
        """A function with MSI-X in BAR0, its BAR programmed and decoding, bus master on."""
        fn = self.pci.add(PciFunction(bus, dev, 0, bars=[Bar(0x4000)],
                                      msix=MsixConfig(vectors, bar=0, table_offset=0,
                                                      pba_offset=0x2000)))
        self.cfg_write(fn, 0x10, bar_addr & 0xFFFF_FFFF)
        self.cfg_write(fn, 0x14, bar_addr >> 32)
        self.cfg_write(fn, 0x04, 0x6, 2)                       # memory space + bus master
        fn.bar_base = bar_addr
        return fn

    def ecam(self, fn: PciFunction, reg: int) -> int:
        return self.ecam_base + (fn.rid << 12) + reg

    def cfg_write(self, fn: PciFunction, reg: int, value: int, size: int = 4) -> None:
        self.bus.write(self.ecam(fn, reg), value, size)

    def cfg_read(self, fn: PciFunction, reg: int, size: int = 4) -> int:
        return self.bus.read(self.ecam(fn, reg), size)

    # MSI-X programming, as a driver does it: through the BAR on the bus.
    def msix_program(self, fn: PciFunction, vector: int, addr: int, data: int,
                     masked: bool = False) -> None:
        entry = fn.bar_base + 16 * vector
        self.bus.write(entry, addr & 0xFFFF_FFFF)
        self.bus.write(entry + 4, addr >> 32)
        self.bus.write(entry + 8, data)
        self.bus.write(entry + 12, int(masked))

    def msix_entry(self, fn: PciFunction, vector: int) -> tuple[int, int, int]:
        entry = fn.bar_base + 16 * vector
        return (self.bus.read(entry) | self.bus.read(entry + 4) << 32, self.bus.read(entry + 8),
                self.bus.read(entry + 12))

    def msix_enable(self, fn: PciFunction, enable: bool = True, maskall: bool = False) -> None:
        cap = fn.msix_cap
        flags = self.cfg_read(fn, cap + 2, 2) & 0x7FF
        self.cfg_write(fn, cap + 2, flags | int(enable) << 15 | int(maskall) << 14, 2)


DOORBELL = 0x0900_0000


class Sink:
    """An MMIO model that records every write: (requester ID, offset, value)."""

    def __init__(self) -> None:
        self.got: list[tuple[int | None, int, int]] = []

    def mmio_read(self, offset, size, requester_id=None):
        return 0

    def mmio_write(self, offset, value, size, requester_id=None):
        self.got.append((requester_id, offset, value))


def sink_rig(ram_size: int = 0x100_0000) -> PciRig:
    """A PCI rig (RAM at 0x4000_0000) with a :class:`Sink` at DOORBELL as ``r.sink``."""
    mem = core.Memory()
    mem.add_ram(0x4000_0000, ram_size)
    r = PciRig(mem)
    r.sink = Sink()
    r.bus.map(DOORBELL, 0x1000, r.sink, "doorbell", attrs=True)
    return r


class Platform(PciRig):
    """QEMU virt's layout: RAM, GICv3 (+ITS), and a PCIe host."""

    def __init__(self, ncpus: int = 4, gicv4: bool = False, backend: str | None = None,
                 stall_on_error: bool = False, its_memory=None) -> None:
        """``its_memory``, if given, is what the ITS reads and writes its queue and tables
        through: ``its_memory(ram)`` (any PhysMemory over the same RAM)."""
        ram = (core.backend(backend) if backend else core).Memory()
        ram.add_ram(RAM, RAM_SIZE)
        super().__init__(ram)
        self.gic = Gicv3(self.ram, ncpus=ncpus, gicv4=gicv4)
        self.its = GicV3Its(self.gic, its_memory(ram) if its_memory else self.ram,
                            stall_on_error=stall_on_error)
        self.bus.map(GICD_BASE, 0x1_0000, self.gic.gicd, "GICD")
        self.bus.map(GICR_BASE, self.gic.gicr.size, self.gic.gicr, "GICR")
        self.bus.map(ITS_BASE, 0x2_0000, self.its, "ITS", attrs=True)
        self.next_free = RAM + 0x0800_0000

    def alloc(self, size: int, align: int = 4096) -> int:
        addr = (self.next_free + align - 1) & ~(align - 1)
        self.next_free = addr + size
        self.ram.write(addr, bytes(size))
        return addr


class ItsDriver:
    """Brings up redistributors, CPU interfaces and the ITS like Linux's driver."""

    def __init__(self, p: Platform) -> None:
        self.p = p
        self.bus = p.bus
        typer = self.bus.read(ITS_BASE + GITS_TYPER, 8)
        self.ite_size = ((typer >> 4) & 0xF) + 1
        self.id_bits = ((typer >> 8) & 0x1F) + 1
        self.virtual = bool(typer >> 1 & 1)
        self.ncpus = len(p.gic.redists)
        self.frame = p.gic.frame_size
        self.next_lpi = 8192
        self.devices: dict[int, int] = {}

    def rd(self, cpu: int, reg: int) -> int:
        return GICR_BASE + cpu * self.frame + reg

    def init(self, indirect: bool = False) -> None:
        b, p = self.bus, self.p
        self.prop = p.alloc(1 << 16)                         # 16 INTID bits
        for off in range(0, (1 << 16) - 8192, 4096):
            p.ram.write(self.prop + off, bytes([0xA2]) * 4096)   # disabled, prio 0xa0
        for cpu in range(self.ncpus):
            pend = p.alloc(1 << 13, align=0x10000)
            b.write(self.rd(cpu, GICR_PROPBASER), self.prop | (16 - 1), 8)
            b.write(self.rd(cpu, GICR_PENDBASER), pend, 8)
            b.write(self.rd(cpu, GICR_CTLR), 1)
            cpuif = p.gic.cpus[cpu]
            cpuif.pmr, cpuif.igrpen1 = 0xF0, 1
        # Device table (flat or 2-level) and collection table; 64 KiB pages.
        page = 0x10000
        if indirect:
            self.dt_l1 = p.alloc(page, page)
            b.write(ITS_BASE + GITS_BASER, 1 << 63 | 1 << 62 | self.dt_l1 | 2 << 8 | 0, 8)
        else:
            dt = p.alloc(8 * page, page)                     # 2^16 devices x 8 bytes
            b.write(ITS_BASE + GITS_BASER, 1 << 63 | dt | 2 << 8 | 7, 8)
        ct = p.alloc(page, page)
        b.write(ITS_BASE + GITS_BASER + 8, 1 << 63 | ct | 2 << 8 | 0, 8)
        if self.virtual:
            vt = p.alloc(page, page)
            b.write(ITS_BASE + GITS_BASER + 16, 1 << 63 | vt | 2 << 8 | 0, 8)
        self.cmdq = p.alloc(0x10000, 0x10000)
        b.write(ITS_BASE + GITS_CBASER, 1 << 63 | self.cmdq | 15, 8)
        b.write(ITS_BASE + GITS_CWRITER, 0, 8)
        b.write(ITS_BASE + GITS_CTLR, 1)
        for cpu in range(self.ncpus):
            self.cmd(MAPC, d2=1 << 63 | cpu << 16 | cpu)
            self.cmd(INVALL, d2=cpu)
            self.cmd(SYNC, d2=cpu << 16)

    def ensure_l2(self, device_id: int) -> None:
        """Two-level device table: give the L1 entry of ``device_id`` an L2 page."""
        page, esz = 0x10000, 8
        l1 = self.dt_l1 + 8 * (device_id // (page // esz))
        if not self.p.ram.read_u64(l1) >> 63:
            self.p.ram.write_u64(l1, 1 << 63 | self.p.alloc(page, page))

    def cmd(self, op: int, d0: int = 0, d1: int = 0, d2: int = 0, d3: int = 0,
            check: bool = True) -> None:
        b = self.bus
        w = b.read(ITS_BASE + GITS_CWRITER, 8)
        raw = b"".join(x.to_bytes(8, "little") for x in (d0 | op, d1, d2, d3))
        self.p.ram.write(self.cmdq + w, raw)
        b.write(ITS_BASE + GITS_CWRITER, (w + 32) % 0x10000, 8)
        if check:
            assert b.read(ITS_BASE + GITS_CREADR, 8) == (w + 32) % 0x10000

    def map_device(self, device_id: int, nvec: int, cpu: int = 0) -> list[int]:
        """MAPD + MAPTI for each vector (EventID = vector), LPIs enabled; returns LPIs."""
        nr = max(2, 1 << (nvec - 1).bit_length())
        itt = self.p.alloc(max(nr * self.ite_size, 256), 256)
        self.cmd(MAPD, d0=device_id << 32, d1=nr.bit_length() - 2, d2=1 << 63 | itt)
        lpis = []
        for ev in range(nvec):
            lpi = self.next_lpi
            self.next_lpi += 1
            self.cmd(MAPTI, d0=device_id << 32, d1=lpi << 32 | ev, d2=cpu)
            self.set_config(lpi, 0xA3)
            self.cmd(INV, d0=device_id << 32, d1=ev)
            self.cmd(SYNC, d2=cpu << 16)
            lpis.append(lpi)
        self.devices[device_id] = itt
        return lpis

    def set_config(self, lpi: int, byte: int) -> None:
        self.p.ram.write(self.prop + lpi - 8192, bytes([byte]))

    def movi(self, device_id: int, event: int, cpu: int) -> None:
        self.cmd(MOVI, d0=device_id << 32, d1=event, d2=cpu)
        self.cmd(SYNC, d2=cpu << 16)
