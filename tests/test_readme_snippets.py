"""Every ```python block of the README's user-facing sections runs, so that a snippet
cannot rot: the blocks are executed in README order in one namespace (a later block
uses the machine, kernel or VM an earlier one built, as a reader following the README
would), and every ``test_*`` function a block defines is called.

Skipped, by section: the reference sections whose blocks are API fragments (signatures
and call shapes with placeholder arguments, not programs)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

FRAGMENT_SECTIONS = {
    "## The core API",
    "## The SMMUv3 model",
    "## Interrupt hardware",
    "## The user/kernel contract (`pymsi.uapi`)",
}


def blocks() -> list[tuple[str, int, str]]:
    """(heading, line, code) of every ```python block outside FRAGMENT_SECTIONS (the
    heading: the nearest ``##`` or ``###`` above it)."""
    out = []
    section = heading = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = heading = line
        elif line.startswith("### "):
            heading = line
        if line.strip() == "```python":
            start = i + 1
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            if section not in FRAGMENT_SECTIONS:
                out.append((heading, start, "\n".join(lines[start:end]) + "\n"))
            i = end
        i += 1
    return out


def test_the_readme_has_runnable_snippets_and_the_fragment_sections_exist():
    text = README.read_text()
    for s in FRAGMENT_SECTIONS:
        assert re.search(rf"^{re.escape(s)}$", text, re.M), s    # a rename must update this
    tops = re.findall(r"^## .*$", text, re.M)
    assert tops[tops.index("## What is here") + 1] == "## Using pymsi"    # the user's guide
    sections = {s for s, _, _ in blocks()}
    assert any("pymsi info" in s for s in sections)
    assert any("pymsi.testing" in s for s in sections)
    assert "### Machines and descriptions" in sections
    assert len(blocks()) >= 6


def test_every_readme_snippet_runs(capsys):
    ns: dict[str, object] = {"__name__": "readme"}
    for section, line, code in blocks():
        before = set(ns)
        try:
            exec(compile(code, f"README.md:{line}", "exec"), ns)
            for name in sorted(set(ns) - before):
                if name.startswith("test_") and callable(ns[name]):
                    ns[name]()                                    # type: ignore[operator]
        except BaseException as e:
            pytest.fail(f"README.md:{line} ({section}): {type(e).__name__}: {e}")
