"""Readable reprs: every pymsi object reachable from a booted machine has a short repr
(hex addresses, no other object's contents) that never raises."""

from __future__ import annotations

import collections
import enum
import re
import types

import pytest

from pymsi._repr import LIMIT, cpus
from pymsi.machine import VirtualMachine

#: the objects issue 12 names: their reprs say what they are, not "<... object at 0x...>"
MAIN = ("PciFunction", "Bar", "MsixConfig", "SMMUv3", "GicV3Its", "Gicv3", "Redistributor",
        "CpuInterface", "PciHost", "ArmVirt", "VirtualMachine", "GenIrq", "GicDriver", "ItsDriver",
        "Memory", "Iotlb", "MsiTable", "Streams", "ItsCache",
        "Bus", "Kernel", "IrqDesc", "IrqData", "Stage1", "Stage2", "MsiDesc", "ItsDevice")


def _reachable(root):
    """Every object reachable from ``root`` through attributes and containers."""
    seen, stack = set(), [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (types.FunctionType, types.MethodType,
                                           types.ModuleType, type, types.BuiltinFunctionType)):
            continue
        seen.add(id(o))
        yield o
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
            continue
        if isinstance(o, (list, tuple, set, frozenset, collections.deque)):
            stack.extend(o)
            continue
        d = getattr(o, "__dict__", None)
        if isinstance(d, dict):
            stack.extend(d.values())
        for s in getattr(type(o), "__slots__", ()) or ():
            if isinstance(s, str) and hasattr(o, s):
                stack.append(getattr(o, s))


@pytest.mark.parametrize("desc", [
    {"vsmmu": "accel", "gicv4": True, "devices": [{"msix": 64}, {"msi": 4}]},
    {"vsmmu": "emulated", "devices": [{"model": "edu", "emulated": True}]},
])
def test_every_repr_is_short(desc):
    vm = VirtualMachine(**desc).boot()
    for i in range(len(vm.slots)):
        vm.function(i).notify(0)
    vm.run()
    seen = collections.Counter()
    for o in _reachable(vm):
        t = type(o)
        if not t.__module__.startswith("pymsi") or isinstance(o, enum.Enum):
            continue
        text = repr(o)                       # never raises
        assert len(text) <= LIMIT, (t.__qualname__, text[:300])
        seen[t.__name__] += 1
        if t.__name__ in MAIN:
            assert " object at 0x" not in text, text
    assert {"SMMUv3", "GicV3Its", "Gicv3", "Redistributor", "Bus", "Kernel", "IrqDesc",
            "IrqData", "MsiDesc", "ItsDevice", "Stage1"} <= set(seen)


def test_reprs_show_addresses_in_hex():
    vm = VirtualMachine(vsmmu="accel", devices=[{"msix": 8}]).boot()
    fn = vm.host_function(0)
    assert repr(fn) == "PciFunction(00:01.0 1af4:1041 msix=8)"
    assert repr(fn.bars[0]).startswith("Bar(size=0x4000,")
    assert "pba_offset=0x2000" in repr(fn.msix)
    rd = vm.machine.gic.redists[0]
    assert f"propbaser={rd.propbaser:#x}" in repr(rd) and rd.propbaser > 9
    assert f"{vm.machine.RAM_BASE:#x}" in repr(vm.machine.bus)
    irq = vm.guest_irq(0, 3)
    text = repr(vm.guest.irq.descs[irq])
    assert re.fullmatch(rf"<irq_desc {irq} ITS-PCI-MSI hwirq=0x[0-9a-f]+ "
                        r"actions=pci-endpoint-test\.3 count=0>", text), text
    assert repr(vm.host).startswith("<Kernel host arm64 cpus={0-3}")


def test_cpulist():
    assert cpus([]) == "{}"
    assert cpus({0, 1, 2, 3, 8, 10, 11}) == "{0-3,8,10-11}"
    assert cpus(range(512)) == "{0-511}"
