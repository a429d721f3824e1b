"""iommufd (drivers/iommu/iommufd/): ``/dev/iommu``, its objects and the IOAS.

Each open of ``/dev/iommu`` is an :class:`IommufdCtx` (struct iommufd_ctx)
with an object table whose ids are allocated lowest-free from 1, as an
XA_FLAGS_ALLOC1 xarray does.  ``ioctl`` dispatches like
``iommufd_fops_ioctl``: the ioctl number picks the op, a ``size`` below the
op's minimum (``offsetofend`` of its last mandatory member) is EINVAL, an
unknown number ENOTTY.  The argument is the uapi structure object of
:mod:`pymsi.uapi.iommufd`; ``out_*`` members are filled in place, and a failed
call raises :class:`~pymsi.kernel.base.KernelError` leaving the structure and
the context as they were.

An :class:`Ioas` (struct iommufd_ioas + io_pagetable) holds areas (IOVA ->
pinned user pages), allowed IOVA ranges, reserved ranges keyed by owner (the
API device attach uses) and the list of attached IOMMU domains: every area is
``iommu_map``-ed into every domain of the list and unmapped from them when the
area goes (the extension point for HWPTs).  Areas share pinned pages through
:class:`PinnedPages` (refcounted, like struct iopt_pages), so
``IOMMU_IOAS_COPY`` pins nothing new.

Devices come in through :meth:`Iommufd.bind_device` (what VFIO's
``VFIO_DEVICE_BIND_IOMMUFD`` calls): an :class:`IommufdDevice` per bound
device, attached to a HW page table (:class:`HwptPaging` on an IOAS, or
:class:`HwptNested` on a nest-parent paging HWPT).  Attaching to an IOAS id
finds or makes the IOAS's automatic paging HWPT, which dies with its last
device.  Attach reserves the device's reserved regions in the IOAS; the MSI
design of the context (:class:`IommufdMsiHooks`, ``ctx.msi``) is told about
every HWPT and every attach / detach.

Deliberate differences from Linux in the device part: IOMMU groups are single
devices in both machines, so attach state is kept per device; a nested HWPT
can be allocated straight from a nest-parent paging HWPT with
IOMMU_HWPT_DATA_ARM_SMMUV3 (upstream arm-smmu-v3 requires a vIOMMU for that
since 6.13); there are no fault queues, so IOMMU_HWPT_FAULT_ID_VALID is
EOPNOTSUPP; no PASID (PASID attach / detach and HWPT flags are EOPNOTSUPP);
``ctx.msi.detach`` runs on a detach only, a replace calls ``ctx.msi.attach``.

Deliberate differences from Linux: user pages are pinned at MAP time (Linux
pins lazily, when a domain or an access needs them), so an unmapped user VA is
EFAULT at MAP; the IOVA alignment is always PAGE_SIZE (Linux starts at 1 and
rises to the domain's page size); a failing UNMAP changes nothing (Linux may
have unmapped the whole areas before the partial one it stops at).
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..core import Prot
from ..uapi import iommufd as uapi
from ..uapi._ioctl import _IOC_NR
from ..uapi._struct import Struct
from .base import (
    EBUSY,
    EEXIST,
    EFAULT,
    EINVAL,
    ENODEV,
    ENOENT,
    ENOSPC,
    EOPNOTSUPP,
    EOVERFLOW,
    EPERM,
    KernelError,
    fail,
)
from .files import PAGE_SIZE, File, FileOperations
from .iommu import IommuDevice, IommuDomain, IommuGroup, ResvType

if TYPE_CHECKING:
    from ..uapi import IoctlArg
    from .iommufd_viommu import Vdevice, Viommu
    from .kernel import Kernel

_S = TypeVar("_S", bound=Struct)

ENOTTY, EADDRINUSE, EMSGSIZE = _errno.ENOTTY, _errno.EADDRINUSE, _errno.EMSGSIZE
EBADFD = _errno.EBADFD
ULONG_MAX = (1 << 64) - 1
PHYS_ADDR_MAX = ULONG_MAX
U32_MAX = (1 << 32) - 1
_MAP_FLAGS = (uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_WRITEABLE
              | uapi.IOMMU_IOAS_MAP_READABLE)


def _overlaps(a0: int, a1: int, b0: int, b1: int) -> bool:
    """Inclusive intervals [a0, a1] and [b0, b1] intersect."""
    return a0 <= b1 and b0 <= a1


class IommufdObject:
    """struct iommufd_object: an id in the context's table and a user count
    (held by other objects and by kernel users; destroy is EBUSY while > 0)."""

    kind = "object"

    def __init__(self, ctx: IommufdCtx) -> None:
        self.ctx = ctx
        self.id = 0
        self.users = 0

    def destroy(self) -> None:
        """Free what the object holds (called once, when it leaves the table)."""


# -- pinned pages and areas ---------------------------------------------------------------


class PinnedPages:
    """struct iopt_pages: the host pages pinned for ``len(pas)`` pages at user VA
    ``uptr``; each page counts the areas using it and is unpinned when the last
    one goes (an area copied from part of another keeps only its own pages)."""

    copyable = True           # IOMMU_IOAS_COPY may hand these pages to another area

    def __init__(self, kernel: Kernel, uptr: int, pas: list[int], writable: bool) -> None:
        self.kernel = kernel
        self.uptr = uptr
        self.pas = pas
        self.writable = writable
        self.users = [0] * len(pas)

    def get(self, first: int, n: int) -> None:
        for i in range(first, first + n):
            self.users[i] += 1

    def put(self, first: int, n: int) -> None:
        done = []
        for i in range(first, first + n):
            self.users[i] -= 1
            if self.users[i] == 0:
                done.append(self.pas[i])
        if done:
            self.kernel.unpin_user_pages(done)


@dataclass
class Area:
    """struct iopt_area: [iova, iova + length) mapped to pages[first:first + n]."""

    iova: int
    length: int
    pages: PinnedPages
    first: int                      # index of the first page in ``pages``
    prot: Prot

    @property
    def last(self) -> int:
        return self.iova + self.length - 1

    def pas(self) -> list[int]:
        """The host page behind each page of the area."""
        return self.pages.pas[self.first:self.first + self.length // PAGE_SIZE]

    def __repr__(self) -> str:
        return (f"Area(iova={self.iova:#x}, length={self.length:#x}, first={self.first}, "
                f"prot={self.prot!r})")


@dataclass
class Reserved:
    """struct iopt_reserved: an IOVA range no area may use, and who put it there."""

    start: int
    last: int
    owner: object            # an opaque cookie (identity only), as Linux's void *owner


class Ioas(IommufdObject):
    """struct iommufd_ioas with its io_pagetable."""

    kind = "ioas"

    def __init__(self, ctx: IommufdCtx) -> None:
        super().__init__(ctx)
        self.areas: list[Area] = []                   # sorted by iova
        self.allowed: list[tuple[int, int]] = []      # inclusive, sorted
        self.reserved: list[Reserved] = []
        self.domains: list[IommuDomain] = []          # attached iommu domains
        self.iova_alignment = PAGE_SIZE

    # -- queries --------------------------------------------------------------------

    def area_at(self, iova: int) -> Area | None:
        """The area holding ``iova``."""
        for a in self.areas:
            if a.iova <= iova <= a.last:
                return a
        return None

    def iova_to_phys(self, iova: int) -> int | None:
        """The host PA ``iova`` reaches through this IOAS's areas."""
        a = self.area_at(iova)
        if a is None:
            return None
        off = iova - a.iova
        return a.pas()[off // PAGE_SIZE] + off % PAGE_SIZE

    def _area_hits(self, start: int, last: int) -> list[Area]:
        return [a for a in self.areas if _overlaps(a.iova, a.last, start, last)]

    def _resv_hit(self, start: int, last: int) -> bool:
        return any(_overlaps(r.start, r.last, start, last) for r in self.reserved)

    def valid_ranges(self) -> list[tuple[int, int]]:
        """What IOVA_RANGES reports: the holes between reserved ranges in [0, ULONG_MAX]."""
        out, cur = [], 0
        for r in sorted(self.reserved, key=lambda r: r.start):
            if r.start > cur:
                out.append((cur, r.start - 1))
            cur = max(cur, r.last + 1)
        if cur <= ULONG_MAX:
            out.append((cur, ULONG_MAX))
        return out

    # -- reserved ranges (device attach uses these) --------------------------------------

    def add_reserved(self, start: int, last: int, owner: object) -> None:
        """iopt_reserve_iova(): EADDRINUSE when an area or an allowed range overlaps.
        ``owner`` is an opaque cookie (Linux's ``void *owner``): only its identity
        counts, for :meth:`remove_reserved`."""
        if not 0 <= start <= last <= ULONG_MAX:
            raise fail(EINVAL, f"bad reserved range {start:#x}..{last:#x}")
        if self._area_hits(start, last) or \
                any(_overlaps(s, e, start, last) for s, e in self.allowed):
            raise fail(EADDRINUSE, f"IOVA {start:#x}..{last:#x} is in use")
        self.reserved.append(Reserved(start, last, owner))

    def remove_reserved(self, owner: object) -> None:
        """iopt_remove_reserved_iova(): every range ``owner`` (the same object, by
        identity) added goes."""
        self.reserved = [r for r in self.reserved if r.owner is not owner]

    # -- attached domains (HWPTs use these) ------------------------------------------------

    def attach_domain(self, domain: IommuDomain) -> None:
        """iopt_table_add_domain(): map every area into ``domain`` (all or nothing)
        and keep it mapped from now on."""
        self._map_all([(domain, a) for a in self.areas])
        self.domains.append(domain)

    def detach_domain(self, domain: IommuDomain) -> None:
        """iopt_table_remove_domain(): unmap every area from ``domain``."""
        if domain not in self.domains:
            raise fail(ENOENT, "domain not attached to this IOAS")
        for a in self.areas:
            self.ctx.kernel.iommu.unmap(domain, a.iova, a.length)
        self.domains.remove(domain)

    # -- IOVA allocation ------------------------------------------------------------------

    def _alloc_iova(self, uptr: int, length: int) -> int:
        """iopt_alloc_iova(): the lowest hole of the allowed ranges (all of
        [PAGE_SIZE, ULONG_MAX - PAGE_SIZE] when none) free of reserved ranges
        and areas, aligned to min(roundup_pow_of_two(length), alignment of uptr)."""
        if length == 0 or length >= ULONG_MAX // 2:
            raise fail(EOVERFLOW, "IOVA allocation length")
        align = 1 << (length - 1).bit_length()
        if uptr:
            align = min(align, uptr & -uptr)
        if align < self.iova_alignment:
            raise fail(EINVAL, "IOVA alignment below the IOAS's")
        lo_lim, hi_lim = PAGE_SIZE, ULONG_MAX - PAGE_SIZE
        spans = sorted(self.allowed) if self.allowed else [(lo_lim, hi_lim)]
        used = sorted([(r.start, r.last) for r in self.reserved]
                      + [(a.iova, a.last) for a in self.areas])
        for s, e in spans:
            s, e = max(s, lo_lim), min(e, hi_lim)
            cur = s
            for us, ue in used + [(e + 1, e + 1)]:
                if ue < cur:
                    continue
                hole_end = min(us - 1, e)
                start = (cur + align - 1) & -align
                if start <= hole_end and hole_end - start >= length - 1:
                    return start
                cur = max(cur, ue + 1)
                if cur > e:
                    break
        raise fail(ENOSPC, "no free IOVA")

    def _check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova() for a FIXED_IOVA map."""
        if iova & (self.iova_alignment - 1):
            raise fail(EINVAL, f"IOVA {iova:#x} unaligned")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise fail(EOVERFLOW, "IOVA range wraps")
        if self._resv_hit(iova, last):
            raise fail(EINVAL, f"IOVA {iova:#x}..{last:#x} is reserved")
        if self._area_hits(iova, last):
            raise fail(EEXIST, f"IOVA {iova:#x}..{last:#x} is already mapped")

    # -- map / unmap ---------------------------------------------------------------------

    def _place(self, uptr: int, length: int, iova: int, fixed: bool) -> int:
        if length == 0 or length & (self.iova_alignment - 1):
            raise fail(EINVAL, f"length {length:#x}")
        if uptr & (self.iova_alignment - 1):
            raise fail(EINVAL, f"user address {uptr:#x} unaligned")
        if fixed:
            self._check_iova(iova, length)
            return iova
        return self._alloc_iova(uptr, length)

    def _map_all(self, pairs: list[tuple[IommuDomain, Area]]) -> None:
        """Map each (domain, area) page by page; on a failure unmap what was begun
        (iommu_unmap skips holes) and re-raise: all or nothing."""
        touched: list[tuple[IommuDomain, Area]] = []
        try:
            for dom, a in pairs:
                touched.append((dom, a))
                for i, pa in enumerate(a.pas()):
                    self.ctx.kernel.iommu.map(dom, a.iova + i * PAGE_SIZE, pa, PAGE_SIZE,
                                              a.prot)
        except Exception:
            for dom, a in touched:
                self.ctx.kernel.iommu.unmap(dom, a.iova, a.length)
            raise

    def _insert(self, area: Area) -> None:
        """Map the area into every attached domain (all or nothing), then record it."""
        self._map_all([(dom, area) for dom in self.domains])
        area.pages.get(area.first, area.length // PAGE_SIZE)
        self.areas.append(area)
        self.areas.sort(key=lambda a: a.iova)

    def _remove(self, area: Area) -> None:
        for dom in self.domains:
            self.ctx.kernel.iommu.unmap(dom, area.iova, area.length)
        self.areas.remove(area)
        area.pages.put(area.first, area.length // PAGE_SIZE)

    def map_user(self, uptr: int, length: int, iova: int, flags: int) -> int:
        """iopt_map_user_pages(): pin the user pages and map them; the IOVA used."""
        at = self._place(uptr, length, iova, bool(flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA))
        if uptr + length - 1 > ULONG_MAX:
            raise fail(EOVERFLOW, "user range wraps")
        write = bool(flags & uapi.IOMMU_IOAS_MAP_WRITEABLE)
        pas = self.ctx.kernel.pin_user_pages(uptr, length // PAGE_SIZE, write=write)
        pages = PinnedPages(self.ctx.kernel, uptr, pas, write)
        try:
            self._insert(Area(at, length, pages, 0, _prot(flags)))
        except Exception:
            self.ctx.kernel.unpin_user_pages(pas)
            raise
        return at

    def get_pages(self, iova: int, length: int) -> list[tuple[PinnedPages, int, int]]:
        """iopt_get_pages(): (pages, first page, bytes) pieces covering the range
        contiguously, or ENOENT."""
        if length == 0:
            raise fail(EINVAL, "zero length")
        last = iova + length - 1
        if last > ULONG_MAX:
            raise fail(EOVERFLOW, "IOVA range wraps")
        out, cur = [], iova
        for a in self.areas:
            if a.last < cur:
                continue
            if a.iova > cur:
                break
            end = min(last, a.last)
            off = cur - a.iova
            if off % PAGE_SIZE or (end + 1 - cur) % PAGE_SIZE:
                raise fail(EINVAL, "copy range not page aligned")
            out.append((a.pages, a.first + off // PAGE_SIZE, end + 1 - cur))
            cur = end + 1
            if cur > last:
                return out
        raise fail(ENOENT, f"IOVA {iova:#x}..{last:#x} not fully mapped")

    def map_pages(self, pieces: list[tuple[PinnedPages, int, int]], length: int, iova: int,
                  flags: int) -> int:
        """iopt_map_pages(): map already pinned pieces consecutively; the IOVA used."""
        first_pages, first_idx, _ = pieces[0]
        uptr = first_pages.uptr + first_idx * PAGE_SIZE
        at = self._place(uptr, length, iova, bool(flags & uapi.IOMMU_IOAS_MAP_FIXED_IOVA))
        prot = _prot(flags)
        if prot & Prot.WRITE and not all(p.writable for p, _, _ in pieces):
            raise fail(EPERM, "writeable copy of pages pinned read-only")
        added: list[Area] = []
        try:
            cur = at
            for pages, idx, n in pieces:
                area = Area(cur, n, pages, idx, prot)
                self._insert(area)
                added.append(area)
                cur += n
        except Exception:
            for area in added:
                self._remove(area)
            raise
        return at

    def unmap(self, iova: int, last: int, allow_empty: bool = False) -> int:
        """iopt_unmap_iova_range(): whole areas inside [iova, last]; ENOENT for a
        partially covered area or nothing mapped; the bytes unmapped."""
        hits = self._area_hits(iova, last)
        if any(a.iova < iova or a.last > last for a in hits):
            raise fail(ENOENT, "range splits a mapping")
        if not hits and not allow_empty:
            raise fail(ENOENT, "nothing mapped there")
        for a in hits:
            self._remove(a)
        return sum(a.length for a in hits)

    def destroy(self) -> None:
        for a in list(self.areas):
            self._remove(a)


def _prot(flags: int) -> Prot:
    """conv_iommu_prot(): IOMMU_CACHE plus READ / WRITE from the map flags."""
    prot = Prot.CACHE
    if flags & uapi.IOMMU_IOAS_MAP_WRITEABLE:
        prot |= Prot.WRITE
    if flags & uapi.IOMMU_IOAS_MAP_READABLE:
        prot |= Prot.READ
    return prot


# -- devices and HW page tables -------------------------------------------------------------


class IommufdMsiHooks:
    """The MSI design of one iommufd context: told about every HWPT and every
    attach / detach of a device.  This default does nothing (MSIs are composed
    as the device's domain says, no window is installed)."""

    name = "none"
    #: attach reserves the device's SW_MSI region in the IOAS (Linux).
    reserve_sw_msi: bool = True

    def hwpt_init(self, hwpt: HwptPaging | HwptNested) -> None:
        """A new HWPT (paging or nested) and its domain, before any device uses it."""

    def attach(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        """Before ``idev``'s group moves to ``hwpt.domain`` (attach or replace); raising
        a KernelError fails the attach with nothing changed."""

    def attached(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        """After ``idev``'s group moved to ``hwpt.domain`` (attach or replace)."""

    def detach(self, idev: IommufdDevice) -> None:
        """After ``idev`` left its HWPT (a detach, not a replace)."""

    def unbind(self, idev: IommufdDevice) -> None:
        """``idev`` is being destroyed (it is already detached)."""

    def hwpt_destroy(self, hwpt: HwptPaging | HwptNested) -> None:
        """Before the HWPT's domain is freed."""


class IommufdDevice(IommufdObject):
    """struct iommufd_device: a device bound to the context by VFIO, owning its
    group's DMA; ``hwpt`` is what it is attached to (None: the blocked domain)."""

    kind = "device"
    vdev: Vdevice | None              # set by a vDEVICE (read with getattr until then)

    def __init__(self, ctx: IommufdCtx, dev: IommuDevice, group: IommuGroup) -> None:
        super().__init__(ctx)
        self.dev = dev
        self.group = group
        self.hwpt: HwptPaging | HwptNested | None = None
        self.sw_msi_start = PHYS_ADDR_MAX
        self.hw_msi = False
        self.bound = True
        for r in ctx.kernel.iommu.get_resv_regions(dev):
            if r.type == ResvType.SW_MSI and self.sw_msi_start == PHYS_ADDR_MAX:
                self.sw_msi_start = r.start
            elif r.type == ResvType.MSI:
                self.hw_msi = True

    def destroy(self) -> None:
        """iommufd_device_destroy(): detached, DMA ownership given back."""
        vdev: IommufdObject | None = getattr(self, "vdev", None)   # set by a vDEVICE
        if vdev is not None and vdev is self.ctx.objects.get(vdev.id):
            # iommufd_device_pre_destroy() -> iommufd_object_tombstone_user(): the
            # id stays taken (lookups are ENOENT) until the context is released.
            del self.ctx.objects[vdev.id]
            self.ctx.tombstones.add(vdev.id)
            vdev.destroy()
        if self.hwpt is not None:
            self.ctx.device_detach(self)
        self.ctx.msi.unbind(self)
        if self.bound:
            self.bound = False
            self.ctx.kernel.iommu.release_dma_owner(self.group)


class HwptPaging(IommufdObject):
    """struct iommufd_hwpt_paging: an IOMMU paging domain kept mapped to an IOAS
    (arm-smmu-v3: stage 2 when ``nest_parent``).  ``auto_domain``: made by
    attaching a device to the IOAS's id; it goes with its last device."""

    kind = "hwpt_paging"

    def __init__(self, ctx: IommufdCtx, ioas: Ioas, domain: IommuDomain, nest_parent: bool,
                 auto_domain: bool = False) -> None:
        super().__init__(ctx)
        self.ioas = ioas
        self.domain = domain
        self.nest_parent = nest_parent
        self.auto_domain = auto_domain
        self.devices: list[IommufdDevice] = []
        domain.iommufd_hwpt = self
        ioas.users += 1

    def destroy(self) -> None:
        self.ctx.msi.hwpt_destroy(self)
        if self.domain in self.ioas.domains:
            self.ioas.detach_domain(self.domain)
        self.ctx.kernel.iommu.domain_free(self.domain)
        self.ioas.users -= 1


class HwptNested(IommufdObject):
    """struct iommufd_hwpt_nested: a nested domain (arm-smmu-v3: a guest's vSTE) on
    a nest-parent paging HWPT; ``viommu`` when allocated through one."""

    kind = "hwpt_nested"

    def __init__(self, ctx: IommufdCtx, parent: HwptPaging, domain: IommuDomain,
                 viommu: Viommu | None = None) -> None:
        super().__init__(ctx)
        self.parent = parent
        self.domain = domain
        self.viommu = viommu
        self.devices: list[IommufdDevice] = []
        domain.iommufd_hwpt = self
        parent.users += 1
        if viommu is not None:
            viommu.users += 1

    def destroy(self) -> None:
        self.ctx.msi.hwpt_destroy(self)
        self.ctx.kernel.iommu.domain_free(self.domain)
        self.parent.users -= 1
        if self.viommu is not None:
            self.viommu.users -= 1


def _paging_of(hwpt: HwptPaging | HwptNested) -> HwptPaging:
    """find_hwpt_paging(): a nested HWPT's reserved IOVA lives in its parent's IOAS."""
    return hwpt if isinstance(hwpt, HwptPaging) else hwpt.parent


# -- the context and its ioctls ------------------------------------------------------------


class IommufdCtx:
    """struct iommufd_ctx: one open of /dev/iommu and its object table."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.objects: dict[int, IommufdObject] = {}
        #: ids of objects destroyed as tombstones (XA_ZERO_ENTRY): not reused before
        #: release, never found by a lookup.
        self.tombstones: set[int] = set()
        new_hooks = getattr(getattr(kernel, "iommufd", None), "new_msi_hooks", None)
        self.msi: IommufdMsiHooks = new_hooks(self) if new_hooks else IommufdMsiHooks()

    def add(self, obj: IommufdObject) -> int:
        """iommufd_object_finalize(): the lowest free id from 1."""
        n = 1
        while n in self.objects or n in self.tombstones:
            n += 1
        if n > U32_MAX >> 1:
            raise fail(ENOSPC, "object table full")
        obj.id = n
        self.objects[n] = obj
        return n

    def get_object(self, oid: int, kind: str | None = None) -> IommufdObject:
        """iommufd_get_object(): ENOENT for no such id or another type; the caller
        holds a user until :meth:`put_object`."""
        obj = self.objects.get(oid)
        if obj is None or (kind is not None and obj.kind != kind):
            raise fail(ENOENT, f"no {kind or 'object'} {oid}")
        obj.users += 1
        return obj

    def put_object(self, obj: IommufdObject) -> None:
        obj.users -= 1

    def ioas(self, oid: int) -> Ioas:
        """The IOAS with id ``oid`` (ENOENT), without taking a user."""
        obj = self.objects.get(oid)
        if not isinstance(obj, Ioas):
            raise fail(ENOENT, f"no IOAS {oid}")
        return obj

    def remove(self, oid: int) -> None:
        """iommufd_object_remove(): ENOENT for an unknown id, EBUSY while in use."""
        obj = self.objects.get(oid)
        if obj is None:
            raise fail(ENOENT, f"no object {oid}")
        if obj.users:
            raise fail(EBUSY, f"object {oid} is in use")
        del self.objects[oid]
        obj.destroy()

    def release(self) -> None:
        """iommufd_fops_release(): destroy objects nobody uses, repeatedly, until none
        is left (dependents go before what they depend on)."""
        while self.objects:
            free = [o for o in self.objects.values() if not o.users]
            if not free:
                self.kernel.printk("WARNING: iommufd objects still in use at release")
                free = list(self.objects.values())
                for o in free:
                    o.users = 0
            for o in sorted(free, key=lambda o: -o.id):
                del self.objects[o.id]
                o.destroy()
        self.tombstones.clear()

    # -- devices: attach / replace / detach -------------------------------------------------

    def device(self, devid: int) -> IommufdDevice:
        """The bound device ``devid`` (ENOENT), without taking a user."""
        obj = self.objects.get(devid)
        if not isinstance(obj, IommufdDevice):
            raise fail(ENOENT, f"no device {devid}")
        return obj

    def _enforce_resv(self, idev: IommufdDevice, ioas: Ioas) -> None:
        """iopt_table_enforce_dev_resv_regions(): the device's reserved regions become
        reserved IOVA of ``ioas`` (EADDRINUSE over a mapping, nothing added); the
        SW_MSI window only when the MSI design wants it."""
        try:
            for r in self.kernel.iommu.get_resv_regions(idev.dev):
                if r.type == ResvType.DIRECT_RELAXABLE:
                    continue
                if r.type == ResvType.SW_MSI and not self.msi.reserve_sw_msi:
                    continue
                ioas.add_reserved(r.start, r.end, idev)
        except BaseException:
            ioas.remove_reserved(idev)
            raise

    def _do_attach(self, idev: IommufdDevice, hwpt: HwptPaging | HwptNested) -> None:
        """iommufd_device_do_attach / _do_replace: all or nothing."""
        old = idev.hwpt
        if old is hwpt:
            return
        new_ioas = _paging_of(hwpt).ioas
        old_ioas = None if old is None else _paging_of(old).ioas
        moved = new_ioas is not old_ioas
        if moved:
            self._enforce_resv(idev, new_ioas)
        try:
            self.msi.attach(idev, hwpt)
            self.kernel.iommu.replace_group_domain(idev.group, hwpt.domain)
        except BaseException:
            if moved:
                new_ioas.remove_reserved(idev)
            raise
        if moved and old_ioas is not None:
            old_ioas.remove_reserved(idev)
        idev.hwpt = hwpt
        hwpt.users += 1
        hwpt.devices.append(idev)
        if old is not None:
            self._put_hwpt(old, idev)
        self.msi.attached(idev, hwpt)

    def _put_hwpt(self, hwpt: HwptPaging | HwptNested, idev: IommufdDevice) -> None:
        """iommufd_hw_pagetable_put(): an automatic HWPT goes with its last user."""
        hwpt.devices.remove(idev)
        hwpt.users -= 1
        if isinstance(hwpt, HwptPaging) and hwpt.auto_domain and not hwpt.users and \
                self.objects.get(hwpt.id) is hwpt:
            self.remove(hwpt.id)

    def _attach_auto(self, idev: IommufdDevice, ioas: Ioas) -> int:
        """iommufd_device_auto_get_domain(): an automatic HWPT of ``ioas`` the device
        can use (EINVAL from one: try the next), else a new one."""
        for obj in sorted(self.objects.values(), key=lambda o: o.id):
            if isinstance(obj, HwptPaging) and obj.auto_domain and obj.ioas is ioas:
                try:
                    self._do_attach(idev, obj)
                except KernelError as e:
                    if e.errno == EINVAL:
                        continue
                    raise
                return obj.id
        hwpt = self.hwpt_paging_alloc(ioas, idev, 0, auto_domain=True)
        oid = self.add(hwpt)              # the id is taken at allocation, as xa_alloc does
        try:
            self._do_attach(idev, hwpt)
        except BaseException:
            del self.objects[oid]
            hwpt.destroy()
            raise
        return oid

    def device_attach(self, idev: IommufdDevice, pt_id: int) -> int:
        """iommufd_device_attach() / iommufd_device_replace(): attach (or move) the
        device to an IOAS (its automatic HWPT) or a HWPT; the HWPT id used."""
        obj = self.objects.get(pt_id)
        if obj is None:
            raise fail(ENOENT, f"no object {pt_id}")
        if isinstance(obj, Ioas):
            return self._attach_auto(idev, obj)
        if isinstance(obj, (HwptPaging, HwptNested)):
            self._do_attach(idev, obj)
            return obj.id
        raise fail(EINVAL, f"object {pt_id} is a {obj.kind}, not an IOAS or a HWPT")

    def device_detach(self, idev: IommufdDevice) -> None:
        """iommufd_device_detach(): back to the blocked domain, reserved IOVA released."""
        old = idev.hwpt
        if old is None:
            return
        self.kernel.iommu.replace_group_domain(idev.group, idev.group.ops.blocked_domain())
        _paging_of(old).ioas.remove_reserved(idev)
        idev.hwpt = None
        self.msi.detach(idev)
        self._put_hwpt(old, idev)

    # -- HW page tables ------------------------------------------------------------------

    def hwpt_paging_alloc(self, ioas: Ioas, idev: IommufdDevice, flags: int,
                          auto_domain: bool = False) -> HwptPaging:
        """iommufd_hwpt_paging_alloc(): a paging domain for ``idev``'s IOMMU, mapped
        with every area of ``ioas`` (not yet in the object table)."""
        domain = self.kernel.iommu.domain_alloc_paging(idev.dev, flags)
        nest_parent = bool(flags & uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
        hwpt = HwptPaging(self, ioas, domain, nest_parent, auto_domain)
        try:
            self.msi.hwpt_init(hwpt)
            ioas.attach_domain(domain)
        except BaseException:
            hwpt.destroy()
            raise
        return hwpt

    # -- ioctls ---------------------------------------------------------------------------

    def ioctl_destroy(self, cmd: uapi.IommuDestroy) -> None:
        self.remove(cmd.id)

    def ioctl_ioas_alloc(self, cmd: uapi.IommuIoasAlloc) -> None:
        if cmd.flags:
            raise fail(EOPNOTSUPP, "IOAS alloc flags")
        cmd.out_ioas_id = self.add(Ioas(self))

    def ioctl_ioas_map(self, cmd: uapi.IommuIoasMap) -> None:
        if cmd.flags & ~_MAP_FLAGS or getattr(cmd, "__reserved"):
            raise fail(EOPNOTSUPP, "map flags")
        if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
            raise fail(EOVERFLOW, "map range")
        ioas = self.ioas(cmd.ioas_id)
        cmd.iova = ioas.map_user(cmd.user_va, cmd.length, cmd.iova, cmd.flags)

    def ioctl_ioas_copy(self, cmd: uapi.IommuIoasCopy) -> None:
        if cmd.flags & ~_MAP_FLAGS:
            raise fail(EOPNOTSUPP, "copy flags")
        if cmd.length >= ULONG_MAX or cmd.src_iova >= ULONG_MAX or cmd.dst_iova >= ULONG_MAX:
            raise fail(EOVERFLOW, "copy range")
        pieces = self.ioas(cmd.src_ioas_id).get_pages(cmd.src_iova, cmd.length)
        if any(not pages.copyable for pages, _, _ in pieces):
            # An IOMMU_IOAS_MAP_MSI doorbell is granted to its IOAS alone (not upstream).
            raise fail(EPERM, "an MSI doorbell area cannot be copied")
        dst = self.ioas(cmd.dst_ioas_id)
        cmd.dst_iova = dst.map_pages(pieces, cmd.length, cmd.dst_iova, cmd.flags)

    def ioctl_ioas_unmap(self, cmd: uapi.IommuIoasUnmap) -> None:
        ioas = self.ioas(cmd.ioas_id)
        if cmd.iova == 0 and cmd.length == ULONG_MAX:
            cmd.length = ioas.unmap(0, ULONG_MAX, allow_empty=True)
            return
        if cmd.iova >= ULONG_MAX or cmd.length >= ULONG_MAX:
            raise fail(EOVERFLOW, "unmap range")
        if cmd.length == 0:
            raise fail(EINVAL, "zero length")
        last = cmd.iova + cmd.length - 1
        if last > ULONG_MAX:
            raise fail(EOVERFLOW, "unmap range wraps")
        cmd.length = ioas.unmap(cmd.iova, last)

    def ioctl_ioas_iova_ranges(self, cmd: uapi.IommuIoasIovaRanges) -> None:
        if getattr(cmd, "__reserved"):
            raise fail(EOPNOTSUPP, "reserved member set")
        ioas = self.ioas(cmd.ioas_id)
        ranges = ioas.valid_ranges()
        room = cmd.num_iovas
        data = b"".join(uapi.IommuIovaRange(start=s, last=e).pack() for s, e in ranges[:room])
        if data:
            try:
                self.kernel.user_write(cmd.allowed_iovas, data)
            except Exception:
                raise fail(EFAULT, "allowed_iovas not writable") from None
        cmd.num_iovas = len(ranges)
        cmd.out_iova_alignment = ioas.iova_alignment
        if len(ranges) > room:
            raise fail(EMSGSIZE, f"{len(ranges)} ranges, room for {room}")

    def ioctl_ioas_allow_iovas(self, cmd: uapi.IommuIoasAllowIovas) -> None:
        if getattr(cmd, "__reserved"):
            raise fail(EOPNOTSUPP, "reserved member set")
        ioas = self.ioas(cmd.ioas_id)
        size = uapi.IommuIovaRange.sizeof
        try:
            raw = self.kernel.user_read(cmd.allowed_iovas, size * cmd.num_iovas)
        except Exception:
            raise fail(EFAULT, "allowed_iovas not readable") from None
        new: list[tuple[int, int]] = []
        for i in range(cmd.num_iovas):
            r = uapi.IommuIovaRange.unpack(raw[i * size:(i + 1) * size])
            if r.start > r.last or any(_overlaps(s, e, r.start, r.last) for s, e in new):
                raise fail(EINVAL, "allowed ranges reversed or overlapping")
            new.append((r.start, r.last))
        if any(ioas._resv_hit(s, e) for s, e in new):
            raise fail(EADDRINUSE, "an allowed range overlaps a reserved one")
        ioas.allowed = sorted(new)

    def _user_data(self, uptr: int, length: int) -> bytes:
        """The driver data of a HWPT_ALLOC (copy_from_user: EFAULT)."""
        if not length:
            return b""
        try:
            return bytes(self.kernel.user_read(uptr, length))
        except KernelError:
            raise fail(EFAULT, "data_uptr not readable") from None

    def ioctl_hwpt_alloc(self, cmd: uapi.IommuHwptAlloc) -> None:
        """iommufd_hwpt_alloc(): a paging HWPT on an IOAS, a nested one on a
        nest-parent paging HWPT (IOMMU_HWPT_DATA_ARM_SMMUV3: the guest's vSTE), or
        one made by a vIOMMU; ``out_hwpt_id``."""
        if getattr(cmd, "__reserved"):
            raise fail(EOPNOTSUPP, "reserved member set")
        if (cmd.data_type == uapi.IOMMU_HWPT_DATA_NONE) != (cmd.data_len == 0):
            raise fail(EINVAL, "data_type and data_len disagree")
        idev = self.device(cmd.dev_id)
        pt = self.objects.get(cmd.pt_id)
        if pt is None:
            raise fail(EINVAL, f"no object {cmd.pt_id}")
        if cmd.flags & uapi.IOMMU_HWPT_FAULT_ID_VALID:
            raise fail(EOPNOTSUPP, "no fault queues in this model")
        hwpt: HwptPaging | HwptNested
        if isinstance(pt, Ioas):
            if cmd.data_len:
                raise fail(EOPNOTSUPP, "paging HWPT with driver data")
            hwpt = self.hwpt_paging_alloc(pt, idev, cmd.flags)
        elif isinstance(pt, HwptPaging):
            hwpt = self.hwpt_nested_alloc(pt, idev, cmd.flags, cmd.data_type,
                                          self._user_data(cmd.data_uptr, cmd.data_len))
        elif pt.kind == "viommu":
            hwpt = pt.alloc_hwpt_nested(self, cmd.flags, cmd.data_type,      # type: ignore
                                        self._user_data(cmd.data_uptr, cmd.data_len))
            if self.objects.get(hwpt.id) is hwpt:
                cmd.out_hwpt_id = hwpt.id
                return
        else:
            raise fail(EINVAL, f"object {cmd.pt_id} is a {pt.kind}")
        cmd.out_hwpt_id = self.add(hwpt)

    def hwpt_nested_alloc(self, parent: HwptPaging, idev: IommufdDevice, flags: int,
                          data_type: int, data: bytes,
                          viommu: Viommu | None = None) -> HwptNested:
        """iommufd_hwpt_nested_alloc(): EOPNOTSUPP for flags or no data, EINVAL for a
        parent that is automatic or not a nest parent; the driver checks the data
        (arm-smmu-v3: the vSTE, EINVAL when invalid).  Not yet in the object table."""
        if flags or not data:                     # (no PASID support in the model)
            raise fail(EOPNOTSUPP, "nested HWPT flags / no data")
        if parent.auto_domain or not parent.nest_parent:
            raise fail(EINVAL, "the parent is not a nest parent")
        ste = copy_struct_from_user(uapi.IommuHwptArmSmmuv3, data_type,
                                    uapi.IOMMU_HWPT_DATA_ARM_SMMUV3, data, "ste")
        domain = self.kernel.iommu.domain_alloc_nested(idev.dev, parent.domain, list(ste.ste))
        hwpt = HwptNested(self, parent, domain, viommu)
        try:
            self.msi.hwpt_init(hwpt)
        except BaseException:
            hwpt.destroy()
            raise
        return hwpt

    def ioctl_get_hw_info(self, cmd: uapi.IommuHwInfo) -> None:
        """iommufd_get_hw_info(): the driver's info structure copied to ``data_uptr``
        (truncated to ``data_len``, the rest of the buffer zeroed), ``data_len`` set
        to the kernel's length, ``out_data_type`` and ``out_capabilities``."""
        if cmd.flags & ~uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE or any(getattr(cmd, "__reserved")):
            raise fail(EOPNOTSUPP, "hw_info flags / reserved member")
        want = cmd.in_data_type if cmd.flags & uapi.IOMMU_HW_INFO_FLAG_INPUT_TYPE \
            else uapi.IOMMU_HW_INFO_TYPE_DEFAULT
        idev = self.device(cmd.dev_id)
        ops = self.kernel.iommu.ops_for(idev.dev)
        hw_info = getattr(ops, "hw_info", None)
        if hw_info is not None:
            data, out_type = hw_info(idev.dev, want)
        else:
            data, out_type = b"", uapi.IOMMU_HW_INFO_TYPE_NONE
        # copy_to_user() of the info, then clear_user() of the rest of the buffer a
        # page at a time: no allocation in proportion to data_len, EFAULT at the first
        # page that cannot be written.
        head = data[:cmd.data_len]
        try:
            if head:
                self.kernel.user_write(cmd.data_uptr, head)
            va, end = cmd.data_uptr + len(head), cmd.data_uptr + cmd.data_len
            zeros = bytes(PAGE_SIZE)
            while va < end:
                n = min(end - va, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
                self.kernel.user_write(va, zeros[:n])
                va += n
        except KernelError:
            raise fail(EFAULT, "data_uptr not writable") from None
        cmd.data_len = len(data)
        cmd.out_data_type = out_type
        cmd.out_capabilities = 0                 # no dirty tracking, no PASID in the model
        cmd.out_max_pasid_log2 = 0

    OPS: dict[int, tuple[str | Callable[[IommufdCtx, Any], None], str]] = {
        uapi.IOMMU_DESTROY: ("ioctl_destroy", "id"),
        uapi.IOMMU_GET_HW_INFO: ("ioctl_get_hw_info", "__reserved"),
        uapi.IOMMU_HWPT_ALLOC: ("ioctl_hwpt_alloc", "__reserved"),
        uapi.IOMMU_IOAS_ALLOC: ("ioctl_ioas_alloc", "out_ioas_id"),
        uapi.IOMMU_IOAS_ALLOW_IOVAS: ("ioctl_ioas_allow_iovas", "allowed_iovas"),
        uapi.IOMMU_IOAS_COPY: ("ioctl_ioas_copy", "src_iova"),
        uapi.IOMMU_IOAS_IOVA_RANGES: ("ioctl_ioas_iova_ranges", "out_iova_alignment"),
        uapi.IOMMU_IOAS_MAP: ("ioctl_ioas_map", "iova"),
        uapi.IOMMU_IOAS_UNMAP: ("ioctl_ioas_unmap", "length"),
    }

    @classmethod
    def register_op(cls, ioctl: int, last_member: str,
                    func: Callable[[IommufdCtx, _S], None]) -> None:
        """Add an ioctl from another module: ``func(ctx, cmd)`` handles it, with the
        same size check (``last_member``) and copy-back as the built-in ops."""
        cls.OPS[ioctl] = (func, last_member)

    def ioctl(self, cmd: int, arg: IoctlArg) -> int:
        """iommufd_fops_ioctl(): ENOTTY for an op the model does not have, EINVAL for
        a size below the op's minimum; the argument is changed only on success."""
        if not isinstance(cmd, int) or cmd not in self.OPS or \
                not 0x80 <= _IOC_NR(cmd) <= 0xFF:
            raise fail(ENOTTY, f"iommufd ioctl {cmd!r}")
        name, last_member = self.OPS[cmd]
        st = uapi.IOCTLS[cmd]
        if not isinstance(arg, st):
            raise fail(EFAULT, f"argument is not a {st.__name__}")
        if arg.size < st.offsetofend(last_member):
            raise fail(EINVAL, f"size {arg.size} below the minimum")
        work = arg.copy()
        try:
            if isinstance(name, str):
                getattr(self, name)(work)
            else:
                name(self, work)
        except KernelError as e:
            if e.errno == EMSGSIZE or getattr(e, "respond", False):   # responds, then fails
                _copy_back(arg, work)
            raise
        _copy_back(arg, work)
        return 0


def copy_struct_from_user(cls: type[_S], data_type: int, want_type: int, data: bytes,
                          min_last: str) -> _S:
    """iommu_copy_struct_from_user(): EINVAL for another data type or fewer bytes than
    up to ``min_last``; a longer buffer must be zero beyond the structure (E2BIG);
    a shorter one is zero-extended."""
    if data_type != want_type:
        raise fail(EINVAL, f"data type {data_type}, expected {want_type}")
    if len(data) < cls.offsetofend(min_last):
        raise fail(EINVAL, f"{len(data)} bytes of driver data")
    if any(data[cls.sizeof:]):
        raise fail(_errno.E2BIG, "non-zero bytes beyond the structure")
    return cls.unpack(data[:cls.sizeof] + bytes(max(0, cls.sizeof - len(data))))


def _copy_back(dst: Struct, src: Struct) -> None:
    """iommufd_ucmd_respond(): the kernel's copy of the structure back to the user's."""
    for name in src.fields():
        if name == "size":
            continue
        setattr(dst, name, getattr(src, name))


class IommufdFops(FileOperations):
    """The file operations of /dev/iommu."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def open(self, file: File) -> None:
        file.private_data = IommufdCtx(self.kernel)

    def release(self, file: File) -> None:
        file.private_data.release()

    def unlocked_ioctl(self, file: File, cmd: int, arg: IoctlArg) -> int:
        ctx: IommufdCtx = file.private_data
        return ctx.ioctl(cmd, arg)


class Iommufd:
    """The iommufd module (``k.iommufd``): its parameters and what VFIO calls."""

    msi_design: str         # set by boot (the machine's); read with a default until then

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.fops = IommufdFops(kernel)
        #: module parameter allow_unsafe_interrupts: bind devices whose MSIs are not isolated
        self.allow_unsafe_interrupts = False

    def new_msi_hooks(self, ctx: IommufdCtx) -> IommufdMsiHooks:
        """The MSI design of a new context: ``self.msi_design`` (pymsi.kernel.iommufd_msi)."""
        from .iommufd_msi import new_hooks

        return new_hooks(ctx, getattr(self, "msi_design", "per-vector"))

    def ctx_from_file(self, file: File) -> IommufdCtx:
        """iommufd_ctx_from_file(): EBADFD for a file that is not /dev/iommu."""
        if getattr(file, "f_op", None) is not self.fops:
            raise fail(EBADFD, "not an iommufd file")
        ctx: IommufdCtx = file.private_data
        return ctx

    def msi_isolated(self, group: IommuGroup) -> bool:
        """iommu_group_has_isolated_msi(): every device's MSI domain hierarchy has an
        IRQ_DOMAIN_FLAG_ISOLATED_MSI level (the GICv3 ITS; x86 interrupt remapping)."""
        msi = getattr(self.kernel, "msi", None)
        d = getattr(msi, "domain", None)
        while d is not None:
            if getattr(d, "isolated_msi", False):
                return True
            d = d.parent
        return False

    def bind_device(self, file: File, pdev: IommuDevice) -> int:
        """iommufd_device_bind(): ENODEV outside an IOMMU group, EPERM for MSIs that
        are not isolated (unless allow_unsafe_interrupts), EPERM while another owner
        has the group's DMA; the new device object's id."""
        ctx = self.ctx_from_file(file)
        k = self.kernel
        group = k.iommu.group_for(pdev)
        if group is None:
            raise fail(ENODEV, f"{pdev} has no IOMMU group")
        if not self.msi_isolated(group):
            if not self.allow_unsafe_interrupts:
                raise fail(EPERM, "MSIs of the device cannot be isolated")
            k.printk(f"iommufd: {pdev}: MSI interrupts are not secure, they cannot be "
                     "isolated by the platform")
        if group.owner is not None and group.owner is not ctx:
            raise fail(EPERM, "another owner has the group's DMA")
        k.iommu.claim_dma_owner(group, ctx)
        try:
            idev = IommufdDevice(ctx, pdev, group)
            idev.users += 1                       # the caller's reference (VFIO)
            return ctx.add(idev)
        except BaseException:
            k.iommu.release_dma_owner(group)
            raise

    def device(self, file: File, devid: int) -> IommufdDevice:
        """The device object ``devid`` of the context of ``file``."""
        return self.ctx_from_file(file).device(devid)

    def unbind_device(self, file: File, devid: int) -> None:
        """iommufd_device_unbind(): detach, give DMA ownership back, destroy the object."""
        ctx = self.ctx_from_file(file)
        idev = ctx.device(devid)
        idev.users -= 1
        ctx.remove(devid)


def iommufd_init(kernel: Kernel) -> Iommufd:
    """Register /dev/iommu (the misc device iommufd_init() adds) and ``k.iommufd``."""
    from . import iommufd_viommu

    mod = kernel.iommufd = Iommufd(kernel)
    kernel.register_chrdev("/dev/iommu", mod.fops)
    iommufd_viommu.register(IommufdCtx)
    return mod
