"""One scheduler tick at explicit moments, with the real build and send, on SQLite and
PostgreSQL.

turkey-unpacked fires daily at 08:00 Istanbul (05:00 UTC); articles are seeded every 6 hours
around 2026-11-30 (`seed_articles` stands in for ingestion); outbox transport, the sample
subscribers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from digest.app import App, fixed_clock
from digest.issues import editorial
from digest.scheduling.pipeline import SendRequest
from digest.scheduling.tick import run_due
from digest.sending.send import send_issue
from digest.storage.db import make_engine
from digest.storage.models import Delivery, Issue, IssueStatus, RunOutcome
from subscribers import count_audience
from subscribers.models import Subscriber
from tests.support.scheduling import (
    FakeReport,
    RecordingPipeline,
    count,
    issues_of,
    load_sample_subscribers,
    runs_of,
    seeded_pipeline,
)

TURKEY = "turkey-unpacked"
MONDAY = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # 08:00 in Istanbul
SUNDAY = MONDAY - timedelta(days=1)


@pytest.fixture
def tick(any_engine: Engine, make_app: Callable[..., App]) -> Callable[..., Any]:
    """tick(moment, pipeline=None, **config) → the TickReport of run_due at that moment."""
    state: dict[str, Any] = {"overrides": {}}

    def run(moment: datetime, pipeline: RecordingPipeline | None = None, **overrides: Any) -> Any:
        state["overrides"] = overrides or state["overrides"]
        app = make_app(any_engine, now=moment, **state["overrides"])
        if not state.get("subscribers"):
            state["subscribers"] = load_sample_subscribers(app)
        state["app"] = app
        return run_due(app, (pipeline or RecordingPipeline()).pipeline())

    run.state = state  # type: ignore[attr-defined]
    return run


def _audience(engine: Engine) -> int:
    with Session(engine) as session:
        return count_audience(session, TURKEY)


def _outbox(app: App) -> list[Path]:
    return sorted(Path(app.settings.delivery.outbox_dir).rglob("*.eml"))


def _turkey_outcomes(engine: Engine) -> list[tuple[str, str]]:
    return [(r.period[:13], r.outcome) for r in runs_of(engine, TURKEY)]


def test_a_due_period_fires_once_and_a_second_tick_does_nothing(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    pipeline = RecordingPipeline()
    first = tick(MONDAY + timedelta(seconds=30), pipeline)
    assert first.ingest.startswith("ran")
    [result] = [r for r in first.results if r.newsletter == TURKEY]
    assert (result.action, result.outcome) == ("fired", RunOutcome.SENT)

    again = tick(MONDAY + timedelta(seconds=30), pipeline)
    later = tick(MONDAY + timedelta(minutes=15), pipeline)
    assert again.results == [] and later.results == []
    assert pipeline.builds == [(TURKEY, MONDAY)]
    [issue] = issues_of(any_engine, TURKEY)
    assert issue.status == IssueStatus.SENT and issue.period == MONDAY.isoformat()
    audience = _audience(any_engine)
    assert audience > 0
    assert count(any_engine, Delivery) == audience
    assert len(_outbox(tick.state["app"])) == audience  # type: ignore[attr-defined]


def test_catch_up_within_grace_sends_once(any_engine: Engine, tick: Callable[..., Any]) -> None:
    tick(SUNDAY + timedelta(minutes=1))  # the scheduler ran on Sunday, then went down
    pipeline = RecordingPipeline()
    back = tick(MONDAY + timedelta(hours=2), pipeline)  # up again two hours late
    assert [(r.action, r.outcome) for r in back.results] == [("fired", RunOutcome.SENT)]
    tick(MONDAY + timedelta(hours=2, minutes=15), pipeline)
    tick(MONDAY + timedelta(hours=5), pipeline)
    assert len(pipeline.sends) == 1
    assert _turkey_outcomes(any_engine) == [
        ("2026-11-29T05", RunOutcome.SENT),
        ("2026-11-30T05", RunOutcome.SENT),
    ]
    issues = issues_of(any_engine, TURKEY)
    assert [i.status for i in issues] == [IssueStatus.SENT, IssueStatus.SENT]
    sunday_audience = _audience(any_engine)
    assert count(any_engine, Delivery) == 2 * sunday_audience


def test_catch_up_beyond_grace_sends_nothing_and_records_missed(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    tick(SUNDAY + timedelta(minutes=1))
    deliveries_before = count(any_engine, Delivery)
    pipeline = RecordingPipeline()
    late = tick(MONDAY + timedelta(hours=7), pipeline)  # 7 h late, the grace is 6 h
    assert [(r.action, r.outcome) for r in late.results] == [("recorded", RunOutcome.MISSED)]
    assert "catch-up grace (6h)" in late.results[0].detail
    assert pipeline.builds == [] and pipeline.sends == []
    assert len(issues_of(any_engine, TURKEY)) == 1  # Sunday's only
    assert count(any_engine, Delivery) == deliveries_before
    assert tick(MONDAY + timedelta(hours=8)).results == []  # missed stays missed


def test_periods_missed_within_grace_are_coalesced_into_one_send(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    hourly = {"newsletters": [{"slug": TURKEY, "title": "T", "schedule": "0 * * * *",
                               "timezone": "Europe/Istanbul", "window": "8d",
                               "topic": {"tags": ["Turkey"]}}]}  # fmt: skip
    tick(MONDAY + timedelta(minutes=5), **hourly)
    pipeline = RecordingPipeline()
    back = tick(MONDAY + timedelta(hours=8, minutes=30), pipeline, **hourly)
    outcomes = [(r.period[11:13], r.outcome) for r in back.results]
    assert outcomes == [
        ("06", RunOutcome.MISSED),  # 7.5 h late: beyond the grace
        ("07", RunOutcome.MISSED),  # 6.5 h late: beyond the grace
        ("08", RunOutcome.MISSED),  # within the grace: coalesced, like the next four
        ("09", RunOutcome.MISSED),
        ("10", RunOutcome.MISSED),
        ("11", RunOutcome.MISSED),
        ("12", RunOutcome.MISSED),
        ("13", RunOutcome.SENT),  # the one catch-up send
    ]
    assert "catch-up grace (6h)" in back.results[1].detail
    assert "coalesced into the catch-up of 2026-11-30T13:00" in back.results[2].detail
    assert len(pipeline.sends) == 1
    assert len(issues_of(any_engine, TURKEY)) == 2


def test_too_few_articles_is_skipped_with_the_reason(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    newsletters = [{"slug": TURKEY, "title": "T", "schedule": "0 8 * * *", "min_articles": 50,
                    "timezone": "Europe/Istanbul", "topic": {"tags": ["Turkey"]}}]  # fmt: skip
    pipeline = RecordingPipeline()
    report = tick(MONDAY + timedelta(minutes=1), pipeline, newsletters=newsletters)
    [result] = report.results
    assert result.outcome == RunOutcome.SKIPPED and "the minimum is 50" in result.detail
    assert pipeline.sends == []
    assert tick(MONDAY + timedelta(minutes=20), pipeline).results == []


def _approval_config(deadline: str | None = None) -> dict[str, Any]:
    newsletter: dict[str, Any] = {
        "slug": TURKEY,
        "title": "T",
        "schedule": "0 8 * * *",
        "timezone": "Europe/Istanbul",
        "window": "8d",
        "requires_approval": True,
        "topic": {"tags": ["Turkey"]},
    }
    if deadline:
        newsletter["approval_deadline"] = deadline
    return {"newsletters": [newsletter]}


def test_approval_builds_the_draft_on_time_and_sends_once_approved(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    pipeline = RecordingPipeline()
    fired = tick(MONDAY + timedelta(minutes=1), pipeline, **_approval_config())
    [result] = fired.results
    assert result.outcome == RunOutcome.AWAITING_APPROVAL
    [draft] = issues_of(any_engine, TURKEY)
    assert draft.status == IssueStatus.DRAFT and draft.html
    waiting = tick(MONDAY + timedelta(minutes=30), pipeline)
    assert [(r.action, r.outcome) for r in waiting.results] == [
        ("checked", RunOutcome.AWAITING_APPROVAL)
    ]
    assert pipeline.sends == []

    app = tick.state["app"]  # type: ignore[attr-defined]
    editorial.approve(app, draft.id or 0, by="editor@example.com")
    sent = tick(MONDAY + timedelta(hours=1), pipeline)
    assert [(r.action, r.outcome) for r in sent.results] == [("resumed", RunOutcome.SENT)]
    assert tick(MONDAY + timedelta(hours=1, minutes=15), pipeline).results == []
    assert len(pipeline.sends) == 1
    assert [i.status for i in issues_of(any_engine, TURKEY)] == [IssueStatus.SENT]


def test_an_unapproved_draft_past_its_deadline_is_missed_not_sent(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    pipeline = RecordingPipeline()
    tick(MONDAY + timedelta(minutes=1), pipeline, **_approval_config("2h"))
    late = tick(MONDAY + timedelta(hours=2, minutes=15), pipeline)
    [result] = late.results
    assert result.outcome == RunOutcome.MISSED
    assert "not approved within 2h" in result.detail
    app = tick.state["app"]  # type: ignore[attr-defined]
    editorial.approve(app, issues_of(any_engine, TURKEY)[0].id or 0)
    assert tick(MONDAY + timedelta(hours=3), pipeline).results == []
    assert pipeline.sends == []


def test_a_failed_send_is_retried_within_the_grace(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    failures = iter([RuntimeError("SMTP server down")])

    def flaky(app: App, issue_id: int, request: SendRequest) -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    pipeline = RecordingPipeline(send_hook=flaky)
    first = tick(MONDAY + timedelta(minutes=1), pipeline)
    assert [r.outcome for r in first.results] == [RunOutcome.FAILED]
    assert "SMTP server down" in first.results[0].detail and first.failed
    too_soon = tick(MONDAY + timedelta(minutes=1, seconds=30), pipeline)
    assert too_soon.results == []
    retried = tick(MONDAY + timedelta(minutes=3), pipeline)
    assert [(r.action, r.outcome) for r in retried.results] == [("retried", RunOutcome.SENT)]
    assert len(pipeline.sends) == 2
    assert count(any_engine, Delivery) == _audience(any_engine)


def test_a_send_stopped_between_batches_resumes_on_the_next_tick(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    """The stop a SIGTERM sets: the send returns between batches, the next tick resumes."""
    stop = threading.Event()

    def stop_after_first_batch(app: App, issue_id: int, request: SendRequest) -> Any:
        if stop.is_set():
            return None  # the resumed send: let the real one run
        # As if SIGTERM came while the first batch was at the transport.
        return send_issue(app, issue_id, stop=stop, progress=lambda done, total: stop.set())

    pipeline = RecordingPipeline(send_hook=stop_after_first_batch)
    config = {"delivery": {"batch_size": 1, "concurrency": 1}}
    first = tick(MONDAY + timedelta(minutes=1), pipeline, **config)
    [result] = first.results
    assert result.outcome == RunOutcome.RUNNING and "resumes" in result.detail
    app = tick.state["app"]  # type: ignore[attr-defined]
    audience = _audience(any_engine)
    assert len(_outbox(app)) == 1 < audience  # one thread: the batch in flight, then it stopped
    assert issues_of(any_engine, TURKEY)[0].status == IssueStatus.SENDING

    resumed = tick(MONDAY + timedelta(minutes=2), pipeline)
    assert [(r.action, r.outcome) for r in resumed.results] == [("resumed", RunOutcome.SENT)]
    recipients = [p.read_bytes().split(b"\nTo: ", 1)[1].split(b"\n", 1)[0] for p in _outbox(app)]
    assert len(recipients) == len(set(recipients)) == audience  # everyone once, nobody twice


def test_ingestion_runs_when_due_and_before_building_from_older_content(
    any_engine: Engine, tick: Callable[..., Any]
) -> None:
    pipeline = RecordingPipeline()
    tick(MONDAY - timedelta(minutes=20), pipeline)  # ingests: never ran before
    tick(MONDAY - timedelta(minutes=10), pipeline)  # not due (15 min)
    assert pipeline.ingests == 1
    fired = tick(MONDAY + timedelta(seconds=5), pipeline)  # a build for 05:00: ingest first
    assert pipeline.ingests == 2 and fired.ingest.startswith("ran")
    tick(MONDAY + timedelta(minutes=10), pipeline)
    tick(MONDAY + timedelta(minutes=16), pipeline)
    assert pipeline.ingests == 3


def test_concurrent_ticks_without_a_leader_still_fire_a_period_once(
    db_url: str, make_app: Callable[..., App]
) -> None:
    """The database, not the lock, is the exactly-once guard: four unsynchronised ticks."""
    engines = [make_engine(db_url) for _ in range(4)]
    apps = [make_app(engine, now=MONDAY + timedelta(seconds=10)) for engine in engines]
    load_sample_subscribers(apps[0])
    run_due(apps[0], seeded_pipeline(), newsletters=[])  # ingest once: all race on the build
    barrier = threading.Barrier(len(apps))
    errors: list[BaseException] = []

    def racer(app: App) -> None:
        try:
            barrier.wait()
            run_due(app, seeded_pipeline(), ingest=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=racer, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = engines[0]
    assert len(issues_of(engine, TURKEY)) == 1
    assert [r.outcome for r in runs_of(engine, TURKEY)] == [RunOutcome.SENT]
    audience = _audience(engine)
    assert count(engine, Delivery) == audience
    assert len(_outbox(apps[0])) == audience
    for engine in engines:
        engine.dispose()


def test_subscriber_local_delivery_sends_each_zone_at_its_own_eight_oclock(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    local = {"newsletters": [{"slug": TURKEY, "title": "T", "schedule": "0 8 * * *",
                              "timezone": "Europe/Istanbul", "window": "8d",
                              "send_in_subscriber_timezone": True,
                              "topic": {"tags": ["Turkey"]}}]}  # fmt: skip
    sent: list[tuple[datetime, frozenset[str]]] = []
    zones_left: set[str] = set()

    def by_zone(app: App, issue_id: int, request: SendRequest) -> FakeReport:
        assert request.timezones is not None
        if not zones_left and not sent:
            zones_left.update(_audience_zones(app))
        zones_left.difference_update(request.timezones)
        sent.append((app.now(), request.timezones))
        if not zones_left:
            _mark(app, issue_id, IssueStatus.SENT)
        else:
            _mark(app, issue_id, IssueStatus.SENDING)
        return FakeReport(issue_id, accepted=1, pending=len(zones_left))

    pipeline = RecordingPipeline(send_hook=by_zone)
    app = make_app(any_engine, now=MONDAY - timedelta(hours=20), **local)
    load_sample_subscribers(app)
    outcomes = []
    moment = MONDAY - timedelta(hours=20)  # Sunday 12:00 Istanbul
    while moment < MONDAY + timedelta(hours=16):  # Sydney's Tuesday 08:00 opens at 21:00
        report = run_due(make_app(any_engine, now=moment, **local), pipeline.pipeline())
        outcomes += [(moment, r.outcome) for r in report.results if r.period == MONDAY.isoformat()]
        moment += timedelta(minutes=30)

    # Sydney's Monday 08:00 is Sunday 21:00 UTC: the period opens then; Chicago's comes last.
    assert sent[0] == (datetime(2026, 11, 29, 21, 0, tzinfo=UTC), frozenset({"Australia/Sydney"}))
    first_seen: dict[str, datetime] = {}
    for moment, zones in sent:
        for zone in zones:
            first_seen.setdefault(zone, moment)
    expected = {
        "Australia/Sydney": datetime(2026, 11, 29, 21, 0, tzinfo=UTC),
        "Europe/Istanbul": MONDAY,
        "Europe/Berlin": datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
        "Europe/Paris": datetime(2026, 11, 30, 7, 0, tzinfo=UTC),
        "Europe/London": datetime(2026, 11, 30, 8, 0, tzinfo=UTC),
        "America/New_York": datetime(2026, 11, 30, 13, 0, tzinfo=UTC),
        "America/Chicago": datetime(2026, 11, 30, 14, 0, tzinfo=UTC),
    }
    assert first_seen == expected
    assert outcomes[-1] == (datetime(2026, 11, 30, 14, 0, tzinfo=UTC), RunOutcome.SENT)
    assert {o for _, o in outcomes} == {RunOutcome.RUNNING, RunOutcome.SENT}
    # The first tick came 12 h after Sydney's Sunday 08:00: Sunday's period is recorded missed.
    assert _turkey_outcomes(any_engine) == [
        ("2026-11-29T05", RunOutcome.MISSED),
        ("2026-11-30T05", RunOutcome.SENT),
    ]
    assert len(issues_of(any_engine, TURKEY)) == 1


def test_subscriber_local_delivery_mails_each_subscriber_once_at_their_local_eight(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    """The real sender: each tick mails only the zones whose 08:00 has come, each person once."""
    local = {"newsletters": [{"slug": TURKEY, "title": "T", "schedule": "0 8 * * *",
                              "timezone": "Europe/Istanbul", "window": "40d",
                              "send_in_subscriber_timezone": True,
                              "topic": {"tags": ["Turkey"]}}],
             "delivery": {"batch_size": 2}}  # fmt: skip
    start = MONDAY - timedelta(hours=9)  # Sunday 20:00 UTC, before anyone's Monday 08:00
    app = make_app(any_engine, now=start, **local)
    extra = "nozone@example.com,No Zone,turkey-unpacked,,\nmars@example.com,M,turkey-unpacked,,\n"
    load_sample_subscribers(app, extra_csv=extra)
    with app.session() as session:  # the import refuses unknown zones; older rows may have one
        session.execute(
            update(Subscriber).where(col(Subscriber.email) == "mars@example.com"),
            {"timezone": "Mars/Olympus"},
        )
    zone_of = {s.email: s.timezone for s in _subscribers(app)}
    assert zone_of["mars@example.com"] == "Mars/Olympus" and not zone_of["nozone@example.com"]
    first_mailed: dict[str, datetime] = {}
    moment = start
    while moment <= MONDAY + timedelta(hours=16):
        tick_app = make_app(any_engine, now=moment, **local)
        run_due(tick_app, RecordingPipeline().pipeline(), ingest=moment == start)
        for address in _recipients(tick_app):
            first_mailed.setdefault(address, moment)
        moment += timedelta(minutes=30)

    recipients = _recipients(app)
    assert len(recipients) == len(set(recipients)) == _audience(any_engine)  # each once
    for address, mailed in first_mailed.items():
        zone = zone_of[address] if zone_of[address] in _VALID else "Europe/Istanbul"
        local_eight = datetime(2026, 11, 30, 8, 0, tzinfo=ZoneInfo(zone))
        assert mailed - timedelta(minutes=30) < local_eight <= mailed, (address, zone, mailed)
    assert first_mailed["mars@example.com"] == first_mailed["nozone@example.com"] == MONDAY
    assert first_mailed["ayse.yilmaz@example.com"] == MONDAY
    monday, tuesday = issues_of(any_engine, TURKEY)
    assert monday.status == IssueStatus.SENT
    # At 21:00 UTC it is Tuesday 08:00 in Sydney: Tuesday's issue has gone there, and only there.
    assert tuesday.status == IssueStatus.SENDING
    assert {zone_of[a] for a in _recipients(app, tuesday.id or 0)} == {"Australia/Sydney"}
    assert _turkey_outcomes(any_engine) == [
        ("2026-11-30T05", RunOutcome.SENT),
        ("2026-12-01T05", RunOutcome.RUNNING),
    ]


_VALID = {"Europe/Istanbul", "Europe/London", "Europe/Berlin", "Europe/Paris", "Europe/Lisbon",
          "Europe/Stockholm", "America/New_York", "America/Chicago", "America/Los_Angeles",
          "Asia/Kolkata", "Australia/Sydney"}  # fmt: skip


def _subscribers(app: App) -> list[Subscriber]:
    with app.session() as session:
        return list(session.exec(select(Subscriber)).all())


def _recipients(app: App, issue_id: int = 1) -> list[str]:
    """Who was mailed issue `issue_id` (the outbox keeps a folder per issue)."""
    paths = [p for p in _outbox(app) if p.parent.name == str(issue_id)]
    messages = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in paths]
    return [m["To"].addresses[0].addr_spec for m in messages]


def _audience_zones(app: App) -> set[str]:
    from digest.sending.local_time import audience_zones

    with app.session() as session:
        return set(audience_zones(session, TURKEY, "Europe/Istanbul"))


def _mark(app: App, issue_id: int, status: IssueStatus) -> None:
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        assert issue is not None
        issue.status = status
        session.add(issue)


def test_the_clock_is_the_apps(any_engine: Engine, make_app: Callable[..., App]) -> None:
    app = make_app(any_engine)
    app.clock = fixed_clock(MONDAY + timedelta(minutes=3))
    load_sample_subscribers(app)
    report = run_due(app, RecordingPipeline().pipeline())
    assert report.now == MONDAY + timedelta(minutes=3)
    assert [r.period for r in report.results] == [MONDAY.isoformat()]
