"""CSV export of mailable subscribers, in the columns `import_csv` reads back.

Separate from import because it shares only the column list: it streams one query and writes,
with none of import's checking, chunking or consent bookkeeping.
"""

from __future__ import annotations

import csv
from typing import Any, TextIO

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from subscribers.csv_lines import COLUMNS
from subscribers.models import Subscriber, Subscription, SubscriptionStatus, Suppression
from subscribers.profile import spreadsheet_safe


def export_csv(session: Session, out: TextIO, *, newsletter: str | None = None) -> int:
    """Write mailable subscribers (active, not suppressed) as CSV that imports back unchanged.

    One row per subscriber, their active newsletters joined by ';'. Returns the rows written.
    """
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    statement = (
        sa_select(
            col(Subscriber.id),
            col(Subscriber.email),
            col(Subscriber.name),
            col(Subscriber.timezone),
            col(Subscriber.locale),
            col(Subscription.newsletter),
        )
        .join(Subscription, col(Subscription.subscriber_id) == col(Subscriber.id))
        .where(
            col(Subscription.status) == SubscriptionStatus.ACTIVE,
            ~select(Suppression.id).where(col(Suppression.email) == col(Subscriber.email)).exists(),
        )
        .order_by(col(Subscriber.id), col(Subscription.newsletter))
    )
    if newsletter is not None:
        statement = statement.where(col(Subscription.newsletter) == newsletter)
    written = 0
    current: list[Any] | None = None
    result = session.connection().execution_options(yield_per=2000).execute(statement)
    for sid, email, name, timezone, locale, slug in result:
        if current is not None and current[0] == sid:
            current[-1].append(slug)
            continue
        if current is not None:
            written += _write_subscriber(writer, current)
        current = [sid, email, name, timezone, locale, [slug]]
    if current is not None:
        written += _write_subscriber(writer, current)
    return written


def _write_subscriber(writer: Any, record: list[Any]) -> int:
    _, email, name, timezone, locale, slugs = record
    writer.writerow(
        [
            spreadsheet_safe(email),
            spreadsheet_safe(name),
            ";".join(slugs),
            timezone or "",
            locale or "",
        ]
    )
    return 1
