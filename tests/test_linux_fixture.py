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
