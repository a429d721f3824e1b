"""QEMU's "edu" teaching device (docs/specs/edu.rst), written against :mod:`pymsi.hw.qdev`.

PCI 1234:11e8, class "other" (0xff); BAR 0 is 1 MiB of registers:

====== ==== ===============================================================================
offset acc. register
====== ==== ===============================================================================
0x00   RO   identification: 0xRRrr00ed (major RR, minor rr): 0x010000ed
0x04   RW   liveness check: reads back the bitwise inverse of what was written
0x08   RW   factorial: write n, read n! (32-bit, wrapping) once status bit 0 clears
0x20   RW   status: bit 0 computing (RO), bit 7 raise interrupt 0x001 when a factorial is done
0x24   RO   interrupt status: the values raised and not acknowledged (OR-ed)
0x60   WO   interrupt raise: OR the value into interrupt status and raise the interrupt
0x64   WO   interrupt acknowledge: clear the value's bits from interrupt status
0x80   RW   DMA source address
0x88   RW   DMA destination address
0x90   RW   DMA transfer count
0x98   RW   DMA command: bit 0 start, bit 1 direction (0: RAM -> edu, 1: edu -> RAM),
            bit 2 raise interrupt 0x100 when done
====== ==== ===============================================================================

Registers below 0x80 take 4-byte accesses, the DMA ones 4 or 8; other accesses read all ones
and write nothing.  The DMA buffer is 4 KiB at device address 0x40000; the RAM side address
is a bus address (an IOVA behind the SMMU), clamped to the ``dma_mask`` property (28 bits,
as QEMU's).  A transfer whose device side falls outside the buffer is ignored (QEMU aborts
the whole emulator); a faulting RAM access ends the transfer as QEMU's ignored
``pci_dma_read`` / ``pci_dma_write`` errors do (counted in ``dma_errors``), and the
completion interrupt is still raised.  Factorials complete ``fact_ns`` and transfers
``dma_ns`` after they start on the machine's scheduler (at once without one).

Interrupts: QEMU's edu has MSI (one vector) and INTx.  This one has MSI-X (one vector,
vector 0) **and** MSI (one vector): it raises MSI-X vector 0 when MSI-X is enabled, else the
MSI vector when MSI is enabled, else it only sets ``intx_level`` (INTx is not modelled).
"""

from __future__ import annotations

from ..hw.pci import Delivery
from ..hw.qdev import MmioBar, PciDeviceModel

# Registers (BAR 0).
EDU_ID, EDU_LIVENESS, EDU_FACTORIAL, EDU_STATUS = 0x00, 0x04, 0x08, 0x20
EDU_IRQ_STATUS, EDU_IRQ_RAISE, EDU_IRQ_ACK = 0x24, 0x60, 0x64
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_CNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
EDU_ID_VALUE = 0x010000ED                     # version 1.0
STATUS_COMPUTING, STATUS_IRQFACT = 0x01, 0x80
DMA_CMD_START, DMA_CMD_TO_RAM, DMA_CMD_IRQ = 0x01, 0x02, 0x04
IRQ_FACT, IRQ_DMA = 0x001, 0x100              # interrupt status values of the device's own
DMA_BUF_START, DMA_BUF_SIZE = 0x40000, 0x1000
BAR0_SIZE = 1 << 20

_MASK32, _MASK64 = (1 << 32) - 1, (1 << 64) - 1


def factorial32(n: int) -> int:
    """n! modulo 2^32 (what the device's 32-bit loop computes); 0 from 34! on."""
    if n >= 34:                          # 34! has 32 factors of two
        return 0
    r = 1
    for i in range(2, n + 1):
        r = r * i & _MASK32
    return r


class EduDevice(PciDeviceModel):
    """QEMU's edu device: ID, liveness, factorial, interrupt raise/ack, DMA engine."""

    NAME = "edu"
    VENDOR_ID, DEVICE_ID, CLASS_CODE, REVISION = 0x1234, 0x11E8, 0xFF0000, 0x10
    BARS = (MmioBar(BAR0_SIZE, read="mmio_read", write="mmio_write"),)
    MSIX_VECTORS = 1
    MSI_VECTORS = 1
    PROPERTIES = {"dma_mask": (1 << 28) - 1, "fact_ns": 1000, "dma_ns": 100_000}
    dma_mask: int                          # the properties, set from PROPERTIES at creation
    fact_ns: int
    dma_ns: int

    def realize(self) -> None:
        self.dma_errors = 0
        self.reset()

    def reset(self) -> None:
        """Every register and the DMA buffer at power-on values, no factorial or transfer
        running (their scheduled completions are cancelled by the FLR).  QEMU's edu has no
        reset handler (its state survives a reset); a PCIe function's FLR clears it."""
        self.liveness = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.intx_level = False
        self.dma_src = self.dma_dst = self.dma_cnt = self.dma_cmd = 0
        self.dma_buf = bytearray(DMA_BUF_SIZE)
        self.dma_busy = False

    # -- interrupts ---------------------------------------------------------------------------

    def raise_irq(self, value: int) -> None:
        """edu_raise_irq(): OR ``value`` into the interrupt status and signal."""
        self.irq_status = (self.irq_status | value) & _MASK32
        if self.msix_enabled:
            self.msix_notify(0)
        elif self.msi_notify(0) is Delivery.DISABLED:
            self.intx_level = True

    def lower_irq(self, value: int) -> None:
        """edu_lower_irq(): clear ``value``'s bits; INTx drops when none is left."""
        self.irq_status &= ~value & _MASK32
        if not self.irq_status:
            self.intx_level = False

    # -- registers ----------------------------------------------------------------------------

    @staticmethod
    def _size_ok(offset: int, size: int) -> bool:
        return size == 4 if offset < 0x80 else size in (4, 8)

    def mmio_read(self, offset: int, size: int) -> int:
        if not self._size_ok(offset, size):
            return _MASK64
        if offset == EDU_ID:
            return EDU_ID_VALUE
        if offset == EDU_LIVENESS:
            return ~self.liveness & _MASK32
        if offset == EDU_FACTORIAL:
            return self.fact
        if offset == EDU_STATUS:
            return self.status
        if offset == EDU_IRQ_STATUS:
            return self.irq_status
        regs = {EDU_DMA_SRC: self.dma_src, EDU_DMA_DST: self.dma_dst,
                EDU_DMA_CNT: self.dma_cnt, EDU_DMA_CMD: self.dma_cmd}
        return regs.get(offset, _MASK64)

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        if not self._size_ok(offset, size):
            return
        if offset == EDU_LIVENESS:
            self.liveness = value & _MASK32
        elif offset == EDU_FACTORIAL:
            if not self.status & STATUS_COMPUTING:
                self.fact = value & _MASK32
                self.status |= STATUS_COMPUTING
                self.schedule(self.fact_ns, self._fact_done)
        elif offset == EDU_STATUS:
            self.status = (self.status & ~STATUS_IRQFACT) | (value & STATUS_IRQFACT)
        elif offset == EDU_IRQ_RAISE:
            self.raise_irq(value)
        elif offset == EDU_IRQ_ACK:
            self.lower_irq(value)
        elif offset == EDU_DMA_SRC:
            self.dma_src = value
        elif offset == EDU_DMA_DST:
            self.dma_dst = value
        elif offset == EDU_DMA_CNT:
            self.dma_cnt = value
        elif offset == EDU_DMA_CMD:
            if value & DMA_CMD_START and not self.dma_busy:
                self.dma_cmd = value
                self.dma_busy = True
                self.schedule(self.dma_ns, self._dma_run)

    # -- the work -----------------------------------------------------------------------------

    def _fact_done(self) -> None:
        if not self.realized:
            return
        self.fact = factorial32(self.fact)
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQFACT:
            self.raise_irq(IRQ_FACT)

    def _dma_run(self) -> None:
        if not self.realized:
            return
        cmd, cnt = self.dma_cmd, self.dma_cnt
        to_ram = bool(cmd & DMA_CMD_TO_RAM)
        dev_addr = self.dma_src if to_ram else self.dma_dst
        ram_addr = (self.dma_dst if to_ram else self.dma_src) & self.dma_mask
        off = dev_addr - DMA_BUF_START
        if 0 <= off and cnt <= DMA_BUF_SIZE and off + cnt <= DMA_BUF_SIZE:
            if to_ram:
                if not self.dma_write_bytes(ram_addr, bytes(self.dma_buf[off:off + cnt])):
                    self.dma_errors += 1
            else:
                data = self.dma_read_bytes(ram_addr, cnt)
                if data is None:
                    self.dma_errors += 1
                else:
                    self.dma_buf[off:off + cnt] = data
        else:
            self.dma_errors += 1                  # outside the buffer: ignored
        self.dma_cmd &= ~DMA_CMD_START
        self.dma_busy = False
        if cmd & DMA_CMD_IRQ:
            self.raise_irq(IRQ_DMA)
