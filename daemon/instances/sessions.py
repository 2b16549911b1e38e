"""A ``requests`` session that reads the environment once per host, not per request.

With ``trust_env`` (the default, kept: proxies and CA bundles come from the usual
variables), ``requests`` scans ``os.environ`` for proxy settings on every request, and
with ``REQUESTS_CA_BUNDLE`` set it also stats that path on every request, even for
``http://``. For a 1 MiB download (two requests) that was about a tenth of our CPU
time. A running daemon's environment does not change, so the settings are kept per
scheme and host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

if TYPE_CHECKING:  # the stubs' type of the settings; requests itself says dict
    from requests.sessions import _Settings

MAX_HOSTS = 64  # pre-signed URLs name few hosts; the bound only guards memory


class EnvOnceSession(requests.Session):
    """A ``requests.Session`` whose environment settings are computed once per host."""

    def __init__(self) -> None:
        super().__init__()
        self._env: dict[tuple[Any, ...], _Settings] = {}

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> _Settings:
        parts = urlsplit(url if isinstance(url, str) else str(url, "utf-8"))
        key = (parts.scheme, parts.netloc, stream, verify, cert,
               tuple(sorted((proxies or {}).items())))
        settings = self._env.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if parts.scheme == "http":
                settings["verify"] = True  # no TLS: a CA path is never used, only stat'ed
            if len(self._env) >= MAX_HOSTS:
                self._env.clear()
            self._env[key] = settings
        return {**settings, "proxies": dict(settings["proxies"])}
