"""The invariants of DESIGN.md as checks a property test calls from its own
``@invariant()``.

Each check judges an observation of one step -- a :class:`StepObs` of the host/VMM
side (vectors with the address the device writes and where the SMMU takes it, fires
with what they raised, composes with the mapping state around them, enables of
undescribed vectors, stray DMA) or a :class:`GuestStepObs` of the guest side -- and
raises :class:`InvariantViolation` naming the invariant and what broke it.  The
judging functions are :mod:`pymsi.compare`'s (the ones ``pymsi compare`` builds its
table with): one definition of each invariant.

The invariants (:data:`INVARIANTS`):

``routing``
    every enabled vector's write reaches the physical doorbell, and a fire raises the
    LPI of its host IRQ (or, forwarded, a vLPI only);
``delivery``
    exactly one eventfd signal (forwarded: one vLPI; guest: one guest interrupt on the
    vCPU it chose) per fire, on its own vector;
``address stability``
    the address in the device's MSI-X table is the one userspace chose (guest: the one
    it had after boot, over affinity moves and masking);
``no allocation on compose``
    composing a message (enable, affinity, irqfd, MOVI...) changes nothing in the IOAS,
    a domain's page tables, the implicit MSI maps or the MSI cookie pages;
``no silent fallback``
    a vector userspace gave no address to fails to enable (ENOENT) and is untouched;
``isolation``
    a device raises only its own events; DMA outside the IOAS and writes to an
    unmapped doorbell fault, are recorded and raise nothing; nothing stays pinned or
    mapped after close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..compare import (
    CHECKERS,
    GUEST_CHECKERS,
    INVARIANTS,
    ComposeObs,
    DmaObs,
    FireObs,
    GuestFire,
    GuestStepObs,
    GuestVector,
    StepObs,
    UndescribedObs,
    VectorObs,
)
from ..errors import InvalidArgument, InvariantViolation


def _checker(name: str, obs: StepObs | GuestStepObs) -> Callable[[Any], str | None]:
    if name not in INVARIANTS:
        raise InvalidArgument(f"unknown invariant {name!r} (one of {', '.join(INVARIANTS)})")
    return (GUEST_CHECKERS if isinstance(obs, GuestStepObs) else CHECKERS)[name]


def violations(obs: StepObs | GuestStepObs,
               names: Iterable[str] = INVARIANTS) -> dict[str, str]:
    """Every invariant of ``names`` that ``obs`` breaks, with what broke it."""
    out = {}
    for name in names:
        detail = _checker(name, obs)(obs)
        if detail is not None:
            out[name] = detail
    return out


def check(obs: StepObs | GuestStepObs, names: Iterable[str] = INVARIANTS) -> None:
    """Raise :class:`InvariantViolation` for the first of ``names`` that ``obs`` breaks."""
    for name, detail in violations(obs, names).items():
        raise InvariantViolation(name, obs.step, detail)


def routing(obs: StepObs | GuestStepObs) -> None:
    """The ``routing`` invariant (see the module's documentation)."""
    check(obs, ["routing"])


def delivery(obs: StepObs | GuestStepObs) -> None:
    """The ``delivery`` invariant."""
    check(obs, ["delivery"])


def address_stability(obs: StepObs | GuestStepObs) -> None:
    """The ``address stability`` invariant."""
    check(obs, ["address stability"])


def no_allocation_on_compose(obs: StepObs | GuestStepObs) -> None:
    """The ``no allocation on compose`` invariant."""
    check(obs, ["no allocation on compose"])


def no_silent_fallback(obs: StepObs | GuestStepObs) -> None:
    """The ``no silent fallback`` invariant."""
    check(obs, ["no silent fallback"])


def isolation(obs: StepObs | GuestStepObs) -> None:
    """The ``isolation`` invariant."""
    check(obs, ["isolation"])


_T = TypeVar("_T")


def composed(obs: StepObs | GuestStepObs, what: str, state: Callable[[], object],
             fn: Callable[[], _T]) -> _T:
    """Run ``fn`` (something that composes messages) and record ``state()`` before and
    after it in ``obs`` for :func:`no_allocation_on_compose` (any value compared with
    ``==``); returns what ``fn`` does."""
    before = state()
    try:
        return fn()
    finally:
        obs.composes.append(ComposeObs(what, before, state()))


__all__ = ["INVARIANTS", "ComposeObs", "DmaObs", "FireObs", "GuestFire", "GuestStepObs",
           "GuestVector", "InvariantViolation", "StepObs", "UndescribedObs", "VectorObs",
           "address_stability", "check", "composed", "delivery", "isolation",
           "no_allocation_on_compose", "no_silent_fallback", "routing", "violations"]
