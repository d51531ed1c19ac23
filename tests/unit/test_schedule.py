"""The scheduler's rules with explicit moments: crontab meaning, DST, catch-up, local time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from digest.cron import CrontabTrigger, fire_times, next_fire_time, previous_fire_time
from digest.scheduling.rules import (
    Candidate,
    approval_deadline,
    candidate_periods,
    plan_catch_up,
    retry_due,
    send_outcome,
)
from digest.sending import local_time
from digest.storage.models import RunOutcome, ScheduleRun
from tests.conftest import make_settings
from tests.support.scheduling import FakeReport

IST = ZoneInfo("Europe/Istanbul")
NYC = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
GRACE = timedelta(hours=6)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc,arg-type]


def hours(moments: list[datetime]) -> list[str]:
    return [m.astimezone(UTC).strftime("%m-%d %H:%M") for m in moments]


# -- crontab meaning, in the newsletter's zone, across daylight-saving changes


def test_new_york_daily_keeps_local_time_across_both_dst_changes() -> None:
    spring = fire_times("0 8 * * *", NYC, utc(2026, 3, 6), utc(2026, 3, 10))
    autumn = fire_times("0 8 * * *", NYC, utc(2026, 10, 30), utc(2026, 11, 3))
    assert hours(spring) == ["03-06 13:00", "03-07 13:00", "03-08 12:00", "03-09 12:00"]
    assert hours(autumn) == ["10-30 12:00", "10-31 12:00", "11-01 13:00", "11-02 13:00"]
    assert {m.astimezone(NYC).hour for m in spring + autumn} == {8}


def test_istanbul_has_no_dst_and_stays_at_05_utc_while_europe_and_us_switch() -> None:
    # Europe switches on 2026-10-25, the US on 2026-11-01: Istanbul (UTC+3 all year) does not.
    fires = fire_times("0 8 * * *", IST, utc(2026, 10, 23), utc(2026, 11, 3))
    assert len(fires) == 11
    assert {m.astimezone(UTC).hour for m in fires} == {5}
    london = fire_times("0 9 * * 5", ZoneInfo("Europe/London"), utc(2026, 10, 15), utc(2026, 11, 1))
    assert hours(london) == ["10-16 08:00", "10-23 08:00", "10-30 09:00"]


def test_repeated_hour_fires_once_and_skipped_hour_fires_right_after_the_gap() -> None:
    # 2026-11-01 01:30 happens twice in New York; 2026-03-08 02:30 does not happen at all.
    repeated = fire_times("30 1 * * *", NYC, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))
    assert hours(repeated) == ["11-01 05:30", "11-02 06:30"]
    skipped = fire_times("30 2 * * *", NYC, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12))
    assert hours(skipped) == ["03-08 07:00", "03-09 06:30"]  # 03:00 EDT, then 02:30 EDT
    hourly = fire_times("0 * * * *", NYC, utc(2026, 11, 1, 3, 30), utc(2026, 11, 1, 8, 30))
    assert hours(hourly) == ["11-01 04:00", "11-01 05:00", "11-01 07:00", "11-01 08:00"]


def test_previous_fire_time_on_the_fall_back_day_answers() -> None:
    # APScheduler 3.11's CronTrigger loops on this day; the wall-clock walk does not.
    assert previous_fire_time("30 1 * * *", NYC, utc(2026, 11, 1, 12)) == utc(2026, 11, 1, 5, 30)
    assert next_fire_time("30 1 * * *", NYC, utc(2026, 11, 1, 5, 31)) == utc(2026, 11, 2, 6, 30)


def test_crontab_trigger_walks_apscheduler_through_the_fall_back_day() -> None:
    trigger = CrontabTrigger("*/30 1 * * *", NYC)
    previous, fires = None, []
    now = utc(2026, 10, 31, 12)
    for _ in range(6):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        fires.append(fire)
        previous, now = fire, fire
    assert hours(fires) == [
        "11-01 05:00",
        "11-01 05:30",
        "11-02 06:00",
        "11-02 06:30",
        "11-03 06:00",
        "11-03 06:30",
    ]
    assert fires == sorted(set(fires))


@pytest.mark.parametrize(
    ("numbers", "names"),
    [("1", "mon"), ("0", "sun"), ("7", "sun"), ("1-5", "mon-fri"), ("0,6", "sat,sun")],
)
def test_weekday_numbers_and_names_give_the_same_fire_times(numbers: str, names: str) -> None:
    start, end = utc(2026, 11, 1), utc(2026, 12, 1)
    by_number = fire_times(f"0 8 * * {numbers}", IST, start, end)
    assert by_number == fire_times(f"0 8 * * {names}", IST, start, end)
    weekdays = {m.astimezone(IST).strftime("%a") for m in by_number}
    expected = {
        "1": {"Mon"},
        "0": {"Sun"},
        "7": {"Sun"},
        "1-5": {"Mon", "Tue", "Wed", "Thu", "Fri"},
        "0,6": {"Sat", "Sun"},
    }[numbers]
    assert weekdays == expected


def test_day_of_month_and_weekday_both_set_means_either_as_in_crontab() -> None:
    # crontab(5): "0 8 1 * 1" runs on the 1st of the month AND on every Monday.
    fires = fire_times("0 8 1 * 1", IST, utc(2026, 11, 25), utc(2026, 12, 22))
    assert [m.astimezone(IST).strftime("%a %d") for m in fires] == [
        "Mon 30",
        "Tue 01",
        "Mon 07",
        "Mon 14",
        "Mon 21",
    ]


# -- catch-up: once within the grace, coalesced, missed beyond


def _candidates(*moments: datetime) -> list[Candidate]:
    return [Candidate(m, m) for m in moments]


def test_catch_up_fires_the_newest_period_within_grace_and_coalesces_the_rest() -> None:
    now = utc(2026, 11, 30, 4, 30)
    hourly = _candidates(
        *(utc(2026, 11, 29, h) for h in (20, 21)), *(utc(2026, 11, 30, h) for h in (0, 1, 2, 3, 4))
    )
    plan = plan_catch_up(hourly, now, GRACE)
    assert plan.fire is not None and plan.fire.period == utc(2026, 11, 30, 4)
    reasons = {m.period.hour: why for m, why in plan.missed}
    assert set(reasons) == {20, 21, 0, 1, 2, 3}
    assert "catch-up grace (6h)" in reasons[20] and "catch-up grace" in reasons[21]
    assert all("coalesced into" in reasons[h] for h in (0, 1, 2, 3))


def test_catch_up_beyond_grace_fires_nothing() -> None:
    plan = plan_catch_up(_candidates(utc(2026, 11, 30, 5)), utc(2026, 11, 30, 11, 1), GRACE)
    assert plan.fire is None
    assert [m.period for m, _ in plan.missed] == [utc(2026, 11, 30, 5)]


def test_periods_not_yet_open_are_not_due() -> None:
    plan = plan_catch_up([Candidate(utc(2026, 11, 30, 5), utc(2026, 11, 30, 5))],
                         utc(2026, 11, 30, 4), GRACE)  # fmt: skip
    assert plan.fire is None and plan.missed == []


def test_candidates_start_after_the_last_recorded_period(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    turkey = settings.newsletter("turkey-unpacked")  # daily 08:00 Istanbul = 05:00 UTC
    now = utc(2026, 11, 30, 6)
    first_ever = candidate_periods(settings, turkey, now, None, None)
    assert [c.period for c in first_ever] == [utc(2026, 11, 30, 5)]  # no further back than grace
    after_downtime = candidate_periods(settings, turkey, now, utc(2026, 11, 27, 5), None)
    assert [c.period.day for c in after_downtime] == [28, 29, 30]


# -- subscriber-local delivery


def test_local_moment_is_the_same_wall_clock_time_in_each_zone() -> None:
    period = utc(2026, 11, 30, 5)  # Monday 08:00 in Istanbul
    assert local_time.local_moment(period, IST, "Asia/Tokyo") == utc(2026, 11, 29, 23)
    assert local_time.local_moment(period, IST, "America/New_York") == utc(2026, 11, 30, 13)
    assert local_time.local_moment(period, IST, "Europe/Istanbul") == period
    zones = {"Asia/Tokyo", "Europe/Istanbul", "America/New_York"}
    assert local_time.opens_at(period, IST, zones) == utc(2026, 11, 29, 23)
    assert local_time.due_zones(period, IST, zones, utc(2026, 11, 30, 6)) == {
        "Asia/Tokyo",
        "Europe/Istanbul",
    }


def test_subscribers_without_a_valid_zone_use_the_newsletters() -> None:
    assert local_time.effective_zone(None, "Europe/Istanbul") == "Europe/Istanbul"
    assert local_time.effective_zone("", "Europe/Istanbul") == "Europe/Istanbul"
    assert local_time.effective_zone("Mars/Olympus", "Europe/Istanbul") == "Europe/Istanbul"
    assert local_time.effective_zone("Asia/Tokyo", "Europe/Istanbul") == "Asia/Tokyo"


def test_local_candidates_open_a_day_early_for_zones_east_of_the_newsletter(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, "sqlite://")
    turkey = settings.newsletter("turkey-unpacked")
    zones = frozenset({"Asia/Tokyo", "Europe/Istanbul"})
    now = utc(2026, 11, 29, 23, 15)
    found = candidate_periods(settings, turkey, now, utc(2026, 11, 28, 5), zones)
    assert [(c.period, c.opens_at) for c in found] == [
        (utc(2026, 11, 29, 5), utc(2026, 11, 28, 23)),  # opened a day ago
        (utc(2026, 11, 30, 5), utc(2026, 11, 29, 23)),  # Tokyo's Monday 08:00 has come
    ]
    plan = plan_catch_up(found, now, GRACE)
    assert plan.fire == found[1] and [m for m, _ in plan.missed] == [found[0]]
    first_ever = candidate_periods(settings, turkey, now, None, zones)
    assert [c.period for c in first_ever] == [utc(2026, 11, 30, 5)]


# -- small rules


def test_approval_deadline_per_newsletter_overrides_the_scheduler_default(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        "sqlite://",
        {"scheduler": {"approval_deadline": "4h"}},
    )
    turkey = settings.newsletter("turkey-unpacked")
    assert approval_deadline(settings, turkey) == timedelta(hours=4)
    override = turkey.model_copy(update={"approval_deadline": "90m"})
    assert approval_deadline(settings, override) == timedelta(minutes=90)
    assert approval_deadline(make_settings(tmp_path, "sqlite://"), turkey) is None


def test_failed_runs_are_retried_with_backoff_within_the_grace() -> None:
    period = utc(2026, 11, 30, 5)
    run = ScheduleRun(newsletter="x", period="p", outcome=RunOutcome.FAILED, attempts=1)
    run.at = period
    assert not retry_due(run, period + timedelta(seconds=30), period, GRACE)
    assert retry_due(run, period + timedelta(minutes=1), period, GRACE)
    run.attempts, run.at = 3, period + timedelta(minutes=10)
    assert not retry_due(run, period + timedelta(minutes=13), period, GRACE)
    assert retry_due(run, period + timedelta(minutes=14), period, GRACE)
    assert not retry_due(run, period + GRACE + timedelta(minutes=1), period, GRACE)
    run.attempts = 5
    assert not retry_due(run, period + timedelta(hours=1), period, GRACE)


def test_send_reports_map_to_outcomes() -> None:
    done = FakeReport(1, accepted=10, skipped=2)
    assert send_outcome(done, stopped=False, local=False)[0] == RunOutcome.SENT
    stopped = FakeReport(1, accepted=4, pending=6)
    outcome, detail = send_outcome(stopped, stopped=True, local=False)
    assert outcome == RunOutcome.RUNNING and "resumes" in detail
    local = send_outcome(FakeReport(1, accepted=4, pending=6), stopped=False, local=True)
    assert local[0] == RunOutcome.RUNNING and "local time" in local[1]
    unknown = send_outcome(FakeReport(1, accepted=9, unknown=1), stopped=False, local=False)
    assert unknown[0] == RunOutcome.FAILED and "--retry-unknown" in unknown[1]
    failed = send_outcome(FakeReport(1, accepted=9, failed=1), stopped=False, local=False)
    assert failed[0] == RunOutcome.SENT and "--retry-failed" in failed[1]
    again = send_outcome(FakeReport(1, accepted=10, already_done=True), stopped=False, local=False)
    assert again[0] == RunOutcome.SENT
