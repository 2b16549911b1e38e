"""Helpers of the copy tests: reference servers as configured instances, and readers
for what a copy leaves behind (mapping, checkpoint, the target's scans)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pg

from daemon.sandbox import RefServer


@contextmanager
def ref_server(tmp_path: Path, name: str, **kwargs: Any) -> Iterator[RefServer]:
    """A reference server with a database of its own (dropped afterwards)."""
    dsn = pg.create_database(name)
    try:
        with RefServer(dsn, tmp_path / f"platform-{name}", **kwargs) as server:
            yield server
    finally:
        pg.drop_database(dsn)


def platform_instance(ref: RefServer, name: str, **overrides: Any) -> dict[str, Any]:
    """The config of an instance named ``name`` that is ``ref``; its credentials come
    from ``<NAME>_API_USER`` / ``<NAME>_API_PASSWORD`` (see ``env_for``)."""
    params = pg.dsn_params(ref.dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    prefix = name.upper().replace("-", "_")
    return {"kind": "platform", "api_url": ref.api_url, "db": db,
            "api_username_env": f"{prefix}_API_USER",
            "api_password_env": f"{prefix}_API_PASSWORD", "max_connections": 8,
            "timeout_seconds": 5, "retry_attempts": 8, "retry_max_seconds": 60, **overrides}


def env_for(**refs: RefServer) -> dict[str, str]:
    env = {}
    for name, ref in refs.items():
        prefix = name.upper().replace("-", "_")
        env[f"{prefix}_API_USER"] = ref.username
        env[f"{prefix}_API_PASSWORD"] = ref.password
    return env


def copy_request(source: str, target: str, store: int, ids: list[int], **extra: Any) -> str:
    return json.dumps({"action": "copy", "source": source, "target": target,
                       "target_store_id": store, "scan_ids": ids, **extra})


def mapping_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "scan_mapping.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def journal(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The checkpoint records by key (a torn last line ignored)."""
    records: dict[str, dict[str, Any]] = {}
    path = run_dir / "checkpoint.jsonl"
    if not path.exists():
        return records
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        records[record["key"]] = record
    return records


def target_scans(ref: RefServer, marker_field: str = "scanrelay_ref") -> list[dict[str, Any]]:
    """Every scan in ``ref``'s database: id, store, marker and the stored payload."""
    with ref.connect() as conn:
        rows = conn.execute(
            "SELECT id, store_id, provided_values->'_raw_data'->>%s,"
            " provided_values->'_raw_data' FROM realograms_implementation_scan ORDER BY id",
            (marker_field,)).fetchall()
    return [{"id": r[0], "store_id": r[1], "marker": r[2], "payload": r[3]} for r in rows]


def run_dir_of(root: Path, result: dict[str, Any]) -> Path:
    return root / result["run_dir"]
