"""The scheduler's rules, as pure functions of the configuration and an explicit `now`.

Which periods of a newsletter are due, which of them a catch-up fires and which it records as
missed, when an approval is too late, when a failure is retried, and what a send's report
means for the period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from digest import cron
from digest.config import NewsletterConfig, Settings, parse_duration
from digest.issues.periods import period_key
from digest.sending import local_time
from digest.storage.models import RunOutcome, ScheduleRun

# Outcomes a later tick still works on.
OPEN = (RunOutcome.RUNNING, RunOutcome.AWAITING_APPROVAL, RunOutcome.FAILED)
# How far back the first-ever tick and a tick after long downtime look for periods.
MAX_LOOKBACK = timedelta(days=31)
MAX_PERIODS = 1000
# A failed run is retried after 1, 2, 4, 8 minutes, then left failed.
MAX_ATTEMPTS = 5


class SendSummary(Protocol):
    """What `digest.sending.send.send_issue` reports (its `SendReport`)."""

    @property
    def accepted(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def unknown(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def already_done(self) -> bool: ...


@dataclass(frozen=True)
class Candidate:
    period: datetime
    opens_at: datetime  # when it is due: the period, or the first subscriber's local time


@dataclass(frozen=True)
class CatchUp:
    fire: Candidate | None
    missed: list[tuple[Candidate, str]]


def plan_catch_up(candidates: Sequence[Candidate], now: datetime, grace: timedelta) -> CatchUp:
    """Fire the newest due period within the grace; the others are recorded as missed."""
    due = sorted((c for c in candidates if c.opens_at <= now), key=lambda c: c.period)
    timely = [c for c in due if now - c.opens_at <= grace]
    fire = timely[-1] if timely else None
    missed = [
        (
            c,
            f"not run within the catch-up grace ({human_duration(grace)}): no scheduler ran",
        )
        for c in due
        if c not in timely
    ]
    if fire is not None:
        missed += [(c, f"coalesced into the catch-up of {period_key(fire.period)}") for c in timely]
        missed = [(c, why) for c, why in missed if c != fire]
    return CatchUp(fire, sorted(missed, key=lambda m: m[0].period))


def candidate_periods(
    settings: Settings,
    newsletter: NewsletterConfig,
    now: datetime,
    after: datetime | None,
    zones: frozenset[str] | None,
) -> list[Candidate]:
    """Periods after `after` (the last recorded one) that are due at `now`."""
    grace = parse_duration(settings.scheduler.catch_up_grace)
    zone = settings.newsletter_timezone(newsletter)
    start = max(after if after is not None else now - grace, now - MAX_LOOKBACK)
    lead = local_time.MAX_LEAD if zones else timedelta(0)
    periods = cron.fire_times(newsletter.schedule, zone, start, now + lead, limit=MAX_PERIODS)
    candidates = []
    for period in periods:
        opens = local_time.opens_at(period, zone, zones) if zones else period
        if opens <= now:
            candidates.append(Candidate(period, opens))
    return candidates


def approval_deadline(settings: Settings, newsletter: NewsletterConfig) -> timedelta | None:
    value = newsletter.approval_deadline or settings.scheduler.approval_deadline
    return parse_duration(value) if value else None


def retry_due(run: ScheduleRun, now: datetime, opens_at: datetime, grace: timedelta) -> bool:
    """A failed run is retried with backoff while within the grace, a few times."""
    if run.attempts >= MAX_ATTEMPTS or now - opens_at > grace:
        return False
    return now >= run.at + timedelta(minutes=2 ** max(run.attempts - 1, 0))


def send_outcome(
    report: SendSummary, *, stopped: bool, local: bool, workers: int = 0
) -> tuple[RunOutcome, str]:
    """What a send's report means for its period (SLUG stands for the newsletter); `workers`:
    the scheduler handed the send to that many live `digest worker`s."""
    in_flight = int(getattr(report, "sending", 0))  # batches another live sender holds
    counts = (
        f"accepted {report.accepted}, skipped {report.skipped}, failed {report.failed}, "
        f"unknown {report.unknown}, pending {report.pending}"
    )
    if workers and (report.pending or in_flight):
        return RunOutcome.RUNNING, f"{workers} workers are sending it ({counts})"
    if report.pending:
        if stopped:
            return RunOutcome.RUNNING, f"stopped between batches; the next run resumes ({counts})"
        if local:
            return RunOutcome.RUNNING, f"waiting for subscribers' local time ({counts})"
        return RunOutcome.RUNNING, f"partly sent; the next run resumes ({counts})"
    if in_flight:
        return RunOutcome.RUNNING, f"{in_flight} in flight in another sender ({counts})"
    if report.unknown:
        return RunOutcome.FAILED, (
            f"{report.unknown} deliveries in an unknown state (a sender stopped mid-batch): "
            f"check the provider, then `digest send SLUG --retry-unknown` ({counts})"
        )
    if report.failed:
        return RunOutcome.SENT, f"sent; `digest send SLUG --retry-failed` retries ({counts})"
    return RunOutcome.SENT, counts


def human_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
