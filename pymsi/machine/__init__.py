"""Machines: hardware models wired together, and kernels booted on them.

* :class:`ArmVirt`, :class:`X86Pc` -- the two host machines; ``.boot()`` boots a kernel;
* :class:`VirtualMachine` -- host + VMM + guest;
* their typed descriptions (:mod:`pymsi.machine.desc`): :class:`PciFunctionDesc`,
  :class:`BootOptions`, :class:`ArmVirtDesc`, :class:`X86PcDesc`, :class:`VmDeviceDesc`,
  :class:`VirtualMachineDesc`; dicts of their keys are accepted wherever they are;
* :func:`load` -- a machine from a TOML description, :func:`to_toml` -- one written.
"""

from .desc import (
    ArmVirtDesc,
    BootOptions,
    PciFunctionDesc,
    VirtualMachineDesc,
    VmDeviceDesc,
    X86PcDesc,
    load,
    load_description,
    to_toml,
)
from .platforms import ArmVirt, X86Pc
from .virtual import VirtualMachine

__all__ = [
    "ArmVirt",
    "ArmVirtDesc",
    "BootOptions",
    "PciFunctionDesc",
    "VirtualMachine",
    "VirtualMachineDesc",
    "VmDeviceDesc",
    "X86Pc",
    "X86PcDesc",
    "load",
    "load_description",
    "to_toml",
]
