"""`digest worker`: a sending process that any number of hosts sharing PostgreSQL run.

A worker loops over the issues that are `sending` and runs `send_issue` on each that has work
it may take; `send_issue` claims batches with `FOR UPDATE SKIP LOCKED` under the ledger's
compare-and-set, freezes the audience page by page, refreshes its claims and marks a dead
sender's batches unknown, so N workers split an issue's batches and never send one twice. For a
newsletter sent in subscribers' local time a worker takes only the zones whose moment has come
(`local_time.due_zones`, the scheduler's rule). The scheduler leader starts issues; it sends
them itself only when no worker is alive (`worker_pool.hand_over`). SIGTERM drains: the row
says `draining`, the batches in flight are finished and recorded, nothing new is claimed, then
the row says when it stopped.

Why not procrastinate or pgqueuer. Both are well-kept PostgreSQL job queues with the lifecycle
a worker needs (SKIP LOCKED fetching, LISTEN/NOTIFY wake-ups, heartbeats, graceful shutdown,
periodic jobs). Measured (`make bench-worker-libs`, 2026-12-02): each library ran digest's own
claim, send and record (`SendRun._one_batch`) as one job per batch, fanned out by a freeze job
per issue, 4 jobs at once per worker, against `digest worker`; 1M recipients on PostgreSQL to
the local SendGrid test server, 1 / 2 workers:

    digest worker       191.1 / 184.9 s   0.058 / 0.064 CPU-s per 1000   load 3.9 → 11.3
    procrastinate 3.10  164.0 / 123.4 s   0.073 / 0.069 CPU-s per 1000   load 9.8 → 7.0
    pgqueuer 1.6        142.5 / 112.4 s   0.062 / 0.072 CPU-s per 1000   load 4.4 → 8.9

Every run mailed every recipient exactly once (ledger and server counts read back). Other
people's benchmarks shared the 2 cores throughout (quiet, `digest worker` sends 1M in 32 s), so
the wall times only say that neither library is a bottleneck; the CPU per recipient, the steadier
figure, is within noise of ours. Speed decides nothing, then; the rest does. The unit of work is
already a row with its own state machine: `send_batch`, moved `pending → sending → accepted |
failed | unknown` by compare-and-set, and what makes a send exactly-once is that a batch whose
sender died is *not* run again but reported unknown. Both libraries are at-least-once: a job of a
SIGKILLed worker stays `doing` until a periodic task retries the stalled jobs (procrastinate:
heartbeat every 10 s, stalled after 30 s, `get_stalled_jobs` + `retry_job`), or is re-picked by
any worker once its heartbeat is older than `heartbeat_timeout` (pgqueuer 1.6: 30 s, automatic;
its ADR-0004). The benchmark's jobs are safe only because a job never names the batch it sends:
it asks the ledger for the next pending one, and someone must still run `release_stale` and
`finish_if_done` (`worker_libs_jobs.py` does it after each job). So the library would own a
second copy of every batch's state (a job row per batch, kept in step by hand), its own schema
and migrations, retries we must defeat, and for pgqueuer an asyncio driver (its psycopg one,
sharing LISTEN with the queries, took 31 s for 100k where asyncpg took 12 s: one more dependency);
what it would save is the loop below, a heartbeat row and signal handling (about 150 lines).
Their rate limits are per entrypoint or queue-wide counts, not the provider's messages per second
across hosts. So the pool extends the claimer: liveness is judged by the same
`Claimer.judges_alive` as claims, and `fleet_rate` shares the rate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from time import monotonic

from sqlalchemy import func, select
from sqlmodel import Session, col

from digest.app import App
from digest.config import ConfigError
from digest.sending import freeze, local_time, worker_pool
from digest.sending.claimer import Claimer
from digest.sending.counts import in_zones
from digest.sending.run import LEASE
from digest.storage.models import BatchStatus, Issue, IssueStatus, SendBatch

log = logging.getLogger("digest.worker")

POLL_SECONDS = 2.0  # an idle worker looks for sending issues this often
BEAT_SECONDS = 5.0  # how often a worker refreshes its row
ZONES_FOR = 60.0  # seconds a local-time issue's audience zones are reused before re-reading

_B = SendBatch.__table__  # type: ignore[attr-defined]


class WorkerRefused(Exception):
    """This database cannot have workers (SQLite)."""


@dataclass
class WorkerStats:
    """What one worker did, for its last log line and for tests."""

    sends: int = 0  # send_issue runs
    processed: int = 0  # recipients handed to the transport or skipped
    batches: int = 0
    errors: int = 0


class Worker:
    """One `digest worker` process: register, loop over sending issues, drain on request."""

    def __init__(
        self,
        app: App,
        *,
        concurrency: int | None = None,
        poll: float = POLL_SECONDS,
        beat: float = BEAT_SECONDS,
        on_send: Callable[[int, object], None] | None = None,
    ) -> None:
        settings = app.settings
        self.concurrency = max(1, concurrency or settings.delivery.concurrency)
        if self.concurrency != settings.delivery.concurrency:  # batches in flight at once
            delivery = settings.delivery.model_copy(update={"concurrency": self.concurrency})
            settings = settings.model_copy(update={"delivery": delivery})
            app = App(settings=settings, clock=app.clock, _engine=app.engine)
        self.app = app
        self.poll = poll
        self.beat_every = beat
        self.on_send = on_send
        self.me = Claimer.new()
        self.stop = threading.Event()  # set: drain (finish in flight, claim nothing new)
        self._wake = threading.Event()  # set: beat now
        self.stats = WorkerStats()
        self._settled: dict[int, object] = {}  # issue → state seen with nothing to do
        self._zones: dict[int, tuple[float, frozenset[str]]] = {}

    def drain(self) -> None:
        """Finish the batches in flight, claim nothing new, then stop (SIGTERM). Safe in a
        signal handler: it only sets events; the heartbeat thread writes `draining`."""
        self.stop.set()
        self._wake.set()

    def run(self) -> WorkerStats:
        if not worker_pool.supported(self.app):
            raise WorkerRefused("digest worker needs PostgreSQL: on SQLite the scheduler sends")
        self.me.activate()  # alive to a judge in this very process too (tests, benchmarks)
        worker_pool.register(self.app, self.me, self.concurrency)
        log.info("worker %s started (%d batches at once)", self.me, self.concurrency)
        beating = threading.Event()
        beater = threading.Thread(target=self._beat, args=(beating,), name="digest-worker-beat")
        beater.start()
        try:
            while not self.stop.is_set():
                if not self._one_pass():
                    self.stop.wait(self.poll)
        finally:
            beating.set()
            self._wake.set()
            beater.join()
            worker_pool.beat(self.app, self.me, draining=self.stop.is_set(), stopped=True)
            self.me.deactivate()
            stats = self.stats
            log.info(
                "worker %s stopped: %d sends, %d batches, %d recipients",
                self.me, stats.sends, stats.batches, stats.processed,
            )  # fmt: skip
        return self.stats

    def _beat(self, done: threading.Event) -> None:
        while not done.is_set():
            try:
                worker_pool.beat(self.app, self.me, draining=self.stop.is_set())
            except Exception as exc:  # a missed beat only makes others think it older
                log.warning("worker heartbeat failed: %s", exc)
            self._wake.wait(self.beat_every)
            self._wake.clear()

    # -- one pass over the sending issues

    def _one_pass(self) -> bool:
        """Send what may be sent now; True if anything was."""
        from digest.sending.send import SendRefused, send_issue

        app = self.app
        try:
            with app.session() as session:
                issues = list(
                    session.scalars(
                        select(Issue)
                        .where(col(Issue.status) == IssueStatus.SENDING)
                        .order_by(col(Issue.id))
                    ).all()
                )
                work = [(i.id or 0, z) for i in issues if (z := self._work_in(session, i)) != ()]
        except Exception:
            log.exception("worker %s cannot read the sending issues", self.me)
            self.stats.errors += 1
            return False
        worked = False
        for issue_id, zones in work:
            if self.stop.is_set():
                break
            try:
                report = send_issue(app, issue_id, timezones=zones, stop=self.stop)
            except SendRefused as exc:
                log.warning("issue %s: %s", issue_id, exc)
                continue
            except Exception:
                log.exception("worker %s: sending issue %s failed", self.me, issue_id)
                self.stats.errors += 1
                continue
            stats = self.stats
            stats.sends += 1
            stats.processed += report.processed
            stats.batches += report.batches
            worked = worked or report.processed > 0
            if report.processed:
                log.info(
                    "issue %s: %d recipients in %d batches; %s",
                    issue_id, report.processed, report.batches, report.counts(),
                    extra={"issue_id": issue_id},
                )  # fmt: skip
            if self.on_send is not None:
                self.on_send(issue_id, report)
        return worked

    def _work_in(self, session: Session, issue: Issue) -> frozenset[str] | tuple[()] | None:
        """The zones to send of this issue (None: all), or () when there is nothing for this
        worker now: no due zone, or every batch left is in another live sender's hands."""
        issue_id = issue.id or 0
        settings = self.app.settings
        try:
            newsletter = settings.newsletter(issue.newsletter)
        except ConfigError:
            return ()  # a newsletter no longer configured here: leave it to its operator
        zones: frozenset[str] | None = None
        claim: frozenset[str | None] | None = None
        if newsletter.send_in_subscriber_timezone:
            default = str(settings.newsletter_timezone(newsletter))
            zones = self._due_zones(session, issue, default)
            if not zones:
                return ()
            claim = local_time.claimable(zones, default)
        if freeze.freezing_after(session, issue_id) is not None:
            return zones
        mine = (_B.c.issue_id == issue_id,)
        pending = session.execute(
            select(_B.c.id).where(*mine, _B.c.status == BatchStatus.PENDING, in_zones(claim))
        ).first()
        if pending is not None:
            return zones
        held = session.execute(
            select(_B.c.claimed_by, _B.c.claimed_at).where(
                *mine, _B.c.status == BatchStatus.SENDING
            )
        ).all()
        now = self.app.now()
        judge = self.me.judges_alive
        if any(not judge(Claimer.parse(c), at, now, LEASE) for c, at in held):
            return zones  # send_issue marks them unknown (and finishes the issue if that is all)
        if held:
            return ()  # their live senders finish the issue when they are done
        # Nothing pending (in the due zones) nor in flight: one run finishes the issue, or
        # finds unknown deliveries for the operator; then leave it until its batches change.
        state = tuple(
            session.execute(
                select(_B.c.status, func.count()).where(*mine).group_by(_B.c.status)
            ).all()
        )
        seen = (state, zones)
        if self._settled.get(issue_id) == seen:
            return ()
        self._settled[issue_id] = seen
        return zones

    def _due_zones(self, session: Session, issue: Issue, default: str) -> frozenset[str]:
        """The scheduler's rule: zones of the audience and of pending batches whose local
        moment of the issue's period has come (audience zones cached for `ZONES_FOR`)."""
        issue_id = issue.id or 0
        cached = self._zones.get(issue_id)
        if cached is None or monotonic() - cached[0] > ZONES_FOR:
            audience = local_time.audience_zones(session, issue.newsletter, default)
            cached = self._zones[issue_id] = (monotonic(), audience)
        zones = cached[1] | local_time.pending_zones(session, issue_id, default)
        zone = self.app.settings.newsletter_timezone(self.app.settings.newsletter(issue.newsletter))
        period = datetime.fromisoformat(issue.period)
        return local_time.due_zones(period, zone, zones, self.app.now())
