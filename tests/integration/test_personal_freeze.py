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


def test_the_plan_is_stored_whole_then_any_sender_fills_it_each_reader_once(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)  # batches of 3
    _articles(app, DEFAULT_NOW)
    groups = _audience(app)
    issue = _started(app)
    planner_told: list[tuple[int, Plan]] = []
    planner = _freezer(app, issue, planner_told)
    while _state(app, issue.id or 0) != PLANNED:  # pages of 6 readers, nothing written yet
        assert planner.step() == 0
        with app.session() as session:
            assert not session.exec(select(Delivery)).all()

    with app.session() as session:
        batches = session.exec(select(SendBatch).order_by(SendBatch.id)).all()
        variants = {v.id: v for v in session.exec(select(IssueVariant)).all()}
    assert all(b.status == BatchStatus.FILLING and b.members for b in batches)
    sizes = [(b.variant_id and tuple(variants[b.variant_id].topics), b.size) for b in batches]
    largest, second = (TURKEY, CLIMATE), (TURKEY,)
    assert sizes == [(largest, 3), (largest, 3), (largest, 1), (second, 3), (second, 1), (None, 2)]
    assert [tuple(p.topics) for _, p in planner_told] == [largest, second]  # largest first

    # A sender that did not plan fills too, taking turns with the planner: two batches a step.
    helper_told: list[tuple[int, Plan]] = []
    helper = _freezer(app, issue, helper_told)
    frozen = [helper.step(), planner.step(), helper.step(), planner.step()]
    assert frozen == [6, 4, 3, None]  # the last: nothing planned is left, the freeze ends
    assert [tuple(p.topics) for _, p in helper_told] == [largest, second]
    assert _state(app, issue.id or 0) is None and helper.step() is None

    with app.session() as session:
        rows = session.exec(select(Delivery)).all()
        batches = session.exec(select(SendBatch)).all()
        variants = {v.id: v for v in session.exec(select(IssueVariant)).all()}
    assert Counter(r.subscriber_id for r in rows) == Counter(set().union(*groups.values()))
    by_topics = {
        tuple(variants[r.variant_id].topics) if r.variant_id else None: set() for r in rows
    }
    for r in rows:
        by_topics[tuple(variants[r.variant_id].topics) if r.variant_id else None].add(
            r.subscriber_id
        )
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


def test_a_sender_that_loses_the_race_to_store_its_plan_fills_the_winners(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    app = personal_app(make_app, any_engine)  # batches of 3
    _articles(app, DEFAULT_NOW)
    groups = _audience(app)
    issue = _started(app)
    first, second = _freezer(app, issue, []), _freezer(app, issue, [])
    # Both read two pages of three; then the first reads the last and stores its plan, while
    # the second, which saw the issue unplanned, reads it too.
    for _ in range(2):
        assert first.step() == 0 and second.step() == 0
    assert first.step() == 0 and _state(app, issue.id or 0) == PLANNED
    assert second._plan_step(0) == 0  # its compare-and-set fails: its plan is dropped
    with app.session() as session:
        planned = session.exec(select(SendBatch)).all()
    assert len(planned) == 6
    while second.step() is not None:
        pass
    with app.session() as session:
        rows = session.exec(select(Delivery)).all()
    assert sorted(r.subscriber_id for r in rows) == sorted(set().union(*groups.values()))
