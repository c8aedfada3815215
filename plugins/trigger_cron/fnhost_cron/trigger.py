"""The "cron" trigger type."""

from __future__ import annotations

from typing import Any

import msgspec

from fnhost.contracts import Trigger
from fnhost.errors import InvalidField
from fnhost_cron.schedule import ScheduleError, parse_schedule


class CronTriggerConfig(msgspec.Struct, forbid_unknown_fields=True):
    schedule: str
    timezone: str = "UTC"


class CronTrigger(Trigger):
    """Invokes a function at each fire time of its schedule."""

    name = "cron"
    TriggerConfig = CronTriggerConfig

    def validate(self, config: dict[str, Any], field: str) -> dict[str, Any]:
        value = super().validate(config, field)
        try:
            parse_schedule(value["schedule"], value["timezone"])
        except ScheduleError as exc:
            raise InvalidField(
                f"{field}.{exc.part}: {exc}", {"field": f"{field}.{exc.part}"}
            ) from None
        return value
