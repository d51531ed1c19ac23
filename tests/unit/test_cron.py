"""Schedules mean what crontab(5) means, in the newsletter's time zone, across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from digest.cron import crontab_trigger, next_fire_time, previous_fire_time

IST = ZoneInfo("Europe/Istanbul")
NYC = ZoneInfo("America/New_York")
WEDNESDAY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("dow", "weekday"),
    [("1", 0), ("mon", 0), ("0", 6), ("7", 6), ("sun", 6), ("5", 4), ("fri", 4), ("6", 5)],
)
def test_weekday_numbers_and_names_mean_what_crontab_means(dow: str, weekday: int) -> None:
    fire = next_fire_time(f"0 8 * * {dow}", IST, WEDNESDAY)
    assert fire is not None
    assert fire.astimezone(IST).weekday() == weekday
    assert fire.astimezone(IST).hour == 8


def test_weekday_range_and_list() -> None:
    trigger = crontab_trigger("30 7 * * 1-5", IST)
    fires = []
    moment = datetime(2026, 11, 22, 0, 0, tzinfo=IST)  # a Sunday
    for _ in range(6):
        moment = trigger.get_next_fire_time(None, moment)
        fires.append(moment.weekday())
        moment = moment.replace(minute=31)
    assert fires == [0, 1, 2, 3, 4, 0]
    assert next_fire_time("0 8 * * 0,6", IST, WEDNESDAY).astimezone(IST).weekday() == 5  # type: ignore[union-attr]


def test_previous_fire_time_is_latest_at_or_before_now() -> None:
    prev = previous_fire_time("0 8 * * 1", IST, WEDNESDAY)
    assert prev == datetime(2026, 11, 23, 8, 0, tzinfo=IST)
    exact = previous_fire_time("0 15 * * *", IST, WEDNESDAY)  # 15:00 Istanbul = 12:00 UTC
    assert exact == WEDNESDAY


def test_new_york_keeps_wall_clock_time_across_dst() -> None:
    # DST ends 2026-11-01 in New York: 08:00 local is 12:00 UTC before, 13:00 UTC after.
    before = next_fire_time("0 8 * * *", NYC, datetime(2026, 10, 30, 0, 0, tzinfo=UTC))
    after = next_fire_time("0 8 * * *", NYC, datetime(2026, 11, 2, 0, 0, tzinfo=UTC))
    assert before is not None and after is not None
    assert before.astimezone(UTC).hour == 12
    assert after.astimezone(UTC).hour == 13


def test_bad_expressions_are_refused() -> None:
    for bad in ("0 8 * *", "0 8 * * 8", "61 * * * *", "0 8 * * 5-1"):
        with pytest.raises(ValueError):
            crontab_trigger(bad, IST)
