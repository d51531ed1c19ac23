"""What every reader yields: `ArticleData` per item and `ParsedFeed` per source.

Its own module so the RSS/Atom readers, the JSON/CSV readers, the push API and `upsert` share
the value types (and the guid rule) without importing one another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from digest.storage.models import DateSource

MAX_GUID = 1000


@dataclass(frozen=True, slots=True)
class ArticleData:
    """One article as read from a source, already normalized; `published_at` None = undated."""

    guid: str
    url: str
    title: str
    summary_html: str = ""
    summary_text: str = ""
    author: str | None = None
    image_url: str | None = None
    language: str | None = None
    tags: tuple[str, ...] = ()
    published_at: datetime | None = None
    date_source: DateSource = DateSource.FIRST_SEEN


@dataclass
class ParsedFeed:
    """What a source yielded: its items, per-item errors, notes, and a fatal error if unreadable."""

    items: list[ArticleData] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # items that could not be used
    warnings: list[str] = field(default_factory=list)  # the feed is odd but was read
    fatal: str | None = None  # nothing could be read
    encoding: str | None = None
    title: str | None = None  # the feed's own title (RSS channel, Atom feed), plain text


def article_guid(value: str | None, url: str) -> str:
    """The item's id, else its URL; hashed when too long to store."""
    guid = (value or "").strip() or url
    if len(guid) > MAX_GUID:
        return "sha256:" + hashlib.sha256(guid.encode()).hexdigest()
    return guid
