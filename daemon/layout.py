"""The folders under ``paths.root`` (SPEC §3), created when missing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.config import Config


@dataclass(frozen=True)
class Layout:
    root: Path
    # ``state/`` elsewhere than under the root (``paths.state``): in cluster mode the
    # root is shared by every host, and each host keeps its own state on local disk.
    state_dir: Path | None = None

    @classmethod
    def of(cls, config: Config) -> Layout:
        return cls(config.root, config.state_dir)

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def processing(self) -> Path:
        return self.root / "processing"

    @property
    def done(self) -> Path:
        return self.root / "done"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def state(self) -> Path:
        return self.state_dir or self.root / "state"

    def ensure(self, profiles: list[str] | None = None) -> Layout:
        for folder in (self.inbox, self.processing, self.done, self.failed, self.runs,
                       self.state):
            folder.mkdir(parents=True, exist_ok=True)
        for name in profiles or []:
            (self.inbox / name).mkdir(exist_ok=True)
        return self
