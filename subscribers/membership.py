"""Joining and leaving one newsletter: add, unsubscribe, unsubscribe from everything.

An unsubscribe sticks: nothing here turns an unsubscribed, bounced or complained subscription
back on, and a suppressed address is never subscribed. Only the person can come back, through
a confirmed link (see `optin`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, select

from subscribers import consent
from subscribers.addresses import normalize_email
from subscribers.bulk import insert_missing
from subscribers.models import (
    ConsentAction,
    Subscriber,
    SubscriberAlias,
    Subscription,
    SubscriptionStatus,
    SuppressionReason,
)
from subscribers.profile import clean_locale, clean_name, clean_timezone
from subscribers.suppression import (
    MAILABLE,
    end_subscriptions,
    is_forgotten,
    suppress,
    suppression_reason,
)

SUBSCRIPTION_KEY = ("subscriber_id", "newsletter")


class AddOutcome(StrEnum):
    CREATED = "created"  # a new subscription (active, or pending under double opt-in)
    EXISTING = "existing"  # already subscribed or pending: nothing changed
    SKIPPED = "skipped"  # unsubscribed, bounced, complained or suppressed: left alone


@dataclass(frozen=True)
class AddResult:
    outcome: AddOutcome
    subscriber_id: int | None
    status: str | None  # the subscription's status after the call
    reason: str | None = None  # why it was skipped

    @property
    def created(self) -> bool:
        return self.outcome is AddOutcome.CREATED


def skip_reason(
    status: str | None, unsubscribed_at: datetime | None, suppression: str | None
) -> str | None:
    """Why an address must not be (re)subscribed, or None when it may be."""
    if suppression is not None:
        return f"suppressed ({suppression})"
    if status is None or status in MAILABLE:
        return None
    when = f" on {unsubscribed_at:%Y-%m-%d}" if unsubscribed_at else ""
    return f"{status}{when}"


def find_subscriber(session: Session, email: str) -> Subscriber | None:
    """The subscriber with this address, however it is spelled (raises InvalidAddress)."""
    address = normalize_email(email, smtputf8=True)
    return session.exec(select(Subscriber).where(Subscriber.email == address)).first()


def current_subscriber_id(session: Session, subscriber_id: int) -> int | None:
    """The id that now stands for `subscriber_id` (a signed link's): itself, the subscriber it
    was merged into (one mailbox, one subscriber), or None if neither exists."""
    if session.get(Subscriber, subscriber_id) is not None:
        return subscriber_id
    return session.exec(
        select(SubscriberAlias.subscriber_id).where(SubscriberAlias.old_id == subscriber_id)
    ).first()


def subscriptions_of(session: Session, subscriber_id: int) -> dict[str, Subscription]:
    rows = session.exec(select(Subscription).where(Subscription.subscriber_id == subscriber_id))
    return {row.newsletter: row for row in rows}


def add_subscriber(
    session: Session,
    email: str,
    newsletter: str,
    *,
    now: datetime,
    name: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
    source: str = "cli",
    double_opt_in: bool = False,
    forget_keys: Sequence[bytes] | None = None,
) -> AddResult:
    """Subscribe `email` to `newsletter` unless they left it or are suppressed (a forgotten
    address too: recognised by its hash under `forget_keys`, else the session's keys).

    Raises InvalidAddress or InvalidField for bad input. An existing subscriber's profile is not
    changed (a public form must not let anyone rename someone else).
    """
    address = normalize_email(email)
    profile = {
        "name": clean_name(name),
        "locale": clean_locale(locale),
        "timezone": clean_timezone(timezone),
    }
    suppressed = suppression_reason(session, address)
    if suppressed is None and is_forgotten(session, address, forget_keys):
        suppressed = SuppressionReason.FORGOTTEN
    if suppressed is not None:
        existing = session.exec(select(Subscriber.id).where(Subscriber.email == address)).first()
        return AddResult(AddOutcome.SKIPPED, existing, None, skip_reason(None, None, suppressed))
    subscriber_id = ensure_subscriber(session, address, now=now, **profile)
    current = session.exec(
        select(Subscription).where(
            Subscription.subscriber_id == subscriber_id, Subscription.newsletter == newsletter
        )
    ).first()
    if current is not None:
        reason = skip_reason(current.status, current.unsubscribed_at, None)
        outcome = AddOutcome.SKIPPED if reason else AddOutcome.EXISTING
        return AddResult(outcome, subscriber_id, current.status, reason)
    status = SubscriptionStatus.PENDING if double_opt_in else SubscriptionStatus.ACTIVE
    row = subscription_row(subscriber_id, newsletter, status, source=source, now=now)
    if not insert_missing(session, Subscription, [row], conflict=SUBSCRIPTION_KEY):
        return AddResult(AddOutcome.EXISTING, subscriber_id, None)  # lost a race: it exists now
    consent.record(
        session,
        email=address,
        subscriber_id=subscriber_id,
        newsletter=newsletter,
        action=ConsentAction.SUBSCRIBE,
        method=source,
        detail="awaiting confirmation" if double_opt_in else None,
        at=now,
    )
    return AddResult(AddOutcome.CREATED, subscriber_id, status)


def subscription_row(
    subscriber_id: int, newsletter: str, status: str, *, source: str, now: datetime
) -> dict[str, object]:
    return {
        "subscriber_id": subscriber_id,
        "newsletter": newsletter,
        "status": str(status),
        "source": source[:32],
        "created_at": now,
        "confirmed_at": now if status == SubscriptionStatus.ACTIVE else None,
        "unsubscribed_at": None,
    }


def ensure_subscriber(
    session: Session,
    address: str,
    *,
    now: datetime,
    name: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
) -> int:
    """The id of the subscriber with this normalised address, created if new."""
    row = {
        "email": address,
        "name": name,
        "locale": locale,
        "timezone": timezone,
        "created_at": now,
    }
    insert_missing(session, Subscriber, [row], conflict=["email"])
    subscriber_id = session.exec(select(Subscriber.id).where(Subscriber.email == address)).one()
    assert subscriber_id is not None  # a stored row always has its id
    return subscriber_id


def unsubscribe(
    session: Session,
    subscriber_id: int,
    newsletter: str,
    *,
    now: datetime,
    method: str,
    ip: str | None = None,
    user_agent: str | None = None,
    issue_id: int | None = None,
) -> bool:
    """Leave one newsletter; idempotent, True if it changed something.

    With no subscription row yet, an "unsubscribed" one is written, so a later import or form
    cannot subscribe them behind their back.
    """
    email = session.exec(select(Subscriber.email).where(Subscriber.id == subscriber_id)).first()
    if email is None:
        return False
    ended = end_subscriptions(
        session, subscriber_id, SubscriptionStatus.UNSUBSCRIBED, now=now, newsletter=newsletter
    )
    if not ended:
        row = subscription_row(
            subscriber_id, newsletter, SubscriptionStatus.UNSUBSCRIBED, source=method, now=now
        )
        row["unsubscribed_at"] = now
        if not insert_missing(session, Subscription, [row], conflict=SUBSCRIPTION_KEY):
            return False
    consent.record(
        session,
        email=email,
        subscriber_id=subscriber_id,
        newsletter=newsletter,
        action=ConsentAction.UNSUBSCRIBE,
        method=method,
        ip=ip,
        user_agent=user_agent,
        issue_id=issue_id,
        at=now,
    )
    return True


def unsubscribe_all(
    session: Session,
    subscriber_id: int,
    *,
    now: datetime,
    method: str,
    ip: str | None = None,
    user_agent: str | None = None,
    issue_id: int | None = None,
) -> bool:
    """Leave every newsletter and suppress the address; idempotent, True if it changed something."""
    email = session.exec(select(Subscriber.email).where(Subscriber.id == subscriber_id)).first()
    if email is None:
        return False
    return suppress(
        session,
        email,
        SuppressionReason.UNSUBSCRIBED_ALL,
        now=now,
        source=method,
        issue_id=issue_id,
        ip=ip,
        user_agent=user_agent,
    )
