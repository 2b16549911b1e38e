"""Crash and stop safety of the spine: ``kill -9`` in the middle of a download of 200
scans, then a restart: the run resumes, completes, and re-downloads no file that was
already complete. SIGTERM: exit within 10 s, checkpointed, resumed by the next start."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from helpers import DaemonProcess, drop, make_root, wait_settled

SCANS = 200
FILES_PER_SCAN = 3
FILE_BYTES = 1024 * 1024
FIRST_ID = 5001


def _write_scans(instance_root: Path) -> dict[tuple[int, int], str]:
    """200 scans of 3 x 1 MiB files in the folder format; sha256 per (scan, file)."""
    hashes = {}
    file_id = 1
    for scan_id in range(FIRST_ID, FIRST_ID + SCANS):
        folder = instance_root / "scans" / str(scan_id)
        (folder / "files").mkdir(parents=True)
        files = []
        for _ in range(FILES_PER_SCAN):
            data = hashlib.sha256(str(file_id).encode()).digest() * (FILE_BYTES // 32)
            (folder / "files" / f"{file_id}.jpg").write_bytes(data)
            hashes[(scan_id, file_id)] = hashlib.sha256(data).hexdigest()
            files.append({"file_id": file_id, "file_type": "image", "filename": f"{file_id}.jpg"})
            file_id += 1
        scan = {"id": scan_id, "store_id": 3, "status": "done", "has_report": True,
                "captured_at": "2026-11-20T10:00:00+00:00", "created_at": None,
                "provided_values": {}, "files": files,
                "details": {"section_name": f"Section {scan_id % 7}",
                            "store_planogram_id": 900 + scan_id % 5}}
        (folder / "scan.json").write_text(json.dumps(scan))
    return hashes


def _root(tmp_path: Path) -> tuple[Path, dict[tuple[int, int], str]]:
    root = make_root(tmp_path, demo=False, instances={
        "big": {"kind": "folder", "path": "./data/big", "max_connections": 1}},
        profiles={"big-download": {"action": "download", "source": "big"}},
        defaults={"profile": "big-download", "batch_size": 10}, log={"level": "INFO"})
    return root, _write_scans(root / "data" / "big")


def _request() -> str:
    return "scan_id\n" + "".join(f"{i}\n" for i in range(FIRST_ID, FIRST_ID + SCANS))


def _journal(run_dir: Path) -> dict[str, dict[str, object]]:
    """The journal's file records (``file:S:F``; batch records left out)."""
    records = {}
    for line in (run_dir / "checkpoint.jsonl").read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["key"].startswith("file:"):
            records[record["key"]] = record
    return records


def _wait_for_records(root: Path, at_least: int, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_dir in (root / "runs").glob("*-download-*"):
            if (run_dir / "checkpoint.jsonl").exists() and \
                    len(_journal(run_dir)) >= at_least:
                return run_dir
        time.sleep(0.02)
    raise AssertionError(f"fewer than {at_least} files downloaded within {timeout} s")


def _assert_complete(root: Path, run_dir: Path, hashes: dict[tuple[int, int], str]) -> None:
    images = sorted((run_dir / "images").iterdir())
    assert len(images) == SCANS * FILES_PER_SCAN
    assert not [p for p in images if p.name.startswith(".")], "temp files left behind"
    manifest = (run_dir / "manifest.csv").read_text().splitlines()[1:]
    assert len(manifest) == SCANS * FILES_PER_SCAN
    for row in manifest:
        scan_id, file_id, path, size, sha, status, _ = row.split(",")
        assert status == "ok"
        assert sha == hashes[(int(scan_id), int(file_id))]
        assert int(size) == FILE_BYTES
        data = (run_dir / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha


@pytest.mark.slow
def test_kill_9_mid_download_resumes_without_redownloading(tmp_path: Path) -> None:
    root, hashes = _root(tmp_path)
    with DaemonProcess(root) as daemon:
        drop(root / "inbox", "big.csv", _request())
        run_dir = _wait_for_records(root, at_least=150)
        daemon.kill()
    before = _journal(run_dir)
    total = SCANS * FILES_PER_SCAN
    assert 150 <= len(before) < total, "the kill did not land mid-run"
    stats = {key: os.stat(run_dir / str(rec["path"])) for key, rec in before.items()}
    assert list((root / "processing").iterdir()), "the request must still be claimed"

    with DaemonProcess(root):
        folder, result = wait_settled(root, ["big.csv"], timeout=120)["big.csv"]
    assert folder == "done" and result["status"] == "done"
    assert result["run_id"] == run_dir.name, "the same run resumed"
    _assert_complete(root, run_dir, hashes)
    for key, st in stats.items():  # complete before the kill: untouched since
        now = os.stat(run_dir / str(before[key]["path"]))
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), key
    run = json.loads((run_dir / "run.json").read_text())
    assert run["counts"]["reused_files"] == len(before)
    assert run["counts"]["files"] == total
    assert run["attempts"] == 2


@pytest.mark.slow
def test_sigterm_checkpoints_and_next_start_resumes(tmp_path: Path) -> None:
    root, hashes = _root(tmp_path)
    with DaemonProcess(root) as daemon:
        drop(root / "inbox", "big.csv", _request())
        run_dir = _wait_for_records(root, at_least=60)
        assert daemon.stop() == 0
        assert daemon.stop_seconds < 10
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "running" and "interrupted_at" in run
    done_before = len(_journal(run_dir))
    assert done_before < SCANS * FILES_PER_SCAN
    with DaemonProcess(root):
        folder, result = wait_settled(root, ["big.csv"], timeout=120)["big.csv"]
    assert folder == "done"
    _assert_complete(root, run_dir, hashes)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["counts"]["reused_files"] == done_before
