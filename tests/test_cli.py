"""The command line: once, submit, runs, show, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import DaemonProcess, make_root, wait_settled


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args, "-c",
                           str(root / "config.yml")], cwd=root, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_once_exit_codes_and_outcomes(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    good = tmp_path / "good.csv"
    good.write_text("scan_id\n1001\n1002\n")
    partial = tmp_path / "partial.csv"
    partial.write_text("scan_id\n1001\n424242\n")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"action": "download", "scan_ids": ["x"]}')

    done = cli(root, "once", str(good))
    assert done.returncode == 0, done.stderr
    assert "done" in done.stdout
    assert (root / "done" / "good.csv").exists() and not good.exists()

    failed = cli(root, "once", str(partial))
    assert failed.returncode == 1
    result = json.loads((root / "failed" / "partial.csv.result.json").read_text())
    assert result["status"] == "partial"
    retry = json.loads((root / "failed" / "partial.csv.retry.json").read_text())
    assert retry["scan_ids"] == [424242] and retry["retry_of"] == result["run_id"]

    bad = cli(root, "once", str(invalid))
    assert bad.returncode == 2
    assert "scan_ids[0]" in (root / "failed" / "invalid.json.error.txt").read_text()


def test_submit_writes_a_valid_request_the_daemon_runs(tmp_path: Path) -> None:
    root = make_root(tmp_path, log={"level": "INFO"})
    with DaemonProcess(root):
        out = cli(root, "submit", "download", "--source", "demo-source", "--ids",
                  "1001,1003", "--label", "from the cli")
        assert out.returncode == 0, out.stderr
        path = Path(out.stdout.strip())
        assert path.parent == root / "inbox" and path.suffix == ".json"
        folder, result = wait_settled(root, [path.name], timeout=20)[path.name]
    assert folder == "done" and result["label"] == "from the cli"
    assert result["counts"]["scans"] == 2


def test_submit_refuses_an_invalid_request(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    out = cli(root, "submit", "download", "--source", "nowhere", "--ids", "1,2")
    assert out.returncode == 2
    assert "source: unknown instance 'nowhere'" in out.stderr
    assert [p for p in (root / "inbox").glob("*.json")] == []
    out = cli(root, "submit", "download", "--source", "demo-source", "--ids", "1,x")
    assert out.returncode == 2 and "'x' is not a scan ID" in out.stderr


def test_runs_and_show(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    request = tmp_path / "r.csv"
    request.write_text("scan_id\n1001\n999999\n")
    assert cli(root, "once", str(request)).returncode == 1
    runs = json.loads(cli(root, "runs", "--json").stdout)
    assert len(runs) == 1 and runs[0]["status"] == "partial"
    run_id = runs[0]["run_id"]
    assert json.loads(cli(root, "runs", "--failed", "--json").stdout)[0]["run_id"] == run_id
    shown = cli(root, "show", run_id)
    assert shown.returncode == 0
    assert "partial" in shown.stdout and "scan 999999" in shown.stdout
    assert "manifest.csv" in shown.stdout
    assert cli(root, "show", "20990101-000000-copy-abcdef").returncode == 1


def test_demo_run_processes_the_sample(tmp_path: Path) -> None:
    """The folder part of the demo; the sandbox part is test_sandbox's end-to-end test."""
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "config.yml").write_text(
        (Path(__file__).resolve().parent.parent / "config.yml").read_text())
    out = subprocess.run([sys.executable, "-m", "daemon", "demo", "--run", "--no-sandbox"],
                         cwd=root, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (root / "done" / "sample-download.csv").exists()
    run_dir = next(p for p in (root / "runs").iterdir() if "-download-" in p.name)
    assert len(list((run_dir / "images").iterdir())) >= 12
    assert (run_dir / "manifest.csv").exists()


def test_wizard_answers_make_a_request_the_daemon_runs(tmp_path: Path) -> None:
    root = make_root(tmp_path, log={"level": "INFO"})
    answers = "download\ndemo-source\n1001, 1002\n1003\n\nwizard test\n"
    with DaemonProcess(root):
        out = subprocess.run([sys.executable, "-m", "daemon", "new", "-c",
                              str(root / "config.yml")], cwd=root, input=answers,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        path = Path(out.stdout.strip().splitlines()[-1])
        assert path.parent == root / "inbox"
        folder, result = wait_settled(root, [path.name], timeout=20)[path.name]
    assert folder == "done" and result["label"] == "wizard test"
    request = json.loads((root / result["run_dir"] / "request.json").read_text())
    assert request["scan_ids"] == [1001, 1002, 1003]
    assert "password" not in out.stdout.lower()


def test_wizard_reports_invalid_answers(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    answers = "download\ndemo-source\n1001 x7\n\nlabel\nn\n"
    out = subprocess.run([sys.executable, "-m", "daemon", "new", "-c",
                          str(root / "config.yml")], cwd=root, input=answers,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "scan_ids[1]" in out.stdout
    assert list((root / "inbox").glob("*.json")) == []


def test_retry_drops_only_the_failed_scans(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    request = tmp_path / "r.csv"
    request.write_text("scan_id\n1001\n777777\n1002\n888888\n")
    assert cli(root, "once", str(request)).returncode == 1
    run_id = json.loads(cli(root, "runs", "--json").stdout)[0]["run_id"]
    out = cli(root, "retry", run_id)
    assert out.returncode == 0, out.stderr
    dropped = json.loads(Path(out.stdout.strip()).read_text())
    assert dropped["scan_ids"] == [777777, 888888]
    assert dropped["retry_of"] == run_id and dropped["attempt"] == 2
    good = cli(root, "once", str(tmp_path / "missing.csv"))
    assert good.returncode == 2


def test_a_second_daemon_on_the_same_root_refuses_to_start(tmp_path: Path) -> None:
    root = make_root(tmp_path, log={"level": "INFO"})
    with DaemonProcess(root):
        second = cli(root, "run")
    assert second.returncode == 1
    assert "another scanrelay daemon is running" in second.stderr
