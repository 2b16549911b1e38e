"""``open_stores`` picks the stores by the config, and the runner works on either: a
copy run with ``cluster:`` keeps its history, copy ledger and checkpoint records in
PostgreSQL (the same copy again is a skip, found there), and one host keeps SQLite."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from copy_support import copy_request
from helpers import DEMO_SCAN_IDS, make_root
from store_support import migrated_database

from daemon.config import Config, load_config
from daemon.instances.registry import Instances
from daemon.intake.claim import NO_PROFILE, Claimed, new_claim_id
from daemon.layout import Layout
from daemon.outcomes import RunStatus
from daemon.runner import Runner
from daemon.store.stores import Stores, open_stores, read_requests

DSN_ENV = "SCANRELAY_TEST_STORE_DSN"
SOURCE, TARGET, STORE = "demo-source", "demo-target", 77


@pytest.fixture
def cluster_db(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with migrated_database("open") as dsn:
        monkeypatch.setenv(DSN_ENV, dsn)
        yield dsn


def _kinds(stores: Stores) -> tuple[str, ...]:
    return tuple(type(s).__name__ for s in (stores.requests, stores.copies,
                                            stores.checkpoints))


def _config(tmp_path: Path, cluster: bool) -> Config:
    extra = {"cluster": {"dsn_env": DSN_ENV, "host_id": "h1"}} if cluster else {}
    root = make_root(tmp_path, **extra)
    return load_config(root / "config.yml")


def _copy(config: Config, stores: Stores, name: str) -> tuple[RunStatus, str]:
    """Claim a copy request as the daemon would and run it; (status, claim ID)."""
    layout = Layout(config.root).ensure()
    claim_id = new_claim_id()
    path = layout.processing / f"{claim_id}+{NO_PROFILE}+{name}"
    path.write_text(copy_request(SOURCE, TARGET, STORE, DEMO_SCAN_IDS), encoding="utf-8")
    instances = Instances(config)
    try:
        runner = Runner(config, layout, stores, instances, threading.Event())
        return runner.process(Claimed(path, claim_id, None, name)), claim_id
    finally:
        instances.close()


def test_one_host_keeps_its_state_in_sqlite_under_state(tmp_path: Path) -> None:
    config = _config(tmp_path, cluster=False)
    layout = Layout(config.root)
    assert read_requests(config, layout) is None  # a reader never creates the ledger
    stores = open_stores(config, layout)
    try:
        status, claim_id = _copy(config, stores, "a.json")
        assert status is RunStatus.DONE
        record = stores.requests.get(claim_id)
        assert record is not None and record.status == "done" and record.host_id is None
    finally:
        stores.close()
    assert {p.name for p in layout.state.glob("*.sqlite")} >= {"ledger.sqlite",
                                                                "copies.sqlite"}
    assert _kinds(stores) == ("SqliteRequestStore", "SqliteCopyStore", "FileCheckpoints")
    reader = read_requests(config, layout)
    assert reader is not None and reader.get(claim_id) is not None
    reader.close()


def test_a_cluster_host_keeps_its_state_in_postgresql(tmp_path: Path, cluster_db: str) -> None:
    config = _config(tmp_path, cluster=True)
    layout = Layout(config.root)
    stores = open_stores(config, layout)
    try:
        assert _kinds(stores) == ("PgRequestStore", "PgCopyStore", "PgCheckpoints")
        status, first = _copy(config, stores, "a.json")
        assert status is RunStatus.DONE
        record = stores.requests.get(first)
        assert record is not None and record.run_id is not None
        assert (record.status, record.host_id, record.claimed_by) == ("done", "h1", "h1")
        with psycopg.connect(cluster_db, autocommit=True) as conn:
            copies = conn.execute("SELECT count(*) FROM copies WHERE target_scan_id"
                                  " IS NOT NULL").fetchone()
            steps = conn.execute("SELECT count(*) FROM checkpoints WHERE run_id = %s",
                                 (record.run_id,)).fetchone()
            leases = conn.execute("SELECT count(*) FROM copy_leases").fetchone()
        assert copies == (len(DEMO_SCAN_IDS),)
        assert steps is not None and steps[0] >= 2 * len(DEMO_SCAN_IDS)
        assert leases == (0,)  # every lease given back
        assert not (layout.state / "copies.sqlite").exists()
        # The same copy again, from another host's point of view: every scan is a skip.
        shutil.rmtree(layout.runs)
        status, second = _copy(config, stores, "again.json")
        again = stores.requests.get(second)
        assert status is RunStatus.DONE and again is not None
        assert again.counts["skipped"] == len(DEMO_SCAN_IDS)
    finally:
        stores.close()
    reader = read_requests(config, layout)
    assert reader is not None
    assert [r.claim_id for r in reader.by_name("a.json")] == [first]
    reader.close()
