"""Config tests: the shipped config, every problem reported at once with its path and
line, no literal secrets, cross-references, and ``scanrelay validate``'s exit codes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import config_dict

from daemon.config import (
    ConfigError,
    FolderInstanceConfig,
    config_path,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^line (\d+): ")


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    return exc.value.problems


def lines_of(problems: list[str]) -> list[int]:
    found = [LINE.match(p) for p in problems]
    assert all(found), f"a problem without its line: {problems}"
    return [int(m.group(1)) for m in found if m]


def test_shipped_config_is_valid() -> None:
    config = load_config(REPO / "config.yml")
    assert config.root == REPO
    assert config.defaults.profile in config.profiles
    for profile in config.profiles.values():
        for key in ("source", "target"):
            assert profile.get(key) is None or profile[key] in config.instances
    source = config.instances["demo-source"]
    assert isinstance(source, FolderInstanceConfig)
    assert config.instance_path(source.path) == REPO / "data" / "demo-source"


def test_test_config_of_helpers_is_valid() -> None:
    config = parse_config(yaml.safe_dump(config_dict()))
    assert set(config.profiles) == {"demo-download", "demo-copy"}


def test_empty_config_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("# nothing yet\n")
    config = load_config(path)
    assert config.root == tmp_path and config.instances == {} and config.runs.max_parallel == 2


def test_three_schema_problems_give_three_messages_with_lines() -> None:
    text = """\
paths: {root: .}
instances:
  demo:
    kind: folder
    path: ./demo
    speed: 3
runs:
  max_parallel: 0
log:
  level: LOUD
"""
    problems = problems_of(text)
    assert len(problems) == 3, problems
    assert lines_of(problems) == [6, 8, 10]
    assert "instances.demo.speed: Extra inputs are not permitted" in problems[0]
    assert "runs.max_parallel: Input should be greater than or equal to 1" in problems[1]
    assert "log.level: Input should be 'TRACE'" in problems[2]


def test_three_reference_problems_give_three_messages_with_lines() -> None:
    text = """\
defaults:
  profile: nightly
instances:
  demo: {kind: folder, path: ./demo}
profiles:
  p:
    action: download
    source: prod
  q:
    action: move
    source: demo
"""
    problems = problems_of(text)
    assert len(problems) == 3, problems
    assert sorted(lines_of(problems)) == [2, 8, 10]
    text_all = "\n".join(problems)
    assert "line 8: profiles.p.source: unknown instance 'prod'; configured: demo" in text_all
    assert "line 10: profiles.q.action: unknown action 'move'; use one of copy, download, " \
           "analyze" in text_all
    assert "line 2: defaults.profile: unknown profile 'nightly'; configured: p, q" in text_all


def test_unknown_profile_in_a_schedule_and_unknown_profile_key() -> None:
    text = """\
instances:
  demo: {kind: folder, path: ./demo}
profiles:
  p: {action: download, source: demo, colour: red, profile: p}
schedules:
  - name: nightly
    cron: "0 2 * * *"
    request: {profile: nope}
"""
    problems = problems_of(text)
    assert "line 4: profiles.p.colour: unknown request key" in problems
    assert "line 4: profiles.p.profile: unknown request key" in problems
    assert any(p.startswith("line 8: schedules.0.request.profile: unknown profile 'nope'")
               for p in problems), problems


def test_schema_and_reference_problems_are_reported_together() -> None:
    problems = problems_of("defaults:\n  profile: nope\nruns:\n  max_parallel: 0\n")
    assert lines_of(problems) == [2, 4]


@pytest.mark.parametrize(("text", "key", "line"), [
    ("""\
instances:
  prod:
    kind: platform
    api_url: https://prod.example.net
    api_password: hunter2
    db: {host: db, dbname: prod, user: proxy}
""", "instances.prod.api_password", 5),
    ("""\
instances:
  prod:
    kind: platform
    api_url: https://prod.example.net
    db:
      host: db
      dbname: prod
      user: proxy
      password: hunter2
""", "instances.prod.db.password", 9),
    ("schedules:\n  - name: n\n    cron: '0 2 * * *'\n    request: {token: abc123}\n",
     "schedules.0.request.token", 4),
    ("cluster:\n  host_id: a\n  dsn: postgresql://u:hunter2@db/scanrelay\n", "cluster.dsn", 3),
])
def test_literal_secret_is_an_error_naming_key_and_fix(text: str, key: str,
                                                        line: int) -> None:
    problems = problems_of(text)
    last = key.rsplit(".", 1)[1]
    expected = (f"line {line}: {key}: a literal secret is not allowed in the config; name an "
                f"environment variable with {last}_env or a file with {last}_file")
    assert expected in problems, problems
    assert not any("hunter2" in p or "abc123" in p for p in problems)  # never echo it


def test_literal_secret_is_reported_once() -> None:
    problems = problems_of("""\
instances:
  prod:
    kind: platform
    api_url: https://prod.example.net
    api_password: hunter2
    db: {host: db, dbname: prod, user: proxy}
""")
    assert len([p for p in problems if "api_password" in p]) == 1, problems


def test_secrets_by_env_and_file_are_fine() -> None:
    config = parse_config("""\
instances:
  prod:
    kind: platform
    api_url: https://prod.example.net
    api_username: proxyuser
    api_password_env: PROD_API_PASSWORD
    db: {host: db, dbname: prod, user: proxy, password_file: /run/credentials/x}
""")
    assert "prod" in config.instances


def test_one_source_per_secret() -> None:
    problems = problems_of("""\
instances:
  prod:
    kind: platform
    api_url: https://prod.example.net
    api_password_env: A
    api_password_file: /b
    db: {host: db, dbname: prod, user: proxy}
""")
    assert len(problems) == 1
    assert problems[0].startswith("line 2: instances.prod:")
    assert "give only one of api_password_env, api_password_file" in problems[0]


@pytest.mark.parametrize(("text", "expected"), [
    ("a: [1\nb: 2\n", "not valid YAML"),
    ("- just\n- a list\n", "the top level must be a mapping of sections"),
    ("instances:\n  a: {kind: cloud, path: x}\n", "line 2: instances.a: Input tag 'cloud'"),
    ("instances:\n  a: {kind: folder}\n", "line 2: instances.a.path: Field required"),
    ("instances:\n  'bad name': {kind: folder, path: x}\n", "line 2: instances.bad name"),
    ("intake: {mode: fast}\n", "line 1: intake.mode: Input should be 'events' or 'polling'"),
    ("colour: red\n", "line 1: colour: Extra inputs are not permitted"),
    ("cluster: {host_id: a}\n", "line 1: cluster: Value error, set exactly one of dsn_env"),
    ("cluster: {host_id: a, dsn_env: A, dsn_file: /b}\n", "set exactly one of dsn_env"),
    ("cluster: {host_id: 'a b', dsn_env: A}\n", "cluster.host_id: String should match"),
])
def test_other_config_problems(text: str, expected: str) -> None:
    assert any(expected in p for p in problems_of(text)), problems_of(text)


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "missing.yml")
    assert exc.value.problems == ["cannot read the config file: No such file or directory"]


def test_cluster_section_is_optional_and_names_its_dsn_source() -> None:
    assert parse_config("").cluster is None
    cluster = parse_config("cluster: {host_id: host-a, dsn_env: SCANRELAY_DSN}\n").cluster
    assert cluster is not None
    assert (cluster.host_id, cluster.dsn_env, cluster.batch_size) == ("host-a",
                                                                      "SCANRELAY_DSN", 200)


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCANRELAY_CONFIG", raising=False)
    assert config_path() == Path("config.yml")
    monkeypatch.setenv("SCANRELAY_CONFIG", "from-env.yml")
    assert config_path() == Path("from-env.yml")
    assert config_path("explicit.yml") == Path("explicit.yml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "config.yml"
    path.write_text("paths: {root: ../srv}\ninstances:\n  a: {kind: folder, path: data/a}\n")
    config = load_config(path)
    assert config.root == tmp_path / "srv"
    instance = config.instances["a"]
    assert isinstance(instance, FolderInstanceConfig)
    assert config.instance_path(instance.path) == tmp_path / "etc" / "data" / "a"


# --- scanrelay validate (a real process) -------------------------------------------------


def validate(*args: str, cwd: Path, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "validate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "1000", **(env or {})})


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config_dict()))
    (tmp_path / "good.json").write_text(
        '{"action": "download", "source": "demo-source", "scan_ids": [1, 2]}')
    (tmp_path / "bad.json").write_text(
        '{"action": "download", "source": "demo-source", "scan_ids": [1], "colour": 1}')
    return tmp_path


@pytest.mark.slow
def test_validate_ok_exits_0(site: Path) -> None:
    done = validate("-c", "config.yml", "good.json", cwd=site)
    assert done.returncode == 0, done.stderr
    assert "config: ok (2 instances, 2 profiles)" in done.stdout
    assert "good.json: ok (download, 2 scans)" in done.stdout


@pytest.mark.slow
def test_validate_bad_request_exits_1_with_messages(site: Path) -> None:
    done = validate("good.json", "bad.json", cwd=site,
                    env={"SCANRELAY_CONFIG": str(site / "config.yml")})
    assert done.returncode == 1
    assert "good.json: ok" in done.stdout
    assert "bad.json: invalid" in done.stderr
    assert "  - colour: Extra inputs are not permitted; remove it" in done.stderr
    assert "good.json" not in done.stderr


@pytest.mark.slow
def test_validate_applies_the_profile_of_the_inbox_folder(site: Path) -> None:
    folder = site / "inbox" / "demo-copy"
    folder.mkdir(parents=True)
    (folder / "ids.csv").write_text("scan_id\n1\n2\n3\n")
    done = validate("inbox/demo-copy/ids.csv", cwd=site)
    assert done.returncode == 0, done.stderr
    assert "ids.csv: ok (copy, 3 scans)" in done.stdout


@pytest.mark.slow
def test_validate_bad_config_exits_2_with_lines(site: Path) -> None:
    (site / "config.yml").write_text(
        "instances:\n  prod:\n    kind: folder\n    path: x\n    token: abc\n"
        "runs: {max_parallel: 99}\n")
    done = validate("good.json", cwd=site)
    assert done.returncode == 2
    assert "config config.yml is invalid" in done.stderr
    assert "line 5: instances.prod.token: a literal secret is not allowed" in done.stderr
    assert "line 6: runs.max_parallel: Input should be less than or equal to 32" in done.stderr
    assert "good.json" not in done.stdout  # no request is checked against a broken config


@pytest.mark.slow
def test_validate_missing_config_exits_2(tmp_path: Path) -> None:
    done = validate("-c", "nowhere.yml", cwd=tmp_path)
    assert done.returncode == 2
    assert "cannot read the config file" in done.stderr


@pytest.mark.slow
def test_validate_reports_unreadable_request_without_traceback(site: Path) -> None:
    (site / "deep.json").write_text("[" * 5000)
    done = validate("deep.json", cwd=site)
    assert done.returncode == 1
    assert "deep.json: invalid" in done.stderr and "Traceback" not in done.stderr
