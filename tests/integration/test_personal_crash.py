"""A personal newsletter's `digest send`, SIGKILLed mid-send and resumed: every reader once.

Readers follow one to three of three topics; the SendGrid test server counts what arrived and
answers slowly so that kills land while batches of several variants are in flight and the
audience is still being frozen page by page.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from digest.app import App, fixed_clock
from digest.issues import periods
from digest.issues.assemble import build_issue
from digest.storage.models import Delivery, IssueVariant
from subscribers import add_subscriber
from tests.conftest import DEFAULT_NOW, make_settings
from tests.integration.test_send_crash import _ledger, _wait_for_request
from tests.support.articles import add_article
from tests.support.seeds import draw_seed
from tests.support.sendgrid_server import SendGridServer
from tests.support.sending import add_audience, address, finish, start_send

pytestmark = pytest.mark.slow

KEY = "SG.personal-crash"
BRIEFING = "my-briefing"
TOPICS = ["topic-a", "topic-b", "topic-c"]
READERS = 240


def _newsletters() -> list[dict[str, object]]:
    topics: list[dict[str, object]] = [
        {"slug": t, "title": t.title(), "schedule": "0 8 * * *", "timezone": "Europe/Istanbul"}
        for t in TOPICS
    ]
    personal = {"slug": BRIEFING, "title": "Your Briefing", "kind": "personal",
                "schedule": "0 14 * * *", "timezone": "Europe/Istanbul"}  # fmt: skip
    return [*topics, personal]


def _config(tmp_path: Path, engine: Engine, server: SendGridServer) -> tuple[Path, App]:
    url = engine.url.render_as_string(hide_password=False)
    lines = ["[database]", f'url = "{url}"', "[site]", 'base_url = "https://news.example.com"',
             "[sender]", 'from_email = "news@example.com"', "[delivery]",
             'transport = "sendgrid"', "batch_size = 10", "concurrency = 3", "freeze_page = 40",
             "[sendgrid]", f'api_url = "{server.url}"', "timeout = 20"]  # fmt: skip
    for newsletter in _newsletters():
        lines.append("[[newsletters]]")
        lines += [f'{k} = "{v}"' for k, v in newsletter.items()]
    path = tmp_path / "digest.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = make_settings(tmp_path, url, {"newsletters": _newsletters()})
    return path, App(settings=settings, clock=fixed_clock(DEFAULT_NOW), _engine=engine)


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, validate="rules") as running:
        running.delay_next(10_000, seconds=0.04)
        yield running


def _prepare(app: App, engine: Engine) -> tuple[int, dict[str, frozenset[str]]]:
    """Articles for each topic, readers following random topics; the issue built."""
    newsletter = app.settings.newsletter(BRIEFING)
    period = periods.current_period(app.settings, newsletter, DEFAULT_NOW)
    for n, topic in enumerate(TOPICS):
        for k in range(3):
            add_article(app, f"{topic} story {k}", period - timedelta(hours=1 + n + k * 3),
                        topics={topic: ["tag:X"]})  # fmt: skip
    first, last = add_audience(engine, BRIEFING, READERS)
    rng = draw_seed("personal follows").rng()
    follows: dict[str, frozenset[str]] = {}
    with app.session() as session:
        for i in range(first, last + 1):
            chosen = frozenset(rng.sample(TOPICS, rng.randint(1, 3)))
            follows[address(i)] = chosen
            for topic in sorted(chosen):
                add_subscriber(session, address(i), topic, now=app.now())
    return build_issue(app, BRIEFING, period).id or 0, follows


def test_killed_mid_send_then_resumed_mails_every_reader_once_with_their_topics(
    any_engine: Engine, server: SendGridServer, tmp_path: Path
) -> None:
    config, app = _config(tmp_path, any_engine, server)
    issue_id, follows = _prepare(app, any_engine)
    env = {"SENDGRID_API_KEY": KEY}
    chooser = draw_seed("personal kill moments").rng()
    kills = 0
    for _ in range(3):
        process = start_send(config, BRIEFING, env=env)
        _wait_for_request(process, server, server.attempts)
        time.sleep(chooser.uniform(0.0, 0.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        finish(process)
    assert kills >= 1  # at least one sender died mid-send
    code, output = finish(start_send(config, BRIEFING, env=env))
    assert code in (0, 2), output
    counts, unknown = _ledger(any_engine, issue_id)
    received = Counter(server.recipients())
    assert max(received.values()) == 1, f"someone was mailed twice: {counts}"
    assert counts["accepted"] + counts["unknown"] == READERS, counts

    code, output = finish(start_send(config, BRIEFING, "--retry-unknown", env=env))
    assert code == 0, output
    received = Counter(server.recipients())
    assert set(received) == set(follows)
    assert {a for a, n in received.items() if n > 1} <= unknown
    server.assert_all_valid()
    with Session(any_engine) as session:
        rows = session.execute(
            select(Delivery.email, IssueVariant.topics)  # type: ignore[call-overload]
            .join(IssueVariant, IssueVariant.id == Delivery.variant_id)
            .where(Delivery.issue_id == issue_id)
        ).all()
    assert len(rows) == READERS
    assert all(frozenset(topics) == follows[email] for email, topics in rows)
