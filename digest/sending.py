"""Sending an issue: freeze the audience, then let a few threads claim and send its batches.

The only place that knows both the ledger (`digest.ledger`) and the transports. A run can be
interrupted anywhere and run again: it resumes with the batches still pending, reports those a
dead sender left in flight as unknown (resent only with `retry_unknown`), and once everything is
final says there is nothing left to send. Several runs of the same issue, in one process or in
several on different hosts sharing PostgreSQL, split the batches between them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from digest import ledger, lint
from digest.app import App
from digest.config import NewsletterConfig
from digest.ledger import Claimer, delivery_counts
from digest.message import RecipientValues, recipient_values
from digest.models import DeliveryStatus, Issue, IssueStatus
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    RetryPolicy,
    SendResult,
    Transport,
    build_transport,
)
from subscribers import blocked_among, count_audience, normalize_email

__all__ = [
    "RateLimiter",
    "SendRefused",
    "SendReport",
    "delivery_counts",
    "send_issue",
    "send_test",
]

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0  # how often a sender refreshes its claims
LEASE = timedelta(minutes=2)  # a claim from another host not refreshed for this long is stale
TEST_PREFIX = "[TEST] "

Progress = Callable[[int, int], None]


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


class RateLimiter:
    """At most `rate` messages per second across every sending thread (0 = no limit).

    Paces whole batches: a batch of n waits until n/rate seconds after the previous one.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self, messages: int) -> None:
        if self.rate <= 0 or messages <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + messages / self.rate
        if start > now:
            self._sleep(start - now)


def _sendable_statuses(newsletter: NewsletterConfig) -> list[str]:
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
    if issue.status not in _sendable_statuses(newsletter):
        raise SendRefused(
            f"{name} is {issue.status}: {newsletter.slug} requires approval before sending "
            f"(digest issues approve {newsletter.slug})"
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


def _outgoing_message(app: App, issue: Issue, newsletter: NewsletterConfig) -> OutgoingMessage:
    return OutgoingMessage(
        issue_id=issue.id,
        newsletter=newsletter,
        subject=issue.subject or newsletter.title,
        html=issue.html,
        text=issue.text,
        headers={"X-Digest-Issue": str(issue.id)},
        date=app.now(),
    )


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
) -> SendReport:
    """Send (or resume sending) an issue to its frozen audience; see the module docstring.

    `limit` caps the recipients this run sends (a canary); `transport` and `policy` replace the
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
    policy = policy or RetryPolicy(max_attempts=settings.delivery.max_retries + 1)
    transport = transport or build_transport(settings, policy=policy)
    report = SendReport(issue_id=issue_id, transport=transport.name)
    claimer = Claimer.new()
    claimer.activate()
    try:
        batch_size = max(1, min(settings.delivery.batch_size, transport.max_batch_size))
        _prepare(app, issue, newsletter, claimer, batch_size, report, retry_failed, retry_unknown)
        with app.session() as session:
            todo = delivery_counts(session, issue_id)[DeliveryStatus.PENDING]
        report.already_done = todo == 0
        if todo:
            total = todo if limit is None else min(todo, max(limit, 0))
            run = _Run(
                app, issue, newsletter, transport, claimer, policy, limit, progress, total,
                batch_size,
            )  # fmt: skip
            run.execute()
            report.processed, report.batches = run.processed, run.batches
            report.errors = run.errors
    finally:
        claimer.deactivate()
        if own_transport:
            transport.close()
    with app.session() as session:
        ledger.finish_if_done(session, issue_id=issue_id, now=app.now())
    _fill_counts(app, report)
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
    """Freeze the audience if nobody has, mark dead senders' batches unknown, requeue on request."""
    issue_id = issue.id or 0
    if issue.status not in (IssueStatus.SENDING, IssueStatus.SENT):
        with app.session() as session:
            frozen = ledger.freeze(
                session,
                issue_id=issue_id,
                newsletter=newsletter.slug,
                from_statuses=_sendable_statuses(newsletter),
                batch_size=batch_size,
                now=app.now(),
            )
        if frozen:
            with app.session() as session:
                ledger.checkpoint(session)
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


def _fill_counts(app: App, report: SendReport) -> None:
    with app.session() as session:
        counts = delivery_counts(session, report.issue_id)
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
            report.pending = report.total = count_audience(session, newsletter.slug)
        report.issue_status = issue.status
    report.seconds = time.perf_counter() - started
    return report


class _Run:
    """The sending threads of one run, sharing a quota (`limit`), a rate limiter and progress."""

    def __init__(
        self,
        app: App,
        issue: Issue,
        newsletter: NewsletterConfig,
        transport: Transport,
        claimer: Claimer,
        policy: RetryPolicy,
        limit: int | None,
        progress: Progress | None,
        total: int,
        batch_size: int,
    ) -> None:
        self.app = app
        self.batch_size = batch_size
        self.issue_id = issue.id or 0
        self.newsletter = newsletter
        self.transport = transport
        self.claimer = claimer
        self.message = _outgoing_message(app, issue, newsletter)
        self.values = RecipientValues(app.settings, newsletter, app.signing_key(), app.now())
        self.limiter = RateLimiter(
            app.settings.delivery.rate_limit, clock=time.monotonic, sleep=policy.sleep
        )
        self.quota = limit
        self.progress = progress
        self.total = total
        self.processed = 0
        self.batches = 0
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def execute(self) -> None:
        workers = [
            threading.Thread(target=self._work, name=f"digest-send-{i}", daemon=True)
            for i in range(max(1, self.app.settings.delivery.concurrency))
        ]
        beat = threading.Thread(target=self._heartbeat, name="digest-heartbeat", daemon=True)
        beat.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self._stop.set()
        beat.join()
        if self.failure is not None:
            raise self.failure

    def _reserve(self) -> int | bool | None:
        """Reserve what the next claim may take from the quota: None = any, False = stop."""
        with self._lock:
            if self._stop.is_set():
                return False
            if self.quota is None:
                return None
            if self.quota <= 0:
                return False
            reserved = min(self.quota, self.batch_size)
            self.quota -= reserved
            return reserved

    def _give_back(self, unused: int) -> None:
        with self._lock:
            if self.quota is not None:
                self.quota += unused

    def _work(self) -> None:
        try:
            while True:
                reserved = self._reserve()
                if reserved is False:
                    return
                if not self._one_batch(None if reserved is None else int(reserved)):
                    return
        except BaseException as exc:  # a bug or a database outage: stop every thread, re-raise
            with self._lock:
                self.failure = self.failure or exc
            self._stop.set()

    def _one_batch(self, quota: int | None) -> bool:
        app = self.app
        with app.session() as session:
            batch_id = ledger.claim(
                session, issue_id=self.issue_id, claimer=self.claimer, now=app.now()
            )
        batch = None
        if batch_id is not None:
            try:
                with app.session() as session:
                    batch = ledger.open_batch(
                        session,
                        issue_id=self.issue_id,
                        batch_id=batch_id,
                        now=app.now(),
                        max_recipients=quota,
                        blocked=lambda ids: blocked_among(session, self.newsletter.slug, ids),
                    )
            except BaseException:
                with app.session() as session:
                    ledger.release(session, batch_id=batch_id, claimer=self.claimer, now=app.now())
                raise
        taken = 0 if batch is None else len(batch.recipients) + batch.skipped
        if quota is not None:
            self._give_back(quota - taken)
        if batch is None:
            return False
        sent_to_transport = False
        try:
            results: list[SendResult] = []
            if batch.recipients:
                outgoing = self._outgoing(batch)
                self.limiter.acquire(len(batch.recipients))
                sent_to_transport = True
                results = self.transport.send(outgoing)
            with app.session() as session:
                ledger.record(
                    session, batch=batch, results=results, claimer=self.claimer, now=app.now()
                )
        except BaseException:
            if not sent_to_transport:
                with app.session() as session:
                    ledger.release(
                        session, batch_id=batch.batch_id, claimer=self.claimer, now=app.now()
                    )
            raise  # after the transport, the batch stays in flight: the next run says unknown
        self._note(batch, results, taken)
        return True

    def _outgoing(self, batch: ledger.ClaimedBatch) -> OutgoingBatch:
        make_values = self.values
        recipients = [
            OutgoingRecipient(
                r.delivery_id,
                r.subscriber_id,
                r.email,
                r.name,
                make_values(r.subscriber_id, r.name),
            )
            for r in batch.recipients
        ]
        return OutgoingBatch(self.message, recipients, batch.batch_id)

    def _note(self, batch: ledger.ClaimedBatch, results: list[SendResult], taken: int) -> None:
        with self._lock:
            self.processed += taken
            self.batches += 1
            fresh = {r.error for r in results if r.error and not r.accepted} - set(self.errors)
            self.errors.extend(sorted(fresh)[: max(0, 5 - len(self.errors))])
            done = self.processed
        if self.progress is not None:
            self.progress(min(done, self.total), self.total)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with self.app.session() as session:
                    ledger.heartbeat(
                        session, issue_id=self.issue_id, claimer=self.claimer, now=self.app.now()
                    )
            except Exception as exc:  # a missed beat only makes other hosts wait longer
                log.warning("heartbeat failed: %s", exc)


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
    values = recipient_values(settings, newsletter.slug, 0, None, app.signing_key(), app.now())
    base = _outgoing_message(app, issue, newsletter)
    message = OutgoingMessage(
        issue_id=None,
        newsletter=newsletter,
        subject=TEST_PREFIX + base.subject,
        html=base.html,
        text=base.text,
        headers={"X-Digest-Issue": str(issue_id), "X-Digest-Test": "1"},
        date=base.date,
    )
    transport = build_transport(settings)
    try:
        (result,) = transport.send(
            OutgoingBatch(message, [OutgoingRecipient(None, 0, address, None, values)])
        )
    finally:
        transport.close()
    return result
