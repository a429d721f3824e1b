"""What tracepoints cost: off (the default), against no tracepoint at all, and on.

    python bench/bench_trace.py [--json bench/results-trace.json] [--quick]

1. A call site in isolation: a small function (the shape of a model's hot path: a dict
   lookup and a tuple built) with no tracepoint, with a disabled one (``if tp.enabled:
   tp(...)``) and with an enabled one recording into a Recorder.  The ratio off / none is
   the price of having the tracepoint there.
2. The SMMU's translation of an MSI address (IOTLB hit, the hottest traced call), off and
   on.
3. One vector end to end on the host machine (the function's MSI write through the SMMU
   and the ITS to the host handler): off, and with every tracepoint on; and how many
   records one fire makes (each is one ``enabled`` test when off), so the share of a fire
   spent on disabled tracepoints is (records x (off - none)) / fire.

Best of several repetitions; ns per item; reported, never asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import best_ns, run_command  # noqa: E402

from pymsi import trace  # noqa: E402
from pymsi.kernel.drivers import MsiCountingDriver  # noqa: E402
from pymsi.machine import ArmVirt  # noqa: E402

tp_bench = trace.Tracepoint("bench_trace_point", "sid", "iova", "pa")
_TABLE = {i: i * 0x1000 for i in range(64)}


def site_none(sid: int, iova: int) -> tuple[int, int]:
    pa = _TABLE[sid] + iova
    return sid, pa


def site_traced(sid: int, iova: int) -> tuple[int, int]:
    pa = _TABLE[sid] + iova
    if tp_bench.enabled:
        tp_bench(sid=sid, iova=iova, pa=pa)
    return sid, pa


def _loop(fn: Any, n: int) -> Any:
    def run() -> None:
        for i in range(n):
            fn(i & 63, 0x40)
    return run


def bench(quick: bool) -> dict[str, Any]:
    rep = 3 if quick else 7
    n = 20_000 if quick else 200_000
    out: dict[str, Any] = {}
    trace.reset()
    none = best_ns(_loop(site_none, n), n, rep)
    off = best_ns(_loop(site_traced, n), n, rep)
    trace.enable("bench_trace_point")
    with trace.Recorder(keep=False):
        on = best_ns(_loop(site_traced, n), n, rep)
    trace.reset()
    out["call_site"] = {"none_ns": none, "off_ns": off, "on_ns": on,
                        "off_over_none": off / none, "on_over_none": on / none}

    m = ArmVirt(devices=[{"msix": 4}], smmu="s1")
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 4)
    fn = m.functions[0]
    addr = fn.msix_entry(0)[0]
    smmu = m.smmu
    nt = n // 4

    def translate() -> None:
        for _ in range(nt):
            smmu.translate(fn.rid, addr, True)

    t_off = best_ns(translate, nt, rep)
    trace.enable("smmuv3_translate_success")
    with trace.Recorder(keep=False):
        t_on = best_ns(translate, nt, rep)
    trace.reset()
    out["smmu_translate"] = {"off_ns": t_off, "on_ns": t_on, "on_over_off": t_on / t_off}

    nf = max(200, n // 200)

    def fire() -> None:
        for i in range(nf):
            fn.notify(i & 3)
            k.handle_interrupts()

    f_off = best_ns(fire, nf, rep)
    with trace.record("*") as rec:
        fn.notify(0)
        k.handle_interrupts()
    per_fire = len(rec)
    trace.enable("*")
    with trace.Recorder(keep=False):
        f_on = best_ns(fire, nf, rep)
    trace.reset()
    assert sum(map(len, drv.fired.values())) > 0
    out["fire_end_to_end"] = {
        "off_ns": f_off, "all_on_ns": f_on, "records_per_fire": per_fire,
        "disabled_share_estimate": per_fire * max(off - none, 0.0) / f_off}
    return out


def render(r: dict[str, Any]) -> str:
    c, s, f = r["call_site"], r["smmu_translate"], r["fire_end_to_end"]
    return "\n".join([
        "tracepoint cost (ns per call, best of runs)",
        f"  call site: none {c['none_ns']:.1f}  off {c['off_ns']:.1f}  on {c['on_ns']:.1f}"
        f"   off/none = {c['off_over_none']:.3f}   on/none = {c['on_over_none']:.2f}",
        f"  SMMU translate (IOTLB hit): off {s['off_ns']:.0f}  on {s['on_ns']:.0f}"
        f"   on/off = {s['on_over_off']:.2f}",
        f"  one vector end to end: off {f['off_ns']:.0f}  all on {f['all_on_ns']:.0f}"
        f"   ({f['records_per_fire']} records per fire; disabled tracepoints ~"
        f"{100 * f['disabled_share_estimate']:.2f}% of a fire)",
    ])


if __name__ == "__main__":
    sys.exit(run_command(__doc__, "bench/results-trace.json", bench, render, sys.argv[1:]))
