"""Which functions handle an event, and running them for a client's event frame.

The functions of an app are read from the store once per `server.function_cache_seconds`
and grouped by event. Deploys and deletes made through this process drop the app's
entry at once (the deploy/delete hooks), so a deleted function stops receiving events
as soon as its DELETE returns; another process sharing the store sees the change within
`function_cache_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from fnhost.errors import FnhostError
from fnhost.models import InvocationRequest, InvocationResult, StoredFunction
from fnhost_ws import frames
from fnhost_ws.frames import EventFrame

if TYPE_CHECKING:
    from fnhost.platform import Platform
    from fnhost_ws.hub import Connection

log = logging.getLogger("fnhost.ws")

EVENT_URL = "http://ws.fnhost.local/"
MAX_CACHED_APPS = 10_000

EventMap = dict[str, list[StoredFunction]]


class EventTable:
    """Per app: event name -> the functions whose websocket trigger names it."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._apps: dict[str, tuple[float, EventMap]] = {}
        self._loading: dict[str, asyncio.Future[EventMap]] = {}
        # Bumped by `forget`: a read of the store that began before a change must not be
        # cached after it.
        self._generation = 0

    def forget(self, app_id: str) -> None:
        """The app's functions changed: read them again on the next event."""
        self._generation += 1
        self._apps.pop(app_id, None)
        self._loading.pop(app_id, None)

    async def handlers(self, app_id: str, event: str) -> list[StoredFunction]:
        """The functions of the app that handle `event`, ordered by name."""
        cached = self._apps.get(app_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1].get(event, [])
        loading = self._loading.get(app_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load(app_id, cached))
            self._loading[app_id] = loading
            loading.add_done_callback(lambda done: self._loaded(app_id, done))
        table = await asyncio.shield(loading)
        return table.get(event, [])

    async def _load(self, app_id: str, stale: tuple[float, EventMap] | None) -> EventMap:
        started = self._generation
        try:
            functions = await self._platform.store.list_functions(app_id)
        except FnhostError:
            if stale is None or started != self._generation:
                raise
            log.warning("store unavailable; serving the events of app %s from cache", app_id)
            return stale[1]
        table: EventMap = {}
        for function in functions:
            trigger = function.trigger_of("websocket")
            if trigger is not None:
                table.setdefault(trigger.config["event"], []).append(function)
        ttl = self._platform.config.server.function_cache_seconds
        if ttl > 0 and started == self._generation:
            if len(self._apps) >= MAX_CACHED_APPS:
                self._apps.clear()  # bounded: connections to many apps must not grow it forever
            self._apps[app_id] = (time.monotonic() + ttl, table)
        return table

    def _loaded(self, app_id: str, done: asyncio.Future[EventMap]) -> None:
        if self._loading.get(app_id) is done:
            del self._loading[app_id]
        if not done.cancelled():
            done.exception()  # retrieved: awaiting callers got it already


async def run_event(
    platform: Platform, connection: Connection, functions: list[StoredFunction], event: EventFrame
) -> None:
    """Invoke every function for one event frame, concurrently; each answer goes back to
    the connection as a reply frame as soon as it is there."""
    body = msgspec.json.encode(
        {"event": event.event, "data": event.data, "connectionId": connection.id}
    )
    await asyncio.gather(
        *(_invoke(platform, connection, function, event, body) for function in functions)
    )


async def _invoke(
    platform: Platform,
    connection: Connection,
    function: StoredFunction,
    event: EventFrame,
    body: bytes,
) -> None:
    request = InvocationRequest(
        invocation_id=uuid.uuid4().hex,
        method="POST",
        url=EVENT_URL,
        headers=[("content-type", "application/json")],
        body=body,
        trigger={"type": "websocket", "event": event.event, "connectionId": connection.id},
        user=connection.user,
    )
    try:
        limiter = getattr(platform, "call_limiter", None)
        if limiter is not None:
            limiter.acquire(function.app_id, f"calls of app {function.app_id!r}")
        result, record = await platform.service.invoke(
            function, request, trigger="websocket", path="/"
        )
    except FnhostError as exc:
        connection.send(frames.error(exc.message, event.id, function=function.name))
        return
    except Exception:
        log.exception(
            "websocket event %r of %s/%s failed", event.event, function.app_id, function.name
        )
        connection.send(frames.error("internal error", event.id, function=function.name))
        return
    if result.outcome != "ok":
        connection.send(
            frames.reply(event.id, function.name, record.status_code, None, record.error)
        )
        return
    connection.send(frames.reply(event.id, function.name, record.status_code, reply_data(result)))


def reply_data(result: InvocationResult) -> Any:
    """The function's response body as reply data: parsed when it is JSON, else text."""
    if not result.body:
        return None
    content_type = next((v for k, v in result.headers if k.lower() == "content-type"), "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return msgspec.json.decode(result.body)
        except msgspec.DecodeError:
            pass
    return result.body.decode("utf-8", "replace")
