"""Connection slots leased from PostgreSQL: an instance's ``max_connections`` holds
across the cluster (one host uses a plain semaphore instead: ``handlers/limits.py``).

An instance has ``max_connections`` rows in ``slot_leases``; a host calls it only on
slots whose lease it holds (``owner``, ``expires_at`` by the server's clock). One
``SlotBroker`` per process talks to PostgreSQL, from its own thread, in one short
transaction per tick, never per HTTP call. Each tick:

1. publishes what this process wants of each instance (``slot_demand``: its calls in
   flight plus waiting, at their peak since the last tick);
2. reads every live broker's demand and computes the fair shares (``fair_shares``);
3. gives back the slots it no longer needs: idle ones, and those over its share;
4. renews every lease it keeps, in one statement;
5. leases free or expired rows in bulk, up to what it wants within its share.

Ticks come every third of a lease while nothing changes, every ``poll`` seconds while
some broker holds fewer slots than it wants within its share (slots are about to move),
and at once (but never closer than ``poll``) when a local call has to wait or a slot
falls idle over the share. Locally, an instance's leases are handed out like a
semaphore (``InstanceSlots``), so ``daemon.retry.holding`` gives a slot back during a
retry wait.

What it guarantees. A slot is handed out only while the last good tick *started* less
than half a lease ago and no tick has failed since. The server dated the leases from a
later moment, so every call starts at least half a lease before its lease can expire.
A failed tick (PostgreSQL gone, the connection terminated) stops the hand-outs at once;
the broker retries with backoff, and forgets its leases a quarter of a lease before
they can expire. Calls in flight finish: nothing can recall them, so a call longer than
half a lease, started just before PostgreSQL was lost, can overlap a call that another
host makes on the same slot once the lease has expired.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from loguru import logger
from psycopg_pool import ConnectionPool

from daemon.cluster.slot_local import Gate, InstanceSlots, SlotState, Timing, fair_shares

__all__ = ["Demand", "InstanceSlots", "SlotBroker", "SlotState", "fair_shares"]

# --- the statements: every time is the server's (now()) ----------------------------

LEASE = "now() + make_interval(secs => %(lease)s)"

# A tick cut off mid-transaction (a network that drops everything) must not keep its
# rows locked until the server notices the dead client: the server ends such a session
# after a third of a lease, and no statement waits that long for a lock.
BOUND_TICK = """
SELECT set_config('idle_in_transaction_session_timeout', %(bound)s, true),
       set_config('lock_timeout', %(bound)s, true)"""

ENSURE_ROWS = """
INSERT INTO slot_leases (instance, slot)
SELECT %(instance)s, n FROM generate_series(0, %(limit)s - 1) AS n
ON CONFLICT DO NOTHING"""

PUBLISH = f"""
INSERT INTO slot_demand (instance, owner, host_id, wanted, expires_at)
SELECT d.instance, %(owner)s, %(host)s, d.wanted, {LEASE}
FROM unnest(%(names)s::text[], %(wanted)s::int[]) AS d(instance, wanted)
ON CONFLICT (instance, owner)
DO UPDATE SET wanted = EXCLUDED.wanted, expires_at = EXCLUDED.expires_at"""

DEMANDS = """
SELECT d.instance, d.owner, d.wanted,
       (SELECT count(*) FROM slot_leases l
        WHERE l.instance = d.instance AND l.owner = d.owner AND l.expires_at > now()),
       floor(extract(epoch FROM now()) / %(lease)s)::bigint
FROM slot_demand d
WHERE d.instance = ANY(%(names)s) AND d.expires_at > now()"""

GIVE_BACK = """
UPDATE slot_leases SET owner = NULL, host_id = NULL, expires_at = NULL
WHERE owner = %(owner)s AND instance = %(instance)s AND slot = ANY(%(slots)s)"""

GIVE_ALL_BACK = """
UPDATE slot_leases SET owner = NULL, host_id = NULL, expires_at = NULL
WHERE owner = %(owner)s"""

RENEW = f"""
UPDATE slot_leases SET expires_at = {LEASE}
WHERE owner = %(owner)s AND expires_at > now()
RETURNING instance, slot"""

# Free rows, and rows whose lease expired; SKIP LOCKED: never wait for another broker.
TAKE = f"""
UPDATE slot_leases AS s SET owner = %(owner)s, host_id = %(host)s, expires_at = {LEASE}
FROM (SELECT slot FROM slot_leases
      WHERE instance = %(instance)s AND slot < %(limit)s
        AND (owner IS NULL OR expires_at <= now())
      ORDER BY slot LIMIT %(count)s FOR UPDATE SKIP LOCKED) AS free
WHERE s.instance = %(instance)s AND s.slot = free.slot
RETURNING s.slot"""


@dataclass
class Demand:
    """Every live broker's demand and leases, by instance then owner, as one tick read
    them; ``rotation`` turns the uneven part of the fair shares (``fair_shares``)."""

    wanted: dict[str, dict[str, int]] = field(default_factory=dict)
    held: dict[str, dict[str, int]] = field(default_factory=dict)
    rotation: int = 0

    def shares(self, instance: str, limit: int) -> dict[str, int]:
        return fair_shares(limit, self.wanted.get(instance, {}), self.rotation)

    def short(self, instance: str, limit: int, held: Mapping[str, int]) -> bool:
        """Whether some broker holds fewer slots of ``instance`` than it wants within
        its share (then slots are about to move: time to tick often). ``held``: what
        this tick knows better than ``self.held`` (this broker's own leases)."""
        wanted = self.wanted.get(instance, {})
        leased = {**self.held.get(instance, {}), **held}
        return any(leased.get(owner, 0) < min(count, wanted[owner])
                   for owner, count in self.shares(instance, limit).items())


class SlotBroker:
    """This process's connection slots in cluster mode. ``slots(name, limit)`` is the
    semaphore of an instance; the broker's thread leases, renews and gives back the
    rows behind it (see the module docstring). ``start()`` before use, ``close()`` at
    the end (it gives every lease back: call it once no call is in flight).

    ``pool``: PostgreSQL connections in autocommit (``daemon.store.pg.open_pool``);
    best a small pool of its own, so that a tick never waits behind other work."""

    def __init__(self, pool: ConnectionPool[Any], host_id: str, lease_seconds: float = 10.0,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.host_id = host_id
        self.owner = f"{host_id}:{uuid.uuid4().hex[:8]}"  # per process: a restart is new
        self.timing = Timing(lease_seconds)
        self._gate = Gate(clock)
        self._instances: dict[str, InstanceSlots] = {}
        self._rows: set[tuple[str, int]] = set()  # (instance, limit) whose rows exist
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._forget_at = float("-inf")
        self._failures = 0

    def start(self) -> SlotBroker:
        self._thread = threading.Thread(target=self._run, name="slot-broker", daemon=True)
        self._thread.start()
        return self

    def slots(self, instance: str, limit: int) -> InstanceSlots:
        """The slots of ``instance`` (``limit``: its ``max_connections``, the same on
        every host)."""
        with self._gate.lock:
            found = self._instances.get(instance)
            if found is None:
                found = self._instances[instance] = InstanceSlots(instance, limit, self._gate)
            found.limit = limit
            return found

    def is_open(self) -> bool:
        """Whether slots are handed out now (PostgreSQL answered lately)."""
        with self._gate.lock:
            return self._gate.is_open()

    def states(self) -> dict[str, SlotState]:
        """Each instance's slots on this host."""
        with self._gate.lock:
            instances = list(self._instances.values())
        return {slots.name: slots.state() for slots in instances}

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread, wake every waiting call (``Interrupted``) and give every
        lease and demand of this process back (best effort: they expire anyway).
        Returns within about ``timeout`` seconds, whether PostgreSQL answers or not."""
        with self._gate.lock:
            self._gate.closed = True
        self._stop.set()
        self._gate.wake.set()
        if self._thread is not None:
            self._thread.join(timeout / 2)
        giver = threading.Thread(target=self._give_all_back, args=(timeout / 2,),
                                 name="slot-broker-close", daemon=True)
        giver.start()
        giver.join(timeout / 2)
        if giver.is_alive():
            logger.warning("connection slots: PostgreSQL did not answer; the leases "
                           "expire within {:.0f}s", self.timing.lease)

    def _give_all_back(self, timeout: float) -> None:
        try:
            with self.pool.connection(timeout=timeout) as conn, conn.transaction():
                conn.execute(GIVE_ALL_BACK, {"owner": self.owner})
                conn.execute("DELETE FROM slot_demand WHERE owner = %s", (self.owner,))
        except psycopg.Error as exc:
            logger.warning("connection slots: could not give the leases back ({}); they "
                           "expire within {:.0f}s", exc, self.timing.lease)

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._forget_if_due()
            self._gate.wake.clear()
            started = self._gate.clock()
            try:
                busy = self._tick(started)
            except Exception as exc:  # noqa: BLE001 - any failure closes the hand-outs
                self._failed(exc)
                self._back_off()
                continue
            self._recovered()
            self._stop.wait(self.timing.poll)
            if not busy:
                rest = self.timing.renew_every - (self._gate.clock() - started)
                self._gate.wake.wait(max(0.0, rest))

    def _tick(self, started: float) -> bool:
        """One exchange with PostgreSQL; returns whether some broker (this one or
        another) holds fewer slots than it wants within its share: slots are about to
        move, so the next tick comes soon."""
        with self._gate.lock:
            instances = list(self._instances.values())
        if not instances:
            return False
        wanted = {slots.name: slots.take_demand() for slots in instances}
        with self.pool.connection(timeout=self.timing.renew_every) as conn, \
                conn.transaction():
            conn.execute(BOUND_TICK, {"bound": f"{round(self.timing.renew_every * 1000)}ms"})
            created = self._ensure_rows(conn, instances)
            demand = self._publish(conn, wanted)
            shares = {s.name: demand.shares(s.name, s.limit).get(self.owner, 0)
                      for s in instances}
            for slots in instances:
                extra = slots.shrink(shares[slots.name], wanted[slots.name])
                self._give_back(conn, slots, extra)
            held = self._renew(conn, instances)
            for slots in instances:
                more = min(shares[slots.name], wanted[slots.name]) - len(held[slots.name])
                if more > 0:
                    held[slots.name] |= self._take(conn, slots, more)
        self._rows |= created
        self._settle(instances, held, shares, started)
        return any(demand.short(s.name, s.limit, {self.owner: len(held[s.name])})
                   for s in instances)

    def _ensure_rows(self, conn: psycopg.Connection[Any],
                     instances: list[InstanceSlots]) -> set[tuple[str, int]]:
        """Create the slot rows of instances new to this broker; returns them, to be
        remembered once the transaction has committed."""
        new = {(s.name, s.limit) for s in instances} - self._rows
        for name, limit in sorted(new):
            conn.execute(ENSURE_ROWS, {"instance": name, "limit": limit})
        return new

    def _publish(self, conn: psycopg.Connection[Any], wanted: dict[str, int]) -> Demand:
        """Publish this broker's demand; read every live broker's."""
        names = list(wanted)
        params = {"owner": self.owner, "host": self.host_id, "lease": self.timing.lease,
                  "names": names, "wanted": [wanted[n] for n in names]}
        conn.execute(PUBLISH, params)
        demand = Demand()
        for instance, owner, count, leased, rotation in conn.execute(DEMANDS, params):
            demand.wanted.setdefault(instance, {})[owner] = count
            demand.held.setdefault(instance, {})[owner] = leased
            demand.rotation = rotation
        return demand

    def _give_back(self, conn: psycopg.Connection[Any], slots: InstanceSlots,
                   numbers: list[int]) -> None:
        if numbers:
            conn.execute(GIVE_BACK, {"owner": self.owner, "instance": slots.name,
                                     "slots": numbers})

    def _renew(self, conn: psycopg.Connection[Any], instances: list[InstanceSlots]
               ) -> dict[str, set[int]]:
        held: dict[str, set[int]] = {slots.name: set() for slots in instances}
        params = {"owner": self.owner, "lease": self.timing.lease}
        for instance, slot in conn.execute(RENEW, params):
            held.setdefault(instance, set()).add(slot)
        return held

    def _take(self, conn: psycopg.Connection[Any], slots: InstanceSlots, count: int
              ) -> set[int]:
        params = {"owner": self.owner, "host": self.host_id, "lease": self.timing.lease,
                  "instance": slots.name, "limit": slots.limit, "count": count}
        return {row[0] for row in conn.execute(TAKE, params)}

    def _settle(self, instances: list[InstanceSlots], held: dict[str, set[int]],
                shares: dict[str, int], started: float) -> None:
        """After a good tick: the new leases, valid from ``started`` (before the server
        dated them)."""
        with self._gate.lock:
            self._gate.open_until = started + self.timing.open_for
        self._forget_at = started + self.timing.keep_for
        for slots in instances:
            lost = slots.grant(held[slots.name], shares[slots.name])
            if lost:
                logger.warning("connection slots of {}: leases {} were lost (this host "
                               "did not renew them in time)", slots.name, sorted(lost))

    def _failed(self, exc: BaseException) -> None:
        with self._gate.lock:
            self._gate.open_until = float("-inf")  # no new call until a tick succeeds
        self._failures += 1
        if self._failures == 1:
            logger.warning("connection slots: PostgreSQL failed ({}: {}); no new calls "
                           "until it answers", type(exc).__name__, exc)

    def _back_off(self) -> None:
        """Wait before the next try, forgetting the leases on time meanwhile."""
        until = self._gate.clock() + self.timing.backoff(self._failures)
        if self._forget_at < until:
            self._stop.wait(max(0.0, self._forget_at - self._gate.clock()))
            self._forget_if_due()
        self._stop.wait(max(0.0, until - self._gate.clock()))

    def _recovered(self) -> None:
        if self._failures:
            logger.info("connection slots: PostgreSQL answers again")
        self._failures = 0

    def _forget_if_due(self) -> None:
        """Once the last good tick is too old, the leases may be gone: drop them."""
        if self._gate.clock() < self._forget_at:
            return
        with self._gate.lock:
            instances = list(self._instances.values())
        if sum(slots.forget() for slots in instances):
            logger.warning("connection slots: leases treated as lost (PostgreSQL has not "
                           "answered for {:.1f}s)", self.timing.keep_for)

