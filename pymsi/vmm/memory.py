"""The VMM's guest RAM (QEMU's "mach-virt.ram" RAMBlock) and its guest-physical view.

QEMU allocates guest RAM as anonymous memory of its own process, registers it
with KVM as a memory slot and, for an assigned device, maps it into the
iommufd IOAS at IOVA = GPA (stage 2).  :class:`GuestRam` does the same through
the host kernel model's user interface: ``k.mmap``, touching every page
(``-mem-prealloc``: QEMU's ``qemu_prealloc_mem`` writes each page), reading
/proc/self/pagemap for each page's host frame, ``KVM_SET_USER_MEMORY_REGION``
and ``IOMMU_IOAS_MAP``.

Everything that runs *inside* the guest (the guest kernel, the VMM's device
models and its emulated vSMMU walking guest tables) needs guest-physical
addresses, at the speed of the C core.  :func:`guest_memory` builds that view:
a real :class:`pymsi.core.Memory` whose RAM region is at the guest's addresses
and whose every page *is* (``Memory.alias_page``) the host page backing the
VMM's user page.  A byte the guest writes there is the byte the physical SMMU
reads through stage 2 and KVM reads through the memory slot: there is one copy.

The host's physical RAM (``host_ram``) is handed in by whoever assembles the
machine: it models the host CPU's MMU, which makes the VMM's user page at a VA
the host page at ``pfn << 12``; the VMM itself never looks inside the kernel.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from ..hw.virt_map import VIRT_MEM
from ..uapi import iommufd as u
from ..uapi import kvm as K

if TYPE_CHECKING:
    from ..core import Memory
    from ..uapi.syscalls import OpenFile, Syscalls

PAGE_SIZE = 0x1000
#: Guest RAM of the Arm virt board: base GPA and the (small: pages are populated) default size.
RAM_GPA = VIRT_MEM
RAM_SIZE = 0x200_0000


def qemu_prealloc_mem(k: Syscalls, va: int, size: int) -> None:
    """Touch every page of [va, va + size) so the kernel backs it (QEMU's
    ``qemu_prealloc_mem``: one write per page)."""
    for off in range(0, size, PAGE_SIZE):
        k.user_write(va + off, b"\0")


def host_pfns(k: Syscalls, va: int, npages: int) -> list[int]:
    """The host frame behind each page from ``va`` on, read from /proc/self/pagemap;
    EFAULT for an unmapped page, EINVAL (here) for one never touched."""
    out = []
    for i in range(npages):
        pfn = k.pagemap(va + i * PAGE_SIZE)
        if pfn is None:
            raise OSError(errno.EINVAL, f"guest RAM page at {va + i * PAGE_SIZE:#x} is not present")
        out.append(pfn)
    return out


def guest_memory(host_ram: Memory, regions: list[tuple[int, list[int]]]) -> Memory:
    """A :class:`pymsi.core.Memory` (of ``host_ram``'s backend) with one RAM region
    per ``(gpa, pfns)``, each page aliasing host page ``pfn`` of ``host_ram``."""
    mem = type(host_ram)()
    for gpa, pfns in regions:
        mem.add_ram(gpa, len(pfns) * PAGE_SIZE)
        for i, pfn in enumerate(pfns):
            mem.alias_page(gpa + i * PAGE_SIZE, host_ram, pfn * PAGE_SIZE)
    return mem


class GuestRam:
    """One block of guest RAM: ``size`` bytes of the VMM's anonymous memory at
    guest-physical ``gpa``.

    ``va`` is where it lives in the VMM; ``mem`` the guest-physical view
    (a :class:`pymsi.core.Memory`, RAM at ``gpa``); ``pfns`` the host frames.
    """

    def __init__(self, k: Syscalls, host_ram: Memory, gpa: int = RAM_GPA,
                 size: int = RAM_SIZE) -> None:
        if gpa % PAGE_SIZE or size <= 0 or size % PAGE_SIZE:
            raise InvalidArgument(f"guest RAM [{gpa:#x}, +{size:#x}) is not page aligned")
        self.k = k
        self.gpa = gpa
        self.size = size
        self.va = k.mmap(size)
        qemu_prealloc_mem(k, self.va, size)
        self.pfns = host_pfns(k, self.va, size // PAGE_SIZE)
        self.mem = guest_memory(host_ram, [(gpa, self.pfns)])
        self.kvm_slot: int | None = None
        self.ioas_id: int | None = None

    def release(self) -> None:
        """Before the VMM unmaps the block: the guest-physical view stops aliasing the
        host frames (every page re-pointed, ``Memory.alias_page``, at one scratch page
        of a private memory no host frame backs), so no object that still holds the
        view -- a guest kernel, a board, a vSMMU -- reaches a frame the host frees and
        reuses.  Writes through such a stale view land in the scratch page."""
        if not self.pfns:
            return
        scratch = type(self.mem)()
        scratch.add_ram(0, PAGE_SIZE)
        for i in range(len(self.pfns)):
            self.mem.alias_page(self.gpa + i * PAGE_SIZE, scratch, 0)
        self.pfns = []

    def contains(self, gpa: int, size: int = 1) -> bool:
        """Whether [gpa, gpa + size) is in this block."""
        return self.gpa <= gpa and gpa + size <= self.gpa + self.size

    def hva(self, gpa: int) -> int:
        """The VMM's user address of guest-physical ``gpa`` (QEMU's address_space_map)."""
        if not self.contains(gpa):
            raise InvalidArgument(f"{gpa:#x} is not guest RAM")
        return self.va + gpa - self.gpa

    def kvm_set_user_memory_region(self, vm_fd: int, slot: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: the block becomes memory slot ``slot`` of the VM."""
        self.k.ioctl(vm_fd, K.KVM_SET_USER_MEMORY_REGION, K.KvmUserspaceMemoryRegion(
            slot=slot, guest_phys_addr=self.gpa, memory_size=self.size, userspace_addr=self.va))
        self.kvm_slot = slot

    def ioas_map(self, iommufd: OpenFile, ioas_id: int) -> None:
        """IOMMU_IOAS_MAP at IOVA = GPA, readable and writeable (the pages get pinned):
        the stage 2 every assigned device's DMA goes through."""
        iommufd.ioctl(u.IOMMU_IOAS_MAP, u.IommuIoasMap(
            flags=u.IOMMU_IOAS_MAP_FIXED_IOVA | u.IOMMU_IOAS_MAP_READABLE
            | u.IOMMU_IOAS_MAP_WRITEABLE, ioas_id=ioas_id, user_va=self.va,
            length=self.size, iova=self.gpa))
        self.ioas_id = ioas_id
