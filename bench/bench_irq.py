"""Benchmarks of the interrupt path: the GIC's acknowledge, the ITS's translation cache
and one interrupt end to end, each beside an empty cffi call measured in the same run.

    python bench/bench_irq.py [--json bench/results-irq.json] [--quick] [--compare old.json]

1. Draining P pending LPIs from one CPU interface (IAR1 + EOIR1 until spurious) for
   P = 100, 1000, 4000: ns per interrupt, which should not grow with P.
2. One MSI through the ITS (GITS_TRANSLATER write -> LPI pending, then cleared), with
   the translation cache warm and cold (dropped before each MSI).
3. One interrupt end to end on ``ArmVirt`` (a sw-msi host VMM): the function's notify,
   the SMMU, the ITS, the GIC, the kernel's handler and EOI.

Each figure is the median over rounds of the per-item time of a timed loop, with the
minimum and the standard deviation; ratios are against the floor of the same run (an
empty cffi call: ``pymsi_mem_is_ram`` on a one-page memory).  Reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pymsi import core  # noqa: E402

from hw_rig import ItsDriver, Platform  # noqa: E402

DEV = 0x10


def measure(fn: Callable[[], Any], items: int, rounds: int,
            setup: Callable[[], Any] | None = None) -> dict[str, float]:
    """ns per item of ``fn`` (handling ``items`` items): median, min, stdev over rounds."""
    samples = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / items)
    return {"median_ns": statistics.median(samples), "min_ns": min(samples),
            "stdev_ns": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "rounds": rounds}


def floor_row(n: int, rounds: int) -> dict[str, float]:
    from pymsi._core_c import lib
    mem = core.backend("c").Memory()
    mem.add_ram(0x4000_0000, 0x1000)
    p, f = mem._p, lib.pymsi_mem_is_ram

    def loop():
        for _ in range(n):
            f(p, 0x4000_0000, 1)
    return measure(loop, n, rounds)


def drain_rig(npending: int):
    plat = Platform(ncpus=1)
    drv = ItsDriver(plat)
    drv.init()
    for lpi in range(8192, 8192 + npending):
        drv.set_config(lpi, 0xA3 - 0x10 * (lpi % 4))    # enabled, four priorities
    rd, cpu = plat.gic.redists[0], plat.gic.cpus[0]
    rd.invalidate()

    def fill():
        for lpi in range(8192, 8192 + npending):
            rd.set_pending(lpi)

    def drain():
        iar, eoi = cpu.iar1, cpu.eoir1
        while True:
            i = iar()
            if i == 1023:
                break
            eoi(i)
    return fill, drain


def its_rig():
    plat = Platform(ncpus=2)
    drv = ItsDriver(plat)
    drv.init()
    drv.map_device(DEV, 32, cpu=0)
    return plat


def bench(quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 15
    n = 2000 if quick else 20000
    rows: dict[str, dict[str, float]] = {}
    rows["floor: empty cffi call"] = floor_row(n, rounds)
    for npend in (100, 1000, 4000):
        fill, drain = drain_rig(npend)
        rows[f"drain P={npend} pending, per interrupt"] = measure(
            drain, npend, max(3, rounds // 3), setup=fill)
    plat = its_rig()
    its, rd = plat.its, plat.gic.redists[0]
    drop = getattr(its, "invalidate_cache", lambda: None)

    def msi(cold: bool):
        def loop():
            tr, clr = its.translate, rd.clear_pending
            for i in range(n // 4):
                if cold:
                    drop()
                tr(DEV, i & 31)
                clr(8192 + (i & 31))
        return loop
    rows["one MSI through the ITS, warm cache"] = measure(msi(False), n // 4, rounds)
    rows["one MSI through the ITS, cold cache"] = measure(msi(True), n // 4, rounds)
    rows["end to end on ArmVirt (notify -> SMMU -> ITS -> GIC -> handler -> EOI)"] = e2e(
        n // 10, rounds)
    floor = rows["floor: empty cffi call"]["median_ns"]
    for r in rows.values():
        r["x_floor"] = r["median_ns"] / floor
    return {"python": platform.python_version(), "machine": platform.machine(), "rows": rows}


def e2e(n: int, rounds: int) -> dict[str, float]:
    from pymsi.vmmlib import Vmm
    vmm = Vmm("sw-msi", smmu="s1", devices=[{"msix": 8}])
    vmm.bind()
    paging = vmm.hwpt_alloc(vmm.ioas)
    vmm.attach(paging, 0)
    efds = [vmm.k.eventfd() for _ in range(8)]
    assert vmm.set_triggers(0, [e.fd for e in efds]) == 0
    fn, bus, k = vmm.m.functions[0], vmm.m.bus, vmm.k
    before = efds[0].f_op.count

    def loop():
        for i in range(n):
            fn.notify(i & 7)
            bus.drain()
            k.handle_interrupts()
    r = measure(loop, n, rounds)
    assert efds[0].f_op.count > before
    return r


def render(result: dict[str, Any], old: dict[str, Any] | None = None) -> str:
    head = "| benchmark | median ns | min ns | stdev ns | x floor |"
    lines = [head + (" before/now |" if old else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if old else "")]
    for name, r in result["rows"].items():
        line = (f"| {name} | {r['median_ns']:.0f} | {r['min_ns']:.0f} | {r['stdev_ns']:.0f} "
                f"| {r['x_floor']:.1f} |")
        if old:
            o = old["rows"].get(name)
            line += f" {o['median_ns'] / r['median_ns']:.2f}x |" if o else " - |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results-irq.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare", help="a previous JSON output: print before/now ratios")
    args = ap.parse_args(argv)
    result = bench(args.quick)
    old = json.loads(Path(args.compare).read_text()) if args.compare else None
    print(render(result, old))
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n(written to {args.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
