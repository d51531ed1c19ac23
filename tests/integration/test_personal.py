"""Personal digests (#14): one email per reader with every topic they follow, on both databases."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import Session

from digest.app import App
from digest.issues.assemble import build_issue
from digest.sending.send import send_issue
from digest.storage.models import Delivery, DeliveryStatus, Issue, IssueStatus, IssueVariant
from subscribers import add_subscriber, unsubscribe
from tests.conftest import DEFAULT_NOW
from tests.support.articles import add_article
from tests.support.sending import outbox_messages

BRIEFING = "my-briefing"
TURKEY, CLIMATE = "turkey-unpacked", "climate-weekly"


def personal_app(
    make_app: Callable[..., App], engine: Engine, now: datetime = DEFAULT_NOW, **extra: Any
) -> App:
    from tests.conftest import base_config

    newsletters = base_config(Path("/tmp"))["newsletters"] + [
        {"slug": BRIEFING, "title": "Your Briefing", "kind": "personal",
         "schedule": "0 7 * * *", "timezone": "Europe/Istanbul", "window": "8d",
         "min_articles": 1, "max_articles": 12, **extra}
    ]  # fmt: skip
    return make_app(engine, now=now, newsletters=newsletters, delivery={"batch_size": 3})


def _articles(app: App, before: datetime) -> dict[str, int]:
    """Two Turkey stories, two climate stories, one that is both (a drought in Ankara)."""
    ids = {}
    for n in (1, 2):
        ids[f"turkey{n}"] = add_article(app, f"Turkey story {n}", before - timedelta(hours=n),
                                        topics={TURKEY: ["tag:Turkey"]})  # fmt: skip
        ids[f"climate{n}"] = add_article(
            app, f"Climate story {n}", before - timedelta(hours=n),
            topics={CLIMATE: ["tag:Climate"]}, tags=["Climate"],
        )  # fmt: skip
    ids["both"] = add_article(
        app, "Drought reaches Ankara", before - timedelta(hours=3),
        topics={TURKEY: ["keyword:Ankara"], CLIMATE: ["tag:Climate", "keyword:drought"]},
        tags=["Climate", "Turkey"],
    )  # fmt: skip
    return ids


def _reader(app: App, email: str, *topics: str, personal: bool = True) -> int:
    with app.session() as session:
        result = None
        for topic in topics:
            result = add_subscriber(session, email, topic, now=app.now())
        if personal:
            result = add_subscriber(session, email, BRIEFING, now=app.now())
        assert result is not None
        return result.subscriber_id


def _by_recipient(app: App) -> dict[str, list[EmailMessage]]:
    out: dict[str, list[EmailMessage]] = {}
    for message in outbox_messages(Path(app.settings.delivery.outbox_dir)):
        out.setdefault(message["To"].addresses[0].addr_spec, []).append(message)
    return out


def _html(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_one_email_per_reader_with_each_followed_topic_and_each_article_once(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    _reader(app, "both@example.com", TURKEY, CLIMATE)
    _reader(app, "turkey@example.com", TURKEY)
    _reader(app, "none@example.com")
    _reader(app, "separate@example.com", TURKEY, personal=False)

    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    assert issue.status == IssueStatus.DRAFT
    report = send_issue(app, issue.id or 0)
    topic_issue = build_issue(app, TURKEY, DEFAULT_NOW)
    send_issue(app, topic_issue.id or 0)

    mail = _by_recipient(app)
    assert report.accepted == 2 and report.skipped == 1
    both = _text(mail["both@example.com"][0])
    assert len(mail["both@example.com"]) == 1  # no separate Turkey Unpacked email
    for title in ("Turkey story 1", "Turkey story 2", "Climate story 1", "Climate story 2"):
        assert both.count(f"{title} [") == 1, (
            title
        )  # the text part lists each article as "Title [n]"
    assert both.count("Drought reaches Ankara [") == 1
    # The shared story sits in its strongest match (a Climate tag beats an Ankara keyword).
    assert both.index("CLIMATE WEEKLY") < both.index("Drought reaches Ankara")
    turkey_only = _text(mail["turkey@example.com"][0])
    assert len(mail["turkey@example.com"]) == 1 and "Climate story" not in turkey_only
    assert "Drought reaches Ankara" in turkey_only
    assert "none@example.com" not in mail
    assert [m["Subject"] for m in mail["separate@example.com"]] and all(
        "Your Briefing" not in _html(m) for m in mail["separate@example.com"]
    )
    with Session(any_engine) as session:
        skipped = (
            session.execute(
                select(Delivery.error).where(Delivery.status == DeliveryStatus.SKIPPED)  # type: ignore[call-overload]
            )
            .scalars()
            .all()
        )
        variants = session.execute(
            select(func.count()).select_from(IssueVariant).where(IssueVariant.issue_id == issue.id)  # type: ignore[arg-type]
        ).scalar()
    assert skipped == ["follows no topic"] and variants == 2


def test_the_next_period_repeats_nothing_already_received(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    _reader(app, "both@example.com", TURKEY, CLIMATE)
    first = build_issue(app, BRIEFING, DEFAULT_NOW)
    send_issue(app, first.id or 0)

    later = personal_app(make_app, any_engine, now=DEFAULT_NOW + timedelta(days=1))
    fresh = add_article(later, "Turkey story 3", DEFAULT_NOW + timedelta(hours=12),
                        topics={TURKEY: ["tag:Turkey"]})  # fmt: skip
    second = build_issue(later, BRIEFING, DEFAULT_NOW + timedelta(days=1))
    send_issue(later, second.id or 0)

    messages = _by_recipient(later)["both@example.com"]
    assert len(messages) == 2
    newest = _html(messages[-1]) if "Turkey story 3" in _html(messages[-1]) else _html(messages[0])
    assert "Turkey story 3" in newest
    for title in ("Turkey story 1", "Climate story 2", "Drought reaches Ankara"):
        assert title not in newest
    assert fresh


def test_unfollowing_a_topic_changes_the_next_issue(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    reader = _reader(app, "both@example.com", TURKEY, CLIMATE)
    with app.session() as session:
        unsubscribe(session, reader, CLIMATE, now=app.now(), method="link")
    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    send_issue(app, issue.id or 0)
    html = _html(_by_recipient(app)["both@example.com"][0])
    assert "Turkey story 1" in html and "Climate story 1" not in html
    with Session(any_engine) as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None and stored.status == IssueStatus.SENT


def test_preview_as_a_reader_shows_their_own_email(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path, monkeypatch: Any
) -> None:
    from tests.support.cli import cli_config, digest

    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW - timedelta(hours=6))  # before the 07:00 period
    _reader(app, "both@example.com", TURKEY, CLIMATE)
    _reader(app, "turkey@example.com", TURKEY)
    _reader(app, "none@example.com")
    config = cli_config(tmp_path / "digest.toml", any_engine, monkeypatch)
    config.write_text(
        config.read_text() + '[[newsletters]]\nslug = "my-briefing"\ntitle = "Your Briefing"\n'
        'kind = "personal"\nschedule = "0 7 * * *"\nwindow = "8d"\n'
    )

    def preview(email: str) -> tuple[int, str, str]:
        out = tmp_path / email
        code, stdout, stderr = digest(config, "preview", BRIEFING, "--as", email, "--out", str(out))
        text = (out / f"{BRIEFING}.txt").read_text() if code == 0 else ""
        return code, text, stdout + stderr

    code, both, said = preview("both@example.com")
    assert code == 0, said
    assert "Climate story 1 [" in both and "Turkey story 1 [" in both
    code, turkey, _ = preview("turkey@example.com")
    assert code == 0 and "Turkey story 1 [" in turkey and "Climate story 1" not in turkey
    code, _, said = preview("none@example.com")
    assert code != 0 and "follows no topic" in said
    code, _, said = digest(config, "preview", TURKEY, "--as", "both@example.com")
    assert code != 0 and "topic newsletter" in said


def test_stats_count_variants_readers_per_variant_and_skipped_readers(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path, monkeypatch: Any
) -> None:
    from digest.ops.stats import newsletter_stats

    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    for n in range(3):
        _reader(app, f"both{n}@example.com", TURKEY, CLIMATE)
    _reader(app, "turkey@example.com", TURKEY)
    _reader(app, "none@example.com")
    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    send_issue(app, issue.id or 0)

    with app.session() as session:
        stats = newsletter_stats(session, BRIEFING).issues[0]
    assert stats.variants is not None
    assert (stats.variants.variants, stats.variants.readers_largest) == (2, 3)
    assert stats.variants.readers_median == 2.0
    assert stats.variants.skipped == {"follows no topic": 1}
    assert stats.counts.sent == 4 and stats.counts.recipients == 5
    assert [v.topics for v in stats.variants.largest] == [[TURKEY, CLIMATE], [TURKEY]]


def test_the_editors_preview_and_test_send_fill_every_token(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    from digest.mail.preview import write_preview
    from digest.rendering.personalize import leaks
    from digest.sending.send import send_test

    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    files = write_preview(app, BRIEFING, tmp_path / "pv", issue)
    html, text = files["html"].read_text(), files["text"].read_text()
    assert leaks(html) == [] and leaks(text) == []
    # Every topic's link, the sample reader's preferences link made an unfollow link.
    assert re.search(
        r'Climate Weekly \(<a href="https://news\.example\.com/preferences/[\w.-]+'
        rf'/unfollow/{CLIMATE}"',
        html,
    )
    assert send_test(app, issue.id or 0, "editor@example.com").accepted
    (sent,) = _by_recipient(app)["editor@example.com"]
    assert leaks(_html(sent)) == [] and leaks(_text(sent)) == []


def test_a_large_audience_plans_and_renders_in_processes_of_their_own(
    any_engine: Engine, make_app: Callable[..., App], monkeypatch: Any
) -> None:
    """The freeze and the variants' rendering move to child processes above a size (here: any
    size), with the same outcome: one email each, their topics, nobody twice."""
    from digest.sending import send

    monkeypatch.setattr(send, "RENDER_PROCESS_AUDIENCE", 1)
    monkeypatch.setattr(send, "FREEZE_PROCESS_AUDIENCE", 1)
    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    for n in range(4):
        _reader(app, f"both{n}@example.com", TURKEY, CLIMATE)
        _reader(app, f"turkey{n}@example.com", TURKEY)
    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    report = send_issue(app, issue.id or 0)
    assert report.accepted == 8 and report.issue_status == IssueStatus.SENT
    mail = _by_recipient(app)
    assert all(len(messages) == 1 for messages in mail.values()) and len(mail) == 8
    assert "Climate story 1 [" in _text(mail["both0@example.com"][0])
    assert "Climate story 1" not in _text(mail["turkey3@example.com"][0])


def test_a_render_from_before_unfollow_links_extended_the_preferences_link_is_still_filled(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    """Renders stored before `Tokens.unfollow_link` (a send resumed after an upgrade) held a
    token per topic, filled with the topic's own signed unsubscribe link; today's hold none."""
    from digest.mail.message import RecipientValues, tokens_of
    from subscribers.tokens import Purpose

    app = personal_app(make_app, any_engine)
    _articles(app, DEFAULT_NOW)
    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    settings, newsletter = app.settings, app.settings.newsletter(BRIEFING)
    assert tokens_of(settings, issue).extra == ()
    merged = [t.slug for t in settings.merged_topics(newsletter)]
    old_token = tokens_of(settings, issue).unfollow(merged.index(CLIMATE))
    older = issue.model_copy(update={"html": f'{issue.html}<a href="{old_token}">unfollow</a>'})
    tokens = tokens_of(settings, older)
    assert tokens.extra == (old_token,)
    values = RecipientValues(
        settings, newsletter, app.signing_key(), app.now(), name_fallback="", tokens=tokens
    )(42, None)
    link = values[old_token]
    assert link.startswith("https://news.example.com/u/")
    claims = app.links().verify(link.rsplit("/", 1)[1], Purpose.UNSUBSCRIBE)
    assert (claims.subscriber_id, claims.newsletter) == (42, CLIMATE)
