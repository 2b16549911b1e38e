"""Putting a request to rest in ``done/`` or ``failed/`` with its sidecars.

Order matters for crash safety: the sidecars are written first under the chosen name,
then the request is hard-linked beside them (a link never overwrites), then removed
from where it was. A crash at any point leaves the request where it was, and settling
again reuses the same name (our own sidecars or our own link), so a request ends in
``done/`` or ``failed/`` exactly once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.fsutil import candidate_paths, fsync_dir, write_json, write_text

RESULT = ".result.json"
ERROR = ".error.txt"
RETRY = ".retry.json"


@dataclass(frozen=True)
class Sidecars:
    result: dict[str, Any]  # must hold "claim_id": it marks the sidecars as ours
    error_text: str | None = None
    retry: dict[str, Any] | None = None


def settle(src: Path, folder: Path, name: str, sidecars: Sidecars) -> Path:
    """Move ``src`` to ``folder`` as ``name`` (or a suffixed name), with sidecars."""
    folder.mkdir(parents=True, exist_ok=True)
    claim_id = sidecars.result["claim_id"]
    for dest in candidate_paths(folder, name):
        if dest.exists() or dest.is_symlink():
            if _same_file(src, dest):  # our own link from before a crash
                _write_sidecars(dest, sidecars)
                _unlink(src, folder)
                return dest
            continue
        if _sidecar_owner(dest) not in (None, claim_id):
            continue
        _write_sidecars(dest, sidecars)
        if _place(src, dest):
            _unlink(src, folder)
            return dest
    raise AssertionError("unreachable: candidates are endless")


def _place(src: Path, dest: Path) -> bool:
    """Link ``src`` at ``dest``; False if the name was taken meanwhile."""
    try:
        os.link(src, dest, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError:
        # Directories cannot be hard-linked, nor files on some shares: rename instead.
        if dest.exists():
            return False
        os.rename(src, dest)
        return True


def _unlink(src: Path, folder: Path) -> None:
    if src.is_symlink() or (src.exists() and not src.is_dir()):
        src.unlink()  # a directory was renamed, not linked: nothing is left behind
    fsync_dir(folder)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(a.lstat(), b.lstat())
    except OSError:
        return False


def _sidecar_owner(dest: Path) -> str | None:
    result = dest.with_name(dest.name + RESULT)
    if not result.exists():
        return None
    try:
        return str(json.loads(result.read_text(encoding="utf-8")).get("claim_id"))
    except (OSError, ValueError):
        return "?"


def _write_sidecars(dest: Path, sidecars: Sidecars) -> None:
    write_json(dest.with_name(dest.name + RESULT), sidecars.result)
    if sidecars.error_text is not None:
        write_text(dest.with_name(dest.name + ERROR), sidecars.error_text)
    if sidecars.retry is not None:
        write_json(dest.with_name(dest.name + RETRY), sidecars.retry)
