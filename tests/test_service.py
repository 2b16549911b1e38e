"""The service as systemd sees it: the unit's hardening, and sd_notify from a daemon
whose NOTIFY_SOCKET this test reads."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import DaemonProcess, drop, wait_settled
from test_crash_resume import _assert_complete, _request, _root, _wait_for_records

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "scanrelay.service"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@needs_systemd
def test_unit_exposure_is_at_most_2() -> None:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0


@needs_systemd
def test_unit_verifies_clean(tmp_path: Path) -> None:
    # verify also checks that ExecStart exists: point it at an executable that does.
    unit = tmp_path / "scanrelay.service"
    unit.write_text(UNIT.read_text().replace("/opt/scanrelay/.venv/bin/scanrelay",
                                             shutil.which("true") or "/bin/true"))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: collects datagrams with their arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, line) for t, msg in self.messages for line in msg.splitlines()
                if line.startswith(prefix)]


@pytest.mark.slow
def test_notify_ready_watchdog_status_stopping_and_resume(tmp_path: Path) -> None:
    root, hashes = _root(tmp_path)
    listener = NotifyListener(tmp_path / "notify.sock")
    daemon = DaemonProcess(root, env={"NOTIFY_SOCKET": str(listener.path),
                                      "WATCHDOG_USEC": "2000000"})
    daemon.start()
    try:
        listener.poll(0.5)
        assert listener.lines("READY=1"), listener.messages
        drop(root / "inbox", "big.csv", _request())
        run_dir = _wait_for_records(root, at_least=30)
        listener.poll(3.0)
        pings = [t for t, _ in listener.lines("WATCHDOG=1")]
        assert len(pings) >= 3 and max(b - a for a, b in zip(pings, pings[1:], strict=False)) \
            < 2.0
        assert any("1 running" in line for _, line in listener.lines("STATUS="))
        assert daemon.stop() == 0
        assert daemon.stop_seconds < 10
        listener.poll(0.2)
        assert listener.lines("STOPPING=1")
    finally:
        daemon.kill()
        listener.sock.close()
    with DaemonProcess(root):
        folder, result = wait_settled(root, ["big.csv"], timeout=120)["big.csv"]
    assert folder == "done" and result["run_id"] == run_dir.name
    _assert_complete(root, run_dir, hashes)
