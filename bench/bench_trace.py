"""What tracepoints cost: off (the default), against no tracepoint at all, and on.

    python bench/bench_trace.py [--quick] [--json bench/results-trace.json]
                                [--compare previous.json]

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

Every row is ns per call, median and min..max / stdev over rounds in which the rows and an
empty cffi call (``nop4_floor``) take turns; "x floor" is the median over rounds of
row / floor; the off/none and on/off ratios are value rows (medians of per-round
ratios).  Reported, never asserted.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Report, interleaved, main, nop4_floor  # noqa: E402

from pymsi import trace  # noqa: E402
from pymsi.kernel.drivers import MsiCountingDriver  # noqa: E402
from pymsi.machine import ArmVirt  # noqa: E402

NOP4 = "floor: empty cffi call (nop4_floor)"

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


def traced(run: Callable[[], Any], patterns: str) -> Callable[[], None]:
    """``run`` with the tracepoints ``patterns`` on, recording (records not kept)."""
    def loop() -> None:
        trace.enable(patterns)
        try:
            with trace.Recorder(keep=False):
                run()
        finally:
            trace.reset()
    return loop


def ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a / b (rows measured in the same rounds)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def bench(quick: bool) -> Report:
    rounds = 5 if quick else 15
    n = 20_000 if quick else 200_000
    rep = Report("bench_trace: what tracepoints cost, off and on", rounds=rounds)
    trace.reset()

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

    nf = max(200, n // 200)

    def fire() -> None:
        for i in range(nf):
            fn.notify(i & 3)
            k.handle_interrupts()

    rows = {
        NOP4: (nop4_floor(n), n),
        "call site, no tracepoint": (_loop(site_none, n), n),
        "call site, tracepoint off": (_loop(site_traced, n), n),
        "call site, tracepoint on (recording)": (traced(_loop(site_traced, n),
                                                        "bench_trace_point"), n),
        "SMMU translate (IOTLB hit), tracepoint off": (translate, nt),
        "SMMU translate (IOTLB hit), tracepoint on": (traced(translate,
                                                             "smmuv3_translate_success"), nt),
        "one vector end to end, tracepoints off": (fire, nf),
        "one vector end to end, every tracepoint on": (traced(fire, "*"), nf),
    }
    got = interleaved(rows, rounds)
    assert sum(map(len, drv.fired.values())) > 0
    with trace.record("*") as rec:
        fn.notify(0)
        k.handle_interrupts()
    per_fire = len(rec)
    for name, xs in got.items():
        rep.add(name, xs, floor=None if name == NOP4 else NOP4,
                note="empty cffi call, 4 int args" if name == NOP4 else "ns per call")
    none, off = got["call site, no tracepoint"], got["call site, tracepoint off"]
    rep.value("call site: off / none", ratio(off, none), "the price of a disabled tracepoint")
    rep.value("call site: on / none", ratio(got["call site, tracepoint on (recording)"], none))
    rep.value("SMMU translate: on / off",
              ratio(got["SMMU translate (IOTLB hit), tracepoint on"],
                    got["SMMU translate (IOTLB hit), tracepoint off"]))
    f_off = got["one vector end to end, tracepoints off"]
    rep.value("one vector end to end: all on / off",
              ratio(got["one vector end to end, every tracepoint on"], f_off))
    rep.value("records per fire", per_fire, "each one `enabled` test when off")
    rep.value("share of a fire spent on disabled tracepoints",
              per_fire * max(statistics.median(off) - statistics.median(none), 0.0)
              / statistics.median(f_off), "records x (off - none) / fire")
    return rep


if __name__ == "__main__":
    sys.exit(main(__doc__, "bench/results-trace.json", bench))
