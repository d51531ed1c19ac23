"""Every public URL digest writes into an email or a page, and the signature that guards it.

The mail side (per-recipient token values, confirmation mails) and the web routes both take
their paths from here, so a link in an email and the route that answers it cannot drift apart.
Signed links carry a token of `subscribers.tokens` naming subscriber, newsletter and purpose;
`Links.verify` checks one in constant time against the current and retired keys.

Engagement links (`newsletters[].track_clicks`, `track_opens`) name no one: a click link is
`/r/<issue>/<index>.<sig>` (the index of a URL in the issue's stored link table), the open pixel
`/o/<issue>.<sig>.gif`; the signature is an HMAC of issue and index under a key derived for
engagement alone, so a link cannot be edited to point at another entry, and the redirect only
ever goes to a URL stored for that issue.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from digest.config import Settings
from digest.rendering import personalize
from digest.rendering.contents import IssueLinks
from subscribers.tokens import (
    Purpose,
    TokenClaims,
    default_max_age,
    derive_key,
    make_token,
    signer,
    verify_token,
)

# Route templates (FastAPI syntax): `digest.web` mounts its pages at exactly these.
UNSUBSCRIBE_ROUTE = "/u/{token}"
PREFERENCES_ROUTE = "/preferences/{token}"
# A personal email's footer link to stop following one of its topics (`Tokens.unfollow_link`).
UNFOLLOW_ROUTE = PREFERENCES_ROUTE + personalize.UNFOLLOW_PATH.format(topic="{topic}")
CONFIRM_ROUTE = "/confirm/{token}"
SUBSCRIBE_ROUTE = "/subscribe/{slug}"
STUDIO_ROUTE = "/studio"
HOME_ROUTE = "/"
# The public archive of sent issues (not signed: nothing personal is on these pages).
ARCHIVE_ROUTE = "/archive/{slug}"
ARCHIVE_ISSUE_ROUTE = "/archive/{slug}/{issue_id}"
ARCHIVE_FEED_ROUTE = "/archive/{slug}/feed.xml"
# Bundled demo pictures (config/sample/media/), served by `digest serve`.
MEDIA_ROUTE = "/media/{name}"
# Engagement (opt-in): a click through the issue's link table, and the open pixel. Neither
# names a reader.
CLICK_ROUTE = "/r/{issue_id}/{link}"
OPEN_ROUTE = "/o/{pixel}"
_CLICK_LINK = re.compile(r"(\d{1,6})\.([A-Za-z0-9_-]{16})")
_OPEN_PIXEL = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{16})\.gif")
_ENGAGEMENT = "engagement links"

_SIGNED_ROUTES = {
    Purpose.UNSUBSCRIBE: UNSUBSCRIBE_ROUTE,
    Purpose.PREFERENCES: PREFERENCES_ROUTE,
    Purpose.CONFIRM: CONFIRM_ROUTE,
}


def _prefix(route: str) -> str:
    """'/u/{token}' → '/u/': the part before the token."""
    return route.removesuffix("{token}")


@dataclass(frozen=True)
class Links:
    """URLs of one site, signed with `key` (the current secret) as of `now`."""

    base_url: str
    key: bytes
    now: datetime
    verification_keys: Sequence[bytes] = field(default=())

    @classmethod
    def of(cls, settings: Settings, now: datetime) -> Links:
        return cls(
            base_url=settings.site.base_url,
            key=settings.secret_key.get_secret_value().encode(),
            now=now,
            verification_keys=tuple(settings.verification_keys()),
        )

    def absolute(self, path: str) -> str:
        return self.base_url + path

    def signed(self, purpose: Purpose, *, subscriber_id: int, newsletter: str) -> str:
        """The absolute URL of the page for `purpose`, signed for this subscriber."""
        token = make_token(
            self.key,
            subscriber_id=subscriber_id,
            newsletter=newsletter,
            purpose=purpose,
            issued_at=self.now,
        )
        return self.absolute(_prefix(_SIGNED_ROUTES[purpose]) + token)

    def signer(self, purpose: Purpose, *, newsletter: str) -> Callable[[int], str]:
        """`signed` for the many recipients of one send: subscriber id → URL, with the shared
        parts (base, payload prefix, HMAC key states) prepared once."""
        base = self.absolute(_prefix(_SIGNED_ROUTES[purpose]))
        sign = signer(self.key, newsletter=newsletter, purpose=purpose, issued_at=self.now)
        return lambda subscriber_id: base + sign(subscriber_id)

    def unsubscribe(self, subscriber_id: int, newsletter: str) -> str:
        return self.signed(Purpose.UNSUBSCRIBE, subscriber_id=subscriber_id, newsletter=newsletter)

    def preferences(self, subscriber_id: int, newsletter: str) -> str:
        return self.signed(Purpose.PREFERENCES, subscriber_id=subscriber_id, newsletter=newsletter)

    def confirm(self, subscriber_id: int, newsletter: str) -> str:
        return self.signed(Purpose.CONFIRM, subscriber_id=subscriber_id, newsletter=newsletter)

    def subscribe(self, slug: str) -> str:
        return self.absolute(SUBSCRIBE_ROUTE.format(slug=slug))

    def archive(self, slug: str) -> str:
        return archive_url(self.base_url, slug)

    def archive_issue(self, slug: str, issue_id: int) -> str:
        return self.absolute(ARCHIVE_ISSUE_ROUTE.format(slug=slug, issue_id=issue_id))

    def archive_feed(self, slug: str) -> str:
        return self.absolute(ARCHIVE_FEED_ROUTE.format(slug=slug))

    def media(self, name: str) -> str:
        return self.absolute(MEDIA_ROUTE.format(name=name))

    # -- engagement ---------------------------------------------------------------------------

    @cached_property
    def _engagement_keys(self) -> tuple[bytes, ...]:
        keys = [self.key, *(k for k in self.verification_keys if k != self.key)]
        return tuple(derive_key(k, _ENGAGEMENT) for k in keys)

    def _engagement_sig(self, key: bytes, kind: str, issue_id: int, index: int) -> str:
        mac = hmac.new(key, f"{kind}\0{issue_id}\0{index}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:12]).decode()

    def _engagement_ok(self, kind: str, issue_id: int, index: int, sig: str) -> bool:
        return any(
            hmac.compare_digest(self._engagement_sig(key, kind, issue_id, index), sig)
            for key in self._engagement_keys
        )

    def click(self, issue_id: int, index: int) -> str:
        """The redirect for the `index`-th URL of the issue's link table."""
        sig = self._engagement_sig(self._engagement_keys[0], "click", issue_id, index)
        return self.absolute(CLICK_ROUTE.format(issue_id=issue_id, link=f"{index}.{sig}"))

    def open_pixel(self, issue_id: int) -> str:
        sig = self._engagement_sig(self._engagement_keys[0], "open", issue_id, 0)
        return self.absolute(OPEN_ROUTE.format(pixel=f"{issue_id}.{sig}.gif"))

    def verify_click(self, issue_id: int, link: str) -> int | None:
        """The link index `link` signs for this issue, or None (tampered, unknown, malformed)."""
        match = _CLICK_LINK.fullmatch(link)
        if match is None:
            return None
        index = int(match.group(1))
        return index if self._engagement_ok("click", issue_id, index, match.group(2)) else None

    def verify_open(self, pixel: str) -> int | None:
        """The issue id an open pixel's name signs, or None."""
        match = _OPEN_PIXEL.fullmatch(pixel)
        if match is None:
            return None
        issue_id = int(match.group(1))
        return issue_id if self._engagement_ok("open", issue_id, 0, match.group(2)) else None

    def issue_links(self, slug: str, issue_id: int | None, *, archive: bool) -> IssueLinks:
        """The issue's public, not personal, URLs the templates print ("view in browser"…).

        Without an archive (`newsletters[].archive = false`) there is no web page to link to.
        """
        return IssueLinks(
            subscribe_url=self.subscribe(slug),
            archive_url=self.archive(slug) if archive else None,
            web_url=self.archive_issue(slug, issue_id)
            if archive and issue_id is not None
            else None,
            feed_url=self.archive_feed(slug) if archive else None,
        )

    def verify(self, token: str, purpose: Purpose | str) -> TokenClaims:
        """The claims of a token of ours for `purpose` that has not expired; TokenError
        otherwise. Never log the token: it is a credential."""
        return verify_token(
            token,
            self.verification_keys,
            purpose=purpose,
            now=self.now,
            max_age=default_max_age(purpose),
        )


def archive_url(base_url: str, slug: str) -> str:
    """The newsletter's archive page (what `List-Archive` names): needs no key."""
    return base_url + ARCHIVE_ROUTE.format(slug=slug)
