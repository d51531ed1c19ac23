"""The SendGrid request body: valid against the official schema, fast JSON equal to the dict."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest.config import Settings
from digest.mail.message import RecipientValues
from digest.rendering import personalize
from digest.transports import OutgoingMessage, OutgoingRecipient
from digest.transports.sendgrid_payload import SharedPart, payload, payload_json
from tests.conftest import make_settings
from tests.support.sendgrid_server import SendGridServer

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HTML = (
    '<p>Hi %%NAME%%,</p><a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a> '
    '<a href="%%PREFERENCES_URL%%">P</a>'
)
TEXT = "Hi %%NAME%%,\nUnsubscribe: %%UNSUBSCRIBE_URL%%\n"
NAMES = [
    "Ayşe Demir",
    None,
    'Quote " and \\ backslash',
    "Doe, John; Jr",
    "<b>Bold</b> & co",
    "Emoji 🗞️ نور",
    "Line\nbreak",
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, "sqlite://", {"sender": {"reply_to": "desk@example.com"}})


def _batch(settings: Settings) -> tuple[SharedPart, list[OutgoingRecipient]]:
    newsletter = settings.newsletter("turkey-unpacked")
    message = OutgoingMessage(7, newsletter, "Hello %%NAME%%", HTML, TEXT, {"X-Digest-Issue": "7"})
    values = RecipientValues(settings, newsletter, b"key", NOW, name_fallback="there")
    recipients = [
        OutgoingRecipient(100 + i, i + 1, f"Reader{i}@Example.com", name, values(i + 1, name))
        for i, name in enumerate(NAMES)
    ]
    return SharedPart(settings, message), recipients


def test_fast_json_is_exactly_the_dict_payload(settings: Settings) -> None:
    shared, recipients = _batch(settings)
    assert json.loads(payload_json(shared, recipients)) == payload(shared, recipients)


def test_payload_follows_the_schema_and_the_documented_rules(settings: Settings) -> None:
    shared, recipients = _batch(settings)
    body = json.loads(payload_json(shared, recipients))
    assert SendGridServer(validate="full").violations(body) == []
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["categories"] == ["turkey-unpacked"]
    assert body["custom_args"] == {"digest_issue_id": "7", "digest_newsletter": "turkey-unpacked"}
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["headers"]["X-Digest-Issue"] == "7"
    assert body["tracking_settings"] == {  # tracking off by default, whatever the account says
        "subscription_tracking": {"enable": False},
        "click_tracking": {"enable": False, "enable_text": False},
        "open_tracking": {"enable": False},
    }
    assert body["reply_to"] == {"email": "desk@example.com"}
    first, _, quoted, listed, bold = body["personalizations"][:5]
    assert first["to"] == [{"email": "Reader0@Example.com", "name": "Ayşe Demir"}]
    assert first["custom_args"] == {"digest_delivery_id": "100"}
    unsubscribe = first["substitutions"][personalize.UNSUBSCRIBE_URL]
    assert first["headers"] == {
        "List-Unsubscribe": f"<{unsubscribe}>, <mailto:unsubscribe@example.com?subject=unsubscribe>"
    }
    assert listed["to"][0]["name"] == "Doe  John  Jr"  # SendGrid refuses ',' and ';'
    assert quoted["substitutions"]["%%NAME%%"] == 'Quote " and \\ backslash'
    # One substitution value serves subject and text; the HTML part gets its escaped twin.
    assert bold["substitutions"]["%%NAME%%"] == "<b>Bold</b> & co"
    assert bold["substitutions"]["%%NAME_HTML%%"] == "&lt;b&gt;Bold&lt;/b&gt; &amp; co"
    html = body["content"][1]["value"]
    assert "%%NAME_HTML%%" in html and "%%NAME%%" not in html
    assert "%%NAME%%" in body["content"][0]["value"]


def test_only_tokens_used_by_the_content_are_substituted(settings: Settings) -> None:
    newsletter = settings.newsletter("turkey-unpacked")
    message = OutgoingMessage(1, newsletter, "Plain", "<a href='%%UNSUBSCRIBE_URL%%'>x</a>", "x")
    values = RecipientValues(settings, newsletter, b"key", NOW, name_fallback="there")
    recipient = OutgoingRecipient(None, 5, "a@example.com", None, values(5, None))
    (item,) = payload(SharedPart(settings, message), [recipient])["personalizations"]
    assert set(item["substitutions"]) == {personalize.UNSUBSCRIBE_URL}
    assert "custom_args" not in item  # a test send has no delivery
    assert json.loads(payload_json(SharedPart(settings, message), [recipient]))[
        "personalizations"
    ] == [item]


def test_every_sendgrid_request_carries_list_archive_and_none_without_an_archive(
    settings: Settings,
) -> None:
    shared, recipients = _batch(settings)
    body = json.loads(payload_json(shared, recipients))
    assert body["headers"]["List-Archive"] == "<https://news.example.com/archive/turkey-unpacked>"
    assert SendGridServer(validate="full").violations(body) == []
    newsletter = settings.newsletter("turkey-unpacked").model_copy(update={"archive": False})
    message = OutgoingMessage(7, newsletter, "Hello", HTML, TEXT, {})
    quiet = json.loads(payload_json(SharedPart(settings, message), recipients[:1]))
    assert "List-Archive" not in quiet.get("headers", {})


def test_track_clicks_and_opens_map_to_sendgrids_own_tracking(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    newsletter = settings.newsletter("turkey-unpacked")
    tracked = newsletter.model_copy(update={"track_clicks": True, "track_opens": True})
    settings = settings.model_copy(update={"newsletters": [tracked]})
    shared, recipients = _batch(settings)
    body = json.loads(payload_json(shared, recipients))
    assert SendGridServer(validate="full").violations(body) == []
    assert body["tracking_settings"] == {
        "subscription_tracking": {"enable": False},
        "click_tracking": {"enable": True, "enable_text": False},  # the text part keeps its URLs
        "open_tracking": {"enable": True},
    }
