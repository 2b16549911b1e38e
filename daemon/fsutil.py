"""Small file-system helpers: atomic writes, clash-free names, ignored names."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Read once at import (single-threaded then): os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)
# The temporaries of the programs that write into shared folders (README "Request
# files" names each): hidden names (rsync's `.name.XXXXXX`, LibreOffice's
# `.~lock.name#`, vim's `.name.swp`, our own claims), Office owner files `~$name`,
# LibreOffice's `lu*.tmp` and other `.tmp`, downloads in progress, editor backups `name~`.
IGNORED_PREFIXES = (".", "~$")
IGNORED_SUFFIXES = (".tmp", ".part", ".swp", ".crdownload", "~")


def is_ignored_name(name: str) -> bool:
    """SPEC §3: hidden, Office lock, temporary, partial-download and backup names are
    never requests."""
    return name.startswith(IGNORED_PREFIXES) or name.lower().endswith(IGNORED_SUFFIXES)


@contextmanager
def atomic_writer(path: Path, mode: str = "w", *, durable: bool = True) -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path``, fsync (unless not ``durable``: readers still
    never see half a file, but a crash may lose it), then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the team
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding, newline="" if encoding else None) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    with atomic_writer(path, durable=durable) as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def write_text(path: Path, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def candidate_paths(folder: Path, name: str) -> Iterator[Path]:
    """``folder/name``, then ``folder/stem-2.ext``, ``stem-3.ext`` …: the names a file
    takes, in order, when the ones before are taken (a clash never overwrites)."""
    stem, dot, ext = name.partition(".")
    yield folder / name
    n = 2
    while True:
        yield folder / f"{stem}-{n}{dot}{ext}"
        n += 1


def unique_path(folder: Path, name: str) -> Path:
    """The first of ``candidate_paths`` that does not exist yet."""
    return next(p for p in candidate_paths(folder, name)
                if not (p.exists() or p.is_symlink()))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
