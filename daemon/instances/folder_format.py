"""The on-disk format of ``folder`` instances (SPEC §9): layout, ``scan.json``, ID claims.

``daemon.instances.folder.FolderInstance`` reads and writes folders in this format; this
module holds the format itself: decoding and encoding ``scan.json`` (and the create
payload that becomes one), how its capture dates are read for selections, stored file
names, and the atomic ID claims.

Layout under the root (nothing is ever written outside it)::

    scans/<scan_id>/scan.json               the scan; written last, so it is visible
                                            only once complete
    scans/<scan_id>/files/<file_id>.<ext>   its files, named by file ID
    .scanrelay/file-ids/<file_id>           the claim of a file ID (JSON, see below)
    .scanrelay/uploads/<file_id>.<ext>      uploaded, not yet part of a scan

``scan.json`` (UTF-8 JSON object)::

    {
      "id": 1001,                                  # equals the folder name
      "store_id": 12,
      "status": "done",
      "has_report": true,
      "captured_at": "2024-05-01T09:30:00+00:00",  # ISO 8601, or null
      "created_at": "2024-05-01T09:31:12+00:00",   # ISO 8601, or null
      "provided_values": {...},                    # the create payload, as the platform
                                                   # keeps provided_values->'_raw_data'
      "files": [{"file_id": 7, "file_type": "image", "filename": "IMG_1.png"}],
      "reports": [{...ScanDetails fields...}, ...], # one per section; [] : no report yet
      "store_name": "Store 12", "category_name": "Beverages"   # optional
    }

A report takes the field names of ``base.ScanDetails``; missing ones are null
(``is_additional_section``, ``compliance_fallback``: false), unknown ones make the file
corrupt. Folders written before scans had several reports hold ``"details": {...}``
(or null) instead of ``reports``: read as one report (or none). A create payload may
carry either key too.

IDs: a scan ID is claimed by ``mkdir scans/<id>`` and a file ID by an ``O_EXCL`` create
of ``.scanrelay/file-ids/<id>`` (holding ``{"filename", "name"}``: the original and the
stored file name). Both are atomic across threads and processes, also on NFS. Claims
are never removed, so an ID is never handed out twice. An instance starts from the
highest ID in use plus one (file IDs found under ``scans/`` count too, for hand-made
folders) and goes up from there, skipping IDs other processes took meanwhile.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from daemon.errors import PermanentError
from daemon.instances.base import FileRef, Scan, ScanDetails, Selection, captured_datetime

SCAN_JSON = "scan.json"
STATE_DIR = ".scanrelay"
ID_NAME = re.compile(r"[1-9][0-9]*")  # canonical decimal: "012" is not scan 12
EXTENSION = re.compile(r"[a-z0-9]{1,10}")
DETAIL_TYPES = {f.name: str(f.type) for f in fields(ScanDetails)}  # e.g. "int | None"


# ---- scan.json ---------------------------------------------------------------------


def scan_to_json(scan: Scan) -> dict[str, Any]:
    return {
        "id": scan.id, "store_id": scan.store_id, "status": scan.status,
        "has_report": scan.has_report, "captured_at": scan.captured_at,
        "created_at": scan.created_at, "provided_values": dict(scan.provided_values),
        "files": [{"file_id": f.file_id, "file_type": f.file_type, "filename": f.filename}
                  for f in scan.files],
        "reports": [asdict(report) for report in scan.reports],
        "store_name": scan.store_name, "category_name": scan.category_name,
    }


def scan_from_json(data: Any, scan_id: int) -> Scan:
    """Raises ValueError/TypeError, naming the field, for anything not as documented."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if _get(data, "id", "int") != scan_id:
        raise ValueError(f"id {data['id']!r} does not match its folder")
    provided = data.get("provided_values", {})
    if not isinstance(provided, dict):
        raise ValueError("provided_values: not an object")
    files = data.get("files", [])
    if not isinstance(files, list):
        raise ValueError("files: not a list")
    return Scan(
        id=scan_id, store_id=_get(data, "store_id", "int"),
        status=_get(data, "status", "str"), has_report=_get(data, "has_report", "bool"),
        captured_at=_get(data, "captured_at", "str | None"),
        created_at=_get(data, "created_at", "str | None"),
        provided_values=provided, files=tuple(_file_ref(f) for f in files),
        reports=reports_of(data),
        store_name=_get(data, "store_name", "str | None"),
        category_name=_get(data, "category_name", "str | None"),
    )


def reports_of(data: Mapping[str, Any]) -> tuple[ScanDetails, ...]:
    """``reports`` (a list), or the one report of a legacy ``details`` (or none)."""
    if "reports" in data:
        reports = data["reports"]
        if not isinstance(reports, list):
            raise ValueError("reports: not a list")
        return tuple(_details(r, "reports") for r in reports)
    details = data.get("details")
    return () if details is None else (_details(details),)


def _file_ref(data: Any) -> FileRef:
    if not isinstance(data, dict):
        raise ValueError("files: an entry is not an object")
    return FileRef(file_id=_get(data, "file_id", "int"),
                   file_type=data.get("file_type", "image") or "image",
                   filename=_get(data, "filename", "str | None"))


def _details(data: Any, where: str = "details") -> ScanDetails:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: not an object")
    unknown = sorted(set(data) - set(DETAIL_TYPES))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    values = {name: _get(data, name, DETAIL_TYPES[name]) for name in data}
    return ScanDetails(**values)


def _get(data: Mapping[str, Any], key: str, declared: str) -> Any:
    """``data[key]`` checked against a declared type such as ``"int | None"``."""
    value = data.get(key)
    if value is None and declared.endswith("| None"):
        return None
    base = declared.split(" | ")[0]
    if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "str": str, "bool": bool}.get(base)
    if expected is None or not isinstance(value, expected) or (
            expected is int and isinstance(value, bool)):
        raise ValueError(f"{key}: expected {declared}, found {value!r}")
    return value


def encode(document: Mapping[str, Any]) -> bytes:
    """Strict JSON in UTF-8 (no NaN); ValueError/TypeError for what cannot be stored."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False, indent=2).encode()


def now() -> str:
    """The current time as ``created_at`` stores it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- selection by scan.json values -----------------------------------------------


def _captured(scan: Scan) -> datetime | None:
    return captured_datetime(scan.captured_at)


def age_key(scan: Scan) -> tuple[int, float, int]:
    """Oldest first; scans without a (valid) capture time last, as NULLS LAST does."""
    captured = _captured(scan)
    if captured is None:
        return (1, 0.0, scan.id)
    aware = captured if captured.tzinfo else captured.replace(tzinfo=UTC)
    return (0, aware.timestamp(), scan.id)


def matches(scan: Scan, selection: Selection) -> bool:
    """Whether ``scan`` is one of ``selection`` (capture dates as written)."""
    if selection.store_id is not None and scan.store_id != selection.store_id:
        return False
    if selection.status is not None and scan.status != selection.status:
        return False
    if selection.captured_from is None and selection.captured_to is None:
        return True
    captured = _captured(scan)
    if captured is None:
        return False
    day: date = captured.date()  # the date as written, not converted to UTC
    return ((selection.captured_from is None or day >= selection.captured_from)
            and (selection.captured_to is None or day <= selection.captured_to))



# ---- create payloads ---------------------------------------------------------------


@dataclass(frozen=True)
class CreateRequest:
    store_id: int
    file_ids: list[int]
    captured_at: str | None
    reports: tuple[ScanDetails, ...]
    provided: dict[str, Any]  # a private, JSON-clean copy of the whole payload


def parse_payload(payload: Mapping[str, Any]) -> CreateRequest:
    """What a create payload asks for, or PermanentError naming the bad field."""
    try:
        store = payload.get("store")
        if isinstance(store, str) and store.isdigit():
            store = int(store)
        files = payload.get("files")
        if not isinstance(files, list | tuple):
            raise ValueError("files: expected a list of upload IDs")
        file_ids = [_get({"files": f}, "files", "int") for f in files]
        if len(set(file_ids)) != len(file_ids):
            raise ValueError("files: an upload is listed twice")
        captured_at = _capture_text(payload.get("captured_at"))
        return CreateRequest(
            store_id=_get({"store": store}, "store", "int"), file_ids=file_ids,
            captured_at=captured_at, reports=reports_of(payload),
            provided=json.loads(encode(dict(payload))),
        )
    except (ValueError, TypeError) as exc:
        raise PermanentError(f"invalid create payload: {exc}") from exc


def _capture_text(value: Any) -> str | None:
    """A payload's ``captured_at`` (ISO 8601 or epoch seconds, as the platform takes
    both) as ``scan.json`` keeps it: ISO 8601. ValueError naming the field otherwise."""
    if value is None:
        return None
    when = captured_datetime(value)
    if when is None:
        raise ValueError(f"captured_at: expected ISO 8601 or epoch seconds, found {value!r}")
    return value if isinstance(value, str) else when.isoformat()


# ---- IDs, claims and stored files --------------------------------------------------


@dataclass(frozen=True)
class Upload:
    file_id: int
    filename: str | None
    name: str  # the stored file name, <file_id>.<ext>


def extension(filename: str) -> str:
    """The stored file's extension: the original's when plain, else ``bin``."""
    suffix = Path(filename.replace("\\", "/")).suffix.lower().lstrip(".")
    suffix = "jpg" if suffix == "jpeg" else suffix
    return suffix if EXTENSION.fullmatch(suffix) else "bin"


def claim_scan_id(scans: Path, candidate: int) -> int:
    """Claim the first free scan ID from ``candidate`` on (``mkdir scans/<id>``)."""
    while True:
        try:
            (scans / str(int(candidate))).mkdir()
            return candidate
        except FileExistsError:  # taken by another thread or process: next
            candidate += 1


def claim_file_id(claims: Path, candidate: int, filename: str, ext: str) -> int:
    """Claim the first free file ID from ``candidate`` on (``O_EXCL`` create of its
    claim, which records ``filename`` and the stored name ``<id>.<ext>``)."""
    while True:
        try:
            fd = os.open(claims / str(candidate), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:  # taken by another thread or process: next
            candidate += 1
    with os.fdopen(fd, "wb") as out:
        out.write(json.dumps({"filename": filename, "name": f"{candidate}.{ext}"},
                             ensure_ascii=False).encode())
    return candidate


def read_claim(claims: Path, file_id: int) -> Upload:
    """The claim of ``file_id``: FileNotFoundError if there is none, ValueError, TypeError
    or KeyError if it is corrupt (also when its stored name is not ``<file_id>.<ext>``,
    so a claim can never point outside the uploads)."""
    data = json.loads((claims / str(file_id)).read_bytes())
    upload = Upload(file_id, data["filename"], str(data["name"]))
    if not re.fullmatch(rf"{upload.file_id}\.[a-z0-9]{{1,10}}", upload.name):
        raise ValueError(f"bad stored name {upload.name!r}")
    return upload


def claimed_file_ids(claims: Path) -> list[int]:
    """The file IDs claimed so far (OSError if the claims cannot be listed)."""
    return [int(n) for n in os.listdir(claims) if ID_NAME.fullmatch(n)]


def stored_file_ids(files: Path) -> list[int]:
    """The file IDs of the files in ``files`` (a scan's ``files`` folder)."""
    names = os.listdir(files)
    return [int(s) for s in (n.split(".", 1)[0] for n in names) if ID_NAME.fullmatch(s)]


def stored_file(names: list[str], file_id: int) -> str | None:
    """The name among ``names`` that holds ``file_id``, if any."""
    stem = str(file_id)
    return next((n for n in names if n == stem or n.startswith(stem + ".")), None)
