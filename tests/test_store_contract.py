"""The state contract (``daemon.store.abc``): every behaviour written once, run against
every store: SQLite under ``state/`` (one host) and PostgreSQL (cluster mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_support import HOST, StoreKind, migrated_database

from daemon.store.abc import RequestStore
from daemon.store.records import RunFilter

KINDS = ["sqlite", "postgres"]


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """One migrated database for the module; each test starts from empty tables."""
    with migrated_database("contract") as dsn:
        yield dsn


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreKind]:
    if request.param == "postgres":
        dsn = request.getfixturevalue("pg_database")
        place = StoreKind("postgres", tmp_path / "state", dsn=dsn, host_id=HOST)
    else:
        place = StoreKind("sqlite", tmp_path / "state")
    place.empty()
    try:
        yield place
    finally:
        place.close()


@pytest.fixture
def requests(kind: StoreKind) -> RequestStore:
    return kind.requests()


# --- requests ------------------------------------------------------------------------


def test_a_claim_is_recorded_once(requests: RequestStore) -> None:
    requests.claimed("c1", "a.csv", "nightly")
    requests.claimed("c1", "other.csv", None)  # a resumed request claims again
    record = requests.get("c1")
    assert record is not None
    assert (record.name, record.profile, record.status, record.attempts, record.counts) \
        == ("a.csv", "nightly", "claimed", 0, {})
    assert record.run_id is None and record.finished_at is None
    assert requests.get("nope") is None


def test_a_started_run_is_found_by_its_run_id_and_counts_attempts(
        requests: RequestStore, kind: StoreKind) -> None:
    requests.claimed("c1", "a.csv", None)
    requests.started("c1", "run-1", "copy", "nightly copy")
    requests.started("c1", "run-1", "copy", "nightly copy")  # resumed after a restart
    record = requests.get("run-1")
    assert record is not None and record.claim_id == "c1"
    assert (record.status, record.action, record.label, record.attempts) \
        == ("running", "copy", "nightly copy", 2)
    assert record.host_id == kind.host_id


def test_a_finished_request_keeps_its_outcome(requests: RequestStore) -> None:
    requests.claimed("c1", "a.csv", None)
    requests.started("c1", "run-1", "download", None)
    requests.finished("c1", "partial", Path("/r/failed/a.csv"), "2 scans failed",
                      {"items": 5, "failed": 2})
    record = requests.get("c1")
    assert record is not None
    assert (record.status, record.final_path, record.message, record.counts) \
        == ("partial", "/r/failed/a.csv", "2 scans failed", {"items": 5, "failed": 2})
    assert record.finished_at is not None and record.finished_at >= record.claimed_at


def test_requests_by_name_newest_first(requests: RequestStore) -> None:
    for claim in ("c1", "c2", "c3"):
        requests.claimed(claim, "same.csv" if claim != "c2" else "other.csv", None)
    assert [r.claim_id for r in requests.by_name("same.csv")] == ["c3", "c1"]
    assert requests.by_name("none.csv") == []


def test_recent_is_newest_first_and_may_show_failures_only(requests: RequestStore) -> None:
    outcomes = {"c1": "done", "c2": "failed", "c3": "invalid", "c4": "partial", "c5": "done"}
    for claim, status in outcomes.items():
        requests.claimed(claim, f"{claim}.csv", None)
        requests.finished(claim, status, Path(f"/r/{claim}"), None, {})
    assert [r.claim_id for r in requests.recent(3)] == ["c5", "c4", "c3"]
    assert [r.claim_id for r in requests.recent(10, failed_only=True)] == ["c4", "c3", "c2"]


def _history(requests: RequestStore) -> None:
    rows = [("c1", "100%.csv", "copy", "done"), ("c2", "a_b.csv", "copy", "failed"),
            ("c3", "aXb.csv", "download", "done"), ("c4", "Plain.CSV", "analyze", "done")]
    for claim, name, action, status in rows:
        requests.claimed(claim, name, None)
        requests.started(claim, f"run-{claim}", action, f"label {claim}")
        requests.finished(claim, status, Path(f"/r/{name}"), None, {})
    requests.claimed("c5", "waiting.csv", None)


def test_search_filters_by_action_status_and_literal_text(requests: RequestStore) -> None:
    _history(requests)

    def names(f: RunFilter) -> list[str]:
        return [r.name for r in requests.search(f, 10)]

    assert names(RunFilter(action="copy")) == ["a_b.csv", "100%.csv"]
    assert names(RunFilter(status="done", action="copy")) == ["100%.csv"]
    assert names(RunFilter(text="a_b")) == ["a_b.csv"]  # _ is not a wildcard
    assert names(RunFilter(text="%")) == ["100%.csv"]  # nor is %
    assert names(RunFilter(text="plain.csv")) == ["Plain.CSV"]  # any case
    assert names(RunFilter(text="label c3")) == ["aXb.csv"]  # the label counts too
    assert requests.count(RunFilter(text="csv")) == 5
    assert requests.count(RunFilter(status="claimed")) == 1
    assert requests.count(RunFilter()) == 5


def test_search_pages_newest_first(requests: RequestStore) -> None:
    _history(requests)
    first, second = requests.search(RunFilter(), 2), requests.search(RunFilter(), 2, 2)
    assert [r.claim_id for r in first + second] == ["c5", "c4", "c3", "c2"]
    assert requests.search(RunFilter(), 2, 10) == []


def test_actions_lists_each_action_once(requests: RequestStore) -> None:
    _history(requests)
    assert requests.actions() == ["analyze", "copy", "download"]
