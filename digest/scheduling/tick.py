"""Which (newsletter, period) are due now, and one scheduler tick that fires them.

A period is the scheduled moment an issue belongs to. The scheduler keeps one `ScheduleRun`
row per (newsletter, period), unique in the database: that row, not any lock, is what makes a
period fire once across restarts, catch-ups and several scheduler processes. Leadership
(`digest.scheduling.leader`) only keeps the schedulers from doing the same work twice.

Rules, all decided from an explicit `now` (tests and `run-due --now` drive time):
- Periods missed while no scheduler ran are caught up once: the newest one still within the
  catch-up grace fires; older ones are recorded as missed (coalesced or too late), never sent.
- A newsletter's first tick does not reach back further than the grace.
- Too few articles: the issue is skipped and the run says why.
- `requires_approval`: the draft is built at the scheduled time; it is sent once an editor
  approves it, unless an approval deadline passes first (then the period is missed).
- `send_in_subscriber_timezone`: the period opens when the first subscriber's local time comes;
  each tick sends to the time zones whose local time has come (see `digest.sending.local_time`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from digest.app import App
from digest.config import parse_duration
from digest.scheduling.newsletter_tick import NewsletterTick, PeriodResult
from digest.scheduling.pipeline import Pipeline
from digest.storage.models import RunOutcome, SchedulerJob

log = logging.getLogger("digest.schedule")

__all__ = [
    "NewsletterLocks",
    "PeriodResult",
    "TickReport",
    "ingest_due",
    "run_due",
    "run_ingest_job",
]


@dataclass
class TickReport:
    now: datetime
    ingest: str = "not due"
    results: list[PeriodResult] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def failed(self) -> bool:
        return self.ingest.startswith("failed") or any(
            r.outcome == RunOutcome.FAILED for r in self.results
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "ingest": self.ingest,
            "results": [asdict(r) for r in self.results],
            "busy": self.busy,
            "stopped": self.stopped,
            "failed": self.failed,
        }


# ---------------------------------------------------------------------------- pure decisions
# ------------------------------------------------------------------------------ one tick


class NewsletterLocks:
    """In one process, one job at a time works on a newsletter; the others skip it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, slug: str) -> Iterator[bool]:
        with self._guard:
            lock = self._locks.setdefault(slug, threading.Lock())
        acquired = lock.acquire(blocking=False)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()


def run_due(
    app: App,
    pipeline: Pipeline,
    *,
    newsletters: Sequence[str] | None = None,
    ingest: bool = True,
    stop: threading.Event | None = None,
    locks: NewsletterLocks | None = None,
    ingest_lock: threading.Lock | None = None,
) -> TickReport:
    """One scheduler tick at `app.now()`: ingest when due, then fire, resume or record every
    due period. Running it again at the same moment does nothing new."""
    now = app.now()
    report = TickReport(now=now)
    slugs = newsletters or [n.slug for n in app.settings.newsletters]
    ticks = [NewsletterTick(app, pipeline, app.settings.newsletter(s), now, stop) for s in slugs]
    if ingest:
        with ingest_lock or nullcontext():
            # Checked under the lock: whoever waited for another ingestion skips its own.
            if ingest_due(app, now, [t.needs_content_since() for t in ticks]):
                report.ingest = run_ingest_job(app, pipeline)
    locks = locks or NewsletterLocks()
    for tick in ticks:
        if stop is not None and stop.is_set():
            report.stopped = True
            break
        with locks.hold(tick.newsletter.slug) as acquired:
            if not acquired:
                report.busy.append(tick.newsletter.slug)
                continue
            report.results += tick.run()
    report.stopped = report.stopped or bool(stop is not None and stop.is_set())
    _job_finished(app, "tick", now, "stopped" if report.stopped else "ok", None, started=now)
    return report


def ingest_due(app: App, now: datetime, needed_since: Sequence[datetime | None]) -> bool:
    """Ingest every `ingest_every`, and before building an issue from older content."""
    if not app.settings.sources:
        return False
    with app.session() as session:
        job = session.get(SchedulerJob, "ingest")
    last = job.last_started_at if job else None
    if last is None or now - last >= parse_duration(app.settings.scheduler.ingest_every):
        return True
    return any(since is not None and last < since for since in needed_since)


def run_ingest_job(app: App, pipeline: Pipeline) -> str:
    now = app.now()
    _job_started(app, "ingest", now)
    try:
        result = pipeline.ingest(app)
    except Exception as exc:
        log.exception("ingestion failed")
        outcome = f"failed: {type(exc).__name__}: {exc}"
        _job_finished(app, "ingest", now, "failed", outcome)
        return outcome
    summary = _ingest_summary(result)
    _job_finished(app, "ingest", app.now(), "ok", summary)
    log.info("ingested: %s", summary)
    return f"ran: {summary}"


def _ingest_summary(result: object) -> str:
    sources = getattr(result, "sources", None)
    if sources is None:
        return "done"
    errors = sum(1 for s in sources if getattr(s, "errors", None))
    new = sum(int(getattr(s, "new", 0)) for s in sources)
    return f"{len(sources)} sources, {new} new articles, {errors} with errors"


# --------------------------------------------------------------------------- job bookkeeping


def _job_row(session: Session, name: str) -> SchedulerJob:
    job = session.get(SchedulerJob, name)
    if job is not None:
        return job
    job = SchedulerJob(name=name)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        found = session.get(SchedulerJob, name)
        if found is None:
            raise
        return found
    return job


def _job_started(app: App, name: str, now: datetime) -> None:
    with app.session() as session:
        job = _job_row(session, name)
        job.last_started_at = now
        session.add(job)


def _job_finished(
    app: App,
    name: str,
    now: datetime,
    outcome: str,
    detail: str | None,
    *,
    started: datetime | None = None,
) -> None:
    with app.session() as session:
        job = _job_row(session, name)
        if started is not None:
            job.last_started_at = started
        job.last_finished_at = now
        job.last_outcome = outcome
        job.detail = detail
        session.add(job)
