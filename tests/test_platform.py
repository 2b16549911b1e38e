"""Tests of the retry policy, redaction and the ``platform`` instance kind.

Three layers:
1. pure: redaction, Retry-After parsing, classification, the retry policy;
2. HTTP against a small scripted server on loopback (``Stub``) for exact fault timing;
3. the database side against a real PostgreSQL (``platform_db`` fixture) loaded with
   the reference schema, and (when present) the reference platform server.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pg
import psycopg
import pytest
import requests
from loguru import logger
from requests_toolbelt.multipart.decoder import MultipartDecoder
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from daemon import retry
from daemon.config import DbConfig, PlatformInstanceConfig
from daemon.errors import FatalError, Interrupted, PermanentError, TransientError
from daemon.instances.base import FileRef, Instance, Selection
from daemon.instances.platform import PlatformInstance
from daemon.redact import redact, register_secret
from daemon.retry import (
    ClassifiedTransientError,
    RetryEvent,
    RetryPolicy,
    classify_exception,
    classify_response,
    parse_retry_after,
    retrying,
)
from daemon.sandbox import Fault, RefServer, SeedResult

SCHEMA = Path(__file__).parents[1] / "daemon" / "sandbox" / "schema.sql"
PASSWORD = "s3cret-Pa55word"
USER_ENV = "SCANRELAY_TEST_API_USER"
PASSWORD_ENV = "SCANRELAY_TEST_API_PASSWORD"


# --- helpers -------------------------------------------------------------------------


class Sleeps:
    """A retry sleep that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def fast_policy(attempts: int = 4, max_seconds: float = 30.0,
                sleep: Callable[[float], None] | None = None) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, max_seconds=max_seconds, base=0.01, cap=0.02,
                       sleep=sleep or Sleeps())


def make_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None
                  ) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp.reason = "Reason"
    resp._content = body
    resp._content_consumed = True  # type: ignore[attr-defined]
    resp.headers.update(headers or {})
    resp.encoding = "utf-8"
    return resp


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru line emitted during the test, with its bound ``extra``."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{extra} {message}",
                      level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture(autouse=True)
def _clean_retry_state() -> Iterator[None]:
    retry.STOPPING.clear()
    hooks = list(retry.RETRY_HOOKS)
    yield
    retry.STOPPING.clear()
    retry.RETRY_HOOKS[:] = hooks


# --- 1. redaction --------------------------------------------------------------------


def test_redact_masks_known_values_and_credential_patterns() -> None:
    text = ('login failed for pw=hunter2-long {"token": "abc123", "password": "p\\"w"} '
            "Authorization: Token deadbeef99 and 'password': 'x y z' "
            "https://blob/x?expires=1&sig=0a1b2c&other=1")
    out = redact(text, ["hunter2-long", None, ""])
    assert "hunter2-long" not in out
    assert '"token": "***"' in out
    assert '"password": "***"' in out
    assert "Authorization: ***" in out and "deadbeef99" not in out
    assert "'password': '***'" in out
    assert "sig=***&other=1" in out


def test_redact_token_schemes_but_not_prose() -> None:
    assert redact("sent Token 9f8e7d6c5b4a and Bearer abc.def-123456") == (
        "sent Token *** and Bearer ***")
    assert redact("Token expired, Invalid token.") == "Token expired, Invalid token."
    assert redact("{'Authorization': 'Token a1b2c3d4e5'}") == "{'Authorization': '***'}"


def test_redact_prefers_longest_secret_and_skips_tiny_ones() -> None:
    assert redact("abcdef abcd", ["abcd", "abcdef"]) == "*** ***"
    assert redact("a b c", ["a"]) == "a b c"  # too short to mask by value


def test_registered_secret_is_masked_everywhere() -> None:
    register_secret("registered-secret-42")
    assert redact("x registered-secret-42 y") == "x *** y"


# --- 1. classification ---------------------------------------------------------------


def test_parse_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses(status: int) -> None:
    with pytest.raises(ClassifiedTransientError) as info:
        classify_response(make_response(status, b"busy", {"Retry-After": "3"}))
    assert info.value.cause == f"http_{status}"
    assert info.value.retry_after == 3.0
    assert "busy" in str(info.value)


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 422, 501])
def test_permanent_statuses_carry_redacted_truncated_body(status: int) -> None:
    body = b'{"detail": "no such file", "token": "tok-123456"}' + b"x" * 5000
    with pytest.raises(PermanentError) as info:
        classify_response(make_response(status, body), what="file 9")
    message = str(info.value)
    assert message.startswith(f"file 9: HTTP {status}")
    assert "no such file" in message and "tok-123456" not in message
    assert len(message) < 2200


def test_success_is_not_an_error() -> None:
    for status in (200, 201, 204, 302):
        classify_response(make_response(status))


def test_exceptions_map_to_causes() -> None:
    refusal = NewConnectionError(None, "refused")  # type: ignore[arg-type]
    refused = requests.ConnectionError(MaxRetryError(None, "/", refusal))  # type: ignore[arg-type]
    reset = requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))
    cases: list[tuple[requests.RequestException, str]] = [
        (requests.exceptions.ConnectTimeout("slow connect"), "connect"),
        (refused, "connect"),
        (requests.exceptions.ReadTimeout("slow read"), "timeout"),
        (requests.exceptions.ChunkedEncodingError("cut"), "incomplete"),
        (reset, "connection"),
    ]
    for exc, cause in cases:
        error = classify_exception(exc)
        assert isinstance(error, ClassifiedTransientError), exc
        assert error.cause == cause, exc
    assert isinstance(classify_exception(requests.exceptions.InvalidURL("bad")), PermanentError)


def test_exception_messages_are_redacted() -> None:
    exc = requests.ConnectionError(
        "GET https://blob/x?sig=abcdef0123 failed for Token t0k3n-0123456789")
    text = str(classify_exception(exc))
    assert "abcdef0123" not in text and "t0k3n" not in text, text


# --- 1. retry policy -----------------------------------------------------------------


class Flaky:
    """Raises the given errors in turn, then returns ``result``."""

    def __init__(self, errors: list[BaseException], result: str = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def test_retries_transient_then_succeeds_and_reports_hooks() -> None:
    events: list[RetryEvent] = []
    retry.RETRY_HOOKS.append(events.append)
    fn = Flaky([ClassifiedTransientError("x", "http_503"), TransientError("y")])
    assert fast_policy().call(fn, "thing") == "ok"
    assert fn.calls == 3
    assert [(e.cause, e.attempt, e.describe) for e in events] == [
        ("http_503", 1, "thing"), ("other", 2, "thing")]


def test_permanent_and_fatal_are_not_retried() -> None:
    for error in (PermanentError("p"), FatalError("f"), ValueError("v")):
        fn = Flaky([error])
        with pytest.raises(type(error)):
            fast_policy().call(fn, "thing")
        assert fn.calls == 1


def test_attempt_bound_reraises_last_error() -> None:
    fn = Flaky([TransientError(f"e{i}") for i in range(10)])
    with pytest.raises(TransientError, match="e2"):
        fast_policy(attempts=3).call(fn, "thing")
    assert fn.calls == 3


def test_time_bound_stops_before_a_wait_that_would_cross_it() -> None:
    sleeps = Sleeps()
    fn = Flaky([TransientError("busy", retry_after=100.0)] * 5)
    with pytest.raises(TransientError):
        fast_policy(attempts=10, max_seconds=50.0, sleep=sleeps).call(fn, "thing")
    assert fn.calls == 1 and sleeps.waits == []


def test_retry_after_is_a_minimum_wait_and_backoff_is_jittered() -> None:
    sleeps = Sleeps()
    fn = Flaky([TransientError("a", retry_after=2.5), TransientError("b"), TransientError("c")])
    policy = RetryPolicy(attempts=5, max_seconds=60, base=1.0, cap=3.0, sleep=sleeps)
    policy.call(fn, "thing")
    assert sleeps.waits[0] >= 2.5
    assert 0.0 <= sleeps.waits[1] <= 2.0  # try 2: uniform in [0, 1 * 2**1]
    assert 0.0 <= sleeps.waits[2] <= 3.0  # try 3: capped at 3
    waits = {policy.wait_for(6, None) for _ in range(50)}
    assert len(waits) > 1 and max(waits) <= 3.0  # full jitter, bounded by the cap


def test_each_retry_is_logged_with_the_callers_context(log_lines: list[str]) -> None:
    fn = Flaky([ClassifiedTransientError("gateway busy", "http_502")])
    bound = logger.bind(run="run-1", item="scan 7")
    fast_policy().call(fn, "fetch file 3", log=bound)
    retried = [line for line in log_lines if "retrying fetch file 3" in line]
    assert len(retried) == 1
    assert "run-1" in retried[0] and "scan 7" in retried[0]
    assert "http_502" in retried[0] and "gateway busy" in retried[0]
    with logger.contextualize(run="run-2", item="scan 8"):
        fast_policy().call(Flaky([TransientError("again")]), "upload")
    assert any("run-2" in line and "retrying upload" in line for line in log_lines)


def test_giving_up_is_logged(log_lines: list[str]) -> None:
    with pytest.raises(TransientError):
        fast_policy(attempts=2).call(Flaky([TransientError("down")] * 3), "create scan")
    assert any("giving up on create scan after 2 tries" in line for line in log_lines)


def test_stopping_interrupts_a_retry_wait() -> None:
    policy = RetryPolicy(attempts=5, max_seconds=600, base=100, cap=100)
    threading.Timer(0.2, retry.STOPPING.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        policy.call(Flaky([TransientError("busy", retry_after=60)]), "thing")
    assert time.monotonic() - started < 5


def test_retrying_decorator_and_custom_predicate() -> None:
    calls: list[int] = []

    @retrying(3, 10, "decorated", sleep=Sleeps())
    def work(x: int) -> int:
        calls.append(x)
        if len(calls) < 2:
            raise TransientError("once")
        return x * 2

    assert work(21) == 42 and calls == [21, 21]
    only_connect = fast_policy()
    fn = Flaky([ClassifiedTransientError("reset", "connection")])
    with pytest.raises(TransientError):
        only_connect.call(fn, "create", retry_if=lambda e: getattr(e, "cause", "") == "connect")
    assert fn.calls == 1


def test_a_broken_hook_does_not_break_the_call() -> None:
    def broken(event: RetryEvent) -> None:
        raise RuntimeError("metrics down")

    retry.RETRY_HOOKS.append(broken)
    assert fast_policy().call(Flaky([TransientError("x")]), "thing") == "ok"


# --- 2. HTTP against a scripted loopback server --------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Route = Callable[["StubHandler", Seen], None]


class StubHandler(BaseHTTPRequestHandler):
    server: StubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        seen = Seen(self.command, self.path, dict(self.headers.items()), body)
        stub = self.server.stub
        with stub.lock:
            stub.seen.append(seen)
            queue = stub.scripts.get((self.command, path))
            route = queue.pop(0) if queue else stub.routes.get((self.command, path))
        if route is None:
            self.reply(404, {"detail": f"no route {self.command} {path}"})
        else:
            route(self, seen)

    do_GET = do_POST = _handle

    def reply(self, status: int, data: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(data).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reset(self) -> None:
        """Drop the connection with a TCP reset, answering nothing."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    stub: Stub

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and timeouts are the point of these tests


@dataclass
class Stub:
    """A loopback HTTP server: ``routes`` answer by default, ``scripts`` once each."""

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    scripts: dict[tuple[str, str], list[Route]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = StubServer(("127.0.0.1", 0), StubHandler)
        self.server.stub = self
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, method: str, path: str, *routes: Route) -> None:
        with self.lock:
            self.scripts.setdefault((method, path), []).extend(routes)

    def requests_to(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.split("?")[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakePlatform:
    """A minimal §8 API on one stub, file bytes on another (the 'blob host')."""

    def __init__(self) -> None:
        self.api = Stub()
        self.blob = Stub()
        self.tokens: set[str] = set()
        self.logins = 0
        self.files: dict[int, bytes] = {}
        self.created: list[Any] = []
        self.uploads: list[tuple[dict[str, bytes], str]] = []
        self.api.routes[("POST", "/api/v4/token-auth/")] = self._login
        self.api.routes[("POST", "/api/v4/processing/upload/")] = self._upload
        self.api.routes[("POST", "/api/v4/processing/actions/")] = self._create

    def add_file(self, file_id: int, data: bytes, name: str = "shelf.jpg",
                 host: str = "blob") -> None:
        self.files[file_id] = data
        base = self.blob.url if host == "blob" else self.api.url
        stub = self.blob if host == "blob" else self.api
        self.api.routes[("GET", f"/api/v1/master-data/file-upload/{file_id}/")] = (
            self._authed(lambda h, s: h.reply(200, {
                "file": f"{base}/blob/{file_id}?expires=9&sig=feedface",
                "original_filename": name})))
        stub.routes[("GET", f"/blob/{file_id}")] = lambda h, s: h.reply(200, raw=data)

    def _login(self, h: StubHandler, seen: Seen) -> None:
        creds = json.loads(seen.body)
        if creds != {"username": "robot", "password": PASSWORD}:
            h.reply(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
            return
        self.logins += 1
        token = f"tok-{self.logins}-abcdef"
        self.tokens.add(token)
        h.reply(200, {"id": 1, "token": token})

    def _authed(self, route: Route) -> Route:
        def check(h: StubHandler, seen: Seen) -> None:
            auth = seen.headers.get("Authorization", "")
            if not auth.startswith("Token ") or auth[6:] not in self.tokens:
                h.reply(401, {"detail": "Invalid token."})
            else:
                route(h, seen)
        return check

    def _upload(self, h: StubHandler, seen: Seen) -> None:
        def ok(h: StubHandler, seen: Seen) -> None:
            decoder = MultipartDecoder(seen.body, seen.headers["Content-Type"])
            parts = {}
            for part in decoder.parts:
                disposition = part.headers[b"Content-Disposition"].decode()
                name = disposition.split('name="')[1].split('"')[0]
                parts[name] = part.content
            self.uploads.append((parts, disposition))
            h.reply(201, {"id": 500 + len(self.uploads)})
        self._authed(ok)(h, seen)

    def _create(self, h: StubHandler, seen: Seen) -> None:
        def ok(h: StubHandler, seen: Seen) -> None:
            self.created.append(json.loads(seen.body))
            h.reply(201, {"id": 900 + len(self.created)})
        self._authed(ok)(h, seen)

    def close(self) -> None:
        self.api.close()
        self.blob.close()


@pytest.fixture
def fake() -> Iterator[FakePlatform]:
    platform = FakePlatform()
    yield platform
    platform.close()


def platform_config(api_url: str, db: dict[str, Any] | None = None, **extra: Any
                    ) -> PlatformInstanceConfig:
    db = db or {"host": "127.0.0.1", "port": 9, "dbname": "none", "user": "none"}
    return PlatformInstanceConfig(kind="platform", api_url=api_url, db=DbConfig(**db),
                                  api_username_env=USER_ENV, api_password_env=PASSWORD_ENV,
                                  **extra)


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USER_ENV, "robot")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def instance(fake: FakePlatform, creds: None, sleeps: Sleeps) -> Iterator[PlatformInstance]:
    inst = PlatformInstance(
        "qa", platform_config(fake.api.url, timeout_seconds=1.0, max_connections=8),
        policy=fast_policy(attempts=4, sleep=sleeps))
    yield inst
    inst.close()


def fetch(inst: PlatformInstance, file_id: int, tmp_path: Path) -> tuple[bytes, Any]:
    path = tmp_path / f"{file_id}.part"
    with path.open("w+b") as dest:
        fetched = inst.fetch_file(FileRef(file_id), dest)
    return path.read_bytes(), fetched


def test_it_is_an_instance(instance: PlatformInstance) -> None:
    assert isinstance(instance, Instance)
    assert instance.kind == "platform" and instance.max_connections == 8


def test_fetch_from_a_blob_host_sends_no_authorization(
        instance: PlatformInstance, fake: FakePlatform, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several chunks
    fake.add_file(7, data, "Shelf 7.jpg")
    got, fetched = fetch(instance, 7, tmp_path)
    assert got == data
    assert fetched.size == len(data) and fetched.original_filename == "Shelf 7.jpg"
    meta = fake.api.requests_to("/api/v1/master-data/file-upload/7/")
    assert meta[-1].headers["Authorization"].startswith("Token tok-")
    blob = fake.blob.requests_to("/blob/7")
    assert blob and all("Authorization" not in r.headers for r in blob)


def test_redirect_from_the_api_host_to_another_host_drops_the_token(
        instance: PlatformInstance, fake: FakePlatform, tmp_path: Path) -> None:
    data = b"redirected bytes"
    fake.add_file(8, data, host="api")
    target = f"{fake.blob.url}/elsewhere/8?sig=0011"
    fake.api.routes[("GET", "/blob/8")] = fake._authed(
        lambda h, s: h.reply(302, {}, headers={"Location": target}))
    fake.blob.routes[("GET", "/elsewhere/8")] = lambda h, s: h.reply(200, raw=data)
    got, _ = fetch(instance, 8, tmp_path)
    assert got == data
    assert fake.api.requests_to("/blob/8")[-1].headers["Authorization"].startswith("Token ")
    assert "Authorization" not in fake.blob.requests_to("/elsewhere/8")[-1].headers


def test_same_host_other_port_is_another_origin(fake: FakePlatform, creds: None) -> None:
    from daemon.instances.platform_api import origin

    assert origin("HTTP://Example.net/x") == ("http", "example.net", 80)
    assert origin("https://example.net:443/") == origin("https://example.net")
    assert origin(fake.api.url) != origin(fake.blob.url)  # 127.0.0.1, two ports


def test_concurrent_401s_log_in_again_once(
        instance: PlatformInstance, fake: FakePlatform, tmp_path: Path) -> None:
    for file_id in range(20, 28):
        fake.add_file(file_id, f"file {file_id}".encode())
    fetch(instance, 20, tmp_path)
    assert fake.logins == 1
    fake.tokens.clear()  # every token is now refused
    results: dict[int, bytes] = {}

    def work(file_id: int) -> None:
        results[file_id] = fetch(instance, file_id, tmp_path)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20, 28)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"file {i}".encode() for i in range(20, 28)}
    assert fake.logins == 2


def test_a_second_401_is_fatal(instance: PlatformInstance, fake: FakePlatform,
                               tmp_path: Path) -> None:
    fake.api.routes[("GET", "/api/v1/master-data/file-upload/30/")] = (
        lambda h, s: h.reply(401, {"detail": "Invalid token."}))
    with pytest.raises(FatalError, match="401 again"):
        fetch(instance, 30, tmp_path)
    assert fake.logins == 2


def test_refused_login_is_fatal_and_keeps_the_password_out(
        fake: FakePlatform, creds: None, monkeypatch: pytest.MonkeyPatch,
        log_lines: list[str]) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong-password-123")
    inst = PlatformInstance("qa", platform_config(fake.api.url), policy=fast_policy())
    with pytest.raises(FatalError, match="login refused for robot: HTTP 400") as info:
        inst.create_scan({"store": 1})
    assert "wrong-password-123" not in str(info.value)
    assert not any("wrong-password-123" in line for line in log_lines)
    inst.close()


def test_missing_credentials_are_fatal(fake: FakePlatform) -> None:
    inst = PlatformInstance("qa", platform_config(fake.api.url), policy=fast_policy())
    with pytest.raises(FatalError, match=USER_ENV):
        inst.upload_file(Path("nothing.jpg"), "nothing.jpg")


def test_no_secret_in_logs(instance: PlatformInstance, fake: FakePlatform, tmp_path: Path,
                           log_lines: list[str]) -> None:
    fake.add_file(31, b"abc")
    fake.api.script("GET", "/api/v1/master-data/file-upload/31/",
                    lambda h, s: h.reply(502, {"echo": s.headers.get("Authorization")}))
    fetch(instance, 31, tmp_path)
    text = "\n".join(log_lines)
    assert "retrying fetch file 31" in text
    assert PASSWORD not in text and "abcdef" not in text  # token tok-1-abcdef


def test_upload_streams_multipart_and_reopens_on_retry(
        instance: PlatformInstance, fake: FakePlatform, tmp_path: Path) -> None:
    path = tmp_path / "shelf.jpg"
    path.write_bytes(b"\xff\xd8" + b"image" * 50_000)
    fake.api.script("POST", "/api/v4/processing/upload/",
                    lambda h, s: h.reply(503, {"detail": "busy"}))
    upload_id = instance.upload_file(path, "Shelf A.jpg")
    assert upload_id == 501
    parts, disposition = fake.uploads[0]
    assert parts["input_type"] == b"image"
    assert parts["file"] == path.read_bytes()
    assert 'filename="Shelf A.jpg"' in disposition
    sent = fake.api.requests_to("/api/v4/processing/upload/")
    assert len(sent) == 2 and len(sent[0].body) == len(sent[1].body)


def test_upload_of_a_missing_local_file_is_permanent(instance: PlatformInstance,
                                                     tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="cannot read the local file"):
        instance.upload_file(tmp_path / "gone.jpg", "gone.jpg")


def test_create_scan_posts_json(instance: PlatformInstance, fake: FakePlatform) -> None:
    payload = {"store": 42, "files": [501], "captured_at": "2026-01-01T10:00:00Z",
               "scanrelay_ref": "src-1@42"}
    assert instance.create_scan(payload) == 901
    assert fake.created == [payload]


def test_create_scan_resends_when_no_connection_could_be_made(creds: None) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    events: list[RetryEvent] = []
    retry.RETRY_HOOKS.append(events.append)
    inst = PlatformInstance("qa", platform_config(f"http://127.0.0.1:{port}"),
                            policy=fast_policy(attempts=3))
    inst.api._token, inst.api._generation = "preset-token", 1  # test create's own policy
    with pytest.raises(TransientError, match="cannot connect"):
        inst.create_scan({"store": 1})
    assert [e.cause for e in events] == ["connect", "connect"]
    inst.close()


def test_unknown_api_path_or_sql_names_are_fatal() -> None:
    with pytest.raises(FatalError, match="api_paths"):
        PlatformInstance("qa", platform_config("http://x", api_paths={"logn": "/x"}))
    with pytest.raises(FatalError, match="sql names"):
        PlatformInstance("qa", platform_config("http://x", sql={"scan": "SELECT 1"}))


def test_api_paths_are_overridable(fake: FakePlatform, creds: None) -> None:
    fake.api.routes[("POST", "/custom/create/")] = fake._create
    inst = PlatformInstance(
        "qa", platform_config(fake.api.url, api_paths={"create_scan": "/custom/create/"}),
        policy=fast_policy())
    assert inst.create_scan({"store": 3}) == 901
    inst.close()


# --- 3. database ---------------------------------------------------------------------


@pytest.fixture
def seeded_db(platform_db: str) -> str:
    """The reference schema with two stores, a planogram, sections and five scans."""
    with psycopg.connect(platform_db, autocommit=True) as conn:
        conn.execute(SCHEMA.read_text())
        conn.execute(SEED_SQL)
    return platform_db


SEED_SQL = """
INSERT INTO master_data_implementation_store (id, name) VALUES (1, 'North'), (2, 'South');
INSERT INTO master_data_implementation_category (id, name) VALUES (1, 'Drinks');
INSERT INTO planograms_implementation_planogram (id, name, category_id)
    VALUES (1, 'Drinks 2m', 1);
INSERT INTO planograms_implementation_planogramstore (id, planogram_id, store_id)
    VALUES (11, 1, 1);
INSERT INTO planograms_implementation_planogramsection (id, planogram_id, name)
    VALUES (21, 1, 'Main'), (22, 1, 'Endcap');
INSERT INTO planograms_implementation_planogramsectionproduct
    (section_id, product_ean, action, merch_method)
    VALUES (21, '1', 'keep', 'shelf'), (22, '2', 'keep', 'additional display');
INSERT INTO realograms_implementation_realogram (id) VALUES (31), (32);
INSERT INTO realograms_implementation_scan
    (id, store_id, provided_values, active_realogram_id, created_at, status, has_report)
VALUES
    (101, 1, '{"_raw_data": {"captured_at": "2025-08-01T09:00:00Z", "scanrelay_ref": "a@1"}}',
        31, '2025-08-01 09:05:00+00', 'done', true),
    (102, 1, '{"_raw_data": {"captured_at": "2025-08-02T09:00:00Z"}}',
        32, '2025-08-02 23:59:59+00', 'done', true),
    (103, 1, '{}', NULL, '2025-08-03 00:00:00+00', 'processing', false),
    (104, 2, '{"_raw_data": {"scanrelay_ref": "b@2"}}', NULL, '2025-08-01 12:00:00+00',
        'done', false),
    (105, 1, '{}', NULL, '2025-07-31 23:59:59+00', 'done', false);
INSERT INTO realograms_implementation_scanfile (scan_id, file_id, file_type)
    VALUES (101, 1002, 'image'), (101, 1001, 'image'), (102, 1003, 'image');
INSERT INTO planograms_compliance_planogramcompliancereport
    (id, realogram_id, section_id, section_name, store_planogram_id, planogram_id,
     compliance_rate, compliance_rates, scan_created_date)
VALUES
    (41, 31, 21, 'Main', 11, 1, 80,
        '{"correct": 40, "wandering": 3, "missing": 5, "empty": 2, "osa": 90}',
        '2025-08-01 09:00:00+00'),
    (42, 32, 22, 'Endcap', 11, NULL, 70,
        '{"correct": "7", "wandering": 1.0, "missing": 0, "empty": 4}',
        '2025-08-02 09:00:00+00');
INSERT INTO planograms_compliance_storeplanogramcompliance
    (store_planogram_id, date, pre_osa, post_osa, pre_compliance, post_compliance)
VALUES (11, '2025-08-01', 85.5, 90, 75, 80), (11, '2025-08-02', 60, 65, 50, 70);
"""


def db_instance(dsn: str, chunk_size: int = 5000, **extra: Any) -> PlatformInstance:
    params = pg.dsn_params(dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    return PlatformInstance("db", platform_config("http://127.0.0.1:9", db=db, **extra),
                            policy=fast_policy(), chunk_size=chunk_size)


def test_get_scans_with_files_and_details(seeded_db: str) -> None:
    inst = db_instance(seeded_db)
    scans = inst.get_scans([102, 999, 101, 103, 101])
    assert [s.id for s in scans] == [102, 101, 103]
    by_id = {s.id: s for s in scans}
    s101 = by_id[101]
    assert s101.processed and s101.store_id == 1
    assert [f.file_id for f in s101.files] == [1001, 1002]
    assert s101.captured_at == "2025-08-01T09:00:00Z"
    assert s101.created_at is not None and s101.created_at.startswith("2025-08-01T09:05:00")
    assert s101.provided_values["scanrelay_ref"] == "a@1"  # the create payload (_raw_data)
    assert by_id[103].provided_values == {}
    d = s101.details
    assert d is not None
    assert (d.store_planogram_id, d.planogram_name, d.section_id, d.section_name) == (
        11, "Drinks 2m", 21, "Main")
    assert not d.is_additional_section
    assert (d.pre_pog, d.post_pog, d.pre_osa, d.post_osa) == (75, 80, 85.5, 90)
    assert (d.ok_count, d.wandering_count, d.oos_count, d.hole_count) == (40, 3, 5, 2)
    d2 = by_id[102].details
    assert d2 is not None
    assert d2.planogram_name == "Drinks 2m"  # via the store planogram when planogram_id is null
    assert d2.is_additional_section and d2.section_name == "Endcap"
    assert (d2.pre_pog, d2.post_pog) == (50, 70)
    assert (d2.ok_count, d2.wandering_count, d2.oos_count, d2.hole_count) == (7, 1, 0, 4)
    assert by_id[103].details is None and not by_id[103].processed
    inst.close()


def test_details_compliance_of_the_day_else_with_fallback_the_latest_before_or_at_all(
        seeded_db: str) -> None:
    with psycopg.connect(seeded_db, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO realograms_implementation_realogram (id) VALUES (33), (34);
            INSERT INTO realograms_implementation_scan
                (id, store_id, provided_values, active_realogram_id, created_at, status,
                 has_report)
            VALUES (106, 1, '{}', 33, '2025-08-05 10:00:00+00', 'done', true),
                   (107, 1, '{}', 34, '2025-08-05 10:00:00+00', 'done', true);
            INSERT INTO planograms_compliance_planogramcompliancereport
                (id, realogram_id, section_id, section_name, store_planogram_id,
                 planogram_id, compliance_rates, scan_created_date)
            VALUES (43, 33, 21, 'Main', 12, 1, '{}', '2025-08-05 09:00:00+00'),
                   (44, 34, 21, 'Main', 13, 1, '{}', '2025-08-05 09:00:00+00');
            INSERT INTO planograms_compliance_storeplanogramcompliance
                (store_planogram_id, date, pre_osa, post_osa, pre_compliance, post_compliance)
            VALUES (12, '2025-08-01', 1, 1, 1, 1), (12, '2025-08-03', 3, 3, 3, 3),
                   (12, '2025-08-09', 9, 9, 9, 9),
                   (13, '2025-08-09', 9, 9, 9, 9), (13, '2025-08-12', 12, 12, 12, 12);
        """)
    plain = db_instance(seeded_db)
    by_id = {s.id: s.details for s in plain.get_scans([101, 106, 107])}
    plain.close()
    assert by_id[101] is not None and by_id[101].pre_pog == 75  # its own day
    assert [by_id[i].pre_pog for i in (106, 107)] == [None, None]  # type: ignore[union-attr]
    params = pg.dsn_params(seeded_db)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    fallback = PlatformInstance("db", platform_config("http://127.0.0.1:9", db=db),
                                policy=fast_policy(), compliance_fallback=True)
    by_id = {s.id: s.details for s in fallback.get_scans([101, 106, 107])}
    fallback.close()
    assert by_id[101] is not None and by_id[101].pre_pog == 75  # its own day
    assert by_id[106] is not None and by_id[106].pre_pog == 3  # the latest day before
    assert by_id[107] is not None and by_id[107].pre_pog == 12  # none before: the latest


def test_get_scans_chunks_the_id_list(seeded_db: str) -> None:
    inst = db_instance(seeded_db, chunk_size=2)
    seen: list[int] = []
    original = inst.db.query

    def spy(name: str, params: Any) -> list[dict[str, Any]]:
        if "ids" in params:
            seen.append(len(params["ids"]))
        return original(name, params)

    inst.db.query = spy  # type: ignore[method-assign]
    scans = inst.get_scans([105, 104, 103, 102, 101])
    assert [s.id for s in scans] == [105, 104, 103, 102, 101]
    assert max(seen) == 2 and len(seen) == 9  # 3 chunks x (scans, files, details)
    assert sum(len(s.files) for s in scans) == 3
    inst.close()


def test_select_scans_by_store_day_range_status_and_limit(seeded_db: str) -> None:
    inst = db_instance(seeded_db)
    aug1, aug2 = date(2025, 8, 1), date(2025, 8, 2)
    assert inst.select_scans(Selection(store_id=1)) == [105, 101, 102, 103]
    assert inst.select_scans(Selection(captured_from=aug1, captured_to=aug2)) == [101, 104, 102]
    assert inst.select_scans(Selection(store_id=1, captured_from=aug2)) == [102, 103]
    assert inst.select_scans(Selection(captured_to=date(2025, 7, 31))) == [105]
    assert inst.select_scans(Selection(status="done", limit=2)) == [105, 101]
    assert inst.select_scans(Selection(store_id=3)) == []
    inst.close()


def test_find_scan_by_marker(seeded_db: str) -> None:
    inst = db_instance(seeded_db)
    assert inst.find_scan_by_marker("scanrelay_ref", "a@1") == 101
    assert inst.find_scan_by_marker("scanrelay_ref", "b@2") == 104
    assert inst.find_scan_by_marker("scanrelay_ref", "c@3") is None
    assert inst.find_scan_by_marker("other_field", "a@1") is None
    assert inst.find_scan_by_marker("scanrelay_ref", "a@1' OR '1'='1") is None
    inst.close()


def test_transactions_are_read_only(seeded_db: str) -> None:
    inst = db_instance(seeded_db)
    with pytest.raises(FatalError, match="ReadOnlySqlTransaction"), inst.db.read_only() as cur:
        cur.execute("UPDATE realograms_implementation_scan SET status = 'x'")
    # Even a configured query that writes cannot: the transaction itself is read only.
    writer = db_instance(seeded_db, sql={"find_scan_by_marker": (
        "DELETE FROM realograms_implementation_scan "
        "WHERE %(field)s::text = %(value)s::text RETURNING id")})
    with pytest.raises(FatalError, match="read-only transaction"):
        writer.find_scan_by_marker("a", "a")
    writer.close()
    assert inst.get_scans([101])[0].status == "done"
    inst.close()


def test_sql_is_overridable(seeded_db: str) -> None:
    custom = db_instance(seeded_db, sql={"select_scans": (
        "SELECT id FROM realograms_implementation_scan "
        "WHERE provided_values->'_raw_data'->>'captured_at' >= %(captured_from)s::date::text "
        "ORDER BY id LIMIT %(limit)s")})
    assert custom.select_scans(Selection(captured_from=date(2025, 8, 2))) == [102]
    custom.close()


def test_a_database_that_is_down_is_transient(creds: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = {"host": "127.0.0.1", "port": port, "dbname": "x", "user": "x"}
    cfg = platform_config("http://127.0.0.1:9", db=db, timeout_seconds=0.5)
    inst = PlatformInstance("db", cfg, policy=fast_policy(attempts=2))
    with pytest.raises(TransientError, match="database db"):
        inst.get_scans([1])
    inst.close()
    inst.close()  # idempotent
    with pytest.raises(FatalError, match="closed"):
        inst.get_scans([1])


def test_bad_sql_is_fatal(seeded_db: str) -> None:
    inst = db_instance(seeded_db, sql={"scans": "SELECT nope FROM nowhere WHERE id = ANY(%(ids)s)"})
    with pytest.raises(FatalError, match="UndefinedTable"):
        inst.get_scans([101])
    inst.close()


# --- 3. against the reference platform server ----------------------------------------


@pytest.fixture
def ref(platform_db: str, tmp_path: Path) -> Iterator[RefServer]:
    with RefServer(platform_db, tmp_path / "platform", processing_delay=0.05) as srv:
        srv.faults.timeout_sleep = 1.5  # the instance's read timeout is 1 s
        srv.faults.retry_after = 2.0
        yield srv
    assert srv.errors == []


@pytest.fixture
def ref_instance(ref: RefServer, monkeypatch: pytest.MonkeyPatch,
                 sleeps: Sleeps) -> Iterator[PlatformInstance]:
    monkeypatch.setenv(USER_ENV, ref.username)
    monkeypatch.setenv(PASSWORD_ENV, ref.password)
    inst = ref_platform(ref, sleeps)
    yield inst
    inst.close()


def ref_platform(ref: RefServer, sleeps: Sleeps, chunk_size: int = 5000,
                 attempts: int = 6) -> PlatformInstance:
    params = pg.dsn_params(ref.dsn)
    db = {"host": params.get("host") or "127.0.0.1", "port": int(params.get("port") or 5432),
          "dbname": params["dbname"], "user": params.get("user") or "postgres"}
    cfg = platform_config(ref.api_url, db=db, timeout_seconds=1.0, max_connections=8)
    return PlatformInstance("ref", cfg, policy=fast_policy(attempts=attempts, sleep=sleeps),
                            chunk_size=chunk_size)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_to(inst: PlatformInstance, file_id: int, path: Path) -> Any:
    with path.open("w+b") as dest:
        return inst.fetch_file(FileRef(file_id), dest)


def test_ref_fetch_is_byte_identical_and_never_authorized_at_the_blob_host(
        ref: RefServer, ref_instance: PlatformInstance, tmp_path: Path) -> None:
    seeded = ref.seed(scans=2, files_per_scan=2, file_size=(100_000, 3_000_000))
    for f in seeded.all_files():
        fetched = fetch_to(ref_instance, f.file_id, tmp_path / "f.bin")
        assert sha256_of(tmp_path / "f.bin") == seeded.sha256(f.file_id)
        assert fetched.size == f.size and fetched.original_filename == f.original_filename
    blob = ref.blob_requests
    assert len(blob) == 4
    assert all("authorization" not in {k.lower() for k in r.headers} for r in blob)
    assert ref.stats.count("login", 200) == 1


@pytest.mark.parametrize("endpoint", ["file", "blob"])
def test_ref_fetch_recovers_from_every_transient_fault(
        ref: RefServer, ref_instance: PlatformInstance, tmp_path: Path, sleeps: Sleeps,
        endpoint: str) -> None:
    seeded = ref.seed(scans=1, files_per_scan=1, file_size=400_000)
    file_id = seeded.all_files()[0].file_id
    kinds = sorted(Fault)  # every kind; reset_after_commit is a plain reset here
    for kind in kinds:
        ref.faults.next(kind, endpoint=endpoint)
        path = tmp_path / f"{kind}.bin"
        path.write_bytes(b"stale bytes from an earlier try" * 1000)
        fetch_to(ref_instance, file_id, path)
        assert sha256_of(path) == seeded.sha256(file_id), kind
    assert len(sleeps.waits) == len(kinds)  # one retry per injected fault
    assert min(w for w in sleeps.waits if w >= 1.0) >= 2.0  # the 429's Retry-After


def test_ref_truncated_body_is_retried(ref: RefServer, ref_instance: PlatformInstance,
                                       tmp_path: Path) -> None:
    seeded = ref.seed(scans=1, files_per_scan=1, file_size=2_500_000)
    file_id = seeded.all_files()[0].file_id
    ref.faults.next(Fault.TRUNCATE, endpoint="blob", count=2)
    fetched = fetch_to(ref_instance, file_id, tmp_path / "t.bin")
    assert fetched.size == 2_500_000
    assert sha256_of(tmp_path / "t.bin") == seeded.sha256(file_id)
    assert ref.stats.count("blob", "truncate") == 2 and ref.stats.count("blob", 200) == 1


def test_ref_relogin_after_the_token_expires(ref: RefServer, ref_instance: PlatformInstance,
                                             tmp_path: Path) -> None:
    seeded = ref.seed(scans=1, files_per_scan=3)
    files = seeded.all_files()
    fetch_to(ref_instance, files[0].file_id, tmp_path / "a.bin")
    assert ref.expire_tokens() == 1
    threads = [threading.Thread(target=fetch_to, args=(ref_instance, f.file_id,
                                                       tmp_path / f"{f.file_id}.bin"))
               for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in files:
        assert sha256_of(tmp_path / f"{f.file_id}.bin") == seeded.sha256(f.file_id)
    assert ref.stats.count("login", 200) == 2
    assert ref.stats.count("file", 401) >= 1


def test_ref_missing_file_is_permanent_with_the_servers_message(
        ref: RefServer, ref_instance: PlatformInstance, tmp_path: Path) -> None:
    seeded = ref.seed(scans=1, files_per_scan=1)
    file_id = seeded.all_files()[0].file_id
    ref.faults.fail_file(file_id, 404)
    with pytest.raises(PermanentError, match=rf"file {file_id}: HTTP 404.*Not found\."):
        fetch_to(ref_instance, file_id, tmp_path / "x.bin")
    with pytest.raises(PermanentError, match="HTTP 404"):
        fetch_to(ref_instance, 987654, tmp_path / "y.bin")
    assert ref.stats.count("file", 404) == 2  # not retried


def test_ref_upload_and_create_then_find_by_marker(
        ref: RefServer, ref_instance: PlatformInstance, tmp_path: Path) -> None:
    seeded = ref.seed(scans=1, files_per_scan=2, file_size=1_500_000)
    ref.faults.next(Fault.HTTP_503, endpoint="upload")
    ref.faults.next(Fault.RESET, endpoint="upload")
    upload_ids = []
    for f in seeded.all_files():
        path = tmp_path / f"{f.file_id}.jpg"
        fetch_to(ref_instance, f.file_id, path)
        upload_id = ref_instance.upload_file(path, f.original_filename)
        assert ref.file_sha256(upload_id) == seeded.sha256(f.file_id)
        upload_ids.append(upload_id)
    marker = f"{seeded.scan_ids[0]}@{seeded.store_ids[0]}"
    payload = {"store": seeded.store_ids[0], "files": upload_ids,
               "captured_at": "2026-01-02T12:00:00+00:00", "scanrelay_ref": marker}
    scan_id = ref_instance.create_scan(payload)
    assert ref.received_creates[-1].payload == payload
    assert ref_instance.find_scan_by_marker("scanrelay_ref", marker) == scan_id
    assert ref_instance.find_scan_by_marker("scanrelay_ref", marker + "x") is None
    ref.wait_processed()
    [scan] = ref_instance.get_scans([scan_id])
    assert [f.file_id for f in scan.files] == sorted(upload_ids)
    assert scan.processed == (scan.details is not None)


@pytest.mark.parametrize("kind", [Fault.RESET_AFTER_COMMIT, Fault.TIMEOUT, Fault.HTTP_500,
                                  Fault.HTTP_502, Fault.HTTP_504, Fault.RESET])
def test_ref_create_is_not_resent_after_an_ambiguous_failure(
        ref: RefServer, ref_instance: PlatformInstance, kind: Fault) -> None:
    seeded = ref.seed(scans=1, files_per_scan=1)
    upload_id = ref_instance.upload_file(_seed_file(ref, seeded, ref_instance), "a.jpg")
    payload = {"store": seeded.store_ids[0], "files": [upload_id],
               "captured_at": "2026-01-02T12:00:00+00:00", "scanrelay_ref": f"amb-{kind}"}
    ref.faults.next(kind, endpoint="create")
    with pytest.raises(TransientError):
        ref_instance.create_scan(payload)
    assert len(ref.received_creates) == 1
    found = ref_instance.find_scan_by_marker("scanrelay_ref", f"amb-{kind}")
    # Only the reset after commit created the scan; the lookup tells the caller so.
    assert (found is not None) == (kind == Fault.RESET_AFTER_COMMIT)
    created = ref.created_scan_ids()
    assert found == (created[0] if created else None)


@pytest.mark.parametrize("kind", [Fault.HTTP_429, Fault.HTTP_503, Fault.HTTP_408])
def test_ref_create_is_resent_after_a_refusal(ref: RefServer, ref_instance: PlatformInstance,
                                              kind: Fault) -> None:
    seeded = ref.seed(scans=1, files_per_scan=1)
    upload_id = ref_instance.upload_file(_seed_file(ref, seeded, ref_instance), "a.jpg")
    ref.faults.next(kind, endpoint="create")
    scan_id = ref_instance.create_scan({"store": seeded.store_ids[0], "files": [upload_id],
                                        "captured_at": "2026-01-02T12:00:00+00:00"})
    assert ref.created_scan_ids() == [scan_id]
    assert len(ref.received_creates) == 2


def test_ref_invalid_create_is_permanent_with_the_field_errors(
        ref: RefServer, ref_instance: PlatformInstance) -> None:
    ref.seed(scans=0)
    with pytest.raises(PermanentError, match="HTTP 400.*files"):
        ref_instance.create_scan({"store": 1, "files": [], "captured_at": "2026-01-01"})


def _seed_file(ref: RefServer, seeded: SeedResult, inst: PlatformInstance) -> Path:
    path = ref.data_dir / "copy.jpg"
    fetch_to(inst, seeded.all_files()[0].file_id, path)
    return path


def test_ref_get_scans_details_match_the_servers_reading(
        ref: RefServer, ref_instance: PlatformInstance) -> None:
    seeded = ref.seed(scans=12, files_per_scan=2, additional_share=0.5)
    scans = ref_instance.get_scans(list(reversed(seeded.scan_ids)))
    assert [s.id for s in scans] == list(reversed(seeded.scan_ids))
    assert any(s.details and s.details.is_additional_section for s in scans)
    for scan in scans:
        expected = ref.scan_details(scan.id)
        assert expected is not None and scan.details is not None and scan.processed
        got = scan.details
        for name in ("store_planogram_id", "planogram_name", "section_id", "section_name",
                     "is_additional_section", "pre_pog", "post_pog", "pre_osa", "post_osa",
                     "ok_count", "wandering_count", "oos_count", "hole_count"):
            assert getattr(got, name) == expected[name], (scan.id, name)
        truth = seeded.truths[scan.id].values
        assert (got.planogram_name, got.section_name, got.pre_pog) == (
            truth.planogram_name, truth.section_name, truth.pre_compliance)
        assert [f.file_id for f in scan.files] == sorted(f.file_id for f in seeded.files[scan.id])
        assert scan.captured_at is not None and scan.captured_at.startswith(
            scan.created_at[:10] if scan.created_at else "")


def test_ref_get_scans_in_chunks(ref: RefServer, monkeypatch: pytest.MonkeyPatch,
                                 sleeps: Sleeps) -> None:
    monkeypatch.setenv(USER_ENV, ref.username)
    monkeypatch.setenv(PASSWORD_ENV, ref.password)
    seeded = ref.seed(scans=10, files_per_scan=1)
    inst = ref_platform(ref, sleeps, chunk_size=3)
    asked = [*seeded.scan_ids[::-1], 10_000_000]
    scans = inst.get_scans(asked)
    assert [s.id for s in scans] == seeded.scan_ids[::-1]
    assert all(s.details is not None and len(s.files) == 1 for s in scans)
    inst.close()


def test_ref_select_scans_by_store_and_days(ref: RefServer,
                                            ref_instance: PlatformInstance) -> None:
    end = datetime(2025, 8, 10, 12, 0, tzinfo=UTC)
    seeded = ref.seed(scans=10, files_per_scan=1, stores=2, captured_end=end)
    ids = seeded.scan_ids  # captured 08-01 .. 08-10 at 12:00, created 7 minutes later
    selected = ref_instance.select_scans(
        Selection(captured_from=date(2025, 8, 3), captured_to=date(2025, 8, 5)))
    assert selected == ids[2:5]
    store = seeded.store_ids[0]
    in_store = [s.id for s in ref_instance.get_scans(ids) if s.store_id == store]
    assert ref_instance.select_scans(Selection(store_id=store)) == in_store
    assert ref_instance.select_scans(Selection(status="done", limit=3)) == ids[:3]
    assert ref_instance.select_scans(Selection(captured_from=date(2025, 8, 11))) == []
