"""Inspection views of a machine, in the spirit of QEMU's monitor (``info mtree``,
``info pci``) and Linux's debugfs: one interrupt's whole path, the address spaces,
the SMMU's IOTLB, the ITS's devices and collections, the PCI functions' MSI/MSI-X.

Each view is a function returning a :class:`View` (structured rows; ``str()`` renders
it as text) and is what ``pymsi info irq|mtree|iotlb|its|pci`` prints.  A view takes a
*target*: a booted :class:`~pymsi.machine.VirtualMachine` (host and guest sides), a
booted kernel (:class:`~pymsi.kernel.kernel.Kernel`: the hardware is found through its
bus), or a bare machine (:class:`~pymsi.machine.ArmVirt`: hardware only).

An inspection reads the models' state and never changes it: it reads tables straight
from memory and decodes them, bypassing every cache (the SMMU's configuration cache
and IOTLB, the ITS's translation cache, the redistributors' property cache are read,
never filled), and calls nothing that counts, records or traces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union, cast

from .core import gic_formats as F
from .errors import InvalidArgument
from .hw import its as I
from .hw import pci as P
from .hw import smmuv3_regs as R
from .hw.gicv3 import LPI_BASE, PENDBASER_PA, PROPBASER_PA
from .hw.its import GicV3Its
from .hw.pci import PciFunction, PciHost
from .hw.smmuv3 import SMMUv3, _ConfigError

if TYPE_CHECKING:
    from .hw.pci import PciFunction
    from .kernel.kernel import Kernel
    from .kernel.pci import PciDev
    from .machine import ArmVirt, VirtualMachine, X86Pc

#: what a view inspects: a booted VirtualMachine, a kernel, or a bare machine
Target = Union["VirtualMachine", "Kernel", "ArmVirt", "X86Pc"]
#: a PCI function as :func:`info_irq` takes it: the function model, the kernel's pci_dev, its
#: requester ID as "bus:dev.fn", or the index of a described device
DeviceRef = Union["PciFunction", "PciDev", str, int]

__all__ = ["Hex", "Row", "Target", "View", "info_iotlb", "info_irq", "info_its", "info_mtree",
           "info_pci", "VIEWS"]


class Hex(int):
    """An int that prints in hex (addresses, table words, register values)."""

    def __repr__(self) -> str:
        return f"{int(self):#x}"

    __str__ = __repr__


@dataclass
class Row:
    """One line of a view: a hop of an interrupt's path, a region, a cache entry.

    ``name`` says what it is, ``address`` where it lives (None: nowhere in memory),
    ``fields`` what it holds (addresses as :class:`Hex`), ``depth`` its nesting (mtree).
    """

    name: str
    address: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    depth: int = 0
    note: str = ""

    def __post_init__(self) -> None:
        if self.address is not None and not isinstance(self.address, Hex):
            self.address = Hex(self.address)         # prints in hex, as the fields do

    def text(self) -> str:
        """The row as one line."""
        head = "  " * self.depth + self.name
        at = f" @ {self.address:#x}" if self.address is not None else ""
        body = " ".join(f"{k}={_fmt(v)}" for k, v in self.fields.items())
        note = f"  ({self.note})" if self.note else ""
        return f"{head}{at}{':  ' if body else ''}{body}{note}"


@dataclass
class View:
    """What one ``info`` command shows: a title and rows (``str()``: the text).

    On a :class:`~pymsi.machine.VirtualMachine` a row's name starts with the side it
    belongs to: ``"host: "`` (the host's function, SMMU, ITS, kernel), ``"kvm: "``
    (KVM's irqfd, route and vITS entry) or ``"guest: "`` (the guest's function and
    kernel) -- ``view.find("ITS ITTE", side="host")`` is the row ``"host: ITS ITTE"``.
    On a kernel or a bare machine there is one side and no prefix.
    """

    title: str
    rows: list[Row] = field(default_factory=list)

    def text(self) -> str:
        """The view as text, one row a line under the title."""
        return "\n".join([self.title] + ["  " + r.text() for r in self.rows]) + "\n"

    __str__ = text

    SIDES = ("host", "kvm", "guest")

    def find(self, name: str, side: str | None = None) -> Row:
        """The first row called ``name``, or with ``side`` (``"host"``, ``"kvm"``,
        ``"guest"``) the first row called ``"<side>: <name>"``.  KeyError if none
        (naming the sides that have such a row); InvalidArgument for another side."""
        if side is not None and side not in self.SIDES:
            raise InvalidArgument(f"side must be one of {', '.join(self.SIDES)}, "
                                  f"not {side!r}")
        want = name if side is None else f"{side}: {name}"
        for r in self.rows:
            if r.name == want:
                return r
        sides = [s for s in self.SIDES if any(r.name == f"{s}: {name}" for r in self.rows)]
        raise KeyError(f"no row {want!r}" +
                       (f" (rows of a whole machine name their side: side="
                        f"{' / '.join(repr(s) for s in sides)})" if sides and side is None
                        else ""))

    def names(self) -> list[str]:
        """The rows' names, in order."""
        return [r.name for r in self.rows]


def _fmt(v: Any) -> str:
    if isinstance(v, (set, frozenset)):
        return "{" + ",".join(str(x) for x in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(int(v))
    return str(v)


# -- what a target is made of ------------------------------------------------------------


@dataclass
class _Side:
    """One address space of a target: a kernel (or None) and the bus it runs on."""

    label: str
    kernel: Any
    bus: Any

    def models(self, cls: type) -> list[Any]:
        return [w.model for w in self.bus.windows if isinstance(w.model, cls)]

    def window_of(self, model: Any) -> Any:
        for w in self.bus.windows:
            if w.model is model:
                return w
        return None

    @property
    def pci(self) -> PciHost | None:
        hosts = self.models(PciHost)
        return hosts[0] if hosts else None

    @property
    def its(self) -> GicV3Its | None:
        its = self.models(GicV3Its)
        return its[0] if its else None

    def function(self, rid: int) -> PciFunction | None:
        host = self.pci
        return None if host is None else host.functions.get(rid)


def _sides(target: Target) -> list[_Side]:
    """The address spaces of ``target`` (see the module doc), host first."""
    if hasattr(target, "slots") and hasattr(target, "guest"):          # VirtualMachine
        if not getattr(target, "booted", False):
            raise InvalidArgument("boot() the machine before inspecting it")
        vm = cast("VirtualMachine", target)                             # duck-typed
        assert vm.machine is not None                                   # booted
        return [_Side("host", vm.host, vm.machine.bus),
                _Side("guest", vm.guest, vm.board.bus)]
    if hasattr(target, "irq") and hasattr(target, "bus") and hasattr(target, "online_cpus"):
        return [_Side(getattr(target, "name", "kernel"), target, target.bus)]
    if hasattr(target, "bus") and hasattr(target, "functions"):       # ArmVirt / X86Pc
        return [_Side("machine", None, target.bus)]
    raise TypeError(f"cannot inspect {type(target).__name__}: give a VirtualMachine, a "
                    "kernel or a machine")


def _read64(mem: Any, addr: int) -> int | None:
    try:
        value: int = mem.read_u64(addr)
        return value
    except (OSError, ValueError, OverflowError, TypeError):
        return None


# -- irq -----------------------------------------------------------------------------------


def _msi_descs(k: Any) -> list[tuple[int, Any]]:
    """(Linux IRQ, msi_desc) of every MSI of kernel ``k``, by IRQ number."""
    out = []
    for irq in sorted(k.irq.descs):
        md = k.irq.descs[irq].irq_data.common.msi_desc
        if md is not None:
            out.append((irq, md))
    return out


def _resolve_rid(fn: Any) -> int:
    if isinstance(fn, int) and not isinstance(fn, bool):
        return fn
    if isinstance(fn, str):                  # "00:01.0" or "0000:00:01.0"
        parts = fn.split(":")
        bus, rest = parts[-2], parts[-1]
        dev, _, func = rest.partition(".")
        return int(bus, 16) << 8 | int(dev, 16) << 3 | int(func or "0")
    rid = getattr(fn, "rid", None)
    if isinstance(rid, int):
        return rid
    raise TypeError(f"a PCI function is a PciFunction, a pci_dev, a requester ID or "
                    f"'bus:dev.fn', not {fn!r}")


def _find_irq(k: Any, rid: int, vector: int) -> int | None:
    for irq, md in _msi_descs(k):
        if getattr(md.dev, "rid", None) == rid and md.msi_index == vector:
            return irq
    return None


def _function_rows(fn: PciFunction, vector: int) -> tuple[list[Row], int | None, int | None]:
    """The function and its vector's table entry: rows, message address, data."""
    rows = [Row("PCI function", None, {"bdf": fn.bdf, "rid": Hex(fn.rid),
                                       "vendor": Hex(fn._get(P.VENDOR_ID, 2)),
                                       "device": Hex(fn._get(P.DEVICE_ID, 2)),
                                       "bus_master": bool(fn._get(P.COMMAND, 2)
                                                          & P.CMD_MASTER)})]
    if fn.msix_cap is not None and fn.msix_enabled:
        assert fn.msix is not None                      # set with msix_cap
        if not 0 <= vector < fn.msix.vectors:
            rows.append(Row("MSI-X entry", None, {"vector": vector}, note="no such vector"))
            return rows, None, None
        addr, data, ctrl = fn.msix_entry(vector)
        bar = fn.bar_address(fn.msix.bar)
        where = None if bar is None else bar + fn.msix.table_offset + vector * 16
        flags = fn._get(fn.msix_cap + P.MSIX_FLAGS, 2)
        rows.append(Row("MSI-X entry", where, {
            "vector": vector, "address": Hex(addr), "data": Hex(data),
            "masked": bool(ctrl & P.MSIX_CTRL_MASKBIT),
            "function_masked": bool(flags & P.MSIX_FLAGS_MASKALL),
            "pending": fn.msix_pending(vector)}))
        return rows, addr, data
    msg = fn.msi_message(vector) if fn.msi_cap is not None else None
    if msg is None:
        rows.append(Row("MSI", None, {"vector": vector}, note="MSI / MSI-X not enabled"))
        return rows, None, None
    assert fn.msi_cap is not None and fn.msi is not None     # msi_message gave one
    rows.append(Row("MSI capability", None, {
        "cap": Hex(fn.msi_cap), "vector": vector, "address": Hex(msg[0]),
        "data": Hex(msg[1]),
        "masked": bool(fn._msi_masks() >> vector & 1) if fn.msi.per_vector_mask else False}))
    return rows, msg[0], msg[1]


def _ste_rows(smmu: SMMUv3, sid: int) -> tuple[list[Row], Any]:
    """The STE of ``sid`` as the SMMU would fetch it (no cache): rows, decoded STE."""
    try:
        addr = smmu._ste_address(sid)
    except _ConfigError as e:
        return [Row("SMMU STE", None, {"sid": Hex(sid)}, note=e.event.name)], None
    words = smmu.read_ste(sid)
    if words is None:
        return [Row("SMMU STE", addr, {"sid": Hex(sid)}, note="not readable")], None
    fields: dict[str, Any] = {"sid": Hex(sid), "words": [Hex(w) for w in words[:4]]}
    try:
        ste = smmu._decode_ste(words)
    except _ConfigError as e:
        return [Row("SMMU STE", addr, fields, note=e.event.name)], None
    fields.update({"config": R.SteConfig(ste.config).name, "vmid": ste.vmid})
    if ste.config in (R.SteConfig.S1, R.SteConfig.NESTED):
        fields.update({"s1ctxptr": Hex(ste.s1ctxptr), "s1cdmax": ste.s1cdmax})
    if ste.s2 is not None:
        fields["s2ttb"] = Hex(ste.s2.vttb)
    return [Row("SMMU STE", addr, fields)], ste


def _smmu_rows(smmu: SMMUv3, sid: int, iova: int) -> tuple[list[Row], int | None]:
    """STE, CD and the translation of the device's write to ``iova``: rows, output PA."""
    if not smmu._cr0 & R.CR0_SMMUEN:
        return [Row("SMMU", None, {"sid": Hex(sid)}, note="SMMUEN=0: GBPA decides")], iova
    rows, ste = _ste_rows(smmu, sid)
    if ste is None:
        return rows, None
    s1 = None
    if ste.config in (R.SteConfig.ABORT,):
        rows.append(Row("SMMU translation", None, {"iova": Hex(iova)}, note="STE aborts"))
        return rows, None
    if ste.config == R.SteConfig.BYPASS:
        rows.append(Row("SMMU translation", None, {"iova": Hex(iova), "pa": Hex(iova)},
                        note="bypass"))
        return rows, iova
    asid = 0
    if ste.config in (R.SteConfig.S1, R.SteConfig.NESTED):
        try:
            cd_addr = smmu._cd_address(ste, 0)
            words = smmu._fetch(cd_addr, R.CD_SIZE, R.EventType.F_CD_FETCH)
            cd = smmu._decode_cd(words)
        except _ConfigError as e:
            rows.append(Row("SMMU CD", None, {"ssid": 0}, note=e.event.name))
            return rows, None
        s1, asid = cd.s1, cd.asid
        rows.append(Row("SMMU CD", cd_addr, {"ssid": 0, "asid": cd.asid,
                                             "ttb0": Hex(cd.s1.ttb0), "t0sz": cd.s1.tsz0,
                                             "words": [Hex(w) for w in words[:4]]}))
    w = smmu._core.walk(smmu.memory, iova, True, s1=s1, s2=ste.s2)
    cached = any(e["iova"] <= iova < e["iova"] + (1 << e["shift"]) and e["asid"] == asid
                 and e["vmid"] == ste.vmid for e in smmu.tlb.entries())
    if w.fault is not None:
        rows.append(Row("SMMU translation", None, {"iova": Hex(iova)},
                        note=f"fault {w.fault.kind.name} at level {w.fault.level}"))
        return rows, None
    fields = {"iova": Hex(iova), "pa": Hex(w.pa), "page": Hex(w.page_size),
              "level": w.level, "writable": w.writable, "in_iotlb": cached}
    if ste.s2 is not None and s1 is not None:
        fields["ipa"] = Hex(w.ipa)
    rows.append(Row("SMMU translation", None, fields))
    return rows, w.pa


def _its_rows(side: _Side, its: GicV3Its, devid: int, eventid: int) -> tuple[list[Row], Any]:
    """DTE, ITTE, the LPI's collection and redistributor: rows, (intid, cpu) or None."""
    mem = its.memory
    rows: list[Row] = []
    dte_addr = its._entry_addr(I.BaserType.DEVICES, devid) if not devid >> its.devbits \
        else None
    dte = None if dte_addr is None else _read64(mem, dte_addr)
    if dte is None or not F.DTE_V.get(dte):
        rows.append(Row("ITS DTE", dte_addr, {"device_id": Hex(devid)}, note="not mapped"))
        return rows, None
    itt, bits = F.DTE_ITT.get(dte) << 8, F.DTE_SIZE.get(dte) + 1
    rows.append(Row("ITS DTE", dte_addr, {"device_id": Hex(devid), "itt": Hex(itt),
                                          "eventid_bits": bits, "word": Hex(dte)}))
    if eventid >> bits:
        rows.append(Row("ITS ITTE", None, {"event_id": eventid}, note="EventID too wide"))
        return rows, None
    ite_addr = itt + eventid * F.ITE_SIZE
    w0, w1 = _read64(mem, ite_addr), _read64(mem, ite_addr + 8)
    if w0 is None or w1 is None or not F.ITE0_V.get(w0):
        rows.append(Row("ITS ITTE", ite_addr, {"event_id": eventid}, note="not mapped"))
        return rows, None
    intid = F.ITE0_INTID.get(w0)
    if F.ITE0_VIRTUAL.get(w0):
        vpeid = F.ITE1_VPEID.get(w1)
        rows.append(Row("ITS ITTE", ite_addr, {"event_id": eventid, "virtual": True,
                                               "vintid": intid, "vpeid": vpeid,
                                               "doorbell": F.ITE1_DOORBELL.get(w1)}))
        vpe_addr = its._entry_addr(I.BaserType.VPES, vpeid) if its.gicv4 else None
        d0 = None if vpe_addr is None else _read64(mem, vpe_addr)
        if d0 is not None and vpe_addr is not None and F.VPE0_V.get(d0):
            rows.append(Row("ITS vPE", vpe_addr, {"vpeid": vpeid,
                                                  "vpt": Hex(_read64(mem, vpe_addr + 8) or 0),
                                                  "rdbase": F.VPE0_RDBASE.get(d0)},
                            note="vLPI: delivered to the vPE, no host IRQ"))
        return rows, None
    icid = F.ITE1_ICID.get(w1)
    rows.append(Row("ITS ITTE", ite_addr, {"event_id": eventid, "intid": intid,
                                           "icid": icid}))
    cte_addr = its._entry_addr(I.BaserType.COLLECTIONS, icid) if not icid >> its.cidbits \
        else None
    cte = None if cte_addr is None else _read64(mem, cte_addr)
    if cte is None or not F.CTE_V.get(cte):
        rows.append(Row("ITS collection", cte_addr, {"icid": icid}, note="not mapped"))
        return rows, (intid, None)
    proc = F.CTE_RDBASE.get(cte)
    rows.append(Row("ITS collection", cte_addr, {"icid": icid, "rdbase": proc}))
    rd = its.gic.redistributor(proc)
    if rd is None:
        rows.append(Row("redistributor", None, {"processor": proc}, note="none"))
        return rows, (intid, None)
    prop_addr = (PROPBASER_PA.get(rd.propbaser) << 12) + intid - LPI_BASE
    pend_addr = (PENDBASER_PA.get(rd.pendbaser) << 16) + intid // 8
    prop = mem.read(prop_addr, 1)[0] if mem.is_ram(prop_addr, 1) else None
    pend = mem.read(pend_addr, 1)[0] >> intid % 8 & 1 if mem.is_ram(pend_addr, 1) else None
    lpi: dict[str, Any] = {"intid": intid}
    if prop is not None:
        lpi.update({"priority": Hex(prop & 0xFC), "enabled": bool(prop & 1),
                    "cached": rd._config.get(intid)})
    lpi.update({"pending_bit": None if pend is None else bool(pend),
                "pending_at": Hex(pend_addr)})
    rows.append(Row("LPI", prop_addr if prop is not None else None, lpi,
                    note="" if prop is not None else "property table not readable"))
    gicr = side.window_of(its.gic.gicr)
    frame = None if gicr is None else gicr.base + rd.cpu * its.gic.frame_size
    rows.append(Row("redistributor", frame, {
        "cpu": rd.cpu, "lpis_enabled": rd.lpis_enabled,
        "pending": intid in rd.pending or bool(pend),
        "propbaser": Hex(rd.propbaser), "pendbaser": Hex(rd.pendbaser)}))
    return rows, (intid, rd.cpu)


def _kernel_rows(k: Any, irq: int) -> list[Row]:
    """What kernel ``k`` knows of Linux IRQ ``irq``: its levels, handlers, affinity."""
    desc = k.irq.descs.get(irq)
    if desc is None:
        return [Row("Linux IRQ", None, {"irq": irq}, note="no such interrupt")]
    rows = []
    for d in desc.irq_data.levels():
        fields: dict[str, Any] = {"hwirq": Hex(d.hwirq),
                                  "chip": getattr(d.chip, "name", type(d.chip).__name__)}
        dev = d.chip_data
        if dev is not None and hasattr(dev, "lpi_base") and hasattr(dev, "events"):
            event = d.hwirq - dev.lpi_base
            fields.update({"device_id": Hex(dev.device_id), "event": event,
                           "col": dev.events.get(event)})
        rows.append(Row(f"irq_domain {d.domain.name if d.domain else '?'}", None, fields))
    c = desc.irq_data.common
    rows.append(Row("Linux IRQ", None, {
        "irq": irq, "actions": [a.name for a in desc.actions] or "-",
        "handlers": [getattr(a.handler, "__name__", "?") for a in desc.actions] or "-",
        "affinity": set(c.affinity), "effective": set(c.effective_affinity),
        "count": desc.count, "disabled": desc.depth > 0, "forwarded": c.forwarded_to_vcpu}))
    return rows


def _host_path(side: _Side, fn: PciFunction, vector: int, irq: int | None,
               vits: Any = None) -> list[Row]:
    """The hardware path of ``fn``'s ``vector`` on ``side``, then its kernel's view
    (``vits``: KVM's vITS, behind the guest's doorbell)."""
    rows, addr, data = _function_rows(fn, vector)
    pa = addr
    if addr is not None:
        via = side.bus.iommu_for(fn.rid)
        if via is not None and isinstance(via[0], SMMUv3):
            more, pa = _smmu_rows(via[0], via[1], addr)
            rows += more
        elif via is not None:
            rows.append(Row("IOMMU", None, {"type": type(via[0]).__name__,
                                            "mode": getattr(via[0], "mode", None),
                                            "sid": Hex(via[1])},
                            note="translation not inspected"))
            pa = None
    if pa is not None:
        win = next((w for w in side.bus.windows if w.base <= pa < w.base + w.size), None)
        if win is None:
            rows.append(Row("doorbell", pa, note="RAM or nothing: not an interrupt"))
        else:
            off = pa - win.base
            rows.append(Row("doorbell", pa, {"window": win.name, "offset": Hex(off),
                                             "device_id": Hex(fn.rid),
                                             "event_id": Hex(data or 0)}))
            if isinstance(win.model, GicV3Its) and off == I.GITS_TRANSLATER:
                more, _ = _its_rows(side, win.model, fn.rid, (data or 0) & 0xFFFF_FFFF)
                rows += more
            elif vits is not None and off == I.GITS_TRANSLATER:
                rows += _vits_rows(vits, fn.rid, (data or 0) & 0xFFFF_FFFF)
    if side.kernel is not None and irq is not None:
        rows += _kernel_rows(side.kernel, irq)
    return rows


def _vm_files(vm: Any) -> tuple[Any, Any]:
    """(KVM's VM, its vITS) of a VirtualMachine, from the VMM's descriptors."""
    fds = vm.host.files.fds
    kvm = fds.get(vm.vmm.vm_fd)
    vits = fds.get(vm.vmm.its_fd) if vm.vmm.its_fd is not None else None
    return (None if kvm is None else kvm.f_op), (None if vits is None else vits.f_op)


def _kvm_rows(vm: Any, host_irq: int | None) -> list[Row]:
    """The host handler's eventfd, its irqfd and route, the vITS's translation."""
    rows: list[Row] = []
    kvm, vits = _vm_files(vm)
    trigger = None
    if host_irq is not None:
        desc = vm.host.irq.descs.get(host_irq)
        for a in desc.actions if desc is not None else ():
            trigger = getattr(a.dev_id, "trigger", None) or trigger
    if kvm is None:
        return rows
    irqfd = next((f for f in kvm.irqfds if trigger is not None and f.eventfd is trigger), None)
    if irqfd is None:
        rows.append(Row("KVM irqfd", None, note="no irqfd on the vector's eventfd"))
        return rows
    routes = kvm.routing.get(irqfd.gsi, [])
    rows.append(Row("KVM irqfd", None, {"gsi": irqfd.gsi, "routes": len(routes)}))
    for r in routes:
        fields = {k: (Hex(v) if k in ("address", "data", "devid") else v)
                  for k, v in vars(r).items()}
        rows.append(Row("KVM route", None, fields))
        if vits is not None and hasattr(r, "devid"):
            rows += _vits_rows(vits, r.devid, r.data)
    return rows


def _vits_rows(vits: Any, devid: int, event: int) -> list[Row]:
    """KVM's vITS entry of (DeviceID, EventID): the vLPI, its collection and vCPU."""
    ite = vits._find_ite(devid, event)
    if ite is None:
        return [Row("vITS ITE", None, {"devid": Hex(devid), "event": event},
                    note="not mapped")]
    lpi = ite.irq
    return [Row("vITS ITE", None, {
        "devid": Hex(devid), "event": event, "vintid": lpi.intid,
        "collection": getattr(ite.collection, "coll_id", None),
        "vcpu": lpi.target_vcpu, "enabled": lpi.enabled, "vlpi": lpi.hw,
        "pending": lpi.pending_latch})]


def info_irq(target: Target, which: int | tuple[DeviceRef, int]) -> View:
    """One interrupt's whole path, each hop with its address and table entry.

    ``which`` is a Linux IRQ number (of the guest in a VirtualMachine, else of the
    kernel), or ``(function, vector)``: the function as a PciFunction, a pci_dev,
    ``"bus:dev.fn"``, or an int: the described device's index, the same on every
    target (a VirtualMachine's described devices; a kernel's or machine's PCI
    functions in bus order, as ``ArmVirt.functions``).  A device or vector that is
    not there is an :class:`~pymsi.errors.InvalidArgument` naming it.
    Hops: the MSI-X entry (or MSI capability), the SMMU's STE, CD and translation of
    the message address (the doorbell IOVA), the doorbell, the ITS's DTE, ITTE,
    collection, the redistributor, and the kernel's IRQ levels and handlers; in a
    VirtualMachine the host's side, then KVM's irqfd, route and vITS entry, then the
    guest's function and kernel.
    """
    sides = _sides(target)
    is_vm = len(sides) == 2
    vm = cast("VirtualMachine", target)      # used only when is_vm (duck-typed)
    rid: int                                  # both set by the branches below (else raise)
    vector: int
    irq: int | None = None
    if isinstance(which, tuple):
        ref: DeviceRef | None
        ref, vector = which
        if isinstance(ref, int) and not isinstance(ref, bool):
            # The same on every target: the index of a described device (the VM's
            # slots; the host bridge's functions in bus order, as ``m.functions``).
            funcs = [s.guest_fn for s in vm.slots] if is_vm else \
                ([] if sides[-1].pci is None else
                 [f for _, f in sorted(sides[-1].pci.functions.items())])
            if not 0 <= ref < len(funcs):
                raise InvalidArgument(
                    f"no device {ref}: an int function is the index of a described device "
                    f"(0..{len(funcs) - 1}); give a requester ID as 'bus:dev.fn'")
            ref = funcs[ref]
        rid = _resolve_rid(ref)
    elif isinstance(which, int) and not isinstance(which, bool):
        irq = which
    else:
        raise TypeError(f"which must be a Linux IRQ or (function, vector), not {which!r}")
    front = sides[-1]                        # the guest in a VM, else the only side
    k = front.kernel
    if irq is not None:
        if k is None:
            raise InvalidArgument("a machine without a kernel has no Linux IRQs: give "
                             "(function, vector)")
        desc = k.irq.descs.get(irq)
        md = None if desc is None else desc.irq_data.common.msi_desc
        if md is None:
            raise InvalidArgument(f"IRQ {irq} is not an MSI of a PCI function")
        rid, vector = md.dev.rid, md.msi_index
    elif k is not None:
        irq = _find_irq(k, rid, vector)
    title = f"irq: {'guest ' if is_vm else ''}{rid >> 8:02x}:{rid >> 3 & 31:02x}." \
            f"{rid & 7} vector {vector}" + (f", Linux IRQ {irq}" if irq is not None else "")
    view = View(title)
    fn = front.function(rid)
    if fn is not None:
        _check_vector(fn, vector)
    if is_vm:
        slot = next((s for s in vm.slots if s.guest_fn is fn), None)
        host_fn = None if slot is None else slot.host_fn
        if host_fn is not None:
            host = sides[0]
            host_irq = _find_irq(host.kernel, host_fn.rid, vector)
            hrows = _host_path(host, host_fn, vector, host_irq)
            view.rows += [_label(r, "host") for r in hrows]
            view.rows += [_label(r, "kvm") for r in _kvm_rows(target, host_irq)]
        if fn is not None and host_fn is None:       # emulated by the VMM: the guest's bus
            grows = _host_path(front, fn, vector, irq, vits=_vm_files(target)[1])
            view.rows += [_label(r, "guest") for r in grows]
            return view
        if fn is not None:                           # assigned: translated by the host SMMU
            grows, _, _ = _function_rows(fn, vector)
            view.rows += [_label(r, "guest") for r in grows]
        if irq is not None:
            view.rows += [_label(r, "guest") for r in _kernel_rows(k, irq)]
        return view
    if fn is None:
        raise InvalidArgument(f"no PCI function {rid:#x} on this machine")
    view.rows = _host_path(front, fn, vector, irq)
    return view


def _check_vector(fn: Any, vector: int) -> None:
    """InvalidArgument naming ``vector`` if ``fn`` has no such vector."""
    n = fn.msix.vectors if getattr(fn, "msix_cap", None) is not None and fn.msix else \
        fn.msi.vectors if getattr(fn, "msi_cap", None) is not None and fn.msi else 0
    if not 0 <= vector < n:
        kind = "MSI-X" if getattr(fn, "msix_cap", None) is not None else "MSI"
        raise InvalidArgument(f"{fn.bdf} has no vector {vector} ({n} {kind} vectors)")


def _label(r: Row, side: str) -> Row:
    r.name = f"{side}: {r.name}"
    return r


_MAX_RUNS = 64          # mapped ranges shown per address space


def _mapped_ranges(mem: Any, ttb: int, tsz: int, gshift: int, start: int, stage: int,
                   table_pa: Any = None) -> tuple[list[tuple[int, int, int, str]], int]:
    """The leaf mappings of a VMSAv8-64 translation table, read from ``mem``: runs of
    (input address, size, output address, "rw"/"r-"/"-w"/"--") merged where contiguous,
    at most :data:`_MAX_RUNS`, and how many runs there are in all.  ``table_pa`` turns a
    table address into a PA (stage 1 tables of a nested stream are IPAs)."""
    runs: list[list[Any]] = []
    total = 0
    out_mask = ((1 << 48) - 1) & ~((1 << gshift) - 1)
    bits = gshift - 3

    def lsb(level: int) -> int:
        return gshift + (3 - level) * bits

    def perm(d: int) -> str:
        if stage == 1:
            return "r-" if d >> 7 & 1 else "rw"
        s2ap = d >> 6 & 3
        return ("r" if s2ap & 1 else "-") + ("w" if s2ap & 2 else "-")

    def add(va: int, size: int, pa: int, p: str) -> None:
        nonlocal total
        if runs and runs[-1][0] + runs[-1][1] == va and runs[-1][2] + runs[-1][1] == pa \
                and runs[-1][3] == p:
            runs[-1][1] += size
            return
        total += 1
        if len(runs) < _MAX_RUNS + 1:
            runs.append([va, size, pa, p])

    def walk(table: int, level: int, base: int, n: int) -> None:
        addr = table if table_pa is None else table_pa(table)
        if addr is None:
            return
        for i in range(n):
            d = _read64(mem, addr + 8 * i)
            if d is None or not d & 1:
                continue
            va = base + (i << lsb(level))
            if level < 3 and d & 2:
                walk(d & out_mask, level + 1, va, 1 << bits)
            elif level == 3 and d & 2 or level < 3 and not d & 2:
                out = d & ((1 << 48) - 1) & ~((1 << lsb(level)) - 1)
                add(va, 1 << lsb(level), out, perm(d))

    width = 64 - tsz - lsb(start)
    walk(ttb, start, 0, 1 << max(width, 0))
    return [tuple(r) for r in runs[:_MAX_RUNS]], total


def _space_rows(smmu: SMMUv3, sid: int, depth: int) -> list[Row]:
    """The address spaces of ``sid``'s STE: stage 1 (IOVA -> IPA or PA) from its CD, and
    stage 2 (IPA -> PA), as mapped ranges."""
    try:
        ste = smmu._decode_ste(smmu.read_ste(sid) or [0] * 8)
    except _ConfigError:
        return []
    rows: list[Row] = []
    spaces: list[tuple[str, int, int, int, int, int, Callable[[int], int | None] | None]] = []
    if ste.config in (R.SteConfig.S1, R.SteConfig.NESTED):
        try:
            cd = smmu._decode_cd(smmu._fetch(smmu._cd_address(ste, 0), R.CD_SIZE,
                                             R.EventType.F_CD_FETCH))
        except _ConfigError:
            cd = None
        if cd is not None and not cd.s1.epd0:
            s2 = ste.s2

            def ipa(a: int, s2: Any = s2) -> int | None:
                if s2 is None:
                    return a
                w = smmu._core.walk(smmu.memory, a, False, s2=s2)
                return None if w.fault is not None else w.pa

            spaces.append((f"stage 1 asid={cd.asid}", cd.s1.ttb0, cd.s1.tsz0,
                           cd.s1.gshift[0], cd.s1.start_level[0], 1, ipa))
    if ste.s2 is not None:
        spaces.append((f"stage 2 vmid={ste.vmid}", ste.s2.vttb, ste.s2.tsz, ste.s2.gshift,
                       ste.s2.start_level, 2, None))
    for name, ttb, tsz, g, start, stage, table_pa in spaces:
        ranges, total = _mapped_ranges(smmu.memory, ttb, tsz, g, start, stage, table_pa)
        rows.append(Row(name, ttb, {"ranges": total}, depth=depth,
                        note=f"first {len(ranges)} shown" if total > len(ranges) else ""))
        for va, size, pa, p in ranges:
            rows.append(Row(f"{va:016x}-{va + size - 1:016x} -> {pa:#x} {p}", None,
                            depth=depth + 1))
    return rows


# -- mtree ---------------------------------------------------------------------------------


def info_mtree(target: Target) -> View:
    """The address spaces (QEMU's ``info mtree``): each bus's RAM and MMIO windows with
    their ranges and names, overlaps flagged (the PCI functions' BARs among them); each
    IOMMU's StreamID range and, per function, its STE and the ranges its stage 1 (IOVA ->
    IPA or PA) and stage 2 (IPA -> PA) tables map, read from the tables in memory."""
    view = View("mtree")
    for side in _sides(target):
        regions = [(b, b + s - 1, "ram", "RAM") for b, s in side.bus.ram.regions]
        regions += [(w.base, w.base + w.size - 1, "i/o", w.name) for w in side.bus.windows]
        regions.sort()
        view.rows.append(Row(f"address-space: {side.label} memory", None,
                             {"regions": len(regions)}))
        last_end = -1
        for lo, hi, kind, name in regions:
            note = "overlaps the previous region" if lo <= last_end else ""
            view.rows.append(Row(f"{lo:016x}-{hi:016x} ({kind}) {name}", None, depth=1,
                                 note=note))
            last_end = max(last_end, hi)
        for first, last, iommu, _ in side.bus._iommus:
            view.rows.append(Row(f"address-space: {side.label} {type(iommu).__name__}", None,
                                 {"rids": f"{first:#06x}-{last:#06x}"}))
            host = side.pci
            for rid, fn in sorted((host.functions if host else {}).items()):
                if not first <= rid <= last:
                    continue
                view.rows.append(Row(f"{fn.bdf} sid={side.bus.iommu_for(rid)[1]:#x}", None,
                                     depth=1))
                if isinstance(iommu, SMMUv3):
                    sid = side.bus.iommu_for(rid)[1]
                    rows, _ = _ste_rows(iommu, sid)
                    for r in rows:
                        r.depth = 2
                    view.rows += rows + _space_rows(iommu, sid, 2)
    return view


# -- iotlb ---------------------------------------------------------------------------------


def info_iotlb(target: Target) -> View:
    """The SMMUs' IOTLB entries (ASID, VMID, IOVA, size, permissions, output), newest
    first, read without touching the CLOCK reference bits."""
    view = View("iotlb")
    for side in _sides(target):
        for smmu in side.models(SMMUv3):
            entries = smmu.tlb.entries()
            view.rows.append(Row(f"{side.label} SMMUv3", side.window_of(smmu).base,
                                 {"entries": len(entries)}))
            for e in entries:
                size = 1 << e["shift"]
                perm = "r" + ("w" if e["s1_writable"] and (e["s2_writable"] or not e["vmid"])
                              else "-")
                view.rows.append(Row("entry", None, {
                    "asid": e["asid"], "vmid": e["vmid"], "iova": Hex(e["iova"]),
                    "size": Hex(size), "pa": Hex(e["pa"]), "perm": perm,
                    "global": bool(e["is_global"]), "kind": e["kind"]}, depth=1))
    return view


# -- its -----------------------------------------------------------------------------------


def info_its(target: Target) -> View:
    """The ITSs' devices (DTE: ITT, EventID bits), their ITTEs (EventID -> LPI,
    collection, or vLPI) and the collections (ICID -> redistributor), read from the
    tables in memory, and each kernel's view (its ITS driver's devices and events)."""
    view = View("its")
    for side in _sides(target):
        its = side.its
        if its is not None:
            w = side.window_of(its)
            view.rows.append(Row(f"{side.label} ITS", w.base, {
                "enabled": bool(its.ctlr & 1), "devbits": its.devbits,
                "cidbits": its.cidbits, "gicv4": its.gicv4}))
            kits = getattr(side.kernel, "its", None) if side.kernel is not None else None
            known = sorted(getattr(kits, "devices", {}) or {})
            host = side.pci
            candidates = sorted(set(known) | set(host.functions if host else ()))
            for devid in candidates:
                rows, _ = _its_rows(side, its, devid, 0)
                dte = rows[0]
                if dte.note:
                    continue
                dte.depth = 1
                view.rows.append(dte)
                itt, bits = dte.fields["itt"], dte.fields["eventid_bits"]
                for ev in range(min(1 << bits, 2048)):
                    addr = itt + ev * F.ITE_SIZE
                    w0, w1 = _read64(its.memory, addr), _read64(its.memory, addr + 8)
                    if w0 is None or not F.ITE0_V.get(w0):
                        continue
                    f: dict[str, Any] = {"event_id": ev}
                    if F.ITE0_VIRTUAL.get(w0):
                        f.update({"vintid": F.ITE0_INTID.get(w0),
                                  "vpeid": F.ITE1_VPEID.get(w1 or 0)})
                    else:
                        f.update({"intid": F.ITE0_INTID.get(w0),
                                  "icid": F.ITE1_ICID.get(w1 or 0)})
                    view.rows.append(Row("ITTE", addr, f, depth=2))
            for icid in range(min(1 << its.cidbits, 256)):
                addr = its._entry_addr(I.BaserType.COLLECTIONS, icid)
                c = None if addr is None else _read64(its.memory, addr)
                if c is not None and F.CTE_V.get(c):
                    view.rows.append(Row("collection", addr, {
                        "icid": icid, "rdbase": F.CTE_RDBASE.get(c)}, depth=1))
        k = side.kernel
        kits = getattr(k, "its", None) if k is not None else None
        if kits is not None and hasattr(kits, "devices"):
            view.rows.append(Row(f"{side.label} kernel ITS driver", None,
                                 {"devices": len(kits.devices)}))
            for dev in kits.devices.values():
                view.rows.append(Row("its_device", dev.itt, {
                    "device_id": Hex(dev.device_id), "nr_ites": dev.nr_ites,
                    "lpi_base": dev.lpi_base, "events": dict(sorted(dev.events.items())),
                    "vlpis": sorted(dev.vlpi)}, depth=1))
        if _is_vm(target) and side.label == "host":
            _, vits = _vm_files(target)
            if vits is not None:
                view.rows.append(Row("vITS (KVM)", None, {"enabled": bool(vits.enabled),
                                                          "devices": len(vits.its_devices)}))
                for dev in vits.its_devices.values():
                    view.rows.append(Row("device", dev.itt_addr, {
                        "device_id": Hex(dev.device_id), "eventid_bits":
                        dev.num_eventid_bits, "events": {e: i.irq.intid for e, i in
                                                         sorted(dev.ites.items())}},
                        depth=1))
                for c in vits.collections.values():
                    view.rows.append(Row("collection", None, {
                        "icid": c.coll_id, "vcpu": c.target_addr}, depth=1))
    return view


def _is_vm(target: Any) -> bool:
    """Whether ``target`` is a VirtualMachine (host and guest sides)."""
    return hasattr(target, "slots") and hasattr(target, "guest")


# -- pci -----------------------------------------------------------------------------------


def info_pci(target: Target) -> View:
    """The PCI functions as ``lspci -vv`` shows their MSI / MSI-X capabilities: enable
    and mask bits, the table and PBA, every entry's address, data and mask."""
    view = View("pci")
    for side in _sides(target):
        host = side.pci
        if host is None:
            continue
        for _rid, fn in sorted(host.functions.items()):
            cmd = fn._get(P.COMMAND, 2)
            view.rows.append(Row(f"{side.label} {fn.bdf}", None, {
                "vendor": Hex(fn._get(P.VENDOR_ID, 2)), "device": Hex(fn._get(P.DEVICE_ID, 2)),
                "kind": type(fn).__name__, "mem": bool(cmd & P.CMD_MEMORY),
                "bus_master": bool(cmd & P.CMD_MASTER)}))
            for i, _bar in enumerate(fn.bars):
                a = fn.bar_address(i)
                view.rows.append(Row(f"Region {i}", a, {"size": Hex(fn.bars[i].size)},
                                     depth=1, note="" if a else "unassigned"))
            if fn.msi_cap is not None:
                assert fn.msi is not None               # set with msi_cap
                flags = fn._get(fn.msi_cap + P.MSI_FLAGS, 2)
                msg = fn.msi_message(0)
                f: dict[str, Any] = {
                    "enable": bool(flags & P.MSI_FLAGS_ENABLE), "count":
                    f"{1 << ((flags & P.MSI_FLAGS_QSIZE) >> 4)}/{fn.msi.vectors}",
                    "64bit": fn.msi.is64, "maskable": fn.msi.per_vector_mask}
                if msg is not None:
                    f.update({"address": Hex(msg[0]), "data": Hex(msg[1])})
                if fn.msi.per_vector_mask:
                    f["masks"] = Hex(fn._msi_masks())
                view.rows.append(Row(f"Capabilities: [{fn.msi_cap:x}] MSI", None, f, depth=1))
            if fn.msix_cap is not None:
                assert fn.msix is not None              # set with msix_cap
                flags = fn._get(fn.msix_cap + P.MSIX_FLAGS, 2)
                bar = fn.bar_address(fn.msix.bar)
                view.rows.append(Row(f"Capabilities: [{fn.msix_cap:x}] MSI-X", None, {
                    "enable": bool(flags & P.MSIX_FLAGS_ENABLE),
                    "masked": bool(flags & P.MSIX_FLAGS_MASKALL), "count": fn.msix.vectors,
                    "table": f"BAR{fn.msix.bar}+{fn.msix.table_offset:#x}",
                    "pba": f"BAR{fn.msix.bar}+{fn.msix.pba_offset:#x}"}, depth=1))
                for v in range(fn.msix.vectors):
                    addr, data, ctrl = fn.msix_entry(v)
                    view.rows.append(Row(f"entry {v}", None if bar is None else
                                         bar + fn.msix.table_offset + 16 * v, {
                                             "address": Hex(addr), "data": Hex(data),
                                             "masked": bool(ctrl & 1),
                                             "pending": fn.msix_pending(v)}, depth=2))
    return view


#: the views by their ``pymsi info`` name
VIEWS: dict[str, Callable[..., View]] = {
    "irq": info_irq, "mtree": info_mtree, "iotlb": info_iotlb, "its": info_its,
    "pci": info_pci}
