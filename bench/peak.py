"""A benchmark's child process, measured: its CPU time and its own peak RSS.

``wait4``'s ``ru_maxrss`` cannot tell a child's peak: Linux folds the parent's peak RSS
into a child's at its ``exec`` (a 15 MB child of a 300 MB parent reports 314 MB), and a
benchmark that hosts reference servers is the bigger process. So a child writes its own
``VmHWM`` (the peak of the memory it runs in) to ``$SCANRELAY_BENCH_PEAK_FILE`` as it
exits: our Python children call ``report_peak_at_exit``, and the daemon runs through
this module (``python bench/peak.py once REQUEST -c CONFIG``). A child that reports
nothing (curl) has no peak.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PEAK_ENV = "SCANRELAY_BENCH_PEAK_FILE"
MB = 1_000_000
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Proc:
    """A finished child: its output, CPU time (``wait4``), wall time, and peak RSS in MB
    as it reported it (None if it did not)."""

    stdout: str
    returncode: int
    maxrss_mb: float | None
    cpu_s: float
    wall_s: float


def run_measured(argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stderr: int | None = None) -> Proc:
    """Run ``argv`` to the end; its own CPU time, not the sum over all children."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-peak-") as peak:
        env = {**(os.environ if env is None else env), PEAK_ENV: peak.name}
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=env,
                                cwd=cwd, text=True)
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        proc.stdout.close()
        reported = peak.read().strip()
    return Proc(out, proc.returncode, float(reported) if reported else None,
                usage.ru_utime + usage.ru_stime, wall)


def report_peak_at_exit() -> None:
    """In a child of ``run_measured``: write this process's peak RSS (MB) as it exits."""
    path = os.environ.get(PEAK_ENV)
    if path is None:
        return

    def write() -> None:
        status = Path("/proc/self/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
        Path(path).write_text(str(int(line.split()[1]) * 1024 / MB))  # kB

    atexit.register(write)


def daemon_argv(*args: str) -> list[str]:
    """``python -m daemon ARGS``, reporting its peak RSS."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


if __name__ == "__main__":  # python bench/peak.py ARGS = python -m daemon ARGS
    sys.path.insert(0, str(REPO))
    from daemon.cli import app

    report_peak_at_exit()
    app(sys.argv[1:], prog_name="daemon")
