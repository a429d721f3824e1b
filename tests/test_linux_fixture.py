"""The walk and the table builder against what real Linux and QEMU did.

tests/data/arm64_smmuv3_s1.json holds page tables an unmodified Linux 6.1
arm64 guest wrote for two devices behind QEMU's SMMUv3, and every
translation and walk QEMU performed with them.
"""

from __future__ import annotations

from linux_fixture import capture, h, load_dump, stage1_of_cd

CAP = capture()
DEVICES = {d["stream_id"]: d for d in CAP["devices"]}


def cfg_for(core, sid):
    dev = DEVICES[sid]
    return core.XlateConfig(s1=stage1_of_cd(core, dev["cd"]["decoded"]), asid=dev["asid"])


def test_capture_is_what_we_expect():
    assert len(CAP["translations"]) == 178 and len(CAP["walks"]) == 83
    assert {d["stream_id"] for d in CAP["devices"]} == {"0x8", "0x10"}


def test_every_live_translation_reproduces(core):
    mem = load_dump(core, CAP)
    live = [t for t in CAP["translations"] if t["at_dump"] == "mapped"]
    assert len(live) == 68
    for t in live:
        r = core.walk(mem, h(t["iova"]), cfg=cfg_for(core, t["sid"]))
        assert r.fault is None, t
        assert r.pa == h(t["pa"]), t
        assert r.page_size == h(t["page_size"]) and r.level == t["level"]
        assert r.writable == (t["perm"] == 3)           # QEMU's perm: 1 RO, 3 RW


def test_every_traced_walk_reproduces_from_its_ptes(core):
    """Even walks whose mappings were gone by the dump: replay the PTEs QEMU read."""
    for w in CAP["walks"]:
        mem = core.Memory()
        mem.add_ram(0x4000_0000, 0x2000_0000)
        for step in w["steps"]:
            mem.write_u64(h(step["pte_addr"]), h(step["pte"]))
        r = core.walk(mem, h(w["iova"]), cfg=cfg_for(core, w["sid"]))
        assert r.fault is None and r.pa == h(w["pa"]) and r.level == w["leaf_level"], w


def test_msi_iova_reaches_gits_translater(core):
    mem = load_dump(core, CAP)
    doorbell = h(CAP["platform"]["gits_translater_pa"])
    for sid, dev in DEVICES.items():
        table = core.MsiTable()
        table.set(h(sid), 1, h(dev["msi_iova"]) & ~0xFFF, 12)
        addr = table.compose(h(sid), 1, doorbell)
        assert addr == h(dev["msi_iova"]) == 0xFFFF_F040
        r = core.translate(mem, addr, True, cfg=cfg_for(core, sid), tlb=core.Iotlb(8))
        assert r.pa == doorbell == 0x0809_0040


def leaf_ptes():
    for w in CAP["walks"]:
        yield h(w["iova"]), h(w["steps"][-1]["pte"])


def test_builder_writes_the_ptes_linux_wrote(core):
    """Same prot, same descriptor bits as io-pgtable-arm in a real kernel."""
    P = core.Prot
    mem = core.Memory()
    mem.add_ram(0x4000_0000, 0x10_0000)
    pt = core.IoPgtable(mem, core.TableAllocator(mem, 0x4000_0000, 0x10_0000), ias=48, oas=44)
    oa = 0xFFFF_FFFF_F000
    by_prot = {
        P.READ | P.WRITE | P.CACHE: "bidirectional DMA",
        P.READ | P.CACHE: "DMA to the device",
        P.WRITE | P.NOEXEC | P.MMIO: "the MSI doorbell",
    }
    seen = set()
    for iova, pte in leaf_ptes():
        matches = [p for p in by_prot if pt.leaf_bits(p) | 0b11 == pte & ~oa]
        assert len(matches) == 1, hex(pte)
        seen.add(matches[0])
        if iova & ~0xFFF == 0xFFFF_F000:
            assert matches[0] == P.WRITE | P.NOEXEC | P.MMIO
    assert seen == set(by_prot)
    # And the doorbell leaf exactly, address included.
    pt.map(0xFFFF_F000, 0x0809_0000, 0x1000, P.WRITE | P.NOEXEC | P.MMIO)
    r = core.walk(mem, 0xFFFF_F040, True, s1=pt.stage1_config())
    assert r.pa == 0x0809_0040
    msi_leaves = {pte for iova, pte in leaf_ptes() if iova & ~0xFFF == 0xFFFF_F000}
    assert msi_leaves == {0x0060_0000_0809_0E4B}
    leaf = pt.leaf_bits(P.WRITE | P.NOEXEC | P.MMIO) | 0x0809_0000 | 0b11
    assert leaf == 0x0060_0000_0809_0E4B


def test_smmu_model_replays_what_linux_programmed(core):
    """Registers and commands exactly as the real driver issued them, then every
    recorded translation through the SMMU model's own STE/CD decoding."""
    from pymsi.hw.smmuv3 import Outcome, SMMUv3

    mem = load_dump(core, CAP)
    for dev in CAP["devices"]:
        mem.write_u64(h(dev["l1_descriptor"]["addr"]), h(dev["l1_descriptor"]["word"]))
        for what in ("ste", "cd"):
            words = [h(w) for w in dev[what]["words"]]
            mem.write(h(dev[what]["addr"]), b"".join(w.to_bytes(8, "little") for w in words))
    smmu = SMMUv3(mem, stages="s1", oas=44, sidsize=16)
    recorded = CAP["smmu"]["id_and_first_reads"]
    ours, theirs = smmu.mmio_read(0x0), h(recorded["IDR0"])
    for lo, width in ((0, 2), (2, 2), (24, 2), (26, 1), (27, 2)):   # S1P/S2P TTF STALL TERM ST
        assert (ours >> lo) & ((1 << width) - 1) == (theirs >> lo) & ((1 << width) - 1)
    assert smmu.mmio_read(0x14) & 0x77 == h(recorded["IDR5"]) & 0x77     # OAS, granules
    for w in CAP["smmu"]["register_writes"]:                 # the driver's bring-up
        if w["phase"] == 0:
            smmu.mmio_write(h(w["offset"]), h(w["value"]), w["size"])
    cmdq = h(CAP["smmu"]["cmdq"]["base_pa"])
    for c in CAP["smmu"]["commands"]:     # every command the kernel queued, read from RAM
        raw = [h(x) for x in c["raw"]]
        mem.write(cmdq + 16 * c["index"], b"".join(x.to_bytes(8, "little") for x in raw))
        smmu.mmio_write(0x98, (c["index"] + 1) & 0x1FFFF)
        assert smmu.mmio_read(0x9C) >> 24 & 0x7F == 0, c      # no command error
        assert smmu.mmio_read(0x9C) & 0x1FFFF == (c["index"] + 1) & 0x1FFFF
    assert smmu.mmio_read(0x24) == 0xD                        # SMMUEN | EVENTQEN | CMDQEN
    live = [t for t in CAP["translations"] if t["at_dump"] == "mapped"]
    for t in live:
        r = smmu.translate(h(t["sid"]), h(t["iova"]), write=t["perm"] == 3)
        assert r.outcome is Outcome.TRANSLATED and r.pa == h(t["pa"]), t
    for dev in CAP["devices"]:
        r = smmu.translate(h(dev["stream_id"]), h(dev["msi_iova"]), write=True)
        assert r.pa == h(CAP["platform"]["gits_translater_pa"])
    assert smmu.stats["events_recorded"] == 0 and smmu.stats["events_dropped"] == 0
    assert smmu.stats["commands"] == len(CAP["smmu"]["commands"])
