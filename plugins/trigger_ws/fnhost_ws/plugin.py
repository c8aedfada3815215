"""Entry point of fnhost-ws: the "websocket" trigger type, its route, and the hooks that keep
its table of event handlers current."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fnhost import hookimpl
from fnhost.contracts import Trigger
from fnhost.models import FunctionDefinition
from fnhost_ws.route import websocket_endpoint
from fnhost_ws.trigger import WebSocketTrigger

if TYPE_CHECKING:
    from fnhost.platform import Platform


@hookimpl
def fnhost_triggers() -> list[type[Trigger]]:
    return [WebSocketTrigger]


@hookimpl
def fnhost_routes(app_config: Any) -> list[Any]:
    return [websocket_endpoint]


def _forget(platform: Platform, function: FunctionDefinition) -> None:
    trigger = platform.triggers.get(WebSocketTrigger.name)
    if isinstance(trigger, WebSocketTrigger):
        trigger.events.forget(function.app_id)


@hookimpl
def fnhost_function_deployed(platform: Platform, function: FunctionDefinition) -> None:
    _forget(platform, function)


@hookimpl
def fnhost_function_deleted(platform: Platform, function: FunctionDefinition) -> None:
    _forget(platform, function)
