"""The claim: taking a request out of the inbox so that exactly one claimer runs it,
also on network shares (NFS, SMB) and with several claimers on one inbox.

1. **Decide**: rename the inbox file to a private name beside it,
   ``.scanrelay-claim-<claim name>``, which only this claimer makes (its claim ID is
   random). Only one rename of a name can succeed. Who won is decided by what is on
   disk, never by an error code: on NFS a retransmitted ``rename`` whose first reply was
   lost answers ``ENOENT`` although it succeeded (the open(2) manual's advice for
   exclusive creation on NFS is the same: decide by ``stat``). So after any error the
   private name is looked up; if it exists, the claim is ours.
2. **Publish**: move the private name into ``processing/``. A hard link plus an unlink
   of the private name where links exist: a rename out of the watched inbox is an
   unpaired ``IN_MOVED_FROM``, which watchdog holds back 0.5 s and every event behind
   it with it. Where there are no hard links (many SMB shares), a rename.

Nothing is ever deleted on an ambiguous answer. ``EBUSY``/``EACCES``/``ETXTBSY`` (a
file another SMB client still holds open) mean "not yet": the caller looks again later.
A crash between the steps leaves the private name, which ``repair`` finishes at start.
Every file-system call goes through ``FsOps``, so tests can inject the failures above.

In cluster mode several hosts claim from one inbox. Each claimer then has a ``tag`` (its
host ID) carried by its private names, ``.scanrelay-claim-<tag>@<claim name>``, and
claim IDs that no other host can make (``new_id``), so no two claimers ever rename onto
one name. ``repair`` finishes only its own tag's names; a dead host's are finished by
``publish_stale`` (publishing is idempotent: the destination is fixed by the name).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from loguru import logger

from daemon.intake.claim import NO_PROFILE, Claimed, new_claim_id, profile_of
from daemon.layout import Layout

PRIVATE_PREFIX = ".scanrelay-claim-"
BUSY = {errno.EBUSY, errno.EACCES, errno.ETXTBSY}  # held open elsewhere: look again later
NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS,
            errno.EXDEV}  # the file system has no hard links (for us)


class FsOps(Protocol):
    """The file-system calls a claim makes (wrapped by the fault-injection tests)."""

    def rename(self, src: Path, dst: Path) -> None: ...
    def link(self, src: Path, dst: Path) -> None: ...
    def unlink(self, path: Path) -> None: ...
    def exists(self, path: Path) -> bool: ...


class OsFs:
    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def link(self, src: Path, dst: Path) -> None:
        os.link(src, dst, follow_symlinks=False)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def exists(self, path: Path) -> bool:
        try:
            os.lstat(path)
        except FileNotFoundError:
            return False
        return True


@dataclass(frozen=True)
class NotYet:
    """The file cannot be claimed now (held open elsewhere); look again later."""

    reason: str


TAG_END = "@"  # ends a claimer's tag in its private names (never in a tag or claim ID)


def private_name(claim_name: str, tag: str | None = None) -> str:
    return PRIVATE_PREFIX + (f"{tag}{TAG_END}" if tag else "") + claim_name


def claim_name_of(private: str) -> str:
    """The claim name (the name in ``processing/``) a private name stands for."""
    rest = private[len(PRIVATE_PREFIX):]
    tag, end, name = rest.partition(TAG_END)
    return name if end and "+" not in tag else rest


class Claimer:
    """Claims inbox files into ``processing/``. One per daemon (its main thread).
    ``new_id`` makes claim IDs (by default random: one claimer per inbox); ``tag``
    marks this claimer's private names (cluster mode: the host ID)."""

    def __init__(self, layout: Layout, fs: FsOps | None = None, *,
                 new_id: Callable[[], str] = new_claim_id, tag: str | None = None) -> None:
        self.layout = layout
        self.fs: FsOps = fs or OsFs()
        self.new_id = new_id
        self.tag = tag
        self.links = True  # until the file system says it has none
        self._unpublished: dict[Path, Claimed] = {}  # private name → its claim

    def claim(self, path: Path) -> Claimed | NotYet | None:
        """Claim ``path``: the claim if it is ours, ``NotYet`` if it is busy, None if
        someone else took it (or its owner took it back)."""
        profile = profile_of(path, self.layout.inbox)
        claim_id = self.new_id()
        dest = self.layout.processing / f"{claim_id}+{profile or NO_PROFILE}+{path.name}"
        private = path.with_name(private_name(dest.name, self.tag))
        try:
            self.fs.rename(path, private)
        except OSError as exc:
            if not self.fs.exists(private):  # the answer, whatever the error said
                if exc.errno == errno.ENOENT:
                    return None
                if exc.errno in BUSY:
                    return NotYet(f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: "
                                  "held open elsewhere")
                raise
        claimed = Claimed(dest, claim_id, profile, path.name)
        self._unpublished[private] = claimed
        self._publish(private, dest)
        del self._unpublished[private]
        return claimed

    def retry_unpublished(self) -> list[Claimed]:
        """Claims won whose move into ``processing/`` failed: try again (cheap when none)."""
        done = []
        for private, claimed in list(self._unpublished.items()):
            try:
                self._publish(private, claimed.path)
            except OSError as exc:
                logger.warning("claim of {} not yet in processing/: {}", claimed.name, exc)
                continue
            del self._unpublished[private]
            done.append(claimed)
        return done

    def _publish(self, private: Path, dest: Path) -> None:
        """``private`` → ``dest``. Raises ``OSError`` only when ``dest`` is not there."""
        if self.links:
            try:
                self.fs.link(private, dest)
            except OSError as exc:
                if not self.fs.exists(dest):
                    if exc.errno not in NO_LINKS:
                        raise
                    logger.info("no hard links in {}: claims rename instead ({})",
                                self.layout.root, os.strerror(exc.errno or 0))
                    self.links = False
            if self.links:
                self._forget(private)
                return
        try:
            self.fs.rename(private, dest)
        except OSError:
            if not self.fs.exists(dest):
                raise

    def _forget(self, private: Path) -> None:
        """Remove the private name once ``processing/`` holds the claim. If that fails,
        the name is harmless (ignored by the intake) and ``repair`` removes it."""
        try:
            self.fs.unlink(private)
        except FileNotFoundError:
            pass  # a retransmitted unlink: it is gone, as wanted
        except OSError as exc:
            logger.warning("could not remove {}: {}", private.name, exc)

    def repair(self) -> int:
        """At start: finish the claims a crash cut off between decide and publish (a
        private name left in the inbox). Returns how many it finished. Only this
        claimer's names (its tag): no other claimer of this inbox may be mid-claim on
        them (one daemon per root on one host; per host ID in a cluster)."""
        return self._finish(private_name("", self.tag) + "*", lambda _: True)

    def publish_stale(self, older_than: float, now: float | None = None) -> int:
        """Finish the claims of any claimer whose private name has been in the inbox
        longer than ``older_than`` seconds (by its ctime: a rename sets it): a host that
        died between decide and publish. Safe against a claimer that is only slow: both
        publish to the same destination, and publishing twice is harmless."""
        limit = (time.time() if now is None else now) - older_than
        return self._finish(PRIVATE_PREFIX + "*", lambda st: st.st_ctime <= limit)

    def _finish(self, pattern: str, due: Callable[[os.stat_result], bool]) -> int:
        finished = 0
        for folder in [self.layout.inbox, *_subfolders(self.layout.inbox)]:
            for private in folder.glob(pattern):
                try:
                    if not due(private.lstat()):
                        continue
                except FileNotFoundError:
                    continue  # published meanwhile
                dest = self.layout.processing / claim_name_of(private.name)
                if self.fs.exists(dest):
                    self._forget(private)  # published already; only the unlink was cut
                    continue
                self._publish(private, dest)
                finished += 1
        return finished


def _subfolders(inbox: Path) -> list[Path]:
    try:
        return [p for p in inbox.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
