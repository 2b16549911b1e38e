"""Configuration: ``config.yml`` loaded into validated, frozen models.

Every problem is reported at once, each with its path in the file (and its line where
the YAML tells it). Secrets never live in the file: ``*_env`` names an environment
variable, ``*_file`` names a file (e.g. a systemd credential); a literal one is an error.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey|dsn)$", re.IGNORECASE)
DEFAULT_CONFIG = "config.yml"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderInstanceConfig(Model):
    kind: Literal["folder"]
    path: Path
    max_connections: int = Field(default=4, ge=1, le=64)
    marker_field: str | None = "scanrelay_ref"  # as for platform: the copy target's marker


class DbConfig(Model):
    host: str
    port: int = 5432
    dbname: str
    user: str
    password_env: str | None = None
    password_file: Path | None = None
    sslmode: str | None = None


class PlatformInstanceConfig(Model):
    kind: Literal["platform"]
    api_url: str = Field(pattern=r"^https?://")
    db: DbConfig
    api_username: str | None = None
    api_username_env: str | None = None
    api_username_file: Path | None = None
    api_password_env: str | None = None
    api_password_file: Path | None = None
    db_password_env: str | None = None
    db_password_file: Path | None = None
    max_connections: int = Field(default=16, ge=1, le=256)
    timeout_seconds: float = Field(default=60, gt=0)
    # Overrides of retry.max_seconds for this instance, and an optional try bound.
    retry_attempts: int | None = Field(default=None, ge=1, le=1000)
    retry_max_seconds: float | None = Field(default=None, gt=0)
    api_paths: dict[str, str] = Field(default_factory=dict)
    sql: dict[str, str] = Field(default_factory=dict)
    marker_field: str | None = "scanrelay_ref"

    @model_validator(mode="after")
    def _one_source_per_secret(self) -> PlatformInstanceConfig:
        for name in ("api_username", "api_password", "db_password"):
            given = [
                s for s in ("", "_env", "_file") if getattr(self, name + s, None) is not None
            ]
            if len(given) > 1:
                raise ValueError(f"give only one of {', '.join(name + s for s in given)}")
        return self


InstanceConfig = Annotated[
    FolderInstanceConfig | PlatformInstanceConfig, Field(discriminator="kind")
]


class PathsConfig(Model):
    root: Path = Path(".")
    # The daemon's own state/ (default: under the root). In cluster mode each host keeps
    # it on local disk while the root is shared.
    state: Path | None = None
    # Folders a request's deliver_to may name (results also placed there, e.g. a share).
    deliveries: list[Path] = Field(default_factory=list)


class DefaultsConfig(Model):
    profile: str | None = None
    batch_size: int = Field(default=10, ge=1, le=1000)


class RunsConfig(Model):
    max_parallel: int = Field(default=2, ge=1, le=32)


class IntakeConfig(Model):
    mode: Literal["events", "polling"] = "events"
    poll_interval: float = Field(default=1.0, gt=0, le=300)
    settle_seconds: float = Field(default=2.0, ge=0, le=3600)
    rescan_interval: float = Field(default=30.0, gt=0, le=3600)
    # A file written in place is taken this long after its writer's last close, if
    # nothing touched it since (so `>` then `>>` is one request); 0: at the close.
    quiet_seconds: float = Field(default=1.0, ge=0, le=300)
    # A name that cannot be a request (not .json/.csv/.xlsx) is refused only once it
    # has been still this long: it may be a piece of a save (Excel's 8-hex temporary).
    unknown_after_seconds: float = Field(default=60.0, ge=0, le=86400)


class LimitsConfig(Model):
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_scans: int = Field(default=100_000, ge=1)


class LogConfig(Model):
    json_lines: bool = Field(default=False, alias="json")
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MetricsConfig(Model):
    listen: str | None = None


class WebConfig(Model):
    listen: str | None = None  # host:port; loopback unless web.token_file is set
    token_file: Path | None = None  # the access token (a file, e.g. a systemd credential)
    actions: bool = False  # offer "retry the failed scans" (needs token_file)

    @model_validator(mode="after")
    def _safe(self) -> WebConfig:
        if self.listen is not None:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"listen {self.listen!r} must be host:port, "
                                 "e.g. 127.0.0.1:8686")
            if not is_loopback(host) and self.token_file is None:
                raise ValueError(f"listen {self.listen!r} is not a loopback address: set "
                                 "web.token_file so that only holders of the token get in, "
                                 "or listen on 127.0.0.1 behind a reverse proxy")
        if self.actions and self.token_file is None:
            raise ValueError("actions: true needs web.token_file (only a signed-in user "
                             "may drop a retry request)")
        return self


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class RetentionConfig(Model):
    days: int | None = Field(default=None, ge=1)


class CopyConfig(Model):
    wait_for_processing: float = Field(default=7200, ge=0)
    poll_interval: float = Field(default=30, gt=0)
    # Pause before batch-level retry n of a copy batch: n x this many seconds.
    batch_retry_pause: float = Field(default=10, ge=0)
    # captured_at of a copy: "now" (the copy's time, integer epoch seconds, as the old
    # scripts sent) or "source" (the source scan's own value); a request may override.
    captured_at: Literal["now", "source"] = "now"


class AnalysisConfig(Model):
    # Compliance figures of another day when the report's own day has none (the latest
    # day before it, else the latest at all), marked in the row; off: empty figures.
    compliance_fallback: bool = False


class RetryConfig(Model):
    """Patience with transient failures (SPEC §10), for every platform instance."""

    max_seconds: float = Field(default=300, gt=0)  # per call of an item, then it fails
    base: float = Field(default=0.5, gt=0)  # backoff: full jitter over base x 2^n ...
    cap: float = Field(default=30, gt=0)  # ... capped at this many seconds
    passes: int = Field(default=1, ge=0, le=10)  # last passes over transient failures
    outage_after: float = Field(default=60, gt=0)  # every call failing this long: outage
    outage_seconds: float = Field(default=3600, gt=0)  # a run waits this long, then fails

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryConfig:
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap}) must not be below base ({self.base})")
        return self


MISFIRE_GRACE = 6 * 3600  # seconds after its time a fire missed while down still runs


def _check_cron(cron: str, timezone: str) -> None:
    """Raises ``ValueError`` naming what is wrong with the cron or the time zone."""
    from daemon.schedule.cron import cron_trigger  # late: APScheduler only when needed

    cron_trigger(cron, timezone)


class ScheduleConfig(Model):
    name: str = Field(pattern=NAME_PATTERN)
    cron: str  # 5 crontab fields, or 6 with seconds first (daemon/schedule/cron.py)
    timezone: str = "UTC"
    request: dict[str, Any]
    misfire_grace: int = Field(default=MISFIRE_GRACE, ge=1)  # whole seconds (APScheduler)

    @model_validator(mode="after")
    def _valid_cron(self) -> ScheduleConfig:
        _check_cron(self.cron, self.timezone)
        return self


class RerunsConfig(Model):
    cron: str = "30 1 * * *"
    max_attempts: int = Field(default=3, ge=1, le=100)
    timezone: str = "UTC"
    misfire_grace: int = Field(default=MISFIRE_GRACE, ge=1)  # whole seconds (APScheduler)

    @model_validator(mode="after")
    def _valid_cron(self) -> RerunsConfig:
        _check_cron(self.cron, self.timezone)
        return self


class ClusterConfig(Model):
    """Cluster mode (docs/cluster.md): several hosts share one root and one PostgreSQL.
    Absent: one host with its state in SQLite under ``state/``."""

    dsn_env: str | None = None  # the environment variable holding the DSN
    dsn_file: Path | None = None  # or a file holding it (e.g. a systemd credential)
    host_id: str = Field(pattern=NAME_PATTERN)  # unique per host, stable across restarts
    batch_size: int = Field(default=200, ge=1, le=100_000)  # scans per batch job
    lease_seconds: float = Field(default=30, ge=2, le=3600)  # copy key leases
    # connection slot leases (daemon/cluster/slots.py): renewed every third, no new
    # call past half of one without PostgreSQL; a dead host's slots return after one
    slot_lease_seconds: float = Field(default=10, ge=1, le=300)
    claim_orphan_seconds: float = Field(default=60, ge=1)  # a claimed file with no row
    # A batch (or a plan or settle stage) whose executions all ended without an answer
    # (its host died each time) is abandoned after this many: its scans count as failed.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # The worker's heartbeat; a worker silent for stalled_seconds is taken for dead and
    # its jobs are retried elsewhere (procrastinate's update_heartbeat_interval and
    # stalled_worker_timeout). The hosts table's heartbeat follows the first too.
    heartbeat_seconds: float = Field(default=2.0, gt=0, le=60)
    stalled_seconds: float = Field(default=10.0, gt=0, le=3600)
    sweep_seconds: int = Field(default=5, ge=1, le=60)  # how often the sweeps run

    @model_validator(mode="after")
    def _one_dsn(self) -> ClusterConfig:
        if (self.dsn_env is None) == (self.dsn_file is None):
            raise ValueError("set exactly one of dsn_env and dsn_file (the PostgreSQL DSN "
                             "is a secret: never written in the config)")
        if self.stalled_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("stalled_seconds must be at least twice heartbeat_seconds (a "
                             "worker late by one heartbeat is not dead)")
        return self


class Config(Model):
    paths: PathsConfig = PathsConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    instances: dict[Annotated[str, Field(pattern=NAME_PATTERN)], InstanceConfig] = Field(
        default_factory=dict
    )
    profiles: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = Field(
        default_factory=dict
    )
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    reruns: RerunsConfig | None = None
    runs: RunsConfig = RunsConfig()
    intake: IntakeConfig = IntakeConfig()
    limits: LimitsConfig = LimitsConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    retention: RetentionConfig = RetentionConfig()
    retry: RetryConfig = RetryConfig()
    web: WebConfig = WebConfig()
    copy_: CopyConfig = Field(default=CopyConfig(), alias="copy")
    analysis: AnalysisConfig = AnalysisConfig()
    cluster: ClusterConfig | None = None
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Set by ``load_config``: where the file was, so relative paths resolve against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @property
    def root(self) -> Path:
        return (self.base_dir / self.paths.root).resolve()

    @property
    def state_dir(self) -> Path | None:
        """``paths.state`` resolved (None: ``state/`` under the root)."""
        return None if self.paths.state is None else self.instance_path(self.paths.state)

    @property
    def delivery_roots(self) -> list[Path]:
        """``paths.deliveries``, resolved against the config file's folder."""
        return [self.instance_path(p) for p in self.paths.deliveries]

    def instance_path(self, path: Path) -> Path:
        """A path from the config, resolved against the config file's folder."""
        return path if path.is_absolute() else (self.base_dir / path).resolve()


class ConfigError(Exception):
    """The config is invalid; ``problems`` lists every problem with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


def config_path(explicit: str | Path | None = None) -> Path:
    """``-c`` wins, then ``SCANRELAY_CONFIG``, then ``./config.yml``."""
    return Path(explicit or os.environ.get("SCANRELAY_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate the config; raises ``ConfigError`` listing every problem."""
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read the config file: {exc.strerror}"]) from exc
    return parse_config(text, source=str(file), base_dir=file.resolve().parent)


def parse_config(text: str, *, source: str = "config.yml", base_dir: Path = Path(".")) -> Config:
    try:
        raw = yaml.safe_load(text)
        lines = _line_index(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping of sections"])
    secrets = _literal_secrets(raw, ())
    problems = [_describe(loc, _literal_secret_hint(loc[-1]), lines) for loc in sorted(secrets)]
    problems += _name_references(raw, lines)
    try:
        config = Config.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        problems += [_describe(err["loc"], err["msg"], lines) for err in exc.errors()
                     if not (err["type"] == "extra_forbidden" and _plain(err["loc"]) in secrets)]
        raise ConfigError(source, problems) from None
    problems += _schedule_templates(config, lines)
    if problems:
        raise ConfigError(source, problems)
    return config


def _name_references(raw: dict[str, Any], lines: dict[tuple[str, ...], int]) -> list[str]:
    """Names that must refer to configured things. Checked on the raw document, so they
    are reported together with schema problems (every problem at once)."""
    from daemon.request import ACTIONS, REQUEST_KEYS  # late: request imports config

    instances, profiles = _section(raw, "instances"), _section(raw, "profiles")
    problems = []
    for name, profile in profiles.items():
        loc: tuple[str | int, ...] = ("profiles", name)
        if not isinstance(profile, dict):
            continue
        for key in profile:
            if key not in REQUEST_KEYS or key == "profile":
                problems.append(_describe((*loc, key), "unknown request key", lines))
        for key in ("source", "target"):
            if key in profile and profile[key] not in instances:
                msg = f"unknown instance {profile[key]!r}; configured: {_names(instances)}"
                problems.append(_describe((*loc, key), msg, lines))
        if "action" in profile and profile["action"] not in ACTIONS:
            msg = f"unknown action {profile['action']!r}; use one of {', '.join(ACTIONS)}"
            problems.append(_describe((*loc, "action"), msg, lines))
    default = _section(raw, "defaults").get("profile")
    if default is not None and default not in profiles:
        msg = f"unknown profile {default!r}; configured: {_names(profiles)}"
        problems.append(_describe(("defaults", "profile"), msg, lines))
    schedules = raw.get("schedules") if isinstance(raw.get("schedules"), list) else []
    for i, schedule in enumerate(schedules or []):
        request = schedule.get("request") if isinstance(schedule, dict) else None
        prof = request.get("profile") if isinstance(request, dict) else None
        if prof is not None and prof not in profiles:
            msg = f"unknown profile {prof!r}; configured: {_names(profiles)}"
            problems.append(_describe(("schedules", i, "request", "profile"), msg, lines))
    return problems


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _schedule_templates(config: Config, lines: dict[tuple[str, ...], int]) -> list[str]:
    """A schedule's request must be valid as a dropped file would be (relative dates
    resolve at each fire); an unknown profile is reported above already."""
    from daemon.errors import RequestError  # late: request imports config
    from daemon.request import build_request

    problems = []
    for i, schedule in enumerate(config.schedules):
        if schedule.request.get("profile", config.defaults.profile) not in (None,
                                                                             *config.profiles):
            continue
        try:
            build_request(schedule.request, config)
        except RequestError as exc:
            problems += [_describe(("schedules", i, "request"), p, lines) for p in exc.problems]
    return problems


def _literal_secret_hint(key: str) -> str:
    return ("a literal secret is not allowed in the config; name an environment variable "
            f"with {key}_env or a file with {key}_file")


def _literal_secrets(node: Any, loc: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Where the document holds a literal secret (a key like ``password`` with a value)."""
    found: set[tuple[str, ...]] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            here = (*loc, str(key))
            if isinstance(key, str) and SECRET_KEY.search(key) and value not in (None, ""):
                found.add(here)
            else:
                found |= _literal_secrets(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found |= _literal_secrets(item, (*loc, str(i)))
    return found


def _plain(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """A pydantic error location as a document path (union tags dropped)."""
    return tuple(str(p) for p in loc if p not in ("folder", "platform"))


def _describe(loc: tuple[Any, ...], msg: str, lines: dict[tuple[str, ...], int]) -> str:
    parts = _plain(loc)
    path = ".".join(parts) or "(top level)"
    line = _nearest_line(parts, lines)
    where = f"line {line}: " if line else ""
    return f"{where}{path}: {msg}"


def _nearest_line(parts: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return None


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path of the YAML document to its 1-based line."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, loc: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*loc, str(key.value))
                index[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = (*loc, str(i))
                index[here] = item.start_mark.line + 1
                walk(item, here)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return index


def _names(mapping: dict[str, Any]) -> str:
    return ", ".join(sorted(mapping)) or "(none)"


def read_secret(env: str | None, file: Path | None, what: str) -> str | None:
    """Resolve a secret named by ``*_env`` or ``*_file``; ``$CREDENTIALS_DIRECTORY`` is
    searched for a relative file name (systemd ``LoadCredential=``)."""
    from daemon.errors import FatalError

    if env:
        value = os.environ.get(env)
        if value is None:
            raise FatalError(f"{what}: environment variable {env} is not set")
        return value
    if file:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        path = file if file.is_absolute() or not creds else Path(creds) / file
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FatalError(f"{what}: cannot read secret file {path}: {exc.strerror}") from exc
    return None
