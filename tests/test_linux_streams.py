"""The kernel model's drivers against what a real Linux 6.1 wrote (tests/data).

tests/data/arm64_smmuv3_s1.json holds every ITS command (raw, from the queue in
RAM), every ITS and SMMU register write and every SMMU command an unmodified
Linux 6.1 arm64 guest issued on QEMU's "virt" board, for virtio-rng at
00:01.0 (2 MSI-X vectors) and virtio-blk at 00:02.0 (5: one config vector,
then four managed queue vectors, one per CPU), then two affinity changes of
rng's vector 1 (to CPU 2, then CPU 3) and a refused one of a managed vector.
Here the kernel model runs the same scenario on ArmVirt (QEMU's defaults)
and its command streams and register writes must be the real ones, field by
field, with only table and queue addresses masked out.
"""

from __future__ import annotations

import errno

import pytest

from pymsi.hw import its as I
from pymsi.kernel.base import KernelError
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.msi import MsiType
from pymsi.machine import ArmVirt

from linux_fixture import capture, h

CAP = capture()

# The ITS registers the capture names, by offset (GIC architecture spec, 12.19).
ITS_REGS = {0x0: "GITS_CTLR", 0x80: "GITS_CBASER", 0x88: "GITS_CWRITER",
            **{0x100 + 8 * n: f"GITS_BASER{n}" for n in range(8)}}
# Address fields, from the architecture: GITS_BASER<n>.Physical_Address [47:12] (64K
# pages: [47:16] plus [15:12] = PA[51:48]), GITS_CBASER.Physical_Address [51:12];
# MAPD's ITT_addr is command doubleword 2 bits [51:8].
BASER_PA_MASK = ((1 << 48) - 1) & ~0xFFF
CBASER_PA_MASK = ((1 << 52) - 1) & ~0xFFF
MAPD_ITT_MASK = ((1 << 52) - 1) & ~0xFF
ITS_OP_MAPD = 0x08


class Recorder:
    """Wraps a device model's mmio_write to keep (offset, value, size) of every write."""

    def __init__(self, model) -> None:
        self.writes: list[tuple[int, int, int]] = []
        inner = model.mmio_write

        def mmio_write(offset, value, size=4, **kw):
            self.writes.append((offset, value, size))
            return inner(offset, value, size, **kw)

        model.mmio_write = mmio_write


def its_scenario():
    """The capture's scenario on ArmVirt: boot, rng's and blk's drivers, two moves."""
    m = ArmVirt(devices=[{"msix": 2}, {"msix": 5}])
    its_rec = Recorder(m.its)
    smmu_rec = Recorder(m.smmu)
    k = m.boot()
    rng, blk = k.pci.devices
    assert (rng.rid, blk.rid) == (0x8, 0x10)
    rng_drv = MsiCountingDriver(k, rng, 2, MsiType.MSIX, name="virtio0")
    # virtio-blk: pci_alloc_irq_vectors_affinity() with one pre-vector (config,
    # unmanaged) and four queue vectors spread one per CPU (managed).
    blk.enable_device()
    blk.set_master()
    assert k.msi.alloc_irq_vectors(blk, 1, 1, MsiType.MSIX) == 1
    for q in range(4):
        k.msi.msix_alloc_irq_at(blk, q + 1, affinity=frozenset({q}))
    blk_irqs = [k.msi.irq_vector(blk, v) for v in range(5)]
    for v, irq in enumerate(blk_irqs):
        k.irq.request_irq(irq, lambda irq, v: 1, f"virtio1-{v}", v)
    boot_cwriter = m.its.cwriter
    k.proc_write(f"/proc/irq/{rng_drv.irqs[1]}/smp_affinity", "4")
    k.proc_write(f"/proc/irq/{rng_drv.irqs[1]}/smp_affinity", "8")
    with pytest.raises(KernelError) as e:
        k.proc_write(f"/proc/irq/{blk_irqs[1]}/smp_affinity", "8")
    assert e.value.errno == errno.EIO
    return m, k, its_rec, smmu_rec, boot_cwriter


@pytest.fixture(scope="module")
def scenario():
    return its_scenario()


def its_commands(m) -> list[list[int]]:
    """Every command in the ITS queue, raw, read from RAM (the queue never wrapped)."""
    base = I.CBASER_PA.get(m.its.cbaser) << 12
    return [[m.ram.read_u64(base + off + 8 * i) for i in range(4)]
            for off in range(0, m.its.cwriter, 32)]


def mask_its_cmd(words: list[int]) -> list[int]:
    if words[0] & 0xFF == ITS_OP_MAPD:
        return [words[0], words[1], words[2] & ~MAPD_ITT_MASK, words[3]]
    return list(words)


def test_its_command_stream_is_linux_61s(scenario):
    """Opcode, DeviceID, EventID, pINTID, ICID, Size, V and every SYNC's target:
    MAPD with no SYNC, MOVI followed by a SYNC to the collection it left."""
    m, k, *_ = scenario
    real = [[h(x) for x in c["raw"]] for c in CAP["its"]["commands"]]
    assert [c["name"] for c in CAP["its"]["commands"]].count("MAPD") == 2
    ours = its_commands(m)
    assert len(ours) == len(real) == 50
    for i, (o, r) in enumerate(zip(ours, real, strict=True)):
        assert mask_its_cmd(o) == mask_its_cmd(r), (i, CAP["its"]["commands"][i]["name"])


def test_its_register_writes_are_linux_61s(scenario):
    """BASERs zeroed, then sized (page size, then Indirect) and programmed
    inner-shareable RaWaWb, CBASER likewise, CWRITER, CTLR enabled last by
    read-modify-write, then one 32-bit CWRITER write per command (+ SYNC)."""
    m, k, its_rec, *_ = scenario
    real = [(w["reg"], h(w["value"]), w["size"]) for w in CAP["its"]["register_writes"]]
    ours = [(ITS_REGS.get(off, hex(off)), v, size) for off, v, size in its_rec.writes]

    def mask(reg, v):
        if reg.startswith("GITS_BASER") and v >> 63:
            return v & ~BASER_PA_MASK
        return v & ~CBASER_PA_MASK if reg == "GITS_CBASER" else v

    assert [(r, mask(r, v), s) for r, v, s in ours] == [(r, mask(r, v), s) for r, v, s in real]


def test_its_attributes_decode_as_linux_asks():
    """The capture's CBASER and device-table BASER, decoded with the architecture's
    fields: valid, InnerCache RaWaWb, Inner Shareable, and our model keeps them."""
    cbaser = h(CAP["its"]["cmdq"]["GITS_CBASER"])
    baser0 = h(CAP["its"]["register_writes"][10]["value"])
    for v in (cbaser, baser0):
        assert v >> 63 == 1 and (v >> 59) & 7 == 0b111 and (v >> 10) & 3 == 0b01
    assert cbaser & 0xFF == 0xF and (baser0 >> 62) & 1 == 1       # 64 KiB queue; 2-level DT
    m = ArmVirt(devices=[])
    m.boot()
    ours = m.its.mmio_read(I.GITS_CBASER, 8)
    assert ours & ~CBASER_PA_MASK == cbaser & ~CBASER_PA_MASK


def test_its_identification_reads_match():
    """GITS_PIDR2 0x3b (ArchRev 3: GICv3), GITS_CTLR quiescent and disabled at reset,
    the BASERs' read-only type / entry size, CREADR 0."""
    first = CAP["its"]["id_and_first_reads"]
    m = ArmVirt(devices=[])
    its = m.its
    assert its.mmio_read(I.GITS_PIDR2, 4) == h(first["GITS_PIDR2"]) == 0x3B
    assert its.mmio_read(I.GITS_CTLR, 4) == h(first["GITS_CTLR"])
    assert its.mmio_read(I.GITS_IIDR, 4) == h(first["GITS_IIDR"])
    for n in range(8):
        assert its.mmio_read(I.GITS_BASER + 8 * n, 8) == h(first[f"GITS_BASER{n}"]), n
    assert its.mmio_read(I.GITS_CREADR, 8) == h(first["GITS_CREADR"])


def test_its_probe_refuses_what_is_not_an_its():
    """Linux checks GITS_PIDR2.ArchRev (3 or 4) before touching anything: ENODEV."""
    from pymsi.kernel.gic import ItsDriver

    m = ArmVirt(devices=[], smmu=None)
    k = m.boot()
    rec = Recorder(m.its)
    its = m.its
    its.mmio_read = lambda off, size=4, **kw: 0x2B if off == I.GITS_PIDR2 else 0
    drv = ItsDriver(k, k.gic, m.ITS)
    with pytest.raises(KernelError) as e:
        drv.probe()
    assert e.value.errno == errno.ENODEV and rec.writes == []
    assert any("No ITS detected" in line for line in k.log)


def test_its_gicv4_reads_archrev_4_and_probes():
    m = ArmVirt(devices=[{"msix": 2}], gicv4=True, smmu=None)
    assert m.its.mmio_read(I.GITS_PIDR2, 4) == 0x4B
    k = m.boot()
    assert k.its.virtual


def test_its_probe_quiesces_an_enabled_its_and_falls_back_on_shareability():
    """its_force_quiescent(): an ITS left enabled (kexec) is disabled first.  A BASER
    whose Shareability reads back as 0 gets non-cacheable memory (retry)."""
    from pymsi.kernel.gic import ItsDriver

    m = ArmVirt(devices=[], smmu=None)
    k = m.boot()
    its = m.its
    assert its.ctlr & I.CTLR_ENABLED
    inner = its.mmio_write

    def no_shareability(off, value, size=4, **kw):
        if I.GITS_BASER <= off < I.GITS_BASER + 64 or off == I.GITS_CBASER:
            value &= ~I.BASER_SHAREABILITY.mask
        return inner(off, value, size, **kw)

    its.mmio_write = no_shareability
    rec = Recorder(its)
    drv = ItsDriver(k, k.gic, m.ITS)
    drv.probe()
    assert rec.writes[0] == (I.GITS_CTLR, 0, 4)
    assert [w for w in rec.writes[1:9]] == [(I.GITS_BASER + 8 * n, 0, 8) for n in range(8)]
    dt = its.mmio_read(I.GITS_BASER, 8)
    assert dt >> 63 and I.BASER_SHAREABILITY.get(dt) == 0
    assert I.BASER_INNER_CACHE.get(dt) == I.CACHE_NC
    cb = its.mmio_read(I.GITS_CBASER, 8)
    assert I.BASER_INNER_CACHE.get(cb) == I.CACHE_NC and its.ctlr & I.CTLR_ENABLED


def test_its_moves_are_synced_to_the_old_collection(scenario):
    """MOVI ICID 2 then ICID 3, each followed by SYNC to the RDbase it left (1, then 2)."""
    m, k, *_ = scenario
    cmds = its_commands(m)[-4:]
    assert [c[0] & 0xFF for c in cmds] == [0x01, 0x05, 0x01, 0x05]
    assert [c[2] & 0xFFFF for c in cmds[0::2]] == [2, 3]
    assert [(c[2] >> 16) & 0xFFFFFFFF for c in cmds[1::2]] == [1, 2]

