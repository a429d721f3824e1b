"""Hypothesis strategies, invariant checks and rule-based state machines for property
tests of interrupt-remapping designs built on pymsi.

* :mod:`pymsi.testing.strategies` -- the objects users build: stage configurations and
  page tables, MSI tables, STE/CD words (valid and mutated), ITS commands, CPU masks,
  device and machine descriptions, ``/proc`` affinity inputs, iommufd/VFIO calls.
* :mod:`pymsi.testing.invariants` -- the invariants of DESIGN.md (routing, delivery,
  address stability, no allocation on compose, no silent fallback, isolation) as
  functions a test calls from its own ``@invariant``; the same definitions ``pymsi
  compare`` judges its table with.
* :mod:`pymsi.testing.machines` -- :class:`HostMachine` (the host kernel's own drivers),
  :class:`VfioUserspace` (a VMM through iommufd and VFIO), :class:`GuestMachine` (a
  guest behind an assigned device, judged with the DESIGN.md invariants) and
  :class:`AssignedGuest` (a guest's own delivery model of an assigned NIC):
  ``RuleBasedStateMachine`` classes to subclass.

Needs hypothesis (``pip install 'pymsi[test]'``); ``import pymsi`` itself does not.
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
except ImportError as e:                       # pragma: no cover - depends on the install
    raise ImportError(
        "pymsi.testing needs hypothesis, which is not installed: install pymsi with its "
        "'test' extra (pip install 'pymsi[test]') or pip install hypothesis") from e

from . import invariants, strategies  # noqa: E402
from .invariants import InvariantViolation  # noqa: E402
from .machines import AssignedGuest, GuestMachine, HostMachine, VfioUserspace  # noqa: E402

__all__ = ["AssignedGuest", "GuestMachine", "HostMachine", "InvariantViolation",
           "VfioUserspace", "invariants", "strategies"]
