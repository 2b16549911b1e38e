"""``RefServer.insert_scan``: scans written exactly as given, read back by the server's
own SQL (``scan_details``), and rows it cannot represent refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from daemon.sandbox import RefServer

CAPTURED = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
DETAILS: dict[str, Any] = {
    "store_planogram_id": 501, "planogram_name": "Beverages", "section_id": 31,
    "section_name": "Cola / Zero", "is_additional_section": True, "pre_pog": 81.5,
    "post_pog": None, "pre_osa": 88.0, "post_osa": 97.25, "ok_count": 40,
    "wandering_count": None, "oos_count": 3, "hole_count": 0,
}


@pytest.fixture
def ref(platform_db: str, tmp_path: Path) -> Iterator[RefServer]:
    with RefServer(platform_db, tmp_path / "platform") as srv:
        yield srv
    assert srv.errors == []


def _download(ref: RefServer, file_id: int) -> tuple[bytes, str]:
    session = requests.Session()
    token = session.post(f"{ref.api_url}/api/v4/token-auth/", timeout=10,
                         json={"username": ref.username, "password": ref.password}).json()
    meta = session.get(f"{ref.api_url}/api/v1/master-data/file-upload/{file_id}/", timeout=10,
                       headers={"Authorization": f"Token {token['token']}"}).json()
    return session.get(meta["file"], timeout=10).content, meta["original_filename"]


def test_insert_scan_writes_rows_the_platform_sql_reads_back(ref: RefServer) -> None:
    data = b"\x89PNG" + hashlib.sha256(b"x").digest() * 1000
    scan_id, (file_id,) = ref.insert_scan(7, CAPTURED, "done", files=[("a b.png", data)],
                                          details=DETAILS, provided_values={"marker": "m-1"})
    row = ref.scan(scan_id)
    assert row is not None
    assert (row["store_id"], row["status"], row["has_report"]) == (7, "done", True)
    assert row["created_at"] == CAPTURED
    assert row["provided_values"] == {"_raw_data": {
        "store": 7, "files": [file_id], "captured_at": CAPTURED.isoformat(), "marker": "m-1"}}
    details = ref.scan_details(scan_id)
    assert details is not None
    assert {k: details[k] for k in DETAILS} == DETAILS
    assert _download(ref, file_id) == (data, "a b.png")
    assert ref.file_sha256(file_id) == hashlib.sha256(data).hexdigest()


def test_insert_scan_without_details_has_no_report(ref: RefServer) -> None:
    scan_id, files = ref.insert_scan(1, CAPTURED, "processing")
    row = ref.scan(scan_id)
    assert row is not None and files == []
    assert (row["status"], row["has_report"], row["active_realogram_id"]) == (
        "processing", False, None)
    assert ref.scan_details(scan_id) is None


def test_ids_given_move_the_sequences_past_them(ref: RefServer) -> None:
    ref.insert_scan(2, CAPTURED, details=DETAILS)  # store 2, section 31, store planogram 501
    seeded = ref.seed(scans=3, stores=4)  # new stores, sections, store planograms: no clash
    assert min(seeded.store_ids) > 2
    with ref.connect() as conn:
        sections = [r[0] for r in conn.execute(
            "SELECT id FROM planograms_implementation_planogramsection").fetchall()]
        spids = [r[0] for r in conn.execute(
            "SELECT id FROM planograms_implementation_planogramstore").fetchall()]
    assert len(sections) > 1 and min(set(sections) - {31}) > 31
    assert len(spids) > 1 and min(set(spids) - {501}) > 501


def _scan_count(ref: RefServer) -> int:
    with ref.connect() as conn:
        row = conn.execute("SELECT count(*) FROM realograms_implementation_scan").fetchone()
    assert row is not None
    return int(row[0])


NO_FIGURES = {"store_planogram_id": None, "pre_pog": None, "pre_osa": None, "post_osa": None}


@pytest.mark.parametrize(("store", "details", "message"), [
    (1, {**DETAILS, "store_planogram_id": None}, "need a store_planogram_id"),
    (1, {**DETAILS, "planogram_name": None}, "needs a planogram_name"),
    (1, {**DETAILS, "section_nam": "typo"}, "unknown details fields"),
    (1, {**DETAILS, "is_additional_section": False}, "section 31 exists"),
    (1, {**DETAILS, **NO_FIGURES, "planogram_name": "Other"}, "planogramsection 31 exists"),
    (2, DETAILS, "planogramstore 501 exists"),  # 501 is store 1's
])
def test_insert_scan_refuses_what_the_platform_cannot_hold(
        ref: RefServer, store: int, details: dict[str, Any], message: str) -> None:
    ref.insert_scan(1, CAPTURED, details=DETAILS)
    before = _scan_count(ref)
    with pytest.raises(ValueError, match=message):
        ref.insert_scan(store, CAPTURED, details=details)
    assert _scan_count(ref) == before  # nothing half-written
