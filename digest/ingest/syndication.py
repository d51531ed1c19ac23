"""Reading RSS 0.9x/1.0/2.0 and Atom: `quickfeed` for the plain cases, feedparser for the rest.

Apart from the JSON/CSV readers because this is where feeds in the wild are odd (bozo feeds,
xml:base, media extensions) and where the CPU goes; both paths map entries to one `_entry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from digest.ingest import quickfeed
from digest.ingest.articles import ArticleData, ParsedFeed, article_guid
from digest.ingest.charsets import detect_charset
from digest.ingest.normalize import (
    absolute_url,
    canonical_url,
    clean_author,
    clean_language,
    first_image,
    plain_title,
    split_tags,
    struct_to_utc,
    summary_parts,
    truncate,
)
from digest.storage.models import DateSource


def parse_feed(
    content: bytes, *, url: str, content_type: str | None = None, quick: bool = True
) -> ParsedFeed:
    """RSS 0.9x/1.0/2.0 or Atom. Not-well-formed feeds are read leniently, with a warning.

    Plain, well-formed RSS 2.0 and Atom 1.0 go through `quickfeed` (same entries, a tenth of
    the CPU); everything else, and `quick=False`, through feedparser.
    """
    encoding, note = detect_charset(content, content_type)
    result = ParsedFeed(encoding=encoding, warnings=[note] if note else [])
    fast = quickfeed.read(content, encoding) if quick else None
    if fast is not None:
        channel, entries = fast.channel, fast.entries
    else:
        parsed = _feedparser(content, encoding, result)
        if parsed is None:
            return result
        channel, entries = parsed.get("feed", {}), parsed.entries
    site = absolute_url(url) or absolute_url(channel.get("link"))
    language = clean_language(channel.get("language"))
    result.title = truncate(plain_title(channel.get("title") or ""), 300) or None
    if not entries:
        result.warnings.append("the feed has no items")
    for index, entry in enumerate(entries):
        item = _entry(entry, site, language)
        if isinstance(item, str):
            result.errors.append(f"item {index + 1}: {item}")
        else:
            result.items.append(item)
    return result


def _feedparser(content: bytes, encoding: str, result: ParsedFeed) -> Any:
    """feedparser's result, or None (with `result.fatal` or a warning set) if it has no items."""
    # No content-location: feedparser would then urljoin at every element (40% of its time).
    # Relative links are resolved per item, against xml:base, the feed URL or the site.
    # Its sanitizer and URI resolver are slow too: nh3 does both, later.
    import feedparser  # only here: most feeds never need it, and it costs 0.1 s to import

    parsed = feedparser.parse(
        content,
        response_headers={"content-type": f"application/xml; charset={encoding}"},
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    if not parsed.entries and not parsed.get("version"):
        why = f" ({_bozo_text(parsed.bozo_exception)})" if parsed.bozo else ""
        result.fatal = f"not an RSS or Atom feed{why}"
        return None
    if parsed.bozo and not parsed.entries:
        result.warnings.append(f"feed is not well-formed: {_bozo_text(parsed.bozo_exception)}")
        return None
    if parsed.bozo and not _is_encoding_note(parsed.bozo_exception):
        result.warnings.append(
            f"feed is not well-formed ({_bozo_text(parsed.bozo_exception)}); "
            f"read {len(parsed.entries)} items leniently"
        )
    return parsed


def _is_encoding_note(exc: object) -> bool:
    return type(exc).__name__ in ("CharacterEncodingOverride", "NonXMLContentType")


def _bozo_text(exc: object) -> str:
    line = getattr(exc, "getLineNumber", None)
    message = getattr(exc, "getMessage", None)
    if callable(line) and callable(message):
        return f"line {line()}, column {exc.getColumnNumber()}: {message()}"  # type: ignore[attr-defined]
    return str(exc) or type(exc).__name__


def _entry(
    entry: Mapping[str, Any], site: str | None, feed_language: str | None
) -> ArticleData | str:
    detail = entry.get("summary_detail") or {}
    base = absolute_url(detail.get("base"), site) or site
    raw_summary = entry.get("summary") or ""
    contents = entry.get("content") or []
    if not raw_summary and contents:
        raw_summary = contents[0].get("value", "")
    summary_html, summary_text = summary_parts(raw_summary, base)

    title_detail = entry.get("title_detail") or {}
    # Always read as HTML: feeds escape markup into "plain" titles, or escape twice.
    title = plain_title(entry.get("title") or "")
    label = f"{title[:60]!r}" if title else "untitled"

    link = entry.get("feedburner_origlink") or entry.get("link")
    if not link and entry.get("guidislink"):
        link = entry.get("id")
    url = canonical_url(link, base)
    if url is None:
        return f"{label}: no usable http(s) link ({link!r})" if link else f"{label}: no link"
    if not title:
        title = truncate(summary_text.split("\n")[0], 120) if summary_text else ""
    if not title:
        return f"{url}: no title and no summary"

    published, source = struct_to_utc(entry.get("published_parsed")), DateSource.PUBLISHED
    if published is None:
        published, source = struct_to_utc(entry.get("updated_parsed")), DateSource.UPDATED
    if published is None:
        source = DateSource.FIRST_SEEN
    author = entry.get("author") or entry.get("author_detail", {}).get("name")
    return ArticleData(
        guid=article_guid(entry.get("id"), url),
        url=url,
        title=title,
        summary_html=summary_html,
        summary_text=summary_text,
        author=clean_author(author),
        image_url=_image(entry, base, raw_summary, contents),
        language=clean_language(entry.get("language") or title_detail.get("language"))
        or feed_language,
        tags=tuple(split_tags(t.get("term") or t.get("label") for t in entry.get("tags") or [])),
        published_at=published,
        date_source=source,
    )


def _image(
    entry: Mapping[str, Any], base: str | None, summary: str, contents: list[Any]
) -> str | None:
    """media:content, media:thumbnail, an image enclosure, then the first <img> in the text."""
    for media in entry.get("media_content") or []:
        kind = (media.get("medium") or media.get("type") or "image").lower()
        if kind.startswith("image"):
            url = absolute_url(media.get("url"), base)
            if url:
                return url
    for thumb in entry.get("media_thumbnail") or []:
        url = absolute_url(thumb.get("url"), base)
        if url:
            return url
    for link in entry.get("links") or []:
        if link.get("rel") == "enclosure" and (link.get("type") or "").startswith("image/"):
            url = absolute_url(link.get("href"), base)
            if url:
                return url
    for html_text in [summary, *(c.get("value", "") for c in contents)]:
        url = first_image(html_text, base)
        if url:
            return url
    return None
