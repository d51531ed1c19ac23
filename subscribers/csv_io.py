"""CSV import of subscribers (export is in `csv_export`, line checks in `csv_lines`).

Import maps columns by their header (email, name, newsletters, timezone, locale, with common
aliases), checks every row, reports each bad line with its number, field and reason, and imports
the rest. It is idempotent: existing subscriptions are left as they are, and an unsubscribed,
bounced, complained or suppressed address is never subscribed again (counted and listed as
skipped; so is a forgotten one, recognised by its keyed hash). Rows are handled in chunks with
a few set-based queries per chunk, so 100,000 rows take seconds, not minutes
(`benchmarks/bench_import.py`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import bindparam, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from subscribers import consent
from subscribers.bulk import among, insert_missing, refresh_statistics
from subscribers.csv_export import export_csv
from subscribers.csv_lines import (
    ImportReport,
    LineError,
    Row,
    RowChecker,
    SkippedLine,
    read_header,
    records,
)
from subscribers.membership import SUBSCRIPTION_KEY, skip_reason, subscription_row
from subscribers.models import (
    ConsentAction,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from subscribers.suppression import forgotten_among

__all__ = [
    "ANALYZE_AFTER",
    "CHUNK_ROWS",
    "ImportReport",
    "LineError",
    "SkippedLine",
    "export_csv",
    "import_csv",
]

CHUNK_ROWS = 5000
ANALYZE_AFTER = 10_000  # new subscriptions that make the planner's statistics stale
_PROFILE = ("name", "timezone", "locale")


def import_csv(
    session: Session,
    file: TextIO,
    *,
    now: datetime,
    default_newsletter: str | None = None,
    known_newsletters: set[str] | None = None,
    source: str = "csv",
    file_name: str = "<csv>",
    forget_keys: Sequence[bytes] | None = None,
) -> ImportReport:
    """Import subscribers from a CSV file; see the module docstring for the rules.

    `forget_keys` recognise forgotten addresses (default: the session's, see `suppression`).
    """
    report = ImportReport(file_name=file_name)
    reader = csv.reader(file)
    columns = read_header(reader, report)
    if columns is None:
        return report
    check = RowChecker(columns, default_newsletter, known_newsletters, report)
    chunk: list[Row] = []
    for line, cells in records(reader, report):
        report.rows += 1
        row = check(line, cells)
        if row is not None:
            chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            _import_chunk(
                session,
                chunk,
                report,
                now=now,
                source=source,
                file_name=file_name,
                keys=forget_keys,
            )
            chunk = []
    _import_chunk(
        session, chunk, report, now=now, source=source, file_name=file_name, keys=forget_keys
    )
    if report.subscriptions_created >= ANALYZE_AFTER:
        refresh_statistics(session, [Subscriber, Subscription])
    return report


def _import_chunk(
    session: Session,
    rows: list[Row],
    report: ImportReport,
    *,
    now: datetime,
    source: str,
    file_name: str,
    keys: Sequence[bytes] | None,
) -> None:
    if not rows:
        return
    connection = session.connection()
    addresses = list({row.email for row in rows})
    suppressed = dict(
        connection.execute(
            select(Suppression.email, Suppression.reason).where(
                among(col(Suppression.email), addresses, connection.dialect)
            )
        ).all()
    )
    forgotten = forgotten_among(session, [a for a in addresses if a not in suppressed], keys)
    suppressed.update(dict.fromkeys(forgotten, SuppressionReason.FORGOTTEN))
    for row in rows:
        if row.email in suppressed:
            reason = skip_reason(None, None, suppressed[row.email]) or "suppressed"
            report.skipped.append(SkippedLine(row.line, row.email, None, reason))
    rows = [row for row in rows if row.email not in suppressed]
    ids = _subscriber_ids(session, rows, report, now=now)
    _subscribe(session, rows, ids, report, now=now, source=source, file_name=file_name)


def _subscriber_ids(
    session: Session, rows: list[Row], report: ImportReport, *, now: datetime
) -> dict[str, int]:
    """Ids for every address in `rows`: existing ones updated, new ones created."""
    connection = session.connection()
    latest: dict[str, dict[str, str | None]] = {}
    for row in rows:  # a later line for the same address wins, as when imported one by one
        latest.setdefault(row.email, {}).update({k: v for k, v in row.profile.items() if v})
    found = connection.execute(
        sa_select(
            col(Subscriber.id),
            col(Subscriber.email),
            col(Subscriber.name),
            col(Subscriber.timezone),
            col(Subscriber.locale),
        ).where(among(col(Subscriber.email), list(latest), connection.dialect))
    ).all()
    ids: dict[str, int] = {email: sid for sid, email, *_ in found if sid is not None}
    updates = []
    for sid, email, *current in found:
        merged = dict(zip(_PROFILE, current, strict=True)) | latest[email]
        if [merged[k] for k in _PROFILE] != current:
            updates.append({"b_id": sid, **{f"b_{k}": merged[k] for k in _PROFILE}})
    if updates:
        statement = (
            update(Subscriber)
            .where(col(Subscriber.id) == bindparam("b_id"))
            .values({k: bindparam(f"b_{k}") for k in _PROFILE})
        )
        connection.execute(statement, updates)
        report.profiles_updated += len(updates)
    new = [
        {"email": email, "created_at": now, **{k: profile.get(k) for k in _PROFILE}}
        for email, profile in latest.items()
        if email not in ids
    ]
    if new:
        report.subscribers_created += insert_missing(session, Subscriber, new, conflict=["email"])
        created = connection.execute(
            select(Subscriber.email, Subscriber.id).where(
                among(col(Subscriber.email), [r["email"] for r in new], connection.dialect)
            )
        )
        ids.update((email, sid) for email, sid in created if sid is not None)
    return ids


def _subscribe(
    session: Session,
    rows: list[Row],
    ids: dict[str, int],
    report: ImportReport,
    *,
    now: datetime,
    source: str,
    file_name: str,
) -> None:
    connection = session.connection()
    existing = {
        (sid, newsletter): (status, unsubscribed_at)
        for sid, newsletter, status, unsubscribed_at in connection.execute(
            select(
                Subscription.subscriber_id,
                Subscription.newsletter,
                Subscription.status,
                Subscription.unsubscribed_at,
            ).where(
                among(col(Subscription.subscriber_id), list(set(ids.values())), connection.dialect)
            )
        )
    }
    new_rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    # Every event of the chunk shares these fields (consent_row cuts them to size once).
    event = consent.consent_row(
        email="", action=ConsentAction.SUBSCRIBE, method=source, detail=file_name[:480], at=now
    )
    for row in rows:
        sid = ids[row.email]
        for newsletter in row.newsletters:
            key = (sid, newsletter)
            if key in existing:
                status, unsubscribed_at = existing[key]
                reason = skip_reason(status, unsubscribed_at, None)
                if reason:
                    report.skipped.append(SkippedLine(row.line, row.email, newsletter, reason))
                else:
                    report.already_subscribed += 1
                continue
            existing[key] = (SubscriptionStatus.ACTIVE, None)
            new_rows.append(
                subscription_row(sid, newsletter, SubscriptionStatus.ACTIVE, source=source, now=now)
            )
            events.append(
                {
                    **event,
                    "email": row.email,
                    "subscriber_id": sid,
                    "newsletter": newsletter,
                    "detail": f"{event['detail']}:{row.line}",
                }
            )
    if new_rows:
        insert_missing(session, Subscription, new_rows, conflict=SUBSCRIPTION_KEY)
        consent.record_many(session, events)
        report.subscriptions_created += len(new_rows)
