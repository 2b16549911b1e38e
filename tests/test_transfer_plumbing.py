"""The plumbing under every transfer: the hashing sink and the HTTP session."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from daemon.errors import Interrupted
from daemon.instances.sessions import EnvOnceSession
from handlers.streams import HashingSink

CHUNK = 64 * 1024


def test_sink_hashes_and_writes_every_chunk_in_order(tmp_path: Path) -> None:
    chunks = [bytes([n]) * size for n, size in
              enumerate([5, CHUNK, 3 * CHUNK + 1, 1, 1 << 20])]
    with (tmp_path / "f").open("w+b") as f:
        sink = HashingSink(f, threading.Event())
        for chunk in chunks:
            sink.write(chunk)
        sink.flush()
        whole = b"".join(chunks)
        assert sink.sha256 == hashlib.sha256(whole).hexdigest()
        assert sink.size == len(whole) and sink.head == whole[:16]
    assert (tmp_path / "f").read_bytes() == whole


def test_sink_copies_a_buffer_the_caller_reuses() -> None:
    sink = HashingSink(io.BytesIO(), threading.Event())
    buffer = bytearray(b"a" * (2 * CHUNK))
    sink.write(buffer)
    buffer[:] = b"b" * len(buffer)  # as a reader reusing its buffer would, at once
    assert sink.sha256 == hashlib.sha256(b"a" * (2 * CHUNK)).hexdigest()


def test_sink_rewind_restarts_the_hash() -> None:
    raw = io.BytesIO()
    sink = HashingSink(raw, threading.Event())
    sink.write(b"x" * (4 * CHUNK))
    sink.seek(0)
    sink.truncate()
    sink.write(b"y" * CHUNK)
    assert sink.sha256 == hashlib.sha256(b"y" * CHUNK).hexdigest()
    assert raw.getvalue() == b"y" * CHUNK and sink.size == CHUNK


def test_sink_stops_within_a_chunk() -> None:
    stop = threading.Event()
    sink = HashingSink(io.BytesIO(), stop)
    sink.write(b"z" * CHUNK)
    stop.set()
    with pytest.raises(Interrupted):
        sink.write(b"z")


def test_session_reads_the_environment_once_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/bundle.pem")
    calls: list[str] = []
    real = requests.sessions.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        calls.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counting)
    session = EnvOnceSession()

    def settings(url: str) -> dict[str, Any]:
        return dict(session.merge_environment_settings(url, {}, None, None, None))

    proxied = [settings(f"http://api.example/files/{n}") for n in range(3)]
    direct = settings("http://direct.example/blob")
    tls = settings("https://api.example/x")
    assert len(calls) == 3  # api.example over http, direct.example, api.example over https
    assert all(s["proxies"]["http"] == "http://proxy.invalid:3128"
               for s in proxied)
    assert direct["proxies"] == {}
    assert proxied[0]["verify"] is True  # plain http: no CA bundle to look at
    assert tls["verify"] == "/etc/bundle.pem"
    proxied[0]["proxies"]["http"] = "changed"
    assert settings("http://api.example/y")["proxies"]["http"] == \
        "http://proxy.invalid:3128"
