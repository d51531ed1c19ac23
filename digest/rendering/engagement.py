"""Opt-in engagement in a rendered issue: links through a redirect, an open pixel. Pure.

Applied once per issue to the inlined HTML (never per reader): every `<a href="http(s)://…">`
becomes the redirect of its index in the issue's link table (the same URL twice is one entry),
and the pixel goes just before `</body>`. Hrefs holding a `%%…%%` (a per-recipient token, or
content that looks like one) are left alone, so nothing personal enters the shared table, as
are links to digest's own pages (`own`: "view in browser", the archive, subscribe), which say
nothing about the stories. The plain-text part is not touched: its reader sees where each link
goes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass

_HREF = re.compile(r"""(<a\b[^>]*?\shref=)(["'])(https?://[^"'\s<>]+)\2""", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
PIXEL = (
    '<img src="{src}" width="1" height="1" alt="" '
    'style="display:block; width:1px; height:1px; border:0; margin:0; padding:0;">'
)


@dataclass(frozen=True)
class Tracked:
    html: str
    urls: tuple[str, ...]  # the link table: index → the URL as written (unescaped)


def extract_links(body: str, own: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The distinct http(s) link targets of the HTML, in order of first appearance."""
    return rewrite(body, None, None, own=own).urls


def rewrite(
    body: str,
    click_url: Callable[[int], str] | None,
    pixel_url: str | None,
    *,
    own: tuple[str, ...] = (),
) -> Tracked:
    """`body` with its links through `click_url(index)` (None: unchanged) and the pixel at
    `pixel_url` added (None: none); the link table either way."""
    index: dict[str, int] = {}

    def link(match: re.Match[str]) -> str:
        url = html.unescape(match.group(3))
        if "%%" in url or any(url == page or url.startswith(page + "/") for page in own):
            return match.group(0)
        position = index.setdefault(url, len(index))
        if click_url is None:
            return match.group(0)
        quote = match.group(2)
        return f"{match.group(1)}{quote}{html.escape(click_url(position))}{quote}"

    out = _HREF.sub(link, body)
    if pixel_url is not None:
        pixel = PIXEL.format(src=html.escape(pixel_url))
        ends = list(_BODY_END.finditer(out))
        if ends:
            at = ends[-1].start()
            out = out[:at] + pixel + out[at:]
        else:
            out += pixel
    return Tracked(out, tuple(index))
