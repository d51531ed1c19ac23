"""Reading sources: RSS/Atom, JSON and CSV bytes → `ArticleData` values, by source kind.

Parsing is pure (bytes in, values out) so it can run in worker processes; everything that
touches the database lives in `ingest`. Problems are reported as text naming the item, never
raised: a feed with one bad item still yields the others. The readers are `syndication`
(RSS/Atom) and `records` (JSON, CSV, pushed items: imported when one is read, since its pydantic
model costs an RSS-only run start-up time); the value types are in `articles`.
"""

from __future__ import annotations

from digest.ingest.articles import MAX_GUID, ArticleData, ParsedFeed
from digest.ingest.syndication import parse_feed

__all__ = ["MAX_GUID", "ArticleData", "ParsedFeed", "parse_feed", "parse_source"]


def parse_source(
    kind: str, content: bytes, *, url: str, content_type: str | None = None
) -> ParsedFeed:
    """Dispatch on the source kind ('rss', 'json', 'csv'); never raises for bad content."""
    if not content.strip():
        return ParsedFeed(fatal="empty document")
    try:
        if kind == "json":
            from digest.ingest.records import parse_json

            return parse_json(content, url=url, content_type=content_type)
        if kind == "csv":
            from digest.ingest.records import parse_csv

            return parse_csv(content, url=url, content_type=content_type)
        return parse_feed(content, url=url, content_type=content_type)
    except Exception as exc:  # a parser bug must not stop the other sources
        return ParsedFeed(fatal=f"could not parse: {type(exc).__name__}: {exc}")
