"""A TCP relay on loopback, to cut one process off a server (here: PostgreSQL) while
the others keep it.

``TcpProxy(connect)`` listens on ``127.0.0.1:<port>`` and relays each connection to a
socket made by ``connect()``. ``cut()`` closes every relayed connection and refuses
new ones (the server went away); ``freeze()`` keeps them open but relays nothing more
(a network that drops everything: a client waits for answers that never come);
``restore()`` relays new connections again (and thaws frozen ones).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from psycopg.conninfo import conninfo_to_dict


def connector_for(dsn: str) -> Callable[[], socket.socket]:
    """How to reach the server of ``dsn``: TCP, or its Unix socket (embedded server)."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        path = f"{host}/.s.PGSQL.{port}"

        def unix() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return sock
        return unix
    return lambda: socket.create_connection((host, port))


class TcpProxy:
    def __init__(self, connect: Callable[[], socket.socket]) -> None:
        self._connect = connect
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._refusing = False
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = False

    def __enter__(self) -> TcpProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closed = True
        self._listener.close()
        self._thawed.set()
        self._close_all()

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
        self._close_all()

    def freeze(self) -> None:
        self._thawed.clear()

    def restore(self) -> None:
        with self._lock:
            self._refusing = False
        self._thawed.set()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                client.close()
                continue
            try:
                server = self._connect()
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._thawed.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    """End both directions of ``sock`` (the peer sees it at once); it may be gone."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
