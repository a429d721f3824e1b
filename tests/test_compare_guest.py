"""``pymsi compare``'s guest rows: the whole machine under each design, vSMMU accel (the
guest's stage 1 nested over the host's stage 2) and none (the host's paging domain, IOVA =
GPA), GICv4 off and on.

Expectations come from the designs and the architecture (DESIGN.md sections 4 and 7):

* per-vector: the VMM hands the guest's own address down per vector and maps the doorbell
  page itself; the compose looks it up -> every invariant holds, everywhere;
* dma-cookie: an MSI cookie only on a paging domain, its page mapped on demand from the
  SW_MSI window 0x8000000; a nested domain has none, so the raw doorbell PA goes out and the
  guest's stage 1 (which maps only its own IOVAs) faults it;
* sw-msi: the window 0x8000000 installed into the paging domain / nest parent on the
  first compose; the guest honours QEMU's IORT RMR (identity map of the window in its
  stage 1), so it is delivered, but not at the guest's address;
* preset: the PREPAREd address (the guest's IOVA) installed by the kernel into the host
  domain; nested, that is the nest parent, where only IPAs are looked up, so the IPA the
  guest's stage 1 leads to is not the doorbell there -> the nested walk faults;
* a GICv3 ITS affinity move is MOVI (VMOVI with GICv4): the message never changes.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from pymsi import cli
from pymsi.compare import (
    GUEST_CHECKERS,
    GUEST_STEPS,
    INVARIANTS,
    ComposeObs,
    GuestFire,
    GuestStepObs,
    GuestVector,
    implicit_state,
    judge_guest,
)
from pymsi.kernel.iommufd_msi import MSI_DESIGNS

DOORBELL = 0x0808_0000 + 0x1_0040
BOOT, FIRE = GUEST_STEPS[0], GUEST_STEPS[1]


def _cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["compare", *argv]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def table():
    return json.loads(_cli("--json"))


def grow(table, design, vsmmu, gicv4):
    (r,) = [r for r in table["guest"]["rows"]
            if (r["design"], r["vsmmu"], r["gicv4"]) == (design, vsmmu, gicv4)]
    return r["results"]


def broken(res):
    return {inv: r["step"] for inv, r in res.items() if not r["ok"]}


def test_json_has_every_guest_row(table):
    g = table["guest"]
    assert g["invariants"] == list(INVARIANTS) and g["steps"] == list(GUEST_STEPS)
    assert {(r["design"], r["vsmmu"], r["gicv4"]) for r in g["rows"]} == {
        (d, v, x) for d in MSI_DESIGNS for v in ("accel", "none") for x in (False, True)}
    assert len(table["rows"]) == 2 * len(MSI_DESIGNS)           # the host table is kept


@pytest.mark.parametrize("vsmmu", ["accel", "none"])
@pytest.mark.parametrize("gicv4", [False, True])
def test_per_vector_passes_every_guest_invariant(table, vsmmu, gicv4):
    assert broken(grow(table, "per-vector", vsmmu, gicv4)) == {}


@pytest.mark.parametrize("gicv4", [False, True])
def test_dma_cookie(table, gicv4):
    nested = grow(table, "dma-cookie", "accel", gicv4)
    assert broken(nested) == {"routing": FIRE, "delivery": FIRE, "no silent fallback": BOOT}
    assert f"{DOORBELL:#x} reaches a fault" in nested["routing"]["detail"]
    paging = grow(table, "dma-cookie", "none", gicv4)
    assert broken(paging) == {"no allocation on compose": BOOT, "no silent fallback": BOOT}
    assert "MSI cookie pages" in paging["no allocation on compose"]["detail"]
    assert "writes 0x8000040" in paging["no silent fallback"]["detail"]


@pytest.mark.parametrize("vsmmu", ["accel", "none"])
@pytest.mark.parametrize("gicv4", [False, True])
def test_sw_msi_delivers_through_the_window_not_the_guests_address(table, vsmmu, gicv4):
    res = grow(table, "sw-msi", vsmmu, gicv4)
    assert broken(res) == {"no allocation on compose": BOOT, "no silent fallback": BOOT}
    assert "sw_msi maps" in res["no allocation on compose"]["detail"]
    assert "writes 0x8000040" in res["no silent fallback"]["detail"]


@pytest.mark.parametrize("gicv4", [False, True])
def test_preset(table, gicv4):
    nested = grow(table, "preset", "accel", gicv4)
    assert broken(nested) == {"routing": FIRE, "delivery": FIRE,
                              "no allocation on compose": BOOT}
    assert "0xfffff040 reaches a fault" in nested["routing"]["detail"]
    assert broken(grow(table, "preset", "none", gicv4)) == {"no allocation on compose": BOOT}


def test_guest_rows_agree_with_the_host_table(table):
    """The same design breaks the same invariants with and without a guest: routing,
    delivery, no-alloc and isolation by name; the host's 'address stability' (the device
    writes the VMM's choice) is the guest's 'no silent fallback' (the device writes the
    guest's choice, which the VMM hands down)."""
    same = {"routing": "routing", "delivery": "delivery", "isolation": "isolation",
            "no allocation on compose": "no allocation on compose",
            "address stability": "no silent fallback"}
    host = {(r["design"], r["smmu"]): r["results"] for r in table["rows"]}
    for r in table["guest"]["rows"]:
        h = host[(r["design"], "nested" if r["vsmmu"] == "accel" else "paging")]
        for hinv, ginv in same.items():
            assert h[hinv]["ok"] == r["results"][ginv]["ok"], (r["design"], r["vsmmu"], ginv)


def test_text_has_both_tables_and_the_options_select():
    text = _cli()
    assert "guest scenarios" in text and text.index("design     | smmu") < text.index("guest")
    assert "per-vector | accel (nested), gicv4 on " in text
    host = _cli("--host-only")
    assert "guest scenarios" not in host and "per-vector | nested" in host
    with pytest.raises(SystemExit):
        cli.main(["compare", "--host-only", "--guest-only"])


# -- the checkers can fail ------------------------------------------------------------------


def _path(pa=DOORBELL, lpi=8192, rid=8, data=0):
    return {"write": {"rid": rid, "vector": 0, "address": 0xFFFFF040, "data": data},
            "translation": {"pa": pa}, "fault": None,
            "its": {"devid": rid, "eventid": data, "lpi": lpi, "vlpi": None, "error": None}}


def _good():
    return GuestStepObs(
        "s", vectors=[GuestVector(0, 0xFFFFF040, 0xFFFFF040, 0xFFFFF040)],
        fires=[GuestFire(0, "deliver", _path(), [(0, 1)], 1, 0, 1),
               GuestFire(None, "foreign", _path(), [], None, 0, 0),
               GuestFire(None, "fault", _path(), [], None, 1, 0)],
        composes=[ComposeObs("c", {"x": frozenset()}, {"x": frozenset()})])


def test_a_good_observation_passes_every_checker():
    assert all(GUEST_CHECKERS[i](_good()) is None for i in INVARIANTS)
    fwd = _good()                                # GICv4, delivered as a vLPI
    fwd.fires[0].gicv4 = True
    fwd.fires[0].path["its"].update(lpi=None, vlpi=8192)
    fwd.fires[0].path["guest_handler"] = {"cpu": 1}
    assert all(GUEST_CHECKERS[i](fwd) is None for i in INVARIANTS)
    assert all(r["ok"] for r in judge_guest([_good()]).values())


@pytest.mark.parametrize("doctor, inv", [
    (lambda o: o.fires[0].path["translation"].update(pa=0x8000040), "routing"),
    (lambda o: o.fires[0].path["its"].update(lpi=None), "routing"),
    (lambda o: o.fires[0].path["its"].update(eventid=3), "routing"),
    (lambda o: setattr(o.fires[0], "hits", [(0, 1), (0, 1)]), "delivery"),
    (lambda o: setattr(o.fires[0], "hits", [(0, 0)]), "delivery"),
    (lambda o: setattr(o.fires[0], "hits", []), "delivery"),
    (lambda o: setattr(o.vectors[0], "phys_addr", 0xFFFFE040), "address stability"),
    (lambda o: setattr(o.vectors[0], "guest_addr", 0x8090040), "no silent fallback"),
    (lambda o: o.composes[0].after.update(x=frozenset({1})), "no allocation on compose"),
    (lambda o: (setattr(o.fires[0], "gicv4", True),
                o.fires[0].path.update(guest_handler={"cpu": 1})), "no silent fallback"),
    (lambda o: setattr(o.fires[1], "lpis", 1), "isolation"),
    (lambda o: setattr(o.fires[2], "recorded_faults", 0), "isolation"),
    (lambda o: setattr(o.fires[2], "hits", [(0, 0)]), "isolation"),
])
def test_each_guest_checker_reports_a_doctored_observation(doctor, inv):
    obs = _good()
    doctor(obs)
    assert GUEST_CHECKERS[inv](obs) is not None
    res = judge_guest([_good(), obs])
    assert not res[inv]["ok"] and res[inv]["step"] == "s"


def test_implicit_state_keeps_only_what_userspace_did_not_map():
    st = {"IOAS 1 areas": ((0x4000_0000, 0x200_0000, 3), (0x809_0000, 0x1000, 2)),
          "domain 0 page table": frozenset({(0x4000_0000, 1), (0x809_0000, 2),
                                            (0x800_0000, 3)}),
          "sw_msi maps": frozenset({(0x800_0000, 0x809_0000)})}
    assert implicit_state(st) == {"domain 0 page table": frozenset({(0x800_0000, 3)}),
                                  "sw_msi maps": frozenset({(0x800_0000, 0x809_0000)})}
