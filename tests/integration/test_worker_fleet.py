"""Real `digest worker` processes on PostgreSQL: a scheduler and three workers send one issue
exactly once between them though one is SIGKILLed mid-send; the fleet keeps one rate limit;
SIGTERM drains. The SendGrid test server records what really arrived, and when."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from digest.app import App
from digest.sending import worker_pool
from digest.sending.counts import delivery_counts
from digest.storage.models import BatchStatus, Issue, IssueStatus, RunOutcome, SendWorker
from tests.conftest import base_config
from tests.integration.test_send_crash import _ledger
from tests.support.scheduling import digest_process, runs_of, seed_articles, to_toml
from tests.support.sendgrid_server import SendGridServer
from tests.support.sending import add_audience, address, make_issue

pytestmark = pytest.mark.slow

SLUG = "turkey-unpacked"
KEY = "SG.fleet-test"
NOW = "2026-11-30T05:00:30+00:00"  # Turkey Unpacked's Monday 08:00 (Istanbul) period is due
MONDAY = datetime.fromisoformat(NOW).astimezone(UTC)


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, validate="rules", keep_bodies=True) as running:
        yield running


def _config(tmp_path: Path, url: str, server: SendGridServer, **delivery: Any) -> Path:
    config = base_config(tmp_path)
    config["database"] = {"url": url}
    config["sources"] = []  # seeded articles
    config["delivery"] = {"transport": "sendgrid", **delivery}
    config["sendgrid"] = {"api_url": server.url, "timeout": 20}
    path = tmp_path / "digest.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return path


class Fleet:
    """`digest worker` processes on one config, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, config: Path, url: str, engine: Engine) -> None:
        self.config, self.url, self.engine = config, url, engine
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, n: int) -> list[subprocess.Popen[str]]:
        started = [self.digest("--now", NOW, "worker", "--log-format", "json") for _ in range(n)]
        self.processes += started
        wanted = sum(p.poll() is None for p in self.processes)
        _wait_for(lambda: len(self.live()) >= wanted, f"{wanted} workers to register")
        return started

    def digest(self, *args: str) -> subprocess.Popen[str]:
        return digest_process(
            list(args), config=self.config, database_url=self.url,
            extra_env={"SENDGRID_API_KEY": KEY},
        )  # fmt: skip

    def live(self) -> list[SendWorker]:
        from sqlmodel import Session

        with Session(self.engine) as session:
            return worker_pool.live_workers(session)

    def stop(self, process: subprocess.Popen[str], *, signal_it: bool = True) -> tuple[int, str]:
        """SIGTERM it (unless told not to) and wait: its exit code and its output."""
        if signal_it and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
        return process.returncode, out + err

    def run(self, *args: str) -> tuple[int, str]:
        return self.stop(self.digest(*args), signal_it=False)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=30)


@pytest.fixture
def fleet_for(pg_url: str, pg_engine: Engine) -> Iterator[Callable[[Path], Fleet]]:
    made: list[Fleet] = []

    def make(config: Path) -> Fleet:
        made.append(Fleet(config, pg_url, pg_engine))
        return made[-1]

    yield make
    for fleet in made:
        fleet.close()


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _issue(engine: Engine) -> Issue:
    from sqlmodel import Session

    with Session(engine) as session:
        return session.execute(select(Issue).where(Issue.newsletter == SLUG)).scalars().one()  # type: ignore[arg-type]


def _settled(engine: Engine, issue_id: int) -> bool:
    """Nothing pending, in flight or still to freeze."""
    from sqlmodel import Session

    with Session(engine) as session:
        counts = delivery_counts(session, issue_id)
        issue = session.get(Issue, issue_id)
        frozen = issue is not None and issue.freezing_after is None
    return frozen and counts["pending"] == 0 and counts["sending"] == 0


def test_three_workers_and_a_scheduler_send_once_though_one_is_killed(
    pg_url: str, pg_engine: Engine, tmp_path: Path, server: SendGridServer,
    make_app: Callable[..., App], fleet_for: Callable[[Path], Fleet],
) -> None:  # fmt: skip
    audience = 400
    seed_articles(make_app(pg_engine, now=MONDAY))
    first, last = add_audience(pg_engine, SLUG, audience)
    server.delay_next(10_000, seconds=0.15)  # slow answers: the kill lands mid-send
    config = _config(tmp_path, pg_url, server, batch_size=10, concurrency=2, freeze_page=50)
    fleet = fleet_for(config)
    victim, *_ = fleet.start(3)

    code, out = fleet.run("run-due", "--now", NOW)
    assert code == 0, out
    assert "3 workers are sending it" in out  # the scheduler started it and sent nothing
    issue_id = _issue(pg_engine).id or 0

    def victim_holds_a_batch() -> bool:
        with pg_engine.connect() as db:
            held = db.execute(
                text("SELECT count(*) FROM send_batch WHERE status = 'sending' AND claimed_by "
                     "LIKE :pid"), {"pid": f"%/{victim.pid}/%"},
            ).scalar()  # fmt: skip
        return bool(held)

    _wait_for(victim_holds_a_batch, "the first worker to hold a batch")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _wait_for(lambda: _settled(pg_engine, issue_id), "the other workers to finish", 120)

    counts, unknown = _ledger(pg_engine, issue_id)
    received = Counter(server.recipients())
    everyone = {address(i) for i in range(first, last + 1)}
    context = f"counts={counts} unknown={len(unknown)} aborted={server.aborted_requests}"
    assert max(received.values()) == 1, f"someone was mailed twice: {context}"
    assert counts["accepted"] + counts["unknown"] == audience and counts["failed"] == 0, context
    assert everyone - unknown <= set(received), context
    assert unknown, f"the killed worker held a batch: it is unknown: {context}"

    code, out = fleet.run("--now", NOW, "send", SLUG, "--retry-unknown")
    assert code == 0, out
    _wait_for(lambda: _issue(pg_engine).status == IssueStatus.SENT, "the issue to be sent")
    received = Counter(server.recipients())
    assert set(received) == everyone, context
    assert {a for a, n in received.items() if n > 1} <= unknown, context  # only the operator's
    code, out = fleet.run("run-due", "--now", "2026-11-30T05:10:00+00:00")
    assert code == 0, out
    [run] = runs_of(pg_engine, SLUG)
    assert run.outcome == RunOutcome.SENT, run.detail
    for process in fleet.processes[1:]:
        code, out = fleet.stop(process)
        assert code == 0, out
    assert fleet.live() == []
    server.assert_all_valid()


def test_three_workers_share_one_rate_limit(
    pg_url: str, pg_engine: Engine, tmp_path: Path, server: SendGridServer,
    make_app: Callable[..., App], fleet_for: Callable[[Path], Fleet],
) -> None:  # fmt: skip
    rate, window = 200, 20.0
    add_audience(pg_engine, SLUG, int(rate * window) + 100, names=False)
    config = _config(tmp_path, pg_url, server, batch_size=20, concurrency=2, rate_limit=rate)
    fleet = fleet_for(config)
    fleet.start(3)
    app = make_app(pg_engine, now=MONDAY)
    issue_id = make_issue(pg_engine, SLUG)
    assert worker_pool.hand_over(app, issue_id) is not None
    _wait_for(lambda: _issue(pg_engine).status == IssueStatus.SENT, "the send", window + 40)

    requests = sorted(server.requests, key=lambda r: r.received_at)
    start = requests[0].received_at
    in_window = sum(r.recipients for r in requests if r.received_at < start + window)
    assert abs(in_window / window - rate) <= 0.05 * rate, in_window / window
    # Over the whole send too (the last request's recipients were allowed at its start).
    span = requests[-1].received_at - start
    overall = (sum(r.recipients for r in requests) - requests[-1].recipients) / span
    assert abs(overall - rate) <= 0.05 * rate, overall
    with pg_engine.connect() as db:
        claimers = db.execute(
            text("SELECT count(DISTINCT split_part(claimed_by, '/', 3)) FROM send_batch")
        ).scalar()
    assert claimers == 3, "every worker took part"


def test_sigterm_drains_a_worker(
    pg_url: str, pg_engine: Engine, tmp_path: Path, server: SendGridServer,
    make_app: Callable[..., App], fleet_for: Callable[[Path], Fleet],
) -> None:  # fmt: skip
    audience = 100
    first, last = add_audience(pg_engine, SLUG, audience)
    server.delay_next(10_000, seconds=0.5)
    config = _config(tmp_path, pg_url, server, batch_size=10, concurrency=2)
    fleet = fleet_for(config)
    [worker] = fleet.start(1)
    issue_id = make_issue(pg_engine, SLUG)
    assert worker_pool.hand_over(make_app(pg_engine, now=MONDAY), issue_id) is not None
    _wait_for(lambda: server.attempts >= 2, "requests in flight")

    code, out = fleet.stop(worker)
    assert code == 0, out
    assert "draining" in out
    counts, unknown = _ledger(pg_engine, issue_id)
    assert counts["sending"] == 0 and not unknown, counts  # in flight: finished and recorded
    assert 0 < counts["accepted"] == server.accepted_recipients < audience, counts
    with pg_engine.connect() as db:
        draining, stopped = db.execute(text("SELECT draining, stopped_at FROM send_worker")).one()
        statuses = {r[0] for r in db.execute(text("SELECT status FROM send_batch"))}
    assert draining and stopped is not None
    assert BatchStatus.PENDING in statuses

    [again] = fleet.start(1)
    _wait_for(lambda: _issue(pg_engine).status == IssueStatus.SENT, "the second worker")
    assert Counter(server.recipients()) == Counter(address(i) for i in range(first, last + 1))
    code, out = fleet.stop(again)
    assert code == 0, out
