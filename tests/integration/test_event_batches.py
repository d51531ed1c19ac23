"""One webhook batch, many events about the same few deliveries: each applied in order, once.

A batch's deliveries are read at once (on PostgreSQL those named only by `processed` events only
if they are unknown) and written back at once (on PostgreSQL one row version each, whatever
changed): these check that what the events mean survives that, on SQLite and PostgreSQL, through
the signed webhook, the real freeze, ledger and outbox transport.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from digest.app import App
from digest.sending import snapshot
from digest.sending.send import send_issue
from digest.storage.models import Delivery, DeliveryStatus, IssueStatus
from digest.transports import OutgoingBatch, SendOutcome, SendResult
from digest.transports.outbox import OutboxTransport
from digest.web.server import create_app
from tests.integration.test_sendgrid_webhook import NOW_TS, Signer
from tests.support.sending import add_audience, make_issue, webhook_app

TU = "turkey-unpacked"


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App], signer: Signer) -> App:
    return webhook_app(make_app, any_engine, signer.public_b64)


class _SecondBatchLost(OutboxTransport):
    """Writes every message, but the answer for the second batch is lost: it is unknown."""

    def __init__(self, app: App) -> None:
        super().__init__(app.settings)
        self.batches = 0

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results = super().send(batch)
        self.batches += 1
        if self.batches != 2:
            return results
        return [SendResult(r.email, SendOutcome.UNKNOWN, None, "timed out") for r in results]


class Events:
    """SendGrid events for the n-th recipient of an issue (one second apart), posted signed."""

    def __init__(self, app: App, signer: Signer, issue_id: int) -> None:
        self.app, self.signer, self.issue_id = app, signer, issue_id
        self.rows = deliveries(app, issue_id)
        self.client = TestClient(create_app(app))
        self.serial = 0

    def event(self, n: int, kind: str, **extra: Any) -> dict[str, Any]:
        self.serial += 1
        return {
            "email": self.rows[n].email,
            "timestamp": NOW_TS - 60 + self.serial,
            "event": kind,
            "sg_event_id": f"evt-{self.issue_id}-{self.serial}",
            "digest_delivery_id": str(self.rows[n].id),
            "digest_issue_id": str(self.issue_id),
            "digest_newsletter": TU,
            **extra,
        }

    def post(self, events: list[dict[str, Any]]) -> dict[str, int]:
        body = json.dumps(events, separators=(",", ":")).encode() + b"\r\n"
        answer = self.client.post(
            "/webhooks/sendgrid", content=body, headers=self.signer.headers(body)
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def deliveries(app: App, issue_id: int) -> list[Delivery]:
    with Session(app.engine) as session:
        found = select(Delivery).where(col(Delivery.issue_id) == issue_id)
        return list(session.exec(found.order_by(col(Delivery.id))).all())


def at(serial: int) -> datetime:
    return datetime.fromtimestamp(NOW_TS - 60 + serial, UTC)


def test_processed_events_settle_only_the_unknown_even_beside_other_events(
    app: App, signer: Signer
) -> None:
    add_audience(app.engine, TU, 10)
    issue_id = make_issue(app.engine)
    report = send_issue(app, issue_id, transport=_SecondBatchLost(app))
    assert (report.accepted, report.unknown) == (5, 5)
    events = Events(app, signer, issue_id)
    before = {row.id: row.updated_at for row in events.rows}
    answer = events.post(
        [
            events.event(0, "processed"),  # accepted: changes nothing
            events.event(1, "processed"),  # accepted, named again below: still nothing
            events.event(1, "delivered"),
            events.event(5, "processed"),  # unknown: SendGrid took it
            events.event(6, "processed"),  # unknown, then opened: accepted, then delivered
            events.event(6, "open"),
        ]
    )
    assert answer == {"received": 6, "applied": 4, "duplicates": 0, "ignored": 2}
    rows = deliveries(app, issue_id)
    assert rows[0].updated_at == before[rows[0].id]  # not rewritten
    assert rows[1].status == DeliveryStatus.DELIVERED and rows[1].updated_at == at(3)
    assert rows[5].status == DeliveryStatus.ACCEPTED and rows[5].updated_at == at(4)
    assert (rows[6].status, rows[6].opened, rows[6].updated_at) == ("delivered", True, at(6))
    with app.session() as session:
        counts = snapshot.delivery_counts(session, issue_id)
        assert snapshot.settled(session, [issue_id]) == {issue_id: 2}
    assert (counts["unknown"], counts["accepted"], counts["delivered"]) == (3, 5, 2)


def test_one_batch_opens_clicks_and_bounces_a_row_each_once(app: App, signer: Signer) -> None:
    add_audience(app.engine, TU, 5)
    issue_id = make_issue(app.engine)
    report = send_issue(app, issue_id, transport=OutboxTransport(app.settings))
    assert report.issue_status == IssueStatus.SENT
    events = Events(app, signer, issue_id)
    shouted = events.rows[2].email.upper()
    answer = events.post(
        [
            events.event(0, "delivered"),
            events.event(0, "open"),
            events.event(0, "click", url="https://news.example.com/a"),
            events.event(1, "bounce", type="blocked", reason="550 mailbox busy"),
            events.event(1, "open"),  # images loaded later: opened, still bounced
            events.event(2, "delivered") | {"email": shouted},  # one mailbox, however spelled
            events.event(3, "delivered") | {"email": "someone.else@example.org"},
        ]
    )
    assert answer == {"received": 7, "applied": 6, "duplicates": 0, "ignored": 1}
    rows = deliveries(app, issue_id)
    assert (rows[0].status, rows[0].opened, rows[0].clicked) == ("delivered", True, True)
    assert rows[0].updated_at == at(3)  # its own last event
    assert (rows[1].status, rows[1].opened, rows[1].clicked) == ("bounced", True, False)
    assert "550 mailbox busy" in (rows[1].error or "")
    assert rows[2].status == DeliveryStatus.DELIVERED
    assert rows[3].status != DeliveryStatus.DELIVERED  # about another address: ignored
    with app.session() as session:
        kept = snapshot.stored(session, [issue_id])[issue_id]
        recount = snapshot.live(session, [issue_id])[issue_id]
    assert {k: v for k, v in kept.items() if v} == {k: v for k, v in recount.items() if v}
    assert (kept["delivered"], kept["bounced"], kept["opened"], kept["clicked"]) == (2, 1, 2, 1)
