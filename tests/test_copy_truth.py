"""Copy against a target that drops unknown payload keys, as a platform may: exactly
once by the upload IDs (resets after committed creates recovered without a marker),
the marker read back once and the drop reported (log, run.json, ``scanrelay status``);
and ``captured_at: source`` sending the source's value with its JSON type unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from copy_support import copy_request, env_for, mapping_rows, platform_instance, ref_server
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.sandbox import Fault


@pytest.mark.slow
def test_dropping_target_copy_is_exactly_once_and_captured_at_source_keeps_types(
        tmp_path: Path) -> None:
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    with ref_server(tmp_path, "prod") as prod, \
            ref_server(tmp_path, "qa", keep_unknown_keys=False) as qa:
        store = qa.seed(scans=0).store_ids[0]
        sent_captured: dict[int, object] = {}
        for n in range(12):
            when = start + timedelta(hours=n)
            value: object = int(when.timestamp()) if n % 2 else when.isoformat()
            scan_id, _ = prod.insert_scan(7, when, files=[(f"{n}.jpg", bytes([n]) * 900)],
                                          provided_values={"captured_at": value})
            sent_captured[scan_id] = value
        ids = sorted(sent_captured)
        qa.faults.next(Fault.RESET_AFTER_COMMIT, endpoint="create", count=4)
        root = make_root(tmp_path, demo=False, log={"level": "INFO"}, instances={
            "prod": platform_instance(prod, "prod"), "qa": platform_instance(qa, "qa")})
        env = env_for(prod=prod, qa=qa)
        with DaemonProcess(root, env=env) as daemon:
            drop(root / "inbox", "copy.json",
                 copy_request("prod", "qa", store, ids, captured_at="source"))
            folder, result = wait_settled(root, ["copy.json"], timeout=90)["copy.json"]
            log = daemon.log_text()
        status = subprocess.run([sys.executable, "-m", "daemon", "status", "--json", "-c",
                                 str(root / "config.yml")], capture_output=True, text=True,
                                timeout=60, env={**os.environ, **env}, cwd=root)
        creates = [c for c in qa.received_creates if c.outcome in ("201",
                                                                   "reset_after_commit")]
        stored = {s: qa.scan(s) for s in qa.created_scan_ids()}

    assert (folder, result["status"]) == ("done", "done"), result
    assert result["counts"]["recovered"] == 4  # found by their upload IDs alone
    assert result["marker_kept"] is False
    # One target scan per source scan, none twice; the mapping names each.
    assert len(stored) == len(ids) == len(creates)
    rows = {int(r["Source_Scan_ID"]): int(r["Target_Scan_ID"])
            for r in mapping_rows(root / result["run_dir"])}
    assert sorted(rows) == ids and sorted(rows.values()) == sorted(stored)
    assert all("scanrelay_ref" not in (row or {})["provided_values"]["_raw_data"]
               for row in stored.values())
    # captured_at: source: the source's value, its JSON type unchanged, as sent and stored.
    by_files = Counter(tuple(c.payload["files"]) for c in creates)
    assert max(by_files.values()) == 1
    for source_id, target_id in rows.items():
        raw = (stored[target_id] or {})["provided_values"]["_raw_data"]
        assert raw["captured_at"] == sent_captured[source_id]
        assert type(raw["captured_at"]) is type(sent_captured[source_id])
    # The drop is said once, and shown by status.
    assert log.count("does not keep the marker field scanrelay_ref") == 1, log[-3000:]
    assert status.returncode == 0, status.stderr
    dropped = json.loads(status.stdout)["markers_dropped"]
    assert [(d["target"], d["field"]) for d in dropped] == [("qa", "scanrelay_ref")]
