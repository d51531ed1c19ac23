"""The editor's loop, on SQLite and PostgreSQL: what an editor prepares in the studio on a
Wednesday is exactly what the scheduler sends the next Monday; looking changes nothing;
un-approve, edit, approve sends the edited issue.

Everything goes through real code paths: the studio over HTTP with a signed-in publisher, the
scheduler's `run_due` with the real pipeline, the outbox transport.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import select
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.cli import common
from digest.ops.status import status_report
from digest.scheduling.leader import leading
from digest.scheduling.pipeline import real_pipeline
from digest.scheduling.tick import run_due
from digest.storage.models import Issue, IssueStatus
from digest.web.server import create_app
from subscribers import add_subscriber
from tests.support.articles import add_article
from tests.support.studio import sign_in

SLUG = "turkey-unpacked"
WEDNESDAY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # two days after Monday's 08:00 (+03)
NEXT_MONDAY = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # 08:00 in Istanbul
WEEKLY = [
    {
        "slug": SLUG,
        "title": "Turkey Unpacked",
        "schedule": "0 8 * * 1",
        "timezone": "Europe/Istanbul",
        "window": "8d",
        "min_articles": 2,
        "max_articles": 3,
        "topic": {"tags": ["Turkey"]},
    }
]


@pytest.fixture
def at(any_engine: Engine, make_app: Callable[..., App]) -> Callable[[datetime], App]:
    """at(moment) → the App as of that moment, on one database."""
    return lambda moment: make_app(any_engine, now=moment, newsletters=WEEKLY)


@pytest.fixture
def stories(at: Callable[[datetime], App]) -> list[int]:
    app = at(WEDNESDAY)
    with app.session() as session:
        add_subscriber(session, "reader@example.org", SLUG, now=WEDNESDAY)
    titles = ["Ankara budget", "Istanbul ferries", "Izmir port", "Lira steadies", "Bosphorus"]
    return [
        add_article(app, f"Turkey: {title}", WEDNESDAY - timedelta(hours=2 + 5 * n))
        for n, title in enumerate(titles)
    ]


def studio(app: App) -> TestClient:
    client = TestClient(create_app(app), follow_redirects=False)
    sign_in(client, app, "chief@example.com", role="publisher")
    return client


def post(client: TestClient, path: str, **form: str) -> None:
    page = client.get(f"/studio/{SLUG}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf
    answer = client.post(path, data={"csrf": csrf[1], **form})
    assert answer.status_code == 303, answer.text


def issue_id_on(client: TestClient) -> int:
    match = re.search(r"/studio/[a-z-]+/issue/(\d+)/", client.get(f"/studio/{SLUG}").text)
    assert match
    return int(match[1])


def scheduled_send(app: App) -> None:
    with leading(app) as leadership:
        assert leadership is not None
        run_due(app, real_pipeline())


def mailed(app: App) -> list[Any]:
    outbox = Path(app.settings.delivery.outbox_dir)
    files = [f for f in sorted(outbox.rglob("*.eml")) if "tests" not in f.parts]
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]


def test_wednesdays_edits_are_what_mondays_scheduler_sends(
    at: Callable[[datetime], App], stories: list[int]
) -> None:
    wednesday = at(WEDNESDAY)
    before = status_report(wednesday)
    client = studio(wednesday)
    issue_id = issue_id_on(client)
    with wednesday.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None and issue.period == NEXT_MONDAY.isoformat()  # not last Monday's
    base = f"/studio/{SLUG}/issue/{issue_id}"
    oldest, excluded = stories[-1], stories[0]
    post(client, f"{base}/articles/{oldest}/pin", pinned="true")
    post(client, f"{base}/articles/{excluded}/exclude", excluded="true")
    post(client, f"{base}/subject", subject="The week in Turkey, chosen by hand")
    post(client, f"{base}/intro", intro="Good morning from the desk.")
    post(client, f"{base}/approve")
    assert status_report(wednesday) == before  # the studio's work changed nothing status says

    monday = at(NEXT_MONDAY + timedelta(minutes=1))
    scheduled_send(monday)

    [message] = mailed(monday)
    assert message["Subject"] == "The week in Turkey, chosen by hand"
    text = message.get_body(("plain",)).get_content()
    assert "Good morning from the desk." in text
    assert text.index("Turkey: Bosphorus") < text.index("Turkey: Istanbul ferries")  # the pin
    assert "Turkey: Ankara budget" not in text  # the exclusion
    with monday.session() as session:
        sent = session.get(Issue, issue_id)
        assert sent is not None and sent.status == IssueStatus.SENT
        assert sent.approved_by == "chief@example.com"
        assert len(session.exec(select(Issue)).all()) == 1  # no fresh issue next to it


def test_looking_at_the_studio_and_status_changes_nothing_status_reports(
    at: Callable[[datetime], App], stories: list[int]
) -> None:
    monday = at(NEXT_MONDAY - timedelta(days=7) + timedelta(minutes=1))  # last Monday, 08:01
    scheduled_send(monday)
    wednesday = at(WEDNESDAY)
    before = status_report(wednesday)
    assert before["newsletters"][0]["last_issue"]["status"] == "sent"
    client = studio(wednesday)
    for path in ("/studio", f"/studio/{SLUG}", f"/studio/{SLUG}/history"):
        assert client.get(path).status_code == 200
    status_report(wednesday)
    assert status_report(wednesday) == before
    after = before["newsletters"][0]
    assert after["next_issue"]["period"] == NEXT_MONDAY.isoformat()


def test_unapprove_edit_approve_sends_the_edited_issue(
    at: Callable[[datetime], App], stories: list[int], tmp_path: Path
) -> None:
    wednesday = at(WEDNESDAY)
    client = studio(wednesday)
    issue_id = issue_id_on(client)
    base = f"/studio/{SLUG}/issue/{issue_id}"
    post(client, f"{base}/subject", subject="Turkey this week: a typoo")
    post(client, f"{base}/approve")
    post(client, f"{base}/unapprove")
    with wednesday.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None and issue.status == IssueStatus.DRAFT
        assert (issue.unapproved_by, issue.unapproved_at) == ("chief@example.com", WEDNESDAY)
        assert issue.approved_by is None
    post(client, f"{base}/subject", subject="Turkey this week: fixed")
    post(client, f"{base}/approve")

    monday = at(NEXT_MONDAY + timedelta(minutes=1))
    scheduled_send(monday)
    [message] = mailed(monday)
    assert message["Subject"] == "Turkey this week: fixed"


def test_a_sent_issue_cannot_be_unapproved_and_the_cli_lists_history(
    at: Callable[[datetime], App], stories: list[int], tmp_path: Path, monkeypatch: Any
) -> None:
    from digest.issues import editorial
    from digest.issues.assemble import AssemblyError

    monday = at(NEXT_MONDAY - timedelta(days=7) + timedelta(minutes=1))
    scheduled_send(monday)
    with monday.session() as session:
        [sent] = session.exec(select(Issue)).all()
    with pytest.raises(AssemblyError, match="only an approved issue"):
        editorial.unapprove(monday, sent.id or 0, by="someone")

    wednesday = at(WEDNESDAY)
    studio(wednesday).get(f"/studio/{SLUG}")  # prepares next Monday's draft
    monkeypatch.setattr(common.LazyApp, "get", lambda self: wednesday)
    result = CliRunner().invoke(cli_app, ["issue", "list", SLUG, "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    assert [r["outcome"] for r in rows] == ["next", "sent"]
    assert rows[1]["counts"]["sent"] == 1 and rows[1]["counts"]["recipients"] == 1
