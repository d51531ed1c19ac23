"""Period arithmetic: the scheduled moment an issue belongs to, as a pure function of the
newsletter's crontab, its time zone and an explicit `now`.

A period is a fire time of the newsletter's `schedule`; one issue exists per (newsletter,
period), keyed by `period_key`. Imports no database and no App: the scheduler's rules and the
status report use these too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from digest import cron
from digest.config import NewsletterConfig, Settings


def period_key(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat()


def current_period(settings: Settings, newsletter: NewsletterConfig, now: datetime) -> datetime:
    """The latest scheduled moment at or before `now` (or `now` for a schedule never due yet)."""
    tz = settings.newsletter_timezone(newsletter)
    moment = cron.previous_fire_time(newsletter.schedule, tz, now)
    return (moment or now).astimezone(UTC)


def next_period(settings: Settings, newsletter: NewsletterConfig, now: datetime) -> datetime:
    tz = settings.newsletter_timezone(newsletter)
    moment = cron.next_fire_time(newsletter.schedule, tz, now)
    return (moment or now).astimezone(UTC)
