"""What readers already received, so a personal issue never sends an article twice.

A delivery row is the record: a reader with a delivery of a topic issue received that issue's
articles, one with a delivery of a personal issue received its variant's articles. For one
personal issue, `History.load` keeps the few issues and variants sent within the newsletter's
`memory` that share an article with its candidates; `History.receipts` then reads one page of
readers' deliveries of those issues through the (issue, subscriber) unique index: a range probe
per issue, never a scan of past deliveries. Cleaning up old deliveries cleans this up too.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlmodel import Session

from digest.config import Settings
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueArticle,
    IssueStatus,
    IssueVariant,
    SendBatch,
)
from subscribers.models import Subscription, SubscriptionStatus

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_A = IssueArticle.__table__  # type: ignore[attr-defined]
_V = IssueVariant.__table__  # type: ignore[attr-defined]
_S = Subscription.__table__  # type: ignore[attr-defined]

Receipt = tuple[int, int]  # (issue id, variant id or 0)


@dataclass
class History:
    """Recent issues (and variants) sharing articles with one issue's candidates."""

    articles: dict[Receipt, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        session: Session,
        settings: Settings,
        issue_id: int,
        memory_start: datetime,
        candidate_ids: Collection[int],
    ) -> History:
        wanted = set(candidate_ids)
        history = cls()
        if not wanted:
            return history
        recent = session.execute(
            select(_I.c.id, _I.c.newsletter).where(
                _I.c.id != issue_id,
                _I.c.status.in_([IssueStatus.SENDING, IssueStatus.SENT]),
                _I.c.sending_at >= memory_start,
            )
        ).all()
        personal = {n.slug for n in settings.newsletters if n.personal}
        topic_issues = [i for i, slug in recent if slug not in personal]
        personal_issues = [i for i, slug in recent if slug in personal]
        if topic_issues:
            rows = session.execute(
                select(_A.c.issue_id, _A.c.article_id).where(
                    _A.c.issue_id.in_(topic_issues), _A.c.excluded.is_(False)
                )
            )
            found: dict[int, set[int]] = {}
            for issue, article in rows:
                if article in wanted:
                    found.setdefault(issue, set()).add(article)
            history.articles.update({(i, 0): frozenset(a) for i, a in found.items()})
        if personal_issues:
            rows = session.execute(
                select(_V.c.issue_id, _V.c.id, _V.c.sections).where(
                    _V.c.issue_id.in_(personal_issues)
                )
            )
            for issue, variant, sections in rows:
                shared = {int(a) for _, ids in sections for a in ids} & wanted
                if shared:
                    history.articles[(issue, variant)] = frozenset(shared)
        return history

    def __bool__(self) -> bool:
        return bool(self.articles)

    def receipts(self, session: Session, first: int, last: int) -> dict[int, frozenset[Receipt]]:
        """subscriber id → the relevant issues (and variants) they received, for the readers
        with ids in [first, last]. A skipped or failed delivery is not a receipt; one still
        pending or unknown is (it may reach them: repeating is the worse mistake)."""
        if not self.articles:
            return {}
        issues = sorted({issue for issue, _ in self.articles})
        rows = session.execute(
            select(_D.c.subscriber_id, _D.c.issue_id, _D.c.variant_id)
            .select_from(_D.outerjoin(_B, _B.c.id == _D.c.batch_id))
            .where(
                _D.c.issue_id.in_(issues),
                _D.c.subscriber_id >= first,
                _D.c.subscriber_id <= last,
                _D.c.status.not_in([DeliveryStatus.SKIPPED, DeliveryStatus.FAILED]),
                or_(_B.c.id.is_(None), and_(_B.c.status != BatchStatus.FAILED)),
            )
        )
        out: dict[int, set[Receipt]] = {}
        for subscriber, issue, variant in rows:
            receipt = (int(issue), int(variant or 0))
            if receipt in self.articles:
                out.setdefault(int(subscriber), set()).add(receipt)
        return {s: frozenset(r) for s, r in out.items()}

    def received(self, receipts: Collection[Receipt]) -> frozenset[int]:
        """The candidate articles these receipts delivered."""
        if not receipts:
            return frozenset()
        return frozenset().union(*(self.articles[r] for r in receipts))


def topic_masks(topics: Sequence[str], after: int, last: int) -> Any:
    """A subquery (subscriber_id, mask): for the subscribers with ids in (after, last], the
    topics of `topics` they actively follow as a bit mask (bit i: `topics[i]`), folded by the
    database from one range of the (newsletter, status, subscriber) index per topic."""
    ordered = list(topics)
    bits = case({t: 1 << i for i, t in enumerate(ordered)}, value=_S.c.newsletter, else_=0)
    return (
        select(_S.c.subscriber_id, func.sum(bits).label("mask"))
        .where(
            _S.c.newsletter.in_(ordered),
            _S.c.status == SubscriptionStatus.ACTIVE,
            _S.c.subscriber_id > after,
            _S.c.subscriber_id <= last,
        )
        .group_by(_S.c.subscriber_id)
        .subquery("masks")
    )


def followed_topics(
    session: Session, topics: Sequence[str], first: int, last: int
) -> dict[int, frozenset[str]]:
    """subscriber id → the topics of `topics` they actively follow, for ids in [first, last]
    (`topic_masks`: a row per reader instead of one per subscription)."""
    ordered = list(topics)
    masks = topic_masks(ordered, first - 1, last)
    sets: dict[int, frozenset[str]] = {}
    out: dict[int, frozenset[str]] = {}
    for subscriber, mask in session.execute(select(masks.c.subscriber_id, masks.c.mask)):
        found = sets.get(mask)
        if found is None:
            found = sets[mask] = frozenset(t for i, t in enumerate(ordered) if mask >> i & 1)
        out[subscriber] = found
    return out
