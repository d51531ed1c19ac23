"""Sending an issue: freeze the audience, then let a few threads claim and send its batches.

The only place that knows both the ledger (`digest.sending.ledger`) and the transports. A run can be
interrupted anywhere and run again: it resumes with the batches still pending, reports those a
dead sender left in flight as unknown (resent only with `retry_unknown`), and once everything is
final says there is nothing left to send. Several runs of the same issue, in one process or in
several on different hosts sharing PostgreSQL, split the batches between them.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlmodel import Session

from digest.app import App
from digest.config import NewsletterConfig
from digest.mail.message import message_domain, recipient_values, tokens_of
from digest.rendering import lint
from digest.sending import counts as ledger_counts
from digest.sending import freeze, ledger, local_time, snapshot
from digest.sending.claimer import Claimer
from digest.sending.counts import delivery_counts
from digest.sending.fleet_rate import shared_limiter
from digest.sending.run import LEASE, Progress, RateLimiter, SendRun, outgoing_message
from digest.storage.models import DeliveryStatus, Issue, IssueStatus
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    RetryPolicy,
    SendResult,
    Transport,
    build_transport,
)
from subscribers import count_audience, normalize_email

if TYPE_CHECKING:
    from digest.issues.variant_renders import VariantRenders
    from digest.sending.send_processes import SendProcesses

__all__ = [
    "RateLimiter",
    "SendRefused",
    "SendReport",
    "delivery_counts",
    "send_issue",
    "send_test",
    "unfrozen",
]

TEST_PREFIX = "[TEST] "
RENDER_PROCESS_AUDIENCE = 20_000  # personal issues: render variants in a process from here
# Personal issues: from this many readers still to freeze, the freeze plans its pages in a
# process of its own, which renders the variants too (`freeze_process`): the senders keep this
# interpreter (bench_personal.py, 1M readers on SQLite: 1.58x → 1.4x the single newsletter).
FREEZE_PROCESS_AUDIENCE: int | None = 100_000


class SendRefused(Exception):
    """The issue cannot be sent as it stands (not approved, skipped, too large…)."""


@dataclass
class SendReport:
    """The state of an issue's deliveries after a run, and what this run did."""

    issue_id: int
    accepted: int = 0
    failed: int = 0
    skipped: int = 0
    unknown: int = 0
    pending: int = 0
    already_done: bool = False  # nothing was left to send when the run started
    dry_run: bool = False
    seconds: float = 0.0
    sending: int = 0  # in flight in another live sender
    total: int = 0  # deliveries of the issue (the frozen audience)
    processed: int = 0  # recipients this run handed to the transport or skipped
    batches: int = 0  # batches this run sent
    found_unknown: list[int] = field(default_factory=list)  # batches left in flight by dead senders
    requeued: int = 0  # deliveries put back by retry_failed / retry_unknown
    freeze_seconds: float = 0.0  # of `seconds`, the time spent freezing the audience
    issue_status: str = ""
    transport: str = ""
    errors: list[str] = field(default_factory=list)  # distinct provider messages, a few

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "failed": self.failed,
            "skipped": self.skipped,
            "unknown": self.unknown,
            "pending": self.pending,
            "sending": self.sending,
        }


def sendable_statuses(newsletter: NewsletterConfig) -> list[str]:
    if newsletter.requires_approval:
        return [IssueStatus.APPROVED]
    return [IssueStatus.DRAFT, IssueStatus.APPROVED]


def check_sendable(issue: Issue, newsletter: NewsletterConfig, *, force: bool) -> None:
    """Raise SendRefused when an issue not yet sending may not start; `force` skips lint."""
    if issue.status in (IssueStatus.SENDING, IssueStatus.SENT):
        return
    name = f"issue {issue.id} of {issue.newsletter} ({issue.period})"
    if issue.status == IssueStatus.SKIPPED:
        raise SendRefused(f"{name} was skipped: {issue.skip_reason or 'no reason recorded'}")
    if issue.status not in sendable_statuses(newsletter):
        raise SendRefused(
            f"{name} is {issue.status}: {newsletter.slug} requires approval before sending "
            f"(digest issue approve {newsletter.slug})"
        )
    if not issue.html.strip() or not issue.text.strip():
        raise SendRefused(f"{name} has not been rendered")
    if force:
        return
    size = issue.html_bytes or len(issue.html.encode("utf-8"))
    if size > lint.MAX_BYTES:
        raise SendRefused(
            f"{name}: HTML is {size // 1024} KB, over the {lint.MAX_BYTES // 1024} KB at which "
            "Gmail clips the message (hiding the unsubscribe link); shorten it or use --force"
        )
    errors = [f for f in issue.lint if f.get("level") == lint.ERROR]
    if errors:
        found = "; ".join(f"{f.get('code')}: {f.get('message')}" for f in errors[:3])
        raise SendRefused(f"{name} has lint errors ({found}); fix them or use --force")


def send_issue(
    app: App,
    issue_id: int,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    retry_failed: bool = False,
    retry_unknown: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    transport: Transport | None = None,
    policy: RetryPolicy | None = None,
    timezones: Collection[str] | None = None,
    stop: threading.Event | None = None,
) -> SendReport:
    """Send (or resume sending) an issue to its frozen audience; see the module docstring.

    `limit` caps the recipients this run sends (a canary); `timezones` sends only to recipients
    in those zones (subscriber-local delivery; the rest stay pending); `stop`, once set, ends the
    run after the batches in flight (the next run resumes). `transport` and `policy` replace the
    configured ones (tests, benchmarks). Raises SendRefused when the issue may not be sent.
    """
    started = time.perf_counter()
    settings = app.settings
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        if issue is None:
            raise SendRefused(f"no issue with id {issue_id}")
    newsletter = settings.newsletter(issue.newsletter)
    check_sendable(issue, newsletter, force=force)
    if dry_run:
        return _dry_run(app, issue, newsletter, started)

    own_transport = transport is None
    # Helper processes build their own transport and policy: not for ones handed in (tests).
    helpable = own_transport and policy is None
    policy = policy or RetryPolicy(max_attempts=settings.delivery.max_retries + 1)
    limiter = shared_limiter(
        app.engine,
        transport.name if transport is not None else str(settings.delivery.transport),
        settings.delivery.rate_limit,
        sleep=policy.sleep,
    )  # PostgreSQL: the rate and a provider's 429 pause are the fleet's
    if limiter is not None and policy.on_pause is None:
        policy = dataclasses.replace(policy, on_pause=limiter.pause)
    transport = transport or build_transport(settings, policy=policy)
    report = SendReport(issue_id=issue_id, transport=transport.name)
    claimer = Claimer.new()
    claimer.activate()
    try:
        batch_size = max(1, min(settings.delivery.batch_size, transport.max_batch_size))
        _prepare(app, issue, newsletter, claimer, batch_size, report, retry_failed, retry_unknown)
        zones = None
        if timezones is not None:
            zones = local_time.claimable(timezones, str(settings.newsletter_timezone(newsletter)))
        with app.session() as session:
            todo = ledger_counts.pending_recipients(session, issue_id, zones)
            still_freezing = freeze.freezing_after(session, issue_id) is not None
            if still_freezing:  # the rest of the audience, for the progress total
                todo += unfrozen(
                    session, issue_id, newsletter.slug, settings.replaced_by(newsletter.slug)
                )
        report.already_done = todo == 0 and not still_freezing  # (in the zones asked for)
        if (todo or still_freezing) and not (stop is not None and stop.is_set()):
            total = todo if limit is None else min(todo, max(limit, 0))
            variants = _variant_renders(app, issue, newsletter, todo, still_freezing)
            step = None
            if still_freezing:
                step = _freeze_step(app, issue_id, newsletter, batch_size, variants)
            helpers = _helpers(app, newsletter, transport, policy, todo if helpable else 0)
            run = SendRun(
                app, issue, newsletter, transport, claimer, policy, limit, progress, total,
                batch_size, zones=zones, stop=stop, freeze_step=step, limiter=limiter,
                variants=variants, helpers=helpers,
            )  # fmt: skip
            try:
                run.execute()
            finally:
                if variants is not None:
                    variants.close()
                if helpers is not None:
                    helpers.close()
            report.processed, report.batches = run.processed, run.batches
            report.errors = run.errors
            report.freeze_seconds = run.freeze_seconds
    finally:
        claimer.deactivate()
        if own_transport:
            transport.close()
    with app.session() as session:
        # Kept by the database as rows and batches change (migration 0012): no scan of the
        # deliveries (a million rows: 0.3 s, 1.1 s for a personal issue's scattered batches).
        counts = snapshot.delivery_counts(session, issue_id)
        ledger.finish_if_done(session, issue_id=issue_id, now=app.now(), counts=counts)
    _fill_counts(app, report, counts)
    report.seconds = time.perf_counter() - started
    return report


def _prepare(
    app: App,
    issue: Issue,
    newsletter: NewsletterConfig,
    claimer: Claimer,
    batch_size: int,
    report: SendReport,
    retry_failed: bool,
    retry_unknown: bool,
) -> None:
    """Start the send if nobody has, mark dead senders' batches unknown, requeue on request."""
    issue_id = issue.id or 0
    if issue.status not in (IssueStatus.SENDING, IssueStatus.SENT):
        with app.session() as session:
            freeze.start(
                session,
                issue_id=issue_id,
                from_statuses=sendable_statuses(newsletter),
                now=app.now(),
            )
    with app.session() as session:
        report.found_unknown = ledger.release_stale(
            session, issue_id=issue_id, me=claimer, now=app.now(), lease=LEASE
        )
    for wanted, status in (
        (retry_failed, DeliveryStatus.FAILED),
        (retry_unknown, DeliveryStatus.UNKNOWN),
    ):
        if wanted:
            with app.session() as session:
                report.requeued += ledger.requeue(
                    session, issue_id=issue_id, status=status, batch_size=batch_size, now=app.now()
                )


def _helpers(
    app: App, newsletter: NewsletterConfig, transport: Transport, policy: RetryPolicy,
    audience: int,
) -> SendProcesses | None:  # fmt: skip
    """Helper processes for the configured transport (`delivery.send_processes`), or None.
    Not for SMTP (it streams, see `stream`); `audience` 0 (a transport or policy handed in,
    which live here): none."""
    from digest.sending import send_processes

    if not audience or getattr(transport, "confirms_each", False):
        return None
    personal = newsletter.personal
    count = send_processes.helpers_for(app.settings, audience, os.cpu_count(), personal=personal)
    if not count:
        return None
    threads = -(-max(1, app.settings.delivery.concurrency) // count)
    return send_processes.SendProcesses(app.settings, count, threads, policy.on_pause)


def _variant_renders(
    app: App, issue: Issue, newsletter: NewsletterConfig, audience: int, freezing: bool
) -> VariantRenders | None:
    """A personal issue's variant renderer; for a large audience it renders in a process of
    its own (starting one costs about a second: not worth it for a few thousand readers), the
    freezing process when there is one (`remote`)."""
    if not newsletter.personal:
        return None
    from digest.issues.variant_renders import VariantRenders

    remote = (
        freezing and FREEZE_PROCESS_AUDIENCE is not None and (audience >= FREEZE_PROCESS_AUDIENCE)
    )
    return VariantRenders(app, issue, processes=audience >= RENDER_PROCESS_AUDIENCE, remote=remote)


def _freeze_step(
    app: App,
    issue_id: int,
    newsletter: NewsletterConfig,
    batch_size: int,
    variants: VariantRenders | None = None,
) -> Callable[[], bool]:
    """One page of the freeze per call, in its own transaction; False once nothing is left."""
    zones = None
    if newsletter.send_in_subscriber_timezone:  # batches per zone, whoever sends now
        with app.session() as session:
            default = str(app.settings.newsletter_timezone(newsletter))
            zones = local_time.zoning(session, newsletter.slug, default)
    if newsletter.personal:
        return _personal_freeze_step(app, issue_id, newsletter, batch_size, zones, variants)
    replaced_by = app.settings.replaced_by(newsletter.slug)

    def step() -> bool:
        with app.session() as session:
            frozen = freeze.freeze_next_page(
                session,
                issue_id=issue_id,
                newsletter=newsletter.slug,
                batch_size=batch_size,
                now=app.now(),
                page_size=app.settings.delivery.freeze_page,
                zones=zones,
                message_domain=message_domain(app.settings),
                replaced_by=replaced_by,
            )
        if frozen is None:
            with app.session() as session:
                freeze.checkpoint(session)
        return frozen is not None

    return step


def _personal_freeze_step(
    app: App,
    issue_id: int,
    newsletter: NewsletterConfig,
    batch_size: int,
    zones: freeze.Zoning | None,
    variants: VariantRenders | None,
) -> Callable[[], bool]:
    """`_freeze_step` for a personal issue: readers' variants, batches per variant (each new
    variant handed to `variants` to render before its first batch is claimed). When `variants`
    is `remote` (FREEZE_PROCESS_AUDIENCE readers and more), the pages are planned and the
    variants rendered by a process of its own; without `variants`, from that many readers
    the pages are planned there."""
    from digest.sending.freeze_process import FreezeProcess
    from digest.sending.personal_freeze import PersonalFreezer

    on_variant = variants.submit if variants is not None else None
    page_size, domain = app.settings.delivery.freeze_page, message_domain(app.settings)
    freezer: FreezeProcess | PersonalFreezer
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        if variants is not None:
            large = variants.remote
        else:
            large = FREEZE_PROCESS_AUDIENCE is not None and (
                unfrozen(session, issue_id, newsletter.slug) >= FREEZE_PROCESS_AUDIENCE
            )
    if large:
        freezer = FreezeProcess(
            app, issue_id, batch_size=batch_size, page_size=page_size, zones=zones,
            message_domain=domain, on_variant=on_variant, renders=variants,
        )  # fmt: skip
    else:
        freezer = PersonalFreezer(
            app, issue, newsletter, batch_size=batch_size, page_size=page_size, zones=zones,
            message_domain=domain, on_variant=on_variant,
        )  # fmt: skip

    def step() -> bool:
        try:
            if freezer.step() is not None:
                return True
        except BaseException:
            if isinstance(freezer, FreezeProcess):
                freezer.close()
            raise
        if isinstance(freezer, FreezeProcess):
            freezer.close()
        with app.session() as session:
            freeze.checkpoint(session)
        return False

    step.remote = large  # type: ignore[attr-defined]
    if isinstance(freezer, FreezeProcess):  # SendRun closes it when its freeze thread ends
        step.close = freezer.close  # type: ignore[attr-defined]
    return step


def unfrozen(
    session: Session, issue_id: int, newsletter: str, replaced_by: Sequence[str] = ()
) -> int:
    """How many of the audience the freeze has not reached yet (0 once it is done)."""
    after = freeze.freezing_after(session, issue_id)
    if after is None:
        return 0
    if after < 0:  # a personal issue's batches are planned: those not yet filled
        from digest.sending.personal_batches import planned_readers

        return planned_readers(session, issue_id)
    return count_audience(session, newsletter, after_id=after, replaced_by=replaced_by)


def _fill_counts(app: App, report: SendReport, counts: dict[str, int] | None = None) -> None:
    with app.session() as session:
        if counts is None:
            counts = snapshot.delivery_counts(session, report.issue_id)
        issue = session.get(Issue, report.issue_id)
    report.accepted = counts[DeliveryStatus.ACCEPTED] + sum(
        counts.get(s, 0)
        for s in (
            DeliveryStatus.DELIVERED,
            DeliveryStatus.BOUNCED,
            DeliveryStatus.DROPPED,
            DeliveryStatus.DEFERRED,
        )
    )
    report.failed = counts[DeliveryStatus.FAILED]
    report.skipped = counts[DeliveryStatus.SKIPPED]
    report.unknown = counts[DeliveryStatus.UNKNOWN]
    report.pending = counts[DeliveryStatus.PENDING]
    with app.session() as session:  # still to be frozen: waiting as much as the pending
        slug = issue.newsletter if issue else ""
        replaced = app.settings.replaced_by(slug) if issue else []
        report.pending += unfrozen(session, report.issue_id, slug, replaced)
    report.sending = counts[DeliveryStatus.SENDING]
    report.total = sum(counts.values())
    report.issue_status = issue.status if issue else ""


def _dry_run(app: App, issue: Issue, newsletter: NewsletterConfig, started: float) -> SendReport:
    """What a send would do now, writing nothing."""
    report = SendReport(
        issue_id=issue.id or 0, dry_run=True, transport=app.settings.delivery.transport
    )
    if issue.status in (IssueStatus.SENDING, IssueStatus.SENT):
        _fill_counts(app, report)
        report.already_done = report.pending == 0
    else:
        with app.session() as session:
            report.pending = report.total = count_audience(
                session, newsletter.slug, replaced_by=app.settings.replaced_by(newsletter.slug)
            )
        report.issue_status = issue.status
    report.seconds = time.perf_counter() - started
    return report


def send_test(app: App, issue_id: int, to_address: str) -> SendResult:
    """Send the issue to one address for an editor to look at: "[TEST] " subject, sample links.

    Goes through the configured transport, writes no Delivery row and counts nowhere. The links
    are signed for subscriber 0, which does not exist: clicking them unsubscribes no one.
    """
    settings = app.settings
    try:
        address = normalize_email(to_address)
    except ValueError as exc:
        raise SendRefused(f"--to: not a usable address {to_address!r}: {exc}") from exc
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        if issue is None:
            raise SendRefused(f"no issue with id {issue_id}")
    newsletter = settings.newsletter(issue.newsletter)
    if not issue.html.strip():
        raise SendRefused(f"issue {issue_id} has not been rendered")
    tokens = tokens_of(settings, issue)
    values = recipient_values(
        settings,
        newsletter.slug,
        0,
        None,
        app.signing_key(),
        app.now(),
        name_fallback=app.renderer.name_fallback(newsletter),
        tokens=tokens,
    )
    base = outgoing_message(app, issue, newsletter)
    message = OutgoingMessage(
        issue_id=None,
        newsletter=newsletter,
        subject=TEST_PREFIX + base.subject,
        html=base.html,
        text=base.text,
        headers={"X-Digest-Issue": str(issue_id), "X-Digest-Test": "1"},
        date=base.date,
        tokens=tokens,
    )
    transport = build_transport(settings)
    try:
        (result,) = transport.send(
            OutgoingBatch(message, [OutgoingRecipient(None, 0, address, None, values)])
        )
    finally:
        transport.close()
    return result
