"""``copy`` between folder instances through the real daemon: the embedded demo scans
from ``demo-source`` into ``demo-target``: files, payload, details, marker, mapping;
the ledger's skip, ``force``, ``dry_run``, and copy with ``analyze``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from copy_support import copy_request, journal, mapping_rows
from helpers import DEMO_SCAN_IDS, DaemonProcess, drop, make_root, wait_settled

SOURCE, TARGET = "demo-source", "demo-target"
STORE = 77


def scans_of(root: Path, instance: str) -> dict[int, dict[str, Any]]:
    folder = root / "data" / instance / "scans"
    found = {}
    for path in folder.glob("*/scan.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        found[doc["id"]] = doc
    return found


def file_hashes(root: Path, instance: str, scan: dict[str, Any]) -> list[str]:
    folder = root / "data" / instance / "scans" / str(scan["id"]) / "files"
    out = []
    for ref in scan["files"]:
        (path,) = folder.glob(f"{ref['file_id']}.*")
        out.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def run_copy(root: Path, name: str, timeout: float = 60, **extra: Any
             ) -> tuple[str, dict[str, Any]]:
    drop(root / "inbox", name, copy_request(SOURCE, TARGET, STORE, DEMO_SCAN_IDS, **extra))
    return wait_settled(root, [name], timeout=timeout)[name]


@pytest.mark.slow
def test_folder_to_folder_copy_skip_force_and_dry_run(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with DaemonProcess(root):
        before = int(time.time())
        folder, result = run_copy(root, "first.json")
        assert (folder, result["status"]) == ("done", "done"), result
        run_dir = root / result["run_dir"]
        source, target = scans_of(root, SOURCE), scans_of(root, TARGET)
        assert len(target) == len(DEMO_SCAN_IDS)
        rows = mapping_rows(run_dir)
        assert [int(r["Source_Scan_ID"]) for r in rows] == DEMO_SCAN_IDS
        assert {r["status"] for r in rows} == {"ok"}
        for row in rows:
            src, dst = source[int(row["Source_Scan_ID"])], target[int(row["Target_Scan_ID"])]
            assert dst["store_id"] == STORE
            # captured_at: now (the default): the copy's time in integer epoch seconds
            sent = dst["provided_values"]["captured_at"]
            assert isinstance(sent, int) and before <= sent <= time.time()
            assert dst["captured_at"] == datetime.fromtimestamp(sent, UTC).isoformat()
            assert dst["reports"] == src["reports"]  # the archive keeps the reports
            assert file_hashes(root, TARGET, dst) == file_hashes(root, SOURCE, src)
            assert [f["filename"] for f in dst["files"]] == [f["filename"] for f in src["files"]]
            payload = dst["provided_values"]
            assert payload["scanrelay_ref"] == f"{SOURCE}:{src['id']}:{STORE}"
            assert payload["device"] == src["provided_values"]["device"]
            assert payload["files"] == [f["file_id"] for f in dst["files"]]
        assert result["counts"]["copied"] == len(DEMO_SCAN_IDS)
        assert not (run_dir / ".copy").exists(), "temporary files left behind"
        first_ids = {int(r["Source_Scan_ID"]): int(r["Target_Scan_ID"]) for r in rows}

        # Again: every scan skipped with its existing target ID, nothing new.
        folder, again = run_copy(root, "again.json")
        assert (folder, again["status"]) == ("done", "done")
        rows = mapping_rows(root / again["run_dir"])
        assert {r["status"] for r in rows} == {"skipped"}
        assert {int(r["Source_Scan_ID"]): int(r["Target_Scan_ID"]) for r in rows} == first_ids
        assert len(scans_of(root, TARGET)) == len(DEMO_SCAN_IDS)

        # A dry run, forced: plans every scan, writes nothing to the target.
        folder, dry = run_copy(root, "dry.json", force=True, dry_run=True)
        assert (folder, dry["status"]) == ("done", "done")
        assert {r["status"] for r in mapping_rows(root / dry["run_dir"])} == {"planned"}
        assert dry["dry_run"] == {"would_copy": len(DEMO_SCAN_IDS), "would_skip": 0}
        assert len(scans_of(root, TARGET)) == len(DEMO_SCAN_IDS)

        # Forced: one new scan per source scan, marked with the run.
        folder, forced = run_copy(root, "forced.json", force=True)
        assert (folder, forced["status"]) == ("done", "done")
        rows = mapping_rows(root / forced["run_dir"])
        assert {r["status"] for r in rows} == {"ok"}
        new_ids = {int(r["Target_Scan_ID"]) for r in rows}
        assert not new_ids & set(first_ids.values())
        target = scans_of(root, TARGET)
        assert len(target) == 2 * len(DEMO_SCAN_IDS)
        for new_id in new_ids:
            assert target[new_id]["provided_values"]["scanrelay_ref"].endswith(
                ":" + forced["run_id"])


@pytest.mark.slow
def test_copy_with_analyze_waits_then_analyses_or_defers(tmp_path: Path) -> None:
    root = make_root(tmp_path, copy={"wait_for_processing": 3, "poll_interval": 0.2})
    with_report = DEMO_SCAN_IDS[:-1]  # the newest demo scan has no report
    with DaemonProcess(root):
        drop(root / "inbox", "ready.json",
             copy_request(SOURCE, TARGET, STORE, with_report, analyze=True))
        folder, result = wait_settled(root, ["ready.json"], timeout=60)["ready.json"]
        assert (folder, result["status"]) == ("done", "done"), result
        analysis = result["analysis"]
        assert analysis["status"] == "done", analysis
        assert sum(analysis["counts"].values()) == len(with_report)
        run_dir = root / result["run_dir"]
        for name in ("analysis.csv", "analysis.xlsx", "source_scandetails.csv",
                     "target_scandetails.csv", "scan_mapping.csv"):
            assert (run_dir / name).is_file(), name

        # The newest scan's copy never gets a report: waiting, then deferred at the bound.
        drop(root / "inbox", "late.json",
             copy_request(SOURCE, TARGET, STORE + 1, DEMO_SCAN_IDS, analyze=True))
        statuses = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (root / "done" / "late.json").exists():
            for run_json in (root / "runs").glob("*-copy-*/run.json"):
                with contextlib.suppress(ValueError, KeyError, OSError):
                    statuses.add(json.loads(run_json.read_text())["status"])
            time.sleep(0.05)
        folder, late = wait_settled(root, ["late.json"], timeout=10)["late.json"]
    assert (folder, late["status"]) == ("done", "done"), late
    assert "waiting" in statuses
    assert late["analysis"]["status"] == "deferred"
    assert "1 of 12 target scans were not processed within 3 s" in late["analysis"]["reason"]
    late_dir = root / late["run_dir"]
    assert "copy:wait" in journal(late_dir)
    assert json.loads((late_dir / "run.json").read_text())["analysis"]["status"] == "deferred"
    assert not (late_dir / "analysis.csv").exists()
