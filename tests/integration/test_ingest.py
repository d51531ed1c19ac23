"""Ingesting files end to end on SQLite and PostgreSQL: dedupe, upsert, dates, topics, health."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from digest.app import App
from digest.ingest.run import UnknownSourceError, run_ingest
from digest.storage.models import Article, ArticleTopic, DateSource, Source

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TURKEY_RULES = {"tags": ["Turkey", "Türkiye"], "keywords": ["İstanbul", "Ankara", "harbour"]}


def newsletters(**topics: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"slug": slug, "title": slug.title(), "topic": rules} for slug, rules in topics.items()]


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "feeds"
    shutil.copytree(FEEDS, folder)
    return folder


def articles(engine: Engine, source: str | None = None) -> list[Article]:
    with Session(engine) as session:
        statement = select(Article).order_by(col(Article.id))
        if source:
            statement = statement.where(Article.source == source)
        return list(session.exec(statement).all())


def source_row(engine: Engine, name: str) -> Source:
    with Session(engine) as session:
        return session.exec(select(Source).where(Source.name == name)).one()


def topics_of(engine: Engine) -> dict[str, dict[str, list[str]]]:
    """article title → newsletter slug → reasons."""
    found: dict[str, dict[str, list[str]]] = {}
    with Session(engine) as session:
        rows = session.exec(
            select(Article.title, ArticleTopic.newsletter, ArticleTopic.reasons).join(
                ArticleTopic, col(ArticleTopic.article_id) == col(Article.id)
            )
        ).all()
    for title, slug, reasons in rows:
        found.setdefault(title, {})[slug] = list(reasons)
    return found


def test_bundled_samples_then_nothing_changes(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, now=NOW)
    first = run_ingest(app)
    assert [(s.name, s.fetched, s.new, s.errors) for s in first.sources] == [
        ("world", 14, 14, []),
        ("climate", 10, 10, []),
        ("business", 8, 8, []),
    ]
    second = run_ingest(app)
    assert [(s.new, s.updated, s.unchanged) for s in second.sources] == [
        (0, 0, 14),
        (0, 0, 10),
        (0, 0, 8),
    ]
    assert len(articles(any_engine)) == 32
    found = topics_of(any_engine)
    ankara = found[
        "Ankara budget debate stretches into the night as committee trims regional funds"
    ]
    assert ankara == {"turkey-unpacked": ["tag:Turkey", "keyword:Ankara"]}
    health = source_row(any_engine, "world")
    assert health.last_success_at == NOW and health.consecutive_failures == 0
    assert health.last_item_count == 14 and health.last_error is None


def test_duplicates_are_stored_once(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    app = make_app(
        any_engine,
        now=NOW,
        sources=[{"name": "dup", "url": str(feed_dir / "duplicates.xml")}],
        newsletters=newsletters(turkey=TURKEY_RULES),
    )
    report = run_ingest(app).sources[0]
    # dup-1 twice (same guid), the same URL with another guid, a re-published copy with a new
    # guid, URL and date but the same title and summary: one article. Two "Morning briefing"s
    # with different summaries are two articles.
    assert (report.fetched, report.new, report.updated, report.unchanged) == (6, 3, 0, 3)
    stored = articles(any_engine, "dup")
    assert [a.url for a in stored] == [
        "https://dup.example/harbour-plan",
        "https://dup.example/briefing/monday",
        "https://dup.example/briefing/tuesday",
    ]
    assert topics_of(any_engine)["Council approves the harbour plan"] == {
        "turkey": ["keyword:harbour"]
    }

    again = run_ingest(app).sources[0]
    assert (again.new, again.updated, again.unchanged) == (0, 0, 6)


def test_a_changed_item_updates_its_row_and_topics(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    path = feed_dir / "duplicates.xml"
    app = make_app(
        any_engine,
        now=NOW,
        sources=[{"name": "dup", "url": str(path)}],
        newsletters=newsletters(turkey=TURKEY_RULES, ferries={"keywords": ["ferry"]}),
    )
    run_ingest(app)
    (before,) = [a for a in articles(any_engine) if a.guid == "dup-1"]
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            "<title>Council approves the harbour plan</title>",
            "<title>Council approves the ferry plan</title>",
            1,
        ).replace(
            "https://dup.example/harbour-plan?utm_source=rss",
            "https://dup.example/ferry-plan?x=1",
            2,
        ),
        encoding="utf-8",
    )
    later = NOW + timedelta(hours=1)
    report = run_ingest(
        make_app(
            any_engine,
            now=later,
            sources=app.settings.model_dump()["sources"],
            newsletters=newsletters(turkey=TURKEY_RULES, ferries={"keywords": ["ferry"]}),
        )
    )
    assert report.sources[0].updated == 1 and report.sources[0].new == 0
    (after,) = [a for a in articles(any_engine) if a.guid == "dup-1"]
    assert after.id == before.id
    assert after.title == "Council approves the ferry plan"
    assert after.url == "https://dup.example/ferry-plan?x=1"  # same guid: the article moved
    assert after.published_at == before.published_at and after.updated_at == later
    assert topics_of(any_engine)["Council approves the ferry plan"] == {
        "turkey": ["keyword:harbour"],  # still in the summary
        "ferries": ["keyword:ferry"],
    }


def test_the_same_url_in_two_sources_is_one_article(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    copy = feed_dir / "copy.xml"
    copy.write_text(
        (feed_dir / "duplicates.xml").read_text(encoding="utf-8").replace("dup-1", "syndicated-1"),
        encoding="utf-8",
    )
    app = make_app(
        any_engine,
        now=NOW,
        sources=[
            {"name": "a", "url": str(feed_dir / "duplicates.xml")},
            {"name": "b", "url": str(copy)},
        ],
    )
    report = run_ingest(app)
    assert report.sources[0].new == 3
    assert report.sources[1].new == 0 and report.sources[1].unchanged == 6
    assert {a.source for a in articles(any_engine)} == {"a"}


def test_missing_dates_fall_back_and_are_flagged(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    path = feed_dir / "no-dates-no-guids.xml"
    future = "<pubDate>Sat, 01 Jan 2028 00:00:00 +0000</pubDate>"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "<link>https://undated.example/three</link>",
            f"<link>https://undated.example/three</link>{future}",
        ),
        encoding="utf-8",
    )
    sources = [{"name": "undated", "url": str(path)}]
    report = run_ingest(make_app(any_engine, now=NOW, sources=sources)).sources[0]
    assert report.new == 3 and report.errors == [
        "item 4: 'No link at all: this one cannot be used': no link"
    ]
    assert report.warnings == ["1 item(s) dated in the future: used the time first seen"]
    stored = {a.url.rsplit("/", 1)[1]: a for a in articles(any_engine)}
    assert stored["one"].published_at == NOW and stored["one"].date_source == DateSource.FIRST_SEEN
    assert stored["two"].date_source == DateSource.UPDATED
    assert stored["two"].published_at == datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    assert stored["three"].date_source == DateSource.FIRST_SEEN
    assert "no link" in (source_row(any_engine, "undated").last_warning or "")

    # Seen again an hour later: the first-seen time does not move (it would re-date the article).
    later = run_ingest(make_app(any_engine, now=NOW + timedelta(hours=1), sources=sources)).sources[
        0
    ]
    assert later.unchanged == 3
    assert articles(any_engine)[0].published_at == NOW

    # The publisher adds a real date: it replaces the guessed one.
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "<link>https://undated.example/one</link>",
            "<link>https://undated.example/one</link>"
            "<pubDate>Mon, 23 Nov 2026 08:00:00 +0000</pubDate>",
        ),
        encoding="utf-8",
    )
    dated = run_ingest(make_app(any_engine, now=NOW + timedelta(hours=2), sources=sources)).sources[
        0
    ]
    assert dated.updated == 1
    one = next(a for a in articles(any_engine) if a.url.endswith("/one"))
    assert one.published_at == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    assert one.date_source == DateSource.PUBLISHED


def test_a_bad_source_is_recorded_and_the_others_go_on(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    sources = [
        {"name": "good", "url": str(feed_dir / "rich-metadata.xml")},
        {"name": "missing", "url": str(feed_dir / "nope.xml")},
        {"name": "html", "url": str(feed_dir / "not-a-feed.html")},
        {"name": "bozo", "url": str(feed_dir / "bozo-readable.xml")},
    ]
    report = run_ingest(make_app(any_engine, now=NOW, sources=sources, ingest={"parse_workers": 1}))
    by_name = {s.name: s for s in report.sources}
    assert by_name["good"].new == 3 and not by_name["good"].failed
    assert by_name["missing"].failed and by_name["missing"].errors[0].startswith("file not found")
    assert by_name["html"].failed and by_name["html"].errors == ["not an RSS or Atom feed"]
    assert by_name["bozo"].new == 2 and not by_name["bozo"].failed
    assert "not well-formed" in by_name["bozo"].warnings[0]
    assert report.failed == ["missing", "html"]

    run_ingest(make_app(any_engine, now=NOW + timedelta(hours=1), sources=sources))
    missing = source_row(any_engine, "missing")
    assert missing.consecutive_failures == 2 and missing.last_error_at == NOW + timedelta(hours=1)
    assert missing.last_success_at is None
    bozo = source_row(any_engine, "bozo")
    assert bozo.consecutive_failures == 0 and "not well-formed" in (bozo.last_warning or "")

    shutil.copy(feed_dir / "rss091.xml", feed_dir / "nope.xml")
    run_ingest(make_app(any_engine, now=NOW + timedelta(hours=2), sources=sources))
    healed = source_row(any_engine, "missing")
    assert healed.consecutive_failures == 0 and healed.last_success_at == NOW + timedelta(hours=2)
    assert healed.last_error is not None  # the last error stays visible, with its time


def test_nothing_stored_is_lost_when_a_feed_breaks_or_empties(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    path = feed_dir / "live.xml"
    shutil.copy(feed_dir / "rich-metadata.xml", path)
    sources = [{"name": "live", "url": str(path)}]
    run_ingest(make_app(any_engine, now=NOW, sources=sources))
    for replacement in ("empty-channel.xml", "garbage.bin", "empty-file.xml"):
        shutil.copy(feed_dir / replacement, path)
        run_ingest(make_app(any_engine, now=NOW, sources=sources))
        assert len(articles(any_engine)) == 3, replacement


def test_non_utf8_feeds_are_stored_correctly(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    sources = [
        {"name": "tr", "url": str(feed_dir / "tr-windows-1254-undeclared.xml")},
        {"name": "ru", "url": str(feed_dir / "ru-windows-1251-declared.xml")},
        {"name": "fr", "url": str(feed_dir / "fr-iso-8859-1-undeclared.xml")},
    ]
    app = make_app(
        any_engine, now=NOW, sources=sources, newsletters=newsletters(turkey=TURKEY_RULES)
    )
    run_ingest(app)
    titles = {a.title for a in articles(any_engine)}
    assert "İstanbul'da sağanak: Kadıköy ve Üsküdar'da su baskınları" in titles
    assert "В Москве прошёл сильный снегопад" in titles
    assert "Été caniculaire à Lyon : la municipalité ouvre des îlots de fraîcheur" in titles
    found = topics_of(any_engine)
    assert found["İstanbul'da sağanak: Kadıköy ve Üsküdar'da su baskınları"] == {
        "turkey": ["tag:Türkiye", "keyword:İstanbul"]
    }
    assert found["Ankara'da bütçe görüşmeleri gece yarısına kadar sürdü"] == {
        "turkey": ["keyword:Ankara"]
    }
    assert "windows-1254" in (source_row(any_engine, "tr").last_warning or "")


def test_reclassify_applies_changed_rules(any_engine: Engine, make_app: Callable[..., App]) -> None:
    from digest.ingest.topics import reclassify

    run_ingest(make_app(any_engine, now=NOW))
    before = topics_of(any_engine)
    assert sum("climate-weekly" in t for t in before.values()) > 0
    changed = make_app(
        any_engine,
        now=NOW,
        newsletters=newsletters(
            **{"turkey-unpacked": {"keywords": ["lira"]}, "markets": {"tags": ["Markets"]}}
        ),
    )
    with changed.session() as session:
        report = reclassify(session, changed.settings, now=NOW)
    assert report.articles == 32 and report.added > 0 and report.removed > 0 and report.changed > 0
    after = topics_of(any_engine)
    assert all("climate-weekly" not in t for t in after.values())  # no longer configured
    assert after["Istanbul stocks climb as banks lead a broad rally"] == {
        "turkey-unpacked": ["keyword:lira"],  # "lira" is in its summary
        "markets": ["tag:Markets"],
    }
    with changed.session() as session:
        again = reclassify(session, changed.settings, now=NOW)
    assert (again.added, again.removed, again.changed) == (0, 0, 0)


def test_one_source_only(any_engine: Engine, make_app: Callable[..., App]) -> None:
    app = make_app(any_engine, now=NOW)
    report = run_ingest(app, source="climate")
    assert [s.name for s in report.sources] == ["climate"] and report.new == 10
    with pytest.raises(
        UnknownSourceError, match=r"no source 'sports'.*known: world, climate, business"
    ):
        run_ingest(app, source="sports")


def test_worker_processes_give_the_same_result(
    any_engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    names = [
        "rich-metadata.xml",
        "atom-xml-base.atom",
        "duplicates.xml",
        "tr-utf8-bom.xml",
        "not-a-feed.html",
    ]
    sources = [{"name": n.split(".")[0], "url": str(feed_dir / n)} for n in names]
    seen: list[tuple[str, str]] = []
    app = make_app(any_engine, now=NOW, sources=sources, ingest={"parse_workers": 2})
    report = run_ingest(app, progress=lambda name, message: seen.append((name, message)))
    assert [s.new for s in report.sources] == [3, 2, 3, 2, 0]
    assert report.failed == ["not-a-feed"]
    assert ("rich-metadata", "3 items: 3 new, 0 updated") in seen
    assert ("not-a-feed", "failed: not an RSS or Atom feed") in seen


def test_worker_processes_start_safely_when_threads_are_running(
    engine: Engine, make_app: Callable[..., App], feed_dir: Path
) -> None:
    """A server or scheduler has threads: the workers then come from a fork server, not fork."""
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        names = ["rich-metadata.xml", "atom-xml-base.atom", "duplicates.xml", "tr-utf8-bom.xml"]
        sources = [{"name": n.split(".")[0], "url": str(feed_dir / n)} for n in names]
        app = make_app(engine, now=NOW, sources=sources, ingest={"parse_workers": 2})
        report = run_ingest(app)
    finally:
        stop.set()
    assert [s.new for s in report.sources] == [3, 2, 3, 2]


def test_a_run_leaves_the_garbage_collector_as_it_found_it(
    engine: Engine, make_app: Callable[..., App]
) -> None:
    """Objects are frozen only during a run, and a host process's own freeze is kept."""
    import gc

    app = make_app(engine, now=NOW)
    assert gc.get_freeze_count() == 0
    assert run_ingest(app).new > 0
    assert gc.get_freeze_count() == 0  # nothing kept out of collection after the run
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        run_ingest(app)
        assert gc.get_freeze_count() >= frozen  # not unfrozen behind the host's back
    finally:
        gc.unfreeze()
