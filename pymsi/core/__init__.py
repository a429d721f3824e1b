"""The translation core: memory, table walks, IOTLB, MSI address table, batches.

Two backends implement it with identical behaviour: ``c`` (the cffi extension
built from csrc/, the default) and ``python`` (the pure-Python twin).  The
environment variable ``PYMSI_BACKEND`` picks the one this module exports;
:func:`backend` returns either explicitly, e.g. to compare them.

With ``PYMSI_BACKEND`` unset, a missing or stale C extension (installed where no
C compiler was found, or built from other sources than the checkout's csrc/) is
not an error: the pure-Python twin is used and a :class:`RuntimeWarning` says so
once.  ``PYMSI_BACKEND=c`` makes it an ImportError saying how to build it.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

from .common import (
    ADDRESS_SIZES,
    GRANULES,
    MAX_ACCESS,
    MSI_RESERVE_MAX,
    STATUS_ABORT,
    STATUS_BYPASS,
    STATUS_FAULT,
    STATUS_NO_CONFIG,
    STATUS_NO_ENTRY,
    STATUS_OK,
    STREAM_ABORT,
    STREAM_BYPASS,
    STREAM_TRANSLATE,
    Fault,
    FaultKind,
    Stage1,
    Stage2,
    TlbKind,
    WalkResult,
    XlateConfig,
    encode_status,
    status_fault,
)

BACKENDS = ("c", "python")

_BUILD_HINT = (
    "the C backend of pymsi is not built; build it with `pip install .` (or "
    "`pip install -e .` in a checkout; needs a C compiler and cffi), or set "
    "PYMSI_BACKEND=python to use the pure-Python twin"
)


def backend(name: str) -> ModuleType:
    """The backend module ``name`` ("c" or "python").

    Asking for ``c`` when the extension is not built raises ImportError
    saying how to build it.
    """
    if name == "c":
        try:
            return importlib.import_module("pymsi.core._cbackend")
        except ImportError as e:
            raise ImportError(f"{_BUILD_HINT} ({e})") from e
    if name == "python":
        return importlib.import_module("pymsi.core._pybackend")
    raise ImportError(f"unknown PYMSI_BACKEND {name!r}: choose one of {BACKENDS}")


def _default() -> ModuleType:
    """The C backend, or the twin (with one warning) when C cannot be used."""
    try:
        return backend("c")
    except ImportError as e:
        warnings.warn(f"pymsi: using the pure-Python core: {e}", RuntimeWarning, stacklevel=3)
        return backend("python")


_choice = os.environ.get("PYMSI_BACKEND", "").strip().lower()
_impl = backend(_choice) if _choice else _default()

BACKEND: str = _impl.NAME
if TYPE_CHECKING:
    # For a type checker, the names are the Python twin's: the two backends have the
    # same signatures (tests/test_core_signatures.py), and the C one's classes are
    # thin wrappers a checker cannot see into any better.
    from ._pybackend import FIRE_NONE as FIRE_NONE
    from ._pybackend import FIRE_TRANSLATED as FIRE_TRANSLATED
    from ._pybackend import (
        Iotlb,
        ItsCache,
        ItsCmdq,
        Memory,
        MsiTable,
        Streams,
        compose_batch,
        its_lookup_batch,
        msi_batch,
        msi_router,
        msix_gather,
        pending_batch,
        stream_batch,
        stream_translator,
        translate,
        translate_batch,
        walk,
    )
else:
    Memory = _impl.Memory
    Iotlb = _impl.Iotlb
    MsiTable = _impl.MsiTable
    walk = _impl.walk
    translate = _impl.translate
    compose_batch = _impl.compose_batch
    translate_batch = _impl.translate_batch
    msi_batch = _impl.msi_batch
    Streams = _impl.Streams
    stream_batch = _impl.stream_batch
    stream_translator = _impl.stream_translator
    pending_batch = _impl.pending_batch
    ItsCache = _impl.ItsCache
    ItsCmdq = _impl.ItsCmdq
    its_lookup_batch = _impl.its_lookup_batch
    msix_gather = _impl.msix_gather
    msi_router = _impl.msi_router
    FIRE_NONE, FIRE_TRANSLATED = _impl.FIRE_NONE, _impl.FIRE_TRANSLATED

from .pgtable import IoPgtable, IpaView, Prot, TableAllocator  # noqa: E402

__all__ = [
    "ADDRESS_SIZES", "BACKEND", "BACKENDS", "Fault", "FaultKind", "GRANULES", "IoPgtable",
    "Iotlb", "IpaView", "ItsCache", "ItsCmdq", "MAX_ACCESS", "MSI_RESERVE_MAX", "Memory",
    "MsiTable", "Prot",
    "STATUS_ABORT", "STATUS_BYPASS",
    "STATUS_FAULT", "STATUS_NO_CONFIG", "STATUS_NO_ENTRY", "STATUS_OK", "STREAM_ABORT",
    "STREAM_BYPASS", "STREAM_TRANSLATE", "Stage1", "Stage2", "Streams", "TableAllocator",
    "TlbKind", "WalkResult", "XlateConfig", "backend", "compose_batch", "encode_status",
    "its_lookup_batch", "msi_batch", "msi_router", "msix_gather", "pending_batch", "status_fault",
    "stream_batch", "stream_translator", "translate", "translate_batch", "walk",
]
