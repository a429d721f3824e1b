"""The fingerprint of the C sources, baked into the extension when it is built.

``pymsi/_build.py`` compiles :func:`csrc_hash` of ``csrc/`` into ``pymsi._core_c``
(``pymsi_csrc_hash()``); the C backend compares it with the sources beside the package
(a checkout, an editable install) and refuses a build made from other sources.  A wheel
or a regular install has no ``csrc/`` beside it: there is nothing to compare.

No imports beyond the standard library: the build script loads this file by path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def csrc_hash(csrc: Path) -> str:
    """SHA-256 over the names and contents of every ``*.c`` and ``*.h`` in ``csrc``."""
    h = hashlib.sha256()
    for p in sorted(csrc.glob("*.[ch]")):
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def tree_csrc() -> Path | None:
    """The ``csrc/`` of the checkout this package was imported from, if any."""
    d = Path(__file__).resolve().parent.parent / "csrc"
    return d if (d / "pymsi.h").is_file() else None
