"""The copy pipeline: scans, not batches, flow through one pool of workers.

Each worker copies one scan end to end (download → upload → create, ``copy_scan``), so
at any moment some scans download while others upload or are created: no stage waits
for a whole batch. Each call to an instance holds one of its connection slots
(``handlers.limits``), so the pool (source + target ``max_connections`` workers) keeps
both instances busy without ever exceeding either limit.

Back-pressure: batches are admitted into a window while fewer than ``2 x workers``
scans are unfinished, so at most about one pool's worth of scans waits in the queue,
however long the request. Batches stay the unit of reporting: they are handed to
``on_batch`` in order, each once all its scans have their final outcome.

Batch-level retry (``copy_plan.batch_retry``): a finished batch whose download, upload
or create success is too low gets its transiently failed scans resubmitted after
``retry_pause x n`` seconds; meanwhile the other batches go on.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from daemon.errors import PermanentError, TransientError
from daemon.instances.base import Instance
from handlers.base import RunContext
from handlers.copy_plan import ScanOutcome, Stage, Tries, batch_retry, failed
from handlers.copy_scan import ScanCopier

TICK = 0.5  # seconds between stop checks while waiting
READ_TRY = Tries(downloads=1)  # a scan that cannot be read counts as a failed download
RECORDED_LOOKUP = 500  # scans whose recorded outcomes a resume reads back at a time


@dataclass
class BatchRun:
    """One batch on its way through the pipeline."""

    number: int
    scan_ids: list[int]
    outcomes: dict[int, ScanOutcome] = field(default_factory=dict)
    futures: dict[int, Future[ScanOutcome]] = field(default_factory=dict)
    retries: int = 0
    retry_ids: list[int] = field(default_factory=list)
    retry_at: float | None = None
    settled: bool = False

    def unfinished(self) -> int:
        return sum(not f.done() for f in self.futures.values()) + len(self.retry_ids)

    def ordered(self) -> list[ScanOutcome]:
        """The latest outcome of each scan, in request order."""
        return [self.outcomes[i] for i in self.scan_ids]


class CopyPipeline:
    """Runs batches of scan IDs through a ``ScanCopier`` (see the module docstring)."""

    def __init__(self, ctx: RunContext, source: Instance, copier: ScanCopier, *,
                 workers: int, retry_pause: float,
                 on_batch: Callable[[BatchRun], None]) -> None:
        self.ctx = ctx
        self.source = source
        self.copier = copier
        self.workers = workers
        self.retry_pause = retry_pause
        self.on_batch = on_batch
        self.pool: ThreadPoolExecutor | None = None

    def run(self, chunks: Sequence[Sequence[int]], recorded: int = 0) -> None:
        """Copy every chunk. The first ``recorded`` ones had every scan created before
        a restart: they are reported once the batches after them are under way, so a
        resumed run's first new step does not wait for a walk through everything done
        before. Raises ``Interrupted`` when stopping, ``FatalError`` (or any unexpected
        error) from a worker; queued scans are cancelled first."""
        todo = deque(enumerate(chunks[recorded:], start=recorded + 1))
        window: deque[BatchRun] = deque()
        longest = max((len(c) for c in chunks), default=1)
        max_batches = max(4, math.ceil(4 * self.workers / max(1, longest)))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="copy") as pool:
            self.pool = pool
            try:
                while todo or window or recorded:
                    self.ctx.check_stop()
                    while todo and len(window) < max_batches and \
                            sum(b.unfinished() for b in window) < 2 * self.workers:
                        number, ids = todo.popleft()
                        window.append(self._start(number, list(ids)))
                    if recorded:
                        self._report_recorded(chunks[:recorded])
                        recorded = 0
                    for batch in window:
                        self._advance(batch)
                    while window and window[0].settled:
                        self.on_batch(window.popleft())
                    if window and not window[0].settled:
                        self._wait(window)
            except BaseException:
                _cancel(window)
                raise
            finally:
                self.pool = None

    # --- batches -------------------------------------------------------------------

    def _report_recorded(self, chunks: Sequence[Sequence[int]]) -> None:
        """Report ``chunks``, the first batches, whose scans a run before the restart
        created: their outcomes come from the journal (and the ledger), a few hundred
        scans per look-up; a scan not found there after all is copied now."""
        per_lookup = max(1, RECORDED_LOOKUP // max(1, max(len(c) for c in chunks)))
        for first in range(0, len(chunks), per_lookup):
            group = chunks[first:first + per_lookup]
            known = self.copier.known([i for ids in group for i in ids])
            for number, ids in enumerate(group, start=first + 1):
                self.ctx.check_stop()
                batch = BatchRun(number, list(ids))
                batch.outcomes.update((i, known[i]) for i in ids if i in known)
                self._submit(batch, [i for i in ids if i not in known])
                while not batch.settled:
                    self._advance(batch)
                    if not batch.settled:
                        self._wait(deque([batch]))
                self.on_batch(batch)
        self.ctx.log.info("resumed after {} batches whose scans were created before the "
                          "restart", len(chunks))


    def _start(self, number: int, ids: list[int]) -> BatchRun:
        batch = BatchRun(number, ids)
        batch.outcomes.update(self.copier.known(ids))
        self._submit(batch, [i for i in ids if i not in batch.outcomes])
        return batch

    def _submit(self, batch: BatchRun, ids: list[int]) -> None:
        """Read ``ids`` from the source and queue a copy of each scan found."""
        if not ids:
            return
        assert self.pool is not None
        try:
            scans = {scan.id: scan for scan in self.source.get_scans(ids)}
        except (PermanentError, TransientError) as exc:
            transient = isinstance(exc, TransientError)
            for scan_id in ids:
                batch.outcomes[scan_id] = failed(scan_id, Stage.READ, str(exc), transient,
                                                 READ_TRY)
            return
        for scan_id in ids:
            if scan_id in scans:
                batch.futures[scan_id] = self.pool.submit(self.copier.copy, scans[scan_id])
            else:
                batch.outcomes[scan_id] = failed(
                    scan_id, Stage.READ, f"scan {scan_id} not found in {self.source.name}",
                    False, READ_TRY)

    def _advance(self, batch: BatchRun) -> None:
        """Collect a batch whose scans are all done, or resubmit one whose pause is over."""
        if batch.settled:
            return
        if batch.retry_at is not None:
            if time.monotonic() >= batch.retry_at:
                ids, batch.retry_ids, batch.retry_at = batch.retry_ids, [], None
                batch.retries += 1
                self.ctx.log.info("[BATCH {}] retry {}: {} scan(s) again", batch.number,
                                  batch.retries, len(ids))
                self._submit(batch, ids)
            return
        if any(not f.done() for f in batch.futures.values()):
            return
        for scan_id, future in batch.futures.items():
            error = future.exception()
            if error is not None:
                raise error
            batch.outcomes[scan_id] = future.result()
        batch.futures.clear()
        retry = batch_retry(batch.ordered(), batch.retries)
        if not retry:
            batch.settled = True
            return
        pause = self.retry_pause * (batch.retries + 1)
        self.ctx.log.warning("[BATCH {}] too many failures: {} scan(s) retried in {:.1f} s",
                             batch.number, len(retry), pause)
        batch.retry_ids, batch.retry_at = retry, time.monotonic() + pause

    def _wait(self, window: deque[BatchRun]) -> None:
        """Until a scan finishes, a retry pause ends, or ``TICK`` passes."""
        pending = [f for b in window for f in b.futures.values() if not f.done()]
        timeout = TICK
        retry_times = [b.retry_at for b in window if b.retry_at is not None]
        if retry_times:
            timeout = max(0.0, min(timeout, min(retry_times) - time.monotonic()))
        if pending:
            wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        else:
            self.ctx.stop.wait(timeout)


def _cancel(window: deque[BatchRun]) -> None:
    """Cancel queued scans and wait for running ones (they stop within a chunk)."""
    futures = [f for batch in window for f in batch.futures.values()]
    for f in futures:
        f.cancel()
    wait(futures)
