"""The studio in a real browser: the email shows in its frames, pin and exclude change it,
and an edited config reloads the page by itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from digest.app import App, fixed_clock
from digest.config import load_settings
from tests.browser.conftest import ARTIFACTS
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.articles import add_turkey_week

pytestmark = pytest.mark.browser

SLUG = "turkey-unpacked"


def _titles(page: Any, card: str) -> list[str]:
    return [
        t.strip() for t in page.locator(f"#{card} li[data-article-id] .title").all_inner_texts()
    ]


def _ids(page: Any, card: str) -> list[int]:
    items = page.locator(f"#{card} li[data-article-id]")
    return [int(items.nth(i).get_attribute("data-article-id")) for i in range(items.count())]


LOCAL = {"base_url": "http://127.0.0.1:8000"}  # the Host the browser sends: 127.0.0.1:<port>
PASSWORD = "correct horse battery staple"


def _editor(app: App, email: str = "publisher@example.com", role: str = "publisher") -> str:
    from digest.ops.editors import add_editor
    from digest.storage.access import EditorRole

    with app.session() as session:
        add_editor(session, email, EditorRole(role), password=PASSWORD, now=app.now())
    return email


def _sign_in(page: Any, server: Any, email: str, then: str) -> None:
    """Open `then`, get the sign-in page, sign in with the password, land back on `then`."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}{then}")
    expect(page.locator("h1")).to_contain_text("digest studio")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.locator("form[action='/studio/login'] button[type=submit]").click()
    page.wait_for_url(f"{server.url}{then}")


def _article_button(page: Any, article_id: int, action: str) -> Any:
    return page.locator(f'li[data-article-id="{article_id}"] button[data-action="{action}"]')


def test_studio_shows_the_issue_and_pin_and_exclude_change_it(
    engine: Engine, make_app: Callable[..., App], serve: Any, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    app = make_app(engine, site=LOCAL)
    newest_first = add_turkey_week(app, 5)
    titles = {}
    with app.session() as session:
        from digest.storage.models import Article

        for article_id in newest_first:
            article = session.get(Article, article_id)
            assert article is not None
            titles[article_id] = article.title
    server = serve(app)
    page = browser_page

    _sign_in(page, server, _editor(app, role="editor"), f"/studio/{SLUG}")
    expect(page.locator("h1")).to_contain_text("Turkey Unpacked")
    assert _ids(page, "articles") == newest_first

    for frame_id in ("#frame-600", "#frame-375"):
        frame = page.frame_locator(frame_id)
        expect(frame.locator("body")).to_contain_text("Turkey Unpacked")
        expect(frame.locator("body")).to_contain_text(titles[newest_first[0]])
    expect(page.locator("#text-part pre")).to_contain_text(titles[newest_first[0]])

    oldest, second = newest_first[-1], newest_first[1]
    _article_button(page, oldest, "pin").click()
    expect(page.locator("[data-flash=ok]")).to_contain_text(f"Article {oldest} pinned")
    assert _ids(page, "articles")[0] == oldest
    frame = page.frame_locator("#frame-600")
    expect(frame.locator("body")).to_contain_text(titles[oldest])
    email_text = frame.locator("body").inner_text()
    assert email_text.index(titles[oldest]) < email_text.index(titles[newest_first[0]])

    _article_button(page, second, "exclude").click()
    expect(page.locator("[data-flash=ok]")).to_contain_text(f"Article {second} excluded")
    assert second not in _ids(page, "articles")
    assert _ids(page, "excluded") == [second]
    frame = page.frame_locator("#frame-600")
    expect(frame.locator("body")).to_contain_text(titles[oldest])
    expect(frame.locator("body")).not_to_contain_text(titles[second])

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "studio.png"), full_page=True)
    assert page.problems == []


def test_studio_reloads_when_the_config_changes(
    engine: Engine,
    tmp_path: Path,
    serve: Any,
    browser_page: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import expect

    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    monkeypatch.delenv("DIGEST_DATABASE_URL", raising=False)
    config = tmp_path / "digest.toml"
    config.write_text(_config_toml(engine, "Turkey Unpacked"), encoding="utf-8")
    app = App(settings=load_settings(config), clock=fixed_clock(DEFAULT_NOW), _engine=engine)
    add_turkey_week(app, 3)
    server = serve(app)
    page = browser_page

    _sign_in(page, server, _editor(app), f"/studio/{SLUG}")
    expect(page.locator("h1")).to_contain_text("Turkey Unpacked")
    page.wait_for_function("() => document.readyState === 'complete'")

    config.write_text(_config_toml(engine, "Turkey Unfolded"), encoding="utf-8")
    expect(page.locator("h1")).to_contain_text("Turkey Unfolded", timeout=15_000)
    expect(page.frame_locator("#frame-600").locator("body")).to_contain_text("Turkey Unfolded")
    assert page.problems == []


def _config_toml(engine: Engine, title: str) -> str:
    url = engine.url.render_as_string(hide_password=False)
    return re.sub(
        r"^ {4}",
        "",
        f"""
    [database]
    url = "{url}"
    [site]
    name = "Test Post"
    base_url = "http://127.0.0.1:8000"
    timezone = "Europe/Istanbul"
    [sender]
    from_email = "news@example.com"
    postal_address = "1 Test Street, Testville"
    [[newsletters]]
    slug = "{SLUG}"
    title = "{title}"
    schedule = "0 8 * * *"
    timezone = "Europe/Istanbul"
    window = "8d"
    min_articles = 2
    topic = {{ tags = ["Turkey"] }}
    """,
        flags=re.MULTILINE,
    )


def test_a_publisher_signs_in_approves_and_signs_out(
    engine: Engine, make_app: Callable[..., App], serve: Any, browser_page: Any
) -> None:
    from playwright.sync_api import expect

    from digest.storage.models import Issue

    app = make_app(engine, site=LOCAL)
    add_turkey_week(app, 3)
    server = serve(app)
    page = browser_page

    page.goto(f"{server.url}/studio")
    assert "/studio/login" in page.url  # nothing of the studio without signing in
    assert page.locator("input[name=csrf]").count() == 0
    page.fill("#email", _editor(app))
    page.fill("#password", "not the password at all")
    page.locator("form[action='/studio/login'] button[type=submit]").click()
    expect(page.locator("[role=status]")).to_contain_text("don't match")

    _sign_in(page, server, "publisher@example.com", f"/studio/{SLUG}")
    expect(page.locator("header .who")).to_contain_text("publisher@example.com · publisher")
    page.locator("#approve-form button").click()
    expect(page.locator("[data-flash=ok]")).to_contain_text("approved")
    with app.session() as session:
        [issue] = session.exec(select(Issue)).all()
        assert (issue.status, issue.approved_by) == ("approved", "publisher@example.com")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "studio-approved.png"), full_page=True)

    page.locator("#sign-out").click()
    page.wait_for_url(f"{server.url}/studio/login")
    page.goto(f"{server.url}/studio/{SLUG}")
    assert "/studio/login" in page.url  # the session is over, on the server too
    assert page.problems == []
