"""Unit tests of ``daemon.readers`` (file form → raw mapping) and ``daemon.request``
(raw mapping + profile → validated ``Request``). No daemon, no demo data: fast."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import config_dict
from openpyxl import Workbook

from daemon.config import Config, parse_config
from daemon.errors import RequestError
from daemon.readers import read_csv, read_json, read_request_file, read_xlsx
from daemon.request import Request, build_request, parse_request, resolve_date

TODAY = date(2025, 3, 10)  # a fixed "today" for relative dates
DL = {"action": "download", "source": "demo-source"}


def config(**overrides: Any) -> Config:
    return parse_config(yaml.safe_dump(config_dict(**overrides)))


@pytest.fixture
def cfg() -> Config:
    return config(profiles={"big-batches": {"action": "download", "source": "demo-target",
                                            "batch_size": 50, "label": "from profile"}})


def problems(exc: pytest.ExceptionInfo[RequestError]) -> str:
    return "\n".join(exc.value.problems)


def xlsx(rows: list[list[Any]]) -> bytes:
    book = Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


# --- readers: JSON ----------------------------------------------------------------------


def test_json_object_is_read_as_is() -> None:
    raw = {"action": "copy", "scan_ids": [1, 2], "select": None, "label": "ünïcode"}
    assert read_json(json.dumps(raw, ensure_ascii=False)) == raw


def test_malformed_json_names_line_and_column() -> None:
    with pytest.raises(RequestError) as exc:
        read_json('{\n  "action": "download"\n  "scan_ids": [1]\n}')
    assert problems(exc).startswith("file: invalid JSON at line 3, column 3:")


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ("42", "int"),
                                            ('"x"', "str"), ("null", "NoneType")])
def test_json_that_is_not_an_object(text: str, kind: str) -> None:
    with pytest.raises(RequestError) as exc:
        read_json(text)
    assert "must be an object" in problems(exc) and f"not a {kind}" in problems(exc)


def test_json_file_with_bom_and_upper_case_suffix(tmp_path: Path) -> None:
    path = tmp_path / "r.JSON"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"scan_ids": [5]}).encode())
    assert read_request_file(path, 10_000) == {"scan_ids": [5]}


# --- readers: CSV -------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "scan_id\n1\n2\n3\n",
    "scan_id\r\n1\r\n2\r\n3\r\n",
    "scan_id;note\n1;a\n2;b\n3;c\n",
    "note\tscan_id\na\t1\nb\t2\nc\t3\n",
    "Source_Scan_ID,x\n1,a\n2,b\n3,c\n",
    "source_scan_id\n1\n2\n3\n",
    "ID\n1\n2\n3\n",
    "Scan ID\n1\n2\n3\n",
    "\n\nscan_id\n1\n\n2\n3\n\n",  # blank lines before the header and between rows
    "scan_id\n 1 \n2\n3\n",
    'scan_id,note\n1,"a, with comma"\n2,b\n3,"x\ny"\n',
], ids=["plain", "crlf", "semicolon", "tab", "alias", "alias-lower", "id",
        "spaced-header", "blank-lines", "padded", "quoted"])
def test_csv_forms(text: str) -> None:
    assert read_csv(text) == {"scan_ids": [1, 2, 3]}


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_file_with_bom(tmp_path: Path, delimiter: str) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(f"Scan_ID{delimiter}Note\r\n1{delimiter}a\r\n2{delimiter}b\r\n"
                     .encode("utf-8-sig"))
    assert read_request_file(path, 10_000) == {"scan_ids": [1, 2]}


def test_csv_scan_column_wins_over_id_and_target_column_is_read() -> None:
    raw = read_csv("id,Target_Scan_ID,Source_Scan_ID\n9,11,1\n8,12,2\n")
    assert raw == {"scan_ids": [1, 2], "target_scan_ids": [11, 12]}


def test_blank_target_cells_are_pairs_without_a_target() -> None:
    raw = read_csv("scan_id,target_scan_id\n1,11\n2,\n3, \n4\n")
    assert raw == {"scan_ids": [1, 2, 3, 4], "target_scan_ids": [11, None, None, None]}
    data = xlsx([["Scan_ID", "Target_Scan_ID"], [1, None], [2, 12.0]])
    assert read_xlsx(data) == {"scan_ids": [1, 2], "target_scan_ids": [None, 12]}


def test_csv_rows_are_numbered_as_the_user_sees_them() -> None:
    with pytest.raises(RequestError) as exc:
        read_csv("\nscan_id\n1\n\nabc\n7\n1\n")
    text = problems(exc)
    assert "row 5, column scan_id: 'abc' is not a scan ID; use a positive whole number" in text
    assert "row 7: scan ID 1 repeats row 3; list each scan once" in text


@pytest.mark.parametrize(("cell", "shown"), [("-5", "'-5'"), ("0", "'0'"), ("1.5", "'1.5'"),
                                             ("1e3", "'1e3'"), ("", "an empty cell"),
                                             ("+7", "'+7'")])
def test_csv_bad_ids(cell: str, shown: str) -> None:
    with pytest.raises(RequestError) as exc:
        read_csv(f"scan_id,note\n1,a\n{cell},b\n")
    assert f"row 3, column scan_id: {shown} is not a scan ID" in problems(exc)


def test_csv_bad_target_id_names_its_column() -> None:
    with pytest.raises(RequestError) as exc:
        read_csv("scan_id,target_scan_id\n1,x\n")
    assert "row 2, column target_scan_id: 'x' is not a scan ID" in problems(exc)


def test_csv_many_bad_rows_are_capped_with_a_count() -> None:
    with pytest.raises(RequestError) as exc:
        read_csv("scan_id\n" + "x\n" * 25)
    assert len(exc.value.problems) == 21
    assert exc.value.problems[-1] == "... and 5 more rows like these"


@pytest.mark.parametrize(("text", "expected"), [
    ("", "file: no rows; add a header row with a scan_id column"),
    ("scan_id\n", "file: only a header (row 1), no scan IDs; add one scan ID per row"),
    ("store,date\n1,2\n", "row 1: no scan_id column in the header (found 'store', 'date'); "
                          "name the column scan_id"),
])
def test_csv_without_ids(text: str, expected: str) -> None:
    with pytest.raises(RequestError) as exc:
        read_csv(text)
    assert expected in problems(exc)


# --- readers: XLSX ------------------------------------------------------------------------


def test_xlsx_ints_floats_and_strings() -> None:
    data = xlsx([[None], ["Scan_ID", "Target_Scan_ID"], [1, 10.0], [2.0, "11"], [" 3 ", 12],
                 [None, None]])
    assert read_xlsx(data) == {"scan_ids": [1, 2, 3], "target_scan_ids": [10, 11, 12]}


def test_xlsx_errors_name_rows() -> None:
    with pytest.raises(RequestError) as exc:
        read_xlsx(xlsx([["scan_id"], [1], [2.5], ["abc"], [1]]))
    text = problems(exc)
    assert "row 3, column scan_id: '2.5' is not a scan ID" in text
    assert "row 4, column scan_id: 'abc' is not a scan ID" in text
    assert "row 5: scan ID 1 repeats row 2" in text


def test_xlsx_without_scan_column() -> None:
    with pytest.raises(RequestError) as exc:
        read_xlsx(xlsx([["store", "when"], [1, "x"]]))
    assert "row 1: no scan_id column in the header (found 'store', 'when')" in problems(exc)


@pytest.mark.parametrize("data", [b"not a zip", b"PK\x03\x04" + b"\x00" * 100],
                         ids=["text", "zip-header"])
def test_xlsx_that_is_not_a_workbook(data: bytes) -> None:
    with pytest.raises(RequestError) as exc:
        read_xlsx(data)
    assert "file: not a valid XLSX workbook" in problems(exc)
    assert "save it from Excel as .xlsx" in problems(exc)


def test_xlsx_zip_without_workbook() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(RequestError) as exc:
        read_xlsx(out.getvalue())
    assert "not a valid XLSX workbook" in problems(exc)


# --- readers: the file as a whole ------------------------------------------------------


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("r.txt", b"scan_id\n1\n", "file: unsupported type '.txt'; use .json, .csv or .xlsx"),
    ("noext", b"scan_id\n1\n", "file: unsupported type '(none)'"),
    ("r.csv", b"", "file: the file is empty"),
    ("r.json", b"  \n\t ", "file: the file is empty"),
    ("r.csv", "scan_id;x\n1;é\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 2)"),
    ("r.json", b"{\x00}", "binary content (NUL bytes)"),
    ("r.csv", b"scan_id\n" + b"1\n" * 100, "larger than limits.max_request_bytes (64 bytes)"),
])
def test_request_file_errors(tmp_path: Path, name: str, data: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(RequestError) as exc:
        read_request_file(path, 64)
    assert expected in problems(exc)


def test_request_file_at_exactly_the_limit_is_read(tmp_path: Path) -> None:
    text = "scan_id\n" + "".join(f"{i}\n" for i in range(1, 100))
    path = tmp_path / "r.csv"
    path.write_text(text)
    assert len(read_request_file(path, len(text.encode()))["scan_ids"]) == 99


# Whatever the content, a reader raises RequestError (the file goes to failed/ with the
# reason), never anything else (which leaves the request stuck in processing/).
def _broken_sheet() -> bytes:
    good = zipfile.ZipFile(io.BytesIO(xlsx([["scan_id"], [1]])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in good.infolist():
            data = good.read(info.filename)
            z.writestr(info, b"<worksheet><sheetData><row><c" if "worksheets/" in
                       info.filename else data)
    return out.getvalue()


@pytest.mark.parametrize(("name", "data"), [
    ("deep.json", b"[" * 5000),
    ("bigint.json", b'{"scan_ids": [' + b"9" * 5000 + b"]}"),
    ("sup.csv", "scan_id\n²\n".encode()),
    ("long.csv", b"scan_id\n" + b"9" * 5000 + b"\n"),
    ("field.csv", b'scan_id\n"' + b"x" * 200_000 + b'"\n'),
    ("sheet.xlsx", _broken_sheet()),
    ("nul-late.csv", b"scan_id\n" + b"".join(b"%d\n" % i for i in range(1, 1500)) + b"\x00\n"),
    ("ctrl.json", b'{"scan_ids": [1], "label": "a\x01b"}'),
    ("half.json", b'{"scan_ids": [1, 2'),
    ("fullwidth.csv", "scan_id\n\uff11\uff12\n".encode()),
], ids=lambda v: v if isinstance(v, str) else "")
def test_reader_never_crashes(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    try:
        read_request_file(path, 1_000_000)
    except RequestError as exc:
        assert exc.problems and all(p.split(":")[0] for p in exc.problems)


# --- build_request: profiles ---------------------------------------------------------


def test_csv_at_the_inbox_root_takes_defaults_profile(cfg: Config) -> None:
    r = build_request({"scan_ids": [1]}, cfg, tabular=True)
    assert (r.profile, r.action, r.source, r.batch_size) == (
        "demo-download", "download", "demo-source", 10)


def test_csv_in_a_profile_folder_takes_that_profile(cfg: Config) -> None:
    r = build_request({"scan_ids": [1]}, cfg, folder_profile="big-batches", tabular=True)
    assert (r.profile, r.source, r.batch_size, r.label) == (
        "big-batches", "demo-target", 50, "from profile")


def test_file_profile_beats_folder_profile(cfg: Config) -> None:
    raw = {"profile": "demo-download", "scan_ids": [1]}
    r = build_request(raw, cfg, folder_profile="big-batches")
    assert (r.profile, r.source, r.batch_size, r.label) == (
        "demo-download", "demo-source", 10, None)


def test_file_values_beat_profile_values(cfg: Config) -> None:
    raw = {"scan_ids": [1], "batch_size": 7, "source": "demo-source", "label": "mine"}
    r = build_request(raw, cfg, folder_profile="big-batches")
    assert (r.profile, r.source, r.batch_size, r.label) == ("big-batches", "demo-source", 7,
                                                            "mine")


def test_defaults_batch_size_applies_when_nothing_sets_it() -> None:
    cfg = config(defaults={"batch_size": 33})
    assert build_request({"scan_ids": [1]}, cfg, tabular=True).batch_size == 33
    assert build_request({**DL, "scan_ids": [1]}, cfg).batch_size == 33


def test_json_with_action_at_the_root_takes_no_profile(cfg: Config) -> None:
    r = build_request({"action": "download", "source": "demo-target", "scan_ids": [1]}, cfg)
    assert (r.profile, r.source) == (None, "demo-target")
    with pytest.raises(RequestError) as exc:
        build_request({"action": "download", "scan_ids": [1]}, cfg)
    assert problems(exc) == "source: download needs a source instance"


def test_json_without_action_at_the_root_takes_defaults_profile(cfg: Config) -> None:
    r = build_request({"scan_ids": [1]}, cfg)
    assert (r.profile, r.action) == ("demo-download", "download")


def test_csv_without_any_profile_needs_an_action() -> None:
    cfg = config(defaults={"profile": None})
    with pytest.raises(RequestError) as exc:
        build_request({"scan_ids": [1]}, cfg, tabular=True)
    assert problems(exc) == ("action: Field required; add it, or drop the file into a "
                             "profile folder that sets it")


@pytest.mark.parametrize(("raw", "folder"), [({"profile": "nope", "scan_ids": [1]}, None),
                                             ({"scan_ids": [1]}, "nope"),
                                             ({"profile": 5, "scan_ids": [1]}, None)])
def test_unknown_profile(cfg: Config, raw: dict[str, Any], folder: str | None) -> None:
    with pytest.raises(RequestError) as exc:
        build_request(raw, cfg, folder_profile=folder)
    assert "profile: unknown profile" in problems(exc)
    assert "configured: big-batches, demo-copy, demo-download" in problems(exc)


def test_parse_request_reads_file_and_applies_folder_profile(tmp_path: Path,
                                                              cfg: Config) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("scan_id\n4\n5\n")
    r = parse_request(path, cfg, folder_profile="big-batches")
    assert (r.scan_ids, r.profile, r.batch_size) == ([4, 5], "big-batches", 50)
    path = tmp_path / "sel.json"
    path.write_text(json.dumps({**DL, "select": {"captured_from": "-7d"}}))
    r = parse_request(path, cfg, today=TODAY)
    assert r.select is not None and r.select.captured_from == date(2025, 3, 3)


# --- build_request: relative dates -------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("today", TODAY), ("TODAY", TODAY), (" yesterday ", date(2025, 3, 9)),
    ("-7d", date(2025, 3, 3)), ("-0d", TODAY), ("-31d", date(2025, 2, 7)),
    ("-366d", date(2024, 3, 9)), ("2025-01-02", "2025-01-02"), (None, None), (5, 5),
])
def test_resolve_date(value: Any, expected: Any) -> None:
    assert resolve_date(value, TODAY) == expected


def test_select_dates_resolve_against_today(cfg: Config) -> None:
    raw = {**DL, "select": {"captured_from": "-7d", "captured_to": "yesterday",
                            "store_id": 8, "status": "today"}}
    r = build_request(raw, cfg, today=TODAY)
    assert r.select is not None
    assert (r.select.captured_from, r.select.captured_to) == (date(2025, 3, 3),
                                                              date(2025, 3, 9))
    assert r.select.status == "today"  # only captured_* are dates
    assert r.select.selection().captured_from == date(2025, 3, 3)


@pytest.mark.parametrize("value", ["-7w", "last week", "2025-02-30", "7d"])
def test_bad_select_date_names_field_and_forms(cfg: Config, value: str) -> None:
    with pytest.raises(RequestError) as exc:
        build_request({**DL, "select": {"captured_to": value}}, cfg, today=TODAY)
    assert problems(exc).startswith("select.captured_to:")
    assert "use YYYY-MM-DD, today, yesterday or -7d" in problems(exc)


def test_select_from_after_to(cfg: Config) -> None:
    raw = {**DL, "select": {"captured_from": "today", "captured_to": "-1d"}}
    with pytest.raises(RequestError) as exc:
        build_request(raw, cfg, today=TODAY)
    assert problems(exc) == "select.captured_from: is after captured_to; swap them"


# --- build_request: validation messages ------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ({"scan_ids": "1,2"}, "scan_ids: Input should be a valid list"),
    ({"scan_ids": [1, "2"]}, "scan_ids[1]: Input should be a valid integer (got '2'); "
                             "use a whole number without quotes"),
    ({"scan_ids": [True]}, "scan_ids[0]: Input should be a valid integer"),
    ({"scan_ids": [1], "batch_size": "10"}, "batch_size: Input should be a valid integer"),
    ({"scan_ids": [1], "batch_size": 0}, "batch_size: Input should be greater than or equal"),
    ({"scan_ids": [1], "analyze": "yes"}, "analyze: Input should be a valid boolean (got "
                                          "'yes'); use true or false"),
    ({"scan_ids": [1], "mode": "fast"}, "mode: Input should be 'auto' or 'mapped'"),
    ({"scan_ids": [1], "colour": 1}, "colour: Extra inputs are not permitted; remove it"),
    ({"scan_ids": [1], "source": "prod"}, "source: unknown instance 'prod'; configured: "
                                          "demo-source, demo-target"),
    ({"scan_ids": [1], "action": "move"}, "action: Input should be 'copy', 'download' or "
                                          "'analyze' (got 'move')"),
    ({"scan_ids": [1, 2, 1, 2]}, "scan_ids[3]: scan ID 2 repeats scan_ids[1]"),
    ({"scan_ids": [0]}, "scan_ids[0]: 0 is not a valid ID; IDs are positive whole numbers"),
    ({"scan_ids": []}, "scan_ids: give either scan_ids or select (exactly one)"),
    ({"scan_ids": [1], "select": {}}, "scan_ids: give either scan_ids or select"),
    ({"select": {"limit": 0}}, "select.limit: Input should be greater than or equal to 1"),
    ({"scan_ids": [1], "label": "x" * 501}, "label: String should have at most 500"),
])
def test_validation_messages(cfg: Config, raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(RequestError) as exc:
        build_request({**DL, **raw}, cfg)
    assert expected in problems(exc)


def test_type_and_semantic_problems_at_once(cfg: Config) -> None:
    raw = {**DL, "source": "prod", "scan_ids": [1, 1], "colour": "red"}
    with pytest.raises(RequestError) as exc:
        build_request(raw, cfg)
    fields = sorted(p.split(":")[0] for p in exc.value.problems)
    assert fields == ["colour", "scan_ids[1]", "source"]


def test_all_problems_at_once(cfg: Config) -> None:
    raw = {"action": "copy", "source": "prod", "target": "qa", "scan_ids": [1, 1, -2]}
    with pytest.raises(RequestError) as exc:
        build_request(raw, cfg)
    fields = [p.split(":")[0] for p in exc.value.problems]
    assert fields == ["source", "target", "target_store_id", "scan_ids[1]", "scan_ids[2]"]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"action": "copy", "scan_ids": [1], "target": "demo-target"},
     "target_store_id: copy needs the store of the target"),
    ({"action": "analyze", "scan_ids": [1]}, "target: analyze needs a target instance"),
    ({"action": "analyze", "target": "demo-target"}, "pairs: analyze needs pairs, from_run"),
    ({"action": "analyze", "target": "demo-target", "scan_ids": [1, 2],
      "target_scan_ids": [3]}, "target_scan_ids: 1 target IDs for 2 scan IDs"),
    ({"action": "analyze", "target": "demo-target", "pairs": [[1, 0]]},
     "pairs[0]: (1, 0) holds a non-positive ID"),
])
def test_action_needs(cfg: Config, raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(RequestError) as exc:
        build_request({"source": "demo-source", **raw}, cfg)
    assert expected in problems(exc)


def test_max_scans() -> None:
    cfg = config(limits={"max_scans": 3})
    assert build_request({**DL, "scan_ids": [1, 2, 3]}, cfg).scan_ids == [1, 2, 3]
    with pytest.raises(RequestError) as exc:
        build_request({**DL, "scan_ids": [1, 2, 3, 4]}, cfg)
    assert "4 scans exceed limits.max_scans (3); split the request" in problems(exc)


def test_duplicate_reports_are_capped(cfg: Config) -> None:
    with pytest.raises(RequestError) as exc:
        build_request({**DL, "scan_ids": [7] * 50}, cfg)
    assert len(exc.value.problems) == 20


def test_unknown_select_key_hint_lists_select_keys(cfg: Config) -> None:
    with pytest.raises(RequestError) as exc:
        build_request({**DL, "select": {"store": 8}}, cfg)
    assert "select.store: Extra inputs are not permitted" in problems(exc)
    assert "captured_from" in problems(exc) and "scan_ids" not in problems(exc)


# --- normalised(): what request.json holds, read back on resume -----------------------


@pytest.mark.parametrize("raw", [
    {**DL, "scan_ids": [3, 1, 2], "label": "ü", "dry_run": True},
    {**DL, "select": {"store_id": 8, "captured_from": "-7d", "captured_to": "today",
                      "status": "done", "limit": 5}},
    {"action": "analyze", "source": "demo-source", "target": "demo-target",
     "pairs": [[1, 10], [2, 20]], "batch_size": 3},
    {"action": "analyze", "source": "demo-source", "target": "demo-target",
     "from_run": "20261121-231500-copy-3f9a1c"},
    {"action": "copy", "source": "demo-source", "target": "demo-target", "scan_ids": [1],
     "target_store_id": 42, "mode": "mapped", "analyze": True, "force": True,
     "retry_of": "20261121-231500-copy-3f9a1c", "attempt": 3},
], ids=["download", "select", "pairs", "from_run", "copy"])
def test_normalised_round_trip(cfg: Config, raw: dict[str, Any]) -> None:
    request = build_request(raw, cfg, today=TODAY)
    data = request.normalised()
    assert set(data) == set(Request.model_fields)
    again = Request.model_validate(data)
    assert again == request
    from_json = Request.model_validate_json(json.dumps(data))  # as the runner resumes
    assert from_json == request
    assert from_json.normalised() == data
    # and it is a valid request file in its own right (e.g. a retry.json)
    assert build_request(json.loads(json.dumps(data)), cfg, today=TODAY) == request


def test_normalised_resolves_relative_dates(cfg: Config) -> None:
    r = build_request({**DL, "select": {"captured_from": "yesterday"}}, cfg, today=TODAY)
    assert r.normalised()["select"]["captured_from"] == "2025-03-09"
