"""One recipient's message: token values, list headers and the RFC 5322 MIME document.

The issue is rendered and inlined once; what differs per recipient is the value of each token
of `digest.rendering.personalize` (signed unsubscribe and preferences links, the name) and the
headers that carry the same links (RFC 2369 List-Unsubscribe, RFC 8058 one-click). SendGrid gets the
values as substitutions and builds the MIME itself; SMTP and the outbox get `build_mime`.

Header values never come from content with line breaks in them: names and subjects are folded
to one line before they reach a header, so a subscriber called "x\\r\\nBcc: …" stays a name.
"""

from __future__ import annotations

import email.policy
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from digest.config import NewsletterConfig, Settings
from digest.mail.links import Links, archive_url
from digest.rendering import personalize
from subscribers.addresses import ascii_form
from subscribers.tokens import Purpose

if TYPE_CHECKING:
    from digest.storage.models import Issue

ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058 §3.1: exactly this key/value pair
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext: printable ASCII except ':'


def one_line(value: str) -> str:
    """`value` with control characters (CR, LF, tabs…) replaced by spaces, trimmed."""
    return " ".join(_CONTROL.sub(" ", value).split())


def clean_name(name: str | None) -> str:
    """A subscriber's name made safe for headers and substitutions (no line breaks, no tokens)."""
    if not name:
        return ""
    if name.isprintable() and "%%" not in name and "  " not in name and name.strip() == name:
        return name  # the common case, without the regular expression (once per recipient)
    return one_line(name).replace("%%", "%")


def site_host(settings: Settings) -> str:
    return urlsplit(settings.site.base_url).hostname or "localhost"


def list_id(settings: Settings, newsletter: NewsletterConfig) -> str:
    """RFC 2919 List-Id: `"Title" <slug.host>`."""
    title = one_line(newsletter.title).replace("\\", "").replace('"', "")
    return f'"{title}" <{newsletter.slug}.{site_host(settings)}>'


def list_archive(settings: Settings, newsletter: NewsletterConfig) -> str | None:
    """RFC 2369 List-Archive: `<https://…/archive/SLUG>`, None without a public archive."""
    if not newsletter.archive:
        return None
    return f"<{archive_url(settings.site.base_url, newsletter.slug)}>"


def list_unsubscribe(settings: Settings, unsubscribe_url: str) -> str:
    """RFC 2369 List-Unsubscribe: the signed https link, then the mailto when configured."""
    value = f"<{unsubscribe_url}>"
    mailto = settings.sender.unsubscribe_mailto
    if mailto:
        value += f", <mailto:{mailto}?subject=unsubscribe>"
    return value


def list_headers(settings: Settings, unsubscribe_url: str) -> dict[str, str]:
    """List-Unsubscribe, plus List-Unsubscribe-Post when the link is https (RFC 8058 needs it)."""
    headers = {"List-Unsubscribe": list_unsubscribe(settings, unsubscribe_url)}
    if unsubscribe_url.startswith("https://"):
        headers["List-Unsubscribe-Post"] = ONE_CLICK
    return headers


def message_id(
    settings: Settings, *, issue_id: int | None = None, delivery_id: int | None = None
) -> str:
    """A fresh random Message-ID at the sender's domain: `<random@domain>`.

    Nothing in it comes from row ids (which would tell readers how many subscribers and issues
    there are). A delivery's is drawn once, when the audience is frozen, and stored on the row
    (`Delivery.message_id`), so a resend of the same delivery carries the same Message-ID.
    `issue_id` and `delivery_id` are accepted for older callers and ignored.
    """
    return f"<{secrets.token_urlsafe(18)}@{message_domain(settings)}>"


def message_domain(settings: Settings) -> str:
    return settings.sender.from_email.rpartition("@")[2] or site_host(settings)


def tokens_of(settings: Settings, issue: Issue) -> personalize.Tokens:
    """The token names `issue` was rendered with (see `digest.rendering.personalize`).

    Derived from the issue and the secret key; after a key rotation the retired keys are tried
    too, whichever names the stored HTML, text or subject holds. An issue rendered before
    per-issue names existed holds the legacy names instead.
    """
    parts = (issue.html, issue.text, issue.subject)
    keys = [settings.secret_key, *settings.old_secret_keys]
    candidates = [
        personalize.for_issue(
            key.get_secret_value().encode(),
            newsletter=issue.newsletter,
            period=issue.period,
            issue_id=issue.id,
        )
        for key in keys
    ]
    chosen = candidates[0]
    for tokens in candidates:
        if tokens.used_in(*parts):
            chosen = tokens
            break
    else:
        if personalize.LEGACY.used_in(*parts) and not _has_suffixed_token(parts):
            return personalize.LEGACY
    return _with_unfollow(settings, issue.newsletter, chosen, parts)


def _with_unfollow(
    settings: Settings, slug: str, tokens: personalize.Tokens, parts: tuple[str, ...]
) -> personalize.Tokens:
    """A personal issue rendered before `Tokens.unfollow_link` has a token per merged topic's
    unfollow link: its names include those it holds (a variant's, `SendRun.message_for`)."""
    newsletter = next((n for n in settings.newsletters if n.slug == slug), None)
    if newsletter is None or not newsletter.personal:
        return tokens
    count = len(settings.merged_topics(newsletter))
    return tokens.with_unfollow(
        i for i in range(count) if any(tokens.unfollow(i) in (part or "") for part in parts)
    )


def _has_suffixed_token(parts: tuple[str, ...]) -> bool:
    pattern = re.compile(r"%%(?:UNSUBSCRIBE_URL|PREFERENCES_URL|NAME)_[0-9a-f]{16}%%")
    return any(pattern.search(part) for part in parts)


class RecipientValues:
    """Token values for many recipients of one newsletter, with the shared parts computed once.

    `name_fallback` is what `%%NAME%%` becomes for a subscriber without a name ("there" in
    English): the caller takes it from the App's renderer (`Renderer.name_fallback`).
    """

    def __init__(
        self,
        settings: Settings,
        newsletter: NewsletterConfig,
        key: bytes,
        now: datetime,
        *,
        name_fallback: str,
        tokens: personalize.Tokens = personalize.LEGACY,
        unfollow: Sequence[tuple[str, str]] = (),
    ) -> None:
        # What rebuilds it in another process (`__reduce__`: the signers are closures).
        self._args = (settings, newsletter, key, now, name_fallback, tokens, tuple(unfollow))
        links = Links(settings.site.base_url, key, now)
        self.tokens = tokens
        self._unsubscribe = links.signer(Purpose.UNSUBSCRIBE, newsletter=newsletter.slug)
        self._preferences = links.signer(Purpose.PREFERENCES, newsletter=newsletter.slug)
        self._fallback = clean_name(name_fallback)
        # Personal issues rendered before `Tokens.unfollow_link`: (token, topic slug) of each
        # followed topic's "unfollow" link, the topic's own signed unsubscribe link; by default
        # every merged topic's token the names hold (the issue's own page). Today's renders
        # have none: their unfollow links extend the preferences link.
        if not unfollow and tokens.extra and newsletter.personal:
            merged = settings.merged_topics(newsletter)
            unfollow = [
                (tokens.unfollow(i), t.slug)
                for i, t in enumerate(merged)
                if tokens.unfollow(i) in tokens.extra
            ]
        self._unfollow = [
            (token, links.signer(Purpose.UNSUBSCRIBE, newsletter=topic))
            for token, topic in unfollow
        ]

    def __reduce__(self) -> tuple[Callable[..., RecipientValues], tuple[object, ...]]:
        return _rebuild_values, self._args

    def __call__(self, subscriber_id: int, name: str | None) -> dict[str, str]:
        tokens = self.tokens
        values = {
            tokens.unsubscribe_url: self._unsubscribe(subscriber_id),
            tokens.preferences_url: self._preferences(subscriber_id),
            tokens.name: clean_name(name) or self._fallback,
        }
        for token, sign in self._unfollow:
            values[token] = sign(subscriber_id)
        return values


def _rebuild_values(
    settings: Settings,
    newsletter: NewsletterConfig,
    key: bytes,
    now: datetime,
    name_fallback: str,
    tokens: personalize.Tokens,
    unfollow: Sequence[tuple[str, str]],
) -> RecipientValues:
    return RecipientValues(
        settings, newsletter, key, now, name_fallback=name_fallback, tokens=tokens,
        unfollow=unfollow,
    )  # fmt: skip


def recipient_values(
    settings: Settings,
    newsletter_slug: str,
    subscriber_id: int,
    name: str | None,
    key: bytes,
    now: datetime,
    *,
    name_fallback: str,
    tokens: personalize.Tokens = personalize.LEGACY,
) -> dict[str, str]:
    """The value of every token for one subscriber (links signed with `key`, issued `now`)."""
    newsletter = settings.newsletter(newsletter_slug)
    values = RecipientValues(
        settings, newsletter, key, now, name_fallback=name_fallback, tokens=tokens
    )
    return values(subscriber_id, name)


def _address(email_address: str, name: str | None) -> Address:
    """The header address, its domain in IDNA ASCII (a 7-bit header cannot carry `exämple`)."""
    try:
        wire = ascii_form(email_address.strip())
        return Address(display_name=one_line(name or ""), addr_spec=wire)
    except (ValueError, IndexError) as exc:  # the parser raises either on a malformed address
        raise ValueError(f"not a usable e-mail address: {email_address!r} ({exc})") from exc


def build_mime(
    *,
    settings: Settings,
    newsletter: NewsletterConfig,
    subject: str,
    html: str,
    text: str,
    to_email: str,
    to_name: str | None,
    values: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
    tokens: personalize.Tokens = personalize.LEGACY,
) -> EmailMessage:
    """The complete message for one recipient, tokens filled in.

    multipart/alternative with text/plain first and text/html last (clients show the last part
    they understand), UTF-8, lines ended by CRLF (`email.policy.SMTP`). `headers` adds or
    overrides headers such as Date, Message-ID, X-Digest-Issue; values are folded to one line.
    `values` is keyed by the issue's token names (`tokens`); only those are filled.
    Raises ValueError for an address the e-mail parser cannot use.
    """
    sender = settings.sender
    # Folding at 78 columns makes Python RFC 2047-encode a long URL ("=?utf-8?q?=3Chttps…"),
    # which no client reads as List-Unsubscribe: fold only beyond RFC 5322's hard limit.
    message = EmailMessage(policy=email.policy.SMTP.clone(max_line_length=998))
    message["From"] = _address(sender.from_email, sender.from_name)
    message["To"] = _address(to_email, to_name)
    if sender.reply_to:
        message["Reply-To"] = _address(sender.reply_to, None)
    message["Subject"] = one_line(personalize.fill(subject, values, html_escape=False))
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id(settings)
    message["List-Id"] = list_id(settings, newsletter)
    archive = list_archive(settings, newsletter)
    if archive:
        message["List-Archive"] = archive
    unsubscribe = values.get(tokens.unsubscribe_url)
    extra = dict(list_headers(settings, unsubscribe) if unsubscribe else {})
    extra.update(headers or {})
    for name, value in extra.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"not a valid header name: {name!r}")
        del message[name]
        message[name] = one_line(value)
    message.set_content(personalize.fill(text, values, html_escape=False), charset="utf-8")
    message.add_alternative(
        personalize.fill(html, values, html_escape=True), subtype="html", charset="utf-8"
    )
    return message
