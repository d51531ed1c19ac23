"""Hostile requests against the studio, the keys, the Host header and the public forms, replayed
on SQLite and PostgreSQL. Each case asserts the refusal and that nothing changed.

Content-side cases (placeholders, logs, depth limits, the outbox) are in
`test_security_content.py`.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlmodel import select
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.storage.access import EditorSession, SignInLink
from digest.storage.models import Issue, IssueStatus
from digest.web.access import SESSION_COOKIE
from digest.web.server import create_app
from subscribers.models import ConsentEvent, Subscriber
from tests.conftest import TEST_SECRET
from tests.support.articles import add_turkey_week
from tests.support.studio import sign_in

SLUG = "turkey-unpacked"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    app = make_app(any_engine)
    add_turkey_week(app, 3)
    return app


def web(app: App, **kwargs: Any) -> TestClient:
    return TestClient(create_app(app), follow_redirects=False, **kwargs)


def issue_state(app: App) -> list[tuple[Any, ...]]:
    with app.session() as session:
        rows = session.exec(select(Issue).order_by(Issue.id)).all()  # type: ignore[arg-type]
        return [(i.id, i.status, i.subject, i.intro, i.approved_by) for i in rows]


def count(app: App, model: Any) -> int:
    with app.session() as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def editor_cli(app: App, tmp_path: Path, *args: str, stdin: str | None = None) -> Any:
    config = tmp_path / "editors.toml"
    url = app.engine.url.render_as_string(hide_password=False)
    config.write_text(f'[database]\nurl = "{url}"\n', encoding="utf-8")
    return CliRunner().invoke(
        cli_app, ["--config", str(config), "editors", *args], input=stdin, env={}
    )


# -- the studio without a session --------------------------------------------------------------


def test_the_studio_without_a_session_reveals_nothing_and_changes_nothing(app: App) -> None:
    client = web(app)
    sign_in(web(app), app)  # an issue exists (built for a real editor), but not for this client
    before = issue_state(app)
    issue_id = before[0][0] if before else 1
    for path in ("/studio", f"/studio/{SLUG}", f"/studio/{SLUG}/issue/{issue_id}/email.html"):
        page = client.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/studio/login")
        assert client.get(path).status_code == 401  # a script or curl gets 401, not a page
    for action, form in (
        ("approve", {"csrf": "x"}),
        ("subject", {"csrf": "x", "subject": "Hacked"}),
        ("test", {"csrf": "x", "to": "attacker@evil.example"}),
    ):
        answer = client.post(f"/studio/{SLUG}/issue/{issue_id}/{action}", data=form)
        assert answer.status_code == 401
    login = client.get("/studio/login")
    assert login.status_code == 200 and 'name="csrf"' not in login.text
    assert issue_state(app) == before
    assert not list(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))


def test_an_editor_may_not_approve_but_a_publisher_may(app: App) -> None:
    editor = web(app)
    sign_in(editor, app, "writer@example.com", role="editor")
    page = editor.get(f"/studio/{SLUG}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    issue = re.search(r"/studio/[a-z-]+/issue/(\d+)/", page)
    assert csrf and issue
    before = issue_state(app)
    refused = editor.post(f"/studio/{SLUG}/issue/{issue.group(1)}/approve", data={"csrf": csrf[1]})
    assert refused.status_code == 403 and issue_state(app) == before

    publisher = web(app)
    sign_in(publisher, app, "chief@example.com", role="publisher")
    token = re.search(r'name="csrf" value="([^"]+)"', publisher.get(f"/studio/{SLUG}").text)
    assert token
    ok = publisher.post(f"/studio/{SLUG}/issue/{issue.group(1)}/approve", data={"csrf": token[1]})
    assert ok.status_code == 303
    with app.session() as session:
        approved = session.get(Issue, int(issue.group(1)))
        assert approved is not None
        assert (approved.status, approved.approved_by) == (
            IssueStatus.APPROVED,
            "chief@example.com",
        )


def test_another_sessions_csrf_token_is_refused(app: App) -> None:
    mine, theirs = web(app), web(app)
    sign_in(mine, app, "a@example.com", role="publisher")
    sign_in(theirs, app, "b@example.com", role="publisher")
    page = theirs.get(f"/studio/{SLUG}").text
    their_token = re.search(r'name="csrf" value="([^"]+)"', page)
    issue = re.search(r"/studio/[a-z-]+/issue/(\d+)/", page)
    assert their_token and issue
    mine.get(f"/studio/{SLUG}")
    before = issue_state(app)
    answer = mine.post(
        f"/studio/{SLUG}/issue/{issue.group(1)}/approve", data={"csrf": their_token[1]}
    )
    assert answer.status_code == 403 and issue_state(app) == before


# -- signing in --------------------------------------------------------------------------------


def test_editors_add_then_password_sign_in_gives_a_session_that_can_approve(
    app: App, tmp_path: Path
) -> None:
    added = editor_cli(
        app, tmp_path, "add", "you@example.com", "--role", "publisher", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    client = web(app, base_url="https://testserver")  # the cookie is Secure: https only
    answer = client.post(
        "/studio/login",
        data={"email": "You@Example.com", "password": PASSWORD, "next": f"/studio/{SLUG}"},
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/studio/{SLUG}"
    cookie = answer.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "Secure" in cookie
    assert "samesite=lax" in cookie.lower() and "Path=/studio" in cookie
    page = client.get(f"/studio/{SLUG}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    issue = re.search(r"/studio/[a-z-]+/issue/(\d+)/", page)
    assert csrf and issue
    assert client.post(f"/studio/{SLUG}/issue/{issue[1]}/approve", data={"csrf": csrf[1]})
    with app.session() as session:
        approved = session.get(Issue, int(issue[1]))
        assert approved is not None and approved.approved_by == "you@example.com"
    listed = editor_cli(app, tmp_path, "list", "--json")
    assert '"role": "publisher"' in listed.output and '"sessions": 1' in listed.output


@pytest.mark.parametrize("email", ["you@example.com", "nobody@example.com"])
def test_a_wrong_password_and_an_unknown_account_get_the_same_answer(
    app: App, tmp_path: Path, email: str
) -> None:
    editor_cli(app, tmp_path, "add", "you@example.com", "--password-stdin", stdin=PASSWORD)
    answer = web(app).post("/studio/login", data={"email": email, "password": "guess" * 3})
    assert answer.status_code == 401
    assert "don't match an editor" in html.unescape(answer.text)
    assert "set-cookie" not in answer.headers
    assert count(app, EditorSession) == 0


def test_sign_in_attempts_are_limited_per_account(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(any_engine, forms={"sign_in_per_account_per_hour": 3})
    editor_cli(app, tmp_path, "add", "you@example.com", "--password-stdin", stdin=PASSWORD)
    client = web(app)
    codes = [
        client.post(
            "/studio/login", data={"email": "you@example.com", "password": "x" * 12}
        ).status_code
        for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    # Even the right password waits now: guessing cannot continue from elsewhere either.
    right = web(app).post("/studio/login", data={"email": "you@example.com", "password": PASSWORD})
    assert right.status_code == 429 and count(app, EditorSession) == 0


def test_a_sign_in_link_works_once_and_a_get_does_not_use_it(app: App, tmp_path: Path) -> None:
    editor_cli(app, tmp_path, "add", "links@example.com", "--role", "editor")
    client = web(app)
    for email in ("links@example.com", "stranger@example.com"):
        answer = client.post("/studio/login/link", data={"email": email})
        assert answer.status_code == 200 and "If that address belongs to an editor" in answer.text
    mails = list(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))
    assert len(mails) == 1  # only the editor got one
    link = re.search(
        rb"https://news\.example\.com(/studio/login/link/[A-Za-z0-9_-]+)", mails[0].read_bytes()
    )
    assert link is not None
    path = link.group(1).decode()
    assert client.get(path).status_code == 200 and count(app, EditorSession) == 0  # scanners
    used = client.post(path)
    assert used.status_code == 303 and count(app, EditorSession) == 1
    again = web(app).post(path)
    assert again.status_code == 400 and count(app, EditorSession) == 1
    with app.session() as session:
        assert session.exec(select(SignInLink)).one().used_at is not None


def test_signing_out_and_removing_an_editor_end_their_sessions(app: App, tmp_path: Path) -> None:
    client = web(app)
    secret = sign_in(client, app, "gone@example.com", role="admin")
    page = client.get("/studio").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    out = client.post("/studio/logout", data={"csrf": csrf[1]})
    assert out.status_code == 303 and count(app, EditorSession) == 0
    stolen = web(app)
    stolen.cookies.set(SESSION_COOKIE, secret)  # a copied cookie is dead on the server too
    assert stolen.get("/studio").status_code == 401

    sign_in(client, app, "gone@example.com", role="admin")
    assert count(app, EditorSession) == 1
    assert editor_cli(app, tmp_path, "remove", "gone@example.com").exit_code == 0
    assert count(app, EditorSession) == 0 and client.get("/studio").status_code == 401


def test_an_expired_session_is_refused(any_engine: Engine, make_app: Callable[..., App]) -> None:
    from datetime import timedelta

    from tests.conftest import DEFAULT_NOW

    early = make_app(any_engine)
    client = web(early)
    secret = sign_in(client, early)
    later = make_app(any_engine, now=DEFAULT_NOW + timedelta(hours=13))  # idle is 12h
    stale = web(later)
    stale.cookies.set(SESSION_COOKIE, secret)
    assert stale.get("/studio").status_code == 401 and count(later, EditorSession) == 0


def test_a_proxy_header_is_believed_only_from_a_trusted_proxy(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = make_app(
        any_engine,
        studio={"auth": "proxy", "proxy_header": "X-Auth-Email", "trusted_proxies": ["10.9.8.7"]},
    )
    editor_cli(app, tmp_path, "add", "sso@example.com", "--role", "editor")
    header = {"X-Auth-Email": "sso@example.com"}
    assert web(app, client=("203.0.113.5", 5000)).get("/studio", headers=header).status_code == 401
    assert web(app, client=("10.9.8.7", 5000)).get("/studio", headers=header).status_code == 200
    unknown = {"X-Auth-Email": "intruder@example.com"}
    assert web(app, client=("10.9.8.7", 5000)).get("/studio", headers=unknown).status_code == 401


def test_no_sign_in_mode_works_only_on_loopback(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    public = make_app(any_engine, studio={"auth": "none"})
    assert web(public).get("/studio").status_code == 401
    local = make_app(
        any_engine, studio={"auth": "none"}, site={"base_url": "http://127.0.0.1:8000"}
    )
    assert web(local, base_url="http://127.0.0.1:8000").get("/studio").status_code == 200


def test_a_next_parameter_never_leads_off_the_site(app: App, tmp_path: Path) -> None:
    editor_cli(app, tmp_path, "add", "you@example.com", "--password-stdin", stdin=PASSWORD)
    for target in ("https://evil.example/", "//evil.example/studio", "/studio\\@evil", "/u/x"):
        answer = web(app).post(
            "/studio/login", data={"email": "you@example.com", "password": PASSWORD, "next": target}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/studio"


# -- Host and keys -----------------------------------------------------------------------------


def test_a_foreign_host_is_refused_everywhere(app: App) -> None:
    before = (count(app, ConsentEvent), count(app, Subscriber))
    client = web(app, base_url="http://rebound.attacker.example")
    for method, path in (("GET", "/studio"), ("POST", f"/subscribe/{SLUG}"), ("GET", "/healthz")):
        answer = client.request(method, path, data={"email": "x@example.com"})
        assert answer.status_code == 400, (method, path)
    assert web(app, base_url="https://news.example.com").get("/healthz").status_code == 200
    assert (count(app, ConsentEvent), count(app, Subscriber)) == before


@pytest.mark.parametrize("command", ["serve", "send", "run-due", "scheduler"])
def test_commands_that_sign_refuse_the_development_key_off_loopback(
    tmp_path: Path, command: str
) -> None:
    config = tmp_path / "digest.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "d.db"}"\n'
        '[site]\nbase_url = "https://news.example.com"\n'
        '[[newsletters]]\nslug = "turkey-unpacked"\ntitle = "Turkey Unpacked"\n',
        encoding="utf-8",
    )
    args = {"send": ["send", "turkey-unpacked"]}.get(command, [command])
    result = subprocess.run(
        [sys.executable, "-m", "digest", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode != 0
    assert "DIGEST_SECRET_KEY" in result.stderr
    assert not (tmp_path / "d.db").exists()  # refused before touching anything


def test_the_secret_is_required_only_off_loopback() -> None:
    from digest.config import ConfigError, settings_from_mapping

    local = settings_from_mapping({"site": {"base_url": "http://localhost:8000"}})
    local.require_secret_key()  # the README's quick start works without a key
    public = settings_from_mapping({"site": {"base_url": "https://news.example.com"}})
    with pytest.raises(ConfigError, match="DIGEST_SECRET_KEY"):
        public.require_secret_key()
    keyed = settings_from_mapping(
        {"site": {"base_url": "https://news.example.com"}}, env={"DIGEST_SECRET_KEY": TEST_SECRET}
    )
    keyed.require_secret_key()


# -- public forms ------------------------------------------------------------------------------


def test_a_flood_of_subscribe_posts_sends_one_confirmation(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, forms={"subscribe_per_hour": 100})
    client = web(app)
    answers = [
        client.post(f"/subscribe/{SLUG}", data={"email": "victim@example.org"}) for _ in range(50)
    ]
    assert {a.status_code for a in answers} == {200}
    assert len({a.text for a in answers}) == 1  # the same answer every time
    mails = list(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))
    assert len(mails) == 1


def test_subscribe_posts_are_limited_per_client(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, forms={"subscribe_per_hour": 5})
    client = web(app)
    codes = [
        client.post(f"/subscribe/{SLUG}", data={"email": f"r{n}@example.org"}).status_code
        for n in range(7)
    ]
    assert codes == [200] * 5 + [429] * 2
    assert count(app, Subscriber) == 5
    other = web(app, client=("198.51.100.7", 4000))
    assert other.post(f"/subscribe/{SLUG}", data={"email": "r9@example.org"}).status_code == 200


def test_only_an_admin_manages_editors_in_the_studio(app: App) -> None:
    publisher = web(app)
    sign_in(publisher, app, "chief@example.com", role="publisher")
    assert publisher.get("/studio/editors").status_code == 403
    token = re.search(r'name="csrf" value="([^"]+)"', publisher.get("/studio").text)
    assert token
    refused = publisher.post(
        "/studio/editors", data={"csrf": token[1], "email": "me2@example.com", "role": "admin"}
    )
    assert refused.status_code == 403 and count(app, EditorSession) == 1

    admin = web(app)
    sign_in(admin, app, "boss@example.com", role="admin")
    page = admin.get("/studio/editors").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf and "chief@example.com" in page
    added = admin.post(
        "/studio/editors", data={"csrf": csrf[1], "email": "New@Example.com", "role": "editor"}
    )
    assert added.status_code == 303
    mails = list(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))
    assert len(mails) == 1 and b"/studio/login/link/" in mails[0].read_bytes()
    removed = admin.post(
        "/studio/editors/remove", data={"csrf": csrf[1], "email": "chief@example.com"}
    )
    assert removed.status_code == 303
    assert publisher.get("/studio").status_code == 401  # the publisher's session ended
    listing = admin.get("/studio/editors").text
    assert "Removed chief@example.com" in listing  # the flash; the table no longer has them
    assert 'data-editor="new@example.com"' in listing
    assert 'data-editor="chief@example.com"' not in listing
