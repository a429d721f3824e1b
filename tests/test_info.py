"""Inspection views (pymsi.info) and ``pymsi info``.

Expected values come from the architecture and the machine's definition, not from
the views: the doorbell is GITS_TRANSLATER (ITS frame 0x08080000 + 0x10040 on QEMU's
virt), the DeviceID is the requester ID (IORT identity on virt), the EventID is the
MSI data, an ITTE is 16 bytes of the DTE's ITT, an LPI goes to the redistributor of
its collection, which is the CPU the kernel reports as the effective affinity.  The
views must read and never change: the whole observable state of a machine is
compared before and after every view.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import subprocess
import sys
import types

import pytest

from pymsi import __version__, cli, info
from pymsi.hw.its import GITS_TRANSLATER
from pymsi.hw.virt_map import VIRT_GIC_ITS
from pymsi.kernel.pci_endpoint_test import PciEndpointTestDriver
from pymsi.machine import ArmVirt, VirtualMachine

DOORBELL = VIRT_GIC_ITS + GITS_TRANSLATER
NVEC = 4


@pytest.fixture(scope="module")
def host():
    m = ArmVirt(devices=[{"msix": NVEC}, {"msi": 2}], ram_size=0x800_0000)
    k = m.boot()
    drv = PciEndpointTestDriver(k).register()
    return m, k, drv


def _hops(view: info.View) -> list[str]:
    return [n.split(": ", 1)[-1] for n in view.names()]


def test_irq_host_path(host):
    m, k, drv = host
    fn = m.functions[0]
    t = next(t for p, t in drv.tests.items() if p.rid == fn.rid)
    for v in range(NVEC):
        by_fn = info.info_irq(k, (fn, v))
        by_irq = info.info_irq(k, t.irqs[v])
        assert by_fn.rows == by_irq.rows
        assert _hops(by_fn)[:12] == ["PCI function", "MSI-X entry", "SMMU STE", "SMMU CD",
                                     "SMMU translation", "doorbell", "ITS DTE", "ITS ITTE",
                                     "ITS collection", "LPI", "redistributor",
                                     "irq_domain ITS-PCI-MSI"]
        entry = by_fn.find("MSI-X entry")
        assert entry.address == fn.bar_address(0) + 16 * v      # table at BAR0 + 0
        assert entry.fields["data"] == v                         # EventID = vector here
        xl = by_fn.find("SMMU translation")
        assert xl.fields["iova"] == entry.fields["address"] and xl.fields["pa"] == DOORBELL
        assert by_fn.find("doorbell").address == DOORBELL
        dte = by_fn.find("ITS DTE")
        assert dte.fields["device_id"] == fn.rid
        ite = by_fn.find("ITS ITTE")
        assert ite.address == dte.fields["itt"] + 16 * v and ite.fields["event_id"] == v
        desc = k.irq.descs[t.irqs[v]]
        gic_level = desc.irq_data.levels()[-1]
        assert ite.fields["intid"] == gic_level.hwirq
        cpu = next(iter(desc.irq_data.common.effective_affinity))
        assert by_fn.find("ITS collection").fields["rdbase"] == cpu
        hw_rd = m.gic.redists[cpu]
        lpi = by_fn.find("LPI")                  # GICR_PROPBASER + (INTID - 8192)
        assert lpi.address == (hw_rd.propbaser & ((1 << 52) - 1) & ~0xFFF) + \
            ite.fields["intid"] - 8192
        assert lpi.fields["enabled"] and lpi.fields["priority"] == \
            m.ram.read(lpi.address, 1)[0] & 0xFC
        rd = by_fn.find("redistributor")
        assert rd.fields["cpu"] == cpu and rd.fields["lpis_enabled"]
        assert rd.address == m.GICR + cpu * m.gic.frame_size
        assert by_fn.find("Linux IRQ").fields["irq"] == t.irqs[v]


def test_irq_follows_affinity(host):
    m, k, drv = host
    fn = m.functions[0]
    irq = next(t for p, t in drv.tests.items() if p.rid == fn.rid).irqs[1]
    before = info.info_irq(k, irq).find("redistributor").fields["cpu"]
    target = (before + 1) % m.ncpus
    k.proc_write(f"/proc/irq/{irq}/smp_affinity", f"{1 << target:x}")
    view = info.info_irq(k, irq)
    assert view.find("ITS collection").fields["rdbase"] == target
    assert view.find("redistributor").fields["cpu"] == target
    assert view.find("Linux IRQ").fields["effective"] == {target}


def test_irq_msi_function_and_text(host):
    m, k, _ = host
    fn = m.functions[1]                       # MSI only
    view = info.info_irq(k, (fn.bdf, 1))
    cap = view.find("MSI capability")
    assert cap.fields["data"] & 1 == 1        # multi-message: the vector in the low bits
    assert view.find("doorbell").address == DOORBELL
    text = str(view)
    assert text.startswith(f"irq: {fn.bdf} vector 1")
    assert f"@ {DOORBELL:#x}" in text
    with pytest.raises(ValueError):
        info.info_irq(k, 999_999)
    with pytest.raises(TypeError):
        info.info_irq(k, "irq 3")


def test_machine_without_kernel():
    m = ArmVirt(devices=[{"msix": 2}], ram_size=0x800_0000)
    view = info.info_irq(m, (m.functions[0], 0))
    assert "MSI / MSI-X not enabled" in view.rows[-1].note     # nothing booted: all reset
    with pytest.raises(ValueError):
        info.info_irq(m, 1)


def test_its_iotlb_pci_mtree(host):
    m, k, drv = host
    its = info.info_its(k)
    fn = m.functions[0]
    t = next(t for p, t in drv.tests.items() if p.rid == fn.rid)
    intids = {k.irq.descs[i].irq_data.levels()[-1].hwirq for i in t.irqs}
    dte = next(r for r in its.rows if r.name == "ITS DTE" and r.fields["device_id"] == fn.rid)
    i = its.rows.index(dte)
    ittes = []
    for r in its.rows[i + 1:]:
        if r.name != "ITTE":
            break
        ittes.append(r)
    assert {r.fields["intid"] for r in ittes} == intids
    assert {r.fields["icid"] for r in its.rows if r.name == "collection"} == set(range(m.ncpus))
    pci = info.info_pci(k)
    entries = [r for r in pci.rows if r.name.startswith("entry ")]
    assert len(entries) == NVEC
    assert all(r.fields["address"] == entries[0].fields["address"] for r in entries)
    assert [r.fields["data"] for r in entries] == list(range(NVEC))
    mtree = info.info_mtree(k)
    names = " ".join(mtree.names())
    for needle in ("(ram) RAM", "(i/o) ITS", "(i/o) SMMUv3", "(i/o) PCIe ECAM"):
        assert needle in names
    assert f"{VIRT_GIC_ITS:016x}-{VIRT_GIC_ITS + 0x1ffff:016x}" in names
    assert not any(r.note for r in mtree.rows)             # no overlaps
    msi_page = entries[0].fields["address"] & ~0xFFF      # the DMA domain maps the doorbell
    assert f"{msi_page:016x}-{msi_page + 0xfff:016x} -> {DOORBELL & ~0xFFF:#x} rw" in names
    fn.notify(0)                                           # fills the IOTLB
    k.handle_interrupts()
    tlb = info.info_iotlb(k)
    hits = [r for r in tlb.rows if r.name == "entry"]
    assert any(r.fields["pa"] == DOORBELL & ~0xFFF and r.fields["size"] == 0x1000
               and r.fields["perm"] == "rw" for r in hits)


# -- nothing changes -----------------------------------------------------------------------


def _state(root) -> str:
    """A digest of everything reachable from ``root``: attribute values (private ones
    too), containers, memory contents (every RAM region), IOTLB entries."""
    h = hashlib.sha256()
    seen: dict[int, int] = {}
    stack = [root]
    while stack:
        o = stack.pop()
        if isinstance(o, (int, float, str, bytes, bool, type(None), enum.Enum)):
            h.update(repr(o).encode())
            continue
        if isinstance(o, (types.FunctionType, types.MethodType, types.ModuleType, type,
                          types.BuiltinFunctionType)):
            continue
        if id(o) in seen:
            h.update(b"@%d" % seen[id(o)])
            continue
        seen[id(o)] = len(seen)
        h.update(type(o).__name__.encode())
        if isinstance(o, bytearray):
            h.update(bytes(o))
            continue
        if hasattr(o, "pages_allocated") and hasattr(o, "regions"):      # core.Memory
            h.update(b"%d" % o.pages_allocated)
            for base, size in o.regions:
                for off in range(0, size, 1 << 20):
                    h.update(o.read(base + off, min(1 << 20, size - off)))
        if hasattr(o, "entries") and hasattr(o, "invalidate_all"):         # core.Iotlb
            h.update(repr(o.entries()).encode())
        if isinstance(o, dict):
            for key, val in o.items():
                stack.extend((key, val))
            continue
        if isinstance(o, (list, tuple, collections.deque)):
            stack.extend(o)
            continue
        if isinstance(o, (set, frozenset)):
            stack.extend(sorted(o, key=repr))
            continue
        d = getattr(o, "__dict__", None)
        if isinstance(d, dict):
            for key, val in d.items():
                stack.extend((key, val))
        for s in getattr(type(o), "__slots__", ()) or ():
            if isinstance(s, str) and hasattr(o, s):
                stack.extend((s, getattr(o, s)))
    return h.hexdigest()


@pytest.mark.parametrize("vsmmu,gicv4", [("accel", False), ("accel", True), (None, False)])
def test_views_change_nothing(vsmmu, gicv4):
    vm = VirtualMachine(vsmmu=vsmmu, gicv4=gicv4, devices=[{"msix": 2}],
                        host_ram=0x800_0000).boot()
    vm.function(0).notify(1)
    vm.run()
    before = _state(vm)
    assert before == _state(vm)              # the digest itself is stable
    views = [info.info_irq(vm, (0, v)) for v in range(2)]
    views += [info.info_irq(vm, vm.guest_irq(0, 1))]
    views += [f(vm) for name, f in info.VIEWS.items() if name != "irq"]
    assert _state(vm) == before
    path = _hops(views[1])
    assert "KVM irqfd" in path and "vITS ITE" in path
    assert views[1].find("host: doorbell").address == DOORBELL
    if gicv4:
        assert views[1].find("host: ITS ITTE").fields["virtual"]


def test_mtree_shows_the_nested_stages():
    vm = VirtualMachine(vsmmu="accel", devices=[{"msix": 2}], host_ram=0x800_0000,
                        guest_ram=0x100_0000).boot()
    rows = info.info_mtree(vm).rows
    s2 = next(i for i, r in enumerate(rows) if r.name.startswith("stage 2 vmid="))
    covered = 0
    for r in rows[s2 + 1:]:
        if r.depth != rows[s2].depth + 1:
            break
        lo, hi = (int(x, 16) for x in r.name.split(" ")[0].split("-"))
        if lo >= vm.board.ram_gpa and hi < vm.board.ram_gpa + 0x100_0000:
            covered += hi - lo + 1
            assert r.name.endswith(" rw")
    assert covered == 0x100_0000                   # the IOAS maps all of guest RAM
    assert rows[s2].address == vm.machine.smmu.read_ste(8)[3] & ~0xF  # S2TTB (requester 8)


def test_state_digest_sees_a_change():
    """The digest used above notices what an inspection must not do (fill a cache)."""
    vm = VirtualMachine(vsmmu="accel", devices=[{"msix": 2}], host_ram=0x800_0000).boot()
    vm.function(0).notify(0)
    vm.run()
    before = _state(vm)
    assert info.info_iotlb(vm).find("entry")            # the IOTLB holds the doorbell
    vm.machine.smmu.tlb.invalidate_all()
    emptied = _state(vm)
    assert emptied != before
    vm.machine.ram.write(vm.machine.RAM_BASE + 0x10_0000, b"\1")
    assert _state(vm) != emptied


# -- the command ---------------------------------------------------------------------------


def test_cli_info_default_machine(capsys):
    assert cli.main(["info", "irq", "--vector", "2", "--fire"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("irq: 00:01.0 vector 2")
    assert f"doorbell @ {DOORBELL:#x}" in out
    assert "count=1" in out                            # --fire: taken once
    for view in ("mtree", "iotlb", "its", "pci"):
        assert cli.main(["info", view]) == 0
        assert capsys.readouterr().out.startswith(view)


def test_cli_info_description(tmp_path, capsys):
    path = tmp_path / "m.toml"
    path.write_text('vsmmu = "accel"\n[[devices]]\nmsix = 4\n')
    assert cli.main(["info", "irq", str(path), "--vector", "3"]) == 0
    out = capsys.readouterr().out
    assert "host: ITS ITTE" in out and "guest: Linux IRQ" in out and "kvm: KVM route" in out
    assert cli.main(["info", "pci", str(path), "--host"]) == 0
    out = capsys.readouterr().out
    assert "guest" not in out and out.count("entry ") == 4
    bad = tmp_path / "bad.toml"
    bad.write_text('vsmmu = "accel"\nmssix = 8\n')
    with pytest.raises(SystemExit) as e:
        cli.main(["info", "its", str(bad)])
    assert e.value.code == 2
    assert "mssix" in capsys.readouterr().err


def test_cli_info_platform_description(tmp_path, capsys):
    # an arm-virt / x86-pc description is a host machine alone: its devices get the test
    # driver and each view shows them (load() gives the platform, not a VirtualMachine)
    arm = tmp_path / "arm.toml"
    arm.write_text('machine = "arm-virt"\nncpus = 2\n[[devices]]\nmsix = 4\n')
    assert cli.main(["info", "pci", str(arm)]) == 0
    out = capsys.readouterr().out
    assert "guest" not in out and out.count("entry ") == 4
    assert cli.main(["info", "irq", str(arm), "--vector", "3", "--fire"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("irq: 00:01.0 vector 3") and "ITTE" in out and "count=1" in out
    x86 = tmp_path / "x86.toml"
    x86.write_text('machine = "x86-pc"\n[[devices]]\nmsix = 2\n')
    assert cli.main(["info", "irq", str(x86), "--vector", "1"]) == 0
    assert capsys.readouterr().out.startswith("irq: 00:01.0 vector 1")


def test_version_and_python_m():
    from importlib.metadata import version

    assert version("pymsi") == __version__                 # the installed metadata's
    out = subprocess.run([sys.executable, "-m", "pymsi", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"pymsi {__version__}"
    r = subprocess.run([sys.executable, "-m", "pymsi", "info", "bogus"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_an_int_function_is_the_described_device_index_on_every_target(host):
    from pymsi.errors import InvalidArgument

    m, k, _ = host
    second = m.functions[1]                   # described device 1, at 00:02.0 (rid 0x10)
    for target in (k, m):
        by_index = info.info_irq(target, (1, 0))
        assert by_index.rows == info.info_irq(target, (second.bdf, 0)).rows
        assert by_index.title.startswith(f"irq: {second.bdf} vector 0")
        with pytest.raises(InvalidArgument, match="no device 16"):
            info.info_irq(target, (second.rid, 0))        # a requester ID is not an index
    vm = VirtualMachine(devices=[{"msix": 2}, {"msix": 3}], host_ram=0x800_0000).boot()
    assert info.info_irq(vm, (1, 2)).title.startswith(
        f"irq: guest {vm.slots[1].guest_fn.bdf} vector 2")
    with pytest.raises(InvalidArgument, match="no device 2"):
        info.info_irq(vm, (2, 0))


def test_a_missing_vector_is_an_error_naming_it(host):
    from pymsi.errors import InvalidArgument

    m, k, _ = host
    for target in (k, m):
        with pytest.raises(InvalidArgument, match=f"{m.functions[0].bdf} has no vector {NVEC}"):
            info.info_irq(target, (m.functions[0], NVEC))
        with pytest.raises(InvalidArgument, match="has no vector 2"):
            info.info_irq(target, (m.functions[1], 2))     # MSI, 2 vectors
        with pytest.raises(InvalidArgument, match="has no vector -1"):
            info.info_irq(target, (0, -1))
    vm = VirtualMachine(devices=[{"msix": 2}], host_ram=0x800_0000).boot()
    with pytest.raises(InvalidArgument, match="has no vector 5"):
        info.info_irq(vm, (0, 5))


def test_vm_rows_name_their_side_and_find_takes_it():
    from pymsi.errors import InvalidArgument

    vm = VirtualMachine(devices=[{"msix": 2}], host_ram=0x800_0000).boot()
    view = info.info_irq(vm, (0, 1))
    sides = {n.split(": ", 1)[0] for n in view.names()}
    assert sides == {"host", "kvm", "guest"}
    host_itte = view.find("ITS ITTE", side="host")
    assert host_itte is view.find("host: ITS ITTE")
    assert view.find("MSI-X entry", side="guest").name == "guest: MSI-X entry"
    assert view.find("KVM route", side="kvm").fields["data"] == 1     # EventID = vector
    with pytest.raises(KeyError, match="side='host' / 'guest'"):
        view.find("MSI-X entry")                  # both sides have one: say so
    with pytest.raises(KeyError):
        view.find("ITS ITTE", side="guest")       # the guest's ITS is KVM's vITS
    with pytest.raises(InvalidArgument, match="side must be one of"):
        view.find("ITS ITTE", side="hots")


def test_row_addresses_print_in_hex(host):
    m, k, _ = host
    row = info.info_irq(k, (0, 1)).find("MSI-X entry")
    assert isinstance(row.address, info.Hex)
    assert repr(row.address) == f"{m.functions[0].bar_address(0) + 16:#x}"
    assert info.Row("x", 4096).address.__repr__() == "0x1000"
    assert info.Row("x").address is None
