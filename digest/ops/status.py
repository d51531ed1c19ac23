"""What ops need to see at a glance (`digest status`): per newsletter the next run, the next
issue (as prepared so far), the last issue that went out with its state and delivery counts,
the scheduler's last word and recent failures; per source its health; the scheduler leader
and its heartbeat; the `digest worker`s heard from today. Reading it changes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from digest.app import App
from digest.config import NewsletterConfig, Settings, parse_duration
from digest.issues import periods, timeline
from digest.scheduling.leader import leader_info
from digest.sending import local_time
from digest.sending.snapshot import delivery_counts  # kept counts, sending or sent: no scan
from digest.sending.worker_pool import workers_report
from digest.storage.models import Issue, RunOutcome, SchedulerJob, ScheduleRun, Source

# Failed and missed periods younger than this are listed as failures.
FAILURE_WINDOW = timedelta(days=30)
# A source failing this many times in a row is `failing`; fewer, `degraded`.
SOURCE_FAILING_AFTER = 3


def status_report(app: App) -> dict[str, Any]:
    settings = app.settings
    now = app.now()
    with app.session() as session:
        newsletters = [_newsletter(session, settings, n, now) for n in settings.newsletters]
        sources = [_source_summary(source) for source in session.exec(select(Source)).all()]
        scheduler = _scheduler(session, settings, now)
        workers = workers_report(session)
    return {
        "now": now.isoformat(),
        "newsletters": newsletters,
        "sources": sources,
        "scheduler": scheduler,
        "workers": workers,
    }


def _newsletter(
    session: Session, settings: Settings, newsletter: NewsletterConfig, now: datetime
) -> dict[str, Any]:
    zone = settings.newsletter_timezone(newsletter)
    next_run = periods.next_period(settings, newsletter, now)
    last = timeline.last_out(session, newsletter.slug)
    upcoming = timeline.next_period_in(session, settings, newsletter, now)
    report: dict[str, Any] = {
        "slug": newsletter.slug,
        "title": newsletter.title,
        "schedule": newsletter.schedule,
        "timezone": str(zone),
        "requires_approval": newsletter.requires_approval,
        "send_in_subscriber_timezone": newsletter.send_in_subscriber_timezone,
        "next_run": next_run.isoformat(),
        "next_run_local": next_run.astimezone(zone).isoformat(),
        "last_issue": _issue_summary(session, last) if last else None,
        # The period of the issue the studio shows and the next send carries. Only the
        # period: whether an editor opened it yet must not change what status says.
        "next_issue": {
            "period": upcoming.isoformat(),
            "period_local": upcoming.astimezone(zone).isoformat(),
        },
        "last_run": None,
        "open_runs": [],
        "failures": [],
    }
    if newsletter.send_in_subscriber_timezone:
        zones = local_time.audience_zones(session, newsletter.slug, str(zone))
        report["next_run_opens"] = local_time.opens_at(next_run, zone, zones).isoformat()
    runs = session.exec(
        select(ScheduleRun)
        .where(ScheduleRun.newsletter == newsletter.slug)
        .order_by(col(ScheduleRun.period).desc())
        .limit(1)
    ).all()
    if runs:
        report["last_run"] = _run_summary(runs[0])
    open_runs = session.exec(
        select(ScheduleRun)
        .where(
            ScheduleRun.newsletter == newsletter.slug,
            col(ScheduleRun.outcome).in_([RunOutcome.RUNNING, RunOutcome.AWAITING_APPROVAL]),
        )
        .order_by(col(ScheduleRun.period))
    ).all()
    report["open_runs"] = [_run_summary(run) for run in open_runs]
    failures = session.exec(
        select(ScheduleRun)
        .where(
            ScheduleRun.newsletter == newsletter.slug,
            col(ScheduleRun.outcome).in_([RunOutcome.FAILED, RunOutcome.MISSED]),
            col(ScheduleRun.period) >= periods.period_key(now - FAILURE_WINDOW),
        )
        .order_by(col(ScheduleRun.period).desc())
    ).all()
    report["failures"] = [_run_summary(run) for run in failures]
    return report


def _run_summary(run: ScheduleRun) -> dict[str, Any]:
    return {
        "period": run.period,
        "outcome": run.outcome,
        "issue_id": run.issue_id,
        "detail": run.detail,
        "attempts": run.attempts,
        "at": run.at.isoformat(),
    }


def _issue_summary(session: Session, issue: Issue) -> dict[str, Any]:
    counts = delivery_counts(session, issue.id or 0)
    return {
        "id": issue.id,
        "period": issue.period,
        "status": issue.status,
        "subject": issue.subject,
        "skip_reason": issue.skip_reason,
        "sent_at": issue.sent_at.isoformat() if issue.sent_at else None,
        "deliveries": {state: n for state, n in counts.items() if n},
    }


def _source_summary(source: Source) -> dict[str, Any]:
    if source.last_fetched_at is None:
        health = "never fetched"
    elif source.consecutive_failures >= SOURCE_FAILING_AFTER:
        health = "failing"
    elif source.consecutive_failures:
        health = "degraded"
    else:
        health = "ok"
    return {
        "name": source.name,
        "health": health,
        "last_fetched_at": _iso(source.last_fetched_at),
        "last_success_at": _iso(source.last_success_at),
        "last_error": source.last_error,
        "last_error_at": _iso(source.last_error_at),
        "consecutive_failures": source.consecutive_failures,
    }


def _scheduler(session: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    every = parse_duration(settings.scheduler.heartbeat_every)
    stale_after = max(3 * every, timedelta(minutes=1))
    info = leader_info(session, now)
    jobs = {job.name: job for job in session.exec(select(SchedulerJob)).all()}
    awaiting = session.exec(
        select(func.count())
        .select_from(ScheduleRun)
        .where(ScheduleRun.outcome == RunOutcome.AWAITING_APPROVAL)
    ).one()
    return {
        "leader": info.as_dict(stale_after) if info else None,
        "last_tick_at": _iso(jobs["tick"].last_finished_at) if "tick" in jobs else None,
        "last_ingest": _job_summary(jobs.get("ingest")),
        "awaiting_approval": int(awaiting),
    }


def _job_summary(job: SchedulerJob | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "started_at": _iso(job.last_started_at),
        "finished_at": _iso(job.last_finished_at),
        "outcome": job.last_outcome,
        "detail": job.detail,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
