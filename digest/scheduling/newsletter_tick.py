"""One newsletter's part of a scheduler tick: fire the due period, resume the open ones,
record the missed ones. Every step is written to its `ScheduleRun` row at once, so a crash
anywhere leaves a row the next tick continues from (see `digest.scheduling.tick` for the rules)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, or_, select

from digest.app import App
from digest.config import NewsletterConfig, parse_duration
from digest.issues.assemble import get_issue
from digest.issues.periods import period_key
from digest.scheduling.pipeline import Pipeline, SendRequest
from digest.scheduling.rules import (
    MAX_ATTEMPTS,
    OPEN,
    Candidate,
    approval_deadline,
    candidate_periods,
    human_duration,
    plan_catch_up,
    retry_due,
    send_outcome,
)
from digest.sending import local_time
from digest.storage.models import Issue, IssueStatus, RunOutcome, ScheduleRun

log = logging.getLogger("digest.schedule")


@dataclass(frozen=True)
class PeriodResult:
    newsletter: str
    period: str
    outcome: str
    issue_id: int | None
    detail: str
    action: str  # fired, resumed, checked, recorded, retried


class NewsletterTick:
    """The work of one tick for one newsletter."""

    def __init__(
        self,
        app: App,
        pipeline: Pipeline,
        newsletter: NewsletterConfig,
        now: datetime,
        stop: threading.Event | None,
    ) -> None:
        self.app = app
        self.pipeline = pipeline
        self.newsletter = newsletter
        self.now = now
        self.stop = stop
        self.settings = app.settings
        self.grace = parse_duration(self.settings.scheduler.catch_up_grace)
        self.zone = self.settings.newsletter_timezone(newsletter)
        self.local = newsletter.send_in_subscriber_timezone
        with app.session() as session:
            self.zones = (
                local_time.audience_zones(session, newsletter.slug, str(self.zone))
                if self.local
                else None
            )
            self.open_runs = _open_runs(
                session, newsletter.slug, now - self.grace - local_time.MAX_LEAD
            )
            latest = session.exec(
                select(func.max(ScheduleRun.period)).where(
                    ScheduleRun.newsletter == newsletter.slug
                )
            ).one()
        after = datetime.fromisoformat(latest) if latest else None
        candidates = candidate_periods(self.settings, newsletter, now, after, self.zones)
        self.plan = plan_catch_up(candidates, now, self.grace)

    def needs_content_since(self) -> datetime | None:
        """The newest period this tick will build, if any: ingestion should be fresher."""
        periods = [datetime.fromisoformat(r.period) for r in self.open_runs if r.issue_id is None]
        if self.plan.fire is not None:
            periods.append(self.plan.fire.period)
        return max(periods, default=None)

    def run(self) -> list[PeriodResult]:
        results: list[PeriodResult] = []
        for run in self.open_runs:
            if self._stopped():
                return results
            result = self._advance(run, "resumed")
            if result is not None:
                results.append(result)
        for candidate, why in self.plan.missed:
            results.append(self._record_missed(candidate, why))
        if self.plan.fire is not None and not self._stopped():
            results.append(self._fire(self.plan.fire))
        return results

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    # -- recording

    def _claim(
        self, period: datetime, outcome: RunOutcome, detail: str
    ) -> tuple[ScheduleRun, bool]:
        """Insert the period's run, or read the one another scheduler inserted first."""
        key = period_key(period)
        with self.app.session() as session:
            existing = _run_of(session, self.newsletter.slug, key)
            if existing is not None:
                return existing, False
            run = ScheduleRun(
                newsletter=self.newsletter.slug,
                period=key,
                outcome=outcome,
                detail=detail,
                created_at=self.now,
                at=self.now,
            )
            try:
                with session.begin_nested():
                    session.add(run)
                    session.flush()
            except IntegrityError:
                existing = _run_of(session, self.newsletter.slug, key)
                if existing is None:
                    raise
                return existing, False
        return run, True

    def _save(
        self, run: ScheduleRun, outcome: RunOutcome, detail: str, action: str
    ) -> PeriodResult:
        with self.app.session() as session:
            stored = session.get(ScheduleRun, run.id)
            assert stored is not None
            changed = stored.outcome != outcome or stored.detail != detail
            stored.outcome, stored.detail, stored.issue_id = outcome, detail, run.issue_id
            stored.attempts = run.attempts
            if changed or outcome == RunOutcome.FAILED:
                stored.at = self.now
            session.add(stored)
        run.outcome, run.detail = outcome, detail
        level = (
            logging.WARNING if outcome in (RunOutcome.FAILED, RunOutcome.MISSED) else logging.INFO
        )
        if changed:
            log.log(
                level,
                "%s %s: %s (%s)",
                self.newsletter.slug,
                run.period,
                outcome,
                detail,
                extra={
                    "newsletter": self.newsletter.slug,
                    "issue_id": run.issue_id,
                    "period": run.period,
                    "outcome": str(outcome),
                },
            )
        return PeriodResult(self.newsletter.slug, run.period, outcome, run.issue_id, detail, action)

    def _record_missed(self, candidate: Candidate, why: str) -> PeriodResult:
        with self.app.session() as session:
            issue = get_issue(session, self.newsletter.slug, candidate.period)
        if issue is not None and issue.status in (IssueStatus.SENDING, IssueStatus.SENT):
            return self._fire(candidate)  # sent by hand meanwhile: follow it, do not call it missed
        run, created = self._claim(candidate.period, RunOutcome.MISSED, why)
        if issue is not None and run.issue_id is None:
            run.issue_id = issue.id
            return self._save(run, RunOutcome(run.outcome), run.detail or why, "recorded")
        return PeriodResult(
            self.newsletter.slug,
            run.period,
            run.outcome,
            run.issue_id,
            run.detail or "",
            "recorded" if created else "unchanged",
        )

    # -- firing and advancing

    def _fire(self, candidate: Candidate) -> PeriodResult:
        run, created = self._claim(candidate.period, RunOutcome.RUNNING, "fired")
        if not created and run.outcome not in OPEN:
            return PeriodResult(
                self.newsletter.slug,
                run.period,
                run.outcome,
                run.issue_id,
                run.detail or "",
                "unchanged",
            )
        result = self._advance(run, "fired" if created else "resumed")
        assert result is not None
        return result

    def _advance(self, run: ScheduleRun, action: str) -> PeriodResult | None:
        period = datetime.fromisoformat(run.period)
        opens = self._opens_at(period)
        if run.outcome == RunOutcome.FAILED:
            if not retry_due(run, self.now, opens, self.grace):
                return None
            action = "retried"
        issue = self._issue(run, period)
        if issue is None:
            return self._fail(run, "build", action)
        status = issue.status
        if status == IssueStatus.SKIPPED:
            return self._save(run, RunOutcome.SKIPPED, issue.skip_reason or "skipped", action)
        if status == IssueStatus.SENT:
            return self._save(run, RunOutcome.SENT, "sent", action)
        if status == IssueStatus.DRAFT and self.newsletter.requires_approval:
            return self._await_approval(run, period, issue, action)
        return self._send(run, period, issue, action)

    def _opens_at(self, period: datetime) -> datetime:
        if not self.zones:
            return period
        return local_time.opens_at(period, self.zone, self.zones)

    def _issue(self, run: ScheduleRun, period: datetime) -> Issue | None:
        if run.issue_id is not None:
            with self.app.session() as session:
                issue = session.get(Issue, run.issue_id)
            if issue is not None:
                return issue
        try:
            issue = self.pipeline.build(self.app, self.newsletter.slug, period)
        except Exception as exc:
            log.exception(
                "building %s %s failed",
                self.newsletter.slug,
                run.period,
                extra={"newsletter": self.newsletter.slug, "period": run.period},
            )
            run.detail = f"build failed: {type(exc).__name__}: {exc}"
            return None
        run.issue_id = issue.id
        return issue

    def _fail(self, run: ScheduleRun, step: str, action: str) -> PeriodResult:
        run.attempts += 1
        detail = run.detail or f"{step} failed"
        if run.attempts < MAX_ATTEMPTS:
            detail += f" (attempt {run.attempts}; retried within the catch-up grace)"
        return self._save(run, RunOutcome.FAILED, detail, action)

    def _await_approval(
        self, run: ScheduleRun, period: datetime, issue: Issue, action: str
    ) -> PeriodResult:
        deadline = approval_deadline(self.settings, self.newsletter)
        if deadline is not None and self.now > period + deadline:
            detail = (
                f"draft {issue.id} was not approved within {human_duration(deadline)}; not sent"
            )
            return self._save(run, RunOutcome.MISSED, detail, action)
        detail = f"draft {issue.id} waits for an editor's approval"
        if deadline is not None:
            detail += f" until {period_key(period + deadline)}"
        if run.outcome == RunOutcome.AWAITING_APPROVAL and action == "resumed":
            action = "checked"
        return self._save(run, RunOutcome.AWAITING_APPROVAL, detail, action)

    def _send(self, run: ScheduleRun, period: datetime, issue: Issue, action: str) -> PeriodResult:
        assert issue.id is not None
        timezones: frozenset[str] | None = None
        if self.local:
            with self.app.session() as session:
                zones = (self.zones or frozenset()) | local_time.pending_zones(
                    session, issue.id, str(self.zone)
                )
            timezones = local_time.due_zones(period, self.zone, zones, self.now)
            if not timezones:
                return self._save(
                    run, RunOutcome.RUNNING, "waiting for subscribers' local time", action
                )
        hand_over, handed = self.pipeline.hand_over, None
        try:  # live `digest worker`s send it: only start it for them
            handed = hand_over(self.app, issue.id) if hand_over is not None else None
            report = (
                handed.report
                if handed is not None
                else self.pipeline.send(self.app, issue.id, SendRequest(self.stop, timezones))
            )
        except Exception as exc:
            log.exception(
                "sending issue %s failed",
                issue.id,
                extra={"newsletter": self.newsletter.slug, "issue_id": issue.id},
            )
            run.detail = f"send failed: {type(exc).__name__}: {exc}"
            return self._fail(run, "send", action)
        workers = handed.workers if handed is not None else 0
        outcome, detail = send_outcome(
            report, stopped=self._stopped(), local=self.local, workers=workers
        )
        detail = detail.replace("SLUG", self.newsletter.slug)
        if outcome == RunOutcome.FAILED:
            run.detail = detail
            return self._fail(run, "send", action)
        return self._save(run, outcome, detail, action)


def _run_of(session: Session, slug: str, key: str) -> ScheduleRun | None:
    statement = select(ScheduleRun).where(ScheduleRun.newsletter == slug, ScheduleRun.period == key)
    return session.exec(statement).first()


def _open_runs(session: Session, slug: str, failed_since: datetime) -> list[ScheduleRun]:
    statement = (
        select(ScheduleRun)
        .where(
            ScheduleRun.newsletter == slug,
            or_(
                col(ScheduleRun.outcome).in_([RunOutcome.RUNNING, RunOutcome.AWAITING_APPROVAL]),
                (col(ScheduleRun.outcome) == RunOutcome.FAILED)
                & (col(ScheduleRun.period) >= period_key(failed_since)),
            ),
        )
        .order_by(col(ScheduleRun.period))
    )
    return list(session.exec(statement).all())
