"""Tracepoints: named events along the interrupt path, off by default, recorded as JSON lines.

A tracepoint is a module-level object defined once, where its events happen, and named as
QEMU's ``trace-events`` or Linux's ``TRACE_EVENT`` name the same event
(``smmuv3_translate_success``, ``gicv3_its_cmd_movi``, ``irq_handler_entry``,
``kvm_set_irq``, ``vfio_msix_vector_do_use``, ...)::

    from pymsi import trace

    trace_smmuv3_translate_success = trace.Tracepoint(
        "smmuv3_translate_success", "sid", "iova", "translated", "perm", "stage")

    ...
    if trace_smmuv3_translate_success.enabled:        # one attribute test when off
        trace_smmuv3_translate_success(sid=sid, iova=iova, translated=pa, perm=..., stage=1)

Tracepoints are switched on and off by glob patterns (QEMU's ``-trace "smmuv3_*"``):
:func:`enable` / :func:`disable`, a comma-separated list of patterns, a leading ``-``
disabling.  Patterns are remembered in order, so a tracepoint defined later (its module
imported later) gets the state the patterns give its name.  Everything is off by default.

An enabled tracepoint hands a :class:`TraceRecord` (name, sequence number, clock time,
fields) to every active :class:`Recorder`.  A recorder keeps its records and can write them
as JSON lines (one object per line: ``{"name", "seq", "time_ns", "fields"}``), live to a
stream or afterwards.  The clock is the recorder's own (``clock=``, e.g. a
:class:`pymsi.sched.Scheduler`'s ``now``) or the module clock set with :func:`set_clock`
(0 until one is set), so a deterministic run gives the same records byte for byte.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, NamedTuple

from .errors import AlreadyExists, InvalidArgument

__all__ = [
    "Recorder",
    "TraceRecord",
    "Tracepoint",
    "disable",
    "enable",
    "enabled_names",
    "get",
    "record",
    "reset",
    "set_clock",
    "tracepoints",
]

_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")

_registry: dict[str, Tracepoint] = {}
_patterns: list[tuple[str, bool]] = []          # (glob, on) in the order given
_recorders: list[Recorder] = []


def _zero() -> int:
    return 0


_clock: Callable[[], int] = _zero


class TraceRecord(NamedTuple):
    """One event: which tracepoint, its number in the recorder, the clock, the fields."""

    name: str
    seq: int
    time_ns: int
    fields: dict[str, Any]

    def to_json(self) -> str:
        """The record as one line of JSON (keys in a fixed order, no newline)."""
        return json.dumps({"name": self.name, "seq": self.seq, "time_ns": self.time_ns,
                           "fields": self.fields}, default=_jsonable, separators=(",", ":"))


def _jsonable(value: Any) -> Any:
    """JSON for what json does not know: enums by name, bytes in hex, sets sorted."""
    name = getattr(value, "name", None)
    if isinstance(name, str) and hasattr(type(value), "__members__"):
        return name
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return repr(value)


class Tracepoint:
    """A named trace event with named fields (QEMU's ``trace_<name>()``, Linux's
    ``trace_<name>()``).

    ``enabled`` is a plain attribute: call sites test it before building the fields,
    which is all a disabled tracepoint costs.  Calling the tracepoint records an event
    (when enabled) with the given keyword fields; a field not declared is an error
    (a typo at a call site should not go unnoticed).  Defining a name again with the
    same fields returns the existing tracepoint; with other fields it is an error.
    """

    __slots__ = ("name", "fields", "doc", "enabled")
    name: str
    fields: tuple[str, ...]
    doc: str
    enabled: bool

    def __new__(cls, name: str, *fields: str, doc: str = "") -> Tracepoint:
        old = _registry.get(name)
        if old is not None:
            if old.fields != fields:
                raise AlreadyExists(f"tracepoint {name} is defined with fields {old.fields}")
            return old
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(f"bad tracepoint name {name!r}")
        for f in fields:
            if not isinstance(f, str) or not _NAME.match(f):
                raise InvalidArgument(f"tracepoint {name}: bad field name {f!r}")
        tp = super().__new__(cls)
        tp.name, tp.fields, tp.doc = name, tuple(fields), doc
        tp.enabled = _state_of(name)
        _registry[name] = tp
        return tp

    def __init__(self, name: str, *fields: str, doc: str = "") -> None:
        pass                                  # all done in __new__ (it may return an old one)

    def __repr__(self) -> str:
        return f"<tracepoint {self.name} {'on' if self.enabled else 'off'}>"

    def __call__(self, **fields: object) -> None:
        """Record the event (nothing when disabled)."""
        if not self.enabled:
            return
        for f in fields:
            if f not in self.fields:
                raise InvalidArgument(f"tracepoint {self.name} has no field {f!r}")
        for r in list(_recorders):
            r._add(self.name, fields)


def _state_of(name: str) -> bool:
    on = False
    for pattern, state in _patterns:
        if fnmatch.fnmatchcase(name, pattern):
            on = state
    return on


def _split(patterns: str | Iterable[str]) -> list[tuple[str, bool]]:
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    out = []
    for p in patterns:
        if not isinstance(p, str):
            raise InvalidArgument(f"bad trace pattern {p!r}")
        p = p.strip()
        on = not p.startswith("-")
        p = p.lstrip("-").strip()
        if not p:
            raise InvalidArgument("empty trace pattern")
        out.append((p, on))
    return out


def _apply(items: list[tuple[str, bool]]) -> list[str]:
    _patterns.extend(items)
    changed = []
    for tp in _registry.values():
        state = _state_of(tp.name)
        if state != tp.enabled:
            tp.enabled = state
            changed.append(tp.name)
    return sorted(changed)


def enable(patterns: str | Iterable[str]) -> list[str]:
    """Enable the tracepoints whose names match the glob ``patterns`` ("smmuv3_*",
    "gicv3_its_cmd_*,kvm_set_irq"; "-name" disables).  Also applies to tracepoints
    defined later.  Returns the names whose state changed."""
    return _apply(_split(patterns))


def disable(patterns: str | Iterable[str]) -> list[str]:
    """Disable the tracepoints matching ``patterns`` (now and when defined later)."""
    return _apply([(p, False) for p, _ in _split(patterns)])


def reset() -> None:
    """Everything off, patterns forgotten, recorders detached."""
    _patterns.clear()
    _recorders.clear()
    for tp in _registry.values():
        tp.enabled = False


def tracepoints(pattern: str = "*") -> list[Tracepoint]:
    """The defined tracepoints matching ``pattern``, by name."""
    return [_registry[n] for n in sorted(_registry) if fnmatch.fnmatchcase(n, pattern)]


def get(name: str) -> Tracepoint:
    """The tracepoint called ``name`` (KeyError naming it if none is defined)."""
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"no tracepoint {name!r}") from None


def enabled_names() -> list[str]:
    """Names of the enabled tracepoints."""
    return sorted(n for n, tp in _registry.items() if tp.enabled)


def set_clock(clock: Callable[[], int] | None) -> Callable[[], int]:
    """Make ``clock`` (nanoseconds) the time of records whose recorder has no clock of its
    own; None restores the constant 0.  Returns the previous clock."""
    global _clock
    old = _clock
    _clock = clock if clock is not None else _zero
    return old


class Recorder:
    """Collects the records of enabled tracepoints while it is started.

    ``clock`` gives each record's time (default: the module clock, see
    :func:`set_clock`); ``stream``, if given, gets each record as a JSON line as it
    happens; ``keep=False`` keeps nothing in memory (stream only); ``sink`` is called
    with each record (a live display).
    """

    def __init__(self, clock: Callable[[], int] | None = None, stream: IO[str] | None = None,
                 keep: bool = True, sink: Callable[[TraceRecord], None] | None = None) -> None:
        self.clock = clock
        self.stream = stream
        self.keep = keep
        self.sink = sink
        self.records: list[TraceRecord] = []
        self.seq = 0

    def start(self) -> Recorder:
        if self not in _recorders:
            _recorders.append(self)
        return self

    def stop(self) -> None:
        if self in _recorders:
            _recorders.remove(self)

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _add(self, name: str, fields: dict[str, Any]) -> None:
        t = self.clock() if self.clock is not None else _clock()
        rec = TraceRecord(name, self.seq, t, dict(fields))
        self.seq += 1
        if self.keep:
            self.records.append(rec)
        if self.stream is not None:
            self.stream.write(rec.to_json() + "\n")
        if self.sink is not None:
            self.sink(rec)

    def __iter__(self) -> Iterator[TraceRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def named(self, pattern: str) -> list[TraceRecord]:
        """The kept records whose tracepoint name matches the glob ``pattern``."""
        return [r for r in self.records if fnmatch.fnmatchcase(r.name, pattern)]

    def to_jsonl(self) -> str:
        """The kept records as JSON lines."""
        return "".join(r.to_json() + "\n" for r in self.records)

    def write_jsonl(self, dest: str | IO[str]) -> None:
        """Write the kept records as JSON lines to a path or a text stream."""
        if isinstance(dest, str):
            with open(dest, "w", encoding="utf-8") as f:
                f.write(self.to_jsonl())
        else:
            dest.write(self.to_jsonl())

    def clear(self) -> None:
        self.records.clear()
        self.seq = 0


@contextmanager
def record(patterns: str | Iterable[str], clock: Callable[[], int] | None = None,
           stream: IO[str] | None = None) -> Iterator[Recorder]:
    """Enable ``patterns`` and record while the block runs; afterwards the patterns'
    tracepoints are back to what they were and the recorder is detached::

        with trace.record("smmuv3_*,gicv3_its_*") as rec:
            machine.function(0).notify(0)
        print(rec.to_jsonl())
    """
    saved = list(_patterns)
    enable(patterns)
    rec = Recorder(clock=clock, stream=stream).start()
    try:
        yield rec
    finally:
        rec.stop()
        _patterns[:] = saved
        _apply([])


def load_jsonl(lines: str | Iterable[str]) -> list[TraceRecord]:
    """Parse JSON lines written by a recorder back into records."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    out = []
    for line in lines:
        if line.strip():
            d = json.loads(line)
            out.append(TraceRecord(d["name"], d["seq"], d["time_ns"], d["fields"]))
    return out
