"""Writing request files into the inbox atomically (``submit``, the demo, schedules)."""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from daemon.config import Config
from daemon.fsutil import atomic_writer, unique_path
from daemon.layout import Layout
from daemon.request import build_request


def drop_request(config: Config, raw: dict[str, Any], *, stem: str = "submit",
                 validate: bool = True, name: str | None = None) -> Path:
    """Validate ``raw`` (raises ``RequestError``) and write it as JSON into the inbox.

    The file is written under a hidden temp name and renamed in, so the daemon sees it
    only once complete. ``name`` (else ``<stem>-<time>-<hex>.json``) lets a producer
    choose a name it can look for later (the scheduler's exactly-once bookkeeping)."""
    if validate:
        build_request(raw, config)
    inbox = Layout.of(config).ensure().inbox
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = name or f"{stem}-{stamp}-{secrets.token_hex(2)}.json"
    with atomic_writer(inbox / f".{name}") as f:
        json.dump(raw, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
    dest = unique_path(inbox, name)
    os.rename(inbox / f".{name}", dest)
    return dest


def write_csv_request(folder: Path, name: str, scan_ids: list[int]) -> Path:
    """A CSV request (header + one ID per row), renamed into ``folder`` when complete."""
    tmp = folder / f".{name}.tmp"
    with atomic_writer(tmp) as f:
        f.write("scan_id\n" + "".join(f"{i}\n" for i in scan_ids))
    dest = unique_path(folder, name)
    os.rename(tmp, dest)
    return dest
