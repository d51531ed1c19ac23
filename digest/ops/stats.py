"""Per-newsletter and per-issue numbers: sent, delivered, opened, clicked, bounced, complained,
unsubscribed.

Delivery outcomes come from the delivery ledger (`Delivery.status`, `opened`, `clicked`, kept
current by the SendGrid webhook); complaints and unsubscribes from the consent log, credited to
the issue that prompted them when known (a webhook event names it; an unsubscribe link is
credited to the latest issue the person was sent, see `issue_to_credit`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from digest.storage.models import Delivery, DeliveryStatus, Issue
from subscribers.models import ConsentAction, ConsentEvent, Subscription

# Handed to a transport that took it, whatever happened after.
SENT_STATES = (
    DeliveryStatus.ACCEPTED,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.DROPPED,
    DeliveryStatus.DEFERRED,
)
_UNSUBSCRIBES = (ConsentAction.UNSUBSCRIBE, ConsentAction.UNSUBSCRIBE_ALL)
_RECENT_ISSUES = 10


@dataclass
class Counts:
    recipients: int = 0  # deliveries frozen into the audience
    sent: int = 0  # accepted by the transport
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0

    def add(self, other: Counts) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class IssueStats:
    issue_id: int
    period: str
    subject: str
    status: str
    sent_at: datetime | None
    counts: Counts = field(default_factory=Counts)


@dataclass
class NewsletterStats:
    newsletter: str
    subscribers: dict[str, int]  # subscription status → count
    totals: Counts
    issues: list[IssueStats]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def newsletter_stats(session: Session, newsletter: str, *, limit: int = 20) -> NewsletterStats:
    """Totals over every issue of `newsletter`, and the latest `limit` issues one by one."""
    issues = {
        issue.id: IssueStats(issue.id, issue.period, issue.subject, issue.status, issue.sent_at)
        for issue in session.exec(
            select(Issue).where(Issue.newsletter == newsletter).order_by(col(Issue.id).desc())
        )
        if issue.id is not None
    }
    totals = Counts()
    for issue_id, counts in _delivery_counts(session, newsletter).items():
        totals.add(counts)
        if issue_id in issues:
            issues[issue_id].counts = counts
    for credited, action, number in _consent_counts(session, newsletter):
        is_complaint = action == ConsentAction.COMPLAINT
        if is_complaint:
            totals.complained += number
        else:
            totals.unsubscribed += number
        if credited in issues:
            target = issues[credited].counts
            if is_complaint:
                target.complained += number
            else:
                target.unsubscribed += number
    subscribers = dict(
        session.exec(
            select(Subscription.status, func.count())
            .where(Subscription.newsletter == newsletter)
            .group_by(col(Subscription.status))
        ).all()
    )
    return NewsletterStats(newsletter, subscribers, totals, list(issues.values())[:limit])


def _delivery_counts(session: Session, newsletter: str) -> dict[int, Counts]:
    def count_if(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    status = col(Delivery.status)
    statement = (
        sa_select(  # sqlmodel's select is typed for up to four columns
            col(Delivery.issue_id),
            func.count(),
            count_if(status.in_(SENT_STATES)),
            count_if(status == DeliveryStatus.DELIVERED),
            count_if(col(Delivery.opened)),
            count_if(col(Delivery.clicked)),
            count_if(status == DeliveryStatus.BOUNCED),
        )
        .join(Issue, col(Issue.id) == col(Delivery.issue_id))
        .where(col(Issue.newsletter) == newsletter)
        .group_by(col(Delivery.issue_id))
    )
    return {
        row[0]: Counts(*(int(n) for n in row[1:]))
        for row in session.connection().execute(statement)
    }


def _consent_counts(session: Session, newsletter: str) -> list[tuple[int | None, str, int]]:
    statement = (
        select(ConsentEvent.issue_id, ConsentEvent.action, func.count())
        .where(
            ConsentEvent.newsletter == newsletter,
            col(ConsentEvent.action).in_([*_UNSUBSCRIBES, ConsentAction.COMPLAINT]),
        )
        .group_by(col(ConsentEvent.issue_id), col(ConsentEvent.action))
    )
    return [(issue_id, action, int(n)) for issue_id, action, n in session.exec(statement)]


def issue_to_credit(session: Session, subscriber_id: int, newsletter: str) -> int | None:
    """The latest issue of `newsletter` sent to this subscriber (among the last ten issues).

    Unsubscribe links carry no issue, so an unsubscribe is credited to the last issue the
    person received. Looking only at recent issues keeps it to probes of the
    (issue_id, subscriber_id) unique index.
    """
    recent = (
        select(Issue.id)
        .where(Issue.newsletter == newsletter)
        .order_by(col(Issue.id).desc())
        .limit(_RECENT_ISSUES)
        .scalar_subquery()
    )
    statement = (
        select(Delivery.issue_id)
        .where(
            Delivery.subscriber_id == subscriber_id,
            col(Delivery.issue_id).in_(recent),
            col(Delivery.status).in_(SENT_STATES),
        )
        .order_by(col(Delivery.issue_id).desc())
        .limit(1)
    )
    return session.exec(statement).first()
