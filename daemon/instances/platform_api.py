"""The HTTP side of a platform instance (SPEC §8): token login, file metadata and bytes,
streaming upload, scan creation.

Credentials stay on the API's origin. Both sessions follow no redirect by themselves
(``allow_redirects=False``); ``_open_download`` follows them hop by hop and attaches
the token only when a hop's scheme, host and port are the API's. The session for other
hosts carries an auth object that strips any Authorization header, which also keeps
``requests`` from adding ``~/.netrc`` credentials.
"""

from __future__ import annotations

import json
import mimetypes
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urljoin, urlsplit

import requests
from loguru import logger
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests_toolbelt import MultipartEncoder

from daemon.errors import FatalError, PermanentError
from daemon.instances.base import FetchedFile, FileRef
from daemon.instances.sessions import EnvOnceSession
from daemon.redact import redact, register_secret
from daemon.retry import (
    NOT_PROCESSED_CAUSES,
    ClassifiedTransientError,
    RetryPolicy,
    classify_response,
    response_excerpt,
    translate_request_errors,
)

DEFAULT_API_PATHS: dict[str, str] = {
    "login": "/api/v4/token-auth/",
    "file_metadata": "/api/v1/master-data/file-upload/{file_id}/",
    "upload": "/api/v4/processing/upload/",
    "create_scan": "/api/v4/processing/actions/",
}
CHUNK_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}

Credentials = Callable[[], tuple[str, str]]
RequestArgs = dict[str, Any]


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``, lower-cased, with the scheme's default port."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme, 0)


def is_safe_to_resend(exc: BaseException) -> bool:
    """Whether a failed non-idempotent request surely did not reach the server's
    processing (no connection made, or 408/429/503): only then may it be resent."""
    return isinstance(exc, ClassifiedTransientError) and exc.cause in NOT_PROCESSED_CAUSES


class _TokenAuth(AuthBase):
    """``Authorization: Token <token>``, applied per request (the session stays shared
    and unmodified across threads)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Token {self._token}"
        return r

    def __repr__(self) -> str:
        return "_TokenAuth(***)"


class _NoAuth(AuthBase):
    """Removes any Authorization header; as a session's or request's auth it also stops
    ``requests`` from looking up ``~/.netrc``."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


def _session(max_connections: int, hosts: int) -> requests.Session:
    session = EnvOnceSession()
    # Retries are ours (daemon.retry), never urllib3's: max_retries=0.
    adapter = HTTPAdapter(pool_connections=hosts, pool_maxsize=max_connections,
                          max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class PlatformApi:
    """A thread-safe client of one platform's HTTP API. Every public method retries
    transient failures under ``policy`` and raises ``TransientError`` (retries spent),
    ``PermanentError`` (this item) or ``FatalError`` (login refused, API misconfigured)."""

    def __init__(self, name: str, api_url: str, credentials: Credentials, policy: RetryPolicy,
                 *, api_paths: Mapping[str, str] | None = None, max_connections: int = 16,
                 timeout: float = 60.0) -> None:
        unknown = set(api_paths or {}) - set(DEFAULT_API_PATHS)
        if unknown:
            raise FatalError(f"instance {name}: unknown api_paths {sorted(unknown)}; "
                             f"known: {', '.join(DEFAULT_API_PATHS)}")
        self.name = name
        self.api_url = api_url.rstrip("/")
        self._origin = origin(self.api_url)
        self._paths = {**DEFAULT_API_PATHS, **(api_paths or {})}
        self._credentials = credentials
        self._policy = policy
        self._timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self._api = _session(max_connections, hosts=2)
        self._blob = _session(max_connections, hosts=8)
        self._blob.auth = _NoAuth()
        self._lock = threading.Lock()
        self._token: str | None = None
        self._generation = 0  # bumped at each login; tells a stale 401 from a fresh one
        self._password: str | None = None

    # --- public operations -----------------------------------------------------------

    def fetch_file(self, ref: FileRef, dest: BinaryIO) -> FetchedFile:
        """Stream the bytes of ``ref`` into ``dest``; each try asks for the URL anew
        (a pre-signed one may have expired) and rewinds and truncates ``dest``."""
        what = f"file {ref.file_id}"

        def attempt() -> FetchedFile:
            url, original = self._file_location(ref.file_id, what)
            size = self._download(url, dest, what)
            return FetchedFile(original or ref.filename or _url_filename(url), size)

        return self._policy.call(attempt, f"fetch {what}")

    def upload_file(self, path: Path, filename: str) -> int:
        """Upload ``path`` as ``filename`` (streaming multipart); returns the upload ID.
        Retried on every transient failure: a duplicate upload is only an unused file."""
        what = f"upload {filename}"
        url = self._url("upload")
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"

        def attempt() -> int:
            with ExitStack() as stack:
                def build() -> RequestArgs:  # once per send: the file is reopened each time
                    handle = stack.enter_context(_open_local(path, what))
                    encoder = MultipartEncoder(
                        fields={"input_type": "image", "file": (filename, handle, mime)})
                    return {"data": encoder, "headers": {"Content-Type": encoder.content_type}}
                return _id_of(self._api_json("POST", url, what, build), what)

        return self._policy.call(attempt, what)

    def create_scan(self, payload: Mapping[str, Any]) -> int:
        """Create a scan; returns its ID. Not idempotent, so a try is repeated only when
        the request surely was not processed (``is_safe_to_resend``); after a reset or a
        read timeout the ``TransientError`` goes to the caller, which looks up the
        marker before creating again."""
        what = "create scan"
        try:
            body = json.dumps(dict(payload)).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"{what}: payload is not JSON: {exc}") from exc
        url = self._url("create_scan")

        def build() -> RequestArgs:
            return {"data": body, "headers": {"Content-Type": "application/json"}}

        return self._policy.call(lambda: _id_of(self._api_json("POST", url, what, build), what),
                                 what, retry_if=is_safe_to_resend)

    def login(self) -> None:
        """Log in now (normally done on first use). Raises ``FatalError`` if refused."""
        with self._lock:
            self._token = self._login()
            self._generation += 1

    def close(self) -> None:
        """Close both sessions. Idempotent."""
        self._api.close()
        self._blob.close()

    # --- authentication --------------------------------------------------------------

    def _secrets(self) -> tuple[str | None, ...]:
        return (self._password, self._token)

    def _current_token(self) -> tuple[str, int]:
        with self._lock:
            if self._token is None:
                self._token = self._login()
                self._generation += 1
            return self._token, self._generation

    def _relogin(self, seen_generation: int) -> None:
        """Log in again unless another thread already did since ``seen_generation``."""
        with self._lock:
            if self._generation == seen_generation:
                logger.info("instance {}: token refused, logging in again", self.name)
                self._token = self._login()
                self._generation += 1

    def _login(self) -> str:
        username, password = self._credentials()
        self._password = password
        register_secret(password)
        url = self._url("login")

        def attempt() -> str:
            with translate_request_errors(self._secrets(), "log in"):
                resp = self._api.post(url, json={"username": username, "password": password},
                                      auth=_NoAuth(), timeout=self._timeout,
                                      allow_redirects=False)
            with closing(resp):
                self._refuse_redirect(resp, "log in")
                if resp.status_code in (400, 401, 403):
                    raise FatalError(f"instance {self.name}: login refused for {username}: "
                                     f"HTTP {resp.status_code}: "
                                     f"{response_excerpt(resp, self._secrets())}")
                classify_response(resp, self._secrets(), "log in")
                token = _json(resp, "log in").get("token")
            if not isinstance(token, str) or not token:
                raise FatalError(f"instance {self.name}: login answer has no token")
            return token

        try:
            # Under self._lock, which other calls wait for holding their slots: this
            # call keeps its slot through its waits.
            token = self._policy.call(attempt, f"log in to {self.name}", keep_slots=True)
        except PermanentError as exc:
            raise FatalError(f"instance {self.name}: cannot log in: {exc}") from exc
        register_secret(token)
        logger.info("instance {}: logged in as {}", self.name, username)
        return token

    # --- requests to the API ---------------------------------------------------------

    def _url(self, key: str, **fields: Any) -> str:
        return self.api_url + self._paths[key].format(**fields)

    def _send(self, method: str, url: str, what: str, build: Callable[[], RequestArgs],
              *, stream: bool = False) -> requests.Response:
        """One request to the API's origin with the token. On 401: log in again (once for
        all threads) and resend once; a second 401 is ``FatalError``. ``build`` makes
        the request's arguments for each send (a streamed body cannot be sent twice)."""
        if origin(url) != self._origin:  # the token must never leave the API's origin
            raise FatalError(f"{what}: refusing to send the token to another origin")
        token, generation = self._current_token()
        resp = self._request(method, url, what, token, build(), stream)
        if resp.status_code != 401:
            return resp
        resp.close()
        self._relogin(generation)
        token, _ = self._current_token()
        resp = self._request(method, url, what, token, build(), stream)
        if resp.status_code == 401:
            with closing(resp):
                raise FatalError(f"instance {self.name}: {what}: HTTP 401 again after a "
                                 f"fresh login: {response_excerpt(resp, self._secrets())}")
        return resp

    def _request(self, method: str, url: str, what: str, token: str, args: RequestArgs,
                 stream: bool) -> requests.Response:
        with translate_request_errors(self._secrets(), what):
            return self._api.request(method, url, auth=_TokenAuth(token), stream=stream,
                                     timeout=self._timeout, allow_redirects=False, **args)

    def _api_json(self, method: str, url: str, what: str,
                  build: Callable[[], RequestArgs] = dict) -> dict[str, Any]:
        """Send to the API and return its JSON object answer, classified."""
        with closing(self._send(method, url, what, build)) as resp:
            self._refuse_redirect(resp, what)
            classify_response(resp, self._secrets(), what)
            return _json(resp, what)

    def _refuse_redirect(self, resp: requests.Response, what: str) -> None:
        # An API call that redirects means api_url or api_paths is wrong for every item.
        if resp.is_redirect:
            target = redact(resp.headers.get("Location", ""), self._secrets())
            raise FatalError(f"instance {self.name}: {what}: the API answered HTTP "
                             f"{resp.status_code} to {target!r}; check api_url and api_paths")

    # --- file bytes ------------------------------------------------------------------

    def _file_location(self, file_id: int, what: str) -> tuple[str, str | None]:
        data = self._api_json("GET", self._url("file_metadata", file_id=file_id), what)
        url = data.get("file")
        if not isinstance(url, str) or not url:
            raise PermanentError(f"{what}: the metadata has no download URL")
        original = data.get("original_filename")
        return urljoin(self.api_url + "/", url), original if isinstance(original, str) else None

    def _download(self, url: str, dest: BinaryIO, what: str) -> int:
        dest.seek(0)
        dest.truncate()
        received = 0
        with closing(self._open_download(url, what)) as resp:
            classify_response(resp, self._secrets(), what)
            with translate_request_errors(self._secrets(), what):
                for chunk in resp.iter_content(chunk_size=CHUNK_BYTES):
                    dest.write(chunk)
                    received += len(chunk)
            _check_length(resp, received, what)
        dest.flush()
        return received

    def _open_download(self, url: str, what: str) -> requests.Response:
        """GET ``url``, following redirects ourselves so that each hop decides alone
        whether it may see the token (only the API's own origin may)."""
        headers = {"Accept-Encoding": "identity"}  # so Content-Length counts our bytes
        for _hop in range(MAX_REDIRECTS + 1):
            if origin(url) == self._origin:
                resp = self._send("GET", url, what, lambda: {"headers": headers}, stream=True)
            else:
                with translate_request_errors(self._secrets(), what):
                    resp = self._blob.get(url, headers=headers, stream=True,
                                          timeout=self._timeout, allow_redirects=False)
            if not resp.is_redirect:
                return resp
            resp.close()
            url = urljoin(url, resp.headers["Location"])
        raise PermanentError(f"{what}: more than {MAX_REDIRECTS} redirects")


def _check_length(resp: requests.Response, received: int, what: str) -> None:
    """Raise ``TransientError`` if fewer bytes came than Content-Length announced."""
    declared = resp.headers.get("Content-Length", "")
    if not declared.isdigit():
        return
    encoding = resp.headers.get("Content-Encoding", "identity").lower()
    # Decoded bytes cannot be compared with an encoded length; count the wire then.
    got = received if encoding in ("", "identity") else int(resp.raw.tell())
    if got < int(declared):
        raise ClassifiedTransientError(
            f"{what}: truncated body: got {got} of {declared} bytes", "truncated")


def _json(resp: requests.Response, what: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as exc:
        raise PermanentError(f"{what}: the answer is not JSON: "
                             f"{response_excerpt(resp)}") from exc
    if not isinstance(data, dict):
        raise PermanentError(f"{what}: the answer is not a JSON object")
    return data


def _id_of(data: Mapping[str, Any], what: str) -> int:
    value = data.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PermanentError(f"{what}: the answer has no id")
    try:
        return int(value)
    except ValueError as exc:
        raise PermanentError(f"{what}: the answer's id {value!r} is not an integer") from exc


def _url_filename(url: str) -> str | None:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name or None


@contextmanager
def _open_local(path: Path, what: str) -> Iterator[BinaryIO]:
    """``path.open('rb')``, with an unreadable file as ``PermanentError``."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PermanentError(f"{what}: cannot read the local file: {exc.strerror}") from exc
    with handle:
        yield handle
