"""Character encodings: declared, undeclared, wrongly declared, BOMs (fixture feeds we wrote)."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.ingest.charsets import detect_charset
from digest.ingest.records import parse_csv
from digest.ingest.syndication import parse_feed

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"

TURKISH = ["İstanbul'da sağanak: Kadıköy ve Üsküdar'da su baskınları",
           "Ankara'da bütçe görüşmeleri gece yarısına kadar sürdü"]  # fmt: skip
RUSSIAN = ["В Москве прошёл сильный снегопад", "Курс рубля стабилизировался после решения банка"]
FRENCH = ["Été caniculaire à Lyon : la municipalité ouvre des îlots de fraîcheur",
          "Café, crème brûlée et garçons : la brasserie rénovée rouvre"]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "titles", "encoding", "guessed"),
    [
        ("tr-windows-1254-declared.xml", TURKISH, "cp1254", False),
        ("tr-windows-1254-undeclared.xml", TURKISH, "cp1254", True),
        ("ru-windows-1251-declared.xml", RUSSIAN, "cp1251", False),
        ("ru-windows-1251-undeclared.xml", RUSSIAN, "cp1251", True),
        ("fr-iso-8859-1-declared.xml", FRENCH, "cp1252", False),
        ("fr-iso-8859-1-undeclared.xml", FRENCH, "cp1252", True),
        ("tr-utf8-bom.xml", TURKISH, "utf-8", False),
        ("tr-utf16-bom.xml", TURKISH, "utf-16le", False),
        ("tr-utf8-declared-latin1.xml", TURKISH, "utf-8", False),
    ],
)
def test_feed_encodings(name: str, titles: list[str], encoding: str, guessed: bool) -> None:
    result = parse_feed((FEEDS / name).read_bytes(), url=str(FEEDS / name))
    assert result.fatal is None and result.errors == []
    assert [item.title for item in result.items] == titles
    assert result.encoding == encoding
    notes = [w for w in result.warnings if "encoding" in w]
    assert bool(notes) == guessed, result.warnings
    if guessed:
        assert "not declared" in notes[0]


def test_summaries_and_tags_are_decoded_too() -> None:
    result = parse_feed((FEEDS / "tr-windows-1254-undeclared.xml").read_bytes(), url="x.xml")
    first = result.items[0]
    assert first.tags == ("Türkiye",)
    assert "Şişli'de" in first.summary_text and "Öğle" in first.summary_text


def test_the_http_charset_declares_the_encoding() -> None:
    data = (FEEDS / "ru-windows-1251-undeclared.xml").read_bytes()
    result = parse_feed(
        data, url="https://x.example/f", content_type="text/xml; charset=windows-1251"
    )
    assert [i.title for i in result.items] == RUSSIAN and result.warnings == []


def test_a_wrong_http_charset_is_overridden_with_a_note() -> None:
    data = (FEEDS / "tr-windows-1254-declared.xml").read_bytes()
    # The server says UTF-8; the bytes are not UTF-8, the XML declaration is right.
    result = parse_feed(
        data, url="https://x.example/f", content_type="application/rss+xml; charset=utf-8"
    )
    assert [i.title for i in result.items] == TURKISH


def test_detect_charset_rules() -> None:
    assert detect_charset(b"\xef\xbb\xbf<rss/>", None) == ("utf-8", None)
    assert detect_charset(b"<rss>caf\xc3\xa9</rss>", "text/xml; charset=iso-8859-1") == (
        "utf-8",
        None,
    )
    assert detect_charset(b"<rss>caf\xe9</rss>", "text/xml; charset=ISO-8859-1") == ("cp1252", None)
    encoding, note = detect_charset(b"<rss>caf\xe9</rss>", "text/xml; charset=utf-8")
    assert encoding == "cp1252" and note and "'utf-8'" in note


def test_csv_in_windows_1254_without_a_declaration() -> None:
    result = parse_csv((FEEDS / "articles-windows-1254.csv").read_bytes(), url="a.csv")
    assert result.items[0].title == "İzmir'de liman genişletmesi onaylandı"
    assert result.items[0].author == "Ayşe Yılmaz"
    assert any("windows-1254" in w for w in result.warnings)
