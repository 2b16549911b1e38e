"""Checking request files, and what a claim is.

A request is claimed from ``inbox/`` into ``processing/`` so that only one claimer wins
(``daemon.intake.claimer``); no request runs twice. The claimed name carries what a
restart needs to resume it: ``<stamp>-<hex>+<profile or ->+<original name>``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from daemon.fsutil import is_ignored_name
from daemon.layout import Layout

NO_PROFILE = "-"


@dataclass(frozen=True)
class Claimed:
    """A request file in ``processing/``."""

    path: Path
    claim_id: str  # YYYYMMDD-HHMMSS-<6 hex>
    profile: str | None
    name: str  # as dropped

    def run_id(self, action: str) -> str:
        stamp, hex6 = self.claim_id.rsplit("-", 1)
        return f"{stamp}-{action}-{hex6}"

    def run_dir(self, runs: Path) -> Path | None:
        """This claim's run folder under ``runs/`` if it has one yet (its action is
        known only once the request was parsed, so it is looked up by stamp and hex)."""
        stamp, hex6 = self.claim_id.rsplit("-", 1)
        found = sorted(runs.glob(f"{stamp}-*-{hex6}"))
        return found[0] if found else None

    @classmethod
    def from_path(cls, path: Path) -> Claimed | None:
        """Parse a ``processing/`` name; None for a name we did not make."""
        parts = path.name.split("+", 2)
        if len(parts) != 3 or len(parts[0]) != 22:
            return None
        claim_id, profile, name = parts
        return cls(path, claim_id, None if profile == NO_PROFILE else profile, name)


def new_claim_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def profile_of(path: Path, inbox: Path) -> str | None:
    """``inbox/<profile>/file`` → profile; ``inbox/file`` → None."""
    rel = path.relative_to(inbox)
    return rel.parts[0] if len(rel.parts) == 2 else None


def refusal(path: Path, inbox: Path, profiles: set[str], max_bytes: int,
            info: os.stat_result | None = None) -> str | None:
    """Why ``path`` cannot be a request (it then goes to ``failed/``), or None.
    ``info``: its ``lstat`` if the caller has it (one call less per request)."""
    try:
        info = info or path.lstat()
    except FileNotFoundError:
        return None  # gone meanwhile: nothing to refuse
    if len(path.relative_to(inbox).parts) > 2:
        return "requests go in inbox/ or inbox/<profile>/, not deeper; move it up"
    reason = file_refusal(info, max_bytes)
    if reason is not None:
        return reason
    profile = profile_of(path, inbox)
    if profile is not None and profile not in profiles:
        known = ", ".join(sorted(profiles)) or "(none)"
        return f"inbox/{profile}/ is not a configured profile ({known}); use one of those folders"
    return None


def file_refusal(info: os.stat_result, max_bytes: int) -> str | None:
    """Why a file with this ``lstat`` cannot be a request, wherever it lies, or None."""
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link is not accepted; copy the file itself into the inbox"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a directory, pipe or device); drop a request file"
    if info.st_size > max_bytes:
        return (f"the file is {info.st_size} bytes, over limits.max_request_bytes "
                f"({max_bytes}); split it into smaller requests")
    return None


def is_candidate(path: Path, inbox: Path) -> bool:
    """A name the intake looks at: not ignored, and inside the inbox. (A directory
    directly in the inbox is a profile folder, not a request: the caller, which has
    its ``lstat``, tells.)"""
    if is_ignored_name(path.name):
        return False
    try:
        return bool(path.relative_to(inbox).parts)
    except ValueError:
        return False


def inbox_path(claimed: Claimed, layout: Layout) -> Path:
    folder = layout.inbox / claimed.profile if claimed.profile else layout.inbox
    return folder / claimed.name


def pending_claims(layout: Layout, *, repair: bool = True) -> list[Claimed]:
    """Requests in ``processing/``, oldest first. At start (``repair``), a claim made by
    an older scanrelay (a link, then an unlink of the inbox name) that crashed between
    the two still has its inbox name: that name is removed, so the request is resumed
    once and not claimed again."""
    found = (Claimed.from_path(p) for p in layout.processing.iterdir()
             if not is_ignored_name(p.name))
    claims = sorted((c for c in found if c is not None), key=lambda c: c.claim_id)
    for claimed in claims if repair else []:
        original = inbox_path(claimed, layout)
        with contextlib.suppress(OSError):
            if os.path.samestat(original.lstat(), claimed.path.lstat()):
                original.unlink()
    return claims
