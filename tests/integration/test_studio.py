"""The preview studio over HTTP: pages, the email frames, editorial forms, CSRF, live reload."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from digest.app import App, fixed_clock
from digest.config import load_settings
from digest.rendering.personalize import leaks
from digest.rendering.render import Renderer
from digest.storage.models import Issue, IssueStatus
from digest.web import live_reload
from digest.web.server import create_app
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.articles import add_turkey_week
from tests.support.studio import sign_in

SLUG = "turkey-unpacked"
ORIGIN = "http://testserver"


@pytest.fixture
def app(engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(engine)


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(create_app(app), follow_redirects=False) as test_client:
        sign_in(test_client, app)
        yield test_client


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


def _issue_id(page: str) -> int:
    match = re.search(r"/studio/[a-z0-9-]+/issue/(\d+)/email\.html", page)
    assert match, "the page shows no issue"
    return int(match.group(1))


def _order(page: str, card: str = "articles") -> list[int]:
    section = page.split(f'id="{card}"', 1)[1].split('class="card"', 1)[0]
    return [int(i) for i in re.findall(r'data-article-id="(\d+)"', section)]


def _post(client: TestClient, path: str, csrf: str, **form: str) -> Any:
    return client.post(path, data={"csrf": csrf, **form}, headers={"Origin": ORIGIN})


def _open(client: TestClient) -> tuple[str, str, int]:
    response = client.get(f"/studio/{SLUG}")
    assert response.status_code == 200
    return response.text, _csrf(response.text), _issue_id(response.text)


def test_index_lists_newsletters_with_their_next_issue(app: App, client: TestClient) -> None:
    add_turkey_week(app, 3)

    page = client.get("/studio")

    assert page.status_code == 200
    assert "Turkey Unpacked" in page.text and "Climate Weekly" in page.text
    turkey = page.text.split('data-newsletter="turkey-unpacked"', 1)[1].split("</tr>", 1)[0]
    assert "draft" in turkey
    assert "<td>3</td>" in turkey
    assert "Turkey Unpacked: Turkey story 1" in turkey  # the subject template
    assert re.search(r"\d+\.\d KB", turkey)
    climate = page.text.split('data-newsletter="climate-weekly"', 1)[1].split("</tr>", 1)[0]
    assert "skipped" in climate and "minimum is 2" in climate


def test_issue_page_shows_the_email_text_budget_and_why_each_article_is_there(
    app: App, client: TestClient
) -> None:
    ids = add_turkey_week(app, 4)

    page, _, issue_id = _open(client)

    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
    assert f'src="/studio/{SLUG}/issue/{issue_id}/email.html" width="600"' in page
    assert f'src="/studio/{SLUG}/issue/{issue_id}/email.html" width="375"' in page
    assert "Turkey Unpacked: Turkey story 1" in page  # subject
    assert re.sub(r"\s+", " ", issue.preheader)[:40] in re.sub(r"\s+", " ", page)
    assert "warn over 90 KB, Gmail clips over 102 KB" in page
    assert 'data-level="ok"' in page
    assert "keyword: Ankara" in page and "tag: Turkey" in page  # the rules that matched
    assert _order(page) == ids
    text_part = page.split('<pre class="text">', 1)[1].split("</pre>", 1)[0]
    assert "Hi Sample Reader" in text_part  # personalised for the sample subscriber
    assert leaks(text_part) == []
    csp = client.get(f"/studio/{SLUG}").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'self'" in csp


def test_email_frame_serves_the_sample_subscribers_html_without_leaks(
    app: App, client: TestClient
) -> None:
    add_turkey_week(app, 3)
    _, _, issue_id = _open(client)

    frame = client.get(f"/studio/{SLUG}/issue/{issue_id}/email.html")

    assert frame.status_code == 200
    assert "Turkey Unpacked" in frame.text and "Turkey story 1" in frame.text
    assert leaks(frame.text) == []
    assert "https://news.example.com/u/" in frame.text  # a real, signed unsubscribe link
    assert "default-src 'none'" in frame.headers["content-security-policy"]
    assert client.get(f"/studio/climate-weekly/issue/{issue_id}/email.html").status_code == 404


def test_message_download_is_a_complete_multipart_message(app: App, client: TestClient) -> None:
    add_turkey_week(app, 3)
    _, _, issue_id = _open(client)

    response = client.get(f"/studio/{SLUG}/issue/{issue_id}/message.eml")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("message/rfc822")
    message = email.message_from_bytes(response.content, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert leaks(response.content.decode("utf-8", "replace")) == []


def test_pin_exclude_restore_and_move_change_the_issue(app: App, client: TestClient) -> None:
    first, second, third, fourth = add_turkey_week(app, 4)
    _, csrf, issue_id = _open(client)
    base = f"/studio/{SLUG}/issue/{issue_id}/articles"

    pinned = _post(client, f"{base}/{fourth}/pin", csrf, pinned="true")
    assert pinned.status_code == 303
    assert pinned.headers["location"] == f"/studio/{SLUG}"
    page = client.get(f"/studio/{SLUG}").text
    assert f"Article {fourth} pinned." in page
    assert _order(page) == [fourth, first, second, third]

    assert _post(client, f"{base}/{second}/exclude", csrf, excluded="true").status_code == 303
    page = client.get(f"/studio/{SLUG}").text
    assert _order(page) == [fourth, first, third]
    assert _order(page, "excluded") == [second]
    assert "Turkey story 2" not in client.get(f"/studio/{SLUG}/issue/{issue_id}/email.html").text

    assert _post(client, f"{base}/{second}/exclude", csrf, excluded="false").status_code == 303
    assert _post(client, f"{base}/{third}/move", csrf, direction="up").status_code == 303
    page = client.get(f"/studio/{SLUG}").text
    assert _order(page) == [fourth, first, third, second]

    assert _post(client, f"{base}/{fourth}/pin", csrf, pinned="false").status_code == 303
    page = client.get(f"/studio/{SLUG}").text
    assert f"Article {fourth} unpinned." in page
    assert _order(page)[:2] == [first, third]  # still pinned by the move


def test_a_candidate_over_the_cap_can_be_pinned_in(
    engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(
        engine,
        newsletters=[{"slug": SLUG, "title": "Turkey Unpacked", "max_articles": 2}],
    )
    newest, middle, oldest = add_turkey_week(app, 3)
    with TestClient(create_app(app), follow_redirects=False) as client:
        sign_in(client, app)
        page, csrf, issue_id = _open(client)
        assert _order(page) == [newest, middle]
        assert _order(page, "candidates") == [oldest]

        _post(client, f"/studio/{SLUG}/issue/{issue_id}/articles/{oldest}/pin", csrf, pinned="true")

        page = client.get(f"/studio/{SLUG}").text
    assert _order(page) == [oldest, newest]
    assert _order(page, "candidates") == [middle]


def test_subject_intro_and_approve(app: App, client: TestClient) -> None:
    add_turkey_week(app, 3)
    _, csrf, issue_id = _open(client)
    base = f"/studio/{SLUG}/issue/{issue_id}"

    _post(client, f"{base}/subject", csrf, subject="A week of\r\nBcc: x@example.com budgets")
    _post(client, f"{base}/intro", csrf, intro="Good morning from <the> desk.")
    page = client.get(f"/studio/{SLUG}").text
    assert '<dd id="subject">A week of Bcc: x@example.com budgets</dd>' in page
    assert "Good morning from &lt;the&gt; desk." in page  # escaped in the studio
    frame = client.get(f"{base}/email.html").text
    assert "Good morning from &lt;the&gt; desk." in frame  # and in the email

    _post(client, f"{base}/subject", csrf, subject="")
    assert '<dd id="subject">Turkey Unpacked: Turkey story 1' in client.get(f"/studio/{SLUG}").text

    assert _post(client, f"{base}/approve", csrf).status_code == 303
    page = client.get(f"/studio/{SLUG}").text
    assert 'id="status">approved<' in page
    assert "its content is frozen" in page
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        assert issue.status == IssueStatus.APPROVED and issue.approved_by == "editor@example.com"


def test_editor_errors_are_messages_not_500s(app: App, client: TestClient) -> None:
    first, *_ = add_turkey_week(app, 3)
    _, csrf, issue_id = _open(client)
    base = f"/studio/{SLUG}/issue/{issue_id}"
    _post(client, f"{base}/approve", csrf)

    refused = _post(client, f"{base}/articles/{first}/exclude", csrf, excluded="true")
    assert refused.status_code == 303
    page = client.get(f"/studio/{SLUG}").text
    assert 'data-flash="error"' in page and "only a draft can be changed" in page
    assert "flash" not in client.get(f"/studio/{SLUG}").text.split("<main>", 1)[1][:200]

    _post(client, f"/studio/{SLUG}/issue/{issue_id}/articles/999999/pin", csrf, pinned="true")
    assert "only a draft" in client.get(f"/studio/{SLUG}").text  # frozen is checked first
    _post(client, f"/studio/climate-weekly/issue/{issue_id}/approve", csrf)
    assert "There is no issue" in client.get("/studio/climate-weekly").text

    unknown = client.get("/studio/no-such-letter")
    assert unknown.status_code == 404 and "There is no newsletter" in unknown.text


def test_an_unknown_article_is_a_message(app: App, client: TestClient) -> None:
    add_turkey_week(app, 3)
    _, csrf, issue_id = _open(client)

    _post(client, f"/studio/{SLUG}/issue/{issue_id}/articles/999999/pin", csrf, pinned="true")

    assert "no article with id 999999" in client.get(f"/studio/{SLUG}").text


def test_posts_need_the_token_and_no_foreign_origin(app: App, client: TestClient) -> None:
    first, *_ = add_turkey_week(app, 3)
    _, csrf, issue_id = _open(client)
    path = f"/studio/{SLUG}/issue/{issue_id}/articles/{first}/exclude"

    missing = client.post(path, data={"excluded": "true"}, headers={"Origin": ORIGIN})
    wrong = client.post(path, data={"csrf": "x" * 32, "excluded": "true"})
    foreign = client.post(
        path,
        data={"csrf": csrf, "excluded": "true"},
        headers={"Origin": "https://evil.example"},
    )
    foreign_referer = client.post(
        path,
        data={"csrf": csrf, "excluded": "true"},
        headers={"Referer": "http://testserver.evil.example/studio"},
    )

    assert missing.status_code in (403, 422)
    assert wrong.status_code == 403 and "security token" in wrong.text
    assert foreign.status_code == 403 and "another site" in foreign.text
    assert foreign_referer.status_code == 403
    assert _order(client.get(f"/studio/{SLUG}").text)[0] == first  # nothing changed
    no_origin = client.post(path, data={"csrf": csrf, "excluded": "true"})  # e.g. curl
    assert no_origin.status_code == 303


def test_a_forged_flash_cookie_is_ignored(app: App, client: TestClient) -> None:
    add_turkey_week(app, 3)
    client.cookies.set("digest_studio_flash", "eyJraW5kIjoib2siLCJ0ZXh0IjoiaGkifQ==.abc")

    assert "data-flash" not in client.get(f"/studio/{SLUG}").text


def test_send_a_test_goes_through_the_transport_and_says_so(app: App, client: TestClient) -> None:
    add_turkey_week(app, 3)
    _, csrf, issue_id = _open(client)
    path = f"/studio/{SLUG}/issue/{issue_id}/test"

    _post(client, path, csrf, to=" editor@Example.COM ")  # the signed-in editor's own address
    sent = client.get(f"/studio/{SLUG}").text
    _post(client, path, csrf, to="stranger@elsewhere.example")
    refused = client.get(f"/studio/{SLUG}").text
    _post(client, path, csrf, to="not an address")
    malformed = client.get(f"/studio/{SLUG}").text

    assert 'data-flash="ok"' in sent and "Test sent to editor@example.com via outbox" in sent
    files = list(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))
    assert len(files) == 1  # nothing went to the stranger
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert str(message["Subject"]).startswith("[TEST] Turkey Unpacked")
    assert "editor@example.com" in str(message["To"])
    assert 'data-flash="error"' in refused and "tests go to your own address" in refused
    assert 'data-flash="error"' in malformed and "tests go to your own address" in malformed


def test_a_test_domain_may_receive_tests(engine: Engine, make_app: Callable[..., App]) -> None:
    app = make_app(engine, studio={"test_domains": ["newsroom.example"]})
    add_turkey_week(app, 3)
    with TestClient(create_app(app), follow_redirects=False) as client:
        sign_in(client, app, role="editor")
        _, csrf, issue_id = _open(client)
        _post(client, f"/studio/{SLUG}/issue/{issue_id}/test", csrf, to="desk@newsroom.example")
        page = client.get(f"/studio/{SLUG}").text
    assert "Test sent to desk@newsroom.example" in page


def test_a_refused_test_send_is_a_message(
    app: App, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digest.sending import send as sending
    from digest.transports import SendOutcome, SendResult

    add_turkey_week(app, 3)
    _, csrf, issue_id = _open(client)

    def refuse(app: App, issue_id: int, to_address: str) -> SendResult:
        return SendResult(to_address, SendOutcome.FAILED, error="550 mailbox unavailable")

    monkeypatch.setattr(sending, "send_test", refuse)
    _post(client, f"/studio/{SLUG}/issue/{issue_id}/test", csrf, to="editor@example.com")

    page = client.get(f"/studio/{SLUG}").text
    assert 'data-flash="error"' in page and "550 mailbox unavailable" in page


def test_a_template_error_is_shown_with_its_file_and_line(
    engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    email_dir = templates / "email"
    real = Path(Renderer().email_dir)
    (email_dir / "digest").mkdir(parents=True)
    for source in real.rglob("*"):
        if source.is_file():
            target = email_dir / source.relative_to(real)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    (email_dir / "broken").mkdir()
    (email_dir / "broken" / "subject.txt.j2").write_text("{{ newsletter.title ", "utf-8")
    app = make_app(engine, newsletters=[{"slug": SLUG, "title": "T", "template": "broken"}])
    app.__dict__["renderer"] = Renderer(templates)
    add_turkey_week(app, 3)

    with TestClient(create_app(app)) as client:
        sign_in(client, app)
        page = client.get(f"/studio/{SLUG}")
        index = client.get("/studio")

    assert page.status_code == 200
    assert 'id="render-error"' in page.text and "subject.txt.j2" in page.text
    assert "subject.txt.j2" in index.text


def test_live_reload_script_and_events(app: App, client: TestClient) -> None:
    script = client.get("/studio/live-reload.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text

    stale = client.get("/studio/events", params={"v": "stale"})  # ends after one event
    assert stale.headers["content-type"].startswith("text/event-stream")
    assert "event: reload\n" in stale.text


def _write_config(path: Path, engine: Engine, title: str, extra: str = "") -> None:
    url = engine.url.render_as_string(hide_password=False)
    path.write_text(
        f'[database]\nurl = "{url}"\n{extra}\n[[newsletters]]\nslug = "{SLUG}"\n'
        f'title = "{title}"\nmin_articles = 1\ntopic = {{ tags = ["Turkey"] }}\n',
        encoding="utf-8",
    )


def _touch_later(path: Path) -> None:
    """Move the file's mtime forward, as a later save would (no sleeping)."""
    stat = path.stat()
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_an_edited_config_swaps_in_a_fresh_app(engine: Engine, tmp_path: Path) -> None:
    config = tmp_path / "digest.toml"
    _write_config(config, engine, "Turkey Unpacked")
    env = {"DIGEST_SECRET_KEY": TEST_SECRET}
    app = App(
        settings=load_settings(config, env=env), clock=fixed_clock(DEFAULT_NOW), _engine=engine
    )
    add_turkey_week(app, 2)
    web = create_app(app)
    reloader = live_reload.Reloader(
        live_reload.Watch.for_app(app), load=lambda p: load_settings(p, env=env)
    )
    web.state.studio = types.SimpleNamespace(reloader=reloader, csrf_token="t" * 32)

    # No [site] in this config: base_url is the loopback default, which is the Host to use.
    with TestClient(web, base_url=app.settings.site.base_url) as client:
        sign_in(client, app)
        assert "Turkey Unpacked" in client.get(f"/studio/{SLUG}").text
        _write_config(config, engine, "Turkey Unfolded")
        _touch_later(config)
        reloaded = client.get(f"/studio/{SLUG}").text
        fresh = web.state.digest
        _write_config(config, engine, "Broken", extra="[site]\ntimezone = 'Mars/Olympus'\n")
        _touch_later(config)
        broken = client.get(f"/studio/{SLUG}").text

    assert "Turkey Unfolded" in reloaded
    assert fresh is not app and fresh.engine is engine  # same database: the pool is kept
    assert fresh.clock is app.clock
    assert "Config not reloaded" in broken and "Mars/Olympus" in broken
    assert web.state.digest is fresh  # the last good App keeps serving
    assert "Turkey Unfolded" in broken


def test_event_stream_announces_a_template_change(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "email").mkdir(parents=True)
    template = templates / "email" / "a.html.j2"
    template.write_text("one", encoding="utf-8")
    watch = live_reload.Watch(templates)
    since = watch.fingerprint()
    polls = []

    async def edit_on_second_poll(_: float) -> None:
        polls.append(1)
        if len(polls) == 2:
            template.write_text("two!", encoding="utf-8")

    async def collect() -> list[str]:
        stream = live_reload.changes(watch, since, sleep=edit_on_second_poll)
        return [chunk async for chunk in stream]

    chunks = asyncio.run(collect())

    assert chunks[0].startswith("retry:")
    assert chunks[-1] == live_reload.event("reload", watch.fingerprint())
    assert len(polls) == 2


def test_event_stream_stops_when_the_client_leaves(tmp_path: Path) -> None:
    watch = live_reload.Watch(tmp_path)

    async def gone() -> bool:
        return True

    async def collect() -> list[str]:
        return [c async for c in live_reload.changes(watch, watch.fingerprint(), gone=gone)]

    assert asyncio.run(collect()) == [f"retry: {live_reload.RETRY_MS}\n\n"]
