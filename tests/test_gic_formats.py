"""The GIC / ITS formats are defined once (pymsi.core.gic_formats) and used by the ITS
model, the C core (through the generated csrc/gic_formats.h), the core's twin, the ITS
driver and KVM's vITS."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymsi.core import gic_formats as F
from pymsi.core.bits import Field
from pymsi.hw import its as I

ROOT = Path(__file__).resolve().parent.parent

#: Each in-memory entry's (or command doubleword's, per command) fields: disjoint in one word.
ENTRIES = {
    "device entry": [F.DTE_V, F.DTE_SIZE, F.DTE_ITT],
    "collection entry": [F.CTE_V, F.CTE_RDBASE],
    "vPE entry, doubleword 0": [F.VPE0_V, F.VPE0_VPT_SIZE, F.VPE0_RDBASE],
    "ITE doubleword 0": [F.ITE0_V, F.ITE0_VIRTUAL, F.ITE0_INTID],
    "ITE doubleword 1": [F.ITE1_ICID, F.ITE1_VPEID, F.ITE1_DOORBELL],
    "level-1 entry": [F.L1E_VALID, F.L1E_ADDR],
    "MAPD DW1, DW2": [F.C1_SIZE, F.C2_V, F.C2_ITT],
    "MAPC DW2": [F.C2_ICID, F.C2_RDBASE, F.C2_V],
    "MAPTI DW1": [F.C1_EVENTID, F.C1_PINTID],
    "VMAPTI DW1": [F.C1_EVENTID, F.C1_VPEID],
    "VMAPTI DW2": [F.C2_VINTID, F.C2_DOORBELL],
    "VMOVI DW2": [F.C2_D, F.C2_DOORBELL],
    "VMAPP DW3": [F.C3_VPT_SIZE, F.C3_VPT_ADDR],
}


def test_the_c_header_is_generated_from_the_python_definitions() -> None:
    on_disk = (ROOT / "csrc" / "gic_formats.h").read_text()
    assert on_disk == F.c_header(), (
        "csrc/gic_formats.h is stale: python -m pymsi.core.gic_formats > csrc/gic_formats.h")


def test_the_header_has_every_field_opcode_and_error() -> None:
    text = F.c_header()
    for name in F._C_FIELDS:
        f = getattr(F, name)
        assert f"#define PYMSI_{name}_SHIFT {f.lo}\n" in text
        assert f"#define PYMSI_{name}_MASK UINT64_C({(1 << f.width) - 1:#x})\n" in text
    for c in F.Cmd:
        assert re.search(rf"#define PYMSI_ITS_CMD_{c.name} 0x0*{c.value:x}\n", text)
    for e in F.ItsError:
        assert re.search(rf"#define PYMSI_ITS_E_{e.name} 0x0*{e.value:x}\n", text)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_the_fields_of_one_word_do_not_overlap(name: str) -> None:
    seen = 0
    for f in ENTRIES[name]:
        assert 0 <= f.lo <= f.hi < 64
        assert not seen & f.mask, f"{name}: {f} overlaps"
        seen |= f.mask


@given(st.integers(0, 63).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 63))),
       st.integers(0, 2**70))
def test_encode_keeps_the_fields_bits_and_get_reads_them_back(bounds: tuple[int, int],
                                                              value: int) -> None:
    lo, hi = bounds
    f = Field(hi, lo)
    word = f.encode(value)
    assert word & ~f.mask == 0
    assert f.get(word) == value % (1 << (hi - lo + 1))
    if value < 1 << f.width:
        assert f(value) == word


def test_the_model_the_driver_and_kvm_use_the_one_definition() -> None:
    # the ITS model re-exports the same objects, not copies
    assert I.Cmd is F.Cmd and I.ItsError is F.ItsError
    assert I.DTE_ITT is F.DTE_ITT and I.C2_ICID is F.C2_ICID
    # and no module of the package defines them again
    names = {"Cmd", "ItsError", "LPI_BASE", *(n for n in dir(F) if re.fullmatch(
        r"(C[0-3]|DTE|CTE|VPE0|ITE[01]|L1E)_[A-Z0-9_]+", n))}
    again = []
    for path in sorted((ROOT / "pymsi").rglob("*.py")):
        if path.name == "gic_formats.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in names:
                again.append(f"{path.name}: class {node.name}")
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name) and n.id in names and not (
                                isinstance(node.value, ast.Attribute)
                                and ast.unparse(node.value) == f"F.{n.id}"):
                            again.append(f"{path.name}: {n.id} =")
    assert not again, again


def test_a_driver_built_command_decodes_to_its_parameters() -> None:
    # MAPTI as the host ITS driver builds it, read back with the model's fields
    dev, event, lpi, icid = 0x1_0008, 37, 8192 + 99, 3
    d0 = F.Cmd.MAPTI | F.C0_DEVICEID.encode(dev)
    d1 = F.C1_PINTID.encode(lpi) | F.C1_EVENTID.encode(event)
    d2 = F.C2_ICID.encode(icid)
    assert (F.C0_OP.get(d0), F.C0_DEVICEID.get(d0), F.C1_EVENTID.get(d1),
            F.C1_PINTID.get(d1), F.C2_ICID.get(d2)) == (F.Cmd.MAPTI, dev, event, lpi, icid)
