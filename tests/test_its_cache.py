"""The ITS translation cache: an MSI is translated from what the ITS cached, and each
command the architecture requires after a table change drops what it changes (software
that edits the tables behind the ITS's back sees the stale translation until then)."""

from __future__ import annotations

import pytest

from hw_rig import (DISCARD, GITS_CTLR, ITS_BASE, MAPC, MAPD, MAPI, MAPTI, MOVI, SYNC,  # isort: skip
                    VMAPI, VMAPP, VMAPTI, VMOVI, VMOVP, ItsDriver, Platform)

DEV = 0x10


def rig(gicv4: bool = False):
    p = Platform(ncpus=4, gicv4=gicv4)
    p.drv = ItsDriver(p)
    p.drv.init()
    lpis = p.drv.map_device(DEV, 4, cpu=0)
    return p, lpis


def ite_addr(p, ev: int) -> int:
    return p.drv.devices[DEV] + ev * p.drv.ite_size


def fire(p, ev: int) -> bool:
    return p.its.translate(DEV, ev)


def pending(p) -> list[set[int]]:
    out = [set(rd.pending) for rd in p.gic.redists]
    for rd in p.gic.redists:
        for i in list(rd.pending):
            rd.clear_pending(i)
    return out


def test_stale_until_mapti():
    p, lpis = rig()
    assert fire(p, 0) and pending(p)[0] == {lpis[0]}
    # Retarget event 0 to LPI 1's INTID behind the ITS's back: the cached ITE still answers.
    p.ram.write_u64(ite_addr(p, 0), p.ram.read_u64(ite_addr(p, 1)))
    assert fire(p, 0) and pending(p)[0] == {lpis[0]}
    p.drv.cmd(MAPTI, d0=DEV << 32, d1=lpis[2] << 32 | 0, d2=0)
    assert fire(p, 0) and pending(p)[0] == {lpis[2]}


def test_mapd_unmap_drops():
    p, lpis = rig()
    assert fire(p, 1)
    p.drv.cmd(MAPD, d0=DEV << 32, d2=0)
    assert not fire(p, 1)


def test_discard_drops():
    p, lpis = rig()
    assert fire(p, 2)
    pending(p)
    p.drv.cmd(DISCARD, d0=DEV << 32, d1=2)
    assert not fire(p, 2) and pending(p)[0] == set()


def test_movi_and_mapc_retarget():
    p, lpis = rig()
    assert fire(p, 3) and pending(p)[0] == {lpis[3]}
    p.drv.movi(DEV, 3, 2)
    assert fire(p, 3) and pending(p)[2] == {lpis[3]}
    # Collection 2 now targets CPU 1: MAPC drops the cached collection.
    p.drv.cmd(MAPC, d2=1 << 63 | 1 << 16 | 2)
    p.drv.cmd(SYNC, d2=1 << 16)
    assert fire(p, 3) and pending(p)[1] == {lpis[3]}


def test_stale_collection_until_mapc():
    p, lpis = rig()
    assert fire(p, 0) and pending(p)[0] == {lpis[0]}
    # Rewrite collection 0's entry in memory to target CPU 3: still CPU 0 (cached) ...
    ct = p.its.baser[1] & ((1 << 48) - 1) & ~0xFFF
    p.ram.write_u64(ct, 1 | 3 << 1)
    assert fire(p, 0) and pending(p)[0] == {lpis[0]}
    # ... until the ITS is disabled and enabled again, which drops everything.
    p.bus.write(ITS_BASE + GITS_CTLR, 0)
    p.bus.write(ITS_BASE + GITS_CTLR, 1)
    assert fire(p, 0) and pending(p)[3] == {lpis[0]}


@pytest.mark.parametrize("op", [MAPTI, MAPI, MOVI, DISCARD, VMAPTI, VMAPI, VMOVI])
def test_event_commands_drop_their_event(op):
    p, _ = rig(gicv4=True)
    fire(p, 0), fire(p, 1)
    assert set(p.its._ite_cache[DEV]) == {0, 1}
    p.drv.cmd(op, d0=DEV << 32, d1=1, check=False)
    assert set(p.its._ite_cache[DEV]) == {0}


def test_mapd_drops_the_device_mapc_the_collection_vmapp_vmovp_the_vpe():
    p, _ = rig(gicv4=True)
    fire(p, 0)
    assert DEV in p.its._ite_cache and 0 in p.its._col_cache
    p.drv.cmd(MAPD, d0=DEV << 32, d2=0)
    assert DEV not in p.its._ite_cache
    p.drv.cmd(MAPC, d2=1 << 63 | 0 << 16 | 0)
    assert 0 not in p.its._col_cache
    for op in (VMAPP, VMOVP):
        p.its._vpe_cache[5] = (0, 0, 0)
        p.drv.cmd(op, d1=5 << 32, check=False)
        assert 5 not in p.its._vpe_cache
