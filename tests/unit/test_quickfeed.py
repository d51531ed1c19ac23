"""The quick RSS/Atom reader gives exactly what feedparser gives, or declines."""

from __future__ import annotations

import sys
from pathlib import Path

import feedparser
import pytest

from digest.ingest import quickfeed
from digest.ingest.charsets import detect_charset
from digest.ingest.syndication import parse_feed

ROOT = Path(__file__).resolve().parents[2]
FEEDS = ROOT / "tests" / "fixtures" / "feeds"
SAMPLES = ROOT / "config" / "sample" / "feeds"
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_ingest import feed as bench_feed  # noqa: E402

EXTRA = {
    # feedparser-specific corners the quick reader must reproduce
    "guid-permalink.xml": b"""<rss version="2.0"><channel><link>https://g.example/</link>
<item><title>Guid is the link</title><guid>https://g.example/a</guid></item>
<item><title>Guid is not</title><guid isPermaLink="false">b</guid><link>/b</link></item>
</channel></rss>""",
    "content-only.xml": b"""<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:media="http://search.yahoo.com/mrss/"><channel>
<link>https://c.example/</link><item><title>T</title><link>https://c.example/t</link>
<content:encoded><![CDATA[<p>Full <img src="/i.png"> text</p>]]></content:encoded>
<author>x@c.example (X)</author><dc:creator>Last Author</dc:creator><dc:language>fr</dc:language>
<media:group><media:content url="https://c.example/v.mp4" type="video/mp4"/>
<media:content url="https://c.example/p.jpg" medium="image">
<media:credit>AP</media:credit></media:content>
</media:group><media:category>World</media:category><media:keywords>a, b ,c</media:keywords>
<comments>https://c.example/t#c</comments></item></channel></rss>""",
    "atom-links.atom": """<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="tr"><link href="https://a.example/"/>
<entry><title type="text">x &lt; y &amp;amp; z</title><id>urn:1</id>
<link rel="enclosure" type="image/jpeg" href="https://a.example/e.jpg"/>
<link rel="alternate" type="application/pdf" href="https://a.example/doc.pdf"/>
<link rel="alternate" type="text/html" href="https://a.example/page"/>
<author><name>Ayşe</name><email>a@a.example</email></author>
<category term="Ekonomi" label="Economy"/><summary type="text">plain &lt;text&gt;</summary>
<content type="html">&lt;p&gt;rich&lt;/p&gt;</content>
<updated>2026-11-24T09:00:00+03:00</updated></entry>
</feed>""".encode(),
}


def documents() -> list[tuple[str, bytes]]:
    found = [
        (p.name, p.read_bytes())
        for p in sorted(FEEDS.glob("*"))
        if p.suffix in (".xml", ".atom", ".rdf", ".html")
    ]
    found += [(p.name, p.read_bytes()) for p in sorted(SAMPLES.glob("*"))]
    found += [("bench.xml", bench_feed(7, 20, 1))]
    return found + list(EXTRA.items())


@pytest.mark.parametrize(
    ("name", "data"), documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_quick_and_feedparser_agree(name: str, data: bytes) -> None:
    url = f"https://feeds.example/dir/{name}"
    quick = parse_feed(data, url=url)
    slow = parse_feed(data, url=url, quick=False)
    assert quick.items == slow.items
    assert quick.errors == slow.errors
    assert quick.fatal == slow.fatal
    if quickfeed.read(data, detect_charset(data, None)[0]) is not None:
        assert quick.warnings == slow.warnings


QUICK = [
    "world.xml", "business.xml", "climate.atom", "bench.xml", "rich-metadata.xml", "duplicates.xml",
    "hostile.xml", "relative-links.xml", "tr-windows-1254-undeclared.xml", "tr-utf16-bom.xml",
    "ru-windows-1251-declared.xml", "guid-permalink.xml", "content-only.xml", "atom-links.atom",
]  # fmt: skip
DECLINED = [
    "rss1.rdf", "atom-xml-base.atom", "bozo-readable.xml", "not-a-feed.html", "empty-channel.xml",
    "garbage.bin",
]  # fmt: skip


def test_the_quick_reader_takes_the_common_feeds_and_declines_the_odd_ones() -> None:
    data = dict(documents())
    data["garbage.bin"] = (FEEDS / "garbage.bin").read_bytes()
    for name in QUICK:
        assert quickfeed.read(data[name], detect_charset(data[name], None)[0]) is not None, name
    for name in DECLINED:
        assert quickfeed.read(data[name], detect_charset(data[name], None)[0]) is None, name


RSS = '<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel><item>{}</item></channel></rss>'


@pytest.mark.parametrize(
    "snippet",
    [
        '<!DOCTYPE rss [<!ENTITY a "aaaa">]>' + RSS.format("<title>&a;</title>"),
        RSS.format(
            '<title>t</title><summary xmlns="http://www.itunes.com/dtds/podcast-1.0.dtd">s</summary>'
        ),
        RSS.format(
            '<title>t</title><media:content url="u"><media:title>x</media:title></media:content>'
        ),
        RSS.format("<title>a <b>bold</b> title</title>"),
        '<feed xmlns="http://www.w3.org/2005/Atom"><entry><title type="xhtml">'
        '<div xmlns="http://www.w3.org/1999/xhtml">x</div></title></entry></feed>',
    ],
)
def test_the_quick_reader_declines_what_feedparser_interprets(snippet: str) -> None:
    assert quickfeed.read(snippet.encode(), "utf-8") is None


@pytest.mark.parametrize(
    "date",
    [
        "Wed, 25 Nov 2026 10:00:00 +0300",
        "Wed, 25 Nov 2026 07:00:00 GMT",
        "25 Nov 2026 07:00 +0000",
    ],
)
def test_rss_dates_read_as_feedparser_reads_them(date: str) -> None:
    data = RSS.format(f"<title>t</title><pubDate>{date}</pubDate>").encode()
    quick = quickfeed.read(data, "utf-8")
    assert quick is not None
    assert (
        quick.entries[0]["published_parsed"] == feedparser.parse(data).entries[0].published_parsed
    )


def test_atom_dates_read_as_feedparser_reads_them() -> None:
    data = (
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>f</title><entry><title>t</title>'
        b"<id>x</id><published>2026-11-25T10:00:00+03:00</published></entry></feed>"
    )
    quick = quickfeed.read(data, "utf-8")
    assert quick is not None
    assert (
        quick.entries[0]["published_parsed"] == feedparser.parse(data).entries[0].published_parsed
    )


@pytest.mark.parametrize("date", ["25/11/2026 07:00", "Wed, 25 Nov 2026 07:00:00"])
def test_a_date_in_another_shape_or_without_zone_goes_to_feedparser(date: str) -> None:
    data = RSS.format(f"<title>t</title><pubDate>{date}</pubDate>").encode()
    assert quickfeed.read(data, "utf-8") is None
