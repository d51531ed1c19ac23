"""Five-field crontab schedules, meaning exactly what crontab(5) means.

APScheduler 3's `CronTrigger.from_crontab` numbers weekdays from Monday = 0, so "0 8 * * 1"
would fire on Tuesdays. We translate crontab's day-of-week numbers (0 and 7 = Sunday) into
names before handing the fields to `CronTrigger`, which interprets names unambiguously.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, tzinfo

from apscheduler.triggers.cron import CronTrigger

_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DOW_ORDER = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _dow_token(token: str) -> str:
    token = token.strip().lower()
    if token.isdigit():
        number = int(token)
        if number > 7:
            raise ValueError(f"day of week {number} is out of range 0-7")
        return _DOW_NAMES[number]
    return token


def _translate_dow(field: str) -> str:
    """Translate crontab's numeric weekdays into names, keeping ranges and steps."""
    if field in ("*", "?"):
        return "*"
    parts = []
    for part in field.split(","):
        step = ""
        if "/" in part:
            part, step_value = part.split("/", 1)
            step = "/" + step_value
        if "-" in part:
            start, end = (_dow_token(t) for t in part.split("-", 1))
            # crontab allows 5-7 (fri..sun); APScheduler needs a range that does not wrap.
            if _DOW_ORDER.index(end) < _DOW_ORDER.index(start):
                raise ValueError(f"day-of-week range {part!r} wraps around the week")
            parts.append(f"{start}-{end}{step}")
        else:
            parts.append(_dow_token(part) + step)
    return ",".join(parts)


def crontab_trigger(expression: str, timezone: tzinfo | str) -> CronTrigger:
    """Build a CronTrigger from a 5-field crontab line in the given time zone."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"a schedule needs 5 fields (minute hour day month weekday), got {len(fields)}: "
            f"{expression!r}"
        )
    minute, hour, day, month, dow = fields
    if not re.fullmatch(r"[\w*,/\-?]+", dow):
        raise ValueError(f"bad day-of-week field {dow!r}")
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_translate_dow(dow),
        timezone=timezone,
    )


def validate_crontab(expression: str) -> None:
    try:
        crontab_trigger(expression, "UTC")
    except (ValueError, KeyError) as exc:
        raise ValueError(f"not a valid 5-field cron schedule: {exc}") from exc


def previous_fire_time(expression: str, timezone: tzinfo, now: datetime) -> datetime | None:
    """The latest scheduled moment at or before `now`, or None if none in the last 400 days."""
    trigger = crontab_trigger(expression, timezone)
    # Look back in growing windows so frequent schedules stay cheap to scan.
    for days in (1, 8, 32, 400):
        probe = trigger.get_next_fire_time(None, now - timedelta(days=days))
        if probe is not None and probe <= now:
            break
    else:
        return None
    last = probe
    while True:
        following = trigger.get_next_fire_time(last, last + timedelta(seconds=1))
        if following is None or following > now:
            return last
        last = following


def next_fire_time(expression: str, timezone: tzinfo, now: datetime) -> datetime | None:
    trigger = crontab_trigger(expression, timezone)
    return trigger.get_next_fire_time(None, now)
