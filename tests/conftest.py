"""Shared pytest fixtures. Keep this file small: logic lives in ``pg.py`` and
``daemon/sandbox/``; fixtures here only wire it up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pg
import pytest
from copy_support import ref_server
from store_support import migrated_database

from daemon.sandbox import RefServer


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """Admin DSN of a real PostgreSQL (skips locally when none; fails under CI=true)."""
    return pg.require_admin_dsn()


@pytest.fixture
def platform_db(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh, empty database of its own, dropped after the test."""
    dsn = pg.create_database(request.node.name)
    try:
        yield dsn
    finally:
        pg.drop_database(dsn)


@pytest.fixture
def cluster_dsn(pg_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """DSN of a fresh database with the cluster schema (``daemon.store.pg.migrate``),
    dropped after the test."""
    with migrated_database(request.node.name) as dsn:
        yield dsn


@pytest.fixture
def prod(tmp_path: Path) -> Iterator[RefServer]:
    """A reference platform named prod (a copy's source), with a database of its own."""
    with ref_server(tmp_path, "prod") as server:
        yield server


@pytest.fixture
def qa(tmp_path: Path) -> Iterator[RefServer]:
    """A reference platform named qa (a copy's target), with a database of its own."""
    with ref_server(tmp_path, "qa") as server:
        yield server
