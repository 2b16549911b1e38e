"""The copy ceiling: the most scans per second the target server takes, measured.

An ideal client does only the least a copy must do on the target: for each scan, its
uploads and one create. Everything else is done before the clock starts: the bytes of
every file are in memory as finished multipart bodies, every create payload is built
(the source's ``_raw_data`` without the fields a copy drops, as ``copy_baseline`` and
ours send). ``threads`` workers (more than the server serves at once, so a request
always waits in its queue and no slot idles between an answer and the next request),
each with its own keep-alive connection, take scans from one queue. A failed call
(any status but 2xx, or any connection error) is sent again at once, so under faults
the ceiling is what the server can take under those same faults.

Run as a child of ``copy_throughput.py``: ``python bench/copy_ceiling.py``, the spec
(JSON, with the API password) in ``$SCANRELAY_BENCH_SPEC``, not on the command line
prints one JSON line ``{"seconds", "mapping", "resent"}``.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import requests
from psycopg.rows import dict_row
from urllib3 import encode_multipart_formdata

DROPPED = ("category_id", "section_id", "store_planogram", "aisle", "task_id", "replace_id",
           "id", "created_at", "updated_at")
SCANS_SQL = """
SELECT s.id, s.provided_values -> '_raw_data' AS raw,
       (SELECT array_agg(f.file_id ORDER BY f.id) FROM realograms_implementation_scanfile f
        WHERE f.scan_id = s.id) AS file_ids
FROM realograms_implementation_scan s WHERE s.id = ANY(%s)
"""


@dataclass(frozen=True)
class Prepared:
    """One scan, ready to send: multipart bodies (content type, body) and the payload."""

    scan_id: int
    uploads: tuple[tuple[str, bytes], ...]
    payload: dict[str, Any]


def login(session: requests.Session, api: str, spec: dict[str, Any]) -> str:
    answer = session.post(f"{api}/api/v4/token-auth/", timeout=30, json={
        "username": spec["username"], "password": spec["password"]})
    answer.raise_for_status()
    return str(answer.json()["token"])


def get(session: requests.Session, url: str, headers: dict[str, str]) -> requests.Response:
    """GET until it succeeds (the faults are on while the ceiling prepares)."""
    while True:
        try:
            answer = session.get(url, headers=headers, timeout=60)
            if answer.ok and len(answer.content) == int(answer.headers["Content-Length"]):
                return answer
        except requests.RequestException:
            pass


def prepare(spec: dict[str, Any]) -> list[Prepared]:
    """Read the scans and download their files (not timed), ``threads`` scans at once:
    one at a time, 1,500 scans would take minutes before the clock starts."""
    with psycopg.connect(spec["source_dsn"], row_factory=dict_row) as conn:
        rows = {r["id"]: r for r in conn.execute(SCANS_SQL, (spec["scan_ids"],))}
    local = threading.local()

    def one(scan_id: int) -> Prepared:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            token = login(local.session, spec["source_api"], spec)
            local.headers = {"Authorization": f"Token {token}"}
        uploads = []
        for file_id in rows[scan_id]["file_ids"]:
            meta = get(local.session, f"{spec['source_api']}/api/v1/master-data/file-upload/"
                       f"{file_id}/", local.headers).json()
            data = get(local.session, meta["file"], {}).content
            body, ctype = encode_multipart_formdata(
                {"input_type": "image", "file": (meta["original_filename"], data)})
            uploads.append((ctype, body))
        payload = {k: v for k, v in rows[scan_id]["raw"].items() if k not in DROPPED}
        return Prepared(scan_id, tuple(uploads), payload)

    with ThreadPoolExecutor(spec["threads"]) as pool:
        return list(pool.map(one, spec["scan_ids"]))


class Client:
    """The workers and what they counted."""

    def __init__(self, spec: dict[str, Any], scans: list[Prepared]) -> None:
        self.spec = spec
        self.api = spec["target_api"]
        self.todo: queue.SimpleQueue[Prepared] = queue.SimpleQueue()
        for scan in scans:
            self.todo.put(scan)
        self.lock = threading.Lock()
        self.mapping: list[tuple[int, int]] = []
        self.resent = 0
        with requests.Session() as session:
            self.headers = {"Authorization": f"Token {login(session, self.api, spec)}"}

    def send(self, session: requests.Session, path: str, **kwargs: Any) -> int:
        """POST until the server accepts it; the ID it answers."""
        while True:
            try:
                answer = session.post(f"{self.api}{path}", timeout=60, **kwargs)
                if answer.ok:
                    return int(answer.json()["id"])
            except (requests.RequestException, ValueError):
                pass
            with self.lock:
                self.resent += 1

    def work(self, start: threading.Barrier) -> None:
        with requests.Session() as session:
            start.wait()
            while True:
                try:
                    scan = self.todo.get_nowait()
                except queue.Empty:
                    return
                files = [self.send(session, "/api/v4/processing/upload/", data=body,
                                   headers={**self.headers, "Content-Type": ctype})
                         for ctype, body in scan.uploads]
                payload = {**scan.payload, "store": self.spec["store"], "files": files,
                           "captured_at": scan.payload.get("captured_at")}
                target = self.send(session, "/api/v4/processing/actions/", json=payload,
                                   headers=self.headers)
                with self.lock:
                    self.mapping.append((scan.scan_id, target))


def main(spec: dict[str, Any]) -> None:
    client = Client(spec, prepare(spec))
    start = threading.Barrier(spec["threads"] + 1)
    workers = [threading.Thread(target=client.work, args=(start,))
               for _ in range(spec["threads"])]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "mapping": client.mapping,
                      "resent": client.resent}))


if __name__ == "__main__":
    from peak import report_peak_at_exit  # bench/, this script's folder

    report_peak_at_exit()
    main(json.loads(os.environ["SCANRELAY_BENCH_SPEC"]))
