"""Articles described field by field: JSON files, CSV files and the push API's items.

They share one pydantic model (`ArticleIn`) so a CMS push, a JSON Feed and a CSV row accept the
same fields and aliases and report a bad item the same way (`ItemError`), apart from RSS/Atom.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from digest.ingest.articles import ArticleData, ParsedFeed, article_guid
from digest.ingest.charsets import decode_text
from digest.ingest.normalize import (
    absolute_url,
    canonical_url,
    clean_author,
    clean_language,
    parse_datetime,
    plain_title,
    split_tags,
    summary_parts,
)
from digest.storage.models import DateSource


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
        guid=article_guid(item.guid, url),
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
