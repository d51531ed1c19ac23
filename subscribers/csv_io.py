"""CSV import and export of subscribers.

Import maps columns by their header (email, name, newsletters, timezone, locale, with common
aliases), checks every row, reports each bad line with its number, field and reason, and imports
the rest. It is idempotent: existing subscriptions are left as they are, and an unsubscribed,
bounced, complained or suppressed address is never subscribed again (counted and listed as
skipped). Rows are handled in chunks with a few set-based queries per chunk, so 100,000 rows
take seconds, not minutes (`benchmarks/bench_import.py`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import bindparam, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from subscribers import consent
from subscribers.addresses import InvalidAddress, normalize_email
from subscribers.bulk import among, insert_missing, refresh_statistics
from subscribers.membership import SUBSCRIPTION_KEY, skip_reason, subscription_row
from subscribers.models import (
    ConsentAction,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
)
from subscribers.profile import (
    InvalidField,
    clean_locale,
    clean_name,
    clean_timezone,
    from_spreadsheet,
    spreadsheet_safe,
)

CHUNK_ROWS = 5000
ANALYZE_AFTER = 10_000  # new subscriptions that make the planner's statistics stale
COLUMNS = ("email", "name", "newsletters", "timezone", "locale")
_ALIASES = {
    "email": "email",
    "e_mail": "email",
    "email_address": "email",
    "mail": "email",
    "name": "name",
    "full_name": "name",
    "fullname": "name",
    "display_name": "name",
    "newsletters": "newsletters",
    "newsletter": "newsletters",
    "lists": "newsletters",
    "list": "newsletters",
    "timezone": "timezone",
    "time_zone": "timezone",
    "tz": "timezone",
    "locale": "locale",
    "language": "locale",
    "lang": "locale",
}
_LIST_SEPARATORS = re.compile(r"[;|,\s]+")
_PROFILE = ("name", "timezone", "locale")


@dataclass(frozen=True)
class LineError:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class SkippedLine:
    line: int
    email: str
    newsletter: str | None
    reason: str

    def __str__(self) -> str:
        where = f" ({self.newsletter})" if self.newsletter else ""
        return f"line {self.line}: {self.email}{where}: skipped, {self.reason}"


@dataclass
class ImportReport:
    file_name: str
    rows: int = 0  # data lines read
    subscribers_created: int = 0
    subscriptions_created: int = 0
    already_subscribed: int = 0
    profiles_updated: int = 0
    skipped: list[SkippedLine] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def added(self) -> int:
        """New subscribers this import created."""
        return self.subscribers_created

    def summary(self) -> str:
        return (
            f"{self.file_name}: {self.rows} rows; {self.subscriptions_created} subscriptions "
            f"created ({self.subscribers_created} new subscribers), {self.already_subscribed} "
            f"already subscribed, {self.profiles_updated} profiles updated, {len(self.skipped)} "
            f"skipped, {len(self.errors)} bad lines"
        )


@dataclass
class _Row:
    line: int
    email: str
    newsletters: list[str]
    profile: dict[str, str | None]


def import_csv(
    session: Session,
    file: TextIO,
    *,
    now: datetime,
    default_newsletter: str | None = None,
    known_newsletters: set[str] | None = None,
    source: str = "csv",
    file_name: str = "<csv>",
) -> ImportReport:
    """Import subscribers from a CSV file; see the module docstring for the rules."""
    report = ImportReport(file_name=file_name)
    reader = csv.reader(file)
    columns = _read_header(reader, report)
    if columns is None:
        return report
    check = _RowChecker(columns, default_newsletter, known_newsletters, report)
    chunk: list[_Row] = []
    for line, cells in _records(reader, report):
        report.rows += 1
        row = check(line, cells)
        if row is not None:
            chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            _import_chunk(session, chunk, report, now=now, source=source, file_name=file_name)
            chunk = []
    _import_chunk(session, chunk, report, now=now, source=source, file_name=file_name)
    if report.subscriptions_created >= ANALYZE_AFTER:
        refresh_statistics(session, [Subscriber, Subscription])
    return report


def _read_header(reader: Any, report: ImportReport) -> dict[str, int] | None:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        report.errors.append(LineError(1, "header", f"not valid CSV: {exc}"))
        return None
    if not header:
        report.errors.append(LineError(1, "header", "the file is empty (expected a header line)"))
        return None
    columns: dict[str, int] = {}
    for index, title in enumerate(header):
        key = re.sub(r"[\s-]+", "_", title.replace("\ufeff", "").strip().lower())
        target = _ALIASES.get(key)
        if target is None:
            report.ignored_columns.append(title.strip())
        elif target in columns:
            report.errors.append(LineError(1, "header", f"two columns mean {target!r}: {title!r}"))
            return None
        else:
            columns[target] = index
    if "email" not in columns:
        titles = ", ".join(repr(t) for t in header)
        report.errors.append(LineError(1, "email", f"no email column (header has {titles})"))
        return None
    return columns


def _records(reader: Any, report: ImportReport) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) for each record; unreadable records become errors."""
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report.rows += 1
            report.errors.append(LineError(start, "row", f"not valid CSV: {exc}"))
            continue
        if cells and any(cell.strip() for cell in cells):
            yield start, cells


class _RowChecker:
    """Turns one record into a _Row, or records why it cannot be imported."""

    def __init__(
        self,
        columns: dict[str, int],
        default_newsletter: str | None,
        known: set[str] | None,
        report: ImportReport,
    ) -> None:
        self.columns = columns
        self.width = len(columns) + len(report.ignored_columns)
        self.default = default_newsletter
        self.known = known
        self.report = report
        self._lists: dict[str, list[str]] = {}
        self._locales: dict[str, str | None] = {}

    def __call__(self, line: int, cells: list[str]) -> _Row | None:
        try:
            return self._check(line, cells)
        except InvalidField as exc:
            self.report.errors.append(LineError(line, exc.field, exc.reason))
            return None

    def _check(self, line: int, cells: list[str]) -> _Row:
        if len(cells) > self.width:
            raise InvalidField("row", f"{len(cells)} fields but the header has {self.width}")
        values = dict.fromkeys(COLUMNS, "")
        for name, index in self.columns.items():
            if index < len(cells):
                cell = cells[index].strip()
                values[name] = from_spreadsheet(cell) if cell[:1] == "'" else cell
        try:
            email = normalize_email(values["email"])
        except InvalidAddress as exc:
            reason = "missing" if not values["email"] else f"{values['email']!r}: {exc}"
            raise InvalidField("email", reason) from exc
        profile = {
            "name": clean_name(values["name"]),
            "timezone": clean_timezone(values["timezone"]),
            "locale": self._locale(values["locale"]),
        }
        return _Row(line, email, self._newsletters(values["newsletters"]), profile)

    def _locale(self, text: str) -> str | None:
        if text not in self._locales:
            self._locales[text] = clean_locale(text)
        return self._locales[text]

    def _newsletters(self, text: str) -> list[str]:
        """The row's newsletters (a file repeats a few combinations: each is checked once)."""
        if text not in self._lists:
            self._lists[text] = self._parse_newsletters(text)
        return self._lists[text]

    def _parse_newsletters(self, text: str) -> list[str]:
        slugs = list(dict.fromkeys(s for s in _LIST_SEPARATORS.split(text) if s))
        if not slugs and self.default:
            slugs = [self.default]
        if not slugs:
            raise InvalidField(
                "newsletters", "no newsletter (fill the newsletters column or pass one)"
            )
        unknown = [s for s in slugs if self.known is not None and s not in self.known]
        if unknown:
            known = ", ".join(sorted(self.known or ())) or "none configured"
            raise InvalidField("newsletters", f"unknown newsletter {unknown[0]!r} ({known})")
        return slugs


def _import_chunk(
    session: Session,
    rows: list[_Row],
    report: ImportReport,
    *,
    now: datetime,
    source: str,
    file_name: str,
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
    for row in rows:
        if row.email in suppressed:
            reason = skip_reason(None, None, suppressed[row.email]) or "suppressed"
            report.skipped.append(SkippedLine(row.line, row.email, None, reason))
    rows = [row for row in rows if row.email not in suppressed]
    ids = _subscriber_ids(session, rows, report, now=now)
    _subscribe(session, rows, ids, report, now=now, source=source, file_name=file_name)


def _subscriber_ids(
    session: Session, rows: list[_Row], report: ImportReport, *, now: datetime
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
    rows: list[_Row],
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
