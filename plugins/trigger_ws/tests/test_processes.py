"""Two real fnhost processes (`fnhost serve`) on one PostgreSQL store: a ctx.publish on one
reaches the subscribers connected to the other, through LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.fernet import Fernet

from fnhost_ws.postgres import APP_NAME
from plugins.trigger_ws.tests.support import CHAT, Client, ServeProcess, ws_client, ws_trigger
from tests.conftest import ADMIN_KEY, Api


@pytest.fixture
async def processes(
    tmp_path: Path, postgres_url: str
) -> AsyncIterator[tuple[ServeProcess, ServeProcess]]:
    shared = {
        "FNHOST_STORE__URL": postgres_url,
        "FNHOST_SERVER__ADMIN_KEY": ADMIN_KEY,
        "FNHOST_SERVER__ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    started = [ServeProcess(tmp_path / name, shared) for name in ("one", "two")]
    try:
        await asyncio.gather(*(process.wait_healthy() for process in started))
        yield started[0], started[1]
    finally:
        for process in started:
            process.stop()


async def chat(sender: Client, text: str, room: str = "room-1") -> None:
    await sender.send(type="event", event="chat_message", data={"text": text, "room": room})
    reply = await sender.receive()
    assert reply["status"] == 200, reply


async def nothing_more(*clients: Client) -> None:
    """No frame is waiting for these clients: a ping is answered first."""
    for client in clients:
        await client.send(type="ping")
        assert await client.receive() == {"type": "pong"}


async def test_a_publish_reaches_subscribers_on_every_process(
    processes: tuple[ServeProcess, ServeProcess],
) -> None:
    one, two = processes
    async with httpx.AsyncClient(base_url=one.url, timeout=60) as http:
        await Api(http).deploy("chat", CHAT, expect=201, trigger=ws_trigger("chat_message"))
    async with (
        ws_client(one.ws_url()) as on_one,
        ws_client(two.ws_url()) as on_two,
        ws_client(two.ws_url()) as sender,
    ):
        await on_one.subscribe("room-1")
        await on_two.subscribe("room-1")

        # The function runs on process two; its publish reaches process one, and each
        # subscriber gets it exactly once (process two ignores its own NOTIFY).
        await chat(sender, "hello from two")
        for client in (on_one, on_two):
            message = await client.receive()
            assert message["data"] == {"from": sender.connection_id, "text": "hello from two"}
        await nothing_more(on_one, on_two)

        # Larger than a NOTIFY payload (8000 bytes): sent in parts, joined on arrival.
        text = "é🙂x" * 5000  # 35 000 bytes of UTF-8
        await chat(sender, text)
        assert (await on_one.receive())["data"]["text"] == text
        assert (await on_two.receive())["data"]["text"] == text

        # The other way round, and channels stay apart across processes.
        async with ws_client(one.ws_url()) as sender_on_one:
            await chat(sender_on_one, "to room 2", room="room-2")
            await chat(sender_on_one, "back", room="room-1")
            assert (await on_two.receive())["data"]["text"] == "back"
            assert (await on_one.receive())["data"]["text"] == "back"
        await nothing_more(on_one, on_two)

        # A delete through process one: one stops at once, two within
        # server.function_cache_seconds (1 s by default).
        async with httpx.AsyncClient(base_url=one.url, timeout=60) as http:
            assert (await Api(http).delete("/functions/chat")).status_code == 204
        async with ws_client(one.ws_url()) as sender_on_one:
            await sender_on_one.send(type="event", event="chat_message", data={"text": "gone"})
            assert (await sender_on_one.receive())["type"] == "error"
        deleted_at = time.monotonic()
        while True:
            await sender.send(type="event", event="chat_message", data={"text": "gone?"})
            if (await sender.receive())["type"] == "error":
                break
            await asyncio.sleep(0.1)
        assert time.monotonic() - deleted_at < 5


async def test_the_fan_out_reconnects_when_its_connection_drops(
    processes: tuple[ServeProcess, ServeProcess], postgres_url: str
) -> None:
    one, two = processes
    async with httpx.AsyncClient(base_url=one.url, timeout=60) as http:
        await Api(http).deploy("chat", CHAT, expect=201, trigger=ws_trigger("chat_message"))
    async with ws_client(one.ws_url()) as listener, ws_client(two.ws_url()) as sender:
        await listener.subscribe("room-1")
        await chat(sender, "before")
        assert (await listener.receive())["data"]["text"] == "before"

        connection = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
        try:
            terminated = await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()",
                APP_NAME,
            )
        finally:
            await connection.close()
        assert terminated == 2  # one listener per process

        # Messages published while a process reconnects are lost (at most once); keep
        # chatting until one gets through again.
        for attempt in range(40):
            await chat(sender, f"after {attempt}")
            try:
                message = await listener.receive(within=0.5)
            except TimeoutError:
                continue
            assert message["data"]["text"].startswith("after")
            break
        else:
            raise AssertionError("the fan-out did not come back: " + one.output() + two.output())
    assert "PostgreSQL connection failed" in one.output() + two.output()
