"""The scheduler's pure parts and its exactly-once producer, on real files: cron
translation, what a fire drops, the rerun decision, and crash repair of a drop."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from helpers import config_dict

from daemon.config import ConfigError, parse_config
from daemon.layout import Layout
from daemon.schedule.cron import cron_trigger, crontab_weekdays
from daemon.schedule.fires import request_name, scheduled_request
from daemon.schedule.produce import Producer
from daemon.schedule.reruns import analysis_request, plan_rerun, rerun_name
from daemon.schedule.state import DROPPED, FIRE, RESERVED, SchedulerState
from daemon.store.sqlite_requests import SqliteRequestStore

UTC_NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday


def fires(expr: str, tz: str = "UTC", start: datetime = UTC_NOON, n: int = 3) -> list[datetime]:
    trigger = cron_trigger(expr, tz)
    out, previous = [], None
    for _ in range(n):
        previous = trigger.get_next_fire_time(previous, previous or start)
        assert previous is not None
        out.append(previous)
    return out


# ---- cron ------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "expected"), [
    ("1", "mon"), ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"),
    ("*/2", "sun,tue,thu,sat"), ("5-7", "sun,fri,sat"), ("1,3", "mon,wed"),
    ("mon-fri", "mon-fri"), ("*", "*"), ("1/3", "mon,thu"),
])
def test_crontab_weekday_numbers_mean_what_cron_means(field: str, expected: str) -> None:
    assert crontab_weekdays(field) == expected


def test_five_field_cron_fires_on_crontab_monday_in_its_time_zone() -> None:
    # "0 2 * * 1": 02:00 on Mondays, Berlin time (APScheduler alone would take Tuesday).
    got = fires("0 2 * * 1", "Europe/Berlin", n=2)
    berlin = [f.astimezone(ZoneInfo("Europe/Berlin")) for f in got]
    assert [(b.weekday(), b.hour, b.minute) for b in berlin] == [(0, 2, 0), (0, 2, 0)]
    assert got[1] - got[0] == timedelta(days=7)


def test_six_field_cron_has_seconds_first() -> None:
    got = fires("*/5 * * * * *")
    assert got == [UTC_NOON + timedelta(seconds=s) for s in (0, 5, 10)]


@pytest.mark.parametrize(("expr", "tz", "says"), [
    ("0 2 * *", "UTC", "has 4 fields"),
    ("0 61 * * *", "UTC", "61"),
    ("0 2 * * 8", "UTC", "out of range"),
    ("0 2 * * 5-1", "UTC", "backwards"),
    ("0 2 * * *", "Mars/Olympus", "unknown time zone"),
])
def test_bad_cron_or_zone_is_a_config_error_naming_it(expr: str, tz: str, says: str) -> None:
    text = json.dumps(config_dict(schedules=[{
        "name": "n", "cron": expr, "timezone": tz,
        "request": {"action": "download", "source": "demo-source", "scan_ids": [1]}}]))
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any(says in p and "schedules.0" in p for p in caught.value.problems), \
        caught.value.problems


def test_invalid_schedule_request_is_a_config_error() -> None:
    text = json.dumps(config_dict(schedules=[{
        "name": "n", "cron": "0 2 * * *",
        "request": {"action": "download", "source": "nowhere", "scan_ids": [1]}}],
        reruns={"cron": "30 1 * * *", "misfire_grace": 60}))
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    [problem] = caught.value.problems
    assert problem.endswith("schedules.0.request: source: unknown instance 'nowhere'; "
                            "configured: demo-source, demo-target")


# ---- a fire's request ------------------------------------------------------------------


def schedule(**request: object) -> object:
    cfg = parse_config(json.dumps(config_dict(schedules=[{
        "name": "nightly", "cron": "30 0 * * *", "timezone": "America/New_York",
        "request": {"action": "download", "source": "demo-source", **request}}])))
    return cfg.schedules[0]


def test_relative_dates_resolve_on_the_fire_day_in_the_schedule_zone() -> None:
    # 03:30 UTC on 22 Nov is 22:30 on 21 Nov in New York: "yesterday" is 20 Nov there.
    fire = datetime(2026, 11, 22, 3, 30, tzinfo=UTC)
    raw = scheduled_request(schedule(select={"captured_from": "yesterday",  # type: ignore[arg-type]
                                             "captured_to": "today", "store_id": 3}), fire)
    assert raw["select"] == {"captured_from": "2026-11-20", "captured_to": "2026-11-21",
                             "store_id": 3}
    assert raw["label"] == "schedule nightly 2026-11-21T22:30:00-05:00"
    assert request_name("nightly", fire) == "schedule-nightly-20261122-033000.json"


def test_template_label_is_kept_and_the_template_is_not_changed() -> None:
    sched = schedule(scan_ids=[1001], label="audit")
    fire = datetime(2026, 11, 22, 5, 30, tzinfo=UTC)
    assert scheduled_request(sched, fire)["label"] == \
        "audit (schedule nightly 2026-11-22T00:30:00-05:00)"
    assert sched.request["label"] == "audit"  # type: ignore[attr-defined]


# ---- the rerun decision ----------------------------------------------------------------

RUN = "20261122-013000-download-3f9a1c"
ORIGINAL = {"action": "download", "source": "prod", "scan_ids": [1, 2, 3], "attempt": 1,
            "retry_of": None, "select": None, "label": "nightly", "batch_size": 10}


def result(*failed: tuple[int, bool], attempt: int = 1, transient: bool | None = None,
           problems: list[str] | None = None) -> dict[str, object]:
    items = [{"scan_id": i, "error": "x", "transient": t} for i, t in failed]
    return {"run_id": RUN, "status": "failed", "attempt": attempt, "failed": items,
            "problems": problems or [],
            "transient": transient if transient is not None else
            bool(items) and all(t for _, t in failed)}


def retry_of(ids: list[int], attempt: int = 2) -> dict[str, object]:
    return {**{k: v for k, v in ORIGINAL.items() if v is not None}, "scan_ids": ids,
            "retry_of": RUN, "attempt": attempt}


def test_transient_failure_is_rerun_as_its_retry_json_with_the_next_attempt() -> None:
    plan = plan_rerun(result((2, True), (3, True)), retry_of([2, 3]), ORIGINAL, 3)
    assert plan.verdict == "rerun" and plan.request == {
        "action": "download", "source": "prod", "scan_ids": [2, 3], "label": "nightly",
        "batch_size": 10, "retry_of": RUN, "attempt": 2}


def test_permanent_failures_are_never_rerun() -> None:
    assert plan_rerun(result((2, False)), retry_of([2]), ORIGINAL, 3).verdict == "permanent"
    invalid = {"run_id": None, "status": "invalid", "transient": False, "problems": ["x"]}
    assert plan_rerun(invalid, None, None, 3).verdict == "permanent"
    fatal = result(transient=False, problems=["prod: login refused"])
    assert plan_rerun(fatal, None, ORIGINAL, 3).verdict == "permanent"


def test_mixed_failure_reruns_only_the_transient_scans() -> None:
    plan = plan_rerun(result((1, False), (3, True)), retry_of([1, 3]), ORIGINAL, 3)
    assert plan.verdict == "rerun" and plan.request is not None
    assert plan.request["scan_ids"] == [3]


def test_whole_run_transient_failure_reruns_the_original_request() -> None:
    plan = plan_rerun(result(transient=True, problems=["prod: 503"]), None, ORIGINAL, 3)
    assert plan.request == {"action": "download", "source": "prod", "scan_ids": [1, 2, 3],
                            "label": "nightly", "batch_size": 10, "retry_of": RUN,
                            "attempt": 2}


def test_attempts_stop_at_max_attempts() -> None:
    assert plan_rerun(result((2, True), attempt=2), retry_of([2], 3), ORIGINAL, 3).verdict \
        == "rerun"
    exhausted = plan_rerun(result((2, True), attempt=3), retry_of([2], 4), ORIGINAL, 3)
    assert (exhausted.verdict, exhausted.attempt) == ("exhausted", 3)


def test_analyze_by_id_lists_is_narrowed_position_by_position() -> None:
    original = {"action": "analyze", "source": "a", "target": "b", "scan_ids": [1, 2, 3],
                "target_scan_ids": [11, 12, 13]}
    retry = {**original, "scan_ids": [2, 3]}  # the runner leaves target_scan_ids whole
    plan = plan_rerun(result((2, True), (3, False)), retry, original, 3)
    assert plan.request is not None
    assert (plan.request["scan_ids"], plan.request["target_scan_ids"]) == ([2], [12])


def test_rerun_names_keep_the_original_stem() -> None:
    first = rerun_name("prod.csv", RUN, 2)
    assert first == "prod.attempt2-3f9a1c.json"
    assert rerun_name(first, "20261123-013000-download-aa00bb", 3) == \
        "prod.attempt3-aa00bb.json"


def test_deferred_analysis_request_names_its_copy_run() -> None:
    raw = analysis_request({"action": "copy", "source": "s", "target": "t"}, RUN)
    assert raw == {"action": "analyze", "source": "s", "target": "t", "from_run": RUN,
                   "label": f"deferred analysis of {RUN}"}


# ---- exactly once across a crash -------------------------------------------------------


@pytest.fixture
def producer(tmp_path: Path) -> Producer:
    cfg = parse_config(json.dumps(config_dict()), base_dir=tmp_path)
    layout = Layout(cfg.root).ensure()
    return Producer(cfg, layout, SchedulerState(layout.state / "scheduler.sqlite"),
                    SqliteRequestStore(layout.state / "ledger.sqlite"))


RAW = {"action": "download", "source": "demo-source", "scan_ids": [1001]}
FIRE_AT = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


def test_a_key_is_produced_once(producer: Producer) -> None:
    first = producer.produce("k", "job", FIRE, FIRE_AT, "a.json", RAW)
    assert first is not None and json.loads(first.read_text()) == RAW
    assert producer.produce("k", "job", FIRE, FIRE_AT, "a.json", RAW) is None
    assert sorted(p.name for p in producer.layout.inbox.iterdir()) == ["a.json"]


def test_crash_after_reserving_writes_the_request_at_recovery(producer: Producer) -> None:
    producer.state.reserve("k", "job", FIRE, FIRE_AT, "a.json", None, RAW)  # then: crash
    assert producer.recover() == 1
    assert json.loads((producer.layout.inbox / "a.json").read_text()) == RAW
    drop = producer.state.get("k")
    assert drop is not None and drop.state == DROPPED


def test_crash_after_writing_is_not_written_again(producer: Producer) -> None:
    producer.state.reserve("k", "job", FIRE, FIRE_AT, "a.json", None, RAW)
    (producer.layout.inbox / "a.json").write_text("{}")  # written, then a crash
    # ... and the daemon claimed and settled it since: only the ledger knows it.
    producer.ledger.claimed("20261122-020000-abcdef", "a.json", None)
    (producer.layout.inbox / "a.json").unlink()
    state = producer.state.get("k")
    assert state is not None and state.state == RESERVED
    assert producer.recover() == 0
    assert producer.produce("k", "job", FIRE, FIRE_AT, "a.json", RAW) is None
    assert list(producer.layout.inbox.iterdir()) == []
