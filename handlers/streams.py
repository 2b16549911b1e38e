"""File plumbing shared by actions: a hashing, stop-aware sink for downloads."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from daemon.errors import Interrupted

CHUNK = 1024 * 1024
THREAD_HASH_BYTES = 64 * 1024  # smaller chunks are hashed at once: a hand-over costs more
HASH_THREADS = 16  # at most one per transfer in flight; more transfers wait their turn


class HashingSink:
    """Wraps an open binary file: hashes what is written, counts it, and raises
    ``Interrupted`` when the daemon stops, so even a huge transfer yields within a chunk.
    An instance that retries rewinds with ``seek(0)`` + ``truncate()``: the hash restarts.

    A chunk is hashed on a helper thread while the caller writes it and receives the
    next one (hashlib and file writes release the GIL): a download takes about the
    longer of receiving and hashing, not their sum. One chunk at most is in flight, so
    order and memory are kept."""

    def __init__(self, file: BinaryIO, stop: threading.Event) -> None:
        self._file = file
        self._stop = stop
        self._hash = hashlib.sha256()
        self._pending: Future[None] | None = None
        self.size = 0
        self.head = b""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._stop.is_set():
            raise Interrupted("stopping during a transfer")
        data = bytes(data)  # a no-op for bytes; a buffer the caller reuses is copied
        if self.size < 16:
            self.head = (self.head + data)[:16]
        self._hashed()
        if len(data) >= THREAD_HASH_BYTES:
            self._pending = _hashers().submit(self._hash.update, data)
        else:
            self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def _hashed(self) -> None:
        """Wait until every chunk written so far is hashed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError("a hashing sink can only rewind to the start")
        self._hashed()
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""
        return self._file.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self._file.truncate(size)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    @property
    def sha256(self) -> str:
        self._hashed()
        return self._hash.hexdigest()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


@functools.cache
def _hashers() -> ThreadPoolExecutor:
    """The helper threads of every sink (created on first use, as many as needed)."""
    return ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="sha256")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_complete(path: Path, size: int, sha256: str) -> bool:
    """A file already downloaded is reused only if size and hash both match."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != size:
            return False
    except OSError:
        return False
    return sha256_of(path) == sha256
