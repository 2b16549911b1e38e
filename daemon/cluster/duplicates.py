"""The post-run duplicate check of a copy in the cluster: once its batches are done,
count the target scans recorded per source scan and say loudly if any has more than
one.

The copy ledger keeps the newest copy of a key; ``copy_creates`` (``0006``) keeps
every target scan any execution recorded for it, so two executions that both created
(a paused host whose create went out after its fence, a bug) show as two rows. A
duplicate is reported three ways: the run's ``duplicates`` (run.json and the
result sidecar; empty when clean), an ERROR line in the run's log, and the counter
``scanrelay_copy_duplicates``. The check cannot see a create whose host died before
recording it; the count on the target by marker (where the target keeps the marker and
can count by it: a platform, one query per few thousand scans) covers that, and a scan
made by hand with a copy's marker.
"""

from __future__ import annotations

from typing import Any

import psycopg
from prometheus_client import Counter

from daemon import metrics
from daemon.errors import ScanrelayError
from daemon.instances.base import Instance

DUPLICATES = Counter("scanrelay_copy_duplicates",
                     "Source scans a copy left with more than one target scan, by target",
                     ["target"], registry=metrics.REGISTRY)


def in_ledger(conn: psycopg.Connection[Any], run_id: str) -> dict[int, list[int]]:
    """The source scans of ``run_id`` with more than one target scan recorded by any
    execution: ``{source scan: target scans}``."""
    rows = conn.execute(
        "SELECT source_scan_id, array_agg(target_scan_id ORDER BY target_scan_id)"
        " FROM copy_creates WHERE run_id = %s GROUP BY source, source_scan_id, target,"
        " target_store_id HAVING count(*) > 1", (run_id,)).fetchall()
    return {int(i): [int(x) for x in ids] for i, ids in rows}


def on_target(conn: psycopg.Connection[Any], run_id: str, target: Instance,
              field: str | None) -> dict[int, list[int]]:
    """The source scans of ``run_id`` that more than one target scan carries the marker
    of: one query per few thousand scans, on a target that can count by marker (a
    platform); ``{}`` where it cannot, or keeps no marker."""
    count = getattr(target, "scans_by_markers", None)
    if field is None or count is None:
        return {}
    rows = conn.execute("SELECT DISTINCT source_scan_id, marker FROM copies"
                        " WHERE run_id = %s AND target_scan_id IS NOT NULL",
                        (run_id,)).fetchall()
    source_of = {str(marker): int(scan) for scan, marker in rows}
    found: dict[str, list[int]] = count(field, list(source_of))
    return {source_of[m]: ids for m, ids in found.items() if len(ids) > 1}


def check(conn: psycopg.Connection[Any], run_id: str, target_name: str, target: Instance,
          field: str | None, log: Any) -> list[dict[str, Any]]:
    """Both counts, reported: the run's ``duplicates`` (``[{source_scan_id,
    target_scan_ids}]``, sorted; empty when clean), an ERROR line each, the counter. A
    target that cannot be asked now costs its half of the check a warning, not the
    run."""
    dups = in_ledger(conn, run_id)
    try:
        for scan, ids in on_target(conn, run_id, target, field).items():
            dups[scan] = sorted({*dups.get(scan, []), *ids})
    except ScanrelayError as exc:
        log.warning("the duplicate check could not count target scans on {}: {}",
                    target_name, exc)
    found: list[dict[str, Any]] = [{"source_scan_id": scan, "target_scan_ids": ids}
                                   for scan, ids in sorted(dups.items())]
    for dup in found:
        DUPLICATES.labels(target_name).inc()
        log.error("DUPLICATE: source scan {} has {} target scans in {}: {}",
                  dup["source_scan_id"], len(dup["target_scan_ids"]), target_name,
                  dup["target_scan_ids"])
    if found:
        log.error("the copy left {} source scan(s) with more than one target scan in {}",
                  len(found), target_name)
    return found
