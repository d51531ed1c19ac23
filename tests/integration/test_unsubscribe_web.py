"""Unsubscribe, preferences and subscribe pages over HTTP, on SQLite and PostgreSQL.

A GET never changes anything; the RFC 8058 one-click POST (exact body, no cookies) unsubscribes
with a 200; bad, tampered, foreign and expired tokens get a 400 page that shows no address.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import select

from digest.app import App, fixed_clock
from digest.storage.models import Issue
from digest.web.server import create_app
from digest.web.subscribe import confirmation_sender
from subscribers import add_subscriber, count_audience, is_suppressed, subscriptions_of
from subscribers.models import ConsentEvent
from subscribers.tokens import Purpose, make_token
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.sending import sent_issue

TU, CW = "turkey-unpacked", "climate-weekly"
EMAIL = "ayse.yilmaz@example.com"


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(any_engine)


@pytest.fixture
def subscriber(app: App) -> int:
    with app.session() as session:
        result = add_subscriber(session, EMAIL, TU, now=DEFAULT_NOW, name="Ayşe")
        add_subscriber(session, EMAIL, CW, now=DEFAULT_NOW)
        add_subscriber(session, "other@example.com", TU, now=DEFAULT_NOW)
        assert result.subscriber_id is not None
        return result.subscriber_id


def body(answer: Any) -> str:
    """The page's text with HTML entities decoded (autoescape writes ' as &#39;)."""
    return html.unescape(answer.text)


def client(app: App) -> TestClient:
    return TestClient(create_app(app), follow_redirects=False)


def token(
    subscriber_id: int,
    *,
    purpose: str = Purpose.UNSUBSCRIBE,
    newsletter: str = TU,
    key: str = TEST_SECRET,
    issued: timedelta = timedelta(0),
) -> str:
    return make_token(
        key.encode(),
        subscriber_id=subscriber_id,
        newsletter=newsletter,
        purpose=purpose,
        issued_at=DEFAULT_NOW - issued,
    )


def statuses(app: App, subscriber_id: int) -> dict[str, str]:
    with app.session() as session:
        return {n: s.status for n, s in subscriptions_of(session, subscriber_id).items()}


def consent_count(app: App) -> int:
    with app.session() as session:
        return session.exec(select(func.count()).select_from(ConsentEvent)).one()


def test_get_shows_what_will_happen_and_changes_nothing(app: App, subscriber: int) -> None:
    before = consent_count(app)
    page = client(app).get(f"/u/{token(subscriber)}")
    assert page.status_code == 200
    assert "Turkey Unpacked" in page.text and "ay…@example.com" in page.text
    assert EMAIL not in page.text  # masked
    assert 'method="post"' in page.text and 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers
    for _ in range(3):  # link scanners
        client(app).get(f"/u/{token(subscriber)}")
    assert statuses(app, subscriber) == {TU: "active", CW: "active"}
    assert consent_count(app) == before


@pytest.mark.parametrize("content_type", ["urlencoded", "multipart"])
def test_one_click_post_unsubscribes_with_200(app: App, subscriber: int, content_type: str) -> None:
    web = client(app)
    url = f"/u/{token(subscriber)}"
    if content_type == "urlencoded":
        # Exactly what Gmail sends: RFC 8058 §3.2, no cookies, no auth.
        answer = web.post(
            url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        answer = web.post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert answer.request.headers["content-type"].startswith("multipart/form-data")
    assert "cookie" not in {k.lower() for k in answer.request.headers}
    assert answer.status_code == 200  # never a redirect
    assert "You're unsubscribed" in body(answer)
    assert statuses(app, subscriber) == {TU: "unsubscribed", CW: "active"}
    with app.session() as session:
        event = session.exec(select(ConsentEvent).where(ConsentEvent.action == "unsubscribe")).one()
        assert (event.method, event.newsletter, event.at) == ("one-click", TU, DEFAULT_NOW)
        assert event.user_agent
        assert count_audience(session, TU) == 1
    # Idempotent: again, and with an odd body, still 200 and no new event.
    assert (
        web.post(
            url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ).status_code
        == 200
    )
    assert (
        web.post(
            url,
            content=b"\xff\xfe garbage",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        ).status_code
        == 200
    )
    assert consent_count(app) == 4


def test_page_button_post_is_recorded_as_link(app: App, subscriber: int) -> None:
    answer = client(app).post(
        f"/u/{token(subscriber)}", data={"List-Unsubscribe": "One-Click", "source": "page"}
    )
    assert answer.status_code == 200
    with app.session() as session:
        event = session.exec(select(ConsentEvent).where(ConsentEvent.action == "unsubscribe")).one()
        assert event.method == "link"


def test_unsubscribe_is_credited_to_the_latest_issue_sent(app: App, subscriber: int) -> None:
    # Real sends: the ledger leaves sent rows `pending` in accepted batches.
    sent_issue(app, period="2026-11-09T05:00:00+00:00")
    latest = sent_issue(app, period="2026-11-16T05:00:00+00:00")
    unsent = sent_issue(app, limit=0)  # frozen, nothing sent yet
    with app.session() as session:
        issue = session.get(Issue, unsent)
        assert issue is not None and issue.status == "sending"
    client(app).post(f"/u/{token(subscriber)}", data={"List-Unsubscribe": "One-Click"})
    with app.session() as session:
        event = session.exec(select(ConsentEvent).where(ConsentEvent.action == "unsubscribe")).one()
        assert event.issue_id == latest


def forged_tokens(subscriber: int) -> dict[str, str]:
    good = token(subscriber)
    flipped = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
    return {
        "tampered": flipped,
        "truncated": good[:-4],
        "other key": token(subscriber, key="someone-elses-secret-key"),
        "preferences purpose": token(subscriber, purpose=Purpose.PREFERENCES),
        "confirm purpose": token(subscriber, purpose=Purpose.CONFIRM),
        "expired": token(subscriber, issued=timedelta(days=401)),
        "unknown subscriber": token(999_999),
        "garbage": "hello",
    }


@pytest.mark.parametrize("kind", list(forged_tokens(1)))
def test_bad_tokens_get_400_change_nothing_and_show_no_address(
    app: App, subscriber: int, kind: str
) -> None:
    bad = forged_tokens(subscriber)[kind]
    web = client(app)
    before = consent_count(app)
    for answer in (
        web.get(f"/u/{bad}"),
        web.post(
            f"/u/{bad}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        web.get(f"/preferences/{bad}") if kind != "preferences purpose" else None,
        web.post(f"/preferences/{bad}", data={"action": "unsubscribe_all"})
        if kind != "preferences purpose"
        else None,
    ):
        if answer is None:
            continue
        assert answer.status_code == 400, (kind, answer.request.url)
        assert "doesn't work" in body(answer)
        assert "example.com" not in answer.text
    assert statuses(app, subscriber) == {TU: "active", CW: "active"}
    assert consent_count(app) == before


def test_old_links_within_400_days_still_work(app: App, subscriber: int) -> None:
    answer = client(app).post(
        f"/u/{token(subscriber, issued=timedelta(days=399))}",
        data={"List-Unsubscribe": "One-Click"},
    )
    assert answer.status_code == 200
    assert statuses(app, subscriber)[TU] == "unsubscribed"


def test_links_signed_with_a_retired_key_still_work(
    any_engine: Engine, make_app: Callable[..., App], subscriber: int
) -> None:
    rotated = make_app(
        any_engine,
        env={
            "DIGEST_SECRET_KEY": "the-new-key-0123456789abcdef",
            "DIGEST_OLD_SECRET_KEYS": TEST_SECRET,
        },
    )
    assert client(rotated).post(f"/u/{token(subscriber)}").status_code == 200
    assert statuses(rotated, subscriber)[TU] == "unsubscribed"


def test_preferences_page_lists_every_newsletter_and_saves(app: App, subscriber: int) -> None:
    web = client(app)
    url = f"/preferences/{token(subscriber, purpose=Purpose.PREFERENCES)}"
    page = web.get(url)
    assert page.status_code == 200
    assert page.text.count('type="checkbox"') == 2 and page.text.count(" checked") == 2
    assert "Turkey Unpacked" in page.text and "Climate Weekly" in page.text
    saved = web.post(url, data={"newsletter": [CW], "action": "save"})
    assert saved.status_code == 200 and "Saved." in saved.text
    assert statuses(app, subscriber) == {TU: "unsubscribed", CW: "active"}
    assert saved.text.count(" checked") == 1
    # Changing their mind: back to both.
    web.post(url, data={"newsletter": [TU, CW], "action": "save"})
    assert statuses(app, subscriber) == {TU: "active", CW: "active"}
    everything = web.post(url, data={"action": "unsubscribe_all"})
    assert everything.status_code == 200 and "won't receive any" in body(everything)
    assert statuses(app, subscriber) == {TU: "unsubscribed", CW: "unsubscribed"}
    with app.session() as session:
        assert is_suppressed(session, EMAIL)
    assert client(app).get(f"/u/{token(subscriber)}").text.count("no longer receives") == 1


def test_unsubscribe_page_links_to_working_preferences(app: App, subscriber: int) -> None:
    done = client(app).post(f"/u/{token(subscriber)}", data={"List-Unsubscribe": "One-Click"})
    link = re.search(r'href="https://news\.example\.com(/preferences/[^"]+)"', done.text)
    assert link is not None
    assert client(app).get(link.group(1)).status_code == 200


def test_escaping_in_pages(any_engine: Engine, make_app: Callable[..., App]) -> None:
    app = make_app(any_engine, site={"name": "<script>alert(1)</script>"})
    page = client(app).get("/subscribe/turkey-unpacked")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def __call__(self, app: App, email: str, url: str, title: str, **_: Any) -> None:
        self.sent.append((email, url, title))


def subscribe_client(app: App, outbox: Outbox) -> TestClient:
    web = create_app(app)
    web.dependency_overrides[confirmation_sender] = lambda: outbox
    return TestClient(web, follow_redirects=False)


def test_double_opt_in_form_then_confirm(app: App) -> None:
    outbox = Outbox()
    web = subscribe_client(app, outbox)
    form = web.get("/subscribe/climate-weekly")
    assert form.status_code == 200 and 'name="email"' in form.text and "Climate Weekly" in form.text
    answer = web.post(
        "/subscribe/climate-weekly", data={"email": " Zoe@Example.NET ", "name": "Zoë"}
    )
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert len(outbox.sent) == 1
    email, url, title = outbox.sent[0]
    assert (email, title) == ("zoe@example.net", "Climate Weekly")
    assert url.startswith("https://news.example.com/confirm/")
    with app.session() as session:
        assert count_audience(session, CW) == 0
    path = url.removeprefix("https://news.example.com")
    page = web.get(path)  # a scanner opening the link confirms nothing
    assert page.status_code == 200 and "Confirm my subscription" in page.text
    with app.session() as session:
        assert count_audience(session, CW) == 0
    done = web.post(path)
    assert done.status_code == 200 and "You're subscribed" in body(done)
    with app.session() as session:
        assert count_audience(session, CW) == 1
    # Expired confirmation links are refused.
    later = App(
        settings=app.settings,
        clock=fixed_clock(DEFAULT_NOW + timedelta(days=8)),
        _engine=app.engine,
    )
    assert subscribe_client(later, outbox).post(path).status_code == 400


def test_form_answers_the_same_for_subscribed_and_new_addresses(app: App, subscriber: int) -> None:
    outbox = Outbox()
    web = subscribe_client(app, outbox)
    known = web.post("/subscribe/turkey-unpacked", data={"email": EMAIL})
    new = web.post("/subscribe/turkey-unpacked", data={"email": "new@example.com"})
    assert known.status_code == new.status_code == 200
    assert known.text == new.text
    assert [e for e, _, _ in outbox.sent] == ["new@example.com"]


def test_form_rejects_bad_input_and_bots(app: App) -> None:
    outbox = Outbox()
    web = subscribe_client(app, outbox)
    bad = web.post("/subscribe/turkey-unpacked", data={"email": "not an address"})
    assert bad.status_code == 400 and "Please check your email address" in bad.text
    assert 'value="not an address"' in bad.text
    bot = web.post("/subscribe/turkey-unpacked", data={"email": "bot@example.com", "website": "x"})
    assert bot.status_code == 200 and outbox.sent == []
    assert web.get("/subscribe/no-such-list").status_code == 404
    with app.session() as session:
        assert count_audience(session, TU) == 0


def test_single_opt_in_newsletter_subscribes_at_once(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    from tests.conftest import base_config

    newsletters = base_config(tmp_path)["newsletters"]
    newsletters[0]["double_opt_in"] = False
    app = make_app(any_engine, newsletters=newsletters)
    outbox = Outbox()
    answer = subscribe_client(app, outbox).post(
        "/subscribe/turkey-unpacked", data={"email": "quick@example.com"}
    )
    assert answer.status_code == 200 and "You're subscribed" in body(answer) and outbox.sent == []
    with app.session() as session:
        assert count_audience(session, TU) == 1


def test_confirmation_email_goes_through_the_outbox(app: App) -> None:
    web = TestClient(create_app(app))
    assert (
        web.post("/subscribe/climate-weekly", data={"email": "mail@example.org"}).status_code == 200
    )
    files = list(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))
    assert len(files) == 1
    message = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["To"] == "mail@example.org"
    assert message["Subject"] == "Confirm your subscription to Climate Weekly"
    assert "List-Unsubscribe" not in message
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    url = re.search(r"https://news\.example\.com(/confirm/\S+)", text)
    assert url is not None
    assert web.post(url.group(1)).status_code == 200
    with app.session() as session:
        assert count_audience(session, CW) == 1
