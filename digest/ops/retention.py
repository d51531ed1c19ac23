"""Retention: records that name a reader are not kept longer than they are needed.

A weekly newsletter to ten million readers adds half a billion delivery rows a year, each with
a copy of the address. With `retention.deliveries` set, the deliveries and batches of issues
sent longer ago than that are deleted; what the numbers need stays: the issue's counts are
stored first (`digest.sending.snapshot`, which `stats`, `status` and `/metrics` read for sent
issues), and engagement counts (per issue, link and hour) name no one and are kept. Provider
events are kept `retention.webhook_events` (they only stop a retried event counting twice);
expired studio sessions, sign-in links and form counters are deleted whatever the config says.
Consent events are never deleted: they are the legal record of consent (`consent_record`).

Deleting never holds a long lock: each chunk of `CHUNK` rows is its own transaction, a range of
one issue's (issue, subscriber) index, so sends, webhooks and forms write between chunks. Each
chunk first re-reads the issue under a share lock (PostgreSQL): an issue sent again
(`--retry-failed`) stops losing rows at once. Variants of personal issues stay (small); the
config refuses a retention shorter than a personal newsletter's `memory`, since what readers
received within it is read from deliveries (`digest.issues.received`).

`run_if_due` runs it at most once per `EVERY`, decided by a compare-and-set on the
`housekeeping` row of `scheduler_job`: the scheduler's hourly job and `digest run-due` call it,
and only the first caller of the day runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from digest.app import App
from digest.config import parse_duration
from digest.sending import snapshot
from digest.storage.access import EditorSession, SignInLink, Throttle
from digest.storage.models import (
    Delivery,
    Issue,
    IssueCount,
    IssueStatus,
    SchedulerJob,
    SendBatch,
    WebhookEvent,
)
from subscribers.models import ConsentEvent
from subscribers.rights import subscriber_ids
from subscribers.suppression import lookup_address

log = logging.getLogger("digest.retention")

CHUNK = 5000  # rows per transaction
EVERY = timedelta(days=1)
JOB = "housekeeping"
# The longest window a form counter counts in (`digest.web.limits`: per hour).
THROTTLE_WINDOW = timedelta(hours=1)

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_C = IssueCount.__table__  # type: ignore[attr-defined]
_W = WebhookEvent.__table__  # type: ignore[attr-defined]
_J = SchedulerJob.__table__  # type: ignore[attr-defined]
_ES = EditorSession.__table__  # type: ignore[attr-defined]
_SL = SignInLink.__table__  # type: ignore[attr-defined]
_T = Throttle.__table__  # type: ignore[attr-defined]

AfterChunk = Callable[[str, int], None]  # (table, rows deleted) after each committed chunk


@dataclass
class HousekeepingReport:
    """What one run removed (rows per table) and how: transactions committed, issues done."""

    now: datetime
    deliveries_before: datetime | None = None  # the cutoff; None: deliveries are kept forever
    webhook_events_before: datetime | None = None
    issues: list[int] = field(default_factory=list)  # issues whose deliveries were deleted
    counts_stored: list[int] = field(default_factory=list)  # of those, counts taken first
    deliveries: int = 0
    send_batches: int = 0
    webhook_events: int = 0
    editor_sessions: int = 0
    sign_in_links: int = 0
    form_counters: int = 0
    transactions: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.deliveries} deliveries and {self.send_batches} batches of "
            f"{len(self.issues)} issues, {self.webhook_events} webhook events, "
            f"{self.editor_sessions} studio sessions, {self.sign_in_links} sign-in links, "
            f"{self.form_counters} form counters removed"
        )


def housekeep(
    app: App, *, chunk: int = CHUNK, after_chunk: AfterChunk | None = None
) -> HousekeepingReport:
    """Delete what retention and expiry allow, as of `app.now()`, `chunk` rows at a time."""
    now = app.now()
    settings = app.settings
    report = HousekeepingReport(now=now)
    engine = app.engine
    done = after_chunk or (lambda _table, _n: None)
    kept = settings.retention.deliveries_delta
    if kept is not None:
        report.deliveries_before = now - kept
        for issue_id in _expired_issues(engine, now - kept):
            _clear_issue(engine, issue_id, chunk, report, done)
    events = settings.retention.webhook_events_delta
    if events is not None:
        report.webhook_events_before = now - events
        report.webhook_events = _delete_by_id(
            engine, _W, _W.c.received_at < now - events, chunk, report, done
        )
    idle = parse_duration(settings.studio.session_idle)
    report.editor_sessions = _delete_by_key(
        engine, _ES, or_(_ES.c.expires_at <= now, _ES.c.last_seen_at <= now - idle), report, done
    )
    report.sign_in_links = _delete_by_key(engine, _SL, _SL.c.expires_at <= now, report, done)
    # A counter older than its longest window counts from zero again when next used.
    window = max(THROTTLE_WINDOW, parse_duration(settings.forms.confirmation_cooldown))
    report.form_counters = _delete_by_key(
        engine, _T, _T.c.window_start <= now - window, report, done
    )
    log.info("housekeeping: %s", report.summary())
    return report


def _expired_issues(engine: Engine, before: datetime) -> list[int]:
    """Sent before `before` and still holding deliveries or batches: one index probe each."""
    with engine.connect() as connection:
        old = connection.execute(
            select(_I.c.id)
            .where(_I.c.status == IssueStatus.SENT, _I.c.sent_at < before)
            .order_by(_I.c.id)
        ).scalars()
        return [int(i) for i in old if _holds_rows(connection, int(i))]


def _holds_rows(connection: Connection, issue_id: int) -> bool:
    for table in (_D, _B):
        row = connection.execute(select(table.c.id).where(table.c.issue_id == issue_id).limit(1))
        if row.first() is not None:
            return True
    return False


def _still_sent(connection: Connection, issue_id: int) -> bool:
    """True while the issue is sent; the share lock keeps a resend from starting until this
    chunk commits (PostgreSQL; SQLite has one writer anyway)."""
    status = connection.execute(
        select(_I.c.status).where(_I.c.id == issue_id).with_for_update(read=True)
    ).scalar()
    return status == IssueStatus.SENT


def _clear_issue(
    engine: Engine, issue_id: int, chunk: int, report: HousekeepingReport, done: AfterChunk
) -> None:
    with engine.begin() as connection:
        if not _still_sent(connection, issue_id):
            return
        has_counts = connection.execute(
            select(_C.c.issue_id).where(_C.c.issue_id == issue_id).limit(1)
        ).first()
        if has_counts is None:  # sent before counts were stored: store them now
            snapshot.take(connection, issue_id)
            report.counts_stored.append(issue_id)
    report.transactions += 1
    report.issues.append(issue_id)
    after: int | None = None
    while True:
        with engine.begin() as connection:
            if not _still_sent(connection, issue_id):
                log.warning("issue %s is being sent again: its deliveries are kept", issue_id)
                return
            page = select(_D.c.subscriber_id).where(_D.c.issue_id == issue_id)
            if after is not None:
                page = page.where(_D.c.subscriber_id > after)
            # The chunk's last subscriber: `chunk` entries along the (issue, subscriber) index.
            ids = page.order_by(_D.c.subscriber_id).limit(chunk).subquery()
            last = connection.execute(select(func.max(ids.c.subscriber_id))).scalar()
            if last is None:
                break
            in_range = [_D.c.issue_id == issue_id, _D.c.subscriber_id <= last]
            if after is not None:
                in_range.append(_D.c.subscriber_id > after)
            deleted = _rows(connection.execute(delete(_D).where(*in_range)))
        report.transactions += 1
        report.deliveries += deleted
        done("delivery", deleted)
        after = int(last)
    report.send_batches += _delete_by_id(engine, _B, _B.c.issue_id == issue_id, chunk, report, done)


def _delete_by_id(
    engine: Engine,
    table: Any,
    condition: Any,
    chunk: int,
    report: HousekeepingReport,
    done: AfterChunk,
) -> int:
    """Delete the rows meeting `condition`, `chunk` at a time in id order, one transaction
    each; the next chunk starts after the last id, so it never walks over deleted rows."""
    total, after = 0, 0
    while True:
        with engine.begin() as connection:
            ids = list(
                connection.execute(
                    select(table.c.id)
                    .where(condition, table.c.id > after)
                    .order_by(table.c.id)
                    .limit(chunk)
                ).scalars()
            )
            if not ids:
                return total
            deleted = _rows(connection.execute(delete(table).where(table.c.id.in_(ids))))
        report.transactions += 1
        total += deleted
        done(table.name, deleted)
        after = int(ids[-1])


def _delete_by_key(
    engine: Engine, table: Any, condition: Any, report: HousekeepingReport, done: AfterChunk
) -> int:
    """Small tables (sessions, links, counters): one statement."""
    with engine.begin() as connection:
        deleted = _rows(connection.execute(delete(table).where(condition)))
    report.transactions += 1
    if deleted:
        done(table.name, deleted)
    return deleted


def _rows(result: Any) -> int:
    return int(result.rowcount or 0)


# --------------------------------------------------------------------- once a day at most


def run_if_due(app: App, *, every: timedelta = EVERY) -> HousekeepingReport | None:
    """Housekeep if no one did within `every` (the scheduler's leader, `digest run-due`);
    None when not due. A failure is recorded on the job row and raised."""
    now = app.now()
    if not _claim(app.engine, now, every):
        return None
    return _run_recorded(app)


def run_now(app: App, *, chunk: int = CHUNK) -> HousekeepingReport:
    """Housekeep at once (`digest housekeeping`), recorded like the scheduler's run."""
    _claim(app.engine, app.now(), None)
    return _run_recorded(app, chunk=chunk)


def _run_recorded(app: App, *, chunk: int = CHUNK) -> HousekeepingReport:
    try:
        report = housekeep(app, chunk=chunk)
    except Exception as exc:
        _finish(app.engine, app.now(), "failed", f"{type(exc).__name__}: {exc}")
        raise
    _finish(app.engine, app.now(), "ok", report.summary())
    return report


def _claim(engine: Engine, now: datetime, every: timedelta | None) -> bool:
    """Mark the job started at `now` if it last started `every` ago or more (None: always);
    True if this call did. One conditional UPDATE: two callers cannot both win."""
    with engine.begin() as connection:
        if connection.execute(select(_J.c.name).where(_J.c.name == JOB)).first() is None:
            try:
                with connection.begin_nested():
                    connection.execute(insert(_J).values(name=JOB))
            except IntegrityError:
                pass  # another process made it first
        claim = update(_J).where(_J.c.name == JOB)
        if every is not None:
            claim = claim.where(
                or_(_J.c.last_started_at.is_(None), _J.c.last_started_at <= now - every)
            )
        return _rows(connection.execute(claim.values(last_started_at=now))) == 1


def _finish(engine: Engine, now: datetime, outcome: str, detail: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(_J)
            .where(_J.c.name == JOB)
            .values(last_finished_at=now, last_outcome=outcome, detail=detail)
        )


# ---------------------------------------------------------------- the record that is kept


def consent_record(session: Session, email: str) -> dict[str, Any]:
    """Every consent event of an address (and of the subscriber ids merged into it), oldest
    first: what `digest subscribers consent` prints. Retention never deletes these."""
    address = lookup_address(email)
    _, ids = subscriber_ids(session, address)
    mine = func.lower(col(ConsentEvent.email)) == address
    events = session.scalars(
        select(ConsentEvent)
        .where(or_(mine, col(ConsentEvent.subscriber_id).in_(ids)) if ids else mine)
        .order_by(col(ConsentEvent.at), col(ConsentEvent.id))
    ).all()
    return {
        "address": address,
        "events": [
            {
                "at": e.at,
                "action": e.action,
                "newsletter": e.newsletter,
                "method": e.method,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "detail": e.detail,
                "issue_id": e.issue_id,
            }
            for e in events
        ],
    }
