"""Deferred analyses: a copy whose target scans were not processed within the wait
bound completes with ``analysis: deferred``; at the next rerun window the scheduler
drops an ``analyze`` request with ``from_run`` for it, once, and when that has run the
copy run's ``run.json`` points at the analysis run.

- the drop, on a copy result crafted in ``done/`` (folder instances): exactly once over
  many windows and a restart, and the lineage written back;
- the whole chain with the copy action, against the reference platform server whose
  processing takes longer than the wait bound."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DaemonProcess, drop, listing, make_root, wait_settled
from test_download_platform import daemon_env, platform_root

from daemon.sandbox import RefServer
from daemon.schedule.reruns import analysis_name

COPY_RUN = "20261121-231500-copy-3f9a1c"
FOLLOW_UP = 10.0  # seconds: the scheduler's follow-up comes every 5 s


def craft_deferred_copy(root: Path, name: str = "nightly-copy.json") -> None:
    """A settled copy of demo-source 1001, 1002 into demo-target whose analysis was
    deferred: its run folder (request.json, run.json, scan_mapping.csv) and ``done/``."""
    run_dir = root / "runs" / COPY_RUN
    run_dir.mkdir(parents=True)
    request = {"action": "copy", "source": "demo-source", "target": "demo-target",
               "target_store_id": 1, "scan_ids": [1001, 1002], "analyze": True}
    analysis = {"status": "deferred", "pending": 2,
                "reason": "2 of 2 target scans were not processed within 5 s"}
    (run_dir / "request.json").write_text(json.dumps(request))
    (run_dir / "run.json").write_text(json.dumps({"run_id": COPY_RUN, "status": "done",
                                                  "analysis": analysis}))
    (run_dir / "scan_mapping.csv").write_text(
        "Source_Scan_ID,Target_Scan_ID,status,error\n1001,,ok,\n1002,,ok,\n")
    (root / "done" / f"{name}.result.json").write_text(json.dumps({
        "claim_id": "20261121-231500-3f9a1c", "run_id": COPY_RUN, "request": name,
        "action": "copy", "status": "done", "attempt": 1, "transient": False,
        "failed": [], "problems": [], "analysis": analysis}))
    (root / "done" / name).write_text(json.dumps(request))


def analyze_requests(root: Path) -> list[str]:
    return [p for folder in ("inbox", "processing", "done", "failed")
            for p in listing(root / folder) if ".analysis-" in p and ".json." not in p]


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def copy_analysis(root: Path, run_id: str) -> dict[str, Any]:
    return json.loads((root / "runs" / run_id / "run.json").read_text())["analysis"]


@pytest.mark.slow
def test_deferred_analysis_is_dropped_once_and_linked_to_its_copy(tmp_path: Path) -> None:
    root = make_root(tmp_path, log={"level": "INFO"},
                     reruns={"cron": "*/2 * * * * *", "max_attempts": 3})
    (root / "done").mkdir()
    (root / "runs").mkdir()
    craft_deferred_copy(root)
    name = analysis_name("nightly-copy.json", COPY_RUN)
    with DaemonProcess(root):
        folder, result = wait_settled(root, [name], timeout=20)[name]
        analysis = wait_for(lambda: copy_analysis(root, COPY_RUN).get("status") == "done"
                            and copy_analysis(root, COPY_RUN), FOLLOW_UP, "the follow-up")
        time.sleep(4.5)  # two more windows
    with DaemonProcess(root):  # and a restart
        time.sleep(2.5)
    assert folder == "done" and result["action"] == "analyze", result
    run_request = json.loads((root / result["run_dir"] / "request.json").read_text())
    assert run_request["from_run"] == COPY_RUN
    assert run_request["label"] == f"deferred analysis of {COPY_RUN}"
    assert (run_request["source"], run_request["target"]) == ("demo-source", "demo-target")
    # The copy run leads to its analysis, and keeps what it said when it deferred it.
    assert analysis == {"status": "done", "run_id": result["run_id"], "request": name,
                        "deferred": True, "pending": 2,
                        "reason": "2 of 2 target scans were not processed within 5 s"}
    assert analyze_requests(root) == [name]  # dropped once, over windows and a restart


@pytest.fixture
def ref(platform_db: str, tmp_path: Path) -> Iterator[RefServer]:
    with RefServer(platform_db, tmp_path / "platform") as server:
        yield server


def chain_root(tmp_path: Path, ref: RefServer, window: datetime) -> Path:
    """prod and qa: two platform instances on the reference server (a copy between
    stores of one platform); the rerun window once, at ``window``."""
    root = platform_root(tmp_path, ref)
    config = yaml.safe_load((root / "config.yml").read_text())
    config["instances"]["qa"] = {**config["instances"]["prod"]}
    config["copy"] = {"wait_for_processing": 1, "poll_interval": 0.2}
    config["reruns"] = {"cron": f"{window.second} {window.minute} {window.hour} * * *"}
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


@pytest.mark.slow
def test_copy_past_its_wait_bound_completes_and_is_analysed_at_the_window(
        ref: RefServer, tmp_path: Path) -> None:
    seeded = ref.seed(scans=3, files_per_scan=1, file_size=2_000, seed=9)
    ref.processing_delay = 6.0  # longer than the 1 s wait bound, shorter than the window
    window = (datetime.now(UTC) + timedelta(seconds=25)).replace(microsecond=0)
    root = chain_root(tmp_path, ref, window)
    request = {"action": "copy", "source": "prod", "target": "qa", "analyze": True,
               "target_store_id": seeded.store_ids[-1], "scan_ids": seeded.scan_ids}
    with DaemonProcess(root, env=daemon_env(ref)):
        drop(root / "inbox", "copy.json", json.dumps(request))
        folder, copied = wait_settled(root, ["copy.json"], timeout=30)["copy.json"]
        # The window must find the copies processed: its analysis reads them.
        processed_by = datetime.now(UTC) + timedelta(seconds=ref.processing_delay)
        assert processed_by < window, "the copy took longer than the test allows"
        name = analysis_name("copy.json", copied["run_id"])
        _, analysed = wait_settled(root, [name], timeout=40)[name]
        lineage = wait_for(lambda: copy_analysis(root, copied["run_id"]).get("status") ==
                           "done" and copy_analysis(root, copied["run_id"]), FOLLOW_UP,
                           "the follow-up")
    assert folder == "done" and copied["analysis"]["status"] == "deferred", copied
    assert copied["counts"]["items"] == 3
    assert analysed["status"] == "done" and analysed["analysis"]["status"] == "done"
    assert lineage["run_id"] == analysed["run_id"] and lineage["deferred"] is True
    run_dir = root / analysed["run_dir"]
    assert json.loads((run_dir / "request.json").read_text())["from_run"] == copied["run_id"]
    # The analysis ran on processed scans: every comment is the server's ground truth.
    with (run_dir / "analysis.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        expected = ref.recognition(int(row["Target_Scan_ID"])).expected_comment
        assert row["comment"] == expected, row
