"""Streaming request bodies: Content-Length or chunked, and multipart/form-data parsed
as it arrives, the file part written to a sink chunk by chunk (never whole in memory)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Protocol

READ_SIZE = 1 << 16
MAX_FIELD_BYTES = 1 << 20
MAX_HEADER_BYTES = 16 << 10


class BadRequest(Exception):
    """The body is malformed; the message says how."""


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readline(self, size: int = ..., /) -> bytes: ...


class BodyReader:
    """Reads exactly one request body from ``rfile``: by Content-Length, or chunked."""

    def __init__(self, rfile: Readable, content_length: str | None, chunked: bool) -> None:
        self._rfile = rfile
        self._chunked = chunked
        self._left = int(content_length or 0) if not chunked else 0
        self._done = not chunked and self._left == 0

    def read(self, size: int = READ_SIZE) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the body."""
        if self._done:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(size, self._left))
            if not data:
                raise BadRequest("body shorter than Content-Length")
            self._left -= len(data)
            self._done = self._left == 0
            return data
        if self._left == 0:
            self._left = self._next_chunk_size()
            if self._left == 0:
                self._done = True
                return b""
        data = self._rfile.read(min(size, self._left))
        if not data:
            raise BadRequest("chunked body ended early")
        self._left -= len(data)
        if self._left == 0:
            self._rfile.readline()  # CRLF after the chunk
        return data

    def _next_chunk_size(self) -> int:
        line = self._rfile.readline(1024)
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError as exc:
            raise BadRequest(f"bad chunk size line {line[:40]!r}") from exc
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
        return size

    def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := self.read():
            total += len(chunk)
            if total > limit:
                raise BadRequest(f"body over {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        while self.read():
            pass


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass
class FormData:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # of the file part, when there was one
    file_field: str | None = None


def boundary_of(content_type: str) -> str:
    msg = Message()
    msg["content-type"] = content_type
    if msg.get_content_type() != "multipart/form-data":
        raise BadRequest("expected multipart/form-data")
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise BadRequest("multipart body without boundary")
    return boundary


def _disposition(headers: bytes) -> tuple[str, str | None]:
    msg = Message()
    for line in headers.decode("utf-8", "replace").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            msg[key.strip()] = value.strip()
    name = msg.get_param("name", header="content-disposition")
    filename = msg.get_param("filename", header="content-disposition")
    if not isinstance(name, str):
        raise BadRequest("form part without a name")
    return name, filename if isinstance(filename, str) else None


class _Buffer:
    """A look-ahead buffer over a BodyReader."""

    def __init__(self, reader: BodyReader) -> None:
        self.reader = reader
        self.data = b""

    def fill(self) -> bool:
        chunk = self.reader.read()
        self.data += chunk
        return bool(chunk)

    def until(self, marker: bytes, limit: int) -> bytes:
        """Everything before ``marker`` (consumed with it), at most ``limit`` bytes."""
        while (idx := self.data.find(marker)) < 0:
            if len(self.data) > limit or not self.fill():
                raise BadRequest("malformed multipart body")
        head, self.data = self.data[:idx], self.data[idx + len(marker) :]
        return head

    def stream_until(self, marker: bytes, sink: Callable[[bytes], None]) -> None:
        """Pass everything before ``marker`` to ``sink`` as it arrives."""
        keep = len(marker) - 1
        while (idx := self.data.find(marker)) < 0:
            if len(self.data) > keep:
                sink(self.data[:-keep])
                self.data = self.data[-keep:]
            if not self.fill():
                raise BadRequest("multipart body ended inside a part")
        sink(self.data[:idx])
        self.data = self.data[idx + len(marker) :]


def parse_form(reader: BodyReader, boundary: str, file_sink: Sink) -> FormData:
    """Parse multipart/form-data; the (first) file part goes to ``file_sink``."""
    buf = _Buffer(reader)
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    buf.data = b"\r\n"  # so the first delimiter looks like every other
    buf.until(delimiter, MAX_HEADER_BYTES)
    form = FormData()
    while True:
        while len(buf.data) < 2 and buf.fill():
            pass
        if buf.data.startswith(b"--"):
            break
        headers = buf.until(b"\r\n\r\n", MAX_HEADER_BYTES).lstrip(b"\r\n")
        name, filename = _disposition(headers)
        if filename is not None and form.file_field is None:
            form.file_field, form.filename = name, filename
            buf.stream_until(delimiter, file_sink.write)
            continue
        value = buf.until(delimiter, MAX_FIELD_BYTES)
        form.fields[name] = value.decode("utf-8", "replace")
    reader.drain()
    return form


_TOKEN_RE = re.compile(r"^Token\s+(\S+)$")


def token_of(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Token <key>`` header."""
    match = _TOKEN_RE.match((authorization or "").strip())
    return match.group(1) if match else None
