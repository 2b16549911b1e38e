"""A resumed download skips the batches that had finished whole (``download:batch``
records) without asking the source or re-hashing, and redoes a batch whose files are
no longer as recorded. In-process, on a folder instance (real files)."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from analysis_support import config_with, run_context
from helpers import Counting

from daemon.errors import Interrupted
from daemon.instances.registry import Instances
from daemon.request import Request
from handlers import download

SCANS, FILES, BATCH = 30, 2, 5  # six batches
FIRST_ID = 7001


def write_source(root: Path) -> None:
    file_id = 1
    for scan_id in range(FIRST_ID, FIRST_ID + SCANS):
        folder = root / "scans" / str(scan_id)
        (folder / "files").mkdir(parents=True)
        files = []
        for _ in range(FILES):
            (folder / "files" / f"{file_id}.jpg").write_bytes(b"\xff\xd8" + bytes([file_id]) * 500)
            files.append({"file_id": file_id, "file_type": "image", "filename": f"{file_id}.jpg"})
            file_id += 1
        (folder / "scan.json").write_text(json.dumps({
            "id": scan_id, "store_id": 1, "status": "done", "has_report": False,
            "captured_at": "2026-11-20T10:00:00+00:00", "created_at": None,
            "provided_values": {}, "files": files, "details": None}))


def start(tmp_path: Path) -> tuple[Any, Counting]:
    config = config_with(tmp_path, {"src": {"kind": "folder", "path": "./src",
                                            "max_connections": 2}})
    source = Counting(Instances(config).get("src"))
    request = Request(action="download", source="src", batch_size=BATCH,
                      scan_ids=list(range(FIRST_ID, FIRST_ID + SCANS)))
    ctx = run_context(tmp_path / "runs" / "r1", config, request, Instances(config))
    ctx.instance = lambda _name: source  # type: ignore[assignment,return-value]
    return ctx, source


def interrupted_after(tmp_path: Path, batches: int) -> None:
    """A first run stopped once ``batches`` batches were reported (as by a crash)."""
    ctx, _ = start(tmp_path)
    reported = 0

    def progress(done: int, total: int, **_: Any) -> None:
        nonlocal reported
        reported += 1
        if reported == batches:
            ctx.stop.set()

    ctx.progress = progress
    with pytest.raises(Interrupted):
        download.run(ctx)
    ctx.checkpoint.close()


def manifest(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_source(tmp_path / "src")
    return tmp_path


def test_finished_batches_are_skipped_whole(root: Path) -> None:
    interrupted_after(root, 2)
    ctx, source = start(root)
    assert ctx.checkpoint.held() == 0
    result = download.run(ctx)
    ctx.checkpoint.close()
    finished = list(range(FIRST_ID, FIRST_ID + 2 * BATCH))
    assert not set(source.asked) & set(finished), "finished batches were read again"
    assert sorted(source.asked) == list(range(FIRST_ID + 2 * BATCH, FIRST_ID + SCANS))
    assert result.counts["files"] == SCANS * FILES and not result.failed
    assert result.counts["reused_files"] >= 2 * BATCH * FILES
    rows = manifest(ctx.run_dir)
    assert len(rows) == SCANS * FILES and all(r["status"] == "ok" for r in rows)
    assert [int(r["scan_id"]) for r in rows[::FILES]] == list(range(FIRST_ID, FIRST_ID + SCANS))


def test_a_resume_starts_its_first_new_batch_before_reporting_the_finished_ones(
        root: Path) -> None:
    interrupted_after(root, 3)
    ctx, source = start(root)
    asked_when_reported: list[int] = []
    ctx.progress = lambda done, total, **_: asked_when_reported.append(len(source.asked))
    download.run(ctx)
    ctx.checkpoint.close()
    new_batch = list(range(FIRST_ID + 3 * BATCH, FIRST_ID + 4 * BATCH))
    assert source.asked[:BATCH] == new_batch, "it did not pick up where the first run stopped"
    assert asked_when_reported[0] >= BATCH, "the new batch waited for the finished ones"
    rows = manifest(ctx.run_dir)
    assert [int(r["scan_id"]) for r in rows[::FILES]] == list(range(FIRST_ID, FIRST_ID + SCANS))


def test_a_batch_whose_file_changed_is_done_again(root: Path) -> None:
    interrupted_after(root, 2)
    damaged = next((root / "runs" / "r1" / "images").glob(f"{FIRST_ID + 1}_*"))
    damaged.write_bytes(b"cut")
    ctx, source = start(root)
    download.run(ctx)
    ctx.checkpoint.close()
    assert set(range(FIRST_ID, FIRST_ID + BATCH)) <= set(source.asked)  # batch 1 again
    assert not set(range(FIRST_ID + BATCH, FIRST_ID + 2 * BATCH)) & set(source.asked)
    assert damaged.read_bytes().startswith(b"\xff\xd8")  # downloaded again, whole
    rows = manifest(ctx.run_dir)
    assert len(rows) == SCANS * FILES and all(r["status"] == "ok" for r in rows)


def test_a_resumed_run_stops_cleanly_too(root: Path) -> None:
    interrupted_after(root, 2)
    interrupted_after(root, 1)  # the resumed run stops again, at its first batch
    ctx, source = start(root)
    ctx.stop = threading.Event()
    result = download.run(ctx)
    ctx.checkpoint.close()
    assert not result.failed and result.counts["files"] == SCANS * FILES
    assert len(manifest(ctx.run_dir)) == SCANS * FILES
