"""Scaling benchmarks: boot and vector allocation vs vectors and devices (host, and guest
through the VMM), draining P pending interrupts vs P, IOTLB size vs working set.

    python bench/bench_scale.py [--quick] [--json out.json] [--compare previous.json]

1. Host (``ArmVirt`` + the host kernel, no SMMU): 16 devices with 1k / 4k / 16k MSI-X
   vectors in all, and 1 / 4 / 16 devices sharing 2048 vectors.  "boot" is the machine
   and the kernel's boot (enumeration included); "alloc" is a driver on every device
   calling pci_alloc_irq_vectors for all its vectors and request_irq on each; "boot +
   alloc" is both.  Rows are per vector (per device for the device rows); each size also
   gets the ratio of its total time to the smallest size's (linear: the size ratio).
2. Guest (``VirtualMachine``: host, VMM with vfio-pci and KVM routes, guest kernel and
   its pci_endpoint_test driver enabling every vector): 4 devices with 256 / 1k / 4k
   vectors in all (KVM on arm64 takes at most 4096 routes).
3. Draining P pending LPIs from one CPU interface (IAR1 + EOIR1 until spurious) for
   P = 1k, 4k, 16k: ns per interrupt.
4. IOTLB (C core): capacity 1k / 16k / 64k, working sets 0.5x / 1x / 2x the capacity,
   cyclic and random: ns per translated item (hit or miss) in ``translate_batch`` and
   the hit rate, against a bare hash probe (``probe_floor``) of the same run.
5. The vector budget: what one host vector may cost for 16k vectors booted and allocated
   to take under 10x the time of 1k (from the boot rows of the same run), what it costs,
   what it does (Python frames, bus accesses, ITS commands, counted with a profile hook)
   and what its bus accesses alone cost against an MMIO model that does nothing.

Timed rows are per unit, median and spread over rounds, with "x floor" against an empty
cffi call (``nop4_floor``) or the bare hash probe measured in the same run.  The host
allocation is also given in CPU time (``time.process_time_ns``: what the process itself
spent, steadier than the wall clock on a shared machine), against the empty cffi call in
CPU time.  Reported, never asserted.
"""

from __future__ import annotations

import array
import gc
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchlib import Report, interleaved, main, nop4_floor, probe_floor, samples  # noqa: E402

from pymsi import core  # noqa: E402

C = core.backend("c")


# -- host: boot and allocation -----------------------------------------------------------

def host_once(ndev: int, per: int, cpu: list[float] | None = None) -> tuple[float, float]:
    """ns of (boot, allocate every vector of every device); the allocation's CPU time
    (what the process itself spent, ``time.process_time_ns``) appended to ``cpu``."""
    from pymsi.kernel.drivers import MsiCountingDriver
    from pymsi.machine import ArmVirt

    gc.collect()
    t0 = time.perf_counter_ns()
    m = ArmVirt(devices=[{"msix": per} for _ in range(ndev)], smmu=None)
    k = m.boot()
    t1 = time.perf_counter_ns()
    c1 = time.process_time_ns()
    drvs = [MsiCountingDriver(k, d, per) for d in k.pci.devices]
    c2 = time.process_time_ns()
    t2 = time.perf_counter_ns()
    if sum(d.nvec for d in drvs) != ndev * per:
        raise AssertionError("not every vector was allocated")
    if cpu is not None:
        cpu.append(c2 - c1)
    return t1 - t0, t2 - t1


def cpu_floor(n: int = 20000, rounds: int = 7) -> list[float]:
    """The empty cffi call (``nop4_floor``) in CPU time: ns per call, per round."""
    loop = nop4_floor(n)
    out = []
    for _ in range(rounds):
        c0 = time.process_time_ns()
        loop()
        out.append((time.process_time_ns() - c0) / n)
    return out


def guest_once(ndev: int, per: int) -> float:
    """ns of booting the whole machine: host, VMM, guest and its driver (every vector)."""
    from pymsi.machine import VirtualMachine

    gc.collect()
    t0 = time.perf_counter_ns()
    vm = VirtualMachine(devices=[{"msix": per} for _ in range(ndev)])
    vm.boot()
    t = time.perf_counter_ns() - t0
    got = sum(len(s.test.irqs) for s in vm.slots)
    if got != ndev * per:
        raise AssertionError(f"the guest enabled {got} vectors, not {ndev * per}")
    vm.shutdown()
    return t


def scaling_rows(rep: Report, label: str, unit: str, sizes: list[int],
                 totals: dict[int, list[float]], floor: list[float], linear: str) -> None:
    """Per-unit rows (x floor against the empty cffi call) and each size's total over
    the smallest size's total (median over rounds)."""
    base = statistics.median(totals[sizes[0]])
    for size in sizes:
        per_unit = [t / size for t in totals[size]]
        rep.add(f"{label}, {size} {unit}, ns per {unit.rstrip('s')}", per_unit,
                floor="floor", floor_ns=floor)
    for size in sizes[1:]:
        rep.value(f"{label}: time {size} / {sizes[0]} {unit}",
                  statistics.median(totals[size]) / base,
                  f"linear: {size / sizes[0]:g}")


def host_rows(rep: Report, rounds: int, floor: list[float]) -> None:
    ndev = 16
    vec_sizes = [1024, 4096, 16384]
    boot: dict[int, list[float]] = {v: [] for v in vec_sizes}
    alloc: dict[int, list[float]] = {v: [] for v in vec_sizes}
    both: dict[int, list[float]] = {v: [] for v in vec_sizes}
    dev_sizes = [1, 4, 16]
    total = 2048
    dboot: dict[int, list[float]] = {d: [] for d in dev_sizes}
    dalloc: dict[int, list[float]] = {d: [] for d in dev_sizes}
    cpu: dict[int, list[float]] = {v: [] for v in vec_sizes}
    host_once(1, 8)                                     # imports, first-call costs
    for _ in range(rounds):                             # sizes take turns round by round
        for v in vec_sizes:
            b, a = host_once(ndev, v // ndev, cpu[v])
            boot[v].append(b)
            alloc[v].append(a)
            both[v].append(a + b)
        for d in dev_sizes:
            b, a = host_once(d, total // d)
            dboot[d].append(b)
            dalloc[d].append(a)
    scaling_rows(rep, "host boot, 16 devices", "vectors", vec_sizes, boot, floor, "")
    scaling_rows(rep, "host alloc + request_irq, 16 devices", "vectors", vec_sizes, alloc,
                 floor, "")
    scaling_rows(rep, "host alloc + request_irq (CPU time), 16 devices", "vectors", vec_sizes,
                 cpu, cpu_floor(), "")
    scaling_rows(rep, "host boot + alloc, 16 devices", "vectors", vec_sizes, both, floor, "")
    scaling_rows(rep, f"host boot, {total} vectors", "devices", dev_sizes, dboot, floor, "")
    scaling_rows(rep, f"host alloc + request_irq, {total} vectors", "devices", dev_sizes,
                 dalloc, floor, "")
    budget_rows(rep, boot, alloc, vec_sizes)


# -- what one vector may cost for 16k vectors to boot in under 10x the time of 1k ----------

class _NopMmio:
    """An MMIO model that does nothing: what a bus access costs before any modelling."""

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, value: int, size: int) -> None:
        pass


def vector_work(per: int = 256) -> dict[str, float]:
    """What setting up one host vector (``pci_alloc_irq_vectors`` + ``request_irq``) does,
    counted with a profile hook over one device's ``per`` vectors: Python frames in all,
    frames in ``pymsi.kernel`` and in ``pymsi.hw``, bus accesses (``Bus.read`` /
    ``Bus.write``: MMIO and the driver's RAM accesses through the bus), ITS commands."""
    from pymsi.hw.bus import Bus
    from pymsi.kernel.drivers import MsiCountingDriver
    from pymsi.machine import ArmVirt

    m = ArmVirt(devices=[{"msix": per}], smmu=None)
    k = m.boot()
    cmds0 = m.its.stats["commands"]
    bus_codes = {Bus.read.__code__, Bus.write.__code__}
    counts = {"frames": 0, "kernel frames": 0, "hw frames": 0, "bus accesses": 0}

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        counts["frames"] += 1
        fn = code.co_filename
        if "/pymsi/kernel/" in fn:
            counts["kernel frames"] += 1
        elif "/pymsi/hw/" in fn:
            counts["hw frames"] += 1
        if code in bus_codes:
            counts["bus accesses"] += 1

    sys.setprofile(hook)
    try:
        MsiCountingDriver(k, k.pci.devices[0], per)
    finally:
        sys.setprofile(None)
    out = {name: n / per for name, n in counts.items()}
    out["ITS commands"] = (m.its.stats["commands"] - cmds0) / per
    return out


def bus_floor(n: int = 20000) -> Any:
    """One ``Bus.read`` + one ``Bus.write`` to an MMIO window whose model does nothing."""
    from pymsi.machine import ArmVirt

    m = ArmVirt(devices=[], smmu=None)
    m.boot()
    bus = m.bus
    base = 0x7F00_0000
    bus.map(base, 0x1000, _NopMmio(), "nop")
    rd, wr = bus.read, bus.write

    def loop() -> None:
        for _ in range(n):
            rd(base, 4)
            wr(base, 0, 4)
    return loop


def budget_rows(rep: Report, boot: dict[int, list[float]], alloc: dict[int, list[float]],
                sizes: list[int]) -> None:
    """The per-vector cost under which 16k vectors booted and allocated take under 10x the
    time of 1k, from this run's boot times (allocation being linear, total(n) = boot(n) +
    n * v, so v < (10 boot(1k) - boot(16k)) / (16k - 10 * 1k)), next to what a vector costs
    and does now, and what its bus accesses alone cost against a model that does nothing."""
    lo, hi = sizes[0], sizes[-1]
    b_lo, b_hi = statistics.median(boot[lo]), statistics.median(boot[hi])
    budget = (10 * b_lo - b_hi) / (hi - 10 * lo)
    now = statistics.median(a / hi for a in alloc[hi])
    rep.value("vector budget: ns a vector may cost for 16k / 1k boot + alloc < 10", budget,
              f"from this run's boot: {b_lo / 1e6:.2f} ms at 1k, {b_hi / 1e6:.2f} ms at 16k")
    rep.value("vector budget: a vector's set-up now / budget", now / budget,
              f"{now / 1000:.1f} us per vector at 16k")
    work = vector_work()
    for name, n in work.items():
        rep.value(f"vector work: {name} per vector", n)
    fl = samples(bus_floor(20000), 40000, 7)
    rep.add("vector budget: bus access to a do-nothing MMIO model, ns", fl, floor="floor")
    need = work["bus accesses"] * statistics.median(fl)
    rep.value("vector budget: the bus accesses alone (count x do-nothing access) / budget",
              need / budget, f"{need / 1000:.1f} us of bus per vector before any modelling")


def guest_rows(rep: Report, rounds: int, floor: list[float], quick: bool) -> None:
    ndev = 4
    sizes = [256, 1024] if quick else [256, 1024, 4096]
    boot: dict[int, list[float]] = {v: [] for v in sizes}
    guest_once(1, 4)
    for _ in range(rounds):
        for v in sizes:
            boot[v].append(guest_once(ndev, v // ndev))
    scaling_rows(rep, "guest machine boot (host, VMM, guest, driver), 4 devices", "vectors",
                 sizes, boot, floor, "")


# -- draining ------------------------------------------------------------------------------

def drain_rows(rep: Report, rounds: int, floor: list[float]) -> None:
    """Fill P LPIs pending on one redistributor (four priorities), then acknowledge and
    EOI until spurious; ns per interrupt."""
    from hw_rig import ItsDriver, Platform

    sizes = [1024, 4096, 16384]
    totals: dict[int, list[float]] = {}
    for p in sizes:
        plat = Platform(ncpus=1)
        drv = ItsDriver(plat)
        drv.init()
        lpis = range(8192, 8192 + p)
        for lpi in lpis:
            drv.set_config(lpi, 0xA3 - 0x10 * (lpi % 4))
        rd, cpu = plat.gic.redists[0], plat.gic.cpus[0]
        rd.invalidate()
        set_pending, iar, eoi = rd.set_pending, cpu.iar1, cpu.eoir1

        def fill(lpis=lpis, set_pending=set_pending) -> None:
            for lpi in lpis:
                set_pending(lpi)

        def drain(iar=iar, eoi=eoi, p=p) -> None:
            n = 0
            while True:
                i = iar()
                if i == 1023:
                    break
                eoi(i)
                n += 1
            if n != p:
                raise AssertionError(f"drained {n} of {p}")

        totals[p] = [t * p for t in samples(drain, p, rounds, setup=fill)]
    scaling_rows(rep, "drain P pending LPIs", "interrupts", sizes, totals, floor, "")


# -- IOTLB size vs working set -------------------------------------------------------------

def iotlb_rows(rep: Report, rounds: int, quick: bool) -> None:
    from pymsi.core import IoPgtable, Prot, TableAllocator, XlateConfig

    caps = [1 << 10, 1 << 14] if quick else [1 << 10, 1 << 14, 1 << 16]
    pages = 2 * caps[-1]
    mem = C.Memory()
    mem.add_ram(0x9000_0000, 0x0400_0000)
    pt = IoPgtable(mem, TableAllocator(mem, 0x9000_0000, 0x0400_0000), fmt="s2", ias=48)
    base = 0x1_0000_0000
    # one call, output 4 KiB off a 2 MiB boundary: every page its own leaf entry
    pt.map(base, 0x8000_1000, pages * 0x1000, Prot.READ | Prot.WRITE)
    cfg = XlateConfig(s2=pt.stage2_config(), vmid=1)
    rnd = random.Random(11)
    loops: dict[str, tuple[Any, int]] = {"probe floor": (probe_floor(1 << 16), 1 << 16)}
    rates: dict[str, float] = {}
    for cap in caps:
        for frac in (0.5, 1.0, 2.0):
            ws = int(cap * frac)
            items = max(1 << 16, 4 * ws)         # every page of the working set, 4 times
            for pattern in ("cyclic", "random"):
                seq = ([base + (k % ws) * 0x1000 for k in range(items)] if pattern == "cyclic"
                       else [base + rnd.randrange(ws) * 0x1000 for _ in range(items)])
                iovas = array.array("Q", seq)
                out = array.array("Q", bytes(8 * items))
                st = array.array("i", bytes(4 * items))
                tlb = C.Iotlb(cap)
                name = f"IOTLB capacity {cap}, working set {frac:g}x, {pattern}"
                C.translate_batch(mem, cfg, iovas, out, st, tlb=tlb)     # warm
                if any(st):
                    raise AssertionError("a translation faulted")
                h0, m0 = tlb.hits, tlb.misses
                C.translate_batch(mem, cfg, iovas, out, st, tlb=tlb)
                rates[name] = (tlb.hits - h0) / max(1, tlb.hits - h0 + tlb.misses - m0)

                def loop(iovas=iovas, out=out, st=st, tlb=tlb) -> None:
                    C.translate_batch(mem, cfg, iovas, out, st, tlb=tlb)
                loops[name] = (loop, items)
    res = interleaved(loops, rounds)
    rep.add("IOTLB floor: bare hash probe (MSI compose, batch), ns per item",
            res.pop("probe floor"))
    fl = "IOTLB floor: bare hash probe (MSI compose, batch), ns per item"
    for name, ns in res.items():
        rep.add(f"{name}, ns per item", ns, floor=fl,
                note=f"steady-state hit rate {rates[name]:.3f}")
    for cap in caps:
        for frac in (0.5, 1.0, 2.0):
            for pattern in ("cyclic", "random"):
                name = f"IOTLB capacity {cap}, working set {frac:g}x, {pattern}"
                rep.value(f"{name}: hit rate", rates[name],
                          f"random replacement's ideal: {min(1.0, 1 / frac):.3f}")


def bench(quick: bool) -> Report:
    rep = Report("bench_scale: boot, allocation, draining and the IOTLB vs size",
                 quick=quick)
    rounds = 1 if quick else 3
    fl = samples(nop4_floor(20000), 20000, 7)
    rep.add("floor", fl, note="empty cffi call, 4 int args")
    host_rows(rep, rounds, fl)
    guest_rows(rep, rounds, fl, quick)
    drain_rows(rep, 3 if quick else 5, fl)
    iotlb_rows(rep, 3 if quick else 9, quick)
    return rep


if __name__ == "__main__":
    sys.exit(main(__doc__, None, bench))
