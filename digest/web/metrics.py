"""`/metrics` in the Prometheus text format (version 0.0.4), written by hand: a few gauges
read from the database on each scrape, no client library and no process-local state, so any
`digest serve` replica reports the same numbers.

A scrape reads no delivery, of a sent issue nor of one still sending: every issue's counts are
kept in `issue_count` by the database as its deliveries and batches change
(`digest.sending.snapshot`), summed per newsletter in one grouped query; only an issue without
kept counts (none since migration 0012) would be counted from its deliveries. Scraping every
15 s a database of 10M deliveries, or during a 1M send, so stays a few milliseconds
(`benchmarks/bench_metrics.py`).

Suggested alerts: `digest_scheduler_heartbeat_age_seconds > 120` (no live leader),
`increase(digest_schedule_runs{outcome=~"failed|missed"}[1d]) > 0`,
`digest_source_consecutive_failures >= 3`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlmodel import Session, col, func, select

from digest.scheduling.leader import leader_info
from digest.sending import snapshot
from digest.storage.models import (
    BatchStatus,
    Issue,
    IssueCount,
    SchedulerJob,
    ScheduleRun,
    SendBatch,
    Source,
)
from digest.web.deps import app_of

router = APIRouter()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RATE_WINDOW = timedelta(minutes=5)
Sample = tuple[dict[str, str], float]


class Exposition:
    """Accumulates metric families and renders the text format."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._lines.append(f"# HELP {name} {help_text}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = (f'{key}="{_escape(str(value))}"' for key, value in labels.items())
    return "{" + ",".join(pairs) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _timestamp(moment: datetime | None) -> float:
    return moment.timestamp() if moment else math.nan


@router.get("/metrics")
def metrics(request: Request) -> PlainTextResponse:
    app = app_of(request)
    now = app.now()
    out = Exposition()
    with app.session() as session:
        _issues(out, session)
        _deliveries(out, session, now)
        _runs(out, session)
        _sources(out, session)
        _scheduler(out, session, now)
    return PlainTextResponse(out.render(), media_type=CONTENT_TYPE)


def _issues(out: Exposition, session: Session) -> None:
    rows = session.exec(
        select(Issue.newsletter, Issue.status, func.count()).group_by(
            col(Issue.newsletter), col(Issue.status)
        )
    ).all()
    out.family(
        "digest_issues",
        "gauge",
        "Issues by newsletter and status.",
        (({"newsletter": n, "status": s}, c) for n, s, c in rows),
    )


def _deliveries(out: Exposition, session: Session, now: datetime) -> None:
    totals: dict[tuple[str, str], int] = {}
    kept = session.exec(
        select(Issue.newsletter, IssueCount.state, func.sum(IssueCount.n))
        .join(Issue, col(Issue.id) == col(IssueCount.issue_id))
        .where(col(IssueCount.state).not_in(snapshot.NOT_STATES))
        .group_by(col(Issue.newsletter), col(IssueCount.state))
    ).all()
    for newsletter, state, count in kept:
        totals[(newsletter, state)] = totals.get((newsletter, state), 0) + int(count or 0)
    sending = snapshot.without_counts(session)
    newsletter_of = dict(
        session.exec(select(Issue.id, Issue.newsletter).where(col(Issue.id).in_(sending))).all()
    )
    for issue_id, counts in snapshot.live(session, sending).items():
        for state, count in snapshot.states_only(counts).items():
            key = (newsletter_of.get(issue_id, "?"), state)
            totals[key] = totals.get(key, 0) + count
    out.family(
        "digest_deliveries",
        "gauge",
        "Deliveries by newsletter and state (pending, sending, accepted, failed, skipped, "
        "unknown, and provider events).",
        (({"newsletter": n, "state": s}, c) for (n, s), c in sorted(totals.items()) if c),
    )
    accepted = session.exec(
        select(func.coalesce(func.sum(SendBatch.size), 0)).where(
            SendBatch.status == BatchStatus.ACCEPTED,
            col(SendBatch.updated_at) >= now - RATE_WINDOW,
        )
    ).one()
    out.family(
        "digest_send_rate_per_second",
        "gauge",
        "Recipients accepted by the transport per second over the last 5 minutes.",
        [({}, int(accepted) / RATE_WINDOW.total_seconds())],
    )


def _runs(out: Exposition, session: Session) -> None:
    rows = session.exec(
        select(ScheduleRun.newsletter, ScheduleRun.outcome, func.count()).group_by(
            col(ScheduleRun.newsletter), col(ScheduleRun.outcome)
        )
    ).all()
    out.family(
        "digest_schedule_runs",
        "gauge",
        "Scheduled periods by newsletter and outcome (sent, skipped, missed, "
        "awaiting_approval, running, failed).",
        (({"newsletter": n, "outcome": o}, c) for n, o, c in rows),
    )


def _sources(out: Exposition, session: Session) -> None:
    sources = session.exec(select(Source).order_by(col(Source.name))).all()
    out.family(
        "digest_source_up",
        "gauge",
        "1 when the source's last fetch succeeded.",
        (
            ({"source": s.name}, 1 if s.last_fetched_at and not s.consecutive_failures else 0)
            for s in sources
        ),
    )
    out.family(
        "digest_source_consecutive_failures",
        "gauge",
        "Failed fetches in a row.",
        (({"source": s.name}, s.consecutive_failures) for s in sources),
    )
    out.family(
        "digest_source_last_success_timestamp_seconds",
        "gauge",
        "When the source was last fetched successfully (Unix time).",
        (({"source": s.name}, _timestamp(s.last_success_at)) for s in sources),
    )


def _scheduler(out: Exposition, session: Session, now: datetime) -> None:
    info = leader_info(session, now)
    out.family(
        "digest_scheduler_heartbeat_age_seconds",
        "gauge",
        "Seconds since the scheduler leader's last heartbeat (NaN: never ran).",
        [({}, info.heartbeat_age if info else math.nan)],
    )
    out.family(
        "digest_scheduler_leader",
        "gauge",
        "1 for the process holding leadership now (0 once released).",
        [({"holder": info.holder}, 1 if info.active else 0)] if info else [],
    )
    jobs = session.exec(select(SchedulerJob).order_by(col(SchedulerJob.name))).all()
    out.family(
        "digest_scheduler_job_last_run_timestamp_seconds",
        "gauge",
        "When a scheduler job (tick, ingest) last finished (Unix time).",
        (({"job": j.name}, _timestamp(j.last_finished_at)) for j in jobs),
    )
