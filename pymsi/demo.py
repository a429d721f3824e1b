"""``pymsi demo``: the whole nested machine, one interrupt per vector, the path read from
the trace.

It boots a :class:`~pymsi.machine.VirtualMachine` (host kernel on an Arm virt board with
SMMUv3 + GICv3 ITS, the QEMU-like VMM, the guest kernel on the VMM's virtual hardware),
fires every MSI-X vector of the device, and prints per vector the path the interrupt took,
assembled from the tracepoint records the models emitted while it travelled
(:mod:`pymsi.trace`): the device's write (``msi_send_message``), the SMMU's stage-1 and
stage-2 hops (``smmuv3_translate_success`` / ``_abort`` + ``smmuv3_record_event``), the ITS
doorbell (``gicv3_its_translation_write``) and the LPI or, with GICv4, the vLPI
(``gicv3_redist_process_lpi`` / ``_vlpi``), the host's VFIO handler
(``irq_handler_entry``), KVM (``kvm_irqfd_wakeup``, ``kvm_msi_set_irq``,
``vgic_its_trigger_msi``, ``vgic_update_irq_pending``) and the guest's handler and vCPU
(``irq_handler_entry`` of the guest kernel).  Nothing in the path is fixed text: a hop
that did not happen is not shown, a fault is shown where it was recorded.

Then the guest moves every vector to another vCPU (``/proc/irq/N/smp_affinity`` in the
guest -> the guest ITS driver's MOVI -> KVM's vITS -> with GICv4 the host's VMOVI), fires
again and shows that the device's address stayed and the interrupt moved.

Under ``--vsmmu emulated`` QEMU refuses assigned devices, so the demo's device is a
VMM-emulated NIC (:mod:`pymsi.devices.nic`) whose writes the emulated vSMMU translates.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO, TypedDict, cast

from . import core, trace
from .errors import InvalidArgument
from .trace import TraceRecord

if TYPE_CHECKING:
    from .machine import ArmVirt, VirtualMachine

#: What the demo records to build the path (``--trace`` adds the user's pattern on top).
PATH_PATTERNS = ("msi_send_message,smmuv3_translate_*,smmuv3_record_event,gicv3_its_translation_*,"
                 "gicv3_redist_process_*,gicv3_its_cmd_mov*,gicv3_its_cmd_vmov*,irq_handler_entry,"
                 "kvm_irqfd_wakeup,kvm_set_irq,kvm_msi_set_irq,vgic_its_trigger_msi,"
                 "vgic_update_irq_pending,vgic_its_cmd_mov*")
VARIANTS = ("dma-cookie", "sw-msi", "preset", "per-vector")
VSMMUS = ("accel", "emulated", "none")
MAX_VECTORS = 64


class MsiWriteHop(TypedDict):
    """The device's MSI write (msi_send_message)."""

    rid: int
    vector: int
    address: int
    data: int


class TranslationHop(TypedDict):
    """The SMMU's translation of the message address: ``stage`` 0 (bypass), 1, 2 or 3
    (nested); ``s1`` / ``s2`` the (input, output) of each stage that ran."""

    unit: str
    stage: int
    iova: int
    ipa: int | None
    pa: int
    s1: tuple[int, int] | None
    s2: tuple[int, int] | None
    tlb_hit: bool


class FaultHop(TypedDict):
    """An SMMU fault that dropped the write, and whether its event was recorded."""

    unit: str
    address: int | None
    event: object
    recorded: bool


class ItsHop(TypedDict):
    """The ITS translation of the write at its doorbell: the LPI (or, GICv4, vLPI) raised,
    or the translation error."""

    doorbell: int | None
    devid: int
    eventid: int
    lpi: int | None
    cpu: int | None
    vlpi: int | None
    vlpi_redist: int | None
    error: object


class HandlerHop(TypedDict):
    """An interrupt handler run (irq_handler_entry)."""

    cpu: int | None
    irq: int
    name: str


class KvmHop(TypedDict):
    """KVM's injection: through an irqfd's GSI route, or KVM_SIGNAL_MSI."""

    gsi: int | None
    irqfd: bool
    address: int
    data: int
    devid: int


class VitsHop(TypedDict):
    """The vITS translation of the injected MSI to the guest's LPI."""

    devid: int
    eventid: int
    ret: int
    lpi: int | None
    vcpu: int | None


class InterruptPath(TypedDict):
    """One interrupt's hops as :func:`path_from_trace` reads them (None: not taken)."""

    write: MsiWriteHop | None
    translation: TranslationHop | None
    fault: FaultHop | None
    its: ItsHop | None
    host_handler: HandlerHop | None
    kvm: KvmHop | None
    vits: VitsHop | None
    guest_handler: HandlerHop | None
    #: how many guest handlers ran (exactly once is delivery)
    guest_handlers: int


class MachineArgs(TypedDict):
    """The :class:`~pymsi.machine.VirtualMachine` keywords the demo ran."""

    vsmmu: str | None
    gicv4: bool
    variant: str
    devices: list[dict[str, object]]


class VectorFacts(TypedDict):
    """One vector's first fire: the guest's IRQ, MSI message and vCPU, the path taken, and
    the records the user's ``--trace`` pattern asked for."""

    vector: int
    guest_irq: int | None
    guest_msi: dict[str, int] | None
    guest_cpu: int | None
    path: InterruptPath
    trace: list[TraceRecord]


class MoveFacts(TypedDict):
    """One vector moved to another vCPU through /proc, then fired again."""

    vector: int
    guest_irq: int
    from_vcpu: int
    to_vcpu: int
    affinity_mask: int
    commands: list[dict[str, object]]
    guest_msi: dict[str, int] | None
    path: InterruptPath
    trace: list[TraceRecord]


class Verdict(TypedDict):
    """What the run shows (:func:`judge`)."""

    vectors: int
    delivered: int
    moved: int
    address_stayed: int
    faults: int
    ok: bool


class _FactsBase(TypedDict):
    backend: str
    machine: MachineArgs
    host_doorbell: int
    vectors: list[VectorFacts]
    moves: list[MoveFacts]


class DemoFacts(_FactsBase, total=False):
    """What :func:`collect` returns (ints, not yet formatted); ``verdict`` once judged."""

    verdict: Verdict



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, on ``parser`` (the ``pymsi demo`` sub-command)."""
    parser.add_argument("--variant", choices=VARIANTS, default="per-vector",
                        help="the MSI address design of the host kernel and VMM")
    parser.add_argument("--vsmmu", choices=VSMMUS, default="accel",
                        help="the guest's vSMMU: accelerated (nested), emulated, none")
    parser.add_argument("--gicv4", action="store_true",
                        help="a GICv4 host: vLPIs injected directly, no host handler")
    parser.add_argument("--vectors", type=_vectors, default=4, metavar="N",
                        help=f"MSI-X vectors of the device (1..{MAX_VECTORS}, default 4)")
    parser.add_argument("--trace", metavar="PATTERN", default=None, type=_patterns,
                        help="also print the raw trace records matching PATTERN "
                        "(globs, comma separated, e.g. 'smmuv3_*,kvm_*')")
    parser.add_argument("--json", action="store_true", help="the same facts as JSON")


def _vectors(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= n <= MAX_VECTORS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_VECTORS}, not {n}")
    return n


_PATTERN = re.compile(r"-?[a-z0-9_*?\[\]!]+\Z")


def _patterns(text: str) -> str:
    parts = [p.strip() for p in text.split(",")]
    bad = [p for p in parts if not _PATTERN.match(p)]
    if bad:
        raise argparse.ArgumentTypeError(f"bad trace pattern {bad[0]!r} (globs of tracepoint "
                                         "names, comma separated)")
    return ",".join(parts)


def h(x: int | None) -> str | None:
    """Every address and number in the demo's one hex format (``0x%x``)."""
    return None if x is None else f"{x:#x}"


# -- from trace records to a path ------------------------------------------------------------


def _first(recs: list[TraceRecord], name: str, **match: Any) -> dict[str, Any] | None:
    for r in recs:
        if r.name == name and all(r.fields.get(k) == v for k, v in match.items()):
            return r.fields
    return None


def _all(recs: list[TraceRecord], name: str, **match: Any) -> list[dict[str, Any]]:
    return [r.fields for r in recs
            if r.name == name and all(r.fields.get(k) == v for k, v in match.items())]


def path_from_trace(recs: list[TraceRecord], smmu_unit: str) -> InterruptPath:
    """The hops one interrupt took, read from the records of its run (see the module doc).
    Every key is present; a hop that did not happen is None (addresses are ints here)."""
    send = _first(recs, "msi_send_message")
    p: InterruptPath = {"write": None, "translation": None, "fault": None, "its": None,
                         "host_handler": None, "kvm": None, "vits": None, "guest_handler": None,
                         "guest_handlers": 0}
    if send is None:
        return p
    p["write"] = {"rid": send["rid"], "vector": send["vector"], "address": send["address"],
                  "data": send["data"]}
    t = _first(recs, "smmuv3_translate_success", sid=send["rid"], iova=send["address"])
    if t is not None:
        stage = t["stage"]
        p["translation"] = {
            "unit": smmu_unit, "stage": stage, "iova": t["iova"],
            "ipa": t["ipa"] if stage in (1, 3) else None, "pa": t["translated"],
            "s1": (t["iova"], t["ipa"]) if stage in (1, 3) else None,
            "s2": (t["ipa"] if stage == 3 else t["iova"], t["translated"]) if stage in (2, 3)
            else None,
            "tlb_hit": t["tlb_hit"]}
    elif _first(recs, "smmuv3_translate_bypass", sid=send["rid"]) is not None:
        p["translation"] = {"unit": smmu_unit, "stage": 0, "iova": send["address"], "ipa": None,
                            "pa": send["address"], "s1": None, "s2": None, "tlb_hit": False}
    ab = _first(recs, "smmuv3_translate_abort", sid=send["rid"])
    if ab is not None or (ab := _first(recs, "smmuv3_translate_disable", sid=send["rid"])):
        ev = _first(recs, "smmuv3_record_event", sid=send["rid"])
        p["fault"] = {"unit": smmu_unit, "address": ab.get("addr"),
                      "event": ab.get("event") or (ev or {}).get("type"),
                      "recorded": bool(ev and ev["recorded"])}
    w = _first(recs, "gicv3_its_translation_write")
    if w is not None:
        lpi = _first(recs, "gicv3_redist_process_lpi", level=1)
        vlpi = _first(recs, "gicv3_redist_process_vlpi", level=1)
        p["its"] = {"doorbell": p["translation"]["pa"] if p["translation"] else None,
                    "devid": w["requester_id"], "eventid": w["data"],
                    "lpi": lpi["irq"] if lpi else None, "cpu": lpi["cpu"] if lpi else None,
                    "vlpi": vlpi["irq"] if vlpi else None,
                    "vlpi_redist": vlpi["cpu"] if vlpi else None,
                    "error": (_first(recs, "gicv3_its_translation_error") or {}).get("error")}
    hh = _first(recs, "irq_handler_entry", kernel="host")
    if hh is not None:
        p["host_handler"] = {"cpu": hh["cpu"], "irq": hh["irq"], "name": hh["name"]}
    msi = _first(recs, "kvm_msi_set_irq")
    if msi is not None:
        wake = _first(recs, "kvm_irqfd_wakeup")
        p["kvm"] = {"gsi": wake["gsi"] if wake else None, "irqfd": wake is not None,
                    "address": msi["address"], "data": msi["data"], "devid": msi["devid"]}
    trig = _first(recs, "vgic_its_trigger_msi")
    if trig is not None:
        pend = _first(recs, "vgic_update_irq_pending")
        p["vits"] = {"devid": trig["device_id"], "eventid": trig["event_id"], "ret": trig["ret"],
                     "lpi": pend["irq"] if pend else None,
                     "vcpu": pend["vcpu_id"] if pend else None}
    gh = _all(recs, "irq_handler_entry", kernel="guest")
    p["guest_handlers"] = len(gh)
    if gh:
        p["guest_handler"] = {"cpu": gh[0]["cpu"], "irq": gh[0]["irq"], "name": gh[0]["name"]}
    return p


def describe_path(p: InterruptPath) -> list[str]:
    """The path as lines of text (one hop a line, the tracepoints it came from in [])."""
    out: list[str] = []
    w = p["write"]
    if w is None:
        return ["no MSI write was traced (the vector is masked or not enabled)"]
    out.append(f"device rid {h(w['rid'])} writes data {h(w['data'])} to IOVA "
               f"{h(w['address'])}  [msi_send_message]")
    t = p["translation"]
    if t is not None:
        tlb = ", IOTLB hit" if t["tlb_hit"] else ""
        s1, s2 = t["s1"] or (None, None), t["s2"] or (None, None)   # (set for its stages)
        if t["stage"] == 3:
            out.append(f"{t['unit']} stage 1 (guest's tables): IOVA {h(s1[0])} -> IPA "
                       f"{h(s1[1])}  [smmuv3_translate_success]")
            out.append(f"{t['unit']} stage 2 (host IOAS): IPA {h(s2[0])} -> PA "
                       f"{h(s2[1])}{tlb}")
        elif t["stage"] == 2:
            out.append(f"{t['unit']} stage 2: IPA {h(s2[0])} -> PA {h(s2[1])}{tlb}"
                       "  [smmuv3_translate_success]")
        elif t["stage"] == 1:
            out.append(f"{t['unit']} stage 1 only: IOVA {h(t['iova'])} -> {h(t['pa'])}{tlb}"
                       "  [smmuv3_translate_success]")
        else:
            out.append(f"{t['unit']} bypass: {h(t['pa'])}  [smmuv3_translate_bypass]")
    f = p["fault"]
    if f is not None:
        rec = "recorded in the event queue" if f["recorded"] else "NOT recorded"
        out.append(f"{f['unit']} FAULT {f['event']} at {h(f['address'])}, write dropped, "
                   f"{rec}  [smmuv3_translate_abort, smmuv3_record_event]")
    i = p["its"]
    if i is not None:
        if i["vlpi"] is not None:
            out.append(f"ITS doorbell {h(i['doorbell'])}: DeviceID {h(i['devid'])} EventID "
                       f"{h(i['eventid'])} -> vLPI {i['vlpi']} (GICv4, straight to the vPE, "
                       f"redistributor of CPU {i['vlpi_redist']})  "
                       "[gicv3_its_translation_write, gicv3_redist_process_vlpi]")
        elif i["lpi"] is not None:
            out.append(f"ITS doorbell {h(i['doorbell'])}: DeviceID {h(i['devid'])} EventID "
                       f"{h(i['eventid'])} -> LPI {i['lpi']} on CPU {i['cpu']}  "
                       "[gicv3_its_translation_write, gicv3_redist_process_lpi]")
        else:
            out.append(f"ITS doorbell {h(i['doorbell'])}: DeviceID {h(i['devid'])} EventID "
                       f"{h(i['eventid'])} -> no interrupt ({i['error']})  "
                       "[gicv3_its_translation_write]")
    hh = p["host_handler"]
    if hh is not None:
        out.append(f"host handler {hh['name']} (IRQ {hh['irq']}) on CPU {hh['cpu']}"
                   "  [irq_handler_entry host]")
    k = p["kvm"]
    if k is not None:
        if k["irqfd"]:
            out.append(f"eventfd -> KVM irqfd GSI {k['gsi']} -> MSI route address "
                       f"{h(k['address'])} data {h(k['data'])} devid {h(k['devid'])}  "
                       "[kvm_irqfd_wakeup, kvm_msi_set_irq]")
        else:
            out.append(f"VMM -> KVM_SIGNAL_MSI address {h(k['address'])} data {h(k['data'])} "
                       f"devid {h(k['devid'])}  [kvm_msi_set_irq]")
    v = p["vits"]
    if v is not None:
        to = f"LPI {v['lpi']} on vCPU {v['vcpu']}" if v["lpi"] is not None else \
            f"nothing (ret {v['ret']})"
        out.append(f"vITS: DeviceID {h(v['devid'])} EventID {h(v['eventid'])} -> {to}"
                   "  [vgic_its_trigger_msi, vgic_update_irq_pending]")
    g = p["guest_handler"]
    if g is not None:
        out.append(f"guest handler {g['name']} (IRQ {g['irq']}) on vCPU {g['cpu']}"
                   "  [irq_handler_entry guest]")
    else:
        out.append("guest handler: NOT REACHED (no delivery)")
    return out


# -- the run -------------------------------------------------------------------------------


def _machine_args(variant: str, vsmmu: str, gicv4: bool, vectors: int) -> MachineArgs:
    if vsmmu == "emulated":                    # QEMU: no assigned device behind it
        dev: dict[str, object] = {"model": "nic", "queues": vectors, "emulated": True}
    else:
        dev = {"msix": vectors}
    return {"vsmmu": None if vsmmu == "none" else vsmmu, "gicv4": gicv4, "variant": variant,
            "devices": [dev]}


def _jsonable(x: Any) -> Any:
    """Ints that are addresses as 0x%x strings, for the JSON output."""
    if isinstance(x, dict):
        return {k: (h(v) if _is_addr(k) and isinstance(v, int) and not isinstance(v, bool)
                    else _jsonable(v)) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


_ADDR_KEYS = ("address", "iova", "ipa", "pa", "doorbell", "rid", "devid", "data", "eventid")


def _is_addr(key: str) -> bool:
    return key in _ADDR_KEYS


def collect(variant: str = "per-vector", vsmmu: str = "accel", gicv4: bool = False,
            vectors: int = 4, trace_pattern: str | None = None,
            on_boot: Callable[[], None] | None = None) -> DemoFacts:
    """Run the demo and return its facts (ints, not yet formatted): the machine, per
    vector its path, the affinity move and the path after it, and the verdicts."""
    from .machine import VirtualMachine

    margs = _machine_args(variant, vsmmu, gicv4, vectors)
    vm = VirtualMachine(**margs)
    vm.boot()
    if on_boot is not None:
        on_boot()
    unit = "vSMMU (emulated)" if vsmmu == "emulated" else "host SMMUv3"
    fn = vm.function(0)
    pdev = vm.slots[0].guest_pdev
    ep = vm.endpoint(0)
    patterns = PATH_PATTERNS + ("," + trace_pattern if trace_pattern else "")
    user = [p.strip() for p in (trace_pattern or "").split(",") if p.strip()]

    def fire(v: int) -> tuple[InterruptPath, list[TraceRecord]]:
        with trace.record(patterns, clock=vm.sched.now) as rec:
            fn.notify(v)
            vm.run()
        raw = [r for r in rec if any(fnmatch.fnmatchcase(r.name, u.lstrip("-"))
                                     for u in user if not u.startswith("-"))]
        return path_from_trace(list(rec), unit), raw

    def guest_msg(v: int) -> dict[str, int] | None:
        desc = pdev.msi_descs[v] if pdev is not None and v < len(pdev.msi_descs) else None
        return None if desc is None else {"address": desc.msg.address, "data": desc.msg.data}

    ncpus = vm.desc["guest_ncpus"]
    per_vector: list[VectorFacts] = []
    for v in range(vectors):
        irq = ep.irqs[v] if ep is not None else None
        before = vm.guest_cpu_of(0, v) if ep is not None else None
        path, raw = fire(v)
        per_vector.append({"vector": v, "guest_irq": irq, "guest_msi": guest_msg(v),
                           "guest_cpu": before, "path": path, "trace": raw})
    moves: list[MoveFacts] = []
    for pv in per_vector:
        v, girq = pv["vector"], pv["guest_irq"]
        if girq is None:
            continue
        frm = vm.guest_cpu_of(0, v)
        target = (frm + 1) % ncpus
        with trace.record(PATH_PATTERNS, clock=vm.sched.now) as rec:
            vm.set_guest_affinity(0, v, target)
            vm.run()
        cmds = [{"name": r.name, **r.fields} for r in rec
                if r.name.startswith(("vgic_its_cmd_", "gicv3_its_cmd_"))]
        path, raw = fire(v)
        moves.append({"vector": v, "guest_irq": girq, "from_vcpu": frm, "to_vcpu": target,
                      "affinity_mask": 1 << target, "commands": cmds,
                      "guest_msi": guest_msg(v), "path": path, "trace": raw})
    facts: DemoFacts = {"backend": core.BACKEND, "machine": margs,
                        "host_doorbell": _host_doorbell(vm), "vectors": per_vector,
                        "moves": moves}
    facts["verdict"] = judge(facts)
    return facts


def _host_doorbell(vm: VirtualMachine) -> int:
    """GITS_TRANSLATER of the host's ITS: its base on the host board + the register's
    offset in the ITS frame."""
    from .hw.its import GITS_TRANSLATER

    m = cast("ArmVirt", vm.machine)            # booted
    return m.ITS + GITS_TRANSLATER


def judge(facts: DemoFacts) -> Verdict:
    """What the run shows: delivered exactly once per fire, on the vCPU the guest chose,
    the device's address unchanged by the moves."""
    vecs, moves = facts["vectors"], facts["moves"]
    delivered = sum(1 for pv in vecs if pv["path"]["guest_handlers"] == 1)
    moved = sum(1 for m in moves
                if m["path"]["guest_handler"] is not None
                and m["path"]["guest_handler"]["cpu"] == m["to_vcpu"] != m["from_vcpu"])
    stayed = sum(1 for pv, m in zip(vecs, moves, strict=False)
                 if pv["path"]["write"] and m["path"]["write"]
                 and pv["path"]["write"]["address"] == m["path"]["write"]["address"]
                 and pv["guest_msi"] == m["guest_msi"])
    faults = sum(1 for pv in vecs + moves if pv["path"]["fault"] is not None)
    n = len(vecs)
    return {"vectors": n, "delivered": delivered, "moved": moved, "address_stayed": stayed,
            "faults": faults, "ok": delivered == n and moved == len(moves) == n
            and stayed == n}


def render(facts: DemoFacts, out: TextIO) -> None:
    """The facts as text."""
    p = out.write
    m = facts["machine"]
    p(f"host doorbell GITS_TRANSLATER: PA {h(facts['host_doorbell'])}\n")
    for pv in facts["vectors"]:
        gm = pv["guest_msi"]
        gtxt = f"address {h(gm['address'])} data {h(gm['data'])}" if gm else "none"
        p(f"\nvector {pv['vector']}: guest IRQ {pv['guest_irq']}, the guest driver's MSI "
          f"{gtxt}, affinity vCPU {pv['guest_cpu']}\n")
        for line in describe_path(pv["path"]):
            p(f"  {line}\n")
        for r in pv["trace"]:
            p(f"    trace: {r.to_json()}\n")
    if facts["moves"]:
        p("\nthe guest moves each vector to another vCPU, then the device fires again:\n")
    for mv in facts["moves"]:
        cmds = ", ".join(
            f"{c['name']}(" + " ".join(f"{k}={h(v) if isinstance(v, int) else v}"
                                       for k, v in c.items() if k != "name") + ")"
            for c in mv["commands"]) or "no ITS command traced"
        p(f"\nvector {mv['vector']}: echo {mv['affinity_mask']:x} > "
          f"/proc/irq/{mv['guest_irq']}/smp_affinity (vCPU {mv['from_vcpu']} -> "
          f"{mv['to_vcpu']}): {cmds}\n")
        before = next(pv for pv in facts["vectors"] if pv["vector"] == mv["vector"])
        a0 = before["path"]["write"]["address"] if before["path"]["write"] else None
        a1 = mv["path"]["write"]["address"] if mv["path"]["write"] else None
        same = "unchanged" if a0 == a1 and before["guest_msi"] == mv["guest_msi"] else "CHANGED"
        g = mv["path"]["guest_handler"]
        where = f"guest handler on vCPU {g['cpu']} (was {mv['from_vcpu']})" if g else \
            "NOT DELIVERED"
        p(f"  device writes {h(a1)} ({same}); {where}\n")
        for line in describe_path(mv["path"])[1:]:
            p(f"    {line}\n")
        for r in mv["trace"]:
            p(f"    trace: {r.to_json()}\n")
    v = facts["verdict"]
    p(f"\nresult ({m['variant']}, vsmmu {m['vsmmu'] or 'none'}, gicv4 "
      f"{'on' if m['gicv4'] else 'off'}): {v['delivered']}/{v['vectors']} vectors delivered "
      f"exactly once, {v['moved']}/{v['vectors']} moved to the new vCPU with the address "
      f"unchanged in {v['address_stayed']}/{v['vectors']}, {v['faults']} SMMU fault(s)"
      + (" — the full path works\n" if v["ok"] else " — this configuration does not deliver; "
         "the faults above show where it breaks\n"))


def to_json(facts: DemoFacts) -> dict[str, object]:
    """The facts as JSON-ready data (addresses as 0x%x strings, trace records as dicts)."""
    def recs(rs: list[TraceRecord]) -> list[dict[str, Any]]:
        return [json.loads(r.to_json()) for r in rs]

    out: dict[str, object] = dict(facts)
    out["host_doorbell"] = h(facts["host_doorbell"])
    out["vectors"] = [{**_jsonable({k: v for k, v in pv.items() if k != "trace"}),
                       "trace": recs(pv["trace"])} for pv in facts["vectors"]]
    out["moves"] = [{**_jsonable({k: v for k, v in mv.items() if k != "trace"}),
                     "trace": recs(mv["trace"])} for mv in facts["moves"]]
    return out


def run(out: TextIO = sys.stdout, variant: str = "per-vector", vsmmu: str = "accel",
        gicv4: bool = False, vectors: int = 4, trace_pattern: str | None = None,
        as_json: bool = False) -> int:
    """Run the demo, writing to ``out``; returns the exit status: 1 when the per-vector
    design (this project's) fails to deliver, else 0 (a design that cannot work in a
    configuration shows how it fails -- that is the demo)."""
    if vsmmu not in VSMMUS:
        raise InvalidArgument(f"vsmmu must be one of {', '.join(VSMMUS)}, not {vsmmu!r}")
    if variant not in VARIANTS:
        raise InvalidArgument(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")

    def header() -> None:
        if not as_json:
            out.write(f"pymsi demo (backend {core.BACKEND}): {variant}, vsmmu {vsmmu}, gicv4 "
                      f"{'on' if gicv4 else 'off'}, {vectors} vector(s); booting host, VMM, "
                      "guest\n")
            out.flush()

    header()
    facts = collect(variant, vsmmu, gicv4, vectors, trace_pattern)
    if as_json:
        json.dump(to_json(facts), out, indent=2)
        out.write("\n")
    else:
        render(facts, out)
    out.flush()
    return 1 if variant == "per-vector" and not facts["verdict"]["ok"] else 0


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``pymsi demo`` from parsed options; a closed pipe (``| head``) ends it quietly."""
    out = sys.stdout if out is None else out
    try:
        return run(out, args.variant, args.vsmmu, args.gicv4, args.vectors, args.trace,
                   args.json)
    except BrokenPipeError:
        # As the CPython docs recommend for SIGPIPE: point stdout at devnull so the
        # interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
