"""Outage mode: one breaker per instance, shared by every run of the daemon.

A ``Breaker`` hears the outcome of every API call to its instance (``record``). While
calls get answers it is closed. Once every call has failed transiently for
``outage_after`` seconds it opens: the instance is unavailable since the first of those
failures. Then calls stop going out and wait in ``admit`` (no item burns its patience
meanwhile); one call at a time goes out as a probe, at capped exponential intervals
with jitter. The first answer closes the breaker and every waiting call goes on.
Once the outage is ``outage_seconds`` old, every call but the probe raises
``OutageError``: its run ends ``failed``, transient, and the rerun window drops it
again later (a rerun that meets the same outage fails at once, after one probe).

Runs follow their instances with ``watch`` (``run.json`` says ``waiting`` and why);
``health()`` lists every instance's state for ``status``, metrics and the web page.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger

from daemon.errors import FatalError, Interrupted, PermanentError, TransientError
from daemon.redact import redact

PROBE_BASE = 1.0  # seconds before the first probe of an outage
POLL = 0.5  # seconds between stop checks of a waiting call


class OutageError(FatalError):
    """The instance stayed unavailable past ``retry.outage_seconds``: the run stops and
    fails transiently (the rerun window picks it up)."""

    transient = True


@dataclass(frozen=True)
class Health:
    """One instance as its breaker sees it."""

    instance: str
    available: bool
    since: datetime | None = None  # unavailable since (the first failure of the streak)
    last_error: str | None = None
    waiting: int = 0  # calls waiting for it now

    def reason(self) -> str:
        since = self.since.isoformat(timespec="seconds") if self.since else "?"
        return (f"instance {self.instance} unavailable since {since}, "
                f"last error: {self.last_error}")

    def as_dict(self) -> dict[str, object]:
        return {"instance": self.instance, "available": self.available,
                "since": self.since.isoformat(timespec="seconds") if self.since else None,
                "last_error": self.last_error, "waiting": self.waiting,
                "reason": None if self.available else self.reason()}


@dataclass(frozen=True)
class Ticket:
    """A call let through by ``admit``: whether it is the probe, how long it waited."""

    probe: bool = False
    waited: float = 0.0


Listener = Callable[["Breaker"], None]


def _ignore(_: Breaker) -> None:
    pass


class Breaker:
    """The breaker of one instance (see the module docstring); thread-safe."""

    def __init__(self, instance: str, outage_after: float, outage_seconds: float, *,
                 probe_cap: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 on_change: Listener = _ignore) -> None:
        self.instance = instance
        self.outage_after = outage_after
        self.outage_seconds = outage_seconds
        self.probe_cap = probe_cap
        self._clock = clock
        self._cond = threading.Condition()
        self._failing_since: float | None = None  # clock time of the streak's first failure
        self._since: datetime | None = None  # the same, as wall time
        self._last_error: str | None = None
        self._open = False
        self._opened_at = 0.0
        self._probing = False
        self._prober = 0  # the thread whose call is the probe
        self._probes = 0  # failed probes of this outage
        self._next_probe = 0.0
        self._waiting = 0
        self._on_change = on_change  # told of each opening and closing, outside the lock

    @property
    def unavailable(self) -> bool:
        return self._open

    def health(self) -> Health:
        with self._cond:
            return Health(self.instance, not self._open, self._since if self._open else None,
                          self._last_error if self._open else None, self._waiting)

    def admit(self, stop: threading.Event | None = None, probed: bool = False) -> Ticket:
        """Return at once while closed; while open, wait until the breaker closes or it
        is this call's turn to probe. Once the outage is ``outage_seconds`` old, calls
        raise ``OutageError`` at once (so a run's calls give up together, not one
        after another), except that a call that has not probed yet (``probed``: its
        last try was a probe) still waits for a probe turn when none is out, so that
        a run meeting an old outage finds the instance back. ``Interrupted`` when
        ``stop`` is set."""
        with self._cond:
            if not self._open:
                return Ticket()
            entered = self._clock()
            self._waiting += 1
            try:
                while self._open:
                    now = self._clock()
                    if self._probing and self._prober == threading.get_ident():
                        return Ticket(probe=True)  # a call inside the probe (its login)
                    too_long = now - self._opened_at >= self.outage_seconds
                    if not self._probing and now >= self._next_probe and \
                            not (too_long and probed):
                        self._probing, self._prober = True, threading.get_ident()
                        return Ticket(probe=True, waited=now - entered)
                    if too_long and (self._probing or probed):
                        raise OutageError(f"{self._health().reason()}; gave up after "
                                          f"{self.outage_seconds:g} s (retry.outage_seconds)")
                    self._cond.wait(min(POLL, max(0.01, self._next_probe - now)))
                    if stop is not None and stop.is_set():
                        raise Interrupted("shutting down while an instance is unavailable")
                return Ticket(waited=self._clock() - entered)
            finally:
                self._waiting -= 1

    def record(self, ticket: Ticket, error: BaseException | None) -> None:
        """The outcome of a call let through by ``admit``: None or an answer that was an
        error (permanent, fatal) means the instance is there; a ``TransientError``
        that it is not; anything else (a shutdown, a bug) says nothing."""
        if error is None or (isinstance(error, PermanentError | FatalError)
                             and not isinstance(error, OutageError)):
            self._answered()
        elif isinstance(error, TransientError):
            self._failed(ticket, str(error))
        elif ticket.probe:
            with self._cond:
                self._probing = False
                self._cond.notify_all()

    def _health(self) -> Health:
        return Health(self.instance, not self._open, self._since, self._last_error,
                      self._waiting)

    # --- transitions -----------------------------------------------------------------

    def _answered(self) -> None:
        with self._cond:
            self._failing_since = self._since = None
            self._probing = False
            was_open, self._open = self._open, False
            self._cond.notify_all()
        if was_open:
            logger.info("instance {} answers again", self.instance)
            self._tell()

    def _failed(self, ticket: Ticket, error: str) -> None:
        with self._cond:
            now = self._clock()
            self._last_error = redact(error)[:500]
            if self._failing_since is None:
                self._failing_since = now
                self._since = datetime.now(UTC)
            opening = not self._open and now - self._failing_since >= self.outage_after
            if opening:
                self._open, self._opened_at, self._probes = True, now, 0
                self._next_probe = now + self._probe_wait()
            if ticket.probe:
                self._probing = False
                self._probes += 1
                self._next_probe = now + self._probe_wait()
                self._cond.notify_all()
            reason = self._health().reason()
        if opening:
            logger.warning("{}: runs against it wait for it", reason)
            self._tell()

    def _probe_wait(self) -> float:
        """Half to all of a capped exponential (never 0: a probe is a real call), so the
        probes of many daemons spread out."""
        backoff = min(self.probe_cap, PROBE_BASE * 2 ** min(self._probes, 32))
        return random.uniform(0.5, 1.0) * backoff

    def _tell(self) -> None:
        try:
            self._on_change(self)
        except Exception:  # a broken listener must not break the call that told it
            logger.exception("outage listener of {} failed", self.instance)


# --- the daemon's breakers -----------------------------------------------------------

_lock = threading.Lock()
_breakers: dict[str, Breaker] = {}
_watchers: list[tuple[frozenset[str], Callable[[list[Health]], None]]] = []


def breaker(instance: str, outage_after: float, outage_seconds: float,
            probe_cap: float = 30.0) -> Breaker:
    """The breaker of ``instance``, created on first use; the settings of the latest
    caller (the config that opened the instance) apply."""
    with _lock:
        found = _breakers.get(instance)
        if found is None:
            found = _breakers[instance] = Breaker(instance, outage_after, outage_seconds,
                                                  probe_cap=probe_cap, on_change=_changed)
        found.outage_after, found.outage_seconds = outage_after, outage_seconds
        found.probe_cap = probe_cap
        return found


def health() -> list[Health]:
    """Every instance with a breaker, by name: for status, metrics and the web page."""
    with _lock:
        breakers = sorted(_breakers.values(), key=lambda b: b.instance)
    return [b.health() for b in breakers]


def unavailable(instances: Iterable[str]) -> list[Health]:
    """Those of ``instances`` that are unavailable now."""
    with _lock:
        breakers = [_breakers[name] for name in instances if name in _breakers]
    return [h for h in (b.health() for b in breakers) if not h.available]


def reset() -> None:
    """Forget every breaker (tests; a daemon keeps them for its life)."""
    with _lock:
        _breakers.clear()


def _changed(changed: Breaker) -> None:
    with _lock:
        watchers = [(names, fn) for names, fn in _watchers if changed.instance in names]
    for names, fn in watchers:
        fn(unavailable(names))


@contextmanager
def watch(instances: Iterable[str | None], on_change: Callable[[list[Health]], None]
          ) -> Iterator[None]:
    """Within the block, call ``on_change(unavailable)`` whenever one of ``instances``
    becomes unavailable or available again (``unavailable`` lists those that are now),
    and at once if one already is."""
    names = frozenset(name for name in instances if name is not None)
    entry = (names, on_change)
    with _lock:
        _watchers.append(entry)
    try:
        down = unavailable(names)
        if down:
            on_change(down)
        yield
    finally:
        with _lock:
            _watchers.remove(entry)
