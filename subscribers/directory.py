"""Looking people up for operators: who is on which list, in what state, and whether blocked."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import Session, col, select

from subscribers.models import Subscriber, Subscription, Suppression

_CHUNK = 5000


@dataclass
class SubscriberSummary:
    id: int
    email: str
    name: str | None
    timezone: str | None
    locale: str | None
    created_at: datetime
    subscriptions: dict[str, str] = field(default_factory=dict)  # newsletter → status
    suppressed: str | None = None  # the suppression reason


def list_subscribers(
    session: Session, *, newsletter: str | None = None, limit: int | None = None
) -> list[SubscriberSummary]:
    """Subscribers in id order (those with a subscription row for `newsletter`, if given)."""
    people = select(Subscriber).order_by(col(Subscriber.id))
    if newsletter is not None:
        people = people.where(
            col(Subscriber.id).in_(
                select(Subscription.subscriber_id).where(Subscription.newsletter == newsletter)
            )
        )
    if limit:
        people = people.limit(limit)
    found = {
        s.id: SubscriberSummary(s.id, s.email, s.name, s.timezone, s.locale, s.created_at)
        for s in session.exec(people)
        if s.id is not None
    }
    if not found:
        return []
    ids = list(found)
    for start in range(0, len(ids), _CHUNK):
        _add_details(session, [found[i] for i in ids[start : start + _CHUNK]])
    return list(found.values())


def _add_details(session: Session, people: list[SubscriberSummary]) -> None:
    by_id = {person.id: person for person in people}
    for sid, slug, status in session.exec(
        select(Subscription.subscriber_id, Subscription.newsletter, Subscription.status)
        .where(col(Subscription.subscriber_id).in_(list(by_id)))
        .order_by(col(Subscription.newsletter))
    ):
        by_id[sid].subscriptions[slug] = status
    by_email = {person.email: person for person in people}
    for email, reason in session.exec(
        select(Suppression.email, Suppression.reason).where(
            col(Suppression.email).in_(list(by_email))
        )
    ):
        if email is not None:  # matched by address, so never a forgotten (hashed) row
            by_email[email].suppressed = reason
