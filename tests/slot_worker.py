"""One host of the cluster slot tests (``test_slots_cluster.py``), as a real process.

It installs a ``SlotBroker`` of its own (host ID ``--host``, the DSN from
``SLOT_TEST_DSN``) in ``handlers.limits``, then ``--threads`` threads call ``--url``
through ``limits.connection`` until SIGTERM. Each call is appended to ``--out`` as
``<start> <end>`` (wall clock, taken inside the slot) as soon as it ends, so a killed
host's calls are on disk too.

    python tests/slot_worker.py --host a --url URL --out FILE [--instance NAME]
        [--limit 4] [--threads 4] [--lease 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

import requests

from daemon import retry
from daemon.cluster.slots import SlotBroker
from daemon.errors import Interrupted
from daemon.store.pg import open_pool
from handlers import limits


@dataclass(frozen=True, eq=False)
class Target:
    """What ``limits.connection`` needs of an instance."""

    name: str
    max_connections: int


def call_loop(target: Any, url: str, out: TextIO, lock: threading.Lock) -> None:
    session = requests.Session()
    while not retry.STOPPING.is_set():
        try:
            with limits.connection(target):
                start = time.time()
                session.get(url, timeout=30)
                end = time.time()
        except Interrupted:
            return
        with lock:
            out.write(f"{start:.6f} {end:.6f}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--instance", default="platform")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lease", type=float, default=3.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: retry.STOPPING.set())

    pool = open_pool(os.environ["SLOT_TEST_DSN"], max_size=2, name=f"slots-{args.host}")
    broker = SlotBroker(pool, args.host, args.lease).start()
    limits.use_broker(broker)
    target = Target(args.instance, args.limit)
    lock = threading.Lock()
    with open(args.out, "a", buffering=1, encoding="utf-8") as out:
        threads = [threading.Thread(target=call_loop, args=(target, args.url, out, lock))
                   for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        retry.STOPPING.wait()
        for thread in threads:
            thread.join()
    limits.use_broker(None)
    broker.close()
    pool.close()


if __name__ == "__main__":
    main()
