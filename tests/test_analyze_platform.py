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
from daemon.sandbox.model import AUTO_OUTCOMES, expected_rows
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


Row = tuple[object, object, str]  # source section, target section, comment


def _expected(source: RefServer, truths: dict, target: RefServer, source_id: int,
              target_id: int | None) -> list[Row]:
    """§7 from the servers' own records, one row per section: no target scan or no
    report yet → every source section missing; otherwise the rows the target's
    recognition says an analysis must print."""
    rows = expected_rows(truths[source_id].sections, None)
    if target_id is not None and target_id != GONE_TARGET:
        rec = target.recognition(target_id)
        rows = rec.expected_rows or rows
    return [(r.source.section_name if r.source else "", r.target.section_name if r.target
             else "", r.comment.value) for r in rows]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    return str(float(value)) if isinstance(value, float) else str(value)


def _newest_map_by(target: RefServer) -> dict[tuple[int, int], str]:
    """(store planogram, scan) → map_by of the newest majority-v2 row, read directly."""
    with psycopg.connect(target.dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (store_planogram_id) store_planogram_id, data"
            " FROM planograms_compliance_majorityv2log"
            " ORDER BY store_planogram_id, scan_created_date DESC, id DESC").fetchall()
    return {(int(spid), int(scan)): entry["map_by"] for spid, data in rows
            for scan, entry in data.items()}


@pytest.mark.slow
def test_comments_equal_the_target_servers_ground_truth(
        servers: tuple[RefServer, RefServer], tmp_path: Path) -> None:
    source, target = servers
    seeded = source.seed(scans=45, files_per_scan=1, file_size=2_500, seed=21,
                         sections=(1, 2, 3))
    store = target.seed(scans=0, stores=2).store_ids[0]
    _force_every_outcome({s: seeded.truths[s] for s in seeded.scan_ids[:20]}, target)
    for scan_id in seeded.scan_ids[20:26]:  # scans of 1, 2 and 3 sections, twice
        target.processing.force_extra_section(scan_id)
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
    pairs = [s for s in mapping if s != GONE_SOURCE]
    assert list(dict.fromkeys(int(r["Source_Scan_ID"]) for r in rows)) == pairs
    got: dict[int, list[Row]] = {}
    for r in rows:
        got.setdefault(int(r["Source_Scan_ID"]), []).append(
            (r["Source_Section_Name"], r["Target_Section_Name"], r["comment"]))
    expected = {s: _expected(source, seeded.truths, target, s, mapping[s]) for s in pairs}
    assert got == expected
    comments = [c for pair_rows in expected.values() for _, _, c in pair_rows]
    assert set(comments) == {c.value for c in Comment}, "every category occurs"
    section_counts = {len(seeded.truths[s].sections) for s in copied}
    assert section_counts == {1, 2, 3}, "scans of 1, 2 and 3 sections"
    target_only = [r for r in rows if r["Source_Section_Name"] == "" and r["Target_Report_ID"]]
    assert {len(seeded.truths[int(r["Source_Scan_ID"])].sections) for r in target_only} \
        == {1, 2, 3}, "a section only in the target, next to 1, 2 and 3 source sections"
    for missing in (late, uncopied, lost):
        assert len(got[missing]) == len(seeded.truths[missing].sections)
        assert {c for _, _, c in got[missing]} == {Comment.MISSING.value}

    # The figures are the servers' own reading of their tables, report by report.
    reports = {side: {int(d["report_id"]): d for scan in scans
                      for d in server.scan_reports(scan)}
               for side, server, scans in (
                   ("Source", source, pairs),
                   ("Target", target, [t for t in mapping.values()
                                       if t not in (None, GONE_TARGET)]))}
    for row in rows:
        for side in ("Source", "Target"):
            truth = reports[side].get(int(row[f"{side}_Report_ID"])) \
                if row[f"{side}_Report_ID"] else None
            for label, key in FIELDS.items():
                want = _cell(truth[key]) if truth else ""
                assert row[f"{side}_{label}"] == want, (side, row[f"{side}_Report_ID"], label)

    # MAv2_Map_by: the newest majority-v2 row of the target report's store planogram.
    newest = _newest_map_by(target)
    mapped = 0
    for row in rows:
        if not row["Target_Report_ID"]:
            assert row["MAv2_Map_by"] == ""
            continue
        key = (int(row["Target_Store_POG_ID"]), int(row["Target_Scan_ID"]))
        assert row["MAv2_Map_by"] == newest.get(key, ""), key
        mapped += int(key in newest)
    assert 0 < mapped < len([r for r in rows if r["Target_Report_ID"]]), \
        "some targets listed in the newest log row, some not"

    counts = Counter(r["comment"] for r in rows)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["analysis"]["status"] == "done"
    assert run["analysis"]["counts"] == {c.value: counts[c.value] for c in Comment}
    assert run["analysis"]["rows"] == len(rows) and run["analysis"]["pairs"] == len(pairs)
    assert result["analysis"]["counts"] == run["analysis"]["counts"]
    assert_workbook_matches(run_dir)
    with (run_dir / "target_scandetails.csv").open(newline="") as f:
        details = list(csv.DictReader(f))
    by_scan = {int(r["Scan_ID"]): r for r in details}
    assert by_scan[GONE_TARGET]["Found"] == "False"
    assert by_scan[mapping[late]]["Has_Report"] == "False"
    per_scan = Counter(int(r["Scan_ID"]) for r in details)
    for scan_id, count in per_scan.items():  # a row per report; one without any
        assert count == max(1, sum(d["scan_id"] == scan_id for d in reports["Target"].values()))
    for r in details:
        if r["Report_ID"]:
            scan_reports = [d for d in reports["Target"].values()
                            if d["scan_id"] == int(r["Scan_ID"])]
            assert int(r["planogram_all_count"]) == len(scan_reports)
            assert r["Store_Name"] and r["Category_Name"]
            key = (int(r["Store_POG_ID"]), int(r["Scan_ID"]))
            assert r["map_by_value"] == newest.get(key, "")
            assert r["majority_v2_id"]

    show = subprocess.run([sys.executable, "-m", "daemon", "show", run_dir.name, "-c",
                           str(root / "config.yml")], cwd=root, env=env, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert show.returncode == 0, show.stderr
    rows_part, scans_part = show.stdout.split("scans: by the worst comment of their rows")
    order = [c.value for c in Comment]
    worst = {s: min((c for _, _, c in pair_rows), key=order.index)
             for s, pair_rows in got.items()}
    scans = Counter(worst.values())
    assert run["analysis"]["scan_counts"] == {c: scans[c] for c in order}
    for comment in order:
        assert f"{counts[comment]:>12}  {comment}" in rows_part
        assert f"{scans[comment]:>12}  {comment}" in scans_part


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


def test_compliance_is_the_reports_own_day_unless_a_fallback_is_configured(
        platform_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report whose day has no store-planogram compliance row: empty figures by
    default; with ``analysis.compliance_fallback`` the latest earlier day's, marked."""
    from datetime import UTC, datetime

    from daemon.config import parse_config

    with RefServer(platform_db, tmp_path / "platform") as ref:
        figures = {"store_planogram_id": 501, "planogram_name": "Beverages",
                   "section_id": 31, "section_name": "Cola", "pre_pog": 81.5,
                   "post_pog": 90.0, "pre_osa": 88.0, "post_osa": 97.0}
        own, _ = ref.insert_scan(1, datetime(2024, 3, 1, 9, tzinfo=UTC), details=figures)
        later, _ = ref.insert_scan(1, datetime(2024, 3, 5, 9, tzinfo=UTC), details=figures)
        with psycopg.connect(ref.dsn) as conn:  # the later day's row is gone
            conn.execute("DELETE FROM planograms_compliance_storeplanogramcompliance"
                         " WHERE date = '2024-03-05'")
        for name, value in env_for(ref).items():
            monkeypatch.setenv(name, value)
        seen = {}
        for fallback in (False, True):
            text = yaml.safe_dump({"paths": {"root": "."},
                                   "instances": {"prod": platform_cfg(ref)},
                                   "analysis": {"compliance_fallback": fallback}})
            instances = Instances(parse_config(text, base_dir=tmp_path))
            try:
                scans = instances.get("prod").get_scans([own, later])
            finally:
                instances.close()
            seen[fallback] = {s.id: s.reports[0] for s in scans}
    for fallback in (False, True):  # the own day's figures either way, not marked
        report = seen[fallback][own]
        assert (report.pre_pog, report.compliance_date, report.compliance_fallback) == \
            (81.5, "2024-03-01", False)
    plain, marked = seen[False][later], seen[True][later]
    assert (plain.pre_pog, plain.post_osa, plain.compliance_date, plain.compliance_fallback) \
        == (None, None, None, False)
    assert (marked.pre_pog, marked.post_osa, marked.compliance_date,
            marked.compliance_fallback) == (81.5, 97.0, "2024-03-01", True)
