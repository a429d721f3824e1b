"""The built-in demo: one device's MSI vectors, addressed by userspace, through
nested SMMUv3 translation to the GICv3 ITS doorbell.

It builds what a VMM and a guest would: stage-2 tables (the host's IOAS, with
the ITS page mapped by userspace itself), stage-1 tables inside guest memory
(the guest's IOMMU domain, mapping its MSI IOVA to its vITS doorbell), an MSI
address table filled one vector at a time, and then composes and translates
each vector's MSI write, printing the path.  Vectors nobody described and
IOVAs nobody mapped fail loudly.
"""

from __future__ import annotations

import array
from typing import TextIO

from . import core
from .core import IoPgtable, IpaView, Prot, TableAllocator, XlateConfig
from .errors import MsiNotMapped
from .kernel.drivers import MsiCountingDriver
from .machine import ArmVirt, X86Pc

# QEMU virt: ITS at 0x08080000, GITS_TRANSLATER in the second 64 KiB frame.
ITS_BASE = 0x0808_0000
GITS_TRANSLATER = ITS_BASE + 0x1_0040
HOST_RAM = (0x8000_0000, 0x0400_0000)       # backs guest RAM
HOST_TABLES = (0x9000_0000, 0x0010_0000)    # host-owned stage-2 tables
GUEST_RAM = (0x4000_0000, 0x0400_0000)      # gPA
GUEST_TABLES = (0x4300_0000, 0x0010_0000)   # guest-owned stage-1 tables (gPA)
MSI_IOVA = 0xFFFF_F000                      # where a Linux arm64 guest puts its MSI page
DEVICE = 0x0008                             # requester id 00:01.0 = StreamID = DeviceID
VECTORS = 4


def build() -> dict:
    """Build the demo machine state; returns its parts by name."""
    mem = core.Memory()
    mem.add_ram(*HOST_RAM)
    mem.add_ram(*HOST_TABLES)

    # Host / VMM: the IOAS (stage 2). Guest RAM in 2 MiB blocks, and the ITS
    # page that userspace maps itself, write-only MMIO.
    s2 = IoPgtable(mem, TableAllocator(mem, *HOST_TABLES), fmt="s2", ias=40, oas=48)
    s2.map(GUEST_RAM[0], HOST_RAM[0], GUEST_RAM[1], Prot.READ | Prot.WRITE | Prot.CACHE)
    doorbell_page = GITS_TRANSLATER & ~0xFFF
    s2.map(doorbell_page, doorbell_page, 0x1000, Prot.WRITE | Prot.MMIO | Prot.NOEXEC)

    # Guest: its own stage-1 tables, in its own memory, mapping its MSI IOVA
    # to the doorbell of its vITS (same gPA as on the host's virt board).
    guest = IpaView(mem, s2)
    s1 = IoPgtable(guest, TableAllocator(guest, *GUEST_TABLES), fmt="s1", ias=48, oas=40)
    s1.map(MSI_IOVA, doorbell_page, 0x1000, Prot.WRITE | Prot.MMIO | Prot.NOEXEC)

    cfg = XlateConfig(s1.stage1_config(), s2.stage2_config(), asid=1, vmid=1)

    # Userspace describes every vector: (device, msi_index) -> (IOVA, shift).
    table = core.MsiTable()
    for vec in range(VECTORS):
        table.set(DEVICE, vec, MSI_IOVA, 12)
    return {"mem": mem, "s1": s1, "s2": s2, "cfg": cfg, "table": table, "tlb": core.Iotlb(64)}


def run(out: TextIO) -> int:
    """Run the demo, writing its report to ``out``; returns an exit status."""
    m = build()
    mem, cfg, table, tlb = m["mem"], m["cfg"], m["table"], m["tlb"]
    s2cfg = cfg.s2
    p = out.write
    p(f"pymsi demo (backend: {core.BACKEND})\n\n")
    p(f"ITS doorbell GITS_TRANSLATER at PA {GITS_TRANSLATER:#010x}\n")
    p(f"stage 2 (host IOAS): {s2cfg.granule // 1024}K granule, {64 - s2cfg.tsz}-bit IPA, "
      f"start level {s2cfg.start_level} with {s2cfg.concat} concatenated tables\n")
    p(f"  gPA {GUEST_RAM[0]:#x} +{GUEST_RAM[1] >> 20} MiB -> PA {HOST_RAM[0]:#x} (guest RAM)\n")
    p(f"  gPA {GITS_TRANSLATER & ~0xFFF:#x} -> PA {GITS_TRANSLATER & ~0xFFF:#x} "
      "(ITS page, mapped by userspace, write-only MMIO)\n")
    p(f"stage 1 (guest tables in guest RAM): {64 - cfg.s1.tsz0}-bit IOVA, "
      f"start level {cfg.s1.start_level[0]}\n")
    p(f"  IOVA {MSI_IOVA:#x} -> gPA {GITS_TRANSLATER & ~0xFFF:#x} (the guest's vITS doorbell)\n\n")

    p("vector  MSI address (composed)   IPA (stage 1)   PA (stage 2)   how\n")
    failures = 0
    for vec in range(VECTORS):
        addr = table.compose(DEVICE, vec, GITS_TRANSLATER)
        r = core.translate(mem, addr, write=True, cfg=cfg, tlb=tlb)
        if r.fault is not None or r.pa != GITS_TRANSLATER:
            failures += 1
            p(f"{vec:6}  {addr:#018x}  FAILED: {r.fault}\n")
            continue
        how = "IOTLB hit" if r.tlb_hit else "nested walk"
        p(f"{vec:6}  {addr:#018x}       {r.ipa:#012x}    {r.pa:#012x}   {how}\n")

    p("\nwhat must fail, and does:\n")
    try:
        table.compose(DEVICE, VECTORS, GITS_TRANSLATER)
        failures += 1
        p("  undescribed vector composed an address (a silent fallback!)\n")
    except MsiNotMapped as e:
        p(f"  vector {VECTORS} (not described by userspace): MsiNotMapped: {e}\n")
    table.set(DEVICE, VECTORS, 0xFFFF_E000, 12)
    r = core.translate(mem, table.compose(DEVICE, VECTORS, GITS_TRANSLATER), write=True,
                       cfg=cfg, tlb=tlb)
    if r.fault is None:
        failures += 1
    p(f"  vector {VECTORS} at unmapped IOVA 0xffffe040: {r.fault}\n")
    r = core.translate(mem, MSI_IOVA | 0x40, write=False, cfg=cfg, tlb=tlb)
    if r.fault is None:
        failures += 1
    p(f"  a read of the doorbell (stage 2 is write-only): {r.fault}\n")

    n = 4096
    devs = array.array("I", [DEVICE] * n)
    idx = array.array("I", [k % VECTORS for k in range(n)])
    addrs, pas = array.array("Q", bytes(8 * n)), array.array("Q", bytes(8 * n))
    status = array.array("i", bytes(4 * n))
    ok = core.msi_batch(table, mem, cfg, GITS_TRANSLATER, devs, idx, addrs, pas, status, tlb=tlb)
    if ok != n or any(pa != GITS_TRANSLATER for pa in pas):
        failures += 1
    p(f"\nbatch: {ok}/{n} vectors composed and translated to {GITS_TRANSLATER:#x} in one call; "
      f"IOTLB {tlb.hits} hits, {tlb.misses} misses\n")
    failures += run_kernel(out)
    p("\nresult: " + ("all paths as expected\n" if not failures else f"{failures} FAILURES\n"))
    return 1 if failures else 0


def run_kernel(out: TextIO) -> int:
    """Part 2: a host kernel booted on the machine models; returns failures."""
    p = out.write
    failures = 0
    p("\n--- a host kernel on an Arm virt machine (GICv3 + ITS, SMMUv3) ---\n")
    m = ArmVirt(devices=[{"msix": 4}], smmu="nested")
    k = m.boot()
    for line in k.log:
        p(f"  [dmesg] {line}\n")
    dev = k.pci.devices[0]
    drv = MsiCountingDriver(k, dev, 4)
    group = dev.iommu_group
    p(f"{dev}: iommu group {group.id}, {group.domain.type.value} domain "
      f"(owner {group.domain.owner}); {drv.nvec} MSI-X vectors\n")
    for v in range(drv.nvec):
        desc = dev.msi_descs[v]
        m.functions[0].notify(v)
        k.handle_interrupts()
        p(f"  vector {v}: IRQ {desc.irq}, message {desc.msg.address:#x}/{desc.msg.data}, "
          f"handler ran on CPU {drv.fired[v]}\n")
    irq = drv.irqs[1]
    before = m.functions[0].msix_entry(1)
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", "8")
    m.functions[0].notify(1)
    k.handle_interrupts()
    same = m.functions[0].msix_entry(1) == before
    p(f"  echo 8 > /proc/irq/{irq}/smp_affinity: MOVI; handler now on CPU "
      f"{drv.fired[1][-1]}; MSI-X entry {'unchanged' if same else 'CHANGED'}\n")
    failures += not same or drv.fired[1][-1] != 3
    drv.remove()
    left = m.smmu.translate(dev.rid, 0xFFFF_F040, write=True)
    p(f"  after free: ITS devices {sorted(k.its.devices)}, MSI page "
      f"{'unmapped' if left.aborted else 'STILL MAPPED'}\n")
    failures += bool(k.its.devices) or not left.aborted
    p("\n--- the same on an x86 PC without interrupt remapping ---\n")
    x = X86Pc(devices=[{"msix": 2}])
    kx = x.boot()
    xdrv = MsiCountingDriver(kx, kx.pci.devices[0], 2)
    before = x.functions[0].msix_entry(1)
    kx.proc_write(f"/proc/irq/{xdrv.irqs[1]}/smp_affinity", "8")
    after = x.functions[0].msix_entry(1)
    x.functions[0].notify(1)
    kx.handle_interrupts()
    p(f"  affinity to CPU 3: message {before[0]:#x}/{before[1]:#x} -> {after[0]:#x}/"
      f"{after[1]:#x} (rewritten); handler on CPU {xdrv.fired[1]}\n")
    failures += before == after or xdrv.fired[1] != [3]
    return failures
