"""A minimal SMMUv3 driver for the tests, written from the SMMUv3 specification.

It programs the model only as a kernel driver would: ID registers, CR0, the
stream table, context descriptors, the command and event queues in memory.
Its encodings are its own (not pymsi.hw.smmuv3_regs), so a layout mistake in
the model shows up as a failing test instead of cancelling out.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymsi import core

# Register offsets (IHI 0070, chapter 6).
IDR0, IDR1, IDR3, IDR5 = 0x00, 0x04, 0x0C, 0x14
CR0, CR0ACK, GBPA, IRQ_CTRL, IRQ_CTRLACK = 0x20, 0x24, 0x44, 0x50, 0x54
GERROR, GERRORN, STRTAB_BASE, STRTAB_BASE_CFG = 0x60, 0x64, 0x80, 0x88
CMDQ_BASE, CMDQ_PROD, CMDQ_CONS = 0x90, 0x98, 0x9C
EVENTQ_BASE, EVENTQ_PROD, EVENTQ_CONS = 0xA0, 0x100A8, 0x100AC
EVENTQ_IRQ_CFG0, EVENTQ_IRQ_CFG1 = 0xB0, 0xB8
SMMUEN, EVENTQEN, CMDQEN = 1, 4, 8

# Command opcodes.
OP = dict(PREFETCH_CONFIG=0x01, PREFETCH_ADDR=0x02, CFGI_STE=0x03, CFGI_STE_RANGE=0x04,
          CFGI_CD=0x05, CFGI_CD_ALL=0x06, TLBI_NH_ALL=0x10, TLBI_NH_ASID=0x11, TLBI_NH_VA=0x12,
          TLBI_NH_VAA=0x13, TLBI_S12_VMALL=0x28, TLBI_S2_IPA=0x2A, TLBI_NSNH_ALL=0x30,
          SYNC=0x46)

TG0 = {4096: 0, 65536: 1, 16384: 2}
PS = {32: 0, 36: 1, 40: 2, 42: 3, 44: 4, 48: 5}


@dataclass
class Evt:
    """An event record, decoded by the driver."""

    type: int
    sid: int
    ssid: int | None
    read: bool
    s2: bool
    cls: int
    input_addr: int
    ipa: int
    fetch: int


def decode_event(raw: bytes) -> Evt:
    d = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, 32, 8)]
    return Evt(
        type=d[0] & 0xFF, sid=d[0] >> 32,
        ssid=(d[0] >> 12) & 0xFFFFF if d[0] >> 11 & 1 else None,
        read=bool(d[1] >> 35 & 1), s2=bool(d[1] >> 39 & 1), cls=(d[1] >> 40) & 3,
        input_addr=d[2], ipa=d[3] & 0x000F_FFFF_FFFF_F000, fetch=d[3] & 0x000F_FFFF_FFFF_FFF8,
    )


def ste_words(config: int, ctxptr: int = 0, cdmax: int = 0, s1fmt: int = 0, s1dss: int = 0,
              s2: core.Stage2 | None = None, vmid: int = 0, s2r: bool = True,
              valid: bool = True, s2aa64: bool = True) -> list[int]:
    """An STE: Config (0 abort, 4 bypass, 5 S1, 6 S2, 7 nested)."""
    w = [0] * 8
    w[0] = int(valid) | config << 1 | s1fmt << 4 | (ctxptr & 0x000F_FFFF_FFFF_FFC0) | cdmax << 59
    w[1] = s1dss | 1 << 2 | 1 << 4 | 3 << 6
    if s2 is not None:
        tg = {4096: 0, 65536: 1, 16384: 2}[s2.granule]
        w[2] = (vmid | s2.tsz << 32 | s2.sl0 << 38 | tg << 46 | PS[s2.ps] << 48
                | int(s2aa64) << 51 | int(s2.affd) << 53 | 1 << 54 | int(s2r) << 58)
        w[3] = s2.vttb & 0x000F_FFFF_FFFF_FFF0
    return w


def cd_words(s1: core.Stage1, asid: int, record: bool = True, valid: bool = True,
             aa64: bool = True) -> list[int]:
    """A CD from a Stage1 (TG1 uses its own encoding)."""
    tg1 = {16384: 1, 4096: 2, 65536: 3}[s1.granule1]
    w = [0] * 8
    w[0] = (s1.tsz0 | TG0[s1.granule0] << 6 | 1 << 8 | 1 << 10 | 3 << 12 | int(s1.epd0) << 14
            | (s1.tsz1 or 0) << 16 | tg1 << 22 | int(s1.epd1) << 30 | int(valid) << 31
            | PS[s1.ips] << 32 | int(s1.affd) << 35 | (int(s1.tbi0) | int(s1.tbi1) << 1) << 38
            | int(aa64) << 41 | int(record) << 45 | 1 << 46 | 1 << 47 | asid << 48)
    w[1] = (s1.ttb0 & 0x000F_FFFF_FFFF_FFF0) | int(s1.had0) << 1
    w[2] = (s1.ttb1 & 0x000F_FFFF_FFFF_FFF0) | int(s1.had1) << 1
    w[3] = 0xFFFF_FFFF_F404_FF44
    return w


def pack(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(8, "little") for w in words)


class Driver:
    """Brings an SMMUv3 model up from reset and drives it."""

    def __init__(self, smmu, mem, pool: int, pool_size: int) -> None:
        self.smmu, self.mem = smmu, mem
        self.alloc = core.TableAllocator(mem, pool, pool_size)
        self.idr0 = smmu.mmio_read(IDR0)
        self.idr1 = smmu.mmio_read(IDR1)
        self.idr5 = smmu.mmio_read(IDR5)
        self.sidsize = self.idr1 & 0x3F
        self.l2 = {}

    def init(self, two_level: bool = True, log2size: int = 16, split: int = 8,
             cmdq_log2: int = 6, evtq_log2: int = 5, enable: bool = True) -> None:
        s = self.smmu
        self.log2size, self.split, self.two_level = log2size, split, two_level
        if two_level:
            self.strtab = self.alloc.alloc(max(8 << (log2size - split), 64))
            s.mmio_write(STRTAB_BASE, self.strtab, 8)
            s.mmio_write(STRTAB_BASE_CFG, 1 << 16 | split << 6 | log2size)
        else:
            self.strtab = self.alloc.alloc(64 << log2size)
            s.mmio_write(STRTAB_BASE, self.strtab, 8)
            s.mmio_write(STRTAB_BASE_CFG, log2size)
        self.cmdq_log2, self.evtq_log2 = cmdq_log2, evtq_log2
        self.cmdq = self.alloc.alloc(max(16 << cmdq_log2, 64))
        self.evtq = self.alloc.alloc(max(32 << evtq_log2, 64))
        s.mmio_write(CMDQ_BASE, self.cmdq | cmdq_log2, 8)
        s.mmio_write(CMDQ_PROD, 0)
        s.mmio_write(CMDQ_CONS, 0)
        s.mmio_write(EVENTQ_BASE, self.evtq | evtq_log2, 8)
        s.mmio_write(EVENTQ_PROD, 0)
        s.mmio_write(EVENTQ_CONS, 0)
        s.mmio_write(IRQ_CTRL, 0b101)
        s.mmio_write(CR0, EVENTQEN | CMDQEN)
        assert s.mmio_read(CR0ACK) == EVENTQEN | CMDQEN
        self.cmd("CFGI_STE_RANGE", d1=31)              # CFGI_ALL
        self.cmd("TLBI_NSNH_ALL")
        self.sync()
        if enable:
            s.mmio_write(CR0, SMMUEN | EVENTQEN | CMDQEN)
            assert s.mmio_read(CR0ACK) & SMMUEN

    # -- command queue ------------------------------------------------------

    def raw_cmd(self, d0: int, d1: int = 0) -> None:
        s, log2 = self.smmu, self.cmdq_log2
        prod = s.mmio_read(CMDQ_PROD)
        self.mem.write(self.cmdq + (prod & ((1 << log2) - 1)) * 16, pack([d0, d1]))
        s.mmio_write(CMDQ_PROD, (prod + 1) & ((2 << log2) - 1))

    def cmd(self, name: str, sid: int = 0, ssid: int = 0, d0: int = 0, d1: int = 0) -> None:
        self.raw_cmd(OP[name] | sid << 32 | ssid << 12 | d0, d1)

    def sync(self) -> None:
        self.cmd("SYNC")
        assert self.smmu.mmio_read(CMDQ_CONS) & 0xFFFFF == self.smmu.mmio_read(CMDQ_PROD)

    def tlbi_va(self, vmid: int, asid: int | None, addr: int, pages: int = 0,
                tg: int = 0) -> None:
        d0 = vmid << 32
        if pages:
            d0 |= (pages - 1) << 12                   # NUM, SCALE = 0
        name = "TLBI_NH_VA" if asid is not None else "TLBI_NH_VAA"
        self.cmd(name, d0=d0 | (asid or 0) << 48, d1=addr | tg << 10)

    # -- stream table ----------------------------------------------------------

    def ste_addr(self, sid: int) -> int:
        if not self.two_level:
            return self.strtab + 64 * sid
        l1 = sid >> self.split
        if l1 not in self.l2:
            self.l2[l1] = self.alloc.alloc(64 << self.split)
            self.mem.write_u64(self.strtab + 8 * l1, self.l2[l1] | (self.split + 1))
        return self.l2[l1] + 64 * (sid & ((1 << self.split) - 1))

    def write_ste(self, sid: int, words: list[int], sync: bool = True) -> None:
        self.mem.write(self.ste_addr(sid), pack(words))
        if sync:
            self.cmd("CFGI_STE", sid=sid)
            self.sync()

    def write_cd(self, words: list[int], at: int | None = None) -> int:
        addr = self.alloc.alloc(64) if at is None else at
        self.mem.write(addr, pack(words))
        return addr

    # -- event queue -----------------------------------------------------------

    def events(self) -> list[Evt]:
        s, log2 = self.smmu, self.evtq_log2
        out = []
        prod, cons = s.mmio_read(EVENTQ_PROD), s.mmio_read(EVENTQ_CONS)
        wrapmask = (2 << log2) - 1
        while (cons & wrapmask) != (prod & wrapmask):
            idx = cons & ((1 << log2) - 1)
            out.append(decode_event(self.mem.read(self.evtq + 32 * idx, 32)))
            cons = (cons & ~wrapmask) | ((cons + 1) & wrapmask)
        s.mmio_write(EVENTQ_CONS, (cons & wrapmask) | (prod & 1 << 31))
        return out
