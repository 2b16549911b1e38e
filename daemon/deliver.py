"""``deliver_to``: a run's results also placed in a folder of the team's choosing.

A request (or its profile) names a folder under one of the configured delivery roots
(``paths.deliveries``); a relative one is taken under the first root. After the run,
its images (download) or report files (copy: the mapping and, when analysed, the
analysis; analyze: the analysis) appear there as ``<folder>/<run_id>/``, whole: they
are linked (or, across file systems, copied) into a hidden temporary folder beside it
that is renamed into place last, so nobody ever sees half a delivery. The run folder
stays the record.

Anything that would leave the roots (``..``, an absolute path elsewhere, a symlink
leading out) is refused when the request is validated, and again when delivering.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from daemon.fsutil import fsync_dir

REPORTS = ("analysis.csv", "analysis.xlsx", "source_scandetails.csv",
           "target_scandetails.csv")
DELIVERED = {"download": ("images", "manifest.csv"),
             "copy": ("scan_mapping.csv", *REPORTS),
             "analyze": REPORTS}


class OutsideRoots(ValueError):
    """The folder is not under any delivery root; the message says why and names them."""


def delivery_folder(deliver_to: str, roots: Sequence[Path]) -> Path:
    """The folder ``deliver_to`` names, checked to lie under one of ``roots`` (both as
    written and with symlinks resolved). Raises ``OutsideRoots``."""
    allowed = ", ".join(str(r) for r in roots)
    if not roots:
        raise OutsideRoots("no delivery roots are configured (paths.deliveries); "
                           "remove deliver_to, or ask for a root to be configured")
    given = Path(deliver_to)
    if ".." in given.parts:
        raise OutsideRoots(f"{deliver_to!r} contains '..'; give a folder under one of the "
                           f"delivery roots: {allowed}")
    folder = Path(os.path.normpath(given if given.is_absolute() else roots[0] / given))
    real = Path(os.path.realpath(folder))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if _within(folder, Path(os.path.normpath(root))) and _within(real, root_real):
            return folder
    raise OutsideRoots(f"{deliver_to!r} is outside the delivery roots ({allowed}"
                       f"{'' if real == folder else f'; it leads to {real}'}); give a "
                       "folder under one of them")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def deliver(run_dir: Path, action: str, deliver_to: str, roots: Sequence[Path]) -> Path:
    """Place the run's deliverables as ``<folder>/<run_id>/`` (see the module doc);
    returns that path. A delivery already in place (a resumed run) is kept. Raises
    ``OutsideRoots``, or ``OSError`` when the folder cannot be written."""
    folder = delivery_folder(deliver_to, roots)
    folder.mkdir(parents=True, exist_ok=True)
    folder = delivery_folder(str(folder), roots)  # again, now that it exists
    final = folder / run_dir.name
    if final.exists():
        return final
    for stale in folder.glob(f".{run_dir.name}.*.part"):
        shutil.rmtree(stale, ignore_errors=True)  # a delivery a crash cut off
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".part", dir=folder))
    try:
        for name in DELIVERED.get(action, ()):
            source = run_dir / name
            if source.is_dir():
                shutil.copytree(source, tmp / name, copy_function=_link_or_copy)
            elif source.is_file():
                _link_or_copy(source, tmp / name)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder)
    return final


def _link_or_copy(source: str | Path, dest: str | Path) -> None:
    """A hard link where the share is the same file system (no second copy of the
    bytes; run files are never rewritten), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
