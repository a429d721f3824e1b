"""Bit-field helpers for register and in-memory structure layouts (defined in
:mod:`pymsi.core.bits`, the lowest layer, so the core's twins decode with the same fields
as the hardware models)."""

from __future__ import annotations

from ..core.bits import Field, dwords, merge_access, pack_dwords

__all__ = ["Field", "dwords", "merge_access", "pack_dwords"]
