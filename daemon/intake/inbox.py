"""What lies in the inbox: listing it, and telling request names from the rest."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.fsutil import is_ignored_name

REQUEST_SUFFIXES = (".json", ".csv", ".xlsx")


def is_request_name(name: str) -> bool:
    """A name that can be a request (SPEC §4); any other is refused only once still."""
    return name.lower().endswith(REQUEST_SUFFIXES)


def last_change(st: os.stat_result) -> float:
    """When a file last changed, as far as the inbox is concerned: a rename keeps the
    mtime of the file's old life but sets its ctime, so the later of the two."""
    return max(st.st_mtime, st.st_ctime)


def list_inbox(inbox: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Everything that may be a request: entries of the inbox and of its profile folders."""
    for entry in _scandir(inbox):
        if is_ignored_name(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            for child in _scandir(Path(entry.path)):
                if not is_ignored_name(child.name):
                    yield from _stat(child)
        else:
            yield from _stat(entry)


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _stat(entry: os.DirEntry[str]) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        yield Path(entry.path), entry.stat(follow_symlinks=False)
    except OSError:
        return


@dataclass(frozen=True)
class Waiting:
    """What ``scanrelay status`` and the metrics call waiting."""

    requests: int  # files with a request name
    oldest_age: float | None  # seconds since the oldest of them arrived or changed
    others: int  # files with any other name: not requests (yet), refused once still


def waiting(inbox: Path, now: float) -> Waiting:
    requests: list[float] = []
    others = 0
    for path, st in list_inbox(inbox):
        if is_request_name(path.name):
            requests.append(last_change(st))
        else:
            others += 1
    oldest = now - min(requests) if requests else None
    return Waiting(len(requests), oldest, others)
