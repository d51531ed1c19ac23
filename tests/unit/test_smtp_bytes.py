"""SMTP message bytes built once per issue are the bytes the email package builds per recipient.

The reference is `recipient_mime(...).as_bytes()`, the path the SMTP transport took for every
recipient before `SharedMessage`. The multipart boundary is random per serialisation, so it is
the one thing set aside before comparing; Date and Message-ID are fixed per delivery already.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from digest.config import Settings, settings_from_mapping
from digest.mail.message import RecipientValues
from digest.rendering.render import Renderer
from digest.transports import OutgoingMessage, OutgoingRecipient, recipient_mime
from digest.transports.smtp_message import SharedMessage, data_payload
from tests.support.sample_issue import sample_contents

NOW = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
BOUNDARY = re.compile(rb"(?m)={15}\d+==|^Message-ID: .*$")


def _settings(base_url: str) -> Settings:
    return settings_from_mapping(
        {
            "site": {"name": "The Meridian Post", "base_url": base_url},
            "sender": {"from_email": "news@meridian.example", "from_name": "The Meridian Post"},
            "newsletters": [{"slug": "turkey-unpacked", "title": "Turkey Unpacked"}],
        },
        env={"DIGEST_SECRET_KEY": "k" * 40},
    )


def _message(settings: Settings, subject: str, html: str, text: str) -> OutgoingMessage:
    newsletter = settings.newsletters[0]
    headers = {"X-Digest-Issue": "7"}
    return OutgoingMessage(7, newsletter, subject, html, text, headers, NOW)


def _recipient(settings: Settings, n: int, email: str, name: str | None) -> OutgoingRecipient:
    values = RecipientValues(settings, settings.newsletters[0], b"key", NOW, name_fallback="there")
    return OutgoingRecipient(1000 + n, n, email, name, values(n, name))


def _same(shared: SharedMessage, recipient: OutgoingRecipient) -> bytes:
    reference = recipient_mime(shared.settings, shared.message, recipient).as_bytes()
    ours = shared.bytes_for(recipient)
    assert BOUNDARY.sub(b"B", ours) == BOUNDARY.sub(b"B", reference)
    return ours


PEOPLE = [
    ("ann@example.com", "Ann"),
    ("reader.two+news@example.co.uk", "Reader Two"),
    ("o.brien@example.com", "Seán O'Brien"),  # non-ASCII: an encoded word in To
    ("ayse@example.com", "Ayşe Demir"),
    ("quoted@example.com", "Smith, J."),  # specials: a quoted display name
    ("noname@example.com", None),
    ("tricky@example.com", "=?utf-8?q?x?="),
    ("angle@example.com", "<b>Bold</b> & co"),  # escaped in HTML, raw in text
]


@pytest.mark.parametrize("base_url", ["https://news.example.com", "http://127.0.0.1:8000"])
def test_a_rendered_issue_is_byte_identical_for_every_kind_of_recipient(base_url: str) -> None:
    settings = _settings(base_url)
    rendered = Renderer().render(sample_contents(12))
    shared = SharedMessage(settings, _message(settings, rendered.subject, rendered.html,
                                              rendered.text))  # fmt: skip
    for n, (email, name) in enumerate(PEOPLE):
        _same(shared, _recipient(settings, n, email, name))
    plain = _recipient(settings, 1, "ann@example.com", "Ann")
    assert shared._fast(plain) is not None  # the common case does not fall back
    assert b"List-Unsubscribe-Post" in shared.bytes_for(plain) or base_url.startswith("http:")


def test_a_personal_subject_an_ascii_issue_and_a_line_the_values_make_too_long() -> None:
    settings = _settings("https://news.example.com")
    long_line = "x" * 960 + " %%UNSUBSCRIBE_URL%%"  # 980 bytes as a template, >998 once filled
    text = f"Hi %%NAME%%,\n{long_line}\nBye\n"
    html = "<p>Hi %%NAME%%</p><a href='%%PREFERENCES_URL%%'>prefs</a>\n"
    shared = SharedMessage(settings, _message(settings, "For %%NAME%%", html, text))
    for n, (email, name) in enumerate(PEOPLE):
        _same(shared, _recipient(settings, n, email, name))
    assert shared._fast(_recipient(settings, 1, "ann@example.com", "Ann")) is None  # QP now
    short = SharedMessage(settings, _message(settings, "For %%NAME%%", html, "Hi %%NAME%%\n"))
    ours = _same(short, _recipient(settings, 1, "ann@example.com", "Ann"))
    assert b"Subject: For Ann\r\n" in ours and b"7bit" in ours
    assert short._fast(_recipient(settings, 1, "ann@example.com", "Ann")) is not None
    for n, (email, name) in enumerate(PEOPLE):  # a non-ASCII name turns 7bit into 8bit
        _same(short, _recipient(settings, n, email, name))


def test_an_unusable_address_still_raises() -> None:
    settings = _settings("https://news.example.com")
    shared = SharedMessage(settings, _message(settings, "S", "<p>%%NAME%%</p>", "%%NAME%%\n"))
    with pytest.raises(ValueError):
        shared.bytes_for(_recipient(settings, 1, "no-at-sign", "Ann"))


def test_the_data_payload_doubles_leading_dots_as_smtplib_does() -> None:
    import smtplib

    settings = _settings("https://news.example.com")
    text = ".starts with a dot\n%%NAME%% at a line start\n..two\nmid . dot\n"
    shared = SharedMessage(settings, _message(settings, "S", "<p>.%%NAME%%</p>\n", text))
    for n, name in enumerate(["Ann", ".Dot", None]):
        message = shared.bytes_for(_recipient(settings, n, "ann@example.com", name))
        quoted = smtplib._quote_periods(message)  # type: ignore[attr-defined]
        assert data_payload(message) == quoted + b".\r\n"
        assert b"\r\n..starts" in quoted and b"\r\n...two" in quoted
    assert data_payload(b".x\r\n") == b"..x\r\n.\r\n" and data_payload(b"x") == b"x\r\n.\r\n"
