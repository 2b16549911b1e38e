"""Template filters: how values look on the page (times, ages, sizes, colours).
They format; what a value is was decided by the read layer."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment


def when(value: Any) -> str:
    """An epoch number or an ISO 8601 string as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if value in (None, ""):
        return "-"
    try:
        moment = (datetime.fromtimestamp(float(value), UTC) if isinstance(value, int | float)
                  else datetime.fromisoformat(str(value)).astimezone(UTC))
    except (ValueError, OverflowError):
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def since(epoch: Any) -> str:
    return age(time.time() - float(epoch)) if epoch else "-"


def size(n: Any) -> str:
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def rgb(argb: str) -> str:
    """An ARGB fill colour of the workbook (``FFD9D9D9``) as CSS ``#d9d9d9``."""
    return "#" + argb[-6:].lower()


def install(env: Environment) -> None:
    env.filters.update(when=when, age=age, since=since, size=size, rgb=rgb)
