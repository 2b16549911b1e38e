"""Claiming from the shared inbox, on every host at once.

Each host lists the inbox (polling mode: no events cross a network share) and takes a
stable candidate with the one-host claim protocol (``daemon.intake.claimer``: rename to
a private name, decide by what is on disk, ``EBUSY``/``EACCES`` means later), under a
claim ID no other host can make and a private name carrying its host ID. Then, in one
transaction, the request row (with the file's bytes) and its plan job
(``enqueue``). A crash between the two leaves a file in ``processing/`` without a row:
the sweep adopts it (``sweep.adopt_orphans``). What cannot be a request (a symlink, a
folder, a file too large) is refused into ``failed/`` from the inbox, as on one host,
holding the name's cluster-wide lock and only if it is still there: one host refuses it.

At start a host never resumes ``processing/`` by scanning it: what is there belongs to
jobs, and the sweep resumes those whose host died.
"""

from __future__ import annotations

import os
import queue
import stat
from pathlib import Path

import psycopg
from loguru import logger

from daemon.cluster.enqueue import enqueue, new_claim_id
from daemon.cluster.files import under_name_lock
from daemon.cluster.runtime import Runtime
from daemon.intake.claim import Claimed, is_candidate, refusal
from daemon.intake.claimer import Claimer, NotYet
from daemon.intake.watcher import InboxWatcher, PathQueue
from daemon.runsettle import refuse


class ClusterIntake:
    """Feeds the cluster from this host's view of the inbox; call ``tick()`` often."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.paths: PathQueue = queue.Queue()
        intake = rt.config.intake.model_copy(update={"mode": "polling"})
        self.watcher = InboxWatcher(rt.layout.inbox, self.paths, intake)
        self.claimer = Claimer(rt.layout, new_id=self._new_id, tag=rt.host_id)
        self.profiles = set(rt.config.profiles)
        self._unrecorded: dict[Path, Claimed] = {}  # claimed, not yet in the database

    def start(self) -> None:
        finished = self.claimer.repair()  # this host's half claims from before a crash
        if finished:
            logger.info("finished {} claim(s) cut off by a crash (the sweep records them)",
                        finished)
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    def waiting(self) -> int:
        return self.paths.qsize() + len(self._unrecorded)

    def tick(self) -> None:
        """List when due, claim what is ready, record what was claimed. Raises
        ``psycopg.Error`` when PostgreSQL does not answer (nothing is lost: a claim not
        yet recorded is kept and recorded later, by this host or by the sweep)."""
        self.watcher.tick()
        for claimed in self.claimer.retry_unpublished():
            self._unrecorded[claimed.path] = claimed
        self._record_pending()
        while True:
            try:
                path = self.paths.get_nowait()
            except queue.Empty:
                return
            self._intake(path)

    def _new_id(self) -> str:
        with self.rt.pool.connection() as conn:
            return new_claim_id(conn)

    def _intake(self, path: Path) -> None:
        inbox = self.rt.layout.inbox
        if not is_candidate(path, inbox):
            return
        try:
            info = path.lstat()
            if path.parent == inbox and stat.S_ISDIR(info.st_mode):
                for child in sorted(path.iterdir()):  # a profile folder moved in whole
                    self.paths.put(child)
                return
            self._take(path, info)
        except FileNotFoundError:
            return  # gone (claimed by another host, or taken back by its owner)
        except psycopg.Error:
            self.paths.put(path)  # PostgreSQL is away: look at it again once it is back
            raise
        except OSError as exc:  # never stop the daemon
            logger.warning("could not take {}: {}", path.relative_to(inbox), exc)

    def _take(self, path: Path, info: os.stat_result) -> None:
        reason = refusal(path, self.rt.layout.inbox, self.profiles,
                         self.rt.config.limits.max_request_bytes, info)
        if reason is not None:
            self._refuse(path, reason)
            return
        claimed = self.claimer.claim(path)
        if isinstance(claimed, NotYet):
            logger.debug("{} is busy ({}); looking again shortly", path.name, claimed.reason)
            self.watcher.later(path)
        elif claimed is not None:
            logger.bind(run=claimed.claim_id).info("claimed {}",
                                                   path.relative_to(self.rt.layout.inbox))
            self._unrecorded[claimed.path] = claimed
            self._record_pending()

    def _record_pending(self) -> None:
        for key, claimed in list(self._unrecorded.items()):
            self._record(claimed)
            del self._unrecorded[key]

    def _record(self, claimed: Claimed) -> None:
        try:
            body = claimed.path.read_bytes()
        except FileNotFoundError:
            return  # the sweep adopted it and its run settled it already
        with self.rt.pool.connection() as conn, conn.transaction():
            if not enqueue(conn, claim_id=claimed.claim_id, name=claimed.name,
                           profile=claimed.profile, body=body,
                           processing_name=claimed.path.name, claimed_by=self.rt.host_id):
                logger.bind(run=claimed.claim_id).info(
                    "{} was recorded by the sweep first", claimed.name)

    def _refuse(self, path: Path, reason: str) -> None:
        claim_id = self._new_id()

        def settle() -> None:
            if path.exists() or path.is_symlink():  # else another host refused it first
                refuse(path, self.rt.layout, self.rt.requests, reason, claim_id)

        under_name_lock(self.rt, path.name, settle)
