"""Who gets the next issue: active subscriptions whose address is not suppressed.

Read in keyset pages (`subscriber_id > after_id ORDER BY subscriber_id LIMIT n`) so a send of a
million recipients streams in constant memory, resumes from the last id, and each page is an
index range scan on ix_subscription_audience (newsletter, status, subscriber_id) plus a primary
key and a unique-index probe per row — no OFFSET, no sort.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, exists, func
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from subscribers.bulk import among
from subscribers.models import (
    ConsentEvent,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
)

# Well under SQLite's and PostgreSQL's bound-parameter limits.
_MAX_IDS_PER_QUERY = 10_000


@dataclass(frozen=True)
class Recipient:
    subscriber_id: int
    email: str
    name: str | None
    timezone: str | None
    locale: str | None


def _mailable(newsletter: str, replaced_by: Sequence[str] = ()) -> list[Any]:
    """WHERE clauses: an active subscription to `newsletter` of an unsuppressed address, whose
    subscriber is not actively subscribed to one of `replaced_by` (a personal newsletter that
    sends them this topic inside its own email instead)."""
    clauses = [
        col(Subscription.newsletter) == newsletter,
        col(Subscription.status) == SubscriptionStatus.ACTIVE,
        ~exists().where(col(Suppression.email) == col(Subscriber.email)),
    ]
    if replaced_by:
        other = aliased(Subscription)
        clauses.append(
            ~exists().where(
                col(other.subscriber_id) == col(Subscription.subscriber_id),
                col(other.newsletter).in_(list(replaced_by)),
                col(other.status) == SubscriptionStatus.ACTIVE,
            )
        )
    return clauses


def audience_statement(
    newsletter: str, *, after_id: int, limit: int, replaced_by: Sequence[str] = ()
) -> Select:  # type: ignore[type-arg]
    """The query behind `audience_page`, columns in `Recipient` order, for callers that insert
    its rows elsewhere in SQL (the sender freezes a million recipients with INSERT … SELECT)."""
    return (
        sa_select(  # sqlmodel's select is typed for up to four columns
            col(Subscription.subscriber_id).label("subscriber_id"),
            col(Subscriber.email).label("email"),
            col(Subscriber.name).label("name"),
            col(Subscriber.timezone).label("timezone"),
            col(Subscriber.locale).label("locale"),
        )
        .join(Subscriber, col(Subscriber.id) == col(Subscription.subscriber_id))
        # The bound on both sides of the join: PostgreSQL does not carry an inequality across it
        # and would otherwise merge-join from the first subscriber on every page.
        .where(
            *_mailable(newsletter, replaced_by),
            col(Subscription.subscriber_id) > after_id,
            col(Subscriber.id) > after_id,
        )
        .order_by(col(Subscription.subscriber_id))
        .limit(limit)
    )


def audience_page(
    session: Session,
    newsletter: str,
    *,
    after_id: int,
    limit: int,
    replaced_by: Sequence[str] = (),
) -> list[Recipient]:
    """The next `limit` recipients with subscriber_id > after_id, in id order (one query)."""
    statement = audience_statement(
        newsletter, after_id=after_id, limit=limit, replaced_by=replaced_by
    )
    # Core execution on the session's connection: no ORM row processing on the hot path.
    return [Recipient(*row) for row in session.connection().execute(statement)]


def count_audience(
    session: Session, newsletter: str, *, after_id: int = 0, replaced_by: Sequence[str] = ()
) -> int:
    """How many `audience_page` would return, all pages together (those after `after_id`)."""
    statement = (
        select(func.count())
        .select_from(Subscription)
        .join(Subscriber, col(Subscriber.id) == col(Subscription.subscriber_id))
        .where(*_mailable(newsletter, replaced_by), col(Subscription.subscriber_id) > after_id)
    )
    return session.exec(statement).one()


def audience_timezones(
    session: Session, newsletter: str, *, replaced_by: Sequence[str] = ()
) -> set[str | None]:
    """The distinct time zones of the audience, as subscribers gave them (None: not given)."""
    statement = (
        sa_select(col(Subscriber.timezone))
        .select_from(Subscription)
        .join(Subscriber, col(Subscriber.id) == col(Subscription.subscriber_id))
        .where(*_mailable(newsletter, replaced_by))
        .distinct()
    )
    return set(session.connection().execute(statement).scalars())


def mailable(
    subscriber_id: Any, newsletter: str, *, replaced_by: Sequence[str] = ()
) -> ColumnElement[bool]:
    """SQL: the subscriber whose id is `subscriber_id` (a column of the caller's query) may be
    mailed `newsletter` now; the rule of `audience_page` and `blocked_among`, for a caller that
    checks it inside its own query (the sender, as it reads a batch it is about to send)."""
    return exists().where(
        col(Subscription.subscriber_id) == subscriber_id,
        col(Subscriber.id) == col(Subscription.subscriber_id),
        *_mailable(newsletter, replaced_by),
    )


def blocked_among(
    session: Session,
    newsletter: str,
    subscriber_ids: Sequence[int],
    *,
    replaced_by: Sequence[str] = (),
) -> set[int]:
    """Those of `subscriber_ids` that must not be mailed `newsletter` now.

    Checked just before a batch goes out, so an unsubscribe or bounce that arrived since the
    audience was frozen still counts. One query per batch (up to 10,000 ids).
    """
    wanted = set(subscriber_ids)
    allowed: set[int] = set()
    dialect = session.connection().dialect
    ids = sorted(wanted)
    for start in range(0, len(ids), _MAX_IDS_PER_QUERY):
        chunk = ids[start : start + _MAX_IDS_PER_QUERY]
        statement = (
            select(Subscription.subscriber_id)
            .join(Subscriber, col(Subscriber.id) == col(Subscription.subscriber_id))
            .where(
                *_mailable(newsletter, replaced_by),
                among(col(Subscription.subscriber_id), chunk, dialect),
            )
        )
        allowed.update(session.exec(statement))
    return wanted - allowed


CHANGED_LIMIT = 10_000  # beyond this many, checking everyone is as cheap


def changed_since(session: Session | Connection, moment: datetime) -> set[int] | None:
    """The subscribers whose consent changed at or after `moment` (every unsubscribe, bounce,
    complaint, suppression, subscription and erasure appends a consent event), or None when
    that cannot be told: an event since then names no subscriber (an address suppressed
    without one, an erasure), or there are more than CHANGED_LIMIT.

    A sender checks only these against `mailable` when it reads a batch: everyone else is as
    mailable as when the audience was frozen. Probing every recipient instead cost a million
    index probes per million recipients (scattered ones for a personal newsletter's batches).
    """
    rows = (
        session.execute(
            sa_select(col(ConsentEvent.subscriber_id))
            .where(col(ConsentEvent.at) >= moment)
            .distinct()
            .limit(CHANGED_LIMIT + 1)
        )
        .scalars()
        .all()
    )
    if len(rows) > CHANGED_LIMIT or any(row is None for row in rows):
        return None
    return {int(row) for row in rows if row is not None}
