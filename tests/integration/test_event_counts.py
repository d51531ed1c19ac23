"""Provider events keep a sent issue's stored counts exact, and settle recipients left unknown.

Every issue here goes through the real freeze, ledger and outbox transport (`send_issue`), and
every event through the signed webhook (`POST /webhooks/sendgrid`); after each batch the stored
counts (`issue_count`) must equal a recount of the deliveries, on SQLite and PostgreSQL. Then
`digest deliveries`, `stats`, `status` and `/metrics` must still say the same once the
deliveries are gone: proof that they read the stored counts, not the rows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete, select
from sqlmodel import Session

from digest.app import App
from digest.ops.stats import newsletter_stats
from digest.ops.status import status_report
from digest.sending import snapshot
from digest.sending.send import send_issue
from digest.storage.models import Delivery, DeliveryStatus, Issue, IssueStatus
from digest.transports import OutgoingBatch, SendOutcome, SendResult
from digest.transports.outbox import OutboxTransport
from digest.web.server import create_app
from tests.integration.test_sendgrid_webhook import NOW_TS, Signer
from tests.support.cli import cli_config, digest
from tests.support.sending import add_audience, make_issue, webhook_app

TU = "turkey-unpacked"


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App], signer: Signer) -> App:
    return webhook_app(make_app, any_engine, signer.public_b64)


def recipients(app: App, issue_id: int) -> list[tuple[int, str]]:
    with Session(app.engine) as session:
        rows = session.execute(
            select(Delivery.id, Delivery.email)  # type: ignore[call-overload]
            .where(Delivery.issue_id == issue_id)
            .order_by(Delivery.id)
        ).all()
    return [(int(d), str(e)) for d, e in rows]


class Events:
    """Builds SendGrid events for the n-th recipient of an issue, and posts them signed."""

    def __init__(self, app: App, signer: Signer, issue_id: int) -> None:
        self.app, self.signer, self.issue_id = app, signer, issue_id
        self.rows = recipients(app, issue_id)
        self.client = TestClient(create_app(app))
        self.serial = 0

    def event(self, n: int, kind: str, event_id: str | None = None, **extra: Any) -> dict[str, Any]:
        self.serial += 1
        delivery_id, email = self.rows[n]
        return {
            "email": email,
            "timestamp": NOW_TS - 60 + self.serial,
            "event": kind,
            "sg_event_id": event_id or f"evt-{self.issue_id}-{self.serial}",
            "digest_delivery_id": str(delivery_id),
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


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {s: n for s, n in counts.items() if n and s != snapshot.SETTLED}


def assert_exact(app: App, issue_id: int) -> dict[str, int]:
    """The stored counts equal a recount of the deliveries; returns them."""
    with app.session() as session:
        kept = snapshot.stored(session, [issue_id])[issue_id]
        recount = snapshot.live(session, [issue_id])[issue_id]
    assert nonzero(kept) == nonzero(recount)
    return nonzero(kept)


def test_stored_counts_follow_every_event_exactly(app: App, signer: Signer) -> None:
    add_audience(app.engine, TU, 14)
    issue_id = make_issue(app.engine)
    assert send_issue(app, issue_id).issue_status == IssueStatus.SENT
    assert_exact(app, issue_id)  # taken when it became sent
    events = Events(app, signer, issue_id)
    e = events.event
    first = [
        *(e(n, "delivered") for n in range(6)),
        e(0, "open"),
        e(1, "open"),
        e(0, "click", url="https://news.example.com/a"),
        e(6, "bounce", type="bounce", status="5.1.1", reason="550 user unknown"),
        e(7, "delivered"),
        e(7, "bounce", type="blocked", reason="blocked by policy"),
        e(8, "dropped", reason="Bounced Address"),
        e(9, "deferred", response="421 busy"),
        e(10, "processed"),  # an accepted recipient: changes nothing
        e(11, "click", url="https://elsewhere.example.com/"),  # no delivered event: proves it
        e(12, "open", event_id="same-twice"),
        e(12, "open", event_id="same-twice"),  # a duplicate inside the batch
    ]
    answer = events.post(first)
    assert answer == {"received": 18, "applied": 16, "duplicates": 1, "ignored": 1}
    counts = assert_exact(app, issue_id)
    assert counts == {
        "accepted": 2,  # 10 and 13: no event proved more
        "delivered": 8,  # 0-5, and 11 and 12 by their click and open
        "bounced": 2,  # 6, and 7 after delivered
        "dropped": 1,
        "deferred": 1,
        "opened": 4,  # 0, 1, 11, 12
        "clicked": 2,  # 0, 11
    }

    # SendGrid retries the whole batch, and more events follow, some late or out of order.
    second = [
        *first[:8],
        e(6, "delivered"),  # after a hard bounce: no change
        e(9, "delivered"),  # deferred, then delivered
        e(1, "click", url="https://news.example.com/a"),  # opened before: clicked only
        e(0, "open"),  # opened before: nothing new to count
        e(13, "deferred"),
        e(13, "deferred"),
    ]
    answer = events.post(second)
    assert answer["duplicates"] == 8 and answer["applied"] == 6
    counts = assert_exact(app, issue_id)
    assert counts["delivered"] == 9 and counts["deferred"] == 1 and counts["accepted"] == 1
    assert (counts["opened"], counts["clicked"]) == (4, 3)
    assert events.post(second) == {"received": 14, "applied": 0, "duplicates": 14, "ignored": 0}
    assert assert_exact(app, issue_id) == counts

    # The readers give the same figures without the deliveries (as after retention).
    before = _read_everywhere(app, issue_id)
    with Session(app.engine) as session:
        session.execute(delete(Delivery).where(Delivery.issue_id == issue_id))  # type: ignore[arg-type]
        session.commit()
    assert _read_everywhere(app, issue_id) == before
    deliveries, stats, status, metrics = before
    assert deliveries == nonzero(snapshot.states_only(counts))
    assert stats["sent"] == 14 and stats["delivered"] == 9 and stats["bounced"] == 2
    assert (stats["opened"], stats["clicked"]) == (4, 3)
    assert status == deliveries and metrics == deliveries


def _read_everywhere(app: App, issue_id: int) -> tuple[Any, ...]:
    """What `digest deliveries`, `stats`, `status` and `/metrics` report for the issue."""
    with app.session() as session:
        deliveries = nonzero(snapshot.delivery_counts(session, issue_id))
        [issue] = [i for i in newsletter_stats(session, TU).issues if i.issue_id == issue_id]
    status = next(n for n in status_report(app)["newsletters"] if n["slug"] == TU)
    metrics: dict[str, int] = {}
    for line in TestClient(create_app(app)).get("/metrics").text.splitlines():
        prefix = f'digest_deliveries{{newsletter="{TU}",state="'
        if line.startswith(prefix):
            state, value = line[len(prefix) :].split('"} ')
            metrics[state] = int(value)
    return deliveries, vars(issue.counts), status["last_issue"]["deliveries"], metrics


def test_events_while_sending_are_counted_then_stay_counted(app: App, signer: Signer) -> None:
    add_audience(app.engine, TU, 10)
    issue_id = make_issue(app.engine)
    assert send_issue(app, issue_id, limit=5).issue_status == IssueStatus.SENDING
    events = Events(app, signer, issue_id)
    events.post([events.event(0, "delivered"), events.event(1, "open")])
    with app.session() as session:
        assert snapshot.delivery_counts(session, issue_id)["delivered"] == 2
    assert assert_exact(app, issue_id)["delivered"] == 2  # kept by the database while sending
    assert send_issue(app, issue_id).issue_status == IssueStatus.SENT
    assert assert_exact(app, issue_id)["delivered"] == 2
    events.post([events.event(2, "bounce", type="bounce"), events.event(7, "delivered")])
    counts = assert_exact(app, issue_id)
    assert (counts["delivered"], counts["bounced"], counts["accepted"]) == (3, 1, 6)


class _AnswerLost(OutboxTransport):
    """Writes every message, but the answer for batch number `lose` is lost: it is unknown."""

    def __init__(self, app: App, lose: int | None = 2) -> None:
        super().__init__(app.settings)
        self.batches = 0
        self.lose = lose
        self.mailed: list[str] = []

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results = super().send(batch)
        self.mailed += [r.email for r in results]
        self.batches += 1
        if self.batches != self.lose:
            return results
        return [SendResult(r.email, SendOutcome.UNKNOWN, None, "timed out") for r in results]


def test_events_settle_an_unknown_batch_and_retry_unknown_resends_only_the_rest(
    app: App, signer: Signer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_audience(app.engine, TU, 10)
    issue_id = make_issue(app.engine)
    report = send_issue(app, issue_id, transport=_AnswerLost(app))
    assert (report.accepted, report.unknown) == (5, 5)
    assert report.issue_status == IssueStatus.SENDING
    events = Events(app, signer, issue_id)
    unknown = list(range(5, 10))  # the second batch: deliveries in id order
    answer = events.post(
        [
            events.event(5, "delivered"),
            events.event(6, "processed"),
            events.event(7, "bounce", type="blocked", reason="try later"),
            events.event(0, "processed"),  # an accepted recipient: changes nothing
        ]
    )
    assert answer == {"received": 4, "applied": 3, "duplicates": 0, "ignored": 1}
    with app.session() as session:
        counts = snapshot.delivery_counts(session, issue_id)
        assert snapshot.settled(session, [issue_id]) == {issue_id: 3}
    assert (counts["unknown"], counts["delivered"], counts["bounced"]) == (2, 1, 1)
    assert counts["accepted"] == 6  # 5 of the first batch, and the processed one

    config = cli_config(tmp_path / "digest.toml", app.engine, monkeypatch)
    code, out, _ = digest(config, "deliveries", TU, "--json")
    assert code == 0 and json.loads(out)["settled_by_events"] == 3
    code, out, _ = digest(config, "deliveries", TU)
    assert "3 left unknown were since proved sent by provider events" in " ".join(out.split())

    again = _AnswerLost(app, lose=None)
    retried = send_issue(app, issue_id, retry_unknown=True, transport=again)
    assert retried.requeued == 2 and retried.issue_status == IssueStatus.SENT
    assert again.mailed == [events.rows[n][1] for n in unknown[3:]]  # only the unproven
    counts = assert_exact(app, issue_id)
    assert counts == {"accepted": 8, "delivered": 1, "bounced": 1}
    with app.session() as session:
        assert snapshot.settled(session, [issue_id]) == {issue_id: 3}  # kept when stored
        statuses = Counter(
            session.execute(select(Delivery.status).where(Delivery.issue_id == issue_id))  # type: ignore[call-overload]
            .scalars()
            .all()
        )
        assert statuses[DeliveryStatus.UNKNOWN] == 0
        assert session.get(Issue, issue_id).status == IssueStatus.SENT  # type: ignore[union-attr]
