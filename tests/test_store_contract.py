"""The state contract (``daemon.store.abc``): every behaviour written once, run against
every store: SQLite under ``state/`` (one host) and PostgreSQL (cluster mode)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from store_support import HOST, StoreKind, migrated_database

from daemon.errors import Interrupted
from daemon.store.abc import CheckpointStores, CopyStore, LeaseLost, RequestStore
from daemon.store.records import CopyKey, OpenIntent, RunFilter

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


# --- the copy ledger -------------------------------------------------------------------

KEY = CopyKey("prod", 42, "qa", 9)


@pytest.fixture
def copies(kind: StoreKind) -> CopyStore:
    return kind.copies()


def test_the_copy_ledger_remembers_copies_and_open_intents(kind: StoreKind) -> None:
    ledger = kind.copies()
    assert ledger.state(KEY).copied_to is None
    ledger.intent(KEY, "prod:42:9", "run-a")
    assert ledger.state(KEY).open_markers == ("prod:42:9",)
    ledger.copied(KEY, "prod:42:9", "run-a", 777)
    ledger.close()
    again = kind.copies()  # a restart, or another host
    state = again.state(KEY)
    assert (state.copied_to, state.copied_by, state.open_markers) == (777, "run-a", ())
    again.intent(KEY, "prod:42:9", "run-c")  # an intent after the copy changes nothing
    assert again.state(KEY).copied_to == 777 and again.state(KEY).open_intents == ()


def test_the_newest_copy_of_a_key_wins(copies: CopyStore) -> None:
    copies.copied(KEY, "prod:42:9", "run-a", 777)
    copies.intent(KEY, "prod:42:9:run-b", "run-b")  # a forced copy: a marker of its own
    assert copies.state(KEY).copied_to == 777
    assert copies.state(KEY).open_markers == ("prod:42:9:run-b",)
    copies.copied(KEY, "prod:42:9:run-b", "run-b", 888)
    state = copies.state(KEY)
    assert (state.copied_to, state.copied_by, state.open_intents) == (888, "run-b", ())
    copies.copied(KEY, "prod:42:9", "run-c", 999)  # found again later: newest again
    assert copies.state(KEY).copied_to == 999


def test_another_store_or_target_is_another_copy(copies: CopyStore) -> None:
    copies.copied(KEY, "prod:42:9", "run-a", 777)
    assert set(copies.states("prod", "qa", 9, [41, 42, 43])) == {42}
    assert copies.state(CopyKey("prod", 42, "qa", 8)).copied_to is None
    assert copies.state(CopyKey("prod", 42, "stage", 9)).copied_to is None
    assert copies.state(CopyKey("stage", 42, "qa", 9)).copied_to is None


def test_each_intended_creates_upload_ids_are_kept_until_it_is_confirmed(
        kind: StoreKind) -> None:
    ledger = kind.copies()
    ledger.intent(KEY, "prod:42:9", "run-a", [501, 502])
    ledger.intent(KEY, "prod:42:9", "run-b", [601, 602])  # a rerun's own uploads
    ledger.intent(KEY, "prod:42:9", "run-b", [601, 602])  # recorded again: once
    ledger.close()
    again = kind.copies()
    assert again.state(KEY).open_intents == (OpenIntent("prod:42:9", (501, 502)),
                                             OpenIntent("prod:42:9", (601, 602)))
    again.copied(KEY, "prod:42:9", "run-b", 777)
    assert again.state(KEY).open_intents == ()


def test_the_ledger_remembers_which_targets_drop_the_marker(copies: CopyStore) -> None:
    assert copies.marker_check("qa", "scanrelay_ref") is None
    before = time.time()
    copies.record_marker_check("qa", "scanrelay_ref", False)
    copies.record_marker_check("stage", "scanrelay_ref", True)
    check = copies.marker_check("qa", "scanrelay_ref")
    assert check is not None and not check.kept
    assert abs(check.checked_at - before) < 60  # seconds since the epoch
    assert [(c.target, c.field) for c in copies.dropped_markers()] == [("qa", "scanrelay_ref")]
    copies.record_marker_check("qa", "scanrelay_ref", True)
    assert copies.dropped_markers() == []


def test_states_answers_for_more_ids_than_one_query_takes(copies: CopyStore) -> None:
    for i in range(1, 1201, 3):
        copies.copied(CopyKey("s", i, "t", 1), f"s:{i}:1", "r", i + 10_000)
    states = copies.states("s", "t", 1, list(range(1, 1201)))
    assert len(states) == 400 and states[1198].copied_to == 11198


# --- copy key leases -------------------------------------------------------------------

OTHER = CopyKey("prod", 43, "qa", 9)


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> float:
    """Poll ``condition`` until it holds; returns how long that took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_lease_is_held_by_one_owner_at_a_time(copies: CopyStore) -> None:
    assert copies.acquire(KEY, "a")
    assert not copies.acquire(KEY, "b")
    assert not copies.acquire(KEY, "a")  # not re-entrant, even for its owner
    assert copies.acquire(OTHER, "b")  # other keys never wait
    copies.release(KEY, "b")  # not b's: nothing happens
    assert copies.still_holds(KEY, "a") and not copies.still_holds(KEY, "b")
    copies.release(KEY, "a")
    assert copies.acquire(KEY, "b")


def test_an_expired_lease_is_taken_over_and_its_old_owner_fence_fails(
        kind: StoreKind) -> None:
    copies = kind.copies(lease_seconds=0.5)
    start = time.monotonic()
    assert copies.acquire(KEY, "a")  # never renewed: it lapses
    assert not copies.acquire(KEY, "b")
    _until(lambda: copies.acquire(KEY, "b"))
    assert time.monotonic() - start >= 0.4
    assert not copies.still_holds(KEY, "a")
    with pytest.raises(LeaseLost):
        copies.fence(KEY, "a")
    copies.fence(KEY, "b")  # the new owner's passes


def test_an_expired_lease_fails_its_fence_even_if_nobody_took_it(kind: StoreKind) -> None:
    copies = kind.copies(lease_seconds=0.3)
    assert copies.acquire(KEY, "a")
    time.sleep(0.6)  # a paused owner: time passes, nothing else happens
    with pytest.raises(LeaseLost):
        copies.fence(KEY, "a")


def test_a_held_lease_is_renewed_until_released(kind: StoreKind) -> None:
    copies = kind.copies(lease_seconds=0.5)
    stop = threading.Event()
    with copies.lease(KEY, "a", stop):
        deadline = time.monotonic() + 1.6  # three leases long
        while time.monotonic() < deadline:
            assert not copies.acquire(KEY, "b")
            time.sleep(0.05)
        copies.fence(KEY, "a")
    assert copies.acquire(KEY, "b")  # released at the end of the block


def test_a_waiting_owner_gets_the_lease_once_it_is_released(copies: CopyStore) -> None:
    stop, entered = threading.Event(), threading.Event()
    fenced: list[bool] = []

    def second() -> None:
        with copies.lease(KEY, "b", stop):
            entered.set()
            fenced.append(copies.still_holds(KEY, "b"))

    with copies.lease(KEY, "a", stop):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.3), "the same key must wait"
    assert entered.wait(5)
    waiter.join(5)
    assert fenced == [True]


def test_waiting_for_a_lease_ends_when_the_run_stops(copies: CopyStore) -> None:
    assert copies.acquire(KEY, "a")
    stop = threading.Event()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with copies.lease(KEY, "b", stop):
                pass
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()
    stop.set()
    waiter.join(5)
    assert not waiter.is_alive() and len(errors) == 1
    assert isinstance(errors[0], Interrupted)
    assert copies.still_holds(KEY, "a")


# --- checkpoints -----------------------------------------------------------------------


@pytest.fixture
def checkpoints(kind: StoreKind) -> CheckpointStores:
    return kind.checkpoints()


def _run_dir(kind: StoreKind, run_id: str) -> Path:
    folder = kind.state.parent / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_latest_record_of_a_key_wins(kind: StoreKind,
                                         checkpoints: CheckpointStores) -> None:
    cp = checkpoints.open("run-1", _run_dir(kind, "run-1"))
    cp.record("copy:up:1:10", upload_id=5, size=3)
    cp.record("copy:up:1:11", upload_id=6, size=4)
    cp.record("copy:up:1:10", upload_id=7, size=3)
    assert cp.get("copy:up:1:10") == {"key": "copy:up:1:10", "upload_id": 7, "size": 3}
    assert [r["key"] for r in cp.records()] == ["copy:up:1:10", "copy:up:1:11"]
    assert cp.records()[0]["upload_id"] == 7
    assert cp.get("copy:up:1:12") is None
    cp.close()


def test_records_survive_a_reopen(kind: StoreKind, checkpoints: CheckpointStores) -> None:
    run_dir = _run_dir(kind, "run-1")
    cp = checkpoints.open("run-1", run_dir)
    cp.record("copy:created:1", target_scan_id=9, marker="m", how="created")
    cp.record("copy:created:2", target_scan_id=10, marker="m2", how="recovered")
    cp.close()
    again = kind.checkpoints().open("run-1", run_dir)  # a restart, or another host
    assert again.get("copy:created:1") == {"key": "copy:created:1", "target_scan_id": 9,
                                           "marker": "m", "how": "created"}
    assert again.held() == 0  # read back on demand, not loaded
    assert len(again.records()) == 2
    again.close()


def test_a_reopened_store_tells_which_keys_have_a_record(
        kind: StoreKind, checkpoints: CheckpointStores) -> None:
    run_dir = _run_dir(kind, "run-1")
    cp = checkpoints.open("run-1", run_dir)
    cp.record("download:batch:1", files=3)
    cp.close()
    again = kind.checkpoints().open("run-1", run_dir)
    assert again.had("download:batch:1")
    assert not again.had("download:batch:2")
    again.close()


def test_forget_frees_memory_but_the_store_keeps_the_record(
        kind: StoreKind, checkpoints: CheckpointStores) -> None:
    run_dir = _run_dir(kind, "run-1")
    cp = checkpoints.open("run-1", run_dir)
    for n in range(5):
        cp.record(f"step:{n}", n=n)
    assert cp.held() == 5
    cp.forget(["step:0", "step:1", "not-there"])
    assert cp.held() == 3 and cp.get("step:2") == {"key": "step:2", "n": 2}
    assert len(cp.records()) == 5
    cp.close()
    again = checkpoints.open("run-1", run_dir)
    assert again.get("step:0") == {"key": "step:0", "n": 0}
    again.close()


def test_runs_and_batches_keep_records_of_their_own(
        kind: StoreKind, checkpoints: CheckpointStores) -> None:
    run_dir = _run_dir(kind, "run-1")
    own, first, second = (checkpoints.open("run-1", run_dir, batch) for batch in (0, 1, 2))
    other = checkpoints.open("run-2", _run_dir(kind, "run-2"))
    own.record("plan", batches=2)
    first.record("scan:1", ok=True)
    second.record("scan:1", ok=False)
    assert [r["key"] for r in own.records()] == ["plan"]
    assert first.get("scan:1") == {"key": "scan:1", "ok": True}
    assert second.get("scan:1") == {"key": "scan:1", "ok": False}
    assert other.records() == [] and other.get("plan") is None
    for cp in (own, first, second, other):
        cp.close()


@pytest.mark.parametrize("key", ["", 'a"b', "a\\b", "a\nb"])
def test_a_key_a_journal_could_not_find_is_refused(
        key: str, kind: StoreKind, checkpoints: CheckpointStores) -> None:
    cp = checkpoints.open("run-1", _run_dir(kind, "run-1"))
    with pytest.raises(ValueError, match="checkpoint key"):
        cp.record(key, x=1)
    cp.close()
