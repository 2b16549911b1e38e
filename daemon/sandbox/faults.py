"""Fault injection, capacity limits and request counters of the reference server.

Faults are decided per request, after its body has been read and its token checked,
in this order: permanent rules (``fail_file``, ``fail_create``, ``fail_upload``), then
one-shot rules (``next``), then the random rate (``set``). Kinds:

* ``"500" "502" "503" "504" "408"``: that status with a JSON body;
* ``"429"``: 429 with ``Retry-After: <retry_after>`` (seconds, default 1);
* ``"reset"``: the connection is closed abruptly (RST), no response;
* ``"timeout"``: the server sleeps ``timeout_sleep`` seconds (longer than the client's
  timeout), then closes without a response and without doing the work;
* ``"truncate"``: the response announces its full Content-Length, sends
  ``truncate_fraction`` of the body, then closes;
* ``"reset_after_commit"``: create only: the scan is inserted and committed, then the
  connection is reset (the client cannot know it exists). On other endpoints: reset.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Endpoint(StrEnum):
    LOGIN = "login"
    FILE = "file"  # file metadata
    BLOB = "blob"  # file bytes, on the second listener
    UPLOAD = "upload"
    CREATE = "create"
    OTHER = "other"


class Fault(StrEnum):
    HTTP_408 = "408"
    HTTP_429 = "429"
    HTTP_500 = "500"
    HTTP_502 = "502"
    HTTP_503 = "503"
    HTTP_504 = "504"
    RESET = "reset"
    TIMEOUT = "timeout"
    TRUNCATE = "truncate"
    RESET_AFTER_COMMIT = "reset_after_commit"

    @property
    def status(self) -> int | None:
        """The HTTP status of a status fault, else None."""
        return int(self.value) if self.value.isdigit() else None


TRANSIENT_FAULTS: frozenset[Fault] = frozenset(Fault)


@dataclass(frozen=True)
class RequestInfo:
    """What a fault rule may look at."""

    endpoint: Endpoint
    file_id: int | None = None
    payload: Mapping[str, Any] | None = None  # create payload (a JSON object)
    source_scan_ids: frozenset[int] = frozenset()  # from the truth headers of the files
    filename: str | None = None  # upload


@dataclass(frozen=True)
class Action:
    """What to do to one request instead of serving it normally."""

    fault: Fault | None = None
    status: int | None = None  # a permanent error status
    body: Mapping[str, Any] | None = None


@dataclass
class _Rule:
    endpoints: frozenset[Endpoint]
    action: Action
    match: Callable[[RequestInfo], bool] = lambda info: True
    remaining: int | None = None  # None: forever


def _payload_matches(
    where: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None,
    payload: Mapping[str, Any] | None,
) -> bool:
    if where is None:
        return True
    if payload is None:
        return False
    if callable(where):
        return bool(where(payload))
    return all(payload.get(k) == v for k, v in where.items())


def _detail(status: int) -> str:
    return "Not found." if status == 404 else f"Refused by the reference server ({status})."


@dataclass
class Faults:
    """The fault switchboard; every method is safe to call while requests are served."""

    retry_after: float = 1.0
    timeout_sleep: float = 5.0
    truncate_fraction: float = 0.5
    _rate: float = 0.0
    _kinds: tuple[Fault, ...] = ()
    _endpoints: frozenset[Endpoint] = frozenset(Endpoint)
    _rng: random.Random = field(default_factory=random.Random)
    _rules: list[_Rule] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(
        self,
        rate: float = 0.0,
        kinds: Iterable[Fault | str] = TRANSIENT_FAULTS,
        *,
        seed: int = 0,
        endpoints: Iterable[Endpoint | str] | None = None,
    ) -> None:
        """Inject a fault into a share ``rate`` of requests (of ``endpoints``, default all),
        the kind drawn uniformly from ``kinds``, from an RNG seeded with ``seed``."""
        with self._lock:
            self._rate = rate
            self._kinds = tuple(sorted(Fault(k) for k in kinds))
            self._endpoints = frozenset(Endpoint(e) for e in endpoints or Endpoint)
            self._rng = random.Random(seed)

    def clear(self) -> None:
        """No faults at all: random rate off and every rule removed."""
        with self._lock:
            self._rate = 0.0
            self._rules.clear()

    def next(
        self, kind: Fault | str, *, endpoint: Endpoint | str | None = None, count: int = 1
    ) -> None:
        """Inject ``kind`` into the next ``count`` requests (to ``endpoint``, or any)."""
        endpoints = frozenset(Endpoint) if endpoint is None else frozenset({Endpoint(endpoint)})
        self._add(_Rule(endpoints, Action(fault=Fault(kind)), remaining=count))

    def fail_file(self, file_id: int, status: int = 404) -> None:
        """Metadata and bytes of ``file_id`` fail with ``status``, permanently."""
        self._add(
            _Rule(
                frozenset({Endpoint.FILE, Endpoint.BLOB}),
                Action(status=status, body={"detail": _detail(status)}),
                match=lambda info: info.file_id == file_id,
            )
        )

    def fail_create(
        self,
        status: int = 400,
        *,
        store: int | None = None,
        source_scan_id: int | None = None,
        where: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        """Creates fail with ``status``, permanently, when they match every given filter:
        the payload's ``store``; a file carrying ``source_scan_id``'s truth; ``where``,
        a dict of payload fields that must be equal, or a predicate on the payload."""

        def match(info: RequestInfo) -> bool:
            payload = info.payload or {}
            return (
                (store is None or payload.get("store") == store)
                and (source_scan_id is None or source_scan_id in info.source_scan_ids)
                and _payload_matches(where, info.payload)
            )

        answer = body or {"non_field_errors": [f"rejected by the reference server ({status})"]}
        self._add(
            _Rule(frozenset({Endpoint.CREATE}), Action(status=status, body=answer), match=match)
        )

    def fail_upload(
        self, status: int = 400, *, filename: str | None = None, source_scan_id: int | None = None
    ) -> None:
        """Uploads fail with ``status``, permanently (all, or those matching)."""

        def match(info: RequestInfo) -> bool:
            return (filename is None or info.filename == filename) and (
                source_scan_id is None or source_scan_id in info.source_scan_ids
            )

        self._add(
            _Rule(
                frozenset({Endpoint.UPLOAD}),
                Action(status=status, body={"file": ["Upload a valid image."]}),
                match=match,
            )
        )

    def _add(self, rule: _Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def decide(self, info: RequestInfo) -> Action | None:
        """The action for one request, or None to serve it normally."""
        with self._lock:
            for rule in self._rules:
                if info.endpoint in rule.endpoints and rule.match(info):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return rule.action
            if self._rate <= 0 or not self._kinds or info.endpoint not in self._endpoints:
                return None
            if self._rng.random() >= self._rate:
                return None
            return Action(fault=self._rng.choice(self._kinds))


class Gate:
    """Capacity and latency of one listener: at most ``max_concurrent`` requests are
    served at once (the excess waits), each after ``latency`` seconds. So the ideal
    rate of a listener is ``max_concurrent / latency`` requests per second.

    ``peak`` is the most requests answered at once, each counted from its arrival until
    its handler calls ``ready`` (the answer is decided) or leaves the slot. Not until
    the answer is sent: a client that has read it may call again before this thread
    has left the slot, and that call overlaps nothing on the client's side."""

    def __init__(self) -> None:
        self.max_concurrent: int | None = None
        self.latency = 0.0
        self.active = 0
        self.answering = 0
        self.peak = 0
        self._cond = threading.Condition()

    def set(self, max_concurrent: int | None = None, latency: float = 0.0) -> None:
        with self._cond:
            self.max_concurrent = max_concurrent
            self.latency = latency
            self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[Callable[[], None]]:
        """Hold one of the listener's slots; yields ``ready``, to call once the answer
        is decided."""
        with self._cond:
            while self.max_concurrent is not None and self.active >= self.max_concurrent:
                self._cond.wait()
            self.active += 1
            self.answering += 1
            self.peak = max(self.peak, self.answering)
            latency = self.latency
        decided = False

        def ready() -> None:
            nonlocal decided
            with self._cond:
                if not decided:
                    decided = True
                    self.answering -= 1

        try:
            if latency > 0:
                time.sleep(latency)
            yield ready
        finally:
            ready()
            with self._cond:
                self.active -= 1
                self._cond.notify_all()


class Stats:
    """Requests counted per endpoint and outcome (HTTP status, or a fault name)."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def record(self, endpoint: Endpoint, outcome: int | str) -> None:
        with self._lock:
            self._counts[(str(endpoint), str(outcome))] += 1

    def count(
        self, endpoint: Endpoint | str | None = None, outcome: int | str | None = None
    ) -> int:
        """How many requests (to ``endpoint``) ended with ``outcome``; None: any."""
        with self._lock:
            return sum(
                n
                for (e, o), n in self._counts.items()
                if (endpoint is None or e == str(endpoint))
                and (outcome is None or o == str(outcome))
            )

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{endpoint: {outcome: count}}``."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (e, o), n in sorted(self._counts.items()):
                out.setdefault(e, {})[o] = n
            return out

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
