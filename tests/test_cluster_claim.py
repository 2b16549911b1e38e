"""The claim with several hosts on one inbox (issue 15, test 2), at the file-system
level: each host's claimer has its own tag and claim IDs no other host makes, and every
call may fail as network shares make it fail (an answer lost after the call succeeded,
ENOENT; a file held open elsewhere, EBUSY; no hard links). Whatever happens: every file
ends in processing/ exactly once, won by exactly one host, and nothing is lost."""

from __future__ import annotations

import errno
import itertools
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_claim import FaultyFs, drop, once, private_leftovers

from daemon.intake.claim import Claimed
from daemon.intake.claimer import Claimer, OsFs, claim_name_of, private_name
from daemon.layout import Layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path).ensure(["prof"])


def cluster_ids() -> tuple[itertools.count[int], threading.Lock]:
    return itertools.count(1), threading.Lock()


def id_source(counter: itertools.count[int], lock: threading.Lock) -> Callable[[], str]:
    """Claim IDs as the cluster makes them: one sequence for every host."""
    def new_id() -> str:
        with lock:
            number = next(counter)
        return f"20260101-000000-{number % (1 << 24):06x}"
    return new_id


def test_private_names_carry_the_host_and_map_back_to_the_claim_name() -> None:
    name = "20260101-000000-00002a+prof+ids@shop.csv"
    assert private_name(name, "host-1") == ".scanrelay-claim-host-1@" + name
    assert claim_name_of(private_name(name, "host-1")) == name
    assert claim_name_of(private_name(name)) == name  # one host: no tag


def test_two_hosts_with_the_same_claim_id_both_told_enoent_one_wins(layout: Layout) -> None:
    """The worst case the tag guards against: two hosts rename one file under the same
    claim ID and both hear ENOENT. Deciding by what is on disk, only the host whose own
    private name exists wins (without tags both would look at one name and both win)."""
    path = drop(layout)
    errors = {"rename": errno.ENOENT}
    same_id = "20260101-000000-000001"
    a = Claimer(layout, FaultyFs(once("rename", "after"), errors), new_id=lambda: same_id,
                tag="host-a")
    b = Claimer(layout, FaultyFs(once("rename", "before"), errors), new_id=lambda: same_id,
                tag="host-b")
    results = [a.claim(path), b.claim(path)]
    assert [isinstance(r, Claimed) for r in results] == [True, False]
    assert len(list(layout.processing.iterdir())) == 1
    assert private_leftovers(layout) == []


def test_many_hosts_under_every_fault_claim_each_file_exactly_once(layout: Layout) -> None:
    """Five hosts, 200 files (in the inbox and a profile folder), each host looking at
    every file three times: answers lost after success (ENOENT/EEXIST), busy files
    (EBUSY, EACCES), and two hosts on a mount without hard links (EPERM)."""
    files = [drop(layout, f"r{i:03d}.csv", f"scan_id\n{i}\n") for i in range(150)]
    files += [drop(layout, f"p{i:03d}.csv", f"scan_id\n{1000 + i}\n") for i in range(50)]
    files = [p if p.name.startswith("r") else p.rename(layout.inbox / "prof" / p.name)
             for p in files]
    counter, lock = cluster_ids()
    won: list[tuple[str, Claimed]] = []
    busy_seen: list[str] = []
    won_lock = threading.Lock()

    def host(number: int) -> None:
        rng = random.Random(number)
        no_links = number >= 3

        def fault(op: str, _path: Path) -> str | None:
            if op == "link" and no_links:
                return "before"
            roll = rng.random()
            return "after" if roll < 0.3 else "before" if op == "rename" and roll < 0.4 \
                else None
        errors = {"rename": errno.ENOENT, "link": errno.EPERM if no_links else errno.EEXIST,
                  "unlink": errno.ENOENT}
        claimer = Claimer(layout, FaultyFs(fault, errors), new_id=id_source(counter, lock),
                          tag=f"host-{number}")
        for path in files * 3:
            busy = rng.random() < 0.1
            code = rng.choice([errno.EBUSY, errno.EACCES])
            claimer.fs = FaultyFs(fault, {**errors, "rename": code} if busy else errors)
            try:
                result = claimer.claim(path)
            except OSError:  # won, but the move into processing/ failed: retried below
                continue
            if not isinstance(result, Claimed):
                if result is not None:
                    busy_seen.append(result.reason)
                continue
            with won_lock:
                won.append((f"host-{number}", result))
        claimer.fs = OsFs()  # the share answers again
        with won_lock:
            won.extend((f"host-{number}", c) for c in claimer.retry_unpublished())

    threads = [threading.Thread(target=host, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert busy_seen, "the busy faults fired"
    assert sorted(c.name for _, c in won) == sorted(p.name for p in files), \
        "each file won by exactly one host"
    assert len({c.claim_id for _, c in won}) == len(files)
    assert len({h for h, _ in won}) > 1, "the work was spread over hosts"
    bodies = sorted(p.read_text() for p in layout.processing.iterdir())
    assert bodies == sorted(p.read_text() for _, c in won for p in [c.path])
    assert len(bodies) == len(files)
    assert private_leftovers(layout) == []
    assert [p for p in layout.inbox.rglob("*") if p.is_file()] == []


def _half_claim(layout: Layout, tag: str, name: str, body: str) -> Path:
    """What a host that died between its rename and its publish leaves in the inbox."""
    claim = f"20260101-000000-{abs(hash((tag, name))) % (1 << 24):06x}+-+{name}"
    private = layout.inbox / private_name(claim, tag)
    private.write_text(body)
    return private


def test_repair_at_start_finishes_only_this_hosts_half_claims(layout: Layout) -> None:
    mine = _half_claim(layout, "host-1", "mine.csv", "scan_id\n1\n")
    theirs = _half_claim(layout, "host-2", "theirs.csv", "scan_id\n2\n")
    assert Claimer(layout, tag="host-1").repair() == 1
    assert not mine.exists() and theirs.exists()
    assert [claim_name_of(p.name).split("+")[2] for p in layout.processing.iterdir()] \
        == ["mine.csv"]


def test_a_dead_hosts_half_claim_is_published_once_stale(layout: Layout) -> None:
    theirs = _half_claim(layout, "host-2", "theirs.csv", "scan_id\n2\n")
    sweeper = Claimer(layout, tag="host-1")
    assert sweeper.publish_stale(older_than=60) == 0  # the host may only be slow
    assert sweeper.publish_stale(older_than=60, now=time.time() + 61) == 1
    assert not theirs.exists()
    [published] = layout.processing.iterdir()
    assert published.read_text() == "scan_id\n2\n"
    # The slow host wakes up and publishes too: harmless, the destination is the same.
    os.link(published, theirs)  # as if its private name were still there
    late = Claimer(layout, tag="host-2")
    assert late.repair() == 0
    assert [p.name for p in layout.processing.iterdir()] == [published.name]
    assert private_leftovers(layout) == []
