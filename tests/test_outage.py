"""Outage mode through the real daemon, against the reference platform server (issue 11):

- an outage in the middle of a download (every API and file call answered 503 for
  15 s, with ``retry.outage_after`` at 2 s and ``retry.max_seconds`` at 8 s, so an item
  that kept burning its patience would fail): the run shows ``waiting`` with the reason
  in ``run.json``, ``scanrelay status`` (text and ``--json``) and the metrics, then
  completes with every file and no failed item;
- an outage longer than ``retry.outage_seconds`` (4 s here): the run ends ``failed``,
  transient, saying why, and the rerun window drops it again; it succeeds once the
  instance is back.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DaemonProcess, drop, wait_settled
from test_download_platform import daemon_env, ids_csv, manifest, platform_root
from test_ops import _free_port, _metric
from test_reruns import EVERY_2S, end_outage, follow_reruns, outage

from daemon.sandbox import RefServer

REASON = "instance prod unavailable since"


@pytest.fixture
def ref(platform_db: str, tmp_path: Path) -> Iterator[RefServer]:
    with RefServer(platform_db, tmp_path / "platform") as server:
        yield server


def in_flight_run(root: Path) -> dict[str, Any] | None:
    """The run.json of the one run under way, if there is one yet."""
    for run_json in (root / "runs").glob("*/run.json"):
        try:
            data = json.loads(run_json.read_text())
        except ValueError:
            continue  # caught between write and rename: read again
        if data.get("status") in ("running", "waiting"):
            return dict(data)
    return None


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def scanrelay(root: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "daemon", *args, "-c",
                          str(root / "config.yml")], capture_output=True, text=True,
                         timeout=60, check=True, cwd=root)
    return out.stdout


@pytest.mark.slow
def test_outage_mid_run_waits_then_completes_with_no_failed_item(ref: RefServer,
                                                                 tmp_path: Path) -> None:
    seeded = ref.seed(scans=40, files_per_scan=2, file_size=3_000, seed=21)
    ref.set_limits(latency=0.05, blob_latency=0.05)  # a run of several seconds
    port = _free_port()
    root = platform_root(tmp_path, ref, max_connections=4,
                         retry={"max_seconds": 8, "cap": 2, "outage_after": 2,
                                "outage_seconds": 120})
    config = yaml.safe_load((root / "config.yml").read_text())
    config["metrics"] = {"listen": f"127.0.0.1:{port}"}
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    with DaemonProcess(root, env=daemon_env(ref)):
        drop(root / "inbox", "mid.csv", ids_csv(seeded.scan_ids))
        wait_for(lambda: (in_flight_run(root) or {}).get("progress", {}).get("done"), 60,
                 "the run's first batch")
        outage(ref)
        began = time.monotonic()
        run = wait_for(lambda: (r := in_flight_run(root)) and r["status"] == "waiting" and r,
                       30, "run.json to say waiting")
        # The heartbeat carrying the breaker's state is rewritten once a second.
        status = wait_for(lambda: (st := json.loads(scanrelay(root, "status", "--json")))
                          and any(not i["available"] for i in st["daemon"]["instances"])
                          and st, 10, "status to show the outage")
        text = scanrelay(root, "status")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                         timeout=5).read().decode()
        time.sleep(max(0.0, 15 - (time.monotonic() - began)))  # 15 s of outage
        end_outage(ref)
        resumed = wait_for(lambda: (r := in_flight_run(root)) and r["status"] == "running"
                           and r or None, 60, "the run to resume")
        folder, result = wait_settled(root, ["mid.csv"], timeout=120)["mid.csv"]
    assert REASON in run["waiting"] and "503" in run["waiting"], run
    assert resumed.get("waiting") is None
    flight = [r for r in status["in_flight"] if r["request"] == "mid.csv"]
    assert flight and flight[0]["status"] == "waiting", status
    assert REASON in flight[0]["waiting"], status
    prod = [i for i in status["daemon"]["instances"] if i["instance"] == "prod"]
    assert prod and prod[0]["available"] is False and REASON in prod[0]["reason"], status
    assert REASON in text, text
    assert _metric(metrics, 'scanrelay_instance_available{instance="prod"}') == 0
    # The outage outlasted max_seconds (8 s) by far: yet no item failed.
    assert (folder, result["status"]) == ("done", "done"), result
    assert result["failed"] == [] and result["counts"]["files"] == 80
    rows = manifest(root / result["run_dir"])
    assert len(rows) == 80 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        data = (root / result["run_dir"] / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == seeded.sha256(int(row["file_id"]))


@pytest.mark.slow
def test_outage_past_outage_seconds_fails_transiently_and_is_rerun(ref: RefServer,
                                                                   tmp_path: Path) -> None:
    seeded = ref.seed(scans=6, files_per_scan=2, file_size=2_000, seed=22)
    root = platform_root(tmp_path, ref, retry={"max_seconds": 60, "cap": 1,
                                               "outage_after": 1, "outage_seconds": 4})
    config = yaml.safe_load((root / "config.yml").read_text())
    config["reruns"] = {"cron": EVERY_2S, "max_attempts": 5}
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    outage(ref)
    with DaemonProcess(root, env=daemon_env(ref)):
        drop(root / "inbox", "long.csv", ids_csv(seeded.scan_ids))
        folder, result = wait_settled(root, ["long.csv"], timeout=60)["long.csv"]
        end_outage(ref)
        chain = follow_reruns(root, "long.csv", timeout=90)
    assert (folder, result["status"], result["transient"]) == ("failed", "failed", True)
    assert any(REASON in p and "retry.outage_seconds" in p for p in result["problems"]), \
        result
    run = json.loads((root / result["run_dir"] / "run.json").read_text())
    assert run["status"] == "failed" and REASON in run["waiting"]
    # The rerun window dropped it again, and once the instance answered it was done.
    _, last = chain[-1]
    assert len(chain) >= 2 and last["status"] == "done", chain
    assert last["failed"] == [] and last["counts"]["files"] == 12
