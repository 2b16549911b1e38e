"""The Request model: one validated shape for JSON, CSV and XLSX request files.

``parse_request`` reads a file, applies the profile (of its inbox subfolder, of its own
``profile`` key, or ``defaults.profile``) and validates everything at once. Problems
raise ``RequestError`` whose messages name the field or row and say how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from daemon.config import NAME_PATTERN, Config
from daemon.errors import RequestError
from daemon.instances.base import Selection

ACTIONS = ("copy", "download", "analyze")
RUN_ID_PATTERN = r"^\d{8}-\d{6}-(copy|download|analyze)-[0-9a-f]{6}$"
RELATIVE_DAYS = re.compile(r"^-(\d{1,4})d$")
REQUEST_SUFFIXES = (".json", ".csv", ".xlsx")



class SelectModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    store_id: StrictInt | None = Field(default=None, gt=0)
    captured_from: date | None = None
    captured_to: date | None = None
    status: str | None = Field(default=None, max_length=64)
    limit: StrictInt | None = Field(default=None, ge=1)

    def selection(self) -> Selection:
        return Selection(**self.model_dump())


class Request(BaseModel):
    """A normalised request: what ``request.json`` of a run holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    action: Literal["copy", "download", "analyze"]
    profile: str | None = Field(default=None, pattern=NAME_PATTERN)
    source: str | None = None
    target: str | None = None
    scan_ids: list[StrictInt] = Field(default_factory=list)
    # Position by position with scan_ids; None (a blank cell): no target for that scan.
    target_scan_ids: list[StrictInt | None] = Field(default_factory=list)
    select: SelectModel | None = None
    target_store_id: StrictInt | None = Field(default=None, gt=0)
    mode: Literal["auto", "mapped"] = "auto"
    analyze: StrictBool = False
    pairs: list[tuple[StrictInt, StrictInt]] = Field(default_factory=list)
    from_run: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    batch_size: StrictInt = Field(default=10, ge=1, le=1000)
    dry_run: StrictBool = False
    captured_at: Literal["now", "source"] | None = None  # copy; None: copy.captured_at
    deliver_to: str | None = Field(default=None, min_length=1, max_length=1000)
    force: StrictBool = False
    label: str | None = Field(default=None, max_length=500)
    retry_of: str | None = Field(default=None, pattern=RUN_ID_PATTERN)
    attempt: StrictInt = Field(default=1, ge=1)

    def normalised(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)


REQUEST_KEYS = frozenset(Request.model_fields)


def parse_request(path: Path, config: Config, *, folder_profile: str | None = None,
                  today: date | None = None) -> Request:
    """Read, merge with its profile and validate one request file."""
    from daemon.readers import read_request_file  # readers import nothing of ours back

    raw = read_request_file(path, config.limits.max_request_bytes)
    return build_request(raw, config, folder_profile=folder_profile,
                         tabular=path.suffix.lower() != ".json", today=today)


def build_request(raw: Mapping[str, Any], config: Config, *, folder_profile: str | None = None,
                  tabular: bool = False, today: date | None = None) -> Request:
    """Merge ``raw`` onto its profile, resolve relative dates and validate."""
    merged = _with_profile(raw, config, folder_profile, tabular)
    merged.setdefault("batch_size", config.defaults.batch_size)
    if isinstance(merged.get("select"), Mapping):
        merged["select"] = resolve_select_dates(merged["select"], today or utc_today())
    try:
        request = Request.model_validate(merged)
    except ValidationError as exc:
        # Report what can be checked on the raw values too: every problem at once.
        raise RequestError([_explain(err) for err in exc.errors()]
                           + _instance_problems(merged, config)
                           + _duplicates("scan_ids", merged.get("scan_ids"))) from None
    problems = _semantic_problems(request, config)
    if problems:
        raise RequestError(problems)
    return request


def _with_profile(raw: Mapping[str, Any], config: Config, folder_profile: str | None,
                  tabular: bool) -> dict[str, Any]:
    name = raw.get("profile") or folder_profile
    if name is None and (tabular or "action" not in raw):
        name = config.defaults.profile
    if name is None:
        return dict(raw)
    if not isinstance(name, str) or name not in config.profiles:
        configured = ", ".join(sorted(config.profiles)) or "(none)"
        raise RequestError([f"profile: unknown profile {name!r}; configured: {configured}"])
    return {**config.profiles[name], **raw, "profile": name}


def utc_today() -> date:
    return datetime.now(UTC).date()


def resolve_date(value: Any, today: date) -> Any:
    """``today``, ``yesterday`` and ``-Nd`` become dates; anything else is left to
    validation (which accepts ISO dates)."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    match = RELATIVE_DAYS.match(text)
    return today - timedelta(days=int(match.group(1))) if match else value


def resolve_select_dates(select: Mapping[str, Any], today: date) -> dict[str, Any]:
    return {k: resolve_date(v, today) if k.startswith("captured_") else v
            for k, v in select.items()}


def build_select(raw: Mapping[str, Any], today: date | None = None) -> Selection:
    """A request's ``select`` on its own (``scanrelay select``, the wizard's preview):
    relative dates resolved, validated as in a request; ``RequestError`` otherwise."""
    try:
        model = SelectModel.model_validate(resolve_select_dates(raw, today or utc_today()))
    except ValidationError as exc:
        raise RequestError([_explain({**e, "loc": ("select", *e["loc"])})
                            for e in exc.errors()]) from None
    if model.captured_from and model.captured_to and model.captured_from > model.captured_to:
        raise RequestError(["select.captured_from: is after captured_to; swap them"])
    return model.selection()


HINTS = {
    "extra_forbidden": "remove it (allowed keys: " + ", ".join(sorted(REQUEST_KEYS)) + ")",
    "int_type": "use a whole number without quotes",
    "int_parsing": "use a whole number",
    "bool_type": "use true or false",
    "literal_error": "",
    "missing": "add it, or drop the file into a profile folder that sets it",
    "date_from_datetime_parsing": "use YYYY-MM-DD, today, yesterday or -7d",
    "date_parsing": "use YYYY-MM-DD, today, yesterday or -7d",
    "date_type": "use YYYY-MM-DD, today, yesterday or -7d",
    "string_pattern_mismatch": "",
}


SELECT_HINT = "remove it (allowed keys of select: " + ", ".join(SelectModel.model_fields) + ")"


def _explain(err: Mapping[str, Any]) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
    hint = HINTS.get(err["type"], "")
    if err["type"] == "extra_forbidden" and err["loc"][0] == "select":
        hint = SELECT_HINT
    if err["type"] == "string_pattern_mismatch" and err["loc"][0] in ("from_run", "retry_of"):
        return f"{loc}: not a run ID (got {_short(err.get('input'))}); a run ID looks like " \
               "20261121-231500-copy-3f9a1c (see scanrelay runs)"
    given = ""
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
        given = f" (got {_short(err['input'])})"
    return f"{loc or 'request'}: {err['msg']}{given}" + (f"; {hint}" if hint else "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _instance_problems(raw: Mapping[str, Any], config: Config) -> list[str]:
    configured = ", ".join(sorted(config.instances)) or "(none)"
    return [f"{key}: unknown instance {raw[key]!r}; configured: {configured}"
            for key in ("source", "target")
            if isinstance(raw.get(key), str) and raw[key] not in config.instances]


def _semantic_problems(r: Request, config: Config) -> list[str]:
    problems = _instance_problems(r.model_dump(), config)
    problems += _needs(r)
    problems += _duplicates("scan_ids", r.scan_ids)
    problems += [f"{p}; IDs are positive whole numbers" for p in _non_positive(r)]
    count = len(r.scan_ids) + len(r.pairs)
    if count > config.limits.max_scans:
        problems.append(f"scan_ids: {count} scans exceed limits.max_scans "
                        f"({config.limits.max_scans}); split the request into smaller files")
    problems += _delivery_problems(r, config)
    if r.select and r.select.captured_from and r.select.captured_to \
            and r.select.captured_from > r.select.captured_to:
        problems.append("select.captured_from: is after captured_to; swap them")
    return problems


def _delivery_problems(r: Request, config: Config) -> list[str]:
    from daemon.deliver import OutsideRoots, delivery_folder

    if r.deliver_to is None:
        return []
    try:
        delivery_folder(r.deliver_to, config.delivery_roots)
    except OutsideRoots as exc:
        return [f"deliver_to: {exc}"]
    return []


def _needs(r: Request) -> list[str]:
    """What each action requires (SPEC §4)."""
    problems = []
    if r.source is None:
        problems.append(f"source: {r.action} needs a source instance")
    if r.action in ("copy", "analyze") and r.target is None:
        problems.append(f"target: {r.action} needs a target instance")
    if r.action == "copy" and r.target_store_id is None:
        problems.append("target_store_id: copy needs the store of the target to copy into")
    if r.action in ("copy", "download"):
        if bool(r.scan_ids) == bool(r.select):
            problems.append("scan_ids: give either scan_ids or select (exactly one), "
                            "and at least one scan")
    elif not (r.pairs or r.from_run or r.scan_ids):
        problems.append("pairs: analyze needs pairs, from_run, or scan_ids with target_scan_ids")
    elif r.target_scan_ids and len(r.target_scan_ids) != len(r.scan_ids):
        problems.append(f"target_scan_ids: {len(r.target_scan_ids)} target IDs for "
                        f"{len(r.scan_ids)} scan IDs; give one target per scan")
    return problems


def _duplicates(field: str, ids: Any) -> list[str]:
    if isinstance(ids, list) and len(set(ids)) == len(ids):
        return []  # the common case, in C
    seen: dict[int, int] = {}
    problems = []
    for i, scan_id in enumerate(ids if isinstance(ids, list) else []):
        if not isinstance(scan_id, int) or isinstance(scan_id, bool):
            continue  # a type error, reported by validation
        if scan_id in seen:
            problems.append(f"{field}[{i}]: scan ID {scan_id} repeats {field}[{seen[scan_id]}]; "
                            "list each scan once")
        seen.setdefault(scan_id, i)
    return problems[:20]


def _non_positive(r: Request) -> list[str]:
    lists: dict[str, list[int | None]] = {"scan_ids": list(r.scan_ids),
                                          "target_scan_ids": r.target_scan_ids}
    out = [f"{name}[{i}]: {v} is not a valid ID"
           for name, ids in lists.items() for i, v in enumerate(ids) if v is not None and v <= 0]
    out += [f"pairs[{i}]: {p} holds a non-positive ID" for i, p in enumerate(r.pairs)
            if min(p) <= 0]
    return out[:20]
