#!/usr/bin/env python3
"""Quick start on a machine with only Python: ``python3 dev.py demo`` or ``python3 dev.py test``.

Creates ``.venv`` beside this file (once), installs scanrelay into it with the test and
sandbox extras, then runs the demo (the daemon on folder instances and on the sandbox
platform) or the whole test suite. Extra arguments go to
pytest (``python3 dev.py test -k watcher``) or to ``scanrelay demo``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".scanrelay-installed"


def ensure_venv() -> None:
    """Create the venv and (re)install when pyproject.toml changed since last time."""
    wanted = hashlib.sha256((HERE / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print("installing scanrelay, its sandbox and its test tools into .venv ...", flush=True)
    subprocess.run([*pip, "-e", f"{HERE}[test,sandbox]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command not in ("demo", "test", "lint"):
        print(__doc__)
        return 2
    ensure_venv()
    os.chdir(HERE)
    if command == "demo":
        cmd = [str(BIN / "scanrelay"), "demo", "--run", "-c", "config.yml", *rest]
    elif command == "test":
        cmd = [str(BIN / "python"), "-m", "pytest", *rest]
    else:
        for tool in (["ruff", "check", "."], ["mypy"]):
            if subprocess.run([str(BIN / tool[0]), *tool[1:]]).returncode:
                return 1
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
