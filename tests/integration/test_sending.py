"""The delivery ledger through the outbox transport, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update
from sqlmodel import Session
from sqlmodel import select as sqlmodel_select

from digest.app import App
from digest.rendering.personalize import leaks
from digest.sending import ledger
from digest.sending.claimer import Claimer
from digest.sending.send import SendRefused, delivery_counts, send_issue, send_test
from digest.storage.models import BatchStatus, Delivery, Issue, IssueStatus, SendBatch
from digest.transports import OutgoingBatch, SendOutcome, SendResult
from digest.transports.outbox import OutboxTransport
from subscribers import unsubscribe
from subscribers.tokens import Purpose, verify_token
from tests.conftest import DEFAULT_NOW
from tests.support.sending import (
    add_audience,
    address,
    mailed,
    make_issue,
    outbox_messages,
    send_at_once,
)

SLUG = "turkey-unpacked"


def _app(make_app: Callable[..., App], engine: Engine, **delivery: object) -> App:
    return make_app(engine, delivery={"batch_size": 5, "concurrency": 2, **delivery})


def _outbox(app: App) -> Path:
    return Path(app.settings.delivery.outbox_dir)


def test_sends_each_subscriber_once_then_reports_nothing_left(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    first, last = add_audience(any_engine, SLUG, 23)
    issue_id = make_issue(any_engine)
    seen: list[tuple[int, int]] = []

    report = send_issue(app, issue_id, progress=lambda done, total: seen.append((done, total)))

    assert (report.accepted, report.failed, report.skipped, report.unknown) == (23, 0, 0, 0)
    assert report.pending == 0 and not report.already_done and report.batches == 5
    assert report.issue_status == IssueStatus.SENT
    assert seen[-1] == (23, 23) and len(seen) == 5
    assert mailed(app) == Counter(address(i) for i in range(first, last + 1))

    again = send_issue(app, issue_id)
    assert again.already_done and again.processed == 0 and again.accepted == 23
    assert len(outbox_messages(_outbox(app))) == 23
    with app.session() as session:
        assert delivery_counts(session, issue_id)["accepted"] == 23


def test_message_is_personalised_and_carries_list_headers(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    first, _ = add_audience(any_engine, SLUG, 3)
    issue_id = make_issue(any_engine)
    send_issue(app, issue_id)

    messages = {str(m["To"].addresses[0].addr_spec): m for m in outbox_messages(_outbox(app))}
    named = next(i for i in range(first, first + 3) if i % 3)
    message = messages[address(named)]
    assert message["Subject"] == f"Turkey this week: Reader {named}, the lira steadies"
    assert message["From"] == "Test Post <news@example.com>"
    assert message["List-Id"] == f'"Turkey Unpacked" <{SLUG}.news.example.com>'
    assert message["X-Digest-Issue"] == str(issue_id)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    header = str(message["List-Unsubscribe"])
    url = header[1 : header.index(">")]
    assert header.endswith(", <mailto:unsubscribe@example.com?subject=unsubscribe>")
    claims = verify_token(
        url.rsplit("/", 1)[1],
        app.settings.verification_keys(),
        purpose=Purpose.UNSUBSCRIBE,
        now=DEFAULT_NOW,
        max_age=None,
    )
    assert (claims.subscriber_id, claims.newsletter) == (named, SLUG)
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert url in text and url in html and f"Hi Reader {named}," in text
    assert leaks(text) == [] and leaks(html) == []
    nameless = messages[next(address(i) for i in range(first, first + 3) if i % 3 == 0)]
    assert "Hi there," in nameless.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    index = (_outbox(app) / SLUG / str(issue_id) / "index.jsonl").read_text().splitlines()
    assert len(index) == 3


def test_unsubscribed_mid_send_is_skipped_not_mailed(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine, concurrency=1)
    _, last = add_audience(any_engine, SLUG, 20)
    issue_id = make_issue(any_engine)
    leaver = last - 1  # in the last batch

    def unsubscribe_after_first_batch(done: int, total: int) -> None:
        if done == 5:
            with app.session() as session:
                unsubscribe(session, leaver, SLUG, now=app.now(), method="link")

    report = send_issue(app, issue_id, progress=unsubscribe_after_first_batch)

    assert (report.accepted, report.skipped) == (19, 1)
    assert address(leaver) not in mailed(app)
    assert report.issue_status == IssueStatus.SENT
    with Session(any_engine) as session:
        row = session.exec(sqlmodel_select(Delivery).where(Delivery.subscriber_id == leaver)).one()
        assert row.status == "skipped"


def test_limit_sends_a_canary_then_the_rest(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 12)
    issue_id = make_issue(any_engine)

    canary = send_issue(app, issue_id, limit=7)
    assert canary.processed == 7 and canary.accepted == 7 and canary.pending == 5
    assert canary.issue_status == IssueStatus.SENDING
    rest = send_issue(app, issue_id)
    assert rest.processed == 5 and rest.accepted == 12 and rest.issue_status == IssueStatus.SENT
    assert sum(mailed(app).values()) == 12


def test_dry_run_writes_nothing(any_engine: Engine, make_app: Callable[..., App]) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 4)
    issue_id = make_issue(any_engine)
    report = send_issue(app, issue_id, dry_run=True)
    assert report.dry_run and report.pending == 4 and report.accepted == 0
    with app.session() as session:
        assert session.get(Issue, issue_id).status == IssueStatus.APPROVED  # type: ignore[union-attr]
        assert delivery_counts(session, issue_id)["pending"] == 0
    assert not _outbox(app).exists()


def test_approval_and_lint_gates(any_engine: Engine, make_app: Callable[..., App]) -> None:
    add_audience(any_engine, SLUG, 2)
    strict = make_app(
        any_engine,
        newsletters=[{"slug": SLUG, "title": "Turkey Unpacked", "requires_approval": True}],
    )
    draft = make_issue(any_engine, status=IssueStatus.DRAFT)
    with pytest.raises(SendRefused, match="requires approval"):
        send_issue(strict, draft)

    app = _app(make_app, any_engine)
    assert send_issue(app, draft).accepted == 2  # no approval needed: a draft goes

    linted = make_issue(
        any_engine,
        period="2026-11-30T05:00:00+00:00",
        lint=[{"level": "error", "code": "no-unsubscribe", "message": "no link"}],
    )
    with pytest.raises(SendRefused, match="no-unsubscribe"):
        send_issue(app, linted)
    huge = make_issue(any_engine, period="2026-12-07T05:00:00+00:00", html="<p>x</p>" * 20_000)
    with pytest.raises(SendRefused, match="Gmail clips"):
        send_issue(app, huge)
    assert send_issue(app, huge, force=True).accepted == 2
    skipped = make_issue(any_engine, period="2026-12-14T05:00:00+00:00", status="skipped")
    with pytest.raises(SendRefused, match="skipped"):
        send_issue(app, skipped)


def test_batch_left_in_flight_by_a_dead_sender_is_unknown_until_retried(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 10)
    issue_id = make_issue(any_engine)
    send_issue(app, issue_id, limit=5)  # freezes all, sends the first batch
    dead = Claimer("elsewhere", "boot", 1, "1", "deadbeef")
    with app.session() as session:
        batch_id = ledger.claim(session, issue_id=issue_id, claimer=dead, now=app.now())
        assert batch_id is not None
        session.execute(
            update(SendBatch)
            .where(SendBatch.id == batch_id)  # type: ignore[arg-type]
            .values(claimed_at=DEFAULT_NOW.replace(year=2025))
        )

    report = send_issue(app, issue_id)
    assert report.found_unknown == [batch_id]
    assert (report.accepted, report.unknown, report.processed) == (5, 5, 0)
    assert report.issue_status == IssueStatus.SENDING  # not sent while some are unknown
    again = send_issue(app, issue_id)
    assert again.already_done and again.unknown == 5

    retried = send_issue(app, issue_id, retry_unknown=True)
    assert retried.requeued == 5 and retried.accepted == 10 and retried.unknown == 0
    assert retried.issue_status == IssueStatus.SENT
    assert sum(mailed(app).values()) == 10
    with app.session() as session:
        statuses = Counter(b.status for b in session.exec(select(SendBatch)).scalars())  # type: ignore[call-overload]
    assert statuses[BatchStatus.RETRIED] == 1


class _Refusing(OutboxTransport):
    """Refuses some addresses, as a provider would a bad mailbox."""

    def __init__(self, app: App, refused: set[str]) -> None:
        super().__init__(app.settings)
        self.refused = refused

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results = super().send(batch)
        return [
            SendResult(r.email, SendOutcome.FAILED, None, "550 no such mailbox")
            if r.email in self.refused
            else r
            for r in results
        ]


def test_failed_recipients_are_resent_only_with_retry_failed(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    first, _ = add_audience(any_engine, SLUG, 8)
    issue_id = make_issue(any_engine)
    bad = {address(first + 2), address(first + 6)}

    report = send_issue(app, issue_id, transport=_Refusing(app, bad))
    assert (report.accepted, report.failed) == (6, 2)
    assert report.errors == ["550 no such mailbox"]
    assert report.issue_status == IssueStatus.SENT  # failed is final until an operator retries
    assert send_issue(app, issue_id).already_done

    retried = send_issue(app, issue_id, retry_failed=True, transport=_Refusing(app, set()))
    assert retried.requeued == 2 and retried.processed == 2
    assert (retried.accepted, retried.failed) == (8, 0)
    assert retried.issue_status == IssueStatus.SENT


def test_two_senders_share_the_batches_and_send_each_once(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 60)
    issue_id = make_issue(any_engine)
    reports = send_at_once(app, issue_id, 3)

    assert sum(r.processed for r in reports) == 60
    counts = mailed(app)
    assert len(counts) == 60 and set(counts.values()) == {1}
    with app.session() as session:
        assert delivery_counts(session, issue_id)["accepted"] == 60
        assert session.get(Issue, issue_id).status == IssueStatus.SENT  # type: ignore[union-attr]


def test_send_test_goes_through_the_transport_without_a_ledger_row(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 2)
    issue_id = make_issue(any_engine)
    result = send_test(app, issue_id, "Editor@Example.com")
    assert result.outcome is SendOutcome.ACCEPTED
    (message,) = outbox_messages(_outbox(app) / SLUG / "tests")
    assert str(message["Subject"]).startswith("[TEST] Turkey this week")
    assert message["To"].addresses[0].addr_spec.lower() == "editor@example.com"
    with app.session() as session:
        assert sum(delivery_counts(session, issue_id).values()) == 0
        assert session.get(Issue, issue_id).status == IssueStatus.APPROVED  # type: ignore[union-attr]
    with pytest.raises(SendRefused, match="not a usable address"):
        send_test(app, issue_id, "not an address")


def test_only_readers_whose_consent_changed_are_checked_and_an_unnamed_change_checks_all(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    from subscribers import suppress
    from subscribers.audience import changed_since
    from subscribers.consent import record

    app = _app(make_app, any_engine, concurrency=1)
    first, last = add_audience(any_engine, SLUG, 20)
    issue_id = make_issue(any_engine)
    suppressed = last - 2  # in the last batch, suppressed (not unsubscribed) mid-send

    def changes_after_first_batch(done: int, total: int) -> None:
        if done != 5:
            return
        with app.session() as session:
            suppress(session, address(suppressed), "manual", now=app.now(), source="test")
            assert changed_since(session, app.now()) == {suppressed}
            # An event naming no subscriber: who changed can no longer be told.
            record(session, email=None, action="suppress", method="test", at=app.now())
            assert changed_since(session, app.now()) is None

    report = send_issue(app, issue_id, progress=changes_after_first_batch)

    assert (report.accepted, report.skipped) == (19, 1)
    assert address(suppressed) not in mailed(app) and address(first) in mailed(app)
