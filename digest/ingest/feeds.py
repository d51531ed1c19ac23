"""Reading sources: RSS/Atom (through feedparser), JSON and CSV bytes → `ArticleData` values.

Parsing is pure (bytes in, values out) so it can run in worker processes; everything that
touches the database lives in `ingest`. Problems are reported as text naming the item, never
raised: a feed with one bad item still yields the others.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import feedparser
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from digest.ingest import quickfeed
from digest.ingest.charsets import decode_text, detect_charset
from digest.ingest.normalize import (
    absolute_url,
    canonical_url,
    clean_author,
    clean_language,
    first_image,
    parse_datetime,
    plain_title,
    split_tags,
    struct_to_utc,
    summary_parts,
    truncate,
)
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


def parse_source(
    kind: str, content: bytes, *, url: str, content_type: str | None = None
) -> ParsedFeed:
    """Dispatch on the source kind ('rss', 'json', 'csv'); never raises for bad content."""
    if not content.strip():
        return ParsedFeed(fatal="empty document")
    try:
        if kind == "json":
            return parse_json(content, url=url, content_type=content_type)
        if kind == "csv":
            return parse_csv(content, url=url, content_type=content_type)
        return parse_feed(content, url=url, content_type=content_type)
    except Exception as exc:  # a parser bug must not stop the other sources
        return ParsedFeed(fatal=f"could not parse: {type(exc).__name__}: {exc}")


# -- RSS and Atom ----------------------------------------------------------------------------------


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
        guid=_guid(entry.get("id"), url),
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


def _guid(value: str | None, url: str) -> str:
    guid = (value or "").strip() or url
    if len(guid) > MAX_GUID:
        return "sha256:" + hashlib.sha256(guid.encode()).hexdigest()
    return guid


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


# -- JSON, CSV and pushed articles -----------------------------------------------------------------


class ArticleIn(BaseModel):
    """An article as a CMS, a JSON file or a CSV row describes it (see README: push API)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    title: str = Field(min_length=1)
    url: str
    summary: str = Field(default="", validation_alias=AliasChoices("summary", "description"))
    published_at: datetime | None = Field(
        default=None, validation_alias=AliasChoices("published_at", "published", "date")
    )
    updated_at: datetime | None = Field(
        default=None, validation_alias=AliasChoices("updated_at", "updated")
    )
    tags: list[str] = Field(default_factory=list)
    image: str | None = Field(default=None, validation_alias=AliasChoices("image", "image_url"))
    author: str | None = None
    guid: str | None = Field(default=None, validation_alias=AliasChoices("guid", "id"))
    language: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if canonical_url(value) is None:
            raise ValueError("must be an absolute http(s) URL")
        return value

    @field_validator("published_at", "updated_at", mode="before")
    @classmethod
    def _moment(cls, value: object) -> object:
        if value in (None, ""):
            return None
        moment = parse_datetime(value)
        if moment is None:
            raise ValueError("not a date-time (ISO 8601 like 2026-11-25T08:00:00Z, or RFC 822)")
        return moment

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_list(cls, value: object) -> object:
        if value is None:
            return []
        return split_tags([value] if isinstance(value, str) else value)  # type: ignore[arg-type]

    @field_validator("guid", mode="before")
    @classmethod
    def _guid_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


def to_article(item: ArticleIn) -> ArticleData:
    url = canonical_url(item.url) or item.url
    summary_html, summary_text = summary_parts(item.summary, url)
    published, source = item.published_at, DateSource.PUBLISHED
    if published is None:
        published, source = item.updated_at, DateSource.UPDATED
    if published is None:
        source = DateSource.FIRST_SEEN
    return ArticleData(
        guid=_guid(item.guid, url),
        url=url,
        title=plain_title(item.title) or url,
        summary_html=summary_html,
        summary_text=summary_text,
        author=clean_author(item.author),
        image_url=absolute_url(item.image, url),
        language=clean_language(item.language),
        tags=tuple(item.tags),
        published_at=published,
        date_source=source,
    )


@dataclass(frozen=True)
class ItemError:
    """A rejected input item: where it is (index or line) and which field is wrong."""

    where: str
    field: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.where}: {self.field}: {self.message}"
            if self.field
            else f"{self.where}: {self.message}"
        )


def validate_items(
    raw: Iterable[tuple[str, object]],
) -> tuple[list[tuple[str, ArticleIn]], list[ItemError]]:
    """Validate (where, mapping) pairs; good ones come back, each bad one as an ItemError."""
    good: list[tuple[str, ArticleIn]] = []
    bad: list[ItemError] = []
    for where, value in raw:
        if not isinstance(value, Mapping):
            bad.append(ItemError(where, "", "expected an object with title and url"))
            continue
        try:
            good.append((where, ArticleIn.model_validate(dict(value))))
        except ValidationError as exc:
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"])
                message = str(error["msg"]).removeprefix("Value error, ")
                if error["type"] == "missing":
                    message = "required"
                bad.append(ItemError(where, name, message))
    return good, bad


def _from_records(records: Iterable[tuple[str, object]], note: str | None) -> ParsedFeed:
    good, bad = validate_items(records)
    result = ParsedFeed(warnings=[note] if note else [], errors=[str(e) for e in bad])
    result.items = [to_article(item) for _, item in good]
    if not good and not bad:
        result.warnings.append("the source has no articles")
    return result


def parse_json(content: bytes, *, url: str, content_type: str | None = None) -> ParsedFeed:
    """A list of articles, {"articles": [...]}, or a JSON Feed (jsonfeed.org) document."""
    text, note = decode_text(content, content_type)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return ParsedFeed(fatal=f"not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}")
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        items = [_from_json_feed(item) for item in document["items"]]
    elif isinstance(document, dict) and isinstance(document.get("articles"), list):
        items = document["articles"]
    elif isinstance(document, list):
        items = document
    else:
        return ParsedFeed(fatal='expected a list of articles, {"articles": [...]} or a JSON Feed')
    return _from_records(((f"item {i}", item) for i, item in enumerate(items)), note)


def _from_json_feed(item: object) -> object:
    if not isinstance(item, dict):
        return item
    authors = item.get("authors") or ([item["author"]] if item.get("author") else [])
    return {
        "guid": item.get("id"),
        "url": item.get("url") or item.get("external_url"),
        "title": item.get("title") or "",
        "summary": item.get("summary")
        or item.get("content_html")
        or item.get("content_text")
        or "",
        "published_at": item.get("date_published"),
        "updated_at": item.get("date_modified"),
        "tags": item.get("tags") or [],
        "image": item.get("image") or item.get("banner_image"),
        "author": next((a.get("name") for a in authors if isinstance(a, dict)), None),
        "language": item.get("language"),
    }


def parse_csv(content: bytes, *, url: str, content_type: str | None = None) -> ParsedFeed:
    """A header row (title, url, summary, published_at, tags, image, author, guid, language)."""
    text, note = decode_text(content, content_type)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = {(name or "").strip().lower() for name in reader.fieldnames or []}
    missing = {"title", "url"} - columns
    if missing:
        return ParsedFeed(
            fatal=f"line 1: the header needs the columns {', '.join(sorted(missing))}"
        )

    def rows() -> Iterable[tuple[str, object]]:
        for row in reader:
            record = {
                (k or "").strip().lower(): v for k, v in row.items() if k and v not in (None, "")
            }
            if record:
                yield f"line {reader.line_num}", record

    try:
        return _from_records(list(rows()), note)
    except csv.Error as exc:
        return ParsedFeed(fatal=f"line {reader.line_num}: not valid CSV: {exc}")
