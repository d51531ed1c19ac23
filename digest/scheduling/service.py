"""`digest scheduler`: the long-running process that fires newsletters on time.

Built on APScheduler 3 (`BackgroundScheduler`, in-memory job store: a job store must never be
shared between processes). Jobs:
- one crontab job per newsletter, in its time zone (`digest.cron.CrontabTrigger`);
- `tick` every `tick_every`, at start-up first: catch-up, approvals, resumed sends,
  subscriber-local time zones;
- `ingest` every `ingest_every`;
- `housekeeping` hourly: old run records, and the daily retention run handed in as
  `housekeeper` (`digest.ops.retention.run_if_due`, which decides whether a day has passed).
Every job runs the code of `digest run-due` (`digest.scheduling.tick.run_due`), where the unique
(newsletter, period) row guarantees a period fires once.

Only the leader runs jobs (`digest.scheduling.leader`); stand-bys retry every `standby_retry`.
Signals:
SIGHUP reloads the configuration (schedules and intervals; not the database); SIGTERM and
SIGINT stop: sends stop between batches (the next leader resumes them), running jobs finish,
the lock is released. A second SIGTERM/SIGINT exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from types import FrameType

from apscheduler.executors.base import BaseExecutor
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import delete
from sqlmodel import col

from digest.app import App
from digest.config import ConfigError, parse_duration
from digest.cron import CrontabTrigger
from digest.scheduling.leader import (
    Leadership,
    leader_info,
    leadership_for,
    record_heartbeat,
    record_release,
)
from digest.scheduling.pipeline import Pipeline, real_pipeline
from digest.scheduling.tick import NewsletterLocks, TickReport, ingest_due, run_due, run_ingest_job
from digest.storage.models import ScheduleRun

log = logging.getLogger("digest.scheduler")

HOUSEKEEPING_EVERY = timedelta(hours=1)
KEEP_RUNS = timedelta(days=400)


@dataclass
class JobContext:
    """What the jobs of one leadership term share; swapped whole on reload."""

    app: App
    pipeline: Pipeline
    stop: threading.Event  # set on shutdown or lost leadership: sends stop between batches
    locks: NewsletterLocks = field(default_factory=NewsletterLocks)
    ingest_lock: threading.Lock = field(default_factory=threading.Lock)


class SchedulerService:
    """Leader election, the APScheduler jobs, heartbeats and signals."""

    def __init__(
        self,
        load_app: Callable[[], App],
        *,
        app: App | None = None,
        pipeline_factory: Callable[[], Pipeline] = real_pipeline,
        leadership_factory: Callable[[App], Leadership] = leadership_for,
        housekeeper: Callable[[App], object] | None = None,
    ) -> None:
        self.load_app = load_app
        self.housekeeper = housekeeper  # from above this layer: ops owns retention
        self.app = app or load_app()
        self.pipeline_factory = pipeline_factory
        self.leadership_factory = leadership_factory
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._wake = threading.Event()
        self.role = "starting"
        self.ticks: list[TickReport] = []
        self._context: JobContext | None = None

    # -- control (thread-safe; signal handlers call these)

    def request_stop(self) -> None:
        self.stop_requested.set()
        if self._context is not None:
            self._context.stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self.reload_requested.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            if self.stop_requested.is_set():
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(128 + signum)
            log.info("%s: stopping after the batch in flight", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, lambda _s, _f: self.request_reload())

    # -- the main loop

    def run(self) -> int:
        leadership = self.leadership_factory(self.app)
        standing_by = False
        log.info("scheduler %s starting (%s)", leadership.holder, leadership.backend)
        while not self.stop_requested.is_set():
            self._reload_if_requested(None)
            try:
                acquired = leadership.try_acquire()
            except Exception as exc:
                log.error("cannot take the leader lock: %s: %s", type(exc).__name__, exc)
                acquired = False
            if not acquired:
                if not standing_by:
                    log.info("standing by: %s", self._leader_text())
                    standing_by = True
                self.role = "standby"
                self._wait(self._delta("standby_retry"))
                continue
            standing_by = False
            self.role = "leader"
            log.info("leading as %s", leadership.holder)
            try:
                self._lead(leadership)
            finally:
                leadership.release()
                self._safely(record_release, self.app, leadership)
                log.info("leadership released")
        self.role = "stopped"
        log.info("scheduler stopped")
        return 0

    def _lead(self, leadership: Leadership) -> None:
        context = self.begin_term()
        self._safely(record_heartbeat, self.app, leadership, acquired=True)
        scheduler = self.build_scheduler(start_now=True)
        scheduler.start()
        try:
            while not self.stop_requested.is_set():
                self._wait(self._delta("heartbeat_every"))
                if self.stop_requested.is_set():
                    break
                self._reload_if_requested(scheduler)
                if not self._still_leader(leadership):
                    log.error("leadership lost: stopping jobs and standing by")
                    break
                self._safely(record_heartbeat, self.app, leadership)
        finally:
            context.stop.set()
            scheduler.shutdown(wait=True)
            self._context = None

    def begin_term(self) -> JobContext:
        """What the jobs of a new leadership term share (a fresh stop event)."""
        self._context = JobContext(self.app, self.pipeline_factory(), threading.Event())
        return self._context

    def build_scheduler(
        self,
        scheduler_class: type[BaseScheduler] = BackgroundScheduler,
        executor: BaseExecutor | None = None,
        *,
        start_now: bool,
    ) -> BaseScheduler:
        """An APScheduler with our jobs, not started. Misfires within the catch-up grace run
        late, coalesced into one run; later ones are left to run_due, which records them."""
        scheduler = scheduler_class(
            timezone=UTC,
            executors={"default": executor or ThreadPoolExecutor(max_workers=4)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(self._delta("catch_up_grace").total_seconds()),
            },
        )
        self._add_jobs(scheduler, start_now=start_now)
        return scheduler

    def _still_leader(self, leadership: Leadership) -> bool:
        try:
            return leadership.still_leader()
        except Exception:
            log.exception("cannot check leadership")
            return False

    # -- jobs

    def _add_jobs(self, scheduler: BaseScheduler, *, start_now: bool) -> None:
        settings = self.app.settings
        for newsletter in settings.newsletters:
            zone = settings.newsletter_timezone(newsletter)
            scheduler.add_job(
                self.fire_newsletter,
                CrontabTrigger(newsletter.schedule, zone),
                args=[newsletter.slug],
                id=f"newsletter:{newsletter.slug}",
                name=f"{newsletter.slug} ({newsletter.schedule} {zone})",
                replace_existing=True,
            )
        intervals: list[tuple[str, Callable[[], None], timedelta]] = [
            ("tick", self.tick, self._delta("tick_every")),
            ("ingest", self.ingest, self._delta("ingest_every")),
            ("housekeeping", self.housekeeping, HOUSEKEEPING_EVERY),
        ]
        if settings.bounces.mailbox:  # `digest bounces fetch` every bounces.every
            every = parse_duration(settings.bounces.every)
            intervals.append(("bounces", self.fetch_bounces, every))
        for job_id, function, every in intervals:
            trigger = IntervalTrigger(seconds=int(every.total_seconds()), timezone=UTC)
            scheduler.add_job(function, trigger, id=job_id, name=job_id, replace_existing=True)
        if start_now:  # on start-up and reload: a tick at once, which is the catch-up
            scheduler.add_job(
                self.tick, DateTrigger(timezone=UTC), id="catch-up", replace_existing=True
            )

    def fire_newsletter(self, slug: str) -> None:
        self._run_due(newsletters=[slug])

    def tick(self) -> None:
        self._run_due(newsletters=None)

    def _run_due(self, newsletters: list[str] | None) -> None:
        context = self._context
        if context is None:
            return
        try:
            report = run_due(
                context.app,
                context.pipeline,
                newsletters=newsletters,
                stop=context.stop,
                locks=context.locks,
                ingest_lock=context.ingest_lock,
            )
        except Exception:
            log.exception("scheduler tick failed")
            return
        self.ticks.append(report)
        del self.ticks[:-100]

    def ingest(self) -> None:
        context = self._context
        if context is None:
            return
        with context.ingest_lock:
            if ingest_due(context.app, context.app.now(), []):
                run_ingest_job(context.app, context.pipeline)

    def fetch_bounces(self) -> None:
        """Read the bounce mailbox (`digest.tracking.fetch`); a failure waits for the next run."""
        context = self._context
        if context is None:
            return
        from digest.tracking.fetch import fetch_bounces

        try:
            report = fetch_bounces(context.app)
        except Exception:
            log.exception("bounces fetch failed")
            return
        if report.read:
            log.info("bounces: %s", report.as_json())

    def housekeeping(self) -> None:
        """Forget run records older than KEEP_RUNS (issues stay), then let the housekeeper
        apply retention if it is due."""
        context = self._context
        if context is None:
            return
        cutoff = (context.app.now() - KEEP_RUNS).isoformat()
        try:
            with context.app.session() as session:
                session.exec(delete(ScheduleRun).where(col(ScheduleRun.period) < cutoff))  # type: ignore[call-overload]
            if self.housekeeper is not None and not context.stop.is_set():
                self.housekeeper(context.app)
        except Exception:
            log.exception("housekeeping failed")

    # -- configuration

    def _delta(self, name: str) -> timedelta:
        return parse_duration(getattr(self.app.settings.scheduler, name))

    def _reload_if_requested(self, scheduler: BaseScheduler | None) -> None:
        if not self.reload_requested.is_set():
            return
        self.reload_requested.clear()
        try:
            fresh = self.load_app()
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        if str(fresh.settings.database.url) != str(self.app.settings.database.url):
            log.warning("the database URL changed: restart the scheduler to switch databases")
        # Keep the engine (and so the leader lock's database); take everything else.
        self.app = App(settings=fresh.settings, clock=self.app.clock, _engine=self.app.engine)
        if scheduler is not None and self._context is not None:
            self._context.app = self.app
            for job in scheduler.get_jobs():
                job.remove()
            self._add_jobs(scheduler, start_now=True)
        log.info(
            "configuration reloaded: %d newsletters",
            len(self.app.settings.newsletters),
        )

    # -- helpers

    def _wait(self, delta: timedelta) -> None:
        self._wake.wait(delta.total_seconds())
        self._wake.clear()

    def _leader_text(self) -> str:
        try:
            with self.app.session() as session:
                info = leader_info(session, self.app.now())
        except Exception:
            return "the leader is unknown (the database does not answer)"
        if info is None:
            return "no leader recorded yet"
        return f"{info.holder} leads (heartbeat {info.heartbeat_age:.0f}s ago)"

    @staticmethod
    def _safely(function: Callable[..., object], *args: object, **kwargs: object) -> None:
        try:
            function(*args, **kwargs)
        except Exception:
            log.exception("%s failed", getattr(function, "__name__", "call"))
