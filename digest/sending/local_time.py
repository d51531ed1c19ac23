"""Subscriber-local delivery: an issue scheduled for "Monday 08:00" goes out at 08:00 on the
subscriber's own clock.

A period is the scheduled moment in the newsletter's time zone. Its wall-clock time (Monday
08:00) placed in another zone gives that zone's local moment, which can be up to a day before
or after the period. The period opens at the earliest local moment of its audience; each tick
then sends to the zones whose local moment has come. A subscriber without a time zone, or with
one we cannot read, counts in the newsletter's zone.

The sending side uses the same rule: the freeze cuts the audience into batches per
`effective_zone(subscriber.timezone, newsletter_zone)` and records the zone on each batch, and a
send given a set of zones claims only their batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from digest.cron import place

if TYPE_CHECKING:  # the scheduler's rules import this module on every tick, idle ones too
    from sqlmodel import Session

    from digest.sending.freeze import Zoning

# UTC-12 to UTC+14: a wall-clock time happens at most 26 hours apart around the world.
MAX_LEAD = timedelta(hours=26)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def effective_zone(name: str | None, default: str) -> str:
    """The subscriber's zone if it is a valid IANA name, else the newsletter's."""
    if name and _zone(name.strip()) is not None:
        return name.strip()
    return default


def local_moment(period: datetime, newsletter_zone: tzinfo, zone: str) -> datetime:
    """When the period's wall-clock time happens in `zone` (UTC)."""
    wall = period.astimezone(newsletter_zone).replace(tzinfo=None)
    target = _zone(zone)
    return place(wall, target if target is not None else newsletter_zone)


def opens_at(period: datetime, newsletter_zone: tzinfo, zones: Iterable[str]) -> datetime:
    moments = [local_moment(period, newsletter_zone, zone) for zone in zones]
    return min(moments, default=period)


def due_zones(
    period: datetime, newsletter_zone: tzinfo, zones: Iterable[str], now: datetime
) -> frozenset[str]:
    return frozenset(z for z in zones if local_moment(period, newsletter_zone, z) <= now)


def audience_zones(session: Session, newsletter: str, default: str) -> frozenset[str]:
    """The zones of the newsletter's audience (theirs, or the newsletter's)."""
    from subscribers import audience_timezones

    return frozenset(
        effective_zone(name, default) for name in audience_timezones(session, newsletter)
    )


def zoning(session: Session, newsletter: str, default: str) -> Zoning:
    """How the freeze places the audience in zones: each zone subscribers gave, validated."""
    from digest.sending.freeze import Zoning
    from subscribers import audience_timezones

    given = audience_timezones(session, newsletter)
    return Zoning({name: effective_zone(name, default) for name in given}, default)


def pending_zones(session: Session, issue_id: int, default: str) -> frozenset[str]:
    """The zones of an issue's batches not yet handed to the transport (a batch cut without a
    zone, before the newsletter sent in local time, counts in the newsletter's)."""
    from digest.sending import counts

    return frozenset(default if z is None else z for z in counts.pending_zones(session, issue_id))


def claimable(timezones: Iterable[str], default: str) -> frozenset[str | None]:
    """The batch zones `ledger.claim` may take when sending to `timezones`."""
    zones: set[str | None] = set(timezones)
    if default in zones:
        zones.add(None)
    return frozenset(zones)
