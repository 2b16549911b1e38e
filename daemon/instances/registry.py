"""Opens configured instances on first use and keeps them for the daemon's life, so each
instance has one connection pool shared by every run."""

from __future__ import annotations

import threading

from daemon.config import Config, FolderInstanceConfig, PlatformInstanceConfig
from daemon.errors import FatalError
from daemon.instances.base import Instance


class Instances:
    """Thread-safe cache of open instances by name."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._open: dict[str, Instance] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Instance:
        with self._lock:
            if name not in self._open:
                self._open[name] = self._create(name)
            return self._open[name]

    def _create(self, name: str) -> Instance:
        cfg = self._config.instances.get(name)
        if cfg is None:
            raise FatalError(f"instance {name!r} is not configured")
        if isinstance(cfg, FolderInstanceConfig):
            from daemon.instances.folder import FolderInstance

            return FolderInstance(name, self._config.instance_path(cfg.path),
                                  cfg.max_connections)
        if isinstance(cfg, PlatformInstanceConfig):
            from daemon.instances.platform import PlatformInstance

            return PlatformInstance.from_config(
                name, cfg, self._config.retry,
                compliance_fallback=self._config.analysis.compliance_fallback)
        raise FatalError(f"instance {name!r}: unsupported kind")

    def close(self) -> None:
        with self._lock:
            for instance in self._open.values():
                instance.close()
            self._open.clear()
