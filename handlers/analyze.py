"""The ``analyze`` action (SPEC §7): read the details of source and target scans,
compare them pair by pair, and write into the run folder

- ``source_scandetails.csv``, ``target_scandetails.csv``: the details as read, one row
  per scan asked for (``Found`` false for a scan that does not exist);
- ``analysis.csv``: one row per section (compliance report) of each pair, source and
  target values side by side, ``MAv2_Map_by`` and the §7 ``comment``;
- ``analysis.xlsx``: the same rows coloured by comment, with ``Summary`` (rows and scans
  per comment) and ``Legend``.

Items are pairs. A pair whose source scan does not exist is a failed item (permanent)
and has no row in ``analysis.csv``; a pair without a usable target is a finding
(``Missing In Target``), not a failure. The run is one read and one computation, so a
resumed run simply does it again (no checkpoint records). ``analyze_pairs`` is the same
work for a copy run that analyses its own mapping (``analyze: true``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from loguru import logger

from daemon.fsutil import atomic_writer
from daemon.instances.base import Instance
from handlers.analysis.compare import comment_counts, compare, pairs_frame, scan_counts
from handlers.analysis.details import details_csv_frame, read_details
from handlers.analysis.model import SCAN_ID, SOURCE_ID, TARGET_ID
from handlers.analysis.pairs import resolve_pairs
from handlers.analysis.report import write_workbook
from handlers.base import HandlerResult, ItemResult, ItemStatus, RunContext

SOURCE_DETAILS, TARGET_DETAILS = "source_scandetails.csv", "target_scandetails.csv"
ANALYSIS_CSV, ANALYSIS_XLSX = "analysis.csv", "analysis.xlsx"
OUTPUTS = (SOURCE_DETAILS, TARGET_DETAILS, ANALYSIS_CSV, ANALYSIS_XLSX)


@dataclass(frozen=True)
class Analysis:
    """What one analysis found: rows (sections) and pairs per comment, and the sources
    that do not exist."""

    counts: dict[str, int]  # rows per comment
    scan_counts: dict[str, int]  # pairs per worst comment of their rows
    rows: int  # rows in analysis.csv
    pairs: int  # pairs analysed (their source exists)
    missing_sources: list[int]  # source IDs of the pairs that failed, each once
    failed_pairs: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The ``analysis`` section of run.json and result.json."""
        return {"status": "done", "counts": self.counts, "scan_counts": self.scan_counts,
                "rows": self.rows, "pairs": self.pairs, "failed_pairs": self.failed_pairs,
                "files": list(OUTPUTS), "seconds": round(self.seconds, 3)}


def run(ctx: RunContext) -> HandlerResult:
    """The analyze action. Raises ``RequestError`` when the pairs cannot be determined
    (e.g. ``from_run`` names no finished copy run), ``FatalError``/``TransientError``
    when an instance cannot be read, ``Interrupted`` on shutdown."""
    request = ctx.request
    assert request.source is not None and request.target is not None  # validated
    pairs = resolve_pairs(request, ctx.run_dir.parent)
    source, target = ctx.instance(request.source), ctx.instance(request.target)
    analysis = analyse(ctx, source, target, pairs, report_progress=True)
    result = HandlerResult(counts={"pairs": len(pairs), "analysed": analysis.pairs},
                           extra={"analysis": analysis.summary()})
    result.succeeded = analysis.pairs
    missing = set(analysis.missing_sources)
    for source_id, _ in pairs:
        if source_id in missing:
            result.add(ItemResult(source_id, ItemStatus.FAILED,
                                  f"source scan {source_id} not found in {source.name}"))
    return result


def analyze_pairs(ctx: RunContext, source: Instance, target: Instance,
                  pairs: Sequence[tuple[int, int | None]]) -> dict[str, Any]:
    """Analyse ``pairs`` (source ID, target ID or None) and write ``OUTPUTS`` into
    ``ctx.run_dir``; returns ``{"status": "done", "counts": {comment: n}, "pairs": n,
    ...}`` for run.json's ``analysis`` section. Pairs whose source does not exist are
    left out of the rows and counted as ``failed_pairs``. Raises what the instances
    raise (``TransientError``, ``FatalError``), ``Interrupted`` on shutdown, ``OSError``
    when the run folder cannot be written."""
    return analyse(ctx, source, target, pairs).summary()


def analyse(ctx: RunContext, source: Instance, target: Instance,
            pairs: Sequence[tuple[int, int | None]], *,
            report_progress: bool = False) -> Analysis:
    """``analyze_pairs`` with the full outcome (see there for what raises)."""
    started = time.monotonic()
    frame = pairs_frame(pairs)
    source_ids, target_ids = scan_ids_of(frame)
    ctx.log.info("analysis: {} pairs, reading {} source and {} target scans", len(frame),
                 len(source_ids), len(target_ids))
    source_details, target_details = _read_both(ctx, (source, source_ids),
                                                (target, target_ids), report_progress)
    written = compare_and_write(ctx.run_dir, frame, source_details, target_details)
    outcome = Analysis(written.counts, written.scan_counts, written.rows, written.pairs,
                       written.missing_sources, len(frame) - written.pairs,
                       time.monotonic() - started)
    ctx.log.info("analysis: {} pairs ({} sections) compared in {:.1f} s: {}", outcome.pairs,
                 outcome.rows, outcome.seconds,
                 ", ".join(f"{k}: {v}" for k, v in outcome.counts.items() if v))
    missing = outcome.missing_sources
    if missing:
        ctx.log.warning("analysis: {} source scan(s) not found in {}, e.g. {}", len(missing),
                        source.name, missing[:5])
    return outcome


def _read_both(ctx: RunContext, source: tuple[Instance, list[int]],
               target: tuple[Instance, list[int]], report_progress: bool
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Source and target details, read at the same time: they are two instances (two
    databases in production), each mostly waiting on its own server."""
    total = len(source[1]) + len(target[1])
    done = [0, 0]
    lock = threading.Lock()

    def hook(side: int) -> Callable[[int], None]:
        def between_chunks(count: int) -> None:
            ctx.check_stop()
            if report_progress:
                with lock:
                    done[side] = count
                    ctx.progress(sum(done), total, stage="reading details")
        return between_chunks

    def read(side: int, instance: Instance, ids: list[int]) -> pd.DataFrame:
        # Lines the instance logs itself (retries) name this run, as on the run's thread.
        with logger.contextualize(run=ctx.run_id):
            return read_details(instance, ids, between_chunks=hook(side))

    with ThreadPoolExecutor(2, thread_name_prefix="analysis-read") as pool:
        futures = [pool.submit(read, side, instance, ids)
                   for side, (instance, ids) in enumerate((source, target))]
        return futures[0].result(), futures[1].result()


def scan_ids_of(pairs: pd.DataFrame) -> tuple[list[int], list[int]]:
    """The distinct source IDs and target IDs of a pairs frame, first-seen order."""
    return (pairs[SOURCE_ID].drop_duplicates().astype("int64").tolist(),
            pairs[TARGET_ID].dropna().drop_duplicates().astype("int64").tolist())


@dataclass(frozen=True)
class Written:
    """What ``compare_and_write`` wrote: rows and pairs per comment, sizes, and the
    source IDs not found."""

    counts: dict[str, int]
    scan_counts: dict[str, int]
    rows: int
    pairs: int
    missing_sources: list[int]


def compare_and_write(run_dir: Path, pairs: pd.DataFrame, source_details: pd.DataFrame,
                      target_details: pd.DataFrame) -> Written:
    """Compare and write ``OUTPUTS`` into ``run_dir`` (the part after reading, which the
    benchmark measures). Raises ``OSError`` when the files cannot be written."""
    source_ids, target_ids = scan_ids_of(pairs)
    found = pairs[SOURCE_ID].isin(source_details[SCAN_ID])
    analysis = compare(pairs[found], source_details, target_details)
    counts, per_scan = comment_counts(analysis), scan_counts(analysis)
    for name, frame in (
            (SOURCE_DETAILS, details_csv_frame(source_details, source_ids)),
            (TARGET_DETAILS, details_csv_frame(target_details, target_ids)),
            (ANALYSIS_CSV, analysis)):
        with atomic_writer(run_dir / name) as out:
            frame.to_csv(out, index=False, lineterminator="\n")
    write_workbook(run_dir / ANALYSIS_XLSX, analysis, counts, per_scan)
    missing = pairs.loc[~found, SOURCE_ID].drop_duplicates().tolist()
    return Written(counts, per_scan, len(analysis), int(found.sum()),
                   [int(i) for i in missing])

