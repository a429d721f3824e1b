"""Benchmarks of the whole stack: host + VMM + guest (``pymsi.machine.VirtualMachine``).

    python bench/bench_vm.py [--json bench/results-vm.json] [--quick]

1. Boot time of the demo machine (``pymsi demo``'s: accelerated vSMMU, per-vector, one
   assigned device with 4 MSI-X vectors): host kernel, VMM, guest kernel and its driver.
2. Interrupts delivered end to end per second: the physical function fires a vector and
   the machine runs until the guest's handler has taken it (SMMU nested walk / IOTLB,
   ITS, host handler -> eventfd -> KVM irqfd -> vITS -> guest handler; with GICv4 the
   physical ITS makes the vLPI pending and the guest takes it directly), GICv4 off and on.
   Every fire is checked to have reached the guest (a count, after the timed loop).
3. Where the time of (2) goes: one cProfile'd loop, self time by layer -- the C core
   (cffi calls made from ``pymsi.core``), ``pymsi.core``'s Python face, ``pymsi.hw``,
   ``pymsi.kernel``, ``pymsi.vmm``, the rest (machine, scheduler, trace) -- as shares.
   cProfile slows Python more than C, so the C share is a lower bound.

Each figure is measured on both core backends (``backend="c"`` / ``"python"``) in the
same run; times are the median of several rounds with their spread (min..max); ratios
are between numbers of the same run.  Reported, never asserted.
"""

from __future__ import annotations

import cProfile
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import run_command  # noqa: E402

from pymsi.machine import VirtualMachine  # noqa: E402

BACKENDS = ("c", "python")
NVEC = 4
LAYERS = ("C core (cffi)", "pymsi.core (Python)", "pymsi.hw", "pymsi.kernel", "pymsi.vmm",
          "other Python")


def demo_machine(backend: str, gicv4: bool = False) -> VirtualMachine:
    """The machine ``pymsi demo`` boots (not booted)."""
    return VirtualMachine(vsmmu="accel", gicv4=gicv4, variant="per-vector",
                          devices=[{"msix": NVEC}], backend=backend)


def stats(samples: list[float]) -> dict[str, float]:
    """Median and spread of a list of samples."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "rounds": len(samples)}


def fire_loop(vm: VirtualMachine, n: int) -> None:
    fn = vm.host_function(0)
    run = vm.run
    for i in range(n):
        fn.notify(i % NVEC)
        run()


def bench_boot(backend: str, rounds: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        demo_machine(backend).boot()
        samples.append((time.perf_counter() - t0) * 1e3)
    return stats(samples)


def bench_rate(backend: str, gicv4: bool, rounds: int, n: int) -> dict[str, Any]:
    vm = demo_machine(backend, gicv4).boot()
    fire_loop(vm, NVEC)                          # warm: IOTLB, caches
    before = vm.guest_handled
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fire_loop(vm, n)
        samples.append(n / (time.perf_counter() - t0))
    delivered = vm.guest_handled - before
    return {**stats(samples), "delivered": delivered, "fired": rounds * n}


def _layer(filename: str) -> str:
    f = filename.replace(os.sep, "/")
    for pkg in ("core", "hw", "kernel", "vmm"):
        if f"/pymsi/{pkg}/" in f:
            return f"pymsi.{pkg}" if pkg != "core" else "pymsi.core (Python)"
    return "other Python"


def bench_profile(backend: str, gicv4: bool, n: int) -> dict[str, float]:
    """Self time by layer of a profiled fire loop, as shares of the total."""
    vm = demo_machine(backend, gicv4).boot()
    fire_loop(vm, NVEC)
    prof = cProfile.Profile()
    prof.enable()
    fire_loop(vm, n)
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


def bench(quick: bool) -> dict[str, Any]:
    rounds = 3 if quick else 7
    n = 200 if quick else 2000
    out: dict[str, Any] = {"machine": "VirtualMachine(vsmmu='accel', variant='per-vector', "
                           f"devices=[{{'msix': {NVEC}}}])",
                           "python": platform.python_version(), "cpu": platform.machine(),
                           "boot_ms": {}, "rate": {}, "profile": {}}
    for be in BACKENDS:
        out["boot_ms"][be] = bench_boot(be, rounds)
        for g in (False, True):
            key = f"{be}, gicv4 {'on' if g else 'off'}"
            out["rate"][key] = bench_rate(be, g, rounds, n)
            out["profile"][key] = bench_profile(be, g, max(n // 4, 50))
    c, py = out["rate"]["c, gicv4 off"]["median"], out["rate"]["python, gicv4 off"]["median"]
    out["ratios"] = {
        "rate c / python (gicv4 off)": c / py,
        "rate gicv4 on / off (c)": out["rate"]["c, gicv4 on"]["median"] / c,
        "boot python / c": out["boot_ms"]["python"]["median"] / out["boot_ms"]["c"]["median"],
    }
    return out


def render(r: dict[str, Any]) -> str:
    lines = [f"whole stack: {r['machine']}  (Python {r['python']}, {r['cpu']})", ""]
    lines.append(f"{'boot':28} {'median ms':>10} {'spread ms':>17}")
    for be, s in r["boot_ms"].items():
        lines.append(f"{'  backend ' + be:28} {s['median']:10.1f} "
                     f"{s['min']:8.1f}..{s['max']:<8.1f}")
    lines += ["", f"{'end to end (fire -> guest)':28} {'median /s':>10} {'spread /s':>17} "
              f"{'delivered':>12}"]
    for key, s in r["rate"].items():
        lines.append(f"{'  ' + key:28} {s['median']:10.0f} {s['min']:8.0f}..{s['max']:<8.0f} "
                     f"{s['delivered']:>6}/{s['fired']:<6}")
    lines += ["", "self time by layer (cProfile, share of the fire loop):"]
    lines.append(f"{'':28} " + " ".join(f"{k[:14]:>14}" for k in LAYERS))
    for key, shares in r["profile"].items():
        lines.append(f"{'  ' + key:28} " + " ".join(f"{shares[k]:14.1%}" for k in LAYERS))
    lines += ["", "ratios (same run):"]
    lines += [f"  {k}: {v:.2f}" for k, v in r["ratios"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_command(__doc__, "bench/results-vm.json", bench, render, argv)


if __name__ == "__main__":
    sys.exit(main())
