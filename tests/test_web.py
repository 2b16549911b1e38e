"""The web page over real HTTP on loopback, served by a real daemon subprocess:
refusing an unsafe bind, the token, path traversal, no secret in any answer."""

from __future__ import annotations

import html
import http.client
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml
from helpers import DaemonProcess, drop, make_root, wait_settled
from web_support import free_port, web_root

from daemon.config import ConfigError, parse_config
from daemon.store.records import RunFilter
from daemon.store.sqlite_requests import SqliteRequestStore

TOKEN = "canary-token-5f1d0c9e2b7a4e61"
API_PASSWORD = "canary-api-pw-8c2e71d4"
DB_PASSWORD = "canary-db-pw-3a9f05b1"
PAGES = ("/", "/live/overview", "/runs", "/failed", "/schedules")


def _run_id(root: Path, name: str) -> str:
    return json.loads((root / "failed" / f"{name}.result.json").read_text())["run_id"]


def test_config_refuses_a_public_bind_without_token_and_actions_without_token() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("web: {listen: '0.0.0.0:8686'}\n")
    assert "line 1: web: Value error, listen '0.0.0.0:8686' is not a loopback address: " \
           "set web.token_file" in err.value.problems[0]
    with pytest.raises(ConfigError, match="actions: true needs web.token_file"):
        parse_config("web: {listen: '127.0.0.1:8686', actions: true}\n")
    with pytest.raises(ConfigError, match="must be host:port"):
        parse_config("web: {listen: '127.0.0.1'}\n")
    assert parse_config("web: {listen: '[::1]:8686'}\n").web.listen == "[::1]:8686"
    public = parse_config("web: {listen: '0.0.0.0:8686', token_file: t}\n")
    assert public.web.token_file == Path("t")


def test_daemon_refuses_to_start_on_a_public_address_without_token(tmp_path: Path) -> None:
    port = free_port()
    root = make_root(tmp_path, web={"listen": f"0.0.0.0:{port}"})
    out = subprocess.run([sys.executable, "-m", "daemon", "run", "-c", "config.yml"],
                         cwd=root, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert f"listen '0.0.0.0:{port}' is not a loopback address: set web.token_file" in out.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_taken_port_leaves_the_daemon_running_without_its_page(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        root = make_root(tmp_path, web={"listen": f"127.0.0.1:{port}"})
        with DaemonProcess(root) as daemon:
            drop(root / "inbox", "r.csv", "scan_id\n1001\n")
            assert wait_settled(root, ["r.csv"])["r.csv"][0] == "done"
            assert f"web.listen 127.0.0.1:{port}: cannot listen there" in daemon.log_text()


def test_with_a_token_every_page_needs_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    root, base = web_root(tmp_path, token_file=str(tmp_path / "token"))
    with DaemonProcess(root):
        drop(root / "inbox", "r.csv", "scan_id\n1001\n999999\n")
        wait_settled(root, ["r.csv"])
        run = _run_id(root, "r.csv")
        for path in (*PAGES, f"/runs/{run}", f"/runs/{run}/live",
                     f"/runs/{run}/files/run.log", f"/runs/{run}/files/error.txt"):
            plain = requests.get(base + path, timeout=10)
            assert plain.status_code == 401, path
            assert TOKEN not in plain.text
            wrong = requests.get(base + path, headers={"Authorization": "Bearer nope"},
                                 timeout=10)
            assert wrong.status_code == 401, path
            right = requests.get(base + path, headers={"Authorization": f"Bearer {TOKEN}"},
                                 timeout=10)
            assert right.status_code == 200, path
        # The login form: a wrong token is refused, the right one sets an HttpOnly,
        # SameSite=Strict cookie that is not the token, and that cookie lets one in.
        session = requests.Session()
        bad = session.post(base + "/login", data={"token": "nope", "next": "/runs"},
                           timeout=10, allow_redirects=False)
        assert bad.status_code == 401 and "not right" in bad.text
        good = session.post(base + "/login", data={"token": TOKEN, "next": "/runs"},
                            timeout=10, allow_redirects=False)
        assert good.status_code == 303 and good.headers["location"] == "/runs"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        assert session.get(base + "/runs", timeout=10).status_code == 200
        evil = session.post(base + "/login", data={"token": TOKEN, "next": "//evil.example/"},
                            timeout=10, allow_redirects=False)
        assert evil.headers["location"] == "/"


def _raw_get(base: str, path: str) -> int:
    """GET with the path sent exactly as given (no client normalises ``..``)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_only_known_files_of_run_folders_are_served(tmp_path: Path) -> None:
    root, base = web_root(tmp_path)
    with DaemonProcess(root):
        drop(root / "inbox", "r.csv", "scan_id\n1001\n999999\n")
        wait_settled(root, ["r.csv"])
        run = _run_id(root, "r.csv")
        (root / "runs" / run / "secret.txt").write_text("not a known file")
        (root / "runs" / run / "request.json.bak").write_text("{}")
        assert _raw_get(base, f"/runs/{run}/files/manifest.csv") == 200
        assert _raw_get(base, f"/runs/{run}/files/error.txt") == 200
        for path in (f"/runs/{run}/files/../../../config.yml",
                     f"/runs/{run}/files/..%2F..%2F..%2Fconfig.yml",
                     f"/runs/{run}/files/%2e%2e%2f%2e%2e%2fconfig.yml",
                     f"/runs/{run}/files/..%252F..%252Fconfig.yml",
                     f"/runs/{run}/files//etc/passwd",
                     f"/runs/{run}/files/%2Fetc%2Fpasswd",
                     f"/runs/{run}/files/secret.txt",
                     f"/runs/{run}/files/request.json.bak",
                     f"/runs/{run}/files/images",
                     "/runs/..%2F..%2Fstate/files/ledger.sqlite",
                     "/runs/../state/files/ledger.sqlite",
                     "/runs/%2Fetc/files/passwd",
                     "/static/../config.yml", "/static/..%2F..%2Fconfig.py",
                     "/runs/20990101-000000-copy-abcdef/files/run.log"):
            assert _raw_get(base, path) == 404, path
        # A symlink planted in a run folder under a known name is not followed.
        (root / "runs" / run / "analysis.csv").symlink_to(root / "config.yml")
        assert _raw_get(base, f"/runs/{run}/files/analysis.csv") == 404


@pytest.mark.slow  # the platform run waits out its connection pool's 30 s
def test_no_secret_in_any_page_header_or_download(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    dead = free_port()  # nothing listens there: the run fails with errors
    platform = {"kind": "platform", "api_url": f"http://127.0.0.1:{dead}",
                "db": {"host": "127.0.0.1", "port": dead, "dbname": "x", "user": "u"},
                "api_username": "qa", "api_password_env": "CANARY_API_PASSWORD",
                "db_password_env": "CANARY_DB_PASSWORD", "retry_attempts": 1}
    root, base = web_root(tmp_path, token_file=str(tmp_path / "token"))
    config = yaml.safe_load((root / "config.yml").read_text())
    config["instances"]["prod"] = platform
    config["profiles"]["prod-download"] = {"action": "download", "source": "prod"}
    (root / "config.yml").write_text(yaml.safe_dump(config))
    env = {"CANARY_API_PASSWORD": API_PASSWORD, "CANARY_DB_PASSWORD": DB_PASSWORD}
    canaries = (TOKEN, API_PASSWORD, DB_PASSWORD)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with DaemonProcess(root, env=env):
        drop(root / "inbox" / "prod-download", "p.csv", "scan_id\n1\n2\n")
        drop(root / "inbox", "r.csv", "scan_id\n1001\n999999\n")
        wait_settled(root, ["p.csv", "r.csv"], timeout=60)
        runs = [_run_id(root, "p.csv"), _run_id(root, "r.csv")]
        answers = [requests.get(base + p, headers=auth, timeout=10) for p in PAGES]
        for run in runs:
            page = requests.get(f"{base}/runs/{run}", headers=auth, timeout=10)
            answers.append(page)
            files = re.findall(rf'href="(/runs/{run}/files/[^"]+)"', page.text)
            assert f"/runs/{run}/files/run.log" in files
            answers += [requests.get(base + f, headers=auth, timeout=10) for f in files]
        answers.append(requests.get(base + "/", timeout=10))  # the login form
        session = requests.Session()
        answers.append(session.post(base + "/login", data={"token": TOKEN}, timeout=10,
                                    allow_redirects=False))
        for answer in answers:
            blob = answer.content + repr(dict(answer.headers)).encode()
            for canary in canaries:
                assert canary.encode() not in blob, (answer.url, canary)
        assert sum(a.status_code == 200 for a in answers) >= len(answers) - 2


def test_ledger_filter_text_is_a_literal_substring(tmp_path: Path) -> None:
    ledger = SqliteRequestStore(tmp_path / "ledger.sqlite")
    for i, name in enumerate(("a_b.csv", "axb.csv", "100%.csv", "plain.csv")):
        ledger.claimed(f"c{i}", name, None)
    assert [r.name for r in ledger.search(RunFilter(text="a_b"), 10)] == ["a_b.csv"]
    assert [r.name for r in ledger.search(RunFilter(text="%"), 10)] == ["100%.csv"]
    assert ledger.count(RunFilter(text="csv")) == 4
    assert ledger.count(RunFilter(status="claimed", text="plain")) == 1
    ledger.close()


def test_failed_and_schedules_pages_say_what_the_cli_says(tmp_path: Path) -> None:
    schedule = {"name": "nightly", "cron": "0 2 * * *", "timezone": "UTC",
                "request": {"profile": "demo-download", "scan_ids": [1001]}}
    root, base = web_root(tmp_path, {"schedules": [schedule]})
    with DaemonProcess(root):
        drop(root / "inbox", "bad.json", '{"action": "download", "colour": "red"}')
        wait_settled(root, ["bad.json"])
        failed = requests.get(base + "/failed", timeout=10).text
        error = (root / "failed" / "bad.json.error.txt").read_text()
        assert "bad.json" in failed and "colour" in failed
        claim = json.loads((root / "failed" / "bad.json.result.json").read_text())["claim_id"]
        assert f'href="/runs/{claim}"' in failed
        page = requests.get(f"{base}/runs/{claim}", timeout=10).text
        assert "invalid" in page
        assert html.escape(error.strip().splitlines()[0]) in page
        shown = subprocess.run([sys.executable, "-m", "daemon", "schedules", "--json"],
                               cwd=root, capture_output=True, text=True, timeout=60)
        row = json.loads(shown.stdout)[0]
        schedules = requests.get(base + "/schedules", timeout=10).text
        assert row["job"] == "schedule:nightly" and row["job"] in schedules
        assert "0 2 * * *" in schedules
        assert row["next_fire"][:10] in schedules
