"""Cron expressions of the config as APScheduler ``CronTrigger``s.

- Five fields are a standard crontab line: ``minute hour day month weekday``.
- Six fields put seconds first (``*/5 * * * * *``: every five seconds), as Quartz and
  Spring do; meant for tests and sub-minute jobs.
- Weekday numbers mean what they mean in crontab (0 and 7 are Sunday). APScheduler 3
  counts 0 as Monday (its ``from_crontab`` keeps that for compatibility), so numbers are
  translated to day names here: ``0 2 * * 1`` fires on Mondays, as a cron user expects.
- As in APScheduler, a day-of-month and a weekday restriction must *both* match (crontab
  fires when either does); restrict one of the two.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises ``ValueError`` for an unknown one."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as UTC or "
                         "Europe/Berlin") from None


def cron_trigger(expr: str, timezone: str = "UTC") -> CronTrigger:
    """A trigger for ``expr`` in ``timezone``.

    Raises ``ValueError`` saying what is wrong: the number of fields, a field's value,
    or the time zone."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ValueError(f"cron {expr!r} has {len(fields)} fields; use 5 (minute hour day "
                         "month weekday) or 6 (second minute hour day month weekday)")
    second = fields[0] if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields[-5:]
    tz = zone(timezone)
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=crontab_weekdays(weekday), timezone=tz)
    except ValueError as exc:
        raise ValueError(f"cron {expr!r}: {exc}") from None


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field in APScheduler's terms: numbers become day names.

    ``*``, names and name ranges mean the same to both and pass unchanged; anything
    with a number is expanded to the list of days it selects (``1-5`` → ``mon,...,fri``,
    ``*/2`` → ``sun,tue,thu,sat``). Raises ``ValueError`` for a malformed field."""
    if not any(c.isdigit() for c in field):
        return field
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = _number(step_text, "step") if step_text else 1
        if step < 1:
            raise ValueError(f"weekday step {step_text!r} must be at least 1")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            low, _, high = span.partition("-")
            first, last = _day(low), _day(high)
        else:  # "1/2" in crontab means from Monday, every second day
            first = _day(span)
            last = 6 if step_text else first
        if first > last:
            raise ValueError(f"weekday range {span!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    return ",".join(DAY_NAMES[d] for d in sorted(days))


def _day(text: str) -> int:
    name = text.strip().lower()
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    day = _number(name, "weekday")
    if not 0 <= day <= 7:
        raise ValueError(f"weekday {text!r} is out of range; use 0-7 (0 and 7 are Sunday)")
    return day


def _number(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a number")
    return int(text)
