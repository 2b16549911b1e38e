"""A resumed copy picks up where the run before it stopped: it reads its first new
scans before it reports the ones created before the restart, reads none of those again,
creates no scan twice, and reports every scan in request order. In-process, on folder
instances (real files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from analysis_support import config_with, run_context
from copy_support import mapping_rows
from helpers import Counting

from daemon.checkpoint import Checkpoint
from daemon.demo import FIRST_SCAN_ID, create_demo
from daemon.errors import Interrupted
from daemon.instances.registry import Instances
from daemon.request import Request
from handlers import copy

# Ten batches, the first five of them (more than the pipeline admits at once) created
# before the restart.
SCANS, BATCH, DONE, STORE = 80, 8, 5, 77
IDS = list(range(FIRST_SCAN_ID, FIRST_SCAN_ID + SCANS))


def start(root: Path) -> tuple[Any, Counting, Instances]:
    config = config_with(root, {
        "src": {"kind": "folder", "path": "./data/demo-source", "max_connections": 2},
        "dst": {"kind": "folder", "path": "./data/demo-target", "max_connections": 2}})
    instances = Instances(config)
    source = Counting(instances.get("src"))
    request = Request(action="copy", source="src", target="dst", target_store_id=STORE,
                      batch_size=BATCH, scan_ids=IDS)
    ctx = run_context(root / "runs" / "r1", config, request, instances)
    ctx.instance = lambda name: source if name == "src" else instances.get(name)
    return ctx, source, instances


def interrupted_after(root: Path, batches: int) -> None:
    """A first run stopped once ``batches`` batches were reported (as by a crash)."""
    ctx, _, instances = start(root)
    reported = 0

    def progress(done: int, total: int, **_: Any) -> None:
        nonlocal reported
        reported += 1
        if reported == batches:
            ctx.stop.set()

    ctx.progress = progress
    with pytest.raises(Interrupted):
        copy.run(ctx)
    ctx.checkpoint.close()
    instances.close()


def test_a_resumed_copy_starts_new_scans_before_reporting_the_created_ones(
        tmp_path: Path) -> None:
    create_demo(tmp_path / "data", scans=SCANS)
    interrupted_after(tmp_path, DONE)
    journal = Checkpoint(tmp_path / "runs" / "r1")
    created_before = {i for i in IDS if journal.get(f"copy:created:{i}") is not None}
    journal.close()
    assert set(IDS[:DONE * BATCH]) <= created_before < set(IDS), "not a half-done run"
    ctx, source, instances = start(tmp_path)
    asked_when_reported: list[int] = []
    ctx.progress = lambda done, total, **_: asked_when_reported.append(len(source.asked))
    result = copy.run(ctx)
    ctx.checkpoint.close()
    instances.close()
    assert asked_when_reported[0] > 0, "the first new scans waited for the created ones"
    assert not set(source.asked) & set(IDS[:DONE * BATCH]), "created scans were read again"
    rows = mapping_rows(ctx.run_dir)
    assert [int(r["Source_Scan_ID"]) for r in rows] == IDS
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["Target_Scan_ID"] for r in rows}) == SCANS
    assert len(list((tmp_path / "data" / "demo-target" / "scans").glob("*/scan.json"))) \
        == SCANS, "a scan was created twice"
    assert result.counts["copied"] == SCANS and not result.failed

