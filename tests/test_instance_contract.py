"""One contract suite for every instance kind (``daemon.instances.base.Instance``).

Each kind registers a factory in ``FACTORIES``: ``factory(tmp_path, seeds)`` returns
a ``Seeded`` instance holding exactly the ``SEEDS`` scans (made however that kind is
best seeded, independently of the code under test where possible) and says which
IDs they got. To add a kind, add its factory; every contract test then runs on it.
Kinds: ``folder`` (the documented files, written directly) and ``platform`` (a
reference server on a fresh PostgreSQL database, rows written directly).
Tests of one kind's own layout (folder: half-made scans, corrupt files, processes)
follow the contract tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pg
import pytest

from daemon.config import DbConfig, PlatformInstanceConfig
from daemon.demo import create_demo
from daemon.errors import PermanentError, TransientError
from daemon.instances.base import (
    FileRef,
    Instance,
    Scan,
    ScanDetails,
    Selection,
    captured_datetime,
)
from daemon.instances.folder import FolderInstance
from daemon.instances.platform import PlatformInstance
from daemon.sandbox import RefServer


@dataclass(frozen=True)
class SeedFile:
    filename: str
    data: bytes


@dataclass(frozen=True)
class SeedScan:
    key: str
    store_id: int
    captured_at: str
    status: str
    files: tuple[SeedFile, ...]
    details: ScanDetails | None = None
    provided: dict[str, Any] = field(default_factory=dict)
    extra: tuple[ScanDetails, ...] = ()  # more reports (sections) after ``details``

    def reports(self) -> list[dict[str, Any]]:
        return [asdict(d) for d in (self.details, *self.extra) if d is not None]


@dataclass
class Seeded:
    instance: Instance
    scan_ids: dict[str, int]  # seed key -> scan ID in this instance
    file_ids: dict[str, list[int]]  # seed key -> its file IDs, in order
    cleanup: list[Callable[[], None]] = field(default_factory=list)  # run last to first

    def key_of(self, scan_id: int) -> str:
        return next(k for k, v in self.scan_ids.items() if v == scan_id)

    def close(self) -> None:
        """Close the instance, then whatever backs it (servers, databases)."""
        try:
            self.instance.close()
        finally:
            _run_all(reversed(self.cleanup))


def _run_all(steps: Iterable[Callable[[], None]]) -> None:
    """Run every step even when one fails; raise the first failure."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first


def _image(n: int) -> bytes:
    # Distinct bytes per file, not all tiny, so a chunking bug would show.
    return b"\x89PNG\r\n\x1a\n" + hashlib.sha256(str(n).encode()).digest() * (n * 5000 + 1)


COLA = ScanDetails(store_planogram_id=501, planogram_name="Beverages 2024.2", section_id=31,
                   section_name="Soft Drinks / Cola", is_additional_section=False,
                   pre_pog=81.5, post_pog=90.0, pre_osa=88.0, post_osa=97.25, ok_count=40,
                   wandering_count=2, oos_count=3, hole_count=1,
                   compliance_date="2024-03-01")
# Same store planogram as COLA, another day: other figures, some unknown. The platform
# keeps POG/OSA figures per store planogram and day, so each scan must read its own.
COLA_LATER = replace(COLA, pre_pog=70.0, post_pog=None, pre_osa=91.5, post_osa=None,
                     ok_count=38, hole_count=None, compliance_date="2024-03-03")
# Another section of the same realogram (and store planogram, so the same day's figures).
DOOR = replace(COLA_LATER, section_id=33, section_name="Door 2 «Cans»", ok_count=12)
# No store planogram: no POG/OSA figures either (the platform has none to give).
CAFE = ScanDetails(store_planogram_id=None, planogram_name="Hot Drinks", section_id=32,
                   section_name="Café & Tea 'Spécial'", is_additional_section=True,
                   pre_pog=None, post_pog=None, pre_osa=None, post_osa=None, ok_count=0,
                   wandering_count=None, oos_count=7, hole_count=0)

# Capture order: a, e (same time as a, created later), b, d, c.
SEEDS: tuple[SeedScan, ...] = (
    SeedScan("a", 1, "2024-03-01T09:00:00+00:00", "done",
             (SeedFile("a1.png", _image(1)), SeedFile("a2.jpg", _image(2))), COLA,
             {"scanrelay_ref": "seed-a"}),
    SeedScan("b", 2, "2024-03-02T10:00:00+00:00", "done", (SeedFile("b1.png", _image(3)),),
             CAFE),
    SeedScan("c", 1, "2024-03-03T23:30:00+00:00", "processing",
             (SeedFile("c1.png", _image(4)),)),
    SeedScan("d", 1, "2024-03-03T08:00:00+00:00", "done",
             (SeedFile("d1.png", _image(5)), SeedFile("d2.png", _image(6)),
              SeedFile("d3.png", _image(7))), COLA_LATER, extra=(DOOR, COLA_LATER)),
    SeedScan("e", 2, "2024-03-01T09:00:00+00:00", "done", (SeedFile("e1.png", _image(8)),),
             None),
)


def folder_factory(tmp_path: Path, seeds: Sequence[SeedScan]) -> Seeded:
    """Writes the documented on-disk format directly, not through the instance."""
    root = tmp_path / "folder-instance"
    scan_ids: dict[str, int] = {}
    file_ids: dict[str, list[int]] = {}
    next_file = 1  # as low as a new instance would start: uploads must skip them
    for n, seed in enumerate(seeds):
        scan_id = 11 + n
        folder = root / "scans" / str(scan_id)
        (folder / "files").mkdir(parents=True)
        ids = []
        for f in seed.files:
            (folder / "files" / f"{next_file}.{f.filename.rsplit('.', 1)[1]}").write_bytes(f.data)
            ids.append(next_file)
            next_file += 1
        doc = {
            "id": scan_id, "store_id": seed.store_id, "status": seed.status,
            "has_report": seed.details is not None, "captured_at": seed.captured_at,
            "created_at": "2024-03-04T00:00:00+00:00",
            "provided_values": {"store": seed.store_id, "files": ids, **seed.provided},
            "files": [{"file_id": i, "file_type": "image", "filename": f.filename}
                      for i, f in zip(ids, seed.files, strict=True)],
            "reports": seed.reports(),
        }
        (folder / "scan.json").write_text(json.dumps(doc), encoding="utf-8")
        scan_ids[seed.key] = scan_id
        file_ids[seed.key] = ids
    return Seeded(FolderInstance("contract-folder", root), scan_ids, file_ids)


def platform_factory(tmp_path: Path, seeds: Sequence[SeedScan]) -> Seeded:
    """A reference server on a fresh database (dropped on cleanup), its rows written
    directly (``RefServer.insert_scan``), read through a ``PlatformInstance``."""
    pg.require_admin_dsn()
    dsn = pg.create_database("contract")
    cleanup: list[Callable[[], None]] = [lambda: pg.drop_database(dsn)]
    try:
        server = RefServer(dsn, tmp_path / "refserver", processing_delay=0.05).start()
        cleanup.append(lambda: _stop_clean(server))
        scan_ids: dict[str, int] = {}
        file_ids: dict[str, list[int]] = {}
        for seed in seeds:
            scan_ids[seed.key], file_ids[seed.key] = server.insert_scan(
                seed.store_id, datetime.fromisoformat(seed.captured_at), seed.status,
                files=[(f.filename, f.data) for f in seed.files],
                reports=seed.reports(), provided_values=seed.provided)
        instance = PlatformInstance("contract-platform", _platform_config(server, tmp_path))
    except BaseException:
        _run_all(reversed(cleanup))
        raise
    return Seeded(instance, scan_ids, file_ids, cleanup)


def _stop_clean(server: RefServer) -> None:
    server.stop()
    assert server.errors == []  # the reference server's own bugs


def _platform_config(server: RefServer, tmp_path: Path) -> PlatformInstanceConfig:
    params = pg.dsn_params(server.dsn)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api").write_text(server.password, encoding="utf-8")
    db_password: dict[str, Any] = {}
    if params.get("password"):
        (secrets / "db").write_text(params["password"], encoding="utf-8")
        db_password = {"db_password_file": secrets / "db"}
    db = DbConfig(host=params.get("host") or "127.0.0.1", port=int(params.get("port") or 5432),
                  dbname=params["dbname"], user=params.get("user") or "postgres")
    return PlatformInstanceConfig(kind="platform", api_url=server.api_url, db=db,
                                  api_username=server.username,
                                  api_password_file=secrets / "api", max_connections=8,
                                  timeout_seconds=30, retry_attempts=3, retry_max_seconds=30,
                                  **db_password)


# kind -> factory
FACTORIES: dict[str, Callable[[Path, Sequence[SeedScan]], Seeded]] = {
    "folder": folder_factory,
    "platform": platform_factory,
}


@pytest.fixture(params=sorted(FACTORIES))
def contract_instance(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Seeded]:
    seeded = FACTORIES[request.param](tmp_path, SEEDS)
    try:
        yield seeded
    finally:
        seeded.close()


def _seed(key: str) -> SeedScan:
    return next(s for s in SEEDS if s.key == key)


def _fetch(instance: Instance, ref: FileRef) -> tuple[bytes, str | None, int]:
    buffer = io.BytesIO()
    fetched = instance.fetch_file(ref, buffer)
    return buffer.getvalue(), fetched.original_filename, fetched.size


def _create(instance: Instance, tmp_path: Path, store: int, marker: str,
            images: Sequence[tuple[str, bytes]], **extra: Any) -> tuple[int, list[int]]:
    upload_ids = []
    for n, (filename, data) in enumerate(images):
        local = tmp_path / f"upload-{marker}-{n}"
        local.write_bytes(data)
        upload_ids.append(instance.upload_file(local, filename))
    payload = {"store": store, "files": upload_ids, "captured_at": "2024-04-05T06:07:08+00:00",
               "scanrelay_ref": marker, **extra}
    return instance.create_scan(payload), upload_ids


# ---- the contract ------------------------------------------------------------------


def test_instance_satisfies_the_protocol(contract_instance: Seeded) -> None:
    assert isinstance(contract_instance.instance, Instance)
    assert contract_instance.instance.max_connections >= 1


def test_get_scans_keeps_the_asked_order_and_leaves_missing_out(
        contract_instance: Seeded) -> None:
    ids = contract_instance.scan_ids
    missing = max(ids.values()) + 1000
    scans = contract_instance.instance.get_scans([ids["c"], missing, ids["a"], ids["b"]])
    assert [s.id for s in scans] == [ids["c"], ids["a"], ids["b"]]
    assert contract_instance.instance.get_scans([missing]) == []


def test_get_scans_returns_store_status_files_and_provided_values(
        contract_instance: Seeded) -> None:
    (scan,) = contract_instance.instance.get_scans([contract_instance.scan_ids["d"]])
    assert scan.store_id == 1
    assert scan.status == "done"
    assert scan.has_report is True and scan.processed
    assert datetime.fromisoformat(scan.captured_at or "") == datetime.fromisoformat(
        _seed("d").captured_at)
    assert [f.file_id for f in scan.files] == contract_instance.file_ids["d"]
    assert all(f.file_type == "image" for f in scan.files)
    (a,) = contract_instance.instance.get_scans([contract_instance.scan_ids["a"]])
    assert a.provided_values["scanrelay_ref"] == "seed-a"


def test_details_round_trip(contract_instance: Seeded) -> None:
    ids = contract_instance.scan_ids
    by_key = {contract_instance.key_of(s.id): s
              for s in contract_instance.instance.get_scans(list(ids.values()))}
    assert [_as_given(r) for r in by_key["a"].reports] == [COLA]
    # Every report (section, bay) in order, its own day's figures, nulls kept.
    assert [_as_given(r) for r in by_key["d"].reports] == [COLA_LATER, DOOR, COLA_LATER]
    assert [_as_given(r) for r in by_key["b"].reports] == [CAFE]  # nulls, unicode, quotes
    assert by_key["c"].details is None and not by_key["c"].has_report
    assert not by_key["c"].processed  # status processing
    assert by_key["e"].details is None and not by_key["e"].processed


def _as_given(report: ScanDetails) -> ScanDetails:
    """A report without the IDs a platform assigns (a folder keeps what it is given)."""
    return replace(report, report_id=None, planogram_id=None)


def _select(seeded: Seeded, **criteria: Any) -> list[str]:
    return [seeded.key_of(i) for i in seeded.instance.select_scans(Selection(**criteria))]


def test_select_without_filters_is_oldest_first_with_id_breaking_ties(
        contract_instance: Seeded) -> None:
    assert _select(contract_instance) == ["a", "e", "b", "d", "c"]


@pytest.mark.parametrize(("criteria", "expected"), [
    ({"store_id": 1}, ["a", "d", "c"]),
    ({"store_id": 3}, []),
    ({"captured_from": date(2024, 3, 2)}, ["b", "d", "c"]),
    ({"captured_to": date(2024, 3, 2)}, ["a", "e", "b"]),
    ({"captured_from": date(2024, 3, 3), "captured_to": date(2024, 3, 3)}, ["d", "c"]),
    ({"captured_from": date(2024, 3, 4)}, []),
    ({"status": "processing"}, ["c"]),
    ({"status": "done", "store_id": 1}, ["a", "d"]),
    ({"limit": 2}, ["a", "e"]),
    ({"store_id": 2, "limit": 1}, ["e"]),
])
def test_select_filters(contract_instance: Seeded, criteria: dict[str, Any],
                        expected: list[str]) -> None:
    assert _select(contract_instance, **criteria) == expected


def test_fetch_file_streams_identical_bytes(contract_instance: Seeded) -> None:
    (scan,) = contract_instance.instance.get_scans([contract_instance.scan_ids["d"]])
    for ref, seed_file in zip(scan.files, _seed("d").files, strict=True):
        data, original, size = _fetch(contract_instance.instance, ref)
        assert hashlib.sha256(data).digest() == hashlib.sha256(seed_file.data).digest()
        assert size == len(seed_file.data)
        assert original == seed_file.filename


def test_fetch_file_larger_than_a_chunk(contract_instance: Seeded, tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 * 4096 + 3)  # ~5 MiB, not a multiple of 1 MiB
    _, (upload_id,) = _create(contract_instance.instance, tmp_path, 1, "big", [("big.png", big)])
    data, _, size = _fetch(contract_instance.instance, FileRef(upload_id))
    assert size == len(big) and data == big


def test_fetch_of_a_missing_file_is_permanent(contract_instance: Seeded) -> None:
    missing = max(i for ids in contract_instance.file_ids.values() for i in ids) + 10_000
    with pytest.raises(PermanentError):
        contract_instance.instance.fetch_file(FileRef(missing), io.BytesIO())


def test_upload_and_create_make_a_scan_with_everything_given(
        contract_instance: Seeded, tmp_path: Path) -> None:
    instance = contract_instance.instance
    images = [("z-last.png", _image(20)), ("a-first.jpg", _image(21)), ("m.png", _image(22))]
    scan_id, upload_ids = _create(instance, tmp_path, 2, "new-1", images, operator="Zoë")
    assert scan_id not in contract_instance.scan_ids.values()
    seeded_files = {i for ids in contract_instance.file_ids.values() for i in ids}
    assert len(set(upload_ids)) == 3 and not seeded_files & set(upload_ids)
    (scan,) = instance.get_scans([scan_id])
    assert scan.store_id == 2
    assert datetime.fromisoformat(scan.captured_at or "") == datetime.fromisoformat(
        "2024-04-05T06:07:08+00:00")
    assert [f.file_id for f in scan.files] == upload_ids  # the payload's order
    assert scan.provided_values["scanrelay_ref"] == "new-1"
    assert scan.provided_values["operator"] == "Zoë"
    for ref, (filename, data) in zip(scan.files, images, strict=True):
        fetched, original, size = _fetch(instance, ref)
        assert (fetched, original, size) == (data, filename, len(data))


def test_find_scan_by_marker(contract_instance: Seeded, tmp_path: Path) -> None:
    instance = contract_instance.instance
    assert instance.find_scan_by_marker("scanrelay_ref", "new-2") is None
    scan_id, _ = _create(instance, tmp_path, 1, "new-2", [("x.png", _image(30))])
    assert instance.find_scan_by_marker("scanrelay_ref", "new-2") == scan_id
    assert instance.find_scan_by_marker("scanrelay_ref", "seed-a") == (
        contract_instance.scan_ids["a"])
    assert instance.find_scan_by_marker("scanrelay_ref", "unknown") is None
    assert instance.find_scan_by_marker("other_field", "new-2") is None


def test_find_scan_by_files_finds_a_create_by_any_of_its_upload_ids(
        contract_instance: Seeded, tmp_path: Path) -> None:
    instance = contract_instance.instance
    images = [("p.png", _image(31)), ("q.png", _image(32))]
    upload_ids = []
    for n, (filename, data) in enumerate(images):
        local = tmp_path / f"by-files-{n}"
        local.write_bytes(data)
        upload_ids.append(instance.upload_file(local, filename))
    assert instance.find_scan_by_files(upload_ids) is None  # uploaded, not created yet
    scan_id = instance.create_scan({"store": 1, "files": upload_ids,
                                    "captured_at": "2024-04-05T06:07:08+00:00"})
    assert instance.find_scan_by_files(upload_ids) == scan_id  # no marker needed
    assert instance.find_scan_by_files(upload_ids[1:]) == scan_id
    assert instance.find_scan_by_files(contract_instance.file_ids["a"]) == (
        contract_instance.scan_ids["a"])
    assert instance.find_scan_by_files([max(upload_ids) + 10_000]) is None
    assert instance.find_scan_by_files([]) is None


def test_create_takes_captured_at_as_epoch_seconds_too(
        contract_instance: Seeded, tmp_path: Path) -> None:
    instance = contract_instance.instance
    scan_id, _ = _create(instance, tmp_path, 1, "epoch", [("e.png", _image(33))],
                         captured_at=1712297228)
    (scan,) = instance.get_scans([scan_id])
    assert scan.provided_values["captured_at"] == 1712297228  # the payload, as sent
    assert captured_datetime(scan.captured_at) == datetime.fromisoformat(
        "2024-04-05T06:07:08+00:00")


def test_concurrent_creates_get_distinct_ids(contract_instance: Seeded, tmp_path: Path) -> None:
    instance = contract_instance.instance
    start = threading.Barrier(8)
    results: dict[int, tuple[int, list[int]]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            start.wait()
            results[n] = _create(instance, tmp_path, 1, f"thread-{n}",
                                 [(f"t{n}.png", _image(40 + n))])
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    scan_ids = [scan_id for scan_id, _ in results.values()]
    assert len(set(scan_ids)) == 8
    assert len({f for _, files in results.values() for f in files}) == 8
    scans = instance.get_scans(scan_ids)
    assert [s.id for s in scans] == scan_ids
    for n, (scan_id, files) in results.items():
        (scan,) = instance.get_scans([scan_id])
        assert scan.provided_values["scanrelay_ref"] == f"thread-{n}"
        assert [f.file_id for f in scan.files] == files
        assert _fetch(instance, scan.files[0])[0] == _image(40 + n)


# ---- folder kind: its own layout ---------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> FolderInstance:
    seeded = folder_factory(tmp_path, SEEDS)
    assert isinstance(seeded.instance, FolderInstance)
    return seeded.instance


def test_folder_half_created_scan_is_invisible(folder: FolderInstance) -> None:
    half = folder.root / "scans" / "99"
    (half / "files").mkdir(parents=True)
    (half / "files" / "999.png").write_bytes(b"x")
    (half / ".scan.json.abc.tmp").write_text('{"id": 99}')
    assert folder.get_scans([99]) == []
    assert 99 not in folder.select_scans(Selection())
    with pytest.raises(PermanentError):
        folder.fetch_file(FileRef(999), io.BytesIO())


def test_folder_corrupt_scan_json_names_scan_and_file(folder: FolderInstance) -> None:
    path = folder.root / "scans" / "11" / "scan.json"
    path.write_text('{"id": 11, "store_id": ', encoding="utf-8")
    with pytest.raises(PermanentError, match=r"scan 11.*scan\.json"):
        folder.get_scans([11])
    path.write_text(json.dumps({"id": 11, "store_id": "one"}), encoding="utf-8")
    with pytest.raises(PermanentError, match="store_id"):
        folder.get_scans([11])
    # A selection over the folder skips it instead of failing every other scan.
    assert 11 not in folder.select_scans(Selection())
    assert 12 in folder.select_scans(Selection())


def test_folder_create_writes_done_without_report_unless_details_given(
        folder: FolderInstance, tmp_path: Path) -> None:
    plain, _ = _create(folder, tmp_path, 1, "plain", [("p.png", b"p")])
    rich, _ = _create(folder, tmp_path, 1, "rich", [("r.png", b"r")], details=asdict(CAFE))
    (p, r) = folder.get_scans([plain, rich])
    assert (p.status, p.has_report, p.details) == ("done", False, None)
    assert (r.status, r.has_report, r.details) == ("done", True, CAFE)
    assert r.provided_values["details"]["section_name"] == CAFE.section_name


@pytest.mark.parametrize("payload", [
    {"store": "x", "files": []},
    {"store": 1, "files": "1"},
    {"store": 1, "files": [123456]},  # not an upload
    {"store": 1, "files": [], "captured_at": "yesterday"},
    {"store": 1, "files": [], "details": {"section_nam": "typo"}},
    {"store": 1, "files": [], "details": {"ok_count": "many"}},
    {"store": 1, "files": [], "weight": float("nan")},  # not storable as JSON
])
def test_folder_invalid_payload_is_permanent_and_leaves_no_scan(
        folder: FolderInstance, payload: dict[str, Any]) -> None:
    before = folder.select_scans(Selection())
    with pytest.raises(PermanentError):
        folder.create_scan(payload)
    assert folder.select_scans(Selection()) == before


def test_folder_upload_belongs_to_one_scan(folder: FolderInstance, tmp_path: Path) -> None:
    _, (upload_id,) = _create(folder, tmp_path, 1, "once", [("o.png", b"o")])
    with pytest.raises(PermanentError, match="already part of a scan"):
        folder.create_scan({"store": 1, "files": [upload_id]})


def test_folder_failed_create_gives_the_uploads_back(
        folder: FolderInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import daemon.instances.folder as folder_module

    local = tmp_path / "u.png"
    local.write_bytes(b"kept")
    upload_id = folder.upload_file(local, "u.png")
    scans_before = sorted(p.name for p in (folder.root / "scans").iterdir())

    def disk_full(*_: Any, **__: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder_module, "atomic_writer", disk_full)
    with pytest.raises(TransientError, match="No space left"):
        folder.create_scan({"store": 1, "files": [upload_id]})
    assert sorted(p.name for p in (folder.root / "scans").iterdir()) == scans_before
    monkeypatch.undo()
    scan_id = folder.create_scan({"store": 1, "files": [upload_id]})  # the upload is intact
    (scan,) = folder.get_scans([scan_id])
    assert _fetch(folder, scan.files[0])[0] == b"kept"


def test_folder_upload_claim_cannot_point_outside(folder: FolderInstance,
                                                   tmp_path: Path) -> None:
    local = tmp_path / "x.png"
    local.write_bytes(b"x")
    upload_id = folder.upload_file(local, "x.png")
    claim = folder.root / ".scanrelay" / "file-ids" / str(upload_id)
    claim.write_text(json.dumps({"filename": "x.png", "name": "../../../outside.png"}))
    with pytest.raises(PermanentError, match="corrupt"):
        folder.create_scan({"store": 1, "files": [upload_id]})


def test_folder_scan_id_can_be_asked_for_once(folder: FolderInstance) -> None:
    assert folder.create_scan({"store": 1, "files": []}, scan_id=5000) == 5000
    with pytest.raises(PermanentError, match="already exists"):
        folder.create_scan({"store": 1, "files": []}, scan_id=5000)
    assert folder.create_scan({"store": 1, "files": []}) == 5001  # highest + 1


def test_folder_writes_stay_inside_the_root(folder: FolderInstance, tmp_path: Path) -> None:
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(folder.root)}
    _create(folder, tmp_path, 1, "inside", [("../../evil/../x.png", b"x"), ("a/b\\c", b"y")])
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(folder.root)}
    assert {p for p in after - before if not p.name.startswith("upload-inside")} == set()


def test_folder_find_marker_and_file_made_by_another_instance(
        folder: FolderInstance, tmp_path: Path) -> None:
    assert folder.find_scan_by_marker("scanrelay_ref", "elsewhere") is None  # index built
    other = FolderInstance("same-folder", folder.root)
    scan_id, (file_id,) = _create(other, tmp_path, 2, "elsewhere", [("e.png", b"elsewhere")])
    assert folder.find_scan_by_marker("scanrelay_ref", "elsewhere") == scan_id
    assert _fetch(folder, FileRef(file_id))[0] == b"elsewhere"


CREATE_IN_PROCESS = """
import json, sys
from pathlib import Path
from daemon.instances.folder import FolderInstance
root, tag, tmp = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
instance = FolderInstance("proc", root)
made = []
for n in range(5):
    local = tmp / f"{tag}-{n}.png"
    local.write_bytes(f"{tag}-{n}".encode())
    file_id = instance.upload_file(local, local.name)
    made.append([instance.create_scan({"store": 1, "files": [file_id],
                                       "scanrelay_ref": f"{tag}-{n}"}), file_id])
print(json.dumps(made))
"""


def test_folder_ids_are_distinct_across_processes(folder: FolderInstance,
                                                  tmp_path: Path) -> None:
    project = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_IN_PROCESS, str(folder.root),
                               f"p{n}", str(tmp_path)], cwd=project, stdout=subprocess.PIPE,
                              text=True) for n in range(4)]
    made = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    scan_ids = [scan_id for rows in made for scan_id, _ in rows]
    file_ids = [file_id for rows in made for _, file_id in rows]
    assert len(set(scan_ids)) == 20 and len(set(file_ids)) == 20
    assert len(folder.get_scans(scan_ids)) == 20
    assert folder.find_scan_by_marker("scanrelay_ref", "p3-4") == made[3][4][0]


# ---- demo --------------------------------------------------------------------------


def _png_is_valid(data: bytes) -> bool:
    """Signature, every chunk's CRC, and IDAT inflating to the size IHDR promises."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            return False
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height = size
    return len(zlib.decompress(idat)) == height * (1 + 3 * width)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_create_demo_makes_two_usable_instances_idempotently(tmp_path: Path) -> None:
    roots = create_demo(tmp_path, scans=12, seed=7)
    assert [r.name for r in roots] == ["demo-source", "demo-target"]
    assert all(r.is_relative_to(tmp_path) for r in roots)
    source, target = (FolderInstance(r.name, r) for r in roots)
    ids = source.select_scans(Selection())
    assert ids == list(range(1001, 1013))
    assert target.select_scans(Selection()) == []
    scans: list[Scan] = source.get_scans(ids)
    assert sum(not s.has_report for s in scans) == 1
    with_details = [s.details for s in scans if s.details]
    sections = {d.section_name for d in with_details}
    assert {"Soft Drinks / Cola", "Café & Tea", "Aisle 3.B", "O'Brien's snacks"} <= sections
    assert None in sections
    assert any(d.store_planogram_id is None for d in with_details)
    assert len({s.store_id for s in scans}) > 1
    images = []
    for scan in scans:
        assert 1 <= len(scan.files) <= 3
        for ref in scan.files:
            data, original, size = _fetch(source, ref)
            assert _png_is_valid(data) and size == len(data) < 20_000
            assert original and original.endswith(".png")
            images.append(data)
    assert len(set(images)) == len(images)  # no two images the same
    before = _snapshot(tmp_path)
    assert create_demo(tmp_path, scans=12, seed=7) == roots
    assert _snapshot(tmp_path) == before  # nothing duplicated or rewritten


def test_create_demo_completes_a_partial_demo(tmp_path: Path) -> None:
    create_demo(tmp_path, scans=3)
    half = tmp_path / "demo-source" / "scans" / "1004"
    half.mkdir()  # as an interrupted run would leave it
    create_demo(tmp_path, scans=5)
    source = FolderInstance("s", tmp_path / "demo-source")
    assert sorted(source.select_scans(Selection())) == [1001, 1002, 1003, 1004, 1005]
    assert sum(len(s.files) for s in source.get_scans([1004, 1005])) >= 2


def test_folder_upload_cut_off_by_a_crash_is_reclaimed(tmp_path: Path) -> None:
    instance = FolderInstance("crashy", tmp_path / "crashy")
    source = tmp_path / "a.png"
    source.write_bytes(_image(3))
    upload = instance.upload_file(source, "a.png")
    # A create that moved the upload into its new scan folder, then died before
    # writing scan.json (kill -9): the folder is invisible, the upload is inside it.
    staged = next((tmp_path / "crashy").glob(f".scanrelay/uploads/{upload}.*"))
    half = tmp_path / "crashy" / "scans" / "77" / "files"
    half.mkdir(parents=True)
    staged.rename(half / staged.name)
    scan_id = instance.create_scan({"store": 1, "files": [upload],
                                    "captured_at": "2024-03-01T09:00:00+00:00"})
    (scan,) = instance.get_scans([scan_id])
    assert [f.file_id for f in scan.files] == [upload]
    with io.BytesIO() as out:
        instance.fetch_file(scan.files[0], out)
        assert out.getvalue() == _image(3)
