"""Configurations are immutable values; single calls with s1=/s2= reuse their prepared form."""

from __future__ import annotations

import pytest

HOST_RAM, TABLES = 0x8000_0000, 0x9000_0000


@pytest.fixture
def env(core):
    mem = core.Memory()
    mem.add_ram(HOST_RAM, 0x10_0000)
    mem.add_ram(TABLES, 0x10_0000)
    rw = core.Prot.READ | core.Prot.WRITE
    s2 = core.IoPgtable(mem, core.TableAllocator(mem, TABLES, 0x8_0000), fmt="s2", ias=40)
    s2.map(HOST_RAM, HOST_RAM, 0x10_0000, rw)
    s1 = core.IoPgtable(core.IpaView(mem, s2),
                        core.TableAllocator(core.IpaView(mem, s2), HOST_RAM, 0x8_0000),
                        fmt="s1", ias=48, oas=40)
    s1.map(0x1234_5000, HOST_RAM + 0x9000, 0x1000, rw)
    return mem, s1.stage1_config(), s2.stage2_config()


@pytest.mark.parametrize("field", ["ttb0", "tsz0", "gshift", "_cfg", "new"])
def test_stage1_is_immutable(core, field):
    s1 = core.Stage1(ttb0=0x1000)
    with pytest.raises(AttributeError):
        setattr(s1, field, 1)
    with pytest.raises(AttributeError):
        delattr(s1, "ttb0")
    assert s1 == core.Stage1(ttb0=0x1000)


@pytest.mark.parametrize("field", ["vttb", "tsz", "concat", "_cfg"])
def test_stage2_is_immutable(core, field):
    s2 = core.Stage2(vttb=0x1000, tsz=24, sl0=1)
    with pytest.raises(AttributeError):
        setattr(s2, field, 1)
    assert s2 == core.Stage2(vttb=0x1000, tsz=24, sl0=1)


@pytest.mark.parametrize("field", ["s1", "s2", "asid", "vmid", "other"])
def test_xlate_config_is_immutable(core, field):
    cfg = core.XlateConfig(s1=core.Stage1(ttb0=0x1000), asid=3)
    with pytest.raises(AttributeError):
        setattr(cfg, field, 1)
    assert cfg.asid == 3


def test_pair_calls_equal_cfg_calls(core, env):
    mem, s1, s2 = env
    tlb = core.Iotlb(16)
    cfg = core.XlateConfig(s1, s2)
    want = core.walk(mem, 0x1234_5678, True, cfg=cfg)
    assert want.fault is None and want.pa == HOST_RAM + 0x9678
    for _ in range(3):
        assert core.walk(mem, 0x1234_5678, True, s1=s1, s2=s2) == want
        assert core.walk(mem, HOST_RAM + 0x10, s2=s2) == core.walk(
            mem, HOST_RAM + 0x10, cfg=core.XlateConfig(s2=s2))
    first = core.translate(mem, 0x1234_5678, True, tlb=tlb, s1=s1, s2=s2)
    again = core.translate(mem, 0x1234_5678, True, tlb=tlb, s1=s1, s2=s2)
    assert not first.tlb_hit and again.tlb_hit
    assert again._replace(tlb_hit=False) == first
    assert core.walk(mem, 0x1234_5678, s1=s1) == core.walk(mem, 0x1234_5678,
                                                           cfg=core.XlateConfig(s1))


def test_nop_floor_exists():
    pytest.importorskip("pymsi._core_c")
    from pymsi._core_c import lib

    assert lib.pymsi_nop4(1, 2, 3, 4) == 0
