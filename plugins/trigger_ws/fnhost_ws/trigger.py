"""The "websocket" trigger type: its config, its per-function config, and the object that
ties this process's connections, the functions' event table and the fan-out together."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from fnhost.contracts import Trigger
from fnhost.errors import ConfigError
from fnhost.models import FunctionDefinition
from fnhost_ws.auth import ConnectionAuth
from fnhost_ws.events import EventTable
from fnhost_ws.fanout import Fanout, LocalFanout, postgres_dsn
from fnhost_ws.frames import MAX_CHANNEL_CHARS
from fnhost_ws.hub import Hub

if TYPE_CHECKING:
    from fnhost.platform import Platform

log = logging.getLogger("fnhost.ws")

EventName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class WebSocketTriggerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A function's trigger config: the event name it handles."""

    event: EventName


class WebSocketConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[trigger.websocket]` of the config file (or FNHOST_TRIGGER__WEBSOCKET__<KEY>)."""

    # End-user tokens: "none" ignores them; "optional" verifies one if given (claims reach
    # ctx.user, a bad token connects anonymously); "required" closes connections without a
    # valid one (code 4401). An app whose settings say websocket.requireToken is "required".
    auth: Literal["none", "optional", "required"] = "optional"
    max_frame_bytes: Positive = 64 * 1024  # larger client frames get an error frame
    max_publish_bytes: Positive = 256 * 1024  # larger ctx.publish data is dropped, logged
    send_queue_frames: Positive = 256  # frames waiting for a slow client, then it is closed
    max_events_in_flight: Positive = 32  # per connection; then its frames wait to be read
    max_channels_per_connection: Positive = 100
    max_connections: Positive = 10_000  # per process
    # Cross-process fan-out: "auto" uses PostgreSQL LISTEN/NOTIFY when the store is on
    # PostgreSQL; "postgres" always (on `fanout_url`, default the store's); "local" never.
    fanout: Literal["auto", "postgres", "local"] = "auto"
    fanout_url: str | None = None


class WebSocketTrigger(Trigger):
    """Invokes a function when a client of its app sends the named event, and delivers
    `ctx.publish` messages to the subscribers of a channel on every process."""

    name = "websocket"
    Config = WebSocketConfig
    TriggerConfig = WebSocketTriggerConfig
    config: WebSocketConfig

    def __init__(self, config: WebSocketConfig, platform: Platform) -> None:
        super().__init__(config, platform)
        self.hub = Hub(config)
        self.events = EventTable(platform)
        self.auth = ConnectionAuth(config, platform)
        self.fanout: Fanout = LocalFanout()

    def describe(self, function: FunctionDefinition) -> dict[str, Any]:
        return {"path": f"/v1/{function.app_id}/ws"}

    async def start(self) -> None:
        dsn = self._fanout_dsn()
        if dsn is not None:
            try:
                from fnhost_ws.postgres import PostgresFanout
            except ImportError:
                raise ConfigError(
                    "config: trigger.websocket: the PostgreSQL fan-out needs asyncpg "
                    "(pip install 'fnhost-ws[postgres]')"
                ) from None
            self.fanout = PostgresFanout(dsn, self.hub.deliver)
        await self.fanout.start()

    async def stop(self) -> None:
        await self.fanout.stop()

    async def publish(self, app_id: str, channel: str, data: Any) -> None:
        """A function's ctx.publish: deliver to this process's subscribers at once, and to
        the other processes' through the fan-out."""
        if not isinstance(channel, str) or not 1 <= len(channel) <= MAX_CHANNEL_CHARS:
            log.error(
                "ctx.publish of app %s dropped: the channel must be a string of 1-%d characters",
                app_id,
                MAX_CHANNEL_CHARS,
            )
            return
        payload = msgspec.json.encode(data)
        if len(payload) > self.config.max_publish_bytes:
            log.error(
                "ctx.publish of app %s on channel %r dropped: %d bytes of data, more than "
                "trigger.websocket.max_publish_bytes (%d)",
                app_id,
                channel,
                len(payload),
                self.config.max_publish_bytes,
            )
            return
        self.hub.deliver(app_id, channel, payload)
        # Let the subscribers' senders write before the next publish of a burst.
        await asyncio.sleep(0)
        await self.fanout.publish(app_id, channel, payload)

    def _fanout_dsn(self) -> str | None:
        mode = self.config.fanout
        if mode == "local":
            return None
        store = self.platform.config.store
        url = self.config.fanout_url or str(store.section(store.use).get("url") or "")
        dsn = postgres_dsn(url)
        if dsn is None and mode == "postgres":
            raise ConfigError(
                "config: trigger.websocket.fanout = 'postgres' needs a PostgreSQL "
                "trigger.websocket.fanout_url (or a store on PostgreSQL)"
            )
        return dsn
