"""``RefServer``: the reference platform, in-process, on two loopback listeners."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from . import db, exact
from . import seed as seeding
from .api import State
from .blobs import BlobStore, UrlSigner
from .faults import Faults, Gate, Stats
from .handlers import ApiHandler, BlobHandler, Server
from .model import ReceivedCreate, Recognition, RecordedRequest, SeedResult
from .processing import Processor


class RefServer:
    """A platform instance that speaks SPEC §8 over real HTTP, backed by ``dsn``.

    ``dsn`` names a database the server owns (its tables are created if missing);
    ``data_dir`` holds file bytes. ``keep_unknown_keys=False`` stores only the create
    payload fields the platform knows (``api.PAYLOAD_FIELDS``), dropping a marker.
    Use as a context manager, or ``start()``/``stop()``. ``api_port`` 0 lets the system
    choose (the file host's port is always chosen).
    """

    def __init__(
        self,
        dsn: str,
        data_dir: str | Path,
        *,
        username: str = "scanrelay",
        password: str | None = None,
        processing_delay: float = 0.2,
        url_ttl: float = 3600.0,
        reject_auth_on_blob: bool = True,
        echo_errors: bool = False,
        pool_size: int = 32,
        api_port: int = 0,
        keep_unknown_keys: bool = True,
    ) -> None:
        self.dsn = dsn
        self.data_dir = Path(data_dir)
        self.username = username
        self.password = password or secrets.token_urlsafe(16)  # fresh per server unless given
        self.faults = Faults()
        self.stats = Stats()
        self._pool: ConnectionPool[Any] = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, open=False, name="refserver"
        )
        self.processing = Processor(self._pool, delay=processing_delay)
        self._state = State(
            pool=self._pool,
            blobs=BlobStore(self.data_dir),
            signer=UrlSigner(url_ttl),
            faults=self.faults,
            stats=self.stats,
            processor=self.processing,
            reject_auth_on_blob=reject_auth_on_blob,
            echo_errors=echo_errors,
            keep_unknown_keys=keep_unknown_keys,
        )
        self._api_port = api_port
        self._servers: list[Server] = []
        self._threads: list[threading.Thread] = []

    # lifecycle -----------------------------------------------------------------------

    def start(self) -> RefServer:
        """Create the schema and the user, start processing and both listeners."""
        self._pool.open(wait=True, timeout=30)
        with self._pool.connection() as conn:
            db.apply_schema(conn)
            db.ensure_user(conn, self.username, self.password)
        self.processing.start()
        api_server = Server(ApiHandler, self._state, self._api_port)
        blob_server = Server(BlobHandler, self._state)
        self._state.blob_base = f"http://127.0.0.1:{blob_server.port}"
        self._servers = [api_server, blob_server]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"refserver-{server.port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop listening and processing; close the pool. The database is kept."""
        if self._state.stopping.is_set():
            return
        self._state.stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self.processing.stop()
        self._pool.close()

    def __enter__(self) -> RefServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses -----------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        return f"http://127.0.0.1:{self._servers[0].port}"

    @property
    def blob_url(self) -> str:
        """Base URL of the file-bytes host (another port: another origin)."""
        return self._state.blob_base

    def download_url(self, file_id: int) -> str:
        """A freshly signed download URL, as the file-metadata call would give."""
        return self._state.blob_base + self._state.signer.path(file_id)

    @property
    def url_ttl(self) -> float:
        return self._state.signer.ttl

    @url_ttl.setter
    def url_ttl(self, seconds: float) -> None:
        self._state.signer.ttl = seconds

    # data ----------------------------------------------------------------------------

    def seed(
        self,
        scans: int = 10,
        files_per_scan: int = 2,
        file_size: int | tuple[int, int] = 64 * 1024,
        seed: int = 0,
        *,
        stores: int = 3,
        store_id: int | None = None,
        lazy_above: int = 8 << 20,
        captured_end: datetime | None = None,
        captured_step: timedelta = timedelta(days=1),
        additional_share: float = 0.15,
        sections: tuple[int, ...] = (1,),
    ) -> SeedResult:
        """Seed the catalogue (``stores`` stores) and ``scans`` processed scans with
        ``files_per_scan`` files of ``file_size`` bytes (or a random size in a
        (min, max) range). Files over ``lazy_above`` bytes are generated on the fly.
        ``scans=0`` seeds only the catalogue, e.g. for a copy target. ``sections``:
        compliance reports per scan, cycled over the scans."""
        spec = seeding.SeedSpec(
            scans,
            files_per_scan,
            file_size,
            seed,
            stores,
            store_id,
            lazy_above,
            captured_end,
            captured_step,
            additional_share,
            sections,
        )
        with self._pool.connection() as conn:
            store_ids, scan_ids, truths, files = seeding.seed(conn, self._state.blobs, spec)
        return SeedResult(store_ids, scan_ids, files, truths, _sha256=self.file_sha256)

    def insert_scan(
        self,
        store_id: int,
        captured_at: datetime,
        status: str = "done",
        *,
        files: Sequence[tuple[str, bytes]] = (),
        details: Mapping[str, Any] | None = None,
        provided_values: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        reports: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[int, list[int]]:
        """One scan exactly as given: ``files`` as (original filename, bytes),
        ``details`` with the fields of ``ScanDetails`` (None: no report) or
        ``reports``, several of them (one per section),
        ``provided_values`` added to the stored create payload (``store``, ``files``,
        ``captured_at``; its keys win); ``created_at`` defaults to ``captured_at``.
        Returns (scan ID, file IDs in order). See ``exact`` for how it is stored."""
        with self._pool.connection() as conn:
            return exact.insert_scan(
                conn,
                self._state.blobs,
                store_id=store_id,
                captured_at=captured_at,
                status=status,
                files=files,
                details=details,
                provided_values=provided_values or {},
                created_at=created_at,
                reports=reports,
            )

    def add_user(self, username: str, password: str) -> None:
        with self._pool.connection() as conn:
            db.ensure_user(conn, username, password)

    def expire_tokens(self, token: str | None = None) -> int:
        """Expire one token or all; the next call with it gets 401. Returns how many."""
        with self._pool.connection() as conn:
            return db.expire_tokens(conn, token)

    def file_sha256(self, file_id: int) -> str:
        """sha256 of any file the server has (seeded or uploaded)."""
        with self._pool.connection() as conn:
            record = db.get_file(conn, file_id)
        if record is None:
            raise KeyError(file_id)
        return self._state.blobs.sha256(record)

    def fail_scan(self, scan_id: int, status: int = 404) -> list[int]:
        """Every file of ``scan_id`` fails with ``status`` (metadata and bytes),
        permanently; returns the file IDs."""
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT file_id FROM realograms_implementation_scanfile"
                " WHERE scan_id = %s ORDER BY id",
                (scan_id,),
            ).fetchall()
        file_ids = [int(r[0]) for r in rows]
        for file_id in file_ids:
            self.faults.fail_file(file_id, status)
        return file_ids

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new connection to the server's database (the caller closes it)."""
        return psycopg.connect(self.dsn, **kwargs)

    def scan(self, scan_id: int) -> dict[str, Any] | None:
        """The ``realograms_implementation_scan`` row, as a dict."""
        with self._pool.connection() as conn:
            return db.scan_row(conn, scan_id)

    def scan_details(self, scan_id: int) -> dict[str, Any] | None:
        """The §7 figures of a processed scan (its first report) as this server reads
        its own tables; None when the scan has no report."""
        with self._pool.connection() as conn:
            return db.scan_details(conn, scan_id)

    def scan_reports(self, scan_id: int) -> list[dict[str, Any]]:
        """``scan_details`` of every compliance report of the scan, by report ID."""
        with self._pool.connection() as conn:
            return db.scan_reports(conn, scan_id)

    # limits, records, ground truth ------------------------------------------------------

    def set_limits(
        self,
        max_concurrent: int | None = None,
        latency: float = 0.0,
        *,
        blob_max_concurrent: int | None = None,
        blob_latency: float = 0.0,
    ) -> None:
        """Capacity (requests served at once; the excess waits) and added latency per
        request, for the API and the blob listener. Ideal rate: capacity / latency."""
        self._state.api_gate.set(max_concurrent, latency)
        self._state.blob_gate.set(blob_max_concurrent, blob_latency)

    @property
    def api_gate(self) -> Gate:
        return self._state.api_gate

    @property
    def blob_gate(self) -> Gate:
        return self._state.blob_gate

    @property
    def keep_unknown_keys(self) -> bool:
        """Whether creates store unknown payload keys (switchable while running)."""
        return self._state.keep_unknown_keys

    @keep_unknown_keys.setter
    def keep_unknown_keys(self, keep: bool) -> None:
        self._state.keep_unknown_keys = keep

    @property
    def processing_delay(self) -> float:
        return self.processing.delay

    @processing_delay.setter
    def processing_delay(self, seconds: float) -> None:
        self.processing.delay = seconds

    @property
    def received_creates(self) -> list[ReceivedCreate]:
        """Every create request that arrived, in order, with its payload and outcome."""
        return list(self._state.received_creates)

    def created_scan_ids(self) -> list[int]:
        """Scans created through the API (committed, even when the answer was lost)."""
        return [r.scan_id for r in self._state.received_creates if r.scan_id is not None]

    @property
    def blob_requests(self) -> list[RecordedRequest]:
        """Every request the blob listener received, headers included."""
        return list(self._state.blob_requests)

    @property
    def errors(self) -> list[str]:
        """Bugs of the server itself (tracebacks); tests should expect none."""
        return [e for s in self._servers for e in s.errors] + list(self.processing.errors)

    def recognition(self, scan_id: int) -> Recognition:
        """Ground truth of a scan created through the API (see ``Recognition``)."""
        return self.processing.recognition(scan_id)

    def recognitions(self) -> dict[int, Recognition]:
        return self.processing.recognitions()

    def process_now(self) -> None:
        """Process every pending created scan now, regardless of the delay."""
        self.processing.flush()

    def wait_processed(self, timeout: float = 30.0) -> None:
        """Wait until every created scan is processed; TimeoutError otherwise."""
        if not self.processing.wait_idle(timeout):
            raise TimeoutError(f"{self.processing.pending()} scans still processing")
