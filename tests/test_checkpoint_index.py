"""The checkpoint journal's index (``daemon.checkpoint_index``): a reopened journal is
indexed, not loaded; torn lines; where appends resume; memory per line."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from daemon import checkpoint_index
from daemon.checkpoint import FILE_NAME, Checkpoint, resume_point


def write_journal(run_dir: Path, records: int) -> None:
    cp = Checkpoint(run_dir)
    with (run_dir / FILE_NAME).open("ab") as f:  # one write, not one fsync per record
        f.write(b"".join(
            (json.dumps({"key": f"copy:up:{i}:{i * 10}", "upload_id": i, "size": 4096,
                         "filename": f"scan{i}.jpg"}) + "\n").encode()
            for i in range(records)))
    cp.close()


def test_a_torn_last_line_is_cut_off_and_the_next_record_starts_a_line(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.record("a", n=1)
    cp.close()
    whole = (tmp_path / FILE_NAME).read_bytes()
    with (tmp_path / FILE_NAME).open("ab") as f:
        f.write(b'{"key": "b", "n": 2')  # a crash in the middle of the write
    cp = Checkpoint(tmp_path)
    assert (tmp_path / FILE_NAME).read_bytes() == whole  # cut back to the last whole line
    assert cp.get("b") is None and cp.get("a") == {"key": "a", "n": 1}
    cp.record("b", n=3)
    cp.close()
    assert (tmp_path / FILE_NAME).read_bytes() == whole + b'{"key": "b", "n": 3}\n'
    again = Checkpoint(tmp_path)
    assert again.get("b") == {"key": "b", "n": 3}
    again.close()


def test_a_torn_line_inside_an_older_journal_is_no_record(tmp_path: Path) -> None:
    # Older versions glued a newline onto a torn last line and wrote on after it.
    (tmp_path / FILE_NAME).write_bytes(b'{"key": "b", "v": 1}\n{"key": "b", "v": 2\n'
                                       b'{"key": "c", "v": 1}\n')
    cp = Checkpoint(tmp_path)
    assert cp.get("b") == {"key": "b", "v": 1}  # the torn newer one never counted
    assert cp.get("c") == {"key": "c", "v": 1}
    cp.close()


def test_resume_reads_back_the_latest_record_and_appends_after_it(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.record("copy:down:1:10", path=".copy/1/10.jpg", size=5)
    cp.record("copy:up:1:10", upload_id=7)
    cp.record("copy:down:1:10", path=".copy/1/10.jpg", size=6)  # redone before the crash
    cp.close()
    resumed = Checkpoint(tmp_path)
    assert resumed.held() == 0  # nothing loaded
    assert resumed.get("copy:down:1:10") == {"key": "copy:down:1:10",
                                             "path": ".copy/1/10.jpg", "size": 6}
    resumed.record("copy:up:1:10", upload_id=8)  # redone after the restart
    resumed.forget(["copy:up:1:10"])
    assert resumed.get("copy:up:1:10") is None, "the journal's older record was superseded"
    resumed.close()
    lines = (tmp_path / FILE_NAME).read_bytes().splitlines()
    assert [json.loads(line)["key"] for line in lines] == [
        "copy:down:1:10", "copy:up:1:10", "copy:down:1:10", "copy:up:1:10"]
    again = Checkpoint(tmp_path)
    assert again.get("copy:up:1:10") == {"key": "copy:up:1:10", "upload_id": 8}
    again.close()


def test_hash_collisions_cost_a_read_never_a_wrong_record(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint_index, "hash", lambda _key: 42, raising=False)
    cp = Checkpoint(tmp_path)
    for i in range(20):
        cp.record(f"k{i}", v=i)
    cp.record("k3", v=33)
    cp.close()
    again = Checkpoint(tmp_path)
    assert [again.get(f"k{i}") for i in (0, 3, 19)] == [
        {"key": "k0", "v": 0}, {"key": "k3", "v": 33}, {"key": "k19", "v": 19}]
    assert again.get("k20") is None
    again.record("k5", v=55)
    again.forget(["k5"])
    assert again.get("k5") is None and again.get("k6") == {"key": "k6", "v": 6}
    again.close()


def test_reopening_a_big_journal_holds_no_record(tmp_path: Path) -> None:
    lines = 50_000
    write_journal(tmp_path, lines)
    tracemalloc.start()
    cp = Checkpoint(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cp.held() == 0
    assert cp._index.nbytes <= 24 * lines
    assert peak < 64 * lines, f"opening took {peak / lines:.0f} bytes per line"
    # A resumed run reads each record it needs, then forgets what it wrote: flat.
    for i in range(0, lines, 7):
        assert cp.get(f"copy:up:{i}:{i * 10}")["upload_id"] == i  # type: ignore[index]
    for i in range(1000):
        cp.record(f"copy:created:{lines + i}", target_scan_id=i)
        cp.forget([f"copy:created:{lines + i}"])
    assert cp.held() == 0
    cp.close()


def test_had_answers_from_the_index_alone(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cp = Checkpoint(tmp_path)
    cp.record("download:batch:1", scan_ids=[1])
    cp.record("download:batch:2", scan_ids=[2])
    cp.close()
    again = Checkpoint(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_index.os, "pread", None)  # no read: the index answers
        assert again.had("download:batch:1") and again.had("download:batch:2")
        assert not again.had("download:batch:3")
    again.record("download:batch:2", scan_ids=[22])
    assert not again.had("download:batch:2"), "superseded since the open"
    again.close()
    (tmp_path / "fresh").mkdir()
    fresh = Checkpoint(tmp_path / "fresh")
    assert not fresh.had("download:batch:1")
    fresh.close()


@pytest.mark.parametrize(("done", "count", "expected"), [
    (set(), 0, 0), (set(), 9, 0), (set(range(1, 10)), 9, 9), (set(range(1, 6)), 9, 5),
    ({1, 2, 3, 5, 6}, 9, 6),  # a hole before the edge: the caller redoes step 4
    ({1, 2, 3, 4, 5, 7}, 1000, 7), (set(range(1, 5001)), 10_000, 5000),
    (set(range(1, 4998)) | {4999, 5000, 5002}, 10_000, 5002)])  # the ragged edge of a kill
def test_resume_point_finds_an_edge_of_the_done_steps(done: set[int], count: int,
                                                     expected: int) -> None:
    asked: list[int] = []

    def is_done(step: int) -> bool:
        asked.append(step)
        return step in done

    found = resume_point(count, is_done)
    assert found == expected
    assert (found == 0 or found in done) and (found == count or found + 1 not in done)
    assert len(asked) <= max(1, count).bit_length() + 1, "not a bisection"


@pytest.mark.parametrize("key", ['a"b', "a\\b", "a\nb", "tab\there", ""])
def test_keys_must_be_findable_without_parsing(tmp_path: Path, key: str) -> None:
    cp = Checkpoint(tmp_path)
    with pytest.raises(ValueError, match="checkpoint key"):
        cp.record(key, v=1)
    cp.record("ünïcode:1", v=1)
    cp.close()
    again = Checkpoint(tmp_path)
    assert again.get("ünïcode:1") == {"key": "ünïcode:1", "v": 1}
    again.close()
