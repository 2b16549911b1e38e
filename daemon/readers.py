"""Readers that turn a request file (JSON, CSV, XLSX) into a raw mapping.

They check only the file's form; ``daemon.request`` validates the content. Every
error names the line, row or column and says how to fix it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from daemon.errors import RequestError

SCAN_COLUMNS = ("scan_id", "source_scan_id", "id")
TARGET_COLUMNS = ("target_scan_id",)
MAX_ROW_PROBLEMS = 20
MAX_ID_DIGITS = 18  # IDs are 64-bit integers
DELIMITERS = ",;\t"
SNIFF_LINES = 50


def read_request_file(path: Path, max_bytes: int) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv", ".xlsx"):
        raise RequestError([f"file: unsupported type {suffix or '(none)'!r}; "
                            "use .json, .csv or .xlsx"])
    data = _read_bytes(path, max_bytes)
    if suffix == ".xlsx":
        return read_xlsx(data)
    text = _decode(data)
    return read_json(text) if suffix == ".json" else read_csv(text)


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestError([f"file: larger than limits.max_request_bytes ({max_bytes} bytes); "
                            "split it into smaller requests"])
    if not data.strip():
        raise RequestError(["file: the file is empty; list scan IDs in it"])
    return data


def _decode(data: bytes) -> str:
    if b"\x00" in data[:4096]:
        raise RequestError(["file: binary content (NUL bytes), not a text request; "
                            "save it as UTF-8 JSON or CSV"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RequestError([f"file: not UTF-8 text (byte 0x{data[exc.start]:02x} on line "
                            f"{line}); save it as UTF-8 (in Excel: 'CSV UTF-8')"]) from None


def read_json(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError([f"file: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}"]) from None
    except (RecursionError, ValueError) as exc:  # absurd nesting, numbers of 4,300+ digits
        raise RequestError([f"file: JSON this deep or with numbers this long is not a "
                            f"request ({type(exc).__name__}); list plain scan IDs"]) from None
    if not isinstance(raw, dict):
        raise RequestError([f"file: the JSON must be an object with keys like \"action\" "
                            f"and \"scan_ids\", not a {type(raw).__name__}"])
    return raw


def read_csv(text: str) -> dict[str, Any]:
    # A few lines tell the delimiter; the sniffer takes seconds on a long sample.
    sample = "\n".join(text[:8192].splitlines()[:SNIFF_LINES])
    dialect: Any = csv.excel  # one column: nothing to sniff
    if any(d in sample for d in DELIMITERS):
        with contextlib.suppress(csv.Error):  # no consistent delimiter: one column
            dialect = csv.Sniffer().sniff(sample, delimiters=DELIMITERS)
    rows = csv.reader(io.StringIO(text), dialect)
    try:
        return table_to_request(enumerate(rows, start=1))
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise RequestError([f"file: not a readable CSV ({exc}); save it as CSV with one "
                            "scan ID per row"]) from None


def read_xlsx(data: bytes) -> dict[str, Any]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds on a broken file
        raise _not_xlsx(exc) from None
    try:
        sheet = book.worksheets[0]
        rows = ((i, [_cell_text(c) for c in row])
                for i, row in enumerate(sheet.iter_rows(values_only=True), start=1))
        return table_to_request(rows)
    except RequestError:
        raise
    except Exception as exc:  # broken sheet XML surfaces only while reading rows
        raise _not_xlsx(exc) from None
    finally:
        book.close()


def _not_xlsx(exc: Exception) -> RequestError:
    return RequestError([f"file: not a valid XLSX workbook ({type(exc).__name__}); "
                         "save it from Excel as .xlsx"])


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def table_to_request(rows: Iterable[tuple[int, Sequence[str]]]) -> dict[str, Any]:
    """Rows (numbered as the user sees them) → ``{scan_ids, target_scan_ids}``; a blank
    target cell is None: a pair without a target (``Missing In Target``), not an error."""
    numbered = ((n, [c.strip() for c in row]) for n, row in rows)
    header_row = next(((n, r) for n, r in numbered if any(r)), None)
    if header_row is None:
        raise RequestError(["file: no rows; add a header row with a scan_id column"])
    header_line, header = header_row
    scan_col = _find_column(header, SCAN_COLUMNS)
    if scan_col is None:
        found = ", ".join(repr(h) for h in header if h) or "nothing"
        raise RequestError([f"row {header_line}: no scan_id column in the header (found "
                            f"{found}); name the column scan_id (or Source_Scan_ID, id)"])
    target_col = _find_column(header, TARGET_COLUMNS)
    scan_ids, target_ids, problems = _collect_ids(numbered, header, scan_col, target_col)
    if problems:
        raise RequestError(problems[:MAX_ROW_PROBLEMS] + _more(problems))
    if not scan_ids:
        raise RequestError([f"file: only a header (row {header_line}), no scan IDs; "
                            "add one scan ID per row"])
    raw: dict[str, Any] = {"scan_ids": scan_ids}
    if target_col is not None:
        raw["target_scan_ids"] = target_ids
    return raw


def _collect_ids(rows: Iterable[tuple[int, list[str]]], header: list[str], scan_col: int,
                 target_col: int | None) -> tuple[list[int], list[int | None], list[str]]:
    scan_ids: list[int] = []
    target_ids: list[int | None] = []
    first_seen: dict[int, int] = {}
    problems: list[str] = []
    for n, row in rows:
        if not any(row):
            continue
        sid = _id_at(row, scan_col, n, header[scan_col], problems)
        if sid is not None and sid in first_seen:
            problems.append(f"row {n}: scan ID {sid} repeats row {first_seen[sid]}; "
                            "list each scan once")
        elif sid is not None:
            first_seen[sid] = n
            scan_ids.append(sid)
        if target_col is not None and _blank(row, target_col):
            target_ids.append(None)
        elif target_col is not None:
            tid = _id_at(row, target_col, n, header[target_col], problems)
            if tid is not None:
                target_ids.append(tid)
    return scan_ids, target_ids, problems


def _blank(row: list[str], col: int) -> bool:
    return col >= len(row) or not row[col]


def _id_at(row: list[str], col: int, n: int, name: str, problems: list[str]) -> int | None:
    text = row[col] if col < len(row) else ""
    # ASCII digits only ('²' and '１' are digits to str.isdigit), and at most 18 of them.
    if text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS and int(text) > 0:
        return int(text)
    shown = repr(text) if text else "an empty cell"
    problems.append(f"row {n}, column {name}: {shown} is not a scan ID; "
                    "use a positive whole number")
    return None


def _find_column(header: list[str], names: Sequence[str]) -> int | None:
    normal = [h.lower().replace(" ", "_") for h in header]
    return next((normal.index(name) for name in names if name in normal), None)


def _more(problems: list[str]) -> list[str]:
    extra = len(problems) - MAX_ROW_PROBLEMS
    return [f"... and {extra} more rows like these"] if extra > 0 else []
