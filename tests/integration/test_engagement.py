"""Opt-in engagement, on SQLite and PostgreSQL: issues built and sent through the real code
(assembly, rendering, freeze, ledger, outbox transport), clicks and opens through the real
redirect and pixel routes, figures through `digest stats --json` and the studio's page."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
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
from digest.issues import assemble
from digest.sending.send import send_issue
from digest.storage.engagement import EngagementCount, IssueLink
from digest.storage.models import Article, IssueStatus
from digest.web.server import create_app
from subscribers import add_subscriber
from tests.conftest import DEFAULT_NOW, TEST_SECRET, base_config
from tests.support.articles import add_turkey_week
from tests.support.studio import sign_in

SLUG = "turkey-unpacked"
READERS = ["ayse@example.com", "bora@example.com", "cem@example.com"]
CLICK = re.compile(r'href="https://news\.example\.com(/r/\d+/[^"]+)"')
PIXEL = re.compile(r'src="https://news\.example\.com(/o/[^"]+\.gif)"')


def tracked_newsletters(tmp_path: Path, **tracking: bool) -> list[dict[str, Any]]:
    newsletters: list[dict[str, Any]] = base_config(tmp_path)["newsletters"]
    return [{**n, **tracking} if n["slug"] == SLUG else n for n in newsletters]


@pytest.fixture
def tracked(any_engine: Engine, make_app: Callable[..., App], tmp_path: Path) -> App:
    newsletters = tracked_newsletters(tmp_path, track_clicks=True, track_opens=True)
    return make_app(any_engine, newsletters=newsletters)


def send_built_issue(app: App) -> tuple[int, list[EmailMessage]]:
    """Articles → assembled, rendered issue → sent to READERS by the outbox transport."""
    add_turkey_week(app, 3)
    with app.session() as session:
        for email in READERS:
            add_subscriber(session, email, SLUG, now=DEFAULT_NOW)
    issue = assemble.build_issue(app, SLUG)
    assert issue.status == IssueStatus.DRAFT and issue.id is not None
    report = send_issue(app, issue.id)
    assert report.accepted == len(READERS), report
    folder = Path(app.settings.delivery.outbox_dir) / SLUG / str(issue.id)
    mails = [
        message_from_bytes(p.read_bytes(), policy=policy.default) for p in folder.glob("*.eml")
    ]
    assert len(mails) == len(READERS)
    return issue.id, mails  # type: ignore[return-value]


def html_of(mail: EmailMessage) -> str:
    part = mail.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def text_of(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def article_urls(app: App) -> set[str]:
    with app.session() as session:
        return {a.url for a in session.exec(select(Article))}


def stats_cli(app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = tmp_path / "stats.toml"
    config.write_text(
        f'[database]\nurl = "{app.engine.url.render_as_string(hide_password=False)}"\n'
        f'[site]\nbase_url = "https://news.example.com"\n'
        f'[[newsletters]]\nslug = "{SLUG}"\ntitle = "Turkey Unpacked"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    monkeypatch.delenv("DIGEST_DATABASE_URL", raising=False)
    monkeypatch.setattr(common.console, "width", 300)
    result = CliRunner().invoke(
        cli_app,
        ["--config", str(config), "--now", DEFAULT_NOW.isoformat(), "stats", SLUG, "--json"],
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_with_tracking_off_no_link_is_rewritten_and_no_pixel_added(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine)  # the defaults: track_clicks and track_opens off
    issue_id, mails = send_built_issue(app)
    urls = article_urls(app)
    for mail in mails:
        html = html_of(mail)
        assert "/r/" not in html and "/o/" not in html
        assert not CLICK.search(html) and not PIXEL.search(html)
        assert all(f'href="{url}"' in html for url in urls)  # each article links straight
    with app.session() as session:
        assert session.exec(select(IssueLink).where(IssueLink.issue_id == issue_id)).all() == []


def test_a_click_through_the_redirect_counts_and_goes_to_the_original_url(
    tracked: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue_id, mails = send_built_issue(tracked)
    urls = article_urls(tracked)
    html = html_of(mails[0])
    clicks = CLICK.findall(html)
    assert clicks and not any(f'href="{url}"' in html for url in urls)  # every article link
    # rendered once per issue: every reader's message has the very same redirects
    assert all(CLICK.findall(html_of(m)) == clicks for m in mails)
    assert all(url in text_of(mails[0]) for url in urls)  # the text part keeps the originals
    assert len(PIXEL.findall(html)) == 1

    client = TestClient(create_app(tracked))
    reached = []
    distinct = list(dict.fromkeys(clicks))  # a story's picture, title and button: one link
    assert len(distinct) == len(urls)
    for path in distinct[:3]:
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 302, answer.text
        assert answer.headers["cache-control"].startswith("no-store")
        reached.append(answer.headers["location"])
    assert set(reached) <= urls
    # the site's own pages ("view in browser") are not stories: linked straight
    assert f'href="{tracked.links().archive_issue(SLUG, issue_id)}"' in html
    assert client.get(distinct[0], follow_redirects=False).headers["location"] == reached[0]

    pixel = PIXEL.findall(html)[0]
    for _ in range(2):
        answer = client.get(pixel)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/gif"
        assert answer.content.startswith(b"GIF89a")

    report = stats_cli(tracked, tmp_path, monkeypatch)
    issue = next(i for i in report["issues"] if i["issue_id"] == issue_id)
    assert issue["opens"] == 2 and issue["clicks"] == 4
    assert issue["top_links"][0] == {"url": reached[0], "clicks": 2}
    assert sum(link["clicks"] for link in issue["top_links"]) == 4
    assert len(issue["timeline"]) == 48
    assert issue["timeline"][0] == {"hour": 0, "opens": 2, "clicks": 4}
    assert issue["counts"]["sent"] == len(READERS)  # the existing keys are still there
    assert "Apple Mail" in report["opens_note"]
    with tracked.session() as session:  # nothing names a reader
        rows = session.exec(select(EngagementCount)).all()
        assert rows and not any(
            email in repr(row.model_dump()) for row in rows for email in READERS
        )


def test_the_redirect_refuses_a_tampered_or_unknown_link(tracked: App) -> None:
    issue_id, mails = send_built_issue(tracked)
    clicks = CLICK.findall(html_of(mails[0]))
    client = TestClient(create_app(tracked))
    links = tracked.links()
    first = clicks[0]
    index, sig = first.rsplit("/", 1)[1].split(".")
    tampered_sig = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    refused = [
        f"/r/{issue_id}/{index}.{tampered_sig}",  # the signature edited
        f"/r/{issue_id}/{int(index) + 1}.{sig}",  # another index with this signature
        f"/r/{issue_id + 1}/{index}.{sig}",  # another issue with this signature
        links.click(issue_id, 999).removeprefix(links.base_url),  # signed, not in the issue
        f"/r/{issue_id}/{index}",  # no signature
        f"/r/{issue_id}/https%3A%2F%2Fevil.example",  # a URL instead of an index
        f"/o/{issue_id}.{tampered_sig}.gif",
    ]
    for path in refused:
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 404, path
        assert "location" not in answer.headers
    with tracked.session() as session:
        assert session.exec(select(EngagementCount)).all() == []


def test_a_draft_redirects_but_counts_nothing(tracked: App) -> None:
    add_turkey_week(tracked, 3)
    issue = assemble.build_issue(tracked, SLUG)
    assert issue.id is not None
    clicks = CLICK.findall(issue.html)
    answer = TestClient(create_app(tracked)).get(clicks[0], follow_redirects=False)
    assert answer.status_code == 302
    with tracked.session() as session:
        assert session.exec(select(EngagementCount)).all() == []


def test_with_sendgrid_digest_leaves_the_links_to_sendgrid(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    newsletters = tracked_newsletters(tmp_path, track_clicks=True, track_opens=True)
    app = make_app(
        any_engine,
        newsletters=newsletters,
        delivery={"transport": "sendgrid"},
        env={"SENDGRID_API_KEY": "SG.test"},
    )
    add_turkey_week(app, 3)
    issue = assemble.build_issue(app, SLUG)
    assert not CLICK.search(issue.html) and not PIXEL.search(issue.html)
    with app.session() as session:  # the table is kept: SendGrid's click events name the URL
        stored = session.exec(select(IssueLink).where(IssueLink.issue_id == issue.id)).all()
    assert {link.url for link in stored} >= article_urls(app)


def test_the_studio_shows_a_sent_issue_with_its_chart(tracked: App) -> None:
    issue_id, mails = send_built_issue(tracked)
    clicks = CLICK.findall(html_of(mails[0]))
    pixel = PIXEL.findall(html_of(mails[0]))[0]
    for hours, opens, clicked in ((0, 3, 1), (2, 1, 2), (7, 1, 0)):
        later = TestClient(create_app(_at(tracked, hours)))
        for _ in range(opens):
            assert later.get(pixel).status_code == 200
        for path in clicks[:clicked]:
            assert later.get(path, follow_redirects=False).status_code == 302
    client = TestClient(create_app(tracked))
    sign_in(client, tracked, role="editor")
    history = client.get(f"/studio/{SLUG}/history")
    assert f'/studio/{SLUG}/issue/{issue_id}/stats"' in history.text
    page = client.get(f"/studio/{SLUG}/issue/{issue_id}/stats")
    assert page.status_code == 200, page.text
    assert 'data-figure="opens"><span class="n">5<' in page.text
    assert 'data-figure="clicks"><span class="n">3<' in page.text
    assert "Apple Mail" in page.text
    assert '<svg xmlns="http://www.w3.org/2000/svg" id="engagement-chart"' in page.text
    assert 'class="point opens" data-hour="2" data-value="1"' in page.text
    assert "<script" not in page.text.split("</head>")[1]
    assert client.get(f"/studio/{SLUG}/issue/{issue_id + 99}/stats").status_code == 404


def test_sendgrid_open_and_click_events_count_like_the_pixel_and_the_redirect(
    tracked: App,
) -> None:
    from digest.ops.stats import issue_stats
    from digest.sending.events import apply_sendgrid_events
    from digest.storage.models import Delivery

    issue_id, _ = send_built_issue(tracked)
    story = sorted(article_urls(tracked))[0]
    with tracked.session() as session:
        deliveries = session.exec(select(Delivery).where(Delivery.issue_id == issue_id)).all()
        stamp = int((DEFAULT_NOW + timedelta(hours=5)).timestamp())
        events = [
            {
                "event": kind,
                "email": d.email,
                "timestamp": stamp,
                "sg_event_id": f"{kind}-{d.id}",
                "digest_delivery_id": str(d.id),
                "digest_issue_id": str(issue_id),
                "digest_newsletter": SLUG,
                **({"url": story} if kind == "click" else {}),
            }
            for d in deliveries
            for kind in ("open", "click")
        ]
        later = DEFAULT_NOW + timedelta(hours=6)  # the batch arrives after the events
        result = apply_sendgrid_events(session, [*events, events[0]], now=later)
    assert result.applied == len(events) and result.duplicates == 1
    with tracked.session() as session:
        stats = issue_stats(session, SLUG, issue_id)
    assert stats is not None
    assert (stats.opens, stats.clicks) == (len(READERS), len(READERS))
    assert (stats.counts.opened, stats.counts.clicked) == (len(READERS), len(READERS))
    assert stats.top_links == [{"url": story, "clicks": len(READERS)}]
    assert stats.timeline[5] == {"hour": 5, "opens": len(READERS), "clicks": len(READERS)}


def _at(app: App, hours: int) -> App:
    from digest.app import fixed_clock

    return App(
        settings=app.settings,
        clock=fixed_clock(DEFAULT_NOW + timedelta(hours=hours)),
        _engine=app.engine,
    )
