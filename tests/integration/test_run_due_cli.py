"""`digest run-due`: the scheduler tick for cron, systemd timers and Kubernetes CronJobs.

In-process through the CLI runner, then as real processes: SIGTERM in the middle of a send
leaves a state the next run resumes, with every recipient mailed exactly once.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.scheduling.leader import leadership_for
from digest.storage.db import make_engine, upgrade
from digest.storage.models import Delivery, IssueStatus, RunOutcome
from tests.conftest import TEST_SECRET, base_config
from tests.support.scheduling import (
    count,
    digest_process,
    issues_of,
    load_sample_subscribers,
    runs_of,
    seed_articles,
    to_toml,
)
from tests.support.sending import add_audience, outbox_messages

TURKEY = "turkey-unpacked"
MONDAY = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The commands configure the `digest` loggers; leave them as they were."""
    loggers = [logging.getLogger(name) for name in ("digest", "apscheduler")]
    saved = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def _config(tmp_path: Path, url: str, **overrides: Any) -> Path:
    config = base_config(tmp_path)
    config["database"] = {"url": url}
    config["sources"] = []  # seeded articles: these tests are about scheduling
    config.update(overrides)
    path = tmp_path / "digest.toml"
    path.write_text(to_toml(config), encoding="utf-8")
    return path


@pytest.fixture
def setup(
    db_url: str, tmp_path: Path, make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> tuple[Engine, Path, App]:
    engine = make_engine(db_url)
    app = make_app(engine, now=MONDAY)
    seed_articles(app)
    load_sample_subscribers(app)
    config = _config(tmp_path, db_url)
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("DIGEST_CONFIG", str(config))
    monkeypatch.delenv("DIGEST_DATABASE_URL", raising=False)
    return engine, config, app


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_app, list(args))


def test_run_due_fires_once_and_prints_what_it_did(setup: tuple[Engine, Path, App]) -> None:
    engine, _, _ = setup
    first = _invoke("run-due", "--now", "2026-11-30T05:00:20Z")
    assert first.exit_code == 0, first.output
    assert "turkey-unpack" in first.output and "fired" in first.output and "sent" in first.output
    again = _invoke("--now", "2026-11-30T05:15:00Z", "run-due")  # the global --now works too
    assert again.exit_code == 0 and "Nothing due." in again.output
    [issue] = issues_of(engine, TURKEY)
    assert issue.status == IssueStatus.SENT
    as_json = _invoke("run-due", "--now", "2026-11-30T05:30:00Z", "--json")
    document = json.loads(as_json.stdout)
    assert document["results"] == [] and document["failed"] is False
    assert document["now"].startswith("2026-11-30T05:30:00")


def test_run_due_reports_a_failure_with_exit_code_1(
    setup: tuple[Engine, Path, App], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _, _ = setup
    broken = dict(base_config(tmp_path)["newsletters"][0], template="no-such-template")
    config = _config(tmp_path, str(engine.url.render_as_string(hide_password=False)),
                     newsletters=[broken])  # fmt: skip
    monkeypatch.setenv("DIGEST_CONFIG", str(config))
    result = _invoke("run-due", "--now", "2026-11-30T05:01:00Z", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    [failure] = document["results"]
    assert failure["outcome"] == RunOutcome.FAILED and "build failed" in failure["detail"]


def test_run_due_stands_by_while_another_scheduler_leads(
    setup: tuple[Engine, Path, App],
) -> None:
    engine, _, app = setup
    leader = leadership_for(app, "elsewhere:1:abc")
    assert leader.try_acquire()
    try:
        result = _invoke("run-due", "--now", "2026-11-30T05:00:20Z")
    finally:
        leader.release()
    assert result.exit_code == 0
    assert "Another scheduler leads" in result.output
    assert issues_of(engine) == []


def test_the_scheduler_refuses_a_frozen_clock(setup: tuple[Engine, Path, App]) -> None:
    result = _invoke("--now", "2026-11-30T05:00:00Z", "scheduler")
    assert result.exit_code == 1
    assert "use `digest run-due --now`" in result.output


# -- processes


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigterm_during_a_send_leaves_a_state_the_next_run_resumes(
    db_url: str, tmp_path: Path, make_app: Callable[..., App]
) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    app = make_app(engine, now=MONDAY)
    seed_articles(app)
    audience = 150
    add_audience(engine, TURKEY, audience)
    outbox = tmp_path / "outbox"
    delivery = {"transport": "outbox", "outbox_dir": str(outbox), "batch_size": 10,
                "concurrency": 1}  # fmt: skip
    config = _config(tmp_path, db_url, delivery=delivery)
    args = ["run-due", "--now", "2026-11-30T05:00:30Z", "--log-format", "json"]
    process = digest_process(args, config=config, database_url=db_url)
    _wait_for(lambda: len(list(outbox.rglob("*.eml"))) >= 10, "the send to be under way")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "SIGTERM: stopping after the batch in flight" in out
    assert "the next run resumes" in out

    sent_before = len(list(outbox.rglob("*.eml")))
    assert 10 <= sent_before < audience
    [run] = runs_of(engine, TURKEY)
    assert run.outcome == RunOutcome.RUNNING and "stopped between batches" in (run.detail or "")
    [issue] = issues_of(engine, TURKEY)
    assert issue.status == IssueStatus.SENDING
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(r.get("newsletter") == TURKEY and r.get("issue_id") == issue.id for r in records)

    # Later, the next run resumes where the first stopped.
    resumed = digest_process(["run-due", "--now", "2026-11-30T05:15:00Z"], config=config,
                             database_url=db_url)  # fmt: skip
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resumed" in out
    [run] = runs_of(engine, TURKEY)
    assert run.outcome == RunOutcome.SENT
    recipients = [str(m["To"]) for m in outbox_messages(outbox)]
    assert len(recipients) == len(set(recipients)) == audience  # everyone once, nobody twice
    assert count(engine, Delivery) == audience
    engine.dispose()


@pytest.mark.slow
def test_two_run_due_processes_at_every_tick_make_one_issue_per_period(
    pg_url: str, tmp_path: Path, make_app: Callable[..., App]
) -> None:
    """Two hosts' cron jobs on one PostgreSQL: whoever leads works, the other stands by."""
    engine = make_engine(pg_url)
    upgrade(engine)
    app = make_app(engine, now=MONDAY)
    seed_articles(app)
    load_sample_subscribers(app)
    config = _config(tmp_path, pg_url)
    moments = [MONDAY + timedelta(hours=h, seconds=s) for h, s in
               ((-24, 30), (0, 1), (0, 20))]  # fmt: skip
    for moment in moments:
        pair = [
            digest_process(
                ["run-due", "--now", moment.isoformat()], config=config, database_url=pg_url
            )
            for _ in range(2)
        ]
        for process in pair:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            assert "Tick at" in out or "Another scheduler leads" in out
    periods = [i.period[:13] for i in issues_of(engine, TURKEY)]
    assert periods == ["2026-11-29T05", "2026-11-30T05"]
    assert [r.outcome for r in runs_of(engine, TURKEY)] == ["sent"] * 2
    with engine.connect() as connection:
        per_issue = connection.exec_driver_sql(
            "SELECT issue_id, count(*), count(DISTINCT subscriber_id) FROM delivery GROUP BY 1"
        ).all()
    assert len(per_issue) == 2 and all(total == distinct for _, total, distinct in per_issue)
    engine.dispose()
