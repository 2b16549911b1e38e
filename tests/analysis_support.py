"""Helpers for the analyze tests: platform instance configs for reference servers, a
RunContext for calling the handler in-process, and target scans made on a target
RefServer from a source RefServer's file bytes (what a copy does), over plain HTTP."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pg
import requests
from loguru import logger

from daemon.checkpoint import Checkpoint
from daemon.config import Config, parse_config
from daemon.instances.registry import Instances
from daemon.request import Request
from daemon.sandbox import RefServer
from daemon.store.sqlite_copies import SqliteCopyStore
from handlers.base import RunContext

API_USER_ENV, API_PASSWORD_ENV = "REF_API_USER", "REF_API_PASSWORD"


def platform_cfg(ref: RefServer, **extra: Any) -> dict[str, Any]:
    """The config of a platform instance that talks to ``ref``."""
    params = pg.dsn_params(ref.dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    return {"kind": "platform", "api_url": ref.api_url, "db": db,
            "api_username_env": API_USER_ENV, "api_password_env": API_PASSWORD_ENV,
            "max_connections": 4, "timeout_seconds": 5, "retry_attempts": 3,
            "retry_max_seconds": 20, **extra}


def env_for(ref: RefServer) -> dict[str, str]:
    return {API_USER_ENV: ref.username, API_PASSWORD_ENV: ref.password}


def config_with(root: Path, instances: dict[str, Any]) -> Config:
    import yaml

    text = yaml.safe_dump({"paths": {"root": "."}, "instances": instances})
    return parse_config(text, base_dir=root)


def run_context(run_dir: Path, config: Config, request: Request,
                instances: Instances) -> RunContext:
    """What the runner gives a handler, without run.json (progress is dropped)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_id=run_dir.name, run_dir=run_dir, request=request, config=config,
                     instance=instances.get, checkpoint=Checkpoint(run_dir),
                     copies=SqliteCopyStore(config.root / "state"),
                     log=logger.bind(run=run_dir.name), stop=threading.Event(),
                     progress=lambda done, total, **_: None,
                     update=lambda **_: None)
    return ctx


class Api:
    """A minimal client of one RefServer's HTTP API (SPEC §8)."""

    def __init__(self, ref: RefServer) -> None:
        self.ref = ref
        self.session = requests.Session()
        answer = self.session.post(f"{ref.api_url}/api/v4/token-auth/",
                                   json={"username": ref.username, "password": ref.password},
                                   timeout=10)
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Token {answer.json()['token']}"

    def file_bytes(self, file_id: int) -> tuple[str, bytes]:
        meta = self.session.get(f"{self.ref.api_url}/api/v1/master-data/file-upload/"
                                f"{file_id}/", timeout=10)
        meta.raise_for_status()
        # The pre-signed URL is on another host: no Authorization header goes there.
        blob = requests.get(meta.json()["file"], timeout=10)
        blob.raise_for_status()
        return meta.json()["original_filename"], blob.content

    def upload(self, filename: str, data: bytes) -> int:
        answer = self.session.post(f"{self.ref.api_url}/api/v4/processing/upload/",
                                   files={"file": (filename, data)},
                                   data={"input_type": "image"}, timeout=10)
        answer.raise_for_status()
        return int(answer.json()["id"])

    def create(self, payload: dict[str, Any]) -> int:
        answer = self.session.post(f"{self.ref.api_url}/api/v4/processing/actions/",
                                   json=payload, timeout=10)
        answer.raise_for_status()
        return int(answer.json()["id"])


def copy_scans(source: RefServer, target: RefServer, source_ids: list[int], file_ids:
               dict[int, list[int]], store: int) -> dict[int, int]:
    """Create one target scan per source scan from the source's file bytes, in auto mode
    (no section or store planogram given): the target recognises it from the bytes.
    The capture time is the source's, as a copy with ``captured_at: source`` keeps it
    (the target keeps one store planogram compliance row per day, so copies must not
    share a day). Returns source ID → target ID."""
    src, tgt = Api(source), Api(target)
    created = {}
    for scan_id in source_ids:
        row = source.scan(scan_id)
        assert row is not None
        captured_at = row["provided_values"]["_raw_data"]["captured_at"]
        uploads = [tgt.upload(*src.file_bytes(fid)) for fid in file_ids[scan_id]]
        created[scan_id] = tgt.create({"store": store, "files": uploads,
                                       "captured_at": captured_at})
    return created
