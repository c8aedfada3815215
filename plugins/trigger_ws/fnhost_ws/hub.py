"""This process's WebSocket connections and their channel subscriptions.

Every frame to a client goes through that connection's send queue, drained by one
sender task per connection, so delivering never waits for a client. A client whose
socket stops taking frames (it does not read) while `send_queue_frames` are queued is
disconnected (code 1008) and everyone else carries on. A client that reads is never
punished for a burst (many publishes at once): its queue may then hold up to
`BURST_FACTOR` times as many frames, which its sender writes on the loop's next turn.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from fnhost_ws import frames

if TYPE_CHECKING:
    from fnhost_ws.trigger import WebSocketConfig

CLOSE_TOO_SLOW = 1008
BURST_FACTOR = 4


class Close(NamedTuple):
    code: int
    reason: str


class Connection:
    """One client: who it is, what it subscribed to, and its send queue."""

    def __init__(
        self, app_id: str, user: dict[str, Any] | None, queue_frames: int, events_in_flight: int
    ) -> None:
        self.id = uuid.uuid4().hex
        self.app_id = app_id
        self.user = user
        self.channels: set[str] = set()
        self.event_slots = asyncio.Semaphore(events_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()  # events being handled
        self.closing: Close | None = None
        # Set when the connection must end now: closed by the server, or too slow.
        self.ended = asyncio.Event()
        self._limit = queue_frames
        self._queue: deque[str | Close] = deque()
        self._queued = asyncio.Event()
        # True while the sender waits inside a write: the socket takes no more (under
        # uvicorn a write only waits when the client does not read).
        self._blocked = False

    def send(self, frame: str) -> None:
        """Queue a frame; never waits. A client too slow for its queue is disconnected."""
        if self.closing is not None:
            return
        queued = len(self._queue)
        if queued >= self._limit and (self._blocked or queued >= self._limit * BURST_FACTOR):
            self.abort(CLOSE_TOO_SLOW, "send queue full: client too slow")
            return
        self._queue.append(frame)
        self._queued.set()

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued (an error frame saying why, say)."""
        if self.closing is not None:
            return
        self.closing = Close(code, reason)
        self._queue.append(self.closing)
        self._queued.set()

    def abort(self, code: int, reason: str) -> None:
        """Close now, dropping what is queued."""
        if self.closing is None:
            self.closing = Close(code, reason)
        self._queue.clear()
        self.ended.set()

    async def run_sender(
        self,
        send: Callable[[str], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        """Drain the queue into the socket until a close is queued."""
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            item = self._queue.popleft()
            if isinstance(item, Close):
                await close(item.code, item.reason)
                self.ended.set()
                return
            self._blocked = True
            try:
                await send(item)
            finally:
                self._blocked = False


class Hub:
    """Connections of this process, and channel subscribers per (app, channel)."""

    def __init__(self, config: WebSocketConfig) -> None:
        self._config = config
        self.connections: dict[str, Connection] = {}
        self._subscribers: dict[tuple[str, str], set[Connection]] = {}

    def connect(self, app_id: str, user: dict[str, Any] | None) -> Connection | None:
        """A new connection, or None when this process has `max_connections` already."""
        if len(self.connections) >= self._config.max_connections:
            return None
        connection = Connection(
            app_id, user, self._config.send_queue_frames, self._config.max_events_in_flight
        )
        self.connections[connection.id] = connection
        return connection

    def disconnect(self, connection: Connection) -> None:
        """Forget a connection and every subscription it had; frames still coming for it
        (replies of events in flight) are dropped."""
        connection.abort(1001, "disconnected")
        self.connections.pop(connection.id, None)
        for channel in connection.channels:
            self._discard(connection, channel)
        connection.channels.clear()

    def subscribe(self, connection: Connection, channel: str) -> str | None:
        """Subscribe; return an error message instead when the connection has too many."""
        if channel in connection.channels:
            return None
        limit = self._config.max_channels_per_connection
        if len(connection.channels) >= limit:
            return f"a connection may subscribe to at most {limit} channels"
        connection.channels.add(channel)
        self._subscribers.setdefault((connection.app_id, channel), set()).add(connection)
        return None

    def unsubscribe(self, connection: Connection, channel: str) -> None:
        if channel in connection.channels:
            connection.channels.discard(channel)
            self._discard(connection, channel)

    def subscribers(self, app_id: str, channel: str) -> int:
        """How many connections of this process are subscribed to a channel of an app."""
        return len(self._subscribers.get((app_id, channel), ()))

    def deliver(self, app_id: str, channel: str, data: bytes) -> None:
        """Send `{"type": "message", "channel", "data"}` to this process's subscribers;
        `data` is JSON. The frame is encoded once, whatever the number of subscribers."""
        subscribers = self._subscribers.get((app_id, channel))
        if not subscribers:
            return
        frame = frames.message(channel, data)
        for connection in list(subscribers):
            connection.send(frame)

    def _discard(self, connection: Connection, channel: str) -> None:
        key = (connection.app_id, channel)
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.discard(connection)
            if not subscribers:
                del self._subscribers[key]
