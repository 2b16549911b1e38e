"""HTTP plumbing: the API listener and the blob listener, faults applied on the wire.

Both speak HTTP/1.1 with keep-alive. Every request's body is read completely before
it is answered (uploads stream to disk), so an early answer never leaves unread bytes.
"""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import api
from .api import Reply, State, json_reply
from .blobs import UploadSink, decode_header
from .faults import Action, Endpoint, Fault, RequestInfo
from .model import ReceivedCreate, RecordedRequest, ScanTruth
from .multipart import BadRequest, BodyReader, FormData, boundary_of, parse_form, token_of

MAX_JSON_BYTES = 16 << 20
STATUS_TEXT = {
    408: "Request Timeout.",
    429: "Request was throttled.",
    500: "Internal server error.",
    502: "Bad gateway.",
    503: "Service unavailable.",
    504: "Gateway timeout.",
}


class Server(ThreadingHTTPServer):
    """A threaded listener on 127.0.0.1, on ``port`` (0: an ephemeral one)."""

    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not block shutdown
    request_queue_size = 512

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], state: State, port: int = 0
    ) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.state = state
        self.errors: list[str] = []
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every open connection (keep-alive ones too): a stopped server is gone."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):  # the peer went away
            return
        self.errors.append(traceback.format_exc())


@dataclass
class Incoming:
    """A request whose body has been read."""

    info: RequestInfo
    body: bytes = b""
    payload: Any = None
    form: FormData | None = None
    sink: UploadSink | None = None
    truths: dict[int, ScanTruth] = field(default_factory=dict)
    scan_id: int | None = None  # set when a create succeeded

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.discard()


@dataclass
class Answer:
    """How one request is answered: a label for the records, then what goes out."""

    label: int | str  # HTTP status, or the fault's name
    reply: Reply | None = None
    limit: int | None = None  # truncate the body after this many bytes
    fault: Fault | None = None  # RESET, RESET_AFTER_COMMIT or TIMEOUT: no reply at all
    close: bool = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate small writes
    timeout = 120  # idle keep-alive connections end eventually
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # quiet: tests read counters and records instead

    @property
    def state(self) -> State:
        return self.server.state

    def _reader(self) -> BodyReader:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        return BodyReader(self.rfile, self.headers.get("Content-Length"), chunked)

    def _reply(self, reply: Reply, limit: int | None = None) -> None:
        """Send ``reply``; with ``limit``, only that many body bytes, then close."""
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(reply.content_length))
        self.end_headers()
        if self.command == "HEAD":
            return
        sent = 0
        for chunk in reply.stream if reply.stream is not None else (reply.body,):
            if limit is not None and sent + len(chunk) >= limit:
                self.wfile.write(chunk[: limit - sent])
                self.close_connection = True
                break
            self.wfile.write(chunk)
            sent += len(chunk)

    def _abort(self) -> None:
        """Reset the connection (RST, no answer)."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop the makefile reference so close() really closes
        self.connection.close()
        self.close_connection = True

    def _stall(self) -> None:
        """Hold the request longer than the client waits, then close without answer."""
        self.state.stopping.wait(self.state.faults.timeout_sleep)
        self.close_connection = True

    def _send(self, answer: Answer) -> None:
        if answer.close:
            self.close_connection = True
            if answer.reply is not None and answer.limit is None:
                answer.reply.headers["Connection"] = "close"
        if answer.fault == Fault.TIMEOUT:
            self._stall()
        elif answer.fault in (Fault.RESET, Fault.RESET_AFTER_COMMIT):
            self._abort()
        elif answer.reply is not None:
            self._reply(answer.reply, answer.limit)

    def _fault_answer(self, action: Action) -> Answer:
        """A fault or a permanent error instead of serving."""
        if action.status is not None:
            return Answer(action.status, json_reply(action.status, action.body or {}))
        fault = action.fault
        assert fault is not None
        if fault in (Fault.RESET, Fault.RESET_AFTER_COMMIT):
            return Answer(str(Fault.RESET), fault=Fault.RESET)
        if fault == Fault.TIMEOUT:
            return Answer(str(fault), fault=fault)
        if fault == Fault.TRUNCATE:
            raise ValueError("truncate needs the normal answer")
        status = fault.status
        assert status is not None
        headers = {}
        if status == 429:
            headers["Retry-After"] = str(max(0, math.ceil(self.state.faults.retry_after)))
        return Answer(status, json_reply(status, {"detail": STATUS_TEXT[status]}, headers))

    def _truncated(self, reply: Reply) -> Answer:
        limit = int(reply.content_length * self.state.faults.truncate_fraction)
        return Answer(str(Fault.TRUNCATE), reply, limit=limit, close=True)

    def _internal_error(self) -> Answer:
        self.server.errors.append(traceback.format_exc())
        return Answer(500, json_reply(500, {"detail": "reference server bug"}), close=True)


class ApiHandler(_Handler):
    """The API of SPEC §8."""

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        """Answer one request. Records are written before the answer goes out, so a
        client that has its answer also finds it in the counters and records."""
        endpoint, file_id = api.route(self.command, self.path)
        incoming: Incoming | None = None
        with self.state.api_gate.slot() as ready:
            try:
                incoming = self._read(endpoint, file_id)
                answer = self._decide(incoming)
                if self.state.echo_errors and answer.reply is not None:
                    answer.reply = api.with_echo(answer.reply, dict(self.headers),
                                                 incoming.body)
            except BadRequest as exc:
                answer = Answer(400, json_reply(400, {"detail": str(exc)}), close=True)
            except (ConnectionError, TimeoutError):
                raise  # the peer went away: nothing left to answer
            except Exception:
                answer = self._internal_error()
            self.state.stats.record(endpoint, answer.label)
            if endpoint == Endpoint.CREATE:
                self.state.received_creates.append(
                    ReceivedCreate(
                        incoming.payload if incoming else None,
                        str(answer.label),
                        incoming.scan_id if incoming else None,
                    )
                )
            ready()
            self._send(answer)

    def _read(self, endpoint: Endpoint, file_id: int | None) -> Incoming:
        reader = self._reader()
        if endpoint != Endpoint.UPLOAD:
            body = reader.read_all(MAX_JSON_BYTES)
            incoming = Incoming(RequestInfo(endpoint, file_id=file_id), body)
            if endpoint == Endpoint.CREATE:
                self._read_create(incoming)
            return incoming
        boundary = boundary_of(self.headers.get("Content-Type", ""))
        sink = self.state.blobs.new_upload()
        try:
            form = parse_form(reader, boundary, sink)
        except BadRequest:
            sink.discard()
            raise
        finally:
            sink.close()
        truth = decode_header(sink.prefix)
        ids = frozenset({truth.source_scan_id}) if truth else frozenset()
        info = RequestInfo(endpoint, filename=form.filename, source_scan_ids=ids)
        return Incoming(info, form=form, sink=sink)

    def _read_create(self, incoming: Incoming) -> None:
        try:
            incoming.payload = api.parse_json(incoming.body)
        except ValueError as exc:
            raise BadRequest("JSON parse error.") from exc
        payload = incoming.payload
        files = payload.get("files") if isinstance(payload, dict) else None
        if isinstance(files, list) and all(type(f) is int for f in files):
            incoming.truths = api.source_truths(self.state, files)
        ids = frozenset(t.source_scan_id for t in incoming.truths.values())
        as_dict = payload if isinstance(payload, dict) else None
        incoming.info = RequestInfo(Endpoint.CREATE, payload=as_dict, source_scan_ids=ids)

    def _decide(self, incoming: Incoming) -> Answer:
        """Auth, then faults, then the work (which truncate and reset-after-commit need)."""
        endpoint = incoming.info.endpoint
        if endpoint == Endpoint.OTHER:
            return Answer(404, api.not_found())
        token = token_of(self.headers.get("Authorization"))
        if endpoint != Endpoint.LOGIN and not api.authorized(self.state, token):
            incoming.discard()
            return Answer(401, api.unauthorized(token))
        action = self.state.faults.decide(incoming.info)
        fault = action.fault if action else None
        if fault == Fault.RESET_AFTER_COMMIT and endpoint != Endpoint.CREATE:
            fault = Fault.RESET
        if action is not None and fault not in (Fault.TRUNCATE, Fault.RESET_AFTER_COMMIT):
            incoming.discard()
            return self._fault_answer(Action(fault=fault, status=action.status, body=action.body))
        reply = self._work(incoming)
        if fault == Fault.TRUNCATE:
            return self._truncated(reply)
        if fault == Fault.RESET_AFTER_COMMIT:
            return Answer(str(fault), fault=fault)
        return Answer(reply.status, reply)

    def _work(self, incoming: Incoming) -> Reply:
        endpoint = incoming.info.endpoint
        if endpoint == Endpoint.LOGIN:
            return api.login(self.state, incoming.body)
        if endpoint == Endpoint.FILE:
            assert incoming.info.file_id is not None
            return api.file_meta(self.state, incoming.info.file_id)
        if endpoint == Endpoint.UPLOAD:
            assert incoming.form is not None and incoming.sink is not None
            return api.upload(self.state, incoming.form, incoming.sink)
        if not isinstance(incoming.payload, dict):
            return json_reply(400, api.validate_create(incoming.payload))
        reply = api.create(self.state, incoming.payload, incoming.truths)
        if reply.status == 201:
            incoming.scan_id = int(api.parse_json(reply.body)["id"])
        return reply


class BlobHandler(_Handler):
    """The file-bytes host: pre-signed URLs, no Authorization expected."""

    def do_GET(self) -> None:
        self.state.blob_requests.append(
            RecordedRequest(self.command, self.path, {k: v for k, v in self.headers.items()})
        )
        with self.state.blob_gate.slot() as ready:
            try:
                self._reader().drain()
                answer = self._decide()
            except (ConnectionError, TimeoutError):
                raise
            except Exception:
                answer = self._internal_error()
            self.state.stats.record(Endpoint.BLOB, answer.label)
            ready()
            self._send(answer)

    do_HEAD = do_GET

    def _decide(self) -> Answer:
        parts = urlsplit(self.path)
        match = api.BLOB_RE.match(parts.path)
        if not match:
            return Answer(404, api.not_found())
        file_id = int(match.group(1))
        if self.headers.get("Authorization") and self.state.reject_auth_on_blob:
            detail = "Only one auth mechanism allowed; this URL is pre-signed."
            return Answer(400, json_reply(400, {"detail": detail}))
        query = parse_qs(parts.query)
        reason = self.state.signer.check(
            file_id, query.get("expires", [""])[0], query.get("sig", [""])[0]
        )
        if reason:
            return Answer(403, json_reply(403, {"detail": reason}))
        action = self.state.faults.decide(RequestInfo(Endpoint.BLOB, file_id=file_id))
        if action is not None and action.fault != Fault.TRUNCATE:
            return self._fault_answer(action)
        reply = api.blob(self.state, file_id)
        if action is None or reply.status != 200:
            return Answer(reply.status, reply)
        return self._truncated(reply)
