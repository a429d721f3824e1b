"""Typed descriptions (pymsi.machine.desc): every description type refuses an unknown key
or a bad value with an InvalidArgument naming it; the dict forms convert; TOML round trips
to the same machine (same configuration space, same vectors)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pymsi.errors import DeviceModelError, InvalidArgument
from pymsi.hw import pci as P
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.machine import (
    ArmVirt,
    ArmVirtDesc,
    BootOptions,
    PciFunctionDesc,
    VirtualMachine,
    VirtualMachineDesc,
    VmDeviceDesc,
    X86Pc,
    X86PcDesc,
    load,
    load_description,
    to_toml,
)
from pymsi.machine.platforms import make_function

# -- valid descriptions (dict forms), built independently of the code under test ------------

pow2 = st.integers(4, 31).map(lambda n: 1 << n)


@st.composite
def plain_functions(draw, vm: bool = False):
    d = {}
    if draw(st.booleans()):
        d["msix"] = draw(st.integers(1, 2048))
    if draw(st.booleans()):
        d["msi"] = draw(st.sampled_from([1, 2, 4, 8, 16, 32]))
    for key, strat in (("msi_mask", st.booleans()), ("vendor", st.integers(0, 0xFFFE)),
                       ("device", st.integers(0, 0xFFFF)), ("function", st.integers(0, 7)),
                       ("flr", st.booleans())):
        if draw(st.booleans()):
            d[key] = draw(strat)
    if draw(st.booleans()):
        # the table at 0, the PBA at 0x2000 or the page after the table: a BAR that holds
        # both (computed here from the PCI layout, not by the code under test)
        n = d.get("msix", 8 if vm and "msi" not in d else 0)   # a VM device: 8 MSI-X
        need = (max(0x2000, -(-n * 16 // 0x1000) * 0x1000) + 0x1000) if n else 16
        d["bar_size"] = draw(pow2.filter(lambda s: s >= need))
    if vm and draw(st.booleans()):
        d["emulated"] = draw(st.booleans())
    return d


def model_functions(vm: bool = False):
    nic = st.fixed_dictionaries({"model": st.just("nic"), "queues": st.integers(1, 64)})
    edu = st.fixed_dictionaries({"model": st.just("edu")})
    return st.one_of(nic, edu)


def functions(vm: bool = False):
    return st.one_of(plain_functions(vm), model_functions(vm))


@st.composite
def arm_virts(draw, max_devices: int = 3):
    d = {"devices": draw(st.lists(functions(), max_size=max_devices))}
    opts = {
        "ncpus": st.integers(1, 8), "ram_size": st.sampled_from([0x200_0000, 0x400_0000]),
        "gicv4": st.booleans(), "smmu": st.sampled_from(["s1", "s2", "nested", None]),
        "oas": st.sampled_from([32, 36, 40, 42, 44, 48]), "sidsize": st.integers(1, 32),
        "ssidsize": st.integers(0, 20), "cmdqs": st.integers(0, 19),
        "eventqs": st.integers(0, 19),
        "granules": st.lists(st.sampled_from([4096, 16384, 65536]), min_size=1,
                             unique=True),
        "ril": st.booleans(), "had": st.booleans(), "msi": st.booleans(),
        "sev": st.booleans(), "two_level": st.booleans(), "cd2l": st.booleans(),
        "msi_design": st.sampled_from(["dma-cookie", "sw-msi", "preset", "per-vector"]),
        "boot": st.fixed_dictionaries({}, optional={
            "default_domain": st.sampled_from(["dma", "identity"])}),
    }
    for key, strat in opts.items():
        if draw(st.booleans()):
            d[key] = draw(strat)
    return d


@st.composite
def x86_pcs(draw, max_devices: int = 3):
    d = {"devices": draw(st.lists(functions(), max_size=max_devices))}
    for key, strat in (("ncpus", st.integers(1, 8)), ("remapping", st.booleans()),
                       ("ram_size", st.sampled_from([0x200_0000, 0x400_0000])),
                       ("msi_design", st.sampled_from(["sw-msi", "per-vector"]))):
        if draw(st.booleans()):
            d[key] = draw(strat)
    return d


@st.composite
def virtual_machines(draw):
    vsmmu = draw(st.sampled_from([None, "none", "accel", "emulated"]))
    devs = draw(st.lists(functions(vm=True), min_size=1 if vsmmu == "accel" else 0,
                         max_size=3))
    for dev in devs:          # what QEMU accepts behind each vSMMU
        if vsmmu == "accel":
            dev["emulated"] = False
        elif vsmmu == "emulated":
            dev["emulated"] = True
    d = {"vsmmu": vsmmu, "devices": devs}
    for key, strat in (("gicv4", st.booleans()), ("ncpus", st.integers(1, 8)),
                       ("guest_ncpus", st.integers(1, 8)), ("honour_rmr", st.booleans()),
                       ("variant", st.sampled_from(["sw-msi", "per-vector", "preset"])),
                       ("seed", st.integers(0, 2**64 - 1)),
                       ("guest_ram", st.sampled_from([0x40_0000, 0x80_0000])),
                       ("backend", st.sampled_from(["c", "python"]))):
        if draw(st.booleans()):
            d[key] = draw(strat)
    return d


KINDS = {
    "function": (PciFunctionDesc, functions()),
    "arm-virt": (ArmVirtDesc, arm_virts()),
    "x86-pc": (X86PcDesc, x86_pcs()),
    "virtual": (VirtualMachineDesc, virtual_machines()),
    "boot": (BootOptions, st.fixed_dictionaries(
        {}, optional={"default_domain": st.sampled_from(["dma", "identity"])})),
}

# A bad value for each field: out of range or of the wrong type (bool is no integer).
BAD = {
    "msix": [0, 2049, -1, True, "8", 1.5], "msi": [0, 3, 33, False, "1"],
    "msi_mask": [1, "yes", None], "flr": [0, "no"], "vendor": [0xFFFF, -1, 0x10000, "x"],
    "device": [0x10000, -2, None], "function": [8, -1, "0"], "bar_size": [15, 0x3000, 1 << 32],
    "ncpus": [0, 300, True, "4"], "ram_size": [0x100_0000, 0x200_0800, -1, "1G"],
    "gicv4": [1, "true"], "smmu": ["s3", 1, True], "backend": ["rust", 0],
    "oas": [33, 52, "44"], "sidsize": [0, 33], "ssidsize": [-1, 21], "cmdqs": [20, -1],
    "eventqs": [20], "granules": [[], [8192], [4096, 4096], "4096", 4096],
    "ril": [2], "had": ["x"], "sev": [1], "two_level": [None], "cd2l": [0],
    "msi_design": ["per_vector", "", 3], "remapping": [1, "on"],
    "vsmmu": ["fast", 1, True], "variant": ["dma_cookie", None], "guest_ncpus": [0, 257],
    "host_ram": [0x100_0000, 0x200_0001], "guest_ram": [0x1000, 0x40_0800, 0x8000_0000],
    "honour_rmr": [1, "yes"], "seed": [-1, 2**64, "0"], "emulated": [1, "no"],
    "default_domain": ["blocked", "DMA", 1], "queues": [0, 2049, True],
    "devices": [{"msix": 8}, "msix", 3], "boot": [3, "dma"], "model": ["warp-drive", 3],
}


def typo(key: str, data) -> str:
    """``key`` with one character inserted, dropped or changed."""
    i = data.draw(st.integers(0, len(key)))
    c = data.draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz_0"))
    how = data.draw(st.sampled_from(["insert", "drop", "change"]))
    if how == "insert" or len(key) == 1:
        return key[:i] + c + key[i:]
    i = min(i, len(key) - 1)
    return key[:i] + ("" if how == "drop" else c) + key[i + 1:]


def _entries(d):
    """Where a key or value can go wrong: (path to the table, key) for every key of the
    description and of its nested tables (devices, boot)."""
    out = []
    for k, v in d.items():
        out.append(((), k))
        if k == "devices" and isinstance(v, list):
            for i, dev in enumerate(v):
                out += [((("devices", i),), kk) for kk in dev]
        if k == "boot" and isinstance(v, dict):
            out += [((("boot", None),), kk) for kk in v]
    return out


def _table(d, path):
    for key, i in path:
        d = d[key] if i is None else d[key][i]
    return d


def _where(path, key):
    if not path:
        return key
    (name, i), = path
    return f"{name}[{i}].{key}" if i is not None else f"{name}.{key}"


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_descriptions_convert_and_round_trip_through_their_dicts(kind, data):
    cls, strat = KINDS[kind]
    d = data.draw(strat)
    desc = cls.from_dict(d)
    assert cls.from_dict(desc.to_dict()) == desc
    assert cls.coerce(desc) is desc
    for key, value in d.items():           # what was given is what the fields hold
        if key in ("devices", "boot", "granules"):
            continue
        expected = None if value == "none" else value
        assert (desc.properties[key] if key == "queues" else getattr(desc, key)) == expected


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_typo_in_any_key_is_an_error_naming_it(kind, data):
    cls, strat = KINDS[kind]
    d = data.draw(strat)
    entries = _entries(d)
    assume(entries)
    path, key = data.draw(st.sampled_from(entries))
    table = _table(d, path)
    accepted = set(cls.keys()) | {"model", "function", "emulated", "default_domain"} | \
        set(VmDeviceDesc.keys())
    bad = typo(key, data)
    assume(bad not in accepted and bad not in table and bad != "machine")
    table[bad] = table.pop(key)
    with pytest.raises(InvalidArgument) as e:
        cls.from_dict(d)
    assert repr(bad) in str(e.value)
    if path:
        assert _where(path, "")[:-1] in str(e.value)    # devices[i] / boot


@pytest.mark.parametrize("kind", sorted(KINDS))
@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_bad_value_anywhere_is_an_error_naming_the_key_and_value(kind, data):
    cls, strat = KINDS[kind]
    d = data.draw(strat)
    candidates = [(p, k) for p, k in _entries(d) if k in BAD]
    if kind == "function" or kind == "virtual":
        candidates = [(p, k) for p, k in candidates if k != "emulated" or kind == "virtual"]
    assume(candidates)
    path, key = data.draw(st.sampled_from(candidates))
    table = _table(d, path)
    if key in ("msix", "msi", "bar_size", "msi_mask", "vendor", "device", "flr") and \
            "model" in table:
        return                                # a model's table has none of these
    smmu_msi = key == "msi" and kind == "arm-virt" and not path     # the SMMU's, a bool
    value = data.draw(st.sampled_from([0, 1, "yes", None] if smmu_msi else BAD[key]))
    table[key] = value
    with pytest.raises(InvalidArgument) as e:
        cls.from_dict(d)
    msg = str(e.value)
    assert _where(path, key) in msg, msg
    if key not in ("devices", "model"):
        assert repr(value) in msg or repr(list(value)) in msg, msg


@pytest.mark.parametrize("spec,named", [
    ({"mssix": 8}, "'mssix'"),                       # the example
    ({"model": "nic", "queus": 4}, "'queus'"),
    ({"model": "nic", "queues": 0}, "queues"),
    ({"model": "nic", "msix": 8}, "'msix'"),
    ({"model": "edu", "properties": {}}, "'properties'"),
    ({"msix": 8, "properties": {"x": 1}}, "properties"),
])
def test_function_specs_given_as_dicts_are_checked(spec, named):
    for make in (lambda: ArmVirt(devices=[spec]), lambda: X86Pc(devices=[spec]),
                 lambda: make_function(0, 1, spec), lambda: VirtualMachine(devices=[spec])):
        with pytest.raises(InvalidArgument, match=named):
            make()


def test_an_unknown_model_is_both_a_device_model_error_and_a_bad_value():
    with pytest.raises(DeviceModelError, match=r"devices\[0\]\.model.*'warp'"):
        ArmVirtDesc.from_dict({"devices": [{"model": "warp"}]})
    with pytest.raises(InvalidArgument):
        PciFunctionDesc(model="warp")


def test_a_model_declares_its_own_identity():
    with pytest.raises(InvalidArgument, match="msix"):
        PciFunctionDesc(model="edu", msix=4)
    d = PciFunctionDesc.from_dict({"model": "nic", "queues": 3, "function": 2})
    assert d.model == "nic" and dict(d.properties) == {"queues": 3} and d.function == 2
    assert d.to_dict() == {"model": "nic", "queues": 3, "function": 2}


def test_machine_keyword_arguments_are_checked_too():
    for call, named in ((lambda: ArmVirt(ncpus=0), "ncpus"),
                        (lambda: ArmVirt(smmu="s3"), "smmu"),
                        (lambda: ArmVirt(granules=()), "granules"),
                        (lambda: ArmVirt(boot={"default_domain": "x"}), "boot.default_domain"),
                        (lambda: X86Pc(ram_size=0x1234), "ram_size"),
                        (lambda: ArmVirt(devices={"msix": 4}), "devices")):
        with pytest.raises(InvalidArgument, match=named.replace(".", r"\.")):
            call()
    with pytest.raises(InvalidArgument, match="default_domain"):
        ArmVirt(devices=[]).boot(default_domain="passthrough")


def test_a_plain_function_has_the_described_configuration_space():
    """Read back through configuration space (the registers, not the description)."""
    fn = make_function(0, 3, {"msix": 600, "msi": 4, "vendor": 0x1234, "device": 0x5678,
                              "function": 1, "flr": False, "msi_mask": False})
    assert fn.cfg_read(P.VENDOR_ID, 2) == 0x1234
    assert fn.cfg_read(P.DEVICE_ID, 2) == 0x5678
    msix = P.find_capability(lambda o: fn.cfg_read(o, 1), P.CAP_ID_MSIX)
    assert fn.cfg_read(msix + 2, 2) & 0x7FF == 599              # table size N - 1
    table, pba = fn.cfg_read(msix + 4, 4), fn.cfg_read(msix + 8, 4)
    assert table == 0 and pba == 0x3000                          # 600 * 16 B -> 3 pages
    msi = P.find_capability(lambda o: fn.cfg_read(o, 1), P.CAP_ID_MSI)
    assert (fn.cfg_read(msi + 2, 2) >> 1) & 7 == 2               # MMC: log2(4)
    assert not fn.cfg_read(msi + 2, 2) & 0x100                   # no per-vector masking
    fn.cfg_write(P.BAR0, 0xFFFF_FFFF, 4)
    assert (~(fn.cfg_read(P.BAR0, 4) & 0xFFFF_FFF0) & 0xFFFF_FFFF) + 1 == 0x4000


# -- TOML -----------------------------------------------------------------------------------

def _config_space(fn):
    return bytes(fn.cfg_read(off, 1) for off in range(0x100))


def _vectors(machine):
    """(address, data) of every MSI-X / MSI vector after the kernel allocates them."""
    k = machine.boot()
    out = []
    for dev in k.pci.devices:
        if dev.msix_cap is None and dev.msi_cap is None:
            continue
        drv = MsiCountingDriver(k, dev, 4)
        fn = next(f for f in machine.functions if f.rid == dev.rid)
        out.append([fn.msix_entry(v)[:2] if fn.msix is not None else fn.msi_message(v)
                    for v in range(drv.nvec)])
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_toml_round_trip_builds_the_same_machine(tmp_path_factory, data):
    kind = data.draw(st.sampled_from(["arm-virt", "x86-pc"]))
    cls, strat = KINDS[kind]
    d = data.draw(arm_virts(2) if kind == "arm-virt" else x86_pcs(2))
    for key in ("sidsize", "cmdqs", "eventqs", "two_level"):
        d.pop(key, None)          # an SMMU the kernel can boot on with these devices
    for dev in d["devices"]:
        if dev.get("bar_size", 0) > 1 << 24:
            del dev["bar_size"]     # BARs that fit the PCI windows (else ENOSPC at boot)
    desc = cls.from_dict(d)
    text = to_toml(desc)
    p = tmp_path_factory.mktemp("toml") / "m.toml"
    p.write_text(text)
    assert load_description(str(p)) == desc
    a, b = load(str(p)), (ArmVirt if kind == "arm-virt" else X86Pc).from_description(d)
    assert type(a) is type(b) and a.description == desc
    assert [_config_space(f) for f in a.functions] == [_config_space(f) for f in b.functions]
    assert _vectors(a) == _vectors(b)


@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_toml_round_trip_of_a_virtual_machine_description(tmp_path_factory, data):
    desc = VirtualMachineDesc.from_dict(data.draw(virtual_machines()))
    p = tmp_path_factory.mktemp("toml") / "vm.toml"
    p.write_text(to_toml(desc))
    vm = load(str(p))
    assert isinstance(vm, VirtualMachine) and vm.description == desc


def test_toml_round_trip_of_a_booted_virtual_machine(tmp_path):
    desc = VirtualMachineDesc(devices=({"msix": 5, "emulated": True},
                                       {"model": "nic", "queues": 3, "emulated": True}),
                              guest_ncpus=3, guest_ram=0x40_0000)
    p = tmp_path / "vm.toml"
    p.write_text(to_toml(desc))
    a, b = load(str(p)).boot(), VirtualMachine(desc).boot()
    for i in range(2):
        fa, fb = a.guest_function(i), b.guest_function(i)
        assert _config_space(fa) == _config_space(fb)
        assert [fa.msix_entry(v) for v in range(fa.msix.vectors)] == \
            [fb.msix_entry(v) for v in range(fb.msix.vectors)]


def test_the_examples_load(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "examples"
    files = sorted(root.glob("*.toml"))
    assert {f.name for f in files} >= {"arm-virt.toml", "x86-pc.toml", "virtual.toml"}
    for f in files:
        m = load(str(f))
        if isinstance(m, VirtualMachine):
            m.boot()
            assert m.run() == 0
        else:
            k = m.boot()
            assert len(k.pci.devices) == len(m.functions) >= 1


@pytest.mark.parametrize("text,named", [
    ("vsmmu = \n", ["m.toml", "line 1"]),
    ('machine = "arm-virt"\nncpu = 4\n', ["m.toml", "'ncpu'", "accepted: ncpus"]),
    ('machine = "arm-virt"\n[[devices]]\nmsix = 4096\n', ["m.toml", "devices[0].msix", "4096"]),
    ('machine = "x86-pc"\nremapping = "yes"\n', ["m.toml", "remapping", "'yes'"]),
    ('machine = "arm-virt"\n[boot]\ndefault_domain = "none"\n',
     ["m.toml", "boot.default_domain", "'none'"]),
    ('machine = "sparc"\n', ["m.toml", "machine", "'sparc'"]),
    ('[[devices]]\nmodel = "nic"\nqueues = 0\n', ["m.toml", "devices[0]", "queues"]),
])
def test_bad_toml_is_an_error_naming_the_file_the_key_and_the_value(tmp_path, text, named):
    p = tmp_path / "m.toml"
    p.write_text(text)
    with pytest.raises(InvalidArgument) as e:
        load(str(p))
    for part in named:
        assert part in str(e.value), (part, str(e.value))


def test_boot_options_from_the_description_and_the_call(tmp_path):
    from pymsi.kernel.iommu import DomainType

    p = tmp_path / "m.toml"
    p.write_text('machine = "arm-virt"\n[boot]\ndefault_domain = "identity"\n'
                 "[[devices]]\nmsix = 2\n")
    m = load(str(p))
    assert m.description.boot == BootOptions(default_domain="identity")
    k = m.boot()
    assert k.iommu.default_domain_type is DomainType.IDENTITY
    assert k.pci.devices[0].iommu_group.default_domain.type is DomainType.IDENTITY
    k2 = load(str(p)).boot(default_domain="dma")          # the call's option wins
    assert k2.pci.devices[0].iommu_group.default_domain.type is DomainType.DMA
    assert ArmVirt(devices=[{"msix": 2}]).boot().iommu.default_domain_type is DomainType.DMA


def test_a_virtual_machine_from_a_description_a_dict_or_keywords():
    desc = VirtualMachineDesc(devices=({"msix": 3, "emulated": True},), guest_ncpus=3)
    for vm in (VirtualMachine(desc), VirtualMachine(desc.to_dict()),
               VirtualMachine(devices=[{"msix": 3, "emulated": True}], guest_ncpus=3)):
        assert vm.description == desc
        assert vm.desc["guest_ncpus"] == 3 and vm.slots[0].spec == {"msix": 3, "emulated": True}
    with pytest.raises(TypeError):
        VirtualMachine(desc, guest_ncpus=2)
    with pytest.raises(InvalidArgument, match="guest_ncpus"):
        VirtualMachine({"guest_ncpus": 0})
    with pytest.raises(InvalidArgument, match="emulated"):
        VirtualMachine(desc).boot().host_function(0)


def test_check_description_dict_has_every_field_as_its_typed_dict_says():
    # VirtualMachineDict (check_description's / VirtualMachine.desc's type) names exactly
    # the description's fields, and the dict really has them all (a field added to
    # VirtualMachineDesc but not to the TypedDict fails here)
    from pymsi.machine.desc import VirtualMachineDesc
    from pymsi.machine.virtual import VirtualMachineDict, check_description

    keys = set(VirtualMachineDesc.keys())
    assert set(VirtualMachineDict.__required_keys__) == keys
    d = check_description({"guest_ncpus": 3, "devices": [{"msix": 3}]})
    assert set(d) == keys
    assert d["guest_ncpus"] == 3 and d["devices"] == [{"msix": 3}] and d["seed"] == 0
