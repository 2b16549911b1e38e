"""The ``copy`` action (SPEC §4, §8): scans from a source instance into a store of a
target instance, exactly once, with ``scan_mapping.csv`` and an optional analysis.

- ``copy_plan``: pure decisions (payload, marker, batch retry, ETA);
- ``copy_scan``: one scan end to end, with its checkpoint records and the exactly-once
  create;
- ``copy_pipeline``: the worker pool and the window of batches;
- ``copy_analysis``: with ``analyze``, waiting for processing and the analysis;
- ``ctx.copies`` (``daemon.store``): what earlier runs copied, and the key leases.

The last pass (``retry.passes``): scans that still failed transiently, after their
batch's retries, are held back from the report and copied again at the end of the run,
once per pass (a scan whose create was ambiguous looks its marker up first, as always);
only then are they reported failed.

A resumed run starts after the batches whose scans a run before the restart created
(found by bisection on the ``copy:created`` records' keys) and reports those once its
first new scans are under way, so its first new step does not wait for a walk through
everything done before.

A scan copied to the same target store before (same source and target instance) is
skipped and reported with its existing target ID, unless ``force``. ``dry_run`` reads
the source and the ledger only: it reports what would be copied and writes nothing to
the target (nor to the ledger).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence

from daemon.checkpoint import resume_point
from daemon.errors import PermanentError, TransientError
from daemon.instances.base import Instance
from handlers.base import HandlerResult, ItemResult, ItemStatus, RunContext
from handlers.copy_analysis import analyze_after_copy
from handlers.copy_pipeline import BatchRun, CopyPipeline
from handlers.copy_plan import How, ScanOutcome, Tries, eta_text
from handlers.copy_scan import TMP_DIR, CopySettings, ScanCopier, created_key
from handlers.download import WORKERS_PER_SLOT, batches, resolve_scan_ids
from handlers.mapping import MappingRow, mapping_writer
from handlers.runcsv import RunCsv

DEFAULT_MARKER_FIELD = "scanrelay_ref"
NO_TRIES = Tries()
MAX_WORKERS = 64


def run(ctx: RunContext) -> HandlerResult:
    """Copy the request's scans (see the module docstring). Raises ``RequestError`` for
    an empty selection, ``FatalError`` when an instance or the copy ledger is unusable
    (``StoreError``, a ``FatalError``),
    ``Interrupted`` when the daemon stops (everything done so far is checkpointed)."""
    request = ctx.request
    assert request.source and request.target and request.target_store_id  # validated
    source, target = ctx.instance(request.source), ctx.instance(request.target)
    scan_ids = resolve_scan_ids(ctx, source)
    settings = CopySettings(
        run_id=ctx.run_id, source=request.source, target=request.target,
        store=request.target_store_id, mode=request.mode, force=request.force,
        marker_field=_marker_field(ctx, request.target), with_details=target.kind == "folder",
        captured_at=request.captured_at or ctx.config.copy_.captured_at)
    chunks = [list(c) for c in batches(scan_ids, request.batch_size)]
    copier = ScanCopier(ctx, source, target, settings)
    if request.dry_run:
        result = _dry_run(ctx, source, copier, chunks, len(scan_ids))
        if request.analyze:
            result.extra["analysis"] = {"status": "skipped", "reason": "dry run"}
        return result
    result, pairs = _copy(ctx, source, target, copier, chunks, len(scan_ids))
    if copier.marker_kept is not None:  # read back after this run's first create
        result.extra["marker_kept"] = copier.marker_kept
    if request.analyze:
        result.extra["analysis"] = analyze_after_copy(ctx, source, target, pairs)
        ctx.log.info("analysis after the copy: {}", result.extra["analysis"])
    return result


def _marker_field(ctx: RunContext, target: str) -> str | None:
    cfg = ctx.config.instances[target]
    return getattr(cfg, "marker_field", DEFAULT_MARKER_FIELD)


def _workers(source: Instance, target: Instance) -> int:
    """Enough workers to fill both instances' connection limits at once, twice over: a
    worker sleeping on a retry gives its slot back, and another one takes it."""
    return min(MAX_WORKERS, WORKERS_PER_SLOT * (source.max_connections
                                                + target.max_connections))


Pairs = list[tuple[int, int | None]]


def _copy(ctx: RunContext, source: Instance, target: Instance, copier: ScanCopier,
          chunks: list[list[int]], total: int) -> tuple[HandlerResult, Pairs]:
    tmp = ctx.run_dir / TMP_DIR
    for stale in tmp.glob("*/.*.part"):  # half-written by a crash: this run owns them
        stale.unlink()
    passes = ctx.config.retry.passes
    report = Report(ctx, total, len(chunks), keep_pairs=ctx.request.analyze,
                    hold=passes > 0)
    with mapping_writer(ctx.run_dir) as mapping:
        report.mapping = mapping
        pipeline = CopyPipeline(ctx, source, copier, workers=_workers(source, target),
                                retry_pause=ctx.config.copy_.batch_retry_pause,
                                on_batch=report.batch)
        pipeline.run(chunks, recorded=_recorded_prefix(ctx, chunks))
        for number in range(1, passes + 1):
            ids = report.take_held()
            if not ids:
                break
            ctx.log.info("last pass {}: {} scan(s) that failed transiently", number, len(ids))
            report.hold = number < passes
            pipeline.run([list(c) for c in batches(ids, ctx.request.batch_size)])
        report.release_held()
    shutil.rmtree(tmp, ignore_errors=True)
    return report.result, report.pairs


def _recorded_prefix(ctx: RunContext, chunks: list[list[int]]) -> int:
    """Where a run before a restart stopped: a batch whose every scan has its
    ``copy:created`` record while the next one's have not all (0 for a fresh run), by
    bisection on the records' keys alone (``daemon.checkpoint.resume_point``). A scan
    before it that was not created after all is copied as they are reported."""
    return resume_point(len(chunks), lambda number: all(
        ctx.checkpoint.had(created_key(i)) for i in chunks[number - 1]))


class Report:
    """Results, counts, mapping rows, progress lines: batch by batch, in order."""

    def __init__(self, ctx: RunContext, total: int, batches: int, *, keep_pairs: bool,
                 hold: bool = False) -> None:
        self.ctx = ctx
        self.total = total
        self.batches = batches
        self.keep_pairs = keep_pairs
        self.hold = hold  # hold transient failures back for a last pass
        self.held: dict[int, ScanOutcome] = {}
        self.mapping: RunCsv | None = None
        self.pairs: Pairs = []
        self.started = time.monotonic()
        self.before = 0  # scans reported as done before a restart
        self.result = HandlerResult(counts={
            "scans": total, "copied": 0, "skipped": 0, "recovered": 0, "files": 0,
            "bytes": 0, "reused_steps": 0, "batch_retries": 0})

    def batch(self, batch: BatchRun) -> None:
        outcomes = batch.ordered()
        if self.hold:
            self.held.update((o.scan_id, o) for o in outcomes if _transient(o))
            outcomes = [o for o in outcomes if not _transient(o)]
        self.result.counts["batch_retries"] += batch.retries
        self._add(outcomes)
        self._line(batch.number, outcomes)

    def take_held(self) -> list[int]:
        """The scans held for a last pass, in request order; no longer held."""
        ids = list(self.held)
        self.held.clear()
        return ids

    def release_held(self) -> None:
        """Report what is still held (nothing, unless the run had no pass left)."""
        outcomes = list(self.held.values())
        self.held.clear()
        self._add(outcomes)

    def _add(self, outcomes: Sequence[ScanOutcome]) -> None:
        counts = self.result.counts
        for o in outcomes:
            self.result.add(ItemResult(o.scan_id, o.status, o.error, o.transient))
            counts["copied"] += o.status is ItemStatus.OK
            counts["skipped"] += o.status is ItemStatus.SKIPPED
            counts["recovered"] += o.how is How.RECOVERED
            counts["files"] += o.files
            counts["bytes"] += o.bytes
            counts["reused_steps"] += o.reused
        self._rows(outcomes)

    def _rows(self, outcomes: Sequence[ScanOutcome]) -> None:
        assert self.mapping is not None
        self.mapping.write(MappingRow(o.scan_id, o.target_id, o.mapping_status, o.error)
                           for o in outcomes)
        if self.keep_pairs:
            self.pairs += [(o.scan_id, o.target_id) for o in outcomes]

    def _line(self, number: int, outcomes: Sequence[ScanOutcome]) -> None:
        done, counts = self.result.total, self.result.counts
        elapsed = time.monotonic() - self.started
        failed = sum(o.status is ItemStatus.FAILED for o in outcomes)
        ok = sum(o.status is ItemStatus.OK for o in outcomes)
        if all(o.reused and o.tries == NO_TRIES for o in outcomes):
            # Done before a restart: no news (the resume says so in one line), and no
            # part of this run's rate.
            self.before += len(outcomes)
        else:
            new = done - self.before
            self.ctx.log.info(
                "[BATCH {}/{}] {} scans: {} copied, {} skipped, {} failed | {}/{} scans, "
                "{:.1f} scans/s, ETA {}", number, self.batches, len(outcomes), ok,
                len(outcomes) - ok - failed, failed, done, self.total,
                new / elapsed if elapsed > 0 else 0.0,
                eta_text(new, self.total - self.before, elapsed))
        self.ctx.progress(done, self.total, batch=number, batches=self.batches,
                          copied=counts["copied"], skipped=counts["skipped"],
                          failed=len(self.result.failed))


def _transient(outcome: ScanOutcome) -> bool:
    return outcome.status is ItemStatus.FAILED and outcome.transient


def _dry_run(ctx: RunContext, source: Instance, copier: ScanCopier, chunks: list[list[int]],
             total: int) -> HandlerResult:
    """What a copy would do, batch by batch; nothing is written but the run folder."""
    result = HandlerResult(counts={"scans": total, "planned": 0, "skipped": 0, "files": 0})
    with mapping_writer(ctx.run_dir) as mapping:
        for number, chunk in enumerate(chunks, start=1):
            ctx.check_stop()
            rows = _plan_batch(source, copier, chunk, result)
            mapping.write(rows)
            ctx.log.info("[BATCH {}/{}] dry run: {} to copy, {} already copied", number,
                         len(chunks), sum(r.status == "planned" for r in rows),
                         sum(r.status == "skipped" for r in rows))
            ctx.progress(result.total, total, batch=number, batches=len(chunks))
    result.extra["dry_run"] = {"would_copy": result.counts["planned"],
                               "would_skip": result.counts["skipped"]}
    return result


def _plan_batch(source: Instance, copier: ScanCopier, chunk: list[int],
                result: HandlerResult) -> list[MappingRow]:
    known = copier.known(chunk)
    rest = [i for i in chunk if i not in known]
    try:
        found = {s.id: s for s in source.get_scans(rest)} if rest else {}
        error = None
    except (PermanentError, TransientError) as exc:
        found, error = {}, exc
    rows = []
    for scan_id in chunk:
        if scan_id in known:
            row = MappingRow(scan_id, known[scan_id].target_id, "skipped")
            result.add(ItemResult(scan_id, ItemStatus.SKIPPED))
            result.counts["skipped"] += 1
        elif scan_id in found and found[scan_id].files:
            row = MappingRow(scan_id, None, "planned")
            result.add(ItemResult(scan_id, ItemStatus.OK))
            result.counts["planned"] += 1
            result.counts["files"] += len(found[scan_id].files)
        else:
            why = (f"read: {error}" if error else f"read: scan {scan_id} not found in "
                   f"{source.name}" if scan_id not in found else "read: the scan has no files")
            row = MappingRow(scan_id, None, "failed", why)
            result.add(ItemResult(scan_id, ItemStatus.FAILED, why,
                                  transient=isinstance(error, TransientError)))
        rows.append(row)
    return rows
