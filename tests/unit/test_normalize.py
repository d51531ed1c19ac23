"""Normalization: plain titles, safe summaries, canonical URLs, dates, tags, folding."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from digest.ingest.normalize import (
    canonical_url,
    clean_author,
    clean_language,
    first_image,
    fold,
    html_to_text,
    parse_datetime,
    plain_title,
    sanitize_html,
    split_tags,
    struct_to_utc,
    summary_parts,
    title_key,
    truncate,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Plain   title\n", "Plain title"),
        ("A <b>bold</b> move", "A bold move"),
        ("Fish &amp; chips", "Fish & chips"),
        ("Double &amp;amp; escaped", "Double &amp; escaped"),
        ("<script>alert(1)</script>Breaking", "Breaking"),
        ("Why 3 < 5", "Why 3 < 5"),
        ("Caf&eacute; &#8220;quoted&#8221;", "Café “quoted”"),
        ("İstanbul'da <i>sağanak</i>", "İstanbul'da sağanak"),
    ],
)
def test_plain_title(raw: str, expected: str) -> None:
    assert plain_title(raw) == expected


def test_html_to_text_keeps_paragraphs_and_drops_scripts() -> None:
    html = "<p>First\n line</p><p>Second <style>p{}</style>para<br>graph</p><ul><li>a</li></ul>"
    assert html_to_text(html) == "First line\n\nSecond para\n\ngraph\n\na"
    assert html_to_text(html, paragraphs=False) == "First line Second para graph a"
    assert html_to_text("plain text\nwrapped\n\nnext") == "plain text wrapped\n\nnext"


HOSTILE = """<p onclick="steal()" style="color:red" class="x">Hi <script>alert(1)</script>
<style>p{display:none}</style><a href="javascript:alert(2)">js</a>
<a href="JaVaScRiPt:alert(3)">mixed</a> <a href="data:text/html;base64,PHNjcmlwdD4=">data</a>
<a href=" java&#x09;script:alert(4)">encoded</a>
<a href="https://ok.example/x" target="_blank">ok</a>
<img src="x" onerror="alert(5)"><iframe src="https://evil.example/"></iframe>
<form action="https://evil.example/"><input name="q"></form><object data="x.swf"></object>
<svg onload="alert(6)"><circle r="1"/></svg><!-- comment -->
<table><tr><td>cell</td></tr></table></p>"""


def test_sanitize_html_allows_only_the_allow_list() -> None:
    safe = sanitize_html(HOSTILE, "https://feed.example/")
    lowered = safe.lower()
    for bad in ("<script", "alert(", "<style", "onclick", "onerror", "onload", "javascript:",
                "data:", "<iframe", "<form", "<input", "<object", "<svg", "<img", "style=",
                "class=", "target=", "<!--", "<table"):  # fmt: skip
        assert bad not in lowered, bad
    assert '<a href="https://ok.example/x" rel="noopener noreferrer nofollow">ok</a>' in safe
    assert "cell" in safe  # text of removed elements is kept


def test_sanitize_resolves_relative_links_or_drops_them() -> None:
    html = '<a href="../up">u</a> <a href="/root?a=1&amp;b=2">r</a> <a href="//cdn.example/f">p</a>'
    safe = sanitize_html(html, "https://site.example/news/today/")
    assert 'href="https://site.example/news/up"' in safe
    assert 'href="https://site.example/root?a=1&amp;b=2"' in safe
    assert 'href="https://cdn.example/f"' in safe
    assert "href" not in sanitize_html('<a href="/x">x</a>', None)  # no base: no guessing


def test_summary_parts_from_html_and_from_plain_text() -> None:
    safe, text = summary_parts("<p>One &amp; <b>two</b></p><p></p><p>three</p>", None)
    assert safe == "<p>One &amp; <b>two</b></p><p>three</p>"
    assert text == "One & two\n\nthree"
    safe, text = summary_parts("Plain & simple\n\nSecond <paragraph> idea", None)
    assert "<paragraph>" not in safe and text.startswith("Plain & simple")
    safe, text = summary_parts("Plain & simple\nwrapped\n\nSecond", None)
    assert safe == "<p>Plain &amp; simple wrapped</p><p>Second</p>"


def test_long_summaries_are_truncated_at_a_word() -> None:
    _, text = summary_parts("<p>" + "word " * 1000 + "</p>", None)
    assert len(text) <= 2000 and text.endswith("word…")
    assert truncate("short", 10) == "short"
    assert truncate("one two three four", 10) == "one two…"


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("https://Example.COM:443/a/b?utm_source=x&id=3&utm_medium=y#frag", None,
         "https://example.com/a/b?id=3"),
        ("http://example.com:80", None, "http://example.com/"),
        ("http://example.com:8080/x", None, "http://example.com:8080/x"),
        ("https://e.example/p?at_medium=RSS&at_campaign=KARANGA&fbclid=1&gclid=2&q=k", None,
         "https://e.example/p?q=k"),
        ("https://e.example/p?mc_cid=1&mc_eid=2&msclkid=3", None, "https://e.example/p"),
        ("/relative/path?x=1", "https://site.example/feed.xml", "https://site.example/relative/path?x=1"),
        ("item", "https://site.example/news/", "https://site.example/news/item"),
        ("  https://spaces.example/a b  ", None, "https://spaces.example/a%20b"),
        ("javascript:alert(1)", "https://site.example/", None),
        ("mailto:x@example.com", None, None),
        ("/relative", None, None),
        ("https://", None, None),
        ("", None, None),
        ("https://user:pw@host.example/x", None, "https://host.example/x"),
    ],
)  # fmt: skip
def test_canonical_url(url: str, base: str | None, expected: str | None) -> None:
    assert canonical_url(url, base) == expected


def test_tracking_parameters_keep_the_order_and_encoding_of_the_rest() -> None:
    url = "https://e.example/s?b=2&utm_campaign=z&a=%C3%A7&UTM_Source=Q"
    assert canonical_url(url) == "https://e.example/s?b=2&a=%C3%A7"


def test_dates_become_aware_utc() -> None:
    assert parse_datetime("2026-11-25T10:00:00+03:00") == datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
    assert parse_datetime("2026-11-25T07:00:00Z") == datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
    assert parse_datetime("2026-11-25 07:00") == datetime(
        2026, 11, 25, 7, 0, tzinfo=UTC
    )  # naive = UTC
    assert parse_datetime("Wed, 25 Nov 2026 10:00:00 +0300") == datetime(
        2026, 11, 25, 7, tzinfo=UTC
    )
    assert parse_datetime("soon") is None
    assert parse_datetime("") is None
    assert struct_to_utc(time.strptime("2026-11-25 07:00:00", "%Y-%m-%d %H:%M:%S")) == datetime(
        2026, 11, 25, 7, tzinfo=UTC
    )
    assert struct_to_utc(None) is None


def test_tags_are_split_deduplicated_and_cleaned() -> None:
    values = ["Politics, Economy ; Trade", "economy", " ", None, "<b>Türkiye</b>", "TÜRKIYE"]
    assert split_tags(values) == ["Politics", "Economy", "Trade", "Türkiye"]


def test_author_and_language() -> None:
    assert clean_author("jane@example.com (Jane Doe)") == "Jane Doe"
    assert clean_author("Jane Doe (jane@example.com)") == "Jane Doe"
    assert clean_author("Jane Doe <jane@example.com>") == "Jane Doe"
    assert clean_author("desk@example.com") is None
    assert clean_author("  Elif  Sönmez ") == "Elif Sönmez"
    assert clean_author("") is None
    assert clean_language("en-US") == "en-us"
    assert clean_language("tr_TR") == "tr-tr"
    assert clean_language("English") is None


def test_first_image() -> None:
    html = "<p>x</p><img alt='a' src='/img/a.jpg'><img src=\"https://b.example/b.jpg\">"
    assert first_image(html, "https://site.example/p/") == "https://site.example/img/a.jpg"
    assert first_image("<img src='javascript:x'>", None) is None
    assert first_image("no images", None) is None


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("İstanbul", "istanbul"),
        ("ISTANBUL", "ıstanbul"),
        ("Şişli", "sisli"),
        ("Türkiye", "TURKIYE"),
        ("Çağlayan", "caglayan"),
        ("Straße", "STRASSE"),
        ("café", "CAFE"),
        ("Ёлка", "елка"),
    ],
)
def test_fold_is_case_accent_and_dotted_i_insensitive(a: str, b: str) -> None:
    assert fold(a) == fold(b)


def test_title_key_ignores_case_punctuation_and_spacing() -> None:
    assert title_key("Council approves the harbour plan!") == title_key(
        "council  approves: the HARBOUR plan"
    )
    assert title_key("Lira falls") != title_key("Lira rises")
