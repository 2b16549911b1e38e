"""A run's batches made one run again: their results (``batches.result``) and their
artefacts (``runs/<run>/batches/<n>/``) merged into the run folder, as if one host had
run the request whole.

- results: counts summed, failed scans listed, extras kept from the first batch that has
  them; a batch that did not run through (a fatal error, abandoned) fails its scans
  with its reason;
- download: ``images/`` moved into the run's own, ``manifest.csv`` concatenated;
- copy: ``scan_mapping.csv`` concatenated.

A batch without a CSV of its own (it did not run through) gets one failed row per scan,
so the merged CSV lists every requested scan in request order.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from daemon.fsutil import atomic_writer
from daemon.outcomes import RunStatus
from daemon.runner import status_of
from daemon.runsettle import Outcome
from handlers.base import HandlerResult, ItemResult, ItemStatus
from handlers.download import IMAGES
from handlers.manifest import COLUMNS as MANIFEST_COLUMNS
from handlers.manifest import FILE_NAME as MANIFEST
from handlers.manifest import ManifestRow
from handlers.mapping import COLUMNS as MAPPING_COLUMNS
from handlers.mapping import FILE_NAME as MAPPING
from handlers.mapping import MappingRow

BATCHES = "batches"


def batch_dir(run_dir: Path, number: int) -> Path:
    return run_dir / BATCHES / str(number)


def payload(outcome: Outcome) -> dict[str, Any]:
    """An outcome as ``batches.result`` holds it (JSON)."""
    result = outcome.result
    return {"status": outcome.status.value, "problems": outcome.problems,
            "transient": outcome.transient, "counts": result.counts,
            "succeeded": result.succeeded, "extra": result.extra,
            "failed": [[i.scan_id, i.error, i.transient] for i in result.failed]}


def abandoned(number: int, attempts: int) -> dict[str, Any]:
    """The result of a batch given up on: its executions all ended without one."""
    reason = (f"batch {number} abandoned after {attempts} attempts: its host died each "
              "time")
    return payload(Outcome(RunStatus.FAILED, problems=[reason]))


def outcome_of(data: dict[str, Any]) -> Outcome:
    result = HandlerResult(counts=dict(data.get("counts") or {}),
                           succeeded=int(data.get("succeeded", 0)),
                           extra=dict(data.get("extra") or {}))
    result.failed = [ItemResult(scan_id, ItemStatus.FAILED, error, transient)
                     for scan_id, error, transient in data.get("failed", [])]
    return Outcome(RunStatus(data["status"]), result, list(data.get("problems", [])),
                   bool(data.get("transient")))


def ran_through(outcome: Outcome) -> bool:
    """The batch's handler reported on its scans (no fatal error, not abandoned)."""
    return not outcome.problems


def merge_results(batches: list[dict[str, Any]]) -> Outcome:
    """One outcome of a run's batches (``stages.batches_of``, each finished)."""
    if len(batches) == 1 and not batches[0]["scan_ids"]:  # the request ran whole
        return outcome_of(batches[0]["result"])
    merged = HandlerResult(counts={})
    problems: list[str] = []
    for batch in batches:
        outcome = outcome_of(batch["result"])
        if ran_through(outcome):
            _add(merged, outcome.result)
            continue
        reason = outcome.problems[0]
        if not reason.startswith(f"batch {batch['number']} "):
            reason = f"batch {batch['number']}: {reason}"
        problems.append(reason)
        for scan_id in batch["scan_ids"]:
            merged.add(ItemResult(scan_id, ItemStatus.FAILED, reason, outcome.transient))
    merged.counts["scans"] = sum(len(b["scan_ids"]) for b in batches)
    status = status_of(merged)
    return Outcome(status, merged, problems)


def _add(into: HandlerResult, result: HandlerResult) -> None:
    for key, value in result.counts.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            into.counts[key] = into.counts.get(key, 0) + value
        else:
            into.counts.setdefault(key, value)
    into.failed += result.failed
    into.succeeded += result.succeeded
    for key, value in result.extra.items():
        if into.extra.get(key) is None:
            into.extra[key] = value


def merge_artefacts(run_dir: Path, action: str, batches: list[dict[str, Any]]) -> None:
    """The batches' artefacts into the run folder (idempotent: a settle job retried
    after a crash merges again)."""
    if action == "download":
        _move_images(run_dir, batches)
        _concat(run_dir / MANIFEST, MANIFEST_COLUMNS, _manifest_rows, batches)
    elif action == "copy":
        _concat(run_dir / MAPPING, MAPPING_COLUMNS, _mapping_rows, batches)


def _move_images(run_dir: Path, batches: list[dict[str, Any]]) -> None:
    images = run_dir / IMAGES
    images.mkdir(exist_ok=True)
    for batch in batches:
        folder = batch_dir(run_dir, batch["number"]) / IMAGES
        for entry in _entries(folder):
            if entry.name.startswith("."):  # a .part left by a crash stays behind
                continue
            try:
                os.replace(entry.path, images / entry.name)
            except FileNotFoundError:
                continue  # moved by another execution of this settle (a late duplicate)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []


Filler = Callable[[list[int], str], Iterable[ManifestRow | MappingRow]]


def _concat(path: Path, columns: Sequence[str], filler: Filler,
            batches: list[dict[str, Any]]) -> None:
    """One CSV of the batches' own, in batch order; ``filler``'s rows for a batch that
    has none (it did not run through: each of its scans failed with its reason)."""
    with atomic_writer(path) as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        for batch in batches:
            outcome = outcome_of(batch["result"])
            own = batch_dir(path.parent, batch["number"]) / path.name
            if ran_through(outcome) and own.exists():
                with own.open(encoding="utf-8", newline="") as f:
                    f.readline()  # its header
                    out.writelines(f)
                continue
            reason = outcome.problems[0] if outcome.problems else "the batch wrote no file"
            writer.writerows(row.as_list() for row in filler(batch["scan_ids"], reason))


def _manifest_rows(scan_ids: list[int], reason: str) -> list[ManifestRow]:
    return [ManifestRow(scan_id, None, "", None, "", reason) for scan_id in scan_ids]


def _mapping_rows(scan_ids: list[int], reason: str) -> list[MappingRow]:
    return [MappingRow(scan_id, None, "failed", reason) for scan_id in scan_ids]
