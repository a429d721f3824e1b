"""Benchmarks of the whole stack: host + VMM + guest (``pymsi.machine.VirtualMachine``).

    python bench/bench_vm.py [--quick] [--json bench/results-vm.json] [--compare old.json]

1. Boot time of the demo machine (``pymsi demo``'s: accelerated vSMMU, per-vector, one
   assigned device with 4 MSI-X vectors): host kernel, VMM, guest kernel and its driver.
2. One interrupt end to end, per interrupt, beside its floors measured in the same run:
   - "host-only e2e": the loop of ``bench_irq.e2e`` -- a sw-msi host VMM (``vmmlib.Vmm``),
     the function's notify, the host bus drained, the host kernel's handler (VFIO's,
     signalling an eventfd nobody waits on) and EOI;
   - "guest stack e2e GICv3 / GICv4": the physical function fires a vector and the
     machine runs until the guest's handler has taken it (SMMU, ITS, host handler ->
     eventfd -> KVM irqfd -> vITS -> vCPU's ICV acknowledge -> guest handler -> EOI; with
     GICv4 the physical ITS makes the vLPI pending and the guest takes it directly).
     Every fire is checked to have reached the guest (after the timed loops).  The C rows
     again with ``fast_idle = False`` ("every idle hook called": the machine polls every
     idle hook on every pass, as before the idle pass skipped the hooks without work).
   Each row: median over rounds, min..max and stdev, x an empty cffi call (nop4_floor);
   the guest rows also x host-only (the median over rounds of guest / host-only) and
   guest - host-only (what only the guest path adds: irqfd, vITS, idle polls, guest handler).
3. Where the time of (2) goes: one cProfile'd loop, self time by layer -- the C core
   (cffi calls made from ``pymsi.core``), ``pymsi.core``'s Python face, ``pymsi.hw``,
   ``pymsi.kernel``, ``pymsi.vmm``, the rest (machine, scheduler, trace) -- as shares.
   cProfile slows Python more than C, so the C share is a lower bound.

The loops take turns round by round (benchlib.interleaved).  Reported, never asserted.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Report, interleaved, nop4_floor, samples  # noqa: E402
from benchlib import main as bench_main

from pymsi.machine import VirtualMachine  # noqa: E402

BACKENDS = ("c", "python")
NVEC = 4
LAYERS = ("C core (cffi)", "pymsi.core (Python)", "pymsi.hw", "pymsi.kernel", "pymsi.vmm",
          "other Python")


def demo_machine(backend: str, gicv4: bool = False) -> VirtualMachine:
    """The machine ``pymsi demo`` boots (not booted)."""
    return VirtualMachine(vsmmu="accel", gicv4=gicv4, variant="per-vector",
                          devices=[{"msix": NVEC}], backend=backend)


def guest_loop(vm: VirtualMachine, n: int):
    fn = vm.host_function(0)
    run = vm.run

    def loop() -> None:
        for i in range(n):
            fn.notify(i % NVEC)
            run()
    return loop


def host_only(backend: str, n: int):
    """bench_irq.e2e's loop (a sw-msi host VMM) and a check that it delivered."""
    from pymsi.vmmlib import Vmm
    vmm = Vmm("sw-msi", smmu="s1", devices=[{"msix": 8}], backend=backend)
    vmm.bind()
    paging = vmm.hwpt_alloc(vmm.ioas)
    vmm.attach(paging, 0)
    efds = [vmm.k.eventfd() for _ in range(8)]
    assert vmm.set_triggers(0, [e.fd for e in efds]) == 0
    fn, bus, k = vmm.m.functions[0], vmm.m.bus, vmm.k

    def loop() -> None:
        for i in range(n):
            fn.notify(i & 7)
            bus.drain()
            k.handle_interrupts()

    def delivered() -> int:
        return sum(e.f_op.count for e in efds)
    return loop, delivered


def _layer(filename: str) -> str:
    f = filename.replace(os.sep, "/")
    for pkg in ("core", "hw", "kernel", "vmm"):
        if f"/pymsi/{pkg}/" in f:
            return f"pymsi.{pkg}" if pkg != "core" else "pymsi.core (Python)"
    return "other Python"


def profile_shares(backend: str, gicv4: bool, n: int) -> dict[str, float]:
    """Self time by layer of a profiled fire loop, as shares of the total."""
    vm = demo_machine(backend, gicv4).boot()
    guest_loop(vm, NVEC)()
    loop = guest_loop(vm, n)
    prof = cProfile.Profile()
    prof.enable()
    loop()
    prof.disable()
    st = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    by: dict[str, float] = dict.fromkeys(LAYERS, 0.0)
    for (filename, _line, _name), (_cc, _nc, tt, _ct, callers) in st.items():
        if filename == "~":                      # a built-in: charge it to its callers
            total = sum(c[2] for c in callers.values()) or 1.0
            for (cfile, _l, _n), c in callers.items():
                share = tt * c[2] / total
                layer = _layer(cfile)
                by["C core (cffi)" if layer == "pymsi.core (Python)" and backend == "c"
                   else layer] += share
        else:
            by[_layer(filename)] += tt
    total = sum(by.values()) or 1.0
    return {k: v / total for k, v in by.items()}


def bench(quick: bool) -> Report:
    rounds = 5 if quick else 11
    n = 200 if quick else 1000
    rep = Report("bench_vm: the whole guest stack (VirtualMachine) vs the host-only path",
                 machine_desc="VirtualMachine(vsmmu='accel', variant='per-vector', "
                 f"devices=[{{'msix': {NVEC}}}])")
    for be in BACKENDS:
        rep.add(f"boot ({be}), per machine",
                samples(lambda be=be: demo_machine(be).boot(), 1, max(3, rounds // 2)))
    loops: dict[str, tuple[Any, int]] = {"floor: empty cffi call (nop4)": (nop4_floor(n * 10),
                                                                            n * 10)}
    checks: list[tuple[str, Any, int]] = []
    for be in BACKENDS:
        hl, delivered = host_only(be, n)
        loops[f"host-only e2e ({be})"] = (hl, n)
        checks.append((f"host-only e2e ({be})", delivered, delivered()))
        for g in (False, True):
            vm = demo_machine(be, g).boot()
            loops[f"guest stack e2e GICv{4 if g else 3} ({be})"] = (guest_loop(vm, n), n)
            checks.append((f"guest stack e2e GICv{4 if g else 3} ({be})",
                           lambda vm=vm: vm.guest_handled, vm.guest_handled))
            if be == "c":                        # the same machine polling every idle hook
                vm = demo_machine(be, g).boot()
                vm.fast_idle = False
                name = f"guest stack e2e GICv{4 if g else 3} ({be}), every idle hook called"
                loops[name] = (guest_loop(vm, n), n)
                checks.append((name, lambda vm=vm: vm.guest_handled, vm.guest_handled))
    res = interleaved(loops, rounds)
    floor = "floor: empty cffi call (nop4)"
    rep.add(floor, res[floor])
    for name, _f, _b in checks:
        if name.startswith("host-only"):
            rep.add(name, res[name], floor=floor)
    for name, fn, before in checks:
        got = fn() - before
        want = (rounds + 1) * n                  # the warm-up round and the timed rounds
        assert got >= want, f"{name}: {got} delivered of {want}"
    for be in BACKENDS:
        host = res[f"host-only e2e ({be})"]
        names = [f"guest stack e2e GICv{g} ({be})" + extra for g in (3, 4)
                 for extra in (("", ", every idle hook called") if be == "c" else ("",))]
        for name in names:
            rep.add(name, res[name], floor=floor)
            rep.value(f"  {name} x host-only",
                      statistics.median(a / b for a, b in zip(res[name], host, strict=True)),
                      "median over rounds of guest / host-only (target: <= 3)")
            rep.value(f"  {name} - host-only, ns",
                      statistics.median(a - b for a, b in zip(res[name], host, strict=True)),
                      "what only the guest path adds (median over rounds)")
    for be in BACKENDS:
        for g in (False, True):
            shares = profile_shares(be, g, max(n // 4, 50))
            for layer, share in shares.items():
                rep.value(f"self time GICv{4 if g else 3} ({be}): {layer}", share,
                          "share of a cProfile'd guest loop")
    return rep


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "bench/results-vm.json", bench, argv)


if __name__ == "__main__":
    sys.exit(main())
