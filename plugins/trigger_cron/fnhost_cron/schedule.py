"""Cron expressions: five fields (minute first) or six (seconds first), crontab semantics.

APScheduler numbers days of the week from Monday = 0, crontab from Sunday = 0
(7 also Sunday); the day-of-week field is translated so `1-5` means Monday to Friday
as every crontab user expects. When both the day of month and the day of week are
restricted (neither starts with `*`), crontab fires on days matching either, where
APScheduler would want both: such a schedule is the union of two triggers.

Fire times are computed in the schedule's timezone by APScheduler: across a spring
change a time that does not exist (02:30 in Europe/Berlin) fires one hour later by
the wall clock, at the same elapsed time; across an autumn change a time of the
repeated hour fires in both passes (as every other fire time does).
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class ScheduleError(ValueError):
    """The expression or timezone is invalid; the message says which part."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part  # "schedule" or "timezone"


def parse_schedule(expression: str, timezone: str = "UTC") -> BaseTrigger:
    """The APScheduler trigger of a cron expression in `timezone` (an IANA name).

    Raise `ScheduleError` naming the part ("schedule" or "timezone") that is invalid.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError("timezone", f"unknown timezone {timezone!r}") from None
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ScheduleError(
            "schedule", f"expected 5 fields (or 6 with seconds first), got {len(fields)}"
        )
    second, minute, hour, day, month, day_of_week = fields
    aps_day_of_week = _aps_day_of_week(day_of_week)
    try:
        if _restricted(day) and _restricted(day_of_week):
            return OrTrigger(
                [
                    CronTrigger(
                        second=second, minute=minute, hour=hour, day=day, month=month, timezone=zone
                    ),
                    CronTrigger(
                        second=second,
                        minute=minute,
                        hour=hour,
                        month=month,
                        day_of_week=aps_day_of_week,
                        timezone=zone,
                    ),
                ]
            )
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day="*" if day == "?" else day,
            month=month,
            day_of_week=aps_day_of_week,
            timezone=zone,
        )
    except ValueError as exc:
        raise ScheduleError("schedule", f"invalid cron expression {expression!r}: {exc}") from None


def _restricted(field: str) -> bool:
    # crontab's own test: a field is unrestricted when it starts with "*" (so "*/2" is too).
    return not field.startswith("*") and field != "?"


def _aps_day_of_week(field: str) -> str:
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = _number(step_text, "step") if step_text else 1
        if step < 1:
            raise ScheduleError("schedule", f"invalid day-of-week step {step_text!r}")
        if span == "*":
            first, last = 0, 6
        elif "-" in span:
            start, end = span.split("-", 1)
            first, last = _day(start), _day(end)
            if last == 0 and first > 0:
                last = 7  # "5-7" / "fri-sun" end on Sunday
        else:
            first = _day(span)
            last = 6 if step_text else first
        if first > last:
            raise ScheduleError("schedule", f"invalid day-of-week range {span!r}")
        days.update(day % 7 for day in range(first, last + 1, step))
    # crontab Sunday=0 .. Saturday=6  ->  APScheduler Monday=0 .. Sunday=6
    return ",".join(str((day + 6) % 7) for day in sorted(days))


def _day(token: str) -> int:
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    day = _number(token, "day of week")
    if not 0 <= day <= 7:
        raise ScheduleError("schedule", f"day of week {token!r} out of range 0-7")
    return day


def _number(token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ScheduleError("schedule", f"invalid {what} {token!r}") from None
