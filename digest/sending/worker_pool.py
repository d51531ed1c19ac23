"""The `send_worker` rows: who is in the pool of `digest worker` processes, and who is alive.

A worker registers when it starts, refreshes its heartbeat (and how many batches it holds)
every few seconds, says when it drains (SIGTERM) and when it stopped. Liveness is judged the
way the ledger judges a claim (`Claimer.judges_alive`): on the same machine by its process
(a SIGKILLed worker is dead at once), elsewhere by a heartbeat younger than `WORKER_LEASE`.
Heartbeats are wall-clock time, not the App's clock: `--now` moves the calendar of a
simulation, not how long ago a process last spoke.

The scheduler asks `hand_over` before it sends: with a live worker it only starts the issue
(moves it to `sending`; the workers freeze the audience page by page and send it), so on one
host, or on SQLite (no workers there), the scheduler still does everything itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlmodel import Session, col

from digest.app import App
from digest.sending import freeze
from digest.sending.claimer import Claimer
from digest.storage.models import BatchStatus, Issue, IssueStatus, SendBatch, SendWorker

WORKER_LEASE = timedelta(seconds=60)  # a worker elsewhere silent this long is gone
FORGET_AFTER = timedelta(days=7)  # rows of workers gone this long are deleted at registration
SHOWN_FOR = timedelta(days=1)  # `digest status` lists workers heard from within this long

_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]


def wall_clock() -> datetime:
    return datetime.now(UTC)


def supported(app: App) -> bool:
    """Workers coordinate through PostgreSQL (SKIP LOCKED, the shared rate): not on SQLite."""
    return app.engine.dialect.name == "postgresql"


def register(app: App, me: Claimer, concurrency: int) -> None:
    now = wall_clock()
    with app.session() as session:
        session.execute(
            SendWorker.__table__.delete().where(  # type: ignore[attr-defined]
                col(SendWorker.heartbeat_at) < now - FORGET_AFTER
            )
        )
        session.merge(
            SendWorker(
                id=str(me), host=me.host, pid=os.getpid(), concurrency=concurrency,
                started_at=now, heartbeat_at=now, in_flight=0, draining=False,
            )
        )  # fmt: skip


def beat(app: App, me: Claimer, *, draining: bool, stopped: bool = False) -> int:
    """Refresh the worker's row: heartbeat, batches it holds now, draining, stopped."""
    now = wall_clock()
    with app.session() as session:
        held = in_flight(session, me)
        values: dict[str, Any] = {"heartbeat_at": now, "in_flight": held, "draining": draining}
        if stopped:
            values["stopped_at"] = now
        session.execute(update(SendWorker).where(col(SendWorker.id) == str(me)).values(**values))
    return held


def in_flight(session: Session, me: Claimer) -> int:
    """Batches of sending issues claimed by any run of this worker's process."""
    prefix = f"{me.host}/{me.boot}/{me.pid}/{me.start}/"
    sending = select(_I.c.id).where(_I.c.status == IssueStatus.SENDING)
    return int(
        session.execute(
            select(func.count())
            .select_from(_B)
            .where(
                _B.c.issue_id.in_(sending),
                _B.c.status == BatchStatus.SENDING,
                _B.c.claimed_by.startswith(prefix, autoescape=True),
            )
        ).scalar()
        or 0
    )


def _alive(judge: Claimer, row: SendWorker, now: datetime) -> bool:
    if row.stopped_at is not None:
        return False
    return judge.judges_alive(Claimer.parse(row.id), row.heartbeat_at, now, WORKER_LEASE)


def live_workers(session: Session, *, claiming: bool = True) -> list[SendWorker]:
    """Workers alive now (with `claiming`, only those not draining)."""
    now = wall_clock()
    judge = Claimer.new()
    rows = session.scalars(
        select(SendWorker).where(
            col(SendWorker.stopped_at).is_(None),
            col(SendWorker.heartbeat_at) > now - WORKER_LEASE,
        )
    ).all()
    return [r for r in rows if _alive(judge, r, now) and not (claiming and r.draining)]


def workers_report(session: Session) -> list[dict[str, Any]]:
    """The pool as `digest status` shows it: each worker heard from within a day."""
    now = wall_clock()
    judge = Claimer.new()
    rows = session.scalars(
        select(SendWorker)
        .where(col(SendWorker.heartbeat_at) > now - SHOWN_FOR)
        .order_by(col(SendWorker.host), col(SendWorker.started_at))
    ).all()
    report = []
    for row in rows:
        if row.stopped_at is not None:
            state = "stopped"
        elif not _alive(judge, row, now):
            state = "lost"  # killed, or silent longer than the lease
        else:
            state = "draining" if row.draining else "running"
        report.append(
            {
                "id": row.id,
                "host": row.host,
                "pid": row.pid,
                "state": state,
                "concurrency": row.concurrency,
                "in_flight": row.in_flight if state in ("running", "draining") else 0,
                "draining": row.draining,
                "started_at": row.started_at.isoformat(),
                "heartbeat_at": row.heartbeat_at.isoformat(),
                "heartbeat_age_seconds": round((now - row.heartbeat_at).total_seconds(), 1),
                "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
            }
        )
    return report


@dataclass(frozen=True)
class HandOver:
    """The scheduler left the issue to the pool: how many workers, and where the send stands
    (a dry-run `SendReport`, which `scheduling.rules.send_outcome` reads)."""

    workers: int
    report: Any


def hand_over(app: App, issue_id: int) -> HandOver | None:
    """If live workers exist, start the issue for them (compare-and-set to `sending`) and say
    where it stands; None when the caller must send it itself (no live worker, or SQLite).
    Raises `SendRefused` for an issue that may not be sent, as `send_issue` would."""
    if not supported(app):
        return None
    with app.session() as session:
        workers = len(live_workers(session))
    if not workers:
        return None
    from digest.sending.send import check_sendable, send_issue, sendable_statuses

    with app.session() as session:
        issue = session.get(Issue, issue_id)
    if issue is None:
        return None
    newsletter = app.settings.newsletter(issue.newsletter)
    check_sendable(issue, newsletter, force=False)
    if issue.status not in (IssueStatus.SENDING, IssueStatus.SENT):
        with app.session() as session:
            freeze.start(
                session,
                issue_id=issue_id,
                from_statuses=sendable_statuses(newsletter),
                now=app.now(),
            )
    return HandOver(workers, send_issue(app, issue_id, dry_run=True))
