"""Loading the real Linux/QEMU capture in tests/data (see its README.md)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
# CD.TG0 encodings and CD.IPS encodings (SMMUv3 CD layout).
TG0_GRANULE = {0: 4096, 1: 65536, 2: 16384}
IPS_BITS = {0: 32, 1: 36, 2: 40, 3: 42, 4: 44, 5: 48}


@cache
def capture(name: str = "arm64_smmuv3_s1.json") -> dict:
    return json.loads((DATA / name).read_text())


def h(x: str) -> int:
    return int(x, 16)


def stage1_of_cd(core, decoded: dict):
    """The Stage1 a CD's decoded fields describe (TTB1 disabled here)."""
    return core.Stage1(
        ttb0=h(decoded["TTB0"]), tsz0=decoded["T0SZ"], granule0=TG0_GRANULE[decoded["TG0"]],
        ttb1=h(decoded["TTB1"]), tsz1=decoded["T1SZ"], epd0=bool(decoded["EPD0"]),
        epd1=bool(decoded["EPD1"]), ips=IPS_BITS[decoded["IPS"]], affd=bool(decoded["AFFD"]),
        tbi0=bool(decoded["TBI"] & 1), tbi1=bool(decoded["TBI"] & 2),
    )


def load_dump(core, cap: dict):
    """A Memory holding guest RAM with the dumped page-table pages in it."""
    ram = cap["provenance"]["ram"]
    mem = core.Memory()
    mem.add_ram(h(ram["base"]), h(ram["size"]))
    for addr, page in cap["page_table_pages"].items():
        mem.write(h(addr), bytes.fromhex(page))
    return mem
