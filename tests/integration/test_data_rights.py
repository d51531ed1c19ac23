"""Readers' data rights on SQLite and PostgreSQL: `digest subscribers data` hands out everything
held about an address (GDPR article 15) and `digest subscribers forget` erases it everywhere
(article 17), keeping only a keyed hash in the suppression list so the address is never
imported, added or subscribed again, under the current secret or a retired one. Both are
recorded in the consent log. The data is made by real code paths: a subscription, a send
through the outbox, a one-click unsubscribe and SendGrid events."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, String, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, col, select

import digest.storage.access
import digest.storage.models
import subscribers.models
from digest.app import App
from digest.sending.counts import delivery_counts
from digest.sending.events import apply_sendgrid_events
from digest.storage.models import Delivery
from digest.web.server import create_app
from subscribers import add_subscriber, import_csv, request_subscription
from subscribers.models import ConsentEvent, Subscriber, Suppression
from subscribers.suppression import address_hash, forget_keys
from subscribers.tokens import Purpose, make_token
from tests.conftest import DEFAULT_NOW, TEST_SECRET
from tests.support.cli import cli_config
from tests.support.cli import digest as cli
from tests.support.sending import sent_issue

TU, CW = "turkey-unpacked", "climate-weekly"
EMAIL = "ayse.yilmaz@example.com"
SPELLED = "Ayse.Yilmaz@Example.COM"
OTHER = "bora@example.com"


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App]) -> App:
    return make_app(any_engine)


@pytest.fixture
def config(any_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield cli_config(tmp_path / "digest.toml", any_engine, monkeypatch)


def build_history(app: App) -> dict[str, Any]:
    """Subscribed to both newsletters, sent an issue of each, one-click unsubscribed from
    Climate Weekly, Turkey Unpacked's message delivered then bounced (hard), all for real."""
    with app.session() as session:
        mine = add_subscriber(session, SPELLED, TU, now=DEFAULT_NOW, name="Ayşe Yılmaz")
        add_subscriber(session, EMAIL, CW, now=DEFAULT_NOW, locale="tr", timezone="Europe/Istanbul")
        add_subscriber(session, OTHER, TU, now=DEFAULT_NOW, name="Bora")
        add_subscriber(session, OTHER, CW, now=DEFAULT_NOW)
    assert mine.subscriber_id is not None
    tu_issue = sent_issue(app, TU)
    cw_issue = sent_issue(app, CW)
    token = make_token(
        TEST_SECRET.encode(),
        subscriber_id=mine.subscriber_id,
        newsletter=CW,
        purpose=Purpose.UNSUBSCRIBE,
        issued_at=DEFAULT_NOW,
    )
    web = TestClient(create_app(app), follow_redirects=False)
    answer = web.post(
        f"/u/{token}",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "Gmail"},
    )
    assert answer.status_code == 200
    with app.session() as session:
        delivery = session.exec(
            select(Delivery).where(Delivery.issue_id == tu_issue, Delivery.email == EMAIL)
        ).one()
        base = {
            "email": SPELLED,
            "timestamp": int(DEFAULT_NOW.timestamp()) - 60,
            "digest_delivery_id": str(delivery.id),
            "digest_issue_id": str(tu_issue),
            "digest_newsletter": TU,
        }
        result = apply_sendgrid_events(
            session,
            [
                {**base, "event": "delivered", "sg_event_id": "evt-1"},
                {
                    **base,
                    "event": "bounce",
                    "type": "bounce",
                    "sg_event_id": "evt-2",
                    "reason": f"550 5.1.1 <{SPELLED}>: Recipient address rejected",
                },
            ],
            now=DEFAULT_NOW,
        )
        assert result.applied == 2
    return {"subscriber_id": mine.subscriber_id, "issues": (tu_issue, cw_issue)}


def mentions(engine: Engine, address: str) -> list[str]:
    """Every table.column (text columns of every table) that holds `address`, in any case."""
    assert digest.storage.models and digest.storage.access and subscribers.models
    found = []
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for column in table.columns:
                if not isinstance(column.type, String):
                    continue
                hit = connection.execute(
                    sa_select(func.count())
                    .select_from(table)
                    .where(func.lower(column).contains(address.lower(), autoescape=True))
                ).scalar()
                if hit:
                    found.append(f"{table.name}.{column.name}")
    return found


def consent_actions(app: App) -> list[str]:
    with app.session() as session:
        return list(session.exec(select(ConsentEvent.action).order_by(col(ConsentEvent.id))))


def test_data_lists_everything_held_and_is_logged(app: App, config: Path) -> None:
    world = build_history(app)
    code, out, err = cli(config, "subscribers", "data", SPELLED, "--json")
    assert code == 0, err
    held = json.loads(out)
    assert held["address"] == EMAIL and held["held"] is True
    person = held["subscriber"]
    assert person["id"] == world["subscriber_id"]
    assert (person["name"], person["email"]) == ("Ayşe Yılmaz", EMAIL)
    statuses = {s["newsletter"]: s["status"] for s in held["subscriptions"]}
    assert statuses == {TU: "bounced", CW: "unsubscribed"}
    actions = [(e["action"], e["newsletter"]) for e in held["consent_events"]]
    assert ("subscribe", TU) in actions and ("subscribe", CW) in actions
    assert ("unsubscribe", CW) in actions and ("bounce", TU) in actions
    one_click = next(e for e in held["consent_events"] if e["action"] == "unsubscribe")
    assert one_click["method"] == "one-click" and one_click["user_agent"] == "Gmail"
    deliveries = {d["newsletter"]: d for d in held["deliveries"]}
    assert set(deliveries) == {TU, CW}
    assert deliveries[TU]["status"] == "bounced"
    # CW's row is pending on its own: the accepted batch speaks for it (effective status).
    assert deliveries[CW]["status"] == "accepted"
    assert deliveries[TU]["name"] == "Ayşe Yılmaz"
    assert [s["reason"] for s in held["suppressions"]] == ["hard_bounce"]
    assert {e["event"] for e in held["webhook_events"]} == {"delivered", "bounce"}
    assert held["editor"] is None
    assert OTHER not in out  # nobody else's data
    assert consent_actions(app)[-1] == "data_export"
    # The human form says the same in tables.
    code, out, _ = cli(config, "subscribers", "data", EMAIL)
    assert code == 0 and "subscriber #" in out and "hard_bounce" in out and "one-click" in out


def test_data_about_an_unknown_address_holds_nothing_and_writes_nothing(
    app: App, config: Path
) -> None:
    code, out, _ = cli(config, "subscribers", "data", "nobody@example.com", "--json")
    assert code == 0 and json.loads(out)["held"] is False
    assert consent_actions(app) == []
    assert mentions(app.engine, "nobody@example.com") == []


def test_forget_erases_every_copy_and_keeps_the_counts(app: App, config: Path) -> None:
    world = build_history(app)
    tu_issue, cw_issue = world["issues"]
    with app.session() as session:
        before = {i: delivery_counts(session, i) for i in (tu_issue, cw_issue)}
    assert mentions(app.engine, EMAIL)  # the test would prove nothing otherwise
    code, out, err = cli(config, "subscribers", "forget", SPELLED)
    assert code == 0, err
    assert "forgotten" in out and EMAIL not in out.lower()
    assert mentions(app.engine, EMAIL) == []
    assert mentions(app.engine, "Ayşe Yılmaz") == []  # the name the issues were addressed with
    with app.session() as session:
        # Deliveries stay, so every count reads as before; the other reader is untouched.
        assert {i: delivery_counts(session, i) for i in (tu_issue, cw_issue)} == before
        assert session.exec(select(Subscriber.email)).all() == [OTHER]
        assert session.exec(select(func.count()).select_from(Delivery)).one() == 4
        kept = session.exec(select(Suppression)).one()
        key = forget_keys([TEST_SECRET.encode()])[0]
        assert (kept.email, kept.reason) == (None, "forgotten")
        assert kept.email_hash == address_hash(key, EMAIL)
        forget_event = session.exec(
            select(ConsentEvent).where(ConsentEvent.action == "forget")
        ).one()
        assert (
            forget_event.email is None and forget_event.detail == f"hmac-sha256:{kept.email_hash}"
        )
        # The earlier events stay as the record of consent, without address, IP or agent.
        old = session.exec(
            select(ConsentEvent).where(ConsentEvent.subscriber_id == world["subscriber_id"])
        ).all()
        assert {e.action for e in old} >= {"subscribe", "unsubscribe", "bounce", "forget"}
        assert all(e.email is None and e.ip is None and e.user_agent is None for e in old)
    # Forgetting again changes nothing and stays clean.
    assert cli(config, "subscribers", "forget", EMAIL)[0] == 0
    assert mentions(app.engine, EMAIL) == []


def refused_everywhere(app: App, config: Path, keys: tuple[bytes, ...]) -> None:
    """A CSV import, `subscribers add` and the subscribe form all refuse the address, and none
    writes it down again."""
    with app.session() as session:
        report = import_csv(
            session,
            io.StringIO(f"email,name\n{SPELLED},Ayşe\n{OTHER},Bora\n"),
            now=DEFAULT_NOW,
            default_newsletter=TU,
            known_newsletters={TU, CW},
            forget_keys=keys,
        )
    assert [(s.email, s.reason) for s in report.skipped] == [(EMAIL, "suppressed (forgotten)")]
    code, _, err = cli(config, "subscribers", "add", SPELLED, "--newsletter", CW)
    assert code == 1 and "suppressed (forgotten)" in err
    with app.session() as session:
        request = request_subscription(
            session, SPELLED, CW, now=DEFAULT_NOW, double_opt_in=False, forget_keys=keys
        )
        assert (request.subscriber_id, request.send_confirmation, request.subscribed) == (
            None,
            False,
            False,
        )
        added = add_subscriber(session, EMAIL, TU, now=DEFAULT_NOW, forget_keys=keys)
        assert added.reason == "suppressed (forgotten)"
    assert mentions(app.engine, EMAIL) == []


def test_a_forgotten_address_is_never_added_again(app: App, config: Path) -> None:
    build_history(app)
    assert cli(config, "subscribers", "forget", EMAIL)[0] == 0
    refused_everywhere(app, config, forget_keys([TEST_SECRET.encode()]))
    # Keys handed in once per session work the same (for callers that wire them so).
    with Session(app.engine) as session:
        session.info["subscribers.forget_keys"] = forget_keys([TEST_SECRET.encode()])
        added = add_subscriber(session, EMAIL, TU, now=DEFAULT_NOW)
        assert added.reason == "suppressed (forgotten)"


def test_forgetting_holds_across_a_key_rotation(
    app: App, config: Path, monkeypatch: pytest.MonkeyPatch, make_app: Callable[..., App]
) -> None:
    """Forgotten under the old secret, refused once the secret changed and the old one is
    retired (DIGEST_OLD_SECRET_KEYS), both by the CLI and by callers handed both keys."""
    build_history(app)
    assert cli(config, "subscribers", "forget", EMAIL)[0] == 0
    monkeypatch.setenv("DIGEST_SECRET_KEY", "a-brand-new-secret-key-0123456789")
    monkeypatch.setenv("DIGEST_OLD_SECRET_KEYS", TEST_SECRET)
    keys = forget_keys([b"a-brand-new-secret-key-0123456789", TEST_SECRET.encode()])
    refused_everywhere(app, config, keys)
    # Without the retired key the hash is not recognised: the rotation needs it kept.
    with app.session() as session:
        lone = forget_keys([b"a-brand-new-secret-key-0123456789"])
        assert add_subscriber(session, EMAIL, TU, now=DEFAULT_NOW, forget_keys=lone).created
        session.rollback()


def test_forget_refuses_an_editor_address(app: App, config: Path) -> None:
    code, _, err = cli(config, "editors", "add", EMAIL, "--role", "editor")
    assert code == 0, err
    code, _, err = cli(config, "subscribers", "forget", EMAIL)
    assert code == 1 and "digest editors remove" in err
    code, out, _ = cli(config, "subscribers", "data", EMAIL, "--json")
    assert json.loads(out)["editor"]["role"] == "editor"


def test_the_public_form_refuses_a_forgotten_address(app: App, config: Path) -> None:
    """The App's sessions carry the forget keys, so the real subscribe form sees the hash."""
    from fastapi.testclient import TestClient

    from digest.web.server import create_app

    build_history(app)
    assert cli(config, "subscribers", "forget", EMAIL)[0] == 0
    before = mentions(app.engine, EMAIL)
    answer = TestClient(create_app(app)).post(f"/subscribe/{TU}", data={"email": EMAIL.upper()})
    assert answer.status_code in (200, 400)
    assert mentions(app.engine, EMAIL) == before == []
    assert not list(Path(app.settings.delivery.outbox_dir).rglob("confirmations/*.eml"))
