"""A reference platform server for tests and benchmarks: SPEC §8 over real HTTP on
loopback, backed by a real PostgreSQL database, with fault injection.

Usage (from a test, with the ``platform_db`` fixture and pytest's ``tmp_path``)::

    from daemon.sandbox import Fault, Outcome, RefServer

    with RefServer(platform_db, tmp_path / "platform") as srv:
        seeded = srv.seed(scans=5, files_per_scan=2, sections=(1, 2, 3))
        srv.api_url                    # "http://127.0.0.1:<port>", no trailing slash
        srv.username, srv.password     # credentials of the API user
        srv.dsn                        # the database (libpq DSN) the instance reads
        seeded.scan_ids, seeded.files[scan_id], seeded.sha256(file_id)
        scan_id, file_ids = srv.insert_scan(1, captured_at, "done",
            files=[("a.png", data)], details={...}, provided_values={...})
            # or reports=[{...}, {...}]: several sections of one realogram
        srv.faults.set(rate=0.2, kinds={Fault.HTTP_503, Fault.RESET}, seed=7)
        srv.faults.next(Fault.HTTP_429, endpoint="create")
        srv.faults.fail_file(file_id, 404)
        srv.keep_unknown_keys = False  # creates store only known payload keys (no marker)
        ... run the client ...
        srv.wait_processed()
        srv.processing.force_extra_section(source_scan_id)  # a section only in the target
        srv.recognition(target_scan_id).expected_comment   # ground truth for §7
        srv.recognition(target_scan_id).expected_rows      # ... one row per section
        srv.scan_reports(scan_id)      # every report as the server reads its tables
        srv.stats.count("create", 201), srv.received_creates, srv.blob_requests

From a ``bench/`` script, put the repository and its ``tests`` folder on ``sys.path`` first
(for ``pg``); ``pg.create_database()`` gives a DSN.

Two listeners: the API (``api_url``) and a file-bytes host (``blob_url``, another
port, so another origin) that serves ``/blob/<id>?expires=..&sig=..`` pre-signed URLs,
records every request's headers and by default rejects (400) a request that carries
an ``Authorization`` header, as S3 does for pre-signed URLs.

Conventions of the data (see ``schema.sql``): the create payload is stored as
``provided_values->'_raw_data'``, its ``captured_at`` included; percentages are 0..100;
``storeplanogramcompliance`` has one row per (store planogram, capture date); a
realogram has one compliance report (and bay) per section; processing appends a
``majorityv2log`` row per store planogram that lists most scans it mapped (not all).

Ground truth: every seeded file starts with a JPEG comment segment carrying its scan's
``ScanTruth`` (its sections: planogram, section, figures). A server receiving those
bytes (the target of a copy) recognises the scan from them: see ``processing`` for the
outcomes (of the first section; the others are kept), ``Recognition.expected_comment``
for the §7 comment of the first section, ``Recognition.expected_rows`` for every row
an analysis must print (``model.match_reports`` is the §7 matching, written plainly), and
``RefServer.scan_details()`` for the figures as the server itself reads them.

Modules: ``server`` (RefServer), ``handlers`` (HTTP), ``api`` (endpoints), ``faults``
(faults, capacity, counters), ``processing`` (simulated processing), ``seed`` and
``catalogue`` (data), ``exact`` (scans exactly as given), ``blobs`` (file bytes),
``multipart`` (streaming bodies), ``db`` (SQL), ``model`` (shared values).
``scanrelay sandbox`` runs two servers: ``app`` (Sandbox: databases, seeding, restart),
``serve`` (the foreground command), ``snippet`` (the instances block), ``pgembed`` (a
PostgreSQL: a DSN, or the embedded server; ``tests/pg.py`` uses it too).
"""

from .faults import TRANSIENT_FAULTS, Endpoint, Fault, Faults, Gate, Stats
from .model import (
    AppliedReport,
    Comment,
    ExpectedRow,
    Outcome,
    ReceivedCreate,
    Recognition,
    RecordedRequest,
    ReportValues,
    ScanTruth,
    SeededFile,
    SeedResult,
    comment_for,
    expected_rows,
    match_reports,
)
from .processing import DEFAULT_WEIGHTS, RecognitionPolicy
from .server import RefServer

__all__ = [
    "DEFAULT_WEIGHTS",
    "TRANSIENT_FAULTS",
    "AppliedReport",
    "Comment",
    "Endpoint",
    "ExpectedRow",
    "Fault",
    "Faults",
    "Gate",
    "Outcome",
    "ReceivedCreate",
    "Recognition",
    "RecognitionPolicy",
    "RecordedRequest",
    "RefServer",
    "ReportValues",
    "ScanTruth",
    "SeedResult",
    "SeededFile",
    "Stats",
    "comment_for",
    "expected_rows",
    "match_reports",
]
