"""File plumbing shared by actions: a hashing, stop-aware sink for downloads."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, BinaryIO

from daemon.errors import Interrupted

CHUNK = 1024 * 1024


class HashingSink:
    """Wraps an open binary file: hashes what is written, counts it, and raises
    ``Interrupted`` when the daemon stops, so even a huge transfer yields within a chunk.
    An instance that retries rewinds with ``seek(0)`` + ``truncate()``: the hash restarts.

    Hashing happens in the caller's thread. A helper thread that hashed one chunk while
    the next arrived was measured slower (two cores, the server beside it: 72-79 % of
    curl at 1 MiB, 53-61 % at 100 MiB, against 87-91 % and 70-75 % inline)."""

    def __init__(self, file: BinaryIO, stop: threading.Event) -> None:
        self._file = file
        self._stop = stop
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._stop.is_set():
            raise Interrupted("stopping during a transfer")
        if self.size < 16:
            self.head = (self.head + bytes(data[:16]))[:16]
        self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError("a hashing sink can only rewind to the start")
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
        return self._hash.hexdigest()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


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
