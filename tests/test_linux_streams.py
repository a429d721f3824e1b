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



# --- arm-smmu-v3 ----------------------------------------------------------------------

# SMMUv3 register offsets (IHI 0070, 6.3); page-1 registers folded into page 0 as the
# capture names them.
SMMU_REGS = {0x20: "CR0", 0x28: "CR1", 0x2C: "CR2", 0x50: "IRQ_CTRL", 0x68: "GERROR_IRQ_CFG0",
             0x80: "STRTAB_BASE", 0x88: "STRTAB_BASE_CFG", 0x90: "CMDQ_BASE",
             0x98: "CMDQ_PROD", 0x9C: "CMDQ_CONS", 0xA0: "EVENTQ_BASE", 0xA8: "EVENTQ_PROD",
             0xAC: "EVENTQ_CONS", 0xB0: "EVENTQ_IRQ_CFG0"}
# STRTAB_BASE.ADDR [51:6]; CMDQ_BASE / EVENTQ_BASE.ADDR [51:5].
SMMU_ADDR_MASK = {"STRTAB_BASE": ((1 << 52) - 1) & ~0x3F,
                  "CMDQ_BASE": ((1 << 52) - 1) & ~0x1F, "EVENTQ_BASE": ((1 << 52) - 1) & ~0x1F}
SMMU_OP_CFGI_CD, SMMU_OP_TLBI_NH_VA = 0x05, 0x12


def smmu_commands(m) -> list[list[int]]:
    """Every command in the SMMU's command queue so far (raw doublewords, from RAM)."""
    base = m.smmu.mmio_read(0x90, 8) & ((1 << 52) - 1) & ~0x1F
    prod = m.smmu.mmio_read(0x98, 4) & 0xFFFF                # never wrapped here
    return [[m.ram.read_u64(base + 16 * i), m.ram.read_u64(base + 16 * i + 8)]
            for i in range(prod)]


def test_smmu_boot_and_attach_command_stream_is_linux_61s(scenario):
    """CFGI_ALL and TLBI_NSNH_ALL each with a CMD_SYNC (CS = SEV, MSH = Inner,
    MSIATTR = OIWB), then per device: the CD published, the STE published twice
    (CFGI_STE leaf + SYNC), PREFETCH_CONFIG, and the DMA domain's TLB flushed
    (TLBI_NH_ASID + SYNC), ASIDs 1 and 2.

    The one difference is deliberate: the model writes CDs as Linux 6.10+ does, with a
    CFGI_CD for the device in each step; Linux 6.1 wrote the CD before the device was on
    the domain, so its steps are bare CMD_SYNCs.  CFGI_CD is dropped from ours."""
    m, *_ = scenario
    real = []
    for c in CAP["smmu"]["commands"]:
        if h(c["raw"][0]) & 0xFF == SMMU_OP_TLBI_NH_VA:           # DMA traffic begins
            break
        real.append([h(x) for x in c["raw"]])
    assert len(real) == 22
    ours = [c for c in smmu_commands(m) if c[0] & 0xFF != SMMU_OP_CFGI_CD]
    assert ours == real


def test_smmu_register_writes_are_linux_61s(scenario):
    """Reset and enable: CR0, CR1 / CR2 attributes, stream table (2-level, split 8,
    16 bits), 2^16-entry command and 2^15-entry event queues, wired IRQs, SMMUEN."""
    m, k, its_rec, smmu_rec, _ = scenario
    real = [(w["reg"], h(w["value"]), w["size"]) for w in CAP["smmu"]["register_writes"]
            if w["phase"] == 0]
    ours = [(SMMU_REGS.get(off & 0xFFFF, hex(off)), v, size) for off, v, size in smmu_rec.writes]
    ours = [w for w in ours if w[0] != "CMDQ_PROD"]        # the capture only counts these

    def mask(reg, v):
        return v & ~SMMU_ADDR_MASK.get(reg, 0)

    assert [(r, mask(r, v), s) for r, v, s in ours] == [(r, mask(r, v), s) for r, v, s in real]


def test_armvirt_smmu_id_registers_are_qemus():
    """IDR0 / IDR1 / IDR5 equal the capture's; IDR3 too except BBML (not modelled)."""
    first = CAP["smmu"]["id_and_first_reads"]
    m = ArmVirt(devices=[])
    idr = {n: m.smmu.mmio_read(off, 4) for n, off in
           (("IDR0", 0x0), ("IDR1", 0x4), ("IDR3", 0xC), ("IDR5", 0x14))}
    assert idr["IDR0"] == h(first["IDR0"]) == 0x0D40101A
    assert idr["IDR1"] == h(first["IDR1"])
    assert idr["IDR5"] == h(first["IDR5"]) and idr["IDR5"] & 7 == 4       # OAS 44 bits
    bbml = 3 << 11                                                          # IDR3.BBML
    assert idr["IDR3"] & ~bbml == h(first["IDR3"]) & ~bbml
    assert (h(first["IDR3"]) & bbml) >> 11 == 2 and idr["IDR3"] & bbml == 0


def test_armvirt_smmu_options_reach_the_id_registers():
    m = ArmVirt(devices=[], smmu="nested", oas=48, ssidsize=8, sidsize=12, ril=False,
                msi=True, sev=True, cd2l=True, had=False)
    idr0, idr1 = m.smmu.mmio_read(0x0, 4), m.smmu.mmio_read(0x4, 4)
    assert idr0 & 3 == 3                                         # S1P and S2P
    assert (idr0 >> 13) & 1 and (idr0 >> 14) & 1 and (idr0 >> 19) & 1   # MSI, SEV, CD2L
    assert idr1 & 0x3F == 12 and (idr1 >> 6) & 0x1F == 8
    assert m.smmu.mmio_read(0xC, 4) & ((1 << 10) | (1 << 2)) == 0   # no RIL, no HAD
    assert m.smmu.mmio_read(0x14, 4) & 7 == 5


def test_armvirt_cd_matches_the_real_cd(scenario):
    """The kernel's CD for rng's DMA domain: every field but TTB0 as Linux 6.1 wrote it
    (IPS 4 = 44 bits from QEMU's OAS, the sign-extended MAIR, ASID 1); the STE too,
    but for the CD pointer."""
    m, k, *_ = scenario
    dev = next(d for d in CAP["devices"] if d["stream_id"] == "0x8")
    master = k.smmu.masters[k.pci.devices[0]]
    cd = [m.ram.read_u64(master.cd_table + 8 * i) for i in range(8)]
    real_cd = [h(x) for x in dev["cd"]["words"]]
    ttb0 = ((1 << 52) - 1) & ~0xF                                 # CD dword 1 TTB0 [51:4]
    assert cd[0] == real_cd[0] and (cd[0] >> 32) & 7 == 4
    assert cd[1] & ~ttb0 == real_cd[1] & ~ttb0 and cd[2:] == real_cd[2:]
    ste = [m.ram.read_u64(k.smmu._ste_addr(0x8) + 8 * i) for i in range(8)]
    real_ste = [h(x) for x in dev["ste"]["words"]]
    ctxptr = ((1 << 52) - 1) & ~0x3F                              # STE dword 0 [51:6]
    assert ste[0] & ~ctxptr == real_ste[0] & ~ctxptr and ste[1:] == real_ste[1:]


def test_stage2_attach_flushes_the_vmid_and_programs_s2ps_4():
    """A stage-2 DMA domain: PREFETCH_CONFIG after the STE, TLBI_S12_VMALL + SYNC for
    its VMID; S2PS = 4 (44 bits) from QEMU's OAS."""
    m = ArmVirt(devices=[{"msix": 2}], smmu="s2")
    k = m.boot()
    cmds = smmu_commands(m)
    ops = [c[0] & 0xFF for c in cmds]
    # PREFETCH_CONFIG 0x01, TLBI_S12_VMALL 0x28, CMD_SYNC 0x46.
    i = ops.index(0x28)
    assert ops[i - 1] == 0x01 and cmds[i - 1][0] >> 32 == 0x8 and ops[i + 1] == 0x46
    vmid = (cmds[i][0] >> 32) & 0xFFFF
    ste = [m.ram.read_u64(k.smmu._ste_addr(0x8) + 8 * j) for j in range(4)]
    assert ste[2] & 0xFFFF == vmid >= 1
    assert (ste[2] >> 48) & 7 == 4                                # STE.S2PS [50:48]


def test_cmd_sync_by_msi_carries_msh_and_msiattr():
    """With IDR0.MSI, CMD_SYNC completes by an MSI into its own slot (CS = IRQ, MSIData
    0, MSIAddr the slot) and still carries MSH = Inner and MSIATTR = OIWB, as the
    capture's SEV-mode syncs do."""
    from pymsi.kernel.arm_smmu_v3 import CmdqEnt, arm_smmu_cmdq_build_cmd

    real = h(next(c["raw"][0] for c in CAP["smmu"]["commands"]
                  if c["opcode"] == "SMMU_CMD_SYNC"))
    assert (real >> 12) & 3 == 2 and (real >> 22) & 3 == 3 and (real >> 24) & 0xF == 0xF
    d0, d1 = arm_smmu_cmdq_build_cmd(CmdqEnt(0x46))
    assert d0 == real and d1 == 0
    d0, d1 = arm_smmu_cmdq_build_cmd(CmdqEnt(0x46, msiaddr=0x4000_1230))
    assert d0 & 0xFF == 0x46 and (d0 >> 12) & 3 == 1 and d0 >> 32 == 0
    assert (d0 >> 22) & 0x3F == (real >> 22) & 0x3F
    assert d1 == 0x4000_1230                                     # MSIAddr [51:2]
    m = ArmVirt(devices=[], msi=True)
    m.boot()
    base = m.smmu.mmio_read(0x90, 8) & ((1 << 52) - 1) & ~0x1F
    done = [i for i, c in enumerate(smmu_commands(m)) if c[1] == base + 16 * i]
    assert len(done) == 2                      # both boot syncs, zeroed by their own MSI
    assert all(m.ram.read_u32(base + 16 * i) == 0 for i in done)


def test_its_baser_page_size_falls_back_to_what_sticks():
    """its_probe_baser_psz(): 64K, then 16K, then 4K — here only 4K sticks, so the
    device table is two-level over 4 KiB pages and MSIs still reach their CPUs."""
    m = ArmVirt(devices=[{"msix": 2}], smmu=None)
    inner = m.its.mmio_write

    def only_4k(off, value, size=4, **kw):
        if I.GITS_BASER <= off < I.GITS_BASER + 64:
            value = I.BASER_PAGE_SIZE.put(value, 0)
        return inner(off, value, size, **kw)

    m.its.mmio_write = only_4k
    rec = Recorder(m.its)
    k = m.boot()
    dt_writes = [v for off, v, _ in rec.writes if off == I.GITS_BASER]
    # Zeroed, then 64K, 16K and 4K tried, Indirect probed, then the table programmed.
    assert [I.BASER_PAGE_SIZE.get(v) for v in dt_writes[1:4]] == [2, 1, 0]
    dt = m.its.mmio_read(I.GITS_BASER, 8)
    assert dt >> 63 and I.BASER_INDIRECT.get(dt) and I.BASER_PAGE_SIZE.get(dt) == 0
    assert I.BASER_SIZE.get(dt) == 0                            # 16-7-9 = 7 bits: one page
    drv = MsiCountingDriver(k, k.pci.devices[0], 2, MsiType.MSIX)
    for v in range(2):
        m.functions[0].notify(v)
    k.handle_interrupts()
    assert drv.fired == {0: [0], 1: [1]}
    l1 = (dt & BASER_PA_MASK) + 8 * (0x8 // (4096 // 8))
    assert m.ram.read_u64(l1) >> 63                             # its level-2 page is valid


def test_its_baser_that_does_not_stick_fails_the_probe():
    """its_setup_baser(): a value that reads back different (beyond Shareability) is
    ENXIO ("doesn't stick")."""
    from pymsi.kernel.gic import ItsDriver

    m = ArmVirt(devices=[], smmu=None)
    k = m.boot()
    its = m.its
    its.mmio_write(I.GITS_CTLR, 0, 4)
    inner = its.mmio_write

    def drop_valid(off, value, size=4, **kw):
        if off == I.GITS_BASER + 8:                             # the collection table
            value &= ~I.BASER_VALID.mask
        return inner(off, value, size, **kw)

    its.mmio_write = drop_valid
    with pytest.raises(KernelError) as e:
        ItsDriver(k, k.gic, m.ITS).probe()
    assert e.value.errno == errno.ENXIO


def test_its_balances_managed_and_unmanaged_lpis_apart():
    """its_select_cpu(): an unmanaged vector goes to the CPU with the fewest unmanaged
    LPIs, whatever managed ones it has (Linux 6.1's cpu_lpi_count), and vice versa."""
    m = ArmVirt(ncpus=2, devices=[{"msix": 4}], smmu=None)
    k = m.boot()
    dev = k.pci.devices[0]
    dev.enable_device()
    dev.set_master()
    k.msi.alloc_irq_vectors(dev, 1, 1, MsiType.MSIX)             # unmanaged -> CPU0
    for index in (1, 2):
        k.msi.msix_alloc_irq_at(dev, index, affinity=frozenset({1}))   # managed -> CPU1
    k.msi.msix_alloc_irq_at(dev, 3)                                # unmanaged
    mapti = [c for c in its_commands(m) if c[0] & 0xFF == 0x0A]
    assert [(c[1] & 0xFFFFFFFF, c[2] & 0xFFFF) for c in mapti] == [(0, 0), (1, 1), (2, 1),
                                                                     (3, 1)]
    eff = [k.irq.desc(k.msi.irq_vector(dev, v)).irq_data.common.effective_affinity
           for v in range(4)]
    assert eff == [frozenset({0}), frozenset({1}), frozenset({1}), frozenset({1})]
