"""The pure parts of ``copy`` (payload, marker, batch retry, ETA) and its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import PermanentError
from daemon.instances.base import FileRef, Scan, ScanDetails
from handlers.base import ItemStatus
from handlers.copy_plan import (
    ScanOutcome,
    Stage,
    Tries,
    batch_retry,
    batch_shares,
    build_payload,
    capture_value,
    eta_text,
    failed,
    marker_value,
    source_capture_time,
)

RAW = {
    "store": 3, "files": [11, 12], "captured_at": "2025-08-01T12:00:00+00:00",
    "category_id": 7, "section_id": 70, "store_planogram": 700, "aisle": "Aisle 2/3",
    "task_id": 90001, "replace_id": None, "id": 5, "created_at": "x", "updated_at": "y",
    "device": "phone", "note": "«seeded»", "scanrelay_ref": "old-marker",
}


def platform_scan(raw: dict[str, object] | None = None, **kw: object) -> Scan:
    base: dict[str, object] = {
        "id": 42, "store_id": 3, "status": "done", "has_report": True,
        "captured_at": "2025-08-01T12:00:00+00:00", "created_at": "2025-08-01T12:07:00+00:00",
        "provided_values": {"_raw_data": dict(RAW if raw is None else raw)},
        "files": (FileRef(11), FileRef(12)),
        "reports": (ScanDetails(section_name="Cola", pre_pog=71.5),
                    ScanDetails(section_name="Door", pre_pog=12.0))}
    base.update(kw)
    return Scan(**base)  # type: ignore[arg-type]


def test_auto_drops_assignment_and_bookkeeping_and_sets_the_rest() -> None:
    payload = build_payload(platform_scan(), mode="auto", store=9, upload_ids=[501, 502],
                            marker_field="scanrelay_ref", marker="prod:42:9",
                            with_details=False, captured_at=1754049600)
    assert payload == {"store": 9, "files": [501, 502],
                       "captured_at": 1754049600, "device": "phone",
                       "note": "«seeded»", "scanrelay_ref": "prod:42:9"}


def test_mapped_keeps_the_assignment_but_not_task_id() -> None:
    payload = build_payload(platform_scan(), mode="mapped", store=9, upload_ids=[501, 502],
                            marker_field="ref", marker="m", with_details=False,
                            captured_at=1)
    assert payload["category_id"] == 7 and payload["section_id"] == 70
    assert payload["store_planogram"] == 700 and payload["aisle"] == "Aisle 2/3"
    assert "replace_id" in payload and payload["replace_id"] is None
    for gone in ("task_id", "id", "created_at", "updated_at"):
        assert gone not in payload
    assert payload["ref"] == "m"
    assert payload["scanrelay_ref"] == "old-marker"  # only the target's marker field is ours


def test_no_marker_field_means_no_marker_and_folder_payloads_are_read_as_is() -> None:
    folder_scan = platform_scan(provided_values={**RAW, "details": {"section_name": "x"}})
    payload = build_payload(folder_scan, mode="auto", store=1, upload_ids=[1, 2],
                            marker_field=None, marker="unused", with_details=True,
                            captured_at=1)
    assert "unused" not in payload.values()
    assert "details" not in payload  # the scan's reports, not the payload's
    assert [r["section_name"] for r in payload["reports"]] == ["Cola", "Door"]
    assert payload["reports"][0]["pre_pog"] == 71.5
    assert payload["device"] == "phone"


def test_captured_at_now_is_integer_epoch_seconds_of_the_copy() -> None:
    assert capture_value(platform_scan(), "now", 1754049600.75) == 1754049600
    assert isinstance(capture_value(platform_scan(), "now", 1754049600.75), int)


def test_captured_at_source_keeps_the_json_type_of_the_source_value() -> None:
    iso = platform_scan()
    assert capture_value(iso, "source", 0) == "2025-08-01T12:00:00+00:00"
    epoch = platform_scan(raw={**RAW, "captured_at": 1754049600}, captured_at=1754049600)
    value = capture_value(epoch, "source", 0)
    assert value == 1754049600 and isinstance(value, int)


def test_source_capture_time_falls_back_to_creation_and_fails_without_either() -> None:
    no_capture = platform_scan(raw={"device": "d"}, captured_at=None)
    assert source_capture_time(no_capture) == "2025-08-01T12:07:00+00:00"
    with pytest.raises(PermanentError, match="no capture time"):
        source_capture_time(platform_scan(raw={}, captured_at=None, created_at=None))
    with pytest.raises(PermanentError, match="no capture time"):
        source_capture_time(platform_scan(raw={"captured_at": "soon"}, captured_at=None,
                                          created_at=None))


def test_marker_is_per_source_scan_and_store_and_per_forced_run() -> None:
    assert marker_value("prod", 42, 9) == "prod:42:9"
    assert marker_value("prod", 42, 9, "20261121-231500-copy-3f9a1c") == \
        "prod:42:9:20261121-231500-copy-3f9a1c"
    assert len({marker_value("prod", 42, 9), marker_value("prod", 42, 8),
                marker_value("qa", 42, 9), marker_value("prod", 43, 9)}) == 4


def ok(scan_id: int, files: int = 2) -> ScanOutcome:
    return ScanOutcome(scan_id, ItemStatus.OK, 1000 + scan_id,
                       tries=Tries(files, files, files, files, 1, 1))


def test_batch_retry_when_downloads_fall_under_80_percent() -> None:
    outcomes = [ok(i) for i in range(7)] + [
        failed(7, Stage.DOWNLOAD, "timed out", True, Tries(2, 1)),
        failed(8, Stage.DOWNLOAD, "timed out", True, Tries(2, 0)),
        failed(9, Stage.DOWNLOAD, "404", False, Tries(2, 1))]
    assert batch_shares(outcomes)[0] == pytest.approx(16 / 20)  # 80 %: not under it
    assert batch_retry(outcomes, 0) == []
    outcomes.append(failed(10, Stage.DOWNLOAD, "reset", True, Tries(1, 0)))
    assert batch_retry(outcomes, 0) == [7, 8, 10]  # the permanent failure is not retried
    assert batch_retry(outcomes, 3) == []  # three retries are the most


def test_batch_retry_on_creates_under_50_percent() -> None:
    create_failed = [failed(i, Stage.CREATE, "503", True, Tries(2, 2, 2, 2, 1, 0))
                     for i in range(3)]
    assert batch_retry([ok(10), ok(11), ok(12), *create_failed], 0) == []  # 50 %
    assert batch_retry([ok(10), ok(11), *create_failed], 1) == [0, 1, 2]


def test_eta() -> None:
    assert eta_text(0, 100, 5.0) == "?"
    assert eta_text(25, 100, 10.0) == "0:00:30"
    assert eta_text(1, 1000, 10.0) == "2:46:30"


# ---- the checkpoint (the copy ledger's behaviours: tests/test_store_contract.py) ------


def test_checkpoint_forget_frees_memory_but_keeps_the_journal(tmp_path: Path) -> None:
    from daemon.checkpoint import Checkpoint
    from handlers.copy_scan import superseded

    journal = Checkpoint(tmp_path)
    for key in superseded(7, [70, 71]):
        journal.record(key, upload_id=1)
    journal.record("copy:created:7", target_scan_id=9, marker="m", how="created")
    assert journal.held() == 6
    journal.forget(superseded(7, [70, 71]) + ["not-there"])
    assert journal.held() == 1 and journal.get("copy:created:7") is not None
    assert journal.get("copy:up:7:71") is None  # written since the open, now forgotten
    assert len(journal.records()) == 6  # the journal keeps every record
    journal.close()
    reloaded = Checkpoint(tmp_path)
    assert reloaded.get("copy:up:7:71") == {"key": "copy:up:7:71", "upload_id": 1}
    reloaded.close()
