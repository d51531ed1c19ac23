"""`digest stats` counts what the ledger recorded, on SQLite and PostgreSQL.

Every delivery here comes from a real send (freeze, ledger, outbox transport), provider events
from the real webhook code, unsubscribes from the real one-click POST: the ledger never writes
an `accepted` row (a pending row in an accepted batch was sent), and a count that reads the row
alone said `sent 0` for an issue that reached everyone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.cli import common
from digest.ops.stats import newsletter_stats
from digest.sending.counts import delivery_counts
from digest.sending.events import apply_sendgrid_events
from digest.storage.models import Delivery
from digest.web.server import create_app
from subscribers import add_subscriber
from subscribers.models import ConsentEvent
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.sending import outbox_messages, sent_issue

TU = "turkey-unpacked"
READERS = [f"reader{n}@example.com" for n in range(14)]
EARLIER = "2026-11-16T05:00:00+00:00"


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    app = make_app(any_engine)
    with app.session() as session:
        for email in READERS:
            add_subscriber(session, email, TU, now=DEFAULT_NOW)
    return app


def cli(app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """`digest ARGS --json` against the app's database, through the real command line."""
    config = tmp_path / "stats.toml"
    config.write_text(
        f'[database]\nurl = "{app.engine.url.render_as_string(hide_password=False)}"\n'
        f'[site]\nbase_url = "https://news.example.com"\n'
        f'[[newsletters]]\nslug = "{TU}"\ntitle = "Turkey Unpacked"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    monkeypatch.delenv("DIGEST_DATABASE_URL", raising=False)
    monkeypatch.setattr(common.console, "width", 300)
    result = CliRunner().invoke(
        cli_app, ["--config", str(config), "--now", DEFAULT_NOW.isoformat(), *args, "--json"]
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def issue_counts(app: App) -> dict[int, dict[str, int]]:
    with app.session() as session:
        report = newsletter_stats(session, TU)
    return {i.issue_id: vars(i.counts) for i in report.issues}


def test_stats_sent_is_what_deliveries_calls_accepted(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_id = sent_issue(app, limit=9)  # a canary: 9 of 14 sent, 5 still pending
    deliveries = cli(app, tmp_path, monkeypatch, "deliveries", TU)
    stats = cli(app, tmp_path, monkeypatch, "stats", TU)
    [issue] = [i for i in stats["issues"] if i["issue_id"] == issue_id]
    assert deliveries["counts"]["accepted"] == 9
    assert deliveries["counts"]["pending"] == 5
    assert issue["counts"]["sent"] == deliveries["counts"]["accepted"]
    assert issue["counts"]["recipients"] == 14
    assert stats["totals"]["sent"] == 9


def test_provider_events_and_complaints_count_per_issue(app: App) -> None:
    earlier = sent_issue(app, period=EARLIER)
    latest = sent_issue(app)
    with app.session() as session:
        rows = {
            d.email: d.id for d in session.exec(select(Delivery).where(Delivery.issue_id == latest))
        }
        events: list[dict[str, Any]] = [
            _event(rows, READERS[0], "delivered"),
            _event(rows, READERS[0], "open"),
            _event(rows, READERS[0], "click", url="https://news.example.com/a"),
            _event(rows, READERS[1], "delivered"),
            _event(rows, READERS[1], "open"),
            _event(rows, READERS[2], "bounce", type="bounce", status="5.1.1"),
            _event(rows, READERS[3], "spamreport"),
        ]
        apply_sendgrid_events(session, events, now=DEFAULT_NOW)
    counts = issue_counts(app)
    assert counts[latest] == {
        "recipients": 14,
        "sent": 14,  # a bounce was sent all the same
        "delivered": 2,
        "opened": 2,
        "clicked": 1,
        "bounced": 1,
        "complained": 1,
        "unsubscribed": 0,
    }
    assert counts[earlier]["sent"] == 14 and counts[earlier]["complained"] == 0
    with app.session() as session:
        assert delivery_counts(session, latest)["accepted"] == 11  # 14 less the three events


def test_one_click_unsubscribe_is_credited_to_the_issue_that_prompted_it(app: App) -> None:
    sent_issue(app, period=EARLIER)
    latest = sent_issue(app)
    outbox = Path(app.settings.delivery.outbox_dir)
    [message] = [
        m
        for m in outbox_messages(outbox)
        if m["To"].addresses[0].addr_spec == READERS[5] and m["X-Digest-Issue"] == str(latest)
    ]
    link = re.search(r"<(https://[^>]+)>", message["List-Unsubscribe"])
    assert link is not None and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    path = link.group(1).removeprefix(app.settings.site.base_url)
    answer = TestClient(create_app(app)).post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    with app.session() as session:
        event = session.exec(select(ConsentEvent).where(ConsentEvent.action == "unsubscribe")).one()
    assert event.issue_id == latest
    assert issue_counts(app)[latest]["unsubscribed"] == 1


def _event(rows: dict[str, int | None], email: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": email,
        "event": kind,
        "timestamp": int(DEFAULT_NOW.timestamp()) - 60,
        "sg_event_id": f"evt-{email}-{kind}",
        "digest_delivery_id": str(rows[email]),
        **extra,
    }
