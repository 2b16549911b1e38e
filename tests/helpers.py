"""Shared helpers for tests that drive scanrelay end to end through real files.

- ``make_root(tmp_path, **overrides)``: a daemon root with ``config.yml`` (the two demo
  folder instances, a few profiles, intake tuned to react fast) and the demo scans
  (``demo-source`` holds scans 1001..1012; ``demo-target`` starts empty).
- ``DaemonProcess(root)``: ``python -m daemon run -c root/config.yml`` as a real
  subprocess, as a context manager; it waits until the daemon logs that it is watching,
  and stops it with SIGTERM (asserting it exits within 10 s) or ``kill()`` (-9).
- ``drop(folder, name, content)``: write a request atomically (temp name + rename).
- ``wait_settled(root, names, timeout)``: wait until each request has its
  ``<name>.result.json`` in ``done/`` or ``failed/``.

Import them from a test module as ``from helpers import ...`` (``tests/`` is on
``sys.path`` under pytest's default import mode, as for ``pg.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from daemon.demo import create_demo
from daemon.instances.base import Instance, Scan

DEMO_SCAN_IDS = list(range(1001, 1013))  # what create_demo puts into demo-source
READY_LINE = "scanrelay watching"
STOP_TIMEOUT = 10.0  # SPEC §10: SIGTERM → exit within 10 s
REMOVE = object()  # an override value that deletes the key from the default config

BASE_CONFIG: dict[str, Any] = {
    "paths": {"root": "."},
    "defaults": {"profile": "demo-download", "batch_size": 10},
    "instances": {
        "demo-source": {"kind": "folder", "path": "./data/demo-source"},
        "demo-target": {"kind": "folder", "path": "./data/demo-target"},
    },
    "profiles": {
        "demo-download": {"action": "download", "source": "demo-source"},
        "demo-copy": {"action": "copy", "source": "demo-source", "target": "demo-target",
                      "target_store_id": 1, "mode": "auto"},
    },
    "runs": {"max_parallel": 2},
    # Fast for tests: rescans (which catch what events miss: directories, symlinks)
    # every 0.3 s, a file counts as settled 0.5 s after its last change, a file
    # written in place is taken 0.2 s after its close, another name refused after 1 s.
    "intake": {"mode": "events", "rescan_interval": 0.3, "settle_seconds": 0.5,
               "poll_interval": 0.2, "quiet_seconds": 0.2, "unknown_after_seconds": 1.0},
    "copy": {"wait_for_processing": 5, "poll_interval": 0.2},
    "log": {"json": False, "level": "DEBUG"},
}


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursively for mappings. A value of
    ``REMOVE`` deletes the key; any other value (lists included) replaces it."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if value is REMOVE:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_dict(**overrides: Any) -> dict[str, Any]:
    """The test config as a dict: ``BASE_CONFIG`` with ``overrides`` merged in."""
    return merge(BASE_CONFIG, overrides)


def make_root(tmp_path: Path, *, folder: str = "root", demo: bool = True,
              **overrides: Any) -> Path:
    """Create ``tmp_path/folder`` holding ``config.yml`` and (``demo=True``) the demo
    instances under ``data/``; returns that folder, the daemon's ``paths.root``.

    ``overrides`` are config sections merged onto ``BASE_CONFIG``, e.g.
    ``make_root(tmp_path, limits={"max_request_bytes": 4096})`` or
    ``make_root(tmp_path, defaults={"profile": REMOVE})``."""
    root = tmp_path / folder
    root.mkdir(parents=True)
    (root / "config.yml").write_text(
        yaml.safe_dump(config_dict(**overrides), sort_keys=False), encoding="utf-8")
    if demo:
        create_demo(root / "data")
    return root


class DaemonProcess:
    """``python -m daemon run`` on ``root`` as a real subprocess.

    ::

        with DaemonProcess(root) as daemon:   # returns once the daemon is watching
            drop(root / "inbox", "a.csv", "scan_id\\n1001\\n")
            wait_settled(root, ["a.csv"])
            assert daemon.alive()
        # leaving the block: SIGTERM, and an assertion that it exited within 10 s

    stdout and stderr go to ``root/daemon-<n>.log`` (``log_text()``).
    """

    def __init__(self, root: Path, *, config: Path | None = None,
                 ready_timeout: float = 20.0, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.config = config or root / "config.yml"
        self.ready_timeout = ready_timeout
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = _next_free(root, "daemon-{}.log")
        self.returncode: int | None = None
        self.stop_seconds: float | None = None  # how long the last stop() took

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.alive():
            return
        if exc_type is None:
            self.stop()
        else:  # a failing test: do not hide its error behind a stop problem
            with contextlib.suppress(BaseException):
                self.stop()
            if self.alive():
                self.kill()

    def start(self) -> None:
        """Start the daemon and wait until it logs that it is watching the inbox."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "-c", str(self.config)],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env)
        try:
            self.wait_log(READY_LINE, self.ready_timeout)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything the daemon has written to stdout/stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears in the daemon's output; fail if it exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if not self.alive():
                raise AssertionError(f"daemon exited ({self.proc and self.proc.returncode}) "
                                     f"before logging {text!r}:\n{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not log {text!r} within {timeout} s:\n"
                                     f"{self.log_text()[-4000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then assert the daemon exits within ``timeout`` s; its exit code.
        Calling it again (or after ``kill``) returns the code it exited with."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon did not exit within {timeout} s of SIGTERM:\n"
                                     f"{self.log_text()[-4000:]}") from None
            self.stop_seconds = time.monotonic() - started
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self) -> int:
        """kill -9 (a crash, as far as the daemon can tell); its exit code."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.returncode = self.proc.returncode
        return self.returncode


def _next_free(folder: Path, pattern: str) -> Path:
    n = 1
    while (folder / pattern.format(n)).exists():
        n += 1
    return folder / pattern.format(n)


def drop(folder: Path, name: str, content: bytes | str) -> Path:
    """Write ``folder/name`` atomically: a hidden temp name in the same folder (which
    the daemon ignores), fsync, then a rename. Creates ``folder`` if missing. A ``str``
    is written as UTF-8. Returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, folder / name)
    return folder / name


def settled(root: Path, name: str) -> tuple[str, dict[str, Any]] | None:
    """``(folder, result)`` if ``name`` rests in ``done/`` or ``failed/``, else None.

    Settling writes the sidecars first and links the request last, so a request
    counts as settled only once both are there."""
    for folder in ("done", "failed"):
        sidecar = root / folder / f"{name}.result.json"
        placed = root / folder / name
        if sidecar.exists() and (placed.exists() or placed.is_symlink()):
            return folder, json.loads(sidecar.read_text(encoding="utf-8"))
    return None


def wait_settled(root: Path, names: Iterable[str], timeout: float = 30.0, *,
                 missing_ok: bool = False) -> dict[str, tuple[str, dict[str, Any]]]:
    """Wait until each name (as dropped, unique within the test) has its
    ``<name>.result.json`` in ``done/`` or ``failed/``; ``{name: (folder, result)}``.

    On timeout: ``AssertionError`` naming what did not settle and what lies in
    ``inbox/`` and ``processing/``, unless ``missing_ok`` (then those are left out)."""
    wanted = list(names)
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout
    while True:
        for name in wanted:
            if name not in found:
                result = settled(root, name)
                if result is not None:
                    found[name] = result
        if len(found) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    missing = [n for n in wanted if n not in found]
    if missing and not missing_ok:
        raise AssertionError(f"not settled within {timeout} s: {missing}; "
                             f"inbox: {listing(root / 'inbox')}; "
                             f"processing: {listing(root / 'processing')}")
    return found


def error_text(root: Path, folder: str, name: str) -> str:
    """The ``<name>.error.txt`` sidecar ('' when there is none)."""
    path = root / folder / f"{name}.error.txt"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def retry_request(root: Path, name: str) -> dict[str, Any] | None:
    """The ``failed/<name>.retry.json`` sidecar, or None."""
    path = root / "failed" / f"{name}.retry.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, relative, sorted (for assertions and messages)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class Counting:
    """The source, counting which scans it was asked for."""

    def __init__(self, inner: Instance) -> None:
        self.inner = inner
        self.asked: list[int] = []

    def get_scans(self, ids: Sequence[int]) -> list[Scan]:
        self.asked += ids
        return self.inner.get_scans(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
