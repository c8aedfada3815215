"""Entry point of fnhost-ws."""

from fnhost import hookimpl
from fnhost.contracts import Trigger
from fnhost_ws.trigger import WebSocketTrigger


@hookimpl
def fnhost_triggers() -> list[type[Trigger]]:
    return [WebSocketTrigger]
