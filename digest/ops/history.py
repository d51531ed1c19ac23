"""A newsletter's issues, newest first: what became of each period and what each issue did.

Joins the timeline's outcome (sent, skipped, missed with its reason, next) with the counts of
`digest stats` (read through the ledger's effective status). Used by `digest issue list` and
the studio's history page; it reads only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from digest.config import NewsletterConfig, Settings
from digest.issues.timeline import past
from digest.ops.stats import Counts, newsletter_stats


@dataclass(frozen=True)
class HistoryRow:
    issue_id: int
    period: str
    status: str
    outcome: str  # sent, sending, skipped, missed, next
    reason: str | None
    subject: str
    approved_by: str | None
    sent_at: datetime | None
    counts: Counts

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["sent_at"] = self.sent_at.isoformat() if self.sent_at else None
        return document


def issue_history(
    session: Session, settings: Settings, newsletter: NewsletterConfig, now: datetime, *,
    limit: int = 50,
) -> list[HistoryRow]:  # fmt: skip
    counts = {
        row.issue_id: row.counts
        for row in newsletter_stats(session, newsletter.slug, limit=limit).issues
    }
    return [
        HistoryRow(
            issue_id=entry.issue.id or 0,
            period=entry.issue.period,
            status=str(entry.issue.status),
            outcome=entry.outcome,
            reason=entry.reason,
            subject=entry.issue.subject,
            approved_by=entry.issue.approved_by,
            sent_at=entry.issue.sent_at,
            counts=counts.get(entry.issue.id or 0, Counts()),
        )
        for entry in past(session, settings, newsletter, now, limit=limit)
    ]
