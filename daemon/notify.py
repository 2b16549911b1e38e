"""sd_notify without a dependency: datagrams to ``$NOTIFY_SOCKET`` (systemd Type=notify)."""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING when run under systemd; silent otherwise."""

    def __init__(self) -> None:
        # The service pings every second, well inside any sensible WatchdogSec=.
        self._address = os.environ.get("NOTIFY_SOCKET")

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        # A systemd that went away is nothing to act on: errors are dropped.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, \
                contextlib.suppress(OSError):
            sock.sendto("\n".join(fields).encode(), address)
