"""SendGrid's signed Event Webhook: genuine batches apply once; unsigned, forged or stale ones
are refused with 403 and change nothing. Signed in the test exactly as SendGrid signs: ECDSA
P-256 / SHA-256 over timestamp + raw body, base64 DER signature, base64 DER SPKI public key."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from digest.app import App
from digest.sending.counts import effective_status, with_batches
from digest.storage.models import Delivery, WebhookEvent
from digest.web.server import create_app
from subscribers import (
    add_subscriber,
    audience_page,
    blocked_among,
    is_suppressed,
    subscriptions_of,
)
from subscribers.models import ConsentEvent
from tests.conftest import DEFAULT_NOW
from tests.support.sending import sent_issue

TU, CW = "turkey-unpacked", "climate-weekly"
NOW_TS = int(DEFAULT_NOW.timestamp())


class Signer:
    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_b64 = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int = NOW_TS) -> dict[str, str]:
        signed = str(timestamp).encode() + body
        signature = self.private.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
        }


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def world(any_engine: Engine, make_app: Callable[..., App], signer: Signer) -> dict[str, Any]:
    app = make_app(any_engine, env={"SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_b64})
    ids: dict[str, int] = {}
    deliveries: dict[str, int] = {}
    with Session(any_engine) as session:
        for name in ("ayse", "bora", "cem", "deniz", "ece"):
            email = f"{name}@example.com"
            result = add_subscriber(session, email, TU, now=DEFAULT_NOW)
            add_subscriber(session, email, CW, now=DEFAULT_NOW)
            assert result.subscriber_id is not None
            ids[name] = result.subscriber_id
        session.commit()
    issue_id = sent_issue(app)  # the real freeze, ledger and outbox transport
    with Session(any_engine) as session:
        for delivery in session.exec(select(Delivery).where(Delivery.issue_id == issue_id)):
            assert delivery.id is not None
            deliveries[delivery.email.split("@")[0]] = delivery.id
    return {
        "app": app,
        "client": TestClient(create_app(app)),
        "ids": ids,
        "deliveries": deliveries,
        "issue_id": issue_id,
        "engine": any_engine,
    }


def event(world: dict[str, Any], name: str, kind: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "email": f"{name}@example.com",
        "timestamp": NOW_TS - 60,
        "event": kind,
        "sg_event_id": f"evt-{name}-{kind}-{n}",
        "sg_message_id": f"msg-{name}.filter0001",
        "digest_delivery_id": str(world["deliveries"][name]),
        "digest_issue_id": str(world["issue_id"]),
        "digest_newsletter": TU,
        **extra,
    }


def post(
    world: dict[str, Any],
    signer: Signer,
    events: list[Any],
    *,
    timestamp: int = NOW_TS,
    headers: dict[str, str] | None = None,
) -> Any:
    # SendGrid's own bodies are compact JSON ending in CRLF: the raw bytes are what is signed.
    body = json.dumps(events, separators=(",", ":")).encode() + b"\r\n"
    return world["client"].post(
        "/webhooks/sendgrid",
        content=body,
        headers=headers if headers is not None else signer.headers(body, timestamp),
    )


def deliveries(world: dict[str, Any]) -> dict[str, tuple[str, bool, bool]]:
    """Each delivery's effective status (as every count reads it), opened, clicked."""
    statement = (
        sa_select(col(Delivery.id), effective_status(), col(Delivery.opened), col(Delivery.clicked))
        .select_from(with_batches())
        .where(col(Delivery.id).in_(world["deliveries"].values()))
    )
    with Session(world["engine"]) as session:
        rows = {row[0]: tuple(row[1:]) for row in session.execute(statement)}
    return {n: rows[i] for n, i in world["deliveries"].items()}


def snapshot(world: dict[str, Any]) -> tuple[Any, ...]:
    with Session(world["engine"]) as session:
        return (
            deliveries(world),
            session.exec(select(func.count()).select_from(ConsentEvent)).one(),
            session.exec(select(func.count()).select_from(WebhookEvent)).one(),
            [is_suppressed(session, f"{n}@example.com") for n in world["ids"]],
        )


def test_signed_batch_is_applied_once(world: dict[str, Any], signer: Signer) -> None:
    batch = [
        event(world, "ayse", "processed", 1),
        event(world, "ayse", "delivered", 1, response="250 OK"),
        event(world, "ayse", "open", 1, useragent="Mozilla", ip="192.0.2.1"),
        event(world, "ayse", "click", 1, url="https://news.example.com/a"),
        event(world, "ayse", "deferred", 1, response="451 try later", attempt="1"),  # late: ignored
        event(world, "bora", "bounce", 1, type="bounce", status="5.1.1", reason="550 user unknown"),
        event(world, "cem", "spamreport", 1),
        event(world, "deniz", "group_unsubscribe", 1, asm_group_id=42),
        event(world, "ece", "deferred", 1, response="421 busy"),
        event(world, "ece", "unsubscribe", 1),
        {"event": "delivered"},  # no delivery, no address: ignored
        "not an object",
    ]
    answer = post(world, signer, batch)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 12, "applied": 9, "duplicates": 0, "ignored": 3}
    assert deliveries(world) == {
        "ayse": ("delivered", True, True),
        "bora": ("bounced", False, False),
        "cem": ("accepted", False, False),
        "deniz": ("accepted", False, False),
        "ece": ("deferred", False, False),
    }
    ids = world["ids"]
    with Session(world["engine"]) as session:
        assert is_suppressed(session, "bora@example.com")
        assert is_suppressed(session, "cem@example.com")
        assert is_suppressed(session, "ece@example.com")  # global unsubscribe
        assert not is_suppressed(session, "deniz@example.com")
        assert {n: s.status for n, s in subscriptions_of(session, ids["bora"]).items()} == {
            TU: "bounced",
            CW: "bounced",
        }
        assert {n: s.status for n, s in subscriptions_of(session, ids["cem"]).items()} == {
            TU: "complained",
            CW: "complained",
        }
        assert {n: s.status for n, s in subscriptions_of(session, ids["deniz"]).items()} == {
            TU: "unsubscribed",
            CW: "active",
        }
        assert [r.subscriber_id for r in audience_page(session, TU, after_id=0, limit=10)] == [
            ids["ayse"]
        ]
        assert blocked_among(session, CW, list(ids.values())) == {
            ids["bora"],
            ids["cem"],
            ids["ece"],
        }
        bounce = session.exec(select(ConsentEvent).where(ConsentEvent.action == "bounce")).one()
        assert (bounce.newsletter, bounce.issue_id, bounce.method) == (
            TU,
            world["issue_id"],
            "sendgrid",
        )
        assert bounce.at == datetime.fromtimestamp(NOW_TS - 60, UTC)
        assert "550 user unknown" in (bounce.detail or "")
    # SendGrid retries and duplicates: the same events again change nothing.
    before = snapshot(world)
    again = post(world, signer, batch[:10])
    assert again.status_code == 200
    assert again.json()["duplicates"] == 10 and again.json()["applied"] == 0
    assert snapshot(world) == before


def test_a_later_bounce_overrides_delivered_but_not_the_reverse(
    world: dict[str, Any], signer: Signer
) -> None:
    post(
        world,
        signer,
        [event(world, "ayse", "bounce", 1, type="blocked", reason="blocked by policy")],
    )
    post(world, signer, [event(world, "ayse", "delivered", 1)])
    post(world, signer, [event(world, "bora", "delivered", 1)])
    post(world, signer, [event(world, "bora", "dropped", 1, reason="Bounced Address")])
    assert deliveries(world)["ayse"] == ("bounced", False, False)
    assert deliveries(world)["bora"] == ("dropped", False, False)
    with Session(world["engine"]) as session:
        assert not is_suppressed(session, "ayse@example.com")  # blocked is not a hard bounce
        assert is_suppressed(session, "bora@example.com")  # SendGrid's own bounce list


def test_event_for_another_address_does_not_touch_the_delivery(
    world: dict[str, Any], signer: Signer
) -> None:
    forged = event(world, "ayse", "open", 1) | {
        "digest_delivery_id": str(world["deliveries"]["bora"])
    }
    assert post(world, signer, [forged]).json()["ignored"] == 1
    assert deliveries(world)["bora"] == ("accepted", False, False)


@pytest.mark.parametrize(
    "problem",
    [
        "unsigned",
        "no timestamp",
        "forged",
        "other key",
        "tampered body",
        "stale",
        "future",
        "garbage signature",
        "bad timestamp",
    ],
)
def test_refused_requests_change_nothing(
    world: dict[str, Any], signer: Signer, problem: str
) -> None:
    batch = [
        event(world, "bora", "bounce", 1, type="bounce"),
        event(world, "ayse", "unsubscribe", 1),
    ]
    body = json.dumps(batch, separators=(",", ":")).encode() + b"\r\n"
    headers = signer.headers(body)
    if problem == "unsigned":
        headers = {"Content-Type": "application/json"}
    elif problem == "no timestamp":
        del headers["X-Twilio-Email-Event-Webhook-Timestamp"]
    elif problem == "forged":
        other = json.dumps([event(world, "ayse", "spamreport", 1)]).encode()
        headers["X-Twilio-Email-Event-Webhook-Signature"] = signer.headers(other)[
            "X-Twilio-Email-Event-Webhook-Signature"
        ]
    elif problem == "other key":
        headers = Signer().headers(body)
    elif problem == "tampered body":
        body = body.replace(b"bounce", b"spamreport", 1)
    elif problem == "stale":
        headers = signer.headers(body, NOW_TS - 301)
    elif problem == "future":
        headers = signer.headers(body, NOW_TS + 301)
    elif problem == "garbage signature":
        headers["X-Twilio-Email-Event-Webhook-Signature"] = "not//base64!!"
    elif problem == "bad timestamp":
        headers = signer.headers(body, NOW_TS) | {"X-Twilio-Email-Event-Webhook-Timestamp": "soon"}
    before = snapshot(world)
    answer = world["client"].post("/webhooks/sendgrid", content=body, headers=headers)
    assert answer.status_code == 403, answer.text
    assert "error" in answer.json()
    assert snapshot(world) == before


def test_timestamp_just_inside_the_window_is_accepted(
    world: dict[str, Any], signer: Signer
) -> None:
    answer = post(world, signer, [event(world, "ayse", "delivered", 1)], timestamp=NOW_TS - 299)
    assert answer.status_code == 200 and answer.json()["applied"] == 1


def test_without_a_configured_key_nothing_is_accepted(
    any_engine: Engine, make_app: Callable[..., App], signer: Signer
) -> None:
    client = TestClient(create_app(make_app(any_engine)))
    body = b"[]"
    assert (
        client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body)).status_code
        == 503
    )


def test_signed_but_not_an_event_array_is_a_bad_request(
    world: dict[str, Any], signer: Signer
) -> None:
    body = b'{"event": "open"}'
    answer = world["client"].post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
    assert answer.status_code == 400


def test_events_without_ids_are_still_deduplicated(world: dict[str, Any], signer: Signer) -> None:
    e = event(world, "ayse", "click", 1)
    del e["sg_event_id"]
    assert post(world, signer, [e]).json()["applied"] == 1
    assert post(world, signer, [e]).json()["duplicates"] == 1
    assert deliveries(world)["ayse"] == ("delivered", True, True)
