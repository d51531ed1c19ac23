"""Retention (`digest housekeeping`, `digest.ops.retention`) on SQLite and PostgreSQL.

Issues are sent through the real freeze, ledger and outbox transport, provider events go
through the real webhook code, and the numbers are read through the real `digest stats`: old
deliveries go, the figures stay. Chunks are committed one by one (another connection writes
between them), provider events and expired sign-in rows are pruned, and consent events stay
and are printed by `digest subscribers consent`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select, text, update
from typer.testing import CliRunner

from digest.app import App
from digest.cli import app as cli_app
from digest.cli import common
from digest.config import ConfigError, load_settings
from digest.ops.editors import add_editor
from digest.ops.retention import housekeep, run_if_due
from digest.scheduling.service import SchedulerService
from digest.sending.events import apply_sendgrid_events
from digest.storage.access import EditorRole, EditorSession, SignInLink, Throttle
from digest.storage.db import make_engine
from digest.storage.models import Delivery, IssueCount, SchedulerJob, SendBatch, WebhookEvent
from digest.web import limits
from subscribers import add_subscriber
from subscribers.models import ConsentEvent
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.scheduling import RecordingPipeline
from tests.support.sending import sent_issue

TU = "turkey-unpacked"
READERS = [f"reader{n}@example.com" for n in range(14)]
OLD_PERIOD = "2026-11-23T05:00:00+00:00"
LATER = DEFAULT_NOW + timedelta(days=100)  # a second issue, sent then
HOUSEKEEPING = DEFAULT_NOW + timedelta(days=200)  # 180 days after LATER's issue is not yet
RETENTION = {"retention": {"deliveries": "180d"}}
_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_C = IssueCount.__table__  # type: ignore[attr-defined]
_W = WebhookEvent.__table__  # type: ignore[attr-defined]


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    app = make_app(any_engine, **RETENTION)
    with app.session() as session:
        for email in READERS:
            add_subscriber(session, email, TU, now=DEFAULT_NOW)
    return app


def at(app: App, moment: datetime) -> App:
    return App(settings=app.settings, clock=lambda: moment, _engine=app.engine)


def run(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: datetime, *args: str
) -> str:
    """`digest --now NOW ARGS` against the app's database (retention 180d): its stdout."""
    config = tmp_path / "retention.toml"
    config.write_text(
        f'[database]\nurl = "{app.engine.url.render_as_string(hide_password=False)}"\n'
        f'[site]\nbase_url = "https://news.example.com"\n'
        f'[retention]\ndeliveries = "180d"\n'
        f'[[newsletters]]\nslug = "{TU}"\ntitle = "Turkey Unpacked"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    for name in ("DIGEST_DATABASE_URL", "DIGEST_CONFIG", "DIGEST_OLD_SECRET_KEYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(common.console, "width", 300)
    result = CliRunner().invoke(cli_app, ["--config", str(config), "--now", now.isoformat(), *args])
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


def cli(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: datetime, *args: str
) -> Any:
    """`digest --now NOW ARGS --json`: its one JSON document."""
    return json.loads(run(app, tmp_path, monkeypatch, now, *args, "--json"))


def rows(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        )


def events_for(app: App, issue_id: int, now: datetime, first: int = 0) -> None:
    """Delivered, opened, clicked, bounced and a complaint, through the real webhook code, for
    four readers from READERS[first] on."""
    who = READERS[first : first + 4]
    with app.session() as session:
        found = session.execute(select(_D.c.email, _D.c.id).where(_D.c.issue_id == issue_id))
        ids = {str(email): int(id_) for email, id_ in found}
        stamp = int(now.timestamp()) - 60

        def event(email: str, kind: str, **extra: Any) -> dict[str, Any]:
            return {
                "email": email,
                "event": kind,
                "timestamp": stamp,
                "sg_event_id": f"evt-{issue_id}-{email}-{kind}",
                "digest_delivery_id": str(ids[email]),
                **extra,
            }

        apply_sendgrid_events(
            session,
            [
                event(who[0], "delivered"),
                event(who[0], "open"),
                event(who[0], "click", url="https://news.example.com/a"),
                event(who[1], "delivered"),
                event(who[2], "bounce", type="bounce", status="5.1.1"),
                event(who[3], "spamreport"),
            ],
            now=now,
        )


def test_old_deliveries_go_and_stats_stay_the_same(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = sent_issue(app, TU, period=OLD_PERIOD)
    events_for(app, old, DEFAULT_NOW)
    recent = sent_issue(at(app, LATER), TU, period="2027-03-05T05:00:00+00:00")
    events_for(app, recent, LATER, first=4)
    before = cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "stats", TU)
    assert before["totals"]["bounced"] == 2 and before["totals"]["complained"] == 2
    recent_rows = rows(app.engine, _D, _D.c.issue_id == recent)  # type: ignore[attr-defined]

    report = cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "housekeeping")

    assert report["issues"] == [old] and report["counts_stored"] == []  # stored when sent
    assert report["deliveries"] == len(READERS) and report["send_batches"] >= 1
    assert rows(app.engine, _D, _D.c.issue_id == old) == 0  # type: ignore[attr-defined]
    assert rows(app.engine, _B, _B.c.issue_id == old) == 0  # type: ignore[attr-defined]
    assert rows(app.engine, _D, _D.c.issue_id == recent) == recent_rows  # type: ignore[attr-defined]
    after = cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "stats", TU)
    assert after == before
    again = cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "housekeeping")
    assert again["issues"] == [] and again["deliveries"] == 0


def test_an_issue_sent_before_counts_were_stored_gets_them_first(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = sent_issue(app, TU, period=OLD_PERIOD)
    events_for(app, old, DEFAULT_NOW)
    with app.engine.begin() as connection:  # as for an issue sent before issue_count existed
        connection.execute(delete(_C))
    before = cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "stats", TU)

    report = housekeep(at(app, HOUSEKEEPING))

    assert report.counts_stored == [old] and report.deliveries == len(READERS)
    with app.engine.connect() as connection:
        found = connection.execute(select(_C.c.state, _C.c.n).where(_C.c.issue_id == old))
        stored = {str(state): int(n) for state, n in found}
    assert stored["accepted"] + stored["delivered"] + stored["bounced"] == len(READERS)
    assert stored["opened"] == 1 and stored["clicked"] == 1
    assert cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "stats", TU) == before


def test_each_chunk_is_its_own_transaction(app: App) -> None:
    """With 4 rows per chunk, 14 deliveries go in 4 transactions; between two of them another
    connection updates a remaining delivery of the same issue without waiting."""
    old = sent_issue(app, TU, period=OLD_PERIOD)
    other = make_engine(app.engine.url.render_as_string(hide_password=False))
    seen: list[int] = []

    def between(table: str, deleted: int) -> None:
        if table != "delivery":
            return
        with other.begin() as connection:
            if other.dialect.name == "postgresql":
                connection.execute(text("SET LOCAL lock_timeout = '2s'"))
            else:
                connection.execute(text("PRAGMA busy_timeout = 2000"))
            remaining = (
                connection.execute(
                    select(_D.c.id).where(_D.c.issue_id == old).order_by(_D.c.id.desc())
                )
                .scalars()
                .all()
            )
            seen.append(len(remaining))
            if remaining:
                connection.execute(
                    update(_D)
                    .where(_D.c.id == remaining[0])
                    .values(error="written between two chunks")
                )

    try:
        report = housekeep(at(app, HOUSEKEEPING), chunk=4, after_chunk=between)
    finally:
        other.dispose()
    assert seen == [10, 6, 2, 0]  # each chunk visible to others once committed
    assert report.deliveries == len(READERS)
    assert report.transactions >= 1 + 4 + 1  # counts check, four chunks, the batches


def test_webhook_events_and_expired_sign_in_rows_are_pruned(app: App) -> None:
    now = HOUSEKEEPING
    old = sent_issue(app, TU, period=OLD_PERIOD)
    events_for(app, old, DEFAULT_NOW)  # 200 days before housekeeping
    recent = sent_issue(at(app, now - timedelta(days=2)), TU, period="2027-06-01T05:00:00+00:00")
    events_for(app, recent, now - timedelta(days=1), first=4)
    assert rows(app.engine, _W) == 12  # type: ignore[attr-defined]
    with app.session() as session:
        editor = add_editor(
            session, "editor@example.com", EditorRole.EDITOR, password=None, now=DEFAULT_NOW
        )
        assert editor.id is not None
        for key, expires, seen in (
            ("expired", now - timedelta(hours=1), now - timedelta(hours=2)),
            ("idle", now + timedelta(days=1), now - timedelta(hours=13)),  # studio.session_idle 12h
            ("live", now + timedelta(days=1), now - timedelta(hours=1)),
        ):
            session.add(
                EditorSession(
                    id=key, editor_id=editor.id, csrf="x", created_at=seen, last_seen_at=seen,
                    expires_at=expires,
                )
            )  # fmt: skip
        session.add(
            SignInLink(id="old", editor_id=editor.id, expires_at=now - timedelta(minutes=1))
        )
        session.add(
            SignInLink(id="new", editor_id=editor.id, expires_at=now + timedelta(minutes=9))
        )
    hour = timedelta(hours=1)
    limits.allow(
        app.engine, "subscribe:client:192.0.2.1", limit=20, window=hour, now=now - 2 * hour
    )
    limits.allow(app.engine, "subscribe:client:192.0.2.2", limit=20, window=hour, now=now)

    report = housekeep(at(app, now))

    assert report.webhook_events == 6 and report.editor_sessions == 2
    assert report.sign_in_links == 1 and report.form_counters == 1
    with app.session() as session:
        assert [s.id for s in session.scalars(select(EditorSession))] == ["live"]
        assert [s.id for s in session.scalars(select(SignInLink))] == ["new"]
        assert [t.key for t in session.scalars(select(Throttle))] == ["subscribe:client:192.0.2.2"]
        kept = session.scalars(select(_W.c.received_at)).all()
        assert len(kept) == 6 and min(kept) >= now - timedelta(days=180)


def test_consent_events_are_kept_and_exported(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = sent_issue(app, TU, period=OLD_PERIOD)
    events_for(app, old, DEFAULT_NOW)  # READERS[3] complained
    consent = rows(app.engine, ConsentEvent.__table__)  # type: ignore[attr-defined]

    cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "housekeeping")

    assert rows(app.engine, ConsentEvent.__table__) == consent  # type: ignore[attr-defined]
    record = cli(
        app, tmp_path, monkeypatch, HOUSEKEEPING, "subscribers", "consent", READERS[3].upper()
    )
    assert record["address"] == READERS[3]
    actions = [(e["action"], e["newsletter"], e["method"]) for e in record["events"]]
    assert actions[0][:2] == ("complaint", TU)  # the event's own time: before the subscribe
    assert actions[1][:2] == ("subscribe", TU)
    complaint = next(e for e in record["events"] if e["action"] == "complaint")
    assert complaint["issue_id"] == old
    assert set(complaint) == {
        "at", "action", "newsletter", "method", "ip", "user_agent", "detail", "issue_id"
    }  # fmt: skip
    printed = run(app, tmp_path, monkeypatch, HOUSEKEEPING, "subscribers", "consent", READERS[3])
    assert f"complaint {TU} by sendgrid" in printed and f"issue {old}" in printed
    nobody = cli(
        app, tmp_path, monkeypatch, HOUSEKEEPING, "subscribers", "consent", "no@example.com"
    )
    assert nobody["events"] == []


def test_retention_shorter_than_a_personal_memory_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "digest.toml"
    config.write_text(
        '[retention]\ndeliveries = "14d"\n'
        '[[newsletters]]\nslug = "world"\ntitle = "World"\n'
        '[[newsletters]]\nslug = "my-briefing"\ntitle = "Your Briefing"\nkind = "personal"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(config, env={})
    message = str(raised.value)
    assert "retention.deliveries (14d)" in message
    assert "newsletters (my-briefing).memory (30d)" in message
    config.write_text(config.read_text().replace('"14d"', '"30d"'), encoding="utf-8")
    assert load_settings(config, env={}).retention.deliveries == "30d"


def test_the_scheduler_and_run_due_housekeep_once_a_day(app: App) -> None:
    old = sent_issue(app, TU, period=OLD_PERIOD)
    clock = {"now": HOUSEKEEPING}
    ticking = App(settings=app.settings, clock=lambda: clock["now"], _engine=app.engine)
    service = SchedulerService(
        lambda: ticking,
        app=ticking,
        pipeline_factory=RecordingPipeline().pipeline,
        housekeeper=run_if_due,
    )
    service.begin_term()
    service.housekeeping()
    assert rows(app.engine, _D, _D.c.issue_id == old) == 0  # type: ignore[attr-defined]
    with app.session() as session:
        job = session.get(SchedulerJob, "housekeeping")
        assert job is not None and job.last_started_at == HOUSEKEEPING
        assert job.last_outcome == "ok" and "14 deliveries" in (job.detail or "")
    clock["now"] = HOUSEKEEPING + timedelta(hours=23)
    assert run_if_due(ticking) is None  # done today already
    clock["now"] = HOUSEKEEPING + timedelta(days=1)
    assert run_if_due(ticking) is not None


def test_run_due_housekeeps_at_most_once_a_day(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = sent_issue(app, TU, period=OLD_PERIOD)
    first = cli(app, tmp_path, monkeypatch, HOUSEKEEPING, "run-due")
    assert first["housekeeping"]["issues"] == [old]
    assert first["housekeeping"]["deliveries"] == len(READERS)
    later = HOUSEKEEPING + timedelta(hours=6)
    assert cli(app, tmp_path, monkeypatch, later, "run-due")["housekeeping"] is None
    next_day = HOUSEKEEPING + timedelta(days=1)
    assert cli(app, tmp_path, monkeypatch, next_day, "run-due")["housekeeping"]["issues"] == []
