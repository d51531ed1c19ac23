"""Per-recipient tokens: placed by the templates, filled in at send time.

Rendering and CSS inlining happen once per issue, so anything that differs per recipient is a
token that survives both Jinja (it is not `{{ … }}`) and premailer (it is URL-safe inside
`href`). `fill` swaps them in one pass; values are escaped for HTML where needed.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

UNSUBSCRIBE_URL = "%%UNSUBSCRIBE_URL%%"
PREFERENCES_URL = "%%PREFERENCES_URL%%"
NAME = "%%NAME%%"
TOKENS = (UNSUBSCRIBE_URL, PREFERENCES_URL, NAME)

_TOKEN_RE = re.compile("|".join(re.escape(t) for t in TOKENS))
# Anything that looks like one of our tokens or leftover template syntax.
LEAK_RE = re.compile(r"%%[A-Z_]+%%|\{\{|\}\}|\{%|%\}")


def fill(template: str, values: Mapping[str, str], *, html_escape: bool) -> str:
    """Replace every token by its value (HTML-escaped when filling the HTML part)."""
    prepared = {k: (html.escape(v, quote=True) if html_escape else v) for k, v in values.items()}
    return _TOKEN_RE.sub(lambda m: prepared.get(m.group(0), ""), template)


def leaks(text: str) -> list[str]:
    """Tokens or template syntax left in a delivered message (should always be empty)."""
    return LEAK_RE.findall(text)
