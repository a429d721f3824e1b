"""bench/benchlib.py on fixed fake samples: statistics, x-floor arithmetic, rendering with
and without a previous record.  Deterministic: nothing here is timed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "bench" / "benchlib.py"


@pytest.fixture(scope="module")
def benchlib():
    spec = importlib.util.spec_from_file_location("benchlib_under_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules[spec.name]


def test_stats(benchlib):
    s = benchlib.stats([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s == {"median_ns": 3.0, "min_ns": 1.0, "max_ns": 10.0,
                 "stdev_ns": pytest.approx(3.5355339, rel=1e-6), "rounds": 5}
    one = benchlib.stats([7.0])
    assert one["median_ns"] == one["min_ns"] == one["max_ns"] == 7.0
    assert one["stdev_ns"] == 0.0 and one["rounds"] == 1


def test_add_x_floor_same_rounds_is_median_of_per_round_ratios(benchlib):
    rep = benchlib.Report("fake", host="test")
    rep.add("floor", [100.0, 200.0, 100.0])
    row = rep.add("row", [300.0, 400.0, 500.0], floor="floor")
    # per-round ratios 3, 2, 5 -> median 3 (the ratio of medians would be 4)
    assert row["x_floor"] == 3.0
    assert row["floor"] == "floor" and row["median_ns"] == 400.0
    assert row["samples"] == [300.0, 400.0, 500.0]
    assert rep["row"] is row and "x_floor" not in rep["floor"]
    assert rep.meta["host"] == "test"


def test_add_x_floor_other_rounds_is_ratio_of_medians(benchlib):
    rep = benchlib.Report("fake")
    row = rep.add("row", [10.0, 30.0, 20.0], floor="external", floor_ns=[4.0, 6.0])
    assert row["x_floor"] == 20.0 / 5.0 and row["floor"] == "external"
    same = rep.add("row2", [10.0, 30.0], floor="external", floor_ns=[5.0, 10.0])
    assert same["x_floor"] == 2.5                              # median of 2 and 3


def test_value_rows(benchlib):
    rep = benchlib.Report("fake")
    v = rep.value("a / b", 1.25, "target ~1")
    assert v == {"name": "a / b", "value": 1.25, "note": "target ~1"} and rep["a / b"] is v


def _report(benchlib, scale: float):
    rep = benchlib.Report("fake")
    rep.meta.update(date="2026-01-01", processor="cpu", cpus=2, python="3.x")
    rep.add("floor", [10.0, 10.0, 10.0])
    rep.add("row", [x * scale for x in (20.0, 30.0, 40.0)], floor="floor", note="n")
    rep.value("ratio", 2.0 * scale)
    return rep


def test_render_without_previous(benchlib):
    text = _report(benchlib, 1.0).render()
    lines = text.splitlines()
    assert lines[0] == "fake (cpu, 2 CPUs, Python 3.x, 2026-01-01)"
    assert lines[2] == "| row | median ns | min..max ns | stdev | x floor | note |"
    assert "| floor | 10.0 | 10.0..10.0 | 0.0 | - |  |" in lines
    assert "| row | 30.0 | 20.0..40.0 | 10.0 | 3.00 | n |" in lines
    assert "| ratio | 2 | | | |  |" in lines
    assert "new/prev" not in text


def test_render_with_previous(benchlib):
    old = json.loads(json.dumps(_report(benchlib, 1.0).to_json()))   # as read back from disk
    new = _report(benchlib, 2.0)
    new.add("only new", [1.0, 2.0, 3.0])
    lines = new.render(old).splitlines()
    assert lines[2].endswith("| note | new/prev | x floor new/prev |")
    assert "| row | 60.0 | 40.0..80.0 | 20.0 | 6.00 | n | 2.00 | 2.00 |" in lines
    assert "| floor | 10.0 | 10.0..10.0 | 0.0 | - |  | 1.00 | - |" in lines
    assert "| ratio | 4 | | | |  | 2.00 | |" in lines
    assert "| only new | 2.0 | 1.0..3.0 | 1.0 | - |  | - | - |" in lines


def test_main_writes_json_and_compares(benchlib, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert benchlib.main("doc line\n", None, lambda quick: _report(benchlib, 1.0),
                         ["--quick", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r["name"] for r in rec["rows"]] == ["floor", "row", "ratio"]
    capsys.readouterr()
    assert benchlib.main("doc line\n", None, lambda quick: _report(benchlib, 2.0),
                         ["--compare", str(out)]) == 0
    assert "| 2.00 | 2.00 |" in capsys.readouterr().out
