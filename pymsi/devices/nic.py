"""A multi-queue NIC-like device, written against :mod:`pymsi.hw.qdev`.

``queues`` receive queues (1..2048), queue q signalling MSI-X vector q.  The driver gives
each queue a ring of ``RING_SIZE`` 16-byte descriptors in RAM (a bus address: an IOVA
behind the SMMU) and sets CTRL.ENABLE; when a packet arrives on queue q
(:meth:`MultiQueueNic.receive`) the device DMA-writes a descriptor at the ring's head slot,
advances HEAD and raises vector q.  The driver consumes descriptors and tells the device how
far it got by writing the queue's DOORBELL (the consumed count, free running like HEAD).  A
packet finding the ring full, the queue unconfigured, the device disabled or its descriptor
write faulting is dropped and counted (RX_DROPPED; a fault is also the SMMU's event).

BAR 0 (32-bit accesses; RING_BASE also as one 64-bit access):

========================= ==== =========================================================
offset                    acc. register
========================= ==== =========================================================
0x0000                    RO   ID: 0x4E494331 ("NIC" version 1)
0x0004                    RO   NUM_QUEUES
0x0008                    RW   CTRL: bit 0 ENABLE
0x000C                    RO   RX_DROPPED: packets dropped
0x1000 + q*0x20 + 0x00    RW   RING_BASE (low 32 bits; +0x04 high 32 bits)
0x1000 + q*0x20 + 0x08    RW   RING_SIZE: entries, a power of two <= 4096 (0: queue off)
0x1000 + q*0x20 + 0x0C    RO   HEAD: descriptors written (free running, 32 bits)
0x1000 + q*0x20 + 0x10    RW   DOORBELL: descriptors consumed; a value behind the last
                               one written back or beyond HEAD is ignored
========================= ==== =========================================================

Writing RING_BASE or RING_SIZE resets the queue's HEAD and DOORBELL to 0.  A Function Level
Reset returns every register to 0 and drops the packets :meth:`MultiQueueNic.receive_later`
scheduled.

Descriptor (16 bytes, little endian): u64 packet id, u32 length, u16 queue, u16 flags
(bit 0 DD: descriptor done).
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..hw.qdev import MmioBar, PciDeviceModel

NIC_ID, NIC_NUM_QUEUES, NIC_CTRL, NIC_RX_DROPPED = 0x0000, 0x0004, 0x0008, 0x000C
NIC_ID_VALUE = 0x4E494331
CTRL_ENABLE = 1 << 0
QUEUE_BASE, QUEUE_STRIDE = 0x1000, 0x20
Q_RING_BASE_LO, Q_RING_BASE_HI, Q_RING_SIZE, Q_HEAD, Q_DOORBELL = 0x00, 0x04, 0x08, 0x0C, 0x10
DESC_SIZE, DESC_DD = 16, 1 << 0
MAX_RING = 4096
MAX_QUEUES = 2048

_MASK32 = (1 << 32) - 1


class RxQueue:
    """One receive queue's registers."""

    __slots__ = ("base", "size", "head", "tail")

    def __init__(self) -> None:
        self.base = self.size = self.head = self.tail = 0


class MultiQueueNic(PciDeviceModel):
    """A NIC-like device with ``queues`` receive queues, one MSI-X vector each."""

    NAME = "nic"
    VENDOR_ID, DEVICE_ID, CLASS_CODE = 0x1234, 0x4E49, 0x020000      # Ethernet controller
    PROPERTIES = {"queues": 4}
    queues: int                            # the properties, set from PROPERTIES at creation

    def check_properties(self) -> None:
        q = self.queues
        if not isinstance(q, int) or isinstance(q, bool) or not 1 <= q <= MAX_QUEUES:
            raise InvalidArgument(f"nic: queues={q!r} (1..{MAX_QUEUES})")

    def msix_vector_count(self) -> int:
        return self.queues

    def bar_declarations(self) -> tuple[MmioBar, ...]:
        end = QUEUE_BASE + self.queues * QUEUE_STRIDE
        size = 0x1000
        while size < end:
            size <<= 1
        return (MmioBar(size),)

    def realize(self) -> None:
        self.reset()

    def reset(self) -> None:
        """CTRL, RX_DROPPED and every queue (ring base, size, HEAD, DOORBELL) at 0;
        packets scheduled to arrive (:meth:`receive_later`) are cancelled by the FLR."""
        self.rxq = [RxQueue() for _ in range(self.queues)]
        self.ctrl = 0
        self.rx_dropped = 0
        self.packets = 0                      # packet ids handed out

    # -- registers ----------------------------------------------------------------------------

    def _queue_reg(self, offset: int) -> tuple[RxQueue, int] | None:
        q, reg = divmod(offset - QUEUE_BASE, QUEUE_STRIDE)
        if offset < QUEUE_BASE or q >= self.queues:
            return None
        return self.rxq[q], reg

    def read(self, offset: int, size: int) -> int:
        if size == 8 and offset >= QUEUE_BASE and (offset - QUEUE_BASE) % QUEUE_STRIDE == 0:
            found = self._queue_reg(offset)
            return found[0].base if found else 0
        if size != 4 or offset % 4:
            return 0
        if offset == NIC_ID:
            return NIC_ID_VALUE
        if offset == NIC_NUM_QUEUES:
            return self.queues
        if offset == NIC_CTRL:
            return self.ctrl
        if offset == NIC_RX_DROPPED:
            return self.rx_dropped & _MASK32
        found = self._queue_reg(offset)
        if found is None:
            return 0
        q, reg = found
        return {Q_RING_BASE_LO: q.base & _MASK32, Q_RING_BASE_HI: q.base >> 32,
                Q_RING_SIZE: q.size, Q_HEAD: q.head, Q_DOORBELL: q.tail}.get(reg, 0)

    def write(self, offset: int, value: int, size: int) -> None:
        if size == 8 and offset >= QUEUE_BASE and (offset - QUEUE_BASE) % QUEUE_STRIDE == 0:
            found = self._queue_reg(offset)
            if found:
                self._set_ring(found[0], value, found[0].size)
            return
        if size != 4 or offset % 4:
            return
        if offset == NIC_CTRL:
            self.ctrl = value & CTRL_ENABLE
            return
        found = self._queue_reg(offset)
        if found is None:
            return
        q, reg = found
        if reg == Q_RING_BASE_LO:
            self._set_ring(q, (q.base & ~_MASK32) | value, q.size)
        elif reg == Q_RING_BASE_HI:
            self._set_ring(q, (q.base & _MASK32) | value << 32, q.size)
        elif reg == Q_RING_SIZE:
            if value == 0 or (value <= MAX_RING and not value & (value - 1)):
                self._set_ring(q, q.base, value)
        elif reg == Q_DOORBELL:
            done = (value - q.tail) & _MASK32             # newly consumed
            if done <= (q.head - q.tail) & _MASK32:
                q.tail = value & _MASK32

    @staticmethod
    def _set_ring(q: RxQueue, base: int, size: int) -> None:
        q.base, q.size, q.head, q.tail = base, size, 0, 0

    # -- the wire -------------------------------------------------------------------------------

    def receive(self, queue: int, length: int = 64) -> bool:
        """A packet of ``length`` bytes arrives on ``queue``: write its descriptor into the
        ring and raise the queue's vector.  False if it was dropped."""
        if not isinstance(queue, int) or not 0 <= queue < self.queues or not self.realized:
            raise InvalidArgument(f"nic {self.bdf}: no queue {queue!r}")
        q = self.rxq[queue]
        if not self.ctrl & CTRL_ENABLE or not q.size or (q.head - q.tail) & _MASK32 >= q.size:
            self.rx_dropped += 1
            return False
        slot = q.base + (q.head & (q.size - 1)) * DESC_SIZE
        pkt = self.packets
        hi = (length & _MASK32) | queue << 32 | DESC_DD << 48
        ok = self.dma_write(slot, pkt, 8).ok
        ok = ok and self.dma_write(slot + 8, hi, 8).ok
        if not ok:
            self.rx_dropped += 1
            return False
        self.packets += 1
        q.head = (q.head + 1) & _MASK32
        self.msix_notify(queue)
        return True

    def receive_later(self, delay_ns: int, queue: int, length: int = 64) -> None:
        """A packet arriving ``delay_ns`` from now (on the machine's scheduler)."""
        self.schedule(delay_ns, self.receive, queue, length)
