"""Machines: hardware models wired together, and kernels booted on them."""

from .platforms import ArmVirt, X86Pc

__all__ = ["ArmVirt", "X86Pc"]
