"""pymsi: an executable model of MSI delivery for PCI devices assigned to VMs.

An MSI from a device behind an Arm SMMUv3 is a DMA write: it is translated by
stage 1 and stage 2 and lands on the GICv3 ITS doorbell.  pymsi models that
path (hardware, a Linux-like kernel, a QEMU-like VMM) and the design in which
userspace chooses the MSI address of every vector.  The hot path is C
(:mod:`pymsi.core`), with a pure-Python twin of identical behaviour.
"""

__version__ = "0.1.0"
