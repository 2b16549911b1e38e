"""The ``download`` action: the images of scans to ``images/``, with ``manifest.csv``.

Plan (pure): scans → one task per file with its name stem. Execute: a pipeline, not
batch barriers: a thread pool bounded by the source's ``max_connections`` streams each
file to a temp name, hashing while writing, renames it, and journals it in the
checkpoint. Up to ``WINDOW`` batches are in flight, so one batch's slow file does not
idle the pool; batches still complete in order for progress lines and the manifest.
A resumed run skips every file whose journal record still matches the file on disk.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.errors import PermanentError, RequestError, TransientError
from daemon.instances.base import FileRef, Instance, Scan
from handlers.base import HandlerResult, ItemResult, ItemStatus, RunContext
from handlers.manifest import ManifestRow, manifest
from handlers.naming import extension, file_stems
from handlers.runcsv import RunCsv
from handlers.streams import HashingSink, is_complete

IMAGES = "images"
WINDOW = 4  # batches in flight at once


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


@dataclass(frozen=True)
class Batch:
    number: int
    scan_ids: Sequence[int]
    missing: dict[int, str]  # scan ID → why it cannot be downloaded
    futures: list[Future[FileOutcome]]


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
    for stale in images.glob(".*.part"):  # half-written by a crash: this run owns them
        stale.unlink()
    result = HandlerResult(counts={"scans": len(scan_ids), "files": 0, "failed_files": 0,
                                   "bytes": 0, "reused_files": 0})
    chunks = list(batches(scan_ids, request.batch_size))
    window: deque[Batch] = deque()
    with ThreadPoolExecutor(source.max_connections, thread_name_prefix="download") as pool, \
            manifest(ctx.run_dir) as rows_out:
        try:
            for number, chunk in enumerate(chunks, start=1):
                ctx.check_stop()
                window.append(_start(ctx, source, pool, number, chunk, images))
                while len(window) >= WINDOW or (window and _all_done(window[0])):
                    _finish(ctx, window.popleft(), len(chunks), result, rows_out)
            while window:
                _finish(ctx, window.popleft(), len(chunks), result, rows_out)
        except BaseException:
            _cancel(window)
            raise
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


def _start(ctx: RunContext, source: Instance, pool: ThreadPoolExecutor, number: int,
           chunk: Sequence[int], images: Path) -> Batch:
    scans = source.get_scans(chunk)
    found = {s.id for s in scans}
    missing = {i: f"scan {i} not found in {source.name}" for i in chunk if i not in found}
    futures = [pool.submit(_fetch_one, ctx, source, task, images) for task in plan(scans)]
    return Batch(number, chunk, missing, futures)


def _all_done(batch: Batch) -> bool:
    return all(f.done() for f in batch.futures)


def _finish(ctx: RunContext, batch: Batch, total_batches: int, result: HandlerResult,
            manifest: RunCsv) -> None:
    """Wait for a batch; an ``Interrupted`` or ``FatalError`` of any file stops the run."""
    wait(batch.futures)
    error = next((f.exception() for f in batch.futures if f.exception()), None)
    if error is not None:
        raise error
    outcomes = [f.result() for f in batch.futures]
    for item in _scan_results(batch, outcomes):
        result.add(item)
    _count(result.counts, outcomes)
    manifest.write(_rows(outcomes, batch.missing))
    # This run will not look at these records again (a resume reloads the journal), so
    # memory stays flat however many files the run has.
    ctx.checkpoint.forget(o.task.key for o in outcomes)
    ctx.log.info("[BATCH {}/{}] {} scans, {} files, {} failed scans so far", batch.number,
                 total_batches, len(batch.scan_ids), len(outcomes), len(result.failed))
    ctx.progress(result.total, result.counts["scans"], batch=batch.number,
                 batches=total_batches, failed=len(result.failed))


def _cancel(window: deque[Batch]) -> None:
    """Cancel queued files and wait for running ones (they stop within a chunk)."""
    futures = [f for batch in window for f in batch.futures]
    for f in futures:
        f.cancel()
    wait(futures)


def _fetch_one(ctx: RunContext, source: Instance, task: FileTask, images: Path) -> FileOutcome:
    ctx.check_stop()
    record = ctx.checkpoint.get(task.key)
    if record and is_complete(ctx.run_dir / record["path"], record["size"], record["sha256"]):
        return FileOutcome(task, record["path"], record["size"], record["sha256"], reused=True)
    item = f"{task.scan_id}/{task.ref.file_id}"
    try:
        # Lines the instance logs itself (retries) name this run and item too.
        with logger.contextualize(run=ctx.run_id, item=item):
            outcome = _stream_to_images(source, task, images, ctx)
    except (PermanentError, TransientError, OSError) as exc:
        # A local OSError (disk full, a share gone) fails this file, transiently: the
        # rerun window may find the disk emptied.
        ctx.log.bind(item=item).warning("file {} of scan {} failed: {}", task.ref.file_id,
                                        task.scan_id, exc)
        error = str(exc) if not isinstance(exc, OSError) else \
            f"file {task.ref.file_id}: writing it locally failed: {exc}"
        return FileOutcome(task, error=error, transient=not isinstance(exc, PermanentError))
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
        ext = extension(fetched.original_filename or task.ref.filename, sink.head)
        name = f"{task.stem}.{ext}"
        os.replace(tmp, images / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FileOutcome(task, f"{IMAGES}/{name}", sink.size, sink.sha256)


def _scan_results(batch: Batch, outcomes: list[FileOutcome]) -> list[ItemResult]:
    errors: dict[int, list[FileOutcome]] = {}
    for o in outcomes:
        if o.error:
            errors.setdefault(o.task.scan_id, []).append(o)
    results = []
    for scan_id in batch.scan_ids:
        if scan_id in batch.missing:
            results.append(ItemResult(scan_id, ItemStatus.FAILED, batch.missing[scan_id]))
        elif scan_id in errors:
            failed = errors[scan_id]
            message = "; ".join(o.error or "" for o in failed)  # each names its file
            results.append(ItemResult(scan_id, ItemStatus.FAILED, message,
                                      transient=all(o.transient for o in failed)))
        else:
            results.append(ItemResult(scan_id, ItemStatus.OK))
    return results


def _count(counts: dict[str, int], outcomes: list[FileOutcome]) -> None:
    ok = [o for o in outcomes if not o.error]
    counts["files"] += len(ok)
    counts["failed_files"] += len(outcomes) - len(ok)
    counts["bytes"] += sum(o.size for o in ok)
    counts["reused_files"] += sum(o.reused for o in ok)


def _rows(outcomes: list[FileOutcome], missing: dict[int, str]) -> list[ManifestRow]:
    rows = [ManifestRow(o.task.scan_id, o.task.ref.file_id, o.path,
                        o.size if not o.error else None, o.sha256, o.error)
            for o in outcomes]
    rows += [ManifestRow(scan_id, None, "", None, "", error)
             for scan_id, error in missing.items()]
    return rows
