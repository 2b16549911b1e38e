"""The claim under the failures of network shares, injected into its file-system calls:
answers lost after a call succeeded (NFS retransmits), files held open elsewhere
(SMB), no hard links. Whatever happens: nothing lost, nothing claimed twice."""

from __future__ import annotations

import errno
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.intake.claim import Claimed
from daemon.intake.claimer import PRIVATE_PREFIX, Claimer, NotYet, OsFs
from daemon.layout import Layout

Fault = Callable[[str, Path], str | None]  # (op, path) → None, "before" or "after"


class FaultyFs(OsFs):
    """The real calls, with ``errors[op]`` raised before the call (it did not happen)
    or after it (it happened, but the answer was lost), as ``fault`` decides."""

    def __init__(self, fault: Fault, errors: dict[str, int]) -> None:
        self.fault = fault
        self.errors = errors
        self.calls: list[tuple[str, str]] = []

    def _call(self, op: str, path: Path, real: Callable[[], None]) -> None:
        when = self.fault(op, path)
        self.calls.append((op, when or "ok"))
        error = OSError(self.errors.get(op, errno.EIO), os.strerror(self.errors.get(op, 5)))
        if when == "before":
            raise error
        real()
        if when == "after":
            raise error

    def rename(self, src: Path, dst: Path) -> None:
        self._call("rename", src, lambda: OsFs.rename(self, src, dst))

    def link(self, src: Path, dst: Path) -> None:
        self._call("link", src, lambda: OsFs.link(self, src, dst))

    def unlink(self, path: Path) -> None:
        self._call("unlink", path, lambda: OsFs.unlink(self, path))


def once(op: str, when: str) -> Fault:
    """Fail the first ``op`` call only."""
    fired: list[bool] = []

    def fault(call: str, _path: Path) -> str | None:
        if call == op and not fired:
            fired.append(True)
            return when
        return None
    return fault


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path).ensure(["prof"])


def drop(layout: Layout, name: str = "r.csv", body: str = "scan_id\n1001\n") -> Path:
    path = layout.inbox / name
    path.write_text(body)
    return path


def private_leftovers(layout: Layout) -> list[Path]:
    return [p for p in layout.inbox.rglob(PRIVATE_PREFIX + "*")]


def assert_claimed_once(layout: Layout, result: object, body: str = "scan_id\n1001\n") -> None:
    assert isinstance(result, Claimed), result
    assert [p.name for p in layout.processing.iterdir()] == [result.path.name]
    assert result.path.read_text() == body
    assert not (layout.inbox / result.name).exists()
    assert private_leftovers(layout) == []


def test_a_plain_claim_links_into_processing(layout: Layout) -> None:
    fs = FaultyFs(lambda op, path: None, {})
    result = Claimer(layout, fs).claim(drop(layout))
    assert_claimed_once(layout, result)
    assert [op for op, _ in fs.calls] == ["rename", "link", "unlink"]


@pytest.mark.parametrize("op", ["rename", "link", "unlink"])
def test_a_lost_answer_after_a_successful_call_still_claims(layout: Layout, op: str) -> None:
    errors = {"rename": errno.ENOENT, "link": errno.EEXIST, "unlink": errno.ENOENT}
    fs = FaultyFs(once(op, "after"), errors)
    assert_claimed_once(layout, Claimer(layout, fs).claim(drop(layout)))
    assert (op, "after") in fs.calls


def test_link_answering_enoent_after_it_succeeded_still_claims(layout: Layout) -> None:
    fs = FaultyFs(once("link", "after"), {"link": errno.ENOENT})
    assert_claimed_once(layout, Claimer(layout, fs).claim(drop(layout)))


def test_two_claimers_both_told_enoent_exactly_one_wins(layout: Layout) -> None:
    """The NFS case that lost requests: the winner's rename answers ENOENT (its reply
    was lost), the loser's answers ENOENT (truly). Decided by stat, one wins."""
    path = drop(layout)
    winner = Claimer(layout, FaultyFs(once("rename", "after"), {"rename": errno.ENOENT}))
    loser = Claimer(layout, OsFs())
    first, second = winner.claim(path), loser.claim(path)
    assert second is None
    assert_claimed_once(layout, first)


@pytest.mark.parametrize("code", [errno.EBUSY, errno.EACCES, errno.ETXTBSY])
def test_a_file_held_open_elsewhere_is_left_for_later(layout: Layout, code: int) -> None:
    path = drop(layout)
    claimer = Claimer(layout, FaultyFs(once("rename", "before"), {"rename": code}))
    result = claimer.claim(path)
    assert isinstance(result, NotYet) and errno.errorcode[code] in result.reason
    assert path.read_text() == "scan_id\n1001\n", "a busy file is left as it was"
    assert list(layout.processing.iterdir()) == []
    assert private_leftovers(layout) == []
    assert_claimed_once(layout, claimer.claim(path))  # looked at again: taken


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK])
def test_without_hard_links_the_claim_renames(layout: Layout, code: int) -> None:
    fs = FaultyFs(lambda op, path: "before" if op == "link" else None, {"link": code})
    claimer = Claimer(layout, fs)
    assert_claimed_once(layout, claimer.claim(drop(layout, "a.csv")))
    assert claimer.links is False
    for name in ("b.csv", "c.csv"):  # and keeps renaming, without trying links again
        result = claimer.claim(drop(layout, name))
        assert isinstance(result, Claimed) and result.path.exists()
    assert [op for op, _ in fs.calls].count("link") == 1


def test_a_failed_publish_deletes_nothing_and_is_retried(layout: Layout) -> None:
    path = drop(layout)
    claimer = Claimer(layout, FaultyFs(once("link", "before"), {"link": errno.EIO}))
    with pytest.raises(OSError):
        claimer.claim(path)
    assert len(private_leftovers(layout)) == 1, "the won claim must be kept"
    assert not path.exists()
    [claimed] = claimer.retry_unpublished()
    assert_claimed_once(layout, claimed)
    assert claimer.retry_unpublished() == []


def test_a_claim_cut_off_by_a_crash_is_finished_at_start(layout: Layout) -> None:
    drop(layout, "cut.csv")
    (layout.inbox / "prof" / "both.csv").write_text("scan_id\n1002\n")
    crashed = Claimer(layout, FaultyFs(once("link", "before"), {"link": errno.EIO}))
    with pytest.raises(OSError):
        crashed.claim(layout.inbox / "cut.csv")  # decided, never published
    unlinker = Claimer(layout, FaultyFs(once("unlink", "before"), {"unlink": errno.EBUSY}))
    both = unlinker.claim(layout.inbox / "prof" / "both.csv")  # published, private left
    assert isinstance(both, Claimed) and both.profile == "prof"
    assert len(private_leftovers(layout)) == 2
    assert Claimer(layout).repair() == 1  # a restart: only cut.csv needed publishing
    assert private_leftovers(layout) == []
    names = sorted(p.name.split("+", 2)[2] for p in layout.processing.iterdir())
    assert names == ["both.csv", "cut.csv"]


def test_many_claimers_with_random_lost_answers_claim_each_file_once(layout: Layout) -> None:
    """Four claimers on one inbox, every call's answer lost 30 % of the time (after
    it succeeded), plus busy refusals: every file in processing/ exactly once."""
    files = [drop(layout, f"r{i:03d}.csv", f"scan_id\n{i}\n") for i in range(150)]
    won: list[Claimed] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)

        def fault(op: str, _path: Path) -> str | None:
            roll = rng.random()
            return "after" if roll < 0.3 else "before" if op == "rename" and roll < 0.4 else None
        errors = {"rename": errno.ENOENT, "link": errno.EEXIST, "unlink": errno.ENOENT}
        claimer = Claimer(layout, FaultyFs(fault, errors))
        busy = FaultyFs(fault, {**errors, "rename": errno.EBUSY})
        for path in files * 3:  # each claimer looks at every file more than once
            claimer.fs = busy if rng.random() < 0.1 else FaultyFs(fault, errors)
            result = claimer.claim(path)
            if isinstance(result, Claimed):
                with lock:
                    won.append(result)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = sorted(c.name for c in won)
    assert claimed == sorted(p.name for p in files), "each file won exactly once"
    bodies = sorted(p.read_text() for p in layout.processing.iterdir())
    assert bodies == sorted(f"scan_id\n{i}\n" for i in range(150))
    assert private_leftovers(layout) == []
    assert [p for p in layout.inbox.rglob("*") if p.is_file()] == []
