"""The VMM's tracepoints: :class:`pymsi.trace.Tracepoint` when that module exists, else a
no-op stand-in with the same interface (``.enabled`` false, calls ignored)."""

from __future__ import annotations

from typing import Any

try:
    from ..trace import Tracepoint
except ImportError:                         # pragma: no cover - until pymsi.trace lands

    class Tracepoint:                       # type: ignore[no-redef]
        """A tracepoint that is always off."""

        enabled = False

        def __init__(self, name: str, *fields: str) -> None:
            self.name, self.fields = name, fields

        def __call__(self, **fields: Any) -> None:
            """Nothing is recorded."""


__all__ = ["Tracepoint"]
