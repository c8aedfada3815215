"""Cron expressions: fields, crontab day-of-week, the day-of-month/day-of-week union, time
zones and daylight saving time, and what is rejected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fnhost_cron.schedule import ScheduleError, parse_schedule

# A Wednesday, in UTC.
START = datetime(2026, 1, 7, 12, 0, 0, tzinfo=UTC)


def fire_times(
    expression: str, count: int, start: datetime = START, zone: str = "UTC"
) -> list[str]:
    """The next `count` fire times after `start`, in UTC, as 'YYYY-MM-DD HH:MM:SS'."""
    trigger = parse_schedule(expression, zone)
    times: list[str] = []
    previous = None
    now = start
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        times.append(fire.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"))
        previous = now = fire
    return times


def weekdays(expression: str, count: int = 7) -> list[str]:
    trigger = parse_schedule(expression)
    days: list[str] = []
    previous = None
    now = START
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        days.append(fire.strftime("%a"))
        previous = now = fire
    return days


def test_five_fields_fire_at_second_zero() -> None:
    assert fire_times("*/5 * * * *", 3) == [
        "2026-01-07 12:00:00",  # START itself: a fire time is "at or after now"
        "2026-01-07 12:05:00",
        "2026-01-07 12:10:00",
    ]


def test_six_fields_have_seconds_first() -> None:
    assert fire_times("*/2 * * * * *", 3) == [
        "2026-01-07 12:00:00",
        "2026-01-07 12:00:02",
        "2026-01-07 12:00:04",
    ]
    assert fire_times("30 15 9 * * *", 2) == ["2026-01-08 09:15:30", "2026-01-09 09:15:30"]


def test_the_fire_after_a_fire_is_the_next_one() -> None:
    trigger = parse_schedule("0 * * * *")
    fire = trigger.get_next_fire_time(None, START)
    assert fire == START
    assert trigger.get_next_fire_time(fire, fire) == START + timedelta(hours=1)


@pytest.mark.parametrize(
    ("day_of_week", "expected"),
    [
        ("0", ["Sun"]),
        ("7", ["Sun"]),
        ("sun", ["Sun"]),
        ("SUN", ["Sun"]),
        ("1", ["Mon"]),
        ("1-5", ["Thu", "Fri", "Mon", "Tue", "Wed"]),
        ("mon-fri", ["Thu", "Fri", "Mon", "Tue", "Wed"]),
        ("5-7", ["Fri", "Sat", "Sun"]),
        ("fri-sun", ["Fri", "Sat", "Sun"]),
        ("0,6", ["Sat", "Sun"]),
        ("*/2", ["Thu", "Sat", "Sun", "Tue"]),  # 0,2,4,6: Sunday, Tuesday, Thursday, Saturday
        ("1-7/3", ["Thu", "Sun", "Mon"]),  # 1,4,7: Monday, Thursday, Sunday
        ("?", ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]),
    ],
)
def test_day_of_week_is_crontab_numbering(day_of_week: str, expected: list[str]) -> None:
    # START is a Wednesday at noon: the first midnight is Thursday's.
    assert weekdays(f"0 0 * * {day_of_week}", len(expected)) == expected


def test_day_of_month_and_day_of_week_together_mean_either() -> None:
    # crontab: "on the 13th, and on every Friday"; not "on Friday the 13th".
    days = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for t in fire_times("0 0 13 * 5", 4)]
    assert [d.strftime("%a %d") for d in days] == ["Fri 09", "Tue 13", "Fri 16", "Fri 23"]
    # With a "*" on either side the other one alone decides.
    assert fire_times("0 0 13 * *", 2) == ["2026-01-13 00:00:00", "2026-02-13 00:00:00"]
    assert weekdays("0 0 */2 * 5", 2) == ["Fri", "Fri"]


def test_names_of_months() -> None:
    assert fire_times("0 0 1 jan,jul *", 2) == ["2026-07-01 00:00:00", "2027-01-01 00:00:00"]


def test_timezone_of_the_schedule() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter, in Tokyo 00:00 UTC.
    assert fire_times("0 9 * * *", 1, zone="Europe/Berlin") == ["2026-01-08 08:00:00"]
    assert fire_times("0 9 * * *", 1, zone="Asia/Tokyo") == ["2026-01-08 00:00:00"]
    assert fire_times("0 9 * * *", 1) == ["2026-01-08 09:00:00"]  # UTC by default


def test_daily_schedule_follows_daylight_saving_time() -> None:
    # Europe/Berlin: CET (+01) until 2026-03-29 02:00, CEST (+02) until 2026-10-25 03:00.
    spring = datetime(2026, 3, 27, 12, tzinfo=UTC)
    assert fire_times("0 9 * * *", 4, spring, "Europe/Berlin") == [
        "2026-03-28 08:00:00",
        "2026-03-29 07:00:00",
        "2026-03-30 07:00:00",
        "2026-03-31 07:00:00",
    ]
    autumn = datetime(2026, 10, 23, 12, tzinfo=UTC)
    assert fire_times("0 9 * * *", 3, autumn, "Europe/Berlin") == [
        "2026-10-24 07:00:00",
        "2026-10-25 08:00:00",
        "2026-10-26 08:00:00",
    ]


def test_hourly_schedule_across_the_spring_change() -> None:
    # 02:00 does not exist on 2026-03-29 in Berlin: the hour is skipped, nothing fires twice.
    start = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # 00:30 CET
    assert fire_times("0 * * * *", 4, start, "Europe/Berlin") == [
        "2026-03-29 00:00:00",  # 01:00 CET
        "2026-03-29 01:00:00",  # 03:00 CEST
        "2026-03-29 02:00:00",  # 04:00 CEST
        "2026-03-29 03:00:00",
    ]


def test_time_in_the_skipped_hour_fires_one_hour_later() -> None:
    # 02:30 does not exist on 2026-03-29: it fires at 01:30 UTC (03:30 CEST), once.
    start = datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert fire_times("30 2 * * *", 3, start, "Europe/Berlin") == [
        "2026-03-29 01:30:00",
        "2026-03-30 00:30:00",
        "2026-03-31 00:30:00",
    ]


def test_hourly_schedule_across_the_autumn_change() -> None:
    # 02:00-03:00 happens twice on 2026-10-25 in Berlin: each real hour fires once.
    start = datetime(2026, 10, 24, 22, 30, tzinfo=UTC)  # 00:30 CEST
    assert fire_times("0 * * * *", 5, start, "Europe/Berlin") == [
        "2026-10-24 23:00:00",  # 01:00 CEST
        "2026-10-25 00:00:00",  # 02:00 CEST
        "2026-10-25 01:00:00",  # 02:00 CET
        "2026-10-25 02:00:00",  # 03:00 CET
        "2026-10-25 03:00:00",
    ]


def test_time_in_the_repeated_hour_fires_in_both_passes() -> None:
    start = datetime(2026, 10, 24, 12, tzinfo=UTC)
    assert fire_times("30 2 * * *", 3, start, "Europe/Berlin") == [
        "2026-10-25 00:30:00",  # 02:30 CEST
        "2026-10-25 01:30:00",  # 02:30 CET
        "2026-10-26 01:30:00",
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * *", "expected 5 fields"),
        ("* * * * * * *", "expected 5 fields (or 6 with seconds first), got 7"),
        ("", "got 0"),
        ("61 * * * *", "invalid cron expression"),
        ("* 24 * * *", "invalid cron expression"),
        ("* * 32 * *", "invalid cron expression"),
        ("* * * 13 *", "invalid cron expression"),
        ("60 * * * * *", "invalid cron expression"),
        ("a b c d *", "invalid cron expression"),
        ("* * * * e", "invalid day of week 'e'"),
        ("* * * * 8", "day of week '8' out of range"),
        ("* * * * funday", "invalid day of week"),
        ("* * * * 5-2", "invalid day-of-week range"),
        ("* * * * */0", "invalid day-of-week step"),
        ("@hourly", "expected 5 fields"),
    ],
)
def test_invalid_expressions(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        parse_schedule(expression)
    assert e.value.part == "schedule"


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "Europe/", "UTC+2"])
def test_invalid_timezones(zone: str) -> None:
    with pytest.raises(ScheduleError, match="unknown timezone") as e:
        parse_schedule("* * * * *", zone)
    assert e.value.part == "timezone"
