"""Per-instance connection limits shared by every run of the process.

An instance's ``max_connections`` is the size of its HTTP pool. Holding a slot around
each call keeps all runs together within it, so a second run against the same instance
queues instead of opening connections the pool would discard. A retry's wait gives
the slot back (``daemon.retry.holding``): a call sleeping on a backoff or waiting for
an instance to come back holds no slot.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from daemon.instances.base import Instance
from daemon.retry import holding

_lock = threading.Lock()
_slots: weakref.WeakKeyDictionary[Instance, threading.BoundedSemaphore] = \
    weakref.WeakKeyDictionary()


def slots(instance: Instance) -> threading.BoundedSemaphore:
    """The semaphore of ``instance`` (created with ``max_connections`` slots)."""
    with _lock:
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
