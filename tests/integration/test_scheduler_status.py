"""`digest status`: per newsletter the next run, last issue, scheduler outcome and failures;
per source its health; the scheduler leader and its heartbeat."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.cli import common
from digest.ops.status import status_report
from digest.scheduling.leader import leading
from digest.scheduling.tick import run_due
from digest.storage.models import Source
from tests.support.scheduling import RecordingPipeline, load_sample_subscribers

MONDAY = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)


def test_status_after_a_sent_period_and_a_missed_one(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    sunday = make_app(any_engine, now=MONDAY - timedelta(days=1, seconds=-30))
    load_sample_subscribers(sunday)
    run_due(sunday, RecordingPipeline().pipeline())
    late = make_app(any_engine, now=MONDAY + timedelta(hours=7))  # Monday's is past the grace
    with leading(late):
        run_due(late, RecordingPipeline().pipeline())
    with late.session() as session:
        session.add(Source(name="wire", kind="rss", url="x", last_fetched_at=MONDAY,
                           consecutive_failures=3, last_error="timed out"))  # fmt: skip

    report = status_report(make_app(any_engine, now=MONDAY + timedelta(hours=7, seconds=45)))
    turkey = next(n for n in report["newsletters"] if n["slug"] == "turkey-unpacked")
    assert turkey["next_run"] == "2026-12-01T05:00:00+00:00"
    assert turkey["next_run_local"] == "2026-12-01T08:00:00+03:00"
    assert turkey["last_issue"]["status"] == "sent"
    assert turkey["last_issue"]["period"] == "2026-11-29T05:00:00+00:00"
    assert turkey["last_issue"]["deliveries"]["accepted"] > 0
    assert turkey["last_run"]["outcome"] == "missed"
    [failure] = turkey["failures"]
    assert failure["period"] == "2026-11-30T05:00:00+00:00" and "grace" in failure["detail"]
    wire = next(s for s in report["sources"] if s["name"] == "wire")
    assert wire["health"] == "failing" and wire["last_error"] == "timed out"
    scheduler = report["scheduler"]
    assert scheduler["leader"]["state"] == "released"
    assert scheduler["last_tick_at"] == (MONDAY + timedelta(hours=7)).isoformat()
    assert scheduler["last_ingest"]["outcome"] == "ok"


def test_status_command_prints_newsletters_sources_and_the_leader(
    any_engine: Engine, make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(any_engine, now=MONDAY + timedelta(seconds=30))
    monkeypatch.setattr(common.LazyApp, "get", lambda self: app)
    load_sample_subscribers(app)
    with leading(app):
        run_due(app, RecordingPipeline().pipeline())
        runner = CliRunner()
        result = runner.invoke(cli_app, ["status"])
        as_json = runner.invoke(cli_app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert "turkey-unpacked" in result.output and "sent" in result.output
    assert "heartbeat 0s ago" in result.output and "leading" in result.output
    document = json.loads(as_json.stdout)
    assert document["scheduler"]["leader"]["state"] == "leading"
