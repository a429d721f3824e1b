"""The `pymsi` command."""

from __future__ import annotations

import pytest

from pymsi import cli


def test_cli_entry_point(capsys):
    assert cli.main(["demo"]) == 0
    assert "GITS_TRANSLATER" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bogus"])
