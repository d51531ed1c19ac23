"""Per-recipient tokens: placed by the templates, filled in at send time.

Rendering and CSS inlining happen once per issue, so anything that differs per recipient is a
token that survives both Jinja (it is not `{{ … }}`) and premailer (it is URL-safe inside
`href`). `fill` swaps them in one pass; values are escaped for HTML where needed.

Each issue has its own token names (`Tokens`): `%%UNSUBSCRIBE_URL_<suffix>%%` and so on, the
suffix an HMAC of the issue's identity under the secret key (`for_issue`). Content and editors
(titles, summaries, URLs, subject, intro, names) cannot know it, so nothing they write ever
becomes a recipient's link: a `%%UNSUBSCRIBE_URL%%` in a feed item is sent as the literal text.
Everything that fills tokens takes the names from the issue (`OutgoingMessage.tokens`, the keys
of `RecipientValues`), never from a constant. `LEGACY` are the names of issues rendered before
per-issue names existed; `digest.mail.message.tokens_of` falls back to them only for such an issue.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

# After a reader's preferences link, the footer's "unfollow this topic" link of a personal email
# (`Tokens.unfollow_link`; the web's UNFOLLOW_ROUTE).
UNFOLLOW_PATH = "/unfollow/{topic}"
_SUFFIX_CHARS = 16  # hex digits: 64 bits an attacker would have to guess for one issue


@dataclass(frozen=True)
class Tokens:
    """One issue's token names."""

    unsubscribe_url: str
    preferences_url: str
    name: str
    # Personal newsletters: one "unfollow this topic" link per followed topic (`unfollow`).
    extra: tuple[str, ...] = ()

    @classmethod
    def with_suffix(cls, suffix: str) -> Tokens:
        if not re.fullmatch(r"[0-9a-f]{8,64}", suffix):
            raise ValueError(f"not a token suffix: {suffix!r}")
        return cls(
            f"%%UNSUBSCRIBE_URL_{suffix}%%", f"%%PREFERENCES_URL_{suffix}%%", f"%%NAME_{suffix}%%"
        )

    @property
    def all(self) -> tuple[str, ...]:
        return (self.unsubscribe_url, self.preferences_url, self.name, *self.extra)

    @property
    def suffix(self) -> str:
        return self.name.removeprefix("%%NAME").strip("%_")

    def unfollow_link(self, topic: str) -> str:
        """A personal email's footer link to stop following `topic`: the reader's preferences
        link (which can change every subscription already) plus the topic. So a reader's links
        cost two signatures and two substitutions however many topics they follow."""
        return self.preferences_url + UNFOLLOW_PATH.format(topic=topic)

    def unfollow(self, index: int) -> str:
        """The token of the signed "unfollow" link of the `index`-th topic a personal
        newsletter merges (its position in `Settings.merged_topics`): what variants rendered
        before `unfollow_link` hold; still filled for them (a send resumed after an upgrade)."""
        suffix = self.suffix
        return f"%%UNFOLLOW_{index}_{suffix}%%" if suffix else f"%%UNFOLLOW_{index}%%"

    def with_unfollow(self, indices: Iterable[int]) -> Tokens:
        """These names plus the unfollow tokens of the given topics."""
        return Tokens(
            self.unsubscribe_url,
            self.preferences_url,
            self.name,
            tuple(self.unfollow(i) for i in indices),
        )

    def used_in(self, *parts: str) -> bool:
        """Whether any of these names appears in any of `parts`."""
        return any(token in part for part in parts for token in self.all)


LEGACY = Tokens("%%UNSUBSCRIBE_URL%%", "%%PREFERENCES_URL%%", "%%NAME%%")
# The legacy names, for callers that predate per-issue names (tests, stand-in values).
UNSUBSCRIBE_URL = LEGACY.unsubscribe_url
PREFERENCES_URL = LEGACY.preferences_url
NAME = LEGACY.name
TOKENS = LEGACY.all

# Anything that looks like a token: what lint reports in content and the renderer accounts for.
PLACEHOLDER_RE = re.compile(r"%%[A-Za-z0-9_]+%%")
# Anything that looks like a token or leftover template syntax.
LEAK_RE = re.compile(r"%%[A-Za-z0-9_]+%%|\{\{|\}\}|\{%|%\}")


def for_issue(key: bytes, *, newsletter: str, period: str, issue_id: int | None) -> Tokens:
    """The token names of one issue: stable for the issue, unguessable without `key`."""
    message = f"digest token names\0{newsletter}\0{period}\0{issue_id}".encode()
    return Tokens.with_suffix(hmac.new(key, message, hashlib.sha256).hexdigest()[:_SUFFIX_CHARS])


def random_tokens() -> Tokens:
    """Fresh names, for contents rendered outside an issue (nothing will fill them)."""
    return Tokens.with_suffix(secrets.token_hex(_SUFFIX_CHARS // 2))


def placeholders(parts: Iterable[str | None]) -> set[str]:
    """Every token-looking string in `parts`."""
    found: set[str] = set()
    for part in parts:
        if part and "%%" in part:
            found.update(PLACEHOLDER_RE.findall(part))
    return found


@lru_cache(maxsize=64)
def _token_re(tokens: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(t) for t in tokens) or r"(?!x)x")


def fill(template: str, values: Mapping[str, str], *, html_escape: bool) -> str:
    """Replace every token named by `values`' keys by its value (HTML-escaped for the HTML part).

    Only the keys of `values` are tokens: the recipient's values carry the issue's own names.
    """
    prepared = {k: (html.escape(v, quote=True) if html_escape else v) for k, v in values.items()}
    return _token_re(tuple(prepared)).sub(lambda m: prepared[m.group(0)], template)


def leaks(text: str) -> list[str]:
    """Tokens or template syntax left in a delivered message (should always be empty)."""
    return LEAK_RE.findall(text)
