"""Every public URL digest writes into an email or a page, and the signature that guards it.

The mail side (per-recipient token values, confirmation mails) and the web routes both take
their paths from here, so a link in an email and the route that answers it cannot drift apart.
Signed links carry a token of `subscribers.tokens` naming subscriber, newsletter and purpose;
`Links.verify` checks one in constant time against the current and retired keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from digest.config import Settings
from subscribers.tokens import (
    Purpose,
    TokenClaims,
    default_max_age,
    make_token,
    signer,
    verify_token,
)

# Route templates (FastAPI syntax): `digest.web` mounts its pages at exactly these.
UNSUBSCRIBE_ROUTE = "/u/{token}"
PREFERENCES_ROUTE = "/preferences/{token}"
CONFIRM_ROUTE = "/confirm/{token}"
SUBSCRIBE_ROUTE = "/subscribe/{slug}"
STUDIO_ROUTE = "/studio"

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
