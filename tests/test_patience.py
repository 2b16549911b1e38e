"""Patience with transient failures (issue 11, SPEC §10), in-process and fast:

1. the backoff: capped, fully jittered, at least ``Retry-After``, bounded by a deadline
   in time rather than by a number of tries (an injected clock and sleep);
2. a retry's wait gives back the caller's connection slot;
3. the breaker of ``daemon.outage``: its state machine (an injected clock), probes,
   waiting calls, ``OutageError``, and a policy that waits for its instance instead of
   giving up.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from daemon import outage, retry
from daemon.errors import FatalError, Interrupted, PermanentError, TransientError
from daemon.outage import Breaker, Health, OutageError, Ticket
from daemon.retry import RetryPolicy, holding


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    retry.STOPPING.clear()
    outage.reset()
    yield
    retry.STOPPING.clear()
    outage.reset()


class Clock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Failing:
    """Raises ``error`` ``times`` times (forever if None), then returns "ok"; each call
    takes ``cost`` seconds on ``clock``."""

    def __init__(self, error: BaseException, times: int | None = None,
                 clock: Clock | None = None, cost: float = 0.0) -> None:
        self.error, self.times, self.clock, self.cost = error, times, clock, cost
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost
        if self.times is None or self.calls <= self.times:
            raise self.error
        return "ok"


# --- 1. backoff ----------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=8.0)
    random.seed(5)
    for attempt, bound in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0),
                           (40, 8.0), (5000, 8.0)]:
        waits = [policy.wait_for(attempt, TransientError("x")) for _ in range(400)]
        assert all(0.0 <= w <= bound for w in waits), (attempt, max(waits))
        # Full jitter: the whole range is used, not a fixed delay plus a little noise.
        assert min(waits) < 0.1 * bound and max(waits) > 0.9 * bound, attempt


def test_retry_after_is_the_least_wait_even_above_the_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=2.0)
    for attempt in (1, 3, 10):
        assert policy.wait_for(attempt, TransientError("busy", retry_after=7.5)) >= 7.5
    clock = Clock()
    fn = Failing(TransientError("busy", retry_after=4.0), times=2)
    RetryPolicy(base=0.1, cap=0.2, clock=clock, sleep=clock.sleep).call(fn, "thing")
    assert fn.calls == 3 and clock.sleeps == [4.0, 4.0]


def test_patience_is_bounded_by_time_not_by_a_handful_of_tries() -> None:
    clock = Clock()
    fn = Failing(TransientError("down"), clock=clock, cost=0.5)
    policy = RetryPolicy(max_seconds=120.0, base=0.5, cap=8.0, clock=clock,
                         sleep=clock.sleep)
    assert policy.attempts is None  # no try bound unless an instance sets one
    random.seed(1)
    start = clock.now
    with pytest.raises(TransientError, match="down"):
        policy.call(fn, "thing")
    spent = clock.now - start
    # Far more than the old six tries, all within the deadline; it gave up only because
    # the next wait (at most the cap) would have crossed it.
    assert fn.calls > 20, fn.calls
    assert spent <= 120.0 and spent > 120.0 - 8.0 - 0.5, spent
    assert max(clock.sleeps) <= 8.0


def test_a_wait_that_would_cross_the_deadline_is_not_started() -> None:
    clock = Clock()
    fn = Failing(TransientError("busy", retry_after=100.0))
    with pytest.raises(TransientError):
        RetryPolicy(max_seconds=50.0, clock=clock, sleep=clock.sleep).call(fn, "thing")
    assert fn.calls == 1 and clock.sleeps == []


def test_an_attempt_bound_still_applies_when_set() -> None:
    clock = Clock()
    fn = Failing(TransientError("down"))
    with pytest.raises(TransientError):
        RetryPolicy(attempts=3, max_seconds=1e6, clock=clock, sleep=clock.sleep).call(
            fn, "thing")
    assert fn.calls == 3


def test_success_after_many_transient_failures() -> None:
    clock = Clock()
    fn = Failing(TransientError("flaky"), times=15)
    policy = RetryPolicy(max_seconds=300.0, base=0.5, cap=4.0, clock=clock,
                         sleep=clock.sleep)
    assert policy.call(fn, "thing") == "ok" and fn.calls == 16


# --- 2. slots ------------------------------------------------------------------------


def test_a_retry_wait_gives_the_connection_slot_back() -> None:
    slot = threading.BoundedSemaphore(1)
    free_while_sleeping: list[bool] = []

    def sleep(_: float) -> None:
        got = slot.acquire(blocking=False)  # another worker could take it now
        free_while_sleeping.append(got)
        if got:
            slot.release()

    with holding(slot):
        RetryPolicy(base=0.01, cap=0.01, sleep=sleep).call(
            Failing(TransientError("x"), times=2), "thing")
        assert not slot.acquire(blocking=False)  # held again after the waits
    assert free_while_sleeping == [True, True]
    assert slot.acquire(blocking=False)  # and given back at the end of the block


def test_a_call_under_a_lock_that_slot_holders_wait_for_keeps_its_slot() -> None:
    """The login case: one thread logs in under a lock, holding a slot; others hold
    slots and wait for that lock. Giving the slot back during the login's retry waits
    would let them take every slot, and the login could never take its own back."""
    slot, lock = threading.BoundedSemaphore(1), threading.Lock()
    sleeping, finished = threading.Event(), []

    def sleep(_: float) -> None:
        sleeping.set()
        time.sleep(0.3)  # meanwhile the other worker tries to take the slot

    def login() -> None:
        with holding(slot), lock:
            RetryPolicy(sleep=sleep).call(Failing(TransientError("503"), times=2), "log in",
                                          keep_slots=True)
        finished.append("login")

    def other() -> None:
        sleeping.wait(5)
        with holding(slot), lock:
            finished.append("other")

    threads = [threading.Thread(target=login), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert finished == ["login", "other"]


# --- 3. the breaker ------------------------------------------------------------------


def test_breaker_opens_after_outage_after_of_failures_only() -> None:
    clock = Clock()
    changes: list[bool] = []
    b = Breaker("prod", outage_after=60, outage_seconds=600, clock=clock,
                on_change=lambda br: changes.append(br.unavailable))
    b.record(Ticket(), TransientError("HTTP 503"))
    clock.now += 59
    b.record(Ticket(), TransientError("HTTP 502"))
    assert not b.unavailable and b.health().available
    b.record(Ticket(), None)  # one answer: the streak starts again
    clock.now += 30
    b.record(Ticket(), TransientError("HTTP 503"))
    clock.now += 59.9
    b.record(Ticket(), TransientError("HTTP 503"))
    assert not b.unavailable and changes == []
    clock.now += 0.2
    b.record(Ticket(), TransientError("reset: Token s3cr3t-value"))
    health = b.health()
    assert b.unavailable and not health.available and changes == [True]
    assert health.since is not None and health.last_error is not None
    assert "instance prod unavailable since" in health.reason()
    assert "last error: reset" in health.reason()
    # An answer, even an error answer, closes it.
    b.record(Ticket(probe=True), PermanentError("HTTP 404"))
    assert not b.unavailable and changes == [True, False]
    assert b.health() == Health("prod", True)


def test_breaker_ignores_what_says_nothing_about_the_instance() -> None:
    clock = Clock()
    b = Breaker("prod", outage_after=1, outage_seconds=600, clock=clock)
    b.record(Ticket(), TransientError("x"))
    clock.now += 2
    b.record(Ticket(), TransientError("x"))
    assert b.unavailable
    for error in (Interrupted("stop"), ValueError("bug"), OutageError("waited")):
        b.record(Ticket(), error)
        assert b.unavailable
    b.record(Ticket(), FatalError("login refused"))  # an answer
    assert not b.unavailable


def open_breaker(outage_seconds: float = 5.0) -> Breaker:
    b = outage.breaker("prod", outage_after=0.01, outage_seconds=outage_seconds,
                       probe_cap=0.05)
    b.record(Ticket(), TransientError("HTTP 503"))
    time.sleep(0.02)
    b.record(Ticket(), TransientError("HTTP 503"))
    assert b.unavailable
    return b


def test_one_probe_at_a_time_and_an_answer_releases_every_waiting_call() -> None:
    b = open_breaker()
    probe = b.admit()  # the first probe is due within PROBE_BASE
    assert probe.probe
    tickets: list[Ticket] = []
    waiters = [threading.Thread(target=lambda: tickets.append(b.admit())) for _ in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.3)
    assert tickets == [] and b.health().waiting == 3  # no second probe while one is out
    b.record(probe, None)
    for t in waiters:
        t.join(5)
    assert len(tickets) == 3 and not any(t.probe for t in tickets)
    assert all(t.waited > 0.2 for t in tickets)


def test_a_call_inside_the_probe_goes_through() -> None:
    """A fetch that is the probe logs in first: the login is part of the probe."""
    b = open_breaker(outage_seconds=0.3)
    outer = b.admit()
    time.sleep(0.4)  # the outage is old now: other calls give up at once
    inner = b.admit()
    assert outer.probe and inner.probe
    with pytest.raises(OutageError):
        threading_result(lambda: b.admit())
    b.record(inner, None)
    assert not b.unavailable


def threading_result(fn: Callable[[], object]) -> object:
    """``fn()`` on another thread; its error re-raised here."""
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(5)
    if errors:
        raise errors[0]
    return out[0]


def test_a_failed_probe_schedules_the_next_with_backoff() -> None:
    b = open_breaker()
    first = b.admit()
    b.record(first, TransientError("HTTP 503"))
    second = b.admit()
    assert second.probe and b.unavailable
    b.record(second, None)
    assert not b.unavailable


def test_calls_give_up_together_once_the_outage_is_outage_seconds_old() -> None:
    b = open_breaker(outage_seconds=0.6)
    probe = b.admit()  # out, and never answers
    start = time.monotonic()
    with pytest.raises(OutageError, match="instance prod unavailable since") as caught:
        threading_result(b.admit)
    assert 0.4 < time.monotonic() - start < 3.0
    assert isinstance(caught.value, FatalError) and caught.value.transient
    assert "retry.outage_seconds" in str(caught.value)
    # A call that comes later fails at once, without waiting another outage_seconds...
    start = time.monotonic()
    with pytest.raises(OutageError):
        threading_result(b.admit)
    assert time.monotonic() - start < 0.2
    # ... but with no probe out, a call that has not probed yet waits for its turn and
    # probes once (a rerun meeting an old outage), so the instance can be found back.
    b.record(probe, TransientError("HTTP 503"))
    late_probe = b.admit()
    assert late_probe.probe
    b.record(late_probe, TransientError("HTTP 503"))
    with pytest.raises(OutageError):
        b.admit(probed=True)  # it probed: now it gives up
    again = b.admit()
    assert again.probe
    b.record(again, None)
    assert not b.unavailable and b.admit() == Ticket()


def test_stopping_interrupts_a_waiting_call() -> None:
    b = open_breaker()
    b.admit()  # the probe, out
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(Interrupted):
        threading_result(lambda: b.admit(stop))


def test_a_policy_waits_for_its_instance_instead_of_giving_up() -> None:
    """max_seconds is 0.3 s, the outage lasts 1.5 s: the call still succeeds."""
    b = outage.breaker("prod", outage_after=0.1, outage_seconds=10, probe_cap=0.2)
    policy = RetryPolicy(max_seconds=0.3, base=0.01, cap=0.05, breaker=b)
    until = time.monotonic() + 1.5
    calls = 0

    def fn() -> str:
        nonlocal calls
        calls += 1
        if time.monotonic() < until:
            raise TransientError("HTTP 503")
        return "ok"

    seen_down: list[list[Health]] = []
    with outage.watch(["prod", None], seen_down.append):
        assert policy.call(fn, "fetch") == "ok"
    assert [bool(down) for down in seen_down] == [True, False]
    assert seen_down[0][0].instance == "prod"
    assert [h.available for h in outage.health()] == [True]
    # While it was down, calls went out as probes only, not as a busy loop.
    assert calls < 40, calls


def test_a_policy_raises_outage_error_past_outage_seconds() -> None:
    b = outage.breaker("prod", outage_after=0.05, outage_seconds=0.5, probe_cap=0.1)
    policy = RetryPolicy(max_seconds=0.1, base=0.01, cap=0.02, breaker=b)
    with pytest.raises(OutageError):
        policy.call(Failing(TransientError("HTTP 503")), "fetch")
