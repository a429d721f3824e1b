"""``pymsi compare``: the invariant table from real runs, and checkers that can fail.

Expectations come from the designs' definitions (DESIGN.md section 4, README "The MSI
address designs"), not from the table:

* per-vector: the compose hook looks the VMM's address up, no allocation, missing entry
  = ENOENT, forced rewrite on affinity -> every invariant holds, paging and nested;
* sw-msi: one IOVA per doorbell page from the SW_MSI window (0x8000000), installed into
  the paging domain on the first compose -> the device writes 0x8000040, not the VMM's
  address, and the first enable changes a page table;
* dma-cookie: an MSI page mapped on demand from the window on a paging domain; no cookie
  on a nested domain, so the doorbell PA goes out and faults under the guest's stage 1;
* preset: a vector the VMM gave no IOVA falls back to the SW_MSI window.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pymsi import cli
from pymsi.compare import (
    CHECKERS,
    INVARIANTS,
    SMMUS,
    STEPS,
    ComposeObs,
    DmaObs,
    FireObs,
    Scenario,
    StepObs,
    UndescribedObs,
    judge,
    render,
)
from pymsi.core import Prot
from pymsi.kernel.iommufd_msi import MSI_DESIGNS
from pymsi.vmmlib import LPI_BASE

SW_MSI_MSG = 0x0800_0000 | 0x040        # MSI_IOVA_BASE + GITS_TRANSLATER's page offset
DOORBELL = 0x0808_0000 + 0x1_0040


@pytest.fixture(scope="module")
def table():
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert cli.main(["compare", "--json"]) == 0
    return json.loads(out.getvalue())


def row(table, design, smmu):
    (r,) = [r for r in table["rows"] if r["design"] == design and r["smmu"] == smmu]
    return r["results"]


def test_json_has_every_design_smmu_and_invariant(table):
    assert table["designs"] == list(MSI_DESIGNS)
    assert table["invariants"] == list(INVARIANTS)
    assert sorted((r["design"], r["smmu"]) for r in table["rows"]) == sorted(
        (d, s) for d in MSI_DESIGNS for s in ("paging", "nested"))
    for r in table["rows"]:
        assert set(r["results"]) == set(INVARIANTS)
        for res in r["results"].values():
            assert isinstance(res["ok"], bool) and isinstance(res["detail"], str)
            assert (res["step"] is None) == res["ok"]
            assert res["step"] is None or res["step"] in STEPS
            assert res["ok"] or res["detail"]
    assert any("EOPNOTSUPP" in n and "x86" in n for n in table["notes"])
    # Every row ran its whole script: no VMM call failed on the way.
    assert not [n for r in table["rows"] for n in r["notes"] if "call failed" in n]


@pytest.mark.parametrize("smmu", SMMUS)
def test_per_vector_passes_every_invariant(table, smmu):
    results = row(table, "per-vector", smmu)
    assert {inv: r["ok"] for inv, r in results.items()} == dict.fromkeys(INVARIANTS, True)


@pytest.mark.parametrize("smmu", SMMUS)
def test_sw_msi_address_is_the_window_and_is_installed_on_compose(table, smmu):
    r = row(table, "sw-msi", smmu)
    stab = r["address stability"]
    assert not stab["ok"] and stab["step"] == "enable 4 vectors"
    assert f"writes {SW_MSI_MSG:#x}" in stab["detail"]
    alloc = r["no allocation on compose"]
    assert not alloc["ok"] and alloc["step"] == "enable 4 vectors"
    assert "sw_msi maps" in alloc["detail"]


def test_dma_cookie_maps_on_demand_and_breaks_routing_when_nested(table):
    paging = row(table, "dma-cookie", "paging")
    assert paging["no allocation on compose"]["step"] == "enable 4 vectors"
    assert "MSI cookie pages" in paging["no allocation on compose"]["detail"]
    assert paging["routing"]["ok"]
    nested = row(table, "dma-cookie", "nested")
    assert not nested["routing"]["ok"] and nested["routing"]["step"] == "enable 4 vectors"
    assert f"{DOORBELL:#x} translates to a fault" in nested["routing"]["detail"]
    assert not nested["delivery"]["ok"]
    assert nested["no allocation on compose"]["ok"]       # nothing to allocate: the PA


@pytest.mark.parametrize("smmu", SMMUS)
def test_preset_falls_back_silently(table, smmu):
    fb = row(table, "preset", smmu)["no silent fallback"]
    assert not fb["ok"] and fb["step"] == "enable an undescribed vector"
    assert f"address {SW_MSI_MSG:#x}" in fb["detail"]


@pytest.mark.parametrize("smmu", SMMUS)
def test_per_vector_run_exercises_forwarding_and_the_unmapped_doorbell(smmu):
    """The passing row is not vacuous: the vector was forwarded (a vLPI, no eventfd
    signal, before and after the guest's MOVI), the undescribed vector was refused,
    and the doorbell the VMM unmapped made the fire fault."""
    obs = {o.step: o for o in Scenario("per-vector", smmu).run()}
    g = obs["GICv4 forward + guest MOVI"]
    fwd = [f for f in g.fires if f.expect_vlpi is not None]
    assert len(fwd) == 2 and all(f.vlpis == [LPI_BASE + 5] and not f.signals for f in fwd)
    assert [f.vlpi_vcpus for f in fwd] == [[0], [1]]        # MAPTI to collection 0, MOVI to 1
    assert not g.notes
    assert [u.errno for u in obs["enable an undescribed vector"].undescribed] == [errno.ENOENT]
    (f,) = obs["unmap doorbell + fire"].fires
    assert f.expect == "fault" and f.smmu_events == 1 and f.delivery == "aborted"
    assert obs["second device"].dma[0].smmu_events == 1


def test_text_table_matches_the_json(table):
    out = io.StringIO()
    render(table, out)
    lines = out.getvalue().splitlines()
    for r in table["rows"]:
        (line,) = [ln for ln in lines[2:2 + len(table["rows"])]
                   if ln.split("|")[0].strip() == r["design"]
                   and ln.split("|")[1].strip() == r["smmu"]]
        cells = [c.strip() for c in line.split("|")[2:]]
        assert cells == ["ok" if r["results"][i]["ok"] else
                         "BROKEN: " + r["results"][i]["step"] for i in INVARIANTS]


# -- the checkers can fail: doctored machines -------------------------------------------------


def live(design="per-vector", smmu="paging", check=True):
    """A scenario run up to four enabled vectors (that pass every checker)."""
    sc = Scenario(design, smmu)
    obs = StepObs("doctored")
    sc.step_setup(obs)
    sc.step_enable(obs)
    sc.fire_all(obs)
    obs.vectors = sc.vectors()
    passing = {inv: {"ok": True, "step": None, "detail": ""} for inv in INVARIANTS}
    assert not check or judge([obs]) == passing
    return sc


@pytest.mark.parametrize("smmu", SMMUS)
def test_flipped_msix_address_breaks_stability(smmu):
    sc = live(smmu=smmu)
    fn = sc.vmm.m.functions[0]
    lo = int.from_bytes(fn.msix_table[16 * 2:16 * 2 + 4], "little")
    fn.msix_table[16 * 2:16 * 2 + 4] = (lo ^ 0x1000).to_bytes(4, "little")
    obs = StepObs("x", vectors=sc.vectors())
    assert "vector 2" in CHECKERS["address stability"](obs)


def test_extra_eventfd_signal_breaks_delivery():
    sc = live()
    vmm = sc.vmm
    notify = vmm.m.functions[0].notify

    def twice(v):                    # a model bug: one fire, two signals on another vector
        vmm.k.eventfd_signal(sc.efds[(0, 3)].f_op)
        return notify(v)

    vmm.m.functions[0].notify = twice
    obs = StepObs("x")
    sc.fire(obs, 0, 1)
    assert "vector 1" in CHECKERS["delivery"](obs)
    assert CHECKERS["routing"](obs) is None


def test_a_mapping_made_during_compose_breaks_no_allocation():
    sc = live()
    vmm = sc.vmm
    obs = StepObs("x")
    dom = vmm.domain()
    sc.compose(obs, "doctored affinity", lambda: (
        vmm.k.proc_write(f"/proc/irq/{vmm.irq(0)}/smp_affinity", "2"),
        vmm.k.iommu.map(dom, 0x3000_0000, 0x0809_0000, 0x1000, Prot.WRITE | Prot.MMIO)))
    assert "0x30000000" in CHECKERS["no allocation on compose"](obs)


def test_a_mapping_in_the_ioas_during_compose_breaks_no_allocation():
    sc = live()
    vmm = sc.vmm
    obs = StepObs("x")
    sc.compose(obs, "doctored", lambda: vmm.map_msi(0x3100_0000))
    assert "IOAS" in CHECKERS["no allocation on compose"](obs)


def test_unmapped_doorbell_breaks_routing_unless_the_vmm_unmapped_it():
    sc = live()
    vmm = sc.vmm
    vmm.unmap(0x2000_1000)               # the page of vector 1, behind the scenario's back
    obs = StepObs("x", vectors=sc.vectors())
    assert "vector 1" in CHECKERS["routing"](obs)
    sc.unmapped.add(0x2000_1000)         # the scenario's own unmap: expected to fault
    obs = StepObs("x", vectors=sc.vectors())
    f = sc.fire(obs, 0, 1, expect="fault")
    assert f.smmu_events == 1 and not f.signals
    assert CHECKERS["routing"](obs) is None and CHECKERS["isolation"](obs) is None


def test_wrong_lpi_breaks_routing():
    sc = live()
    vmm = sc.vmm
    # The host ITS driver's translation of event 2 now names vector 3's LPI.
    d2, d3 = vmm.k.irq.desc(vmm.irq(2)), vmm.k.irq.desc(vmm.irq(3))
    d2.irq_data.parent_data.hwirq, d3.irq_data.parent_data.hwirq = (
        d3.irq_data.parent_data.hwirq, d2.irq_data.parent_data.hwirq)
    obs = StepObs("x")
    sc.fire(obs, 0, 2)
    assert "host LPIs" in CHECKERS["routing"](obs)


def test_enable_that_falls_back_breaks_no_fallback():
    sc = live("preset", check=False)
    obs = StepObs("x")
    sc.step_undescribed(obs)
    assert obs.undescribed[0].errno == 0
    assert "succeeded" in CHECKERS["no silent fallback"](obs)
    sc = live()
    obs = StepObs("x")
    sc.step_undescribed(obs)
    assert obs.undescribed[0].errno == errno.ENOENT
    assert CHECKERS["no silent fallback"](obs) is None


# -- the checkers can fail: doctored observations ----------------------------------------------


@pytest.fixture(scope="module")
def good_obs():
    """Every observation of a per-vector nested run (all pass)."""
    obs = Scenario("per-vector", "nested").run()
    assert all(CHECKERS[i](o) is None for o in obs for i in INVARIANTS)
    return obs


def clone(o: StepObs) -> StepObs:
    """A copy whose lists can be changed without touching ``o`` (elements are replaced,
    never changed in place)."""
    return StepObs(o.step, list(o.vectors), list(o.fires), list(o.composes),
                   list(o.undescribed), list(o.dma), list(o.leftovers), list(o.notes))


def _put(items: list, pick, attr: str, fn) -> bool:
    """Replace one element of ``items`` (chosen by ``pick(len)``) with a copy whose
    ``attr`` is ``fn(old)``; False when there is nothing to doctor."""
    if not items:
        return False
    i = pick(len(items))
    items[i] = dataclasses.replace(items[i], **{attr: fn(getattr(items[i], attr))})
    return True


def _fires(o, kind, attr, fn, pick):
    """Doctor one fire of ``kind`` (in place in ``o.fires``)."""
    idx = [i for i, f in enumerate(o.fires) if f.expect == kind]
    if not idx:
        return False
    i = idx[pick(len(idx))]
    o.fires[i] = dataclasses.replace(o.fires[i], **{attr: fn(getattr(o.fires[i], attr))})
    return True


def _lost(o, pick):
    """One delivered fire that signalled nothing and raised no vLPI."""
    idx = [i for i, f in enumerate(o.fires) if f.expect == "deliver"]
    if not idx:
        return False
    i = idx[pick(len(idx))]
    o.fires[i] = dataclasses.replace(o.fires[i], signals={}, vlpis=[])
    return True


def _wrong_vcpu(o, pick):
    """A forwarded fire whose vLPI stayed on the vCPU the guest moved it away from."""
    idx = [i for i, f in enumerate(o.fires) if f.expect_vcpu is not None]
    if not idx:
        return False
    i = idx[pick(len(idx))]
    o.fires[i] = dataclasses.replace(o.fires[i], vlpi_vcpus=[1 - o.fires[i].expect_vcpu])
    return True


def _reachable_pa(o, pick):
    idx = [i for i, v in enumerate(o.vectors) if v.reachable and not v.masked]
    if not idx:
        return False
    i = idx[pick(len(idx))]
    o.vectors[i] = dataclasses.replace(o.vectors[i], smmu_pa=DOORBELL + 0x1000)
    return True


# name: (the invariant it must break, the doctoring; False when the step has nothing to doctor)
MUTATIONS = {
    "addr_flip": ("address stability",
                  lambda o, p: _put(o.vectors, p, "addr", lambda a: a ^ 0x2000)),
    "pa_elsewhere": ("routing", _reachable_pa),
    "extra_signal": ("delivery", lambda o, p: _fires(
        o, "deliver", "signals", lambda s: {**s, (7, 7): 1}, p)),
    "lost_fire": ("delivery", lambda o, p: _lost(o, p)),
    "extra_lpi": ("routing", lambda o, p: _fires(
        o, "deliver", "lpis", lambda s: s + [LPI_BASE + 100], p)),
    "compose_map": ("no allocation on compose", lambda o, p: _put(
        o.composes, p, "after", lambda a: {**a, "IOAS 1 areas": a.get("IOAS 1 areas", ())
                                           + ((0x90_0000, 4096, 2),)})),
    "fallback": ("no silent fallback", lambda o, p: _put(
        o.undescribed, p, "errno", lambda e: 0)),
    "foreign_signal": ("isolation", lambda o, p: _fires(
        o, "foreign", "signals", lambda s: {**s, (0, 1): 1}, p)),
    "fault_delivered": ("isolation", lambda o, p: _fires(
        o, "fault", "signals", lambda s: {(0, 1): 1}, p)),
    "wrong_vcpu": ("delivery", lambda o, p: _wrong_vcpu(o, p)),
    "dma_through": ("isolation", lambda o, p: _put(o.dma, p, "ok", lambda ok: True)),
    "leftover": ("isolation", lambda o, p: o.step == "close all fds" and bool(
        o.leftovers.append("3 user pages still pinned") or True)),
}


@settings(max_examples=100, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(MUTATIONS)))
def test_each_checker_reports_a_doctored_observation(good_obs, data, name):
    inv, mutate = MUTATIONS[name]
    candidates = [i for i, o in enumerate(good_obs) if mutate(clone(o), lambda n: 0)]
    assert candidates, name
    o = clone(good_obs[data.draw(st.sampled_from(candidates))])
    assert mutate(o, lambda n: data.draw(st.integers(0, n - 1)))
    event(f"{name} at {o.step}")
    detail = CHECKERS[inv](o)
    assert detail is not None
    assert judge([good_obs[0], o])[inv] == {"ok": False, "step": o.step, "detail": detail}


def test_observation_types_are_what_the_checkers_read():
    """A doctored observation built from scratch (no run) is judged too."""
    o = StepObs("x", fires=[FireObs(0, 0, "deliver", signals={(0, 0): 1}, lpis=[8192],
                                    expect_lpi=8192)],
                composes=[ComposeObs("c", {"a": 1}, {"a": 1})],
                undescribed=[UndescribedObs(0, 4, errno.ENOENT, 0, 0)],
                dma=[DmaObs(0x7000_0000, False, 1)])
    assert all(CHECKERS[i](o) is None for i in INVARIANTS)
    o.fires[0].signals[(0, 0)] = 2
    assert CHECKERS["delivery"](o) is not None
    o.undescribed[0].addr_after = 0x1040
    assert "changed" in CHECKERS["no silent fallback"](o)


# -- the page-table fingerprint the no-allocation checker compares ------------------------------


@settings(max_examples=60, deadline=None)
@given(pages=st.sets(st.integers(0, (1 << 18) - 1), max_size=12),
       blocks=st.sets(st.integers(1 << 9, (1 << 10) - 1), max_size=2),
       fmt=st.sampled_from(["s1", "s2"]))
def test_pgtable_leaves_are_exactly_what_is_mapped(pages, blocks, fmt):
    """Every mapped 4K page and 2M block appears once, at its input address, with the
    output address the walk gives; unmapping one removes exactly it."""
    from pymsi import core
    from pymsi.core.pgtable import IoPgtable, TableAllocator
    from pymsi.vmmlib import pgtable_leaves

    mem = core.Memory()
    mem.add_ram(0x4000_0000, 8 << 20)
    pg = IoPgtable(mem, TableAllocator(mem, 0x4000_0000, 8 << 20), fmt=fmt, ias=40)
    want = {}
    for p in pages:                                   # 4K pages in the first 1 GiB
        want[p << 12] = 0x1_0000_0000 + (p << 12)
    for b in blocks:                                  # 2M blocks in the second 1 GiB
        want[b << 21] = 0x2_0000_0000 + (b << 21)
    for va, pa in want.items():
        size = 1 << 21 if va >= 1 << 30 else 1 << 12
        pg.map(va, pa, size, Prot.READ | Prot.WRITE)
    event(f"{fmt} pages={min(len(pages), 3)} blocks={len(blocks)}")
    leaves = pgtable_leaves(pg)
    assert sorted(va for va, _ in leaves) == sorted(want)
    for va, _desc in leaves:
        assert pg.iova_to_phys(va) == want[va]
    if want:
        gone = min(want)
        pg.unmap(gone, 1 << 21 if gone >= 1 << 30 else 1 << 12)
        assert sorted(va for va, _ in pgtable_leaves(pg)) == sorted(set(want) - {gone})
