"""Slow and dead clients: a client that does not read is disconnected without holding up
anyone else, and heartbeats keep idle clients connected while dropping dead ones."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from plugins.trigger_ws.tests.support import eventually, live_server, ws_client, ws_trigger

FLOOD = """export default async function handler(req, ctx) {
  const { data } = await req.json();
  const text = "x".repeat(data.size);
  for (let i = 0; i < data.count; i++) await ctx.publish("firehose", { i, text });
  return Response.json({ sent: data.count });
}"""
MESSAGES = 500
MESSAGE_BYTES = 20_000  # 10 MB in all: more than the kernel buffers of a socket hold


def small_receive_buffer(port: int) -> socket.socket:
    """A connected socket whose kernel receive buffer is small, so that a client that stops
    reading fills up quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_slow_client_is_disconnected_and_others_keep_receiving(tmp_path: Path) -> None:
    async with live_server(tmp_path, websocket={"send_queue_frames": 8}) as server:
        hub = server.trigger.hub
        await server.api.deploy("flood", FLOOD, expect=201, trigger=ws_trigger("flood"))
        url = server.ws_url()
        sock = small_receive_buffer(server.port)
        async with (
            # Reads everything the server sends as it comes, as a browser does.
            ws_client(url, compression=None, max_queue=None) as fast,
            ws_client(url, sock=sock, compression=None) as slow,
            ws_client(url) as sender,
        ):
            await fast.subscribe("firehose")
            await slow.subscribe("firehose")
            slow.ws.transport.pause_reading()
            # From here on `slow` reads nothing.
            await sender.send(
                type="event", event="flood", data={"count": MESSAGES, "size": MESSAGE_BYTES}
            )
            received = [(await fast.receive())["data"]["i"] for _ in range(MESSAGES)]
            assert received == list(range(MESSAGES))
            assert (await sender.receive())["data"] == {"sent": MESSAGES}
            await eventually(lambda: slow.connection_id not in hub.connections)
            assert hub.subscribers("demo", "firehose") == 1
            slow.ws.transport.resume_reading()
            code, reason = await slow.closed()
            # 1008 with the reason when the close frame got through the full buffers,
            # 1006 (no close frame) when it could not.
            assert (code, reason) in ((1008, "send queue full: client too slow"), (1006, ""))
            await fast.send(type="ping")
            assert await fast.receive() == {"type": "pong"}


async def test_heartbeats_keep_idle_clients_and_drop_dead_ones(tmp_path: Path) -> None:
    async with live_server(tmp_path, ping_seconds=1.0) as server:
        hub = server.trigger.hub
        async with ws_client(server.ws_url()) as idle, ws_client(server.ws_url()) as dead:
            await idle.subscribe("room-1")
            await dead.subscribe("room-1")
            # A peer that froze: it no longer reads, so it never answers the server's pings.
            dead.ws.transport.pause_reading()
            await eventually(lambda: dead.connection_id not in hub.connections, within=10)
            assert hub.subscribers("demo", "room-1") == 1
            dead.ws.transport.resume_reading()
            await asyncio.sleep(3)  # three ping intervals without a frame from the idle client
            assert idle.connection_id in hub.connections
            await idle.send(type="ping")
            assert await idle.receive() == {"type": "pong"}
