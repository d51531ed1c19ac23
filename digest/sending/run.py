"""The sending threads of one run: claim a batch, check who may still be mailed, send, record.

Several threads keep requests in flight (`[delivery] concurrency`), share an optional rate
limit and the run's `--limit` quota, and refresh their claims (the heartbeat other hosts read).
A thread that hits a bug or a database outage stops them all; a batch it had claimed goes back
to pending if the transport never saw it, and is left in flight (unknown to the next run) if
it may have gone out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING

from digest.app import App
from digest.config import NewsletterConfig
from digest.mail.message import RecipientValues, tokens_of
from digest.rendering.personalize import Tokens
from digest.sending import ledger
from digest.sending.claimer import Claimer
from digest.sending.write_turns import NoTurns, WriteTurns
from digest.storage.models import Issue
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    RetryPolicy,
    SendResult,
    Transport,
)

if TYPE_CHECKING:
    from digest.issues.variant_renders import VariantRenders
    from digest.sending.fleet_rate import FleetRateLimiter
    from digest.sending.send_processes import SendProcesses

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0  # how often a sender refreshes its claims
LEASE = timedelta(minutes=2)  # a claim from another host not refreshed for this long is stale
VARIANTS_KEPT = 64  # personal issues: variant messages kept in memory (a stored render reloads)
PAGE_PAUSE = 0.002  # seconds the freezer steps aside between two pages

Progress = Callable[[int, int], None]


def outgoing_message(app: App, issue: Issue, newsletter: NewsletterConfig) -> OutgoingMessage:
    return OutgoingMessage(
        issue_id=issue.id,
        newsletter=newsletter,
        subject=issue.subject or newsletter.title,
        html=issue.html,
        text=issue.text,
        headers={"X-Digest-Issue": str(issue.id)},
        date=app.now(),
        tokens=tokens_of(app.settings, issue),
    )


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


class SendRun:
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
        *,
        zones: Collection[str | None] | None = None,
        stop: threading.Event | None = None,
        freeze_step: Callable[[], bool] | None = None,
        limiter: RateLimiter | FleetRateLimiter | None = None,
        variants: VariantRenders | None = None,
        helpers: SendProcesses | None = None,
    ) -> None:
        self.app = app
        # Sign, build and send batches in helper processes (None: with `transport`, here).
        self.helpers = helpers
        # Personal newsletters: renders each variant once (the freeze starts them).
        self.variants = variants
        # Freezes one more page of the audience per call while the workers send the pages
        # already frozen; None when the audience is frozen (see digest.sending.freeze).
        self.freeze_step = freeze_step
        self.freeze_seconds = 0.0
        self._freezing = freeze_step is not None
        self._pages = 0  # pages frozen by this run: a worker finding no batch waits for the next
        self._page_frozen = threading.Condition()
        self.zones = zones  # claim only batches of these time zones (None: any)
        self.requested_stop = stop  # the caller's: checked before each claim
        self.batch_size = batch_size
        self.issue_id = issue.id or 0
        self.newsletter = newsletter
        self.transport = transport
        self.claimer = claimer
        self.issue = issue
        self.replaced_by = app.settings.replaced_by(newsletter.slug)
        self.message = outgoing_message(app, issue, newsletter)
        # Read once per run: the renderer reads its label files on every call (templates may
        # change under a long-lived server), which a personal issue's variants paid each time.
        self._name_fallback = app.renderer.name_fallback(newsletter)
        self.values = self._values(self.message.tokens)
        # Personal newsletters: variant id → its message and token values, built at its first
        # batch (the variant rendered then if no one has yet).
        self._variants: dict[int, tuple[OutgoingMessage, RecipientValues]] = {}
        self._variants_lock = threading.Lock()
        # PostgreSQL: one rate for every sender of the database (digest.sending.fleet_rate).
        self.limiter = limiter or RateLimiter(
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
        # SQLite takes one writer at a time: this run's threads queue for turns, the senders'
        # before the freeze's (digest.sending.write_turns).
        sqlite = app.engine.dialect.name == "sqlite"
        self._writing: WriteTurns | NoTurns = WriteTurns() if sqlite else NoTurns()

    def execute(self) -> None:
        workers = [
            threading.Thread(target=self._work, name=f"digest-send-{i}", daemon=True)
            for i in range(max(1, self.app.settings.delivery.concurrency))
        ]
        beat = threading.Thread(target=self._heartbeat, name="digest-heartbeat", daemon=True)
        beat.start()
        freezer = threading.Thread(target=self._freeze, name="digest-freeze", daemon=True)
        if self._freezing:
            freezer.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        self._stop.set()  # (a --limit run may end before the freeze: the next run goes on)
        beat.join()
        if freezer.is_alive():
            freezer.join()
        if self.failure is not None:
            raise self.failure

    def _freeze(self) -> None:
        """Freeze the audience page by page until done or stopped, waking idle workers."""
        started = time.perf_counter()
        try:
            while not self._stopping():
                # A freeze run by another process takes SQLite's lock itself, for its writes
                # only: holding this run's lock over its whole page would idle the senders.
                remote = getattr(self.freeze_step, "remote", False)
                with nullcontext() if remote else self._writing.background():
                    more = self.freeze_step() if self.freeze_step else False
                with self._page_frozen:
                    self._pages += 1
                    self._freezing = more
                    self._page_frozen.notify_all()
                if not more:
                    return
                # Let the workers woken by this page take the write lock (SQLite) before the
                # next page does: a lock released and retaken at once is seldom handed over.
                self._stop.wait(PAGE_PAUSE)
        except BaseException as exc:  # as a worker's failure: stop every thread, re-raise
            with self._lock:
                self.failure = self.failure or exc
            self._stop.set()
        finally:
            self.freeze_seconds = time.perf_counter() - started
            close = getattr(self.freeze_step, "close", None)
            if close is not None:  # a freezing process: stopped here, whoever waits told
                close()
            with self._page_frozen:
                self._freezing = False
                self._page_frozen.notify_all()

    def _stopping(self) -> bool:
        return self._stop.is_set() or bool(self.requested_stop and self.requested_stop.is_set())

    def _wait_for_a_page(self, seen: int) -> bool:
        """No batch to claim: while the freeze goes on, wait for its next page (True). `seen` is
        the page count before the claim: a page frozen since then is worth another claim."""
        with self._page_frozen:
            if self._pages != seen:
                return True
            if not self._freezing:
                return False
            self._page_frozen.wait_for(
                lambda: self._pages != seen or not self._freezing or self._stopping(), timeout=1.0
            )
            return True

    def _reserve(self) -> int | bool | None:
        """Reserve what the next claim may take from the quota: None = any, False = stop."""
        with self._lock:
            if self._stopping():
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
        if getattr(self.transport, "confirms_each", False):  # SMTP: see digest.sending.stream
            from digest.sending import stream

            return stream.one_batch(self, quota)
        app = self.app
        seen = self._pages
        with self._writing, app.engine.begin() as db:
            batch_id = ledger.claim(
                db, issue_id=self.issue_id, claimer=self.claimer, now=app.now(),
                zones=self.zones, by_variant=self.newsletter.personal,
            )  # fmt: skip
        batch = None
        if batch_id is not None:
            try:
                with app.engine.begin() as db:
                    batch = ledger.open_batch(
                        db,
                        issue_id=self.issue_id,
                        batch_id=batch_id,
                        now=app.now(),
                        newsletter=self.newsletter.slug,
                        max_recipients=quota,
                        replaced_by=self.replaced_by,
                    )
            except BaseException:
                with app.session() as session:
                    ledger.release(session, batch_id=batch_id, claimer=self.claimer, now=app.now())
                raise
        taken = 0 if batch is None else len(batch.recipients) + batch.skipped
        if quota is not None:
            self._give_back(quota - taken)
        if batch is None:
            return self._wait_for_a_page(seen)
        sent_to_transport = False
        try:
            results: list[SendResult] = []
            if batch.recipients and self.helpers is not None:
                from digest.sending.send_processes import NotHandedOver  # (start-up: lazily)

                message, values = self.message_for(batch.variant_id)
                rows = [(r.delivery_id, r.subscriber_id, r.email, r.name, r.message_id)
                        for r in batch.recipients]  # fmt: skip
                self.limiter.acquire(len(rows))
                sent_to_transport = True
                try:
                    results = self.helpers.send(
                        batch.variant_id, message, values, batch.batch_id, rows
                    )
                except NotHandedOver:  # the helper was gone before it got the batch
                    sent_to_transport = False
                    raise
            elif batch.recipients:
                outgoing = self._outgoing(batch)
                self.limiter.acquire(len(batch.recipients))
                sent_to_transport = True
                results = self.transport.send(outgoing)
            with self._writing, app.engine.begin() as db:
                ledger.record(db, batch=batch, results=results, claimer=self.claimer, now=app.now())
        except BaseException:
            if not sent_to_transport:
                with app.session() as session:
                    ledger.release(
                        session, batch_id=batch.batch_id, claimer=self.claimer, now=app.now()
                    )
            raise  # after the transport, the batch stays in flight: the next run says unknown
        self._note(batch, results, taken)
        return True

    def _values(self, tokens: Tokens, unfollow: Sequence[tuple[str, str]] = ()) -> RecipientValues:
        app = self.app
        return RecipientValues(
            app.settings, self.newsletter, app.signing_key(), app.now(),
            name_fallback=self._name_fallback, tokens=tokens,
            unfollow=unfollow,
        )  # fmt: skip

    def message_for(self, variant_id: int | None) -> tuple[OutgoingMessage, RecipientValues]:
        """The message and token values of a batch: the issue's, or its variant's (rendered
        by `self.variants` once; a thread waits only for the variant its batch needs)."""
        if variant_id is None:
            return self.message, self.values
        with self._variants_lock:
            found = self._variants.get(variant_id)
        if found is None:
            found = self._variant_message(variant_id)
            with self._variants_lock:
                if len(self._variants) >= VARIANTS_KEPT:  # the oldest: its batches went first
                    self._variants.pop(next(iter(self._variants)))
                found = self._variants.setdefault(variant_id, found)
        return found

    def _variant_message(self, variant_id: int) -> tuple[OutgoingMessage, RecipientValues]:
        app = self.app
        if self.variants is None:
            from digest.issues.variant_renders import VariantRenders

            self.variants = VariantRenders(app, self.issue)
        variant = self.variants.get(variant_id)
        merged = [t.slug for t in app.settings.merged_topics(self.newsletter)]
        # Variants rendered today link "unfollow" through the preferences link; one rendered
        # and stored before that (a send resumed after an upgrade) holds a token per topic.
        parts = (variant.html, variant.text, variant.subject or "")
        indices = [
            i for i in (merged.index(t) for t in variant.topics if t in merged)
            if any(self.message.tokens.unfollow(i) in part for part in parts)
        ]  # fmt: skip
        tokens = self.message.tokens.with_unfollow(indices)
        headers = {**self.message.headers, "X-Digest-Variant": f"{variant_id}"}
        message = OutgoingMessage(
            issue_id=self.message.issue_id, newsletter=self.newsletter,
            subject=variant.subject or self.message.subject, html=variant.html,
            text=variant.text, headers=headers,
            date=self.message.date, tokens=tokens,
        )  # fmt: skip
        unfollow = [(tokens.unfollow(i), merged[i]) for i in indices]
        return message, self._values(tokens, unfollow)

    def _outgoing(self, batch: ledger.ClaimedBatch) -> OutgoingBatch:
        message, make_values = self.message_for(batch.variant_id)
        recipients = [
            OutgoingRecipient(
                r.delivery_id,
                r.subscriber_id,
                r.email,
                r.name,
                make_values(r.subscriber_id, r.name),
                r.message_id,
            )
            for r in batch.recipients
        ]
        return OutgoingBatch(message, recipients, batch.batch_id)

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
