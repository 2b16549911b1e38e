"""``copy`` with platform instances (reference servers) through the real daemon:
payloads as the target received them (auto and mapped), the ledger's skip and
``force`` under faults, ``dry_run``, import and export with folder instances, and copy
with ``analyze`` (analysed, or deferred past the wait bound)."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from copy_support import (
    copy_request,
    env_for,
    mapping_rows,
    platform_instance,
    target_scans,
)
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.sandbox import Fault, Outcome, RefServer

ALWAYS_DROPPED = {"task_id", "id", "created_at", "updated_at"}
ASSIGNMENT = {"category_id", "section_id", "store_planogram", "aisle", "task_id", "replace_id"}


def root_for(tmp_path: Path, refs: dict[str, RefServer], **overrides: Any) -> Path:
    instances = {name: platform_instance(ref, name) for name, ref in refs.items()}
    return make_root(tmp_path, instances={**instances, **overrides.pop("instances", {})},
                     log={"level": "INFO"}, **overrides)


def copy_once(root: Path, env: dict[str, str], name: str, body: str,
              timeout: float = 90) -> tuple[str, dict[str, Any]]:
    with DaemonProcess(root, env=env):
        drop(root / "inbox", name, body)
        return wait_settled(root, [name], timeout=timeout)[name]


def raw_payload(ref: RefServer, scan_id: int) -> dict[str, Any]:
    row = ref.scan(scan_id)
    assert row is not None
    return dict(row["provided_values"]["_raw_data"])


@pytest.mark.slow
def test_auto_and_mapped_payloads_as_the_target_received_them(
        prod: RefServer, qa: RefServer, tmp_path: Path) -> None:
    seeded = prod.seed(scans=4, files_per_scan=3, file_size=(2_000, 6_000), seed=2)
    store = qa.seed(scans=0).store_ids[1]
    root = root_for(tmp_path, {"prod": prod, "qa": qa})
    env = env_for(prod=prod, qa=qa)
    ids = seeded.scan_ids
    folder, auto = copy_once(root, env, "auto.json", copy_request("prod", "qa", store, ids))
    assert (folder, auto["status"]) == ("done", "done"), auto
    auto_done_by = time.time()
    folder, mapped = copy_once(root, env, "mapped.json",
                               copy_request("prod", "qa", store, ids, mode="mapped",
                                            force=True, captured_at="source"))
    assert (folder, mapped["status"]) == ("done", "done"), mapped

    creates = [c for c in qa.received_creates if c.outcome == "201"]
    assert len(creates) == 2 * len(ids)
    by_marker = {c.payload["scanrelay_ref"]: c for c in creates}
    for scan_id in ids:
        raw = raw_payload(prod, scan_id)
        sent_auto = by_marker[f"prod:{scan_id}:{store}"].payload
        sent_mapped = by_marker[f"prod:{scan_id}:{store}:{mapped['run_id']}"].payload
        for sent, dropped in ((sent_auto, ALWAYS_DROPPED | ASSIGNMENT),
                              (sent_mapped, ALWAYS_DROPPED)):
            kept = {k: v for k, v in raw.items() if k not in dropped | {"store", "files"}}
            marker = sent["scanrelay_ref"]
            assert sent == {**kept, "store": store, "files": sent["files"],
                            "captured_at": sent["captured_at"], "scanrelay_ref": marker}, sent
            # The target's upload IDs, in the source's file order, with the same bytes.
            sources = [f.file_id for f in seeded.files[scan_id]]
            assert [qa.file_sha256(u) for u in sent["files"]] == \
                [seeded.sha256(f) for f in sources]
        # captured_at: now (the default) is the copy's epoch seconds; source is as seeded.
        assert isinstance(sent_auto["captured_at"], int)
        assert sent_auto["captured_at"] <= auto_done_by
        assert sent_mapped["captured_at"] == raw["captured_at"]
        assert sent_mapped["section_id"] == raw["section_id"]
        assert sent_mapped["store_planogram"] == raw["store_planogram"]
        assert sent_mapped["category_id"] == raw["category_id"]
        assert "section_id" not in sent_auto and "task_id" not in sent_mapped
    assert {s["marker"] for s in target_scans(qa)} == set(by_marker)


@pytest.mark.slow
def test_again_skips_everything_and_force_copies_once_more_under_faults(
        prod: RefServer, qa: RefServer, tmp_path: Path) -> None:
    seeded = prod.seed(scans=30, files_per_scan=2, file_size=3_000, seed=4)
    store = qa.seed(scans=0).store_ids[0]
    fast = {"timeout_seconds": 1, "retry_attempts": 10}
    root = root_for(tmp_path, {}, instances={"prod": platform_instance(prod, "prod", **fast),
                                             "qa": platform_instance(qa, "qa", **fast)})
    env = env_for(prod=prod, qa=qa)
    body = copy_request("prod", "qa", store, seeded.scan_ids, batch_size=7)
    for ref in (prod, qa):
        ref.faults.timeout_sleep = 1.5  # the client gives up after 1 s
        ref.faults.set(rate=0.2, seed=5)
    qa.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create", count=4)
    with DaemonProcess(root, env=env):
        drop(root / "inbox", "first.json", body)
        folder, first = wait_settled(root, ["first.json"], timeout=120)["first.json"]
        assert (folder, first["status"]) == ("done", "done"), first
        assert first["counts"]["recovered"] >= 4  # the resets after a committed create
        first_map = {r["Source_Scan_ID"]: r["Target_Scan_ID"]
                     for r in mapping_rows(root / first["run_dir"])}
        creates_before = len(qa.created_scan_ids())

        drop(root / "inbox", "again.json", body)
        folder, again = wait_settled(root, ["again.json"], timeout=60)["again.json"]
        assert (folder, again["status"]) == ("done", "done"), again
        rows = mapping_rows(root / again["run_dir"])
        assert {r["status"] for r in rows} == {"skipped"}
        assert {r["Source_Scan_ID"]: r["Target_Scan_ID"] for r in rows} == first_map
        assert len(qa.created_scan_ids()) == creates_before

        qa.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create", count=4)
        drop(root / "inbox", "forced.json", body.replace('"batch_size"', '"force": true, '
                                                                          '"batch_size"'))
        folder, forced = wait_settled(root, ["forced.json"], timeout=120)["forced.json"]
    assert (folder, forced["status"]) == ("done", "done"), forced
    scans = target_scans(qa)
    assert len(scans) == 2 * len(seeded.scan_ids)
    markers = Counter(s["marker"] for s in scans)
    assert max(markers.values()) == 1, "a marker twice: a duplicate target scan"
    forced_markers = {m for m in markers if m.endswith(forced["run_id"])}
    assert forced_markers == {f"prod:{i}:{store}:{forced['run_id']}" for i in seeded.scan_ids}
    assert set(qa.created_scan_ids()) == {s["id"] for s in scans}


@pytest.mark.slow
def test_dry_run_writes_nothing_to_the_target(prod: RefServer, qa: RefServer,
                                              tmp_path: Path) -> None:
    seeded = prod.seed(scans=6, files_per_scan=2, file_size=2_000, seed=6)
    store = qa.seed(scans=0).store_ids[0]
    root = root_for(tmp_path, {"prod": prod, "qa": qa})
    ids = [*seeded.scan_ids, 999_999]
    folder, result = copy_once(root, env_for(prod=prod, qa=qa), "dry.json",
                               copy_request("prod", "qa", store, ids, dry_run=True))
    assert (folder, result["status"]) == ("failed", "partial")  # the unknown scan
    rows = mapping_rows(root / result["run_dir"])
    assert [r["status"] for r in rows] == ["planned"] * 6 + ["failed"]
    assert "999999 not found in prod" in rows[-1]["error"]
    assert result["dry_run"] == {"would_copy": 6, "would_skip": 0}
    assert qa.stats.count("upload") == 0 and qa.received_creates == []
    assert prod.stats.count("blob") == 0  # a plan reads no file
    assert target_scans(qa) == []


@pytest.mark.slow
def test_import_folder_to_platform(qa: RefServer, tmp_path: Path) -> None:
    store = qa.seed(scans=0).store_ids[2]
    root = root_for(tmp_path, {"qa": qa})  # demo-source is a folder instance
    ids = list(range(1001, 1007))
    folder, result = copy_once(root, env_for(qa=qa), "import.json",
                               copy_request("demo-source", "qa", store, ids,
                                            captured_at="source"))
    assert (folder, result["status"]) == ("done", "done"), result
    rows = mapping_rows(root / result["run_dir"])
    assert [int(r["Source_Scan_ID"]) for r in rows] == ids
    source_root = root / "data" / "demo-source" / "scans"
    for row in rows:
        doc = json.loads((source_root / row["Source_Scan_ID"] / "scan.json").read_text())
        created = qa.scan(int(row["Target_Scan_ID"]))
        assert created is not None and created["store_id"] == store
        sent = created["provided_values"]["_raw_data"]
        # The folder kind's reports are no platform payload.
        assert "details" not in sent and "reports" not in sent
        assert sent["captured_at"] == doc["captured_at"]
        assert sent["device"] == doc["provided_values"]["device"]
        assert sent["scanrelay_ref"] == f"demo-source:{doc['id']}:{store}"
        expected = [hashlib.sha256(next((source_root / str(doc["id"]) / "files").glob(
            f"{f['file_id']}.*")).read_bytes()).hexdigest() for f in doc["files"]]
        assert [qa.file_sha256(u) for u in sent["files"]] == expected


@pytest.mark.slow
def test_export_platform_to_folder_keeps_files_and_details(prod: RefServer,
                                                           tmp_path: Path) -> None:
    seeded = prod.seed(scans=5, files_per_scan=2, file_size=4_000, seed=8,
                       sections=(1, 2, 3))
    root = root_for(tmp_path, {"prod": prod}, instances={
        "archive": {"kind": "folder", "path": "./data/archive"}})
    folder, result = copy_once(root, env_for(prod=prod), "export.json",
                               copy_request("prod", "archive", 5, seeded.scan_ids))
    assert (folder, result["status"]) == ("done", "done"), result
    archive = root / "data" / "archive" / "scans"
    for row in mapping_rows(root / result["run_dir"]):
        source_id = int(row["Source_Scan_ID"])
        doc = json.loads((archive / row["Target_Scan_ID"] / "scan.json").read_text())
        reports = prod.scan_reports(source_id)  # every section, in order
        assert reports and doc["has_report"] is True
        assert [r["section_name"] for r in doc["reports"]] == \
            [r["section_name"] for r in reports]
        assert [r["pre_pog"] for r in doc["reports"]] == \
            pytest.approx([r["pre_pog"] for r in reports])
        assert doc["store_id"] == 5
        assert doc["provided_values"]["scanrelay_ref"] == f"prod:{source_id}:5"
        names = [f.original_filename for f in seeded.files[source_id]]
        assert [f["filename"] for f in doc["files"]] == names
        hashes = [hashlib.sha256(next((archive / str(doc["id"]) / "files").glob(
            f"{f['file_id']}.*")).read_bytes()).hexdigest() for f in doc["files"]]
        assert hashes == [seeded.sha256(f.file_id) for f in seeded.files[source_id]]


@pytest.mark.slow
def test_copy_then_analysis_matches_the_target_recognition(
        prod: RefServer, qa: RefServer, tmp_path: Path) -> None:
    seeded = prod.seed(scans=12, files_per_scan=1, file_size=2_000, seed=9)
    store = qa.seed(scans=0).store_ids[0]
    qa.processing_delay = 0.5
    qa.processing.set_weights({o: 1.0 for o in (Outcome.SAME, Outcome.OTHER_PLANOGRAM,
                                                Outcome.OTHER_SECTION, Outcome.HIGHER_POG)})
    root = root_for(tmp_path, {"prod": prod, "qa": qa},
                    copy={"wait_for_processing": 60, "poll_interval": 0.3})
    # captured_at: source: each copy keeps its own day, so the target's compliance row
    # of that day is the copy's own (with now, copies of a day share one, as on the
    # platform, and the recognition's ground truth would not hold per scan).
    folder, result = copy_once(root, env_for(prod=prod, qa=qa), "analyse.json",
                               copy_request("prod", "qa", store, seeded.scan_ids,
                                            analyze=True, captured_at="source"))
    assert (folder, result["status"]) == ("done", "done"), result
    analysis = result["analysis"]
    assert analysis["status"] == "done", analysis
    expected = Counter(str(qa.recognition(int(r["Target_Scan_ID"])).expected_comment)
                       for r in mapping_rows(root / result["run_dir"]))
    assert {k: v for k, v in analysis["counts"].items() if v} == dict(expected)
    assert (root / result["run_dir"] / "analysis.xlsx").is_file()


@pytest.mark.slow
def test_analysis_is_deferred_when_processing_outlasts_the_bound(
        prod: RefServer, qa: RefServer, tmp_path: Path) -> None:
    seeded = prod.seed(scans=3, files_per_scan=1, file_size=2_000, seed=10)
    store = qa.seed(scans=0).store_ids[0]
    qa.processing_delay = 120
    root = root_for(tmp_path, {"prod": prod, "qa": qa},
                    copy={"wait_for_processing": 1.5, "poll_interval": 0.2})
    folder, result = copy_once(root, env_for(prod=prod, qa=qa), "slow.json",
                               copy_request("prod", "qa", store, seeded.scan_ids,
                                            analyze=True))
    assert (folder, result["status"]) == ("done", "done"), result
    assert result["analysis"]["status"] == "deferred"
    assert "3 of 3 target scans were not processed" in result["analysis"]["reason"]
    assert result["counts"]["copied"] == 3


@pytest.mark.slow
def test_a_failing_batch_retries_only_its_unfinished_scans(
        prod: RefServer, qa: RefServer, tmp_path: Path) -> None:
    seeded = prod.seed(scans=20, files_per_scan=2, file_size=2_000, seed=11)
    store = qa.seed(scans=0).store_ids[0]
    # No retries inside the instance: every second upload fails, so batches fall under
    # 80 % upload success and the batch-level retry has to do the work.
    root = root_for(tmp_path, {"prod": prod}, instances={
        "qa": platform_instance(qa, "qa", retry_attempts=1)},
        copy={"batch_retry_pause": 0.2})
    qa.faults.set(rate=0.5, kinds={Fault.HTTP_503}, endpoints={"upload"}, seed=12)
    folder, result = copy_once(root, env_for(prod=prod, qa=qa), "flaky.json",
                               copy_request("prod", "qa", store, seeded.scan_ids))
    counts = result["counts"]
    assert counts["batch_retries"] >= 1, result
    rows = mapping_rows(root / result["run_dir"])
    ok = {int(r["Source_Scan_ID"]): int(r["Target_Scan_ID"]) for r in rows
          if r["status"] == "ok"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(ok) + len(failed) == 20 and len(ok) >= 10
    assert all("upload" in r["error"] and "503" in r["error"] for r in failed)
    assert all(f["transient"] for f in result["failed"])
    assert folder == ("done" if not failed else "failed")
    # Each scan created at most once; each source file downloaded exactly once (a
    # retried scan reuses what it had), so only unfinished work was redone.
    scans = target_scans(qa)
    assert sorted(s["id"] for s in scans) == sorted(ok.values())
    assert len({s["marker"] for s in scans}) == len(scans)
    downloads = Counter(int(r.path.split("?")[0].rsplit("/", 1)[1]) for r in prod.blob_requests)
    assert max(downloads.values()) == 1
    assert {f.file_id for i in ok for f in seeded.files[i]} <= set(downloads)
    run_log = (root / result["run_dir"] / "run.log").read_text()
    assert "too many failures" in run_log and "retry 1:" in run_log
