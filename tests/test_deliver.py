"""``deliver_to``: results also placed, whole, under a configured delivery root; any
folder leading outside the roots refused with the reason (SPEC §4)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from helpers import DaemonProcess, config_dict, drop, make_root, wait_settled

import daemon.deliver as delivery
from daemon.config import parse_config
from daemon.deliver import OutsideRoots, deliver, delivery_folder
from daemon.errors import RequestError
from daemon.request import build_request


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_delivery_folder_stays_under_the_roots(tmp_path: Path) -> None:
    share, other = tmp_path / "share", tmp_path / "elsewhere"
    (share / "team").mkdir(parents=True)
    other.mkdir()
    (share / "team" / "out").symlink_to(other)  # a symlink leading out of the root
    roots = [share, tmp_path / "second"]
    assert delivery_folder("team/audit", roots) == share / "team" / "audit"
    assert delivery_folder(str(tmp_path / "second" / "x"), roots) == tmp_path / "second" / "x"
    for bad, why in (("../elsewhere", "contains '..'"), ("team/../../elsewhere", "'..'"),
                     (str(other), "outside the delivery roots"),
                     ("/etc", "outside the delivery roots"),
                     ("team/out", f"leads to {other}"),
                     ("team/out/deeper", f"leads to {other}")):
        with pytest.raises(OutsideRoots, match=why) as info:
            delivery_folder(bad, roots)
        assert str(share) in str(info.value) and str(tmp_path / "second") in str(info.value)
    with pytest.raises(OutsideRoots, match="no delivery roots are configured"):
        delivery_folder("team", [])


def test_a_delivery_appears_whole_or_not_at_all(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "runs" / "20260101-000000-download-abcdef"
    (run_dir / "images").mkdir(parents=True)
    for n in range(5):
        (run_dir / "images" / f"{n}.jpg").write_bytes(bytes([n]) * 1000)
    (run_dir / "manifest.csv").write_text("scan_id\n1\n")
    (run_dir / "run.log").write_text("not delivered")
    share = tmp_path / "share"
    real = delivery._link_or_copy
    calls = 0

    def fail_on_the_third(source: str | Path, dest: str | Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        real(source, dest)

    monkeypatch.setattr(delivery, "_link_or_copy", fail_on_the_third)
    with pytest.raises(OSError, match="No space"):
        deliver(run_dir, "download", "audit", [share])
    assert list((share / "audit").iterdir()) == []  # nothing half-written, no temp left
    monkeypatch.setattr(delivery, "_link_or_copy", real)
    final = deliver(run_dir, "download", "audit", [share])
    assert final == share / "audit" / run_dir.name
    assert digests(final) == {k: v for k, v in digests(run_dir).items() if k != "run.log"}
    assert deliver(run_dir, "download", "audit", [share]) == final  # again: kept as is


@pytest.mark.slow
def test_download_and_analyze_deliver_into_a_root_and_outside_is_refused(
        tmp_path: Path) -> None:
    share = tmp_path / "share"
    (tmp_path / "elsewhere").mkdir()
    (share / "links").mkdir(parents=True)
    (share / "links" / "out").symlink_to(tmp_path / "elsewhere")
    root = make_root(tmp_path, paths={"root": ".", "deliveries": [str(share)]})
    requests = {
        "images.json": {"action": "download", "source": "demo-source",
                        "scan_ids": [1001, 1002, 1003], "deliver_to": "team/images"},
        "report.json": {"action": "analyze", "source": "demo-source", "target": "demo-target",
                        "pairs": [[1001, 1002], [1003, 1004]],
                        "deliver_to": str(share / "team" / "reports")},
        "dots.json": {"action": "download", "source": "demo-source", "scan_ids": [1001],
                      "deliver_to": "../elsewhere"},
        "absolute.json": {"action": "download", "source": "demo-source", "scan_ids": [1001],
                          "deliver_to": str(tmp_path / "elsewhere")},
        "symlink.json": {"action": "download", "source": "demo-source", "scan_ids": [1001],
                         "deliver_to": "links/out"},
    }
    with DaemonProcess(root):
        for name, body in requests.items():
            drop(root / "inbox", name, json.dumps(body))
        settled = wait_settled(root, requests, timeout=60)

    folder, images = settled["images.json"]
    assert (folder, images["status"]) == ("done", "done"), images
    run_dir = root / images["run_dir"]
    delivered = share / "team" / "images" / images["run_id"]
    assert images["delivered_to"] == str(delivered)
    assert digests(delivered) == {k: v for k, v in digests(run_dir).items()
                                  if k.startswith("images/") or k == "manifest.csv"}
    assert len([k for k in digests(delivered) if k.startswith("images/")]) >= 3

    folder, report = settled["report.json"]
    assert folder == "done", report
    delivered = share / "team" / "reports" / report["run_id"]
    assert sorted(digests(delivered)) == ["analysis.csv", "analysis.xlsx",
                                          "source_scandetails.csv", "target_scandetails.csv"]
    assert digests(delivered) == {k: v for k, v in digests(root / report["run_dir"]).items()
                                  if k in digests(delivered)}

    for name in ("dots.json", "absolute.json", "symlink.json"):
        folder, result = settled[name]
        assert (folder, result["status"]) == ("failed", "invalid"), result
        error = (root / "failed" / f"{name}.error.txt").read_text()
        assert "deliver_to:" in error and str(share) in error, error
    assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing written outside
    assert not [p for p in share.rglob("*") if p.name.endswith(".part")]


def test_request_keys_captured_at_and_deliver_to_are_validated(tmp_path: Path) -> None:
    share = tmp_path / "share"
    cfg = parse_config(yaml.safe_dump(config_dict(
        paths={"root": ".", "deliveries": [str(share)]},
        profiles={"as-captured": {"action": "copy", "source": "demo-source",
                                  "target": "demo-target", "target_store_id": 1,
                                  "captured_at": "source", "deliver_to": "team"}})))
    copy = {"profile": "as-captured", "scan_ids": [1001]}
    request = build_request(copy, cfg)
    assert (request.captured_at, request.deliver_to) == ("source", "team")
    assert build_request({**copy, "captured_at": "now"}, cfg).captured_at == "now"
    with pytest.raises(RequestError) as info:
        build_request({**copy, "captured_at": "then", "deliver_to": "/etc"}, cfg)
    text = " ".join(info.value.problems)
    assert "captured_at: Input should be 'now' or 'source'" in text
    with pytest.raises(RequestError) as info:
        build_request({**copy, "deliver_to": "/etc"}, cfg)
    assert info.value.problems == [
        f"deliver_to: '/etc' is outside the delivery roots ({share}); give a folder under "
        "one of them"]
