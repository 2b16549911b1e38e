"""The cluster's connection slots without a database (``daemon.cluster.slot_local``):
the fair shares, the cadence, and the local semaphore the broker fills; plus
``handlers.limits`` choosing it and ``daemon.retry.holding`` giving it back during a
retry wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from daemon import retry
from daemon.cluster.slot_local import (
    Gate,
    InstanceSlots,
    SlotState,
    Timing,
    fair_shares,
    slots_to_keep,
)
from daemon.errors import Interrupted, TransientError
from daemon.retry import RetryPolicy, holding
from handlers import limits


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    retry.STOPPING.clear()
    yield
    retry.STOPPING.clear()
    limits.use_broker(None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_slots(held: int, share: int | None = None, limit: int = 4,
               clock: Callable[[], float] = time.monotonic) -> tuple[InstanceSlots, Gate]:
    """An instance's slots as a broker leaves them after a good tick."""
    gate = Gate(clock)
    gate.open_until = clock() + 60
    slots = InstanceSlots("inst", limit, gate)
    slots.grant(range(held), held if share is None else share)
    return slots, gate


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread; the list gets its result or its exception."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def blocked(thread: threading.Thread, seconds: float = 0.3) -> bool:
    thread.join(seconds)
    return thread.is_alive()


# --- fair shares -------------------------------------------------------------------


def test_an_even_split_when_everyone_wants_more_than_its_share() -> None:
    assert fair_shares(6, {"a": 6, "b": 6, "c": 6}) == {"a": 2, "b": 2, "c": 2}


def test_what_one_does_not_want_goes_to_the_others() -> None:
    assert fair_shares(8, {"a": 1, "b": 8, "c": 8}) == {"a": 1, "b": 4, "c": 3}
    assert fair_shares(4, {"a": 4, "b": 0}) == {"a": 4, "b": 0}
    assert fair_shares(4, {"a": 1, "b": 1}) == {"a": 1, "b": 1}
    assert fair_shares(4, {}) == {}


def test_nobody_gets_a_second_slot_while_another_has_none() -> None:
    assert sorted(fair_shares(2, {"a": 4, "b": 4, "c": 4}).values()) == [0, 1, 1]


def test_the_uneven_slot_goes_round_with_the_rotation() -> None:
    wanted = {"a": 4, "b": 4, "c": 4}
    turns = [fair_shares(4, wanted, rotation) for rotation in range(3)]
    assert all(sum(t.values()) == 4 and sorted(t.values()) == [1, 1, 2] for t in turns)
    assert {owner for t in turns for owner, share in t.items() if share == 2} == {"a", "b", "c"}
    assert fair_shares(4, wanted, 7) == fair_shares(4, wanted, 1)


def test_a_slot_in_use_is_never_given_back() -> None:
    assert slots_to_keep(in_use=3, wanted=4, share=1) == 3
    assert slots_to_keep(in_use=0, wanted=2, share=3) == 2
    assert slots_to_keep(in_use=1, wanted=4, share=2) == 2
    assert slots_to_keep(in_use=0, wanted=0, share=4) == 0


def test_the_cadence_stops_hand_outs_well_before_a_lease_can_expire() -> None:
    timing = Timing(9.0)
    assert timing.poll <= timing.renew_every < timing.open_for < timing.keep_for < timing.lease
    assert timing.open_for == 4.5 and timing.keep_for == 6.75
    waits = [timing.backoff(n) for n in range(1, 30)]
    assert all(0 < w <= timing.renew_every for w in waits)


# --- the local semaphore ------------------------------------------------------------


def test_a_call_waits_until_the_broker_grants_a_lease() -> None:
    slots, gate = open_slots(held=0)
    thread, out = in_thread(slots.acquire)
    assert blocked(thread)
    assert gate.wake.is_set()  # it asked the broker for a slot
    assert slots.state() == SlotState(limit=4, held=0, share=0, in_use=0, waiting=1)
    slots.grant([0], share=1)
    thread.join(2)
    assert out == [True]
    assert slots.state().in_use == 1


def test_hand_outs_stop_when_the_gate_closes_and_calls_in_flight_go_on() -> None:
    clock = Clock()
    slots, gate = open_slots(held=2, clock=clock)
    slots.acquire()  # in flight
    clock.now = gate.open_until  # the last good tick is too old now
    thread, _ = in_thread(slots.acquire)
    assert blocked(thread)
    slots.release()  # the call in flight ends normally
    assert blocked(thread, 0.1)
    gate.open_until = clock.now + 1  # a good tick again
    slots.grant([0, 1], share=2)
    thread.join(2)
    assert not thread.is_alive()


def test_no_more_calls_than_the_share_even_with_more_leases() -> None:
    slots, gate = open_slots(held=3, share=1)
    slots.acquire()
    thread, _ = in_thread(slots.acquire)
    assert blocked(thread)
    gate.wake.clear()
    # every lease beyond the one in use, at the share of 1, goes back
    assert slots.shrink(share=1, wanted=2) == [1, 2]
    slots.release()
    thread.join(2)
    assert not thread.is_alive()


def test_shrinking_keeps_the_calls_in_flight_and_the_lowest_slots() -> None:
    slots, gate = open_slots(held=4)
    for _ in range(3):
        slots.acquire()
    assert slots.shrink(share=1, wanted=4) == [3]
    assert slots.state().held == 3
    gate.wake.clear()
    slots.release()  # idle over its share: the broker is woken to give it back
    assert gate.wake.is_set()


def test_demand_is_the_peak_since_the_broker_last_asked() -> None:
    slots, _ = open_slots(held=2)
    slots.acquire()
    slots.acquire()
    waiting, _ = in_thread(slots.acquire)
    assert blocked(waiting)
    slots.release()
    waiting.join(2)
    slots.release()
    slots.release()
    assert slots.take_demand() == 3
    assert slots.take_demand() == 0  # nothing in use or waiting since
    big, _ = open_slots(held=0, limit=2)
    threads = [in_thread(big.acquire)[0] for _ in range(3)]
    assert blocked(threads[-1])
    assert big.take_demand() == 2  # never more than the instance's limit
    big.grant([0, 1], share=2)


def test_a_waiting_call_is_interrupted_when_the_daemon_stops() -> None:
    slots, _ = open_slots(held=0)
    thread, out = in_thread(slots.acquire)
    assert blocked(thread)
    retry.STOPPING.set()
    thread.join(2)
    assert len(out) == 1 and isinstance(out[0], Interrupted)
    assert slots.state().waiting == 0


def test_a_waiting_call_is_interrupted_when_the_broker_closes() -> None:
    slots, gate = open_slots(held=0)
    thread, out = in_thread(slots.acquire)
    assert blocked(thread)
    with gate.lock:
        gate.closed = True
    thread.join(2)
    assert len(out) == 1 and isinstance(out[0], Interrupted)


def test_forgotten_leases_hand_out_nothing() -> None:
    slots, _ = open_slots(held=2)
    assert slots.forget() == 2
    thread, _ = in_thread(slots.acquire)
    assert blocked(thread)
    slots.grant([0], share=1)
    thread.join(2)


# --- limits and retries with leased slots ----------------------------------------------


@dataclass(frozen=True, eq=False)
class Target:
    name: str
    max_connections: int


class FakeBroker:
    def __init__(self) -> None:
        self.slots_of, self.gate = open_slots(held=1)

    def slots(self, instance: str, limit: int) -> InstanceSlots:
        assert (instance, limit) == ("inst", 4)
        return self.slots_of


def test_limits_use_the_broker_once_installed_and_the_process_semaphore_after() -> None:
    target = Target("inst", 4)
    broker = FakeBroker()
    limits.use_broker(broker)  # type: ignore[arg-type]
    assert limits.slots(target) is broker.slots_of
    with limits.connection(target):
        assert broker.slots_of.state().in_use == 1
    assert broker.slots_of.state().in_use == 0
    limits.use_broker(None)
    assert isinstance(limits.slots(target), threading.BoundedSemaphore)


def test_a_retry_wait_gives_a_leased_slot_back() -> None:
    slots, _ = open_slots(held=1)
    in_use_while_sleeping: list[int] = []

    def sleep(_: float) -> None:
        in_use_while_sleeping.append(slots.state().in_use)

    with holding(slots):
        RetryPolicy(base=0.01, cap=0.01, sleep=sleep).call(_failing_twice(), "thing")
        assert slots.state().in_use == 1
    assert in_use_while_sleeping == [0, 0]
    assert slots.state().in_use == 0


def test_a_slot_not_taken_back_after_a_retry_wait_is_not_given_back_twice() -> None:
    slots, _ = open_slots(held=1)

    def sleep(_: float) -> None:
        retry.STOPPING.set()  # the daemon stops during the wait ...
        slots.forget()  # ... and no slot is free to take back

    with pytest.raises(Interrupted), holding(slots):
        RetryPolicy(base=0.01, cap=0.01, sleep=sleep).call(_failing_twice(), "thing")
    assert slots.state().in_use == 0  # not -1


def _failing_twice() -> Callable[[], str]:
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise TransientError("503")
        return "ok"
    return fn
