"""Device models in the style of QEMU's qdev / PCIDevice: a PCI function in one small class.

A model subclasses :class:`PciDeviceModel` and declares what QEMU's ``class_init`` and
``realize`` would set up — identity, memory BARs with their ``read(offset, size)`` /
``write(offset, value, size)`` callbacks (QEMU's ``MemoryRegionOps``), an MSI-X capability
with a vector count (its table and PBA in a BAR of their own, as QEMU's
``msix_init_exclusive_bar``), optionally MSI, and properties (QEMU's ``DEFINE_PROP``s,
become attributes).  At run time it uses the function's side of the bus only:

* :meth:`PciDeviceModel.dma_read` / :meth:`~PciDeviceModel.dma_write` (and the ``_bytes``
  forms) — DMA with the function's requester ID, through the IOMMU the bus routes it to
  (``pci_dma_read`` / ``pci_dma_write``); a fault comes back as a failed
  :class:`~pymsi.hw.bus.DmaResult`, never an exception;
* :meth:`~PciDeviceModel.msix_notify` / :meth:`~PciDeviceModel.msi_notify` — raise a vector
  (masked: pending bit; disabled: nothing);
* :meth:`~PciDeviceModel.config_read` / :meth:`~PciDeviceModel.config_write` — hooks on
  configuration accesses (the defaults are the standard behaviour, as
  ``pci_default_read_config`` / ``pci_default_write_config``);
* :meth:`~PciDeviceModel.schedule` — run something later on the machine's
  :class:`pymsi.sched.Scheduler` (at once when the function has none).

A Function Level Reset returns the configuration space to its reset values (identity and
registers given with :meth:`~PciDeviceModel.config_init` keep theirs), cancels what the
model scheduled and calls :meth:`~PciDeviceModel.reset` (QEMU's ``DeviceClass.reset``),
where the model puts its own registers and state back to power-on values.

``realize()`` runs when the model is plugged into a :class:`~pymsi.hw.pci.PciHost`
(:meth:`PciDeviceModel.plug`), ``unrealize()`` when it is unplugged.  The same model serves
as a host's physical function (assigned to a VM through VFIO) and as a VMM-emulated function
on a guest's bus: it sees only its bus.

A whole device::

    from pymsi.hw.qdev import MmioBar, PciDeviceModel

    class Counter(PciDeviceModel):
        \"\"\"Counts writes to BAR 0; raises MSI-X vector 0 on every 4th.\"\"\"

        VENDOR_ID, DEVICE_ID = 0x1234, 0xC0DE
        BARS = (MmioBar(0x1000),)              # callbacks: self.read / self.write
        MSIX_VECTORS = 1
        PROPERTIES = {"every": 4}

        def realize(self) -> None:
            self.count = 0

        def read(self, offset: int, size: int) -> int:
            return self.count if offset == 0 else 0

        def write(self, offset: int, value: int, size: int) -> None:
            self.count += 1
            if self.count % self.every == 0:
                self.msix_notify(0)

Models are found by name from the ``pymsi.devices`` entry point group (a package declares
``[project.entry-points."pymsi.devices"] counter = "mypkg.counter:Counter"``) or by import
path ``"mypkg.counter:Counter"``: :func:`find_device_model`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..errors import DeviceModelError, InvalidArgument
from . import pci as P
from .bus import DmaResult
from .pci import Bar, Delivery, MsiConfig, MsixConfig, PciFunction, PciHost

if TYPE_CHECKING:
    from typing_extensions import TypeVarTuple, Unpack

    from ..sched import Event, Scheduler

    _Ts = TypeVarTuple("_Ts")

__all__ = [
    "ENTRY_POINT_GROUP",
    "DeviceModelError",
    "MmioBar",
    "PciDeviceModel",
    "available_device_models",
    "find_device_model",
]

ENTRY_POINT_GROUP = "pymsi.devices"

#: The models shipped with pymsi, found even when the package metadata (its entry points)
#: is not installed, e.g. running from a source tree.
_BUILTIN = {"edu": "pymsi.devices.edu:EduDevice", "nic": "pymsi.devices.nic:MultiQueueNic"}


@dataclass(frozen=True)
class MmioBar:
    """A memory BAR of ``size`` bytes (a power of two >= 16) whose accesses call the
    model's methods named ``read`` / ``write`` (or the callables given, called with the
    model first).  A BAR with no ``read`` reads 0; with no ``write`` ignores writes.
    ``reg``: the BAR register number (QEMU's ``pci_register_bar`` region number); by
    default the next free one."""

    size: int
    read: str | Callable[..., int] | None = "read"
    write: str | Callable[..., None] | None = "write"
    is64: bool = False
    prefetchable: bool = False
    reg: int | None = None


def _msix_layout(nvec: int) -> tuple[int, int, int]:
    """(BAR size, table offset, PBA offset) of an exclusive MSI-X BAR for ``nvec``."""
    table = nvec * 16
    pba_off = max(0x800, (table + 0x7FF) & ~0x7FF)
    end = pba_off + (nvec + 63) // 64 * 8
    size = 0x1000
    while size < end:
        size <<= 1
    return size, 0, pba_off


class PciDeviceModel(PciFunction):
    """A PCI device model (QEMU's ``PCIDevice`` subclass with its ``realize``).

    Class attributes declare the device; a subclass may compute them per instance by
    overriding :meth:`bar_declarations` / :meth:`msix_vector_count` (from its properties).
    Construct it at an address (``bus, device, function``) with property values as keyword
    arguments; an unknown property is :class:`~pymsi.errors.InvalidArgument` naming it.
    """

    #: the name a machine description uses ({"model": NAME}); informational
    NAME: ClassVar[str] = ""
    VENDOR_ID: ClassVar[int] = 0x1234
    DEVICE_ID: ClassVar[int] = 0x0000
    CLASS_CODE: ClassVar[int] = 0xFF0000          # unclassified device
    REVISION: ClassVar[int] = 0
    SUBSYSTEM_VENDOR_ID: ClassVar[int] = 0
    SUBSYSTEM_ID: ClassVar[int] = 0
    BARS: ClassVar[tuple[MmioBar, ...]] = ()
    #: MSI-X vectors (0: no MSI-X); the table and PBA get the BAR after the declared ones
    MSIX_VECTORS: ClassVar[int] = 0
    #: MSI vectors (0: no MSI capability; else 1..32, a power of two, 64-bit, no masking)
    MSI_VECTORS: ClassVar[int] = 0
    #: property name -> default; values become attributes of the instance
    PROPERTIES: ClassVar[dict[str, object]] = {}

    def __init__(self, bus: int = 0, device: int = 0, function: int = 0,
                 **props: object) -> None:
        for name in props:
            if name not in self.PROPERTIES:
                known = ", ".join(sorted(self.PROPERTIES)) or "none"
                raise InvalidArgument(f"{type(self).__name__} has no property {name!r} "
                                      f"(properties: {known})")
        for name, default in self.PROPERTIES.items():
            setattr(self, name, props.get(name, default))
        self.check_properties()
        decls = tuple(self.bar_declarations())
        nvec = self.msix_vector_count()
        if not isinstance(nvec, int) or not 0 <= nvec <= 2048:
            raise InvalidArgument(f"{type(self).__name__}: MSI-X vectors {nvec!r} (0..2048)")
        bars = [Bar(d.size, d.is64, d.prefetchable, d.reg) for d in decls]
        msix = None
        self.msix_bar_index: int | None = None
        if nvec:
            size, table, pba = _msix_layout(nvec)
            self.msix_bar_index = len(bars)
            bars.append(Bar(size, is64=False))
            msix = MsixConfig(nvec, bar=self.msix_bar_index, table_offset=table,
                              pba_offset=pba)
        msi = MsiConfig(self.MSI_VECTORS, is64=True, per_vector_mask=False) \
            if self.MSI_VECTORS else None
        super().__init__(bus, device, function, vendor_id=self.VENDOR_ID,
                         device_id=self.DEVICE_ID, class_code=self.CLASS_CODE, bars=bars,
                         msi=msi, msix=msix, revision=self.REVISION,
                         subsystem_vendor_id=self.SUBSYSTEM_VENDOR_ID,
                         subsystem_id=self.SUBSYSTEM_ID)
        self._decls = decls
        self._handlers = [(self._bind(d.read), self._bind(d.write)) for d in decls]
        self.realized = False
        #: the machine's event loop (pymsi.sched.Scheduler), if it has one
        self.scheduler: Scheduler | None = None
        self._timers: set[Event] = set()        # events scheduled and not run (cancelled at reset)
        self.dma_stats = {"reads": 0, "writes": 0, "faults": 0, "blocked": 0}

    def _bind(self, cb: Any) -> Callable[..., Any] | None:
        if cb is None:
            return None
        if isinstance(cb, str):
            fn: Callable[..., Any] | None = getattr(self, cb, None)
            if not callable(fn):
                raise InvalidArgument(f"{type(self).__name__} has no method {cb!r} for a BAR")
            return fn
        bound: Callable[..., Any] = cb.__get__(self, type(self)) if hasattr(cb, "__get__") else cb
        return bound

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.bdf})"

    # -- what a model declares or overrides ---------------------------------------------------

    def check_properties(self) -> None:
        """Check the property values before anything is built; raise
        :class:`~pymsi.errors.InvalidArgument` naming a bad one."""

    def bar_declarations(self) -> tuple[MmioBar, ...]:
        """The memory BARs, in order (default: :attr:`BARS`)."""
        return self.BARS

    def msix_vector_count(self) -> int:
        """How many MSI-X vectors (default: :attr:`MSIX_VECTORS`)."""
        return self.MSIX_VECTORS

    def realize(self) -> None:
        """Set the device up when it is plugged in (QEMU's ``realize``); may raise to
        refuse (the plug is then undone)."""

    def unrealize(self) -> None:
        """Tear the device down when it is unplugged."""

    def reset(self) -> None:
        """Return the device's own state to its power-on values (QEMU's
        ``DeviceClass.reset``): called on a Function Level Reset of a realized device,
        after its configuration space, MSI-X table and PBA are reset and the work it
        scheduled is cancelled (PCIe: an FLR leaves no request the function queued)."""

    def device_reset(self) -> None:
        """The FLR hook of :class:`~pymsi.hw.pci.PciFunction`: the model's scheduled
        work cancelled, then :meth:`reset`."""
        for ev in self._timers:
            ev.cancel()
        self._timers.clear()
        if self.realized:
            self.reset()

    def read(self, offset: int, size: int) -> int:
        """Default BAR read callback: 0."""
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        """Default BAR write callback: ignored."""

    def config_read(self, offset: int, size: int) -> int:
        """A configuration read (default: the standard registers)."""
        return PciFunction.cfg_read(self, offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        """A configuration write (default: the standard registers and their effects)."""
        PciFunction.cfg_write(self, offset, value, size)

    def config_init(self, offset: int, value: int, size: int, wmask: int = 0) -> None:
        """Give a configuration register its reset value and which bits software may
        write (for vendor-specific registers a model adds in ``realize``)."""
        if size not in (1, 2, 4) or offset % size or not 0x40 <= offset <= P.CONFIG_SIZE - size:
            raise InvalidArgument(f"config register {offset:#x}/{size}")
        self._put(offset, value, size, wmask)

    # -- plugging ------------------------------------------------------------------------------

    def plug(self, host: PciHost) -> PciDeviceModel:
        """Put the function on ``host`` and realize it (undone if realize raises)."""
        host.add(self)
        try:
            self.realize()
        except BaseException:
            host.remove(self)
            raise
        self.realized = True
        return self

    def unplug(self) -> None:
        """Unrealize the function and take it off its host."""
        if self.realized:
            self.realized = False
            self.unrealize()
        if self.host is not None:
            self.host.remove(self)

    # -- the bus's entry points ---------------------------------------------------------------

    def cfg_read(self, offset: int, size: int = 4) -> int:
        return self.config_read(offset, size)

    def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        self.config_write(offset, value, size)

    def bar_read(self, index: int, offset: int, size: int) -> int:
        if index == self.msix_bar_index or not 0 <= index < len(self._handlers):
            return super().bar_read(index, offset, size)
        fn = self._handlers[index][0]
        if fn is None:
            return 0
        value = fn(offset, size)
        return (value or 0) & ((1 << 8 * size) - 1)

    def bar_write(self, index: int, offset: int, value: int, size: int) -> None:
        if index == self.msix_bar_index or not 0 <= index < len(self._handlers):
            super().bar_write(index, offset, value, size)
            return
        fn = self._handlers[index][1]
        if fn is not None:
            fn(offset, value & ((1 << 8 * size) - 1), size)

    # -- what a model does ----------------------------------------------------------------------

    @property
    def bus_master(self) -> bool:
        """Whether Bus Master Enable is set (without it the function issues no DMA)."""
        return bool(PciFunction.cfg_read(self, P.COMMAND, 2) & P.CMD_MASTER)

    def _dma_ok(self) -> bool:
        if self.host is None or not self.bus_master:
            self.dma_stats["blocked"] += 1
            return False
        return True

    def dma_read(self, addr: int, size: int = 4) -> DmaResult:
        """Read ``size`` (1, 2, 4, 8) bytes at bus address ``addr`` (an IOVA when an IOMMU
        translates this function's requests): ``.ok`` and ``.value``."""
        if not self._dma_ok():
            return DmaResult(False, None)
        self.dma_stats["reads"] += 1
        # _dma_ok() saw the host (no cast() call on the DMA path)
        r: DmaResult = self.host.bus.dma_read(  # type: ignore[union-attr]
            self.rid, addr & ((1 << 64) - 1), size)
        if not r.ok:
            self.dma_stats["faults"] += 1
        return r

    def dma_write(self, addr: int, value: int, size: int = 4) -> DmaResult:
        """Write ``size`` (1, 2, 4, 8) bytes at bus address ``addr``.  Posted: issued from a
        BAR callback (the bus busy) it is performed after that access, in order, and the
        result says ``posted``."""
        if not self._dma_ok():
            return DmaResult(False, None)
        self.dma_stats["writes"] += 1
        # _dma_ok() saw the host (no cast() call on the DMA path)
        r: DmaResult = self.host.bus.dma_write(  # type: ignore[union-attr]
            self.rid, addr & ((1 << 64) - 1), value, size, on_done=self._dma_done)
        return r

    def _dma_done(self, r: DmaResult) -> None:
        if not r.ok:
            self.dma_stats["faults"] += 1

    @staticmethod
    def _chunks(addr: int, n: int) -> Iterator[tuple[int, int]]:
        off = 0
        while off < n:
            a = addr + off
            size = next(s for s in (8, 4, 2, 1) if a % s == 0 and off + s <= n)
            yield off, size
            off += size

    def dma_read_bytes(self, addr: int, n: int) -> bytes | None:
        """Read ``n`` bytes from ``addr`` in naturally aligned accesses; None if any of
        them faulted (pci_dma_read's MEMTX error)."""
        out = bytearray(n)
        for off, size in self._chunks(addr, n):
            r = self.dma_read(addr + off, size)
            if not r.ok:
                return None
            out[off:off + size] = cast(int, r.value).to_bytes(size, "little")   # r.ok
        return bytes(out)

    def dma_write_bytes(self, addr: int, data: bytes) -> bool:
        """Write ``data`` at ``addr`` in naturally aligned accesses; False if one failed at
        once (writes posted behind a bus access report their faults in ``dma_stats``)."""
        ok = True
        for off, size in self._chunks(addr, len(data)):
            value = int.from_bytes(data[off:off + size], "little")
            r = self.dma_write(addr + off, value, size)
            ok = ok and r.ok
        return ok

    def msix_notify(self, vector: int) -> Delivery:
        """Raise MSI-X ``vector`` (QEMU's ``msix_notify``): nothing while MSI-X is off."""
        if not self.msix_enabled:
            self.stats.disabled += 1
            return Delivery.DISABLED
        return self.notify(vector)

    def msi_notify(self, vector: int) -> Delivery:
        """Raise MSI ``vector`` (QEMU's ``msi_notify``): nothing while MSI is off."""
        if self.msi_cap is None or self.msix_enabled or self.msi_message(vector) is None:
            self.stats.disabled += 1
            return Delivery.DISABLED
        return self.notify(vector)

    def schedule(self, delay_ns: int, callback: Callable[[Unpack[_Ts]], object],
                 *args: Unpack[_Ts]) -> None:
        """Run ``callback(*args)`` ``delay_ns`` from now on the machine's scheduler; with
        none, at once.  A reset of the function cancels it (QEMU's ``timer_del`` in a
        reset handler)."""
        if self.scheduler is None:
            callback(*args)
            return
        box: list[Event] = []

        def fire() -> None:
            self._timers.discard(box[0])
            callback(*args)

        box.append(self.scheduler.schedule(delay_ns, fire, name=f"{self!r}"))
        self._timers.add(box[0])


# -- finding models ------------------------------------------------------------------------------


def _entry_points() -> dict[str, metadata.EntryPoint]:
    eps = metadata.entry_points()
    group = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, "select") \
        else eps.get(ENTRY_POINT_GROUP, [])  # type: ignore[arg-type]  # (before 3.10's select)
    found: dict[str, metadata.EntryPoint] = {}
    for ep in sorted(group, key=lambda e: (e.name, e.value)):
        found.setdefault(ep.name, ep)
    return found


def available_device_models() -> dict[str, str]:
    """Model name -> "module:Class" for every model found by name."""
    out = dict(_BUILTIN)
    out.update({name: ep.value for name, ep in _entry_points().items()})
    return dict(sorted(out.items()))


def _import_path(path: str) -> Any:
    module, _, qual = path.partition(":")
    if not module or not qual:
        raise DeviceModelError(f"device model {path!r}: an import path is 'module:Class'")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise DeviceModelError(f"device model {path!r}: cannot import {module!r} ({e})") \
            from None
    for part in qual.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DeviceModelError(f"device model {path!r}: {module!r} has no {qual!r}") \
                from None
    return obj


def find_device_model(name: str | type) -> type[PciDeviceModel]:
    """The model class called ``name``: an entry point of the ``pymsi.devices`` group, a
    model shipped with pymsi, or an import path "module:Class" (a class is returned as it
    is).  Anything else is :class:`DeviceModelError` naming it."""
    if isinstance(name, type):
        cls: Any = name
    elif not isinstance(name, str) or not name:
        raise DeviceModelError(f"no device model {name!r}")
    elif ":" in name:
        cls = _import_path(name)
    else:
        ep = _entry_points().get(name)
        if ep is not None:
            try:
                cls = ep.load()
            except Exception as e:                        # noqa: BLE001 - a broken plugin
                raise DeviceModelError(f"device model {name!r} ({ep.value}) does not load: "
                                       f"{e}") from None
        elif name in _BUILTIN:
            cls = _import_path(_BUILTIN[name])
        else:
            known = ", ".join(available_device_models())
            raise DeviceModelError(f"no device model {name!r} (known: {known}; or give "
                                   f"'module:Class')")
    if not (isinstance(cls, type) and issubclass(cls, PciDeviceModel)):
        raise DeviceModelError(f"device model {name!r} is {cls!r}, not a PciDeviceModel")
    return cls
