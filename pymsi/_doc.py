"""Attribute documentation that ``help()`` shows.

Classes document their attributes with ``#:`` comments above each annotation (what Sphinx
reads); ``help()`` shows only the docstring, so :func:`document_attributes` appends the
comments to it as an "Attributes" list.
"""

from __future__ import annotations

import inspect
import linecache
import re
import textwrap
from typing import TypeVar

_T = TypeVar("_T", bound=type)


def attribute_docs(cls: type) -> list[tuple[str, str, str]]:
    """(name, annotation, doc) of every ``#:``-commented annotation in the bodies of
    ``cls`` and its bases, bases first ([] for a class whose source is not available)."""
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for c in reversed(cls.__mro__[:-1]):
        for name, ann, doc in _own_attribute_docs(c):
            if name not in seen:
                seen.add(name)
                out.append((name, ann, doc))
    return out


def _class_body(cls: type) -> str:
    """The source of ``cls``'s body, dedented ("" when not available).  Found by a
    line scan of its module's file (inspect.getsource parses the whole module)."""
    try:
        lines = linecache.getlines(inspect.getsourcefile(cls) or "")
    except TypeError:
        return ""
    head = re.compile(rf"^(\s*)class {re.escape(cls.__name__)}\b")
    for i, line in enumerate(lines):
        m = head.match(line)
        if m is None:
            continue
        indent = len(m.group(1))
        body = []
        for line in lines[i + 1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            body.append(line)
        return textwrap.dedent("".join(body))
    return ""


def _own_attribute_docs(cls: type) -> list[tuple[str, str, str]]:
    src = _class_body(cls)
    out = []
    own = set(cls.__dict__.get("__annotations__", {}))
    for m in re.finditer(r"((?:^#:[^\n]*\n)+)^(\w+): ([^\n=]+?)(?: = [^\n]*)?$",
                         src, re.MULTILINE):
        comment, name, ann = m.group(1), m.group(2), m.group(3)
        if name not in own:
            continue
        doc = " ".join(line.strip()[2:].strip() for line in comment.splitlines())
        out.append((name, ann.strip(), doc))
    return out


def document_attributes(cls: _T) -> _T:
    """Append an "Attributes" list, from the ``#:`` comments, to ``cls.__doc__``."""
    docs = attribute_docs(cls)
    if not docs:
        return cls
    lines = ["", "Attributes:"]
    for name, ann, doc in docs:
        lines.append(f"    {name} ({ann}):")
        lines += textwrap.wrap(doc, 84, initial_indent="        ",
                               subsequent_indent="        ")
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\nAttributes:\n", 1)[0]  # a base's
    cls.__doc__ = (doc + "\n" + "\n".join(lines)).strip()
    return cls
