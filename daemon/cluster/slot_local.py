"""How one process hands out the connection slots it leases (``daemon.cluster.slots``):
the local semaphore of each instance, the fair shares and the broker's cadence. No
database here: all of it is tested without one."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from daemon.errors import Interrupted
from daemon.retry import STOPPING

WAIT_STEP = 0.25  # seconds: how often a waiting call looks at STOPPING


# --- the pure parts -------------------------------------------------------------------


def fair_shares(limit: int, wanted: Mapping[str, int], rotation: int = 0) -> dict[str, int]:
    """Split ``limit`` slots among owners by what each wants (max-min fair): nobody gets
    more than it wants, nobody gets a second slot while another that wants one has none
    and so on. The slots of an uneven split go round the owners (sorted) from
    ``rotation``: every host computes it from the server's clock, so all agree and over
    time nobody is favoured."""
    shares = dict.fromkeys(wanted, 0)
    owners = sorted(owner for owner, count in wanted.items() if count > 0)
    if not owners:
        return shares
    start = rotation % len(owners)
    order = owners[start:] + owners[:start]
    left = max(0, limit)
    while left > 0:
        hungry = [owner for owner in order if shares[owner] < wanted[owner]]
        if not hungry:
            break
        for owner in hungry[:left]:
            shares[owner] += 1
        left -= min(left, len(hungry))
    return shares


def slots_to_keep(in_use: int, wanted: int, share: int) -> int:
    """How many leases a broker keeps: what it wanted lately within its share, and
    never fewer than the calls in flight (a slot in use is never given back)."""
    return max(in_use, min(share, wanted))


@dataclass(frozen=True)
class Timing:
    """The broker's cadence, all from the lease length (seconds)."""

    lease: float

    @property
    def renew_every(self) -> float:
        """A tick at least this often."""
        return self.lease / 3

    @property
    def open_for(self) -> float:
        """Hand-outs stop this long after the start of the last good tick."""
        return self.lease / 2

    @property
    def keep_for(self) -> float:
        """Leases are forgotten this long after the start of the last good tick, a
        quarter of a lease before the server lets another host take them."""
        return self.lease * 3 / 4

    @property
    def poll(self) -> float:
        """The shortest time between two ticks (and their period while a broker waits)."""
        return min(0.25, self.lease / 8)

    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` failed ticks in a row: capped exponential, jittered
        so that the hosts of a cluster do not all come back in step."""
        return random.uniform(0.5, 1.0) * min(self.renew_every,
                                              self.poll * 2 ** min(failures - 1, 16))


# --- the local semaphore --------------------------------------------------------------


class Gate:
    """What the slots of every instance of one broker share: the lock, until when
    hand-outs are open (by the monotonic clock) and how to wake the broker's thread."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.open_until = float("-inf")
        self.closed = False
        self.wake = threading.Event()

    def is_open(self) -> bool:
        return not self.closed and self.clock() < self.open_until


@dataclass(frozen=True)
class SlotState:
    """One instance's slots on this host, for status and tests."""

    limit: int
    held: int
    share: int
    in_use: int
    waiting: int


class InstanceSlots:
    """The slots of one instance on this host (``daemon.retry.Slot``): a semaphore as
    large as the leases held, within this host's fair share, open only while the leases
    are known valid. ``acquire`` raises ``Interrupted`` when the daemon is stopping
    (``daemon.retry.STOPPING``) or the broker is closed before a slot comes."""

    def __init__(self, name: str, limit: int, gate: Gate) -> None:
        self.name = name
        self.limit = limit
        self._gate = gate
        self._cond = threading.Condition(gate.lock)
        self._held: set[int] = set()  # the slot numbers leased (written by the broker)
        self._share = 0  # this host's fair share (written by the broker)
        self._in_use = 0
        self._waiting = 0
        self._peak = 0  # most in use plus waiting since the broker last asked
        self._asked = False  # the broker was woken for more slots since its last tick

    def acquire(self) -> bool:
        with self._cond:
            self._waiting += 1
            try:
                self._peak = max(self._peak, self._in_use + self._waiting)
                while not self._grantable():
                    if STOPPING.is_set() or self._gate.closed:
                        raise Interrupted(f"stopped waiting for a connection slot of {self.name}")
                    self._ask()
                    self._cond.wait(WAIT_STEP)
                self._in_use += 1
            finally:
                self._waiting -= 1
            return True

    def release(self) -> None:
        with self._cond:
            self._in_use -= 1
            if self._waiting and self._grantable():
                self._cond.notify()
            elif len(self._held) > self._share:  # idle over the share: give it back soon
                self._gate.wake.set()

    def state(self) -> SlotState:
        with self._cond:
            return SlotState(self.limit, len(self._held), self._share, self._in_use,
                             self._waiting)

    # --- for the broker ---------------------------------------------------------------

    def take_demand(self) -> int:
        """What this host wanted since the last call (at most ``limit``); starts anew."""
        with self._cond:
            wanted = min(self.limit, self._peak)
            self._peak = self._in_use + self._waiting
            self._asked = False
            return wanted

    def shrink(self, share: int, wanted: int) -> list[int]:
        """Set the new ``share`` and stop handing out the leases beyond what to keep;
        returns their slot numbers, to give back."""
        with self._cond:
            self._share = share
            keep = slots_to_keep(self._in_use, wanted, share)
            extra = sorted(self._held)[keep:]
            self._held.difference_update(extra)
            return extra

    def grant(self, held: Iterable[int], share: int) -> set[int]:
        """The leases after a good tick; returns those it held and no longer has (a tick
        that stalled past their expiry finds them taken)."""
        with self._cond:
            new = set(held)
            lost = self._held - new
            self._held, self._share = new, share
            self._cond.notify_all()
            return lost

    def forget(self) -> int:
        """Drop every lease (they may have expired); returns how many there were."""
        with self._cond:
            count = len(self._held)
            self._held.clear()
            return count

    def held_slots(self) -> set[int]:
        with self._cond:
            return set(self._held)

    def _grantable(self) -> bool:
        return (self._gate.is_open()
                and self._in_use < min(len(self._held), self._share))

    def _ask(self) -> None:
        """Wake the broker once per tick when more leases would serve the waiting calls."""
        if not self._asked and len(self._held) < min(self.limit, self._in_use + self._waiting):
            self._asked = True
            self._gate.wake.set()
