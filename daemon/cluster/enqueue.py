"""PLACEHOLDER until core's enqueue lands (deleted before merge): the agreed signature."""

from __future__ import annotations

from typing import Any

import procrastinate
import psycopg

app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())


@app.task(name="scanrelay.placeholder_plan")
def plan(claim_id: str) -> None:  # pragma: no cover - never run here
    raise NotImplementedError


def enqueue(conn: psycopg.Connection[Any], *, claim_id: str, name: str, profile: str | None,
            body: bytes, processing_name: str, claimed_by: str) -> None:
    conn.execute("INSERT INTO requests (claim_id, name, profile, claimed_at, claimed_by, "
                 "processing_name, body, status) VALUES (%s, %s, %s, "
                 "extract(epoch FROM now()), %s, %s, %s, 'claimed')",
                 (claim_id, name, profile, claimed_by, processing_name, body))
    plan.configure(connection=conn).defer(claim_id=claim_id)
