"""Per-recipient values and the MIME message: headers, parts, escaping, no header injection."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from digest.config import Settings
from digest.mail.message import (
    build_mime,
    clean_name,
    list_headers,
    list_id,
    message_id,
    recipient_values,
)
from digest.rendering import personalize
from digest.rendering.render import Renderer
from subscribers.tokens import Purpose, verify_token
from tests.conftest import TEST_SECRET, make_settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = TEST_SECRET.encode()
HTML = (
    '<p>Hi %%NAME%%,</p><a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a> '
    '<a href="%%PREFERENCES_URL%%">Prefs</a>'
)
TEXT = "Hi %%NAME%%,\nUnsubscribe: %%UNSUBSCRIBE_URL%%\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, "sqlite://", {"sender": {"reply_to": "desk@example.com"}})


def _build(settings: Settings, **overrides: Any) -> email.message.EmailMessage:
    values = recipient_values(
        settings, "turkey-unpacked", 42, "Ayşe Demir", KEY, NOW, name_fallback="there"
    )
    arguments: dict[str, Any] = {
        "settings": settings,
        "newsletter": settings.newsletter("turkey-unpacked"),
        "subject": "Turkey this week, %%NAME%%",
        "html": HTML,
        "text": TEXT,
        "to_email": "ayse@example.com",
        "to_name": "Ayşe Demir",
        "values": values,
        "headers": {"X-Digest-Issue": "7", "Message-ID": "<fixed@example.com>"},
    }
    arguments.update(overrides)
    return build_mime(**arguments)


def test_recipient_values_sign_links_for_this_subscriber(settings: Settings) -> None:
    fallback = Renderer().name_fallback(settings.newsletter("turkey-unpacked"))
    values = recipient_values(
        settings, "turkey-unpacked", 42, None, KEY, NOW, name_fallback=fallback
    )
    unsubscribe = values[personalize.UNSUBSCRIBE_URL]
    preferences = values[personalize.PREFERENCES_URL]
    assert unsubscribe.startswith("https://news.example.com/u/")
    assert preferences.startswith("https://news.example.com/preferences/")
    keys = settings.verification_keys()
    for url, purpose in ((unsubscribe, Purpose.UNSUBSCRIBE), (preferences, Purpose.PREFERENCES)):
        claims = verify_token(url.rsplit("/", 1)[1], keys, purpose=purpose, now=NOW, max_age=None)
        assert (claims.subscriber_id, claims.newsletter) == (42, "turkey-unpacked")
    assert values[personalize.NAME] == "there"  # the English fallback for an unknown name


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Ayşe Demir", "Ayşe Demir"),
        ("  Ayşe \t Demir ", "Ayşe Demir"),
        ("Eve\r\nBcc: victim@example.com", "Eve Bcc: victim@example.com"),
        ("%%UNSUBSCRIBE_URL%%", "%UNSUBSCRIBE_URL%"),
        (None, ""),
    ],
)
def test_names_lose_line_breaks_and_token_syntax(raw: str | None, clean: str) -> None:
    assert clean_name(raw) == clean


def test_mime_structure_and_headers(settings: Settings) -> None:
    raw = _build(settings).as_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # SMTP line endings
    # On the wire as a plain <https://…> list, not RFC 2047-encoded by line folding.
    assert b"\r\nList-Unsubscribe: <https://news.example.com/u/" in raw
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in message.iter_parts())
    assert message["From"] == "Test Post <news@example.com>"
    assert message["To"] == "Ayşe Demir <ayse@example.com>"
    assert message["Reply-To"] == "desk@example.com"
    assert message["Subject"] == "Turkey this week, Ayşe Demir"
    assert message["Message-ID"] == "<fixed@example.com>"
    assert message["X-Digest-Issue"] == "7"
    assert message["Date"] is not None
    assert message["List-Id"] == '"Turkey Unpacked" <turkey-unpacked.news.example.com>'
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = str(message["List-Unsubscribe"])
    assert unsubscribe.startswith("<https://news.example.com/u/")
    assert unsubscribe.endswith(">, <mailto:unsubscribe@example.com?subject=unsubscribe>")
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    url = unsubscribe[1 : unsubscribe.index(">")]
    assert f'href="{url}"' in html and url in text
    assert personalize.leaks(html) == [] and personalize.leaks(text) == []


def test_a_hostile_name_cannot_inject_headers_or_markup(settings: Settings) -> None:
    name = 'Eve <b>"x"</b>\r\nBcc: victim@example.com'
    values = recipient_values(settings, "turkey-unpacked", 9, name, KEY, NOW, name_fallback="there")
    raw = _build(settings, values=values, to_name=name, subject="Hello\r\nBcc: x@example.com")
    parsed = email.message_from_bytes(raw.as_bytes(), policy=email.policy.default)
    assert parsed["Bcc"] is None
    assert "\n" not in str(parsed["Subject"]) and "\n" not in str(parsed["To"])
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<b>" not in html and "&lt;b&gt;" in html
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert 'Hi Eve <b>"x"</b> Bcc: victim@example.com,' in text
    with pytest.raises(ValueError, match="header name"):
        _build(settings, headers={"Bad Header": "x"})


def test_plain_http_site_has_no_one_click_header(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://", {"site": {"base_url": "http://127.0.0.1:8000"}})
    assert list_headers(settings, "http://127.0.0.1:8000/u/t") == {
        "List-Unsubscribe": "<http://127.0.0.1:8000/u/t>, "
        "<mailto:unsubscribe@example.com?subject=unsubscribe>"
    }
    assert list_id(settings, settings.newsletters[0]) == (
        '"Turkey Unpacked" <turkey-unpacked.127.0.0.1>'
    )


def test_message_ids_are_random_and_name_no_row(settings: Settings) -> None:
    ids = {message_id(settings) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"<[A-Za-z0-9_-]{24}@example\.com>", i) for i in ids)
    # The old keyword arguments are accepted and no longer make the id guessable.
    assert "3.9" not in message_id(settings, issue_id=3, delivery_id=9)


def test_an_unusable_address_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(ValueError, match="not a usable e-mail address"):
        _build(settings, to_email="no at sign")


def test_a_unicode_domain_goes_into_the_header_in_idna_ascii(settings: Settings) -> None:
    message = _build(settings, to_email="ayse@exämple.com")
    assert message["To"].addresses[0].addr_spec == "ayse@xn--exmple-cua.com"
    lines = message.as_bytes().split(b"\r\n")
    to_header = next(line for line in lines if line.startswith(b"To:"))
    assert to_header.endswith(b"<ayse@xn--exmple-cua.com>")  # the name may be encoded, never it
