"""The page's HTTP server: uvicorn in a daemon thread of the scanrelay process, like
the metrics endpoint. An unreadable or empty token stops the daemon at start; a port
that cannot be bound is logged as an error and the daemon runs on without its page
(requests matter more than the window onto them)."""

from __future__ import annotations

import socket
import threading

import uvicorn
from loguru import logger

from daemon.config import Config, read_secret
from daemon.errors import FatalError
from daemon.web.app import create_app

STOP_SECONDS = 3.0  # open requests get this long when the daemon stops


class WebServer:
    def __init__(self, config: Config) -> None:
        web = config.web
        assert web.listen is not None
        self.listen = web.listen
        token = read_secret(None, web.token_file, "web.token_file") if web.token_file else None
        if web.token_file and not token:
            raise FatalError(f"web.token_file {web.token_file} is empty; put a long random "
                             "token in it (e.g. `openssl rand -hex 32`)")
        self.app = create_app(config, token)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            sock = _bind(self.listen)
        except OSError as exc:
            logger.error("web.listen {}: cannot listen there ({}); running without the web "
                         "page: choose a free port or another address", self.listen,
                         exc.strerror)
            return
        conf = uvicorn.Config(self.app, log_config=None, access_log=False,
                              server_header=False, lifespan="off",
                              timeout_graceful_shutdown=int(STOP_SECONDS))
        self._server = uvicorn.Server(conf)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="web", daemon=True)
        self._thread.start()
        logger.info("web page at http://{}/", self.listen)

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(STOP_SECONDS + 1.0)


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
