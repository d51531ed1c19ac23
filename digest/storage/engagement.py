"""Opt-in engagement counts: an issue's link table, and opens and clicks per issue, link and hour.

Nothing here names a reader (`tracking.per_reader = false`): a count row is (issue, kind, link,
hour) → how many. `IssueLink` is what the click redirect may lead to: only a URL stored for
that issue, by its index, so a tampered or invented link has nowhere to go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import UniqueConstraint, delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col, select

from digest.storage.models import _text, _ts

NO_LINK = -1  # the link column of an open
OTHER_LINK = -2  # a provider's click on a URL that is not in the table


class EngagementKind(StrEnum):
    OPEN = "open"
    CLICK = "click"


class IssueLink(SQLModel, table=True):
    """The `position`-th distinct link of an issue's HTML, as written."""

    __tablename__ = "issue_link"

    issue_id: int = Field(foreign_key="issue.id", primary_key=True)
    position: int = Field(primary_key=True)
    url: str = Field(sa_column=_text(nullable=False))


class EngagementCount(SQLModel, table=True):
    """How many opens or clicks (of one link) an issue had in one hour (UTC, start of hour)."""

    __tablename__ = "engagement_count"
    __table_args__ = (
        UniqueConstraint("issue_id", "kind", "link", "hour", name="uq_engagement_bucket"),
    )

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(foreign_key="issue.id", index=True)
    kind: str = Field(max_length=8)
    link: int = NO_LINK
    hour: datetime = Field(sa_column=_ts(nullable=False))
    count: int = 0


def store_links(session: Session, issue_id: int, urls: Sequence[str]) -> None:
    """Replace the issue's link table (an issue is re-rendered while it is a draft)."""
    session.exec(delete(IssueLink).where(col(IssueLink.issue_id) == issue_id))  # type: ignore[call-overload]
    for position, url in enumerate(urls):
        session.add(IssueLink(issue_id=issue_id, position=position, url=url))
    session.flush()


def link_url(session: Session, issue_id: int, position: int) -> str | None:
    row = session.get(IssueLink, (issue_id, position))
    return row.url if row is not None else None


def link_position(session: Session, issue_id: int, url: str) -> int:
    """The index of `url` in the issue's table, else OTHER_LINK."""
    found = session.exec(
        select(IssueLink.position).where(IssueLink.issue_id == issue_id, IssueLink.url == url)
    ).first()
    return OTHER_LINK if found is None else found


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def record(
    session: Session, issue_id: int, kind: EngagementKind, at: datetime, link: int = NO_LINK
) -> None:
    """One more open or click in its hour: one upsert, safe under concurrent requests."""
    values: dict[str, Any] = dict(
        issue_id=issue_id, kind=str(kind), link=link, hour=hour_of(at), count=1
    )
    table = EngagementCount.__table__  # type: ignore[attr-defined]
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        insert = (postgresql if dialect == "postgresql" else sqlite).insert(table).values(values)
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["issue_id", "kind", "link", "hour"],
                set_={"count": table.c["count"] + 1},
            )
        )
        return
    key = (
        (table.c.issue_id == issue_id)
        & (table.c.kind == str(kind))
        & (table.c.link == link)
        & (table.c.hour == values["hour"])
    )
    result = session.execute(update(table).where(key).values(count=table.c["count"] + 1))
    if not result.rowcount:  # type: ignore[attr-defined]
        session.execute(table.insert().values(values))


@dataclass
class TopLink:
    url: str
    clicks: int


@dataclass
class Engagement:
    """What `digest stats` and the studio show of one issue's engagement."""

    opens: int = 0
    clicks: int = 0
    top_links: list[TopLink] = field(default_factory=list)
    # One entry per hour since `start` (48 by default): hour offset, opens, clicks.
    timeline: list[dict[str, int]] = field(default_factory=list)


def engagement(
    session: Session,
    issue_id: int,
    *,
    start: datetime | None,
    hours: int = 48,
    top: int = 10,
) -> Engagement:
    result = Engagement()
    table = EngagementCount.__table__  # type: ignore[attr-defined]
    totals = session.execute(
        select(table.c.kind, func.sum(table.c["count"]))
        .where(table.c.issue_id == issue_id)
        .group_by(table.c.kind)
    )
    for kind, number in totals:
        if kind == EngagementKind.OPEN:
            result.opens = int(number or 0)
        elif kind == EngagementKind.CLICK:
            result.clicks = int(number or 0)
    links = IssueLink.__table__  # type: ignore[attr-defined]
    clicks = func.sum(table.c["count"]).label("clicks")
    per_link = session.execute(
        select(links.c.url, clicks)
        .select_from(
            table.join(
                links,
                (links.c.issue_id == table.c.issue_id) & (links.c.position == table.c.link),
            )
        )
        .where(table.c.issue_id == issue_id, table.c.kind == str(EngagementKind.CLICK))
        .group_by(links.c.url)
        .order_by(clicks.desc(), links.c.url)
        .limit(top)
    )
    result.top_links = [TopLink(url, int(n)) for url, n in per_link]
    if start is not None:
        first = hour_of(start)
        buckets = {h: {"hour": h, "opens": 0, "clicks": 0} for h in range(hours)}
        rows = session.execute(
            select(table.c.hour, table.c.kind, func.sum(table.c["count"]))
            .where(
                table.c.issue_id == issue_id,
                table.c.hour >= first,
                table.c.hour < first + timedelta(hours=hours),
            )
            .group_by(table.c.hour, table.c.kind)
        )
        for hour, kind, number in rows:
            offset = int((hour - first).total_seconds() // 3600)
            if offset in buckets:
                name = "opens" if kind == EngagementKind.OPEN else "clicks"
                buckets[offset][name] += int(number or 0)
        result.timeline = list(buckets.values())
    return result
