"""Logging through loguru: one stderr sink (journald-friendly, or JSON lines), one file
sink per run (``run.log``), and a redaction patch (``daemon.redact``: registered secrets
and token/password patterns) so no secret is written.

Every line carries ``run`` (``-`` outside a run): code binds it with
``logger.bind(run=run_id)``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from loguru import logger

from daemon.redact import redact

FORMAT = ("{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} [{extra[run]}] {message}"
          "{exception}")


def _patch(record: Any) -> None:
    record["extra"].setdefault("run", "-")
    record["message"] = redact(record["message"])


class _Intercept(logging.Handler):
    """Library logging (watchdog, psycopg, APScheduler) into loguru, so it is formatted,
    redacted and filtered like our own lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, "{}: {}", record.name,
                                                  record.getMessage())


def setup(level: str = "INFO", json_lines: bool = False, stream: Any = None) -> None:
    """Configure the process-wide sinks (call once at start)."""
    logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)
    logger.remove()
    logger.configure(patcher=_patch, extra={"run": "-"})
    logger.add(stream or sys.stderr, level=level, serialize=json_lines,
               format="{message}" if json_lines else FORMAT, backtrace=False, diagnose=False)


def add_run_sink(run_id: str, path: Path, batch: int | None = None) -> int:
    """A ``run.log`` that receives exactly the lines bound to ``run_id``; with ``batch``
    (cluster mode: one batch of a run), not the lines bound to another batch."""
    def mine(record: Any) -> bool:
        extra = record["extra"]
        return extra.get("run") == run_id and extra.get("batch") in (None, batch)

    return logger.add(path, level="DEBUG", format=FORMAT, encoding="utf-8",
                      filter=mine if batch is not None else
                      lambda r: r["extra"].get("run") == run_id,
                      backtrace=False, diagnose=False, enqueue=False)


def remove_sink(sink_id: int) -> None:
    with contextlib.suppress(ValueError):  # already removed
        logger.remove(sink_id)
