"""Helpers of the readable reprs: short, hex addresses, never recursive, bounded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: the longest repr any pymsi object gives
LIMIT = 200


def cpus(mask: Iterable[int] | None) -> str:
    """A CPU set as Linux's cpulist format ("0-3,8")."""
    if mask is None:
        return "-"
    out, run = [], None
    for c in sorted(mask):
        if run is not None and c == run[1] + 1:
            run[1] = c
            continue
        if run is not None:
            out.append(f"{run[0]}-{run[1]}" if run[1] > run[0] else str(run[0]))
        run = [c, c]
    if run is not None:
        out.append(f"{run[0]}-{run[1]}" if run[1] > run[0] else str(run[0]))
    return "{" + ",".join(out) + "}"


def hx(v: Any) -> str:
    """An address or register value: hex if an int, else its short name."""
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else short(v)


def short(obj: Any) -> str:
    """What another object's repr shows of ``obj``: a name, never its contents."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return repr(obj)
    for attr in ("bdf", "name", "path"):
        v = getattr(obj, attr, None)
        if isinstance(v, str):
            return f"{type(obj).__name__}({v})"
    return type(obj).__name__


def bounded(text: str) -> str:
    """``text`` cut to :data:`LIMIT` characters."""
    return text if len(text) <= LIMIT else text[: LIMIT - 4] + "...>"
