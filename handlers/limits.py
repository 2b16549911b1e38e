"""Per-instance connection limits shared by every run of the process, or of the cluster.

An instance's ``max_connections`` is the size of its HTTP pool. Holding a slot around
each call keeps all runs together within it, so a second run against the same instance
queues instead of opening connections the pool would discard. A retry's wait gives
the slot back (``daemon.retry.holding``): a call sleeping on a backoff or waiting for
an instance to come back holds no slot.

One host: a semaphore per instance in this process. Cluster mode: the cluster service
installs its ``daemon.cluster.slots.SlotBroker`` with ``use_broker`` at start (and
``use_broker(None)`` at stop); slots are then leased from PostgreSQL, so the limit
holds across every host.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from daemon.instances.base import Instance
from daemon.retry import Slot, holding

if TYPE_CHECKING:
    from daemon.cluster.slots import SlotBroker

_lock = threading.Lock()
_slots: weakref.WeakKeyDictionary[Instance, threading.BoundedSemaphore] = \
    weakref.WeakKeyDictionary()
_broker: SlotBroker | None = None


def use_broker(broker: SlotBroker | None) -> None:
    """Lease slots through ``broker`` from now on (cluster mode); None: this process's
    semaphores again. Install it before any call starts, remove it after the last."""
    global _broker
    with _lock:
        _broker = broker


def slots(instance: Instance) -> Slot:
    """The slots of ``instance``: ``max_connections`` of them in this process, or in the
    cluster when a broker is installed."""
    with _lock:
        if _broker is not None:
            return _broker.slots(instance.name, max(1, instance.max_connections))
        sem = _slots.get(instance)
        if sem is None:
            sem = threading.BoundedSemaphore(max(1, instance.max_connections))
            _slots[instance] = sem
        return sem


@contextmanager
def connection(instance: Instance) -> Iterator[None]:
    """Hold one of ``instance``'s connection slots for the duration of the block (but
    for its retry waits)."""
    with holding(slots(instance)):
        yield
