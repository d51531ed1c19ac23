"""Personal newsletters (#14) on the web pages, on SQLite and PostgreSQL: the preferences page's
"one email or each on its own" and follow checkboxes, unsubscribing from a personal email (it
also unfollows the topics it carried), and a topic's footer "unfollow" link."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select

from digest.app import App
from digest.issues.assemble import build_issue
from digest.sending.send import send_issue
from digest.web.server import create_app
from subscribers import add_subscriber, subscriptions_of
from subscribers.models import ConsentEvent
from subscribers.tokens import Purpose, make_token
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.integration.test_personal import BRIEFING, CLIMATE, TURKEY, personal_app
from tests.support.articles import add_article
from tests.support.sending import outbox_messages

EMAIL = "reader@example.com"
BASE = "https://news.example.com"


def client(app: App) -> TestClient:
    return TestClient(create_app(app), follow_redirects=False)


def body(answer: Any) -> str:
    """The page's text, tags dropped and entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", answer.text)).split()).replace(" ,", ",")


def token(subscriber_id: int, newsletter: str, purpose: str = Purpose.UNSUBSCRIBE) -> str:
    return make_token(
        TEST_SECRET.encode(),
        subscriber_id=subscriber_id,
        newsletter=newsletter,
        purpose=purpose,
        issued_at=DEFAULT_NOW,
    )


def reader(app: App, *newsletters: str) -> int:
    with app.session() as session:
        ids = {add_subscriber(session, EMAIL, n, now=app.now()).subscriber_id for n in newsletters}
    (subscriber_id,) = ids
    assert subscriber_id is not None
    return subscriber_id


def statuses(app: App, subscriber_id: int) -> dict[str, str]:
    with app.session() as session:
        return {n: s.status for n, s in subscriptions_of(session, subscriber_id).items()}


def events(app: App, action: str) -> list[tuple[str, str, int | None]]:
    """(newsletter, method, issue id) of each consent event of `action`, in order."""
    with app.session() as session:
        rows = session.exec(
            select(ConsentEvent).where(ConsentEvent.action == action).order_by(ConsentEvent.id)  # type: ignore[arg-type]
        ).all()
        return [(e.newsletter or "", e.method or "", e.issue_id) for e in rows]


def stories(app: App, day: int, at: datetime) -> None:
    add_article(app, f"Turkey story {day}", at, topics={TURKEY: ["tag:Turkey"]}, tags=["Turkey"])
    add_article(
        app, f"Climate story {day}", at, topics={CLIMATE: ["tag:Climate"]}, tags=["Climate"]
    )


def send_briefing(app: App, now: datetime) -> tuple[int, list[EmailMessage]]:
    """Build and send the personal issue due at `now`; its id and every message in the outbox."""
    issue = build_issue(app, BRIEFING, now)
    send_issue(app, issue.id or 0)
    return issue.id or 0, outbox_messages(Path(app.settings.delivery.outbox_dir))


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def test_preferences_choose_one_email_or_each_on_its_own_and_follow_topics(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    subscriber = reader(app, TURKEY, CLIMATE)
    web = client(app)
    url = f"/preferences/{token(subscriber, TURKEY, Purpose.PREFERENCES)}"
    page = web.get(url)
    assert page.status_code == 200
    text = body(page)
    assert "One email with everything I follow (Your Briefing)" in text
    assert "Each newsletter on its own" in text and "Topics I follow" in text
    assert page.text.count('type="radio"') == 2 and page.text.count('type="checkbox"') == 2
    assert re.search(r'value="separate" checked', page.text)
    assert 'value="personal" checked' not in page.text

    # One email: the personal subscription; the ticked topics are what it carries.
    saved = web.post(
        url,
        data={
            "delivery": "personal",
            "personal": BRIEFING,
            "newsletter": [TURKEY, CLIMATE],
            "action": "save",
        },
    )
    assert saved.status_code == 200 and "Saved." in saved.text
    assert statuses(app, subscriber) == {TURKEY: "active", CLIMATE: "active", BRIEFING: "active"}
    assert 'value="personal" checked' in saved.text and saved.text.count(" checked") == 3
    assert [e for e in events(app, "subscribe") if e[1] != "cli"] == [
        (BRIEFING, "preferences", None)
    ]

    # Unfollow one topic, still one email.
    web.post(url, data={"delivery": "personal", "newsletter": [TURKEY], "action": "save"})
    assert statuses(app, subscriber) == {
        TURKEY: "active",
        CLIMATE: "unsubscribed",
        BRIEFING: "active",
    }
    # No topic ticked: the one email would be empty, and the page says so.
    empty = web.post(url, data={"delivery": "personal", "action": "save"})
    assert "You follow no topic yet" in body(empty)
    assert statuses(app, subscriber)[TURKEY] == "unsubscribed"

    # Each on its own: the personal subscription ends, the topics come as their own emails.
    web.post(url, data={"delivery": "separate", "newsletter": [TURKEY, CLIMATE], "action": "save"})
    assert statuses(app, subscriber) == {
        TURKEY: "active",
        CLIMATE: "active",
        BRIEFING: "unsubscribed",
    }
    assert (BRIEFING, "preferences", None) in events(app, "unsubscribe")
    # A form without the choice leaves the personal subscription as it is.
    web.post(url, data={"newsletter": [TURKEY], "action": "save"})
    assert statuses(app, subscriber) == {
        TURKEY: "active",
        CLIMATE: "unsubscribed",
        BRIEFING: "unsubscribed",
    }


def test_preferences_without_a_personal_newsletter_are_one_checkbox_each(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine)
    subscriber = reader(app, TURKEY)
    page = client(app).get(f"/preferences/{token(subscriber, TURKEY, Purpose.PREFERENCES)}")
    assert page.status_code == 200
    assert 'type="radio"' not in page.text and page.text.count('type="checkbox"') == 2
    assert "Send me" in page.text and "Topics I follow" not in page.text


def test_one_click_on_a_personal_email_leaves_it_and_the_topics_it_carried(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    stories(app, 1, DEFAULT_NOW - timedelta(hours=2))
    subscriber = reader(app, TURKEY, CLIMATE, BRIEFING)
    issue_id, (message,) = send_briefing(app, DEFAULT_NOW)
    header = re.search(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert header is not None
    url = header.group(1).removeprefix(BASE)
    web = client(app)

    page = web.get(url)
    assert "Unsubscribe from Your Briefing?" in body(page)
    assert "also stop following Turkey Unpacked, Climate Weekly" in body(page)
    assert len(statuses(app, subscriber)) == 3 and events(app, "unsubscribe") == []

    # Exactly what Gmail sends (RFC 8058): no cookies, answered with a 200.
    one_click = {
        "content": b"List-Unsubscribe=One-Click",
        "headers": {"Content-Type": "application/x-www-form-urlencoded"},
    }
    done = web.post(url, **one_click)  # type: ignore[arg-type]
    assert done.status_code == 200
    assert (
        "You will no longer receive Your Briefing, and you no longer follow Turkey Unpacked, "
        "Climate Weekly" in body(done)
    )
    link = re.search(r'href="https://news\.example\.com(/preferences/[^"]+)"', done.text)
    assert link is not None and web.get(link.group(1)).status_code == 200
    assert set(statuses(app, subscriber).values()) == {"unsubscribed"}
    assert events(app, "unsubscribe") == [
        (BRIEFING, "one-click", issue_id),
        (TURKEY, "one-click", issue_id),
        (CLIMATE, "one-click", issue_id),
    ]
    # Idempotent, and a repeated click never unfollows topics followed again since.
    preferences = link.group(1)
    web.post(preferences, data={"delivery": "separate", "newsletter": [TURKEY], "action": "save"})
    assert statuses(app, subscriber)[TURKEY] == "active"
    again = web.post(url, **one_click)  # type: ignore[arg-type]
    assert again.status_code == 200 and "no longer follow" not in body(again)
    assert statuses(app, subscriber)[TURKEY] == "active" and len(events(app, "unsubscribe")) == 3


def test_a_personal_email_on_top_of_the_topics_leaves_only_itself(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine, replaces_topic_emails=False)
    subscriber = reader(app, TURKEY, CLIMATE, BRIEFING)
    web = client(app)
    preferences = web.get(f"/preferences/{token(subscriber, BRIEFING, Purpose.PREFERENCES)}")
    assert 'type="radio"' not in preferences.text  # not a choice: it comes on top of them
    done = web.post(f"/u/{token(subscriber, BRIEFING)}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "no longer follow" not in body(done)
    assert statuses(app, subscriber) == {
        TURKEY: "active",
        CLIMATE: "active",
        BRIEFING: "unsubscribed",
    }


def test_a_topics_unfollow_link_leaves_only_it_and_the_next_issue_omits_it(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    stories(app, 1, DEFAULT_NOW - timedelta(hours=2))
    subscriber = reader(app, TURKEY, CLIMATE, BRIEFING)
    _, (first,) = send_briefing(app, DEFAULT_NOW)
    unfollow = re.search(
        rf"- Turkey Unpacked\. unfollow: {re.escape(BASE)}(/preferences/(\S+)/unfollow/{TURKEY})\s",
        text_of(first),
    )
    assert unfollow is not None
    url, signed = unfollow.group(1), unfollow.group(2)
    # The reader's own preferences link, the same in the HTML part; one per topic followed.
    assert signed == token(subscriber, BRIEFING, Purpose.PREFERENCES)
    assert f'href="{BASE}{url}"' in html_of(first)
    assert f"/preferences/{signed}/unfollow/{CLIMATE}" in text_of(first)
    web = client(app)

    page = web.get(url)
    assert "Stop following Turkey Unpacked?" in body(page) and ">Unfollow</button>" in page.text
    assert "Your Briefing will leave it out from the next issue" in body(page)
    done = web.post(url, data={"List-Unsubscribe": "One-Click", "source": "page"})
    assert done.status_code == 200
    assert (
        "You no longer follow Turkey Unpacked; Your Briefing will leave it out from the next issue"
        in body(done)
    )
    assert statuses(app, subscriber) == {
        TURKEY: "unsubscribed",
        CLIMATE: "active",
        BRIEFING: "active",
    }
    assert [(n, m) for n, m, _ in events(app, "unsubscribe")] == [(TURKEY, "link")]
    assert "no longer follows Turkey Unpacked" in body(web.get(url))

    tomorrow = DEFAULT_NOW + timedelta(days=1)
    later = personal_app(make_app, any_engine, now=tomorrow)
    stories(later, 2, tomorrow - timedelta(hours=2))
    _, messages = send_briefing(later, tomorrow)
    (second,) = [m for m in messages if "Climate story 2" in text_of(m)]
    assert "Turkey story 2" not in text_of(second)
    assert "Turkey Unpacked. unfollow" not in text_of(second)
    assert len(messages) == 2  # and no separate email of either topic


def test_an_unfollow_link_needs_the_readers_preferences_token_and_one_of_the_topics(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    subscriber = reader(app, TURKEY, CLIMATE, BRIEFING)
    web = client(app)
    preferences = token(subscriber, BRIEFING, Purpose.PREFERENCES)
    refused = [
        f"/preferences/{token(subscriber, BRIEFING)}/unfollow/{TURKEY}",  # an unsubscribe token
        f"/preferences/{preferences[:-2]}xx/unfollow/{TURKEY}",  # tampered with
        f"/preferences/{preferences}/unfollow/no-such-topic",
        f"/preferences/{preferences}/unfollow/{BRIEFING}",  # a personal newsletter, not a topic
    ]
    for url in refused:
        for answer in (web.get(url), web.post(url, data={"source": "page"})):
            assert answer.status_code == 400 and "This link doesn't work" in body(answer), url
    # A GET only asks; nothing changed by any of it.
    assert "Stop following Climate Weekly?" in body(
        web.get(f"/preferences/{preferences}/unfollow/{CLIMATE}")
    )
    assert set(statuses(app, subscriber).values()) == {"active"}
    assert events(app, "unsubscribe") == []
