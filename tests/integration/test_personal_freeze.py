"""A personal issue's freeze (#14): planned whole, then filled batch by batch by any sender."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import select

from digest.app import App
from digest.issues.assemble import build_issue
from digest.issues.variants import Plan
from digest.sending import freeze
from digest.sending.personal_freeze import PLANNED, PersonalFreezer
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    IssueVariant,
    SendBatch,
)
from tests.conftest import DEFAULT_NOW
from tests.integration.test_personal import (
    BRIEFING,
    CLIMATE,
    TURKEY,
    _articles,
    _reader,
    personal_app,
)

BATCH = 3


def _audience(app: App) -> dict[str, set[int]]:
    """7 readers of both topics, 4 of Turkey only, 2 of none (skipped), ids interleaved."""
    groups: dict[str, set[int]] = {"both": set(), "turkey": set(), "none": set()}
    # (b)oth, (t)urkey, (n)one, in this id order
    kinds = {"b": "both", "t": "turkey", "n": "none"}
    for n, kind in enumerate("btbnbtbtbnbtb"):
        topics = {"b": (TURKEY, CLIMATE), "t": (TURKEY,), "n": ()}[kind]
        groups[kinds[kind]].add(_reader(app, f"r{n}@example.com", *topics))
    return groups


def _sending(
    make_app: Callable[..., App], engine: Engine
) -> tuple[App, dict[str, set[int]], Issue]:
    """The personal issue built over `_audience` and started (batches of 3)."""
    app = personal_app(make_app, engine)
    _articles(app, DEFAULT_NOW)
    groups = _audience(app)
    return app, groups, _started(app)


def _started(app: App) -> Issue:
    issue = build_issue(app, BRIEFING, DEFAULT_NOW)
    with app.session() as session:
        assert freeze.start(
            session, issue_id=issue.id or 0, from_statuses=[issue.status], now=app.now()
        )
        session.commit()
        found = session.get(Issue, issue.id)
        assert found is not None and found.status == IssueStatus.SENDING
        return found


def _freezer(app: App, issue: Issue, told: list[tuple[int, Plan]]) -> PersonalFreezer:
    return PersonalFreezer(
        app, issue, app.settings.newsletter(BRIEFING), batch_size=BATCH, page_size=2 * BATCH,
        on_variant=lambda v, p: told.append((v, p)),
    )  # fmt: skip


def _state(app: App, issue_id: int) -> int | None:
    with app.session() as session:
        return freeze.freezing_after(session, issue_id)


def _rows(app: App) -> list[Delivery]:
    with app.session() as session:
        return list(session.exec(select(Delivery)).all())


def _check_done(app: App, groups: dict[str, set[int]]) -> None:
    """Each reader frozen once, in the variant of the topics they follow, in full batches."""
    largest, second = (TURKEY, CLIMATE), (TURKEY,)
    with app.session() as session:
        rows = session.exec(select(Delivery)).all()
        batches = session.exec(select(SendBatch)).all()
        variants = {v.id: v for v in session.exec(select(IssueVariant)).all()}
    assert Counter(r.subscriber_id for r in rows) == Counter(set().union(*groups.values()))
    by_topics: dict[tuple[str, ...] | None, set[int]] = {}
    for r in rows:
        topics = tuple(variants[r.variant_id].topics) if r.variant_id else None
        by_topics.setdefault(topics, set()).add(r.subscriber_id)
    assert by_topics == {largest: groups["both"], second: groups["turkey"], None: groups["none"]}
    skipped = [r for r in rows if r.variant_id is None]
    assert {(r.status, r.batch_id, r.error) for r in skipped} == {
        (DeliveryStatus.SKIPPED, None, "follows no topic")
    }
    assert all(b.status == BatchStatus.PENDING and b.members is None for b in batches)
    assert sorted(b.size for b in batches) == [1, 1, 3, 3, 3]
    members = Counter(r.batch_id for r in rows if r.batch_id)
    assert all(members[b.id] == b.size for b in batches)
    assert {tuple(v.topics): v.readers for v in variants.values()} == {largest: 7, second: 4}


def test_batches_are_planned_page_by_page_and_written_as_soon_as_full(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app, groups, issue = _sending(make_app, any_engine)
    told: list[tuple[int, Plan]] = []
    planner = _freezer(app, issue, told)
    assert planner.step() == 0  # page 1 (6 readers): planned, nothing written
    assert not _rows(app)
    with app.session() as session:
        planned = session.exec(select(SendBatch).order_by(SendBatch.id)).all()
    assert [(b.status, b.size) for b in planned] == [
        (BatchStatus.FILLING, 3), (BatchStatus.FILLING, 2), (BatchStatus.FILLING, 1)
    ]  # fmt: skip
    assert [tuple(p.topics) for _, p in told] == [(TURKEY, CLIMATE), (TURKEY,)]  # largest first
    assert planner.step() == 3  # the full batch is written while the plan goes on
    assert _state(app, issue.id or 0) not in (None, PLANNED)
    assert {r.batch_id for r in _rows(app)} == {planned[0].id}
    while planner.step() is not None:
        pass
    _check_done(app, groups)


def test_a_sender_that_did_not_plan_takes_turns_with_the_planner_each_reader_once(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app, groups, issue = _sending(make_app, any_engine)
    planner = _freezer(app, issue, [])
    assert planner.step() == 0  # page 1
    helper_told: list[tuple[int, Plan]] = []
    helper = _freezer(app, issue, helper_told)  # takes the open batches over from the database
    steps = [helper.step(), planner.step(), helper.step(), planner.step(), helper.step()]
    assert steps[0] == 0  # the helper plans page 2 after the planner's page 1
    assert steps[1] == 6  # the planner's turn: the two batches full by now written
    assert [tuple(p.topics) for _, p in helper_told][:2] == [(TURKEY, CLIMATE), (TURKEY,)]
    while helper.step() is not None or planner.step() is not None:
        pass
    assert _state(app, issue.id or 0) is None
    _check_done(app, groups)


def test_a_sender_that_loses_the_race_for_a_page_reloads_and_goes_on(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app, groups, issue = _sending(make_app, any_engine)
    first, second = _freezer(app, issue, []), _freezer(app, issue, [])
    assert first.step() == 0  # page 1 planned by the first
    assert second._plan_step(0) == 0  # read page 1 too, but its compare-and-set fails
    with app.session() as session:
        assert len(session.exec(select(SendBatch)).all()) == 3  # page 1 stored once
    while second.step() is not None:
        pass
    _check_done(app, groups)
