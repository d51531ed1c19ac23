"""Subscriber-local delivery on the sending side: batches cut per time zone, sends that take
only the zones asked for, and a stop between batches; on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlmodel import col

from digest.app import App
from digest.sending.send import send_issue
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    SendBatch,
)
from subscribers.models import Subscriber
from tests.conftest import base_config
from tests.support.sending import add_audience, address, mailed, make_issue

SLUG = "turkey-unpacked"
HOME = "Europe/Istanbul"
# Subscriber i's zone by i % 5; "" and an unknown name count in the newsletter's zone.
ZONES = ["Asia/Tokyo", "America/New_York", "", "Mars/Olympus", HOME]


def _local_app(make_app: Callable[..., App], engine: Engine, tmp_path: Path, **kw: Any) -> App:
    newsletters = base_config(tmp_path)["newsletters"]
    for newsletter in newsletters:
        newsletter["send_in_subscriber_timezone"] = newsletter["slug"] == SLUG
    delivery = {"batch_size": 3, "concurrency": 2, **kw}
    return make_app(engine, delivery=delivery, newsletters=newsletters)


def _audience_with_zones(engine: Engine, count: int) -> dict[int, str]:
    """`count` subscribers, each given a zone from ZONES; returns id → effective zone."""
    first, last = add_audience(engine, SLUG, count)
    effective = {}
    with engine.begin() as connection:
        for i in range(first, last + 1):
            given = ZONES[i % len(ZONES)]
            connection.execute(
                update(Subscriber).where(col(Subscriber.id) == i).values(timezone=given or None)
            )
            effective[i] = given if given in ("Asia/Tokyo", "America/New_York") else HOME
    return effective


def _batches(engine: Engine, issue_id: int) -> list[tuple[int, str | None, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(SendBatch.id, SendBatch.zone, SendBatch.size)  # type: ignore[call-overload]
            .where(SendBatch.issue_id == issue_id)
            .order_by(SendBatch.id)
        )
        return [tuple(row) for row in rows]


def _batch_of(engine: Engine, issue_id: int) -> dict[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(Delivery.subscriber_id, Delivery.batch_id).where(  # type: ignore[call-overload]
                Delivery.issue_id == issue_id
            )
        )
        return {int(s): int(b) for s, b in rows}


def test_the_freeze_cuts_batches_per_zone_and_each_send_takes_only_its_zones(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = _local_app(make_app, any_engine, tmp_path)
    zone_of = _audience_with_zones(any_engine, 31)
    issue_id = make_issue(any_engine)

    tokyo = send_issue(app, issue_id, timezones={"Asia/Tokyo"})

    expected = Counter(zone_of.values())
    batches = _batches(any_engine, issue_id)
    members = _batch_of(any_engine, issue_id)
    zone_by_batch = {batch_id: zone for batch_id, zone, _ in batches}
    # Every recipient in a batch of their own zone; the newsletter's zone is written out too.
    assert {s: zone_by_batch[b] for s, b in members.items()} == zone_of
    for zone, people in expected.items():
        sizes = sorted((size for _, z, size in batches if z == zone), reverse=True)
        assert sum(sizes) == people and all(size <= 3 for size in sizes)
        assert len(sizes) == -(-people // 3)  # no batch is split more than it has to be
    tokyo_people = {address(i) for i, z in zone_of.items() if z == "Asia/Tokyo"}
    assert set(mailed(app)) == tokyo_people
    assert (tokyo.accepted, tokyo.pending) == (len(tokyo_people), 31 - len(tokyo_people))
    assert tokyo.issue_status == IssueStatus.SENDING

    again = send_issue(app, issue_id, timezones={"Asia/Tokyo"})
    assert again.already_done and again.processed == 0

    send_issue(app, issue_id, timezones={HOME, "America/New_York"})
    assert mailed(app) == Counter(address(i) for i in zone_of)  # everyone, once
    with app.session() as session:
        assert session.get_one(Issue, issue_id).status == IssueStatus.SENT


def test_without_zones_a_local_newsletter_sends_to_everyone(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    """`digest send SLUG` by hand: the operator's word, every zone at once."""
    app = _local_app(make_app, any_engine, tmp_path)
    zone_of = _audience_with_zones(any_engine, 12)
    issue_id = make_issue(any_engine)
    report = send_issue(app, issue_id)
    assert report.accepted == 12 and report.issue_status == IssueStatus.SENT
    assert mailed(app) == Counter(address(i) for i in zone_of)
    assert {zone for _, zone, _ in _batches(any_engine, issue_id)} == set(zone_of.values())


def test_a_newsletter_not_sent_in_local_time_cuts_batches_without_a_zone(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, delivery={"batch_size": 4})
    _audience_with_zones(any_engine, 10)
    issue_id = make_issue(any_engine)
    report = send_issue(app, issue_id, timezones={HOME})
    # Batches without a zone count in the newsletter's: asked for its zone, everyone goes.
    assert report.accepted == 10
    assert [(zone, size) for _, zone, size in _batches(any_engine, issue_id)] == [
        (None, 4),
        (None, 4),
        (None, 2),
    ]


def test_a_limit_split_and_a_retry_keep_the_batches_zone(
    any_engine: Engine, make_app: Callable[..., App], tmp_path: Path
) -> None:
    app = _local_app(make_app, any_engine, tmp_path, batch_size=4, concurrency=1)
    zone_of = _audience_with_zones(any_engine, 40)
    issue_id = make_issue(any_engine)
    canary = send_issue(app, issue_id, timezones={"America/New_York"}, limit=1)
    assert canary.processed == 1
    # The canary's batch was split: its tail is a new batch of the same zone.
    assert all(zone is not None for _, zone, _ in _batches(any_engine, issue_id))
    with app.session() as session:  # the provider refused one New York batch
        failed = session.execute(
            select(SendBatch.id)  # type: ignore[call-overload]
            .where(SendBatch.issue_id == issue_id, SendBatch.zone == "America/New_York")
            .where(SendBatch.status == BatchStatus.PENDING)
            .limit(1)
        ).scalar_one()
        session.execute(
            update(SendBatch).where(col(SendBatch.id) == failed).values(status=BatchStatus.FAILED)
        )
        session.execute(
            update(Delivery)
            .where(col(Delivery.batch_id) == failed)
            .values(status=DeliveryStatus.FAILED)
        )
    send_issue(app, issue_id, timezones={"America/New_York"})
    retried = send_issue(app, issue_id, timezones={"America/New_York"}, retry_failed=True)
    assert retried.requeued > 0
    new_york = {address(i) for i, z in zone_of.items() if z == "America/New_York"}
    assert mailed(app) == Counter(new_york)  # each New Yorker once, nobody else yet
    zones = {zone for _, zone, _ in _batches(any_engine, issue_id)}
    assert zones == {"Asia/Tokyo", "America/New_York", HOME}


def test_a_stop_ends_the_send_between_batches_and_the_next_run_resumes(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = make_app(any_engine, delivery={"batch_size": 2, "concurrency": 1})
    first, last = add_audience(any_engine, SLUG, 9)
    issue_id = make_issue(any_engine)
    stop = threading.Event()

    stopped = send_issue(app, issue_id, stop=stop, progress=lambda done, total: stop.set())
    assert (stopped.accepted, stopped.pending, stopped.batches) == (2, 7, 1)
    assert stopped.issue_status == IssueStatus.SENDING

    already = send_issue(app, issue_id, stop=stop)  # stop still set: nothing is claimed
    assert already.processed == 0 and already.pending == 7

    rest = send_issue(app, issue_id, stop=threading.Event())
    assert rest.accepted == 9 and rest.issue_status == IssueStatus.SENT
    assert mailed(app) == Counter(address(i) for i in range(first, last + 1))
