"""VERP envelope senders, signed: `bounce+<kind><id>.<mac>@<bounces.domain>`.

Each message goes out with its own return path (RFC 5321 MAIL FROM), so a bounce says by
the address it is sent to which message failed, whatever the bounce's text. `kind` is `d` (a
delivery row) or `s` (a subscriber, for messages without a delivery). The MAC is the first 10
bytes of HMAC-SHA256 over `<kind><id>`, lowercase base32 (16 characters), with a key derived
from the secret for this purpose only (`derive_key(secret, "verp")`): a bounce sent by anyone
else to a made-up or edited address is not believed. MTAs may change the case of a local part
(RFC 5321 §2.4), so addresses are matched lower-cased; the MAC is compared in constant time.
Retired secrets still verify (bounces arrive days later).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from subscribers.tokens import derive_key

PREFIX = "bounce"
PURPOSE = "verp"
_MAC_BYTES = 10
_PATTERN = re.compile(r"bounce\+([ds])([1-9][0-9]{0,17})\.([a-z2-7]{16})@(.+)")


@dataclass(frozen=True)
class VerpTarget:
    """Whom a VERP address names: a delivery (`d`) or a subscriber (`s`)."""

    kind: str
    id: int

    @property
    def delivery_id(self) -> int | None:
        return self.id if self.kind == "d" else None

    @property
    def subscriber_id(self) -> int | None:
        return self.id if self.kind == "s" else None


def _mac(key: bytes, kind: str, ident: int) -> str:
    digest = hmac.new(key, f"{kind}{ident}".encode(), hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.b32encode(digest).decode().lower()


class VerpSigner:
    """Makes return paths for one domain with one key (the key derived once)."""

    def __init__(self, secret: bytes, domain: str) -> None:
        self.domain = domain.lower()
        self._key = derive_key(secret, PURPOSE)

    def address(self, *, delivery_id: int | None, subscriber_id: int | None) -> str | None:
        """The return path of a message, or None when it names no one (an editor's test)."""
        if delivery_id:
            kind, ident = "d", delivery_id
        elif subscriber_id:
            kind, ident = "s", subscriber_id
        else:
            return None
        return f"{PREFIX}+{kind}{ident}.{_mac(self._key, kind, ident)}@{self.domain}"


def decode(address: str, *, secrets: Sequence[bytes], domain: str) -> VerpTarget | None:
    """Whom a VERP address names, if it is ours and its MAC is right; else None."""
    match = _PATTERN.fullmatch(address.strip().strip("<>").lower())
    if match is None or match.group(4) != domain.lower().rstrip("."):
        return None
    kind, ident, mac = match.group(1), int(match.group(2)), match.group(3)
    for secret in secrets:
        expected = _mac(derive_key(secret, PURPOSE), kind, ident)
        if hmac.compare_digest(expected, mac):
            return VerpTarget(kind, ident)
    return None
