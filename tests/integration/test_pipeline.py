"""The whole path on embedded defaults: ingest → issue → render → outbox, on both databases."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.issues import assemble
from digest.ops.demo import run_demo
from digest.rendering.personalize import leaks
from digest.storage.models import IssueStatus
from subscribers.tokens import Purpose, verify_token

NOW = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def _messages(outbox: Path) -> list[EmailMessage]:
    files = sorted(outbox.rglob("*.eml"))
    return [
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for f in files
    ]


def test_demo_pipeline_end_to_end(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(any_engine, now=NOW)
    report = run_demo(app, tmp_path / "preview")

    assert {s.name for s in report.ingest.sources} == {"world", "climate", "business"}
    assert all(not s.errors for s in report.ingest.sources)
    assert report.subscribers_imported == 25
    outcomes = {o.slug: o for o in report.newsletters}
    turkey = outcomes["turkey-unpacked"]
    assert turkey.status == IssueStatus.SENT
    assert turkey.articles >= 2
    assert (tmp_path / "preview" / "turkey-unpacked.html").is_file()

    messages = _messages(Path(app.settings.delivery.outbox_dir))
    assert turkey.send is not None and turkey.send.accepted > 0
    sent_total = sum(o.send.accepted for o in report.newsletters if o.send)
    assert len(messages) == sent_total

    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in message.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        unsubscribe = str(message["List-Unsubscribe"])
        assert unsubscribe.startswith("<https://news.example.com/u/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url = unsubscribe[1 : unsubscribe.index(">")]
        token = url.rsplit("/", 1)[1]
        claims = verify_token(
            token,
            app.settings.verification_keys(),
            purpose=Purpose.UNSUBSCRIBE,
            now=NOW,
            max_age=None,
        )
        assert claims.newsletter in outcomes
        body_html = message.get_body(("html",))
        body_text = message.get_body(("plain",))
        assert body_html is not None and body_text is not None
        html, text = body_html.get_content(), body_text.get_content()
        assert url in html.replace("&amp;", "&") and url in text
        assert leaks(html) == [] and leaks(text) == []


def test_running_again_sends_nothing_twice(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(any_engine, now=NOW)
    run_demo(app, tmp_path / "preview")
    outbox = Path(app.settings.delivery.outbox_dir)
    first = len(list(outbox.rglob("*.eml")))
    again = run_demo(app, tmp_path / "preview")
    assert len(list(outbox.rglob("*.eml"))) == first
    for outcome in again.newsletters:
        if outcome.send is not None:
            assert outcome.send.already_done
            assert outcome.send.processed == 0  # this run handed nobody to the transport
    turkey = next(o for o in again.newsletters if o.slug == "turkey-unpacked")
    with app.session() as session:
        issues = assemble.issues_of(session, "turkey-unpacked")
    assert [i.id for i in issues if i.status == IssueStatus.SENT] == [turkey.issue_id]


def test_cli_demo_prints_where_to_look(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"sqlite:///{tmp_path / 'demo.db'}")
    from digest.paths import default_config_file

    config = default_config_file()
    # The bundled config names its sample feeds relative to the repository root.
    (tmp_path / "config").symlink_to(config.parent)
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    demo_now = re.search(r"^DEMO_NOW \?= (\S+)$", makefile, re.M)
    assert demo_now, "the Makefile sets DEMO_NOW"
    result = CliRunner().invoke(cli_app, ["--config", str(config), "--now", demo_now[1], "demo"])
    assert result.exit_code == 0, result.output
    assert "Outbox:" in result.output
    assert "climate-weekly: issue 2, 4 articles, sent" in result.output
    assert list((tmp_path / "var" / "outbox" / "climate-weekly").rglob("*.eml"))
    # What the README's studio step then shows: Turkey Unpacked's next issue, a draft with
    # articles and the demo's pictures (served by `digest serve` from /media/).
    draft = re.search(r"turkey-unpacked: issue \d+, (\d+) articles, draft", result.output)
    assert draft and int(draft[1]) >= 3, result.output
    preview = (tmp_path / "var" / "preview" / "turkey-unpacked.html").read_text(encoding="utf-8")
    assert "http://127.0.0.1:8000/media/" in preview
