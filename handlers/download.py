"""The ``download`` action: the images of scans to ``images/``, with ``manifest.csv``.

Plan (pure): scans → one task per file with its name stem. Execute: a thread pool
bounded by the source's ``max_connections`` streams each file to a temp name, hashes
it while writing, renames it, and journals it in the checkpoint. A resumed run skips
every file whose journal record still matches the file on disk (size + sha256).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from daemon.errors import PermanentError, RequestError, TransientError
from daemon.fsutil import atomic_writer
from daemon.instances.base import FileRef, Instance, Scan
from handlers.base import HandlerResult, ItemResult, ItemStatus, RunContext
from handlers.naming import extension, file_stems
from handlers.streams import HashingSink, is_complete

IMAGES = "images"
MANIFEST_COLUMNS = ("scan_id", "file_id", "path", "bytes", "sha256", "status", "error")


@dataclass(frozen=True)
class FileTask:
    scan_id: int
    ref: FileRef
    stem: str

    @property
    def key(self) -> str:
        return f"file:{self.scan_id}:{self.ref.file_id}"


@dataclass(frozen=True)
class FileOutcome:
    task: FileTask
    path: str = ""
    size: int = 0
    sha256: str = ""
    error: str | None = None
    transient: bool = False
    reused: bool = False


def plan(scans: Sequence[Scan]) -> list[FileTask]:
    """One task per file of each scan, named by ``handlers.naming``."""
    return [FileTask(scan.id, ref, stem)
            for scan in scans for ref, stem in zip(scan.files, file_stems(scan), strict=True)]


def batches(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def run(ctx: RunContext) -> HandlerResult:
    request = ctx.request
    assert request.source is not None  # guaranteed by request validation
    source = ctx.instance(request.source)
    scan_ids = resolve_scan_ids(ctx, source)
    images = ctx.run_dir / IMAGES
    images.mkdir(exist_ok=True)
    result = HandlerResult(counts={"scans": len(scan_ids), "files": 0, "bytes": 0,
                                   "reused_files": 0})
    rows: list[FileOutcome] = []
    not_found: dict[int, str] = {}
    done = 0
    chunks = list(batches(scan_ids, request.batch_size))
    with ThreadPoolExecutor(source.max_connections, thread_name_prefix="download") as pool:
        for number, chunk in enumerate(chunks, start=1):
            ctx.check_stop()
            outcomes, missing = _download_batch(ctx, source, pool, chunk, images)
            rows += outcomes
            not_found.update(missing)
            result.items += _scan_results(chunk, outcomes, missing)
            _count(result.counts, outcomes)
            done += len(chunk)
            ctx.log.info("[BATCH {}/{}] {} scans, {} files", number, len(chunks), len(chunk),
                         len(outcomes))
            ctx.progress(done, len(scan_ids), batch=number, batches=len(chunks),
                         failed=len(result.failed))
            write_manifest(ctx.run_dir, rows, not_found)
    return result


def resolve_scan_ids(ctx: RunContext, source: Instance) -> list[int]:
    request = ctx.request
    if request.scan_ids:
        return list(request.scan_ids)
    assert request.select is not None
    ids = source.select_scans(request.select.selection())
    if not ids:
        raise RequestError([f"select: no scans of {request.source} match "
                            f"{request.select.model_dump(exclude_none=True, mode='json')}; "
                            "widen the selection"])
    if len(ids) > ctx.config.limits.max_scans:
        raise RequestError([f"select: {len(ids)} scans exceed limits.max_scans; add a limit"])
    ctx.log.info("select matched {} scans", len(ids))
    return ids


def _download_batch(ctx: RunContext, source: Instance, pool: ThreadPoolExecutor,
                    chunk: Sequence[int], images: Path
                    ) -> tuple[list[FileOutcome], dict[int, str]]:
    scans = source.get_scans(chunk)
    found = {s.id for s in scans}
    missing = {i: f"scan {i} not found in {source.name}" for i in chunk if i not in found}
    futures = [pool.submit(_fetch_one, ctx, source, task, images) for task in plan(scans)]
    finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
    _raise_first(futures, finished)
    return [f.result() for f in futures], missing


def _raise_first(futures: list[Future[FileOutcome]], finished: set[Future[FileOutcome]]
                 ) -> None:
    """An Interrupted or FatalError in one task stops the batch: cancel the rest, wait for
    the running ones (they stop within a chunk), and raise it."""
    error = next((f.exception() for f in futures if f in finished and f.exception()), None)
    if error is None:
        return
    for f in futures:
        f.cancel()
    wait(futures)
    raise error


def _fetch_one(ctx: RunContext, source: Instance, task: FileTask, images: Path) -> FileOutcome:
    ctx.check_stop()
    record = ctx.checkpoint.get(task.key)
    if record and is_complete(ctx.run_dir / record["path"], record["size"], record["sha256"]):
        return FileOutcome(task, record["path"], record["size"], record["sha256"], reused=True)
    item = f"{task.scan_id}/{task.ref.file_id}"
    log = ctx.log.bind(item=item)
    try:
        # Lines the instance logs itself (retries) name this run and item too.
        with logger.contextualize(run=ctx.run_id, item=item):
            outcome = _stream_to_images(source, task, images, ctx)
    except (PermanentError, TransientError) as exc:
        log.warning("file {} of scan {} failed: {}", task.ref.file_id, task.scan_id, exc)
        return FileOutcome(task, error=str(exc), transient=isinstance(exc, TransientError))
    ctx.checkpoint.record(task.key, path=outcome.path, size=outcome.size,
                          sha256=outcome.sha256)
    return outcome


def _stream_to_images(source: Instance, task: FileTask, images: Path,
                      ctx: RunContext) -> FileOutcome:
    fd, tmp_name = tempfile.mkstemp(dir=images, prefix=f".{task.scan_id}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as raw:
            sink = HashingSink(raw, ctx.stop)
            fetched = source.fetch_file(task.ref, sink)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        name = f"{task.stem}.{extension(fetched.original_filename or task.ref.filename, sink.head)}"
        final = images / name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileOutcome(task, f"{IMAGES}/{name}", sink.size, sink.sha256)


def _scan_results(chunk: Sequence[int], outcomes: list[FileOutcome],
                  missing: dict[int, str]) -> list[ItemResult]:
    errors: dict[int, list[FileOutcome]] = {}
    for o in outcomes:
        if o.error:
            errors.setdefault(o.task.scan_id, []).append(o)
    results = []
    for scan_id in chunk:
        if scan_id in missing:
            results.append(ItemResult(scan_id, ItemStatus.FAILED, missing[scan_id]))
        elif scan_id in errors:
            failed = errors[scan_id]
            message = "; ".join(f"file {o.task.ref.file_id}: {o.error}" for o in failed)
            results.append(ItemResult(scan_id, ItemStatus.FAILED, message,
                                      transient=all(o.transient for o in failed)))
        else:
            results.append(ItemResult(scan_id, ItemStatus.OK))
    return results


def _count(counts: dict[str, Any], outcomes: list[FileOutcome]) -> None:
    ok = [o for o in outcomes if not o.error]
    counts["files"] += len(ok)
    counts["bytes"] += sum(o.size for o in ok)
    counts["reused_files"] += sum(o.reused for o in ok)
    counts["failed_files"] = counts.get("failed_files", 0) + len(outcomes) - len(ok)


def write_manifest(run_dir: Path, outcomes: list[FileOutcome],
                   not_found: dict[int, str]) -> None:
    """Rewritten atomically after each batch; a scan that does not exist gets one row."""
    with atomic_writer(run_dir / "manifest.csv") as f:
        writer = csv.DictWriter(f, MANIFEST_COLUMNS)
        writer.writeheader()
        for o in outcomes:
            writer.writerow({"scan_id": o.task.scan_id, "file_id": o.task.ref.file_id,
                             "path": o.path, "bytes": o.size if not o.error else "",
                             "sha256": o.sha256, "status": "failed" if o.error else "ok",
                             "error": o.error or ""})
        writer.writerows({"scan_id": scan_id, "status": "failed", "error": error}
                         for scan_id, error in not_found.items())
