"""``scanrelay sandbox`` in the foreground: start, tell, wait for SIGTERM/SIGINT, stop."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from .app import Sandbox, SandboxOptions
from .snippet import instances_yaml

READY_LINE = "sandbox running"


def write_config(path: Path, text: str) -> None:
    """Write the instances block atomically (it names secret files, not secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def serve(options: SandboxOptions, config_out: Path | None, say: Callable[[str], None]) -> int:
    """Run the sandbox until SIGTERM or SIGINT; 0 after a clean stop.
    Raises ``SandboxError`` when it cannot start."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sandbox = Sandbox(options).start()
    try:
        text = instances_yaml(sandbox)
        say(text)
        if config_out is not None:
            write_config(config_out, text)
            say(f"# written to {config_out}")
        where = "a temporary folder (ephemeral)" if options.ephemeral else str(sandbox.data_dir)
        say(f"# {READY_LINE}; data in {where}. Ctrl-C or SIGTERM stops it.")
        while not stop.wait(0.2):
            pass
    finally:
        sandbox.stop()
    say("# sandbox stopped")
    return 0
