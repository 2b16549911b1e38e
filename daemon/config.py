"""Configuration: ``config.yml`` loaded into validated, frozen models.

Every problem is reported at once, each with its path in the file (and its line where
the YAML tells it). Secrets never live in the file: ``*_env`` names an environment
variable, ``*_file`` names a file (e.g. a systemd credential); a literal one is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|apikey)$", re.IGNORECASE)
DEFAULT_CONFIG = "config.yml"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderInstanceConfig(Model):
    kind: Literal["folder"]
    path: Path
    max_connections: int = Field(default=4, ge=1, le=64)


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
    retry_attempts: int = Field(default=6, ge=1, le=50)
    retry_max_seconds: float = Field(default=300, gt=0)
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


class LimitsConfig(Model):
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_scans: int = Field(default=100_000, ge=1)


class LogConfig(Model):
    json_lines: bool = Field(default=False, alias="json")
    level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MetricsConfig(Model):
    listen: str | None = None


class RetentionConfig(Model):
    days: int | None = Field(default=None, ge=1)


class CopyConfig(Model):
    wait_for_processing: float = Field(default=7200, ge=0)
    poll_interval: float = Field(default=30, gt=0)


class ScheduleConfig(Model):
    name: str = Field(pattern=NAME_PATTERN)
    cron: str
    timezone: str = "UTC"
    request: dict[str, Any]


class RerunsConfig(Model):
    cron: str = "30 1 * * *"
    max_attempts: int = Field(default=3, ge=1, le=100)
    timezone: str = "UTC"


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
    copy_: CopyConfig = Field(default=CopyConfig(), alias="copy")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Set by ``load_config``: where the file was, so relative paths resolve against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @property
    def root(self) -> Path:
        return (self.base_dir / self.paths.root).resolve()

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
    problems = _literal_secrets(raw, (), lines)
    try:
        config = Config.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        problems += [_describe(err["loc"], err["msg"], lines) for err in exc.errors()]
        raise ConfigError(source, problems) from None
    problems += _cross_references(config, lines)
    if problems:
        raise ConfigError(source, problems)
    return config


def _cross_references(config: Config, lines: dict[tuple[str, ...], int]) -> list[str]:
    """Checks pydantic cannot do alone: names that must refer to configured things."""
    from daemon.request import ACTIONS, REQUEST_KEYS  # late: request imports config

    problems = []
    for name, profile in config.profiles.items():
        loc: tuple[str | int, ...] = ("profiles", name)
        for key in profile:
            if key not in REQUEST_KEYS or key == "profile":
                problems.append(_describe((*loc, key), "unknown request key", lines))
        for key in ("source", "target"):
            if key in profile and profile[key] not in config.instances:
                msg = f"unknown instance {profile[key]!r}; configured: {_names(config.instances)}"
                problems.append(_describe((*loc, key), msg, lines))
        if "action" in profile and profile["action"] not in ACTIONS:
            msg = f"unknown action {profile['action']!r}; use one of {', '.join(ACTIONS)}"
            problems.append(_describe((*loc, "action"), msg, lines))
    if config.defaults.profile and config.defaults.profile not in config.profiles:
        msg = f"unknown profile {config.defaults.profile!r}; configured: {_names(config.profiles)}"
        problems.append(_describe(("defaults", "profile"), msg, lines))
    for i, schedule in enumerate(config.schedules):
        prof = schedule.request.get("profile")
        if prof is not None and prof not in config.profiles:
            msg = f"unknown profile {prof!r}; configured: {_names(config.profiles)}"
            problems.append(_describe(("schedules", i, "request", "profile"), msg, lines))
    return problems


def _literal_secrets(node: Any, loc: tuple[str | int, ...], lines: dict[tuple[str, ...], int]
                     ) -> list[str]:
    problems = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = (*loc, str(key))
            if isinstance(key, str) and SECRET_KEY.search(key) and value not in (None, ""):
                problems.append(_describe(here, (
                    "a literal secret is not allowed in the config; name an environment "
                    f"variable with {key}_env or a file with {key}_file"), lines))
            else:
                problems += _literal_secrets(value, here, lines)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            problems += _literal_secrets(item, (*loc, i), lines)
    return problems


def _describe(loc: tuple[Any, ...], msg: str, lines: dict[tuple[str, ...], int]) -> str:
    parts = [str(p) for p in loc if p not in ("folder", "platform")]  # drop union tags
    path = ".".join(parts) or "(top level)"
    line = _nearest_line(tuple(parts), lines)
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
