"""Operator features: retention, Prometheus metrics, JSON log lines."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.layout import Layout
from daemon.retention import DAY, prune


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_retention_prunes_old_results_and_runs_only(tmp_path: Path) -> None:
    layout = Layout(tmp_path).ensure()
    for name, days in (("old.csv", 10), ("new.csv", 1)):
        for suffix in ("", ".result.json", ".error.txt", ".retry.json"):
            (layout.failed / f"{name}{suffix}").write_text("{}")
        _age(layout.failed / f"{name}.result.json", days)
    old_run = layout.runs / "20260101-000000-download-aaaaaa"
    active_run = layout.runs / "20260101-000000-download-bbbbbb"
    for run in (old_run, active_run):
        run.mkdir()
        (run / "run.json").write_text("{}")
        _age(run / "run.json", 30)
    (layout.processing / "20260101-000000-bbbbbb+-+resuming.csv").write_text("scan_id\n1\n")

    removed = prune(layout, days=7)
    assert removed == {"requests": 1, "runs": 1}
    assert sorted(p.name for p in layout.failed.iterdir()) == [
        "new.csv", "new.csv.error.txt", "new.csv.result.json", "new.csv.retry.json"]
    assert not old_run.exists() and active_run.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    raise AssertionError(f"{name} not in metrics")


@pytest.mark.slow
def test_metrics_count_requests_scans_bytes(tmp_path: Path) -> None:
    port = _free_port()
    root = make_root(tmp_path, metrics={"listen": f"127.0.0.1:{port}"}, log={"level": "INFO"})
    with DaemonProcess(root):
        drop(root / "inbox", "ok.csv", "scan_id\n1001\n1002\n")
        drop(root / "inbox", "bad.json", "{")
        wait_settled(root, ["ok.csv", "bad.json"])
        time.sleep(1.2)  # the gauges are refreshed once a second
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    text = text.decode()
    assert _metric(text, 'scanrelay_requests_total{outcome="done"}') == 1
    assert _metric(text, 'scanrelay_requests_total{outcome="invalid"}') == 1
    assert _metric(text, 'scanrelay_scans_total{action="download",outcome="ok"}') == 2
    assert _metric(text, 'scanrelay_bytes_total{action="download"}') > 0
    assert _metric(text, "scanrelay_inbox_depth") == 0
    assert 'scanrelay_run_duration_seconds_count{action="download"} 1.0' in text


@pytest.mark.slow
def test_json_log_lines_name_their_run(tmp_path: Path) -> None:
    root = make_root(tmp_path, log={"json": True, "level": "INFO"})
    daemon = DaemonProcess(root)
    daemon.start()
    try:
        drop(root / "inbox", "a.csv", "scan_id\n1001\n")
        _, result = wait_settled(root, ["a.csv"])["a.csv"]
    finally:
        daemon.stop()
    records = [json.loads(line)["record"] for line in daemon.log_text().splitlines()
               if line.startswith("{")]
    assert records, "no JSON lines"
    runs = {r["extra"]["run"] for r in records}
    assert result["run_id"] in runs
    assert any("run finished" in r["message"] and r["extra"]["run"] == result["run_id"]
               for r in records)
