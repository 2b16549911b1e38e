"""File bytes: deterministic generation, on-disk storage, truth headers, signed URLs.

A seeded file is ``header + filler``. The header is a JPEG start-of-image marker and a
comment segment holding ``REFSCAN1 <truth JSON>``; the filler is pseudo-random bytes
derived from a generation key, so the same key always gives the same bytes. Small
files are written to disk; big ones ("generated") are produced chunk by chunk on every
read and never held in memory or on disk.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .model import ScanTruth

CHUNK = 1 << 20
_POOL_SPAN = 1 << 16
MAGIC = b"REFSCAN1 "
_SOI_COM = b"\xff\xd8\xff\xfe"  # JPEG start of image, then a comment segment
HEADER_SCAN_LIMIT = 1 << 16  # a truth header must start within this many bytes


def encode_header(truth: ScanTruth) -> bytes:
    """The JPEG comment segment that carries ``truth``."""
    body = MAGIC + truth.encode()
    if len(body) + 2 > 0xFFFF:
        raise ValueError("truth too large for a JPEG comment segment")
    return _SOI_COM + (len(body) + 2).to_bytes(2, "big") + body


def decode_header(prefix: bytes) -> ScanTruth | None:
    """The truth in the first bytes of a file, or None when there is none."""
    if not prefix.startswith(_SOI_COM) or len(prefix) < 6:
        return None
    length = int.from_bytes(prefix[4:6], "big")
    body = prefix[6 : 4 + length]
    if len(body) != length - 2 or not body.startswith(MAGIC):
        return None
    try:
        return ScanTruth.from_json(json.loads(body[len(MAGIC) :]))
    except (ValueError, KeyError, TypeError):
        return None


def header_segment(prefix: bytes) -> bytes:
    """The truth header at the start of ``prefix``, or b"" when there is none."""
    if decode_header(prefix) is None:
        return b""
    return prefix[: 4 + int.from_bytes(prefix[4:6], "big")]


@functools.lru_cache(maxsize=8)
def _pool(gen_key: str) -> bytes:
    return random.Random(gen_key).randbytes(CHUNK + _POOL_SPAN)


def _pool_head(gen_key: str, size: int) -> bytes:
    """The first ``size`` bytes (or a few more) of ``_pool(gen_key)``, cheaply: random
    bytes come in 4-byte words, first word first, so a shorter draw is a prefix of the
    whole pool. Seeding 100,000 small files would otherwise draw 1 MiB for each."""
    return random.Random(gen_key).randbytes(-(-size // 4) * 4)


def _filler_block(gen_key: str, index: int, need: int = CHUNK) -> bytes:
    """Block ``index`` of the filler (only its first ``need`` bytes are used): its number,
    then a slice of the key's pool. Slicing a cached pool is memcpy-fast; the number makes
    every block distinct."""
    offset = (index * 40503 + 7) % _POOL_SPAN
    end = offset + min(need, CHUNK) - 8
    pool = _pool(gen_key) if need >= CHUNK else _pool_head(gen_key, end)
    return index.to_bytes(8, "big") + pool[offset : offset + CHUNK - 8]


def generated_chunks(gen_key: str, header: bytes, size: int) -> Iterator[bytes]:
    """The bytes of a generated file, in chunks of at most ``CHUNK``."""
    if header:
        yield header[:size]
    remaining = size - len(header)
    index = 0
    while remaining > 0:
        block = _filler_block(gen_key, index, remaining)
        yield block[:remaining]
        remaining -= len(block)
        index += 1


def generated_sha256(gen_key: str, header: bytes, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in generated_chunks(gen_key, header, size):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """A row of ``refserver_file``: how to produce a file's bytes."""

    id: int
    original_filename: str
    storage: str
    path: str | None
    gen_key: str | None
    header: bytes
    size: int
    sha256: str | None


class BlobStore:
    """Files under ``root``: seeded ones in ``files/``, uploads in ``uploads/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "files").mkdir(parents=True, exist_ok=True)
        (root / "uploads").mkdir(parents=True, exist_ok=True)
        self._sha_cache: dict[int, str] = {}

    def write_generated(self, gen_key: str, header: bytes, size: int) -> tuple[str, str]:
        """Write a generated file to disk; return (relative path, sha256)."""
        rel = f"files/{uuid.uuid4().hex}.bin"
        digest = hashlib.sha256()
        with open(self.root / rel, "wb") as out:
            for chunk in generated_chunks(gen_key, header, size):
                out.write(chunk)
                digest.update(chunk)
        return rel, digest.hexdigest()

    def write_bytes(self, data: bytes) -> tuple[str, str]:
        """Write exactly ``data`` to disk; return (relative path, sha256)."""
        rel = f"files/{uuid.uuid4().hex}.bin"
        (self.root / rel).write_bytes(data)
        return rel, hashlib.sha256(data).hexdigest()

    def chunks(self, record: FileRecord) -> Iterator[bytes]:
        """Stream a file's bytes."""
        if record.storage == "generated":
            yield from generated_chunks(record.gen_key or "", record.header, record.size)
            return
        with open(self.root / (record.path or ""), "rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk

    def sha256(self, record: FileRecord) -> str:
        """The file's sha256 (computed once for generated files, then cached)."""
        if record.sha256:
            return record.sha256
        if record.id not in self._sha_cache:
            self._sha_cache[record.id] = generated_sha256(
                record.gen_key or "", record.header, record.size
            )
        return self._sha_cache[record.id]

    def new_upload(self) -> UploadSink:
        return UploadSink(self.root, f"uploads/{uuid.uuid4().hex}.bin")


class UploadSink:
    """Receives one uploaded file: written to disk as it arrives, hashed on the way."""

    def __init__(self, root: Path, rel: str) -> None:
        self.root = root
        self.rel = rel
        self.size = 0
        self.prefix = b""
        self._digest = hashlib.sha256()
        self._out: BinaryIO = open(root / rel, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        if len(self.prefix) < HEADER_SCAN_LIMIT:
            self.prefix += data[: HEADER_SCAN_LIMIT - len(self.prefix)]
        self._out.write(data)
        self._digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        self._out.close()

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def discard(self) -> None:
        self.close()
        (self.root / self.rel).unlink(missing_ok=True)


class UrlSigner:
    """Pre-signed download URLs: ``/blob/<id>?expires=<unix>&sig=<hmac>``."""

    def __init__(self, ttl: float = 3600.0, secret: bytes | None = None) -> None:
        self.ttl = ttl
        self._secret = secret or os.urandom(32)

    def _sig(self, file_id: int, expires: int) -> str:
        msg = f"{file_id}:{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def path(self, file_id: int) -> str:
        expires = int(time.time() + self.ttl)
        return f"/blob/{file_id}?expires={expires}&sig={self._sig(file_id, expires)}"

    def check(self, file_id: int, expires: str, sig: str) -> str | None:
        """None when valid, else the reason it is not."""
        try:
            when = int(expires)
        except ValueError:
            return "malformed expires"
        if not hmac.compare_digest(self._sig(file_id, when), sig):
            return "signature does not match"
        if when < time.time():
            return "request has expired"
        return None
