"""The cluster schema: created and migrated by the daemon, once however many hosts
start together."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from daemon.store import pg
from tests import pg as testpg


@pytest.fixture
def dsn() -> Iterator[str]:
    testpg.require_admin_dsn()
    dsn = testpg.create_database("store")
    yield dsn
    testpg.drop_database(dsn)


def _connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def test_migrate_creates_every_table_and_records_each_version(dsn: str) -> None:
    with _connect(dsn) as conn:
        applied = pg.migrate(conn)
        assert applied[0] == "procrastinate"
        assert applied[1:] == [m.name for m in pg.migrations()]
        assert pg.schema_version(conn) == pg.migrations()[-1].version
        for table in ("requests", "hosts", "batches", "procrastinate_jobs"):
            row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            assert row is not None and row[0] is not None, table


def test_migrate_again_applies_nothing(dsn: str) -> None:
    with _connect(dsn) as conn:
        pg.migrate(conn)
        assert pg.migrate(conn) == []


def test_hosts_starting_together_apply_each_migration_once(dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with _connect(dsn) as conn:
                results.append(pg.migrate(conn))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results)[:-1] == [0, 0, 0]
    assert max(results, key=len)[0] == "procrastinate"


def test_a_fresh_database_has_no_version(dsn: str) -> None:
    with _connect(dsn) as conn:
        assert pg.schema_version(conn) is None


def test_the_dsn_and_its_password_are_masked_wherever_they_are_quoted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.config import ClusterConfig
    from daemon.redact import redact

    dsn = "host=db.example.net dbname=scanrelay user=sr password=Sekr3t-DSN-pass"
    monkeypatch.setenv("SCANRELAY_TEST_CLUSTER_DSN", dsn)
    cluster = ClusterConfig(host_id="a", dsn_env="SCANRELAY_TEST_CLUSTER_DSN")
    assert pg.dsn_of(cluster) == dsn
    said = redact(f"connection failed: {dsn}; again with password Sekr3t-DSN-pass")
    assert "Sekr3t-DSN-pass" not in said and "db.example.net" not in said, said
