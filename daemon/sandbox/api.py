"""The endpoints of SPEC §8, as functions of the server state: no sockets here.

Answers follow Django REST framework's habits: 200 for login and reads, 201 for
upload and create, 400 with field errors (``{"store": ["..."]}``), 401 with
``{"detail": ...}`` and ``WWW-Authenticate: Token``, 404 ``{"detail": "Not found."}``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from . import db
from .blobs import BlobStore, FileRecord, UploadSink, UrlSigner, decode_header, header_segment
from .faults import Endpoint, Faults, Gate, Stats
from .model import ReceivedCreate, Recognition, RecordedRequest, ScanTruth, capture_time
from .multipart import FormData
from .processing import Processor, choose_outcome, is_mapped

API_PATHS: dict[str, Endpoint] = {
    "POST /api/v4/token-auth/": Endpoint.LOGIN,
    "POST /api/v4/processing/upload/": Endpoint.UPLOAD,
    "POST /api/v4/processing/actions/": Endpoint.CREATE,
}
# The create fields the platform knows (its serializer's); with ``keep_unknown_keys``
# off, any other key of a payload is dropped, not stored.
PAYLOAD_FIELDS = frozenset({
    "store", "files", "captured_at", "category_id", "section_id", "store_planogram",
    "aisle", "task_id", "replace_id", "device", "app_version", "note"})
FILE_META_RE = re.compile(r"^/api/v1/master-data/file-upload/(\d+)/$")
BLOB_RE = re.compile(r"^/blob/(\d+)$")


@dataclass
class Reply:
    """One HTTP answer: a JSON body, or a stream of ``length`` bytes."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None
    length: int | None = None

    @property
    def content_length(self) -> int:
        return self.length if self.length is not None else len(self.body)


def json_reply(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps(obj, ensure_ascii=False).encode()
    return Reply(status, body, {"Content-Type": "application/json", **(headers or {})})


def not_found() -> Reply:
    return json_reply(404, {"detail": "Not found."})


@dataclass
class State:
    """Everything the handlers share."""

    pool: ConnectionPool[Any]
    blobs: BlobStore
    signer: UrlSigner
    faults: Faults
    stats: Stats
    processor: Processor
    api_gate: Gate = field(default_factory=Gate)
    blob_gate: Gate = field(default_factory=Gate)
    blob_base: str = ""
    reject_auth_on_blob: bool = True
    echo_errors: bool = False  # 4xx bodies echo the request, headers included
    keep_unknown_keys: bool = True  # store unknown create-payload keys (a marker) as sent
    received_creates: list[ReceivedCreate] = field(default_factory=list)
    blob_requests: list[RecordedRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)


def with_echo(reply: Reply, headers: dict[str, str], body: bytes) -> Reply:
    """A 4xx JSON reply that also echoes the request, headers and body, as careless
    servers do in their error pages: the client must keep secrets out of what it logs."""
    if not 400 <= reply.status < 500 or reply.stream is not None:
        return reply
    try:
        data = parse_json(reply.body)
    except ValueError:
        return reply
    echo = {"headers": headers, "body": body[:4000].decode("utf-8", errors="replace")}
    merged = {**data, "echo": echo} if isinstance(data, dict) else {"detail": data, "echo": echo}
    return json_reply(reply.status, merged)


def route(method: str, path: str) -> tuple[Endpoint, int | None]:
    """The endpoint of an API request, and the file ID in its path if any."""
    path = path.split("?", 1)[0]
    if (match := FILE_META_RE.match(path)) and method == "GET":
        return Endpoint.FILE, int(match.group(1))
    return API_PATHS.get(f"{method} {path}", Endpoint.OTHER), None


def parse_json(body: bytes) -> Any:
    """The JSON of a body; raises ValueError when it is not JSON."""
    return json.loads(body.decode("utf-8"))


def login(state: State, body: bytes) -> Reply:
    try:
        data = parse_json(body)
    except ValueError:
        return json_reply(400, {"detail": "JSON parse error."})
    if not isinstance(data, dict) or not data.get("username") or not data.get("password"):
        return json_reply(
            400, {"username": ["This field is required."], "password": ["This field is required."]}
        )
    with state.pool.connection() as conn:
        result = db.login(conn, str(data["username"]), str(data["password"]))
    if result is None:
        problem = "Unable to log in with provided credentials."
        return json_reply(400, {"non_field_errors": [problem]})
    return json_reply(200, {"id": result[0], "token": result[1]})


def authorized(state: State, token: str | None) -> bool:
    if not token:
        return False
    with state.pool.connection() as conn:
        return db.token_valid(conn, token)


def unauthorized(token: str | None) -> Reply:
    detail = "Invalid token." if token else "Authentication credentials were not provided."
    return json_reply(401, {"detail": detail}, {"WWW-Authenticate": "Token"})


def file_record(state: State, file_id: int) -> FileRecord | None:
    with state.pool.connection() as conn:
        return db.get_file(conn, file_id)


def file_meta(state: State, file_id: int) -> Reply:
    record = file_record(state, file_id)
    if record is None:
        return not_found()
    url = state.blob_base + state.signer.path(file_id)
    return json_reply(
        200, {"id": file_id, "file": url, "original_filename": record.original_filename}
    )


def blob(state: State, file_id: int) -> Reply:
    record = file_record(state, file_id)
    if record is None:
        return not_found()
    return Reply(
        200,
        headers={"Content-Type": "image/jpeg"},
        stream=state.blobs.chunks(record),
        length=record.size,
    )


def upload(state: State, form: FormData, sink: UploadSink) -> Reply:
    """Keep an uploaded file (already on disk in ``sink``) as a new file record."""
    if form.file_field != "file":
        sink.discard()
        return json_reply(400, {"file": ["No file was submitted."]})
    if form.fields.get("input_type") != "image":
        sink.discard()
        value = form.fields.get("input_type")
        msg = "This field is required." if value is None else f'"{value}" is not a valid choice.'
        return json_reply(400, {"input_type": [msg]})
    header = header_segment(sink.prefix)
    with state.pool.connection() as conn:
        file_id = db.insert_file(
            conn,
            original_filename=form.filename or "upload",
            storage="disk",
            size=sink.size,
            path=sink.rel,
            header=header,
            sha256=sink.sha256,
        )
    return json_reply(201, {"id": file_id})


def source_truths(state: State, file_ids: list[int]) -> dict[int, ScanTruth]:
    """The truth headers of files, by file ID (files without one are left out)."""
    with state.pool.connection() as conn:
        rows = conn.execute(
            "SELECT id, header FROM refserver_file WHERE id = ANY(%s)", (file_ids,)
        ).fetchall()
    truths = {int(fid): decode_header(bytes(h or b"")) for fid, h in rows}
    return {fid: t for fid, t in truths.items() if t is not None}


def validate_create(payload: Any) -> dict[str, list[str]]:
    """Field errors of a create payload (empty when valid)."""
    if not isinstance(payload, dict):
        return {"non_field_errors": ["Invalid data. Expected a dictionary."]}
    errors: dict[str, list[str]] = {}
    store = payload.get("store")
    if not isinstance(store, int) or isinstance(store, bool):
        errors["store"] = ["A valid integer is required."]
    files = payload.get("files")
    if (
        not isinstance(files, list)
        or not files
        or not all(isinstance(f, int) and not isinstance(f, bool) for f in files)
    ):
        errors["files"] = ["A non-empty list of upload IDs is required."]
    if capture_time(payload.get("captured_at")) is None:
        errors["captured_at"] = [
            "Datetime has wrong format. Use ISO 8601 or epoch seconds."]
    return errors


def stored_payload(state: State, payload: dict[str, Any]) -> dict[str, Any]:
    """What the platform keeps of a create payload: all of it, or (``keep_unknown_keys``
    off, as a serializer that ignores unknown fields) only the fields it knows."""
    if state.keep_unknown_keys:
        return payload
    return {k: v for k, v in payload.items() if k in PAYLOAD_FIELDS}


def _check_references(conn: db.Conn, payload: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not db.store_exists(conn, payload["store"]):
        errors["store"] = [f'Invalid pk "{payload["store"]}" - object does not exist.']
    missing = sorted(set(payload["files"]) - db.existing_files(conn, payload["files"]))
    if missing:
        errors["files"] = [f'Invalid pk "{m}" - object does not exist.' for m in missing]
    return errors


def _category(conn: db.Conn, payload: dict[str, Any]) -> int | None:
    """Mapped mode keeps the payload's category when this database has it."""
    cid = payload.get("category_id")
    if not is_mapped(payload) or not isinstance(cid, int):
        return None
    row = conn.execute(
        "SELECT 1 FROM master_data_implementation_category WHERE id = %s", (cid,)
    ).fetchone()
    return cid if row else None


def create(state: State, payload: dict[str, Any], truths: dict[int, ScanTruth]) -> Reply:
    """Insert a scan (status processing) and its files; schedule its processing."""
    errors = validate_create(payload)
    if errors:
        return json_reply(400, errors)
    with state.pool.connection() as conn:
        errors = _check_references(conn, payload)
        if errors:
            return json_reply(400, errors)
        scan_id = db.insert_scan(
            conn,
            store_id=payload["store"],
            provided_values={"_raw_data": stored_payload(state, payload)},
            category_id=_category(conn, payload),
        )
        db.insert_scanfiles(conn, scan_id, payload["files"])
    truth = next((truths[f] for f in payload["files"] if f in truths), None)
    outcome = choose_outcome(state.processor.policy, payload, truth, payload["store"])
    mode = "mapped" if is_mapped(payload) else "auto"
    state.processor.register(Recognition(scan_id, payload["store"], mode, outcome, truth, payload))
    return json_reply(201, {"id": scan_id})
