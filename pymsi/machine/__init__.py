"""Machines: hardware models wired together, and kernels booted on them."""

from .platforms import ArmVirt, X86Pc
from .virtual import VirtualMachine, load

__all__ = ["ArmVirt", "VirtualMachine", "X86Pc", "load"]
