"""The route clients connect to: `/v1/{app_id}/ws`.

A connection is accepted, its token checked, then its frames are read one by one. Events
run as tasks (at most `max_events_in_flight` per connection; past that, reading waits);
every frame to the client goes through the connection's send queue (see `hub`).
Heartbeats are the server's WebSocket pings: under `fnhost serve` (uvicorn) a ping every
20 s keeps idle connections alive through proxies, and a peer that does not answer within
20 s is disconnected (and cleaned up here like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from litestar import WebSocket, websocket
from litestar.params import FromPath

from fnhost.errors import FnhostError, Unauthenticated
from fnhost_ws import frames
from fnhost_ws.auth import token_of
from fnhost_ws.events import run_event
from fnhost_ws.frames import ChannelFrame, EventFrame, FrameError, PingFrame

if TYPE_CHECKING:
    from fnhost_ws.hub import Connection
    from fnhost_ws.trigger import WebSocketTrigger

log = logging.getLogger("fnhost.ws")

APP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
CLOSE_BAD_APP = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_UNAVAILABLE = 1011
CLOSE_TRY_LATER = 1013
CLOSE_TIMEOUT_S = 2.0


@websocket("/v1/{app_id:str}/ws", name="websocket-trigger")
async def websocket_endpoint(socket: WebSocket[Any, Any, Any], app_id: FromPath[str]) -> None:
    """Connect a client of an app: events in, replies and channel messages out."""
    trigger: WebSocketTrigger = socket.app.state.platform.triggers["websocket"]
    await socket.accept()
    if not APP_ID.match(app_id):
        return await _refuse(socket, CLOSE_BAD_APP, "invalid app id")
    token = token_of(socket.headers.get("authorization"), socket.query_params.get("token"))
    try:
        user = await trigger.auth.user_of(app_id, token)
    except Unauthenticated as exc:
        return await _refuse(socket, CLOSE_UNAUTHENTICATED, exc.message)
    except FnhostError as exc:
        return await _refuse(socket, CLOSE_UNAVAILABLE, exc.message)
    connection = trigger.hub.connect(app_id, user)
    if connection is None:
        return await _refuse(socket, CLOSE_TRY_LATER, "too many connections; retry later")
    try:
        await _serve(trigger, socket, connection)
    finally:
        trigger.hub.disconnect(connection)


async def _refuse(socket: WebSocket[Any, Any, Any], code: int, reason: str) -> None:
    """An error frame saying why, then a close with that code (browsers cannot read the
    status of a refused handshake, so the connection is accepted first)."""
    with contextlib.suppress(Exception):
        await socket.send_text(frames.error(reason))
        await socket.close(code, reason[:120])


async def _serve(
    trigger: WebSocketTrigger, socket: WebSocket[Any, Any, Any], connection: Connection
) -> None:
    async def close(code: int, reason: str) -> None:
        await socket.close(code, reason[:120])

    sender = asyncio.create_task(connection.run_sender(socket.send_text, close))
    reader = asyncio.create_task(_read(trigger, socket, connection))
    ended = asyncio.create_task(connection.ended.wait())
    expiry = _close_at_expiry(connection, trigger.platform.end_users.leeway_seconds)
    connection.send(frames.connected(connection.id, connection.user is not None))
    try:
        await asyncio.wait({sender, reader, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if expiry is not None:
            expiry.cancel()
        for task in (reader, ended):
            task.cancel()
        if not sender.done():
            sender.cancel()
        await asyncio.gather(sender, reader, ended, return_exceptions=True)
        if not reader.cancelled() and reader.exception() is not None:
            log.error("websocket connection %s failed", connection.id, exc_info=reader.exception())
        if connection.closing is not None and not _sent_close(sender):
            # The sender could not get to the close (a full queue): close directly,
            # without waiting on a client that does not read.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(socket.close(*connection.closing), timeout=CLOSE_TIMEOUT_S)


def _sent_close(sender: asyncio.Task[None]) -> bool:
    return sender.done() and not sender.cancelled() and sender.exception() is None


def _close_at_expiry(connection: Connection, leeway: float) -> asyncio.TimerHandle | None:
    """ctx.user must not outlive the token: close the connection when it expires."""
    expires = (connection.user or {}).get("exp")
    if not isinstance(expires, int | float):
        return None
    delay = max(0.0, expires + leeway - time.time())

    def expire() -> None:
        connection.send(frames.error("token expired"))
        connection.close(CLOSE_UNAUTHENTICATED, "token expired")

    return asyncio.get_running_loop().call_later(delay, expire)


async def _read(
    trigger: WebSocketTrigger, socket: WebSocket[Any, Any, Any], connection: Connection
) -> None:
    """Handle the client's frames until it goes away."""
    max_bytes = trigger.config.max_frame_bytes
    while True:
        message = await socket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text, data = message.get("text"), message.get("bytes")
        raw: str | bytes = text if isinstance(text, str) else data or b""  # type: ignore[assignment]
        try:
            frame = frames.parse(raw, max_bytes)
            if isinstance(frame, EventFrame):
                await _event(trigger, connection, frame)
            elif isinstance(frame, ChannelFrame):
                _channel(trigger, connection, frame)
            elif isinstance(frame, PingFrame):
                connection.send(frames.pong(frame.id))
        except FrameError as exc:
            connection.send(frames.error(exc.message, exc.frame_id))


async def _event(trigger: WebSocketTrigger, connection: Connection, frame: EventFrame) -> None:
    try:
        functions = await trigger.events.handlers(connection.app_id, frame.event)
    except FnhostError as exc:
        raise FrameError(exc.message, frame.id) from None
    if not functions:
        raise FrameError(
            f"no function of app {connection.app_id!r} handles event {frame.event!r}", frame.id
        )
    # Back-pressure: a client with too many events in flight is not read until one ends.
    await connection.event_slots.acquire()
    task = asyncio.create_task(
        run_event(trigger.platform, connection, functions, frame), name="fnhost-ws-event"
    )
    connection.tasks.add(task)
    task.add_done_callback(lambda done: _event_done(connection, done))


def _event_done(connection: Connection, task: asyncio.Task[None]) -> None:
    connection.tasks.discard(task)
    connection.event_slots.release()
    if not task.cancelled() and task.exception() is not None:
        log.error("websocket event failed", exc_info=task.exception())


def _channel(trigger: WebSocketTrigger, connection: Connection, frame: ChannelFrame) -> None:
    if frame.type == "subscribe":
        problem = trigger.hub.subscribe(connection, frame.channel)
        if problem is not None:
            raise FrameError(problem, frame.id)
    else:
        trigger.hub.unsubscribe(connection, frame.channel)
    connection.send(frames.ack(frame.type, frame.channel, frame.id))
