"""Five-field crontab schedules, meaning exactly what crontab(5) means.

APScheduler 3's `CronTrigger.from_crontab` numbers weekdays from Monday = 0, so "0 8 * * 1"
would fire on Tuesdays. We translate crontab's day-of-week numbers (0 and 7 = Sunday) into
names before handing the fields to `CronTrigger`, which interprets names unambiguously.

Fire times are computed on the wall clock, then placed in the time zone, because APScheduler
3.11's `CronTrigger` gets stuck on (and even steps back to) the repeated hour when clocks fall
back. On the wall clock the crontab rules hold across daylight-saving changes:
- a time that occurs twice (clocks fall back) fires once, at its first occurrence;
- a time that does not exist (clocks spring forward) fires once, right after the gap;
- when both day-of-month and day-of-week are restricted, either one matching is enough.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

_DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DOW_ORDER = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# How far a wall-clock time can move when placed in a zone (the largest DST shift is 2 h).
_SLACK = timedelta(hours=3)
_SECOND = timedelta(seconds=1)
# The windows `previous_fire_time` looks back through, smallest first: frequent schedules
# are found in the first one, so the scan stays short.
_LOOKBACK = (timedelta(hours=1), timedelta(days=1), timedelta(days=8), timedelta(days=32))
_MAX_LOOKBACK = timedelta(days=400)


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


def _fields(expression: str) -> list[str]:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"a schedule needs 5 fields (minute hour day month weekday), got {len(fields)}: "
            f"{expression!r}"
        )
    if not re.fullmatch(r"[\w*,/\-?]+", fields[4]):
        raise ValueError(f"bad day-of-week field {fields[4]!r}")
    return fields


def crontab_trigger(expression: str, timezone: tzinfo | str) -> CronTrigger:
    """Build a CronTrigger from a 5-field crontab line in the given time zone.

    Prefer `CrontabTrigger` for scheduling: this one keeps APScheduler's daylight-saving
    behaviour and its AND of day-of-month and day-of-week.
    """
    minute, hour, day, month, dow = _fields(expression)
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_translate_dow(dow),
        timezone=timezone,
    )


def _wall_triggers(expression: str) -> list[CronTrigger]:
    """Triggers over the naive wall clock (expressed as UTC), one per crontab alternative.

    crontab(5): when day-of-month and day-of-week are both restricted (not starting with
    '*'), a day matching either one fires. APScheduler ANDs them, so we split the line in two.
    """
    minute, hour, day, month, dow = _fields(expression)
    if day.startswith("*") or dow.startswith("*") or dow == "?":
        return [crontab_trigger(expression, UTC)]
    return [
        crontab_trigger(f"{minute} {hour} {day} {month} *", UTC),
        crontab_trigger(f"{minute} {hour} * {month} {dow}", UTC),
    ]


def validate_crontab(expression: str) -> None:
    try:
        _wall_triggers(expression)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"not a valid 5-field cron schedule: {exc}") from exc


def place(wall: datetime, zone: tzinfo) -> datetime:
    """The instant (UTC) a naive wall-clock time happens in `zone`: first occurrence of a
    repeated time, the end of the gap for a skipped one."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # A skipped time: fold=1 reads it with the offset after the change (an instant before the
    # change), fold=0 with the offset before it (an instant after): the change lies between.
    low, high = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    low, high = min(low, high), max(low, high)
    offset_after = high.astimezone(zone).utcoffset()
    while high - low > _SECOND:
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def iter_fire_times(expression: str, zone: tzinfo, start: datetime) -> Iterator[datetime]:
    """Scheduled instants at or after `start`, in increasing order, each once (UTC)."""
    triggers = _wall_triggers(expression)
    wall_start = (start.astimezone(zone).replace(tzinfo=None) - _SLACK).replace(tzinfo=UTC)
    heads = [trigger.get_next_fire_time(None, wall_start) for trigger in triggers]
    last: datetime | None = None
    while True:
        pending = [head for head in heads if head is not None]
        if not pending:
            return
        wall = min(pending)
        heads = [
            trigger.get_next_fire_time(None, wall + _SECOND) if head == wall else head
            for trigger, head in zip(triggers, heads, strict=True)
        ]
        instant = place(wall.replace(tzinfo=None), zone)
        if instant < start or (last is not None and instant <= last):
            continue
        last = instant
        yield instant


def fire_times(
    expression: str, zone: tzinfo, after: datetime, until: datetime, limit: int | None = None
) -> list[datetime]:
    """Scheduled instants in (after, until], oldest first; the newest `limit` when capped."""
    found: list[datetime] = []
    for instant in iter_fire_times(expression, zone, after + timedelta(microseconds=1)):
        if instant > until:
            break
        found.append(instant)
        if limit is not None and len(found) > limit:
            found.pop(0)
    return found


def previous_fire_time(expression: str, timezone: tzinfo, now: datetime) -> datetime | None:
    """The latest scheduled moment at or before `now` (UTC), or None if none in 400 days.

    UTC, not the zone: Python compares a repeated local time unequal to any other zone's.
    """
    for span in (*_LOOKBACK, _MAX_LOOKBACK):
        found = fire_times(expression, timezone, now - span, now)
        if found:
            return found[-1]
    return None


def next_fire_time(expression: str, timezone: tzinfo, now: datetime) -> datetime | None:
    """The first scheduled moment at or after `now` (UTC)."""
    return next(iter_fire_times(expression, timezone, now), None)


class CrontabTrigger(BaseTrigger):
    """An APScheduler trigger with crontab's meaning (see the module docstring)."""

    __slots__ = ("expression", "timezone")

    def __init__(self, expression: str, timezone: tzinfo) -> None:
        validate_crontab(expression)
        self.expression = expression
        self.timezone = timezone

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # Like CronTrigger: after a previous run, the next one strictly after it, even when
        # that is already past (a misfire, which the scheduler coalesces or drops).
        start = now
        if previous_fire_time is not None:
            start = previous_fire_time + timedelta(microseconds=1)
        return next_fire_time(self.expression, self.timezone, start)

    def __str__(self) -> str:
        return f"crontab[{self.expression!r} {self.timezone}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger ({self.expression!r}, timezone={str(self.timezone)!r})>"
