"""Unit tests of the crash-safety pieces: ``daemon.settle`` (a request comes to rest in
``done/``/``failed/`` exactly once, never overwriting), ``daemon.checkpoint`` (the run's
journal), and ``handlers.naming`` (image names that stay inside ``images/``)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from daemon.checkpoint import FILE_NAME, Checkpoint
from daemon.instances.base import FileRef, Scan, ScanDetails
from daemon.settle import Sidecars, settle
from handlers.naming import MAX_NAME_BYTES, extension, file_stems, scan_stem

# --- settle ------------------------------------------------------------------------------


def sidecars(claim_id: str = "20250101-000000-aaaaaa", *, error: str | None = "it broke\n",
             retry: dict[str, object] | None = None) -> Sidecars:
    return Sidecars({"claim_id": claim_id, "status": "failed"}, error, retry)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    processing, failed = tmp_path / "processing", tmp_path / "failed"
    processing.mkdir()
    failed.mkdir()
    return processing, failed


def claimed(processing: Path, name: str, content: bytes = b"request") -> Path:
    path = processing / f"20250101-000000-aaaaaa+-+{name}"
    path.write_bytes(content)
    return path


def result_of(path: Path) -> dict[str, object]:
    return json.loads(path.with_name(path.name + ".result.json").read_text())


def test_settle_moves_request_and_writes_sidecars(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    src = claimed(processing, "r.json", b"{}")
    final = settle(src, failed, "r.json", sidecars(retry={"scan_ids": [1]}))
    assert final == failed / "r.json" and final.read_bytes() == b"{}"
    assert not src.exists()
    assert result_of(final)["claim_id"] == "20250101-000000-aaaaaa"
    assert (failed / "r.json.error.txt").read_text() == "it broke\n"
    assert json.loads((failed / "r.json.retry.json").read_text()) == {"scan_ids": [1]}
    assert sorted(p.name for p in failed.iterdir()) == [
        "r.json", "r.json.error.txt", "r.json.result.json", "r.json.retry.json"]


def test_settle_without_optional_sidecars(dirs: tuple[Path, Path]) -> None:
    processing, done = dirs
    final = settle(claimed(processing, "ok.csv"), done, "ok.csv", sidecars(error=None))
    assert sorted(p.name for p in done.iterdir()) == ["ok.csv", "ok.csv.result.json"]
    assert final.name == "ok.csv"


@pytest.mark.parametrize(("name", "second", "third"), [
    ("r.json", "r-2.json", "r-3.json"),
    ("ids.v2.csv", "ids-2.v2.csv", "ids-3.v2.csv"),
    ("noext", "noext-2", "noext-3"),
])
def test_name_clash_gets_a_suffix_and_never_overwrites(dirs: tuple[Path, Path], name: str,
                                                       second: str, third: str) -> None:
    processing, failed = dirs
    finals = []
    for n, claim in enumerate(["20250101-000000-aaaaa1", "20250101-000000-aaaaa2",
                               "20250101-000000-aaaaa3"]):
        src = processing / f"{claim}+-+{name}"
        src.write_bytes(f"content {n}".encode())
        finals.append(settle(src, failed, name, sidecars(claim, error=f"error {n}\n")))
    assert [f.name for f in finals] == [name, second, third]
    for n, final in enumerate(finals):
        assert final.read_bytes() == f"content {n}".encode()
        assert result_of(final)["claim_id"] == f"20250101-000000-aaaaa{n + 1}"
        assert final.with_name(final.name + ".error.txt").read_text() == f"error {n}\n"
    assert list(processing.iterdir()) == []


def test_foreign_sidecars_without_request_are_not_taken_over(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    (failed / "r.json.result.json").write_text(json.dumps({"claim_id": "someone-else"}))
    (failed / "r.json.error.txt").write_text("theirs\n")
    final = settle(claimed(processing, "r.json"), failed, "r.json", sidecars())
    assert final.name == "r-2.json"
    assert (failed / "r.json.error.txt").read_text() == "theirs\n"
    assert json.loads((failed / "r.json.result.json").read_text())["claim_id"] == "someone-else"


def test_unreadable_sidecar_counts_as_foreign(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    (failed / "r.json.result.json").write_text("{torn")
    assert settle(claimed(processing, "r.json"), failed, "r.json", sidecars()).name == "r-2.json"


def test_crash_after_sidecars_before_link_reuses_the_name(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    src = claimed(processing, "r.json")
    # The first attempt got as far as writing its sidecars under r.json, then died.
    (failed / "r.json.result.json").write_text(json.dumps({"claim_id": "20250101-000000-aaaaaa",
                                                           "status": "failed"}))
    final = settle(src, failed, "r.json", sidecars())
    assert final == failed / "r.json" and final.read_bytes() == b"request"
    assert not src.exists()
    assert not any(p.name.startswith("r-2") for p in failed.iterdir())


def test_crash_after_link_before_unlink_does_not_duplicate(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    src = claimed(processing, "r.json")
    # The first attempt linked the request into failed/, then died before the unlink
    # (and before the error sidecar).
    (failed / "r.json.result.json").write_text(json.dumps({"claim_id": "20250101-000000-aaaaaa"}))
    os.link(src, failed / "r.json")
    final = settle(src, failed, "r.json", sidecars(retry={"scan_ids": [7]}))
    assert final == failed / "r.json"
    assert not src.exists()
    assert sorted(p.name for p in failed.iterdir()) == [
        "r.json", "r.json.error.txt", "r.json.result.json", "r.json.retry.json"]
    assert result_of(final)["status"] == "failed"  # the sidecars were completed


def test_settling_twice_in_a_row_is_one_settle(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    src = claimed(processing, "r.json")
    other = processing / "copy"
    os.link(src, other)  # keep the inode alive to settle "again" from the same name
    first = settle(src, failed, "r.json", sidecars())
    os.link(other, src)
    second = settle(src, failed, "r.json", sidecars())
    assert first == second == failed / "r.json"
    assert not src.exists()


def test_settle_a_symlink_moves_the_link_not_its_target(dirs: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    processing, failed = dirs
    target = tmp_path / "target.json"
    target.write_text("{}")
    link = processing / "link.json"
    link.symlink_to(target)
    dangling = processing / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    assert settle(link, failed, "link.json", sidecars()).is_symlink()
    assert settle(dangling, failed, "dangling.json", sidecars()).is_symlink()
    assert os.readlink(failed / "link.json") == str(target)
    assert target.read_text() == "{}"
    assert not link.is_symlink() and not dangling.is_symlink()


def test_settle_a_directory_renames_it(dirs: tuple[Path, Path]) -> None:
    processing, failed = dirs
    folder = processing / "sub"
    folder.mkdir()
    (folder / "inside.json").write_text("{}")
    (failed / "sub").mkdir()  # a clash for directories too
    final = settle(folder, failed, "sub", sidecars())
    assert final == failed / "sub-2" and (final / "inside.json").exists()
    assert not folder.exists() and list((failed / "sub").iterdir()) == []


# --- checkpoint ---------------------------------------------------------------------------


def test_records_survive_reopen(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.record("file:1:10", path="images/a.png", size=3, sha256="abc")
    cp.record("file:2:20", path="images/b.png", size=4, sha256="def")
    assert cp.get("file:1:10") == {"key": "file:1:10", "path": "images/a.png", "size": 3,
                                   "sha256": "abc"}
    cp.close()
    again = Checkpoint(tmp_path)
    assert [r["key"] for r in again.records()] == ["file:1:10", "file:2:20"]
    assert again.get("file:2:20") == {"key": "file:2:20", "path": "images/b.png", "size": 4,
                                      "sha256": "def"}
    assert again.get("missing") is None
    again.close()


def test_latest_record_of_a_key_wins(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.record("scan:1", status="creating")
    cp.record("scan:2", status="done")
    cp.record("scan:1", status="created", target=99)
    assert cp.get("scan:1") == {"key": "scan:1", "status": "created", "target": 99}
    cp.close()
    again = Checkpoint(tmp_path)
    assert again.get("scan:1") == {"key": "scan:1", "status": "created", "target": 99}
    assert len(again.records()) == 2
    again.close()


@pytest.mark.parametrize("torn", [b'{"key": "b", "si', b'{"key": "b"', b"\xff\xfe garbage",
                                  b'{"key": "c"}\n{"ke'])
def test_torn_last_line_is_ignored_and_not_glued_to_the_next(tmp_path: Path,
                                                             torn: bytes) -> None:
    cp = Checkpoint(tmp_path)
    cp.record("a", n=1)
    cp.close()
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(torn)  # a crash in the middle of a write
    cp = Checkpoint(tmp_path)
    assert cp.get("a") == {"key": "a", "n": 1}
    assert cp.get("b") is None
    cp.record("d", n=4)
    cp.close()
    again = Checkpoint(tmp_path)
    assert again.get("a") == {"key": "a", "n": 1} and again.get("d") == {"key": "d", "n": 4}
    again.close()
    last = (tmp_path / FILE_NAME).read_bytes().splitlines()[-1]
    assert json.loads(last) == {"key": "d", "n": 4}


def test_lines_that_are_not_records_are_ignored(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('[1, 2]\n"x"\n{"no_key": 1}\n{"key": 5}\n\n'
                                      '{"key": "ok", "v": 1}\n')
    cp = Checkpoint(tmp_path)
    assert cp.records() == [{"key": "ok", "v": 1}]
    cp.close()


def test_empty_checkpoint_file(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"")
    cp = Checkpoint(tmp_path)
    cp.record("a")
    cp.close()
    assert (tmp_path / FILE_NAME).read_bytes() == b'{"key": "a"}\n'


def test_concurrent_records_are_whole_lines(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)

    def work(t: int) -> None:
        for i in range(50):
            cp.record(f"t{t}:{i}", payload="é" * 200)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cp.close()
    lines = (tmp_path / FILE_NAME).read_bytes().splitlines()
    assert len(lines) == 400 and all(json.loads(line)["payload"] == "é" * 200
                                     for line in lines)
    again = Checkpoint(tmp_path)
    assert len(again.records()) == 400
    again.close()


def test_concurrent_records_share_fsyncs_and_each_returns_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: a slow disk is not paid once per record, and no ``record`` returns
    before an fsync that started after its line was written."""
    synced = {"calls": 0, "bytes": 0}
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size  # what this fsync is sure to cover
        time.sleep(0.01)
        real_fsync(fd)
        synced["calls"] += 1
        synced["bytes"] = max(synced["bytes"], size)

    monkeypatch.setattr("daemon.checkpoint.os.fsync", slow_fsync)
    cp = Checkpoint(tmp_path)
    late: list[str] = []

    def work(t: int) -> None:
        for i in range(20):
            cp.record(f"t{t}:{i}")
            end = (tmp_path / FILE_NAME).read_bytes().index(f'"t{t}:{i}"'.encode()) + 1
            if synced["bytes"] < end:
                late.append(f"t{t}:{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cp.close()
    assert not late
    assert len(Checkpoint(tmp_path).records()) == 160
    assert synced["calls"] < 120  # one per record without group commit; ~40-90 with it


# --- naming ------------------------------------------------------------------------------


def scan(section: str | None = None, pog: int | None = None, *, files: int = 1,
         details: bool = True, scan_id: int = 1001) -> Scan:
    return Scan(id=scan_id, store_id=1, status="done", has_report=details, captured_at=None,
                created_at=None, files=tuple(FileRef(i) for i in range(1, files + 1)),
                reports=(ScanDetails(section_name=section, store_planogram_id=pog),)
                if details else ())


@pytest.mark.parametrize(("s", "expected"), [
    (scan("Soft Drinks", 5007), "1001_Soft Drinks_5007"),
    (scan("Soft Drinks", None), "1001_Soft Drinks"),
    (scan(None, 5007), "1001_5007"),
    (scan("", 5007), "1001_5007"),
    (scan(None, None), "1001"),
    (scan(details=False), "1001"),
], ids=["section+pog", "section", "pog", "empty-section", "neither", "no-report"])
def test_name_fallbacks(s: Scan, expected: str) -> None:
    assert scan_stem(s) == expected


def test_second_and_third_files_get_suffixes() -> None:
    assert file_stems(scan("Dairy", 7, files=3)) == ["1001_Dairy_7", "1001_Dairy_7_2",
                                                     "1001_Dairy_7_3"]
    assert file_stems(scan(files=2)) == ["1001", "1001_2"]
    assert file_stems(scan(files=0)) == []


HOSTILE = ["../../etc/passwd", "a/b\\c", "CON", "   ", "x" * 500, "é" * 300, "a\x00b",
           "\x01\x1f\x7f", "tab\there\nnewline", "..", ".", " trailing. ", "..\\..\\win",
           "/", "C:\\Windows", 'q"u*o?t<e>s|', "NUL\x00", "\u00a0lead"]


@pytest.mark.parametrize("section", HOSTILE, ids=[repr(h[:12]) for h in HOSTILE])
def test_hostile_section_names_stay_inside_images(tmp_path: Path, section: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    stems = file_stems(scan(section, 5000, files=2))
    for stem in stems:
        assert stem.startswith("1001")
        assert "/" not in stem and "\\" not in stem and "\x00" not in stem
        assert not any(ord(c) < 32 or ord(c) == 127 for c in stem)
        assert stem == stem.strip(" .")
        assert len(stem.encode()) <= MAX_NAME_BYTES + len("_2")
        path = images / f"{stem}.{extension('x.png', b'')}"
        assert path.resolve().parent == images.resolve()
        path.write_bytes(b"ok")  # a valid file name on this system
    assert len(set(stems)) == len(stems)
    assert sorted(p.name for p in images.iterdir()) == sorted(f"{s}.png" for s in stems)


@pytest.mark.parametrize(("section", "expected"), [
    ("Soft Drinks / Cola", "1001_Soft Drinks _ Cola_5000"),
    ("a/b\\c", "1001_a_b_c_5000"),
    ("   ", "1001_5000"),
    ("..", "1001_5000"),
    ("Cafe\u0301", "1001_Caf\u00e9_5000"),  # NFC
    ("tab\there", "1001_tab_here_5000"),
])
def test_section_cleaning(section: str, expected: str) -> None:
    assert scan_stem(scan(section, 5000)) == expected


def test_long_multibyte_name_is_cut_on_a_character_boundary() -> None:
    stem = scan_stem(scan("é" * 300, None))
    assert len(stem.encode()) <= MAX_NAME_BYTES
    assert stem.encode().decode() == stem and stem.startswith("1001_é")


def test_long_section_keeps_the_pog_id() -> None:
    stem = scan_stem(scan("x" * 500, 5000))
    assert stem.endswith("_5000") and len(stem.encode()) <= MAX_NAME_BYTES


@pytest.mark.parametrize(("original", "head", "expected"), [
    ("IMG_1.JPEG", b"", "jpg"), ("a.PNG", b"", "png"), ("a.tar.gz", b"", "gz"),
    (None, b"\x89PNG\r\n\x1a\nrest", "png"), (None, b"\xff\xd8\xff\xe0", "jpg"),
    ("noext", b"GIF89a", "gif"), ("a.php?x=1", b"", "bin"), ("x./etc", b"II*\x00", "tif"),
    ("a.verylongext", b"", "bin"), ("", b"", "bin"),
])
def test_extension(original: str | None, head: bytes, expected: str) -> None:
    assert extension(original, head) == expected
