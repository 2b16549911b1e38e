"""Who may see the page, and the headers every answer carries.

Without a token (loopback only, enforced by the config) everyone who can reach the
socket may read, but only with a loopback ``Host`` (a page elsewhere cannot rebind its
name to 127.0.0.1 and read ours). With a token, a request needs ``Authorization:
Bearer <token>`` or the session cookie the login form sets; the cookie holds an HMAC of
the token, never the token, so no answer ever carries the secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from daemon.config import is_loopback

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "scanrelay_session"
OPEN_PATHS = ("/login", "/colours.css")  # the sign-in form and its assets, with /static/
HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cache-control": "no-store",
}


class Keys:
    """What is derived from the token: the session cookie value and the form key."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.session = self._derive("session") if token else None
        self.csrf = self._derive("csrf") if token else None

    def _derive(self, purpose: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), f"scanrelay web {purpose}".encode(),
                        hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(),
                                                              self.token.encode())

    def allowed(self, headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(value.strip()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is just no session
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(),
                                                          (self.session or "").encode())


class Guard:
    """ASGI middleware: the security headers on every answer; 401 (with the login form
    for a browser) without a valid token; 400 for a foreign Host when tokenless."""

    def __init__(self, app: ASGIApp, keys: Keys, login_page: Callable[[str], bytes]) -> None:
        self.app = app
        self.keys = keys
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope.get("path", "/")

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      *((k.encode(), v.encode()) for k, v in HEADERS.items())]
            await send(message)

        if self.keys.token is None and not _loopback_host(headers.get("host", "")):
            await _plain(send_secured, 400, b"this page answers only on a loopback address")
            return
        open_path = path in OPEN_PATHS or path.startswith("/static/")
        if not open_path and not self.keys.allowed(headers):
            await _answer(send_secured, 401, self.login_page(path), "text/html; charset=utf-8")
            return
        await self.app(scope, receive, send_secured)


def _loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(name)


async def _plain(send: Send, status: int, body: bytes) -> None:
    await _answer(send, status, body, "text/plain; charset=utf-8")


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="scanrelay"')]})
    await send({"type": "http.response.body", "body": body})
