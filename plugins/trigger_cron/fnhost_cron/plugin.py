"""Entry point of fnhost-cron."""

from fnhost import hookimpl
from fnhost.contracts import Trigger
from fnhost_cron.trigger import CronTrigger


@hookimpl
def fnhost_triggers() -> list[type[Trigger]]:
    return [CronTrigger]
