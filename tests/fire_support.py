"""Shared by the cluster schedule tests: a migrated database, readers of what the hosts
recorded (``schedule_fires``, ``requests``, procrastinate's jobs), and libfaketime."""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pg
import psycopg
import pytest

from daemon.cluster.app import TASK_PLAN
from daemon.schedule.fires import request_name
from daemon.store.pg import migrate

FAKETIME_LIBRARY = "/usr/lib/*/faketime/libfaketimeMT.so.1"  # Debian's libfaketime


def migrated_database() -> Iterator[str]:
    """For a fixture: a fresh database with the cluster schema, dropped after."""
    dsn = pg.create_database("fires")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
        yield dsn
    finally:
        pg.drop_database(dsn)


def rows(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def fire_rows(dsn: str, job: str) -> list[tuple[Any, ...]]:
    """``(fire_time, status, claim_id, host_id, recorded_at, detail)`` in time order."""
    return rows(dsn, "SELECT fire_time, status, claim_id, host_id, recorded_at, detail "
                     "FROM schedule_fires WHERE schedule = %s ORDER BY fire_time", (job,))


def requests_by_name(dsn: str) -> Counter[str]:
    return Counter(name for (name,) in rows(dsn, "SELECT name FROM requests"))


def job_count(dsn: str) -> int:
    """The requests' first jobs deferred (a running cluster adds batches, sweeps)."""
    return int(rows(dsn, "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s",
                    (TASK_PLAN,))[0][0])


def db_now(dsn: str) -> datetime:
    value: datetime = rows(dsn, "SELECT now()")[0][0]
    return value


def assert_one_request_and_job_per_fire(dsn: str, schedules: dict[str, str], *,
                                        jobs: bool = True) -> None:
    """Every fired row of ``schedules`` (job → schedule name) has its one request,
    named as on one host, and (``jobs``: where no worker runs, which would delete them
    when done) one job; nothing else was enqueued."""
    fired = [(name, r) for job, name in schedules.items() for r in fire_rows(dsn, job)
             if r[1] == "fired"]
    assert requests_by_name(dsn) == Counter(request_name(name, r[0]) for name, r in fired)
    if jobs:
        assert job_count(dsn) == len(fired)
    claims = {claim for (claim,) in rows(dsn, "SELECT claim_id FROM requests")}
    assert claims == {r[2] for _, r in fired}


def faketime_env(shift_seconds: int) -> dict[str, str]:
    """The environment that runs a process with its clock ``shift_seconds`` ahead
    (libfaketime, preloaded; the monotonic clock stays real, for timeouts). Skips, or
    fails under ``CI=true``, without the library (Debian package ``faketime``)."""
    found = sorted(glob.glob(FAKETIME_LIBRARY))
    if not found:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on"):
            raise AssertionError("libfaketime is missing (Debian package faketime)")
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    return {"LD_PRELOAD": found[0], "FAKETIME": f"+{shift_seconds}s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
