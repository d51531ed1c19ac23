"""Per-newsletter and per-issue numbers: sent, delivered, opened, clicked, bounced, complained,
unsubscribed.

Delivery outcomes come from the delivery ledger, read through its effective status
(`digest.sending.counts`: a pending row in an accepted batch was sent), plus `opened` and
`clicked` kept current by the SendGrid webhook: kept per issue by the database as they change
(`digest.sending.snapshot`), so stats scan no delivery, even of an issue still sending;
complaints and unsubscribes from the consent log, credited to the issue that prompted them
when known (a webhook event names it; an unsubscribe link is credited to the latest issue the
person was sent, see `digest.sending.counts.issue_to_credit`).

Engagement of the newsletters that opt in (`track_clicks`, `track_opens`) is counted per issue,
per link and per hour, naming no one (`digest.storage.engagement`): `opens` (pixel loads, or
SendGrid open events) and `clicks` per issue, its `top_links` and a `timeline` of the first 48
hours after the send started. `opened` / `clicked` in `counts` stay what SendGrid's events
flagged per delivery. Apple Mail's Privacy Protection loads every image when a message
arrives, so opens are inflated: `OPENS_NOTE` says so wherever opens are shown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from digest.ops.variant_stats import VariantStats, variant_stats
from digest.sending import snapshot
from digest.sending.counts import ACCEPTED_STATES
from digest.storage.engagement import engagement
from digest.storage.models import DeliveryStatus, Issue
from subscribers.models import ConsentAction, ConsentEvent, Subscription

_UNSUBSCRIBES = (ConsentAction.UNSUBSCRIBE, ConsentAction.UNSUBSCRIBE_ALL)
OPENS_NOTE = (
    "Opens are inflated: Apple Mail's Privacy Protection loads every image (the open pixel "
    "too) when a message arrives, read or not; clicks are the firmer signal."
)
TIMELINE_HOURS = 48


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
    # Opt-in engagement (no per-reader record): totals, the most clicked links, and per hour
    # since the send started {"hour": 0…47, "opens": n, "clicks": n}.
    opens: int = 0
    clicks: int = 0
    top_links: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, int]] = field(default_factory=list)
    started_at: datetime | None = None
    # Personal newsletters: the issue's variants and skipped readers (`variant_stats`).
    variants: VariantStats | None = None


@dataclass
class NewsletterStats:
    newsletter: str
    subscribers: dict[str, int]  # subscription status → count
    totals: Counts
    issues: list[IssueStats]
    opens_note: str = OPENS_NOTE

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def newsletter_stats(
    session: Session, newsletter: str, *, limit: int = 20, only: int | None = None
) -> NewsletterStats:
    """Totals over every issue of `newsletter`, and the latest `limit` issues one by one (or
    issue `only`)."""
    issues = {
        issue.id: IssueStats(
            issue.id,
            issue.period,
            issue.subject,
            issue.status,
            issue.sent_at,
            started_at=issue.sending_at or issue.sent_at,
        )
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
    shown = [issues[only]] if only in issues else list(issues.values())[:limit]
    for stats in shown:
        add_engagement(session, stats)
        stats.variants = variant_stats(session, stats.issue_id)
    return NewsletterStats(newsletter, subscribers, totals, shown)


def add_engagement(session: Session, stats: IssueStats) -> None:
    """Fill the issue's opens, clicks, top links and 48-hour timeline."""
    found = engagement(
        session,
        stats.issue_id,
        start=stats.started_at,
        hours=TIMELINE_HOURS if stats.started_at else 0,
    )
    stats.opens, stats.clicks = found.opens, found.clicks
    stats.top_links = [asdict(link) for link in found.top_links]
    stats.timeline = found.timeline


def issue_stats(session: Session, newsletter: str, issue_id: int) -> IssueStats | None:
    """One issue's figures, exactly as `newsletter_stats` reports them (None: not of this
    newsletter)."""
    return (
        newsletter_stats(session, newsletter, only=issue_id).issues[0]
        if _of(session, newsletter, issue_id)
        else None
    )


def _of(session: Session, newsletter: str, issue_id: int) -> bool:
    issue = session.get(Issue, issue_id)
    return issue is not None and issue.newsletter == newsletter


def _delivery_counts(session: Session, newsletter: str) -> dict[int, Counts]:
    """Per issue: recipients and `sent` from the effective status, provider events, opened and
    clicked: the kept counts (`digest.sending.snapshot`), sending or sent."""
    ids = session.exec(
        select(Issue.id).where(
            Issue.newsletter == newsletter,
            col(Issue.status).in_([str(s) for s in snapshot.WITH_DELIVERIES]),
        )
    ).all()
    counts: dict[int, Counts] = {}
    for issue, found in snapshot.many(session, [i for i in ids if i is not None]).items():
        target = counts.setdefault(issue, Counts())
        for state, n in snapshot.states_only(found).items():
            target.recipients += n
            if state in ACCEPTED_STATES:
                target.sent += n
        target.delivered = found.get(DeliveryStatus.DELIVERED, 0)
        target.bounced = found.get(DeliveryStatus.BOUNCED, 0)
        target.opened = found.get(snapshot.OPENED, 0)
        target.clicked = found.get(snapshot.CLICKED, 0)
    return counts


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
