"""Action name → handler, imported on first use: ``analyze`` brings pandas and openpyxl
(about 50 MB of memory), which a daemon that only downloads never needs."""

from __future__ import annotations

import importlib
from typing import cast

from daemon.errors import FatalError
from handlers.base import Handler

MODULES = {
    "download": "handlers.download",
    "copy": "handlers.copy",
    "analyze": "handlers.analyze",
}


def handler_for(action: str) -> Handler:
    """The ``run`` function of the action's module. Raises ``FatalError`` if unknown."""
    module = MODULES.get(action)
    if module is None:
        raise FatalError(f"the {action} action is not available in this version")
    return cast(Handler, importlib.import_module(module).run)
