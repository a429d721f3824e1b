"""The documented harness surface: the kernel's declared subsystems, proc_read / sysfs_read
beside the writes, affinity as CPU sets, every exception importable from pymsi.errors.

Expected texts are built here from the CPU sets written (Linux's "%*pb" / "%*pbl"
formats), not taken from the code under test."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import re
import typing
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pymsi
import pymsi.errors
import pymsi.info
from pymsi.errors import KernelError
from pymsi.kernel.base import parse_cpulist
from pymsi.kernel.drivers import MsiCountingDriver
from pymsi.kernel.kernel import Kernel
from pymsi.machine import ArmVirt, X86Pc

NCPUS = 6


def errno_of(fn, *args):
    try:
        fn(*args)
    except KernelError as e:
        return e.errno
    return None


def boot(kind="arm", **kw):
    m = (ArmVirt if kind == "arm" else X86Pc)(
        ncpus=NCPUS, devices=[{"msix": 4}, {"msi": 4, "msix": None}], **kw)
    k = m.boot()
    drv = MsiCountingDriver(k, k.pci.devices[0], 4)
    return m, k, drv


def hexmask(cpus):
    """"%*pb" for nr_cpu_ids = NCPUS: one hex group, as many digits as 6 bits need."""
    return f"{sum(1 << c for c in cpus):0{(NCPUS + 3) // 4}x}"


def cpus_of_list(text):
    """The CPUs a "%*pbl" text names ("0-2,4")."""
    out = set()
    for part in filter(None, text.strip().split(",")):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def listtext(cpus):
    return ",".join(str(c) for c in sorted(cpus))     # one region per CPU: also valid


# -- the kernel's declared attributes -----------------------------------------------------

def _hints():
    import pymsi.kernel.arm_smmu_v3 as a
    import pymsi.kernel.gic as g
    import pymsi.kernel.intel_iommu as ii
    import pymsi.kernel.iommufd as fd
    import pymsi.kernel.irqbypass as ib
    import pymsi.kernel.kernel as kk
    import pymsi.kernel.kvm as kvm
    import pymsi.kernel.msi as msi
    import pymsi.kernel.vfio_pci as vp
    import pymsi.kernel.x86 as x

    ns = dict(vars(kk))
    for mod in (a, g, ii, fd, ib, kvm, msi, vp, x):
        ns.update({k: v for k, v in vars(mod).items() if isinstance(v, type)})
    return typing.get_type_hints(Kernel, globalns=ns)


def _satisfies(value, hint):
    if hint is typing.Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_satisfies(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is Callable or hint is Callable:
        return callable(value)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, hint)


@pytest.mark.parametrize("kind,present,absent", [
    ("arm", {"gic", "its", "smmu", "kvm", "iommufd", "vfio_pci"},
     {"vector", "ir", "intel_iommu"}),
    ("x86", {"vector", "ir", "intel_iommu", "iommufd", "vfio_pci"},
     {"gic", "its", "smmu", "kvm"}),
])
def test_every_declared_subsystem_is_there_with_its_declared_type(kind, present, absent):
    _, k, _ = boot(kind, **({"remapping": True} if kind == "x86" else {"smmu": "s1"}))
    hints = _hints()
    assert {"irq", "pci", "msi", "files", "iommu", "gic", "its", "cpu_irq"} <= set(hints)
    for name, hint in hints.items():
        assert hasattr(k, name), name
        assert _satisfies(getattr(k, name), hint), (name, hint, getattr(k, name))
    for name in present:
        assert getattr(k, name) is not None, name
    for name in absent:
        assert getattr(k, name) is None, name


def test_every_declared_attribute_has_a_doc_comment():
    for cls, names in ((Kernel, _hints()), (MsiCountingDriver,
                                            typing.get_type_hints(MsiCountingDriver))):
        src = inspect.getsource(cls)
        for name in names:
            assert re.search(rf"#: [^\n]+\n(\s+#:[^\n]*\n)*\s+{name}: ", src), name


# -- /proc ----------------------------------------------------------------------------------

cpusets = st.sets(st.integers(0, NCPUS - 1), min_size=1)


@settings(max_examples=40, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 3), cpusets, st.booleans()), min_size=1,
                       max_size=8), kind=st.sampled_from(["arm", "x86"]))
def test_proc_reads_show_what_was_written_and_the_sets_agree(writes, kind):
    m, k, drv = boot(kind)
    for v, cpus, as_list in writes:
        irq = drv.irqs[v]
        name = "smp_affinity_list" if as_list else "smp_affinity"
        k.proc_write(f"/proc/irq/{irq}/{name}", listtext(cpus) if as_list else hexmask(cpus))
        assert k.irq_get_affinity(irq) == frozenset(cpus)
        assert k.proc_read(f"/proc/irq/{irq}/smp_affinity") == hexmask(cpus) + "\n"
        text = k.proc_read(f"/proc/irq/{irq}/smp_affinity_list")
        assert text.endswith("\n") and cpus_of_list(text) == cpus
        # a "%*pbl" text is ranges: no two consecutive CPUs listed apart
        assert not re.search(r"(\d+),(\d+)", text) or all(
            int(b) > int(a) + 1 for a, b in re.findall(r"(\d+),(?=(\d+))", text))
        eff = k.irq_get_effective_affinity(irq)
        # one target CPU, one it may go to -- or, on x86 while a vector move is in
        # progress (the write is pending: Linux's GENERIC_PENDING_IRQ), the old one
        assert len(eff) == 1 and eff <= k.irq.irq_get_affinity_mask(irq)
        assert eff <= cpus or k.irq.desc(irq).pending_mask == cpus
        assert k.proc_read(f"/proc/irq/{irq}/effective_affinity") == hexmask(eff) + "\n"
        assert cpus_of_list(k.proc_read(f"/proc/irq/{irq}/effective_affinity_list")) == eff
    for v in range(4):                     # and the interrupts go where the sets say
        cpu, = k.irq_get_effective_affinity(drv.irqs[v])
        drv.fired[v].clear()
        m.functions[0].notify(v)
        k.handle_interrupts()
        assert drv.fired[v] == [cpu]


def test_default_smp_affinity_reads_back_and_applies_to_new_interrupts():
    _, k, drv = boot()
    assert k.proc_read("/proc/irq/default_smp_affinity") == hexmask(range(NCPUS)) + "\n"
    k.proc_write("/proc/irq/default_smp_affinity", "6")
    assert k.proc_read("/proc/irq/default_smp_affinity") == "06\n"
    drv2 = MsiCountingDriver(k, k.pci.devices[1], 2)
    assert all(k.irq_get_affinity(i) == {1, 2} for i in drv2.irqs)
    assert errno_of(k.proc_write, "/proc/irq/default_smp_affinity", "40") == errno.EINVAL
    assert errno_of(k.proc_write, "/proc/irq/default_smp_affinity", "xyz") == errno.EINVAL
    assert k.proc_read("/proc/irq/default_smp_affinity") == "06\n"   # failed writes: no change


def test_read_only_and_missing_proc_files_fail_like_linux():
    _, k, drv = boot()
    irq = drv.irqs[0]
    before = k.proc_read(f"/proc/irq/{irq}/effective_affinity")
    for name in ("effective_affinity", "effective_affinity_list"):
        assert errno_of(k.proc_write, f"/proc/irq/{irq}/{name}", "1") == errno.EIO
    assert errno_of(k.proc_write, "/proc/interrupts", "1") == errno.EIO
    assert k.proc_read(f"/proc/irq/{irq}/effective_affinity") == before
    unused = max(k.irq.descs) + 100
    for name in ("smp_affinity_list", "effective_affinity_list", "effective_affinity"):
        assert errno_of(k.proc_read, f"/proc/irq/{unused}/{name}") == errno.ENOENT
        assert errno_of(k.proc_write, f"/proc/irq/{unused}/{name}", "1") == errno.ENOENT
    assert errno_of(k.proc_read, f"/proc/irq/{irq}/affinity_hint_list") == errno.ENOENT
    assert errno_of(k.irq_get_affinity, unused) == errno.EINVAL
    assert errno_of(k.irq_get_effective_affinity, unused) == errno.EINVAL


@pytest.mark.parametrize("text,cpus", [
    ("0-3", {0, 1, 2, 3}), ("5", {5}), ("1,3-4", {1, 3, 4}), (" 2 ,, 4\n9", {2, 4}),
    ("0-5:1/2", {0, 2, 4}), ("0-5:2/3", {0, 1, 3, 4}), ("N", {511}), ("all", set(range(512))),
    ("ALL:1/256", {0, 256}), ("3-N:1/254", {3, 257, 511}), ("", set()), (",", set()),
    ("1\x002", {1}),
])
def test_cpu_lists_read_as_bitmap_parselist_reads_them(text, cpus):
    assert parse_cpulist(text, 512) == cpus


@pytest.mark.parametrize("text,err", [
    ("3-1", errno.EINVAL), ("1-", errno.EINVAL), ("-1", errno.EINVAL), ("x", errno.EINVAL),
    ("1:1/2", errno.EINVAL), ("0-3:1", errno.EINVAL), ("0-3:3/2", errno.EINVAL),
    ("0-3:0/0", errno.EINVAL), ("1 2x", errno.EINVAL), ("+1", errno.EINVAL),
    ("512", errno.ERANGE), ("0-512", errno.ERANGE), ("4294967296", errno.EOVERFLOW),
])
def test_bad_cpu_lists_fail_as_bitmap_parselist_fails(text, err):
    assert errno_of(parse_cpulist, text, 512) == err


def test_smp_affinity_list_write_errors_change_nothing():
    _, k, drv = boot()
    irq = drv.irqs[1]
    k.proc_write(f"/proc/irq/{irq}/smp_affinity_list", "2-3")
    for text, err in (("7", errno.EINVAL), ("9-600", errno.ERANGE), ("1-0", errno.EINVAL),
                      ("", errno.EINVAL)):
        assert errno_of(k.proc_write, f"/proc/irq/{irq}/smp_affinity_list", text) == err
        assert k.irq_get_affinity(irq) == {2, 3}
    assert k.proc_read(f"/proc/irq/{irq}/smp_affinity_list") == "2-3\n"


# -- sysfs: msi_irqs --------------------------------------------------------------------------

def test_msi_irqs_name_every_vector_of_a_device_while_it_has_them():
    _, k, drv = boot()
    dev, msidev = k.pci.devices
    base = f"/sys/bus/pci/devices/{dev.bdf}/msi_irqs"
    for irq in drv.irqs:
        assert k.sysfs_read(f"{base}/{irq}") == "msix\n"
        assert errno_of(k.sysfs_write, f"{base}/{irq}", "msi") == errno.EACCES
    assert errno_of(k.sysfs_read, base) == errno.EISDIR
    assert errno_of(k.sysfs_read, f"{base}/{max(drv.irqs) + 1}") == errno.ENOENT
    assert errno_of(k.sysfs_read, f"{base}/0{drv.irqs[0]}") == errno.ENOENT
    mbase = f"/sys/bus/pci/devices/{msidev.bdf}/msi_irqs"
    assert errno_of(k.sysfs_read, mbase) == errno.ENOENT          # no vectors yet
    drv2 = MsiCountingDriver(k, msidev, 4)
    assert all(k.sysfs_read(f"{mbase}/{i}") == "msi\n" for i in drv2.irqs)
    drv.remove()
    assert errno_of(k.sysfs_read, f"{base}/{drv.irqs[0]}") == errno.ENOENT
    assert k.sysfs_read(f"/sys/bus/pci/devices/{dev.bdf}/vendor") == "0x1af4\n"


# -- errors ----------------------------------------------------------------------------------

# Exceptions used for control flow inside one module and caught there (never raised to a
# caller); a new one must be added here on purpose, with where it is caught.
PRIVATE = {
    "pymsi.kernel.vgic_its._CmdError",      # a vITS command error -> its SError state
    "pymsi.hw.its._Error",                  # an ITS command error -> GITS_CREADR stall
    "pymsi.hw.its._Stall",
    "pymsi.hw.smmuv3._ConfigError",         # -> a C_BAD_STE / C_BAD_CD event record
    "pymsi.core._pybackend._WalkFault",     # -> a Fault returned by the walk
}


def test_every_exception_class_under_pymsi_is_exported_by_pymsi_errors():
    found = {}
    for info in pkgutil.walk_packages(pymsi.__path__, "pymsi."):
        if info.name == "pymsi._build":         # setup.py's cffi build script, not a module
            continue                            # of the library (it reads csrc/ to build)
        try:
            mod = importlib.import_module(info.name)
        except ImportError as e:                # the C extension where it is not built
            assert "_cffi" in info.name or "pymsi._" in info.name, (info.name, e)
            continue
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, BaseException) and \
                    obj.__module__ == mod.__name__:
                found[f"{mod.__name__}.{name}"] = obj
    assert "pymsi.errors.KernelError" in found
    public = {q: c for q, c in found.items() if q not in PRIVATE}
    assert set(found) - set(public) == PRIVATE           # the private ones still exist
    for qual, cls in public.items():
        assert getattr(pymsi.errors, cls.__name__, None) is cls, qual
        assert cls.__name__ in pymsi.errors.__all__, qual
        assert cls.__doc__ and cls.__doc__.strip(), qual
        assert issubclass(cls, pymsi.errors.PymsiError), qual
    for name in pymsi.errors.__all__:
        assert hasattr(pymsi.errors, name), name


def test_kernel_errors_keep_their_errno_and_are_the_same_class_everywhere():
    from pymsi.hw.qdev import DeviceModelError
    from pymsi.kernel.base import KernelError as FromBase

    assert FromBase is KernelError and DeviceModelError is pymsi.errors.DeviceModelError
    _, k, _ = boot()
    with pytest.raises(pymsi.errors.KernelError) as e:
        k.proc_read("/proc/nope")
    assert e.value.errno == errno.ENOENT and isinstance(e.value, OSError)
    assert "[ENOENT]" in str(e.value)


def test_help_shows_every_declared_attribute_with_its_doc():
    import pydoc

    from pymsi._doc import attribute_docs
    from pymsi.machine import ArmVirtDesc, PciFunctionDesc, VirtualMachineDesc, VmDeviceDesc

    for cls in (Kernel, MsiCountingDriver, ArmVirt, X86Pc, PciFunctionDesc, VmDeviceDesc,
                ArmVirtDesc, VirtualMachineDesc):
        text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
        names = [name for name, _, _ in attribute_docs(cls)]
        assert names, cls
        for name, ann, doc in attribute_docs(cls):
            assert f"{name} ({ann}):" in text, (cls, name)
            assert doc.split()[0] in text, (cls, name)
    # a subclass lists its bases' attributes too, and the dataclass fields are all there
    assert [n for n, _, _ in attribute_docs(VmDeviceDesc)] == \
        [f for f in VmDeviceDesc.keys()]
    assert {n for n, _, _ in attribute_docs(Kernel)} >= {"irq", "pci", "gic", "its",
                                                         "files", "iommu", "kvm"}


# -- no bare built-in raises on the public paths -------------------------------------------

# No bare ``raise ValueError(`` / ``RuntimeError(`` anywhere: argument errors are
# InvalidArgument (a ValueError), misuse OutOfOrder (a RuntimeError), all in pymsi.errors.
# Counted exactly per file, so an exception added here must say why.
BARE_RAISES_ALLOWED: dict[tuple[str, str], int] = {}


def test_no_bare_value_or_runtime_error_is_raised_outside_the_allow_list():
    import pathlib

    root = pathlib.Path(pymsi.__file__).parent
    found: dict[tuple[str, str], int] = {}
    for path in sorted(root.rglob("*.py")):
        for m in re.finditer(r"\braise\s+(ValueError|RuntimeError)\s*\(", path.read_text()):
            key = (f"pymsi/{path.relative_to(root).as_posix()}", m.group(1))
            found[key] = found.get(key, 0) + 1
    assert found == BARE_RAISES_ALLOWED


def test_machine_misuse_and_livelock_raise_pymsi_errors():
    from pymsi.machine import VirtualMachine

    vm = VirtualMachine(devices=[{"msix": 2}], host_ram=0x800_0000)
    with pytest.raises(pymsi.errors.InvalidArgument):
        pymsi.info.info_irq(vm, (0, 0))                     # not booted yet
    with pytest.raises(pymsi.errors.OutOfOrder):
        vm.shutdown()
    vm.boot()
    with pytest.raises(pymsi.errors.OutOfOrder) as e:
        vm.boot()
    assert isinstance(e.value, RuntimeError)
    vm.function(0).notify(1)
    with pytest.raises(pymsi.errors.NotQuiescent) as q:
        vm.run(max_events=1)
    assert q.value.max_events == 1 and isinstance(q.value, RuntimeError)
    assert "1 events" in str(q.value)
