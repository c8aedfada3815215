"""Entry point of fnhost-cron: the "cron" trigger type and the hooks that drive its scheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fnhost import hookimpl
from fnhost.contracts import Trigger
from fnhost.models import FunctionDefinition
from fnhost_cron.scheduler import CronScheduler
from fnhost_cron.trigger import CronTrigger

if TYPE_CHECKING:
    from fnhost.platform import Platform


@hookimpl
def fnhost_triggers() -> list[type[Trigger]]:
    return [CronTrigger]


def _scheduler(platform: Platform) -> CronScheduler | None:
    trigger = platform.triggers.get(CronTrigger.name)
    return trigger.scheduler if isinstance(trigger, CronTrigger) else None


@hookimpl
async def fnhost_startup(platform: Platform) -> None:
    scheduler = _scheduler(platform)
    if scheduler is not None:
        await scheduler.start()


@hookimpl
async def fnhost_shutdown(platform: Platform) -> None:
    scheduler = _scheduler(platform)
    if scheduler is not None:
        await scheduler.stop()


@hookimpl
def fnhost_function_deployed(platform: Platform, function: FunctionDefinition) -> None:
    scheduler = _scheduler(platform)
    if scheduler is not None:
        scheduler.function_changed(function)


@hookimpl
def fnhost_function_deleted(platform: Platform, function: FunctionDefinition) -> None:
    scheduler = _scheduler(platform)
    if scheduler is not None:
        scheduler.function_deleted(function)
