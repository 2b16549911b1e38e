"""``scanrelay select``: the count and first scans of a selection, against a folder
instance (the demo) and the reference platform; and the wizard's preview of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from copy_support import env_for, platform_instance, ref_server
from helpers import make_root


def select(root: Path, *args: str, env: dict[str, str] | None = None,
           answers: str | None = None, command: str = "select"
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", command, *args, "-c",
                           str(root / "config.yml")], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})},
                          input=answers, stdin=None if answers is not None
                          else subprocess.DEVNULL)


def demo_scans(root: Path) -> list[dict[str, Any]]:
    docs = [json.loads(p.read_text(encoding="utf-8"))
            for p in (root / "data" / "demo-source" / "scans").glob("*/scan.json")]
    return sorted(docs, key=lambda d: (datetime.fromisoformat(d["captured_at"]), d["id"]))


def test_select_on_a_folder_instance_counts_and_lists_the_oldest_first(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    scans = demo_scans(root)
    store = scans[0]["store_id"]
    expected = [d for d in scans if d["store_id"] == store]
    out = select(root, "demo-source", "--store", str(store), "--show", "2", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["count"] == len(expected) >= 3
    assert [r["id"] for r in data["first"]] == [d["id"] for d in expected[:2]]
    assert data["first"][0] == {"id": expected[0]["id"], "store_id": store,
                                "captured_at": expected[0]["captured_at"],
                                "status": expected[0]["status"]}
    day = datetime.fromisoformat(scans[-1]["captured_at"]).date().isoformat()
    on_day = [d["id"] for d in scans if d["captured_at"].startswith(day)]
    data = json.loads(select(root, "demo-source", "--from", day, "--to", day, "--json").stdout)
    assert (data["count"], [r["id"] for r in data["first"]]) == (len(on_day), on_day)
    text = select(root, "demo-source", "--store", str(store), "--show", "1").stdout
    assert f"{len(expected)} scans match in demo-source" in text
    assert f"... and {len(expected) - 1} more" in text


def test_select_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    out = select(root, "demo-source", "--from", "2025-02-30", "--limit", "0")
    assert out.returncode == 2
    assert "--from:" in out.stderr and "--limit:" in out.stderr
    out = select(root, "nowhere")
    assert out.returncode == 2 and "unknown instance 'nowhere'" in out.stderr


def test_select_on_the_reference_platform(tmp_path: Path) -> None:
    day = date(2026, 3, 10)
    at = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    with ref_server(tmp_path, "prod") as prod:
        made = {}
        for n, (store, when, status) in enumerate([
                (5, at, "done"), (5, at + timedelta(hours=2), "done"),
                (5, at + timedelta(hours=1), "processing"), (6, at, "done"),
                (5, at - timedelta(days=1), "done"), (5, at + timedelta(days=1), "done")]):
            made[n], _ = prod.insert_scan(store, when, status, files=[("a.jpg", b"x" * 10)],
                                          provided_values={"captured_at": int(when.timestamp())})
        root = make_root(tmp_path, instances={"prod": platform_instance(prod, "prod")})
        env = env_for(prod=prod)
        out = select(root, "prod", "--store", "5", "--from", day.isoformat(), "--to",
                     day.isoformat(), "--status", "done", "--json", env=env)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["count"] == 2
        assert [r["id"] for r in data["first"]] == [made[0], made[1]]  # oldest first
        assert data["first"][0] == {"id": made[0], "store_id": 5,
                                    "captured_at": int(at.timestamp()), "status": "done"}
        assert data["select"] == {"store_id": 5, "captured_from": "2026-03-10",
                                  "captured_to": "2026-03-10", "status": "done"}
        data = json.loads(select(root, "prod", "--store", "5", "--limit", "3", "--json",
                                 env=env).stdout)
        assert data["count"] == 3 and [r["id"] for r in data["first"]] == \
            [made[4], made[0], made[2]]
        assert "password" not in out.stdout.lower() and prod.password not in out.stdout


def test_wizard_previews_a_selection_before_writing_the_request(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    scans = demo_scans(root)
    store = scans[0]["store_id"]
    matching = [d["id"] for d in scans if d["store_id"] == store]
    # A first selection with no match is declined (the default), a second one taken.
    answers = (f"download\ndemo-source\n\n999999\n-30d\ntoday\n0\n\n"
               f"{store}\n-30d\ntoday\n0\ny\npreviewed\n")
    out = select(root, answers=answers, command="new")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 scans match in demo-source" in out.stdout
    assert f"{len(matching)} scans match in demo-source" in out.stdout
    assert all(str(i) in out.stdout for i in matching)
    request = json.loads(Path(out.stdout.strip().splitlines()[-1]).read_text())
    assert request["select"]["store_id"] == store and request["label"] == "previewed"
