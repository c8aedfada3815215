"""The "websocket" trigger type."""

from __future__ import annotations

from typing import Annotated

import msgspec

from fnhost.contracts import Trigger

EventName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]


class WebSocketTriggerConfig(msgspec.Struct, forbid_unknown_fields=True):
    event: EventName


class WebSocketTrigger(Trigger):
    """Invokes a function when a client of its app sends the named event."""

    name = "websocket"
    TriggerConfig = WebSocketTriggerConfig
