"""The inbox shared by a real SMB server (Debian's ``smbd``, started here as root on a
loopback port with a private config), written by a real client (``smbclient``), the
daemon a real subprocess, in events and in polling mode: a ``put`` in place, and a
``put`` to a temporary name then a ``rename``, as a Windows client's save does. Each
request runs once; the temporary is never taken; the client's rename never fails.

Needs ``samba`` and ``smbclient`` (``.ci/run`` installs them) and root (smbd switches
to the share's user). Under ``CI=true`` these tests run, never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import listing, make_root, wait_settled
from intake_writers import IDS, MODES, csv_of, xlsx_of

CI = os.environ.get("CI") == "true"
UNKNOWN_AFTER = 3.0
if not CI and (shutil.which("smbd") is None or shutil.which("smbclient") is None
               or os.geteuid() != 0):
    pytest.skip("smbd/smbclient missing or not root (CI installs them and runs as root)",
                allow_module_level=True)

from helpers import DaemonProcess  # noqa: E402  (after the skip: nothing to start)

SMB_CONF = """[global]
  server role = standalone server
  interfaces = 127.0.0.1
  bind interfaces only = yes
  smb ports = {port}
  private dir = {state}/private
  lock directory = {state}/lock
  state directory = {state}/state
  cache directory = {state}/cache
  pid directory = {state}/pid
  ncalrpc dir = {state}/ncalrpc
  log file = {state}/log.%m
  passdb backend = tdbsam:{state}/private/passdb.tdb
  map to guest = Bad User
  load printers = no
  printcap name = /dev/null
  disable spoolss = yes
  server min protocol = SMB2
[inbox]
  path = {inbox}
  read only = no
  guest ok = yes
  force user = root
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Share:
    """A running smbd sharing one folder as ``//127.0.0.1/inbox``."""

    conf: Path
    port: int
    local: Path  # where the client's files are prepared

    def client(self, *commands: str) -> str:
        """Run ``smbclient`` with these commands; fail on any NT_STATUS error."""
        done = subprocess.run(
            ["smbclient", "//127.0.0.1/inbox", "-p", str(self.port), "-N", "-s",
             str(self.conf), "-c", "; ".join(commands)],
            capture_output=True, text=True, timeout=60, cwd=self.local)
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "NT_STATUS" not in out, out
        return out


@pytest.fixture(scope="module", params=list(MODES))
def smb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[Share, Path]]:
    mode = request.param
    base = tmp_path_factory.mktemp(f"smb-{mode}")
    root = make_root(base, log={"level": "INFO"},
                     intake={**MODES[mode], "quiet_seconds": 1.0,
                             "unknown_after_seconds": UNKNOWN_AFTER})
    state = base / "smb"
    for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
        (state / sub).mkdir(parents=True)
    (root / "inbox").mkdir(exist_ok=True)
    port = _free_port()
    conf = state / "smb.conf"
    conf.write_text(SMB_CONF.format(port=port, state=state, inbox=root / "inbox"))
    local = base / "client"
    local.mkdir()
    # Its own session: on shutdown smbd signals its whole process group.
    server = subprocess.Popen(["smbd", "--foreground", "--no-process-group",
                               "--debug-stdout", "-s", str(conf)],
                              stdout=(state / "smbd.log").open("wb"),
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        _wait_listening(port, server, state / "smbd.log")
        with DaemonProcess(root):
            yield Share(conf, port, local), root
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # smbd and the children it forked
        server.wait(timeout=10)


def _wait_listening(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert server.poll() is None, f"smbd exited: {log.read_text(errors='replace')}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"smbd did not listen on {port}: {log.read_text(errors='replace')}")


def _settles_once(root: Path, name: str, scans: int, profile: str | None = None) -> None:
    folder, result = wait_settled(root, [name], timeout=40)[name]
    assert (folder, result["status"]) == ("done", "done"), result
    assert result["counts"]["scans"] == scans
    assert result["profile"] == profile


@pytest.mark.slow
def test_smb_put_in_place(smb: tuple[Share, Path]) -> None:
    share, root = smb
    (share.local / "big.csv").write_bytes(csv_of(IDS, pad=100_000))  # 1.2 MB: many writes
    (share.local / "small.csv").write_bytes(csv_of(IDS[:2]))
    share.client("put big.csv put-big.csv", "cd demo-copy", "put small.csv put-small.csv")
    _settles_once(root, "put-big.csv", len(IDS))
    _settles_once(root, "put-small.csv", 2, "demo-copy")


@pytest.mark.slow
def test_smb_put_to_a_temporary_then_rename(smb: tuple[Share, Path]) -> None:
    """A Windows client's save: the whole file under a temporary name (here Excel's
    extension-less 8-hex one), then a rename. The temporary is never a request."""
    share, root = smb
    (share.local / "book.xlsx").write_bytes(xlsx_of(IDS[:3]))
    share.client("put book.xlsx 9B7D11A4", "rename 9B7D11A4 saved.xlsx")
    _settles_once(root, "saved.xlsx", 3)


@pytest.mark.slow
def test_smb_put_twice_over_the_same_name_is_one_request(smb: tuple[Share, Path]) -> None:
    """A client saving in place twice in a row (a first save, then a corrected one)."""
    share, root = smb
    (share.local / "v1.csv").write_bytes(csv_of(IDS[:1]))
    (share.local / "v2.csv").write_bytes(csv_of(IDS[:4]))
    share.client("put v1.csv twice.csv", "put v2.csv twice.csv")
    _settles_once(root, "twice.csv", 4)


@pytest.mark.slow
def test_smb_nothing_else_was_taken(smb: tuple[Share, Path]) -> None:
    share, root = smb
    time.sleep(UNKNOWN_AFTER + 1.5)  # a temporary taken would be refused by now
    with sqlite3.connect(root / "state" / "ledger.sqlite") as db:
        names = sorted(row[0] for row in db.execute("SELECT name FROM requests"))
    assert names == ["put-big.csv", "put-small.csv", "saved.xlsx", "twice.csv"]
    assert listing(root / "failed") == []
    assert [p for p in listing(root / "inbox") if p != "demo-copy" and
            p != "demo-download"] == []
