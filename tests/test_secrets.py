"""No secret in any output: canary secrets in the environment never appear in a file
under the root or in the daemon's log, after runs with transient faults, 400s whose
bodies echo the request (headers and token included), and a failed login."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from copy_support import platform_instance, ref_server
from helpers import DaemonProcess, drop, make_root, wait_settled

from daemon.sandbox import TRANSIENT_FAULTS, Fault, RefServer

CANARIES = {
    "PROD_API_PASSWORD": "canary-prod-pw-7Qx9Lm2Vb",
    "QA_API_PASSWORD": "canary-qa-pw-3Ty6Wn8Rc",
    "PROD_DB_PASSWORD": "canary-db-pw-4Rt8Kp1Zq",
    "LOCKED_API_PASSWORD": "canary-wrong-pw-9Hs3Jd6W",
}


def _tokens(*refs: RefServer) -> list[str]:
    out = []
    for ref in refs:
        with ref.connect() as conn:
            out += [r[0] for r in conn.execute("SELECT key FROM refserver_token").fetchall()]
    return out


def _everything(root: Path, daemon_log: str) -> str:
    """Every file under the root, as text, and the daemon's own output."""
    texts = [daemon_log]
    for path in root.rglob("*"):
        if path.is_file() and not path.is_relative_to(root / "data"):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(texts)


@pytest.mark.slow
def test_canary_secrets_never_leave_the_environment(tmp_path: Path) -> None:
    with ref_server(tmp_path, "prod", password=CANARIES["PROD_API_PASSWORD"],
                    echo_errors=True) as prod, \
            ref_server(tmp_path, "qa", password=CANARIES["QA_API_PASSWORD"],
                       echo_errors=True, processing_delay=0.1) as qa:
        seeded = prod.seed(scans=12, files_per_scan=2, file_size=3_000, seed=9)
        qa_store = qa.seed(scans=0).store_ids[0]
        ids = seeded.scan_ids
        prod.faults.timeout_sleep = 2.0
        prod.faults.set(rate=0.2, kinds=TRANSIENT_FAULTS - {Fault.TIMEOUT}, seed=4)
        prod.faults.fail_file(seeded.files[ids[2]][0].file_id, 400)  # echoes the token
        qa.faults.fail_create(400, source_scan_id=ids[5])  # echoes token and payload
        instances = {
            "prod": platform_instance(prod, "prod", db_password_env="PROD_DB_PASSWORD"),
            "qa": platform_instance(qa, "qa"),
            "locked": platform_instance(prod, "locked"),  # its password is wrong
        }
        root = make_root(tmp_path, demo=False, instances=instances, profiles={},
                         defaults={"profile": None}, log={"level": "DEBUG"})
        env = {**CANARIES, "PROD_API_USER": prod.username, "QA_API_USER": qa.username,
               "LOCKED_API_USER": prod.username}
        with DaemonProcess(root, env=env) as daemon:
            requests = {
                "download.json": {"action": "download", "source": "prod", "scan_ids": ids},
                "copy.json": {"action": "copy", "source": "prod", "target": "qa",
                              "target_store_id": qa_store, "scan_ids": ids[:8]},
                "locked.json": {"action": "download", "source": "locked",
                                "scan_ids": ids[:2]},
            }
            for name, body in requests.items():
                drop(root / "inbox", name, json.dumps(body))
            results = wait_settled(root, list(requests), timeout=180)
            log = daemon.log_text()
        secrets = list(CANARIES.values()) + _tokens(prod, qa)

    # The runs did meet every situation the test is about ...
    assert results["download.json"][1]["status"] == "partial"
    assert results["copy.json"][1]["status"] == "partial"
    assert results["locked.json"][1]["status"] == "failed"
    assert "Unable to log in" in json.dumps(results["locked.json"][1])
    assert "echo" in json.dumps(results["download.json"][1]), "the 400 body was recorded"
    assert "retrying" in log
    # ... and no secret made it into any output.
    output = _everything(root, log)
    assert len(secrets) > len(CANARIES), "tokens were issued"
    leaked = [s for s in secrets if s in output]
    assert leaked == []
