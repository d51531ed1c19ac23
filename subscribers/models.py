"""Subscriber storage: who they are, what they follow, and what they told us."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from subscribers.timestamps import UTCDateTime, utcnow


class SubscriptionStatus(StrEnum):
    PENDING = "pending"  # double opt-in: waiting for the confirmation click
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class SuppressionReason(StrEnum):
    UNSUBSCRIBED_ALL = "unsubscribed_all"
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    MANUAL = "manual"
    # `digest subscribers forget`: the row keeps only a keyed hash of the address (`email_hash`).
    FORGOTTEN = "forgotten"


class ConsentAction(StrEnum):
    SUBSCRIBE = "subscribe"
    CONFIRM = "confirm"
    UNSUBSCRIBE = "unsubscribe"
    UNSUBSCRIBE_ALL = "unsubscribe_all"
    RESUBSCRIBE = "resubscribe"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    SUPPRESS = "suppress"
    DATA_EXPORT = "data_export"  # everything held about the address was handed out (GDPR art. 15)
    FORGET = "forget"  # the address was erased (art. 17); the event names only its keyed hash


def _ts(nullable: bool = True, index: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class Subscriber(SQLModel, table=True):
    __tablename__ = "subscriber"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)
    name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class SubscriberAlias(SQLModel, table=True):
    """A subscriber id merged into another: one mailbox, one subscriber (migration 0003 merged
    spellings like `Carol@…` and `carol@…`). Links signed for the old id, in emails already
    sent, still reach the person (`membership.current_subscriber_id`)."""

    __tablename__ = "subscriber_alias"

    old_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    subscriber_id: int = Field(foreign_key="subscriber.id", ondelete="CASCADE", index=True)
    merged_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "newsletter", name="uq_subscription_subscriber"),
        # The audience query walks one newsletter's active subscribers in id order.
        Index("ix_subscription_audience", "newsletter", "status", "subscriber_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id", ondelete="CASCADE")
    newsletter: str = Field(max_length=64)
    status: str = Field(default=SubscriptionStatus.ACTIVE, max_length=16)
    source: str = Field(default="cli", max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    confirmed_at: datetime | None = Field(default=None, sa_column=_ts())
    unsubscribed_at: datetime | None = Field(default=None, sa_column=_ts())


class Suppression(SQLModel, table=True):
    """An address that must never be mailed again, whatever list it is on.

    A forgotten address (`digest subscribers forget`) has no `email`, only `email_hash`: the
    HMAC-SHA256 of the normalised address under a key derived from the secret (hex), so it can
    be recognised when someone tries to add it again but not read back.
    """

    __tablename__ = "suppression"

    id: int | None = Field(default=None, primary_key=True)
    email: str | None = Field(default=None, max_length=320, unique=True, index=True)
    email_hash: str | None = Field(default=None, max_length=64, unique=True, index=True)
    reason: str = Field(max_length=32)
    source: str = Field(default="manual", max_length=32)
    detail: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class ConsentEvent(SQLModel, table=True):
    """Append-only audit trail of every consent change."""

    __tablename__ = "consent_event"
    # Stats count unsubscribes and complaints per newsletter and per issue.
    __table_args__ = (Index("ix_consent_event_newsletter", "newsletter", "action"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int | None = Field(default=None, index=True)
    # None once the address was forgotten (and in the `forget` event itself).
    email: str | None = Field(default=None, max_length=320)
    newsletter: str | None = Field(default=None, max_length=64)
    action: str = Field(max_length=24)
    method: str = Field(max_length=32, description="cli, csv, form, link, one-click, webhook, …")
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=500)
    detail: str | None = Field(default=None, max_length=500)
    # The issue that prompted it, when known (a webhook event, an unsubscribe link): for stats.
    issue_id: int | None = None
    at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))
