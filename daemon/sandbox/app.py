"""``scanrelay sandbox``: two reference platforms (``sandbox-prod``, ``sandbox-qa``) on
loopback, each with a database of its own, to try workflows on without a platform.

``sandbox-prod`` is seeded from the seed with processed scans in a few stores;
``sandbox-qa`` has the same stores and catalogue and no scans, so it is a copy target.
QA's simulated processing recognises the copies of prod's seeded scans in a fixed
cycle of outcomes, so a copy with analysis of a handful of them shows every comment of
SPEC §7; other scans get the default weighted outcomes.

Everything lives in the data folder (default ``./sandbox``): ``sandbox.json`` (ports,
databases, seeded scans), ``secrets/`` (the API password files, mode 0600), ``files/``
(file bytes) and ``pg/`` (the embedded PostgreSQL, when no ``--dsn`` is given). A
restart reuses all of it; ``ephemeral`` removes it (and the databases) at stop.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from . import pgembed
from .model import Outcome
from .processing import DEFAULT_WEIGHTS
from .server import RefServer

PROD, QA = "sandbox-prod", "sandbox-qa"
INSTANCES = (PROD, QA)
USERNAME = "scanrelay"
STATE_FILE = "sandbox.json"
STORES = 3
SECTIONS = (1, 2, 1, 3)  # compliance reports per seeded scan, cycled: several sections
EXTRA_SECTION_EVERY = 5  # every 5th copy gets a section its source lacks (target-only row)
# QA's outcomes for prod's seeded scans, by seeded position: each §7 comment within 8.
OUTCOME_CYCLE: tuple[Outcome, ...] = (
    Outcome.SAME,
    Outcome.OTHER_PLANOGRAM,
    Outcome.SAME,
    Outcome.OTHER_SECTION,
    Outcome.ADDITIONAL_SECTION,
    Outcome.SAME,
    Outcome.HIGHER_POG,
    Outcome.SECTION_NOT_FOUND,  # Missing In Target, yet processed: the copy need not wait
)


class SandboxError(RuntimeError):
    """The sandbox cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class SandboxOptions:
    """What ``scanrelay sandbox`` was asked for (see its ``--help``)."""

    data_dir: Path = Path("sandbox")
    dsn: str | None = None  # an admin DSN (may create databases); None: embedded
    ephemeral: bool = False
    seed: int = 7
    scans: int = 24
    files_per_scan: int = 2
    port: int = 0  # prod's API port (QA's is the next); 0: as before, else any free one
    processing_delay: float = 3.0
    db_prefix: str = "scanrelay_sandbox"


@dataclass
class SandboxState:
    """What a restart reuses (``sandbox.json``)."""

    seed: int
    databases: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    seeded: dict[str, list[int]] = field(default_factory=dict)
    stores: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, options: SandboxOptions) -> SandboxState:
        if path.exists():
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        # an ephemeral sandbox must not meet another's databases on a shared server
        prefix = options.db_prefix + (f"_{secrets.token_hex(4)}" if options.ephemeral else "")
        names = {name: f"{prefix}_{name.split('-')[1]}" for name in INSTANCES}
        return cls(options.seed, names)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2), encoding="utf-8")
        tmp.replace(path)


def secret_file(folder: Path, name: str, value: str | None = None) -> Path:
    """``folder/name`` (mode 0600) holding ``value``, or a random secret made once."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / name
    if value is not None or not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(18) if value is None else value)
    return path


class Sandbox:
    """The two platforms, their databases and data; ``start()``, then ``stop()``."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="scanrelay-sandbox-"))
            if options.ephemeral
            else options.data_dir.resolve()
        )
        self.servers: dict[str, RefServer] = {}
        self.state = SandboxState(options.seed, {})
        self._embedded: pgembed.EmbeddedPostgres | None = None
        self.admin_dsn = ""

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Start the database server (unless given), both platforms, seed what is new.
        Raises ``SandboxError``; what did start is stopped again."""
        try:
            self._start()
        except psycopg.Error as exc:
            self.stop()
            raise SandboxError(f"the database server refused: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = SandboxState.load(self.data_dir / STATE_FILE, self.options)
        self.admin_dsn = self._admin_dsn()
        for index, name in enumerate(INSTANCES):
            self.servers[name] = self._start_server(name, index)
        self._seed()
        self._configure_processing()
        self.state.save(self.data_dir / STATE_FILE)

    def stop(self) -> None:
        """Stop both platforms and the embedded server; remove everything if ephemeral."""
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        if self.options.ephemeral and self.options.dsn and self.admin_dsn:
            # side by side: each drop waits for a checkpoint of the server
            with ThreadPoolExecutor(len(INSTANCES)) as pool:
                drops = [pool.submit(pgembed.drop_database, self.admin_dsn, db_name)
                         for db_name in self.state.databases.values()]
            for drop in drops:
                drop.result()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        if self.options.ephemeral:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # parts ----------------------------------------------------------------------------

    def _admin_dsn(self) -> str:
        if self.options.dsn:
            try:
                psycopg.connect(self.options.dsn, connect_timeout=5).close()
            except psycopg.Error as exc:
                raise SandboxError(f"--dsn ({self._safe_dsn()}): {exc}".strip()) from exc
            return self.options.dsn
        try:
            self._embedded = pgembed.start_embedded(
                self.data_dir / "pg", delete=self.options.ephemeral
            )
        except pgembed.PostgresUnavailable as exc:
            raise SandboxError(str(exc)) from exc
        return self._embedded.dsn

    def _safe_dsn(self) -> str:
        params = pgembed.dsn_params(self.options.dsn or "")
        return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"

    def _port(self, name: str, index: int) -> int:
        if self.options.port:
            return self.options.port + index
        return self.state.ports.get(name, 0)

    def _start_server(self, name: str, index: int) -> RefServer:
        dsn = pgembed.ensure_database(self.admin_dsn, self.state.databases[name])
        password = secret_file(self.data_dir / "secrets", f"{name}-api").read_text().strip()
        port = self._port(name, index)
        server = RefServer(
            dsn,
            self.data_dir / "files" / name,
            username=USERNAME,
            password=password,
            processing_delay=self.options.processing_delay,
            pool_size=8,
            api_port=port,
        )
        try:
            server.start()
        except OSError as exc:
            server.stop()
            raise SandboxError(
                f"{name}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                "choose another with --port"
            ) from exc
        self.state.ports[name] = int(server.api_url.rsplit(":", 1)[1])
        return server

    def _seed(self) -> None:
        """Seed prod's scans and QA's catalogue, unless their database has them."""
        for name in INSTANCES:
            server = self.servers[name]
            ids = self.state.seeded.get(name)
            if ids is not None and (not ids or server.scan(ids[0]) is not None):
                continue
            scans = self.options.scans if name == PROD else 0
            result = server.seed(
                scans=scans,
                files_per_scan=self.options.files_per_scan,
                file_size=(40_000, 160_000),
                seed=self.state.seed,
                stores=STORES,
                sections=SECTIONS,
            )
            self.state.seeded[name] = result.scan_ids
            self.state.stores = result.store_ids

    def _configure_processing(self) -> None:
        for server in self.servers.values():
            server.processing.set_weights(DEFAULT_WEIGHTS, seed=self.state.seed)
        qa = self.servers[QA].processing
        for position, scan_id in enumerate(self.state.seeded.get(PROD, [])):
            qa.force(scan_id, OUTCOME_CYCLE[position % len(OUTCOME_CYCLE)])
            if position % EXTRA_SECTION_EVERY == EXTRA_SECTION_EVERY - 1:
                qa.force_extra_section(scan_id)

    # what users get -------------------------------------------------------------------

    @property
    def scan_ids(self) -> list[int]:
        """Prod's seeded scans."""
        return list(self.state.seeded.get(PROD, []))

    def instance_configs(self) -> dict[str, dict[str, Any]]:
        """The ``instances:`` entries of both platforms, secrets as ``*_file``."""
        params = pgembed.dsn_params(self.admin_dsn)
        db_password = params.get("password")
        secrets_dir = self.data_dir / "secrets"
        db_password_file = secret_file(secrets_dir, "db", db_password) if db_password else None
        configs: dict[str, dict[str, Any]] = {}
        for name, server in self.servers.items():
            db = {
                "host": params.get("host") or "localhost",
                "port": int(params.get("port") or 5432),
                "dbname": self.state.databases[name],
                "user": params.get("user") or "postgres",
            }
            entry: dict[str, Any] = {
                "kind": "platform",
                "api_url": server.api_url,
                "db": db,
                "api_username": USERNAME,
                "api_password_file": str(secrets_dir / f"{name}-api"),
            }
            if db_password_file is not None:
                entry["db_password_file"] = str(db_password_file)
            configs[name] = {**entry, "max_connections": 8}
        return configs
