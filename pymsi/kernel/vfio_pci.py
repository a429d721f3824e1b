"""vfio-pci with the device cdev (drivers/vfio/pci/vfio_pci_core.c, vfio_pci_intrs.c,
drivers/vfio/vfio_main.c, device_cdev.c): a PCI function handed to userspace.

The driver "vfio-pci" has no id table: it binds only through ``driver_override``
and ``bind``.  Probe creates ``/dev/vfio/devices/vfio<N>`` (the lowest free N);
remove deletes it.  Opening the node gives a device file that refuses every
ioctl but ``VFIO_DEVICE_BIND_IOMMUFD`` with EINVAL until it is bound to an
iommufd (:meth:`VfioDeviceFile._grant_access` is what a successful bind does).
Then the file answers the device ioctls: GET_INFO, GET_REGION_INFO,
GET_IRQ_INFO, SET_IRQS for MSI and MSI-X (eventfd triggers, loopback, dynamic
MSI-X growth) and RESET.

Arguments are the :mod:`pymsi.uapi.vfio` structure objects, filled in place
as ``copy_to_user`` would.  GET_REGION_INFO returns the capability chain bytes
Linux copies after the structure (``b""`` when none were copied); SET_IRQS
returns what Linux returns (0, or the positive vector count when
pci_alloc_irq_vectors gave fewer than asked).
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from ..hw import pci as P
from ..uapi import vfio as V
from .base import EFAULT, EINVAL, ENODEV, ENOENT, KernelError, fail
from .files import EBADF, ENOTTY, File, FileOperations
from .msi import MsiType
from .pci import PciDriver

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..uapi import IoctlArg, Struct
    from .files import CharDev, EventfdCtx, IoctlResult
    from .iommufd import Iommufd, IommufdCtx, IommufdDevice
    from .irqbypass import IrqBypassProducer
    from .kernel import Kernel
    from .pci import PciDev, PciSavedState

_S = TypeVar("_S", bound="Struct")

U32_MAX = 0xFFFF_FFFF
DRIVER_NAME = "vfio-pci"
DEV_DIR = "/dev/vfio/devices"


VFIO_PCI_OFFSET_SHIFT = 40
VFIO_PCI_OFFSET_MASK = (1 << VFIO_PCI_OFFSET_SHIFT) - 1


def _region_offset(index: int) -> int:
    """VFIO_PCI_INDEX_TO_OFFSET(): each region at its index << 40 in the fd."""
    return index << VFIO_PCI_OFFSET_SHIFT


class VfioPciConfig:
    """vfio_pci_config.c: the user's view of the function's configuration space.

    Per byte, a *virtual* mask (those bits read from and written to ``vconfig``,
    never the function) and a *write* mask (bits the user may change at all; the
    non-virtual ones go to the function).  What is virtualized: vendor / device
    ID (read-only), the command register's INTx Disable, the BARs and ROM BAR
    (sizing answered from the BAR's size, nothing reaches the function), the
    capability pointer, the interrupt line and pin, the whole MSI capability
    (its Enable never reaches the function: VFIO enables MSI through SET_IRQS),
    the capability headers; the MSI-X capability is read through and never
    written (its Enable and Function Mask belong to SET_IRQS); in the PCI Express
    capability the FLR capability bit is virtual (set when VFIO can reset the
    function) and writing Initiate FLR makes VFIO reset the function when the
    function's own DEVCAP has FLR (pci_try_reset_function, state restored);
    Device Control's Max_Payload_Size is virtual, Max_Read_Request_Size virtual
    and set on the function, Phantom Functions Enable not writable.  Everything
    else reads through and drops writes.
    """

    def __init__(self, core: VfioPciCore) -> None:
        self.core = core
        pdev = core.pdev
        self.size = 0x1000 if core.is_pcie() else 0x100
        n = self.size
        self.vconfig = bytearray(pdev.cfg_read(i, 1) for i in range(0x40))
        self.vconfig += bytes(n - 0x40)
        self.virt = bytearray(n)
        self.write = bytearray(n)

        def perm(off: int, size: int, virt: int, write: int) -> None:
            self.virt[off:off + size] = (virt & ((1 << 8 * size) - 1)).to_bytes(size, "little")
            self.write[off:off + size] = (write & ((1 << 8 * size) - 1)).to_bytes(size,
                                                                                  "little")

        ALL = 0xFFFF_FFFF
        perm(P.VENDOR_ID, 2, ALL, 0)
        perm(P.DEVICE_ID, 2, ALL, 0)
        perm(P.COMMAND, 2, P.CMD_INTX_DISABLE, ALL)
        for reg in range(P.BAR0, P.BAR0 + 24, 4):
            perm(reg, 4, ALL, ALL)
        perm(P.ROM_ADDRESS, 4, ALL, ALL)
        perm(P.CAP_PTR, 1, ALL, 0)
        perm(P.INT_LINE, 1, ALL, ALL)
        perm(P.INT_PIN, 1, ALL, 0)
        self.bar_sizes = self._bar_sizes()
        # capabilities: their ID / next bytes are virtual (same values, read-only)
        ptr, seen = pdev.cfg_read(P.CAP_PTR, 1) & ~3, 0
        while ptr and seen < 48:
            cap_id = pdev.cfg_read(ptr, 1)
            self.vconfig[ptr:ptr + 2] = bytes([cap_id, pdev.cfg_read(ptr + 1, 1)])
            perm(ptr, 2, ALL, 0)
            if cap_id == P.CAP_ID_MSI:
                self._msi_perm(ptr, perm)
            elif cap_id == P.CAP_ID_EXP:
                cap = pdev.cfg_read(ptr + P.EXP_DEVCAP)
                if not core.reset_works:
                    cap &= ~P.EXP_DEVCAP_FLR
                self.vconfig[ptr + P.EXP_DEVCAP:ptr + P.EXP_DEVCAP + 4] = cap.to_bytes(4,
                                                                                     "little")
                perm(ptr + P.EXP_DEVCAP, 4, P.EXP_DEVCAP_FLR, 0)
                # init_pci_cap_exp_perm(): Phantom Functions not writable (they would
                # confuse the IOMMU), Max_Payload_Size virtual (a change would break the
                # link's other devices), Max_Read_Request_Size virtual (set through
                # pcie_set_readrq), Initiate FLR virtual
                ctl = pdev.cfg_read(ptr + P.EXP_DEVCTL, 2) & ~P.EXP_DEVCTL_BCR_FLR
                self.vconfig[ptr + P.EXP_DEVCTL:ptr + P.EXP_DEVCTL + 2] = ctl.to_bytes(
                    2, "little")
                perm(ptr + P.EXP_DEVCTL, 2, P.EXP_DEVCTL_BCR_FLR | P.EXP_DEVCTL_PAYLOAD
                     | P.EXP_DEVCTL_READRQ, 0xFFFF & ~P.EXP_DEVCTL_PHANTOM)
            ptr = pdev.cfg_read(ptr + 1, 1) & ~3
            seen += 1

    def _msi_perm(self, cap: int, perm: Any) -> None:
        """The MSI capability: flags, address and data virtual; mask bits to the
        function; pending bits read through."""
        pdev = self.core.pdev
        flags = pdev.cfg_read(cap + P.MSI_FLAGS, 2)
        is64 = flags & P.MSI_FLAGS_64BIT
        data_end = cap + (P.MSI_DATA_64 if is64 else P.MSI_DATA_32) + 2
        for off in range(cap + P.MSI_FLAGS, data_end):          # flags, address, data
            self.vconfig[off] = pdev.cfg_read(off, 1)
        virt = flags & ~(P.MSI_FLAGS_ENABLE | P.MSI_FLAGS_QSIZE)
        self.vconfig[cap + P.MSI_FLAGS:cap + P.MSI_FLAGS + 2] = virt.to_bytes(2, "little")
        perm(cap + P.MSI_FLAGS, 2, 0xFFFF, P.MSI_FLAGS_ENABLE | P.MSI_FLAGS_QSIZE)
        perm(cap + P.MSI_ADDR_LO, 4, 0xFFFF_FFFF, 0xFFFF_FFFC)
        if is64:
            perm(cap + P.MSI_ADDR_HI, 4, 0xFFFF_FFFF, 0xFFFF_FFFF)
        perm(cap + (P.MSI_DATA_64 if is64 else P.MSI_DATA_32), 2, 0xFFFF, 0xFFFF)
        if flags & P.MSI_FLAGS_MASKBIT:
            perm(cap + (P.MSI_MASK_64 if is64 else P.MSI_MASK_32), 4, 0, 0xFFFF_FFFF)

    def _bar_sizes(self) -> dict[int, tuple[int, int, bool]]:
        """BAR register -> (size, flag bits, 64-bit low half) from the kernel's sizing."""
        out: dict[int, tuple[int, int, bool]] = {}
        pdev = self.core.pdev
        for index, addr in getattr(pdev, "bars_by_index", {}).items():
            size = next((sz for a, sz in pdev.bars if a == addr), 0)
            reg = P.BAR0 + 4 * index
            flags = pdev.cfg_read(reg) & 0xF
            out[reg] = (size, flags, bool(flags & 0b100))
        return out

    def _bar_fixup(self) -> None:
        """vfio_bar_fixup(): each virtual BAR holds only bits its size allows, with
        the BAR's flags; an unimplemented BAR and the ROM (none) read 0."""
        raw = {reg: int.from_bytes(self.vconfig[reg:reg + 4], "little")
               for reg in range(P.BAR0, P.BAR0 + 24, 4)}
        new = dict.fromkeys(raw, 0)
        for reg, (size, flags, is64) in self.bar_sizes.items():
            mask = ~(size - 1) & ((1 << 64) - 1)
            new[reg] = raw[reg] & mask & 0xFFFF_FFF0 | flags
            if is64 and reg + 4 in raw:
                new[reg + 4] = raw[reg + 4] & (mask >> 32)
        for reg, v in new.items():
            self.vconfig[reg:reg + 4] = v.to_bytes(4, "little")
        self.vconfig[P.ROM_ADDRESS:P.ROM_ADDRESS + 4] = bytes(4)

    def rw(self, pos: int, buf: bytes | None, count: int) -> bytes | int:
        """vfio_pci_config_rw(): naturally aligned 4 / 2 / 1 byte pieces; EFAULT
        when the range leaves the configuration space.  A read returns the bytes,
        a write (``buf``) the count."""
        if pos < 0 or pos >= self.size or pos + count > self.size:
            raise fail(EFAULT, f"config access {pos:#x}+{count} outside {self.size:#x}")
        out = bytearray()
        done = 0
        while done < count:
            left = count - done
            n = 4 if left >= 4 and not pos % 4 else 2 if left >= 2 and not pos % 2 else 1
            if buf is None:
                out += self._read(pos, n).to_bytes(n, "little")
            else:
                self._write(pos, int.from_bytes(buf[done:done + n], "little"), n)
            pos, done = pos + n, done + n
        return bytes(out) if buf is None else done

    def _mask(self, arr: bytearray, pos: int, n: int) -> int:
        return int.from_bytes(arr[pos:pos + n], "little")

    def _read(self, pos: int, n: int) -> int:
        if P.BAR0 <= pos < P.BAR0 + 24 or P.ROM_ADDRESS <= pos < P.ROM_ADDRESS + 4:
            self._bar_fixup()
        virt = self._mask(self.virt, pos, n)
        phys = self.core.pdev.cfg_read(pos, n) if virt != (1 << 8 * n) - 1 else 0
        return (phys & ~virt) | (self._mask(self.vconfig, pos, n) & virt)

    def _write(self, pos: int, val: int, n: int) -> None:
        virt, wr = self._mask(self.virt, pos, n), self._mask(self.write, pos, n)
        pdev = self.core.pdev
        exp = pdev.find_capability(P.CAP_ID_EXP)
        devctl = None if exp is None else exp + P.EXP_DEVCTL
        readrq = None if devctl is None else \
            self._mask(self.vconfig, devctl, 2) & P.EXP_DEVCTL_READRQ
        if wr & virt:
            old = self._mask(self.vconfig, pos, n)
            new = (old & ~(wr & virt)) | (val & wr & virt)
            self.vconfig[pos:pos + n] = new.to_bytes(n, "little")
        if wr & ~virt:
            phys = pdev.cfg_read(pos, n)
            pdev.cfg_write(pos, (phys & ~(wr & ~virt)) | (val & wr & ~virt), n)
        if exp is not None and devctl is not None and pos <= devctl + 1 and devctl < pos + n:
            # vfio_exp_config_write(): Initiate FLR, virtual, resets through the kernel
            # when the *physical* DEVCAP says the function has FLR; a new
            # Max_Read_Request_Size goes to the function (pcie_set_readrq).
            ctl = self._mask(self.vconfig, devctl, 2)
            if ctl & P.EXP_DEVCTL_READRQ != readrq:
                phys = pdev.cfg_read(devctl, 2)
                pdev.cfg_write(devctl, phys & ~P.EXP_DEVCTL_READRQ
                               | ctl & P.EXP_DEVCTL_READRQ, 2)
            if ctl & P.EXP_DEVCTL_BCR_FLR:
                self.vconfig[devctl:devctl + 2] = (ctl & ~P.EXP_DEVCTL_BCR_FLR).to_bytes(
                    2, "little")
                if pdev.cfg_read(exp + P.EXP_DEVCAP, 4) & P.EXP_DEVCAP_FLR:
                    try:
                        self.core.reset()
                    except KernelError:
                        pass


class VfioPciIrqCtx:
    """struct vfio_pci_irq_ctx: one MSI/MSI-X vector's trigger eventfd."""

    producer: IrqBypassProducer | None      # set once the trigger is installed

    def __init__(self, irq: int, trigger: EventfdCtx) -> None:
        self.irq = irq
        self.trigger = trigger

    def handler(self, irq: int, dev_id: object = None) -> int:
        """vfio_msihandler(): signal the vector's eventfd."""
        self.trigger.signal()
        return 1                                # IRQ_HANDLED


class VfioPciCore:
    """struct vfio_pci_core_device: the bound function, its cdev and interrupt state."""

    def __init__(self, kernel: Kernel, pdev: PciDev, minor: int) -> None:
        self.kernel = kernel
        self.pdev = pdev
        self.minor = minor
        self.path = f"{DEV_DIR}/vfio{minor}"
        self.irq_type = V.VFIO_PCI_NUM_IRQS     # none
        self.ctx: dict[int, VfioPciIrqCtx] = {}
        self.reset_works = True
        self.removed = False
        self.files: list[VfioDeviceFile] = []
        self.enabled = False
        self.config: VfioPciConfig | None = None
        self.saved_state: PciSavedState | None = None
        self.resets = 0                             # function resets VFIO did (for tests)

    @property
    def has_dyn_msix(self) -> bool:
        """pci_msix_can_alloc_dyn()."""
        return self.pdev.msix_cap is not None and bool(self.kernel.msi.msix_alloc_dyn)

    # -- counts -------------------------------------------------------------------------

    def irq_count(self, index: int) -> int:
        """vfio_pci_get_irq_count()."""
        pdev = self.pdev
        if index == V.VFIO_PCI_INTX_IRQ_INDEX:
            return 1 if pdev.cfg_read(P.INT_PIN, 1) else 0
        if index == V.VFIO_PCI_MSI_IRQ_INDEX:
            if pdev.msi_cap is None:
                return 0
            flags: int = pdev.cfg_read(pdev.msi_cap + P.MSI_FLAGS, 2)
            return 1 << ((flags & P.MSI_FLAGS_QMASK) >> 1)
        if index == V.VFIO_PCI_MSIX_IRQ_INDEX:
            n: int = pdev.msix_vectors()
            return n
        if index == V.VFIO_PCI_ERR_IRQ_INDEX:
            return 1 if self.is_pcie() else 0
        if index == V.VFIO_PCI_REQ_IRQ_INDEX:
            return 1
        return 0

    def is_pcie(self) -> bool:
        return self.pdev.find_capability(P.CAP_ID_EXP) is not None

    def bar_size(self, index: int) -> int:
        addr = self.pdev.bars_by_index.get(index)
        if addr is None:
            return 0
        return next((s for a, s in self.pdev.bars if a == addr), 0)

    def msix_bar(self) -> int | None:
        if self.pdev.msix_cap is None:
            return None
        table: int = self.pdev.cfg_read(self.pdev.msix_cap + P.MSIX_TABLE)
        return table & 7

    # -- MSI / MSI-X (vfio_pci_intrs.c) -------------------------------------------------

    def msi_enable(self, nvec: int, msix: bool) -> int:
        """vfio_msi_enable(): 0, an errno raised, or the smaller count obtained
        (positive, returned to userspace as Linux does, nothing left enabled)."""
        if self.irq_type != V.VFIO_PCI_NUM_IRQS:
            raise fail(EINVAL, "interrupts already enabled")
        flag = MsiType.MSIX if msix else MsiType.MSI
        got: int = self.kernel.msi.alloc_irq_vectors(self.pdev, 1, nvec, flag)
        if got < nvec:
            self.kernel.msi.free_irq_vectors(self.pdev)
            return got
        self.irq_type = V.VFIO_PCI_MSIX_IRQ_INDEX if msix else V.VFIO_PCI_MSI_IRQ_INDEX
        return 0

    def _alloc_irq(self, vector: int, msix: bool) -> int:
        """vfio_msi_alloc_irq(): the vector's IRQ, allocated now for dynamic MSI-X."""
        desc = self.pdev.msi_descs.get(vector)
        if desc is not None:
            irq: int = desc.irq
            return irq
        if not msix or not self.has_dyn_msix:
            raise fail(EINVAL, f"vector {vector} is not allocated")
        virq: int
        _, virq = self.kernel.msi.msix_alloc_irq_at(self.pdev, vector)
        return virq

    def set_vector_signal(self, vector: int, fd: int, msix: bool) -> None:
        """vfio_msi_set_vector_signal(): drop the vector's trigger, then (fd >= 0)
        install the eventfd ``fd``.  The IRQ stays allocated until MSI(-X) is off.
        Each installed trigger is an irq-bypass producer (token: the eventfd)."""
        from .irqbypass import IrqBypassProducer, irqbypass_of
        k = self.kernel
        ctx = self.ctx.pop(vector, None)
        if ctx is not None:
            producer = getattr(ctx, "producer", None)
            if producer is not None:                     # irq_bypass_unregister_producer()
                irqbypass_of(k).unregister_producer(producer)
            k.irq.free_irq(ctx.irq, ctx)
            ctx.trigger.put()
        if fd < 0:
            return
        irq = self._alloc_irq(vector, msix)
        trigger = k.eventfd_ctx_fdget(fd)
        new = VfioPciIrqCtx(irq, trigger)
        try:
            k.irq.request_irq(irq, new.handler, f"vfio-msi{'x' if msix else ''}[{vector}]"
                              f"({self.pdev.bdf})", new)
        except BaseException:
            trigger.put()
            raise
        # request_irq() unmasked the vector: a message the device held in its PBA goes out
        # now and its CPU takes the interrupt at once (interrupts are on), long before the
        # producer below can forward the vector -- whose DISCARD would otherwise drop an
        # LPI still pending on the host.  The model runs the CPUs here.
        k.handle_interrupts()
        # irq_bypass_register_producer(): token = the trigger, a failure only logged.
        new.producer = IrqBypassProducer(trigger, irq)
        ret = irqbypass_of(k).register_producer(new.producer)
        if ret:
            k.printk(f"vfio-pci {self.pdev.bdf}: irq bypass producer registration fails: {ret}")
            new.producer = None
        self.ctx[vector] = new

    def set_block(self, start: int, fds: list[int], msix: bool) -> None:
        """vfio_msi_set_block(): on a failure the vectors from ``start`` up to the
        failing one are torn down (as Linux does), then the error is raised."""
        j = start
        try:
            for fd in fds:
                self.set_vector_signal(j, fd, msix)
                j += 1
        except KernelError:
            for i in range(start, j):
                self.set_vector_signal(i, -1, msix)
            raise

    def msi_disable(self) -> None:
        """vfio_msi_disable(): every trigger dropped, the vectors freed.  The ioctl runs
        with interrupts enabled: an interrupt the function already raised is taken
        before its vector is freed (free_irq's synchronize_irq), not lost."""
        self.kernel.handle_interrupts()
        msix = self.irq_type == V.VFIO_PCI_MSIX_IRQ_INDEX
        for vector in sorted(self.ctx):
            self.set_vector_signal(vector, -1, msix)
        self.kernel.msi.free_irq_vectors(self.pdev)
        self.irq_type = V.VFIO_PCI_NUM_IRQS

    def set_msi_trigger(self, index: int, start: int, count: int, flags: int,
                        data: list[int]) -> int:
        """vfio_pci_set_msi_trigger()."""
        msix = index == V.VFIO_PCI_MSIX_IRQ_INDEX
        if self.irq_type == index and not count and flags & V.VFIO_IRQ_SET_DATA_NONE:
            self.msi_disable()
            return 0
        if self.irq_type not in (index, V.VFIO_PCI_NUM_IRQS):
            raise fail(EINVAL, "another interrupt type is enabled")
        if flags & V.VFIO_IRQ_SET_DATA_EVENTFD:
            if self.irq_type == index:
                # Every vector getting a trigger: a live one is started again
                # (request_irq), which must not revive an address userspace cleared.
                self.check_msi_iovas(index, [start + i for i, fd in enumerate(data)
                                             if fd >= 0])
                self.set_block(start, data, msix)
                return 0
            self.check_msi_iovas(index, list(range(start + count)))
            got = self.msi_enable(start + count, msix)
            if got:
                return got
            try:
                self.set_block(start, data, msix)
            except KernelError:
                self.msi_disable()
                raise
            return 0
        if self.irq_type != index:
            raise fail(EINVAL, "interrupt type not enabled")
        for i in range(start, start + count):
            ctx = self.ctx.get(i)
            if ctx is None:
                continue
            if flags & V.VFIO_IRQ_SET_DATA_NONE or data[i - start]:
                ctx.trigger.signal()
        return 0

    def check_msi_iovas(self, index: int, vectors: list[int]) -> None:
        """Per-vector MSI design: every vector about to get a trigger must have an
        address (VFIO_DEVICE_MSI_IOVA), else ENOENT before anything changes — the
        allocation path would fail the same way, this only keeps the vectors
        already live untouched (vfio_msi_set_block would tear some down)."""
        hooks = self.kernel.msi.per_vector_hooks(self.pdev)
        if hooks is None or not vectors:
            return
        idev = hooks.idev_of(self.pdev)
        if idev is None or idev.hw_msi:
            return
        missing = [v for v in vectors if not hooks.has_entry(idev, index, v)]
        if missing:
            raise fail(ENOENT, f"{self.pdev}: no MSI address for vectors {missing} "
                               f"of index {index}")

    def bound_idev(self) -> tuple[IommufdCtx, IommufdDevice] | None:
        """(iommufd context, iommufd device) of the file bound to this device."""
        df = next((f for f in self.files if f.access_granted and f.devid is not None
                   and f.iommufd is not None), None)
        if df is None:
            return None
        # (the search above took a file bound to an iommufd: both are set)
        ctx = _iommufd(self.kernel).ctx_from_file(cast(File, df.iommufd))
        return ctx, ctx.device(cast(int, df.devid))

    def msi_iova(self, arg: V.VfioDeviceMsiIova) -> int:
        """VFIO_DEVICE_MSI_IOVA (not upstream; the per-vector design): SET / CLEAR /
        GET the MSI IOVAs of vectors [start, start + count) of MSI or MSI-X.

        EINVAL, with nothing changed, for: argsz below the header, not exactly one
        of SET / CLEAR / GET or another flag, ``__reserved`` set, an index other
        than MSI / MSI-X, an empty range or one past the index's vector count
        (MSI: vector 0 only — its one address serves every MSI vector),
        argsz (or the array) not covering ``iova[count]`` for SET / GET, an IOVA
        of 0 or not page aligned for SET.  EOPNOTSUPP when the context's design is
        not per-vector or the device's MSIs are not translated (x86).  A SET or
        CLEAR of a live vector changes nothing on the device: the next affinity
        change writes the new address (the two steps of the thread).  GET fills
        ``iova[]``, 0 for a vector without an entry.
        """
        from .files import PAGE_SIZE
        from .iommufd_msi import PerVectorMsi

        minsz = V.VfioDeviceMsiIova.offsetofend("__reserved")
        if arg.argsz < minsz:
            raise fail(EINVAL, "vfio_device_msi_iova too small")
        op = arg.flags
        ops = (V.VFIO_MSI_IOVA_SET, V.VFIO_MSI_IOVA_CLEAR, V.VFIO_MSI_IOVA_GET)
        if op not in ops:
            raise fail(EINVAL, "flags must be exactly one of SET, CLEAR, GET")
        if getattr(arg, "__reserved"):
            raise fail(EINVAL, "__reserved must be 0")
        bound = self.bound_idev()
        if bound is None:
            raise fail(EINVAL, "device not bound to an iommufd")
        ctx, idev = bound
        hooks = ctx.msi
        if not isinstance(hooks, PerVectorMsi):
            raise fail(_errno.EOPNOTSUPP, f"the context's MSI design is {hooks.name}")
        if idev.hw_msi:
            raise fail(_errno.EOPNOTSUPP, "MSIs of this device are not translated")
        if arg.index not in (V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX):
            raise fail(EINVAL, f"index {arg.index} is not MSI or MSI-X")
        num = self.irq_count(arg.index)
        if arg.index == V.VFIO_PCI_MSI_IRQ_INDEX:
            num = min(num, 1)           # one address register for every MSI vector
        if arg.count == 0 or arg.start >= num or arg.count > num - arg.start:
            raise fail(EINVAL, f"vectors {arg.start}+{arg.count} outside 0..{num}")
        if op != V.VFIO_MSI_IOVA_CLEAR:
            if arg.argsz - minsz < 8 * arg.count or len(arg.iova) < arg.count:
                raise fail(EINVAL, "iova[] shorter than count")
        if op == V.VFIO_MSI_IOVA_SET:
            iovas = list(arg.iova)[:arg.count]
            if any(not iova or iova & (PAGE_SIZE - 1) for iova in iovas):
                raise fail(EINVAL, "an IOVA is 0 or not page aligned")
            hooks.set_range(idev, arg.index, arg.start, iovas)
        elif op == V.VFIO_MSI_IOVA_CLEAR:
            hooks.clear_range(idev, arg.index, arg.start, arg.count)
        else:
            out = [hooks.get(idev, arg.index, arg.start + i) for i in range(arg.count)]
            arg.iova = out + list(arg.iova)[arg.count:]
        return 0

    def prepare_msi_iovas(self, hdr: V.VfioIrqSet) -> int:
        """VFIO_IRQ_SET_ACTION_PREPARE | VFIO_IRQ_SET_DATA_MSI_IOVA (the RFCv2 series,
        the preset design): one u64 IOVA per vector of [start, start + count) of MSI
        or MSI-X, stored for the next allocation of those vectors.  EINVAL unless
        the context's design is preset and the flags are exactly those two (an
        unknown flag, as for a kernel without the series), for another index, and
        for data shorter than count."""
        from .iommufd_msi import PresetMsi

        want = V.VFIO_IRQ_SET_ACTION_PREPARE | V.VFIO_IRQ_SET_DATA_MSI_IOVA
        bound = self.bound_idev()
        hooks = None if bound is None else bound[0].msi
        if hdr.flags != want or bound is None or not isinstance(hooks, PresetMsi):
            raise fail(EINVAL, "ACTION_PREPARE needs DATA_MSI_IOVA and the preset design")
        if hdr.index not in (V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX):
            raise fail(EINVAL, "PREPARE is for MSI and MSI-X")
        minsz = V.VfioIrqSet.offsetofend("count")
        if hdr.argsz - minsz < 8 * hdr.count or len(hdr.data) < hdr.count:
            raise fail(EINVAL, "data shorter than count")
        hooks.preset(bound[1], hdr.index, hdr.start, list(hdr.data)[:hdr.count])
        return 0

    def memory_lock_and_enable(self) -> int:
        """vfio_pci_memory_lock_and_enable(): memory decode on while VFIO touches the
        MSI-X table in a BAR (the user may have turned it off); the command register
        as it was, for :meth:`memory_unlock_and_restore`."""
        cmd: int = self.pdev.cfg_read(P.COMMAND, 2)
        if not cmd & P.CMD_MEMORY:
            self.pdev.cfg_write(P.COMMAND, cmd | P.CMD_MEMORY, 2)
        return cmd

    def memory_unlock_and_restore(self, cmd: int) -> None:
        """vfio_pci_memory_unlock_and_restore()."""
        if self.pdev.cfg_read(P.COMMAND, 2) != cmd:
            self.pdev.cfg_write(P.COMMAND, cmd, 2)

    # -- open / close / reset (vfio_pci_core_enable / _disable) ----------------------

    def enable(self) -> None:
        """vfio_pci_core_enable() (the first open of the device): reset the function
        (whether that works decides ``reset_works``), save its state for the last
        close, and set up the virtual configuration space."""
        try:
            self.reset()
            self.reset_works = True
        except KernelError:
            self.reset_works = False
        self.saved_state = self.pdev.save_state()
        self.config = VfioPciConfig(self)
        self.enabled = True

    def reset(self) -> None:
        """pci_try_reset_function() on the function: its state (interrupts included)
        saved and restored around a Function Level Reset; ENOTTY when it cannot."""
        self.pdev.reset_function()
        self.resets += 1

    def teardown(self) -> None:
        """What closing the last file (vfio_pci_core_close_device ->
        vfio_pci_core_disable) undoes: Bus Master off, interrupts off, then the
        state saved at open restored around a reset of the function."""
        if not self.enabled:
            if self.irq_type in (V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX):
                self.msi_disable()
            return
        self.pdev.set_master(False)
        if self.irq_type in (V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX):
            cmd = self.memory_lock_and_enable()
            self.msi_disable()
            self.memory_unlock_and_restore(cmd)
        saved, self.saved_state = self.saved_state, None
        if self.reset_works:
            try:
                self.reset()
            except KernelError:
                pass
        if saved is not None:
            self.pdev.restore_state(saved)
        self.enabled = False
        self.config = None

    # -- regions (vfio_pci_rdwr.c) -----------------------------------------------------

    def msix_table_range(self, index: int) -> tuple[int, int] | None:
        """[start, end) of the MSI-X table in BAR ``index`` (vdev->msix_offset / size)."""
        pdev = self.pdev
        if pdev.msix_cap is None or self.msix_bar() != index:
            return None
        off = pdev.cfg_read(pdev.msix_cap + P.MSIX_TABLE) & ~7
        return off, off + pdev.msix_vectors() * P.MSIX_ENTRY_SIZE

    @overload
    def region_rw(self, pos: int, buf: None, count: int) -> bytes: ...
    @overload
    def region_rw(self, pos: int, buf: bytes, count: int) -> int: ...

    def region_rw(self, pos: int, buf: bytes | None, count: int) -> bytes | int:
        """vfio_pci_core_read / _write: the region is ``pos >> 40``.  EINVAL for a
        region that does not exist (ROM: the functions have none; VGA), or an
        offset at or past a BAR's end (an access crossing the end is cut short);
        EIO for a BAR while memory decode is off; EFAULT for the configuration
        space outside its size.  Inside the MSI-X table reads are all ones and
        writes are dropped: the table belongs to VFIO's SET_IRQS."""
        index, off = pos >> VFIO_PCI_OFFSET_SHIFT, pos & VFIO_PCI_OFFSET_MASK
        if index == V.VFIO_PCI_CONFIG_REGION_INDEX:
            if self.config is None:
                self.config = VfioPciConfig(self)
            return self.config.rw(off, buf, count)
        if index > V.VFIO_PCI_BAR5_REGION_INDEX:
            raise fail(EINVAL, f"region {index} cannot be read or written")
        size = self.bar_size(index)
        if not size or off >= size:
            raise fail(EINVAL, f"offset {off:#x} outside BAR{index} ({size:#x})")
        count = min(count, size - off)
        pdev = self.pdev
        if not pdev.cfg_read(P.COMMAND, 2) & P.CMD_MEMORY:
            raise fail(_errno.EIO, f"BAR{index}: memory decode disabled")
        base = pdev.bars_by_index[index]
        skip = self.msix_table_range(index) or (0, 0)
        out = bytearray()
        done = 0
        while done < count:
            a, left = off + done, count - done
            if skip[0] <= a < skip[1]:
                n = min(left, skip[1] - a)
                if buf is None:
                    out += b"\xff" * n
                done += n
                continue
            n = next(w for w in (8, 4, 2, 1) if left >= w and not a % w)
            if a < skip[0]:
                while a + n > skip[0]:
                    n //= 2
            if buf is None:
                out += pdev.mmio_read(base + a, n).to_bytes(n, "little")
            else:
                pdev.mmio_write(base + a, int.from_bytes(buf[done:done + n], "little"), n)
            done += n
        return bytes(out) if buf is None else done


class VfioDeviceFile:
    """struct vfio_device_file: one open of the cdev."""

    def __init__(self, core: VfioPciCore) -> None:
        self.core = core
        self.access_granted = False
        self.devid: int | None = None
        self.iommufd: File | None = None

    def _grant_access(self) -> None:
        """What a successful VFIO_DEVICE_BIND_IOMMUFD does last: the first open of
        the device enables it (vfio_pci_core_enable: a reset), and the device
        ioctls work from now on (df->access_granted)."""
        if not any(f.access_granted for f in self.core.files):
            self.core.enable()
        self.access_granted = True


def _arg(arg: object, cls: type[_S]) -> _S:
    if not isinstance(arg, cls):
        raise fail(_errno.EFAULT, f"argument is not a {cls.__name__}")
    return arg


def _iommufd(k: Kernel) -> Iommufd:
    """``k.iommufd``: VFIO's cdev binds only where the iommufd module is loaded."""
    return cast("Iommufd", k.iommufd)


def bind_iommufd(k: Kernel, df: VfioDeviceFile, ictx_file: File) -> int:
    """The one call into iommufd a bind makes: the device's id in that iommufd."""
    devid: int = _iommufd(k).bind_device(ictx_file, df.core.pdev)
    return devid


def unbind_iommufd(k: Kernel, df: VfioDeviceFile) -> None:
    """vfio_df_iommufd_unbind() -> vfio_iommufd_physical_unbind(): the device object
    goes (detached, DMA ownership given back); the file keeps its iommufd reference
    until it is released."""
    if df.devid is None or df.iommufd is None:
        return
    unbind = getattr(k.iommufd, "unbind_device", None)
    devid, df.devid = df.devid, None
    if unbind is not None:
        unbind(df.iommufd, devid)


class VfioDeviceFops(FileOperations):
    """vfio_device_fops for the cdev."""

    def open(self, file: File) -> None:
        core: VfioPciCore = cast("CharDev", file.cdev).data     # opened through the cdev
        if core.removed:
            raise fail(ENODEV, "device removed")
        df = VfioDeviceFile(core)
        core.files.append(df)
        file.private_data = df

    def release(self, file: File) -> None:
        df: VfioDeviceFile = file.private_data
        core = df.core
        if df in core.files:
            core.files.remove(df)
        if df.access_granted and not any(f.access_granted for f in core.files) \
                and not core.removed:
            core.teardown()
        unbind_iommufd(file.kernel, df)         # vfio_df_device_last_close: after close_device
        if df.iommufd is not None:
            df.iommufd.put()
            df.iommufd = None

    def _region_file(self, file: File) -> VfioPciCore:
        df: VfioDeviceFile = file.private_data
        if df.core.removed:
            raise fail(ENODEV, "device removed")
        if not df.access_granted:
            raise fail(EINVAL, "device file not bound to an iommufd")
        return df.core

    def pread(self, file: File, offset: int, count: int) -> bytes:
        """read(2) at ``offset`` of a region (vfio_pci_core_read)."""
        return self._region_file(file).region_rw(offset, None, count)

    def pwrite(self, file: File, offset: int, data: bytes) -> int:
        """write(2) at ``offset`` of a region (vfio_pci_core_write)."""
        return self._region_file(file).region_rw(offset, data, len(data))

    def unlocked_ioctl(self, file: File, cmd: int, arg: IoctlArg) -> IoctlResult:
        df: VfioDeviceFile = file.private_data
        core = df.core
        if core.removed:
            raise fail(ENODEV, "device removed")
        if cmd == V.VFIO_DEVICE_BIND_IOMMUFD:
            return self._bind(file, df, _arg(arg, V.VfioDeviceBindIommufd))
        if not df.access_granted:
            raise fail(EINVAL, "device file not bound to an iommufd")
        if cmd == V.VFIO_DEVICE_ATTACH_IOMMUFD_PT:
            return self._attach_pt(file, df, _arg(arg, V.VfioDeviceAttachIommufdPt))
        if cmd == V.VFIO_DEVICE_DETACH_IOMMUFD_PT:
            return self._detach_pt(file, df, _arg(arg, V.VfioDeviceDetachIommufdPt))
        handlers: dict[int, Callable[[VfioPciCore, IoctlArg], IoctlResult]] = {
            V.VFIO_DEVICE_GET_INFO: self._get_info,
            V.VFIO_DEVICE_GET_REGION_INFO: self._get_region_info,
            V.VFIO_DEVICE_GET_IRQ_INFO: self._get_irq_info,
            V.VFIO_DEVICE_SET_IRQS: self._set_irqs,
            V.VFIO_DEVICE_RESET: self._reset,
            V.VFIO_DEVICE_MSI_IOVA: self._msi_iova,
        }
        h = handlers.get(cmd)
        if h is None:
            raise fail(ENOTTY, f"unknown vfio-pci ioctl {cmd:#x}")
        return h(core, arg)

    # -- bind -----------------------------------------------------------------------

    def _bind(self, file: File, df: VfioDeviceFile, bind: V.VfioDeviceBindIommufd) -> int:
        k = file.kernel
        if bind.argsz < V.VfioDeviceBindIommufd.offsetofend("out_devid") or \
                bind.flags & ~V.VFIO_DEVICE_BIND_FLAG_TOKEN:
            raise fail(EINVAL, "bad vfio_device_bind_iommufd")
        if bind.iommufd < 0:
            raise fail(EINVAL, "negative iommufd")
        if bind.flags & V.VFIO_DEVICE_BIND_FLAG_TOKEN:
            try:
                k.user_read(bind.token_uuid_ptr, 16)
            except KernelError:
                raise fail(EFAULT, "token_uuid_ptr not readable") from None
        if df.access_granted:
            raise fail(EINVAL, "device file already bound")
        if any(f.access_granted for f in df.core.files):
            raise fail(EINVAL, "the device is bound through another file")   # vfio_df_open
        ictx = k.fget(bind.iommufd)                      # EBADF for a closed number
        try:
            if getattr(k, "iommufd", None) is None:
                raise fail(ENODEV, "iommufd not available in this kernel model")
            if bind.flags & V.VFIO_DEVICE_BIND_FLAG_TOKEN:
                # vfio_pci_core_match_token_uuid(): the model's functions are plain PFs
                # (no SR-IOV, so no VF token): a token is EINVAL.
                raise fail(EINVAL, f"{df.core.pdev}: VF token given, not a PF or VF")
            devid = bind_iommufd(k, df, ictx)
        except BaseException:
            ictx.put()
            raise
        df.iommufd, df.devid = ictx, devid
        bind.out_devid = devid
        df._grant_access()
        return 0

    # -- attach / detach (vfio_df_ioctl_attach_pt / _detach_pt) ----------------------
    # The model's vfio-pci has no pasid_attach_ioas / pasid_detach_ioas: a PASID
    # flag is EOPNOTSUPP, as for a driver without them.

    def _attach_pt(self, file: File, df: VfioDeviceFile,
                   attach: V.VfioDeviceAttachIommufdPt) -> int:
        """vfio_iommufd_physical_attach_ioas(): attach, or replace when attached;
        ``pt_id`` returns the HWPT used (the automatic one for an IOAS)."""
        if attach.argsz < V.VfioDeviceAttachIommufdPt.offsetofend("pt_id") or \
                attach.flags & ~V.VFIO_DEVICE_ATTACH_PASID:
            raise fail(EINVAL, "bad vfio_device_attach_iommufd_pt")
        if attach.flags & V.VFIO_DEVICE_ATTACH_PASID:
            raise fail(_errno.EOPNOTSUPP, "PASID attach not supported")
        if df.devid is None or df.iommufd is None:
            raise fail(EINVAL, "device not bound to an iommufd")
        k = file.kernel
        ctx = _iommufd(k).ctx_from_file(df.iommufd)
        attach.pt_id = ctx.device_attach(ctx.device(df.devid), attach.pt_id)
        return 0

    def _detach_pt(self, file: File, df: VfioDeviceFile,
                   detach: V.VfioDeviceDetachIommufdPt) -> int:
        """vfio_iommufd_physical_detach_ioas(): back to blocked DMA (nothing to do
        when not attached)."""
        if detach.argsz < V.VfioDeviceDetachIommufdPt.offsetofend("flags") or \
                detach.flags & ~V.VFIO_DEVICE_DETACH_PASID:
            raise fail(EINVAL, "bad vfio_device_detach_iommufd_pt")
        if detach.flags & V.VFIO_DEVICE_DETACH_PASID:
            raise fail(_errno.EOPNOTSUPP, "PASID detach not supported")
        if df.devid is None or df.iommufd is None:
            return 0
        k = file.kernel
        ctx = _iommufd(k).ctx_from_file(df.iommufd)
        ctx.device_detach(ctx.device(df.devid))
        return 0

    # -- info ioctls ----------------------------------------------------------------

    def _get_info(self, core: VfioPciCore, arg: IoctlArg) -> int:
        info = _arg(arg, V.VfioDeviceInfo)
        if info.argsz < V.VfioDeviceInfo.offsetofend("num_irqs"):
            raise fail(EINVAL, "vfio_device_info too small")
        info.flags = V.VFIO_DEVICE_FLAGS_PCI | (V.VFIO_DEVICE_FLAGS_RESET
                                                 if core.reset_works else 0)
        info.num_regions = V.VFIO_PCI_NUM_REGIONS
        info.num_irqs = V.VFIO_PCI_NUM_IRQS
        return 0

    def _get_region_info(self, core: VfioPciCore, arg: IoctlArg) -> bytes:
        info = _arg(arg, V.VfioRegionInfo)
        if info.argsz < V.VfioRegionInfo.offsetofend("offset"):
            raise fail(EINVAL, "vfio_region_info too small")
        index = info.index
        caps = b""
        if index == V.VFIO_PCI_CONFIG_REGION_INDEX:
            flags = V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
            size = 0x1000 if core.is_pcie() else 0x100
        elif index <= V.VFIO_PCI_BAR5_REGION_INDEX:
            size = core.bar_size(index)
            flags = 0
            if size:
                flags = (V.VFIO_REGION_INFO_FLAG_READ | V.VFIO_REGION_INFO_FLAG_WRITE
                         | (V.VFIO_REGION_INFO_FLAG_MMAP if size % 0x1000 == 0 else 0))
                if index == core.msix_bar():
                    caps = V.VfioInfoCapHeader(id=V.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
                                               version=1, next=0).pack()
        elif index == V.VFIO_PCI_ROM_REGION_INDEX:
            size, flags = 0, 0                         # the functions have no ROM
        else:
            raise fail(EINVAL, f"bad region index {index}")   # VGA: not a VGA device
        out = b""
        if caps:
            flags |= V.VFIO_REGION_INFO_FLAG_CAPS
            need = V.VfioRegionInfo.sizeof + len(caps)
            if info.argsz < need:
                info.argsz = need
                info.cap_offset = 0
            else:
                info.cap_offset = V.VfioRegionInfo.sizeof
                out = caps
        info.flags, info.size, info.offset = flags, size, _region_offset(index)
        return out

    def _get_irq_info(self, core: VfioPciCore, arg: IoctlArg) -> int:
        info = _arg(arg, V.VfioIrqInfo)
        if info.argsz < V.VfioIrqInfo.offsetofend("count") or \
                info.index >= V.VFIO_PCI_NUM_IRQS:
            raise fail(EINVAL, "bad vfio_irq_info")
        if info.index == V.VFIO_PCI_ERR_IRQ_INDEX and not core.is_pcie():
            raise fail(EINVAL, "no error interrupt on conventional PCI")
        flags = V.VFIO_IRQ_INFO_EVENTFD
        if info.index == V.VFIO_PCI_INTX_IRQ_INDEX:
            flags |= V.VFIO_IRQ_INFO_MASKABLE | V.VFIO_IRQ_INFO_AUTOMASKED
        elif info.index != V.VFIO_PCI_MSIX_IRQ_INDEX or not core.has_dyn_msix:
            flags |= V.VFIO_IRQ_INFO_NORESIZE
        info.flags, info.count = flags, core.irq_count(info.index)
        return 0

    # -- SET_IRQS -------------------------------------------------------------------

    def _set_irqs(self, core: VfioPciCore, arg: IoctlArg) -> int:
        hdr = _arg(arg, V.VfioIrqSet)
        minsz = V.VfioIrqSet.offsetofend("count")
        prepare = bool(hdr.flags & V.VFIO_IRQ_SET_ACTION_PREPARE)
        if hdr.argsz < minsz or hdr.index >= V.VFIO_PCI_NUM_IRQS or \
                hdr.count >= U32_MAX - hdr.start or \
                hdr.flags & ~(V.VFIO_IRQ_SET_DATA_TYPE_MASK_RFCV2 if prepare else
                              V.VFIO_IRQ_SET_DATA_TYPE_MASK) \
                & ~(V.VFIO_IRQ_SET_ACTION_TYPE_MASK_RFCV2 if prepare else
                    V.VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise fail(EINVAL, "bad vfio_irq_set header")
        num = core.irq_count(hdr.index)
        if hdr.start >= num or hdr.start + hdr.count > num:
            raise fail(EINVAL, "vectors beyond the index's count")
        if prepare:
            return core.prepare_msi_iovas(hdr)
        kind = hdr.flags & V.VFIO_IRQ_SET_DATA_TYPE_MASK
        size = {V.VFIO_IRQ_SET_DATA_NONE: 0, V.VFIO_IRQ_SET_DATA_BOOL: 1,
                V.VFIO_IRQ_SET_DATA_EVENTFD: 4}.get(kind)
        if size is None:
            raise fail(EINVAL, "not exactly one data type")
        data: list[int] = []
        if size:
            if hdr.argsz - minsz < hdr.count * size or len(hdr.data) < hdr.count:
                raise fail(EINVAL, "data shorter than count")
            data = list(hdr.data)[:hdr.count]
        action = hdr.flags & V.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if hdr.index in (V.VFIO_PCI_MSI_IRQ_INDEX, V.VFIO_PCI_MSIX_IRQ_INDEX) and \
                action == V.VFIO_IRQ_SET_ACTION_TRIGGER:
            cmd = core.memory_lock_and_enable()
            try:
                return core.set_msi_trigger(hdr.index, hdr.start, hdr.count, hdr.flags, data)
            finally:
                core.memory_unlock_and_restore(cmd)
        # MSI/MSI-X MASK/UNMASK ("Need masking support exported"), INTx/ERR/REQ and
        # mixed actions: no handler in this model, as vfio_pci_set_irqs_ioctl's NULL func.
        raise fail(ENOTTY, "no handler for this index/action")

    def _msi_iova(self, core: VfioPciCore, arg: IoctlArg) -> int:
        return core.msi_iova(_arg(arg, V.VfioDeviceMsiIova))

    def _reset(self, core: VfioPciCore, arg: IoctlArg) -> int:
        """VFIO_DEVICE_RESET -> pci_try_reset_function(): the function's state is
        saved and restored around a Function Level Reset, so its interrupt setup
        (MSI / MSI-X from the descriptors) stays; what the function held and the
        kernel does not (pending bits, device-internal state) is gone.  EINVAL
        when the function cannot be reset."""
        if not core.reset_works:
            raise fail(EINVAL, "reset not supported")
        core.reset()
        return 0


class VfioPciDriver:
    """The vfio-pci driver: probe/remove and the minors in use."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.fops = VfioDeviceFops()
        self.cores: dict[PciDev, VfioPciCore] = {}

    def probe(self, pdev: PciDev) -> VfioPciCore:
        used = {c.minor for c in self.cores.values()}
        minor = next(n for n in range(len(used) + 1) if n not in used)
        core = VfioPciCore(self.kernel, pdev, minor)
        self.kernel.register_chrdev(core.path, self.fops, core)
        self.cores[pdev] = core
        return core

    def remove(self, pdev: PciDev) -> None:
        core = self.cores.pop(pdev)
        core.teardown()
        for df in core.files:           # Linux waits for the files to close; the model
            unbind_iommufd(self.kernel, df)   # gives the device's DMA back at once
        core.removed = True
        self.kernel.unregister_chrdev(core.path)


def vfio_pci_init(k: Kernel) -> VfioPciDriver:
    """module_init(vfio_pci_init): register "vfio-pci" with no ids."""
    drv = VfioPciDriver(k)
    k.vfio_pci = drv
    pdrv = PciDriver(DRIVER_NAME, drv.probe, drv.remove)
    pdrv.driver_managed_dma = True      # vfio-pci: DMA ownership goes to its user
    k.pci_driver_core.register(pdrv)
    return drv


__all__ = ["VfioPciDriver", "VfioPciCore", "VfioDeviceFile", "VfioDeviceFops",
           "vfio_pci_init", "bind_iommufd", "unbind_iommufd", "EBADF"]
