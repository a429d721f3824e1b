"""Benchmarks of the whole nested machine (pymsi.machine.VirtualMachine).

    python bench/bench_vm.py [--json bench/results-vm.json] [--quick]

1. Boot time of the demo machine (host + VMM + guest, accelerated vSMMU, one assigned
   NIC with 64 vectors and an edu), best of several boots.
2. Interrupts delivered end to end per second through the whole stack -- the physical
   function's write, the SMMU (the guest's stage 1 and the VMM's stage 2), the ITS, the
   host handler, the eventfd, KVM's irqfd, the vITS, the guest's vCPU interface and its
   handler -- with GICv3 (through KVM) and GICv4 (direct injection, no host handler),
   per design, for a batch of every vector fired then one run to quiescence.
3. Where the time goes in one such batch: the share spent inside the C core (the cffi
   extension's functions) against the Python layers (hardware models, kernel, VMM),
   from a profile of the run (C backend only).

Best of several repetitions; targets reported, never asserted.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import run_command  # noqa: E402

from pymsi import core  # noqa: E402
from pymsi.machine import VirtualMachine  # noqa: E402

DEMO = {"vsmmu": "accel", "devices": [{"model": "nic", "queues": 64}, {"model": "edu"}],
        "guest_ncpus": 4}


def boot(**kw: Any) -> VirtualMachine:
    return VirtualMachine(**{**DEMO, **kw}).boot()


def fire_all(vm: VirtualMachine) -> int:
    n = 0
    for i, s in enumerate(vm.slots):
        fn = vm.host_function(i)
        for v in range(s.test.nvec):
            fn.notify(v)
            n += 1
    return n


def irqs_per_second(vm: VirtualMachine, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fire_all(vm)
        got = vm.run()
        dt = time.perf_counter() - t0
        assert got == n, (got, n)
        best = min(best, dt / n)
    return 1 / best


def c_share(vm: VirtualMachine) -> float:
    """The fraction of one fire-all + run spent in the C extension's functions."""
    prof = cProfile.Profile()
    prof.enable()
    fire_all(vm)
    vm.run()
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt or 1e-12
    c_time = sum(tt for (fname, _, func), (_, _, tt, _, _) in st.stats.items()
                 if fname == "~" and "pymsi._core_c." in func)
    return c_time / total


def bench(quick: bool) -> dict[str, Any]:
    repeat = 2 if quick else 5
    out: dict[str, Any] = {"backend": core.BACKEND, "results": []}
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        boot()
        best = min(best, time.perf_counter() - t0)
    out["results"].append({"what": "boot of the demo machine (s)", "value": round(best, 3)})
    for design in ("per-vector", "sw-msi"):
        for gicv4 in (False, True):
            vm = boot(variant=design, gicv4=gicv4)
            rate = irqs_per_second(vm, repeat)
            out["results"].append({"what": f"interrupts/s end to end, {design}, "
                                           f"{'GICv4' if gicv4 else 'GICv3'}",
                                   "value": round(rate)})
    if core.BACKEND == "c":
        for gicv4 in (False, True):
            vm = boot(gicv4=gicv4)
            out["results"].append({"what": f"share of time in the C core, "
                                           f"{'GICv4' if gicv4 else 'GICv3'} (%)",
                                   "value": round(100 * c_share(vm), 1)})
    return out


def render(result: dict[str, Any]) -> str:
    lines = [f"backend: {result['backend']}", "| what | value |", "|---|---:|"]
    lines += [f"| {r['what']} | {r['value']} |" for r in result["results"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_command(__doc__, "bench/results-vm.json", bench, render, None))
