"""The values the stores take and give back: frozen, so they cross threads as they are.
Every store, SQLite or PostgreSQL, speaks these (``daemon.store.abc``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

FAILED_STATUSES = ("failed", "partial", "invalid")  # what ``recent(failed_only=True)`` shows


@dataclass(frozen=True)
class RunFilter:
    """Which history rows a reader wants; an empty field does not filter."""

    action: str | None = None
    status: str | None = None
    text: str | None = None  # a substring of the request's name or label (any case)

    def where(self, mark: str = "?", like: str = "LIKE") -> tuple[str, tuple[Any, ...]]:
        """The SQL condition and its bound parameters (values never enter the SQL).
        ``mark`` is the driver's placeholder; ``like`` the case-blind LIKE of the
        database (SQLite's LIKE is case-blind for ASCII, PostgreSQL's ILIKE)."""
        terms: list[str] = []
        params: list[Any] = []
        if self.action:
            terms.append(f"action = {mark}")
            params.append(self.action)
        if self.status:
            terms.append(f"status = {mark}")
            params.append(self.status)
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", "\\%").replace(
                "_", "\\_") + "%"
            terms.append(f"(name {like} {mark} ESCAPE '\\' OR label {like} {mark}"
                         " ESCAPE '\\')")
            params += [pattern, pattern]
        return ("WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


@dataclass(frozen=True)
class RequestRecord:
    """One request of the history: its claim, the run it became, how it ended."""

    claim_id: str
    name: str
    profile: str | None
    claimed_at: float  # seconds since the epoch
    run_id: str | None
    action: str | None
    label: str | None
    status: str
    finished_at: float | None
    final_path: str | None
    message: str | None
    counts: dict[str, Any]
    attempts: int
    # Cluster mode only (None on one host): who claimed it, and who runs it (or ran it last).
    claimed_by: str | None = None
    host_id: str | None = None


@dataclass(frozen=True)
class CopyKey:
    """What makes two copies "the same copy" (SPEC §4); also what a lease is taken on."""

    source: str
    source_scan_id: int
    target: str
    target_store_id: int

    def as_tuple(self) -> tuple[str, int, str, int]:
        return (self.source, self.source_scan_id, self.target, self.target_store_id)


@dataclass(frozen=True)
class OpenIntent:
    """A create that was intended but never confirmed: its marker and upload IDs."""

    marker: str
    upload_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class CopyState:
    """What the copy ledger knows of one key: its newest finished copy, and the creates
    that were intended but never confirmed (by any run)."""

    copied_to: int | None = None
    copied_by: str | None = None  # the run that made (or found) that copy
    open_intents: tuple[OpenIntent, ...] = ()

    @property
    def open_markers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.marker for i in self.open_intents))


@dataclass(frozen=True)
class MarkerCheck:
    """Whether ``target`` kept the marker field ``field`` of a create it was sent."""

    target: str
    field: str
    kept: bool
    checked_at: float  # seconds since the epoch


def fold_copy_states(rows: Iterable[Sequence[Any]],
                     uploads: Mapping[tuple[int, str], list[OpenIntent]]
                     ) -> dict[int, CopyState]:
    """Each source scan's ``CopyState`` from its copy rows ``(source scan, marker, run,
    target scan or None)``, oldest first so that the newest copy wins, and the upload IDs
    of each intended create by ``(source scan, marker)``."""
    states: dict[int, CopyState] = {}
    for scan_id, marker, run_id, target_id, *_ in rows:
        state = states.get(int(scan_id), CopyState())
        if target_id is None:
            intents = uploads.get((int(scan_id), marker)) or [OpenIntent(marker)]
            state = CopyState(state.copied_to, state.copied_by,
                              (*state.open_intents, *intents))
        else:
            state = CopyState(int(target_id), run_id, state.open_intents)
        states[int(scan_id)] = state
    return states
