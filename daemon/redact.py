"""Secret redaction for anything that may reach a log, a sidecar or a report.

Two layers: the exact values of known secrets (passed in, or registered once by whoever
learnt them, e.g. the platform instance after a login), and patterns that look like
credentials whatever their value (``Token xxx``, ``"password": "..."``, signed URL
query parameters). Both are replaced with ``***``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

MASK = "***"

# Secrets shorter than this are not replaced by value: masking every "a" or "1" in a
# message would make it unreadable and protect nothing (such a secret is guessable).
MIN_SECRET_LENGTH = 4

_registered: set[str] = set()
_registered_lock = threading.Lock()

_KEYS = r"token|access_token|refresh_token|password|passwd|secret|api_key|apikey"

# Order matters: the JSON form first, so `"token": "Token abc"` is masked as a whole.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "token": "xxx" and 'password': 'xxx' (JSON bodies, Python reprs)
    (re.compile(rf"""(["'](?:{_KEYS})["']\s*:\s*)(["'])(?:\\.|(?!\2).)*\2""", re.I),
     rf"\1\2{MASK}\2"),
    # An Authorization header's whole value, whatever its scheme
    (re.compile(r"""(\bAuthorization["']?\s*[:=]\s*["']?)(?:[A-Za-z]+\s+)?[^\s"',}]+""",
                re.I), rf"\1{MASK}"),
    # Token xxx / Bearer xxx / Basic xxx elsewhere; the value must hold a digit and be
    # 8+ characters, so prose such as "Token expired" stays readable.
    (re.compile(r"\b(Token|Bearer|Basic)(\s+)"
                r"(?=[A-Za-z0-9._~+/=:-]*\d)[A-Za-z0-9._~+/=:-]{8,}"), rf"\1\2{MASK}"),
    # token=xxx in query strings and form bodies, and pre-signed URL signatures
    (re.compile(
        rf"([?&;\s](?:{_KEYS}|signature|sig|x-amz-signature|x-amz-credential"
        rf"|x-amz-security-token|x-goog-signature|x-goog-credential)=)[^&\s'\"#]+",
        re.I), rf"\1{MASK}"),
)


def register_secret(value: str | None) -> None:
    """Remember a secret so that every later ``redact`` call masks it too."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _registered_lock:
            _registered.add(value)


def registered_secrets() -> frozenset[str]:
    """The secrets registered so far (for a log sink's filter, say)."""
    with _registered_lock:
        return frozenset(_registered)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each known secret value and each credential-like pattern masked.

    ``secrets`` adds values to the registered ones; ``None`` and short values are
    skipped. Longest values are replaced first so a secret containing another is masked
    whole. Never raises.
    """
    values = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
    values |= registered_secrets()
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
