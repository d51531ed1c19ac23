"""The studio on a personal newsletter: its page shows what a reader following every topic
gets, without a leaked token, and an editor's exclusion leaves the article out of every reader's
email."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from digest.app import App
from digest.rendering.personalize import leaks
from digest.sending.send import send_issue
from digest.web.server import create_app
from tests.conftest import DEFAULT_NOW
from tests.integration.test_personal import (
    BRIEFING,
    CLIMATE,
    TURKEY,
    _articles,
    _by_recipient,
    _reader,
    _text,
    personal_app,
)
from tests.support.studio import sign_in


def test_studio_shows_the_personal_issue_and_an_exclusion_reaches_every_reader(
    engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, engine)
    ids = _articles(app, DEFAULT_NOW - timedelta(hours=6))  # before the next 07:00 issue
    _reader(app, "both@example.com", TURKEY, CLIMATE)
    _reader(app, "turkey@example.com", TURKEY)
    with TestClient(create_app(app), follow_redirects=False) as client:
        sign_in(client, app)
        page = client.get(f"/studio/{BRIEFING}").text
        assert "Your Briefing" in page and "Drought reaches Ankara" in page
        issue_id = int(re.findall(rf"/studio/{BRIEFING}/issue/(\d+)/email\.html", page)[0])
        frame = client.get(f"/studio/{BRIEFING}/issue/{issue_id}/email.html").text
        assert leaks(frame) == [] and "Climate story 1" in frame and "unfollow" in frame
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        excluded = client.post(
            f"/studio/{BRIEFING}/issue/{issue_id}/articles/{ids['both']}/exclude",
            data={"csrf": csrf.group(1), "excluded": "true"},
        )
        assert excluded.status_code == 303
    report = send_issue(app, issue_id)
    assert report.accepted == 2
    for messages in _by_recipient(app).values():
        assert "Drought reaches Ankara" not in _text(messages[0])


def test_the_studio_shows_a_sent_personal_issue_largest_variants(
    engine: Engine, make_app: Callable[..., App]
) -> None:
    """After a real send, the issue's stats page lists its variants, largest first, with their
    readers and topics, and the summary counts them and the skipped readers."""
    app = personal_app(make_app, engine)
    _articles(app, DEFAULT_NOW - timedelta(hours=6))
    for n in range(2):
        _reader(app, f"both{n}@example.com", TURKEY, CLIMATE)
    _reader(app, "turkey@example.com", TURKEY)
    _reader(app, "none@example.com")
    with TestClient(create_app(app), follow_redirects=False) as client:
        sign_in(client, app)
        page = client.get(f"/studio/{BRIEFING}").text
        issue_id = int(re.findall(rf"/studio/{BRIEFING}/issue/(\d+)/email\.html", page)[0])
        assert send_issue(app, issue_id).accepted == 3
        stats = client.get(f"/studio/{BRIEFING}/issue/{issue_id}/stats")
    assert stats.status_code == 200
    table = stats.text.split('id="largest-variants"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>#\d+</td><td>(\d+)</td><td>([^<]*)</td>", table)
    assert rows == [("2", f"{TURKEY}, {CLIMATE}"), ("1", TURKEY)]
    summary = stats.text.split('id="variant-summary">', 1)[1].split("</p>", 1)[0]
    assert "2 variants" in summary and "largest 2" in summary
    assert "1 (follows no topic)" in summary
