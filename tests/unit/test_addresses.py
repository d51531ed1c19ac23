"""Addresses are stored in one canonical, lower-cased form, and bad ones are refused with a
reason (including what our transports cannot carry)."""

from __future__ import annotations

import string

import pytest
from email_validator import validate_email

from subscribers.addresses import InvalidAddress, ascii_form, mask_email, normalize_email
from subscribers.suppression import lookup_address
from tests.support.seeds import draw_seed


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ayse@example.com", "ayse@example.com"),
        ("  Ayse.Yilmaz@Example.COM \n", "ayse.yilmaz@example.com"),
        ("first+tag@Sub.Example.org", "first+tag@sub.example.org"),
        ("Carol@example.com", "carol@example.com"),
        ("CAROL@EXAMPLE.COM", "carol@example.com"),
        ("nOC@x.Co", "noc@x.co"),  # the fast path once kept 'nOC'; email-validator lowers roles
        ("Ayse@Exämple.com", "ayse@exämple.com"),
        ("USER@XN--EXMPLE-CUA.COM", "user@exämple.com"),
        ("a!#$%&'*+/=?^_`{|}~-b@example.com", "a!#$%&'*+/=?^_`{|}~-b@example.com"),
    ],
)
def test_normalizes(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("no-at-sign", "@"),
        ("two@@example.com", "@"),
        ("a b@example.com", "SPACE"),
        ("a@localhost", "period"),
        ("user@example.test", "special-use"),
        ("Name <a@example.com>", "display name"),
        ("a..b@example.com", "period"),
        (".a@example.com", "period"),
        ("a@-example.com", ""),
        ("x" * 250 + "@example.com", "too long"),
        ("a@" + "b" * 250 + ".com", ""),
        ("a@example.com\r\nBcc: victim@example.com", ""),
    ],
)
def test_refuses_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidAddress) as caught:
        normalize_email(raw)
    assert reason.lower() in str(caught.value).lower()
    assert str(caught.value)


def test_spellings_of_one_mailbox_are_one_address() -> None:
    spellings = [
        "carol@example.com",
        "Carol@example.com",
        "CAROL@Example.COM",
        " cArOl@EXAMPLE.com",
    ]
    assert {normalize_email(s) for s in spellings} == {"carol@example.com"}
    assert {lookup_address(s) for s in spellings} == {"carol@example.com"}


@pytest.mark.parametrize("raw", ["Ayşe@exämple.com", "ayşe@example.com", "用户@例子.广告"])
def test_refuses_what_no_transport_can_carry_naming_the_characters(raw: str) -> None:
    """A non-ASCII part before the @-sign needs SMTPUTF8, which none of our transports speak."""
    with pytest.raises(InvalidAddress) as caught:
        normalize_email(raw)
    message = str(caught.value)
    assert "before the @-sign" in message and "non-ASCII" in message
    local = raw.rpartition("@")[0]
    assert any(c in message for c in local if not c.isascii())


def test_lookups_still_find_an_address_input_would_refuse() -> None:
    """Rows stored before the rule can still be found (to unsubscribe or suppress them)."""
    assert normalize_email("Ayşe@Exämple.com", smtputf8=True) == "ayşe@exämple.com"
    assert lookup_address("Ayşe@Exämple.com") == "ayşe@exämple.com"
    assert lookup_address("  Not An Address ") == "not an address"


def test_ascii_form_puts_the_domain_on_the_wire() -> None:
    assert ascii_form("ayse@exämple.com") == "ayse@xn--exmple-cua.com"
    assert ascii_form("carol@example.com") == "carol@example.com"
    with pytest.raises(InvalidAddress):
        ascii_form("ayşe@example.com")


def test_fast_path_agrees_with_email_validator() -> None:
    """The shortcut for plain addresses must give exactly email-validator's verdict, and its
    form lower-cased (email-validator lower-cases only the domain and role names like NOC)."""
    seed = draw_seed("address fast path")
    rng = seed.rng()
    alphabet = string.ascii_letters + string.digits + ".-_+!#'=~"
    domains = [
        "Example.com",
        "MAIL.example.org",
        "x.Co",
        "a-b.example.net",
        "bad_domain.com",
        "-bad.com",
        "ok.museum",
        "123.com",
        "example.123",
        "xn--exmple-cua.com",
    ]
    for _ in range(3000):
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        raw = f"{local}@{rng.choice(domains)}"
        try:
            expected: str | None = validate_email(
                raw, check_deliverability=False
            ).normalized.lower()
        except Exception:
            expected = None
        try:
            got: str | None = normalize_email(raw)
        except InvalidAddress:
            got = None
        assert got == expected, f"{raw} ({seed})"


def test_mask_shows_enough_to_recognise() -> None:
    assert mask_email("ayse.yilmaz@example.com") == "ay…@example.com"
    assert mask_email("a@example.com") == "a…@example.com"
