"""pymsi.testing itself: its strategies build what they say (checked against the models
that consume them), its state machines pass on the designs DESIGN.md says keep every
invariant and catch the ones the compare table says do not, and importing pymsi does
not need hypothesis."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from pymsi import core
from pymsi.core import Prot
from pymsi.hw.smmuv3 import Outcome
from pymsi.hw.smmuv3_regs import EventType, SteConfig
from pymsi.kernel.base import KernelError, parse_cpumask
from pymsi.machine import ArmVirt
from pymsi.machine.desc import ArmVirtDesc
from pymsi.testing import GuestMachine, InvariantViolation, VfioUserspace, invariants
from pymsi.testing import strategies as pst
from pymsi.vmmlib import SET, Vmm

from kernel_util import examples
from test_smmuv3 import PT_POOL, RAM, Env

CD_AT = RAM + 0x0140_0000          # where the STEs under test point their CD
FEW = settings(max_examples=examples(25), deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example])


# -- STE / CD words --------------------------------------------------------------------------


def _translate(ste, cd=None):
    e = Env()
    e.drv.init(evtq_log2=3)
    if cd is not None:
        e.mem.write(CD_AT, b"".join(w.to_bytes(8, "little") for w in cd))
    e.drv.write_ste(5, ste)
    return e.smmu.translate(5, 0x1000, True)


@FEW
@given(ste=pst.ste_words(ctxptr=CD_AT, oas=44))
def test_valid_ste_words_are_never_a_bad_ste(ste):
    r = _translate(ste)
    event(f"config {SteConfig((ste[0] >> 1) & 7).name}: {r.outcome.name}")
    assert r.event != EventType.C_BAD_STE, [hex(w) for w in ste]
    if (ste[0] >> 1) & 7 == SteConfig.BYPASS:
        assert r.pa == 0x1000


@FEW
@given(ste=pst.ste_words(valid=False, ctxptr=CD_AT, s2ttb=PT_POOL))
def test_mutated_ste_words_are_judged_by_the_smmu_never_raised(ste):
    """Bad input never crashes: a mutated STE translates, bypasses or aborts with an
    architected event."""
    r = _translate(ste)
    event(f"{r.outcome.name} {r.event.name if r.event is not None else ''}")
    assert r.outcome in Outcome
    assert r.event is None or r.event in set(EventType)


@FEW
@given(cd=pst.cd_words(ttb0=PT_POOL, oas=44))
def test_valid_cd_words_are_never_a_bad_cd(cd):
    ste = [1 | SteConfig.S1 << 1 | CD_AT, 2 | 1 << 2 | 1 << 4 | 3 << 6, 0, 0, 0, 0, 0, 0]
    r = _translate(ste, cd)
    assert r.event not in (EventType.C_BAD_CD, EventType.C_BAD_STE), [hex(w) for w in cd]


@FEW
@given(valid=pst.ste_words(config=int(SteConfig.BYPASS)))
def test_an_invalid_ste_is_one_bit_from_a_valid_one(valid):
    """What the mutation produces: a flipped V bit is a bad STE (the model's own check)."""
    assert _translate(valid).event is None
    assert _translate([valid[0] ^ 1] + valid[1:]).event == EventType.C_BAD_STE


# -- stage configurations, page tables, MSI tables ----------------------------------------------


@FEW
@given(maps=pst.page_tables(granule=4096, ias=40, oas=40))
def test_page_tables_map_and_translate_back(maps):
    mem = core.Memory()
    mem.add_ram(0x4000_0000, 0x40_0000)
    pt = core.IoPgtable(mem, core.TableAllocator(mem, 0x4000_0000, 0x40_0000), fmt="s1",
                        ias=40, oas=40)
    spans = sorted((m.iova, m.iova + m.size) for m in maps)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    for m in maps:
        assert m.prot & (Prot.READ | Prot.WRITE)
        pt.map(m.iova, m.pa, m.size, m.prot)
    for m in maps:
        assert pt.iova_to_phys(m.iova) == m.pa
        assert pt.iova_to_phys(m.iova + m.size - 1) == m.pa + m.size - 1


@FEW
@given(cfg=pst.xlate_configs(stages="nested", granule=16384))
def test_xlate_configs_honour_their_arguments(cfg):
    assert cfg.s1 is not None and cfg.s2 is not None
    assert cfg.s1.granule0 == cfg.s1.granule1 == cfg.s2.granule == 16384


@FEW
@given(table=pst.msi_tables(max_devices=3, max_vectors=16))
def test_msi_tables_load_into_the_core_table(table):
    t = core.MsiTable()
    t.reserve(len(table))
    for (dev, vec), (iova, shift) in table.items():
        assert dev < 3 and vec < 16 and iova & 0xFFF == 0
        t.set(dev, vec, iova, shift)
    assert len(t) == len(table)
    for (dev, vec), entry in table.items():
        assert t.get(dev, vec) == entry


@given(cmd=pst.its_commands(valid=True, devices=2, events=3, collections=2, cpus=2))
def test_valid_its_commands_are_named_commands_in_their_universe(cmd):
    name, f = cmd
    assert name in pst.ITS_COMMAND_NAMES
    assert f["dev"] <= 2 and f["ev"] <= 5 and f["icid"] <= 2 and f["cpu"] <= 3


@given(cmd=pst.its_commands(valid=False))
def test_garbage_its_commands_never_carry_a_mapping_opcode(cmd):
    name, words = cmd
    assert name == "garbage" and len(words) == 4
    assert words[0] & 0xFF not in (0x01, 0x08, 0x09, 0x0A, 0x0B, 0x0F)


@given(value=st.integers(0, 0xFFFF), new=st.data())
def test_mutated_stays_within_its_width(value, new):
    out = new.draw(pst.mutated(value, bits=16))
    assert 0 <= out < 1 << 16


@given(d=pst.device_descriptions(max_vectors=4, msix=True, msi=False))
def test_device_descriptions_honour_forced_capabilities(d):
    assert 1 <= d["msix"] <= 4 and "msi" not in d


# -- CPU masks and /proc inputs ------------------------------------------------------------------


@given(mask=pst.cpu_masks(ncpus=6, min_size=1, max_size=3))
def test_cpu_masks_respect_their_bounds(mask):
    assert 1 <= len(mask) <= 3 and all(0 <= c < 6 for c in mask)


@given(text=pst.proc_inputs(valid=True, max_groups=4))
def test_valid_proc_inputs_parse_to_their_hex_value(text):
    groups = text.strip().split(b",") if text.strip() else []
    value = sum(int(g, 16) << 32 * n for n, g in enumerate(reversed(groups)))
    assert parse_cpumask(text, 128) == {c for c in range(128) if value >> c & 1}


@given(text=pst.proc_inputs())
def test_proc_inputs_parse_or_fail_like_linux(text):
    try:
        mask = parse_cpumask(text, 64)
    except KernelError as e:
        event(f"errno {e.errno}")
        assert e.errno in (22, 75)                   # EINVAL, EOVERFLOW
    else:
        event("parsed")
        assert all(0 <= c < 64 for c in mask)


# -- device and machine descriptions --------------------------------------------------------------


@settings(max_examples=examples(8), deadline=None)
@given(desc=pst.machine_descriptions(max_devices=2, max_vectors=8))
def test_machine_descriptions_build_and_boot(desc):
    m = ArmVirt(**desc)
    k = m.boot()
    assert len(m.functions) == len(k.pci.devices) == len(desc["devices"])
    for fn, d in zip(m.functions, desc["devices"], strict=True):
        assert (fn.msix.vectors if fn.msix_cap is not None else None) == d.get("msix")
        assert (fn.msi_cap is not None) == ("msi" in d)


@settings(max_examples=examples(6), deadline=None)
@given(desc=pst.machine_descriptions(max_devices=2, max_vectors=8, typed=True))
def test_typed_machine_descriptions_build_the_same_machine(desc):
    """The typed form (DESC's checked ArmVirtDesc) builds and boots, and its dict form
    round-trips through the checked description unchanged."""
    m = ArmVirt.from_description(desc)
    m.boot()
    assert m.description == desc
    assert ArmVirtDesc.from_dict(desc.to_dict()) == desc
    assert [f.msix for f in desc.devices] == [
        fn.msix.vectors if fn.msix_cap is not None else None for fn in m.functions]


# -- UAPI calls ---------------------------------------------------------------------------------


def _vmm():
    vmm = Vmm("per-vector", smmu="s1", n=1, devices=[{"msix": 8}])
    vmm.bind(0)
    vmm.attach()
    vmm.msi_iova(SET, 0, [0x2000_0000])
    return vmm


def _state(vmm):
    ctx = vmm.ctx()
    areas = {oid: tuple((a.iova, a.length) for a in o.areas)
             for oid, o in ctx.objects.items() if o.kind == "ioas"}
    return areas, sorted(ctx.msi.table.items()), sorted(ctx.objects)


@settings(max_examples=examples(40), deadline=None)
@given(calls=st.lists(pst.uapi_calls(dev_id=1), min_size=1, max_size=6))
def test_uapi_calls_succeed_or_fail_with_an_errno_changing_nothing(calls):
    vmm = _vmm()
    files = {"iommufd": vmm.ictx, "vfio": vmm.files[0]}
    for call in calls:
        before = _state(vmm)
        try:
            files[call.file].ioctl(call.request, call.arg)
        except OSError as e:
            event(f"{'valid' if call.valid else 'mutated'}: errno {e.errno}")
            assert e.errno > 0
            assert _state(vmm) == before, call
        else:
            event(f"{'valid' if call.valid else 'mutated'}: ok")


@given(call=pst.uapi_calls(valid=False))
def test_uapi_calls_valid_false_change_one_field(call):
    """A mutated call holds the changed value in the field it names."""
    name, old, new = call.mutation
    assert not call.valid and old != new and getattr(call.arg, name) == new


# -- the state machines -------------------------------------------------------------------------

MACHINE_RUN = settings(max_examples=examples(15), stateful_step_count=10, deadline=None)


class PerVectorNested(VfioUserspace):
    SMMU = "nested"


TestVfioUserspacePaging = VfioUserspace.TestCase
TestVfioUserspacePaging.settings = MACHINE_RUN
TestVfioUserspaceNested = PerVectorNested.TestCase
TestVfioUserspaceNested.settings = MACHINE_RUN
TestGuestMachine = GuestMachine.TestCase
TestGuestMachine.settings = settings(max_examples=examples(4), stateful_step_count=6, deadline=None)


@pytest.mark.parametrize("design", ["sw-msi", "preset", "dma-cookie"])
def test_vfio_userspace_catches_what_the_compare_table_shows(design):
    """``pymsi compare``'s table: under sw-msi, preset and dma-cookie the VMM's chosen
    address is not what the device writes -- the state machine finds that too."""
    machine = type(f"Vfio_{design}", (VfioUserspace,), {"DESIGN": design})
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=examples(30), stateful_step_count=6, deadline=None, database=None,
            derandomize=True, phases=(Phase.generate, Phase.shrink)))
    assert info.value.invariant in invariants.INVARIANTS


def test_guest_machine_catches_sw_msi_mapping_while_the_guest_enables():
    """The guest rows of ``pymsi compare``: under sw-msi the host maps its SW_MSI page while
    the guest's driver enables its vectors; GuestMachine stops at the first step."""
    machine = type("GuestSwMsi", (GuestMachine,), {"DESIGN": "sw-msi"})
    with pytest.raises(InvariantViolation) as info:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=1, deadline=None, database=None, phases=(Phase.generate,)))
    assert info.value.invariant == "no allocation on compose" and info.value.step == "boot"
    assert "sw_msi maps" in info.value.detail


def test_invariant_checks_name_what_broke():
    obs = invariants.StepObs("enable")
    obs.vectors.append(invariants.VectorObs(0, 1, 0x2000_1040, 0, False, 0x2000_5000,
                                            0x0809_0040))
    with pytest.raises(InvariantViolation) as info:
        invariants.address_stability(obs)
    assert info.value.invariant == "address stability" and info.value.step == "enable"
    assert "0x20001040" in info.value.detail and "0x20005040" in info.value.detail
    invariants.routing(obs)                          # the doorbell is reached: no error
    assert invariants.violations(obs) == {"address stability": info.value.detail}


# -- hypothesis stays optional ------------------------------------------------------------------


def test_pymsi_imports_without_hypothesis_and_testing_names_the_extra():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import pymsi, pymsi.machine, pymsi.compare\n"
            "try:\n    import pymsi.testing\n"
            "except ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("ImportError:") and "pymsi[test]" in out
