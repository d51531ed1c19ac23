"""Storing what each source yielded: its articles and its health, one source or a batch at once.

`record` stores one source in the caller's transaction. `Writer` puts consecutive sources in
one transaction (committed when nothing else is ready to store, or after COMMIT_EVERY): a
commit per source was a fifth of the storing time on SQLite. If anything in a batch fails, the
batch is rolled back and its sources stored again one transaction each, as if never batched, so
one bad source still fails alone and the others are kept.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, update
from sqlmodel import Session, SQLModel

from digest.config import Settings
from digest.ingest.articles import ParsedFeed
from digest.ingest.fetch import FetchResult
from digest.ingest.upsert import Prepared, store_prepared
from digest.storage.models import Source

if TYPE_CHECKING:
    from digest.app import App

log = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 20
COMMIT_EVERY = 0.5  # seconds: at most this much stored work waits for its commit
SOURCE: Table = SQLModel.metadata.tables[Source.__tablename__]


@dataclass
class SourceReport:
    name: str
    fetched: int
    new: int
    updated: int
    unchanged: int
    errors: list[str]
    not_modified: bool = False
    warnings: list[str] = field(default_factory=list)  # read, but something was odd
    failed: bool = False  # nothing could be read this time (errors[0] says why)


@dataclass
class ReadSource:
    """A source's content parsed and prepared for storing (built in a worker process)."""

    feed: ParsedFeed
    items: list[Prepared]
    warnings: list[str]


def record(
    session: Session,
    result: FetchResult,
    read: ReadSource | None,
    settings: Settings,
    now: datetime,
) -> SourceReport:
    """Store what one source yielded and its health, in the caller's transaction.

    The source's row is updated by one Core UPDATE (the row exists: `sync_sources` made it):
    no ORM read, identity map and flush per source on the thread every source waits for.
    """
    health: dict[str, Any] = {"last_fetched_at": now, "last_http_status": result.status}
    report = SourceReport(result.name, 0, 0, 0, 0, [])
    fatal = result.error or (read.feed.fatal if read else None)
    if fatal:
        health.update(
            consecutive_failures=SOURCE.c.consecutive_failures + 1, last_error=fatal,
            last_error_at=now, etag=None, last_modified=None,  # next time, fetch it all again
        )  # fmt: skip
        _update_source(session, result.name, health)
        report.errors.append(fatal)
        report.failed = True
        return report
    health.update(consecutive_failures=0, last_success_at=now)
    if result.not_modified or read is None:
        report.not_modified = True
        _update_source(session, result.name, health)
        return report
    counts = store_prepared(
        session, result.name, read.items, now=now, dedupe_window=settings.ingest.dedupe_window
    )
    report.fetched = len(read.items)
    report.new, report.updated, report.unchanged = counts.new, counts.updated, counts.unchanged
    report.errors = _capped(read.feed.errors)
    report.warnings = read.warnings + counts.warnings
    notes = report.warnings + report.errors
    health.update(
        etag=result.etag, last_modified=result.last_modified, last_item_count=report.fetched,
        last_warning="; ".join(notes)[:2000] if notes else None,
    )  # fmt: skip
    if read.feed.title:
        health["title"] = read.feed.title
    _update_source(session, result.name, health)
    return report


def _update_source(session: Session, name: str, values: dict[str, Any]) -> None:
    statement = update(SOURCE).where(SOURCE.c.name == name).values(values)
    if session.connection().execute(statement).rowcount != 1:
        raise LookupError(f"no source row named {name!r}")


def _capped(errors: list[str]) -> list[str]:
    if len(errors) <= MAX_LISTED_ERRORS:
        return list(errors)
    return [*errors[:MAX_LISTED_ERRORS], f"… and {len(errors) - MAX_LISTED_ERRORS} more"]


def store_alone(
    app: App, result: FetchResult, read: ReadSource | None, now: datetime
) -> SourceReport:
    """One source in a transaction of its own; a storage failure is recorded on the source."""
    try:
        with app.session() as session:
            return record(session, result, read, app.settings, now)
    except Exception as exc:  # a storage failure of one source must not stop the others
        log.exception("storing source %s failed", result.name)
        failure = FetchResult(result.name, result.url, error=f"could not store: {exc}")
        with app.session() as session:
            return record(session, failure, None, app.settings, now)


class Writer:
    """Sources stored in order, several per transaction; `add` and `flush` return the reports
    of what they committed (a report is only given once its source is committed)."""

    def __init__(self, app: App, now: datetime, *, commit_every: float = COMMIT_EVERY) -> None:
        self.app, self.now, self.commit_every = app, now, commit_every
        self._pending: list[tuple[FetchResult, ReadSource | None, SourceReport]] = []
        self._transaction: ExitStack | None = None
        self._session: Session | None = None
        self._opened = 0.0

    def add(self, result: FetchResult, read: ReadSource | None) -> list[SourceReport]:
        if self._session is None:
            self._transaction = ExitStack()
            self._session = self._transaction.enter_context(self.app.session())
            self._opened = time.monotonic()
        try:
            report = record(self._session, result, read, self.app.settings, self.now)
        except Exception:
            log.warning("storing source %s failed: storing its batch one by one", result.name)
            return self._one_by_one([*((r, d) for r, d, _ in self._pending), (result, read)])
        self._pending.append((result, read, report))
        if time.monotonic() - self._opened >= self.commit_every:
            return self.flush()
        return []

    def flush(self) -> list[SourceReport]:
        """Commit what is pending."""
        if self._transaction is None:
            return []
        pending, transaction = self._pending, self._transaction
        self._pending, self._transaction, self._session = [], None, None
        try:
            transaction.close()  # app.session() commits on a clean exit
        except Exception:
            log.warning("committing %d sources failed: storing them one by one", len(pending))
            return self._one_by_one([(r, d) for r, d, _ in pending])
        return [report for _, _, report in pending]

    def _one_by_one(self, items: list[tuple[FetchResult, ReadSource | None]]) -> list[SourceReport]:
        if self._transaction is not None:
            rollback = RuntimeError("rolled back")  # app.session() rolls back on an exception
            self._transaction.__exit__(RuntimeError, rollback, None)
        self._pending, self._transaction, self._session = [], None, None
        return [store_alone(self.app, result, read, self.now) for result, read in items]
