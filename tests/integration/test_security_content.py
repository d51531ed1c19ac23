"""Hostile content and faults (issue #12): each case asserts the refusal and that no state changed.

- content and editors cannot write a per-recipient token: a `%%UNSUBSCRIBE_URL%%` in a title,
  summary, link or image URL, or in the editor's subject and intro, reaches every reader as the
  literal text (outbox files and SendGrid request bodies), never as that reader's link;
- the renderer refuses placeholders the templates write; lint reports content that looks like one;
- Message-IDs are random, stored on the delivery at the freeze and reused when it is resent;
- a 100k-deep JSON body is a 400 (push API, SendGrid webhook); a deeply nested TOML file is the
  usual configuration error;
- an outbox that cannot be written fails the batch with one line naming the path, leaving no
  temporary file;
- no token in uvicorn's access log.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from digest.app import App
from digest.config import ConfigError, load_settings
from digest.issues import editorial, timeline
from digest.ops.logs import RedactTokens, redact, redact_access_log
from digest.rendering import personalize
from digest.rendering.render import Renderer, RenderError
from digest.sending.send import send_issue
from digest.storage.models import Article, Delivery, Issue
from digest.web.server import create_app
from tests.support.sample_issue import sample_contents
from tests.support.sendgrid_server import SendGridServer
from tests.support.sending import add_audience, make_issue, outbox_messages

SLUG = "turkey-unpacked"
API_TOKEN = "push-token-0123456789"
SENDGRID_KEY = "SG.test-key"
PLACEHOLDERS = ("%%UNSUBSCRIBE_URL%%", "%%PREFERENCES_URL%%", "%%NAME%%")
SIGNED = re.compile(r"/(?:u|preferences)/[A-Za-z0-9_.-]{20,}")


def _hostile_articles() -> list[dict[str, Any]]:
    """One article per placeholder, carrying it in the title, summary, link and image URL."""
    return [
        {
            "title": f"Ankara story {n} {token} in the title",
            "url": f"https://evil.example/{n}?next={token}",
            "summary": f"<p>Summary {n} says {token} here.</p>",
            "published_at": "2026-11-24T09:00:00+03:00",
            "tags": ["Turkey"],
            "image": f"https://evil.example/{n}.png?u={token}",
        }
        for n, token in enumerate(PLACEHOLDERS, start=1)
    ]


def _built_issue(app: App) -> Issue:
    """Push the hostile articles, build the issue, let the editor write placeholders, approve."""
    client = TestClient(create_app(app))
    response = client.post(
        "/api/articles",
        json=_hostile_articles(),
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    assert response.status_code == 200, response.text
    with app.session() as session:  # the push API classifies; make sure all three are in
        stored = session.exec(select(Article)).all()
        assert len(stored) == 3
    issue = timeline.next_issue(app, SLUG)
    assert issue.id is not None
    editorial.set_subject(app, issue.id, "Subject %%NAME%% %%UNSUBSCRIBE_URL%%")
    issue = editorial.set_intro(app, issue.id, "Intro %%PREFERENCES_URL%% and %%NAME%%.")
    editorial.approve(app, issue.id)
    return issue


def _app(make_app: Callable[..., App], engine: Engine, **overrides: Any) -> App:
    env = {"DIGEST_API_TOKEN": API_TOKEN, "SENDGRID_API_KEY": SENDGRID_KEY}
    topics = {"tags": ["Turkey"]}
    newsletters = [{"slug": SLUG, "title": "Turkey Unpacked", "topic": topics, "window": "7d"}]
    return make_app(engine, env=env, newsletters=newsletters, **overrides)


def _assert_literal_only(text: str, where: str) -> None:
    """The hostile strings are there as text; no signed link sits where content was."""
    for token in PLACEHOLDERS:
        assert token in text, f"{where}: {token} not kept as text"
    for line in text.splitlines():
        if "evil.example" in line or "story" in line or "Intro" in line or "Subject" in line:
            assert not SIGNED.search(line), f"{where}: a recipient's link in content: {line}"
    assert not re.search(r"%%[A-Z_]+_[0-9a-f]{16}%%", text), f"{where}: an unfilled token"


def test_placeholders_in_content_reach_readers_as_text_outbox(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 3)
    issue = _built_issue(app)
    assert any(f["code"] == "content-placeholder" for f in issue.lint)  # lint told the editor

    report = send_issue(app, issue.id or 0, force=True)

    assert report.accepted == 3
    messages = outbox_messages(Path(app.settings.delivery.outbox_dir))
    assert len(messages) == 3
    for message in messages:
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        subject = str(message["Subject"])
        assert "%%NAME%%" in subject and "%%UNSUBSCRIBE_URL%%" in subject
        _assert_literal_only(html, "html")
        _assert_literal_only(text, "text")
        # The real tokens were filled: the footer links are this reader's.
        assert SIGNED.search(html) and SIGNED.search(text)
        assert str(message["List-Unsubscribe"]).startswith("<https://news.example.com/u/")


@pytest.fixture
def sendgrid() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=SENDGRID_KEY) as running:
        yield running


def test_placeholders_in_content_reach_readers_as_text_sendgrid(
    any_engine: Engine, make_app: Callable[..., App], sendgrid: SendGridServer
) -> None:
    app = _app(
        make_app,
        any_engine,
        delivery={"transport": "sendgrid"},
        sendgrid={"api_url": sendgrid.url},
    )
    add_audience(any_engine, SLUG, 3)
    issue = _built_issue(app)

    report = send_issue(app, issue.id or 0, force=True)

    assert report.accepted == 3
    (request,) = sendgrid.requests
    body = request.body
    assert body is not None
    keys = {key for p in body["personalizations"] for key in p["substitutions"]}
    # Only the issue's own names are substituted: SendGrid never sees a content lookalike.
    assert keys and not keys & set(PLACEHOLDERS)
    assert all(re.fullmatch(r"%%[A-Z_]+_[0-9a-f]{16}(_HTML)?%%", key) for key in keys)
    for part in body["content"]:
        for token in PLACEHOLDERS:
            assert token in part["value"]
    assert "%%NAME%%" in body["subject"]


def test_the_renderer_refuses_a_placeholder_the_templates_write(tmp_path: Path) -> None:
    source = Path(Renderer().email_dir)
    custom = tmp_path / "email" / "legacy"
    custom.mkdir(parents=True)
    (tmp_path / "email" / "digest").symlink_to(source / "digest")
    (tmp_path / "email" / "labels.toml").symlink_to(source / "labels.toml")
    (custom / "digest.txt.j2").write_text(
        "Unsubscribe: {{ unsubscribe_url }}\nOld style: %%UNSUBSCRIBE_URL%%\n", encoding="utf-8"
    )
    contents = sample_contents(3, settings=None, tokens=personalize.random_tokens())
    newsletter = contents.newsletter.model_copy(update={"template": "legacy"})
    contents = type(contents)(**{**contents.__dict__, "newsletter": newsletter})
    with pytest.raises(RenderError, match="unknown placeholders"):
        Renderer(tmp_path).render(contents)


def test_content_placeholders_render_as_text_and_lint_reports_them() -> None:
    tokens = personalize.random_tokens()
    first = {"title": "Ferry %%UNSUBSCRIBE_URL%% news", "url": "https://x.example/?a=%%NAME%%"}
    rendered = Renderer().render(sample_contents(3, first=first, tokens=tokens))
    assert "Ferry %%UNSUBSCRIBE_URL%% news" in rendered.html + rendered.text
    assert tokens.unsubscribe_url in rendered.html and tokens.unsubscribe_url in rendered.text
    (finding,) = [f for f in rendered.lint if f.code == "content-placeholder"]
    assert "%%UNSUBSCRIBE_URL%%" in finding.message and "%%NAME%%" in finding.message
    # Filling with the issue's values touches only the issue's tokens.
    filled = personalize.fill(rendered.text, {tokens.unsubscribe_url: "LINK"}, html_escape=False)
    assert "Ferry %%UNSUBSCRIBE_URL%% news" in filled and "LINK" in filled


def test_a_subscriber_name_never_introduces_a_token(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 1)
    with Session(any_engine) as session:
        from subscribers.models import Subscriber

        subscriber = session.exec(select(Subscriber)).one()
        subscriber.name = "Eve %%UNSUBSCRIBE_URL%%"
        session.add(subscriber)
        session.commit()
    issue_id = make_issue(any_engine, html="<p>Hi %%NAME%%</p><a href='%%UNSUBSCRIBE_URL%%'>u</a>")
    send_issue(app, issue_id, force=True)
    (message,) = outbox_messages(Path(app.settings.delivery.outbox_dir))
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Hi Eve %UNSUBSCRIBE_URL%" in html and html.count("/u/") == 1


# -- Message-IDs ----------------------------------------------------------------------------------


def test_message_ids_are_random_stored_at_the_freeze_and_reused_on_resend(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine, delivery={"batch_size": 2})
    add_audience(any_engine, SLUG, 5)
    issue_id = make_issue(any_engine)
    send_issue(app, issue_id)
    with Session(any_engine) as session:
        rows = session.exec(select(Delivery).order_by(col(Delivery.id))).all()
    stored = {row.id: row.message_id for row in rows}
    assert all(m and re.fullmatch(r"<[0-9a-f]{32}@example\.com>", m) for m in stored.values())
    assert len(set(stored.values())) == 5
    assert not any(f".{row.id}@" in (row.message_id or "") for row in rows)
    outbox = Path(app.settings.delivery.outbox_dir) / SLUG / str(issue_id)
    index = [json.loads(line) for line in (outbox / "index.jsonl").read_text().splitlines()]
    assert {line["delivery_id"]: line["message_id"] for line in index} == stored

    # A resend of the same delivery (its file gone, the batch failed and retried) reuses it.
    first = rows[0]
    (outbox / f"{first.id}.eml").unlink()
    with Session(any_engine) as session:
        from digest.sending import ledger
        from digest.storage.models import BatchStatus, SendBatch

        batch = session.get(SendBatch, first.batch_id)
        assert batch is not None
        batch.status = BatchStatus.FAILED
        session.add(batch)
        session.commit()
        assert ledger  # imported for the record: retry goes through the ledger's requeue
    send_issue(app, issue_id, retry_failed=True)
    again = (outbox / f"{first.id}.eml").read_bytes().decode()
    assert f"Message-ID: {first.message_id}" in again


# -- bad JSON and TOML depth ----------------------------------------------------------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_push_api_body_is_a_400_and_stores_nothing(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    client = TestClient(create_app(_app(make_app, any_engine)))
    auth = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    for body in (_deep(100_000), json.dumps([{"title": "x", "tags": json.loads(_deep(40))}])):
        response = client.post("/api/articles", content=body, headers=auth)
        assert response.status_code == 400, response.text
        assert "nested too deeply" in response.text
    with Session(any_engine) as session:
        assert session.exec(select(func.count()).select_from(Article)).one() == 0


def test_a_deeply_nested_webhook_body_is_a_400(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    from tests.integration.test_sendgrid_webhook import NOW_TS, Signer

    signer = Signer()
    app = make_app(any_engine, env={"SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_b64})
    client = TestClient(create_app(app))
    body = _deep(100_000).encode()
    response = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body, NOW_TS))
    assert response.status_code == 400 and "nested too deeply" in response.text
    with Session(any_engine) as session:
        assert session.exec(select(Delivery)).all() == []


def test_a_deeply_nested_toml_file_is_a_config_error(tmp_path: Path) -> None:
    for depth in (100_000, 2_000):
        path = tmp_path / f"deep{depth}.toml"
        path.write_text(f"[site]\nname = {_deep(depth)}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="nested too deeply"):
            load_settings(path, env={})


# -- outbox write failures ------------------------------------------------------------------------


def test_an_outbox_path_that_is_a_file_fails_the_batch_with_one_line(
    any_engine: Engine,
    make_app: Callable[..., App],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x", encoding="utf-8")
    app = _app(make_app, any_engine, delivery={"outbox_dir": str(blocker), "batch_size": 10})
    add_audience(any_engine, SLUG, 4)
    issue_id = make_issue(any_engine)
    with caplog.at_level(logging.ERROR, logger="digest.transports.outbox"):
        report = send_issue(app, issue_id)
    assert (report.accepted, report.failed, report.unknown) == (0, 4, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "digest.transports.outbox"]
    assert len(lines) == 1 and str(blocker) in lines[0] and "\n" not in lines[0]
    assert blocker.read_text(encoding="utf-8") == "x"


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from tests.conftest import make_settings
from digest.mail.message import RecipientValues
from digest.transports import OutgoingBatch, OutgoingMessage, OutgoingRecipient
from digest.transports.outbox import OutboxTransport
from tests.conftest import DEFAULT_NOW
out = Path(sys.argv[1])
settings = make_settings(out.parent, "sqlite://", {"delivery": {"outbox_dir": str(out)}})
newsletter = settings.newsletter("turkey-unpacked")
values = RecipientValues(settings, newsletter, b"key", DEFAULT_NOW, name_fallback="there")
message = OutgoingMessage(4, newsletter, "Weekly", "<p>" + "x" * 5000 + "</p>", "text\\n")
recipients = [OutgoingRecipient(n, n, f"r{n}@example.com", None, values(n, None)) for n in (1, 2)]
(out / "turkey-unpacked" / "4").mkdir(parents=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
for result in OutboxTransport(settings).send(OutgoingBatch(message, recipients)):
    print(result.outcome.value, result.error)
"""


def test_an_outbox_file_that_cannot_be_written_fails_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    """A real write failure, not a mock: the kernel refuses the write past RLIMIT_FSIZE (EFBIG,
    "File too large"), the same path through the outbox as ENOSPC on a full disk."""
    out = tmp_path / "outbox"
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("failed outbox: cannot write") for line in lines)
    assert str(out / "turkey-unpacked" / "4" / "1.eml") in lines[0] and "too large" in lines[0]
    assert "\n" not in done.stderr.strip() or "Traceback" not in done.stderr
    assert sorted(p.name for p in (out / "turkey-unpacked" / "4").iterdir()) == []


# -- access log -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/u/eyJzIjoxfQ.abc-DEF_123", "/u/[redacted]"),
        ("/u/eyJzIjoxfQ.abc?x=1", "/u/[redacted]?x=1"),
        ("/preferences/tok.sig", "/preferences/[redacted]"),
        ("/confirm/tok.sig/", "/confirm/[redacted]/"),
        ("/studio/login/link/s3cr3t", "/studio/login/link/[redacted]"),
        ("/studio?token=abc&page=2", "/studio?token=[redacted]&page=2"),
        ("/studio/turkey-unpacked", "/studio/turkey-unpacked"),
    ],
)
def test_tokens_are_redacted_from_paths(path: str, expected: str) -> None:
    assert redact(path) == expected


def test_uvicorn_access_records_carry_no_token(caplog: pytest.LogCaptureFixture) -> None:
    redact_access_log()
    redact_access_log()  # idempotent
    logger = logging.getLogger("uvicorn.access")
    assert sum(isinstance(f, RedactTokens) for f in logger.filters) == 1
    secret = "eyJzIjo0Mn0.SECRETSIG"
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        for path in (f"/u/{secret}", f"/preferences/{secret}", f"/confirm/{secret}",
                     f"/studio/login/link/{secret}"):  # fmt: skip
            logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    messages = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert len(messages) == 4
    assert all(secret not in m and "[redacted]" in m for m in messages), messages
