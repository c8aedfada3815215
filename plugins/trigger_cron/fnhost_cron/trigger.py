"""The "cron" trigger type: its per-function config, its `[trigger.cron]` section and the
scheduler it runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from fnhost.contracts import Trigger
from fnhost.errors import ConfigError, InvalidField
from fnhost.models import FunctionDefinition
from fnhost_cron.schedule import ScheduleError, parse_schedule
from fnhost_cron.scheduler import CronScheduler, iso

if TYPE_CHECKING:
    from fnhost.platform import Platform


class CronTriggerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A function's cron trigger: `{"schedule": "*/5 * * * *", "timezone": "Europe/Berlin"}`."""

    schedule: str
    timezone: str = "UTC"


class CronConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[trigger.cron]`: how every process fires cron functions."""

    # A fire time whose run cannot start within this many seconds (the process was busy,
    # suspended or its clock jumped) is skipped, not run late.
    misfire_grace_seconds: Annotated[int, msgspec.Meta(ge=1)] = 30
    # Several fire times missed at once (within the grace time) run once, for the latest.
    coalesce: bool = True
    # Runs of one function at a time in this process: 1 means a run still going at the
    # next fire time makes that fire time be skipped (no overlap).
    max_concurrent_runs: Annotated[int, msgspec.Meta(ge=1)] = 1
    # How often the store is read for deploys and deletes made through other processes.
    sync_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Claims of fire times older than this are deleted (hourly).
    claim_retention_hours: Annotated[float, msgspec.Meta(gt=0)] = 24.0


class CronTrigger(Trigger):
    """Invokes a function at each fire time of its schedule, once across all processes."""

    name = "cron"
    TriggerConfig = CronTriggerConfig
    Config = CronConfig

    def __init__(self, config: CronConfig, platform: Platform) -> None:
        super().__init__(config, platform)
        if config.claim_retention_hours * 3600 <= config.misfire_grace_seconds:
            # A late process could otherwise claim again a fire time already run and pruned.
            raise ConfigError(
                "config: trigger.cron.claim_retention_hours: must be longer than "
                "misfire_grace_seconds"
            )
        self.scheduler = CronScheduler(platform, config)

    # Scheduling starts from the `fnhost_startup` hook, once the core can invoke (env vars
    # decryptable, records written), and stops from `fnhost_shutdown`, before it cannot.
    async def stop(self) -> None:
        await self.scheduler.stop()

    def validate(self, config: dict[str, Any], field: str) -> dict[str, Any]:
        value = super().validate(config, field)
        try:
            trigger = parse_schedule(value["schedule"], value["timezone"])
        except ScheduleError as exc:
            raise InvalidField(
                f"{field}.{exc.part}: {exc}", {"field": f"{field}.{exc.part}"}
            ) from None
        if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
            raise InvalidField(
                f"{field}.schedule: {value['schedule']!r} never fires",
                {"field": f"{field}.schedule"},
            )
        return value

    def describe(self, function: FunctionDefinition) -> dict[str, Any]:
        next_fire = self.scheduler.next_fire_time(function)
        return {"nextFireTime": iso(next_fire) if next_fire is not None else None}
