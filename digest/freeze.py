"""Freezing an issue's audience into deliveries and batches, once, before anything is sent.

The issue moves to `sending` by compare-and-set in the same transaction that copies its
audience, so the audience is frozen exactly once, completely or not at all; a second sender
blocked on that row finds the issue already `sending` and goes straight to claiming batches.
The copy runs in keyset pages of INSERT … SELECT, so no recipient passes through Python (and
memory stays flat whatever the audience).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import bindparam, case, delete, func, insert, literal, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from digest.models import BatchStatus, Delivery, DeliveryStatus, Issue, IssueStatus, SendBatch
from subscribers.audience import audience_statement

FREEZE_PAGE = 20_000  # audience rows copied per INSERT … SELECT while freezing
MAX_BATCHES_PER_PAGE = 40  # batches created ahead of each page (a CASE branch each)
_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]


def freeze(
    session: Session,
    *,
    issue_id: int,
    newsletter: str,
    from_statuses: Sequence[str],
    batch_size: int,
    now: datetime,
    page_size: int = FREEZE_PAGE,
) -> int | None:
    """Move the issue to `sending` and write its audience as pending deliveries and batches.

    Returns the number of deliveries, or None when the issue was not in `from_statuses` (someone
    else froze it first, or it is not sendable). All in the caller's transaction.
    """
    moved = session.execute(
        update(_I)
        .where(_I.c.id == issue_id, _I.c.status.in_(list(from_statuses)))
        .values(status=IssueStatus.SENDING, sending_at=now, updated_at=now)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None
    per_page = batch_size * min(max(1, page_size // batch_size), MAX_BATCHES_PER_PAGE)
    total = 0
    after = 0
    while True:
        rows, last = _freeze_page(session, issue_id, newsletter, after, per_page, batch_size, now)
        total += rows
        if rows < per_page:
            return total
        after = last


def _freeze_page(
    session: Session,
    issue_id: int,
    newsletter: str,
    after: int,
    page_size: int,
    batch_size: int,
    now: datetime,
) -> tuple[int, int]:
    """One keyset page of the audience, copied by INSERT … SELECT (no row passes through
    Python: 3-4x faster than reading pages out and writing them back); returns (rows, last id).

    The page's batches are created first, empty; row_number() places each recipient in one of
    them, and their sizes are filled in (or the unused ones deleted) afterwards.
    """
    ids = insert_batches(session, issue_id, [0] * (page_size // batch_size), now)
    page = audience_statement(newsletter, after_id=after, limit=page_size).subquery("audience")
    slot = (func.row_number().over(order_by=page.c.subscriber_id) - 1) // batch_size
    rows = select(
        literal(issue_id),
        page.c.subscriber_id,
        page.c.email,
        page.c.name,
        literal(str(DeliveryStatus.PENDING)),
        case(dict(enumerate(ids)), value=slot),
        literal(False),
        literal(False),
        literal(now, type_=_D.c.updated_at.type),
    ).where(true())  # SQLite needs a WHERE to parse INSERT … SELECT … ON CONFLICT
    columns = ["issue_id", "subscriber_id", "email", "name", "status", "batch_id", "opened",
               "clicked", "updated_at"]  # fmt: skip
    dialect = sqlite if session.get_bind().dialect.name == "sqlite" else postgresql
    session.execute(
        dialect.insert(_D)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=["issue_id", "subscriber_id"])
    )
    sizes = {
        batch_id: (int(count), int(last))
        for batch_id, count, last in session.execute(
            # The page is the range after `after` in the (issue, subscriber) index: filtering on
            # batch_id instead let SQLite walk every earlier delivery of the issue, per page.
            select(_D.c.batch_id, func.count(), func.max(_D.c.subscriber_id))
            .where(_D.c.issue_id == issue_id, _D.c.subscriber_id > after)
            .group_by(_D.c.batch_id)
        )
    }
    used = [{"batch": b, "batch_size": sizes[b][0]} for b in ids if b in sizes]
    if used:
        session.execute(
            update(_B).where(_B.c.id == bindparam("batch")).values(size=bindparam("batch_size")),
            used,
        )
    unused = [b for b in ids if b not in sizes]
    if unused:
        session.execute(delete(_B).where(_B.c.id.in_(unused)))
    rows_in_page = sum(count for count, _ in sizes.values())
    last_id = max((last for _, last in sizes.values()), default=after)
    return rows_in_page, last_id


def checkpoint(session: Session) -> None:
    """SQLite: fold the freeze's write-ahead log into the database before the senders start,
    so that their reads do not search a log of a million rows (a no-op on PostgreSQL)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def insert_batches(session: Session, issue_id: int, sizes: list[int], now: datetime) -> list[int]:
    statement = insert(_B).returning(_B.c.id, sort_by_parameter_order=True)
    params = [
        {"issue_id": issue_id, "status": BatchStatus.PENDING, "size": size, "attempts": 0,
         "updated_at": now}
        for size in sizes
    ]  # fmt: skip
    return [row[0] for row in session.execute(statement, params)]
