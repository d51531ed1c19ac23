"""Signed links: only the exact subscriber, newsletter and purpose, only while fresh."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from subscribers.tokens import (
    DEFAULT_MAX_AGE,
    Purpose,
    TokenClaims,
    TokenError,
    make_token,
    signer,
    verify_token,
)

KEY = b"current-key-0123456789"
OLD_KEY = b"retired-key-9876543210"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def token(key: bytes = KEY, **overrides: object) -> str:
    fields: dict[str, object] = {
        "subscriber_id": 42,
        "newsletter": "turkey-unpacked",
        "purpose": Purpose.UNSUBSCRIBE,
        "issued_at": NOW,
    }
    fields.update(overrides)
    return make_token(key, **fields)  # type: ignore[arg-type]


def verify(
    value: str,
    *,
    keys: tuple[bytes, ...] = (KEY,),
    purpose: str = Purpose.UNSUBSCRIBE,
    now: datetime = NOW,
    max_age: timedelta | None = DAY,
) -> TokenClaims:
    return verify_token(value, keys, purpose=purpose, now=now, max_age=max_age)


def test_round_trip_gives_back_the_claims() -> None:
    claims = verify(token())
    assert claims == TokenClaims(42, "turkey-unpacked", "unsubscribe", NOW)


def test_token_is_url_safe_and_short() -> None:
    value = token(subscriber_id=10**12, newsletter="a-very-long-newsletter-slug")
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(value) < 160


def test_same_input_same_token_and_different_subscribers_differ() -> None:
    assert token() == token()
    assert token(subscriber_id=1) != token(subscriber_id=2)


@pytest.mark.parametrize("position", [0, 10, 40, -5, -1])
def test_a_changed_character_is_refused(position: int) -> None:
    value = token()
    chars = list(value)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(TokenError):
        verify("".join(chars))


def test_payload_edited_to_another_subscriber_is_refused() -> None:
    raw = base64.urlsafe_b64decode(token(subscriber_id=42) + "==")
    payload, mac = raw[:-32], raw[-32:]
    forged_payload = payload.replace(b"|42", b"|43")
    assert forged_payload != payload
    forged = base64.urlsafe_b64encode(forged_payload + mac).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature"):
        verify(forged)


def test_another_newsletter_or_purpose_is_refused() -> None:
    # Each purpose has its own key: another purpose's token does not even verify.
    with pytest.raises(TokenError, match="signature"):
        verify(token(purpose=Purpose.PREFERENCES))
    with pytest.raises(TokenError, match="signature"):
        verify(token(), purpose=Purpose.CONFIRM)
    claims = verify(token(newsletter="climate-weekly"))
    assert claims.newsletter == "climate-weekly"  # the newsletter is whatever was signed


def test_unknown_key_is_refused() -> None:
    with pytest.raises(TokenError, match="signature"):
        verify(token(key=b"somebody-elses-key"))


def test_retired_key_still_verifies_after_rotation() -> None:
    old = token(key=OLD_KEY)
    assert verify(old, keys=(KEY, OLD_KEY)).subscriber_id == 42
    with pytest.raises(TokenError):
        verify(old, keys=(KEY,))  # once retired keys are dropped, their links stop working


def test_expired_and_future_tokens_are_refused() -> None:
    value = token(issued_at=NOW - timedelta(days=2))
    with pytest.raises(TokenError, match="expired"):
        verify(value, max_age=DAY)
    assert verify(value, max_age=None).subscriber_id == 42
    with pytest.raises(TokenError, match="future"):
        verify(token(issued_at=NOW + timedelta(hours=1)))
    assert verify(token(issued_at=NOW + timedelta(minutes=2))).subscriber_id == 42  # clock skew


def test_default_ages_keep_old_unsubscribe_links_working() -> None:
    assert DEFAULT_MAX_AGE[Purpose.UNSUBSCRIBE] >= timedelta(days=365)
    assert DEFAULT_MAX_AGE[Purpose.PREFERENCES] >= timedelta(days=365)
    assert DEFAULT_MAX_AGE[Purpose.CONFIRM] <= timedelta(days=7)


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "x",
        "not a token",
        "a" * 700,
        "abc.def",
        "====",
        "%%UNSUBSCRIBE_URL%%",
        "é" * 50,
        base64.urlsafe_b64encode(b"short").decode(),
    ],
)
def test_garbage_is_refused_with_token_error(garbage: str) -> None:
    with pytest.raises(TokenError):
        verify(garbage)


def test_characters_outside_the_alphabet_are_not_skipped() -> None:
    value = token()
    with pytest.raises(TokenError, match="malformed"):
        verify(value[:20] + "." + value[20:])


def test_no_keys_refuses() -> None:
    with pytest.raises(TokenError):
        verify(token(), keys=())


def test_naive_issue_time_and_separator_in_slug_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="aware"):
        token(issued_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match=r"'\|'"):
        token(newsletter="a|b")


def test_time_zone_of_issue_time_does_not_matter() -> None:
    from zoneinfo import ZoneInfo

    local = NOW.astimezone(ZoneInfo("Europe/Istanbul"))
    assert token(issued_at=local) == token(issued_at=NOW)


def test_cached_pad_mac_equals_the_standard_library_hmac() -> None:
    """tokens._mac reuses HMAC's padded-key states for speed; it must be exactly HMAC-SHA256."""
    import hashlib
    import hmac as std_hmac

    from subscribers.tokens import _mac, derive_key

    for key in (b"k", b"x" * 64, b"y" * 200, "ключ-😀".encode()):
        legacy = std_hmac.digest(key, b"digest subscriber token", "sha256")
        unsubscribe = derive_key(key, "token:unsubscribe")
        for data in (b"", b"v1|unsubscribe|1764000000|turkey-unpacked|42", bytes(range(256))):
            expected = std_hmac.new(unsubscribe, data, hashlib.sha256).digest()
            assert _mac(key, data, "unsubscribe") == expected
            assert _mac(key, data, "legacy") == std_hmac.new(legacy, data, hashlib.sha256).digest()


def test_each_purpose_signs_with_its_own_derived_key() -> None:
    from subscribers.tokens import derive_key

    keys = {p: derive_key(KEY, f"token:{p}") for p in Purpose}
    assert len(set(keys.values())) == len(Purpose)
    assert KEY not in keys.values() and all(len(k) == 32 for k in keys.values())
    assert derive_key(KEY, "token:unsubscribe") != derive_key(OLD_KEY, "token:unsubscribe")


def test_links_signed_before_per_purpose_keys_still_verify() -> None:
    """An unsubscribe link in an email sent before the change: one key for every purpose."""
    import hashlib
    import hmac as std_hmac

    from subscribers.tokens import _encode

    data = f"v1|unsubscribe|{int(NOW.timestamp())}|turkey-unpacked|42".encode()
    legacy = std_hmac.digest(KEY, b"digest subscriber token", "sha256")
    old_link = _encode(data + std_hmac.new(legacy, data, hashlib.sha256).digest())
    assert verify(old_link).subscriber_id == 42
    with pytest.raises(TokenError):
        verify(old_link, keys=(OLD_KEY,))


def test_a_sends_signer_makes_the_same_tokens_as_make_token() -> None:
    for key in (KEY, b"y" * 200):
        for purpose in (Purpose.UNSUBSCRIBE, Purpose.PREFERENCES):
            sign = signer(key, newsletter="turkey-unpacked", purpose=purpose, issued_at=NOW)
            for subscriber_id in (0, 1, 42, 999_999_937, 2**40):
                made = sign(subscriber_id)
                assert made == token(key, subscriber_id=subscriber_id, purpose=purpose)
                assert verify(made, keys=(key,), purpose=purpose).subscriber_id == subscriber_id
