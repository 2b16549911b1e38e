"""The one retry policy of scanrelay, and the one place HTTP failures are classified.

- ``classify_response`` turns an HTTP answer into nothing (success) or an error:
  ``TransientError`` for 408, 429, 500, 502, 503, 504 (with ``Retry-After``),
  ``PermanentError`` for any other 4xx or 5xx, carrying the redacted body.
- ``classify_exception`` / ``translate_request_errors`` do the same for ``requests``
  exceptions: connection errors, timeouts and cut-off bodies are transient.
- ``RetryPolicy`` (and the ``retrying`` decorator) retry ``TransientError`` on
  ``tenacity.Retrying`` with capped exponential backoff and full jitter, sleep at least
  ``retry_after``, and stop at the time bound (and an attempt bound, if one is set);
  the last error is re-raised as is. A connection slot taken with ``holding`` is given
  back while a retry sleeps, and with a breaker (``daemon.outage``) tries wait while
  their instance is down.

Each retry is logged (with whatever the caller bound: ``logger.bind(run=..., item=...)``
passed as ``log``, or ``logger.contextualize(...)`` around the call) and reported to
the callbacks in ``RETRY_HOOKS`` (metrics count retries by cause there).

Setting ``STOPPING`` makes every retry sleep, now or later, raise ``Interrupted``: a
daemon shutting down does not wait out a long ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ParamSpec, Protocol, TypeVar

import requests
import tenacity
from loguru import logger as default_logger
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from daemon.errors import Interrupted, PermanentError, ScanrelayError, TransientError
from daemon.outage import Breaker, Ticket
from daemon.redact import redact

P = ParamSpec("P")
T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BODY_LIMIT = 2048

# Causes (``ClassifiedTransientError.cause``) after which the request surely did not
# reach the server's processing: safe to resend even a non-idempotent POST.
NOT_PROCESSED_CAUSES = frozenset({"connect", "http_408", "http_429", "http_503"})

STOPPING = threading.Event()


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen, as reported to ``RETRY_HOOKS``."""

    describe: str
    cause: str
    attempt: int
    wait: float


RETRY_HOOKS: list[Callable[[RetryEvent], None]] = []


class ClassifiedTransientError(TransientError):
    """A ``TransientError`` that knows its cause: ``connect`` (no connection was made),
    ``timeout`` (no answer in time), ``connection`` (reset or aborted after sending),
    ``incomplete`` (body cut off), ``truncated`` (fewer bytes than announced) or
    ``http_<status>``. Metrics count by it, and ``create_scan`` decides by it whether a
    resend is safe."""

    def __init__(self, message: str, cause: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.cause = cause


def cause_of(exc: BaseException | None) -> str:
    """A short label for why ``exc`` happened (``other`` when nothing says)."""
    if isinstance(exc, ClassifiedTransientError):
        return exc.cause
    return "other"


# --- classifying HTTP answers ------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date);
    None when absent or unreadable. Never negative. Raises nothing."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def response_excerpt(resp: requests.Response, secrets: Iterable[str | None] = (),
                     limit: int = BODY_LIMIT) -> str:
    """The start of the response body (at most ``limit`` bytes read, even from a
    streamed response), decoded leniently and redacted. Raises nothing."""
    data = b""
    try:
        for chunk in resp.iter_content(chunk_size=limit):
            data += chunk
            if len(data) >= limit:
                break
    except (requests.RequestException, RuntimeError):
        pass  # a body we cannot read adds nothing to an error already being raised
    text = data[:limit].decode(resp.encoding or "utf-8", errors="replace")
    if len(data) >= limit:
        text += " [...]"
    return redact(text.strip(), secrets)


def classify_response(resp: requests.Response, secrets: Iterable[str | None] = (),
                      what: str = "") -> None:
    """Return if ``resp`` succeeded (status below 400); otherwise raise.

    Raises ``ClassifiedTransientError`` (a ``TransientError``) for 408, 429, 500, 502,
    503 and 504, with ``retry_after`` from the header; ``PermanentError`` for every
    other status of 400 and above, with the body (truncated, secrets redacted)."""
    status = resp.status_code
    if status < 400:
        return
    prefix = f"{what}: " if what else ""
    reason = f"HTTP {status} {resp.reason or ''}".strip()
    body = response_excerpt(resp, secrets)
    message = f"{prefix}{reason}" + (f": {body}" if body else "")
    if status in TRANSIENT_STATUSES:
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        raise ClassifiedTransientError(message, f"http_{status}", retry_after=retry_after)
    raise PermanentError(message)


# --- classifying exceptions --------------------------------------------------------


def is_connect_failure(exc: BaseException) -> bool:
    """Whether ``exc`` happened before a connection existed, so nothing was sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, MaxRetryError):
            arg = arg.reason
        # NewConnectionError (refused, unreachable, DNS) subclasses ConnectTimeoutError
        if isinstance(arg, ConnectTimeoutError | NewConnectionError):
            return True
    return False


def classify_exception(exc: requests.RequestException, secrets: Iterable[str | None] = (),
                       what: str = "") -> ScanrelayError:
    """The scanrelay error for a ``requests`` exception (returned, not raised):
    transient for connection failures, timeouts and cut-off bodies; permanent for
    the rest (bad URL, too many redirects). The message is redacted."""
    prefix = f"{what}: " if what else ""
    text = redact(f"{type(exc).__name__}: {exc}", secrets)
    if is_connect_failure(exc):
        return ClassifiedTransientError(f"{prefix}cannot connect: {text}", "connect")
    if isinstance(exc, requests.Timeout):
        return ClassifiedTransientError(f"{prefix}timed out: {text}", "timeout")
    if isinstance(exc, requests.exceptions.ChunkedEncodingError
                  | requests.exceptions.ContentDecodingError):
        return ClassifiedTransientError(f"{prefix}body cut off: {text}", "incomplete")
    if isinstance(exc, requests.ConnectionError):
        return ClassifiedTransientError(f"{prefix}connection failed: {text}", "connection")
    return PermanentError(f"{prefix}{text}")


@contextlib.contextmanager
def translate_request_errors(secrets: Iterable[str | None] = (),
                             what: str = "") -> Iterator[None]:
    """Re-raise any ``requests`` exception inside the block as classified by
    ``classify_exception`` (chained to the original)."""
    try:
        yield
    except requests.RequestException as exc:
        raise classify_exception(exc, secrets, what) from exc


# --- retrying ----------------------------------------------------------------------


def interruptible_sleep(seconds: float) -> None:
    """Sleep, unless ``STOPPING`` is or becomes set: then raise ``Interrupted``."""
    if STOPPING.wait(seconds):
        raise Interrupted("shutting down during a retry wait")


class Slot(Protocol):
    """A connection slot: a ``threading.Semaphore`` on one host, the cluster's leased
    slots in cluster mode (``daemon.cluster.slots``). ``acquire`` blocks until a slot
    is free; it may raise (``Interrupted``), and then holds nothing."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class _Taken:
    """One slot a thread took with ``holding``, and whether it holds it right now."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.held = True


_held = threading.local()  # .slots: the _Taken of this thread, in order


@contextlib.contextmanager
def holding(slot: Slot) -> Iterator[None]:
    """Hold ``slot`` (a connection slot) for the block; every retry wait inside the
    block gives it back while it waits, so a sleeping retry never starves other work."""
    slot.acquire()
    taken = _Taken(slot)
    held: list[_Taken] = _held.__dict__.setdefault("slots", [])
    held.append(taken)
    try:
        yield
    finally:
        held.pop()
        if taken.held:
            slot.release()


@contextlib.contextmanager
def slots_released() -> Iterator[None]:
    """Give back this thread's slots for the block; take them again after it. A slot
    that cannot be taken again (its ``acquire`` raised) is not given back twice."""
    held: list[_Taken] = [t for t in getattr(_held, "slots", []) if t.held]
    for taken in reversed(held):
        taken.slot.release()
        taken.held = False
    try:
        yield
    finally:
        for taken in held:
            taken.slot.acquire()
            taken.held = True


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry ``TransientError`` until ``max_seconds`` have passed since the first try
    (a wait that would cross the bound is not started) and, if set, ``attempts`` tries.

    The wait before try n+1 is uniform in [0, min(cap, base * 2**(n-1))] (full jitter,
    so that many workers hit by one outage do not come back in step), and at least the
    error's ``retry_after``. With a ``breaker`` (``daemon.outage``), each try first
    passes ``breaker.admit`` and reports its outcome; while the instance is unavailable
    no try gives up, and the time spent waiting for it does not count."""

    attempts: int | None = None
    max_seconds: float = 300.0
    base: float = 0.5
    cap: float = 30.0
    sleep: Callable[[float], None] = interruptible_sleep
    clock: Callable[[], float] = time.monotonic
    breaker: Breaker | None = None

    def wait_for(self, attempt: int, exc: BaseException | None) -> float:
        """The wait after failed try number ``attempt`` (1-based) that raised ``exc``."""
        # (the exponent is capped too: a float cannot hold 2**1024)
        backoff = random.uniform(0.0, min(self.cap, self.base * 2 ** min(attempt - 1, 64)))
        retry_after = getattr(exc, "retry_after", None)
        return max(backoff, retry_after) if retry_after is not None else backoff

    def call(self, fn: Callable[[], T], describe: str, *, log: Any = None,
             retry_if: Callable[[BaseException], bool] = _is_transient,
             keep_slots: bool = False) -> T:
        """``fn()``, retried while it raises an error ``retry_if`` accepts (by default
        any ``TransientError``). Raises the last error once a bound is reached,
        whatever ``fn`` raises that is not retried, ``Interrupted`` when ``STOPPING``
        is set during a wait, and ``OutageError`` when the breaker's instance stays
        unavailable past its ``outage_seconds``. ``keep_slots``: hold this thread's
        connection slots through the waits too, for a call made under a lock that slot
        holders wait for (taking a slot back there could deadlock)."""
        one = _Call(self, describe, log if log is not None else default_logger, keep_slots)
        retryer = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry_if),
            wait=one.wait,
            stop=one.stop,
            before_sleep=one.before_sleep,
            sleep=one.sleep,
            reraise=True,  # the last error as is, not wrapped in a tenacity.RetryError
        )
        return retryer(one.attempt, fn)

    def exhausted(self, attempt: int, spent_after_wait: float) -> bool:
        """Whether try ``attempt`` is the last (``spent_after_wait``: seconds spent by
        the end of the next wait)."""
        if self.attempts is not None and attempt >= self.attempts:
            return True
        if self.breaker is not None and self.breaker.unavailable:
            return False  # the item waits for its instance instead of burning its patience
        return spent_after_wait >= self.max_seconds


class _Call:
    """One ``RetryPolicy.call``: what tenacity is told to do at each step, and the time
    the call has spent on its own (since its first try, less its waits for an
    unavailable instance). The time is kept here, on the policy's clock, because
    tenacity's own (``seconds_since_start``) can be neither injected nor paused. One
    per call: the policy itself is shared by threads and holds no state."""

    def __init__(self, policy: RetryPolicy, describe: str, log: Any, keep_slots: bool) -> None:
        self.policy, self.describe, self.log = policy, describe, log
        self.keep_slots = keep_slots
        self.start = policy.clock()
        self.paused = 0.0
        self.probed = False  # the last try was the breaker's probe

    def spent(self) -> float:
        return self.policy.clock() - self.start - self.paused

    def attempt(self, fn: Callable[[], T]) -> T:
        """One try of ``fn``, let through by the breaker and reported to it."""
        ticket = self._admit()
        self.paused += ticket.waited
        self.probed = ticket.probe
        try:
            result = fn()
        except BaseException as exc:
            self._record(ticket, exc)
            raise
        self._record(ticket, None)
        return result

    def wait(self, state: tenacity.RetryCallState) -> float:
        return self.policy.wait_for(state.attempt_number, _error(state))

    def stop(self, state: tenacity.RetryCallState) -> bool:
        """Whether to give up rather than wait ``upcoming_sleep`` (tenacity 8.3 and later
        compute the wait before asking); says so when it does."""
        if not self.policy.exhausted(state.attempt_number,
                                     self.spent() + state.upcoming_sleep):
            return False
        self.log.warning("giving up on {} after {} tries in {:.1f}s: {}", self.describe,
                         state.attempt_number, self.spent(), _error(state))
        return True

    def before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = _error(state)
        event = RetryEvent(self.describe, cause_of(exc), state.attempt_number,
                           state.upcoming_sleep)
        _report(event, self.policy.attempts, exc, self.log)

    def sleep(self, seconds: float) -> None:
        """The retry wait, without this thread's slots (unless ``keep_slots``)."""
        breaker = self.policy.breaker
        if breaker is not None and breaker.unavailable:
            self.paused += seconds  # a wait for the instance, not for this item
        with contextlib.nullcontext() if self.keep_slots else slots_released():
            self.policy.sleep(seconds)

    def _admit(self) -> Ticket:
        """Pass the breaker; while its instance is down, wait without this thread's
        slots (unless ``keep_slots``)."""
        breaker = self.policy.breaker
        if breaker is None:
            return Ticket()
        if self.keep_slots or not breaker.unavailable:
            return breaker.admit(STOPPING, self.probed)
        with slots_released():
            return breaker.admit(STOPPING, self.probed)

    def _record(self, ticket: Ticket, error: BaseException | None) -> None:
        if self.policy.breaker is not None:
            self.policy.breaker.record(ticket, error)


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    """The error of the try that just failed."""
    return state.outcome.exception() if state.outcome is not None else None


def _report(event: RetryEvent, attempts: int | None, exc: BaseException | None,
            log: Any) -> None:
    of = f"/{attempts}" if attempts is not None else ""
    log.warning("retrying {} in {:.1f}s (try {}{} failed, cause {}): {}", event.describe,
                event.wait, event.attempt, of, event.cause, exc)
    for hook in list(RETRY_HOOKS):
        try:
            hook(event)
        except Exception:  # a broken metrics hook must not break the transfer
            log.exception("retry hook {!r} failed", hook)


def retrying(attempts: int | None, max_seconds: float, describe: str = "", *,
             log: Any = None, retry_if: Callable[[BaseException], bool] = _is_transient,
             sleep: Callable[[float], None] = interruptible_sleep
             ) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of ``RetryPolicy(attempts, max_seconds).call`` (see there for
    what it raises); ``describe`` defaults to the function's name."""
    policy = RetryPolicy(attempts=attempts, max_seconds=max_seconds, sleep=sleep)

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return policy.call(lambda: fn(*args, **kwargs), describe or fn.__name__,
                               log=log, retry_if=retry_if)
        return wrapper
    return decorate
