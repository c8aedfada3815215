"""Fan-out through PostgreSQL LISTEN/NOTIFY, on one dedicated asyncpg connection per process.

A message is NOTIFY'd on channel `fnhost_ws` as `origin:serial:index:count|part`, where the
parts, joined, are the JSON `{"a": app_id, "c": channel, "d": data}`. A NOTIFY payload must
stay under 8000 bytes, so a larger message is cut into parts sent in one statement (one
transaction: all or none of them are delivered, in order). A process ignores its own
messages: it delivered them to its subscribers already.

Delivery is at most once: a message published while a process is reconnecting (after
PostgreSQL restarted, say) does not reach that process's subscribers. The connection is
re-established with backoff and checked every `KEEPALIVE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from typing import Any

import asyncpg
import msgspec

from fnhost_ws.fanout import Deliver, Fanout

log = logging.getLogger("fnhost.ws")

CHANNEL = "fnhost_ws"
APP_NAME = "fnhost-ws-fanout"  # how operators find these connections in pg_stat_activity
PART_BYTES = 7500  # NOTIFY payloads must be shorter than 8000 bytes (with the header)
KEEPALIVE_S = 10.0
TIMEOUT_S = 5.0
BACKOFF_S = (0.5, 10.0)
PENDING_S = 60.0  # a part whose siblings never came is dropped after this long


class Envelope(msgspec.Struct):
    a: str  # app id
    c: str  # channel
    d: msgspec.Raw  # data, JSON


class PostgresFanout(Fanout):
    def __init__(self, dsn: str, deliver: Deliver) -> None:
        self._dsn = dsn
        self._deliver = deliver
        self.origin = uuid.uuid4().hex[:12]
        self.connected = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self._serial = itertools.count()
        self._pending: dict[str, tuple[float, list[str | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fnhost-ws-listen")
        try:
            await asyncio.wait_for(self.connected.wait(), TIMEOUT_S)
        except TimeoutError:
            log.warning("websocket fan-out: PostgreSQL not reachable yet; retrying")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish(self, app_id: str, channel: str, data: bytes) -> None:
        connection = self._connection
        if connection is None:
            log.error(
                "websocket fan-out: not connected to PostgreSQL; a message on %s/%s reached "
                "this process's subscribers only",
                app_id,
                channel,
            )
            return
        parts = self._parts(msgspec.json.encode(Envelope(app_id, channel, msgspec.Raw(data))))
        try:
            async with self._lock:
                if len(parts) == 1:
                    await connection.execute(
                        "SELECT pg_notify($1, $2)", CHANNEL, parts[0], timeout=TIMEOUT_S
                    )
                else:
                    await connection.execute(
                        "SELECT pg_notify($1, part) FROM unnest($2::text[]) AS part",
                        CHANNEL,
                        parts,
                        timeout=TIMEOUT_S,
                    )
        except Exception as exc:
            log.error(
                "websocket fan-out: a message on %s/%s reached this process's subscribers only: %r",
                app_id,
                channel,
                exc,
            )

    def _parts(self, message: bytes) -> list[str]:
        chunks = split_utf8(message, PART_BYTES)
        serial = next(self._serial)
        return [
            f"{self.origin}:{serial}:{index}:{len(chunks)}|{chunk}"
            for index, chunk in enumerate(chunks)
        ]

    def _received(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        head, _, part = payload.partition("|")
        try:
            origin, serial, index_text, count_text = head.split(":")
            index, count = int(index_text), int(count_text)
        except ValueError:
            log.warning("websocket fan-out: ignored a notification of another format")
            return
        if origin == self.origin:
            return
        if count > 1:
            joined = self._assemble(f"{origin}:{serial}", index, count, part)
            if joined is None:
                return
            part = joined
        try:
            envelope = msgspec.json.decode(part, type=Envelope)
        except msgspec.DecodeError:
            log.warning("websocket fan-out: ignored a malformed message")
            return
        self._deliver(envelope.a, envelope.c, bytes(envelope.d))

    def _assemble(self, key: str, index: int, count: int, part: str) -> str | None:
        now = time.monotonic()
        self._pending = {k: v for k, v in self._pending.items() if v[0] > now - PENDING_S}
        _, parts = self._pending.setdefault(key, (now, [None] * count))
        if not 0 <= index < len(parts):
            return None
        parts[index] = part
        if any(p is None for p in parts):
            return None
        del self._pending[key]
        return "".join(p or "" for p in parts)

    async def _run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            connection: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(
                    self._dsn, timeout=TIMEOUT_S, server_settings={"application_name": APP_NAME}
                )
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._received)
                if delay > BACKOFF_S[0]:
                    log.warning("websocket fan-out: connected to PostgreSQL again")
                self._connection = connection
                self.connected.set()
                delay = BACKOFF_S[0]
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), KEEPALIVE_S)
                    if lost.is_set():
                        raise ConnectionError("connection closed")
                    async with self._lock:
                        await connection.fetchval("SELECT 1", timeout=TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "websocket fan-out: PostgreSQL connection failed (%r); retrying in %.1f s",
                    exc,
                    delay,
                )
            finally:
                self._connection = None
                self.connected.clear()
                if connection is not None:
                    connection.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_S[1])


def split_utf8(data: bytes, size: int) -> list[str]:
    """Cut UTF-8 `data` into texts of at most `size` bytes, never inside a character."""
    parts = []
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1
        parts.append(data[start:end].decode())
        start = end
    return parts or [""]
