"""Helpers of the websocket trigger's tests: a real fnhost server and real WebSocket clients.

`live_server` runs fnhost (real store, real Deno) under uvicorn on a loopback port in the
test's own event loop, exactly as `fnhost serve` does, so a test can also look at the
trigger's state (subscribers, connections) and set uvicorn's ping interval. Clients are
the `websockets` package's, over real sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from fnhost.api import create_app
from fnhost.platform import Platform
from fnhost.testing import make_config
from fnhost_ws.trigger import WebSocketTrigger
from tests.conftest import ADMIN_KEY, Api

RECEIVE_TIMEOUT_S = 15.0

ECHO = """export default async function handler(req, ctx) {
  const body = await req.json();
  console.log(`event ${body.event} from ${body.connectionId}`);
  return Response.json({ body, trigger: ctx.trigger, user: ctx.user });
}"""

CHAT = """export default async function handler(req, ctx) {
  const { data, connectionId } = await req.json();
  await ctx.publish(data.room ?? "room-1", { from: connectionId, text: data.text });
  return Response.json({ published: true });
}"""


def ws_trigger(event: str) -> dict[str, Any]:
    return {"type": "websocket", "config": {"event": event}}


class LiveServer:
    def __init__(self, platform: Platform, port: int, api: Api) -> None:
        self.platform = platform
        self.port = port
        self.api = api

    @property
    def trigger(self) -> WebSocketTrigger:
        trigger = self.platform.triggers["websocket"]
        assert isinstance(trigger, WebSocketTrigger)
        return trigger

    def ws_url(self, app_id: str = "demo", **query: str) -> str:
        suffix = f"?{urlencode(query)}" if query else ""
        return f"ws://127.0.0.1:{self.port}/v1/{app_id}/ws{suffix}"


@asynccontextmanager
async def live_server(
    tmp_path: Path,
    websocket: dict[str, Any] | None = None,
    ping_seconds: float | None = 20.0,
    **sections: Any,
) -> AsyncIterator[LiveServer]:
    data_dir = tmp_path / "data"
    config = make_config(
        data_dir,
        server={"data_dir": str(data_dir), "admin_key": ADMIN_KEY},
        trigger={"websocket": websocket or {}},
        **sections,
    )
    platform = Platform(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(platform),
            log_level="warning",
            lifespan="on",
            ws_ping_interval=ping_seconds,
            ws_ping_timeout=ping_seconds,
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert not serving.done(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            yield LiveServer(platform, port, Api(http))
    finally:
        server.should_exit = True
        await serving
        sock.close()


class Client:
    """A WebSocket client of fnhost: sends frames as keyword arguments, reads JSON frames."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.connection_id: str = hello.get("connectionId", "")

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame, ensure_ascii=False))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def receive(self, within: float = RECEIVE_TIMEOUT_S) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), within))
        return frame

    async def receive_many(self, count: int) -> list[dict[str, Any]]:
        return [await self.receive() for _ in range(count)]

    async def subscribe(self, channel: str) -> None:
        await self.send(type="subscribe", channel=channel)
        assert await self.receive() == {"type": "subscribed", "channel": channel}

    async def closed(self) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), RECEIVE_TIMEOUT_S)
        except Exception:
            pass
        await self.ws.wait_closed()
        return self.ws.close_code, self.ws.close_reason or ""


@asynccontextmanager
async def ws_client(url: str, **options: Any) -> AsyncIterator[Client]:
    async with connect(url, open_timeout=30, **options) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), RECEIVE_TIMEOUT_S))
        yield Client(ws, hello)


async def eventually(check: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Wait until `check()` is true, polling; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


class ServeProcess:
    """`fnhost serve` in a process of its own, with its own data dir and port."""

    def __init__(self, workdir: Path, environment: dict[str, str]) -> None:
        workdir.mkdir(parents=True)
        self.workdir = workdir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        env = {
            **os.environ,
            **environment,
            "FNHOST_SERVER__PORT": str(self.port),
            "FNHOST_SERVER__DATA_DIR": str(workdir / ".fnhost"),
            "NO_COLOR": "1",
        }
        with (workdir / "serve.log").open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fnhost.cli", "serve"],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, app_id: str = "demo") -> str:
        return f"ws://127.0.0.1:{self.port}/v1/{app_id}/ws"

    def output(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")

    async def wait_healthy(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                assert self.process.poll() is None, self.output()
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"fnhost did not start: {self.output()}"
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
