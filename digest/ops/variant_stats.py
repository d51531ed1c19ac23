"""Personal newsletters' per-issue figures: how many variants, how many readers each, who was
skipped and why (`digest stats`, the studio's stats page)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlmodel import Session

from digest.storage.models import Delivery, DeliveryStatus, IssueVariant

_D = Delivery.__table__  # type: ignore[attr-defined]
_V = IssueVariant.__table__  # type: ignore[attr-defined]
LARGEST_SHOWN = 5


@dataclass
class VariantSummary:
    variant_id: int
    readers: int
    topics: list[str]
    articles: int


@dataclass
class VariantStats:
    variants: int = 0
    readers_largest: int = 0  # readers of the largest variant
    readers_median: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)  # reason → readers frozen skipped
    largest: list[VariantSummary] = field(default_factory=list)


def variant_stats(session: Session, issue_id: int) -> VariantStats | None:
    """The issue's variants and skipped readers; None for an issue without any (a topic issue,
    or a personal one not sent yet). Reads the variants' reader counts kept at the freeze and
    the issue's skipped deliveries, not every delivery."""
    rows = session.execute(
        select(_V.c.id, _V.c.readers, _V.c.topics, _V.c.articles)
        .where(_V.c.issue_id == issue_id)
        .order_by(_V.c.readers.desc(), _V.c.id)
    ).all()
    skipped = {
        str(reason or "skipped"): int(n)
        for reason, n in session.execute(
            select(_D.c.error, func.count())
            .where(
                _D.c.issue_id == issue_id,
                _D.c.status == DeliveryStatus.SKIPPED,
                _D.c.variant_id.is_(None),
            )
            .group_by(_D.c.error)
        )
    }
    if not rows and not skipped:
        return None
    readers = [int(r[1]) for r in rows]
    return VariantStats(
        variants=len(rows),
        readers_largest=max(readers, default=0),
        readers_median=float(statistics.median(readers)) if readers else 0.0,
        skipped=skipped,
        largest=[
            VariantSummary(int(v), int(n), list(topics), int(articles))
            for v, n, topics, articles in rows[:LARGEST_SHOWN]
        ],
    )
