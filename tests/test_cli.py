"""The `pymsi` command."""

from __future__ import annotations

import io
import re

import pytest

from pymsi import cli
from pymsi.demo import GITS_TRANSLATER, run


def test_demo_shows_the_path_and_passes():
    out = io.StringIO()
    assert run(out) == 0
    text = out.getvalue()
    assert "all paths as expected" in text
    rows = re.findall(r"^\s+(\d+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", text, re.M)
    assert len(rows) == 4
    for _, addr, ipa, pa in rows:
        assert int(addr, 16) == 0xFFFF_F040
        assert int(ipa, 16) == int(pa, 16) == GITS_TRANSLATER
    assert "MsiNotMapped" in text and "stage 1 translation fault, level 3" in text
    assert "stage 2 permission fault" in text


def test_cli_entry_point(capsys):
    assert cli.main(["demo"]) == 0
    assert "GITS_TRANSLATER" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bogus"])
