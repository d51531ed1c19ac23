"""`digest send` and `digest deliveries` through the CLI, with the outbox transport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.cli import app as cli_app
from digest.config import load_settings
from digest.issues import assemble, periods
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.sending import add_audience, make_issue, outbox_messages

SLUG = "turkey-unpacked"


@pytest.fixture
def config(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    monkeypatch.delenv("DIGEST_DATABASE_URL", raising=False)
    monkeypatch.delenv("DIGEST_CONFIG", raising=False)
    path = tmp_path / "digest.toml"
    path.write_text(
        f"""
[database]
url = "{engine.url.render_as_string(hide_password=False)}"
[site]
base_url = "https://news.example.com"
[sender]
from_email = "news@example.com"
[delivery]
outbox_dir = "{tmp_path / "outbox"}"
batch_size = 4
[[newsletters]]
slug = "{SLUG}"
title = "Turkey Unpacked"
schedule = "0 8 * * *"
timezone = "Europe/Istanbul"
""",
        encoding="utf-8",
    )
    settings = load_settings(path)
    period = periods.current_period(settings, settings.newsletter(SLUG), DEFAULT_NOW)
    make_issue(engine, SLUG, period=periods.period_key(period))
    add_audience(engine, SLUG, 10)
    return path


def _run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli_app, ["--config", str(config), "--now", DEFAULT_NOW.isoformat(), *args]
    )
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, " ".join(result.output.split())


def test_send_then_nothing_left_then_counts(config: Path, tmp_path: Path) -> None:
    code, dry = _run(config, "send", SLUG, "--dry-run")
    assert code == 0 and "would send to 10 recipients via outbox" in dry
    assert not (tmp_path / "outbox").exists()

    code, output = _run(config, "send", SLUG, "--limit", "6")
    assert code == 0, output
    assert "accepted 6" in output and "pending 4" in output and "issue sending" in output
    code, output = _run(config, "send", SLUG)
    assert code == 0 and "accepted 10" in output and "issue sent" in output
    assert len(outbox_messages(tmp_path / "outbox")) == 10

    code, output = _run(config, "send", SLUG)
    assert code == 0 and "nothing left to send" in output

    code, output = _run(config, "deliveries", SLUG, "--json")
    document = json.loads(output)
    assert document["status"] == "sent" and document["total"] == 10
    assert document["counts"]["accepted"] == 10 and document["counts"]["failed"] == 0
    code, table = _run(config, "deliveries", SLUG)
    assert code == 0 and "accepted 10" in table and "total 10" in table


def test_send_to_one_address_is_a_test_copy(config: Path, tmp_path: Path) -> None:
    code, output = _run(config, "send", SLUG, "--to", "editor@example.com")
    assert code == 0 and "test copy" in output and "editor@example.com" in output
    (message,) = outbox_messages(tmp_path / "outbox" / SLUG / "tests")
    assert str(message["Subject"]).startswith("[TEST] ")
    code, output = _run(config, "deliveries", SLUG, "--json")
    assert json.loads(output)["total"] == 0


def test_errors_are_clear(config: Path) -> None:
    code, output = _run(config, "send", "no-such-letter")
    assert code == 1 and "no-such-letter" in output and SLUG in output
    code, output = _run(config, "send", SLUG, "--to", "not an address")
    assert code == 1 and "not a usable address" in output


def test_deliveries_tells_how_many_the_freeze_has_not_reached(config: Path, engine: Engine) -> None:
    """As when a send was stopped after the first page of a large audience."""
    from digest.app import App, fixed_clock
    from digest.sending import freeze

    settings = load_settings(config)
    app = App(settings=settings, clock=fixed_clock(DEFAULT_NOW), _engine=engine)
    with app.session() as session:
        latest = assemble.latest_issue(session, SLUG)
        assert latest is not None and latest.id is not None
        issue_id = latest.id
    with app.session() as session:
        assert freeze.start(session, issue_id=issue_id, from_statuses=["approved"], now=app.now())
    with app.session() as session:
        freeze.freeze_next_page(
            session, issue_id=issue_id, newsletter=SLUG, batch_size=4, now=app.now(), page_size=4
        )
    code, output = _run(config, "deliveries", SLUG, "--json")
    document = json.loads(output)
    assert code == 0 and document["counts"]["pending"] == 4 and document["not_yet_frozen"] == 6
    code, table = _run(config, "deliveries", SLUG)
    assert "and 6 more still to be frozen" in table

    code, _ = _run(config, "send", SLUG)
    assert code == 0 and len(outbox_messages(Path(settings.delivery.outbox_dir))) == 10
    assert json.loads(_run(config, "deliveries", SLUG, "--json")[1])["not_yet_frozen"] == 0
