"""The last pass (``retry.passes``, issue 11) through the real daemon, against the
reference platform server: an item that failed transiently through every try of the
main pass (one try per call here, ``retry_attempts: 1``) is tried again at the end of
the run, and only then reported. With ``passes: 0`` the same run ends failed or
partial, so it is the last pass that saves it."""

from __future__ import annotations

from pathlib import Path

import pytest
from copy_support import copy_request, env_for, platform_instance
from helpers import DaemonProcess, drop, make_root, wait_settled
from test_download_platform import daemon_env, ids_csv, manifest, platform_root

from daemon.sandbox import Fault, RefServer


@pytest.mark.slow
@pytest.mark.parametrize("passes", [1, 0])
def test_download_last_pass(prod: RefServer, tmp_path: Path, passes: int) -> None:
    seeded = prod.seed(scans=4, files_per_scan=2, file_size=2_000, seed=31)
    root = platform_root(tmp_path, prod, retry_attempts=1, retry={"passes": passes})
    prod.faults.next(Fault.HTTP_503, endpoint="file", count=1)  # one file's one try
    with DaemonProcess(root, env=daemon_env(prod)):
        drop(root / "inbox", "dl.csv", ids_csv(seeded.scan_ids))
        folder, result = wait_settled(root, ["dl.csv"], timeout=60)["dl.csv"]
    run_log = (root / result["run_dir"] / "run.log").read_text()
    rows = manifest(root / result["run_dir"])
    assert len(rows) == 8
    if passes:
        assert (folder, result["status"]) == ("done", "done"), result
        assert {r["status"] for r in rows} == {"ok"}
        assert "last pass 1: 1 file(s) of 1 scan(s) that failed transiently" in run_log
        for row in rows:
            assert row["sha256"] == seeded.sha256(int(row["file_id"]))
    else:
        assert (folder, result["status"]) == ("failed", "partial"), result
        assert [f["transient"] for f in result["failed"]] == [True]
        assert "last pass 1:" not in run_log


@pytest.mark.slow
@pytest.mark.parametrize("passes", [1, 0])
def test_copy_last_pass(prod: RefServer, qa: RefServer, tmp_path: Path, passes: int) -> None:
    seeded = prod.seed(scans=1, files_per_scan=1, file_size=2_000, seed=32)
    store = qa.seed(scans=0).store_ids[1]
    instances = {"prod": platform_instance(prod, "prod"),
                 "qa": platform_instance(qa, "qa", retry_attempts=1)}
    root = make_root(tmp_path, instances=instances, log={"level": "INFO"},
                     copy={"batch_retry_pause": 0}, retry={"passes": passes})
    # The upload fails in the main pass and in each of the batch's 3 retries.
    qa.faults.next(Fault.HTTP_503, endpoint="upload", count=4)
    with DaemonProcess(root, env=env_for(prod=prod, qa=qa)):
        drop(root / "inbox", "cp.json", copy_request("prod", "qa", store, seeded.scan_ids))
        folder, result = wait_settled(root, ["cp.json"], timeout=90)["cp.json"]
    run_log = (root / result["run_dir"] / "run.log").read_text()
    creates = [c for c in qa.received_creates if c.outcome == "201"]
    if passes:
        assert (folder, result["status"]) == ("done", "done"), result
        assert "last pass 1: 1 scan(s) that failed transiently" in run_log
        assert len(creates) == 1  # exactly once
    else:
        assert (folder, result["status"]) == ("failed", "failed"), result
        assert result["transient"] is True and creates == []
