"""Argument stand-ins shared by the core's differential tests (test_backend_parity,
test_error_text): drawn once, turned into each backend's own objects at call time."""

from __future__ import annotations

import array
from typing import Any

import numpy as np


class Ref:
    """A per-backend object named in a drawn argument list (each test resolves the name
    to that backend's object at call time)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Ref({self.name})"


class Buf:
    """A typed buffer made fresh for each backend (``how`` "array"; code "bytearray" for a
    bytearray), or a wrong kind of buffer ("numpy" of the code's width, "bytes", "list")."""

    def __init__(self, code: str, values: list[int], how: str = "array") -> None:
        self.code, self.values, self.how = code, values, how

    def make(self) -> Any:
        if self.code == "bytearray":
            return bytearray(self.values)
        if self.how == "numpy":
            return np.array(self.values, dtype={"I": np.uint32, "Q": np.uint64,
                                                "i": np.int32}[self.code])
        if self.how == "bytes":
            return bytes(array.array(self.code, self.values))
        if self.how == "list":
            return list(self.values)
        return array.array(self.code, self.values)

    def __repr__(self) -> str:
        return f"Buf({self.code!r}, {self.values}, {self.how!r})"
