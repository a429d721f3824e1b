"""A deterministic clock and event queue: runs that repeat exactly from a seed.

:class:`Scheduler` keeps virtual time in integer nanoseconds (QEMU's
``QEMU_CLOCK_VIRTUAL``: it moves only when the next event is taken, never with the
host's wall clock) and a queue of events, each a callback due at a time.  Events due at
the same time run in the order they were scheduled; the order never depends on object
identity or hashing, so one seed gives one run.  Everything random a model or a test
wants (arrival jitter, which queue a packet lands on) comes from :attr:`Scheduler.rng`,
a ``random.Random`` seeded from the scheduler's seed.

Besides timed events, *idle hooks* (``kernel.handle_interrupts``, ``bus.drain``, ...)
are polled when no event is due now: :meth:`Scheduler.run` runs until *quiescent* (no
events left and every hook reports no work) or until a time limit.  A run that never
settles (a model re-arming itself forever) stops after ``max_events`` and says so.

Trace records take their time from :meth:`Scheduler.now` (``trace.Recorder(clock=s.now)``
or :meth:`Scheduler.install_trace_clock`).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable

from . import trace
from .errors import InvalidArgument

__all__ = ["Event", "RunResult", "Scheduler"]

MAX_EVENTS = 1_000_000
"""How many events (and hook polls that found work) one :meth:`Scheduler.run` performs
at most by default."""


class Event:
    """A scheduled callback (QEMU's ``QEMUTimer`` armed once): cancel it with
    :meth:`cancel` before it runs."""

    __slots__ = ("time_ns", "seq", "callback", "args", "cancelled", "name")

    def __init__(self, time_ns: int, seq: int, callback: Callable[..., object],
                 args: tuple[object, ...], name: str) -> None:
        self.time_ns, self.seq, self.callback, self.args = time_ns, seq, callback, args
        self.cancelled = False
        self.name = name

    def __lt__(self, other: Event) -> bool:
        return (self.time_ns, self.seq) < (other.time_ns, other.seq)

    def cancel(self) -> None:
        """Do not run it (no effect once it ran)."""
        self.cancelled = True

    def __repr__(self) -> str:
        return f"<event {self.name or self.callback!r} at {self.time_ns} ns>"


class RunResult:
    """What :meth:`Scheduler.run` did: events run, hook polls that found work, the time
    it stopped at, and whether it stopped quiescent (else: a time or event limit)."""

    __slots__ = ("events", "polls", "time_ns", "quiescent")

    def __init__(self, events: int, polls: int, time_ns: int, quiescent: bool) -> None:
        self.events, self.polls, self.time_ns, self.quiescent = events, polls, time_ns, quiescent

    def __repr__(self) -> str:
        return (f"RunResult(events={self.events}, polls={self.polls}, "
                f"time_ns={self.time_ns}, quiescent={self.quiescent})")


class Scheduler:
    """Virtual time, an event queue and a seeded random number generator.

    ``seed`` seeds :attr:`rng` (any int); two schedulers with the same seed fed the same
    calls run the same events at the same times.
    """

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int):
            raise InvalidArgument(f"seed must be an int, not {seed!r}")
        self.seed = seed
        self.rng = random.Random(seed)
        self._now = 0
        self._seq = 0
        self._queue: list[Event] = []
        self._hooks: list[tuple[str, Callable[[], object]]] = []
        self.events_run = 0

    # -- time ------------------------------------------------------------------------

    def now(self) -> int:
        """The virtual time in nanoseconds (``qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL)``)."""
        return self._now

    @property
    def now_ns(self) -> int:
        return self._now

    def install_trace_clock(self) -> Callable[[], int]:
        """Make this scheduler's time the time of trace records; returns the old clock."""
        return trace.set_clock(self.now)

    # -- events ----------------------------------------------------------------------

    def schedule(self, delay_ns: int, callback: Callable[..., object], *args: object,
                 name: str = "") -> Event:
        """Run ``callback(*args)`` ``delay_ns`` (>= 0) nanoseconds from now."""
        if not isinstance(delay_ns, int) or delay_ns < 0:
            raise InvalidArgument(f"delay must be an int >= 0 ns, not {delay_ns!r}")
        return self.schedule_at(self._now + delay_ns, callback, *args, name=name)

    def schedule_at(self, time_ns: int, callback: Callable[..., object], *args: object,
                    name: str = "") -> Event:
        """Run ``callback(*args)`` at ``time_ns`` (not before now)."""
        if not isinstance(time_ns, int) or time_ns < self._now:
            raise InvalidArgument(f"time {time_ns!r} is before now ({self._now} ns)")
        if not callable(callback):
            raise InvalidArgument(f"{callback!r} is not callable")
        ev = Event(time_ns, self._seq, callback, args, name)
        self._seq += 1
        heapq.heappush(self._queue, ev)
        return ev

    @property
    def pending(self) -> int:
        """Events scheduled and not cancelled."""
        return sum(not e.cancelled for e in self._queue)

    def next_time(self) -> int | None:
        """When the next event is due (None: no event)."""
        self._drop_cancelled()
        return self._queue[0].time_ns if self._queue else None

    def _drop_cancelled(self) -> None:
        q = self._queue
        while q and q[0].cancelled:
            heapq.heappop(q)

    # -- idle hooks --------------------------------------------------------------------

    def add_idle_hook(self, hook: Callable[[], object], name: str = "") -> None:
        """Poll ``hook()`` whenever no event is due now; a truthy result means it did
        work (so the run is not quiescent yet).  Hooks are polled in the order added."""
        if not callable(hook):
            raise InvalidArgument(f"{hook!r} is not callable")
        self._hooks.append((name or getattr(hook, "__qualname__", "hook"), hook))

    def remove_idle_hook(self, hook: Callable[[], object]) -> None:
        self._hooks = [(n, h) for n, h in self._hooks if h != hook]

    def _poll(self) -> int:
        worked = 0
        for _, hook in list(self._hooks):
            if hook():
                worked += 1
        return worked

    # -- running ---------------------------------------------------------------------

    def step(self) -> bool:
        """Run the next event (advancing the clock to it); False if there is none."""
        self._drop_cancelled()
        if not self._queue:
            return False
        ev = heapq.heappop(self._queue)
        self._now = ev.time_ns
        self.events_run += 1
        ev.callback(*ev.args)
        return True

    def run(self, until_ns: int | None = None, for_ns: int | None = None,
            max_events: int = MAX_EVENTS) -> RunResult:
        """Run events and idle hooks until quiescent, or until the clock would pass
        ``until_ns`` (or now + ``for_ns``); then the clock is at that time.  At most
        ``max_events`` events and working polls; a run cut short says
        ``quiescent=False``."""
        if for_ns is not None:
            if until_ns is not None:
                raise InvalidArgument("give until_ns or for_ns, not both")
            until_ns = self._now + for_ns
        if until_ns is not None and until_ns < self._now:
            raise InvalidArgument(f"until {until_ns} ns is before now ({self._now} ns)")
        events = polls = 0
        q = self._queue                          # (never rebound: events are pushed on it)
        while events + polls < max_events:
            while q and q[0].cancelled:          # _drop_cancelled()
                heapq.heappop(q)
            if q and q[0].time_ns == self._now:
                self.step()
                events += 1
                continue
            worked = 0                           # _poll(), inline: the idle hooks in order
            for _, hook in list(self._hooks):
                if hook():
                    worked += 1
            if worked:
                polls += 1
                continue
            nxt = self._queue[0].time_ns if self._queue else None
            if nxt is None:
                if until_ns is not None:
                    self._now = until_ns
                return RunResult(events, polls, self._now, True)
            if until_ns is not None and nxt > until_ns:
                self._now = until_ns
                return RunResult(events, polls, self._now, False)
            self.step()
            events += 1
        return RunResult(events, polls, self._now, False)
