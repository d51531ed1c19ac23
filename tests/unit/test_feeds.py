"""Parsing sources into ArticleData: RSS/Atom variants, odd and hostile feeds, JSON and CSV."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest.ingest.articles import ArticleData, ParsedFeed
from digest.ingest.feeds import parse_source
from digest.ingest.records import validate_items
from digest.storage.models import DateSource

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
SAMPLES = Path(__file__).resolve().parents[2] / "config" / "sample" / "feeds"


def parse(
    name: str, kind: str = "rss", url: str | None = None
) -> tuple[list[ArticleData], ParsedFeed]:
    result = parse_source(kind, (FEEDS / name).read_bytes(), url=url or str(FEEDS / name))
    return result.items, result


def by_guid(items: list[ArticleData]) -> dict[str, ArticleData]:
    return {item.guid: item for item in items}


@pytest.mark.parametrize(
    ("name", "count"), [("world.xml", 14), ("climate.atom", 10), ("business.xml", 8)]
)
def test_bundled_samples_parse_cleanly(name: str, count: int) -> None:
    result = parse_source("rss", (SAMPLES / name).read_bytes(), url=str(SAMPLES / name))
    assert result.fatal is None and result.errors == [] and result.warnings == []
    assert len(result.items) == count
    for item in result.items:
        assert item.url.startswith("https://meridian.example/")
        assert item.published_at is not None and item.published_at.tzinfo is UTC
        assert item.date_source == DateSource.PUBLISHED
        assert item.title and item.summary_text and item.language == "en"


def test_rss_metadata_feedburner_tags_images_author() -> None:
    items, _ = parse("rich-metadata.xml")
    first, second, third = items
    assert first.url == "https://rich.example/2026/11/origin?id=9"  # origLink, trackers gone
    assert first.tags == ("Politics", "Economy", "Trade", "Turkey", "lira", "central bank")
    assert first.image_url == "https://rich.example/img/lead.jpg"  # media:content first
    assert first.author == "Ana Lima"
    assert first.language == "en-gb"
    assert first.published_at == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert second.url == "https://rich.example/2026/11/enclosure?page=2"
    assert second.image_url == "https://rich.example/img/enclosure.png"  # not the audio
    assert second.author == "Bo Chen"
    assert third.image_url == "https://rich.example/img/inline.jpg"  # the first <img>
    assert "<img" not in third.summary_html


def test_atom_with_xml_base_html_titles_and_content() -> None:
    items, _ = parse("atom-xml-base.atom")
    german, english = items
    assert german.title == "Straßenbahn fährt wieder"
    assert german.url == "https://atom.example/blog/posts/strassenbahn"
    assert 'href="https://atom.example/blog/lines/4"' in german.summary_html
    assert german.language == "de" and english.language == "en"
    assert german.author == "Jana Müller"
    assert german.date_source == DateSource.UPDATED  # only <updated>
    assert german.published_at == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    assert english.date_source == DateSource.PUBLISHED  # published wins over updated
    assert english.summary_text == "Full content only, no summary."


def test_rss_1_0_and_0_91() -> None:
    (rdf,), _ = parse("rss1.rdf")
    assert rdf.url == "https://rdf.example/first" and rdf.tags == ("Science",)
    assert rdf.published_at == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    (old,), _ = parse("rss091.xml")
    assert old.title == "Old-style item" and old.language == "en-us"
    assert old.published_at is None and old.date_source == DateSource.FIRST_SEEN


def test_items_without_dates_guids_titles_or_links() -> None:
    items, result = parse("no-dates-no-guids.xml")
    one, two, three = items
    assert one.guid == one.url == "https://undated.example/one"  # the link stands in
    assert one.published_at is None and one.date_source == DateSource.FIRST_SEEN
    assert two.date_source == DateSource.UPDATED
    assert two.published_at == datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
    assert three.title.startswith("No title, only a description")
    assert result.errors == ["item 4: 'No link at all: this one cannot be used': no link"]


def test_relative_links_resolve_against_the_feed_url_then_the_site() -> None:
    items, _ = parse("relative-links.xml", url="https://feeds.relative.example/news/rss.xml")
    first, second = items
    assert first.url == "https://feeds.relative.example/2026/11/root-relative"
    assert second.url == "https://feeds.relative.example/news/local/path-relative?id=7"
    assert second.image_url == "https://feeds.relative.example/news/thumbs/second.jpg"
    assert 'href="https://feeds.relative.example/archive/older"' in first.summary_html
    assert 'href="https://cdn.relative.example/doc.pdf"' in first.summary_html
    # Read from a file, the channel's own link is the base.
    items, _ = parse("relative-links.xml")
    assert items[0].url == "https://relative.example/2026/11/root-relative"
    assert items[0].image_url == "https://relative.example/img/first.jpg"


def test_hostile_html_is_neutralised() -> None:
    items, result = parse("hostile.xml")
    (item,) = items
    assert item.title == "Breaking: markup in & the title"
    for bad in (
        "<script",
        "alert(",
        "javascript:",
        "data:",
        "onclick",
        "<iframe",
        "<form",
        "<svg",
        "style=",
    ):
        assert bad not in item.summary_html.lower(), bad
    assert (
        '<a href="https://ok.example/x" rel="noopener noreferrer nofollow">ok link</a>'
        in item.summary_html
    )
    assert "alert" not in item.summary_text
    assert "no usable http(s) link" in result.errors[0]


def test_duplicates_are_all_returned_by_the_parser() -> None:
    items, _ = parse("duplicates.xml")  # deduplication is ingest's job, see test_ingest
    assert [i.guid for i in items].count("dup-1") == 2
    assert items[2].url == "https://dup.example/harbour-plan"  # host case, port, fbclid, #fragment


def test_not_well_formed_feed_is_read_leniently_with_a_warning() -> None:
    items, result = parse("bozo-readable.xml")
    assert [i.title for i in items] == ["Fish & chips shop wins award", "Second item survives"]
    assert result.fatal is None
    assert "not well-formed" in result.warnings[0] and "line 4" in result.warnings[0]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("not-a-feed.html", "not an RSS or Atom feed"),
        ("garbage.bin", "not an RSS or Atom feed"),
        ("empty-file.xml", "empty document"),
    ],
)
def test_unreadable_documents_are_fatal(name: str, message: str) -> None:
    items, result = parse(name)
    assert items == [] and message in (result.fatal or "")


def test_a_feed_without_items_is_a_warning_not_an_error() -> None:
    items, result = parse("empty-channel.xml")
    assert items == [] and result.fatal is None and result.warnings == ["the feed has no items"]


def test_json_list_envelope_and_json_feed() -> None:
    items, result = parse("articles.json", "json")
    assert result.errors == []
    ferry, rfc, undated = items
    assert ferry.url == "https://json.example/ferry" and ferry.guid == "json-1"
    assert ferry.summary_html == "<p>The line runs <b>every hour</b>.</p>"
    assert ferry.image_url == "https://json.example/img/ferry.jpg"
    assert ferry.published_at == datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    assert ferry.tags == ("Turkey", "Transport") and ferry.language == "tr"
    assert rfc.tags == ("Economy", "lira", "Markets")
    assert rfc.published_at == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert undated.guid == "42" and undated.date_source == DateSource.FIRST_SEEN
    (envelope,), _ = parse("articles-envelope.json", "json")
    assert envelope.title == "Inside an envelope"
    (feed_item,), _ = parse("jsonfeed.json", "json")
    assert feed_item.author == "Mia Ortiz" and feed_item.summary_text == "Hello from JSON Feed."


def test_json_errors_name_the_item_and_field_and_keep_the_rest() -> None:
    items, result = parse("articles-with-errors.json", "json")
    assert [i.title for i in items] == ["Fine"]
    assert result.errors == [
        "item 1: url: required",
        "item 2: url: must be an absolute http(s) URL",
        "item 3: published_at: not a date-time (ISO 8601 like 2026-11-25T08:00:00Z, or RFC 822)",
        "item 4: expected an object with title and url",
        "item 5: title: required",
    ]
    _, broken = parse("broken.json", "json")
    assert (broken.fatal or "").startswith("not valid JSON: line 1, column")


def test_csv_rows_and_line_numbers() -> None:
    items, result = parse("articles.csv", "csv")
    izmir, second = items
    assert izmir.title == "İzmir'de liman genişletmesi onaylandı"
    assert izmir.tags == ("Türkiye", "Ekonomi") and izmir.guid == "csv-1"
    assert second.date_source == DateSource.FIRST_SEEN
    assert result.errors == [
        "line 4: url: required",
        "line 5: published_at: not a date-time (ISO 8601 like 2026-11-25T08:00:00Z, or RFC 822)",
    ]
    _, missing = parse("articles-missing-columns.csv", "csv")
    assert missing.fatal == "line 1: the header needs the columns title, url"


def test_validate_items_reports_every_problem() -> None:
    good, bad = validate_items(
        [
            ("0", {"title": "ok", "url": "https://x.example/"}),
            ("1", {"title": "", "url": "ftp://x"}),
        ]
    )
    assert len(good) == 1
    assert {(e.where, e.field) for e in bad} == {("1", "title"), ("1", "url")}
