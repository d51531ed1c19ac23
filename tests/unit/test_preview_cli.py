"""`digest preview SLUG --out DIR`: the next issue as HTML, text and a complete .eml."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.app import App, fixed_clock
from digest.cli import app as cli_app
from digest.config import load_settings
from digest.rendering.personalize import leaks
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.articles import add_turkey_week

SLUG = "turkey-unpacked"


@pytest.fixture
def config(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file over the test database, with two weeks' worth of Turkey articles."""
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    monkeypatch.delenv("DIGEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("DIGEST_CONFIG", raising=False)
    path = tmp_path / "digest.toml"
    path.write_text(
        f"""
[database]
url = "{engine.url.render_as_string(hide_password=False)}"
[site]
name = "Test Post"
base_url = "https://news.example.com"
[sender]
from_email = "news@example.com"
from_name = "Test Post"
postal_address = "1 Test Street, Testville"
[[newsletters]]
slug = "{SLUG}"
title = "Turkey Unpacked"
schedule = "0 8 * * *"
timezone = "Europe/Istanbul"
min_articles = 2
topic = {{ tags = ["Turkey"] }}
""",
        encoding="utf-8",
    )
    app = App(settings=load_settings(path), clock=fixed_clock(DEFAULT_NOW), _engine=engine)
    add_turkey_week(app, 3)
    return path


def _preview(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli_app, ["--config", str(config), "--now", DEFAULT_NOW.isoformat(), "preview", *args]
    )
    return result.exit_code, result.output


def test_preview_writes_html_text_and_a_complete_message(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview"

    code, output = _preview(config, SLUG, "--out", str(out))

    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == [f"{SLUG}.eml", f"{SLUG}.html", f"{SLUG}.txt"]
    html = (out / f"{SLUG}.html").read_text(encoding="utf-8")
    text = (out / f"{SLUG}.txt").read_text(encoding="utf-8")
    raw = (out / f"{SLUG}.eml").read_bytes()
    assert html.lstrip().lower().startswith(("<!doctype html", "<html"))
    assert "Turkey Unpacked" in html and "Turkey story 1" in html
    assert "Turkey story 1" in text and "<td" not in text  # text that reads as text
    assert leaks(html) == [] and leaks(text) == []
    assert leaks(raw.decode("utf-8", "replace")) == []

    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        assert message[header], f"{header} missing"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # On the wire, not only once parsed: a plain <https://…> that clients can act on.
    assert b"\r\nList-Unsubscribe: <https://news.example.com/u/" in raw
    assert b"=?utf-8?" not in raw.split(b"\r\n\r\n", 1)[0]
    assert str(message["Subject"]).startswith("Turkey Unpacked: Turkey story 1")
    assert "reader@example.com" in str(message["To"])
    assert isinstance(parts[1], EmailMessage) and isinstance(parts[0], EmailMessage)
    # The files are exactly the message's parts (the message has CRLF line ends on the wire).
    assert parts[1].get_content().replace("\r\n", "\n").rstrip() == html.rstrip()
    assert parts[0].get_content().replace("\r\n", "\n").strip() == text.strip()
    for part_text in (parts[0].get_content(), parts[1].get_content()):
        assert leaks(part_text) == []


def test_preview_twice_gives_the_same_issue_content(config: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"

    assert _preview(config, SLUG, "--out", str(first))[0] == 0
    assert _preview(config, SLUG, "--out", str(second))[0] == 0

    for suffix in (".html", ".txt"):
        assert (first / f"{SLUG}{suffix}").read_bytes() == (second / f"{SLUG}{suffix}").read_bytes()


def test_preview_of_an_unknown_newsletter_names_the_known_ones(
    config: Path, tmp_path: Path
) -> None:
    code, output = _preview(config, "no-such-letter", "--out", str(tmp_path / "x"))

    assert code == 1
    assert "no-such-letter" in output and SLUG in output
    assert not (tmp_path / "x").exists()
