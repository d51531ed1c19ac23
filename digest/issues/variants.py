"""Which articles one reader of a personal newsletter gets: pure rules, no database.

A personal issue offers, per merged topic, a ranked list of candidates (`Candidate`). A reader's
email takes the candidates of the topics they follow, drops what they already received, and
places each article once, in the section of the followed topic it matches most strongly (tags
count more than words; an editor's pin most; a tie goes to the topic listed first). Readers with
the same followed topics and the same history get the same `Plan`: its `key` identifies the
variant that is rendered once for all of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

TAG_SCORE = 3  # a tag is the newsroom's own label: a stronger match than a word in the text
KEYWORD_SCORE = 1
PIN_SCORE = 1000  # an editor's pin places the article in that topic's section

NO_TOPIC = "follows no topic"


def too_few(minimum: int) -> str:
    return f"fewer than {minimum} new articles"


@dataclass(frozen=True)
class Candidate:
    """An article one topic offers the issue, at `position` in the topic's own order."""

    article_id: int
    topic: str
    position: int
    score: int
    pinned: bool = False


@dataclass(frozen=True)
class Plan:
    """One reader's email: the topics they follow, and the sections' article ids in order."""

    topics: tuple[str, ...]
    sections: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def articles(self) -> int:
        return sum(len(ids) for _, ids in self.sections)

    @property
    def article_ids(self) -> frozenset[int]:
        return frozenset(a for _, ids in self.sections for a in ids)

    @cached_property  # asked once per reader by the freeze: computed once per plan
    def key(self) -> str:
        data = json.dumps([self.topics, self.sections], separators=(",", ":"))
        return hashlib.sha256(data.encode()).hexdigest()

    def as_json(self) -> list[list[object]]:
        return [[topic, list(ids)] for topic, ids in self.sections]


def score(reasons: Sequence[str], pinned: bool = False) -> int:
    """How strongly an article matches a topic, from the rules that matched it."""
    points = sum(TAG_SCORE if r.startswith("tag:") else KEYWORD_SCORE for r in reasons)
    return points + (PIN_SCORE if pinned else 0)


def plan(
    candidates: Mapping[str, Sequence[Candidate]],
    order: Sequence[str],
    followed: Collection[str],
    received: Collection[int],
    *,
    min_articles: int,
    max_articles: int,
) -> Plan | str:
    """The reader's email, or the reason they get none (`NO_TOPIC`, `too_few(n)`).

    `candidates` maps each merged topic to its ranked candidates, `order` is the merged topics'
    order (the sections'), `followed` the topics the reader follows, `received` the articles
    they already got. At most `max_articles`, taken in turn from each section so every
    followed topic gets its share.
    """
    topics = tuple(t for t in order if t in followed)
    if not topics:
        return NO_TOPIC
    rank = {t: i for i, t in enumerate(topics)}
    best: dict[int, Candidate] = {}
    for topic in topics:
        for candidate in candidates.get(topic, ()):
            if candidate.article_id in received:
                continue
            held = best.get(candidate.article_id)
            if held is None or (candidate.score, -rank[topic]) > (held.score, -rank[held.topic]):
                best[candidate.article_id] = candidate
    per_topic: dict[str, list[Candidate]] = {t: [] for t in topics}
    for candidate in best.values():
        per_topic[candidate.topic].append(candidate)
    ranked = [sorted(per_topic[t], key=lambda c: c.position) for t in topics]
    chosen = _take_in_turn(ranked, max_articles)
    if len(chosen) < max(min_articles, 1):
        return too_few(max(min_articles, 1))
    sections = tuple(
        (topic, tuple(c.article_id for c in column if c.article_id in chosen))
        for topic, column in zip(topics, ranked, strict=True)
    )
    return Plan(topics, tuple(s for s in sections if s[1]))


def _take_in_turn(columns: list[list[Candidate]], limit: int) -> set[int]:
    """Up to `limit` article ids, the first of each column, then the second of each, …"""
    chosen: set[int] = set()
    depth = 0
    while len(chosen) < limit and any(depth < len(c) for c in columns):
        for column in columns:
            if depth < len(column) and len(chosen) < limit:
                chosen.add(column[depth].article_id)
        depth += 1
    return chosen
