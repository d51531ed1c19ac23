"""Subscriber-local delivery: an issue scheduled for "Monday 08:00" goes out at 08:00 on the
subscriber's own clock.

A period is the scheduled moment in the newsletter's time zone. Its wall-clock time (Monday
08:00) placed in another zone gives that zone's local moment, which can be up to a day before
or after the period. The period opens at the earliest local moment of its audience; each tick
then sends to the zones whose local moment has come. A subscriber without a time zone, or with
one we cannot read, counts in the newsletter's zone.

The sending side filters its deliveries with the same rule: `effective_zone(subscriber.timezone,
newsletter_zone)` must be in the set it is given.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import Session, col, or_, select

from digest.cron import place
from digest.models import BatchStatus, Delivery, DeliveryStatus, SendBatch
from subscribers.models import Subscriber, Subscription, SubscriptionStatus

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
    """The zones of the newsletter's active subscribers (theirs, or the newsletter's)."""
    statement = (
        select(Subscriber.timezone)
        .join(Subscription, col(Subscription.subscriber_id) == col(Subscriber.id))
        .where(
            Subscription.newsletter == newsletter,
            Subscription.status == SubscriptionStatus.ACTIVE,
        )
        .distinct()
    )
    return frozenset(effective_zone(name, default) for name in session.exec(statement).all())


def pending_zones(session: Session, issue_id: int, default: str) -> frozenset[str]:
    """The zones of an issue's deliveries not yet handed to the transport.

    A delivery row stays `pending` while its batch speaks for it (digest.ledger), so pending
    means: the row is pending and its batch is too (or it has none yet).
    """
    waiting = [BatchStatus.PENDING, BatchStatus.RETRIED]
    statement = (
        select(Subscriber.timezone)
        .join(Delivery, col(Delivery.subscriber_id) == col(Subscriber.id))
        .outerjoin(SendBatch, col(SendBatch.id) == col(Delivery.batch_id))
        .where(
            Delivery.issue_id == issue_id,
            Delivery.status == DeliveryStatus.PENDING,
            or_(col(SendBatch.id).is_(None), col(SendBatch.status).in_(waiting)),
        )
        .distinct()
    )
    return frozenset(effective_zone(name, default) for name in session.exec(statement).all())
