"""What a schedule writes at one fire: its request template, made concrete for that fire.

- Relative dates of ``select`` (``today``, ``yesterday``, ``-7d``) resolve on the fire's
  day in the schedule's time zone: a 00:30 fire in Europe/Berlin is on the Berlin date,
  and a fire caught up after a restart still means the day it was scheduled for.
  (Relative dates that come from a profile, not the template, resolve when the request
  runs, in UTC, like any dropped request's.)
- The label names the schedule and the fire time (in the schedule's time zone), after
  the template's own label if it has one.
- The file name is ``schedule-<name>-<fire time, UTC>.json``: unique per fire, and
  known in advance, which the exactly-once bookkeeping relies on.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from daemon.config import ScheduleConfig
from daemon.request import resolve_select_dates
from daemon.schedule.cron import zone


def job_id(schedule_name: str) -> str:
    return f"schedule:{schedule_name}"


def fire_label(schedule: ScheduleConfig, fire_time: datetime) -> str:
    local = fire_time.astimezone(zone(schedule.timezone))
    return f"schedule {schedule.name} {local.isoformat()}"


def request_name(schedule_name: str, fire_time: datetime) -> str:
    return f"schedule-{schedule_name}-{fire_time.astimezone(UTC):%Y%m%d-%H%M%S}.json"


def scheduled_request(schedule: ScheduleConfig, fire_time: datetime) -> dict[str, Any]:
    """The request ``schedule`` drops for its fire at ``fire_time`` (an aware datetime)."""
    raw: dict[str, Any] = copy.deepcopy(schedule.request)
    select = raw.get("select")
    if isinstance(select, Mapping):
        day = fire_time.astimezone(zone(schedule.timezone)).date()
        raw["select"] = {key: value.isoformat() if isinstance(value, date) else value
                         for key, value in resolve_select_dates(select, day).items()}
    label = fire_label(schedule, fire_time)
    raw["label"] = f"{raw['label']} ({label})" if raw.get("label") else label
    return raw
