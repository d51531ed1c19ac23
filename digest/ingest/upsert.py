"""Storing a source's articles: deduplicate, insert the new, update the changed, classify.

An item is the same article as a stored one when it has the same guid (same source), the same
canonical URL (any source: syndicated copies count once), or the same folded title from the same
source within `ingest.dedupe_window` of it, with a similar summary (a re-published item with a
new guid or date). Work is split in two: `prepare` is pure CPU (hashing, folding, topic
matching) and runs next to parsing, in worker processes; `store_prepared` is the database part:
three bulk lookups, one bulk insert, one bulk update, all on the caller's transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, func, or_, select
from sqlmodel import Session, SQLModel

from digest.config import NewsletterConfig, parse_duration
from digest.ingest.articles import ArticleData
from digest.ingest.normalize import fold, title_key
from digest.ingest.topics import FoldedArticle, classify_compiled, compile_newsletters, link_topics
from digest.storage.models import Article, DateSource
from subscribers.bulk import insert_rows, update_rows

FUTURE_TOLERANCE = timedelta(days=1)  # clocks and time zones are often a few hours off
SIMILAR_SUMMARY = 0.5  # word overlap (Jaccard) above which same-titled items are one article
CHUNK = 300  # items per lookup: three IN (...) lists of this size stay under bind limits
ARTICLE: Table = SQLModel.metadata.tables[Article.__tablename__]
_WORD = re.compile(r"\w+")
_DATE_RANK = {DateSource.FIRST_SEEN: 0, DateSource.UPDATED: 1, DateSource.PUBLISHED: 2}


@dataclass
class StoreCounts:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    warnings: list[str] = field(default_factory=list)
    article_ids: list[int] = field(default_factory=list)  # new and updated, in input order


@dataclass(slots=True)
class Prepared:
    """An item with everything the database step needs computed ahead."""

    data: ArticleData
    published_at: datetime
    date_source: DateSource
    title_key: str
    fingerprint: str
    words: frozenset[str]  # summary words, to tell same-titled articles apart
    topics: dict[str, list[str]]  # newsletter slug → reasons


@dataclass(slots=True)
class _Stored:
    id: int
    source: str
    guid: str
    url: str
    title_key: str
    fingerprint: str
    published_at: datetime
    date_source: str
    summary_text: str
    _words: frozenset[str] | None = None

    @property
    def words(self) -> frozenset[str]:
        if self._words is None:
            self._words = summary_words(self.summary_text)
        return self._words


def fingerprint(item: ArticleData) -> str:
    """A hash of what we show; an unchanged fingerprint means nothing to update."""
    shown = [
        item.title, item.url, item.summary_html, item.author, item.image_url, item.language,
        list(item.tags),
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode()).hexdigest()[:32]


def summary_words(text: str, *, folded: bool = False) -> frozenset[str]:
    return frozenset(_WORD.findall((text if folded else fold(text))[:400]))


def _similar(a: frozenset[str], b: frozenset[str]) -> bool:
    if not a or not b:
        return True  # no summary to tell them apart: the same title decides
    return len(a & b) / len(a | b) >= SIMILAR_SUMMARY


def prepare(
    items: Iterable[ArticleData],
    source: str,
    *,
    now: datetime,
    newsletters: Sequence[NewsletterConfig],
) -> tuple[list[Prepared], list[str]]:
    """Dates settled (undated or future-dated → now, flagged), keys, hashes and topics; pure."""
    rules = compile_newsletters(newsletters)
    prepared, future = [], 0
    for data in items:
        published, date_source = data.published_at, data.date_source
        if published is not None and published > now + FUTURE_TOLERANCE:
            published, future = None, future + 1
        if published is None:
            published, date_source = now, DateSource.FIRST_SEEN
        title, summary = fold(data.title), fold(data.summary_text)
        folded = FoldedArticle.from_folded(title, summary, data.tags, source)
        prepared.append(
            Prepared(
                data=data,
                published_at=published,
                date_source=date_source,
                title_key=title_key(title, folded=True),
                fingerprint=fingerprint(data),
                words=summary_words(summary, folded=True),
                topics=classify_compiled(folded, rules),
            )
        )
    warnings = [f"{future} item(s) dated in the future: used the time first seen"] if future else []
    return prepared, warnings


class _Index:
    """Articles by guid, URL and title key, answering 'is this item one we have?'."""

    def __init__(self, window: timedelta) -> None:
        self.window = window
        self.by_guid: dict[str, _Stored] = {}
        self.by_url: dict[str, _Stored] = {}
        self.by_title: dict[str, list[_Stored]] = {}

    def add(self, stored: _Stored) -> None:
        self.by_guid.setdefault(stored.guid, stored)
        self.by_url.setdefault(stored.url, stored)
        self.by_title.setdefault(stored.title_key, []).append(stored)

    def find(self, item: Prepared) -> tuple[_Stored | None, bool]:
        """(the stored article, whether it matched by guid)."""
        match = self.by_guid.get(item.data.guid)
        if match is not None:
            return match, True
        match = self.by_url.get(item.data.url)
        if match is not None:
            return match, False
        for stored in self.by_title.get(item.title_key, ()) if item.title_key else ():
            close = abs(stored.published_at - item.published_at) <= self.window
            if close and _similar(stored.words, item.words):
                return stored, False
        return None, False


def _lookup_statement() -> Any:
    """Built once: constructing this SELECT per source cost more than running it."""
    t = ARTICLE
    same_source = t.c.source == bindparam("source")
    return select(
        t.c.id, t.c.source, t.c.guid, t.c.url, t.c.title_key, t.c.fingerprint,
        t.c.published_at, t.c.date_source,
        func.substr(t.c.summary_text, 1, 400),  # enough to compare summaries
    ).where(
        or_(
            and_(same_source, t.c.guid.in_(bindparam("guids", expanding=True))),
            t.c.url.in_(bindparam("urls", expanding=True)),
            and_(
                same_source,
                t.c.title_key.in_(bindparam("keys", expanding=True)),
                t.c.published_at >= bindparam("since"),
            ),
        )
    )  # fmt: skip


_LOOKUP = _lookup_statement()
_IDS = select(ARTICLE.c.guid, ARTICLE.c.id).where(
    ARTICLE.c.source == bindparam("source"),
    ARTICLE.c.guid.in_(bindparam("guids", expanding=True)),
)


def _load(session: Session, source: str, items: Sequence[Prepared], window: timedelta) -> _Index:
    """The stored articles any item may be: one indexed OR query per chunk of items."""
    since = min(i.published_at for i in items) - window
    # Core on the session's connection: the ORM layer would double the cost of these lookups.
    connection = session.connection()
    rows: dict[int, Any] = {}
    for part in _chunks(items):
        params = {
            "source": source,
            "guids": sorted({i.data.guid for i in part}),
            "urls": sorted({i.data.url for i in part}),
            "keys": sorted({i.title_key for i in part if i.title_key}),
            "since": since,
        }
        rows.update((row[0], row) for row in connection.execute(_LOOKUP, params).all())
    index = _Index(window)
    # Same-source rows first, so a syndicated copy elsewhere never shadows our own.
    for row in sorted(rows.values(), key=lambda r: (r[1] != source, r[0])):
        index.add(_Stored(*tuple(row)))
    return index


def _chunks(items: Sequence[Prepared]) -> Iterable[Sequence[Prepared]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def store_articles(
    session: Session,
    source: str,
    items: Sequence[ArticleData],
    *,
    now: datetime,
    newsletters: Sequence[NewsletterConfig],
    dedupe_window: str = "3d",
) -> StoreCounts:
    """prepare + store_prepared, for callers that have plain items (the push API)."""
    prepared, warnings = prepare(items, source, now=now, newsletters=newsletters)
    counts = store_prepared(session, source, prepared, now=now, dedupe_window=dedupe_window)
    counts.warnings[:0] = warnings
    return counts


def store_prepared(
    session: Session,
    source: str,
    items: Sequence[Prepared],
    *,
    now: datetime,
    dedupe_window: str = "3d",
) -> StoreCounts:
    """Upsert one source's items in the caller's transaction and link them to their topics."""
    counts = StoreCounts()
    if not items:
        return counts
    window = parse_duration(dedupe_window)
    stored = _load(session, source, items, window)
    batch = _Index(window)  # repeats within this batch: the first one wins
    inserts: list[Prepared] = []
    updates: dict[int, tuple[Prepared, _Stored, bool]] = {}
    for item in items:
        if batch.find(item)[0] is not None:
            counts.unchanged += 1
            continue
        batch.add(_as_stored(item, source))
        match, by_guid = stored.find(item)
        if match is None:
            inserts.append(item)
        elif match.source != source or match.id in updates or not _changed(match, item):
            counts.unchanged += 1
        else:
            updates[match.id] = (item, match, by_guid)
    new_ids = _insert(session, source, inserts, now)
    _update(session, updates.values(), now)
    counts.new, counts.updated = len(new_ids), len(updates)
    changed = [*zip(new_ids, inserts, strict=True), *((i, u[0]) for i, u in updates.items())]
    link_topics(session, [(aid, item.topics) for aid, item in changed], now, fresh=set(new_ids))
    counts.article_ids = [article_id for article_id, _ in changed]
    return counts


def _as_stored(item: Prepared, source: str) -> _Stored:
    data = item.data
    return _Stored(
        0, source, data.guid, data.url, item.title_key, item.fingerprint, item.published_at,
        item.date_source.value, data.summary_text, item.words,
    )  # fmt: skip


def _better_date(stored: _Stored, item: Prepared) -> bool:
    return _DATE_RANK[item.date_source] > _DATE_RANK.get(DateSource(stored.date_source), 0)


def _changed(stored: _Stored, item: Prepared) -> bool:
    return stored.fingerprint != item.fingerprint or _better_date(stored, item)


def _row(item: Prepared) -> dict[str, Any]:
    data = item.data
    return {
        "title": data.title,
        "title_key": item.title_key,
        "summary_html": data.summary_html,
        "summary_text": data.summary_text,
        "author": data.author,
        "image_url": data.image_url,
        "language": data.language,
        "tags": list(data.tags),
        "fingerprint": item.fingerprint,
    }


def _insert(session: Session, source: str, items: list[Prepared], now: datetime) -> list[int]:
    if not items:
        return []
    rows = [
        {
            **_row(item),
            "source": source,
            "guid": item.data.guid,
            "url": item.data.url,
            "published_at": item.published_at,
            "date_source": item.date_source.value,
            "first_seen_at": now,
            "updated_at": now,
        }
        for item in items
    ]
    # No RETURNING: sqlite3's executemany (see subscribers.bulk) cannot return rows, and one
    # lookup by the (source, guid) unique key finds the ids on both databases.
    connection = session.connection()
    insert_rows(connection, ARTICLE, rows)
    return _ids(connection, source, [item.data.guid for item in items])


def _ids(connection: Connection, source: str, guids: list[str]) -> list[int]:
    """The new rows' ids, in `guids` order: a guid is unique within its source."""
    ids: dict[str, int] = {}
    for start in range(0, len(guids), CHUNK):
        params = {"source": source, "guids": guids[start : start + CHUNK]}
        ids.update((guid, id_) for guid, id_ in connection.execute(_IDS, params))
    return [ids[guid] for guid in guids]


def _update(
    session: Session, updates: Iterable[tuple[Prepared, _Stored, bool]], now: datetime
) -> None:
    rows = []
    for item, stored, by_guid in updates:
        row = {**_row(item), "id": stored.id, "updated_at": now}
        if by_guid:  # the publisher moved the article: its guid says it is the same one
            row["url"] = item.data.url
        if _better_date(stored, item):
            # A real date replaces a guessed one; otherwise published_at stays put, so a
            # re-published article does not jump to the top of the next issue.
            row["published_at"] = item.published_at
            row["date_source"] = item.date_source.value
        rows.append(row)
    # One executemany per set of columns (moved URLs and better dates add columns).
    for keys in sorted({tuple(sorted(r)) for r in rows}):
        batch = [r for r in rows if tuple(sorted(r)) == keys]
        update_rows(session.connection(), ARTICLE, batch)
