"""Action name → handler."""

from __future__ import annotations

from daemon.errors import FatalError
from handlers import analyze, copy, download
from handlers.base import Handler

HANDLERS: dict[str, Handler] = {
    "download": download.run,
    "analyze": analyze.run,
    "copy": copy.run,
}


def handler_for(action: str) -> Handler:
    try:
        return HANDLERS[action]
    except KeyError:
        raise FatalError(f"the {action} action is not available in this version") from None
