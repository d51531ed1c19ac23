"""`/metrics`: Prometheus text format with issues, deliveries, send rate, sources, scheduler."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session

from digest.app import App
from digest.scheduling.leader import leading
from digest.scheduling.tick import run_due
from digest.storage.models import Source
from digest.web.metrics import Exposition
from digest.web.server import create_app
from subscribers import count_audience
from tests.support.scheduling import RecordingPipeline, load_sample_subscribers

MONDAY = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
SAMPLE = re.compile(r"^([a-z_]+)(\{.*\})? (\S+)$")


def _scrape(app: App) -> tuple[str, dict[tuple[str, str], float]]:
    response = TestClient(create_app(app)).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[tuple[str, str], float] = {}
    for line in response.text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) digest_[a-z_]+ ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return response.text, samples


def test_metrics_after_a_scheduled_send(any_engine: Engine, make_app: Callable[..., App]) -> None:
    at_fire = make_app(any_engine, now=MONDAY + timedelta(seconds=30))
    load_sample_subscribers(at_fire)
    with leading(at_fire) as leadership:
        assert leadership is not None
        run_due(at_fire, RecordingPipeline().pipeline())
        scrape_at = MONDAY + timedelta(minutes=2)
        text, samples = _scrape(make_app(any_engine, now=scrape_at))
    with Session(any_engine) as session:
        audience = count_audience(session, "turkey-unpacked")
        session.add(Source(name="wire", kind="rss", url="https://example.com/feed",
                           last_fetched_at=MONDAY, consecutive_failures=4,
                           last_error="HTTP 500"))  # fmt: skip
        session.commit()

    assert samples[("digest_issues", '{newsletter="turkey-unpacked",status="sent"}')] == 1
    accepted = samples[("digest_deliveries", '{newsletter="turkey-unpacked",state="accepted"}')]
    assert accepted == audience > 0
    assert samples[("digest_schedule_runs", '{newsletter="turkey-unpacked",outcome="sent"}')] == 1
    assert samples[("digest_send_rate_per_second", "")] == audience / 300
    assert samples[("digest_scheduler_heartbeat_age_seconds", "")] == 90
    [leader] = [k for k in samples if k[0] == "digest_scheduler_leader"]
    assert samples[leader] == 1
    assert "# TYPE digest_issues gauge" in text

    later = MONDAY + timedelta(hours=1)
    _, samples = _scrape(make_app(any_engine, now=later))
    assert samples[("digest_source_up", '{source="wire"}')] == 0
    assert samples[("digest_source_consecutive_failures", '{source="wire"}')] == 4
    assert samples[("digest_send_rate_per_second", "")] == 0  # nothing in the last 5 minutes
    assert samples[leader] == 0  # released when the tick ended


def test_metrics_on_an_empty_database(any_engine: Engine, make_app: Callable[..., App]) -> None:
    text, samples = _scrape(make_app(any_engine))
    assert "NaN" in text  # no scheduler has run: its heartbeat age is unknown
    assert samples[("digest_send_rate_per_second", "")] == 0


def test_label_values_are_escaped() -> None:
    out = Exposition()
    out.family("digest_x", "gauge", "x", [({"source": 'a "b" \\ c\nd'}, 1.5)])
    assert out.render().splitlines()[-1] == 'digest_x{source="a \\"b\\" \\\\ c\\nd"} 1.5'
