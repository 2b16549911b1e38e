"""Where each key's records are in a checkpoint journal, without holding any record.

Built in one pass when a run (re)opens its journal: per line a 64-bit hash of its key,
its offset and its length (about 20 bytes, in arrays sorted by hash). A look-up finds a
key's lines by binary search and reads them back with ``pread``, newest first; the key
in the line is compared, so a hash collision costs a read, never a wrong record. The
key is read from the start of the line (``{"key": "...``, as ``Checkpoint.record``
writes it) so building needs no JSON parsing; a line that does not parse when read back
(torn by a crash under an older version, which kept such lines) is no record.
"""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any

KEY_PREFIX = b'{"key": "'


def key_of(line: bytes) -> bytes | None:
    """The key of a journal line as written by ``Checkpoint.record``, else None."""
    if not line.startswith(KEY_PREFIX):
        return None
    end = line.find(b'"', len(KEY_PREFIX))
    return line[len(KEY_PREFIX):end] if end > len(KEY_PREFIX) else None


def parse(line: bytes) -> dict[str, Any] | None:
    """The record of a journal line, or None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("key"), str):
        return record
    return None


class JournalIndex:
    """The lines of a journal as it was at the open, by key. Not thread-safe: the
    ``Checkpoint`` holding it serialises the calls."""

    def __init__(self, path: Path, hashes: array[int], offsets: array[int],
                 lengths: array[int]) -> None:
        self._hashes: Any = None  # numpy int64, sorted; None when there is no line
        self._offsets, self._lengths = offsets, lengths
        self._alive = bytearray(b"\x01") * len(hashes)  # 0: superseded since the open
        self._fd = os.open(path, os.O_RDONLY) if len(hashes) else None
        if len(hashes):
            self._sort(hashes)

    def _sort(self, hashes: array[int]) -> None:
        # numpy only here: a fresh run (and the daemon's start) does without its import.
        import numpy as np

        order = np.argsort(np.frombuffer(hashes, dtype=np.int64), kind="stable")
        self._hashes = np.frombuffer(hashes, dtype=np.int64)[order]
        # Plain arrays: indexing them from Python is several times faster than numpy's.
        self._offsets = array("q", np.frombuffer(self._offsets, dtype=np.int64)[order]
                              .tobytes())
        self._lengths = array("I", np.frombuffer(self._lengths, dtype=np.uint32)[order]
                              .tobytes())

    @classmethod
    def build(cls, path: Path) -> JournalIndex:
        """Index ``path`` (missing: empty), first cutting off a torn last line, so that
        the next record starts on a line of its own."""
        hashes, offsets, lengths = array("q"), array("q"), array("I")
        end = 0
        if path.exists():
            with path.open("rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break  # torn by a crash: that step was not done
                    key = key_of(line)
                    if key is not None:
                        hashes.append(hash(key))
                        offsets.append(end)
                        lengths.append(len(line))
                    end += len(line)
            if path.stat().st_size > end:
                _cut(path, end)
        return cls(path, hashes, offsets, lengths)

    def __len__(self) -> int:
        return len(self._alive)

    @property
    def nbytes(self) -> int:
        """The memory the index takes."""
        return len(self._alive) * (1 + 8 + self._offsets.itemsize + self._lengths.itemsize)

    def find(self, key: str) -> dict[str, Any] | None:
        """The newest record of ``key`` that is not superseded, or None."""
        for _, line in self._lines(key.encode()):
            record = parse(line)
            if record is not None and record["key"] == key:
                return record
        return None

    def had(self, key: str) -> bool:
        """Whether a live line's key hashes as ``key`` does: no read, so cheap enough to
        ask of every step of a run. A rare hash collision answers True wrongly, so
        ``find`` has the last word."""
        if self._fd is None:
            return False
        lo, hi = self._range(hash(key.encode()))
        return any(self._alive[pos] for pos in range(lo, hi))

    def supersede(self, key: str) -> None:
        """A newer record of ``key`` was written after the open: its lines here no longer
        count."""
        for pos, _ in self._lines(key.encode()):
            self._alive[pos] = 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _lines(self, wanted: bytes) -> list[tuple[int, bytes]]:
        """The live lines whose key is ``wanted`` (position, line), newest first."""
        if self._fd is None:
            return []
        lo, hi = self._range(hash(wanted))
        found = []
        for pos in range(hi - 1, lo - 1, -1):
            if self._alive[pos]:
                line = os.pread(self._fd, self._lengths[pos], self._offsets[pos])
                if key_of(line) == wanted:
                    found.append((pos, line))
        return found

    def _range(self, digest: int) -> tuple[int, int]:
        """The positions of the lines whose key hashes to ``digest``."""
        return (int(self._hashes.searchsorted(digest, side="left")),
                int(self._hashes.searchsorted(digest, side="right")))


def _cut(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
