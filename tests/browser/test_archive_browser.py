"""The public archive in a real browser: the "view in browser" link of a sent .eml opens the
issue's page (its articles, pictures, nothing of the reader), the archive lists it, the feed is
Atom; on a 390 px phone no public page and no studio page scrolls sideways."""

from __future__ import annotations

import re
from collections.abc import Callable
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pytest
from sqlalchemy import Engine

from digest.app import App
from digest.ingest.run import run_ingest
from digest.issues import assemble
from digest.sending.send import send_issue
from digest.storage.models import IssueStatus
from subscribers import add_subscriber
from tests.browser.conftest import ARTIFACTS
from tests.browser.test_studio_browser import LOCAL, _editor, _sign_in
from tests.conftest import DEFAULT_NOW, REPO_ROOT

pytestmark = pytest.mark.browser

SLUG = "turkey-unpacked"
READER = "ayse.reader@example.com"
READER_NAME = "Ayşe Okur"
PHONE = {"width": 390, "height": 844}


def _feeds_served_by(server_url: str, folder: Path) -> list[dict[str, str]]:
    """The sample feeds, their pictures pointing at this server instead of the default
    base_url's port (they name http://127.0.0.1:8000/media/…, what `digest serve` answers)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, file in (("world", "world.xml"), ("business", "business.xml")):
        text = (REPO_ROOT / "config" / "sample" / "feeds" / file).read_text(encoding="utf-8")
        (folder / file).write_text(text.replace("http://127.0.0.1:8000", server_url), "utf-8")
        sources.append({"name": name, "kind": "rss", "url": str(folder / file)})
    return sources


def _no_sideways_scroll(page: Any, url: str, label: str) -> None:
    page.goto(url)
    page.wait_for_load_state("load")
    width = page.evaluate("document.documentElement.scrollWidth")
    wide = page.evaluate(  # the culprits, should it fail
        "[...document.querySelectorAll('body *')].filter(e => "
        "e.getBoundingClientRect().right > 391).slice(0, 8).map(e => e.tagName + '.' + "
        "e.className + ' ' + Math.round(e.getBoundingClientRect().right))"
    )
    page.screenshot(path=str(ARTIFACTS / f"phone-{label}.png"))
    assert width <= PHONE["width"], f"{label}: {url} is {width} px wide on a 390 px phone: {wide}"


def test_view_in_browser_link_of_a_sent_email(
    engine: Engine,
    make_app: Callable[..., App],
    serve: Any,
    browser_page: Any,
    chromium: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    holder: dict[str, str] = {}
    app = make_app(
        engine,
        site=LOCAL,
        sources=[
            {"name": "world", "kind": "rss", "url": str(tmp_path / "feeds" / "world.xml")},
            {"name": "business", "kind": "rss", "url": str(tmp_path / "feeds" / "business.xml")},
        ],
    )
    server = serve(app)
    holder["url"] = server.url
    _feeds_served_by(server.url, tmp_path / "feeds")

    # The real pipeline: ingest the feeds, assemble and render the issue, send it by the outbox.
    run_ingest(app)
    with app.session() as session:
        add_subscriber(session, READER, SLUG, now=DEFAULT_NOW, name=READER_NAME)
    issue = assemble.build_issue(app, SLUG, DEFAULT_NOW)
    assert issue.status == IssueStatus.DRAFT and issue.id is not None
    assert send_issue(app, issue.id).accepted == 1
    (eml,) = (Path(app.settings.delivery.outbox_dir) / SLUG / str(issue.id)).glob("*.eml")
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    html_part = mail.get_body(("html",))
    assert html_part is not None
    links = re.findall(r'href="([^"]+)"[^>]*>View in your browser<', html_part.get_content())
    (link,) = links
    assert link == f"{LOCAL['base_url']}/archive/{SLUG}/{issue.id}"
    assert mail["List-Archive"] == f"<{LOCAL['base_url']}/archive/{SLUG}>"
    # base_url names the default port; this test's server listens on another one.
    page_url = server.url + link.removeprefix(LOCAL["base_url"])

    page = browser_page
    page.goto(page_url)
    with app.session() as session:
        titles = [a.title for _, a, _ in assemble.issue_rows(session, issue.id, SLUG)]
    assert len(titles) >= 3
    for title in titles:
        expect(page.get_by_text(title, exact=True).first).to_be_visible()
    body = page.content()
    for personal in (READER_NAME, READER, "%%", "/u/", "/preferences/", "Unsubscribe"):
        assert personal not in body, personal
    assert "meridian-world" not in body and "The Meridian Post — World" in body
    expect(page.get_by_role("link", name="Subscribe").first).to_be_visible()
    # The pictures load (served by digest serve from config/sample/media/).
    loaded = page.evaluate(
        "[...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
    )
    assert loaded >= 2, f"{loaded} pictures loaded"
    page.screenshot(path=str(ARTIFACTS / "archive-issue-desktop.png"), full_page=False)

    page.goto(f"{server.url}/archive/{SLUG}")
    expect(page.locator("ol.issues li")).to_have_count(1)
    expect(page.locator("ol.issues a")).to_have_text(issue.subject)
    page.screenshot(path=str(ARTIFACTS / "archive-list-desktop.png"), full_page=True)

    feed = feedparser.parse(httpx.get(f"{server.url}/archive/{SLUG}/feed.xml").content)
    assert feed.version == "atom10" and len(feed.entries) == 1
    assert feed.entries[0].link == link

    # A 390 px phone: no page scrolls sideways, the studio's included.
    context = chromium.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    phone = context.new_page()
    try:
        for label, path in (
            ("home", "/"),
            ("archive", f"/archive/{SLUG}"),
            ("archive-issue", f"/archive/{SLUG}/{issue.id}"),
            ("subscribe", f"/subscribe/{SLUG}"),
        ):
            _no_sideways_scroll(phone, server.url + path, label)
        email = _editor(app)
        _sign_in(phone, server, email, "/studio")
        _no_sideways_scroll(phone, f"{server.url}/studio", "studio")
        _no_sideways_scroll(phone, f"{server.url}/studio/{SLUG}", "studio-issue")
        _no_sideways_scroll(phone, f"{server.url}/studio/login", "studio-login")
    finally:
        context.close()
