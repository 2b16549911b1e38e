"""Instance kind ``platform`` (SPEC §8): the HTTP API (``platform_api``) for files and
scan creation, the PostgreSQL database (``platform_db``) for reading scans.

Secrets are read on first use, not at construction: building an instance never fails
for a variable that is not set yet, and the error (``FatalError``) names the setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from psycopg.conninfo import make_conninfo

from daemon import outage
from daemon.config import PlatformInstanceConfig, RetryConfig, read_secret
from daemon.errors import FatalError
from daemon.instances.base import FetchedFile, FileRef, Scan, Selection
from daemon.instances.platform_api import PlatformApi
from daemon.instances.platform_db import CHUNK_SIZE, PlatformDb
from daemon.redact import register_secret
from daemon.retry import RetryPolicy


def retry_policy(name: str, cfg: PlatformInstanceConfig, retry: RetryConfig) -> RetryPolicy:
    """The instance's policy: ``retry`` with the instance's overrides, and the daemon's
    breaker of this instance (``daemon.outage``)."""
    return RetryPolicy(attempts=cfg.retry_attempts,
                       max_seconds=cfg.retry_max_seconds or retry.max_seconds,
                       base=retry.base, cap=retry.cap,
                       breaker=outage.breaker(name, retry.outage_after, retry.outage_seconds,
                                              probe_cap=retry.cap))


DB_CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout
DB_POOL_MAX = 8


class PlatformInstance:
    """A platform instance behind the ``Instance`` contract; thread-safe. Every method
    may raise ``TransientError`` (retries spent), ``PermanentError`` (this item) or
    ``FatalError`` (bad credentials, broken config or SQL, instance closed)."""

    kind = "platform"

    def __init__(self, name: str, cfg: PlatformInstanceConfig, *,
                 policy: RetryPolicy | None = None, retry: RetryConfig | None = None,
                 chunk_size: int = CHUNK_SIZE, compliance_fallback: bool = False) -> None:
        self.name = name
        self.cfg = cfg
        self.max_connections = cfg.max_connections
        self.marker_field = cfg.marker_field
        policy = policy or retry_policy(name, cfg, retry or RetryConfig())
        self._db_password: str | None = None
        self.api = PlatformApi(name, cfg.api_url, self._api_credentials, policy,
                               api_paths=cfg.api_paths, max_connections=cfg.max_connections,
                               timeout=cfg.timeout_seconds)
        # A small pool: reads are few, large and chunked; HTTP workers need the connections.
        # The breaker watches the API only: a database that answers must not hide an API
        # that does not.
        self.db = PlatformDb(name, self._conninfo, replace(policy, breaker=None), sql=cfg.sql,
                             max_size=min(DB_POOL_MAX, max(1, cfg.max_connections // 2)),
                             timeout=min(cfg.timeout_seconds, 30.0), chunk_size=chunk_size,
                             secrets=lambda: (self._db_password,),
                             compliance_fallback=compliance_fallback)

    @classmethod
    def from_config(cls, name: str, cfg: PlatformInstanceConfig,
                    retry: RetryConfig | None = None, *,
                    compliance_fallback: bool = False) -> PlatformInstance:
        """Build the instance; connects nothing yet. Raises ``FatalError`` for unknown
        ``api_paths`` or ``sql`` names. ``compliance_fallback``: the config's
        ``analysis.compliance_fallback`` (see ``platform_db``)."""
        return cls(name, cfg, retry=retry, compliance_fallback=compliance_fallback)

    # --- the Instance contract -------------------------------------------------------

    def select_scans(self, selection: Selection) -> list[int]:
        """IDs of the scans matching ``selection``, oldest by ``created_at`` first."""
        return self.db.select_scan_ids(selection)

    def get_scans(self, scan_ids: Sequence[int]) -> list[Scan]:
        """The existing scans among ``scan_ids``, in the order asked."""
        return self.db.get_scans(scan_ids)

    def fetch_file(self, ref: FileRef, dest: BinaryIO) -> FetchedFile:
        """Stream the file's bytes into ``dest`` (see ``PlatformApi.fetch_file``)."""
        return self.api.fetch_file(ref, dest)

    def upload_file(self, path: Path, filename: str) -> int:
        """Upload a file for a scan to be created; returns the upload ID."""
        return self.api.upload_file(path, filename)

    def create_scan(self, payload: Mapping[str, Any]) -> int:
        """Create a scan; an ambiguous failure is raised, not retried (see
        ``PlatformApi.create_scan``): look the marker up before trying again."""
        return self.api.create_scan(payload)

    def find_scan_by_marker(self, field_name: str, value: str) -> int | None:
        """The scan whose create payload carried ``field_name == value``, if any."""
        return self.db.find_scan_by_marker(field_name, value)

    def scans_by_markers(self, field_name: str, values: Sequence[str]) -> dict[str, list[int]]:
        """Every scan whose create payload carried ``field_name`` = one of ``values``,
        by value (a copy's post-run duplicate check)."""
        return self.db.scans_by_markers(field_name, values)

    def find_scan_by_files(self, file_ids: Sequence[int]) -> int | None:
        """The scan created with any of these upload IDs (``scanfile``), if any."""
        return self.db.find_scan_by_files(file_ids)

    def close(self) -> None:
        """Close the HTTP sessions and the database pool. Idempotent."""
        self.api.close()
        self.db.close()

    # --- secrets ---------------------------------------------------------------------

    def _api_credentials(self) -> tuple[str, str]:
        cfg = self.cfg
        username = cfg.api_username or read_secret(
            cfg.api_username_env, cfg.api_username_file, f"instance {self.name}: api_username")
        password = read_secret(cfg.api_password_env, cfg.api_password_file,
                               f"instance {self.name}: api_password")
        if not username or password is None:
            missing = "api_username" if not username else "api_password"
            raise FatalError(f"instance {self.name}: {missing} is not configured "
                             f"(give {missing}_env or {missing}_file)")
        return username, password

    def _conninfo(self) -> str:
        cfg, db = self.cfg, self.cfg.db
        password = read_secret(cfg.db_password_env or db.password_env,
                               cfg.db_password_file or db.password_file,
                               f"instance {self.name}: db_password")
        self._db_password = password
        register_secret(password)
        params: dict[str, Any] = {"host": db.host, "port": db.port, "dbname": db.dbname,
                                  "user": db.user, "connect_timeout": DB_CONNECT_TIMEOUT,
                                  "application_name": "scanrelay"}
        if password is not None:
            params["password"] = password
        if db.sslmode:
            params["sslmode"] = db.sslmode
        return make_conninfo("", **params)
