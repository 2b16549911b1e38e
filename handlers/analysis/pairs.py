"""Which source scan goes with which target scan (SPEC §4, analyze inputs):
``pairs``; or ``from_run``, the ``scan_mapping.csv`` of an earlier copy run (narrowed to
``scan_ids`` when the request lists some, as a retry does); or ``scan_ids`` with
``target_scan_ids``, position by position."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from daemon.errors import RequestError
from daemon.request import Request
from handlers.analysis.model import SOURCE_ID, TARGET_ID

MAPPING = "scan_mapping.csv"
Pair = tuple[int, int | None]


def resolve_pairs(request: Request, runs_dir: Path) -> list[Pair]:
    """The pairs a request asks to analyse; a target of None: no target scan.
    Raises ``RequestError`` naming the field when they cannot be determined."""
    if request.pairs:
        return [(int(s), int(t)) for s, t in request.pairs]
    if request.from_run:
        mapping = read_mapping(runs_dir / request.from_run / MAPPING, request.from_run)
        return _narrowed(mapping, request.scan_ids) if request.scan_ids else mapping
    if request.scan_ids and len(request.target_scan_ids) == len(request.scan_ids):
        return list(zip(request.scan_ids, request.target_scan_ids, strict=True))
    raise RequestError(["target_scan_ids: analyze with scan_ids needs target_scan_ids, "
                        "one per scan (a target_scan_id column in a CSV/XLSX file), or "
                        "from_run naming the copy run whose mapping to use"])


def read_mapping(path: Path, run_id: str) -> list[Pair]:
    """The pairs of a copy run's mapping, in file order; rows without a target ID give
    (source, None). Raises ``RequestError`` when the file is missing or malformed."""
    where = f"from_run: runs/{run_id}/{MAPPING}"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise RequestError([f"{where} does not exist; name a copy run that has finished "
                            "(scanrelay runs lists them)"]) from None
    except (OSError, ValueError) as exc:  # pandas' ParserError is a ValueError
        raise RequestError([f"{where} cannot be read: {exc}"]) from None
    missing = [c for c in (SOURCE_ID, TARGET_ID) if c not in frame.columns]
    if missing:
        raise RequestError([f"{where} has no {', '.join(missing)} column"])
    sources = pd.to_numeric(frame[SOURCE_ID].str.strip(), errors="coerce")
    targets = pd.to_numeric(frame[TARGET_ID].str.strip().replace("", None), errors="coerce")
    bad = frame.index[sources.isna() | (targets.isna() & frame[TARGET_ID].str.strip().ne(""))]
    if len(bad):
        rows = ", ".join(str(i + 2) for i in bad[:5])  # +2: header line, 1-based
        raise RequestError([f"{where}: row(s) {rows} hold no valid scan ID"])
    if frame.empty:
        raise RequestError([f"{where} lists no scans"])
    return [(int(s), None if pd.isna(t) else int(t))
            for s, t in zip(sources.tolist(), targets.tolist(), strict=True)]


def _narrowed(mapping: list[Pair], scan_ids: list[int]) -> list[Pair]:
    """The mapping's pairs of ``scan_ids`` (in the mapping's order)."""
    wanted = set(scan_ids)
    chosen = [p for p in mapping if p[0] in wanted]
    unknown = wanted - {p[0] for p in chosen}
    if unknown:
        listed = ", ".join(map(str, sorted(unknown)[:10]))
        raise RequestError([f"scan_ids: {listed} not in the mapping of from_run; "
                            "list only scans that run copied"])
    return chosen
