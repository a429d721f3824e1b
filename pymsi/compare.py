"""``pymsi compare``: the invariant table of the four MSI address designs, from real runs.

For each design and each SMMU set-up (``paging``: a stage-1 SMMU with the device on a
HWPT paging; ``nested``: a nested SMMU with a nest-parent HWPT, a vIOMMU and a nested
HWPT from a guest STE whose stage 1 the guest wrote in its RAM) one scripted scenario
runs -- the same script for every design -- acting as a VMM through the user/kernel
contract (:mod:`pymsi.vmmlib`).  The only design-specific part is how the VMM hands its
chosen addresses down: ``VFIO_DEVICE_MSI_IOVA`` + ``IOMMU_IOAS_MAP_MSI`` (per-vector),
``VFIO_IRQ_SET_ACTION_PREPARE`` (preset), nothing (sw-msi, dma-cookie).

After every step the scenario records a :class:`StepObs` -- what the machine shows: the
MSI-X table, the SMMU's translation of each address, what each fire raised (eventfd
signals, host LPIs, vLPIs, SMMU events), the mapping state around each compose -- and
every checker (pure functions of a :class:`StepObs`) judges it.  The table gives, per
row, the first step that broke each invariant.
"""

from __future__ import annotations

import errno
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TextIO, TypedDict, TypeVar, Union, cast

from ._repr import bounded, short
from .kernel.iommufd_msi import MSI_DESIGNS

if TYPE_CHECKING:
    from .kernel.iommufd import Ioas
    from .machine.platforms import ArmVirt
from .vmmlib import (
    DOORBELL,
    LPI_BASE,
    PAGE,
    RAM_SIZE,
    RMR,
    SET,
    VITS_PAGE,
    KvmGuest,
    Vmm,
    errno_of,
    its_cmd,
    pgtable_leaves,
)

if TYPE_CHECKING:
    from .demo import InterruptPath, MsiWriteHop
    from .machine import VirtualMachine

SMMUS = ("paging", "nested")
INVARIANTS = ("routing", "delivery", "address stability", "no allocation on compose",
              "no silent fallback", "isolation")
STEPS = ("setup", "enable 4 vectors", "fire all", "/proc affinity x3",
         "two-step address update", "GICv4 forward + guest MOVI",
         "enable an undescribed vector", "second device", "unmap doorbell + fire",
         "close all fds")
NVEC = 4                       # vectors the VMM describes and enables
DEV_VECTORS = 8                # MSI-X table size of each function
GIOVA = 0x5000_0000            # the guest's MSI IOVAs (nested): stage-1 input
NEW_SLOT = 0x10                # the two-step update moves vector 2 to this slot
VSID = (0x08, 0x10)            # the guest's StreamIDs / ITS DeviceIDs of the two devices
VINTID = LPI_BASE + 5          # the guest's vLPI for vector 0 of device 0
OUTSIDE = 0x7000_0000          # an IOVA no IOAS area covers
MSG_LOW = DOORBELL & (PAGE - 1)

#: what composing must not change, by name (:meth:`Scenario.mapping_state`,
#: :func:`host_mapping_state`): IOAS areas as (iova, length, prot), page table leaves as
#: (input address, descriptor), MSI pages / maps as (iova or phys, page)
MappingState = dict[str, Union["tuple[tuple[int, int, int], ...]", "frozenset[tuple[int, int]]"]]

_T = TypeVar("_T")


class InvariantResult(TypedDict):
    """One invariant of one row: ``ok``, else the first ``step`` that broke it and why."""

    ok: bool
    step: str | None
    detail: str


class HostRow(TypedDict):
    """One row of the host table (:func:`run_row`): a design on an SMMU set-up."""

    design: str
    smmu: str
    results: dict[str, InvariantResult]
    notes: list[str]


class _RenderTable(TypedDict):
    invariants: list[str]
    rows: list[HostRow]


class RenderTable(_RenderTable, total=False):
    """What :func:`render` prints: the invariants (columns), the rows, and notes."""

    notes: list[str]


class HostTable(RenderTable):
    """The host table (:func:`compare`), JSON-ready."""

    designs: list[str]
    smmus: list[str]
    steps: list[str]


class GuestRow(TypedDict):
    """One row of the guest table (:func:`run_guest_row`)."""

    design: str
    vsmmu: str
    gicv4: bool
    results: dict[str, InvariantResult]
    notes: list[str]


class GuestTable(TypedDict):
    """The guest table (:func:`compare_guest`), JSON-ready."""

    designs: list[str]
    vsmmus: list[str]
    gicv4: list[bool]
    invariants: list[str]
    steps: list[str]
    rows: list[GuestRow]


# -- what a step shows ---------------------------------------------------------------------


class _Obs:
    """Base of the observation records: a short, bounded repr (addresses in hex, lists
    and tables as their length), never the whole mapping state."""

    def __repr__(self) -> str:
        parts = []
        for f in fields(cast(Any, self)):
            v = getattr(self, f.name)
            if isinstance(v, bool) or v is None:
                text = repr(v)
            elif isinstance(v, int):
                text = f"{v:#x}" if ("addr" in f.name or f.name.endswith("pa")
                                     or f.name == "iova") else str(v)
            elif isinstance(v, str):
                text = repr(v if len(v) <= 40 else v[:37] + "...")
            elif isinstance(v, (list, tuple, dict, set, frozenset)):
                if not v:
                    continue                          # an empty list says nothing
                text = f"<{len(v)}>"
            else:
                text = short(v)
            parts.append(f"{f.name}={text}")
        return bounded(f"{type(self).__name__}({', '.join(parts)})")



@dataclass(repr=False)
class VectorObs(_Obs):
    """One enabled vector after a step: ``dev`` / ``vec`` (device index, MSI-X vector),
    ``addr`` / ``data`` (the message the function's MSI-X table holds), ``masked``,
    ``chosen`` (the address the VMM described for it; None: none), ``smmu_pa`` (where
    the SMMU takes a write to ``addr``; None: a fault), ``reachable`` (False once the
    VMM unmapped the doorbell page it goes through), ``forwarded`` (posted to a vCPU)."""

    dev: int
    vec: int
    addr: int                  # as the function's MSI-X table holds it
    data: int
    masked: bool
    chosen: int | None         # the address the VMM chose (None: it described none)
    smmu_pa: int | None        # where the SMMU takes a write to ``addr`` (None: fault)
    reachable: bool = True     # False once the VMM unmapped the doorbell page it goes through
    forwarded: bool = False


@dataclass(repr=False)
class FireObs(_Obs):
    """One write of a device and everything it raised: ``dev`` / ``vec``, ``expect``
    ("deliver", "fault" for an unmapped doorbell, "foreign"), ``delivery`` (what
    happened), ``signals`` (eventfd count deltas by (device, vector)), ``lpis`` / ``vlpis``
    (host LPIs / vLPIs made pending), ``smmu_events`` (event records written),
    ``expect_lpi`` / ``expect_vlpi`` / ``expect_vcpu`` (what routing should give),
    ``vlpi_vcpus`` (the vCPU of each vLPI), ``writer_lpis`` (every LPI of the device)."""

    dev: int
    vec: int
    expect: str                # "deliver", "fault" (doorbell unmapped) or "foreign"
    delivery: str = ""
    signals: dict[tuple[int, int], int] = field(default_factory=dict)   # eventfd deltas
    lpis: list[int] = field(default_factory=list)       # host LPIs made pending
    vlpis: list[int] = field(default_factory=list)      # vLPIs made pending
    smmu_events: int = 0
    expect_lpi: int | None = None
    expect_vlpi: int | None = None
    vlpi_vcpus: list[int | None] = field(default_factory=list)   # the vCPU of each vLPI
    expect_vcpu: int | None = None     # the vCPU the guest last targeted (forwarded)
    writer_lpis: tuple[int, ...] = ()                   # every LPI of the writing device


@dataclass(repr=False)
class ComposeObs(_Obs):
    """The mapping state (IOAS areas, domain page tables, sw_msi maps, MSI cookie
    pages) ``before`` and ``after`` something that composes messages; ``what`` names
    that step."""

    what: str
    before: Any
    after: Any


@dataclass(repr=False)
class UndescribedObs(_Obs):
    """Enabling a vector the VMM never described: ``dev`` / ``vec``, the ``errno`` the
    kernel answered (0: it was enabled), and the table's address ``addr_before`` /
    ``addr_after`` (a silent fallback changes it)."""

    dev: int
    vec: int
    errno: int
    addr_before: int
    addr_after: int


@dataclass(repr=False)
class DmaObs(_Obs):
    """A device DMA to an ``iova`` outside every area of its IOAS: ``ok`` (the write
    reached memory: an isolation failure) and ``smmu_events`` (fault records written)."""

    iova: int
    ok: bool
    smmu_events: int


@dataclass(repr=False)
class StepObs(_Obs):
    """What one host-level ``step`` showed, for the invariants to judge: its
    ``vectors`` (VectorObs), ``fires`` (FireObs), ``composes`` (ComposeObs),
    ``undescribed`` (UndescribedObs), ``dma`` (DmaObs), ``leftovers`` (state a teardown
    left behind) and free-text ``notes``."""

    step: str
    vectors: list[VectorObs] = field(default_factory=list)
    fires: list[FireObs] = field(default_factory=list)
    composes: list[ComposeObs] = field(default_factory=list)
    undescribed: list[UndescribedObs] = field(default_factory=list)
    dma: list[DmaObs] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- the checkers ----------------------------------------------------------------------------


def check_routing(obs: StepObs) -> str | None:
    """Every enabled vector's write reaches the physical doorbell, and a fire raises
    exactly the LPI of its host IRQ (or, forwarded, no host LPI)."""
    for v in obs.vectors:
        if v.reachable and not v.masked and v.smmu_pa != DOORBELL:
            pa = "a fault" if v.smmu_pa is None else f"{v.smmu_pa:#x}"
            return (f"dev {v.dev} vector {v.vec}: {v.addr:#x} translates to {pa}, "
                    f"not the doorbell {DOORBELL:#x}")
    for f in obs.fires:
        if f.expect != "deliver":
            continue
        want = [] if f.expect_vlpi is not None else [f.expect_lpi]
        if f.lpis != want:
            return f"dev {f.dev} vector {f.vec} fired: host LPIs {f.lpis}, expected {want}"
    return None


def check_delivery(obs: StepObs) -> str | None:
    """Exactly one eventfd signal (or, forwarded, one vLPI) per fire, on its vector."""
    for f in obs.fires:
        if f.expect != "deliver":
            continue
        if f.expect_vlpi is not None:
            if f.signals or f.vlpis != [f.expect_vlpi]:
                return (f"dev {f.dev} vector {f.vec} (forwarded) fired: vLPIs {f.vlpis}, "
                        f"eventfd signals {_sig(f.signals)}")
            if f.expect_vcpu is not None and f.vlpi_vcpus != [f.expect_vcpu]:
                return (f"dev {f.dev} vector {f.vec} (forwarded): vLPI pending on vCPU "
                        f"{f.vlpi_vcpus}, the guest targeted vCPU {f.expect_vcpu}")
        elif f.signals != {(f.dev, f.vec): 1} or f.vlpis:
            return (f"dev {f.dev} vector {f.vec} fired ({f.delivery}): eventfd signals "
                    f"{_sig(f.signals)}" + (f", vLPIs {f.vlpis}" if f.vlpis else ""))
    return None


def check_stability(obs: StepObs) -> str | None:
    """The MSI-X table address of each vector is the one the VMM chose."""
    for v in obs.vectors:
        if v.chosen is not None and v.addr != v.chosen | MSG_LOW:
            return (f"dev {v.dev} vector {v.vec}: the device writes {v.addr:#x}, "
                    f"the VMM chose {v.chosen | MSG_LOW:#x}")
    return None


def check_no_alloc(obs: StepObs) -> str | None:
    """Nothing in the IOAS, a domain's page table, the sw_msi maps or an MSI cookie
    changed while messages were composed."""
    for c in obs.composes:
        if c.before != c.after:
            return f"{c.what}: {_diff(c.before, c.after)}"
    return None


def check_no_fallback(obs: StepObs) -> str | None:
    """Enabling a vector the VMM did not describe is ENOENT with the vector untouched."""
    for u in obs.undescribed:
        if u.errno != errno.ENOENT:
            got = "succeeded" if u.errno == 0 else f"failed with {errno.errorcode[u.errno]}"
            return (f"dev {u.dev} vector {u.vec} (undescribed) {got}, "
                    f"address {u.addr_after:#x}")
        if u.addr_after != u.addr_before:
            return f"dev {u.dev} vector {u.vec}: ENOENT but the address changed"
    return None


def check_isolation(obs: StepObs) -> str | None:
    """A device raises only its own events; DMA outside the IOAS faults; a write to an
    unmapped doorbell faults in the SMMU, is recorded and delivers nothing; nothing
    stays pinned or mapped once every file is closed."""
    for f in obs.fires:
        if f.expect == "foreign":
            other = {k: n for k, n in f.signals.items() if k[0] != f.dev}
            stray = [i for i in f.lpis if i not in f.writer_lpis]
            if other or stray or f.vlpis:
                return (f"dev {f.dev} writing another device's message raised "
                        f"{_sig(other)} {stray} {f.vlpis}".rstrip())
        elif f.expect == "fault":
            if f.signals or f.lpis or f.vlpis or f.smmu_events < 1:
                return (f"dev {f.dev} vector {f.vec} to an unmapped doorbell: "
                        f"signals {_sig(f.signals)}, LPIs {f.lpis}, vLPIs {f.vlpis}, "
                        f"{f.smmu_events} SMMU events")
    for d in obs.dma:
        if d.ok or d.smmu_events < 1:
            return (f"DMA to {d.iova:#x} outside the IOAS: ok={d.ok}, "
                    f"{d.smmu_events} SMMU events")
    if obs.leftovers:
        return "after close: " + "; ".join(obs.leftovers)
    return None


CHECKERS: dict[str, Callable[[StepObs], str | None]] = {
    "routing": check_routing,
    "delivery": check_delivery,
    "address stability": check_stability,
    "no allocation on compose": check_no_alloc,
    "no silent fallback": check_no_fallback,
    "isolation": check_isolation,
}


def _sig(signals: dict[tuple[int, int], int]) -> str:
    return "{" + ", ".join(f"dev {d} vec {v}: {n}" for (d, v), n in sorted(signals.items())) \
        + "}"


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    out = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key), after.get(key)
        if b != a:
            if isinstance(b, (tuple, frozenset)) and isinstance(a, (tuple, frozenset)):
                added = sorted(set(a) - set(b))
                gone = sorted(set(b) - set(a))
                out.append(f"{key}: +{_fmt(added)} -{_fmt(gone)}")
            else:
                out.append(f"{key}: {b} -> {a}")
    return "; ".join(out)


def _fmt(items: list[Any]) -> str:
    def one(x: Any) -> str:
        if isinstance(x, tuple):
            return "(" + ", ".join(hex(y) if isinstance(y, int) else str(y) for y in x) + ")"
        return hex(x) if isinstance(x, int) else str(x)
    return "[" + ", ".join(one(x) for x in items[:3]) + (" ..." if len(items) > 3 else "") + "]"


# -- the scenario ----------------------------------------------------------------------------


class Scenario:
    """One row: a VMM under ``design`` with a ``paging`` or ``nested`` SMMU set-up,
    driven step by step; each step fills a :class:`StepObs` with what the machine
    shows.  A VMM call that fails ends its step and is kept as a note of the row.
    ``hooks`` (a :class:`~pymsi.kernel.iommufd_msi.MsiDesignBase` subclass) replaces the
    kernel's design object of the VMM's iommufd context: a variant under test."""

    def __init__(self, design: str, smmu: str, hooks: type | None = None) -> None:
        self.design, self.smmu, self.hooks = design, smmu, hooks
        self.nested = smmu == "nested"
        self.vmm: Vmm | None = None
        self.chosen: dict[tuple[int, int], int] = {}         # (dev, vec) -> VMM's address
        self.enabled: set[tuple[int, int]] = set()
        self.efds: dict[tuple[int, int], Any] = {}
        self.forwarded: dict[tuple[int, int], int] = {}      # -> vINTID
        self.unmapped: set[int] = set()                       # doorbell pages (IOAS) unmapped
        self.domains: list[Any] = []
        self.guest: KvmGuest | None = None
        self.hwpt: int | None = None                          # the HWPT paging (paging)
        self._lpis: list[int] = []
        self._vlpis: list[int] = []
        self._vpts: list[int] = []
        self.vcpu_of: dict[tuple[int, int], int] = {}         # forwarded -> guest's vCPU
        self._in_vlpi = 0

    @property
    def _vmm(self) -> Vmm:
        """The VMM, once the set-up step made it (every other step runs after it)."""
        assert self.vmm is not None
        return self.vmm

    # -- addresses ----------------------------------------------------------------------

    def slot(self, n: int) -> int:
        """The VMM's n-th MSI address: a page of its own in the IOAS (paging) or a
        gIOVA page the guest maps to the vITS doorbell page (nested)."""
        return (GIOVA if self.nested else 0x2000_0000) + n * PAGE

    def ipa_page(self, addr: int) -> int | None:
        """The IOAS page a device write to ``addr`` goes through."""
        if self.nested:
            ipa = self._vmm.guest_s1.iova_to_phys(addr)
            return None if ipa is None else ipa & ~(PAGE - 1)
        return addr & ~(PAGE - 1)

    # -- hooks on the hardware ------------------------------------------------------------

    def _hook_gic(self) -> None:
        """Observe every LPI and vLPI a redistributor makes pending.  The redistributors
        become instances of a subclass whose ``set_pending`` / ``set_vlpi_pending`` record
        what they do: the ITS's inline hit path is taken only for the exact
        ``Redistributor`` class, so a subclass sees every MSI."""
        scenario = self

        # (a base class known only at run time: the redistributor class of this machine)
        class Observed(type(self._vmm.m.gic.redists[0])):  # type: ignore[misc]
            def set_pending(self, intid: int) -> bool:
                ok: bool = super().set_pending(intid)
                if ok and not scenario._in_vlpi:
                    scenario._lpis.append(intid)
                return ok

            def set_vlpi_pending(self, vpt: int, bits: int, vintid: int, db: int) -> bool:
                scenario._in_vlpi += 1
                try:
                    ok: bool = super().set_vlpi_pending(vpt, bits, vintid, db)
                finally:
                    scenario._in_vlpi -= 1
                if ok:
                    scenario._vlpis.append(vintid)
                    scenario._vpts.append(vpt)
                return ok

        for rd in cast("ArmVirt", self._vmm.m).gic.redists:     # the GICv4 scenarios: Arm
            rd.__class__ = Observed

    # -- observation helpers ----------------------------------------------------------------

    def mapping_state(self) -> MappingState:
        """What composing must not change: IOAS areas, every paging domain's leaves,
        the design's implicit maps, dma-iommu MSI pages."""
        vmm = self._vmm
        ctx = vmm.ctx()
        st: MappingState = {}
        for oid, obj in sorted(ctx.objects.items()):
            if obj.kind == "ioas":
                st[f"IOAS {oid} areas"] = tuple((a.iova, a.length, int(a.prot))
                                                for a in cast("Ioas", obj).areas)
        for pdev in vmm.k.pci.devices[:2]:           # the domains iommufd gave them
            group = pdev.iommu_group
            d = group.domain if group is not None else None
            if d is None or d.iommufd_hwpt is None:
                continue
            for dom in (d, d.parent):
                if dom is not None and dom not in self.domains:
                    self.domains.append(dom)
        for n, dom in enumerate(self.domains):
            pg = getattr(dom, "pgtbl", None)
            if pg is not None and not getattr(dom, "freed", False):
                st[f"domain {n} page table"] = frozenset(pgtable_leaves(pg))
            cookie = getattr(dom, "cookie", None)
            pages = getattr(cookie, "msi_pages", None)
            if pages is not None:
                st[f"domain {n} MSI cookie pages"] = frozenset(
                    (p.phys, p.iova) for p in pages.values())
        hooks = ctx.msi
        if hasattr(hooks, "maps"):
            st["sw_msi maps"] = frozenset((m.iova, m.msi_addr & ~(PAGE - 1)) for m in hooks.maps)
        if hasattr(hooks, "installed"):
            st["preset installed"] = frozenset(
                (iova, page) for per in hooks.installed.values() for iova, page in per.items())
        return st

    def compose(self, obs: StepObs, what: str, fn: Callable[[], _T]) -> _T:
        before = self.mapping_state()
        r = fn()
        obs.composes.append(ComposeObs(what, before, self.mapping_state()))
        return r

    def _counts(self) -> dict[tuple[int, int], int]:
        return {key: e.f_op.count for key, e in self.efds.items()}

    def _pump(self) -> None:
        self._vmm.m.bus.drain()
        self._vmm.k.handle_interrupts()

    def fire(self, obs: StepObs, dev: int, vec: int, expect: str = "deliver",
             write: tuple[int, int] | None = None) -> FireObs:
        """Device ``dev`` raises ``vec`` (or, with ``write``, DMA-writes that message)."""
        vmm = self._vmm
        before, ev = self._counts(), vmm.smmu_events()
        self._lpis.clear()
        self._vlpis.clear()
        self._vpts.clear()
        f = FireObs(dev, vec, expect)
        if write is None:
            f.delivery = vmm.m.functions[dev].notify(vec).value
            if (dev, vec) in self.enabled:
                f.expect_lpi = vmm.host_lpi(vec, dev)
            f.expect_vlpi = self.forwarded.get((dev, vec))
            f.expect_vcpu = self.vcpu_of.get((dev, vec))
        else:
            r = vmm.m.bus.dma_write(vmm.k.pci.devices[dev].rid, write[0], write[1])
            f.delivery = "sent" if r.ok else "aborted"
            f.writer_lpis = tuple(vmm.host_lpi(v, dev) for d, v in self.enabled if d == dev)
        self._pump()
        after = self._counts()
        f.signals = {k: after[k] - before.get(k, 0) for k in after
                     if after[k] != before.get(k, 0)}
        f.lpis, f.vlpis = list(self._lpis), list(self._vlpis)
        vpes = self.guest.kvm.vpes if self.guest is not None else {}
        f.vlpi_vcpus = [next((c for c, vpe in vpes.items() if vpe.vpt == vpt), None)
                        for vpt in self._vpts]
        f.smmu_events = vmm.smmu_events() - ev
        obs.fires.append(f)
        for e in self.efds.values():          # the VMM reads its eventfds
            if e.f_op.count:
                e.read()
        return f

    def vectors(self) -> list[VectorObs]:
        vmm = self._vmm
        out = []
        for dev, vec in sorted(self.enabled):
            addr, data, ctrl = vmm.entry(vec, dev)
            page = self.ipa_page(addr)
            reachable = page is None or page not in self.unmapped
            # The SMMU's own translation (a fault is recorded, as a probe by the
            # device would be): only where the doorbell should be reachable.
            pa = vmm.smmu_pa(addr, dev) if reachable else None
            out.append(VectorObs(dev, vec, addr, data, bool(ctrl & 1),
                                 self.chosen.get((dev, vec)), pa, reachable=reachable,
                                 forwarded=(dev, vec) in self.forwarded))
        return out

    # -- the VMM's design-specific hand-down ----------------------------------------------

    def hand_down(self, dev: int, vecs: list[int]) -> None:
        """Give the kernel the VMM's chosen addresses, if the design has a way."""
        vmm = self._vmm
        iovas = [self.chosen[(dev, v)] for v in vecs]
        if self.design == "per-vector":
            for v, iova in zip(vecs, iovas, strict=True):
                vmm.msi_iova(SET, v, [iova], i=dev)
        elif self.design == "preset":
            for v, iova in zip(vecs, iovas, strict=True):
                vmm.prepare(v, [iova], i=dev)

    def map_doorbell(self, iova: int, dev: int = 0) -> None:
        """Per-vector only: the VMM maps the doorbell page itself (IOMMU_IOAS_MAP_MSI)."""
        if self.design == "per-vector":
            target = VITS_PAGE if self.nested else iova & ~(PAGE - 1)
            if self._vmm.ctx().ioas(self._vmm.ioas).area_at(target) is None:
                self._vmm.map_msi(target, dev)

    def enable(self, dev: int, vecs: list[int]) -> int:
        efds = [self._vmm.k.eventfd() for _ in vecs]
        rc = self._vmm.set_triggers(vecs[0], [cast(int, e.fd) for e in efds], i=dev)
        for v, e in zip(vecs, efds, strict=True):
            self.efds[(dev, v)] = e
            self.enabled.add((dev, v))
        return rc

    def attach(self, dev: int) -> None:
        vmm = self._vmm
        if self.nested:
            maps = {self.slot(n): VITS_PAGE for n in range(DEV_VECTORS + NEW_SLOT)}
            maps.update({a: a for a in range(RMR[0], RMR[1], PAGE)})   # the IORT RMR
            vmm.nested(maps, VSID[dev], i=dev)
        else:
            if self.hwpt is None:
                self.hwpt = vmm.hwpt_alloc(vmm.ioas, i=dev)
            vmm.attach(self.hwpt, dev)

    # -- the steps ------------------------------------------------------------------------

    def step_setup(self, obs: StepObs) -> None:
        self.vmm = Vmm(self.design, smmu="nested" if self.nested else "s1", n=2,
                       devices=[{"msix": DEV_VECTORS}] * 2, ram_size=RAM_SIZE, gicv4=True)
        if self.hooks is not None:
            ctx = self.vmm.ctx()
            ctx.msi = self.hooks(ctx)
        self._hook_gic()
        self._vmm.bind(0)
        self.attach(0)
        for v in range(NVEC):
            self.chosen[(0, v)] = self.slot(v)
            self.map_doorbell(self.slot(v))
        self.hand_down(0, list(range(NVEC)))

    def step_enable(self, obs: StepObs) -> None:
        self.compose(obs, "enable 4 vectors", lambda: self.enable(0, list(range(NVEC))))

    def fire_all(self, obs: StepObs) -> None:
        for dev, vec in sorted(self.enabled):
            self.fire(obs, dev, vec)

    def step_fire_all(self, obs: StepObs) -> None:
        self.fire_all(obs)

    def step_affinity(self, obs: StepObs) -> None:
        k = self._vmm.k
        for mask in ("2", "4", "1"):
            for v in range(NVEC):
                path = f"/proc/irq/{self._vmm.irq(v)}/smp_affinity"
                self.compose(obs, f"smp_affinity {mask} of vector {v}",
                             functools.partial(k.proc_write, path, mask))
        self.fire_all(obs)

    def step_two_step(self, obs: StepObs) -> None:
        vmm = self._vmm
        new = self.slot(NEW_SLOT)
        self.chosen[(0, 2)] = new
        self.map_doorbell(new)
        self.hand_down(0, [2])
        if self.design == "per-vector":
            path = f"/proc/irq/{vmm.irq(2)}/smp_affinity"
            self.compose(obs, "smp_affinity after VFIO_DEVICE_MSI_IOVA SET",
                         lambda: vmm.k.proc_write(path, "8"))
        else:
            # What the thread's second step (an affinity set) does here: noted, then the
            # design's own way (re-enable) is what the step is judged on.
            vmm.k.proc_write(f"/proc/irq/{vmm.irq(2)}/smp_affinity", "8")
            addr = vmm.entry(2)[0]
            if addr != new | MSG_LOW:
                obs.notes.append(f"after the hand-down and an affinity set vector 2 still "
                                 f"writes {addr:#x} (chose {new | MSG_LOW:#x}); it takes a "
                                 "re-enable of MSI-X")
            vmm.disable()
            for v in range(NVEC):
                self.enabled.discard((0, v))
            self.compose(obs, "re-enable", lambda: self.enable(0, list(range(NVEC))))
        self.fire_all(obs)

    def step_gicv4(self, obs: StepObs) -> None:
        vmm = self._vmm
        g = self.guest = KvmGuest(vmm)
        g.map_device(VSID[0], {0: (VINTID, 0)})
        g.route(1, VSID[0], 0)
        self.compose(obs, "KVM_IRQFD (vLPI map)", lambda: g.irqfd(self.efds[(0, 0)].fd, 1))
        lpi = g.kvm.lpis.get(VINTID)
        if lpi is not None and lpi.hw:
            self.forwarded[(0, 0)] = VINTID
            self.vcpu_of[(0, 0)] = 0                 # collection 0 -> vCPU 0
        else:
            obs.notes.append("KVM did not forward vector 0")
        self.fire(obs, 0, 0)
        self.compose(obs, "guest MOVI (vLPI move)",
                     lambda: g.cmds(its_cmd("MOVI", VSID[0], 0, icid=1)))
        if (0, 0) in self.vcpu_of:
            self.vcpu_of[(0, 0)] = 1                 # collection 1 -> vCPU 1
        self.fire_all(obs)

    def step_undescribed(self, obs: StepObs) -> None:
        vmm = self._vmm
        v = NVEC
        before = vmm.entry(v)[0]
        e = vmm.k.eventfd()
        rc = errno_of(vmm.set_triggers, v, [cast(int, e.fd)])
        if rc == 0:
            self.efds[(0, v)] = e
            self.enabled.add((0, v))
        obs.undescribed.append(UndescribedObs(0, v, rc, before, vmm.entry(v)[0]))

    def step_second_device(self, obs: StepObs) -> None:
        vmm = self._vmm
        vmm.bind(1)
        self.attach(1)
        for v in range(2):
            self.chosen[(1, v)] = self.slot(v)
        self.hand_down(1, [0, 1])
        self.compose(obs, "enable device 1", lambda: self.enable(1, [0, 1]))
        self.fire(obs, 1, 0)
        self.fire(obs, 1, 1)
        addr, data, _ = vmm.entry(1, 0)
        self.fire(obs, 1, 1, expect="foreign", write=(addr, data))
        ev = vmm.smmu_events()
        r = vmm.m.bus.dma_write(vmm.k.pci.devices[0].rid, OUTSIDE, 0xDEAD)
        self._pump()
        obs.dma.append(DmaObs(OUTSIDE, r.ok, vmm.smmu_events() - ev))

    def step_unmap(self, obs: StepObs) -> None:
        vmm = self._vmm
        v = 1
        page = self.ipa_page(vmm.entry(v)[0])
        rc = errno_of(vmm.unmap, page) if page is not None else errno.ENOENT
        if rc == 0:
            self.unmapped.add(cast(int, page))          # rc is 0 only for a page
            self.fire(obs, 0, v, expect="fault")
        else:
            obs.notes.append(f"IOMMU_IOAS_UNMAP of the doorbell page: "
                             f"{errno.errorcode[rc]} (the kernel mapped it, not the VMM)")
            self.fire(obs, 0, v)

    def step_close(self, obs: StepObs) -> None:
        vmm = self._vmm
        if self.guest is not None:
            self.guest.close()
        for f in vmm.files:
            f.close()
        vmm.ictx.close()
        for e in self.efds.values():
            e.close()
        self.enabled.clear()
        k = vmm.k
        if k.user_mm.pinned:
            obs.leftovers.append(f"{len(k.user_mm.pinned)} user pages still pinned")
        for n, dom in enumerate(self.domains):
            pg = getattr(dom, "pgtbl", None)
            if pg is not None and not getattr(dom, "freed", False) and pgtable_leaves(pg):
                obs.leftovers.append(f"domain {n} still maps {len(pgtable_leaves(pg))} pages")
        for pdev in k.pci.devices[:2]:
            if pdev.msix_enabled:
                obs.leftovers.append(f"{pdev.bdf}: MSI-X still enabled")

    STEP_FNS = ("step_setup", "step_enable", "step_fire_all", "step_affinity",
                "step_two_step", "step_gicv4", "step_undescribed", "step_second_device",
                "step_unmap", "step_close")

    def run(self) -> list[StepObs]:
        """Run every step, observing after each: the list of observations."""
        out = []
        for name, fn in zip(STEPS, self.STEP_FNS, strict=True):
            obs = StepObs(name)
            try:
                getattr(self, fn)(obs)
            except OSError as e:
                code = cast(int, e.errno)                  # the VMM's OSErrors carry one
                obs.notes.append(f"the VMM's call failed: {errno.errorcode.get(code, code)}"
                                 f" {e}")
            obs.vectors = self.vectors() if self.vmm is not None and name != "close all fds" \
                else []
            out.append(obs)
        return out


# -- the table ---------------------------------------------------------------------------------


_O = TypeVar("_O", "StepObs", "GuestStepObs")


def judge(observations: Sequence[_O], checkers: dict[str, Callable[[_O], str | None]] | None = None
          ) -> dict[str, InvariantResult]:
    """The first step that broke each invariant (``step`` None: none did), by
    ``checkers`` (the host table's :data:`CHECKERS` unless given)."""
    if checkers is None:
        default: dict[str, Callable[[Any], str | None]] = CHECKERS
        checkers = default
    results: dict[str, InvariantResult] = {}
    for inv in INVARIANTS:
        results[inv] = {"ok": True, "step": None, "detail": ""}
        for obs in observations:
            detail = checkers[inv](obs)
            if detail is not None:
                results[inv] = {"ok": False, "step": obs.step, "detail": detail}
                break
    return results


def run_row(design: str, smmu: str) -> HostRow:
    """One row of the table: a real run of the scenario, judged."""
    obs = Scenario(design, smmu).run()
    notes = [f"{o.step}: {n}" for o in obs for n in o.notes]
    return {"design": design, "smmu": smmu, "results": judge(obs), "notes": notes}


def x86_per_vector_note() -> str:
    """What VFIO_DEVICE_MSI_IOVA answers on x86 (a real call)."""
    from .machine import X86Pc

    vmm = Vmm(machine=X86Pc(remapping=True, devices=[{"msix": NVEC}]))
    vmm.bind()
    vmm.attach()
    rc = errno_of(vmm.msi_iova, SET, 0, [0x2000_0000])
    name = ("EOPNOTSUPP" if rc == errno.EOPNOTSUPP else errno.errorcode.get(rc, str(rc))) \
        if rc else "success"
    return (f"x86 (X86Pc(remapping=True)): VFIO_DEVICE_MSI_IOVA -> {name} "
            "(MSIs are not translated by the IOMMU there)")


def compare(designs: tuple[str, ...] = MSI_DESIGNS,
            smmus: tuple[str, ...] = SMMUS) -> HostTable:
    """The whole table as a JSON-ready dict."""
    return {"designs": list(designs), "smmus": list(smmus), "invariants": list(INVARIANTS),
            "steps": list(STEPS),
            "rows": [run_row(d, s) for d in designs for s in smmus],
            "notes": [x86_per_vector_note()]}


def render(table: RenderTable, out: TextIO, smmu_head: str = "smmu") -> None:
    """Print the table: one row per design x SMMU, a cell per invariant (ok, or the
    step that first broke it); the details under it."""
    short = {"routing": "routing", "delivery": "delivery", "address stability": "stability",
             "no allocation on compose": "no-alloc", "no silent fallback": "no-fallback",
             "isolation": "isolation"}
    head = ["design", smmu_head] + [short[i] for i in table["invariants"]]
    cells = [[r["design"], r["smmu"]] + [
        "ok" if r["results"][i]["ok"] else f"BROKEN: {r['results'][i]['step']}"
        for i in table["invariants"]] for r in table["rows"]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *cells, strict=True)]

    def line(row: list[str]) -> str:
        return " | ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip()

    out.write(line(head) + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    out.write("\n")
    for r in table["rows"]:
        for inv in table["invariants"]:
            res = r["results"][inv]
            if not res["ok"]:
                out.write(f"{r['design']}/{r['smmu']} {inv} at '{res['step']}': "
                          f"{res['detail']}\n")
    for r in table["rows"]:
        for n in r.get("notes", []):
            out.write(f"{r['design']}/{r['smmu']} note, {n}\n")
    for n in table.get("notes", []):
        out.write(n + "\n")


# -- the guest scenarios: the whole machine (host + VMM + guest) -------------------------------

GUEST_VSMMUS = ("accel", "none")          # nested (guest stage 1 + host stage 2) / paging
GUEST_STEPS = ("boot: guest enables 4 vectors", "fire all", "guest affinity moves x2",
               "guest masks + unmasks", "foreign EventID", "DMA outside the IOAS",
               "guest unmaps its MSI page")
GUEST_NVEC = 4
OUTSIDE_IOVA = 0x7000_0000                # no IOAS area, no guest stage-1 mapping
FOREIGN_EVENT = 0xFFFF                    # an EventID no ITT of a 4-vector device holds


@dataclass(repr=False)
class GuestVector(_Obs):
    """One vector ``vec`` after a guest step: ``guest_addr`` (the address the guest
    chose, its msi_desc; None: none), ``phys_addr`` (what the physical function's MSI-X
    table holds) and ``boot_addr`` (what it held after boot)."""

    vec: int
    guest_addr: int | None
    phys_addr: int
    boot_addr: int                         # what the physical table held after boot


@dataclass(repr=False)
class GuestFire(_Obs):
    """One write of the physical function for vector ``vec``: ``expect`` ("deliver",
    "fault", "foreign"), ``path`` (its hops from the trace: translation, ITS, fault),
    ``hits`` (the guest driver's new (vector, vCPU) records), ``want_vcpu``,
    ``recorded_faults`` (SMMU event records), ``lpis`` (host LPIs / vLPIs made
    pending), ``gicv4`` (the host GIC forwards: KVM maps vLPIs)."""

    vec: int | None
    expect: str                            # "deliver", "fault" or "foreign"
    path: InterruptPath
    hits: list[tuple[int, int | None]]     # the guest driver's new (vector, vCPU) records
    want_vcpu: int | None
    recorded_faults: int                   # smmuv3_record_event records, recorded
    lpis: int                              # host LPIs / vLPIs made pending
    gicv4: bool = False                    # the host GIC forwards (KVM maps vLPIs)


@dataclass(repr=False)
class GuestStepObs(_Obs):
    """What one guest-level ``step`` showed: its ``vectors`` (GuestVector), ``fires``
    (GuestFire), ``composes`` (ComposeObs) and free-text ``notes``."""

    step: str
    vectors: list[GuestVector] = field(default_factory=list)
    fires: list[GuestFire] = field(default_factory=list)
    composes: list[ComposeObs] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def gcheck_routing(obs: GuestStepObs) -> str | None:
    """Every fire meant to deliver reaches the host doorbell through the host SMMU and
    raises an LPI (or, GICv4, a vLPI) for (the device's StreamID, its EventID)."""
    for f in obs.fires:
        if f.expect != "deliver":
            continue
        p, t, its = f.path, f.path["translation"], f.path["its"]
        if t is None or t["pa"] != DOORBELL:
            got = f"a fault ({p['fault']['event']})" if p["fault"] else \
                ("nothing" if t is None else f"{t['pa']:#x}")
            addr = p["write"]["address"] if p["write"] else None
            return (f"vector {f.vec}: {addr:#x} reaches {got}, not the doorbell "
                    f"{DOORBELL:#x}" if addr is not None else f"vector {f.vec}: no write")
        if its is None or (its["lpi"] is None and its["vlpi"] is None):
            why = None if its is None else its["error"]
            return f"vector {f.vec}: the ITS raised nothing ({why})"
        w = cast("MsiWriteHop", p["write"])        # the ITS saw it: there was a write
        if its["devid"] != w["rid"] or its["eventid"] != w["data"]:
            return f"vector {f.vec}: the ITS saw DeviceID {its['devid']:#x}, EventID " \
                   f"{its['eventid']:#x}"
    return None


def gcheck_delivery(obs: GuestStepObs) -> str | None:
    """Each fire: exactly one guest interrupt, on its vector, on the vCPU the guest chose."""
    for f in obs.fires:
        if f.expect != "deliver":
            continue
        if f.hits != [(f.vec, f.want_vcpu)]:
            return (f"vector {f.vec} fired: the guest's handlers saw {f.hits}, expected "
                    f"[({f.vec}, {f.want_vcpu})]")
    return None


def gcheck_stability(obs: GuestStepObs) -> str | None:
    """The device's address stays what it was after boot over the guest's affinity moves
    and masking (a GICv3 ITS move is a MOVI / VMOVI: the message does not change)."""
    for v in obs.vectors:
        if v.phys_addr != v.boot_addr:
            return (f"vector {v.vec}: the device's address moved {v.boot_addr:#x} -> "
                    f"{v.phys_addr:#x}")
    return None


def gcheck_no_alloc(obs: GuestStepObs) -> str | None:
    """Nothing the kernel maps on its own (domain page table leaves outside the IOAS
    areas userspace mapped, sw_msi maps, preset installs, MSI cookie pages; see
    :func:`implicit_state`) changed while the guest's vector enables were composed."""
    for c in obs.composes:
        if c.before != c.after:
            return f"{c.what}: {_diff(c.before, c.after)}"
    return None


def gcheck_no_fallback(obs: GuestStepObs) -> str | None:
    """No vector went out with an address the guest did not choose: the host composed
    the guest's address as the VMM handed it down, or the enable failed -- not a
    substitute of the kernel's own, silently; and with GICv4 no vector quietly stays on
    the host-handler path (``kvm_vgic_v4_set_forwarding`` ignores a route that is not a
    vITS doorbell)."""
    for v in obs.vectors:
        if v.guest_addr is not None and v.phys_addr != v.guest_addr:
            return (f"vector {v.vec}: enabled without error, but the device writes "
                    f"{v.phys_addr:#x}, not the guest's {v.guest_addr:#x}")
    for f in obs.fires:             # GICv4: KVM forwards a route to a vITS doorbell, and
        p = f.path                  # quietly does not when the route is anything else
        if (f.gicv4 and f.expect == "deliver" and p["its"] is not None
                and p["its"]["vlpi"] is None and p["guest_handler"] is not None):
            return (f"vector {f.vec}: GICv4, but delivered through the host handler and "
                    "KVM's irqfd, not as a vLPI (forwarding silently not set up)")
    return None


def gcheck_isolation(obs: GuestStepObs) -> str | None:
    """A foreign EventID raises nothing; a write the SMMU cannot translate faults, is
    recorded and raises nothing."""
    for f in obs.fires:
        if f.expect == "foreign" and (f.hits or f.lpis):
            return f"the device's write of EventID {FOREIGN_EVENT:#x} raised {f.lpis} LPI(s), " \
                   f"guest hits {f.hits}"
        if f.expect == "fault" and (f.hits or f.lpis or f.recorded_faults < 1):
            what = f"vector {f.vec}" if f.vec is not None else "DMA"
            return (f"{what} to an unmapped address: {f.recorded_faults} recorded SMMU "
                    f"events, {f.lpis} LPI(s), guest hits {f.hits}")
    return None


GUEST_CHECKERS: dict[str, Callable[[GuestStepObs], str | None]] = {
    "routing": gcheck_routing,
    "delivery": gcheck_delivery,
    "address stability": gcheck_stability,
    "no allocation on compose": gcheck_no_alloc,
    "no silent fallback": gcheck_no_fallback,
    "isolation": gcheck_isolation,
}


def host_mapping_state(vm: VirtualMachine) -> MappingState:
    """What composing must not change on the host of a booted VirtualMachine: IOAS areas,
    the page tables of the assigned devices' domains (and nest parents), the design's
    implicit maps, dma-iommu MSI cookie pages."""
    ctx = vm.vmm.iommufd.private_data
    st: MappingState = {}
    for oid, obj in sorted(ctx.objects.items()):
        if obj.kind == "ioas":
            st[f"IOAS {oid} areas"] = tuple((a.iova, a.length, int(a.prot)) for a in obj.areas)
    domains: list[Any] = []
    rids = {sl.host_fn.rid for sl in vm.slots if sl.host_fn is not None}
    for pdev in vm.host.pci.devices:
        group = pdev.iommu_group if pdev.rid in rids else None
        d = group.domain if group is not None else None
        for dom in (d, getattr(d, "parent", None)):
            if dom is not None and dom not in domains:
                domains.append(dom)
    for n, dom in enumerate(domains):
        pg = getattr(dom, "pgtbl", None)
        if pg is not None and not getattr(dom, "freed", False):
            st[f"domain {n} page table"] = frozenset(pgtable_leaves(pg))
        pages = getattr(getattr(dom, "cookie", None), "msi_pages", None)
        if pages is not None:
            st[f"domain {n} MSI cookie pages"] = frozenset((p.phys, p.iova)
                                                           for p in pages.values())
    hooks = ctx.msi
    if hasattr(hooks, "maps"):
        st["sw_msi maps"] = frozenset((m.iova, m.msi_addr & ~(PAGE - 1)) for m in hooks.maps)
    if hasattr(hooks, "installed"):
        st["preset installed"] = frozenset(
            (iova, page) for per in hooks.installed.values() for iova, page in per.items())
    return st


def implicit_state(st: MappingState) -> MappingState:
    """What the kernel mapped on its own in a :func:`host_mapping_state`: the IOAS areas
    are what userspace asked for (IOMMU_IOAS_MAP / the VMM's doorbell page), and a page
    table leaf inside one of them is that request filled in; everything else -- leaves
    outside every area, sw_msi maps, preset installs, MSI cookie pages -- is implicit."""
    areas = [a for k, v in st.items() if k.startswith("IOAS ")
             for a in cast("tuple[tuple[int, int, int], ...]", v)]

    def requested(va: int) -> bool:
        return any(iova <= va < iova + length for iova, length, _ in areas)

    out: MappingState = {}
    for k, v in st.items():
        if k.startswith("IOAS "):
            continue
        if k.endswith("page table"):
            v = frozenset(leaf for leaf in cast("frozenset[tuple[int, int]]", v)
                          if not requested(leaf[0]))
        out[k] = v
    return out


class GuestScenario:
    """One guest row: a :class:`~pymsi.machine.VirtualMachine` under ``design`` with an
    accelerated vSMMU (``accel``: the guest's stage 1 nested over the host's stage 2) or
    none (``none``: the host's paging domain, IOVA = GPA), GICv4 off or on, driven
    through guest-level actions only (the guest driver's enables, /proc affinity writes,
    disable_irq / enable_irq, its IOMMU's unmap) and the physical function's writes.
    Each step fills a :class:`GuestStepObs`; the paths come from the trace."""

    def __init__(self, design: str, vsmmu: str, gicv4: bool) -> None:
        self.design, self.vsmmu, self.gicv4 = design, vsmmu, gicv4
        self.vm: Any = None
        self.boot_addr: dict[int, int] = {}

    # -- observation ------------------------------------------------------------------------

    def vectors(self) -> list[GuestVector]:
        s = self.vm.slots[0]
        out = []
        for v in range(GUEST_NVEC):
            desc = s.guest_pdev.msi_descs[v] if v < len(s.guest_pdev.msi_descs) else None
            phys = s.host_fn.msix_entry(v)[0]
            out.append(GuestVector(v, None if desc is None else desc.msg.address, phys,
                                   self.boot_addr.get(v, phys)))
        return out

    def _write(self, vec: int | None, expect: str, send: Callable[[], Any]) -> GuestFire:
        from . import trace
        from .demo import PATH_PATTERNS, path_from_trace

        vm = self.vm
        ep = vm.endpoint(0)
        want = vm.guest_cpu_of(0, vec) if vec is not None else None
        n = len(ep.hits)
        with trace.record(PATH_PATTERNS, clock=vm.sched.now) as rec:
            send()
            vm.run()
        recs = list(rec)
        return GuestFire(
            vec, expect, path_from_trace(recs, "host SMMUv3"), list(ep.hits[n:]), want,
            sum(1 for r in recs if r.name == "smmuv3_record_event" and r.fields["recorded"]),
            sum(1 for r in recs if r.name.startswith("gicv3_redist_process_")
                and r.fields["level"] == 1), self.gicv4)

    def fire(self, obs: GuestStepObs, vec: int, expect: str = "deliver") -> None:
        fn = self.vm.host_function(0)
        obs.fires.append(self._write(vec, expect, lambda: fn.notify(vec)))

    def dma(self, obs: GuestStepObs, vec: int | None, addr: int, value: int,
            expect: str) -> None:
        rid = self.vm.host_function(0).rid
        bus = self.vm.machine.bus
        obs.fires.append(self._write(vec, expect, lambda: bus.dma_write(rid, addr, value, 4)))

    # -- steps ------------------------------------------------------------------------------

    def step_boot(self, obs: GuestStepObs) -> None:
        from .kernel.pci_endpoint_test import PciEndpointTestDriver
        from .machine import VirtualMachine

        self.vm = vm = VirtualMachine(vsmmu=None if self.vsmmu == "none" else self.vsmmu,
                                      gicv4=self.gicv4, variant=self.design,
                                      devices=[{"msix": GUEST_NVEC}])
        register = PciEndpointTestDriver.register

        def observed(drv: Any) -> Any:          # the guest's driver enables its vectors
            before = implicit_state(host_mapping_state(vm))
            r = register(drv)
            obs.composes.append(ComposeObs("the guest enables its vectors", before,
                                           implicit_state(host_mapping_state(vm))))
            return r

        # (the guest driver's method, wrapped for this one boot)
        PciEndpointTestDriver.register = observed  # type: ignore[method-assign, assignment]
        try:
            vm.boot()
        finally:
            PciEndpointTestDriver.register = register  # type: ignore[method-assign]
        self.boot_addr = {v.vec: v.phys_addr for v in self.vectors()}

    def step_fire_all(self, obs: GuestStepObs) -> None:
        for v in range(GUEST_NVEC):
            self.fire(obs, v)

    def step_moves(self, obs: GuestStepObs) -> None:
        ncpus = self.vm.desc["guest_ncpus"]
        for _ in range(2):
            for v in range(GUEST_NVEC):
                self.vm.set_guest_affinity(0, v, (self.vm.guest_cpu_of(0, v) + 1) % ncpus)
                self.vm.run()
                self.fire(obs, v)

    def step_mask_unmask(self, obs: GuestStepObs) -> None:
        vm = self.vm
        before = implicit_state(host_mapping_state(vm))
        for v in range(GUEST_NVEC):
            vm.guest.irq.disable_irq(vm.guest_irq(0, v))
            vm.run()
            vm.guest.irq.enable_irq(vm.guest_irq(0, v))
            vm.run()
        obs.composes.append(ComposeObs("guest disable_irq + enable_irq", before,
                                       implicit_state(host_mapping_state(vm))))
        for v in range(GUEST_NVEC):
            self.fire(obs, v)

    def step_foreign(self, obs: GuestStepObs) -> None:
        self.dma(obs, None, self.vm.host_function(0).msix_entry(0)[0], FOREIGN_EVENT, "foreign")

    def step_outside(self, obs: GuestStepObs) -> None:
        self.dma(obs, None, OUTSIDE_IOVA, 0xDEAD, "fault")

    def step_guest_unmap(self, obs: GuestStepObs) -> None:
        if self.vsmmu == "none":
            obs.notes.append("no vSMMU: the guest has no stage 1 to unmap")
            return
        vm, s = self.vm, self.vm.slots[0]
        domain = s.guest_pdev.iommu_group.default_domain
        page = s.guest_pdev.msi_descs[0].msg.address & ~(PAGE - 1)
        vm.guest.iommu.unmap(domain, page, PAGE)
        domain.flush_iotlb_all()
        vm.run()
        phys = s.host_fn.msix_entry(0)[0]
        if phys & ~(PAGE - 1) != page:
            obs.notes.append(f"the device writes {phys:#x}, outside the page {page:#x} the "
                             "guest unmapped: the guest's stage 1 cannot stop it")
            self.fire(obs, 0)
        else:
            self.fire(obs, 0, "fault")

    def run(self) -> list[GuestStepObs]:
        steps = [self.step_boot, self.step_fire_all, self.step_moves, self.step_mask_unmask,
                 self.step_foreign, self.step_outside, self.step_guest_unmap]
        out: list[GuestStepObs] = []
        for name, step in zip(GUEST_STEPS, steps, strict=True):
            obs = GuestStepObs(name)
            try:
                step(obs)
            except OSError as e:                  # a call that fails ends its step
                obs.notes.append(f"{type(e).__name__}: {e}")
            if self.vm is not None and self.vm.booted:
                obs.vectors = self.vectors()
            out.append(obs)
            if self.vm is None or not self.vm.booted:
                break
        return out


def judge_guest(observations: list[GuestStepObs]) -> dict[str, InvariantResult]:
    """The first guest step that broke each invariant (``step`` None: none did)."""
    return judge(observations, GUEST_CHECKERS)


def run_guest_row(design: str, vsmmu: str, gicv4: bool) -> GuestRow:
    """One guest row: a real run of the whole machine, judged."""
    obs = GuestScenario(design, vsmmu, gicv4).run()
    notes = [f"{o.step}: {n}" for o in obs for n in o.notes]
    return {"design": design, "vsmmu": vsmmu, "gicv4": gicv4, "results": judge_guest(obs),
            "notes": notes}


def compare_guest(designs: tuple[str, ...] = MSI_DESIGNS,
                  vsmmus: tuple[str, ...] = GUEST_VSMMUS,
                  gicv4s: tuple[bool, ...] = (False, True)) -> GuestTable:
    """The guest table as a JSON-ready dict."""
    return {"designs": list(designs), "vsmmus": list(vsmmus), "gicv4": list(gicv4s),
            "invariants": list(INVARIANTS), "steps": list(GUEST_STEPS),
            "rows": [run_guest_row(d, v, g) for d in designs for v in vsmmus for g in gicv4s]}


def render_guest(table: GuestTable, out: TextIO) -> None:
    """Print the guest table like the host one: a row per design x vSMMU x GICv4."""
    label = {"accel": "accel (nested)", "none": "none (paging)"}
    rows: list[HostRow] = [
        {"design": r["design"], "smmu": f"{label.get(r['vsmmu'], r['vsmmu'])}, "
         f"gicv4 {'on' if r['gicv4'] else 'off'}", "results": r["results"], "notes": r["notes"]}
        for r in table["rows"]]
    out.write("guest scenarios (host + VMM + guest; the guest acts, the physical device "
              "fires):\n")
    render({"invariants": table["invariants"], "rows": rows}, out, smmu_head="vsmmu, gicv4")


def main(out: TextIO, as_json: bool = False, host: bool = True, guest: bool = True) -> int:
    """``pymsi compare [--json] [--host-only | --guest-only]``."""
    host_table = compare() if host else None
    guest_table = compare_guest() if guest else None
    if as_json:
        table: dict[str, object] = {} if host_table is None else dict(host_table)
        if guest_table is not None:
            table["guest"] = guest_table
        json.dump(table, out, indent=2)
        out.write("\n")
        return 0
    if host_table is not None:
        render(host_table, out)
    if guest_table is not None:
        if host:
            out.write("\n")
        render_guest(guest_table, out)
    return 0


__all__ = ["CHECKERS", "GUEST_CHECKERS", "GUEST_STEPS", "GUEST_VSMMUS", "INVARIANTS", "SMMUS",
           "STEPS", "GuestScenario", "GuestStepObs", "Scenario", "StepObs", "compare",
           "compare_guest", "judge", "judge_guest", "main", "render", "render_guest",
           "run_guest_row", "run_row"]
