"""``analyze`` against two reference servers (real HTTP, real PostgreSQL): the comments
equal the target server's own ground truth for every pair, every §7 category occurs,
and the analysis reads in read-only transactions."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pg
import psycopg
import pytest
import yaml
from analysis_support import (
    config_with,
    copy_scans,
    env_for,
    platform_cfg,
    run_context,
)
from workbook_checks import assert_workbook_matches

from daemon.errors import FatalError
from daemon.instances.registry import Instances
from daemon.request import Request
from daemon.sandbox import Comment, Outcome, RefServer
from daemon.sandbox.model import AUTO_OUTCOMES
from handlers.analyze import analyze_pairs

COPY_RUN = "20260105-120000-copy-0a1b2c"
GONE_SOURCE, GONE_TARGET = 888_888, 999_999
FIELDS = {  # analysis.csv label → RefServer.scan_details() key
    "Store_POG_ID": "store_planogram_id", "POG_Name": "planogram_name",
    "Section_ID": "section_id", "Section_Name": "section_name",
    "Is_Additional_Section": "is_additional_section", "Pre_POG_%": "pre_pog",
    "Post_POG_%": "post_pog", "Pre_OSA_%": "pre_osa", "Post_OSA_%": "post_osa",
    "OK_Count": "ok_count", "Wandering_Count": "wandering_count",
    "OOS_Count": "oos_count", "Hole_Count": "hole_count",
}


@pytest.fixture
def servers(platform_db: str, tmp_path: Path) -> Iterator[tuple[RefServer, RefServer]]:
    target_dsn = pg.create_database("analyze_target")
    try:
        with RefServer(platform_db, tmp_path / "src-platform") as source, \
                RefServer(target_dsn, tmp_path / "tgt-platform") as target:
            yield source, target
    finally:
        pg.drop_database(target_dsn)


def _force_every_outcome(source_truths: dict, target: RefServer) -> None:
    """One source scan per auto outcome, chosen where the outcome is feasible, so every
    category occurs whatever the weights draw."""
    free = list(source_truths)
    for outcome in AUTO_OUTCOMES:
        scan_id = next(s for s in free if outcome != Outcome.ADDITIONAL_SECTION
                       or not source_truths[s].values.is_additional)
        free.remove(scan_id)
        target.processing.force(scan_id, outcome)


def _expected(target: RefServer, target_id: int | None) -> str:
    """§7 from the target server's own records: no scan or no report yet → missing;
    otherwise the comment its recognition says an analysis must print."""
    if target_id is None or target_id == GONE_TARGET:
        return Comment.MISSING.value
    rec = target.recognition(target_id)
    if not rec.processed:
        return Comment.MISSING.value
    assert rec.expected_comment is not None
    return rec.expected_comment.value


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    return str(float(value)) if isinstance(value, float) else str(value)


@pytest.mark.slow
def test_comments_equal_the_target_servers_ground_truth(
        servers: tuple[RefServer, RefServer], tmp_path: Path) -> None:
    source, target = servers
    seeded = source.seed(scans=44, files_per_scan=1, file_size=2_500, seed=21)
    store = target.seed(scans=0, stores=2).store_ids[0]
    _force_every_outcome({s: seeded.truths[s] for s in seeded.scan_ids[:20]}, target)
    files = {s: [f.file_id for f in seeded.files[s]] for s in seeded.scan_ids}
    copied, late, uncopied, lost = (seeded.scan_ids[:40], seeded.scan_ids[40],
                                    seeded.scan_ids[41], seeded.scan_ids[42])
    mapping = copy_scans(source, target, copied, files, store)
    target.wait_processed()
    target.processing_delay = 3600  # this one stays unprocessed: no report yet
    mapping |= copy_scans(source, target, [late], files, store)
    mapping |= {uncopied: None, lost: GONE_TARGET, GONE_SOURCE: mapping[copied[0]]}

    root = tmp_path / "root"
    (root / "runs" / COPY_RUN).mkdir(parents=True)
    with (root / "runs" / COPY_RUN / "scan_mapping.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Source_Scan_ID", "Target_Scan_ID", "status", "error"])
        for s, t in mapping.items():
            out.writerow([s, "" if t is None else t, "failed" if t is None else "ok",
                          "upload failed" if t is None else ""])
    config = {"paths": {"root": "."}, "defaults": {"batch_size": 50},
              "instances": {"src": platform_cfg(source), "tgt": platform_cfg(target)},
              "log": {"level": "INFO"}}
    (root / "config.yml").write_text(yaml.safe_dump(config))
    request = tmp_path / "analyze.json"
    request.write_text(json.dumps({"action": "analyze", "source": "src", "target": "tgt",
                                   "from_run": COPY_RUN, "label": "ground truth"}))
    env = {**os.environ, **env_for(source)}
    once = subprocess.run([sys.executable, "-m", "daemon", "once", str(request), "-c",
                           str(root / "config.yml")], cwd=root, env=env, text=True,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    # Partial: the pair whose source scan does not exist failed; the rest is findings.
    assert once.returncode == 1, once.stdout + once.stderr
    result = json.loads((root / "failed" / "analyze.json.result.json").read_text())
    assert result["status"] == "partial"
    assert [f["scan_id"] for f in result["failed"]] == [GONE_SOURCE]
    assert not result["failed"][0]["transient"]
    run_dir = root / result["run_dir"]

    with (run_dir / "analysis.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["Source_Scan_ID"]) for r in rows] == [s for s in mapping if s != GONE_SOURCE]
    expected = {s: _expected(target, t) for s, t in mapping.items() if s != GONE_SOURCE}
    got = {int(r["Source_Scan_ID"]): r["comment"] for r in rows}
    assert got == expected
    assert set(expected.values()) == {c.value for c in Comment}, "every category occurs"
    assert got[late] == got[uncopied] == got[lost] == Comment.MISSING.value

    # The figures are the servers' own reading of their tables, field by field.
    for row in rows:
        sid, tid = int(row["Source_Scan_ID"]), mapping[int(row["Source_Scan_ID"])]
        for side, server, scan_id in (("Source", source, sid), ("Target", target, tid)):
            truth = server.scan_details(scan_id) if scan_id not in (None, GONE_TARGET) \
                else None
            for label, key in FIELDS.items():
                want = _cell(truth[key]) if truth else ""
                assert row[f"{side}_{label}"] == want, (side, scan_id, label)

    counts = Counter(r["comment"] for r in rows)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["analysis"]["status"] == "done"
    assert run["analysis"]["counts"] == {c.value: counts[c.value] for c in Comment}
    assert result["analysis"]["counts"] == run["analysis"]["counts"]
    assert_workbook_matches(run_dir)
    with (run_dir / "target_scandetails.csv").open(newline="") as f:
        details = {int(r["Scan_ID"]): r for r in csv.DictReader(f)}
    assert details[GONE_TARGET]["Found"] == "False"
    assert details[mapping[late]]["Has_Report"] == "False"

    show = subprocess.run([sys.executable, "-m", "daemon", "show", run_dir.name, "-c",
                           str(root / "config.yml")], cwd=root, env=env, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert show.returncode == 0, show.stderr
    for comment in Comment:
        assert f"{counts[comment.value]:>12}  {comment.value}" in show.stdout


WRITING_DETAILS_SQL = """
    WITH touched AS (
        UPDATE realograms_implementation_scan SET status = 'tampered'
        WHERE id = ANY(%(ids)s) RETURNING id
    )
    SELECT id AS scan_id FROM touched
"""


def test_the_analysis_reads_in_read_only_transactions(
        platform_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The details query of the analysis is replaced (per-instance ``sql``) by one that
    writes: it must fail inside the analysis, and the database must stay unchanged.
    The same statement in an ordinary transaction does write, so the refusal comes from
    the read-only transaction, not from the statement."""
    with RefServer(platform_db, tmp_path / "platform") as ref:
        ids = ref.seed(scans=3, files_per_scan=1, file_size=1_000).scan_ids
        for name, value in env_for(ref).items():
            monkeypatch.setenv(name, value)
        config = config_with(tmp_path, {
            "prod": platform_cfg(ref, sql={"scan_details": WRITING_DETAILS_SQL})})
        instances = Instances(config)
        request = Request(action="analyze", source="prod", target="prod",
                          pairs=[(i, i) for i in ids])
        ctx = run_context(tmp_path / "run", config, request, instances)
        prod = instances.get("prod")
        try:
            with pytest.raises(FatalError, match="read-only transaction"):
                analyze_pairs(ctx, prod, prod, [(i, i) for i in ids])
        finally:
            instances.close()
        assert {ref.scan(i)["status"] for i in ids} == {"done"}
        with psycopg.connect(ref.dsn) as conn:  # control: outside read-only it writes
            written = conn.execute(WRITING_DETAILS_SQL, {"ids": ids}).fetchall()
            conn.rollback()
        assert sorted(r[0] for r in written) == sorted(ids)
