"""One host's scheduler in cluster mode, as a process of its own (for the tests: several
of them, one perhaps under libfaketime, fire the same schedules).

    python cluster_fire_host.py <config.yml> <host_id> <seconds>

The DSN comes from the environment variable ``SCANRELAY_TEST_CLUSTER_DSN``. Prints one
JSON line first (``host``, ``local`` and ``db``: this process's clock and the server's,
epoch seconds), then runs the scheduler (``Scheduler(..., cluster=ClusterFires)``) for
``seconds`` or until SIGTERM, and exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from daemon.cluster.fires import ClusterFires
from daemon.config import load_config
from daemon.layout import Layout
from daemon.schedule.scheduler import Scheduler
from daemon.store.pg import open_pool

DSN_ENV = "SCANRELAY_TEST_CLUSTER_DSN"


def main(config_path: str, host_id: str, seconds: float) -> int:
    config = load_config(Path(config_path))
    layout = Layout(config.root)
    pool = open_pool(os.environ[DSN_ENV], max_size=3, name=host_id)
    try:
        with pool.connection() as conn:
            db = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()
        print(json.dumps({"host": host_id, "local": time.time(), "db": db[0] if db else None}),
              flush=True)
        fires = ClusterFires(pool, layout, host_id)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        scheduler = Scheduler(config, layout, None, stop, cluster=fires)
        scheduler.start()
        stop.wait(seconds)
        stop.set()
        scheduler.stop()
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
