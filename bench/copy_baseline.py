"""A faithful model of the old workflow's copy script, kept only as a benchmark baseline.

What it models: ``autoScans.py`` of the old scripts (the team's ``MATESTS`` repository,
its last commit, "final update and added download images from scans"; the same script
was ``copyScanUpdated.py`` before), which copied scans batch by batch. Written anew
here, behaviour for behaviour; none of its code is reused:

* log in to both instances once (``POST token-auth``; never retried);
* read every scan of the run with its files in **one query** on a new database
  connection (the original's ``jsonb_build_array((SELECT ...))`` only works for scans
  with one file; this model aggregates the files, as it was meant to);
* batches of **10**, each with **barriers**: download all its files (a pool of
  ``min(20, files)`` threads), then upload all (``min(20, files)``), then create all
  its scans (``min(15, scans)``); the next batch starts when the last create answered;
* every call on a **new connection** (module-level ``requests.get/post``), every file
  whole in memory (``response.content``);
* **retries only 502/503** (and client-side timeouts), on uploads and creates, 3 times,
  after ``min(2 x 2^n, 30)`` s plus up to 10 % jitter; file metadata, file bytes and
  login are never retried;
* **batch retry**: up to 3 more attempts of the whole batch (downloads, uploads and
  creates again), after ``5 x attempt`` s, when under 80 % of its downloads or uploads
  succeeded, when more than half of its creates failed, or when a stage raised;
* what it **loses** while printing success: a file that failed on a batch that got
  over 80 % is left out of its scan (the scan is created with fewer files, or skipped
  when it has none, without being counted as failed); a failed create is counted and
  dropped; a batch retry re-creates scans that an earlier attempt created (duplicates);
  a batch whose last attempt fails is dropped whole. At the end it prints
  ``Script completed successfully!`` regardless.

Left out: its checkpoint file and its progress and debug prints (several per call);
its error lines are kept.

The create payload is the source's ``provided_values._raw_data`` minus ``category_id,
section_id, store_planogram, aisle, task_id, replace_id, id, created_at, updated_at``,
with ``store``, ``files`` and ``captured_at`` (the run's start, epoch seconds) set.

Run as a child of ``copy_throughput.py``: ``python bench/copy_baseline.py``, the spec
(JSON, with the API password) in ``$SCANRELAY_BENCH_SPEC``, not on the command line
prints the old script's summary lines, then one JSON line ``{"seconds", "mapping",
"failed", "skipped", "printed_success"}``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
import requests
from psycopg.rows import dict_row

T = TypeVar("T")
BATCH_SIZE = 10
DOWNLOAD_THREADS, UPLOAD_THREADS, CREATE_THREADS = 20, 20, 15
BATCH_RETRIES = 3
CALL_RETRIES = 3
DROPPED = ("category_id", "section_id", "store_planogram", "aisle", "task_id", "replace_id",
           "id", "created_at", "updated_at")
SCANS_SQL = """
SELECT s.id, s.provided_values,
       (SELECT jsonb_agg(jsonb_build_object('file_id', f.file_id, 'type', f.file_type)
                         ORDER BY f.id)
        FROM realograms_implementation_scanfile f WHERE f.scan_id = s.id) AS scan_files
FROM realograms_implementation_scan s
WHERE s.id = ANY(%s)
"""


class RetryBatch(Exception):
    """A stage did too badly: the whole batch is tried again (if attempts are left)."""


def retry_502_503(fn: Callable[[], T]) -> T:
    """The old decorator: 502/503 and client timeouts are retried, nothing else."""
    for attempt in range(CALL_RETRIES + 1):
        delay = min(2 * 2 ** attempt, 30)
        try:
            return fn()
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code not in (502, 503) \
                    or attempt == CALL_RETRIES:
                raise
            delay += random.uniform(0, 0.1) * delay  # jitter on HTTP errors only
        except requests.Timeout:
            if attempt == CALL_RETRIES:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class Outcome:
    """The old script's own view of its run."""

    mapping: list[tuple[int, int]] = field(default_factory=list)
    failed: int = 0
    skipped: int = 0  # scans left without files: neither created nor counted as failed


class OldCopier:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.captured_at = int(time.time())
        self.source_token = self.login(spec["source_api"])
        self.target_token = self.login(spec["target_api"])

    def login(self, api: str) -> str:
        answer = requests.post(f"{api}/api/v4/token-auth/", timeout=30, json={
            "username": self.spec["username"], "password": self.spec["password"]})
        answer.raise_for_status()
        return str(answer.json()["token"])

    def read_scans(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.spec["source_dsn"], row_factory=dict_row) as conn:
            rows = conn.execute(SCANS_SQL, (self.spec["scan_ids"],)).fetchall()
        order = {scan_id: n for n, scan_id in enumerate(self.spec["scan_ids"])}
        return sorted(rows, key=lambda row: order[row["id"]])

    # --- the calls -----------------------------------------------------------------

    def download(self, file_id: int) -> tuple[str, bytes]:
        meta = requests.get(f"{self.spec['source_api']}/api/v1/master-data/file-upload/"
                            f"{file_id}/", timeout=60,
                            headers={"Authorization": f"Token {self.source_token}"})
        meta.raise_for_status()
        blob = requests.get(meta.json()["file"], timeout=120)
        blob.raise_for_status()
        return str(meta.json()["original_filename"]), blob.content

    def upload(self, info: tuple[str, bytes]) -> int:
        def call() -> int:
            answer = requests.post(f"{self.spec['target_api']}/api/v4/processing/upload/",
                                   files={"file": info}, data={"input_type": "image"},
                                   headers={"Authorization": f"Token {self.target_token}"},
                                   timeout=120)
            answer.raise_for_status()
            return int(answer.json()["id"])
        return retry_502_503(call)

    def create(self, payload: dict[str, Any]) -> int:
        def call() -> int:
            answer = requests.post(f"{self.spec['target_api']}/api/v4/processing/actions/",
                                   json=payload, timeout=60,
                                   headers={"Authorization": f"Token {self.target_token}"})
            answer.raise_for_status()
            return int(answer.json()["id"])
        return retry_502_503(call)

    # --- one batch -----------------------------------------------------------------

    def batch(self, scans: list[dict[str, Any]], outcome: Outcome) -> None:
        for attempt in range(BATCH_RETRIES + 1):
            if attempt:
                time.sleep(5 * attempt)
            last = attempt == BATCH_RETRIES
            try:
                mapping, failed, skipped = self.attempt(scans, last)
            except RetryBatch:
                continue  # only raised while attempts are left
            except Exception as exc:  # the old script's catch-all
                print(f"[BATCH] [ERROR] Batch processing failed: {exc!r}", flush=True)
                if not last:
                    continue
                outcome.failed += len(scans)  # the whole batch is dropped
                return
            outcome.mapping += mapping
            outcome.failed += failed
            outcome.skipped += skipped
            return

    def attempt(self, scans: list[dict[str, Any]], last: bool
                ) -> tuple[list[tuple[int, int]], int, int]:
        file_ids = list({f["file_id"] for s in scans for f in s["scan_files"] or ()})
        downloaded = stage("download file", DOWNLOAD_THREADS, file_ids, self.download, last)
        if len(downloaded) < 0.8 * len(file_ids) and not last:
            raise RetryBatch
        uploaded = stage("upload file", UPLOAD_THREADS, downloaded,
                         lambda f: self.upload(downloaded[f]), last)
        if len(uploaded) < 0.8 * len(downloaded) and not last:
            raise RetryBatch
        payloads, skipped = self.payloads(scans, uploaded)
        if not payloads:
            return [], 0, skipped
        created = stage("create scan for source", CREATE_THREADS, payloads,
                        lambda s: self.create(payloads[s]), False)
        failed = len(payloads) - len(created)
        if failed > 0.5 * len(payloads) and not last:
            raise RetryBatch
        return list(created.items()), failed, skipped

    def payloads(self, scans: list[dict[str, Any]], uploaded: dict[int, int]
                 ) -> tuple[dict[int, dict[str, Any]], int]:
        out: dict[int, dict[str, Any]] = {}
        for scan in scans:
            data = copy.deepcopy(scan["provided_values"]["_raw_data"])
            for key in DROPPED:
                data.pop(key, None)
            files = [uploaded.get(f["file_id"]) for f in scan["scan_files"] or ()]
            data.update(store=self.spec["store"], files=[f for f in files if f],
                        captured_at=self.captured_at)
            if data["files"]:
                out[scan["id"]] = data
        return out, len(scans) - len(out)


def stage(name: str, threads: int, keys: Iterable[int], fn: Callable[[int], T],
          raise_any: bool) -> dict[int, T]:
    """``fn`` over ``keys`` on ``min(threads, n)`` threads, then the barrier: the results
    that succeeded. A failure is dropped, or raised when ``raise_any`` (last attempt)."""
    keys = list(keys)
    if not keys:
        return {}
    results: dict[int, T] = {}
    with ThreadPoolExecutor(min(threads, len(keys))) as pool:
        futures = {pool.submit(fn, key): key for key in keys}
        for future in as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except Exception as exc:
                print(f"[ERROR] Failed to {name} {futures[future]}: {exc!r}", flush=True)
                if raise_any:
                    raise
    return results


def main(spec: dict[str, Any]) -> None:
    started = time.perf_counter()
    copier = OldCopier(spec)
    scans = copier.read_scans()
    outcome = Outcome()
    for start in range(0, len(scans), BATCH_SIZE):
        copier.batch(scans[start:start + BATCH_SIZE], outcome)
    seconds = time.perf_counter() - started
    attempted = len(scans) - outcome.failed
    print(f"[SUCCESS] Created {len(outcome.mapping)} scans successfully across all batches")
    print(f"[STATS] Success rate: {len(outcome.mapping)}/{attempted}")
    print(f"[STATS] Failed scans: {outcome.failed}")
    print("Script completed successfully!")
    print(json.dumps({"seconds": seconds, "mapping": outcome.mapping, "failed": outcome.failed,
                      "skipped": outcome.skipped, "printed_success": True}))


if __name__ == "__main__":
    from peak import report_peak_at_exit  # bench/, this script's folder

    report_peak_at_exit()
    main(json.loads(os.environ["SCANRELAY_BENCH_SPEC"]))
