"""/dev/iommu: the object table, the ioctl dispatcher and the IOAS.

Expected values come from Linux's iommufd (drivers/iommu/iommufd/main.c,
ioas.c, io_pagetable.c and include/uapi/linux/iommufd.h): object ids
allocated lowest-free from 1; ENOTTY for an unknown ioctl, EINVAL for a size
below the op's minimum; MAP: EOPNOTSUPP for unknown flags or a set
``__reserved``, EOVERFLOW for U64_MAX, EINVAL for a zero or unaligned length,
EINVAL for a fixed IOVA on a reserved range, EEXIST on an existing area, a
kernel-chosen IOVA never 0 and aligned to min(roundup_pow_of_two(length),
alignment of user_va); UNMAP: ENOENT for a split area or nothing mapped,
``length`` out = bytes unmapped, iova 0 + length U64_MAX unmaps all (and
succeeds on an empty IOAS); COPY shares the pinned pages, ENOENT for a hole,
EPERM for a writeable copy of read-only pages; IOVA_RANGES: the holes of the
reserved ranges, EMSGSIZE with ``num_iovas`` set when the array is too small;
ALLOW_IOVAS: EINVAL for reversed / overlapping ranges, EADDRINUSE for a range
overlapping a reserved one; reserving over an area or an allowed range is
EADDRINUSE.  The model pins at MAP time, so an unmapped user VA is EFAULT.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pymsi.kernel.base import KernelError
from pymsi.kernel.files import PROT_READ
from pymsi.machine import ArmVirt
from pymsi.uapi import iommufd as u
from pymsi.uapi._ioctl import _IO

PAGE = 4096
U64_MAX = 2**64 - 1
RW = u.IOMMU_IOAS_MAP_READABLE | u.IOMMU_IOAS_MAP_WRITEABLE
FIXED = u.IOMMU_IOAS_MAP_FIXED_IOVA
ENOENT, EBUSY, EINVAL, ENOTTY, EEXIST, EFAULT, EPERM, ENOSPC = (
    errno.ENOENT, errno.EBUSY, errno.EINVAL, errno.ENOTTY, errno.EEXIST, errno.EFAULT,
    errno.EPERM, errno.ENOSPC)
EOPNOTSUPP, EOVERFLOW, EMSGSIZE, EADDRINUSE = (
    errno.EOPNOTSUPP, errno.EOVERFLOW, errno.EMSGSIZE, errno.EADDRINUSE)


def boot():
    m = ArmVirt(devices=[{"msix": 4}])
    return m.boot()


@pytest.fixture
def k():
    return boot()


@pytest.fixture
def fd(k):
    return k.open("/dev/iommu")


def err(f, cmd, arg):
    """The errno of the ioctl, None on success."""
    try:
        f.ioctl(cmd, arg)
    except KernelError as e:
        return e.errno
    return None


def alloc(f):
    a = u.IommuIoasAlloc()
    f.ioctl(u.IOMMU_IOAS_ALLOC, a)
    return a.out_ioas_id


def map_(f, ioas, va, length, iova=0, flags=RW):
    m = u.IommuIoasMap(ioas_id=ioas, user_va=va, length=length, iova=iova, flags=flags)
    f.ioctl(u.IOMMU_IOAS_MAP, m)
    return m.iova


def unmap(f, ioas, iova, length):
    m = u.IommuIoasUnmap(ioas_id=ioas, iova=iova, length=length)
    f.ioctl(u.IOMMU_IOAS_UNMAP, m)
    return m.length


def user_pa(k, va):
    """The host page behind user VA ``va`` (from the process's page tables)."""
    for vma in k.user_mm.vmas:
        if vma.start <= va < vma.end:
            return vma.pages[va & ~(PAGE - 1)].pa
    raise AssertionError(f"{va:#x} not mapped")


def ranges(f, ioas, room=8):
    k = f.kernel
    buf = k.mmap(PAGE)
    r = u.IommuIoasIovaRanges(ioas_id=ioas, num_iovas=room, allowed_iovas=buf)
    f.ioctl(u.IOMMU_IOAS_IOVA_RANGES, r)
    sz = u.IommuIovaRange.sizeof
    raw = k.user_read(buf, sz * r.num_iovas)
    out = [u.IommuIovaRange.unpack(raw[i * sz:(i + 1) * sz]) for i in range(r.num_iovas)]
    return [(x.start, x.last) for x in out], r


def allow(f, ioas, rs):
    k = f.kernel
    buf = k.mmap(PAGE)
    k.user_write(buf, b"".join(u.IommuIovaRange(start=s, last=e).pack() for s, e in rs))
    a = u.IommuIoasAllowIovas(ioas_id=ioas, num_iovas=len(rs), allowed_iovas=buf)
    f.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, a)


def state(k, f):
    """Everything a failed call must leave alone: areas, reservations, pins."""
    ctx = f.private_data
    out = {}
    for oid, o in ctx.objects.items():
        out[oid] = (type(o).__name__, o.users,
                    tuple((a.iova, a.length, tuple(a.pas()), a.prot) for a in o.areas),
                    tuple(o.allowed), tuple((r.start, r.last) for r in o.reserved))
    return out, {pa: p.pins for pa, p in k.user_mm.pinned.items()}


def check_fails(k, f, cmd, arg, want):
    before, raw = state(k, f), arg.pack()
    assert err(f, cmd, arg) == want
    assert arg.pack() == raw
    assert state(k, f) == before


# -- objects and the dispatcher ----------------------------------------------------------


def test_ids_from_one_lowest_free_and_destroy(k, fd):
    assert [alloc(fd) for _ in range(3)] == [1, 2, 3]
    fd.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=2))
    assert alloc(fd) == 2
    assert alloc(fd) == 4
    check_fails(k, fd, u.IOMMU_DESTROY, u.IommuDestroy(id=9), ENOENT)
    check_fails(k, fd, u.IOMMU_DESTROY, u.IommuDestroy(id=0), ENOENT)


def test_each_open_is_its_own_context(k):
    a, b = k.open("/dev/iommu"), k.open("/dev/iommu")
    assert alloc(a) == 1 and alloc(b) == 1
    check_fails(k, a, u.IOMMU_DESTROY, u.IommuDestroy(id=2), ENOENT)


def test_destroy_in_use_is_ebusy(k, fd):
    ioas = alloc(fd)
    ctx = fd.private_data
    obj = ctx.get_object(ioas, "ioas")
    check_fails(k, fd, u.IOMMU_DESTROY, u.IommuDestroy(id=ioas), EBUSY)
    ctx.put_object(obj)
    fd.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=ioas))
    check_fails(k, fd, u.IOMMU_DESTROY, u.IommuDestroy(id=ioas), ENOENT)


def test_unknown_ioctl_is_enotty(k, fd):
    check_fails(k, fd, _IO(u.IOMMUFD_TYPE, 0x7F), u.IommuDestroy(id=1), ENOTTY)
    check_fails(k, fd, _IO(u.IOMMUFD_TYPE, 0xF0), u.IommuDestroy(id=1), ENOTTY)
    check_fails(k, fd, _IO("V", 0x80), u.IommuDestroy(id=1), ENOTTY)


@pytest.mark.parametrize("cmd,cls,last", [
    (u.IOMMU_DESTROY, u.IommuDestroy, "id"),
    (u.IOMMU_IOAS_ALLOC, u.IommuIoasAlloc, "out_ioas_id"),
    (u.IOMMU_IOAS_MAP, u.IommuIoasMap, "iova"),
    (u.IOMMU_IOAS_UNMAP, u.IommuIoasUnmap, "length"),
    (u.IOMMU_IOAS_COPY, u.IommuIoasCopy, "src_iova"),
    (u.IOMMU_IOAS_IOVA_RANGES, u.IommuIoasIovaRanges, "out_iova_alignment"),
    (u.IOMMU_IOAS_ALLOW_IOVAS, u.IommuIoasAllowIovas, "allowed_iovas"),
])
def test_size_below_minimum_is_einval(k, fd, cmd, cls, last):
    alloc(fd)
    arg = cls(size=cls.offsetofend(last) - 1)
    check_fails(k, fd, cmd, arg, EINVAL)
    arg = cls(size=0)
    check_fails(k, fd, cmd, arg, EINVAL)


def test_size_larger_than_struct_is_accepted(k, fd):
    a = u.IommuIoasAlloc(size=u.IommuIoasAlloc.sizeof + 8)
    fd.ioctl(u.IOMMU_IOAS_ALLOC, a)
    assert a.out_ioas_id == 1


def test_alloc_flags_are_eopnotsupp(k, fd):
    check_fails(k, fd, u.IOMMU_IOAS_ALLOC, u.IommuIoasAlloc(flags=1), EOPNOTSUPP)


# -- MAP ---------------------------------------------------------------------------------


def test_map_reaches_the_user_pages_through_a_domain(k, fd):
    ioas = alloc(fd)
    dom = k.iommu.domain_alloc_paging(k.pci.devices[0])
    fd.private_data.ioas(ioas).attach_domain(dom)
    va = k.mmap(3 * PAGE)
    k.user_write(va, b"A" * PAGE + b"B" * PAGE + b"C" * PAGE)
    iova = map_(fd, ioas, va, 3 * PAGE, iova=0x100000, flags=FIXED | RW)
    assert iova == 0x100000
    for i, c in enumerate(b"ABC"):
        pa = k.iommu.iova_to_phys(dom, iova + i * PAGE + 5)
        assert pa == user_pa(k, va + i * PAGE) + 5
        assert bytes(k.ram.read(pa, 4)) == bytes([c]) * 4
    k.user_write(va + PAGE + 8, b"new!")            # the same pages, not a copy
    assert bytes(k.ram.read(k.iommu.iova_to_phys(dom, iova + PAGE + 8), 4)) == b"new!"
    assert unmap(fd, ioas, iova, 3 * PAGE) == 3 * PAGE
    assert k.iommu.iova_to_phys(dom, iova) is None


def test_attach_domain_maps_existing_areas(k, fd):
    ioas = alloc(fd)
    va = k.mmap(PAGE)
    iova = map_(fd, ioas, va, PAGE)
    dom = k.iommu.domain_alloc_paging(k.pci.devices[0])
    obj = fd.private_data.ioas(ioas)
    obj.attach_domain(dom)
    assert k.iommu.iova_to_phys(dom, iova) == user_pa(k, va)
    obj.detach_domain(dom)
    assert k.iommu.iova_to_phys(dom, iova) is None


def test_map_pins_and_munmap_keeps_pinned_page(k, fd):
    ioas = alloc(fd)
    va = k.mmap(PAGE)
    k.user_write(va, b"keep")
    pa = None
    map_(fd, ioas, va, PAGE, iova=0x10000, flags=FIXED | RW)
    pa = user_pa(k, va)
    assert k.user_mm.pinned[pa].pins == 1
    k.munmap(va, PAGE)
    assert bytes(k.ram.read(pa, 4)) == b"keep"      # pinned: not freed
    unmap(fd, ioas, 0x10000, PAGE)
    assert pa not in k.user_mm.pinned
    assert pa in k.mm._free[PAGE]


def test_auto_iova_never_zero_lowest_hole_and_aligned(k, fd):
    ioas = alloc(fd)
    va = k.mmap(16 * PAGE)
    assert map_(fd, ioas, va, PAGE) == PAGE                 # 0 is never returned
    assert map_(fd, ioas, va + PAGE, PAGE) == 2 * PAGE
    # 2 pages: alignment min(8K, alignment of user_va)
    uva = va + 2 * PAGE
    align = min(2 * PAGE, uva & -uva)
    want = (3 * PAGE + align - 1) // align * align
    assert map_(fd, ioas, uva, 2 * PAGE) == want


def test_auto_iova_skips_reserved_and_uses_allowed(k, fd):
    ioas = alloc(fd)
    obj = fd.private_data.ioas(ioas)
    obj.add_reserved(PAGE, 4 * PAGE - 1, owner="dev")
    va = k.mmap(4 * PAGE)
    assert map_(fd, ioas, va, PAGE) == 4 * PAGE
    allow(fd, ioas, [(0x200000, 0x201FFF)])
    assert map_(fd, ioas, va + PAGE, PAGE) == 0x200000
    assert map_(fd, ioas, va + 2 * PAGE, PAGE) == 0x201000
    m = u.IommuIoasMap(ioas_id=ioas, user_va=va + 3 * PAGE, length=PAGE, flags=RW)
    check_fails(k, fd, u.IOMMU_IOAS_MAP, m, ENOSPC)
    # a fixed IOVA is not limited by the allowed list
    assert map_(fd, ioas, va + 3 * PAGE, PAGE, iova=0x900000, flags=FIXED | RW) == 0x900000


def test_map_errors_change_nothing(k, fd):
    ioas = alloc(fd)
    va = k.mmap(4 * PAGE)
    map_(fd, ioas, va, PAGE, iova=0x10000, flags=FIXED | RW)
    fd.private_data.ioas(ioas).add_reserved(0x40000, 0x40FFF, owner="msi")
    ro = k.mmap(PAGE, PROT_READ)
    bad = k.mmap(PAGE)
    k.munmap(bad, PAGE)

    def m(**kw):
        base = dict(ioas_id=ioas, user_va=va + PAGE, length=PAGE, iova=0x20000,
                    flags=FIXED | RW)
        base.update(kw)
        return u.IommuIoasMap(**base)

    cases = [
        (m(flags=RW | 8), EOPNOTSUPP),
        (m(__reserved=1), EOPNOTSUPP),
        (m(iova=U64_MAX), EOVERFLOW),
        (m(length=U64_MAX), EOVERFLOW),
        (m(ioas_id=77), ENOENT),
        (m(length=0), EINVAL),
        (m(length=PAGE + 1), EINVAL),
        (m(user_va=va + PAGE + 8), EINVAL),
        (m(iova=0x20008), EINVAL),
        (m(iova=0x3F000, length=2 * PAGE), EINVAL),        # touches the reserved page
        (m(iova=0xF000, length=2 * PAGE), EEXIST),          # overlaps the area
        (m(iova=0x10000), EEXIST),
        (m(iova=U64_MAX - PAGE + 1 - PAGE, length=4 * PAGE), EOVERFLOW),
        (m(user_va=bad), EFAULT),
        (m(user_va=va + 3 * PAGE, length=2 * PAGE), EFAULT),  # runs off the mapping
        (m(user_va=ro), EFAULT),                             # writeable pin of read-only
    ]
    for arg, want in cases:
        check_fails(k, fd, u.IOMMU_IOAS_MAP, arg, want)
    # read-only user memory maps read-only
    assert map_(fd, ioas, ro, PAGE, flags=u.IOMMU_IOAS_MAP_READABLE) == PAGE


def test_destroyed_ioas_is_enoent(k, fd):
    ioas = alloc(fd)
    fd.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=ioas))
    va = k.mmap(PAGE)
    check_fails(k, fd, u.IOMMU_IOAS_MAP,
                u.IommuIoasMap(ioas_id=ioas, user_va=va, length=PAGE, flags=RW), ENOENT)


def test_destroy_ioas_unpins(k, fd):
    ioas = alloc(fd)
    va = k.mmap(2 * PAGE)
    map_(fd, ioas, va, 2 * PAGE)
    assert len(k.user_mm.pinned) == 2
    fd.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=ioas))
    assert k.user_mm.pinned == {}


# -- UNMAP -------------------------------------------------------------------------------


def test_unmap_whole_areas_and_errors(k, fd):
    ioas = alloc(fd)
    va = k.mmap(4 * PAGE)
    map_(fd, ioas, va, 2 * PAGE, iova=0x10000, flags=FIXED | RW)
    map_(fd, ioas, va + 2 * PAGE, PAGE, iova=0x12000, flags=FIXED | RW)
    map_(fd, ioas, va + 3 * PAGE, PAGE, iova=0x20000, flags=FIXED | RW)

    def um(iova, length, i=ioas):
        return u.IommuIoasUnmap(ioas_id=i, iova=iova, length=length)

    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(0x10000, PAGE), ENOENT)         # splits
    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(0x11000, 2 * PAGE), ENOENT)     # splits
    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(0x30000, PAGE), ENOENT)         # nothing
    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(0x10000, 0), EINVAL)
    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(U64_MAX, 1), EOVERFLOW)
    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(PAGE, U64_MAX - 1), EOVERFLOW)   # wraps
    check_fails(k, fd, u.IOMMU_IOAS_UNMAP, um(0x10000, PAGE, 99), ENOENT)
    assert unmap(fd, ioas, 0xF000, 0x5000) == 3 * PAGE     # a superset of two areas
    assert len(k.user_mm.pinned) == 1
    assert unmap(fd, ioas, 0, U64_MAX) == PAGE
    assert unmap(fd, ioas, 0, U64_MAX) == 0                # unmap all of nothing: fine
    assert k.user_mm.pinned == {}


# -- COPY --------------------------------------------------------------------------------


def test_copy_shares_pages(k, fd):
    a, b = alloc(fd), alloc(fd)
    va = k.mmap(4 * PAGE)
    map_(fd, a, va, 4 * PAGE, iova=0x40000, flags=FIXED | RW)
    pins = dict((pa, p.pins) for pa, p in k.user_mm.pinned.items())
    c = u.IommuIoasCopy(dst_ioas_id=b, src_ioas_id=a, length=2 * PAGE, src_iova=0x41000,
                        dst_iova=0x80000, flags=FIXED | RW)
    fd.ioctl(u.IOMMU_IOAS_COPY, c)
    assert c.dst_iova == 0x80000
    assert dict((pa, p.pins) for pa, p in k.user_mm.pinned.items()) == pins
    ob = fd.private_data.ioas(b)
    assert ob.iova_to_phys(0x80000) == user_pa(k, va + PAGE)
    assert ob.iova_to_phys(0x81000) == user_pa(k, va + 2 * PAGE)
    # the source going keeps the shared pages pinned
    unmap(fd, a, 0, U64_MAX)
    assert set(k.user_mm.pinned) == {user_pa(k, va + PAGE), user_pa(k, va + 2 * PAGE)}
    unmap(fd, b, 0, U64_MAX)
    assert k.user_mm.pinned == {}


def test_copy_across_two_areas_and_auto_iova(k, fd):
    a, b = alloc(fd), alloc(fd)
    va = k.mmap(2 * PAGE)
    map_(fd, a, va, PAGE, iova=0x40000, flags=FIXED | RW)
    map_(fd, a, va + PAGE, PAGE, iova=0x41000, flags=FIXED | RW)
    c = u.IommuIoasCopy(dst_ioas_id=b, src_ioas_id=a, length=2 * PAGE, src_iova=0x40000,
                        flags=RW)
    fd.ioctl(u.IOMMU_IOAS_COPY, c)
    assert c.dst_iova != 0
    ob = fd.private_data.ioas(b)
    assert ob.iova_to_phys(c.dst_iova + PAGE) == user_pa(k, va + PAGE)


def test_copy_errors(k, fd):
    a, b = alloc(fd), alloc(fd)
    va = k.mmap(2 * PAGE)
    ro = k.mmap(PAGE, PROT_READ)
    map_(fd, a, va, 2 * PAGE, iova=0x40000, flags=FIXED | RW)
    map_(fd, a, ro, PAGE, iova=0x50000, flags=FIXED | u.IOMMU_IOAS_MAP_READABLE)
    map_(fd, b, va, PAGE, iova=0x80000, flags=FIXED | RW)

    def c(**kw):
        base = dict(dst_ioas_id=b, src_ioas_id=a, length=PAGE, src_iova=0x40000,
                    dst_iova=0x90000, flags=FIXED | RW)
        base.update(kw)
        return u.IommuIoasCopy(**base)

    for arg, want in [
        (c(flags=RW | 16), EOPNOTSUPP),
        (c(length=U64_MAX), EOVERFLOW),
        (c(src_ioas_id=9), ENOENT),
        (c(dst_ioas_id=9), ENOENT),
        (c(length=0), EINVAL),
        (c(src_iova=0x41000, length=2 * PAGE), ENOENT),      # runs past the area
        (c(src_iova=0x60000), ENOENT),                       # nothing there
        (c(dst_iova=0x80000), EEXIST),
        (c(src_iova=0x50000), EPERM),                        # writeable copy of read-only
    ]:
        check_fails(k, fd, u.IOMMU_IOAS_COPY, arg, want)
    fd.ioctl(u.IOMMU_IOAS_COPY, c(src_iova=0x50000, flags=FIXED | u.IOMMU_IOAS_MAP_READABLE))


# -- IOVA_RANGES, ALLOW_IOVAS, reserved ---------------------------------------------------


def test_iova_ranges_are_holes_of_reserved(k, fd):
    ioas = alloc(fd)
    got, r = ranges(fd, ioas)
    assert got == [(0, U64_MAX)] and r.out_iova_alignment == PAGE
    obj = fd.private_data.ioas(ioas)
    obj.add_reserved(0x8000000, 0x80FFFFF, owner="msi")
    obj.add_reserved(0, 0xFFF, owner="dev")
    got, _ = ranges(fd, ioas)
    assert got == [(0x1000, 0x7FFFFFF), (0x8100000, U64_MAX)]
    obj.remove_reserved("dev")
    assert ranges(fd, ioas)[0] == [(0, 0x7FFFFFF), (0x8100000, U64_MAX)]


def test_iova_ranges_too_small_is_emsgsize_with_count(k, fd):
    ioas = alloc(fd)
    fd.private_data.ioas(ioas).add_reserved(0x1000, 0x1FFF, owner="x")
    buf = k.mmap(PAGE)
    k.user_write(buf, b"\xee" * 32)
    r = u.IommuIoasIovaRanges(ioas_id=ioas, num_iovas=1, allowed_iovas=buf)
    assert err(fd, u.IOMMU_IOAS_IOVA_RANGES, r) == EMSGSIZE
    assert r.num_iovas == 2 and r.out_iova_alignment == PAGE
    first = u.IommuIovaRange.unpack(k.user_read(buf, 16))
    assert (first.start, first.last) == (0, 0xFFF)
    assert k.user_read(buf + 16, 16) == b"\xee" * 16              # no room: not written
    check_fails(k, fd, u.IOMMU_IOAS_IOVA_RANGES,
                u.IommuIoasIovaRanges(ioas_id=ioas, num_iovas=2, allowed_iovas=buf,
                                      __reserved=1), EOPNOTSUPP)
    check_fails(k, fd, u.IOMMU_IOAS_IOVA_RANGES,
                u.IommuIoasIovaRanges(ioas_id=5, num_iovas=2, allowed_iovas=buf), ENOENT)


def test_allow_iovas_errors(k, fd):
    ioas = alloc(fd)
    obj = fd.private_data.ioas(ioas)
    obj.add_reserved(0x8000000, 0x80FFFFF, owner="msi")
    buf = k.mmap(PAGE)

    def a(rs, **kw):
        k.user_write(buf, b"".join(u.IommuIovaRange(start=s, last=e).pack() for s, e in rs))
        return u.IommuIoasAllowIovas(ioas_id=ioas, num_iovas=len(rs), allowed_iovas=buf, **kw)

    check_fails(k, fd, u.IOMMU_IOAS_ALLOW_IOVAS, a([(0x2000, 0x1000)]), EINVAL)
    check_fails(k, fd, u.IOMMU_IOAS_ALLOW_IOVAS, a([(0x1000, 0x3FFF), (0x3000, 0x4FFF)]),
                EINVAL)
    check_fails(k, fd, u.IOMMU_IOAS_ALLOW_IOVAS, a([(0x7000000, 0x8000000)]), EADDRINUSE)
    check_fails(k, fd, u.IOMMU_IOAS_ALLOW_IOVAS, a([(0, 0xFFF)], __reserved=1), EOPNOTSUPP)
    fd.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, a([(0x100000, 0x1FFFFF)]))
    assert obj.allowed == [(0x100000, 0x1FFFFF)]
    # reserving over an allowed range or an area is refused
    with pytest.raises(KernelError) as e:
        obj.add_reserved(0x1FF000, 0x200FFF, owner="dev")
    assert e.value.errno == EADDRINUSE
    va = k.mmap(PAGE)
    map_(fd, ioas, va, PAGE, iova=0x400000, flags=FIXED | RW)
    with pytest.raises(KernelError) as e:
        obj.add_reserved(0x400FFF, 0x400FFF, owner="dev")
    assert e.value.errno == EADDRINUSE
    assert [(r.start, r.last) for r in obj.reserved] == [(0x8000000, 0x80FFFFF)]
    fd.ioctl(u.IOMMU_IOAS_ALLOW_IOVAS, a([]))                   # an empty list: all again
    assert obj.allowed == []


# -- close -------------------------------------------------------------------------------


def test_close_destroys_everything_and_unpins(k):
    pinned0 = dict(k.user_mm.pinned)
    f = k.open("/dev/iommu")
    a, b = alloc(f), alloc(f)
    va = k.mmap(3 * PAGE)
    iova = map_(f, a, va, 3 * PAGE)
    f.ioctl(u.IOMMU_IOAS_COPY, u.IommuIoasCopy(dst_ioas_id=b, src_ioas_id=a, length=PAGE,
                                               src_iova=iova + PAGE, flags=RW))
    pas = [user_pa(k, va + i * PAGE) for i in range(3)]
    ctx = f.private_data
    f.close()
    assert ctx.objects == {}
    assert k.user_mm.pinned == pinned0
    k.munmap(va, 3 * PAGE)
    assert k.user_mm.resident() == 0
    assert set(pas) <= set(k.mm._free[PAGE])


def test_close_with_an_object_in_use_still_releases(k):
    f = k.open("/dev/iommu")
    a = alloc(f)
    va = k.mmap(PAGE)
    map_(f, a, va, PAGE)
    f.private_data.get_object(a, "ioas")
    f.close()
    assert k.user_mm.pinned == {}


def test_x86_boot_has_dev_iommu():
    from pymsi.machine import X86Pc
    k = X86Pc(devices=[{"msix": 2}]).boot()
    f = k.open("/dev/iommu")
    assert alloc(f) == 1


# -- state machine ------------------------------------------------------------------------

SLOTS = 8          # user pages the machine maps from
WINDOW = 32        # IOVA pages [0, WINDOW) used by fixed maps


def expected_auto_page(upage, n, used, allowed):
    """io_pagetable.c's IOVA choice, in pages: the lowest start in the allowed spans
    (all of [1 page, ULONG_MAX - 1 page] when none) aligned to
    min(roundup_pow_of_two(n), alignment of the user page) with n free pages."""
    align = min(1 << (n - 1).bit_length(), upage & -upage)
    spans = [(s // PAGE, e // PAGE) for s, e in allowed] or [(1, (U64_MAX >> 12) - 1)]
    for s, e in spans:
        p = (s + align - 1) // align * align
        while p + n - 1 <= e:
            clash = [q for q in range(p, p + n) if q in used]
            if not clash:
                return p
            p = (max(clash) + 1 + align - 1) // align * align
    return None


class IoasMachine(RuleBasedStateMachine):
    """MAP / UNMAP / COPY / ALLOW / reserve / DESTROY against a reference model.

    The model: per IOAS, a dict IOVA page -> (area id, user page index), the
    areas' extents, the reserved pages; the expected errno of each call comes
    from the rules of io_pagetable.c, not from the model under test."""

    @initialize()
    def setup(self):
        self.k = boot()
        self.f = self.k.open("/dev/iommu")
        self.va = self.k.mmap(SLOTS * PAGE)
        self.k.user_write(self.va, bytes(SLOTS * PAGE))          # populate every page
        self.ioas: dict[int, dict] = {}
        self.next_area = 0
        self.new_ioas()

    def new_ioas(self):
        i = alloc(self.f)
        self.ioas[i] = {"areas": {}, "resv": set(), "allowed": []}
        return i

    def errno_of(self, cmd, arg):
        return err(self.f, cmd, arg)

    @rule()
    @precondition(lambda self: len(self.ioas) < 4)
    def alloc_ioas(self):
        self.new_ioas()

    @rule(data=st.data(), slot=st.integers(0, SLOTS - 1), n=st.integers(1, 3),
          page=st.integers(0, WINDOW - 1), fixed=st.booleans())
    def map(self, data, slot, n, page, fixed):
        i = data.draw(st.sampled_from(sorted(self.ioas)))
        m = self.ioas[i]
        flags = RW | (FIXED if fixed else 0)
        arg = u.IommuIoasMap(ioas_id=i, user_va=self.va + slot * PAGE, length=n * PAGE,
                             iova=page * PAGE, flags=flags)
        used = {p for a in m["areas"].values() for p in a["pages"]} | m["resv"]
        if fixed:
            pages = set(range(page, page + n))
            want = (EINVAL if pages & m["resv"] else EEXIST if pages & used else None)
            start = page
        else:
            start = expected_auto_page(self.va // PAGE + slot, n, used, m["allowed"])
            want = ENOSPC if start is None else None
        if want is None and slot + n > SLOTS:
            want = EFAULT                           # pinning comes after placing
        got = self.errno_of(u.IOMMU_IOAS_MAP, arg)
        event(f"map fixed={fixed} -> {got}")
        assert got == want
        if got is not None:
            return
        assert arg.iova == start * PAGE
        pages = list(range(start, start + n))
        self.next_area += 1
        m["areas"][self.next_area] = {"pages": pages,
                                      "slots": list(range(slot, slot + n))}

    def pick_area(self, data):
        """An IOAS with an area, and the area's first page and size (None if none)."""
        full = sorted(i for i, m in self.ioas.items() if m["areas"])
        if not full:
            return None
        i = data.draw(st.sampled_from(full))
        aid = data.draw(st.sampled_from(sorted(self.ioas[i]["areas"])))
        pages = self.ioas[i]["areas"][aid]["pages"]
        return i, pages[0], len(pages)

    @rule(data=st.data(), grow=st.integers(-1, 2), shift=st.integers(-1, 1))
    def unmap_near_area(self, data, grow, shift):
        picked = self.pick_area(data)
        if picked is None:
            return
        i, first, n = picked
        self.unmap(data, max(first + shift, 0), max(n + grow, 1), i)

    @rule(data=st.data(), page=st.integers(0, WINDOW), n=st.integers(1, 6))
    def unmap(self, data, page, n, i=None):
        if i is None:
            i = data.draw(st.sampled_from(sorted(self.ioas)))
        m = self.ioas[i]
        lo, hi = page, page + n - 1
        hits = {aid: a for aid, a in m["areas"].items()
                if a["pages"][0] <= hi and a["pages"][-1] >= lo}
        split = any(a["pages"][0] < lo or a["pages"][-1] > hi for a in hits.values())
        arg = u.IommuIoasUnmap(ioas_id=i, iova=page * PAGE, length=n * PAGE)
        got = self.errno_of(u.IOMMU_IOAS_UNMAP, arg)
        event(f"unmap -> {got}")
        if split or not hits:
            assert got == ENOENT
            return
        assert got is None
        assert arg.length == PAGE * sum(len(a["pages"]) for a in hits.values())
        for aid in hits:
            del m["areas"][aid]

    @rule(data=st.data())
    def unmap_all(self, data):
        i = data.draw(st.sampled_from(sorted(self.ioas)))
        m = self.ioas[i]
        assert unmap(self.f, i, 0, U64_MAX) == PAGE * sum(
            len(a["pages"]) for a in m["areas"].values())
        m["areas"].clear()

    @rule(data=st.data(), off=st.integers(0, 2), n=st.integers(1, 3),
          dpage=st.integers(0, WINDOW - 1))
    def copy_from_area(self, data, off, n, dpage):
        picked = self.pick_area(data)
        if picked is None:
            return
        i, first, _ = picked
        self.copy(data, first + off, n, dpage, i)

    @rule(data=st.data(), page=st.integers(0, WINDOW - 1), n=st.integers(1, 3),
          dpage=st.integers(0, WINDOW - 1))
    def copy(self, data, page, n, dpage, src=None):
        if src is None:
            src = data.draw(st.sampled_from(sorted(self.ioas)))
        dst = data.draw(st.sampled_from(sorted(self.ioas)))
        ms, md = self.ioas[src], self.ioas[dst]
        where = {p: (aid, j) for aid, a in ms["areas"].items() for j, p in enumerate(a["pages"])}
        covered = all(p in where for p in range(page, page + n))
        arg = u.IommuIoasCopy(src_ioas_id=src, dst_ioas_id=dst, src_iova=page * PAGE,
                              length=n * PAGE, dst_iova=dpage * PAGE, flags=FIXED | RW)
        dpages = set(range(dpage, dpage + n))
        used = {p for a in md["areas"].values() for p in a["pages"]}
        want = (ENOENT if not covered else EINVAL if dpages & md["resv"] else
                EEXIST if dpages & used else None)
        got = self.errno_of(u.IOMMU_IOAS_COPY, arg)
        event(f"copy -> {got}")
        assert got == want
        if got is None:
            slots = []
            for p in range(page, page + n):
                aid, j = where[p]
                slots.append(ms["areas"][aid]["slots"][j])
            # one destination area per source area crossed
            cur = dpage
            groups: list[list[int]] = []
            last_aid = None
            for p, s in zip(range(page, page + n), slots, strict=True):
                if where[p][0] != last_aid:
                    groups.append([])
                    last_aid = where[p][0]
                groups[-1].append(s)
            for g in groups:
                self.next_area += 1
                md["areas"][self.next_area] = {"pages": list(range(cur, cur + len(g))),
                                               "slots": g}
                cur += len(g)

    @rule(data=st.data(), page=st.integers(0, WINDOW - 1), n=st.integers(1, 2))
    def reserve(self, data, page, n):
        i = data.draw(st.sampled_from(sorted(self.ioas)))
        m = self.ioas[i]
        pages = set(range(page, page + n))
        used = {p for a in m["areas"].values() for p in a["pages"]}
        in_allowed = any(s <= (page + n) * PAGE - 1 and page * PAGE <= e
                         for s, e in m["allowed"])
        obj = self.f.private_data.ioas(i)
        self.next_area += 1
        owner = ("owner", self.next_area)        # compared by identity, like a pointer
        try:
            obj.add_reserved(page * PAGE, (page + n) * PAGE - 1, owner=owner)
            got = None
        except KernelError as e:
            got = e.errno
        event(f"reserve -> {got}")
        assert got == (EADDRINUSE if pages & used or in_allowed else None)
        if got is None:
            m["resv"] |= pages
            m.setdefault("owners", {})[owner] = pages

    @rule(data=st.data())
    def unreserve(self, data):
        i = data.draw(st.sampled_from(sorted(self.ioas)))
        m = self.ioas[i]
        owners = m.get("owners", {})
        if not owners:
            return
        key = data.draw(st.sampled_from(sorted(owners)))
        self.f.private_data.ioas(i).remove_reserved(key)
        del owners[key]
        m["resv"] = set().union(*owners.values()) if owners else set()

    @rule(data=st.data(), lo=st.integers(WINDOW, 2 * WINDOW), n=st.integers(0, 8))
    def allow(self, data, lo, n):
        i = data.draw(st.sampled_from(sorted(self.ioas)))
        m = self.ioas[i]
        rs = [(lo * PAGE, (lo + n) * PAGE - 1)] if n else []
        allow(self.f, i, rs)              # above the window: never reserved
        m["allowed"] = rs

    @rule(data=st.data())
    def destroy(self, data):
        i = data.draw(st.sampled_from(sorted(self.ioas)))
        self.f.ioctl(u.IOMMU_DESTROY, u.IommuDestroy(id=i))
        del self.ioas[i]
        if not self.ioas:
            self.new_ioas()

    @invariant()
    def pages_and_pins_match(self):
        if not hasattr(self, "f"):
            return
        want_pins: set[int] = set()
        for i, m in self.ioas.items():
            obj = self.f.private_data.ioas(i)
            seen = set()
            for a in m["areas"].values():
                for p, s in zip(a["pages"], a["slots"], strict=True):
                    pa = user_pa(self.k, self.va + s * PAGE)
                    assert obj.iova_to_phys(p * PAGE) == pa
                    want_pins.add(pa)
                    seen.add(p)
            # nothing else is mapped
            assert sum(x.length for x in obj.areas) == PAGE * len(seen)
        assert set(self.k.user_mm.pinned) == want_pins

    def teardown(self):
        if hasattr(self, "f"):
            self.f.close()
            assert self.k.user_mm.pinned == {}


IoasMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25,
                                         deadline=None)
TestIoasMachine = IoasMachine.TestCase
