"""Issue assembly and the editor's controls, on SQLite and PostgreSQL.

An issue is identified by (newsletter, period): building again returns the same row, a draft
is refreshed with the editor's decisions kept, an approved issue is frozen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from digest.app import App
from digest.issues import assemble, editorial, periods, timeline
from digest.issues.assemble import AssemblyError
from digest.storage.models import Issue, IssueArticle, IssueStatus, Source
from tests.support.articles import add_article, add_turkey_week

SLUG = "turkey-unpacked"
PERIOD = datetime(2026, 11, 25, 5, 0, tzinfo=UTC)  # 08:00 in Istanbul, the current period


def _order(app: App, issue_id: int) -> list[int]:
    with app.session() as session:
        return [
            link.article_id
            for link, _ in assemble.issue_articles(session, issue_id)
            if not link.excluded
        ]


def _issue_count(app: App) -> int:
    with app.session() as session:
        return int(session.exec(select(func.count()).select_from(Issue)).one())


def _set_status(app: App, issue_id: int, status: IssueStatus) -> None:
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.status = status
        session.add(issue)


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(any_engine)


def test_the_current_period_is_the_last_scheduled_moment(app: App) -> None:
    newsletter = app.settings.newsletter(SLUG)
    assert periods.current_period(app.settings, newsletter, app.now()) == PERIOD
    assert periods.next_period(app.settings, newsletter, app.now()) == PERIOD + timedelta(days=1)


def test_building_twice_for_a_period_returns_the_same_issue(app: App) -> None:
    ids = add_turkey_week(app, 3)
    first = assemble.build_issue(app, SLUG)
    late = add_article(app, "Late Turkey story from Ankara", PERIOD - timedelta(minutes=5))

    again = assemble.build_issue(app, SLUG)
    explicit = assemble.build_issue(app, SLUG, PERIOD)

    assert first.id == again.id == explicit.id
    assert _issue_count(app) == 1
    assert again.period == periods.period_key(PERIOD)
    assert _order(app, again.id or 0) == [late, *ids]  # a draft is refreshed


def test_builders_racing_on_one_period_make_one_issue(app: App) -> None:
    add_turkey_week(app, 3)
    barrier = threading.Barrier(4)
    results: list[int | None] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            barrier.wait()
            results.append(assemble.build_issue(app, SLUG).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(results)) == 1 and None not in results
    assert _issue_count(app) == 1


def test_building_is_deterministic(app: App) -> None:
    add_turkey_week(app, 6)
    first = assemble.build_issue(app, SLUG)
    second = assemble.build_issue(app, SLUG)

    assert (first.subject, first.preheader, first.html, first.text) == (
        second.subject,
        second.preheader,
        second.html,
        second.text,
    )
    assert first.template_version == second.template_version != ""
    assert first.html_bytes == len(first.html.encode("utf-8"))


def test_ranked_by_recency_within_the_window_and_capped(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(
        any_engine, newsletters=[{"slug": SLUG, "title": "T", "window": "2d", "max_articles": 3}]
    )
    ids = add_turkey_week(app, 5)  # 6 h apart: all inside two days
    too_old = add_article(app, "Old Turkey story", PERIOD - timedelta(days=3))
    after_period = add_article(app, "After the period", PERIOD + timedelta(minutes=1))

    issue = assemble.build_issue(app, SLUG)

    order = _order(app, issue.id or 0)
    assert order == ids[:3]
    assert too_old not in order and after_period not in order


def test_too_few_articles_skips_with_the_reason_then_recovers(app: App) -> None:
    add_turkey_week(app, 1)  # min_articles is 2

    skipped = assemble.build_issue(app, SLUG)

    assert skipped.status == IssueStatus.SKIPPED
    assert skipped.skip_reason == "only 1 article(s) in the window; the minimum is 2"
    with pytest.raises(AssemblyError, match="only a draft can be approved"):
        editorial.approve(app, skipped.id or 0)

    add_article(app, "Second Turkey story", PERIOD - timedelta(hours=1))
    recovered = assemble.build_issue(app, SLUG)
    assert recovered.id == skipped.id
    assert recovered.status == IssueStatus.DRAFT and recovered.skip_reason is None


def test_articles_of_a_sent_issue_are_never_repeated(app: App) -> None:
    yesterday = PERIOD - timedelta(days=1)
    sent_one = add_article(app, "Turkey story sent yesterday", yesterday - timedelta(hours=2))
    dropped = add_article(app, "Turkey story dropped yesterday", yesterday - timedelta(hours=3))
    sent_two = add_article(app, "Turkey story also sent", yesterday - timedelta(hours=4))
    earlier = assemble.build_issue(app, SLUG, yesterday)
    editorial.exclude(app, earlier.id or 0, dropped)
    _set_status(app, earlier.id or 0, IssueStatus.SENT)
    fresh = add_turkey_week(app, 2)

    today = assemble.build_issue(app, SLUG)

    assert today.id != earlier.id
    order = _order(app, today.id or 0)
    assert sent_one not in order and sent_two not in order
    assert order == [*fresh, dropped]  # excluded before, so still news to subscribers
    editorial.pin(app, today.id or 0, sent_one)
    assert sent_one not in _order(app, today.id or 0)  # not even when pinned


def test_pin_moves_an_article_first_and_survives_rebuilds(app: App) -> None:
    newest, second, third = add_turkey_week(app, 3)
    issue = assemble.build_issue(app, SLUG)

    editorial.pin(app, issue.id or 0, third)
    editorial.pin(app, issue.id or 0, second)
    assert _order(app, issue.id or 0) == [third, second, newest]

    assemble.build_issue(app, SLUG)
    assert _order(app, issue.id or 0) == [third, second, newest]

    editorial.pin(app, issue.id or 0, third, pinned=False)
    assert _order(app, issue.id or 0) == [second, newest, third]


def test_pinning_an_article_the_rules_did_not_pick_adds_it(app: App) -> None:
    add_turkey_week(app, 2)
    elsewhere = add_article(
        app, "A climate story", PERIOD - timedelta(hours=2), topics={"climate-weekly": ["x"]}
    )
    issue = assemble.build_issue(app, SLUG)

    editorial.pin(app, issue.id or 0, elsewhere)

    assert _order(app, issue.id or 0)[0] == elsewhere
    with app.session() as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None
        contents = assemble.contents_of(session, app.settings, stored)
    assert contents.articles[0].reasons == ["pinned by editor"]
    assert "A climate story" in stored.html


def test_pins_are_kept_over_the_cap(any_engine: Engine, make_app: Callable[..., App]) -> None:
    app = make_app(any_engine, newsletters=[{"slug": SLUG, "title": "T", "max_articles": 2}])
    ids = add_turkey_week(app, 4)
    issue = assemble.build_issue(app, SLUG)

    editorial.reorder(app, issue.id or 0, [ids[3], ids[2], ids[1]])

    assert _order(app, issue.id or 0) == [ids[3], ids[2], ids[1]]


def test_exclude_drops_an_article_until_restored(app: App) -> None:
    newest, second, third = add_turkey_week(app, 3)
    issue = assemble.build_issue(app, SLUG)

    editorial.exclude(app, issue.id or 0, second)
    assemble.build_issue(app, SLUG)
    assert _order(app, issue.id or 0) == [newest, third]
    with app.session() as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None and "Turkey story 2" not in stored.html

    editorial.exclude(app, issue.id or 0, second, excluded=False)
    assert _order(app, issue.id or 0) == [newest, second, third]


def test_exclude_a_pinned_article_unpins_it(app: App) -> None:
    newest, second = add_turkey_week(app, 2)
    issue = assemble.build_issue(app, SLUG)
    editorial.pin(app, issue.id or 0, second)

    editorial.exclude(app, issue.id or 0, second)

    with app.session() as session:
        link = session.get(IssueArticle, (issue.id, second))
        assert link is not None and link.excluded and not link.pinned
    assert _order(app, issue.id or 0) == [newest]


def test_reorder_puts_the_given_articles_first_in_order(app: App) -> None:
    a, b, c, d = add_turkey_week(app, 4)
    issue = assemble.build_issue(app, SLUG)

    editorial.reorder(app, issue.id or 0, [c, a])

    assert _order(app, issue.id or 0) == [c, a, b, d]


def test_subject_and_intro(app: App) -> None:
    add_turkey_week(app, 2)
    issue = assemble.build_issue(app, SLUG)
    template_subject = issue.subject

    edited = editorial.set_subject(app, issue.id or 0, "  Budget\r\nweek  in Ankara ")
    assert edited.subject == "Budget week in Ankara"
    assert edited.subject_override == "Budget week in Ankara"

    introduced = editorial.set_intro(app, issue.id or 0, "  A quiet week, <mostly>.  ")
    assert introduced.intro == "A quiet week, <mostly>."
    assert "A quiet week, &lt;mostly&gt;." in introduced.html
    assert "A quiet week, <mostly>." in introduced.text
    assert introduced.subject == "Budget week in Ankara"

    back = editorial.set_subject(app, issue.id or 0, "")
    assert back.subject == template_subject and back.subject_override is None


def test_approve_freezes_the_issue(app: App) -> None:
    newest, second = add_turkey_week(app, 2)
    issue = assemble.build_issue(app, SLUG)

    approved = editorial.approve(app, issue.id or 0, by="ayse")
    again = editorial.approve(app, issue.id or 0, by="someone else")

    assert approved.status == IssueStatus.APPROVED
    assert approved.approved_at == app.now() and approved.approved_by == "ayse"
    assert again.approved_by == "ayse"  # approving twice changes nothing
    add_article(app, "Breaking Turkey story", PERIOD - timedelta(minutes=1))
    frozen = assemble.build_issue(app, SLUG)
    assert frozen.id == issue.id and frozen.html == approved.html
    assert _order(app, issue.id or 0) == [newest, second]
    for change in (
        lambda: editorial.pin(app, issue.id or 0, second),
        lambda: editorial.exclude(app, issue.id or 0, newest),
        lambda: editorial.reorder(app, issue.id or 0, [second]),
        lambda: editorial.set_subject(app, issue.id or 0, "x"),
        lambda: editorial.set_intro(app, issue.id or 0, "x"),
    ):
        with pytest.raises(AssemblyError, match="only a draft can be changed"):
            change()


def test_unknown_issue_or_article_is_an_assembly_error(app: App) -> None:
    add_turkey_week(app, 2)
    issue = assemble.build_issue(app, SLUG)

    with pytest.raises(AssemblyError, match="no issue with id 9999"):
        editorial.pin(app, 9999, 1)
    with pytest.raises(AssemblyError, match="no article with id 9999"):
        editorial.exclude(app, issue.id or 0, 9999)
    with pytest.raises(AssemblyError, match="no issue with id 9999"):
        editorial.approve(app, 9999)


def test_next_issue_moves_on_once_the_current_one_is_sent(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, now=PERIOD + timedelta(hours=1))  # within the catch-up grace
    add_turkey_week(app, 2)
    current = timeline.next_issue(app, SLUG)
    assert current.period == periods.period_key(PERIOD)
    _set_status(app, current.id or 0, IssueStatus.SENT)

    following = timeline.next_issue(app, SLUG)

    assert following.id != current.id
    assert following.period == periods.period_key(PERIOD + timedelta(days=1))
    assert timeline.next_issue(app, SLUG).id == following.id
    assert _issue_count(app) == 2


def test_past_the_grace_an_unsent_draft_is_history_and_the_next_period_is_next(
    app: App,
) -> None:
    add_turkey_week(app, 2)
    late = assemble.build_issue(app, SLUG, PERIOD)  # today's draft, never sent; now is 7 h on
    upcoming = timeline.next_issue(app, SLUG)
    assert upcoming.period == periods.period_key(PERIOD + timedelta(days=1))
    with app.session() as session:
        newsletter = app.settings.newsletter(SLUG)
        history = {
            p.issue.id: p for p in timeline.past(session, app.settings, newsletter, app.now())
        }
    assert history[late.id].outcome == "missed" and "passed without a send" in str(
        history[late.id].reason
    )
    assert history[upcoming.id].outcome == "next"
    _set_status(app, upcoming.id or 0, IssueStatus.SENT)  # sent ahead of time by hand
    after = timeline.next_issue(app, SLUG)
    assert after.period == periods.period_key(PERIOD + timedelta(days=2))


def test_an_approved_issue_stays_next_until_it_is_sent(app: App) -> None:
    add_turkey_week(app, 2)
    issue = assemble.build_issue(app, SLUG, PERIOD)
    editorial.approve(app, issue.id or 0, by="chief@example.com")
    assert timeline.next_issue(app, SLUG).id == issue.id  # 7 h late, but an editor approved it


def test_sections_by_source_or_by_tag(any_engine: Engine, make_app: Callable[..., App]) -> None:
    by_tag = make_app(
        any_engine,
        newsletters=[
            {"slug": SLUG, "title": "T", "section_by": "tag", "topic": {"tags": ["Turkey"]}}
        ],
    )
    add_article(by_tag, "Lira story", PERIOD - timedelta(hours=1), tags=["Turkey", "Economy"])
    add_article(by_tag, "Vote story", PERIOD - timedelta(hours=2), tags=["Politics", "Turkey"])
    add_article(by_tag, "Plain story", PERIOD - timedelta(hours=3), tags=["Turkey"])

    issue = assemble.build_issue(by_tag, SLUG)

    with by_tag.session() as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None
        contents = assemble.contents_of(session, by_tag.settings, stored)
    assert [s.title for s in contents.sections] == ["Economy", "Politics", "More"]


def test_sections_by_source_by_default(app: App) -> None:
    add_turkey_week(app, 3)  # world, business, world
    with app.session() as session:  # the feed's own title, as ingest stores it; business has none
        session.add(Source(name="world", kind="rss", url="world.xml", title="World desk"))

    issue = assemble.build_issue(app, SLUG)

    with app.session() as session:
        stored = session.get(Issue, issue.id)
        assert stored is not None
        contents = assemble.contents_of(session, app.settings, stored)
    # Readers see titles, never the sources' names: the feed's title, else the site's name.
    assert [(s.title, len(s.articles)) for s in contents.sections] == [
        ("World desk", 2),
        (app.settings.site.name, 1),
    ]
    assert {a.source for a in contents.articles} == {"World desk", app.settings.site.name}
    assert '<span dir="auto">world</span>' not in stored.html
    assert "business" not in stored.text.replace("news.example.com/business", "")
