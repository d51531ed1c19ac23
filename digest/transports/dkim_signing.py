"""DKIM signatures (RFC 6376) for the SMTP transport, with dkimpy.

Each recipient's message differs in its body (the unsubscribe and preferences links, the
name), so the body hash (`bh=`) differs too and cannot be shared across an issue: every
message is signed whole, once, after its bytes are final (`benchmarks/bench_smtp.py` measures
the cost). The signed headers include both List-Unsubscribe and List-Unsubscribe-Post, which
RFC 8058 requires to be covered and dkimpy leaves out by default; a header listed but absent
(Reply-To when none is set) is signed as absent, so it cannot be added on the way.
"""

from __future__ import annotations

import dkim

from digest.config import Settings
from digest.transports import TransportError

SIGNED_HEADERS = (
    b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
    b"content-type", b"list-unsubscribe", b"list-unsubscribe-post", b"list-id",
    b"list-archive",
)  # fmt: skip


class DkimSigner:
    def __init__(self, *, selector: str, domain: str, private_key: bytes) -> None:
        self.selector = selector.encode()
        self.domain = domain.encode()
        self.private_key = private_key
        try:  # a bad key fails at start-up, not on every message
            dkim.sign(b"From: a@b.c\r\n\r\n", self.selector, self.domain, private_key)
        except dkim.DKIMException as exc:
            raise TransportError(f"DKIM private key unusable: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer `[dkim]` configures, or None when DKIM is off."""
        config = settings.dkim
        if config.selector is None or config.domain is None:
            return None
        if settings.dkim_private_key is None:
            raise TransportError(
                "dkim.selector and dkim.domain are set but DIGEST_DKIM_PRIVATE_KEY is not"
            )
        key = settings.dkim_private_key.get_secret_value().encode()
        return cls(selector=config.selector, domain=config.domain, private_key=key)

    def sign(self, message: bytes) -> bytes:
        """`message` with its DKIM-Signature header first (ValueError if it cannot be signed)."""
        try:
            signature = dkim.sign(
                message,
                self.selector,
                self.domain,
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=list(SIGNED_HEADERS),
            )
        except dkim.DKIMException as exc:
            raise ValueError(f"DKIM signing failed: {exc}") from exc
        return signature + message
