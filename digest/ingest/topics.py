"""Which newsletters an article belongs to, and why.

A newsletter's `topic` rules match an article when one of its tags equals a rule tag, or a rule
keyword appears as a whole word in the title or summary — compared case- and accent-insensitively,
with Turkish I/ı/İ/i treated as one letter — unless an exclude keyword appears (in the text or
the tags). `sources` restricts the rules to those sources; rules with only `sources` take every
article of those sources; empty rules match nothing. The reasons ("tag:Turkey",
"keyword:Ankara", "source:wire") are stored on `ArticleTopic` for editors.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import Table, bindparam, delete, update
from sqlmodel import Session, SQLModel, col, select

from digest.config import NewsletterConfig, Settings, TopicRules
from digest.ingest.normalize import fold
from digest.storage.models import Article, ArticleTopic
from subscribers.bulk import insert_rows
from subscribers.timestamps import utcnow

ARTICLE_TOPIC: Table = SQLModel.metadata.tables[ArticleTopic.__tablename__]
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class _Words:
    """Rule words matched by token lookup (fast) or, with punctuation inside, by regex."""

    single: dict[str, str]  # folded word → the rule's spelling
    phrases: dict[str, str]  # " folded words " → the rule's spelling
    patterns: tuple[tuple[re.Pattern[str], str], ...]
    order: tuple[str, ...]  # as configured, for the order of reasons

    def __bool__(self) -> bool:
        return bool(self.single or self.phrases or self.patterns)

    def found(self, article: FoldedArticle) -> list[str]:
        hits = {name for word, name in self.single.items() if word in article.words}
        hits |= {name for phrase, name in self.phrases.items() if phrase in article.joined}
        hits |= {name for pattern, name in self.patterns if pattern.search(article.text)}
        return [name for name in self.order if name in hits]

    def is_word(self, folded: str) -> bool:
        return folded in self.single or f" {folded} " in self.phrases

    def any_in(self, article: FoldedArticle) -> bool:
        return (
            not self.single.keys().isdisjoint(article.words)
            or any(phrase in article.joined for phrase in self.phrases)
            or any(pattern.search(article.text) for pattern, _ in self.patterns)
        )


def _words(rule_words: Sequence[str]) -> _Words:
    single: dict[str, str] = {}
    phrases: dict[str, str] = {}
    patterns: list[tuple[re.Pattern[str], str]] = []
    for word in rule_words:
        folded = " ".join(fold(word).split())
        tokens = _WORD.findall(folded)
        if not tokens:
            continue
        if " ".join(tokens) == folded:
            if len(tokens) == 1:
                single.setdefault(tokens[0], word)
            else:
                phrases.setdefault(f" {folded} ", word)
        else:  # 'c++', 'u.s.': punctuation is part of the word
            body = r"\s+".join(map(re.escape, folded.split()))
            patterns.append((re.compile(rf"(?<!\w){body}(?!\w)"), word))
    return _Words(single, phrases, tuple(patterns), tuple(dict.fromkeys(rule_words)))


@dataclass(frozen=True)
class _Compiled:
    tags: dict[str, str]  # folded tag → the rule's spelling
    keywords: _Words
    exclude: _Words
    sources: frozenset[str]
    only_sources: bool  # no tags and no keywords: every article of `sources`


@lru_cache(maxsize=256)
def _compile(
    tags: tuple[str, ...],
    keywords: tuple[str, ...],
    exclude: tuple[str, ...],
    sources: tuple[str, ...],
) -> _Compiled:
    folded_tags: dict[str, str] = {}
    for tag in tags:
        if tag.strip():
            folded_tags.setdefault(" ".join(fold(tag).split()), tag)
    keyword_words = _words(keywords)
    return _Compiled(
        tags=folded_tags,
        keywords=keyword_words,
        exclude=_words(exclude),
        sources=frozenset(sources),
        only_sources=not folded_tags and not keyword_words,
    )


def compile_rules(rules: TopicRules) -> _Compiled:
    return _compile(
        tuple(rules.tags),
        tuple(rules.keywords),
        tuple(rules.exclude_keywords),
        tuple(rules.sources),
    )


@dataclass(frozen=True)
class FoldedArticle:
    """An article's text folded and split into words once, then matched against every rule."""

    text: str
    words: frozenset[str]
    joined: str  # " word word … " for phrase lookups
    tags: frozenset[str]
    source: str

    @classmethod
    def of(cls, title: str, summary_text: str, tags: Iterable[str], source: str) -> FoldedArticle:
        return cls.from_folded(fold(title), fold(summary_text), tags, source)

    @classmethod
    def from_folded(
        cls, title: str, summary_text: str, tags: Iterable[str], source: str
    ) -> FoldedArticle:
        text = f"{title}\n{summary_text}"
        tokens = _WORD.findall(text)
        return cls(
            text=text,
            words=frozenset(tokens),
            joined=f" {' '.join(tokens)} ",
            tags=frozenset(" ".join(fold(t).split()) for t in tags),
            source=source,
        )


def _reasons(article: FoldedArticle, rules: _Compiled) -> list[str]:
    if rules.sources and article.source not in rules.sources:
        return []
    if rules.exclude and (
        rules.exclude.any_in(article) or any(rules.exclude.is_word(tag) for tag in article.tags)
    ):
        return []
    if rules.only_sources:
        return [f"source:{article.source}"] if rules.sources else []
    reasons = [f"tag:{name}" for folded, name in rules.tags.items() if folded in article.tags]
    return reasons + [f"keyword:{name}" for name in rules.keywords.found(article)]


def match_topic(
    title: str, summary_text: str, tags: list[str], source: str, rules: TopicRules
) -> list[str]:
    """Why the article matches `rules` ("tag:Turkey", "keyword:Ankara"); empty = no match."""
    return _reasons(FoldedArticle.of(title, summary_text, tags, source), compile_rules(rules))


def classify(
    article: FoldedArticle, newsletters: Sequence[NewsletterConfig]
) -> dict[str, list[str]]:
    """newsletter slug → reasons, for every newsletter the article belongs to."""
    return classify_compiled(article, compile_newsletters(newsletters))


CompiledNewsletters = list[tuple[str, _Compiled]]


def compile_newsletters(newsletters: Sequence[NewsletterConfig]) -> CompiledNewsletters:
    return [(n.slug, compile_rules(n.topic)) for n in newsletters]


def classify_compiled(article: FoldedArticle, rules: CompiledNewsletters) -> dict[str, list[str]]:
    matches = {}
    for slug, compiled in rules:
        reasons = _reasons(article, compiled)
        if reasons:
            matches[slug] = reasons
    return matches


def folded(article: Article) -> FoldedArticle:
    return FoldedArticle.of(article.title, article.summary_text, article.tags or [], article.source)


@dataclass
class ReclassifyReport:
    articles: int = 0
    added: int = 0  # article × newsletter links created
    removed: int = 0
    changed: int = 0  # same link, different reasons


def link_topics(
    session: Session,
    matches: Sequence[tuple[int, dict[str, list[str]]]],
    now: datetime,
    *,
    fresh: Collection[int] = (),
) -> ReclassifyReport:
    """Make ArticleTopic rows equal `matches` (article id → slug → reasons); `fresh` have none."""
    report = ReclassifyReport(articles=len(matches))
    wanted = {(aid, slug): reasons for aid, found in matches for slug, reasons in found.items()}
    known = [article_id for article_id, _ in matches if article_id not in fresh]
    table, connection = ARTICLE_TOPIC, session.connection()
    existing: dict[tuple[int, str], list[str]] = {}
    for start in range(0, len(known), 500):
        statement = select(table.c.article_id, table.c.newsletter, table.c.reasons).where(
            table.c.article_id.in_(known[start : start + 500])
        )
        existing.update({(a, n): list(r or []) for a, n, r in connection.execute(statement)})
    key_is = (table.c.article_id == bindparam("k_id")) & (table.c.newsletter == bindparam("k_nl"))
    gone = [{"k_id": k[0], "k_nl": k[1]} for k in existing if k not in wanted]
    if gone:
        connection.execute(delete(table).where(key_is), gone)
    changed = [
        {"k_id": k[0], "k_nl": k[1], "reasons": wanted[k], "matched_at": now}
        for k, reasons in existing.items()
        if k in wanted and reasons != wanted[k]
    ]
    if changed:
        connection.execute(update(table).where(key_is), changed)
    rows = [
        {"article_id": k[0], "newsletter": k[1], "reasons": reasons, "matched_at": now}
        for k, reasons in wanted.items()
        if k not in existing
    ]
    insert_rows(connection, table, rows)
    report.added, report.removed, report.changed = len(rows), len(gone), len(changed)
    return report


def reclassify(
    session: Session, settings: Settings, *, now: datetime | None = None, chunk: int = 1000
) -> ReclassifyReport:
    """Re-apply every newsletter's current rules to every stored article; report the difference.

    Links to newsletters no longer configured are removed too: no rules, no match.
    """
    moment = now or utcnow()
    rules = compile_newsletters(settings.newsletters)
    total = ReclassifyReport()
    last_id = 0
    while True:
        articles = session.exec(
            select(Article).where(col(Article.id) > last_id).order_by(col(Article.id)).limit(chunk)
        ).all()
        if not articles:
            return total
        last_id = articles[-1].id or 0
        matches = [(a.id or 0, classify_compiled(folded(a), rules)) for a in articles]
        part = link_topics(session, matches, moment)
        total.articles += part.articles
        total.added += part.added
        total.removed += part.removed
        total.changed += part.changed
        session.expunge_all()
