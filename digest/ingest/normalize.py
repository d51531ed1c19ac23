"""Turning what feeds say into what we store: plain titles, safe summaries, canonical URLs, dates.

Every function here is pure and total: bad input gives an empty value or None, never an
exception, so one odd item cannot stop a feed.
"""

from __future__ import annotations

import html
import re
import time
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Literal
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import nh3

# The summary allow-list: inline text markup, paragraphs, lists, quotes and links. No images (the
# article's image is kept separately as `image_url`; inline images in feeds are often trackers),
# no tables, no style, no classes, no event handlers; links only to http(s) and mailto.
SUMMARY_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "cite", "code", "em", "i", "li", "ol", "p",
        "pre", "q", "s", "small", "strong", "sub", "sup", "u", "ul",
    }
)  # fmt: skip
SUMMARY_ATTRIBUTES = {"a": {"href", "title"}, "abbr": {"title"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"

MAX_TEXT = 2000  # characters of summary_text kept: a digest shows a teaser, not the article
MAX_HTML = 20_000  # characters of sanitized summary_html; longer ones become their plain text

# Query parameters that only say where a click came from; they make one article look like many.
TRACKING_PREFIXES = ("utm_", "at_")  # Google Analytics; AT Internet / Piano (at_medium, ...)
TRACKING_PARAMS = frozenset(
    {
        "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "igshid",
        "mc_cid", "mc_eid", "_hsenc", "_hsmi", "mkt_tok", "ocid", "xtor", "_ga", "_gl",
        "ns_mchannel", "ns_source", "ns_campaign", "ns_linkname", "ns_fee",
        "oly_anon_id", "oly_enc_id", "vero_id", "__twitter_impression",
    }
)  # fmt: skip

_BLOCK_TAG = re.compile(
    r"<(?:br|/?p|/?div|/?li|/?h[1-6]|/?blockquote|/?tr|/?pre|/?ul|/?ol|/?figure|/?section|/?article)"
    r"\b[^>]*>",
    re.IGNORECASE,
)
_PLAIN_BREAK = re.compile(r"\n\s*\n")
_EMAIL = re.compile(r"[^\s@()<>]+@[^\s@()<>]+")
_AUTHOR_FORMS = (
    re.compile(r"[^\s@()<>]+@[^\s@()<>]+\s*\((?P<name>[^()]+)\)"),
    re.compile(r"(?P<name>[^()<>]+?)\s*[(<][^\s@()<>]+@[^\s@()<>]+[)>]"),
)
_EMPTY_BLOCK = re.compile(r"<(p|li|blockquote)>\s*</\1>")
_SAFE_BLOCK = re.compile(r"</?(?:p|li|ul|ol|blockquote|pre)>|<br>")
_IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_NON_WORD = re.compile(r"[\W_]+")
_TAG_SPLIT = re.compile(r"[,;]")
_ANY_TAG = re.compile(r"""<(?:[^>"']|"[^"]*"|'[^']*')*>""")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- text ----------------------------------------------------------------------------------------


def html_to_text(fragment: str, *, paragraphs: bool = True) -> str:
    """Markup removed, entities decoded, whitespace collapsed; paragraphs kept as blank lines.

    Text without any tag is taken as plain text: there, a blank line separates paragraphs.
    """
    if not fragment:
        return ""
    if "<" not in fragment:
        text = html.unescape(fragment) if "&" in fragment else fragment
        if not paragraphs:
            return " ".join(text.split())
        return _paragraphs(_PLAIN_BREAK.split(text))
    # In HTML a line break is a space; block elements make the paragraphs.
    marked = _BLOCK_TAG.sub("\n\\g<0>", " ".join(fragment.split()))
    # nh3 with no tags allowed strips every tag and drops script/style bodies entirely.
    text = html.unescape(nh3.clean(marked, tags=set(), strip_comments=True))
    return _paragraphs(text.split("\n")) if paragraphs else " ".join(text.split())


def _paragraphs(parts: Iterable[str]) -> str:
    lines = (" ".join(part.split()) for part in parts)
    return "\n\n".join(line for line in lines if line)


def plain_title(value: str) -> str:
    """A title as one line of plain text (feeds put entities and markup in titles)."""
    return html_to_text(value, paragraphs=False)


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def sanitize_html(fragment: str, base_url: str | None = None) -> str:
    """The allow-listed subset of `fragment`, relative links resolved against `base_url`."""
    if not fragment:
        return ""
    cleaned = _cleaner(base_url if base_url and _is_http(base_url) else None).clean(fragment)
    if "<pre" not in cleaned:  # whitespace is insignificant everywhere else
        cleaned = " ".join(cleaned.split())
    cleaned = _EMPTY_BLOCK.sub("", cleaned).strip()
    if len(cleaned) > MAX_HTML:
        text = truncate(html_to_text(cleaned), MAX_TEXT)
        return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
    return cleaned


@lru_cache(maxsize=64)
def _cleaner(base_url: str | None) -> nh3.Cleaner:
    """One sanitizer per base URL: building it costs more than cleaning a summary."""
    relative: Literal["deny"] | tuple[Literal["rewrite_with_base"], str] = "deny"
    if base_url:
        relative = ("rewrite_with_base", base_url)
    return nh3.Cleaner(
        tags=set(SUMMARY_TAGS),
        attributes={tag: set(attrs) for tag, attrs in SUMMARY_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel=LINK_REL,
        strip_comments=True,
        url_relative=relative,
    )


def summary_parts(fragment: str, base_url: str | None = None) -> tuple[str, str]:
    """(sanitized HTML, plain text) of a summary that may be HTML or plain text."""
    if "<" not in fragment:  # plain text: keep its paragraphs as paragraphs
        text = html_to_text(fragment)
        safe = "".join(f"<p>{html.escape(p, quote=False)}</p>" for p in text.split("\n\n") if p)
        return safe, truncate(text, MAX_TEXT)
    safe = sanitize_html(fragment, base_url)
    return safe, truncate(sanitized_text(safe), MAX_TEXT)


def sanitized_text(safe: str) -> str:
    """html_to_text for nh3 output: well-formed, no script or style, so a regex strips it."""
    marked = _SAFE_BLOCK.sub("\n", " ".join(safe.split()))  # nh3 writes them without attributes
    return _paragraphs(html.unescape(_ANY_TAG.sub("", marked)).split("\n"))


def first_image(fragment: str, base_url: str | None = None) -> str | None:
    """The first <img src> of an HTML fragment, as an absolute http(s) URL."""
    for match in _IMG_SRC.finditer(fragment or ""):
        src = html.unescape(next(g for g in match.groups() if g is not None))
        url = absolute_url(src, base_url)
        if url:
            return url
    return None


# -- folding (shared by dedupe and topic matching) -------------------------------------------------


# Combining diacritical marks (and their supplements): what NFKD splits off accented letters.
_DIACRITICS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """Case- and accent-insensitive form: 'İstanbul', 'ISTANBUL', 'ıstanbul' → 'istanbul'.

    casefold() alone maps 'İ' to 'i' + combining dot and leaves the dotless 'ı' alone; Turkish
    readers and writers treat I/ı/İ/i as the same letter when searching, so we do too.
    """
    text = text.replace("İ", "i").replace("ı", "i").casefold()
    if text.isascii():
        return text
    return _DIACRITICS.sub("", unicodedata.normalize("NFKD", text))


def title_key(title: str, *, folded: bool = False) -> str:
    """Folded title without punctuation: equal keys mean 'the same headline'."""
    return _NON_WORD.sub(" ", title if folded else fold(title)).strip()[:300]


# -- URLs ----------------------------------------------------------------------------------------


def _is_http(url: str) -> bool:
    return url[:7].lower() == "http://" or url[:8].lower() == "https://"


def absolute_url(value: str | None, base: str | None = None) -> str | None:
    """`value` resolved against `base`, if the result is an http(s) URL with a host."""
    if not value:
        return None
    value = value.strip()
    if base and not _is_http(value):
        try:
            value = urljoin(base, value)
        except ValueError:
            return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return _CONTROL.sub("", value).replace(" ", "%20")


def canonical_url(value: str | None, base: str | None = None) -> str | None:
    """The URL that identifies an article: absolute, lower-case host, no fragment, no trackers."""
    url = absolute_url(value, base)
    if url is None:
        return None
    parts = urlsplit(url)  # cached by urllib: absolute_url just split the same string
    try:
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    query = "&".join(p for p in parts.query.split("&") if p and not _is_tracking(p))
    return urlunsplit(SplitResult(scheme, host, parts.path or "/", query, ""))


def _is_tracking(pair: str) -> bool:
    name = pair.split("=", 1)[0].lower()
    return name in TRACKING_PARAMS or name.startswith(TRACKING_PREFIXES)


# -- dates, tags, people -------------------------------------------------------------------------


def struct_to_utc(value: time.struct_time | tuple[int, ...] | None) -> datetime | None:
    """feedparser's *_parsed values are UTC struct_times."""
    if not value:
        return None
    try:
        year, month, day, hour, minute, second = value[:6]
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def parse_datetime(value: object) -> datetime | None:
    """ISO 8601 or RFC 822 text (or a datetime) → aware UTC; naive times are taken as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            try:
                moment = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def split_tags(values: Iterable[str | None]) -> list[str]:
    """Tags from category-like values: comma/semicolon lists split, blanks and repeats dropped."""
    seen: set[str] = set()
    tags: list[str] = []
    for value in values:
        for part in _TAG_SPLIT.split(html_to_text(value or "", paragraphs=False)):
            tag = part.strip()[:100]
            key = fold(tag)
            if tag and key not in seen:
                seen.add(key)
                tags.append(tag)
    return tags


def clean_author(value: str | None) -> str | None:
    """An author's display name: 'jane@example.com (Jane Doe)' → 'Jane Doe'."""
    text = plain_title(value or "")
    for pattern in _AUTHOR_FORMS:  # 'a@b (Name)', 'Name (a@b)', 'Name <a@b>'
        match = pattern.fullmatch(text)
        if match:
            text = match.group("name").strip()
            break
    if _EMAIL.fullmatch(text):
        return None  # a bare address is not a byline
    return text[:300] or None


def clean_language(value: str | None) -> str | None:
    """'en-US', 'tr_TR ' → 'en-us', 'tr-tr' (a BCP 47 tag, lower-cased), else None."""
    text = (value or "").strip().replace("_", "-").lower()
    return text[:35] if re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]{1,8})*", text) else None
