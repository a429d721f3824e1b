"""Property tests that drive the hardware models with arbitrary register writes, queue
contents and in-memory structures, built valid and then mutated field by field.

Each test brings a platform up properly (so that inputs get past the first check),
then applies a random sequence of actions and asserts that nothing escapes from the
models (no exception, no recursion) and that the architecture's invariants hold:
queue pointers in range, event records well formed, no LPI for an unmapped event, no
message with Bus Master Enable clear or for a masked vector.  Message and MSI targets
include the models' own registers (the SMMU's CMDQ_PROD / GERRORN / CR0, a function's
own MSI-X table and configuration space), which is where posted writes matter.
"""

from __future__ import annotations

import array

from hypothesis import event, given
from hypothesis import strategies as st

from pymsi import core
from pymsi.errors import BusError
from pymsi.hw import its as I
from pymsi.hw.gicv3 import SPURIOUS
from pymsi.hw.pci import Bar, MsiConfig, MsixConfig, PciFunction
from pymsi.hw.smmuv3 import Outcome, SMMUv3
from pymsi.hw.smmuv3_regs import EventType
from pymsi.testing.strategies import mutated

from hw_rig import (
    DOORBELL,
    GICR_BASE,
    ITS_BASE,
    PCI_MMIO,
    SMMU_BASE,
    TRANSLATER,
    ItsDriver,
    Platform,
    sink_rig,
)
from smmu_driver import Driver, cd_words, decode_event, ste_words

u64 = st.integers(0, 2**64 - 1)
KNOWN_EVENTS = {int(e) for e in EventType}
HOLE = 0x7000_0000
DEV_SID, S1_SID = 0x8, 0x10              # the device's StreamID (its RID) and a stage-1 one
NVEC = 4
SCRATCH_SIZE = 0x1_0000

# SMMU registers a driver writes (offset, size).
SMMU_REGS = [(0x20, 4), (0x28, 4), (0x2C, 4), (0x44, 4), (0x50, 4), (0x64, 4), (0x68, 8),
             (0x70, 4), (0x80, 8), (0x88, 4), (0x90, 8), (0x98, 4), (0x9C, 4), (0xA0, 8),
             (0x100A8, 4), (0x100AC, 4), (0xB0, 8), (0xB8, 4), (0xBC, 4)]
POINTER_REGS = {0x90, 0x9C, 0xA0, 0x100A8, 0x100AC}   # queue bases and pointers


def flip(draw, value: int, bits: int = 64) -> int:
    """``value`` unchanged, with one field replaced, or with one bit flipped
    (pymsi.testing's ``mutated``)."""
    return draw(mutated(value, bits=bits))


# --- a whole Arm platform: GIC + ITS, SMMU (MSIs on the bus), an MSI-X function -----


def msix_unmasked(fn: PciFunction, vectors: int, addr: int, value: int) -> bool:
    """Whether some unmasked MSI-X vector of ``fn`` has message (addr, value), read
    through its capability and table as software would."""
    flags = fn.cfg_read(fn.msix_cap + 2, 2)
    if not flags & 0x8000 or flags & 0x4000:           # disabled or function-masked
        return False
    return any(not fn.msix_entry(v)[2] & 1 and fn.msix_entry(v)[:2] == (addr, value)
               for v in range(vectors))


def msi_unmasked(fn: PciFunction, vectors: int, addr: int, value: int) -> bool:
    """The same for MSI: an enabled vector whose mask bit is clear."""
    masks = fn.cfg_read(fn.msi_cap + 0x10, 4)           # 64-bit layout: mask at +0x10
    return any(fn.msi_message(v) == (addr, value) and not masks >> v & 1
               for v in range(vectors))


class System:
    """A platform brought up properly: ITS mapped for the device's events, the SMMU
    in front of the device (bypass for its RID, stage 1 for S1_SID), MSIs enabled."""

    def __init__(self) -> None:
        p = Platform(ncpus=2)
        self.p = p
        self.its_drv = ItsDriver(p)
        self.its_drv.init()
        self.smmu = SMMUv3(p.ram, msi=True, msi_write=p.bus.write32)
        p.bus.map(SMMU_BASE, 0x2_0000, self.smmu, "SMMU")
        p.bus.attach_iommu(0, 0xFFFF, self.smmu)
        self.sdrv = Driver(self.smmu, p.ram, p.alloc(0x10_0000), 0x10_0000)
        self.sdrv.init(log2size=8, split=6, cmdq_log2=4, evtq_log2=4)
        self.evtq_base = self.smmu.mmio_read(0xA0, 8)
        self.evt_cons = self.smmu.mmio_read(0x100AC)    # ours: devices may write the register
        alloc = core.TableAllocator(p.ram, p.alloc(0x10_0000), 0x10_0000)
        self.scratch = p.alloc(SCRATCH_SIZE)
        pt = core.IoPgtable(p.ram, alloc, fmt="s1", ias=48, oas=48)
        pt.map(0x10_0000, self.scratch, SCRATCH_SIZE, core.Prot.READ | core.Prot.WRITE)
        pt.map(0xFFFF_0000, TRANSLATER & ~0xFFF, 0x1000, core.Prot.WRITE | core.Prot.MMIO)
        self.cd_addr = self.sdrv.write_cd(cd_words(pt.stage1_config(), asid=3))
        self.sdrv.write_ste(S1_SID, ste_words(5, ctxptr=self.cd_addr))
        self.fn = p.add_msix_device(0, 1, vectors=NVEC)
        assert self.fn.rid == DEV_SID
        self.sdrv.write_ste(DEV_SID, ste_words(4))
        self.lpis = set(self.its_drv.map_device(self.fn.rid, NVEC))
        for v in range(NVEC):
            p.msix_program(self.fn, v, TRANSLATER, v)
        p.msix_enable(self.fn)
        self.smmu.mmio_write(0xB0, self.scratch + 0x800, 8)     # event MSIs: scratch RAM
        self.smmu.mmio_write(0xB8, 0x1)
        self.smmu.mmio_write(0x68, self.scratch + 0x900, 8)     # GERROR MSIs: scratch RAM
        self.sids: set[int] = {DEV_SID, S1_SID}
        self.wild_pointers = False
        self.messages = 0
        self.raw_dma = False
        self._watch_device()

    def targets(self) -> list[int]:
        """Where MSIs and messages may go: the models' own registers among them."""
        return [SMMU_BASE + 0x98, SMMU_BASE + 0x64, SMMU_BASE + 0x20, SMMU_BASE + 0x100AC,
                SMMU_BASE + 0x50, TRANSLATER, ITS_BASE + 0x88, PCI_MMIO + 12, PCI_MMIO + 28,
                PCI_MMIO + 16 * (NVEC - 1) + 12, self.p.ecam(self.fn, self.fn.msix_cap),
                self.p.ecam(self.fn, 0x04), GICR_BASE, self.scratch, HOLE, 0xFFFF_0040]

    def _watch_device(self) -> None:
        """Check every memory write the function issues, when it issues it."""
        bus, fn = self.p.bus, self.fn
        real = bus.dma_write

        def dma_write(rid, addr, value, size=4, on_done=None):
            if rid == fn.rid and not self.raw_dma:
                assert fn.cfg_read(0x04, 2) & 0x4, "message with Bus Master Enable clear"
                assert msix_unmasked(fn, NVEC, addr, value), "message of a masked vector"
                self.messages += 1
            return real(rid, addr, value, size, on_done)

        bus.dma_write = dma_write

    def check(self) -> None:
        s = self.smmu
        for rd in self.p.gic.redists:                # no LPI for an unmapped event
            assert rd.pending <= self.lpis, rd.pending - self.lpis
        cmdq_log2 = min(s.mmio_read(0x90, 8) & 0x1F, s.cmdqs)
        evtq_log2 = min(s.mmio_read(0xA0, 8) & 0x1F, s.eventqs)
        if not self.wild_pointers:
            event("pointers checked")
            assert s.mmio_read(0x9C) & 0xFFFFF < 2 << cmdq_log2
            assert s.mmio_read(0x100A8) & 0xFFFFF < 2 << evtq_log2
        creadr = self.p.bus.read(ITS_BASE + 0x90, 8)
        assert creadr & ~1 < 0x10000 and not creadr & 0x1E
        if s.mmio_read(0xA0, 8) == self.evtq_base and not self.wild_pointers:
            self._check_events(evtq_log2)

    def _check_events(self, log2: int) -> None:
        """Consume the new records as a driver would, checking each one (from where we
        left off: a message aimed at EVENTQ_CONS may have moved the register)."""
        s = self.smmu
        prod, cons = s.mmio_read(0x100A8), self.evt_cons
        wrap = (2 << log2) - 1
        base = self.evtq_base & 0x000F_FFFF_FFFF_FFE0
        n = 0
        while (cons & wrap) != (prod & wrap) and n < 1 << log2:
            ev = decode_event(self.p.ram.read(base + 32 * (cons & ((1 << log2) - 1)), 32))
            assert ev.type in KNOWN_EVENTS and ev.sid in self.sids, ev
            assert ev.ssid is None or ev.ssid < 1 << s.ssidsize
            assert ev.cls <= 2
            cons = (cons & wrap) + 1 & wrap
            n += 1
        if n:
            event("event records checked")
            s.mmio_write(0x100AC, cons | (prod & 1 << 31))
        self.evt_cons = cons


SYNC, CFGI_STE, CFGI_ALL, TLBI_ALL, TLBI_ASID, PREFETCH = 0x46, 0x03, 0x04, 0x30, 0x11, 0x01


def apply(sysm: System, kind: str, data) -> None:
    draw = data.draw
    p, s = sysm.p, sysm.smmu
    targets = sysm.targets()
    event(f"action: {kind}")
    if kind == "reg":
        off, size = draw(st.sampled_from(SMMU_REGS))
        value = flip(draw, s.mmio_read(off, size), 8 * size)
        if off in (0xB0, 0x68):                   # an MSI address: often a target
            if draw(st.booleans()):
                value = draw(st.sampled_from(targets))
                event("SMMU MSI aimed at a target")
        if off in POINTER_REGS and value != s.mmio_read(off, size):
            sysm.wild_pointers = True
        p.bus.write(SMMU_BASE + off, value, size)
    elif kind == "cmd":
        op = draw(st.sampled_from([SYNC, SYNC, CFGI_STE, CFGI_ALL, TLBI_ALL, TLBI_ASID, PREFETCH]))
        d0, d1 = op, 0
        if op == SYNC:
            d0 |= 1 << 12 | draw(st.integers(0, 2**32 - 1)) << 32
            d1 = draw(st.sampled_from(targets)) & ~3
        elif op in (CFGI_STE, PREFETCH):
            d0 |= draw(st.sampled_from(sorted(sysm.sids))) << 32
        elif op == CFGI_ALL:
            d1 = 31
        elif op == TLBI_ASID:
            d0 |= 3 << 48
        d0, d1 = flip(draw, d0), flip(draw, d1)
        log2 = sysm.sdrv.cmdq_log2
        prod = s.mmio_read(0x98)
        p.ram.write(sysm.sdrv.cmdq + (prod & ((1 << log2) - 1)) * 16,
                    d0.to_bytes(8, "little") + d1.to_bytes(8, "little"))
        p.bus.write(SMMU_BASE + 0x98, (prod + draw(st.integers(1, 2))) & ((2 << log2) - 1))
    elif kind == "mem":
        which = draw(st.sampled_from(["ste", "cd", "l1"]))
        if which == "ste":
            addr = sysm.sdrv.ste_addr(draw(st.sampled_from([DEV_SID, S1_SID])))
        elif which == "cd":
            addr = sysm.cd_addr
        else:
            addr = sysm.sdrv.strtab
        addr += 8 * draw(st.integers(0, 3))
        p.ram.write_u64(addr, flip(draw, p.ram.read_u64(addr)))
        event(f"mutated {which}")
        if draw(st.booleans()):
            sysm.sdrv.cmd("CFGI_STE_RANGE", d1=31)
    elif kind == "xlate":
        sid = draw(st.sampled_from([DEV_SID, S1_SID, 0x3F, 0x1FF, 0xFFFF]))
        sysm.sids.add(sid)
        how = draw(st.sampled_from(["translate", "dma_write", "dma_read"]))
        iova = draw(st.sampled_from([0x10_0000, 0x10_0040, 0xFFFF_0040, 0, 2**48, 2**64 - 8])
                    | (st.integers(0, 2**64 - 8) if how != "dma_write" else st.nothing()))
        if how == "translate":
            ssid = draw(st.none() | st.integers(0, (1 << s.ssidsize) - 1))
            r = s.translate(sid, iova, draw(st.booleans()), ssid=ssid)
            assert r.outcome in Outcome and (r.pa is None) == (r.outcome is Outcome.ABORTED)
        else:
            sysm.raw_dma = True                   # the device's data, not a message
            try:
                if how == "dma_write":
                    p.bus.dma_write(sid, iova, draw(st.integers(0, 2**32 - 1)))
                else:
                    p.bus.dma_read(sid, iova)
            finally:
                sysm.raw_dma = False
    elif kind == "batch":
        n = draw(st.integers(1, 6))
        sids = [draw(st.sampled_from([DEV_SID, S1_SID, 0x3F, 0xFFFF])) for _ in range(n)]
        sysm.sids.update(sids)
        iovas = [draw(st.sampled_from([0x10_0000, 0x10_8000, 0x90_0000, 0]))
                 for _ in range(n)]
        out, status = array.array("Q", [0] * n), array.array("i", [0] * n)
        s.translate_batch(array.array("I", sids), array.array("Q", iovas), out, status,
                          write=draw(st.booleans()))
    elif kind == "notify":
        sysm.fn.notify(draw(st.integers(0, NVEC)))
    elif kind == "msix":
        v = draw(st.integers(0, NVEC - 1))
        addr = draw(st.sampled_from(targets))
        data = draw(st.sampled_from([0, 1, v, 0xFFFF_FFFF]) | st.integers(0, 2**32 - 1))
        p.cfg_write(sysm.fn, 0x04, p.cfg_read(sysm.fn, 0x04, 2) | 0x2, 2)  # a message
        try:                                                                # may clear it
            p.msix_program(sysm.fn, v, addr, data, masked=draw(st.booleans()))
        except BusError:
            # A message into BAR0's registers moved the table: this CPU store reached
            # nothing, and the bus says so to the CPU (a hardware model raised nothing).
            assert p.bus.window(sysm.fn.bar_base + 16 * v) is None
            event("MSI-X table moved away by a message")
        else:
            event("message aimed at a target")
    elif kind == "cfg":
        fn = sysm.fn
        off = draw(st.sampled_from([0x04, fn.msix_cap + 2]))
        value = flip(draw, p.cfg_read(fn, off, 2), 16)
        if off == 0x04:
            value |= 0x2                          # keep the BAR decoding
        p.cfg_write(fn, off, value, 2)
    elif kind == "drain":
        p.bus.drain()
        s.drain()
    else:                                         # the ITS: a command, then a translation
        drv = sysm.its_drv
        op = draw(st.sampled_from([I.Cmd.INT, I.Cmd.CLEAR, I.Cmd.INV, I.Cmd.SYNC, I.Cmd.MOVI,
                                   I.Cmd.INVALL, I.Cmd.MOVALL]))
        words = [int(op) | sysm.fn.rid << 32, draw(st.integers(0, NVEC)),
                 draw(st.integers(0, 2)) | draw(st.integers(0, 2)) << 16, 0]
        words = [flip(draw, w) for w in words]
        if words[0] & 0xFF in (0x08, 0x09, 0x0A, 0x0B, 0x0F, 0x29, 0x2A, 0x2B):
            words[0] ^= 0x80                      # nothing that maps new events
        drv.cmd(words[0] & 0xFF, words[0] & ~0xFF, *words[1:], check=False)
        p.bus.write(TRANSLATER, draw(st.integers(0, NVEC)), 4,
                    requester_id=draw(st.sampled_from([sysm.fn.rid, 0x99, None])))


@given(data=st.data(), n=st.integers(1, 25))
def test_whole_platform_never_raises_and_keeps_its_invariants(data, n):
    sysm = System()
    for _ in range(n):
        kind = data.draw(st.sampled_from(["reg", "cmd", "mem", "xlate", "batch", "notify",
                                          "msix", "cfg", "drain", "its"]))
        apply(sysm, kind, data)
        sysm.check()
    p = sysm.p
    p.bus.drain()
    sysm.smmu.drain()
    sysm.check()
    for cpu in p.gic.cpus:                        # every pending LPI is a mapped one
        for _ in range(8):
            intid = cpu.iar1()
            if intid == SPURIOUS:
                break
            assert intid in sysm.lpis
            cpu.eoir1(intid)


# --- a PCI function alone: MSI and MSI-X, messages aimed at itself --------------------




@given(data=st.data(), use_msix=st.booleans(), vectors=st.sampled_from([1, 4, 32]),
       n=st.integers(1, 30))
def test_pci_function_messages_never_recurse_nor_escape_masks(data, use_msix, vectors, n):
    r = sink_rig(0x10_0000)
    fn = r.pci.add(PciFunction(0, 2, 0, bars=[Bar(0x4000)],
                               msi=None if use_msix else MsiConfig(vectors),
                               msix=MsixConfig(vectors, bar=0, table_offset=0,
                                               pba_offset=0x2000) if use_msix else None))
    r.cfg_write(fn, 0x10, PCI_MMIO)
    r.cfg_write(fn, 0x14, 0)
    r.cfg_write(fn, 0x04, 0x6, 2)
    fn.bar_base = PCI_MMIO
    cap = fn.msix_cap if use_msix else fn.msi_cap
    ecam = r.ecam(fn, 0)
    targets = [DOORBELL, DOORBELL + 0x40, HOLE, 0x4000_0000, ecam + 0x04, ecam + cap + 2,
               ecam + cap + 0x10, ecam + cap + 0x14]
    targets += [PCI_MMIO + 16 * v + 12 for v in range(min(vectors, 4))] + [PCI_MMIO + 0x2000]
    issued = []
    real = r.bus.dma_write

    unmasked = msix_unmasked if use_msix else msi_unmasked

    def dma_write(rid, addr, value, size=4, on_done=None):
        assert fn.cfg_read(0x04, 2) & 0x4, "message with Bus Master Enable clear"
        assert unmasked(fn, vectors, addr, value), "message for a masked vector"
        issued.append((addr, value))
        return real(rid, addr, value, size, on_done)

    r.bus.dma_write = dma_write
    # Valid: enabled, every vector programmed (MSI: one message; mask register).
    if use_msix:
        for v in range(vectors):
            r.msix_program(fn, v, DOORBELL, v)
        r.msix_enable(fn)
    else:
        r.cfg_write(fn, cap + 4, DOORBELL)
        r.cfg_write(fn, cap + 8, 0)
        r.cfg_write(fn, cap + 12, 0, 2)
        r.cfg_write(fn, cap + 2, 1 | (vectors.bit_length() - 1) << 4, 2)
    for _ in range(n):
        kind = data.draw(st.sampled_from(["notify", "program", "cfg", "bar", "drain"]))
        event(f"pci action: {kind} ({'MSI-X' if use_msix else 'MSI'})")
        if kind == "notify":
            fn.notify(data.draw(st.integers(0, vectors)))
        elif kind == "program":
            r.cfg_write(fn, 0x04, r.cfg_read(fn, 0x04, 2) | 0x2, 2)   # a message may clear it
            addr = data.draw(st.sampled_from(targets))
            value = data.draw(st.sampled_from([0, 1, 0xFFFF_FFFF]) | st.integers(0, 2**32 - 1))
            if use_msix:
                r.msix_program(fn, data.draw(st.integers(0, vectors - 1)), addr, value,
                               masked=data.draw(st.booleans()))
            else:
                r.cfg_write(fn, cap + 4, addr & 0xFFFF_FFFF)
                r.cfg_write(fn, cap + 8, addr >> 32)
                r.cfg_write(fn, cap + 12, value & 0xFFFF, 2)
            event("message aimed at a target")
        elif kind == "cfg":
            off = data.draw(st.sampled_from([0x04, cap + 2, cap + 0x10, cap + 0x14]))
            size = 2 if off in (0x04, cap + 2) else 4
            value = flip(data.draw, r.cfg_read(fn, off, size), 8 * size)
            r.cfg_write(fn, off, value | 0x2 if off == 0x04 else value, size)   # BAR stays
        elif kind == "bar":
            r.cfg_write(fn, 0x04, r.cfg_read(fn, 0x04, 2) | 0x2, 2)   # a message may clear it
            off = data.draw(st.integers(0, 0x2010 // 4)) * 4
            r.bus.write(PCI_MMIO + off, flip(data.draw, r.bus.read(PCI_MMIO + off), 32))
        else:
            r.bus.drain()
        assert r.bus.pending_writes == 0 or r.bus.stats["drain_budget_exhausted"]
    st_ = fn.stats
    assert st_.sent + st_.aborted == len(issued) - r.bus.pending_writes


# --- the ITS and the redistributors with arbitrary registers and tables --------------


ITS_REGS = [(0x0, 4), (0x80, 8), (0x88, 8), (0x100, 8), (0x108, 8), (0x110, 8)]
GICR_REGS = [(0x00, 4), (0x70, 8), (0x78, 8), (0xA0, 8), (0xB0, 8), (0x20070, 8), (0x20078, 8)]


@given(data=st.data(), gicv4=st.booleans(), n=st.integers(1, 25))
def test_its_and_redistributors_with_garbage_registers_and_tables(data, gicv4, n):
    p = Platform(ncpus=2, gicv4=gicv4)
    drv = ItsDriver(p)
    drv.init()
    fn = p.add_msix_device(0, 1, vectors=NVEC)
    lpis = drv.map_device(fn.rid, NVEC)
    mapped = {(fn.rid, ev): lpi for ev, lpi in enumerate(lpis)}
    its = p.its
    itt = drv.devices[fn.rid]
    tables = {"itt": (itt, 8), "dt": ((its.baser[0] & I.BASER_PA.mask) + 8 * fn.rid, 1),
              "ct": (its.baser[1] & I.BASER_PA.mask, 2), "cmdq": (drv.cmdq, 8)}
    basers = list(its.baser)
    for _ in range(n):
        kind = data.draw(st.sampled_from(["its_reg", "gicr_reg", "table", "translate",
                                          "cmd", "ack"]))
        event(f"its action: {kind}")
        if kind == "its_reg":
            off, size = data.draw(st.sampled_from(ITS_REGS))
            value = flip(data.draw, p.bus.read(ITS_BASE + off, size), 8 * size)
            if off == 0x80 and data.draw(st.booleans()):
                value = 1 << 63 | data.draw(st.sampled_from([HOLE, 0xFFFF_FFFF_F000,
                                                             0x4FFF_F000]))
                event("CBASER outside RAM")
            p.bus.write(ITS_BASE + off, value, size)
        elif kind == "gicr_reg":
            off, size = data.draw(st.sampled_from(GICR_REGS if gicv4 else GICR_REGS[:5]))
            cpu = data.draw(st.integers(0, 1))
            addr = GICR_BASE + cpu * p.gic.frame_size + off
            p.bus.write(addr, flip(data.draw, p.bus.read(addr, size), 8 * size), size)
        elif kind == "table":
            name = data.draw(st.sampled_from(sorted(tables)))
            at, words = tables[name]
            addr = at + 8 * data.draw(st.integers(0, words - 1))
            p.ram.write_u64(addr, flip(data.draw, p.ram.read_u64(addr)))
            event(f"mutated {name}")
        elif kind == "translate":
            rid = data.draw(st.sampled_from([fn.rid, fn.rid + 1, 0xFFFF]))
            ev = data.draw(st.integers(0, NVEC + 1))
            before = [set(rd.pending) for rd in p.gic.redists]
            ok = its.translate(rid, ev)
            after = [set(rd.pending) for rd in p.gic.redists]
            new = set().union(*after) - set().union(*before)
            if (rid, ev) not in mapped and its.baser == basers:
                event("unmapped event translated")           # never mapped: no LPI, ever
                assert not ok and before == after
            if not ok:
                assert before == after
            assert len(new) <= 1
        elif kind == "cmd":
            words = [flip(data.draw, w) for w in
                     (data.draw(st.sampled_from([0x03, 0x04, 0x05, 0x0C, 0x0D, 0x01, 0x0E,
                                                 0x25, 0x2D, 0x21, 0x22]))
                      | fn.rid << 32, data.draw(st.integers(0, NVEC)), 0, 0)]
            if words[0] & 0xFF in (0x08, 0x09, 0x0A, 0x0B, 0x0F, 0x29, 0x2A, 0x2B):
                words[0] ^= 0x80
            w = p.bus.read(ITS_BASE + 0x88, 8) & 0xFFFE0
            cbase = p.bus.read(ITS_BASE + 0x80, 8) & I.CBASER_PA.mask
            if p.ram.is_ram(cbase + w, 32):
                p.ram.write(cbase + w, b"".join(x.to_bytes(8, "little") for x in words))
            size = ((p.bus.read(ITS_BASE + 0x80, 8) & 0xFF) + 1) * 4096
            p.bus.write(ITS_BASE + 0x88, (w + 32) % size, 8)
        else:
            for cpu in p.gic.cpus:
                intid = cpu.iar1()
                if intid != SPURIOUS:
                    cpu.eoir1(intid)
                cpu.vcpu_iar1()
        creadr = p.bus.read(ITS_BASE + 0x90, 8)
        qsize = ((p.bus.read(ITS_BASE + 0x80, 8) & 0xFF) + 1) * 4096
        assert not creadr & 0x1E and (creadr & ~1) < max(qsize, 0x10000)
        for rd in p.gic.redists:
            assert all(8192 <= i < 1 << rd.id_bits or not rd.lpis_enabled for i in rd.pending)


# --- SMMU alone, no bus: its MSIs call straight back into it --------------------------


@given(data=st.data(), n=st.integers(1, 20))
def test_smmu_without_a_bus_sending_msis_into_itself(data, n):
    mem = core.Memory()
    mem.add_ram(0x4000_0000, 0x80_0000)
    base = 0x0905_0000
    box = {}

    def msi_write(addr, value):
        if base <= addr < base + 0x2_0000:
            box["smmu"].mmio_write(addr - base, value, 4)
        else:
            mem.write_u32(addr, value)

    s = SMMUv3(mem, msi=True, msi_write=msi_write)
    box["smmu"] = s
    drv = Driver(s, mem, 0x4010_0000, 0x40_0000)
    drv.init(log2size=8, split=6, cmdq_log2=2, evtq_log2=2)
    drv.write_ste(5, ste_words(4))
    regs = [base + 0x98, base + 0x64, base + 0x20, base + 0x100AC, 0x4000_0000, HOLE]
    s.mmio_write(0xB0, data.draw(st.sampled_from(regs)), 8)
    s.mmio_write(0xB8, data.draw(st.integers(0, 2**32 - 1)))
    s.mmio_write(0x68, data.draw(st.sampled_from(regs)), 8)
    s.mmio_write(0x70, data.draw(st.integers(0, 2**32 - 1)))
    for _ in range(n):
        kind = data.draw(st.sampled_from(["sync", "xlate", "batch", "drain"]))
        event(f"smmu-alone action: {kind}")
        if kind == "sync":
            d0 = 0x46 | 1 << 12 | data.draw(st.integers(0, 2**32 - 1)) << 32
            d1 = data.draw(st.sampled_from(regs)) & ~3
            if data.draw(st.booleans()):
                d0 = 0xFF                              # illegal: a GERROR
            drv.raw_cmd(flip(data.draw, d0), d1)
        elif kind == "xlate":
            s.translate(data.draw(st.sampled_from([5, 6, 0x300])), data.draw(u64))
        elif kind == "batch":
            k = data.draw(st.integers(1, 5))
            sids = array.array("I", [data.draw(st.sampled_from([5, 6, 0x300])) for _ in range(k)])
            s.translate_batch(sids, array.array("Q", [0] * k), array.array("Q", [0] * k),
                              array.array("i", [0] * k))
        else:
            s.drain()
        log2 = min(s.mmio_read(0x90, 8) & 0x1F, s.cmdqs)
        assert s.mmio_read(0x9C) & 0xFFFFF < 2 << log2
        assert s.mmio_read(0x100A8) & 0xFFFFF < 2 << 2


# --- the bus alone: models that post writes to each other -----------------------------


class Echo:
    """A register block that, for each write it takes, posts the writes its table says
    (to itself or to other blocks): a stand-in for any model that writes in response."""

    def __init__(self, bus, name, log, follow) -> None:
        self.bus, self.name, self.log, self.follow = bus, name, log, follow

    def mmio_read(self, offset, size):
        return 0

    def mmio_write(self, offset, value, size):
        assert not self.log or self.log[-1][0] != "enter", "a write inside another"
        self.log.append(("enter", self.name, offset, value))
        for addr, v in self.follow.get((self.name, offset), ()):
            self.bus.post_write(addr, v)
        self.log.append(("leave", self.name, offset, value))


@given(data=st.data(), budget_small=st.booleans())
def test_bus_performs_posted_writes_in_order_after_the_access_within_budget(data,
                                                                             budget_small):
    from pymsi.hw import bus as B

    mem = core.Memory()
    mem.add_ram(0x4000_0000, 0x1000)
    budget = data.draw(st.integers(1, 40)) if budget_small else B.POSTED_BUDGET
    bus = B.Bus(mem, posted_budget=budget)
    names = ["a", "b", "c"]
    base = {n: 0x1000_0000 + k * 0x1000 for k, n in enumerate(names)}
    offsets = [0, 4, 8]
    follow = {}
    for n in names:                                # each write posts 0-2 writes
        for off in offsets:
            follow[(n, off)] = [(base[data.draw(st.sampled_from(names))]
                                 + data.draw(st.sampled_from(offsets + [0xFFC])),
                                 data.draw(st.integers(0, 9)))
                                for _ in range(data.draw(st.integers(0, 2)))]
    log: list = []
    for n in names:
        bus.map(base[n], 0x1000, Echo(bus, n, log, follow), n)
    start = (data.draw(st.sampled_from(names)), data.draw(st.sampled_from(offsets)))
    # What the architecture of posted writes says: the first write completes, then the
    # writes it posted, oldest first, each one's own posted writes queued behind.
    expect, queue, done = [(start[0], start[1], 1)], list(follow[start]), 0
    while queue and done < budget:
        addr, v = queue.pop(0)
        name = names[(addr - 0x1000_0000) // 0x1000]
        expect.append((name, addr & 0xFFF, v))
        queue += follow.get((name, addr & 0xFFF), [])
        done += 1
    bus.write(base[start[0]] + start[1], 1)
    got = [(n, off, v) for kind, n, off, v in log if kind == "enter"]
    assert got == expect
    assert bus.pending_writes == len(queue)
    event("budget reached" if queue else "drained")
    if queue:                                     # the rest on the next drain, in order
        assert bus.drain(1) == 1
        assert [(n, off, v) for kind, n, off, v in log if kind == "enter"][len(got)] == (
            names[(queue[0][0] - 0x1000_0000) // 0x1000], queue[0][0] & 0xFFF, queue[0][1])
