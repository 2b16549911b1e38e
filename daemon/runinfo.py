"""What one run is, computed once for ``scanrelay show``, ``retry`` and the web page.

A run is known by its folder's ``run.json`` (the live truth while it runs) and by its
ledger row (which also knows runs that never got a folder: invalid requests). Files are
named here, never taken from a caller: a run's downloadable files are a fixed set of
names inside ``runs/<run_id>/`` plus its request's sidecars in ``done/`` or ``failed/``.

In cluster mode the readers pass ``history``, the cluster's request history (the
``requests`` table); without it, the ledger under ``state/`` is read.
"""

from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.errors import RequestError
from daemon.fsutil import is_ignored_name
from daemon.layout import Layout
from daemon.runstate import RunState
from daemon.settle import ERROR, RESULT, RETRY
from daemon.store.records import RequestRecord
from daemon.store.sqlite_requests import read_ledger

if TYPE_CHECKING:
    from daemon.cluster.history import HistoryReader

# A run ID (YYYYMMDD-HHMMSS-<action>-<6 hex>) or a claim ID (the same without action).
RUN_KEY = re.compile(r"^\d{8}-\d{6}(-[a-z]{1,16})?-[0-9a-f]{6}$")
# Outputs in the run folder, in the order a reader wants them.
RUN_FILES = ("analysis.xlsx", "analysis.csv", "source_scandetails.csv",
             "target_scandetails.csv", "scan_mapping.csv", "manifest.csv", "run.log",
             "request.json", "run.json")
ORIGINAL = re.compile(r"^request\.orig\.[a-z0-9]{1,8}$")
# Sidecars of the request in done/ or failed/, by the name they are offered under.
SIDECARS = {"error.txt": ERROR, "retry.json": RETRY, "result.json": RESULT}
ACTIVE = ("queued", "claimed", "running", "waiting")


@dataclass(frozen=True)
class RunView:
    key: str  # the run ID, or the claim ID of a request that never became a run
    data: dict[str, Any]  # run.json, else the ledger row's fields
    record: RequestRecord | None
    files: tuple[str, ...] = ()
    error_text: str | None = None
    retry: dict[str, Any] | None = None
    failed_items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.data.get("status") or "unknown")

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def valid_key(key: str) -> bool:
    return bool(RUN_KEY.match(key))


def load_run(layout: Layout, key: str,
             history: HistoryReader | None = None) -> RunView | None:
    """The run (or request) ``key``; None if neither a folder nor the ledger (or
    ``history``, in cluster mode) knows it."""
    if not valid_key(key):
        return None
    data = RunState.load(layout.runs / key)
    record = _ledger_record(layout, key) if history is None else history.get(key)
    if data is None and record is None:
        return None
    if data is None:
        assert record is not None
        data = {k: v for k, v in record.__dict__.items() if v is not None}
        data.setdefault("request", record.name)
    settled = _settled_path(layout, record)
    result = _read_json(settled, RESULT) or {}
    return RunView(key, data, record, tuple(_present_files(layout, key, settled)),
                   _read_text(settled, ERROR), _read_json(settled, RETRY),
                   list(result.get("failed") or []))


def _ledger_record(layout: Layout, key: str) -> RequestRecord | None:
    """The ledger's record of ``key``, or None; read-only."""
    ledger = read_ledger(layout.state)
    if ledger is None:
        return None
    try:
        return ledger.get(key)
    finally:
        ledger.close()


def run_file(layout: Layout, key: str, name: str,
             history: HistoryReader | None = None) -> Path | None:
    """The file ``name`` of run ``key`` if it is one a reader may fetch, else None.
    Only known names are accepted, and only regular files (no symlink is followed)."""
    if not valid_key(key):
        return None
    if name in RUN_FILES or ORIGINAL.match(name):
        return _regular(layout.runs / key / name)
    if name in SIDECARS:
        record = _ledger_record(layout, key) if history is None else history.get(key)
        settled = _settled_path(layout, record)
        return _regular(Path(f"{settled}{SIDECARS[name]}")) if settled else None
    return None


def retry_request(config: Config, key: str, history: HistoryReader | None = None) -> Path:
    """``scanrelay retry``: drop a new request covering only what failed in run ``key``;
    returns its inbox path. Raises ``LookupError`` if the run has nothing to retry and
    ``RequestError`` if its retry request is no longer valid. In cluster mode the run
    is looked up in ``history`` (opened here if not given): any host may retry any run,
    and the retry request lands in the shared inbox."""
    from daemon.submit import drop_request  # late: submit imports request → config

    if config.cluster is not None and history is None:
        from daemon.cluster.views import ClusterView

        opened = ClusterView(config.cluster)
        try:
            return retry_request(config, key, opened.history())
        finally:
            opened.close()
    view = load_run(Layout.of(config), key, history)
    if view is None or view.retry is None:
        raise LookupError(f"{key}: no failed scans to retry (no retry.json for this run)")
    try:
        return drop_request(config, view.retry, stem=f"retry-{key}")
    except RequestError as exc:
        raise RequestError([f"the retry request is no longer valid: {p}"
                            for p in exc.problems]) from None


def failed_requests(layout: Layout, limit: int = 200) -> list[dict[str, Any]]:
    """Requests in ``failed/``, newest first: name, run, status, reason, retryable."""
    if not layout.failed.is_dir():
        return []
    results = sorted(layout.failed.glob(f"*{RESULT}"), key=_mtime, reverse=True)[:limit]
    out = []
    for path in results:
        data = _load(path) or {}
        name = path.name[: -len(RESULT)]
        error = _read_text(path.with_name(name), ERROR) or ""
        out.append({"name": name, "run_id": data.get("run_id") or data.get("claim_id"),
                    "status": data.get("status"), "finished_at": data.get("finished_at"),
                    "reason": error.strip().splitlines()[0] if error.strip() else
                    data.get("message"),
                    "retryable": path.with_name(f"{name}{RETRY}").is_file()})
    return out


def _settled_path(layout: Layout, record: RequestRecord | None) -> Path | None:
    """Where the request was settled, if that is inside done/ or failed/."""
    if record is None or not record.final_path:
        return None
    path = Path(record.final_path)
    for folder in (layout.done, layout.failed):
        if path.parent == folder or path.parent.resolve() == folder.resolve():
            return folder / path.name
    return None


def _present_files(layout: Layout, key: str, settled: Path | None) -> list[str]:
    folder = layout.runs / key
    names = [n for n in RUN_FILES if _regular(folder / n)]
    if folder.is_dir():
        names += sorted(p.name for p in folder.iterdir()
                        if ORIGINAL.match(p.name) and not is_ignored_name(p.name))
    if settled is not None:
        names += [n for n, suffix in SIDECARS.items() if _regular(Path(f"{settled}{suffix}"))]
    return names


def _regular(path: Path) -> Path | None:
    try:
        return path if stat.S_ISREG(path.lstat().st_mode) else None
    except OSError:
        return None


def _read_text(settled: Path | None, suffix: str) -> str | None:
    if settled is None:
        return None
    path = _regular(Path(f"{settled}{suffix}"))
    try:
        return path.read_text(encoding="utf-8", errors="replace") if path else None
    except OSError:
        return None


def _read_json(settled: Path | None, suffix: str) -> dict[str, Any] | None:
    return _load(Path(f"{settled}{suffix}")) if settled is not None else None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
