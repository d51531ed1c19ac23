"""SendGrid open and click events counted per issue, link and hour, a webhook batch at a time.

They count exactly as digest's own pixel and redirect do (`digest.storage.engagement`: one row
per (issue, kind, link, hour)), but a batch of a thousand events is first tallied in memory and
written as one upsert per bucket touched (a few per batch: events arrive in time order), and
click URLs are looked up in the issues' link tables with one query, not one per click.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from digest.storage.engagement import (
    NO_LINK,
    OTHER_LINK,
    EngagementCount,
    EngagementKind,
    IssueLink,
    hour_of,
)

_E = EngagementCount.__table__  # type: ignore[attr-defined]
_L = IssueLink.__table__  # type: ignore[attr-defined]


class Tally:
    """Opens and clicks of one webhook batch, written by `write`."""

    def __init__(self) -> None:
        self.opens: Counter[tuple[int, datetime]] = Counter()
        self.clicks: Counter[tuple[int, str, datetime]] = Counter()

    def open(self, issue_id: int, at: datetime) -> None:
        self.opens[(issue_id, hour_of(at))] += 1

    def click(self, issue_id: int, url: str | None, at: datetime) -> None:
        self.clicks[(issue_id, url or "", hour_of(at))] += 1

    def write(self, session: Session) -> None:
        buckets: Counter[tuple[int, str, int, datetime]] = Counter()
        for (issue_id, hour), n in self.opens.items():
            buckets[(issue_id, EngagementKind.OPEN, NO_LINK, hour)] += n
        positions = self._positions(session)
        for (issue_id, url, hour), n in self.clicks.items():
            link = positions.get((issue_id, url), OTHER_LINK)
            buckets[(issue_id, EngagementKind.CLICK, link, hour)] += n
        if not buckets:
            return
        rows = [
            {"e_issue": i, "e_kind": str(k), "e_link": link, "e_hour": h, "e_n": n}
            for (i, k, link, h), n in sorted(buckets.items())
        ]
        dialect = session.get_bind().dialect.name
        upsert = (postgresql if dialect == "postgresql" else sqlite).insert(_E)
        statement = upsert.values(
            issue_id=bindparam("e_issue"),
            kind=bindparam("e_kind"),
            link=bindparam("e_link"),
            hour=bindparam("e_hour", type_=_E.c.hour.type),
            count=bindparam("e_n"),
        ).on_conflict_do_update(
            index_elements=["issue_id", "kind", "link", "hour"],
            set_={"count": _E.c["count"] + bindparam("e_add", type_=_E.c["count"].type)},
        )
        session.execute(statement, [{**row, "e_add": row["e_n"]} for row in rows])

    def _positions(self, session: Session) -> dict[tuple[int, str], int]:
        """(issue, url) → its index in the issue's link table, for the clicked URLs."""
        issues = sorted({issue_id for issue_id, _, _ in self.clicks})
        urls = sorted({url for _, url, _ in self.clicks if url})
        if not issues or not urls:
            return {}
        found: dict[tuple[int, str], int] = {}
        for start in range(0, len(urls), 500):
            statement = select(_L.c.issue_id, _L.c.url, _L.c.position).where(
                _L.c.issue_id.in_(issues), _L.c.url.in_(urls[start : start + 500])
            )
            for issue_id, url, position in session.execute(statement):
                found.setdefault((int(issue_id), str(url)), int(position))
        return found
