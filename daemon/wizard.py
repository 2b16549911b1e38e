"""``scanrelay new``: a guided request, question by question, with defaults.

It asks only what the chosen action needs, offers the configured instances and
profiles, validates the answers with the same code as the daemon, shows what a
selection by store and dates matches (``scanrelay select``) before it keeps it, and ends
by writing the request into the inbox. Passwords are never asked: they live in credentials.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.prompt import Confirm, IntPrompt, Prompt

from daemon.config import Config
from daemon.errors import RequestError, ScanrelayError
from daemon.instances.registry import Instances
from daemon.request import ACTIONS, build_request, build_select
from daemon.selection import preview, show
from daemon.submit import drop_request

IDS = re.compile(r"[\s,;]+")


class Wizard:
    def __init__(self, config: Config, console: Console) -> None:
        self.config = config
        self.console = console
        self.instances = Instances(config)  # opened only for a selection's preview

    def run(self) -> Path:
        try:
            return self._run()
        finally:
            self.instances.close()

    def _run(self) -> Path:
        raw = self._ask_all()
        while True:
            try:
                build_request(raw, self.config)
                break
            except RequestError as exc:
                self.console.print("[red]That request is not valid yet:[/red]")
                for problem in exc.problems:
                    self.console.print(f"  - {problem}", markup=False)
                if not Confirm.ask("Start over?", default=True, console=self.console):
                    raise
                raw = self._ask_all()
        self.console.print_json(data=raw)
        return drop_request(self.config, raw, stem=f"new-{raw['action']}")

    def _ask_all(self) -> dict[str, Any]:
        action = Prompt.ask("Action", choices=list(ACTIONS), default="copy",
                            console=self.console)
        instances = sorted(self.config.instances)
        raw: dict[str, Any] = {"action": action,
                               "source": self._choose("Source instance", instances)}
        if action in ("copy", "analyze"):
            others = [i for i in instances if i != raw["source"]] or instances
            raw["target"] = self._choose("Target instance", others)
        raw.update(self._scans(action, raw["source"]))
        if action == "copy":
            raw["target_store_id"] = IntPrompt.ask("Target store ID", console=self.console)
            raw["mode"] = Prompt.ask("Mode (auto: the target maps sections itself; mapped: "
                                     "keep the source's)", choices=["auto", "mapped"],
                                     default="auto", console=self.console)
            raw["analyze"] = Confirm.ask("Analyse source vs target afterwards?",
                                         default=True, console=self.console)
        label = Prompt.ask("Label (free text, optional)", default="", console=self.console)
        if label:
            raw["label"] = label
        return raw

    def _choose(self, question: str, names: list[str]) -> str:
        return Prompt.ask(question, choices=names, default=names[0], console=self.console)

    def _scans(self, action: str, source: str) -> dict[str, Any]:
        if action == "analyze":
            return self._pairs()
        text = Prompt.ask("Scan IDs (typed or pasted, separated by commas, spaces or lines, "
                          "ending with an empty line; empty now to select by store and "
                          "dates)", default="", console=self.console)
        if text.strip():
            return {"scan_ids": self._ids(text + " " + self._more_lines())}
        while True:
            select = self._select()
            if self._previewed(source, select):
                return {"select": select}

    def _previewed(self, source: str, select: dict[str, Any]) -> bool:
        """Show what ``select`` matches now (as ``scanrelay select``); whether to keep it.
        Relative dates are resolved again when the request runs."""
        try:
            result = preview(self.instances.get(source), build_select(select))
        except RequestError:
            return True  # the request's own validation names the problem
        except ScanrelayError as exc:
            self.console.print(f"cannot preview the selection: {exc}", markup=False)
            return Confirm.ask("Keep this selection anyway?", default=True, console=self.console)
        show(result, self.console)
        return Confirm.ask(f"Use this selection ({result.count} scans now)?",
                           default=result.count > 0, console=self.console)

    def _select(self) -> dict[str, Any]:
        select: dict[str, Any] = {
            "store_id": IntPrompt.ask("Store ID", console=self.console),
            "captured_from": Prompt.ask("Captured from (YYYY-MM-DD, today, yesterday, -7d)",
                                        default="-7d", console=self.console),
            "captured_to": Prompt.ask("Captured to", default="today", console=self.console),
        }
        limit = IntPrompt.ask("At most how many scans (0: no limit)", default=0,
                              console=self.console)
        if limit:
            select["limit"] = limit
        return select

    def _pairs(self) -> dict[str, Any]:
        run = Prompt.ask("Copy run to analyse (run ID; empty to type scan pairs)",
                         default="", console=self.console)
        if run.strip():
            return {"from_run": run.strip()}
        sources = self._ids(Prompt.ask("Source scan IDs", console=self.console))
        targets = self._ids(Prompt.ask("Target scan IDs, in the same order",
                                       console=self.console))
        return {"scan_ids": sources, "target_scan_ids": targets}

    def _more_lines(self) -> str:
        """A pasted column of IDs arrives line by line: read until an empty line."""
        lines = []
        while line := self.console.input().strip():
            lines.append(line)
        return " ".join(lines)

    @staticmethod
    def _ids(text: str) -> list[int | str]:
        # Non-numbers are kept as typed, so validation names them.
        return [int(p) if p.isdigit() else p for p in IDS.split(text.strip()) if p]

