"""``pymsi demo``: the whole machine's path per vector, read from the trace.

Expected values come from the architecture and the Arm virt board, not from the demo:

* the host doorbell is GITS_TRANSLATER = ITS base 0x08080000 + 0x10040 = 0x08090040, and
  with vITS at the same GPA the guest's stage 1 ends at IPA 0x08090040 too;
* the device 00:01.0 has requester ID (bus 0, device 1, function 0) = 1 << 3 = 0x8, which is
  its StreamID and its ITS DeviceID; the ITS EventID is the MSI data;
* an arm64 Linux guest with a DMA domain takes its MSI page from the top of its IOVA space,
  0xfffff000, so its MSI address is 0xfffff040 (DESIGN.md section 4, the real 6.1 guest);
* an affinity move of a GICv3 ITS interrupt is a MOVI: the message stays the same.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest

from pymsi import cli
from pymsi.demo import VARIANTS, VSMMUS, collect, describe_path, path_from_trace, run, to_json
from pymsi.trace import TraceRecord

ITS_BASE = 0x0808_0000
DOORBELL = ITS_BASE + 0x1_0040
RID = (0 << 8) | (1 << 3) | 0
GUEST_MSI_IOVA = 0xFFFF_F000 | (DOORBELL & 0xFFF)


@pytest.fixture(scope="module")
def facts():
    return collect()


def test_every_vector_goes_guest_iova_stage1_stage2_doorbell_guest_handler(facts):
    assert facts["host_doorbell"] == DOORBELL
    assert [pv["vector"] for pv in facts["vectors"]] == [0, 1, 2, 3]
    for pv in facts["vectors"]:
        p = pv["path"]
        assert pv["guest_msi"]["address"] == GUEST_MSI_IOVA
        assert p["write"]["address"] == GUEST_MSI_IOVA       # per-vector: the guest's own IOVA
        assert p["write"]["rid"] == RID
        t = p["translation"]
        assert t["stage"] == 3                                 # nested: stage 1 then stage 2
        assert t["s1"] == (GUEST_MSI_IOVA, DOORBELL)
        assert t["s2"] == (DOORBELL, DOORBELL)
        assert t["pa"] == DOORBELL
        assert p["fault"] is None
        assert p["its"]["doorbell"] == DOORBELL
        assert p["its"]["devid"] == RID
        assert p["its"]["eventid"] == p["write"]["data"]
        assert p["its"]["lpi"] >= 8192 and p["its"]["vlpi"] is None
        assert p["host_handler"] is not None and p["host_handler"]["cpu"] == p["its"]["cpu"]
        assert p["kvm"]["address"] == DOORBELL and p["kvm"]["devid"] == RID
        assert p["kvm"]["data"] == pv["guest_msi"]["data"]
        assert p["vits"]["eventid"] == pv["guest_msi"]["data"]
        assert p["guest_handlers"] == 1
        assert p["guest_handler"]["irq"] == pv["guest_irq"]
        assert p["guest_handler"]["cpu"] == p["vits"]["vcpu"] == pv["guest_cpu"]
    lpis = [pv["path"]["its"]["lpi"] for pv in facts["vectors"]]
    assert len(set(lpis)) == 4
    assert facts["verdict"]["ok"]


def test_the_move_keeps_the_address_and_moves_the_interrupt(facts):
    assert len(facts["moves"]) == 4
    for mv, pv in zip(facts["moves"], facts["vectors"], strict=True):
        assert mv["to_vcpu"] != mv["from_vcpu"] == pv["guest_cpu"]
        assert mv["path"]["guest_handler"]["cpu"] == mv["to_vcpu"]
        assert mv["path"]["guest_handlers"] == 1
        assert mv["path"]["write"]["address"] == pv["path"]["write"]["address"] == GUEST_MSI_IOVA
        assert mv["guest_msi"] == pv["guest_msi"]
        assert mv["path"]["translation"]["pa"] == DOORBELL
        names = [c["name"] for c in mv["commands"]]
        assert "vgic_its_cmd_movi" in names                   # the guest's MOVI reached KVM


def test_text_output_shows_the_hops_per_vector():
    out = io.StringIO()
    assert run(out) == 0
    text = out.getvalue()
    s1 = re.findall(r"stage 1 \(guest's tables\): IOVA (0x[0-9a-f]+) -> IPA (0x[0-9a-f]+)", text)
    s2 = re.findall(r"stage 2 \(host IOAS\): IPA (0x[0-9a-f]+) -> PA (0x[0-9a-f]+)", text)
    assert len(s1) == len(s2) == 8                             # 4 vectors, before and after
    assert all(int(a, 16) == GUEST_MSI_IOVA and int(b, 16) == DOORBELL for a, b in s1)
    assert all(int(a, 16) == int(b, 16) == DOORBELL for a, b in s2)
    moved = re.findall(r"\(vCPU (\d+) -> (\d+)\).*\n\s+device writes (0x[0-9a-f]+) \((\w+)\); "
                       r"guest handler on vCPU (\d+)", text)
    assert len(moved) == 4
    for frm, to, addr, same, got in moved:
        assert frm != to == got and same == "unchanged" and int(addr, 16) == GUEST_MSI_IOVA
    # one hex format: no 0X, no zero-padded addresses
    assert not re.search(r"0X|0x0[0-9a-f]", text)


def test_json_has_the_same_facts(facts):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["demo", "--json"]) == 0
    j = json.loads(out.getvalue())
    assert j == json.loads(json.dumps(to_json(facts)))
    for pv in j["vectors"]:
        assert int(pv["path"]["translation"]["pa"], 16) == DOORBELL
        assert int(pv["path"]["write"]["address"], 16) == GUEST_MSI_IOVA
    for mv in j["moves"]:
        assert mv["path"]["guest_handler"]["cpu"] == mv["to_vcpu"] != mv["from_vcpu"]


def test_trace_option_prints_exactly_the_matching_records():
    out = io.StringIO()
    assert run(out, vectors=1, trace_pattern="smmuv3_translate_success,kvm_msi_*") == 0
    recs = [json.loads(m) for m in re.findall(r"^\s+trace: (\{.*\})$", out.getvalue(), re.M)]
    assert sorted({r["name"] for r in recs}) == ["kvm_msi_set_irq", "smmuv3_translate_success"]
    assert len(recs) == 4                                      # one each, before and after


def test_head_of_a_pipe_exits_quietly():
    p = subprocess.Popen([sys.executable, "-m", "pymsi.cli", "demo"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ))
    first = p.stdout.readline()
    p.stdout.close()                                          # `| head -1`
    err = p.stderr.read()
    assert p.wait(timeout=60) == 0
    assert first.startswith(b"pymsi demo")
    assert err == b""


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("vsmmu", VSMMUS)
def test_every_combination_delivers_or_records_why_not(variant, vsmmu):
    f = collect(variant=variant, vsmmu=vsmmu, vectors=2)
    for pv in f["vectors"] + f["moves"]:
        p = pv["path"]
        assert p["write"] is not None
        if p["guest_handler"] is not None:                      # delivered: once, whole path
            assert p["guest_handlers"] == 1 and p["fault"] is None
            assert p["vits"]["vcpu"] == p["guest_handler"]["cpu"]
            if vsmmu != "emulated":
                assert p["translation"]["pa"] == DOORBELL
        else:                                                   # not delivered: a fault says why
            assert p["fault"] is not None and p["fault"]["recorded"]
            assert p["its"] is None and p["kvm"] is None
    if variant == "per-vector":
        assert f["verdict"]["ok"]
    if vsmmu == "accel" and variant in ("dma-cookie", "preset"):
        # dma-cookie: no cookie on a nested domain, the doorbell PA goes out raw and the
        # guest's stage 1 has no mapping there; preset: PREPARE'd IOVA programmed into the
        # nest parent (stage 2), not the guest's stage 1 -> both fault in nested mode.
        assert f["verdict"]["delivered"] == 0 and f["verdict"]["faults"] == 4
    if vsmmu == "emulated":                                    # the VMM's NIC behind the vSMMU
        p = f["vectors"][0]["path"]
        assert p["translation"]["unit"].startswith("vSMMU")
        assert p["translation"]["pa"] == DOORBELL               # the vITS doorbell GPA
        assert p["host_handler"] is None and p["its"] is None and not p["kvm"]["irqfd"]


def test_gicv4_injects_vlpis_and_the_move_is_a_vmovi():
    f = collect(gicv4=True, vectors=2)
    assert f["verdict"]["ok"]
    for pv in f["vectors"]:
        p = pv["path"]
        assert p["its"]["vlpi"] is not None and p["its"]["lpi"] is None
        assert p["host_handler"] is None and p["kvm"] is None  # no host handler, no irqfd
    for mv in f["moves"]:
        assert any(c["name"] == "gicv3_its_cmd_vmovi" for c in mv["commands"])


@pytest.mark.parametrize("argv", [["--variant", "bogus"], ["--vsmmu", "nested"],
                                  ["--vectors", "0"], ["--vectors", "x"],
                                  ["--vectors", "65"], ["--gicv4", "yes"],
                                  ["--trace", "smmuv3_*,"], ["--trace", "Bad Name"]])
def test_bad_options_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", *argv])
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_fault_path_is_described_as_a_fault_without_delivery():
    recs = [TraceRecord("msi_send_message", 0, 0, {"rid": 8, "vector": 0,
                                                   "address": 0x8090040, "data": 0}),
            TraceRecord("smmuv3_record_event", 1, 0, {"type": "F_TRANSLATION", "sid": 8,
                                                      "addr": 0x8090040, "recorded": True}),
            TraceRecord("smmuv3_translate_abort", 2, 0, {"sid": 8, "addr": 0x8090040,
                                                         "is_write": True,
                                                         "event": "F_TRANSLATION"})]
    p = path_from_trace(recs, "host SMMUv3")
    assert p["fault"] == {"unit": "host SMMUv3", "address": 0x8090040,
                          "event": "F_TRANSLATION", "recorded": True}
    assert p["translation"] is None and p["guest_handler"] is None
    text = "\n".join(describe_path(p))
    assert "FAULT F_TRANSLATION at 0x8090040" in text and "NOT REACHED" in text
