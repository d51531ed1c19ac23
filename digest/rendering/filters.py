"""The Jinja filters the email templates use: one-line text, wrapped text for the plain part,
http(s)-only URLs, line breaks as `<br>`, and labels with named values."""

from __future__ import annotations

import re
import textwrap
from typing import Any

from markupsafe import Markup, escape

TEXT_WIDTH = 72
_WS = re.compile(r"\s+")


def one_line(value: str) -> str:
    """Collapse all whitespace, CR and LF included: safe for a header such as Subject."""
    return _WS.sub(" ", value).strip()


def wrap(value: str, width: int = TEXT_WIDTH, indent: str = "") -> str:
    """Wrap a paragraph for the text part; never breaks URLs or tokens."""
    return textwrap.fill(
        one_line(value),
        width=width,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def http_url(value: str | None) -> str:
    """The URL when it is absolute http(s), else "" (no `javascript:` or relative links)."""
    url = (value or "").strip()
    return url if re.match(r"^https?://[^\s/]+", url, re.IGNORECASE) else ""


def nl2br(value: str) -> Markup:
    """Escape, then keep line breaks (postal addresses are often written on several lines)."""
    lines = [escape(line.strip()) for line in value.strip().splitlines() if line.strip()]
    return Markup("<br>").join(lines)


def fmt(label: str, **values: Any) -> str:
    """Fill `{name}` placeholders of a label; the result is escaped like any other value."""
    return label.format_map(_Default(values))


class _Default(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
