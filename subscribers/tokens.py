"""Signed, URL-safe tokens for unsubscribe, preferences and confirmation links.

A token is `base64url(payload ‖ HMAC-SHA256(subkey, payload))`; the payload is
`v1|purpose|issued_at|newsletter|subscriber_id` (UTF-8, issued_at in Unix seconds). The MAC
covers subscriber, newsletter and purpose, so a link cannot be edited to reach someone else,
another newsletter or another action. Verification tries the current key, then retired ones
(rotation), comparing in constant time.

Making a token is one HMAC and one base64 call, and it runs once per recipient per send: the
HMAC's padded-key states and the payload prefix shared by a whole send are cached, so each call
only hashes its own payload (`benchmarks/bench_tokens.py`). Each purpose signs with its own
key, derived from the configured secret with HKDF (`derive_key(secret, "token:unsubscribe")`):
a key that leaks or is misused for one purpose says nothing about the others, and the secret
itself never signs anything. Links signed before per-purpose keys (one key for all purposes,
`HMAC(secret, "digest subscriber token")`) still verify until they expire.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = "v1"
_MAC_SIZE = 32
_MAX_TOKEN_LENGTH = 600  # a real token is ~100 characters; refuse giant inputs before decoding
_CLOCK_SKEW = timedelta(minutes=5)  # tolerated gap between the signing and verifying clocks


class TokenError(ValueError):
    """The token is malformed, forged, for something else, or expired."""


class Purpose(StrEnum):
    UNSUBSCRIBE = "unsubscribe"
    PREFERENCES = "preferences"
    CONFIRM = "confirm"


# Unsubscribe links sit in old emails that people open months later: they must keep working.
# A confirmation link is only meant for the next few days.
DEFAULT_MAX_AGE: dict[str, timedelta] = {
    Purpose.UNSUBSCRIBE: timedelta(days=400),
    Purpose.PREFERENCES: timedelta(days=400),
    Purpose.CONFIRM: timedelta(days=7),
}


def default_max_age(purpose: str) -> timedelta:
    return DEFAULT_MAX_AGE.get(purpose, timedelta(days=7))


@dataclass(frozen=True)
class TokenClaims:
    subscriber_id: int
    newsletter: str
    purpose: str
    issued_at: datetime


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


@lru_cache(maxsize=64)
def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from the configured secret (HKDF-SHA256)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"digest {purpose}".encode())
    return hkdf.derive(secret)


# Until every link signed before per-purpose keys has expired (400 days after 2026-12-01).
_LEGACY = "legacy"


@lru_cache(maxsize=64)
def _pads(key: bytes, purpose: str) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hash states for the purpose's key (RFC 2104), ready to
    copy."""
    if purpose == _LEGACY:
        subkey = hmac.digest(key, b"digest subscriber token", "sha256")
    else:
        subkey = derive_key(key, f"token:{purpose}")
    subkey = subkey.ljust(64, b"\0")
    return hashlib.sha256(subkey.translate(_IPAD)), hashlib.sha256(subkey.translate(_OPAD))


def _mac(key: bytes, data: bytes, purpose: str) -> bytes:
    inner, outer = _pads(key, purpose)
    inner = inner.copy()
    inner.update(data)
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


@lru_cache(maxsize=256)
def _prefix(purpose: str, issued_at: datetime, newsletter: str) -> bytes:
    """The part of the payload shared by every recipient of one send."""
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must be timezone-aware")
    if "|" in purpose or "|" in newsletter:
        raise ValueError("purpose and newsletter must not contain '|'")
    return f"{_VERSION}|{purpose}|{int(issued_at.timestamp())}|{newsletter}|".encode()


def make_token(
    key: bytes, *, subscriber_id: int, newsletter: str, purpose: str, issued_at: datetime
) -> str:
    """A URL-safe token naming this subscriber, newsletter and purpose, signed with `key`."""
    data = _prefix(purpose, issued_at, newsletter) + b"%d" % subscriber_id
    return _encode(data + _mac(key, data, purpose))


def signer(
    key: bytes, *, newsletter: str, purpose: str, issued_at: datetime
) -> Callable[[int], str]:
    """`make_token` for the many subscribers of one send: subscriber_id → token.

    The payload prefix and the HMAC key states are looked up once, not per call (a send signs
    two links per recipient, a million recipients in a large send).
    """
    prefix = _prefix(purpose, issued_at, newsletter)
    inner_pad, outer_pad = _pads(key, purpose)

    def sign(subscriber_id: int) -> str:
        data = prefix + b"%d" % subscriber_id
        inner = inner_pad.copy()
        inner.update(data)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return _encode(data + outer.digest())

    return sign


def _encode(token: bytes) -> str:
    return binascii.b2a_base64(token, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def verify_token(
    token: str,
    keys: Sequence[bytes],
    *,
    purpose: str,
    now: datetime,
    max_age: timedelta | None,
) -> TokenClaims:
    """The claims of a token signed by one of `keys` for `purpose`, or TokenError.

    `max_age=None` accepts any age (see DEFAULT_MAX_AGE for what the web pages use).
    """
    data, mac = _split(token)
    if not keys:
        raise TokenError("no verification key configured")
    # Check every key, and the legacy derivation, so the time taken does not say which matched.
    valid = False
    for key in keys:
        for derivation in (str(purpose), _LEGACY):
            valid |= hmac.compare_digest(mac, _mac(key, data, derivation))
    if not valid:
        raise TokenError("signature does not match")
    claims = _parse(data)
    if claims.purpose != purpose:
        raise TokenError(f"token is for {claims.purpose!r}, not {str(purpose)!r}")
    if claims.issued_at > now + _CLOCK_SKEW:
        raise TokenError("token is issued in the future")
    if max_age is not None and now - claims.issued_at > max_age:
        raise TokenError("token has expired")
    return claims


def _split(token: str) -> tuple[bytes, bytes]:
    # urlsafe_b64decode skips characters outside the alphabet: check the alphabet first.
    if len(token) > _MAX_TOKEN_LENGTH or not _TOKEN_CHARS.fullmatch(token):
        raise TokenError("malformed token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc
    # Only the canonical spelling: unused low bits in the last character must not make a
    # second string that passes for the same token.
    if len(raw) <= _MAC_SIZE or base64.urlsafe_b64encode(raw).rstrip(b"=") != token.encode():
        raise TokenError("malformed token")
    return raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]


def _parse(data: bytes) -> TokenClaims:
    """Parse a payload whose signature already verified (so it was written by make_token)."""
    try:
        version, purpose, issued, newsletter, subscriber = data.decode().split("|")
        if version != _VERSION:
            raise TokenError(f"unsupported token version {version!r}")
        return TokenClaims(
            subscriber_id=int(subscriber),
            newsletter=newsletter,
            purpose=purpose,
            issued_at=datetime.fromtimestamp(int(issued), UTC),
        )
    except (UnicodeDecodeError, ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, TokenError):
            raise
        raise TokenError("malformed token") from exc
