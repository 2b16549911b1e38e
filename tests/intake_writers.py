"""The file operations of real programs that write into shared folders, replayed step
by step with real files (the order and names of each program's calls, as strace and
their documentation show them). Each writer returns what the inbox must end up taking.

Every rename below is the writer's own: if the daemon took a piece of the save (a
temporary, the original during a save), the rename raises and the test fails.
"""

from __future__ import annotations

import io
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openpyxl import Workbook

IDS = list(range(1001, 1013))  # the demo scans
# The two intake modes as the protocol tests run them: events with the rescan
# practically off (every pickup is the event path), polling as on a share.
MODES = {
    "events": {"mode": "events", "rescan_interval": 3600},
    "polling": {"mode": "polling", "poll_interval": 0.2, "settle_seconds": 0.5},
}


@dataclass(frozen=True)
class Expect:
    """The one request the inbox must take: its name, profile and number of scans."""

    name: str
    scans: int
    profile: str | None = None


@dataclass(frozen=True)
class Place:
    inbox: Path
    elsewhere: Path  # a folder of the same file system outside the inbox
    stem: str  # unique per replay

    def folder(self, profile: str | None) -> Path:
        return self.inbox / profile if profile else self.inbox


def csv_of(ids: list[int], pad: int = 0) -> bytes:
    rows = "".join(f"{i},{'x' * pad}\n" for i in ids)
    return f"scan_id,note\n{rows}".encode()


def xlsx_of(ids: list[int]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["scan_id"])
    for scan_id in ids:
        sheet.append([scan_id])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def write_slowly(path: Path, data: bytes, chunk: int, pause: float) -> None:
    """One open, many writes with pauses, one close (cp of a big file, curl -o, scp)."""
    with path.open("wb") as f:
        for start in range(0, len(data), chunk):
            f.write(data[start:start + chunk])
            f.flush()
            time.sleep(pause)


def mv_from_another_folder(p: Place) -> Expect:
    """``mv ~/ids.csv inbox/``: a rename from outside the watched folder."""
    name = f"{p.stem}.csv"
    (p.elsewhere / name).write_bytes(csv_of(IDS[:2]))
    os.rename(p.elsewhere / name, p.inbox / name)
    return Expect(name, 2)


def mv_between_profile_folders(p: Place) -> Expect:
    """Saved into one profile folder, then dragged into another within a second: the
    first folder never takes it, the second does, with its own profile."""
    name = f"{p.stem}.csv"
    (p.folder("demo-download") / name).write_bytes(csv_of(IDS[:1]))
    time.sleep(0.1)
    os.rename(p.folder("demo-download") / name, p.folder("demo-copy") / name)
    return Expect(name, 1, "demo-copy")


def cp_large_file_slowly(p: Place) -> Expect:
    """``cp`` of a 1.2 MB file onto a slow disk: written in place in 64 KiB pieces."""
    name = f"{p.stem}.csv"
    write_slowly(p.inbox / name, csv_of(IDS, pad=100_000), 64 * 1024, 0.02)
    return Expect(name, len(IDS))


def cat_with_pauses(p: Place) -> Expect:
    """``cat > file`` typed by hand: the file stays open across long pauses."""
    name = f"{p.stem}.csv"
    with (p.inbox / name).open("wb") as f:
        for line in (b"scan_id\n", b"1001\n", b"1002\n", b"1003\n"):
            f.write(line)
            f.flush()
            time.sleep(0.6)
    return Expect(name, 3)


def curl_output(p: Place) -> Expect:
    """``curl -o inbox/x.csv URL`` / ``scp``: written in place as the data arrives."""
    name = f"{p.stem}.csv"
    write_slowly(p.inbox / name, csv_of(IDS[:4]), 16, 0.05)
    return Expect(name, 4)


def shell_two_step(p: Place) -> Expect:
    """``echo scan_id > x.csv; echo 1001 >> x.csv``: two opens, two closes, one request."""
    name = f"{p.stem}.csv"
    with (p.inbox / name).open("w") as f:
        f.write("scan_id\n")
    time.sleep(0.2)
    with (p.inbox / name).open("a") as f:
        f.write("1001\n")
    return Expect(name, 1)


def excel_first_save(p: Place) -> Expect:
    """Excel's first save of a new workbook: the owner file ``~$name.xlsx``, then the
    workbook written in place and held open longer than the quiet period, then closed."""
    name = f"{p.stem}.xlsx"
    owner = p.inbox / f"~${name}"
    owner.write_bytes(b"\x0bWorkbook owner" + b" " * 150)
    with (p.inbox / name).open("wb") as f:
        f.write(xlsx_of(IDS[:2]))
        f.flush()
        time.sleep(1.6)
        assert (p.inbox / name).exists(), "taken while Excel still held it open"
    owner.unlink()  # the workbook is closed
    return Expect(name, 2)


def excel_save_over(p: Place) -> Expect:
    """Excel saving over a workbook (Microsoft KB 814068) soon after its first save:
    the whole workbook written to an extension-less 8-hex temporary, the original
    deleted, the temporary renamed to the original name."""
    name = f"{p.stem}.xlsx"
    owner = p.inbox / f"~${name}"
    owner.write_bytes(b"\x0bWorkbook owner" + b" " * 150)
    book = p.inbox / name
    book.write_bytes(xlsx_of(IDS[:1]))  # the first save (an autosave, a second Ctrl+S)
    temp = p.inbox / secrets.token_hex(4).upper()
    temp.write_bytes(xlsx_of(IDS[:3]))
    time.sleep(0.15)  # Excel verifies the temporary before it swaps the names
    book.unlink()
    os.rename(temp, book)
    owner.unlink()
    return Expect(name, 3)


def libreoffice_save(p: Place) -> Expect:
    """LibreOffice: the lock file ``.~lock.name#``, the document written to
    ``lu<random>.tmp`` in the same folder, renamed to its name; the lock removed."""
    name = f"{p.stem}.xlsx"
    lock = p.inbox / f".~lock.{name}#"
    lock.write_text("1,user,host,02.12.2026 06:00,user;\n")
    temp = p.inbox / f"lu{secrets.token_hex(6)}.tmp"
    write_slowly(temp, xlsx_of(IDS[:2]), 1024, 0.005)
    os.rename(temp, p.inbox / name)
    time.sleep(0.2)
    lock.unlink()
    return Expect(name, 2)


def vim_write(p: Place) -> Expect:
    """vim: ``:w`` of a new file, then ``:w`` again within a second. Each write probes
    the folder with ``4913`` (created and deleted at once); the second renames the
    file to the backup ``name~``, writes the file anew, then deletes the backup."""
    name = f"{p.stem}.csv"
    path, backup, probe = p.inbox / name, p.inbox / f"{name}~", p.inbox / "4913"
    probe.touch()
    probe.unlink()
    path.write_bytes(b"scan_id\n1001\n")
    time.sleep(0.3)
    probe.touch()
    probe.unlink()
    os.rename(path, backup)
    path.write_bytes(b"scan_id\n1001\n1002\n")
    backup.unlink()
    return Expect(name, 2)


def rsync_transfer(p: Place) -> Expect:
    """rsync: ``.name.XXXXXX`` written in the destination folder, then renamed."""
    name = f"{p.stem}.csv"
    temp = p.inbox / f".{name}.{secrets.token_urlsafe(4)[:6]}"
    write_slowly(temp, csv_of(IDS[:3]), 8, 0.02)
    os.rename(temp, p.inbox / name)
    return Expect(name, 3)


Writer = Callable[[Place], Expect]

# Every writer, and whether it applies in polling mode: polling sees no opens, so a
# file held open and unchanged for longer than settle_seconds looks finished there
# (on shares, settle_seconds must exceed such pauses; README "Intake").
WRITERS: dict[str, tuple[Writer, bool]] = {
    "mv_from_another_folder": (mv_from_another_folder, True),
    "mv_between_profile_folders": (mv_between_profile_folders, True),
    "cp_large_file_slowly": (cp_large_file_slowly, True),
    "cat_with_pauses": (cat_with_pauses, False),
    "curl_output": (curl_output, True),
    "shell_two_step": (shell_two_step, True),
    "excel_first_save": (excel_first_save, False),
    "excel_save_over": (excel_save_over, True),
    "libreoffice_save": (libreoffice_save, True),
    "vim_write": (vim_write, True),
    "rsync_transfer": (rsync_transfer, True),
}
