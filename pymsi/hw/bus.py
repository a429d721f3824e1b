"""The system bus: one host-physical address space of RAM and MMIO windows.

RAM is a :class:`pymsi.core.Memory`; a model is mapped at a base address and
sees ``mmio_read(offset, size)`` / ``mmio_write(offset, value, size)`` relative
to it.  A model that needs transaction attributes (the ITS needs the requester
ID of an MSI write: it is the DeviceID) is mapped with ``attrs=True`` and also
receives ``requester_id=``.  An access to nothing is a
:class:`~pymsi.errors.BusError` for the caller, as a bus error would be.

Device DMA goes through the IOMMU attached to the device's requester-ID range
(:meth:`Bus.attach_iommu`), then the bus; an IOMMU abort is reported to the
device as a failed transaction (:class:`DmaResult`), never as an exception.

Writes that models issue are posted, as on a real interconnect: a device's DMA
write (its MSIs included) or a model's own write (:meth:`Bus.post_write`, what
the SMMU's MSIs use) issued while the bus is in the middle of another access is
queued and performed, in issue order, after the outermost access returns.  So a
device that writes its own or the IOMMU's registers never re-enters the model
that is still handling the current access, and nothing recurses.  One outermost
access performs at most :data:`POSTED_BUDGET` queued writes; the rest stay queued
for the next access or :meth:`Bus.drain` (a guest that makes devices ping-pong
writes forever would livelock real hardware; the model still returns).  CPU
accesses (:meth:`Bus.read`, :meth:`Bus.write`) are never queued: they are done
when they return.
"""

from __future__ import annotations

import array
import bisect
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from .._repr import bounded
from ..core.common import STATUS_BYPASS, PhysMemory
from ..errors import AlreadyExists, BusError, InvalidArgument

if TYPE_CHECKING:
    from ..core.common import WalkResult
    from .smmuv3 import SmmuResult

_SIZES = (1, 2, 4, 8)
_U64_END = 1 << 64
def _same_id(rid: int) -> int:
    """The default StreamID of a requester ID: itself."""
    return rid


_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}
#: SMMUv3, its TRANSLATED outcome and its translate-success tracepoint, once one is attached
_SMMU_CLS: Any = None
_SMMU_OK_OUTCOME: Any = None
_SMMU_OK: Any = None
_new = tuple.__new__                    # a NamedTuple from a full tuple, without its __new__

POSTED_BUDGET = 4096
"""At most this many posted writes are performed per outermost access (or drain)."""


class BusRam(PhysMemory, Protocol):
    """The RAM of a :class:`Bus`: physical memory that also lists its RAM regions (a
    :class:`~pymsi.core.Memory`).  A core Memory's ``ram_checker`` is used when present."""

    @property
    def regions(self) -> list[tuple[int, int]]: ...


class MmioModel(Protocol):
    """A model whose registers a :class:`Bus` maps: ``mmio_read(offset, size)`` and
    ``mmio_write(offset, value, size)``; a window mapped with ``attrs`` is also given the
    access's ``requester_id=`` keyword."""

    def mmio_read(self, offset: int, size: int, /) -> int: ...
    def mmio_write(self, offset: int, value: int, size: int, /) -> None: ...


class IommuTranslation(Protocol):
    """What an IOMMU's ``translate`` answers, as far as the bus reads it: where the
    access goes (None: aborted).  (:class:`~pymsi.hw.smmuv3.SmmuResult`.)"""

    @property
    def pa(self) -> int | None: ...


class Iommu(Protocol):
    """What a :class:`Bus` calls on an IOMMU that device DMA goes through
    (:meth:`Bus.attach_iommu`): ``translate(sid, iova, write=...)``; a
    ``translate_batch(sids, iovas, out_pa, status, write=...)`` with the core's batch
    statuses is used when the IOMMU has one (:class:`~pymsi.hw.smmuv3.SMMUv3`)."""

    def translate(self, sid: int, iova: int, write: bool = False) -> IommuTranslation: ...


class MmioWindow(NamedTuple):
    """A model mapped on the bus."""

    base: int
    size: int
    model: Any                  # an MmioModel (given requester_id= when attrs)
    name: str
    attrs: bool


#: What :attr:`Bus._last` is before any lookup found a window: a window of no address.
_NO_WINDOW = MmioWindow(0, 0, None, "", False)


class DmaResult(NamedTuple):
    """What became of a device's DMA.

    ``ok`` is False when the IOMMU aborted it (``iommu`` holds its result)
    or the translated address hit nothing (``bus_error``).  ``pa`` is where
    it went; ``value`` what a read returned.
    """

    ok: bool
    pa: int | None
    value: int | None = None
    iommu: IommuTranslation | None = None
    bus_error: bool = False
    posted: bool = False
    """Queued behind the access in progress: not performed yet (``ok`` says nothing)."""


class Bus:
    """A host-physical address space: RAM plus MMIO windows of models.

    ``posted_budget`` is how many queued posted writes one outermost access (or one
    :meth:`drain`) performs at most.
    """

    def __init__(self, ram: BusRam, posted_budget: int = POSTED_BUDGET) -> None:
        if posted_budget < 1:
            raise InvalidArgument(f"posted_budget={posted_budget}")
        self.ram = ram
        #: ``f(addr, size)`` answering ram.is_ram for exact ints without a Python frame
        #: (pymsi.core.Memory.ram_checker), or ram.is_ram itself
        self._is_ram = ram.ram_checker() if hasattr(ram, "ram_checker") else ram.is_ram
        self._ram_of = ram                      # the ram _is_ram answers for
        self.posted_budget = posted_budget
        self._windows: list[MmioWindow] = []
        self._bases: list[int] = []
        self._iommus: list[tuple[int, int, Any, Callable[[int], int]]] = []
        self.stats = {"dma": 0, "dma_aborted": 0, "dma_bus_errors": 0, "posted": 0,
                      "posted_dropped": 0, "drain_budget_exhausted": 0}
        self._depth = 0                         # accesses in progress (nesting)
        self._posted: deque[tuple[Any, ...]] = deque()    # writes waiting for the current access
        self._last = _NO_WINDOW                 # the window the last lookup found
        self._lo = self._hi = 0                 # its [base, base + size)
        #: requester ID -> its MSI route (see _msi_route), or False: none; dropped when
        #: a window or an IOMMU is added or removed
        self._routes: dict[int, tuple[Any, ...] | Literal[False]] = {}

    # -- posted writes -------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether an access is in progress (a write posted now would be queued)."""
        return self._depth > 0

    @property
    def pending_writes(self) -> int:
        """How many posted writes are queued."""
        return len(self._posted)

    def drain(self, budget: int | None = None) -> int:
        """Perform up to ``budget`` (default :attr:`posted_budget`) queued posted
        writes (and the writes they post, in order); returns how many were performed.
        Does nothing while an access is in progress: the outermost access drains when
        it returns."""
        if self._depth or not self._posted:
            return 0
        if budget is None:
            budget = self.posted_budget
        self._depth += 1
        done = 0
        try:
            while self._posted and done < budget:
                item = self._posted.popleft()
                done += 1
                self._perform(item)
        finally:
            self._depth -= 1
        if self._posted:
            self.stats["drain_budget_exhausted"] += 1
        return done

    def _perform(self, item: tuple[Any, ...]) -> None:
        if item[0] == "dma":
            _, rid, addr, value, size, on_done = item
            r = self._dma_now(rid, addr, size, value)
            if on_done is not None:
                on_done(r)
            return
        _, addr, value, size, rid = item
        try:
            self._write_now(addr, value, size, rid)
        except BusError:                        # its target went away after it was posted
            self.stats["posted_dropped"] += 1

    def _enter(self) -> None:
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1
        if not self._depth and self._posted:
            self.drain()

    def post_write(self, addr: int, value: int, size: int = 4,
                   requester_id: int | None = None) -> None:
        """A write a model issues (an SMMU's MSI): done now if the bus is idle, else
        queued behind the access in progress.  The address is decoded when the write
        is issued: a write to nothing is a :class:`~pymsi.errors.BusError` for the
        issuer at once (the interconnect's decode error); a queued write whose
        target has gone when it is performed is dropped (``stats["posted_dropped"]``).
        """
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        if not self._depth:
            self.write(addr, value, size, requester_id)
            return
        if not self._decodes(addr, size):
            raise BusError(f"write of {size} bytes at {addr:#x}: nothing there")
        self.stats["posted"] += 1
        self._posted.append(("write", addr, value & ((1 << (8 * size)) - 1), size, requester_id))

    def _decodes(self, addr: int, size: int) -> bool:
        if self.ram.is_ram(addr, size):
            return True
        w = self.window(addr)
        return w is not None and addr + size <= w.base + w.size

    # -- topology ------------------------------------------------------------

    def map(self, base: int, size: int, model: MmioModel, name: str = "",
            attrs: bool = False) -> None:
        """Put ``model``'s registers at [base, base + size)."""
        if size <= 0 or base < 0 or base + size > 1 << 64:
            raise InvalidArgument(f"MMIO window {name} [{base:#x}, +{size:#x})")
        if self.ram.is_ram(base, 1) or self.ram.is_ram(base + size - 1, 1):
            raise AlreadyExists(f"MMIO window {name} overlaps RAM")
        for w in self._windows:
            if base < w.base + w.size and w.base < base + size:
                raise AlreadyExists(f"MMIO window {name} overlaps {w.name}")
        self._routes.clear()
        i = bisect.bisect(self._bases, base)
        self._bases.insert(i, base)
        self._windows.insert(i, MmioWindow(base, size, model, name or type(model).__name__,
                                           attrs))

    def unmap(self, base: int) -> None:
        """Remove the window that starts at ``base``."""
        i = bisect.bisect_left(self._bases, base)
        if i == len(self._bases) or self._bases[i] != base:
            raise InvalidArgument(f"no MMIO window at {base:#x}")
        del self._bases[i]
        del self._windows[i]
        self._last = _NO_WINDOW
        self._lo = self._hi = 0
        self._routes.clear()

    def window(self, addr: int) -> MmioWindow | None:
        """The MMIO window containing ``addr``, if any."""
        w = self._last                  # windows never overlap: the last one found, if it fits
        if w.base <= addr < w.base + w.size:
            return w
        i = bisect.bisect(self._bases, addr) - 1
        if i >= 0:
            w = self._windows[i]
            if addr < w.base + w.size:
                self._last = w
                self._lo, self._hi = w.base, w.base + w.size
                return w
        return None

    @property
    def windows(self) -> list[MmioWindow]:
        """The MMIO windows, by address."""
        return list(self._windows)

    def attach_iommu(self, first_rid: int, last_rid: int, iommu: Iommu,
                     sid_of: Callable[[int], int] | None = None) -> None:
        """Route DMA from requester IDs [first_rid, last_rid] through ``iommu``.

        ``sid_of`` maps a requester ID to the IOMMU's StreamID (identity on
        QEMU's virt board and most ACPI IORT tables).
        """
        global _SMMU_CLS, _SMMU_OK_OUTCOME, _SMMU_OK
        if _SMMU_CLS is None:                   # dma_write inlines this one's hit path
            from .smmuv3 import _TRANSLATED, SMMUv3, trace_smmuv3_translate_success
            _SMMU_CLS, _SMMU_OK_OUTCOME, _SMMU_OK = (SMMUv3, _TRANSLATED,
                                                     trace_smmuv3_translate_success)
        self._iommus.append((first_rid, last_rid, iommu, _same_id if sid_of is None else sid_of))
        self._routes.clear()

    def _msi_route(self, rid: int) -> tuple[Any, ...] | Literal[False]:
        """The one-call route of MSIs from ``rid`` (learnt once per topology; False when
        there is none): ``(smmu, its hit path, StreamID, fire, last, doorbell, its, gic,
        tracepoints)``.

        There is one when ``rid``'s DMA goes through an :class:`~pymsi.hw.smmuv3.SMMUv3`
        (exactly that class) whose hit path is a core stream translator, and an exact
        :class:`~pymsi.hw.its.GicV3Its` with a batch cache is mapped (the first one, by
        address).  ``fire`` (:func:`pymsi.core.msi_router`) does the C parts of
        :meth:`dma_write` to that ITS's GITS_TRANSLATER in one call — the SMMU's
        translate, the RAM check, the ITS cache hit, the LPI range check and the pending
        bit — and :meth:`pymsi.hw.pci.PciFunction.notify` does the rest (the
        statistics, the redistributor's pending set), unless ``dma_write`` is replaced
        on the instance (a harness watching the device's writes) or by a subclass.
        Anything else fire meets
        (a fault, another address, an event the cache does not hold) it hands back
        after the translation, which :meth:`dma_write` continues; the caller checks
        per write that the SMMU is enabled, the bus idle and the tracepoints of the
        path off."""
        route: tuple[Any, ...] | Literal[False] = False
        for first, last, iommu, sid_of in self._iommus:
            if type(self).dma_write is not Bus.dma_write:   # a subclass's own: not here
                break
            if first <= rid <= last:
                if type(iommu) is _SMMU_CLS:
                    route = self._msi_route_via(iommu, sid_of(rid))
                break
        self._routes[rid] = route
        return route

    def _msi_route_via(self, smmu: Any, sid: int) -> tuple[Any, ...] | Literal[False]:
        from .gicv3 import trace_gicv3_redist_process_lpi
        from .its import GITS_TRANSLATER, GicV3Its, trace_gicv3_its_translation_write
        its = next((w for w in self._windows if type(w.model) is GicV3Its and w.attrs), None)
        if its is None or its.model._itc is None or not 0 <= sid <= 0xFFFF_FFFF:
            return False
        gic = its.model.gic
        try:
            fire, last = its.model._core.msi_router(
                smmu._hit, self.ram, its.model._itc, gic.memory, gic._fire_limits,
                gic._fire_tables)
        except (TypeError, AttributeError):     # memories or caches of other kinds
            return False
        return (smmu, smmu._hit, sid, fire, last, its.base + GITS_TRANSLATER, its.model, gic,
                (_SMMU_OK, trace_gicv3_its_translation_write, trace_gicv3_redist_process_lpi))

    def iommu_for(self, rid: int) -> tuple[Iommu, int] | None:
        """(iommu, StreamID) that DMA from ``rid`` goes through, if any."""
        for first, last, iommu, sid_of in self._iommus:
            if first <= rid <= last:
                return iommu, sid_of(rid)
        return None

    # -- CPU / host-physical accesses --------------------------------------

    def read(self, addr: int, size: int = 4, requester_id: int | None = None) -> int:
        """A ``size``-byte little-endian read at a physical address."""
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        ram = self.ram
        if type(addr) is int and 0 <= addr < _U64_END and ram is self._ram_of:
            here = self._is_ram(addr, size)             # frameless ram.is_ram
        else:
            here = ram.is_ram(addr, size)
        if here:
            return int.from_bytes(ram.read(addr, size), "little")
        w: MmioWindow | None
        if self._lo <= addr and addr + size <= self._hi:   # window(), its first guess inline
            w = self._last
        else:
            w = self.window(addr)
            if w is None or addr + size > w.base + w.size:
                raise BusError(f"read of {size} bytes at {addr:#x}: nothing there")
        self._depth += 1                        # _enter() / _leave(), inline
        try:
            if w.attrs:
                return w.model.mmio_read(  # type: ignore[no-any-return]  # models return int
                    addr - w.base, size, requester_id=requester_id)
            return w.model.mmio_read(addr - w.base, size)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1
            if not self._depth and self._posted:
                self.drain()

    def write(self, addr: int, value: int, size: int = 4, requester_id: int | None = None) -> None:
        """A ``size``-byte little-endian write at a physical address."""
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        self._depth += 1                        # _enter() / _leave(), inline
        try:
            value &= _MASK[size]                # _write_now(), inline
            ram = self.ram
            if type(addr) is int and 0 <= addr < _U64_END and ram is self._ram_of:
                here = self._is_ram(addr, size)             # frameless ram.is_ram
            else:
                here = ram.is_ram(addr, size)
            if here:
                ram.write(addr, value.to_bytes(size, "little"))
                return
            w: MmioWindow | None
            if self._lo <= addr and addr + size <= self._hi:   # window()'s first guess, inline
                w = self._last
            else:
                w = self.window(addr)
                if w is None or addr + size > w.base + w.size:
                    raise BusError(f"write of {size} bytes at {addr:#x}: nothing there")
            if w.attrs:
                w.model.mmio_write(addr - w.base, value, size, requester_id=requester_id)
            else:
                w.model.mmio_write(addr - w.base, value, size)
        finally:
            self._depth -= 1
            if not self._depth and self._posted:
                self.drain()

    def _write_now(self, addr: int, value: int, size: int, requester_id: int | None) -> None:
        value &= (1 << (8 * size)) - 1
        ram = self.ram
        if type(addr) is int and 0 <= addr < _U64_END and ram is self._ram_of:
            here = self._is_ram(addr, size)             # frameless ram.is_ram
        else:
            here = ram.is_ram(addr, size)
        if here:
            ram.write(addr, value.to_bytes(size, "little"))
            return
        i = bisect.bisect(self._bases, addr) - 1            # window(), inline
        w = self._windows[i] if i >= 0 else None
        if w is None or addr + size > w.base + w.size:
            raise BusError(f"write of {size} bytes at {addr:#x}: nothing there")
        if w.attrs:
            w.model.mmio_write(addr - w.base, value, size, requester_id=requester_id)
        else:
            w.model.mmio_write(addr - w.base, value, size)

    def write32(self, addr: int, value: int) -> None:
        """A model's 32-bit posted write (what MSIs and interrupt-signalling models
        use as their ``msi_write``): see :meth:`post_write`."""
        self.post_write(addr, value, 4)

    # -- device DMA -----------------------------------------------------------

    def dma_write(self, rid: int, addr: int, value: int, size: int = 4,
                  on_done: Callable[[DmaResult], None] | None = None, *,
                  _xlated: SmmuResult | WalkResult | None = None) -> DmaResult:
        """A device's memory write: through its IOMMU (if any), then the bus.

        Posted: while another access is in progress it is queued (translation
        included) and the result says ``posted``; ``on_done`` (if given) is called
        with the real result when the write is performed, now or later.
        (``_xlated``: what the SMMU's hit path already answered for this write, from an
        MSI route's fire: used instead of asking it again.)
        """
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        if self._depth:
            self.stats["posted"] += 1
            self._posted.append(("dma", rid, addr, value, size, on_done))
            return DmaResult(True, None, posted=True)
        self._depth = 1                         # _enter / _leave, inline
        try:
            stats = self.stats                  # _dma_now (a write), inline
            stats["dma"] += 1
            r: Any = None                       # the IOMMU's answer, then the DmaResult
            for first, last, iommu, sid_of in self._iommus:
                if first <= rid <= last:
                    sid = rid if sid_of is _same_id else sid_of(rid)
                    if type(iommu) is _SMMU_CLS and not _SMMU_OK.enabled:
                        # SMMUv3.translate's head, inline: its C stream translator
                        # (``_xl``) answers a cached stream's translation or fault in
                        # one call and None, without side effects, for the rest
                        if _xlated is not None:
                            r = _xlated
                        else:
                            try:
                                r = iommu._xl(sid, addr, True)
                            except (TypeError, OverflowError):      # the full path says
                                r = None
                        if r is not None and r[0] is not _SMMU_OK_OUTCOME:
                            r = iommu._fault_event(r, iommu._by_sid[sid], sid, None, addr,
                                                   True)
                    if r is None:
                        r = iommu.translate(sid, addr, write=True)
                    if r.pa is None:
                        stats["dma_aborted"] += 1
                        r = _new(DmaResult, (False, None, None, r, False, False))
                    else:
                        addr = r.pa
                    break
            if r is None or r.pa is not None:
                try:
                    # _write_now, inline (ram.is_ram through the frameless checker)
                    value &= _MASK[size]
                    ram = self.ram
                    if type(addr) is int and addr >= 0 and ram is self._ram_of:
                        try:
                            here = self._is_ram(addr, size)
                        except OverflowError:
                            here = ram.is_ram(addr, size)
                    else:
                        here = ram.is_ram(addr, size)
                    if here:
                        ram.write(addr, value.to_bytes(size, "little"))
                    else:
                        i = bisect.bisect(self._bases, addr) - 1          # window(), inline
                        w = self._windows[i] if i >= 0 else None
                        if w is None or addr + size > w.base + w.size:
                            raise BusError(f"write of {size} bytes at {addr:#x}: nothing there")
                        if w.attrs:
                            w.model.mmio_write(addr - w.base, value, size, requester_id=rid)
                        else:
                            w.model.mmio_write(addr - w.base, value, size)
                    r = _new(DmaResult, (True, addr, None, r, False, False))
                except BusError:
                    stats["dma_bus_errors"] += 1
                    r = DmaResult(False, addr, None, r, bus_error=True)
            if on_done is not None:
                on_done(r)
        finally:
            self._depth -= 1
            if not self._depth and self._posted:
                self.drain()
        return r  # type: ignore[no-any-return]  # a DmaResult by now (no cast on this path)

    def dma_write_batch(self, rid: int, addrs: Sequence[int], values: Sequence[int],
                        size: int = 4) -> list[bool]:
        """Many writes of one device, as :meth:`dma_write` of each (``addrs[k]``,
        ``values[k]``) in order would do them; returns whether each was performed (not
        aborted by the IOMMU, something there).

        The IOMMU translates all of them first, in one batch when it has
        ``translate_batch`` (its faults and events are the same, in item order); then the
        writes are performed in order, and a run of consecutive writes to the same
        address of a model that has ``mmio_write_batch`` (the ITS's GITS_TRANSLATER) is
        handed to it at once.  While another access is in progress, or when no batch
        applies, it is :meth:`dma_write` of each.  (Translating first differs from one
        at a time only if one of these writes changed the translation of a later one
        — a write into the page tables or the IOMMU's own registers — which the model
        does not look for.)
        """
        n = len(addrs)
        if len(values) != n:
            raise InvalidArgument("addrs and values differ in length")
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        route = self.iommu_for(rid)
        batch = getattr(route[0], "translate_batch", None) if route is not None else None
        if self._depth or (route is not None and batch is None) or n < 2:
            return [self.dma_write(rid, a, v, size).ok for a, v in zip(addrs, values, strict=True)]
        stats = self.stats
        self._depth = 1
        try:
            stats["dma"] += n
            pas: list[int | None] | None
            if route is None:
                pas = list(addrs)
                out = None
            else:
                out = array.array("Q", bytes(8 * n))
                status = array.array("i", bytes(4 * n))
                # not None: checked above (route is not None and batch is None -> one by one)
                batch(array.array("I", [route[1]]) * n,  # type: ignore[misc]
                      array.array("Q", addrs), out, status, write=True)
                if status.count(0) + status.count(STATUS_BYPASS) == n and \
                        out.count(out[0]) == n:
                    pas = None                          # all performed, to the same place
                else:
                    pas = [pa if 0 <= st <= STATUS_BYPASS else None
                           for pa, st in zip(out, status, strict=True)]
            if pas is None or pas.count(pas[0]) == n:   # one run: the common batch
                pa = out[0] if pas is None else pas[0]  # type: ignore[index]  # pas None: out set
                if pa is not None and not self.ram.is_ram(pa, size):
                    w = self.window(pa)
                    if w is not None and w.attrs and pa + size <= w.base + w.size and \
                            hasattr(w.model, "mmio_write_batch"):
                        if not (isinstance(values, array.array) and values.typecode in "BHI"
                                and values.itemsize <= size):     # else: to size, as one by one
                            values = [v & ((1 << (8 * size)) - 1) for v in values]
                        w.model.mmio_write_batch(pa - w.base, values, size, requester_id=rid)
                        return [True] * n
                if pas is None:
                    pas = list(out)  # type: ignore[arg-type]  # as above
            ok = [True] * n
            mask = (1 << (8 * size)) - 1
            k = 0
            while k < n:
                pa = pas[k]
                if pa is None:
                    stats["dma_aborted"] += 1
                    ok[k] = False
                    k += 1
                    continue
                end = k + 1
                while end < n and pas[end] == pa:
                    end += 1
                w = None if end == k + 1 or self.ram.is_ram(pa, size) else self.window(pa)
                if w is not None and w.attrs and pa + size <= w.base + w.size and \
                        hasattr(w.model, "mmio_write_batch"):
                    w.model.mmio_write_batch(pa - w.base, [v & mask for v in values[k:end]],
                                             size, requester_id=rid)
                    k = end
                    continue
                for j in range(k, end):
                    try:
                        self._write_now(pa, values[j], size, rid)
                    except BusError:
                        stats["dma_bus_errors"] += 1
                        ok[j] = False
                k = end
        finally:
            self._depth -= 1
            if not self._depth and self._posted:
                self.drain()
        return ok

    def dma_read(self, rid: int, addr: int, size: int = 4) -> DmaResult:
        """A device's memory read (never queued: it returns a value)."""
        if size not in _SIZES:
            raise InvalidArgument(f"access size {size}")
        self._enter()
        try:
            return self._dma_now(rid, addr, size, None)
        finally:
            self._leave()

    def _dma_now(self, rid: int, addr: int, size: int, value: int | None) -> DmaResult:
        stats = self.stats
        stats["dma"] += 1
        pa = addr
        r = None
        for first, last, iommu, sid_of in self._iommus:      # iommu_for, inline
            if first <= rid <= last:
                r = iommu.translate(rid if sid_of is _same_id else sid_of(rid), addr,
                                    write=value is not None)
                if r.pa is None:
                    stats["dma_aborted"] += 1
                    return _new(DmaResult, (False, None, None, r, False, False))
                pa = r.pa
                break
        try:
            if value is None:
                return DmaResult(True, pa, self.read(pa, size, requester_id=rid), r)
            self._write_now(pa, value, size, rid)
        except BusError:
            stats["dma_bus_errors"] += 1
            return DmaResult(False, pa, None, r, bus_error=True)
        return _new(DmaResult, (True, pa, None, r, False, False))

    def __repr__(self) -> str:
        ram = ",".join(f"{b:#x}+{s:#x}" for b, s in self.ram.regions[:4])
        return bounded(f"<Bus ram=[{ram}] windows={len(self._windows)} "
                       f"iommus={len(self._iommus)} posted={len(self._posted)}>")
