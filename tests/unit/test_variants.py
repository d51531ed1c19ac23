"""The pure rules of a personal email: which articles, in which section, how many."""

from __future__ import annotations

from digest.issues.variants import NO_TOPIC, Candidate, Plan, plan, score, too_few

ORDER = ["turkey", "climate", "business"]


def _column(topic: str, *ids: int, points: int = 3) -> list[Candidate]:
    return [Candidate(a, topic, i, points) for i, a in enumerate(ids)]


def test_each_article_once_in_its_strongest_followed_topic() -> None:
    candidates = {
        "turkey": _column("turkey", 1, 2, 9, points=1),  # 9 matched Turkey by a keyword only
        "climate": _column("climate", 9, 3),  # … and Climate by a tag
    }
    chosen = plan(candidates, ORDER, {"turkey", "climate"}, (), min_articles=1, max_articles=10)
    assert isinstance(chosen, Plan)
    assert chosen.sections == (("turkey", (1, 2)), ("climate", (9, 3)))
    alone = plan(candidates, ORDER, {"turkey"}, (), min_articles=1, max_articles=10)
    assert isinstance(alone, Plan) and alone.sections == (("turkey", (1, 2, 9)),)


def test_a_tie_goes_to_the_topic_listed_first() -> None:
    candidates = {"turkey": _column("turkey", 5), "climate": _column("climate", 5)}
    chosen = plan(candidates, ORDER, {"climate", "turkey"}, (), min_articles=1, max_articles=5)
    assert isinstance(chosen, Plan) and chosen.sections == (("turkey", (5,)),)


def test_what_was_received_is_left_out_and_too_few_is_a_reason() -> None:
    candidates = {"turkey": _column("turkey", 1, 2, 3)}
    chosen = plan(candidates, ORDER, {"turkey"}, {1, 3}, min_articles=1, max_articles=5)
    assert isinstance(chosen, Plan) and chosen.article_ids == {2}
    assert plan(candidates, ORDER, {"turkey"}, {1, 2}, min_articles=2, max_articles=5) == too_few(2)
    assert plan(candidates, ORDER, set(), (), min_articles=1, max_articles=5) == NO_TOPIC


def test_the_limit_is_shared_in_turn_between_sections() -> None:
    candidates = {
        "turkey": _column("turkey", 1, 2, 3, 4),
        "climate": _column("climate", 5, 6, 7),
        "business": _column("business", 8),
    }
    chosen = plan(candidates, ORDER, set(ORDER), (), min_articles=1, max_articles=5)
    assert isinstance(chosen, Plan)
    assert chosen.sections == (("turkey", (1, 2)), ("climate", (5, 6)), ("business", (8,)))


def test_the_footer_lists_every_followed_topic_even_without_new_articles() -> None:
    candidates = {"turkey": _column("turkey", 1)}
    chosen = plan(candidates, ORDER, {"turkey", "business"}, (), min_articles=1, max_articles=5)
    assert isinstance(chosen, Plan)
    assert chosen.topics == ("turkey", "business") and chosen.sections == (("turkey", (1,)),)


def test_same_plan_same_key_and_scores_favour_tags_and_pins() -> None:
    a = Plan(("turkey",), (("turkey", (1, 2)),))
    assert a.key == Plan(("turkey",), (("turkey", (1, 2)),)).key
    assert a.key != Plan(("turkey",), (("turkey", (2, 1)),)).key
    assert score(["tag:Turkey"]) > score(["keyword:Ankara", "keyword:lira"])
    assert score(["keyword:Ankara"], pinned=True) > score(["tag:A", "tag:B", "tag:C"])
