"""Property tests of the ITS: random command streams and translation writes never
raise, and the mappings it ends up with are exactly what the architecture's
rules make of the valid commands."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pymsi.hw.gicv3 import SPURIOUS
from pymsi.testing.strategies import its_commands

from hw_rig import ITS_BASE, TRANSLATER, ItsDriver, Platform

NCPUS, DEVS, EVENTS = 4, 4, 8
LPI0 = 8192


def its_command():
    """A command over this file's small universe, or garbage (pymsi.testing's)."""
    return its_commands(devices=DEVS, events=EVENTS, collections=NCPUS + 1, cpus=NCPUS,
                        lpi_base=LPI0)


class Model:
    """The ITS's mapping state by the architecture's rules (errors change nothing)."""

    def __init__(self):
        self.dte = {}       # dev -> EventID bits
        self.cte = {}       # icid -> cpu
        self.ite = {}       # (dev, ev) -> [lpi, icid]  (the ITT outlives MAPD V=0)

    def mapped(self, dev, ev):
        return dev in self.dte and ev < 1 << self.dte[dev] and (dev, ev) in self.ite

    def apply(self, kind, a):
        if kind == "MAPD":
            if a["v"]:
                self.dte[a["dev"]] = a["size"] + 1
            else:
                self.dte.pop(a["dev"], None)
        elif kind == "MAPC":
            if not a["v"]:
                self.cte.pop(a["icid"], None)
            elif a["cpu"] < NCPUS:
                self.cte[a["icid"]] = a["cpu"]
        elif kind in ("MAPTI", "MAPI"):
            lpi = a["lpi"] if kind == "MAPTI" else a["ev"]
            if (a["dev"] in self.dte and a["ev"] < 1 << self.dte[a["dev"]]
                    and LPI0 <= lpi < 1 << 16):
                self.ite[(a["dev"], a["ev"])] = [lpi, a["icid"]]
        elif kind == "MOVI":
            key = (a["dev"], a["ev"])
            if self.mapped(*key) and a["icid"] in self.cte and self.ite[key][1] in self.cte:
                self.ite[key][1] = a["icid"]
        elif kind == "DISCARD":
            # Clearing the interrupt's pending state needs its collection's target: with
            # the collection unmapped the command fails and changes nothing (KVM's vITS
            # refuses it the same way).
            key = (a["dev"], a["ev"])
            if self.mapped(*key) and self.ite[key][1] in self.cte:
                del self.ite[key]


def encode(kind, a, itts):
    dev, ev = a["dev"], a["ev"]
    if kind == "MAPD":
        return 0x08, dev << 32, a["size"], int(a["v"]) << 63 | itts[dev], 0
    if kind == "MAPC":
        return 0x09, 0, 0, int(a["v"]) << 63 | a["cpu"] << 16 | a["icid"], 0
    if kind == "MAPTI":
        return 0x0A, dev << 32, a["lpi"] << 32 | ev, a["icid"], 0
    if kind == "MAPI":
        return 0x0B, dev << 32, ev, a["icid"], 0
    if kind == "MOVI":
        return 0x01, dev << 32, ev, a["icid"], 0
    op = {"DISCARD": 0x0F, "INT": 0x03, "CLEAR": 0x04, "INV": 0x0C, "INVALL": 0x0D,
          "SYNC": 0x05, "MOVALL": 0x0E}[kind]
    return op, dev << 32, ev, a["cpu"] << 16 | a["icid"], a["cpu2"] << 16


def _setup_commands(sizes, lpis):
    """MAPD every device and MAPTI every event in range, so random commands act on
    a populated ITS rather than an empty one."""
    out = []
    for dev, size in enumerate(sizes):
        out.append(("MAPD", dict(dev=dev, ev=0, icid=0, v=True, size=size, lpi=0, cpu=0,
                                 cpu2=0)))
        for ev in range(1 << (size + 1)):
            out.append(("MAPTI", dict(dev=dev, ev=ev, icid=(dev + ev) % NCPUS, v=True, size=0,
                                      lpi=lpis[(dev * 8 + ev) % len(lpis)], cpu=0, cpu2=0)))
    return out


@given(sizes=st.lists(st.integers(0, 2), min_size=DEVS, max_size=DEVS),
       lpis=st.lists(st.integers(LPI0, LPI0 + 63), min_size=8, max_size=8),
       cmds=st.lists(its_command(), min_size=5, max_size=40),
       writes=st.lists(st.tuples(st.integers(0, 0x3FF), st.integers(0, 2**32 - 1)),
                       max_size=10))
def test_random_commands_and_writes(sizes, lpis, cmds, writes):
    cmds = _setup_commands(sizes, lpis) + cmds
    p = Platform(ncpus=NCPUS)
    drv = ItsDriver(p)
    drv.init()
    p.ram.write(drv.prop, bytes([0xA3]) * 64)                    # LPIs 8192..8255 enabled
    itts = {dev: p.alloc(256, 256) for dev in range(DEVS + 1)}
    model = Model()
    for cpu in range(NCPUS):
        model.cte[cpu] = cpu                                     # the driver's MAPCs
    for kind, a in cmds:
        if kind == "garbage":
            raw = a
        else:
            op, d0, d1, d2, d3 = encode(kind, a, itts)
            raw = [d0 | op, d1, d2, d3]
            model.apply(kind, a)
        drv.cmd(raw[0] & 0xFF, raw[0] & ~0xFF, raw[1], raw[2], raw[3], check=False)
        creadr = p.bus.read(ITS_BASE + 0x90, 8)
        cwriter = p.bus.read(ITS_BASE + 0x88, 8)
        if creadr & 1:                       # garbage may point a table at no RAM: stalled
            return
        assert creadr == cwriter
    for rid, data in writes:                                     # stray translation writes
        p.bus.write(TRANSLATER, data, 4, requester_id=rid)
    p.ram.write(drv.prop, bytes([0xA3]) * 64)
    for cpu in range(NCPUS):
        p.gic.redists[cpu].invalidate()
        p.gic.redists[cpu].pending.clear()
    # Every (device, event): delivered where the model says, or dropped.
    for dev in range(DEVS + 1):
        for ev in range(EVENTS + 3):
            p.bus.write(TRANSLATER, ev, 4, requester_id=dev)
            got = {cpu: intid for cpu in range(NCPUS)
                   if (intid := p.gic.cpus[cpu].iar1()) != SPURIOUS}
            for cpu, intid in got.items():
                p.gic.cpus[cpu].eoir1(intid)
            want = {}
            if model.mapped(dev, ev):
                lpi, icid = model.ite[(dev, ev)]
                if icid in model.cte and lpi < LPI0 + 64:
                    want = {model.cte[icid]: lpi}
            assert got == want, (dev, ev)
