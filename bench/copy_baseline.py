"""The old scripts' way of copying scans, kept only as the benchmark's baseline.

What the old workflow did, and ``handlers/copy.py`` does not:

* batch barriers: a batch is read, then *all* its files are downloaded, then all
  uploaded, then all its scans created; the next batch starts only when the last
  create of this one has answered;
* a new connection per call: a fresh ``requests.Session`` for every HTTP call and a
  fresh psycopg connection for every scan read;
* whole files in memory: every file of the batch is held as ``bytes`` until the
  upload stage is over.

``workers`` > 1 runs each stage on a thread pool of that size (still with the
barriers): a generous version of the old scripts, which ran each stage call by call.
No retries and no marker: the benchmark injects no faults.

Run as a child of ``copy_throughput.py``: ``python bench/copy_baseline.py SPEC_JSON``
prints ``{"seconds": ..., "created": [...]}``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import requests

T = TypeVar("T")
R = TypeVar("R")
DROPPED = {"task_id", "id", "created_at", "updated_at", "category_id", "section_id",
           "store_planogram", "aisle", "replace_id", "store", "files", "captured_at"}


def stage(workers: int, items: Sequence[T], fn: Callable[[T], R]) -> list[R]:
    """``fn`` over ``items``; returns when the last one is done (the barrier)."""
    if workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def login(api: str, username: str, password: str) -> str:
    with requests.Session() as s:
        answer = s.post(f"{api}/api/v4/token-auth/", json={"username": username,
                                                           "password": password}, timeout=60)
        answer.raise_for_status()
        return str(answer.json()["token"])


def read_scan(dsn: str, scan_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        raw = conn.execute("SELECT provided_values->'_raw_data' FROM"
                           " realograms_implementation_scan WHERE id = %s",
                           (scan_id,)).fetchone()
        files = conn.execute("SELECT file_id FROM realograms_implementation_scanfile"
                             " WHERE scan_id = %s ORDER BY file_id", (scan_id,)).fetchall()
    assert raw is not None
    return {"id": scan_id, "raw": raw[0], "files": [int(f[0]) for f in files]}


class OldCopier:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.source_token = login(spec["source_api"], spec["username"], spec["password"])
        self.target_token = login(spec["target_api"], spec["username"], spec["password"])

    def download(self, file_id: int) -> tuple[int, str, bytes]:
        headers = {"Authorization": f"Token {self.source_token}"}
        with requests.Session() as s:
            meta = s.get(f"{self.spec['source_api']}/api/v1/master-data/file-upload/"
                         f"{file_id}/", headers=headers, timeout=60)
            meta.raise_for_status()
        with requests.Session() as s:
            blob = s.get(meta.json()["file"], timeout=60)
            blob.raise_for_status()
            return file_id, meta.json()["original_filename"], blob.content  # all in memory

    def upload(self, item: tuple[int, str, bytes]) -> tuple[int, int]:
        file_id, name, data = item
        with requests.Session() as s:
            answer = s.post(f"{self.spec['target_api']}/api/v4/processing/upload/",
                            headers={"Authorization": f"Token {self.target_token}"},
                            data={"input_type": "image"}, files={"file": (name, data)},
                            timeout=60)
            answer.raise_for_status()
            return file_id, int(answer.json()["id"])

    def create(self, item: tuple[dict[str, Any], list[int]]) -> int:
        scan, uploads = item
        payload = {k: v for k, v in scan["raw"].items() if k not in DROPPED}
        payload.update(store=self.spec["store"], files=uploads,
                       captured_at=scan["raw"]["captured_at"])
        with requests.Session() as s:
            answer = s.post(f"{self.spec['target_api']}/api/v4/processing/actions/",
                            headers={"Authorization": f"Token {self.target_token}"},
                            json=payload, timeout=60)
            answer.raise_for_status()
            return int(answer.json()["id"])

    def copy_batch(self, ids: Sequence[int]) -> list[int]:
        workers = self.spec["workers"]
        scans = stage(workers, ids, lambda i: read_scan(self.spec["source_dsn"], i))
        files = stage(workers, [f for s in scans for f in s["files"]], self.download)
        uploaded = dict(stage(workers, files, self.upload))
        return stage(workers, [(s, [uploaded[f] for f in s["files"]]) for s in scans],
                     self.create)


def main(spec: dict[str, Any]) -> None:
    ids = spec["scan_ids"]
    size = spec["batch_size"]
    started = time.perf_counter()
    copier = OldCopier(spec)
    created: list[int] = []
    for start in range(0, len(ids), size):
        created += copier.copy_batch(ids[start:start + size])
    print(json.dumps({"seconds": time.perf_counter() - started, "created": created}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
