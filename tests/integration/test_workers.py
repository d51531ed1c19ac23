"""The pool of `digest worker`s and the fleet's shared rate limit, in process (PostgreSQL).

The processes themselves (three workers and a scheduler, SIGKILL, SIGTERM, the measured rate)
are in test_worker_fleet.py; here the parts: the GCRA reservations and the shared 429 pause,
a worker sending an issue the scheduler started, liveness, and `digest status`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.ops.status import status_report
from digest.scheduling.pipeline import Pipeline, real_pipeline
from digest.scheduling.tick import run_due
from digest.sending import fleet_rate, worker_pool
from digest.sending.claimer import Claimer
from digest.sending.fleet_rate import FleetRateLimiter, shared_limiter
from digest.sending.workers import Worker, WorkerRefused
from digest.storage.models import Issue, IssueStatus, RunOutcome, SendWorker
from tests.support.cli import cli_config
from tests.support.scheduling import RecordingPipeline, runs_of, seed_articles
from tests.support.sending import FakeTime, add_audience, mailed, make_issue

SLUG = "turkey-unpacked"
MONDAY = datetime(2026, 11, 30, 5, 0, 30, tzinfo=UTC)  # Turkey Unpacked's period is due


def _limiter(engine: Engine, rate: float, fake: FakeTime) -> FleetRateLimiter:
    return FleetRateLimiter(engine, "delivery:test", rate, sleep=fake.sleep)


def test_reservations_of_every_sender_queue_behind_each_other(pg_engine: Engine) -> None:
    fakes = [FakeTime(), FakeTime()]
    limiters = [_limiter(pg_engine, 100, fake) for fake in fakes]  # two senders, one row
    started = time.monotonic()
    for i in range(20):
        limiters[i % 2].acquire(10)  # 0.1 s each: the 20th starts 1.9 s after the first
    elapsed = time.monotonic() - started
    last_wait = fakes[1].sleeps[-1]
    assert 1.9 - elapsed - 0.05 <= last_wait <= 1.9 + 0.05
    assert all(b >= a - 0.05 for a, b in zip(fakes[0].sleeps, fakes[0].sleeps[1:], strict=False))


def test_a_429_pauses_every_sender(pg_engine: Engine) -> None:
    fakes = [FakeTime(), FakeTime()]
    clock = [100.0]
    first, second = (
        FleetRateLimiter(pg_engine, "delivery:test", 0, sleep=fake.sleep, clock=lambda: clock[0])
        for fake in fakes
    )
    second.acquire(5)
    assert fakes[1].sleeps == []  # no rate, no pause: nothing to wait for
    first.pause(7)
    first.acquire(5)  # its own pause: at once
    assert 6.9 <= fakes[0].sleeps[-1] <= 7.0
    second.acquire(5)  # read the pause 0 s ago: not again yet (no query per batch)
    assert fakes[1].sleeps == []
    clock[0] += fleet_rate.PAUSE_POLL
    second.acquire(5)  # the fleet's pause, read again (on the database's clock)
    assert 6.5 <= fakes[1].sleeps[-1] <= 7.0
    limited = _limiter(pg_engine, 1000, fakes[0])
    limited.acquire(1000)  # a reservation starts after the pause, whatever the rate
    assert 6.5 <= fakes[0].sleeps[-1] <= 7.0


def test_sqlite_keeps_the_per_process_limiter(engine: Engine, pg_engine: Engine) -> None:
    assert shared_limiter(engine, "sendgrid", 200, sleep=time.sleep) is None
    assert shared_limiter(pg_engine, "outbox", 0, sleep=time.sleep) is None
    assert shared_limiter(pg_engine, "sendgrid", 0, sleep=time.sleep) is not None


@pytest.fixture
def app(pg_engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(pg_engine, delivery={"batch_size": 7, "concurrency": 2})


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def running(app: App) -> Iterator[Worker]:
    worker = Worker(app, concurrency=3, poll=0.05, beat=0.2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    _wait_for(lambda: _rows(app), "the worker to register")
    yield worker
    worker.drain()
    thread.join(timeout=30)
    assert not thread.is_alive()


def _rows(app: App) -> list[SendWorker]:
    with app.session() as session:
        return list(session.scalars(select(SendWorker)).all())


def _status(app: App, issue_id: int) -> str:
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        return issue.status


def test_a_worker_sends_what_the_scheduler_started_then_drains(app: App, running: Worker) -> None:
    add_audience(app.engine, SLUG, 40)
    with app.session() as session:
        assert len(worker_pool.live_workers(session)) == 1
    issue_id = make_issue(app.engine, SLUG)
    handed = worker_pool.hand_over(app, issue_id)
    assert handed is not None and handed.workers == 1  # started for the worker, not sent
    _wait_for(lambda: _status(app, issue_id) == IssueStatus.SENT, "the worker to send it")
    assert set(mailed(app).values()) == {1} and len(mailed(app)) == 40
    assert running.stats.processed == 40
    [row] = _rows(app)
    assert row.concurrency == 3 and row.stopped_at is None

    running.drain()
    _wait_for(lambda: _rows(app)[0].stopped_at is not None, "the worker to stop")
    [row] = _rows(app)
    assert row.draining and row.in_flight == 0
    with app.session() as session:
        assert worker_pool.live_workers(session) == []
    assert worker_pool.hand_over(app, make_issue(app.engine, SLUG, period="2026-11-24")) is None


def test_without_a_live_worker_the_scheduler_sends_itself(
    pg_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(pg_engine, now=MONDAY)
    seed_articles(app)
    add_audience(pg_engine, SLUG, 12)
    gone = Claimer("elsewhere", "b00t", 4242, "1", "r")  # another host, silent for too long
    worker_pool.register(app, gone, 2)
    with app.session() as session:
        session.execute(
            update(SendWorker).values(heartbeat_at=worker_pool.wall_clock() - timedelta(minutes=5))
        )
    recording = RecordingPipeline()
    pipeline = Pipeline(**{**vars(recording.pipeline()), "hand_over": real_pipeline().hand_over})
    run_due(app, pipeline)
    assert len(recording.sends) == 1  # it sent
    [run] = runs_of(pg_engine, SLUG)
    assert run.outcome == RunOutcome.SENT


def test_with_a_live_worker_the_scheduler_only_starts_the_issue(
    pg_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(pg_engine, now=MONDAY)
    seed_articles(app)
    add_audience(pg_engine, SLUG, 12)
    worker_pool.register(app, Claimer("elsewhere", "b00t", 4242, "1", "r"), 2)  # heard just now
    recording = RecordingPipeline()
    pipeline = Pipeline(**{**vars(recording.pipeline()), "hand_over": real_pipeline().hand_over})
    run_due(app, pipeline)
    assert recording.sends == []
    [run] = runs_of(pg_engine, SLUG)
    assert run.outcome == RunOutcome.RUNNING and "1 workers are sending it" in (run.detail or "")
    assert _status(app, run.issue_id or 0) == IssueStatus.SENDING


def test_status_lists_the_workers(
    app: App, running: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [worker] = status_report(app)["workers"]
    assert worker["state"] == "running" and worker["in_flight"] == 0
    assert worker["id"] == str(running.me) and worker["heartbeat_age_seconds"] < 5
    config = cli_config(tmp_path / "digest.toml", app.engine, monkeypatch)
    result = CliRunner().invoke(cli_app, ["--config", str(config), "status"])
    assert result.exit_code == 0, result.output
    assert "worker host" in result.output and running.me.host[:10] in result.output
    assert "running" in result.output


def test_a_worker_refuses_sqlite(engine: Engine, make_app: Callable[..., App]) -> None:
    with pytest.raises(WorkerRefused, match="PostgreSQL"):
        Worker(make_app(engine)).run()
