"""The bad-input corpus, end to end: one real daemon (subprocess, real watchdog),
every case dropped into its inbox in one go, each asserted to end in ``done/`` or
``failed/`` with a message that names the field or row and says how to fix it.

A few cases need their own timing (ignored names, a file still being written) and
run after the batch, on the same daemon. The last test drops a good request and
checks the daemon still serves it; the module fixture then stops the daemon with
SIGTERM and asserts a clean exit within 10 s.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    DaemonProcess,
    drop,
    error_text,
    listing,
    make_root,
    retry_request,
    settled,
    wait_settled,
)
from openpyxl import Workbook

from daemon.config import load_config
from daemon.request import build_request

MAX_BYTES = 20_000  # limits.max_request_bytes of this module's daemon
MAX_SCANS = 40  # limits.max_scans
SETTLE_TIMEOUT = 45.0
SETTLE_SECONDS = 1.0  # intake.settle_seconds: the rescan takes a path unchanged this long


def j(obj: Any) -> str:
    return json.dumps(obj)


def xlsx(rows: list[list[Any]]) -> bytes:
    book = Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def xlsx_with_broken_sheet() -> bytes:
    """A real workbook whose sheet XML is cut off: opens as a zip, fails as XML."""
    good = zipfile.ZipFile(io.BytesIO(xlsx([["scan_id"], [1001]])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in good.infolist():
            data = good.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = b"<worksheet><sheetData><row><c"
            z.writestr(info, data)
    return out.getvalue()


DL = {"action": "download", "source": "demo-source"}
# A folder inside a profile folder, made before the corpus is dropped: a file created
# in a brand-new folder may come before watchdog watches that folder, and the rescan
# looks only at inbox/ and inbox/<profile>/ (the folder is then refused as a whole).
HOLDER = "holder"


@dataclass(frozen=True)
class Case:
    """One file of the corpus and where it must end."""

    name: str  # as dropped; unique in this module
    content: bytes | str | None  # None for kind != "file"
    folder: str  # "done" or "failed"
    expect: tuple[str, ...] = ()  # substrings of error.txt and of the problems
    status: str | None = None  # result.json status; default: done → done, else invalid
    where: str = ""  # inbox subfolder ("" = inbox root)
    kind: str = "file"  # file | symlink | dir | fifo
    scans: int | None = None  # done: how many scans the run covered
    ran: bool = False  # invalid but only found out by running (a run folder exists)

    @property
    def expected_status(self) -> str:
        return self.status or ("done" if self.folder == "done" else "invalid")


CASES: list[Case] = [
    # --- JSON form ------------------------------------------------------------------
    Case("malformed.json", '{\n  "action": "download",\n  "scan_ids": [1001, 1002,]\n}\n',
         "failed", ("invalid JSON at line 3, column 27", "Expecting value")),
    Case("array.json", "[1001, 1002]", "failed",
         ('must be an object with keys like "action"', "not a list")),
    Case("null.json", "null", "failed", ("must be an object",)),
    Case("junk.json", b"\x89\x00\x01\xffjunk\x00\x00\x13\x37" * 50, "failed",
         ("binary content (NUL bytes)", "save it as UTF-8 JSON or CSV")),
    Case("empty.json", b"", "failed", ("file: the file is empty", "list scan IDs")),
    # --- JSON content -----------------------------------------------------------------
    Case("ids_as_string.json", j({**DL, "scan_ids": "1001,1002"}), "failed",
         ("scan_ids: Input should be a valid list", "'1001,1002'")),
    Case("batch_size_string.json", j({**DL, "scan_ids": [1001], "batch_size": "10"}),
         "failed", ("batch_size: Input should be a valid integer", "without quotes")),
    Case("analyze_yes.json", j({**DL, "scan_ids": [1001], "analyze": "yes"}), "failed",
         ("analyze: Input should be a valid boolean", "use true or false")),
    Case("float_id.json", j({**DL, "scan_ids": [1001, 1002.5]}), "failed",
         ("scan_ids[1]:", "use a whole number")),
    Case("unknown_key.json", j({**DL, "scan_ids": [1001], "colour": "red"}), "failed",
         ("colour: Extra inputs are not permitted", "remove it (allowed keys:")),
    Case("unknown_instance.json", j({**DL, "source": "staging", "scan_ids": [1001]}),
         "failed", ("source: unknown instance 'staging'",
                    "configured: demo-source, demo-target")),
    Case("unknown_action.json", j({**DL, "action": "move", "scan_ids": [1001]}), "failed",
         ("action: Input should be 'copy', 'download' or 'analyze'", "'move'")),
    Case("unknown_profile.json", j({"profile": "nightly", "scan_ids": [1001]}), "failed",
         ("profile: unknown profile 'nightly'", "configured: demo-copy, demo-download")),
    Case("missing_source.json", j({"action": "download", "scan_ids": [1001]}), "failed",
         ("source: download needs a source instance",)),
    Case("copy_no_store.json", j({"action": "copy", "source": "demo-source",
                                  "target": "demo-target", "scan_ids": [1001]}),
         "failed", ("target_store_id: copy needs the store of the target",)),
    Case("ids_and_select.json", j({**DL, "scan_ids": [1001], "select": {"store_id": 101}}),
         "failed", ("scan_ids: give either scan_ids or select (exactly one)",)),
    Case("negative.json", j({**DL, "scan_ids": [1001, -5, 0]}), "failed",
         ("scan_ids[1]: -5 is not a valid ID", "scan_ids[2]: 0 is not a valid ID",
          "positive whole numbers")),
    Case("dup.json", j({**DL, "scan_ids": [1001, 1002, 1001]}), "failed",
         ("scan_ids[2]: scan ID 1001 repeats scan_ids[0]", "list each scan once")),
    Case("dates_swapped.json",
         j({**DL, "select": {"captured_from": "2025-08-31", "captured_to": "2025-08-01"}}),
         "failed", ("select.captured_from: is after captured_to; swap them",)),
    Case("bad_date.json", j({**DL, "select": {"captured_from": "2025-13-01"}}), "failed",
         ("select.captured_from:", "use YYYY-MM-DD, today, yesterday or -7d")),
    Case("select_nothing.json", j({**DL, "select": {"store_id": 999}}), "failed",
         ("select: no scans of demo-source match", "'store_id': 999", "widen the selection"),
         ran=True),
    # --- CSV ----------------------------------------------------------------------------
    Case("whitespace.csv", " \n\t\n  \r\n", "failed", ("file: the file is empty",)),
    Case("header_only.csv", "scan_id\n", "failed",
         ("only a header (row 1), no scan IDs", "add one scan ID per row")),
    Case("non_numeric.csv", "scan_id\n1001\nabc\n1002\n", "failed",
         ("row 3, column scan_id: 'abc' is not a scan ID", "use a positive whole number")),
    Case("negative.csv", "scan_id\n-5\n0\n", "failed",
         ("row 2, column scan_id: '-5' is not a scan ID",
          "row 3, column scan_id: '0' is not a scan ID", "positive whole number")),
    Case("dup.csv", "scan_id\n1001\n1002\n1001\n", "failed",
         ("row 4: scan ID 1001 repeats row 2", "list each scan once")),
    Case("latin1.csv", "scan_id;name\n1001;Café\n".encode("latin-1"), "failed",
         ("not UTF-8 text (byte 0xe9 on line 2)", "'CSV UTF-8'")),
    Case("too_many.csv", "scan_id\n" + "".join(f"{i}\n" for i in range(2001, 2042)),
         "failed", ("41 scans exceed limits.max_scans (40)", "split the request")),
    Case("huge.csv", "scan_id\n" + "1001\n" * (MAX_BYTES // 5), "failed",
         (f"over limits.max_request_bytes ({MAX_BYTES})", "split it into smaller requests")),
    Case("bom.csv", "\ufeffscan_id\n1001\n1002\n", "done", scans=2),
    Case("semicolon.csv", "scan_id;note\n1003;first\n1004;second\n", "done", scans=2),
    Case("tab.csv", "note\tscan_id\nfirst\t1005\nsecond\t1006\n", "done", scans=2),
    Case("alias.csv", "Source_Scan_ID,Comment\n1007,x\n1008,y\n", "done", scans=2),
    Case("in_profile.csv", "scan_id\n1009\n", "done", where="demo-download", scans=1),
    Case("plus+sign+name.csv", "scan_id\n1003\n", "done", scans=1),
    Case("données du 1er mai.csv", "scan_id\n1004\n", "done", scans=1),
    # --- XLSX and other types ------------------------------------------------------------
    Case("no_scan_col.xlsx", xlsx([["store", "date"], [101, "2025-01-01"]]), "failed",
         ("row 1: no scan_id column in the header (found 'store', 'date')",
          "name the column scan_id")),
    Case("valid.xlsx", xlsx([["Scan ID"], [1010], [1011.0], ["1012"]]), "done", scans=3),
    Case("corrupt.xlsx", b"PK\x03\x04" + os.urandom(3000), "failed",
         ("not a valid XLSX workbook", "save it from Excel as .xlsx")),
    Case("notes.txt", "scan_id\n1001\n", "failed",
         ("file: unsupported type '.txt'", "use .json, .csv or .xlsx")),
    Case("UPPER.JSON", j({**DL, "scan_ids": [1001]}), "done", scans=1),
    Case("bom.json", "\ufeff" + j({"scan_ids": [1002]}), "done", scans=1),
    Case("select_ok.json",
         j({**DL, "select": {"captured_from": "-7d", "captured_to": "today", "limit": 2}}),
         "done", scans=2),
    # --- scans that do not exist: the run happens, then failed/ with a retry ----------------
    Case("missing_ids.json", j({**DL, "scan_ids": [990001, 990002]}), "failed",
         ("scan 990001 not found in demo-source", "scan 990002 not found in demo-source",
          "retry.json"), status="failed"),
    Case("mixed.csv", "scan_id\n1001\n990003\n1002\n", "failed",
         ("scan 990003 not found in demo-source", "retry.json"), status="partial"),
    # --- what is not a request file at all ----------------------------------------------
    Case("link.json", None, "failed",
         ("a symbolic link is not accepted", "copy the file itself"), kind="symlink"),
    Case("pipe.json", None, "failed", ("not a regular file",), kind="fifo"),
    Case("subdir", None, "failed", ("not a regular file",), where="demo-download",
         kind="dir"),
    Case("deep.json", j({**DL, "scan_ids": [1001]}), "failed",
         ("not deeper; move it up",), where=f"demo-download/{HOLDER}"),
    Case("in_unknown_profile.json", j({**DL, "scan_ids": [1001]}), "failed",
         ("inbox/nope/ is not a configured profile", "use one of those folders"),
         where="nope"),
    # --- inputs that once crashed a reader: they must end in failed/ with a message ---
    Case("nested.json", "[" * 5000, "failed", ("file:",)),
    Case("superscript.csv", "scan_id\n1001\n\u00b2\n", "failed", ("row 3",)),
    Case("long_number.csv", "scan_id\n" + "9" * 5000 + "\n", "failed", ("row 2",)),
    Case("broken_sheet.xlsx", xlsx_with_broken_sheet(), "failed",
         ("not a valid XLSX workbook",)),
]

# SPEC §3: never requests; they stay in the inbox untouched.
IGNORED = [".x.json", "~$x.xlsx", "x.tmp", "x.part", "x.swp", "x.crdownload",
           ".hidden.csv", "partial.csv.part", "UPPER.TMP"]


def _place(inbox: Path, case: Case, outside: Path) -> None:
    folder = inbox / case.where if case.where else inbox
    folder.mkdir(parents=True, exist_ok=True)
    if case.kind == "file":
        assert case.content is not None
        drop(folder, case.name, case.content)
    elif case.kind == "symlink":
        target = outside / "link-target.json"
        target.write_text(j({**DL, "scan_ids": [1001]}), encoding="utf-8")
        os.symlink(target, folder / case.name)
    elif case.kind == "fifo":
        os.mkfifo(folder / case.name)
    elif case.kind == "dir":
        (folder / case.name).mkdir(exist_ok=True)
    else:
        raise ValueError(case.kind)


@dataclass
class Corpus:
    root: Path
    daemon: DaemonProcess
    results: dict[str, tuple[str, dict[str, Any]]]
    ignored: dict[str, tuple[bytes, int]]  # name → (content, mtime_ns) as dropped
    outside: Path
    dropped_at: float  # time.monotonic() when the corpus was dropped
    seconds: float  # until every case (but the known-broken ones) had settled


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    tmp = tmp_path_factory.mktemp("corpus")
    root = make_root(tmp, limits={"max_request_bytes": MAX_BYTES, "max_scans": MAX_SCANS},
                     intake={"settle_seconds": SETTLE_SECONDS})
    outside = tmp / "outside"
    outside.mkdir()
    with DaemonProcess(root) as daemon:
        inbox = root / "inbox"
        ignored = {}
        for name in IGNORED:
            path = inbox / name
            path.write_bytes(b"scan_id\n1001\n")
            ignored[name] = (path.read_bytes(), path.stat().st_mtime_ns)
        started = time.monotonic()
        # deep.json first: its folder must not stay unchanged for settle_seconds before
        # it arrives (or the folder is refused as a whole, with deep.json inside).
        (inbox / "demo-download" / HOLDER).mkdir()
        time.sleep(0.2)  # let the observer add its watch on the new folder
        cases = sorted(CASES, key=lambda c: HOLDER not in c.where)
        for case in cases:
            _place(inbox, case, outside)
        results = wait_settled(root, [c.name for c in CASES], SETTLE_TIMEOUT)
        seconds = time.monotonic() - started
        yield Corpus(root, daemon, results, ignored, outside, started, seconds)
        assert daemon.stop() == 0, daemon.log_text()[-3000:]


def _scan_of(image: Path) -> int:
    """The scan ID an image name starts with (``1001_Section_5000.png``, ``1012.png``)."""
    match = re.match(r"[0-9]+", image.name)
    assert match, image.name
    return int(match.group())


def _messages(result: dict[str, Any]) -> str:
    return "\n".join([*result.get("problems", []),
                      *(f"scan {f['scan_id']}: {f['error']}" for f in result.get("failed", []))])


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_corpus_case(corpus: Corpus, case: Case) -> None:
    assert case.name in corpus.results, (
        f"{case.name} did not settle; processing/: {listing(corpus.root / 'processing')}")
    folder, result = corpus.results[case.name]
    assert folder == case.folder, result
    assert result["status"] == case.expected_status, result
    assert result["request"] == case.name
    if case.where == "demo-download" and case.kind == "file":
        assert result["profile"] == "demo-download"
    text = error_text(corpus.root, folder, case.name)
    if folder == "done":
        assert text == ""
        assert result["counts"]["scans"] == case.scans, result
        assert result["counts"]["failed"] == 0
        run_dir = corpus.root / result["run_dir"]
        imaged = {_scan_of(p) for p in (run_dir / "images").iterdir()}
        assert len(imaged) == case.scans
        asked = json.loads((run_dir / "request.json").read_text())["scan_ids"]
        assert not asked or imaged == set(asked)
        return
    messages = _messages(result)
    assert case.expect, "a failing case must say which message it expects"
    for expected in case.expect:
        if expected == "retry.json":
            assert f"drop {case.name}.retry.json into the inbox" in text
            continue
        assert expected in text, f"{expected!r} not in error.txt:\n{text}"
        assert expected in messages, f"{expected!r} not in result.json:\n{messages}"
    if case.expected_status == "invalid":
        assert "The request was not run. Fix the following" in text
        if not case.ran:
            assert result["run_id"] is None  # nothing is half-run
            assert not list((corpus.root / "runs").glob(f"*-{result['claim_id'][-6:]}"))


@pytest.mark.slow
def test_missing_ids_retry_lists_exactly_the_missing(corpus: Corpus) -> None:
    folder, result = corpus.results["missing_ids.json"]
    assert (folder, result["status"]) == ("failed", "failed")
    assert [f["scan_id"] for f in result["failed"]] == [990001, 990002]
    retry = retry_request(corpus.root, "missing_ids.json")
    assert retry is not None
    assert retry["scan_ids"] == [990001, 990002]
    assert retry["retry_of"] == result["run_id"]
    assert retry["attempt"] == 2
    # The run did happen: its manifest names both missing scans.
    manifest = (corpus.root / result["run_dir"] / "manifest.csv").read_text()
    assert "990001" in manifest and "990002" in manifest


@pytest.mark.slow
def test_mixed_ids_partial_retry_holds_only_the_missing(corpus: Corpus) -> None:
    folder, result = corpus.results["mixed.csv"]
    assert (folder, result["status"]) == ("failed", "partial")
    assert result["counts"]["scans"] == 3 and result["counts"]["failed"] == 1
    assert [f["scan_id"] for f in result["failed"]] == [990003]
    retry = retry_request(corpus.root, "mixed.csv")
    assert retry is not None and retry["scan_ids"] == [990003]
    assert retry["action"] == "download" and retry["source"] == "demo-source"
    # The retry is itself a valid request (it can be dropped back into the inbox).
    request = build_request(retry, load_config(corpus.root / "config.yml"))
    assert request.scan_ids == [990003] and request.attempt == 2
    images = corpus.root / result["run_dir"] / "images"
    assert {_scan_of(p) for p in images.iterdir()} == {1001, 1002}


@pytest.mark.slow
def test_refused_files_are_moved_not_followed(corpus: Corpus) -> None:
    failed = corpus.root / "failed"
    assert (failed / "link.json").is_symlink()  # the link itself, not its target
    target = corpus.outside / "link-target.json"
    assert target.exists() and json.loads(target.read_text())["scan_ids"] == [1001]
    assert (failed / "subdir").is_dir() and not (failed / "subdir").is_symlink()
    assert (failed / "deep.json").is_file()
    assert not (corpus.root / "inbox" / "demo-download" / "subdir").exists()
    # The folder that held deep.json is refused as well, once deep.json left it.
    holder = wait_settled(corpus.root, [HOLDER], 10)[HOLDER]
    assert holder[0] == "failed" and "not a regular file" in holder[1]["problems"][0]
    assert list((failed / HOLDER).iterdir()) == []
    assert (corpus.root / "inbox" / "nope").is_dir()  # an unknown folder itself stays


@pytest.mark.slow
def test_ignored_names_stay_untouched(corpus: Corpus) -> None:
    # Long enough for several rescans and the settle time after every drop.
    time.sleep(max(0.0, corpus.dropped_at + SETTLE_SECONDS + 1.0 - time.monotonic()))
    inbox = corpus.root / "inbox"
    for name, (content, mtime_ns) in corpus.ignored.items():
        path = inbox / name
        assert path.exists(), f"{name} was taken from the inbox"
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime_ns
        for folder in ("done", "failed", "processing"):
            assert not [p for p in (corpus.root / folder).iterdir() if name in p.name], (
                f"{name} appeared in {folder}/")


@pytest.mark.slow
def test_corpus_settles_quickly(corpus: Corpus) -> None:
    # Every file needed at most an event or a rescan plus the settle time.
    assert corpus.seconds < 30, f"the corpus took {corpus.seconds:.1f} s"


def _write_slowly(path: Path, lines: list[str], pause: float,
                  check: Callable[[], None]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("scan_id\n")
        f.flush()
        for line in lines:
            time.sleep(pause)
            check()
            f.write(line)
            f.flush()
        check()


@pytest.mark.slow
def test_file_being_written_is_taken_only_after_close(corpus: Corpus) -> None:
    path = corpus.root / "inbox" / "slow.csv"
    ids = list(range(1001, 1013))

    def still_in_inbox() -> None:
        assert path.exists(), "taken while still open for writing"
        assert settled(corpus.root, "slow.csv") is None

    # 12 writes 0.3 s apart: 3.6 s open, longer than settle_seconds in total.
    _write_slowly(path, [f"{i}\n" for i in ids], 0.3, still_in_inbox)
    folder, result = wait_settled(corpus.root, ["slow.csv"], 15)["slow.csv"]
    assert (folder, result["status"]) == ("done", "done"), result
    assert result["counts"]["scans"] == len(ids)  # all of it, not what was there at first


@pytest.mark.slow
def test_writer_pausing_with_file_open_is_not_taken(corpus: Corpus) -> None:
    path = corpus.root / "inbox" / "paused.csv"
    try:
        with path.open("w", encoding="utf-8") as f:
            f.write("scan_id\n1001\n")
            f.flush()
            time.sleep(SETTLE_SECONDS + 1.0)  # e.g. a script querying for the next IDs
            assert path.exists(), "taken while still open for writing"
            f.write("1002\n")
    finally:
        wait_settled(corpus.root, ["paused.csv"], 15)


@pytest.mark.slow
def test_same_name_again_gets_a_suffix(corpus: Corpus) -> None:
    inbox, done = corpus.root / "inbox", corpus.root / "done"
    drop(inbox, "again.csv", "scan_id\n1001\n")
    first = wait_settled(corpus.root, ["again.csv"], 15)["again.csv"]
    drop(inbox, "again.csv", "scan_id\n1002\n")
    second = wait_settled(corpus.root, ["again-2.csv"], 15)["again-2.csv"]
    assert first[0] == second[0] == "done"
    assert (done / "again.csv").read_text() == "scan_id\n1001\n"  # not overwritten
    assert (done / "again-2.csv").read_text() == "scan_id\n1002\n"
    assert first[1]["run_id"] != second[1]["run_id"]
    assert second[1]["request"] == "again.csv"  # the name as dropped


@pytest.mark.slow
def test_daemon_survives_and_serves_a_good_request_last(corpus: Corpus) -> None:
    assert corpus.daemon.alive(), corpus.daemon.log_text()[-3000:]
    drop(corpus.root / "inbox", "last-good.csv", "scan_id\n1001\n1002\n1003\n")
    folder, result = wait_settled(corpus.root, ["last-good.csv"], 15)["last-good.csv"]
    assert (folder, result["status"]) == ("done", "done")
    assert result["counts"]["scans"] == 3
    assert corpus.daemon.alive()
    log = corpus.daemon.log_text()
    crashed = [line for line in log.splitlines() if "runner crashed on" in line]
    assert crashed == []


def test_vanished_deep_path_does_not_stop_intake(tmp_path: Path) -> None:
    from daemon.service import Service

    root = make_root(tmp_path, demo=False)
    service = Service(load_config(root / "config.yml"))
    try:
        gone = service.layout.inbox / "demo-download" / "sub" / "gone.json"
        service._intake(gone)  # queued by an event, deleted by its owner before intake
        assert listing(service.layout.failed) == []
    finally:
        service.ledger.close()
