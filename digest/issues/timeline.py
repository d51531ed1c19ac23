"""Which issue is next, which went out last, and what became of past periods.

The rule every part of digest follows (the studio, `digest send`, `preview`, `status`, the
scheduler): the **next issue** is the issue the next send will carry, so what an editor edits
and approves is what goes out.

- The current period's issue (its scheduled moment has passed) is next while it can still go
  out: it is being sent; its scheduled run is still open (awaiting approval, retrying); or no
  run has looked at it yet and an editor approved it, or it is within
  `scheduler.catch_up_grace` of its moment (a scheduler that starts now would still send it).
- Otherwise the upcoming period's issue is next (skipping periods already sent ahead of time by
  a manual `digest send`). A past period that was never sent is history: *missed*, with the
  scheduler's reason, or "its moment passed without a send".

Reading this changes nothing: `is_next`, `last_out` and `past` only read; `next_issue` builds
or refreshes the draft of the next period (the editor's work is stored on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from digest.app import App
from digest.config import NewsletterConfig, Settings, parse_duration
from digest.issues.assemble import build_issue, get_issue
from digest.issues.periods import current_period, next_period, period_key
from digest.storage.models import Issue, IssueStatus, RunOutcome, ScheduleRun

# Scheduled runs a later tick still works on (as the scheduler's rules say).
OPEN_RUNS = (RunOutcome.RUNNING, RunOutcome.AWAITING_APPROVAL, RunOutcome.FAILED)
OUT = (IssueStatus.SENDING, IssueStatus.SENT)
_MAX_AHEAD = 100  # periods sent ahead of time that the next issue may skip over


def next_period_for(app: App, newsletter: NewsletterConfig) -> datetime:
    """The period of the next issue (see the module docstring)."""
    with app.session() as session:
        return next_period_in(session, app.settings, newsletter, app.now())


def next_period_in(
    session: Session, settings: Settings, newsletter: NewsletterConfig, now: datetime
) -> datetime:
    """`next_period_for` within a session the caller holds (reads only)."""
    current = current_period(settings, newsletter, now)
    if current > now:  # a schedule that never fired yet: its first moment is next
        return current
    if still_open(session, settings, newsletter, current, now):
        return current
    period = next_period(settings, newsletter, now)
    for _ in range(_MAX_AHEAD):
        issue = get_issue(session, newsletter.slug, period)
        if issue is None or issue.status != IssueStatus.SENT:
            return period
        period = next_period(settings, newsletter, period + timedelta(seconds=1))
    return period


def still_open(
    session: Session,
    settings: Settings,
    newsletter: NewsletterConfig,
    period: datetime,
    now: datetime,
) -> bool:
    """Whether the issue of a past `period` can still go out (so it, not the next, is next)."""
    issue = get_issue(session, newsletter.slug, period)
    if issue is not None and issue.status == IssueStatus.SENDING:
        return True  # a send in progress: resume it
    if issue is not None and issue.status in (IssueStatus.SENT, IssueStatus.SKIPPED):
        return False
    run = _run(session, newsletter.slug, period)
    if run is not None:
        return run.outcome in OPEN_RUNS
    if issue is not None and issue.status == IssueStatus.APPROVED:
        return True  # an editor's approval is a decision to send it: it stays next until then
    grace = parse_duration(settings.scheduler.catch_up_grace)
    return now - period <= grace


@dataclass(frozen=True)
class SendTarget:
    """The issue a manual `digest send SLUG` works on, and whether sending it now is early."""

    period: datetime
    ahead: bool  # the upcoming period's issue, before its scheduled moment


def send_target(app: App, slug: str) -> SendTarget:
    """What `digest send SLUG` (and the demo) sends: the current period's issue while it can
    still go out, or once it went out (to resume it, or to say nothing is left); otherwise the
    next issue, which is ahead of its schedule (the CLI asks for `--ahead` before sending it)."""
    newsletter = app.settings.newsletter(slug)
    now = app.now()
    current = current_period(app.settings, newsletter, now)
    if current <= now:
        with app.session() as session:
            issue = get_issue(session, slug, current)
            gone = issue is not None and issue.status in OUT
            if gone or still_open(session, app.settings, newsletter, current, now):
                return SendTarget(current, ahead=False)
    upcoming = next_period_for(app, newsletter)
    return SendTarget(upcoming, ahead=upcoming > now)


def next_issue(app: App, slug: str) -> Issue:
    """Build or refresh the next issue (the draft the editor works on) and return it."""
    newsletter = app.settings.newsletter(slug)
    return build_issue(app, slug, next_period_for(app, newsletter))


def last_out(session: Session, slug: str) -> Issue | None:
    """The latest issue that went out or is going out (sending or sent)."""
    statement = (
        select(Issue)
        .where(Issue.newsletter == slug, col(Issue.status).in_(OUT))
        .order_by(col(Issue.period).desc())
    )
    return session.exec(statement).first()


@dataclass(frozen=True)
class PastPeriod:
    """One issue in a newsletter's history, with what became of it."""

    issue: Issue
    outcome: str  # sent, sending, skipped, missed, next (the issue being prepared)
    reason: str | None


def past(session: Session, settings: Settings, newsletter: NewsletterConfig, now: datetime,
         *, limit: int = 50) -> list[PastPeriod]:  # fmt: skip
    """The newsletter's issues, newest period first, each with its outcome: a past period never
    sent says why (the scheduler's missed reason, or that its moment passed without a send)."""
    issues = session.exec(
        select(Issue)
        .where(Issue.newsletter == newsletter.slug)
        .order_by(col(Issue.period).desc())
        .limit(limit)
    ).all()
    runs = {
        run.period: run
        for run in session.exec(
            select(ScheduleRun).where(
                ScheduleRun.newsletter == newsletter.slug,
                col(ScheduleRun.period).in_([i.period for i in issues]),
            )
        )
    }
    entries = []
    for issue in issues:
        outcome, reason = _outcome(
            session, settings, newsletter, issue, runs.get(issue.period), now
        )
        entries.append(PastPeriod(issue, outcome, reason))
    return entries


def _outcome(
    session: Session,
    settings: Settings,
    newsletter: NewsletterConfig,
    issue: Issue,
    run: ScheduleRun | None,
    now: datetime,
) -> tuple[str, str | None]:
    if issue.status in OUT:
        return str(issue.status), None
    if issue.status == IssueStatus.SKIPPED:
        return "skipped", issue.skip_reason
    period = datetime.fromisoformat(issue.period)
    if period > now or still_open(session, settings, newsletter, period, now):
        return "next", None
    if run is not None and run.outcome == RunOutcome.MISSED:
        return "missed", run.detail
    grace = settings.scheduler.catch_up_grace
    return "missed", f"its moment ({period_key(period)}) passed without a send (grace {grace})"


def _run(session: Session, slug: str, period: datetime) -> ScheduleRun | None:
    statement = select(ScheduleRun).where(
        ScheduleRun.newsletter == slug, ScheduleRun.period == period_key(period)
    )
    return session.exec(statement).first()
