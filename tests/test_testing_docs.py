"""pymsi.testing's state machines document their rules (help() is what a user reads):
every rule and initialize step is named in the class docstring with its arguments,
the preconditions are mentioned, and the docstring says an override needs @rule again
-- which is true: an undecorated override removes the rule."""

from __future__ import annotations

import inspect

import pytest
from hypothesis import stateful
from hypothesis.stateful import rule

from pymsi.testing import machines as M

MACHINES = [M.HostMachine, M.VfioUserspace, M.GuestMachine, M.AssignedGuest]


def rules_of(cls):
    out = {}
    for name, f in inspect.getmembers(cls):
        r = getattr(f, stateful.RULE_MARKER, None) or \
            getattr(f, stateful.INITIALIZE_RULE_MARKER, None)
        if r is not None:
            out[name] = (list(r.arguments), bool(getattr(r, "preconditions", ())))
    return out


@pytest.mark.parametrize("cls", MACHINES, ids=lambda c: c.__name__)
def test_each_rule_is_listed_with_its_arguments(cls):
    doc = inspect.getdoc(cls) or ""
    rules = rules_of(cls)
    assert len(rules) >= 4
    for name, (args, _) in rules.items():
        assert f"``{name}({', '.join(args)})``" in doc, name
    assert "@rule" in doc and "override" in doc
    for name, (_, has_pre) in rules.items():
        if has_pre:                            # its entry in the list says so
            entry = doc.split(f"``{name}(", 1)[1].split("\n    * ", 1)[0]
            assert "precondition" in entry, name


def test_an_undecorated_override_removes_the_rule_as_the_docstrings_say():
    class Plain(M.VfioUserspace):
        def fire(self, v):                     # no @rule: hypothesis no longer sees it
            super().fire(v)

    class Decorated(M.VfioUserspace):
        @rule(v=M.VfioUserspace.vecs)
        def fire(self, v):
            super().fire(v)

    assert "fire" in rules_of(M.VfioUserspace)
    assert "fire" not in rules_of(Plain)
    assert "fire" in rules_of(Decorated)
