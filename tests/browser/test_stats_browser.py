"""A sent issue's page in the studio, in a real browser: its figures and the SVG chart of opens
and clicks, from an issue built and sent through the outbox and clicked through the redirect."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from digest.app import App, fixed_clock
from digest.issues import assemble
from digest.sending.send import send_issue
from digest.web.server import create_app
from subscribers import add_subscriber
from tests.browser.conftest import ARTIFACTS
from tests.browser.test_studio_browser import LOCAL, _editor, _sign_in
from tests.conftest import DEFAULT_NOW, base_config
from tests.support.articles import add_turkey_week

pytestmark = pytest.mark.browser

SLUG = "turkey-unpacked"
CLICK = re.compile(r'href="http://127\.0\.0\.1:8000(/r/\d+/[^"]+)"')
PIXEL = re.compile(r'src="http://127\.0\.0\.1:8000(/o/[^"]+\.gif)"')
# (hours after the send started, opens, clicks on the first links)
TRAFFIC = ((0, 6, 3), (1, 4, 2), (3, 2, 2), (8, 1, 1), (20, 1, 0), (30, 0, 1))


def test_the_sent_issue_page_shows_its_figures_and_chart(
    engine: Engine, make_app: Callable[..., App], serve: Any, browser_page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    newsletters = [
        {**n, "track_clicks": True, "track_opens": True} if n["slug"] == SLUG else n
        for n in base_config(tmp_path)["newsletters"]
    ]
    app = make_app(engine, site=LOCAL, newsletters=newsletters)
    add_turkey_week(app, 4)
    with app.session() as session:
        for n in range(5):
            add_subscriber(session, f"reader{n}@example.com", SLUG, now=DEFAULT_NOW)
    issue = assemble.build_issue(app, SLUG)
    assert issue.id is not None
    assert send_issue(app, issue.id).accepted == 5
    mail = next((Path(app.settings.delivery.outbox_dir) / SLUG / str(issue.id)).glob("*.eml"))
    body = message_from_bytes(mail.read_bytes(), policy=policy.default).get_body(("html",))
    assert body is not None
    html = body.get_content()  # type: ignore[attr-defined]
    clicks = list(dict.fromkeys(CLICK.findall(html)))  # a story's picture, title, button: one
    pixel = PIXEL.findall(html)[0]
    for hours, opens, clicked in TRAFFIC:  # readers at different hours, through the real routes
        later = App(
            settings=app.settings,
            clock=fixed_clock(DEFAULT_NOW + timedelta(hours=hours, minutes=20)),
            _engine=engine,
        )
        client = TestClient(create_app(later), base_url="http://127.0.0.1:8000")
        for _ in range(opens):
            assert client.get(pixel).status_code == 200
        for path in clicks[:clicked]:
            assert client.get(path, follow_redirects=False).status_code == 302

    server = serve(app)
    page = browser_page
    _sign_in(page, server, _editor(app, role="editor"), f"/studio/{SLUG}/history")
    page.locator(f'tr[data-issue="{issue.id}"] a.stats').click()
    page.wait_for_url(f"{server.url}/studio/{SLUG}/issue/{issue.id}/stats")
    expect(page.locator("h1")).to_contain_text(f"Issue #{issue.id}")
    expect(page.locator('[data-figure="opens"] .n')).to_have_text("14")
    expect(page.locator('[data-figure="clicks"] .n')).to_have_text("9")
    expect(page.locator('[data-figure="sent"] .n')).to_have_text("5")
    expect(page.locator("#opens-note")).to_contain_text("Apple Mail")
    chart = page.locator("svg#engagement-chart")
    expect(chart).to_be_visible()
    assert chart.get_attribute("data-hours") == "48"
    opens = page.locator("svg#engagement-chart circle.point.opens")
    assert opens.count() == 5  # hours 0, 1, 3, 8, 20
    assert [opens.nth(i).get_attribute("data-value") for i in range(5)] == ["6", "4", "2", "1", "1"]
    assert page.locator("svg#engagement-chart circle.point.clicks").count() == 5
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    rows = page.locator("#top-links tbody tr")
    assert rows.count() >= 3
    expect(rows.first.locator("td").last).to_have_text("5")  # clicks[0]: in 5 of the 6 hours
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "issue-stats.png"), full_page=True)
    assert page.problems == []
