"""`digest scheduler` in-process: APScheduler driven by a fake clock, leadership hand-over,
reload and stop. Nothing waits for a schedule: the fake clock jumps from one wake-up to the
next, and the in-process service starts with a catch-up tick."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.executors import base as executors_base
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers import base as schedulers_base
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers import date as date_trigger
from apscheduler.triggers import interval as interval_trigger
from sqlalchemy import Engine
from sqlmodel import select

from digest.app import App
from digest.cron import CrontabTrigger
from digest.scheduling.service import SchedulerService
from digest.storage.models import RunOutcome, ScheduleRun
from tests.support.scheduling import (
    RecordingPipeline,
    issues_of,
    load_sample_subscribers,
    runs_of,
    seed_articles,
)

TURKEY, CLIMATE = "turkey-unpacked", "climate-weekly"


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


class ManualScheduler(BaseScheduler):
    """An APScheduler whose jobs run only when the test calls `_process_jobs`."""

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)

    def wakeup(self) -> None:
        pass


@pytest.fixture
def fake_apscheduler_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    clock = FakeClock(datetime(2026, 10, 30, 12, 30, tzinfo=UTC))

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return clock.now.astimezone(tz) if tz else clock.now

    for module in (schedulers_base, executors_base, interval_trigger, date_trigger):
        monkeypatch.setattr(module, "datetime", FakeDatetime)
    yield clock


class WatchedService(SchedulerService):
    fired: list[tuple[str, datetime]]

    def fire_newsletter(self, slug: str) -> None:
        self.fired.append((slug, self.app.now()))
        super().fire_newsletter(slug)


def _daily_config() -> dict[str, Any]:
    return {
        "sources": [],
        "scheduler": {"tick_every": "6h", "ingest_every": "6h"},
        "newsletters": [
            {"slug": TURKEY, "title": "T", "schedule": "0 8 * * *",
             "timezone": "Europe/Istanbul", "window": "2d", "topic": {"tags": ["Turkey"]}},
            {"slug": CLIMATE, "title": "C", "schedule": "0 8 * * *",
             "timezone": "America/New_York", "window": "2d", "topic": {"tags": ["Climate"]}},
        ],
    }  # fmt: skip


def _drive(scheduler: BaseScheduler, clock: FakeClock, until: datetime) -> None:
    """Run the scheduler's loop on fake time: process due jobs, jump to the next wake-up."""
    while clock.now < until:
        wait = scheduler._process_jobs()  # type: ignore[attr-defined]
        if wait is None:
            return
        clock.now = min(clock.now + timedelta(seconds=max(wait, 1)), until)


def test_apscheduler_on_a_fake_clock_fires_each_newsletter_at_local_time_across_dst(
    any_engine: Engine,
    make_app: Callable[..., App],
    fake_apscheduler_clock: FakeClock,
) -> None:
    clock = fake_apscheduler_clock
    app = make_app(any_engine, **_daily_config())
    app.clock = clock
    seed_articles(app)
    load_sample_subscribers(app)
    pipeline = RecordingPipeline()
    service = WatchedService(lambda: app, app=app, pipeline_factory=pipeline.pipeline)
    service.fired = []
    service.begin_term()
    scheduler = service.build_scheduler(ManualScheduler, DebugExecutor(), start_now=False)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {f"newsletter:{TURKEY}", f"newsletter:{CLIMATE}", "tick", "ingest",
                         "housekeeping"}  # fmt: skip
    assert isinstance(jobs[f"newsletter:{CLIMATE}"].trigger, CrontabTrigger)
    scheduler.start()

    # New York leaves DST on Sunday 2026-11-01; Istanbul has none.
    _drive(scheduler, clock, datetime(2026, 11, 2, 14, 0, tzinfo=UTC))
    fired = [(slug, moment.strftime("%m-%d %H:%M")) for slug, moment in service.fired]
    assert fired == [
        (TURKEY, "10-31 05:00"),
        (CLIMATE, "10-31 12:00"),  # 08:00 EDT
        (TURKEY, "11-01 05:00"),
        (CLIMATE, "11-01 13:00"),  # 08:00 EST
        (TURKEY, "11-02 05:00"),
        (CLIMATE, "11-02 13:00"),
    ]
    sent = [(r.newsletter, r.period[5:16], r.outcome) for r in runs_of(any_engine)]
    assert sorted(sent) == sorted(
        [(TURKEY, f"{d} 05:00".replace(" ", "T"), RunOutcome.SENT) for d in
         ("10-31", "11-01", "11-02")]
        + [(CLIMATE, p, RunOutcome.SENT) for p in ("10-31T12:00", "11-01T13:00", "11-02T13:00")]
    )  # fmt: skip
    assert len(issues_of(any_engine)) == 6

    # The process freezes for 30 hours: APScheduler drops the runs older than the grace
    # (6 h), the next tick records those periods as missed and nothing is sent late.
    clock.now = datetime(2026, 11, 3, 20, 0, tzinfo=UTC)
    before = len(service.fired)
    _drive(scheduler, clock, datetime(2026, 11, 3, 20, 30, tzinfo=UTC))
    assert service.fired[before:] == []
    missed = [(r.newsletter, r.period[5:16]) for r in runs_of(any_engine)
              if r.outcome == RunOutcome.MISSED]  # fmt: skip
    assert sorted(missed) == [(CLIMATE, "11-03T13:00"), (TURKEY, "11-03T05:00")]
    assert len(issues_of(any_engine)) == 6
    scheduler.shutdown()


def _run_in_thread(service: SchedulerService) -> threading.Thread:
    thread = threading.Thread(target=service.run, name="scheduler-under-test", daemon=True)
    thread.start()
    return thread


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_service_leads_catches_up_hands_over_reloads_and_stops(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    monday = datetime(2026, 11, 30, 5, 0, 30, tzinfo=UTC)
    quick = {"scheduler": {"heartbeat_every": "1s", "standby_retry": "1s"}, "sources": []}
    apps = [make_app(any_engine, now=monday, **quick) for _ in range(2)]
    seed_articles(apps[0])
    load_sample_subscribers(apps[0])
    first = SchedulerService(
        lambda: apps[0], app=apps[0], pipeline_factory=RecordingPipeline().pipeline
    )
    second = SchedulerService(
        lambda: apps[1], app=apps[1], pipeline_factory=RecordingPipeline().pipeline
    )
    threads = [_run_in_thread(first)]
    _wait_for(lambda: first.ticks, "the leader's catch-up tick")
    threads.append(_run_in_thread(second))
    _wait_for(lambda: second.role == "standby", "the second scheduler to stand by")
    assert first.role == "leader"
    assert [r.outcome for r in runs_of(any_engine, TURKEY)] == [RunOutcome.SENT]

    # A reload with one more newsletter reschedules; the database stays.
    reloaded = make_app(any_engine, now=monday, **quick, newsletters=[
        *_daily_config()["newsletters"],
        {"slug": "evening", "title": "E", "schedule": "0 18 * * *", "topic": {"tags": ["x"]}},
    ])  # fmt: skip
    first.load_app = lambda: reloaded
    first.request_reload()
    _wait_for(lambda: "evening" in {n.slug for n in first.app.settings.newsletters}, "a reload")
    assert first.app.engine is apps[0].engine

    first.request_stop()
    threads[0].join(timeout=20)
    assert not threads[0].is_alive() and first.role == "stopped"
    _wait_for(lambda: second.role == "leader", "the stand-by to take over")
    _wait_for(lambda: second.ticks, "the new leader's catch-up tick")
    assert second.ticks[0].results == []  # the period already fired: nothing to do
    second.request_stop()
    threads[1].join(timeout=20)
    assert not threads[1].is_alive()
    assert len(issues_of(any_engine, TURKEY)) == 1


def test_housekeeping_forgets_run_records_older_than_400_days(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, now=datetime(2026, 11, 30, tzinfo=UTC))
    with app.session() as session:
        for period in ("2025-10-01T05:00:00+00:00", "2025-11-01T05:00:00+00:00"):
            session.add(ScheduleRun(newsletter=TURKEY, period=period, outcome=RunOutcome.SENT))
    service = SchedulerService(lambda: app, app=app, pipeline_factory=RecordingPipeline().pipeline)
    service.begin_term()
    service.housekeeping()
    assert [r.period[:7] for r in runs_of(any_engine)] == ["2025-11"]


def test_the_scheduler_fetches_bounces_every_bounces_every_when_a_mailbox_is_set(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    import mailbox

    from apscheduler.schedulers.background import BackgroundScheduler

    from subscribers import is_suppressed
    from tests.support.sending import add_audience, address, make_issue

    box_path = tmp_path / "Maildir"
    mailbox.Maildir(box_path, create=True).close()
    app = make_app(
        any_engine,
        bounces={"domain": "bounces.example.com", "mailbox": str(box_path), "every": "7m"},
    )
    service = SchedulerService(lambda: app, app=app, pipeline_factory=RecordingPipeline().pipeline)
    scheduler = BackgroundScheduler(timezone=UTC)
    service._add_jobs(scheduler, start_now=False)
    job = scheduler.get_job("bounces")
    assert job is not None and job.trigger.interval.total_seconds() == 7 * 60
    plain = make_app(any_engine)
    other = BackgroundScheduler(timezone=UTC)
    SchedulerService(
        lambda: plain, app=plain, pipeline_factory=RecordingPipeline().pipeline
    )._add_jobs(other, start_now=False)
    assert other.get_job("bounces") is None  # no mailbox, no job

    # The job itself reads the mailbox: a DSN to a real delivery's signed return path.
    from digest.sending.send import send_issue
    from digest.storage.models import Delivery
    from digest.tracking.verp import VerpSigner

    first, _ = add_audience(any_engine, TURKEY, 1)
    send_issue(app, make_issue(any_engine, TURKEY))
    with app.session() as session:
        delivery = session.exec(select(Delivery)).one()
    verp = VerpSigner(app.signing_key(), "bounces.example.com").address(
        delivery_id=delivery.id, subscriber_id=None
    )
    dsn = (Path(__file__).parents[1] / "fixtures" / "bounces" / "postfix_hard.eml").read_text()
    box = mailbox.Maildir(box_path)
    box.add(dsn.replace("{VERP}", verp or "").replace("{RCPT}", address(first)).encode())
    box.close()
    service.begin_term()
    service.fetch_bounces()
    with app.session() as session:
        assert is_suppressed(session, address(first))
