"""Shared pytest fixtures. Keep this file small: logic lives in ``pg.py`` and
``daemon/sandbox/``; fixtures here only wire it up."""

from __future__ import annotations

from collections.abc import Iterator

import pg
import pytest


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
