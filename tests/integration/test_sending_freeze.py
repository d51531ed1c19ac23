"""The audience is frozen page by page while the pages already frozen are sent; on SQLite and
PostgreSQL, with pages of a few recipients so that every send spans many pages."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from digest.app import App
from digest.sending import freeze
from digest.sending.send import send_issue
from digest.storage.models import Delivery, Issue, IssueStatus
from tests.support.sending import (
    add_audience,
    address,
    mailed,
    make_issue,
    send_at_once,
)

SLUG = "turkey-unpacked"


def _app(make_app: Callable[..., App], engine: Engine, **delivery: object) -> App:
    """Batches of 2, pages of 6 (3 batches): every send spans several pages."""
    delivery = {"batch_size": 2, "concurrency": 2, "freeze_page": 6, **delivery}
    return make_app(engine, delivery=delivery)


def _frozen(engine: Engine, issue_id: int) -> int:
    with Session(engine) as session:
        statement = select(func.count()).where(Delivery.issue_id == issue_id)  # type: ignore[arg-type]
        return int(session.execute(statement).scalar_one())


def _issue(engine: Engine, issue_id: int) -> Issue:
    with Session(engine) as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        return issue


def test_sending_starts_before_the_freeze_ends_and_everyone_gets_one(
    any_engine: Engine, make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = _app(make_app, any_engine, concurrency=1, freeze_page=2)  # a batch a page: 21 pages
    first, last = add_audience(any_engine, SLUG, 41)
    issue_id = make_issue(any_engine)
    first_batch_sent = threading.Event()
    pages: list[tuple[int | None, bool]] = []  # (recipients frozen, a batch had been sent)
    real_page = freeze.freeze_next_page

    def watched_page(session: Session, **kwargs: Any) -> int | None:
        pages.append((real_page(session, **kwargs), first_batch_sent.is_set()))
        return pages[-1][0]

    monkeypatch.setattr(freeze, "freeze_next_page", watched_page)
    report = send_issue(app, issue_id, progress=lambda done, total: first_batch_sent.set())

    assert [rows for rows, _ in pages] == [2] * 20 + [1, None]
    assert pages[-2][1]  # the last page was frozen after the first batch had gone out
    assert report.accepted == 41 and report.pending == 0
    assert report.issue_status == IssueStatus.SENT
    assert _issue(any_engine, issue_id).freezing_after is None
    assert mailed(app) == Counter(address(i) for i in range(first, last + 1))


def test_a_freeze_cut_short_is_taken_up_where_it_stopped(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    """As after a crash between two pages: two pages committed, nothing sent."""
    app = _app(make_app, any_engine)
    first, last = add_audience(any_engine, SLUG, 20)
    issue_id = make_issue(any_engine)
    with app.session() as session:
        assert freeze.start(session, issue_id=issue_id, from_statuses=["approved"], now=app.now())
    for _ in range(2):
        with app.session() as session:
            assert freeze.freeze_next_page(
                session,
                issue_id=issue_id,
                newsletter=SLUG,
                batch_size=2,
                now=app.now(),
                page_size=6,
            )
    assert _frozen(any_engine, issue_id) == 12
    assert _issue(any_engine, issue_id).freezing_after == first + 11

    report = send_issue(app, issue_id)

    assert report.accepted == 20 and report.issue_status == IssueStatus.SENT
    assert mailed(app) == Counter(address(i) for i in range(first, last + 1))


def test_a_canary_run_leaves_the_rest_of_the_freeze_to_the_next_run(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine, concurrency=1)
    add_audience(any_engine, SLUG, 30)
    issue_id = make_issue(any_engine)

    canary = send_issue(app, issue_id, limit=2)

    assert canary.accepted == 2
    assert canary.pending == 28  # frozen and pending, or not frozen yet: all still to send
    assert _issue(any_engine, issue_id).status == IssueStatus.SENDING
    rest = send_issue(app, issue_id)
    assert rest.accepted == 30 and rest.pending == 0 and rest.issue_status == IssueStatus.SENT
    assert sum(mailed(app).values()) == len(mailed(app)) == 30


def test_senders_that_start_together_take_turns_freezing_and_send_each_once(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    first, last = add_audience(any_engine, SLUG, 57)
    issue_id = make_issue(any_engine)
    with app.session() as session:  # started, as by a sender that died before its first page
        freeze.start(session, issue_id=issue_id, from_statuses=["approved"], now=app.now())
    reports = send_at_once(app, issue_id, 3)

    assert sum(r.processed for r in reports) == 57
    assert mailed(app) == Counter(address(i) for i in range(first, last + 1))
    assert _frozen(any_engine, issue_id) == 57
    assert _issue(any_engine, issue_id).status == IssueStatus.SENT


def test_someone_who_subscribes_during_the_freeze_past_its_pages_is_included(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    add_audience(any_engine, SLUG, 10)
    issue_id = make_issue(any_engine)
    with app.session() as session:
        freeze.start(session, issue_id=issue_id, from_statuses=["approved"], now=app.now())
    with app.session() as session:
        freeze.freeze_next_page(
            session, issue_id=issue_id, newsletter=SLUG, batch_size=2, now=app.now(), page_size=6
        )
    newcomer, _ = add_audience(any_engine, SLUG, 1)
    report = send_issue(app, issue_id)
    assert report.accepted == 11
    assert address(newcomer) in mailed(app)


def test_an_issue_with_nobody_to_mail_is_frozen_and_sent(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = _app(make_app, any_engine)
    issue_id = make_issue(any_engine)
    report = send_issue(app, issue_id)
    assert (report.accepted, report.pending, report.total) == (0, 0, 0)
    issue = _issue(any_engine, issue_id)
    assert issue.status == IssueStatus.SENT and issue.freezing_after is None
