"""Batch entry points over caller-owned buffers."""

from __future__ import annotations

import array

import pytest

from pymsi import errors

DOORBELL = 0x0809_0040
RAM = 0x4000_0000
TABLES = 0x5000_0000
RW = 3


def buf(code, n):
    return array.array(code, bytes(array.array(code).itemsize * n))


@pytest.fixture
def env(core):
    mem = core.Memory()
    mem.add_ram(RAM, 0x100_0000)
    mem.add_ram(TABLES, 0x10_0000)
    alloc = core.TableAllocator(mem, TABLES, 0x10_0000)
    s2 = core.IoPgtable(mem, alloc, fmt="s2", ias=40)
    s1 = core.IoPgtable(mem, alloc, fmt="s1", ias=48, oas=40)
    s2.map(TABLES, TABLES, 0x10_0000, RW)
    s2.map(0x0809_0000, 0x0809_0000, 0x1000, core.Prot.WRITE | core.Prot.MMIO)
    s1.map(0xFFFF_F000, 0x0809_0000, 0x1000, core.Prot.WRITE | core.Prot.MMIO)
    s1.map(0xFFFF_E000, 0x0700_0000, 0x1000, RW)   # stage 2 does not map this IPA
    cfg = core.XlateConfig(s1.stage1_config(), s2.stage2_config(), asid=1, vmid=1)
    t = core.MsiTable()
    for vec in range(8):
        t.set(0x10, vec, 0xFFFF_F000, 12)
    t.set(0x10, 8, 0xFFFF_E000, 12)
    t.set(0x10, 9, 0xFFFF_D000, 12)
    return mem, cfg, t


def test_msi_batch_matches_one_call_per_item(core, env):
    mem, cfg, t = env
    devs = array.array("I", [0x10] * 12 + [0x11])
    idx = array.array("I", list(range(12)) + [0])
    n = len(devs)
    addrs, pas, st = buf("Q", n), buf("Q", n), buf("i", n)
    tlb = core.Iotlb(16)
    ok = core.msi_batch(t, mem, cfg, DOORBELL, devs, idx, addrs, pas, st, tlb=tlb)
    assert ok == 8
    ref_tlb = core.Iotlb(16)
    for k in range(n):
        try:
            addr = t.compose(devs[k], idx[k], DOORBELL)
        except errors.MsiNotMapped:
            assert (st[k], addrs[k], pas[k]) == (core.STATUS_NO_ENTRY, 0, 0)
            continue
        assert addrs[k] == addr
        r = core.translate(mem, addr, True, cfg=cfg, tlb=ref_tlb)
        assert st[k] == core.encode_status(r.fault)
        assert pas[k] == (r.pa if r.fault is None else 0)
    assert list(pas[:8]) == [DOORBELL] * 8
    assert core.status_fault(st[8]) == core.Fault(2, core.FaultKind.TRANSLATION, 2)
    assert core.status_fault(st[9]).stage == 1
    assert (tlb.hits, tlb.misses) == (ref_tlb.hits, ref_tlb.misses)


def test_compose_and_translate_batches(core, env):
    mem, cfg, t = env
    devs, idx = array.array("I", [0x10, 0x10, 0x99]), array.array("I", [3, 8, 0])
    addrs, st = buf("Q", 3), buf("i", 3)
    assert core.compose_batch(t, DOORBELL, devs, idx, addrs, st) == 2
    assert list(addrs) == [0xFFFF_F040, 0xFFFF_E040, 0] and list(st) == [0, 0, -2]
    iovas = array.array("Q", [0xFFFF_F040, 0xFFFF_E040, 0xFFFF_F044])
    pas, st = buf("Q", 3), buf("i", 3)
    assert core.translate_batch(mem, cfg, iovas, pas, st, write=True) == 2
    assert list(pas) == [DOORBELL, 0, DOORBELL + 4]
    assert core.status_fault(st[1]).kind == core.FaultKind.TRANSLATION
    # Reads of the write-only doorbell fault at stage 2.
    assert core.translate_batch(mem, cfg, iovas, pas, st) == 0
    assert core.status_fault(st[0]) == core.Fault(2, core.FaultKind.PERMISSION, 3)


def test_memoryview_and_bytearray_buffers(core, env):
    mem, cfg, t = env
    devs = memoryview(bytearray(array.array("I", [0x10, 0x10]).tobytes())).cast("I")
    idx = array.array("I", [0, 1])
    out = bytearray(16)
    st = bytearray(8)
    assert core.compose_batch(t, DOORBELL, devs, idx, memoryview(out).cast("Q"),
                              memoryview(st).cast("i")) == 2
    assert array.array("Q", out).tolist() == [0xFFFF_F040, 0xFFFF_F040]


def test_buffers_are_checked(core, env):
    mem, cfg, t = env
    devs, idx = array.array("I", [0x10] * 4), array.array("I", range(4))
    good_a, good_s = buf("Q", 4), buf("i", 4)
    bad = [
        (array.array("H", [0x10] * 4), idx, good_a, good_s),   # wrong item type
        (devs, array.array("I", range(3)), good_a, good_s),     # lengths differ
        (devs, idx, buf("Q", 3), good_s),                        # output too short
        (devs, idx, good_a, buf("I", 4)),                        # status must be int32
        (devs, idx, bytes(32), good_s),                          # read-only output
        (devs, idx, [0] * 4, good_s),                            # not a buffer
    ]
    for d, i, a, s in bad:
        with pytest.raises(errors.InvalidArgument):
            core.compose_batch(t, DOORBELL, d, i, a, s)
    with pytest.raises(errors.InvalidArgument):
        core.msi_batch(t, mem, cfg, DOORBELL, devs, idx, good_a, buf("Q", 2), good_s)
    assert list(good_a) == [0] * 4 and list(good_s) == [0] * 4   # nothing written
    with pytest.raises(errors.InvalidArgument):
        core.translate_batch(mem, None, array.array("Q", [0]), buf("Q", 1), buf("i", 1))


def test_numpy_arrays(core, env):
    """numpy arrays go straight to C through the buffer protocol."""
    import numpy as np

    mem, cfg, t = env
    devs = np.full(10, 0x10, dtype=np.uint32)
    idx = np.arange(10, dtype=np.uint32)
    addrs, pas = np.zeros(10, dtype=np.uint64), np.zeros(10, dtype=np.uint64)
    st = np.zeros(10, dtype=np.int32)
    assert core.msi_batch(t, mem, cfg, DOORBELL, devs, idx, addrs, pas, st) == 8
    assert (pas[:8] == DOORBELL).all() and (st[:8] == 0).all() and (st[8:] > 0).all()
    with pytest.raises(errors.InvalidArgument):   # int64 ids are refused, not reinterpreted
        core.compose_batch(t, DOORBELL, devs.astype(np.int64), idx, addrs, st)
    with pytest.raises(errors.InvalidArgument):   # a strided view is not contiguous
        core.compose_batch(t, DOORBELL, devs[::2], idx[::2], addrs, st)
