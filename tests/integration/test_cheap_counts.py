"""An issue's counts while it is still sending are the database's kept counts, and they are
exactly what a scan of its deliveries says (#15: cheap reads during a large send).

A real send through the freeze, the ledger and the outbox transport is stopped mid-way with
everything a send can leave behind: an accepted batch whose recipients answered one by one
(one refused, one given its own message id), a batch whose answer was lost (unknown), a batch
sent row by row (SMTP's way) with one refused and one skipped (unsubscribed since the freeze),
a batch held by a sender that died with a row in flight, pending batches, and signed webhook
events on all of them (delivered, open, click, bounce, dropped, deferred, and processed /
delivered settling unknown recipients). At each step the kept counts (`snapshot.stored`) must
equal the old live scan (`snapshot.live`, `counts.delivery_counts`), and `/metrics`, `stats`
and `status` must report them; on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlmodel import Session

from digest.app import App
from digest.ops.stats import newsletter_stats
from digest.ops.status import status_report
from digest.sending import ledger, snapshot, stream
from digest.sending.claimer import Claimer
from digest.sending.counts import accepted, delivery_counts
from digest.sending.send import send_issue
from digest.storage.models import BatchStatus, Delivery, IssueStatus, SendBatch
from digest.transports import OutgoingBatch, SendOutcome, SendResult
from digest.transports.outbox import OutboxTransport
from digest.web.server import create_app
from subscribers.membership import unsubscribe
from tests.integration.test_event_counts import Events
from tests.integration.test_sendgrid_webhook import Signer
from tests.support.sending import add_audience, make_issue, webhook_app

TU = "turkey-unpacked"
_B = SendBatch.__table__  # type: ignore[attr-defined]


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def app(any_engine: Engine, make_app: Callable[..., App], signer: Signer) -> App:
    return webhook_app(make_app, any_engine, signer.public_b64)


class _Answers(OutboxTransport):
    """Writes every message; batch 1: its 2nd recipient refused, its 3rd sent under a message id
    of its own; batch 2: the answer is lost (unknown)."""

    def __init__(self, app: App) -> None:
        super().__init__(app.settings)
        self.batches = 0

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results = super().send(batch)
        self.batches += 1
        if self.batches == 1:
            results[1] = SendResult(results[1].email, SendOutcome.FAILED, None, "550 no")
            results[2] = SendResult(results[2].email, SendOutcome.ACCEPTED, "split-id", None)
        elif self.batches == 2:
            results = [SendResult(r.email, SendOutcome.UNKNOWN, None, "lost") for r in results]
        return results


class _OneByOne(OutboxTransport):
    """Answers per message, as SMTP does (`digest.sending.stream`); the 2nd message refused."""

    confirms_each = True

    def __init__(self, app: App) -> None:
        super().__init__(app.settings)
        self.sent = 0

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results = super().send(batch)
        self.sent += 1
        if self.sent == 2:
            return [SendResult(results[0].email, SendOutcome.FAILED, None, "554 refused")]
        return results


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {s: n for s, n in counts.items() if n and s != snapshot.SETTLED}


def assert_exact(app: App, issue_id: int) -> dict[str, int]:
    """Kept counts == the live scan, and every reader says the same; returns the states."""
    with app.session() as session:
        kept = snapshot.stored(session, [issue_id])[issue_id]
        scan = snapshot.live(session, [issue_id])[issue_id]
        rule = delivery_counts(session, issue_id)  # the effective-status rule's own count
        read = snapshot.delivery_counts(session, issue_id)
        [stats] = [i for i in newsletter_stats(session, TU).issues if i.issue_id == issue_id]
    assert nonzero(kept) == nonzero(scan)
    states = nonzero(snapshot.states_only(scan))
    assert nonzero(rule) == nonzero(read) == states
    assert stats.counts.recipients == sum(states.values())
    assert stats.counts.sent == accepted(states)
    assert stats.counts.delivered == states.get("delivered", 0)
    assert stats.counts.bounced == states.get("bounced", 0)
    assert (stats.counts.opened, stats.counts.clicked) == (scan["opened"], scan["clicked"])
    status = next(n for n in status_report(app)["newsletters"] if n["slug"] == TU)
    assert status["last_issue"]["deliveries"] == states
    assert _metrics(app) == states
    return states


def _metrics(app: App) -> dict[str, int]:
    found: dict[str, int] = {}
    prefix = f'digest_deliveries{{newsletter="{TU}",state="'
    for line in TestClient(create_app(app)).get("/metrics").text.splitlines():
        if line.startswith(prefix):
            state, value = line[len(prefix) :].split('"} ')
            found[state] = int(value)
    return found


def _batches(app: App, issue_id: int) -> list[tuple[int, str]]:
    with Session(app.engine) as session:
        rows = session.execute(
            select(_B.c.id, _B.c.status).where(_B.c.issue_id == issue_id).order_by(_B.c.id)
        ).all()
    return [(int(b), str(s)) for b, s in rows]


def test_counts_while_sending_equal_the_scan_of_the_deliveries(app: App, signer: Signer) -> None:
    add_audience(app.engine, TU, 40)
    issue_id = make_issue(app.engine)
    report = send_issue(app, issue_id, limit=10, transport=_Answers(app))
    assert (report.accepted, report.failed, report.unknown) == (4, 1, 5)
    assert report.issue_status == IssueStatus.SENDING
    assert assert_exact(app, issue_id) == {"pending": 30, "accepted": 4, "failed": 1, "unknown": 5}
    events = Events(app, signer, issue_id)  # deliveries in id order: batch n holds 5n … 5n+4

    with app.session() as session:  # reader 12 (third batch) leaves after the freeze
        subscriber = session.get(Delivery, events.rows[12][0]).subscriber_id  # type: ignore[union-attr]
        assert unsubscribe(session, subscriber, TU, now=app.now(), method="test")
    report = send_issue(app, issue_id, limit=5, transport=_OneByOne(app))
    assert (report.accepted, report.failed, report.skipped) == (7, 2, 1)
    counts = assert_exact(app, issue_id)
    assert counts == {"pending": 25, "accepted": 7, "failed": 2, "skipped": 1, "unknown": 5}

    # A sender sending the fourth batch row by row dies with its first row in flight.
    dead = Claimer("elsewhere", "boot", 1, "start", "run")
    with app.engine.begin() as db:
        batch_id = ledger.claim(db, issue_id=issue_id, claimer=dead, now=app.now())
        assert batch_id is not None
        stream.hand_over(
            db, batch_id=batch_id, delivery_id=events.rows[15][0], claimer=dead, now=app.now()
        )
    assert assert_exact(app, issue_id)["sending"] == 5

    e = events.event
    answer = events.post(
        [
            e(0, "delivered"),
            e(3, "open"),
            e(4, "click", url="https://news.example.com/a"),
            e(1, "dropped", reason="Bounced Address"),  # refused on its own row, then dropped
            e(2, "delivered"),  # its own message id
            e(5, "delivered"),  # unknown batch: settled
            e(6, "processed"),  # unknown batch: settled as accepted
            e(7, "bounce", type="bounce", reason="550 unknown user"),
            e(10, "deferred"),
            e(10, "delivered"),
            e(13, "bounce", type="blocked", reason="blocked"),  # sent row by row
            e(16, "delivered"),  # a row of the dead sender's batch, never handed over
        ]
    )
    assert answer["applied"] == 12
    counts = assert_exact(app, issue_id)
    assert (counts["unknown"], counts["delivered"], counts["sending"]) == (2, 7, 4)

    with app.session() as session:  # the dead sender's batch: its row in flight → unknown
        stale = ledger.release_stale(
            session, issue_id=issue_id, me=Claimer.new(), now=app.now(), lease=timedelta(0)
        )
        session.commit()
    assert stale == [batch_id]
    assert assert_exact(app, issue_id)["unknown"] == 3

    # Every batch status says what `counts.BATCH_SPEAKS_AS` says (the triggers' copy of it).
    last, _ = _batches(app, issue_id)[-1]
    for status in [*BatchStatus, BatchStatus.PENDING]:
        with app.engine.begin() as db:
            db.execute(update(_B).where(_B.c.id == last).values(status=status))
        assert_exact(app, issue_id)

    # The rest, then what was unknown, then what failed: exact all along, and once sent.
    assert send_issue(app, issue_id).issue_status == IssueStatus.SENDING  # 3 still unknown
    assert_exact(app, issue_id)
    retried = send_issue(app, issue_id, retry_unknown=True)
    assert retried.issue_status == IssueStatus.SENT
    assert_exact(app, issue_id)
    events.post([e(30, "delivered"), e(31, "open")])
    assert_exact(app, issue_id)
    retried = send_issue(app, issue_id, retry_failed=True)
    assert retried.requeued == 1 and retried.issue_status == IssueStatus.SENT  # 1 was dropped
    counts = assert_exact(app, issue_id)
    assert "failed" not in counts and sum(counts.values()) == 40


def test_an_issue_sending_when_0012_ran_is_counted_by_it(app: App) -> None:
    """The migration counts the deliveries of issues that had no stored counts."""
    from digest.storage.db import alembic_config

    add_audience(app.engine, TU, 12)
    issue_id = make_issue(app.engine)
    assert send_issue(app, issue_id, limit=5).issue_status == IssueStatus.SENDING
    from alembic import command

    command.downgrade(alembic_config(app.engine), "0011")
    with app.session() as session:
        assert snapshot.stored(session, [issue_id]) == {}  # read live before 0012
        before: dict[str, Any] = snapshot.delivery_counts(session, issue_id)
    command.upgrade(alembic_config(app.engine), "head")
    assert nonzero(assert_exact(app, issue_id)) == nonzero(before)
    assert send_issue(app, issue_id).issue_status == IssueStatus.SENT
    assert assert_exact(app, issue_id) == {"accepted": 12}
