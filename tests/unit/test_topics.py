"""Topic rules: tags, whole-word keywords, exclusions, source filters, Turkish letters."""

from __future__ import annotations

import pytest

from digest.config import NewsletterConfig, TopicRules
from digest.ingest.topics import FoldedArticle, classify, match_topic

TURKEY = TopicRules(
    tags=["Turkey", "Türkiye"],
    keywords=["İstanbul", "Ankara", "lira", "central bank"],
    exclude_keywords=["sponsored"],
)


def reasons(title: str, summary: str = "", tags: list[str] | None = None, source: str = "world",
            rules: TopicRules = TURKEY) -> list[str]:  # fmt: skip
    return match_topic(title, summary, tags or [], source, rules)


def test_tags_match_case_insensitively_and_report_the_rule_spelling() -> None:
    assert reasons("Nothing here", tags=["TURKEY"]) == ["tag:Turkey"]
    assert reasons("Nothing here", tags=["türkiye"]) == ["tag:Türkiye"]
    assert reasons("Nothing here", tags=["TÜRKIYE"]) == ["tag:Türkiye"]
    assert reasons("Nothing here", tags=["Turkeys"]) == []


@pytest.mark.parametrize(
    "title",
    [
        "Rain in İstanbul",
        "Rain in ISTANBUL",
        "Rain in istanbul",
        "Rain in ıstanbul",
        "İSTANBUL'da yağmur",
    ],
)
def test_turkish_dotted_and_dotless_i(title: str) -> None:
    assert reasons(title) == ["keyword:İstanbul"]


def test_keywords_match_whole_words_in_title_and_summary() -> None:
    assert reasons("Lira steadies", "The central  bank held rates") == [
        "keyword:lira",
        "keyword:central bank",
    ]
    assert reasons("Ankara's budget") == ["keyword:Ankara"]
    assert reasons("Liras and Ankaragücü", "decentral bankers") == []  # not whole words


def test_diacritics_are_ignored_both_ways() -> None:
    rules = TopicRules(keywords=["Şişli", "cafe"], tags=["Économie"])
    assert match_topic("Sisli parents", "", [], "x", rules) == ["keyword:Şişli"]
    assert match_topic("A new café", "", ["economie"], "x", rules) == [
        "tag:Économie",
        "keyword:cafe",
    ]


def test_exclude_keywords_win_over_matches_in_text_or_tags() -> None:
    assert reasons("Sponsored: a week in Ankara", tags=["Turkey"]) == []
    assert reasons("A week in Ankara", "This post is SPONSORED.") == []
    assert reasons("A week in Ankara", tags=["Sponsored"]) == []
    assert reasons("A week in Ankara", "Our sponsors") == ["keyword:Ankara"]  # whole words only


def test_source_filter() -> None:
    only_wire = TopicRules(keywords=["Ankara"], sources=["wire"])
    assert match_topic("Ankara", "", [], "wire", only_wire) == ["keyword:Ankara"]
    assert match_topic("Ankara", "", [], "world", only_wire) == []
    everything_from_wire = TopicRules(sources=["wire"])
    assert match_topic("Anything", "", [], "wire", everything_from_wire) == ["source:wire"]
    assert match_topic("Anything", "", [], "world", everything_from_wire) == []


def test_empty_rules_match_nothing() -> None:
    assert match_topic("Ankara", "Turkey", ["Turkey"], "world", TopicRules()) == []


def test_punctuated_keywords() -> None:
    rules = TopicRules(keywords=["C++", "U.S."])
    assert match_topic("C++ turns 40", "", [], "x", rules) == ["keyword:C++"]
    assert match_topic("The U.S. economy", "", [], "x", rules) == ["keyword:U.S."]
    assert match_topic("C+ grade in US", "", [], "x", rules) == []


def test_an_article_can_belong_to_several_newsletters() -> None:
    newsletters = [
        NewsletterConfig(slug="turkey", title="T", topic=TURKEY),
        NewsletterConfig(slug="climate", title="C", topic=TopicRules(keywords=["drought"])),
        NewsletterConfig(slug="sport", title="S", topic=TopicRules(keywords=["football"])),
    ]
    article = FoldedArticle.of("Drought near Ankara", "Farmers worry.", ["Turkey"], "world")
    assert classify(article, newsletters) == {
        "turkey": ["tag:Turkey", "keyword:Ankara"],
        "climate": ["keyword:drought"],
    }
