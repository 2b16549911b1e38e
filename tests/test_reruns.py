"""The rerun window through the real daemon, against the reference platform server:
a request failed by an outage (every call answered 503) is re-dropped at the next
window and succeeds once the outage is over; one failed by a 400 is never re-dropped;
attempts stop at ``max_attempts`` and ``error.txt`` says so. Windows come every two
seconds here (a six-field cron)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DaemonProcess, drop, error_text, listing, wait_settled
from test_download_platform import daemon_env, ids_csv, platform_root

from daemon.sandbox import Fault, RefServer
from daemon.schedule.reruns import rerun_name

EVERY_2S = "*/2 * * * * *"


@pytest.fixture
def ref(platform_db: str, tmp_path: Path) -> Iterator[RefServer]:
    with RefServer(platform_db, tmp_path / "platform") as server:
        yield server


def rerun_root(tmp_path: Path, ref: RefServer, max_attempts: int) -> Path:
    # One try per call and a short timeout: an outage fails a run within a second.
    root = platform_root(tmp_path, ref, retry_attempts=1, retry_max_seconds=5)
    config = yaml.safe_load((root / "config.yml").read_text())
    config["reruns"] = {"cron": EVERY_2S, "max_attempts": max_attempts}
    (root / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def outage(ref: RefServer) -> None:
    """The instance is down: every API and file call is answered 503."""
    ref.faults.set(rate=1.0, kinds={Fault.HTTP_503})


def end_outage(ref: RefServer) -> None:
    ref.faults.set(rate=0.0)  # rules such as fail_scan stay


def follow_reruns(root: Path, name: str, timeout: float = 60,
                  next_within: float = 8.0) -> list[tuple[str, dict[str, Any]]]:
    """The chain of a request and its reruns, each settled: ``[(name, result), ...]``,
    up to the first that is done, or that no rerun follows within ``next_within``
    seconds (three windows and a run)."""
    chain = []
    deadline = time.monotonic() + timeout
    while True:
        left = max(1.0, deadline - time.monotonic())
        folder, result = wait_settled(root, [name], timeout=left)[name]
        chain.append((name, result))
        if folder == "done":
            return chain
        name = rerun_name(name, result["run_id"], result["attempt"] + 1)
        if not wait_settled(root, [name], timeout=next_within, missing_ok=True):
            return chain


def reruns_of(root: Path, stem: str) -> list[str]:
    """Every rerun request of ``stem`` anywhere under the root's folders."""
    return [p for folder in ("inbox", "processing", "done", "failed")
            for p in listing(root / folder) if f"{stem}.attempt" in p and ".json." not in p]


@pytest.mark.slow
def test_outage_is_rerun_until_it_succeeds_and_a_400_never_is(ref: RefServer,
                                                               tmp_path: Path) -> None:
    seeded = ref.seed(scans=4, files_per_scan=2, file_size=2_000, seed=7)
    good, bad = seeded.scan_ids[:3], seeded.scan_ids[3]
    ref.fail_scan(bad, 400)  # permanent: answered 400 before any outage fault
    root = rerun_root(tmp_path, ref, max_attempts=5)
    with DaemonProcess(root, env=daemon_env(ref)) as daemon:
        drop(root / "inbox", "bad.csv", ids_csv([bad]))
        bad_folder, bad_result = wait_settled(root, ["bad.csv"], timeout=30)["bad.csv"]
        outage(ref)
        drop(root / "inbox", "outage.csv", ids_csv(good))
        folder, result = wait_settled(root, ["outage.csv"], timeout=30)["outage.csv"]
        end_outage(ref)
        chain = follow_reruns(root, "outage.csv")
        time.sleep(4.5)  # two more windows
        log = daemon.log_text()
    assert bad_folder == "failed" and bad_result["transient"] is False, bad_result
    assert folder == "failed" and result["transient"] is True, result
    # The outage's request was re-dropped (more than once if a window beat the end of
    # the outage) and its last rerun succeeded, each rerun chained to the run before.
    _, last = chain[-1]
    assert len(chain) >= 2 and last["status"] == "done", chain
    assert last["attempt"] == len(chain)
    for (earlier_name, earlier), (name, later) in zip(chain, chain[1:], strict=False):
        run = yaml.safe_load((root / later["run_dir"] / "request.json").read_text())
        assert run["retry_of"] == earlier["run_id"] and run["attempt"] == later["attempt"]
        assert f"re-dropped {earlier_name} as {name}" in log
    # Each rerun asked for exactly what the run before it failed (a window that caught the
    # end of the outage half-way may leave a partial run), and every scan got done.
    done_ids: set[int] = set()
    for (_, earlier), (_, later) in zip(chain, chain[1:], strict=False):
        assert sorted(run_scan_ids(root, later)) == sorted(f["scan_id"] for f in earlier["failed"])
    for _, attempt in chain:
        failed = {f["scan_id"] for f in attempt["failed"]}
        done_ids |= set(run_scan_ids(root, attempt)) - failed
    assert run_scan_ids(root, chain[0][1]) == good and done_ids == set(good)
    # The 400 is permanent: never re-dropped, however many windows pass.
    assert reruns_of(root, "bad") == []
    assert "Not re-dropped" not in error_text(root, "failed", "bad.csv")


def run_scan_ids(root: Path, result: dict[str, Any]) -> list[int]:
    return yaml.safe_load((root / result["run_dir"] / "request.json").read_text())["scan_ids"]


@pytest.mark.slow
def test_attempts_stop_at_max_attempts_and_error_txt_says_so(ref: RefServer,
                                                             tmp_path: Path) -> None:
    seeded = ref.seed(scans=2, files_per_scan=1, file_size=2_000, seed=8)
    root = rerun_root(tmp_path, ref, max_attempts=2)
    outage(ref)  # for good
    with DaemonProcess(root, env=daemon_env(ref)):
        drop(root / "inbox", "down.csv", ids_csv(seeded.scan_ids))
        chain = follow_reruns(root, "down.csv", timeout=30)  # waited 8 s for a 3rd attempt
    assert [r["attempt"] for _, r in chain] == [1, 2], chain
    assert all(r["transient"] for _, r in chain)
    last_name = chain[-1][0]
    text = error_text(root, "failed", last_name)
    assert text.count("Not re-dropped by the rerun window: this was attempt 2 and "
                      "reruns.max_attempts is 2.") == 1, text
    assert f"drop {last_name}.retry.json into the inbox" in text
    assert "Not re-dropped" not in error_text(root, "failed", "down.csv")
    # A restart re-drops nothing either (what was re-dropped is in state/), and the
    # note is not added twice.
    with DaemonProcess(root, env=daemon_env(ref)):
        time.sleep(4.5)
    assert reruns_of(root, "down") == [last_name]
    assert error_text(root, "failed", last_name) == text
