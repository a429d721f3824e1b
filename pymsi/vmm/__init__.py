"""A QEMU-like VMM: guest RAM, the guest's board, virtual devices and MSI routing.

The VMM is a user process of the host kernel model: it reaches the host only
through the user/kernel contract (``k.open``, ioctls, ``k.mmap``, eventfds,
reads of its own /proc files) and the guest only through guest memory, MMIO
traps and KVM.
"""
