"""The deno runtime behind fnhost's REST API, on a real HTTP server: streamed responses
reach the caller as they are produced (the in-memory test client would buffer them), and
bodies up to the 10 MiB default limit pass while larger ones get 413."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

import fnhost_deno.plugin
import fnhost_sql.plugin
from fnhost.api import create_app
from fnhost.config import MiB
from fnhost.platform import Platform
from fnhost.plugins import create_plugin_manager
from fnhost.testing import make_config
from plugins.runtime_deno.tests.support import eventually

ADMIN_KEY = "fnh_deno-test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

TICKER = """export default () => new Response(new ReadableStream({
  async start(controller) {
    console.log("tick a");
    controller.enqueue(new TextEncoder().encode("a"));
    await new Promise((r) => setTimeout(r, 300));
    console.log("tick b");
    controller.enqueue(new TextEncoder().encode("b"));
    controller.close();
  },
}), { headers: { "content-type": "text/plain", "x-streamed": "yes" } })"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of fnhost served by uvicorn on a free loopback port."""
    config = make_config(tmp_path, server={"data_dir": str(tmp_path), "admin_key": ADMIN_KEY})
    pm = create_plugin_manager(
        load_entry_points=False, extra=[fnhost_deno.plugin, fnhost_sql.plugin]
    )
    app = create_app(Platform(config, pm))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", http="httptools", loop="none")
    )
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    try:
        await eventually(lambda: server.started or serving.done(), within=20)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def deploy(client: httpx.AsyncClient, name: str, code: str, **fields: Any) -> None:
    response = await client.post(
        "/v1/demo/functions", json={"name": name, "code": code, **fields}, headers=ADMIN
    )
    assert response.status_code == 201, response.text


async def records(client: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/demo/functions/{name}/logs", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["logs"]  # type: ignore[no-any-return]


async def test_a_streamed_response_reaches_the_caller_as_it_is_produced(
    client: httpx.AsyncClient,
) -> None:
    await deploy(client, "ticker", TICKER)
    started = time.monotonic()
    received: list[tuple[float, bytes]] = []
    async with client.stream("GET", "/v1/demo/fn/ticker") as response:
        assert response.status_code == 200
        assert response.headers["x-streamed"] == "yes"
        assert response.headers["content-type"] == "text/plain"
        async for chunk in response.aiter_raw():
            received.append((time.monotonic() - started, chunk))
    assert b"".join(chunk for _, chunk in received) == b"ab"
    # "b" is produced 300 ms after "a": had the body been buffered, both would come at once.
    assert received[-1][0] - received[0][0] > 0.2, received
    [record] = await records(client, "ticker")
    assert (record["status_code"], record["level"], record["error"]) == (200, "info", None)
    assert [line["message"] for line in record["logs"]] == ["tick a", "tick b"]
    assert record["duration_ms"] >= 250
    assert record["memory_mb"] > 0


async def test_test_invoke_buffers_a_streamed_response(client: httpx.AsyncClient) -> None:
    await deploy(client, "ticker", TICKER)
    response = await client.post("/v1/demo/functions/ticker/invoke", json={}, headers=ADMIN)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["body"] == "ab"
    assert [line["message"] for line in answer["logs"]] == ["tick a", "tick b"]


async def test_a_stream_past_its_timeout_is_cut_and_recorded_as_504(
    client: httpx.AsyncClient,
) -> None:
    code = TICKER.replace("300", "5000")
    await deploy(client, "stalls", code, timeoutMs=400)
    received = []
    async with client.stream("GET", "/v1/demo/fn/stalls") as response:
        assert response.status_code == 200  # sent before the stall
        # Cut without the final chunk: the caller cannot take "a" for the whole body.
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async for chunk in response.aiter_raw():
                received.append(chunk)
    assert received == [b"a"]
    [record] = await records(client, "stalls")
    assert record["status_code"] == 504 and "timed out" in record["error"]
    assert [line["message"] for line in record["logs"]] == ["tick a"]


async def test_a_stream_the_function_fails_midway_is_cut_with_one_log_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    code = TICKER.replace("controller.close();", 'controller.error(new Error("feed lost"));')
    await deploy(client, "breaks", code)
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        async with client.stream("GET", "/v1/demo/fn/breaks") as response:
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                await response.aread()
    [record] = await records(client, "breaks")
    assert record["status_code"] == 500 and "feed lost" in record["error"]
    [line] = [r for r in caplog.records if "response stream" in r.getMessage()]
    assert line.getMessage() == (
        f"response stream of invocation {record['id']} cut: the function threw an error"
    )
    assert line.exc_info is None and line.levelno == logging.INFO
    assert (await client.get("/v1/demo/fn/ticker")).status_code == 404  # the server is fine


async def test_a_caller_leaving_mid_stream_leaves_the_function_usable(
    client: httpx.AsyncClient,
) -> None:
    code = """export default (req) => new URL(req.url).pathname === "/short"
      ? new Response("short")
      : new Response(new ReadableStream({
      async pull(controller) {
        await new Promise((r) => setTimeout(r, 20));
        controller.enqueue(new TextEncoder().encode("."));
      },
    }))"""
    await deploy(client, "endless", code, timeoutMs=60_000)
    async with client.stream("GET", "/v1/demo/fn/endless") as response:
        async for _ in response.aiter_raw():
            break
    response = await client.get("/v1/demo/fn/endless/short")
    assert (response.status_code, response.text) == (200, "short")
    cut = {record["path"]: record for record in await records(client, "endless")}["/"]
    assert cut["status_code"] == 200 and cut["duration_ms"] < 5000


async def test_a_ten_mib_body_goes_through_and_a_larger_one_is_413(
    client: httpx.AsyncClient,
) -> None:
    code = """export default async (req) => {
      const body = new Uint8Array(await req.arrayBuffer());
      return new Response(body.reverse(), { headers: { "x-length": String(body.length) } });
    }"""
    await deploy(client, "mirror", code, memoryLimitMb=256)
    payload = bytes(range(256)) * (10 * MiB // 256)
    assert len(payload) == 10 * MiB
    response = await client.post("/v1/demo/fn/mirror", content=payload)
    assert response.status_code == 200, response.text[:200]
    assert response.headers["x-length"] == str(10 * MiB)
    assert response.content == payload[::-1]
    too_large = await client.post("/v1/demo/fn/mirror", content=payload + b"!")
    assert too_large.status_code == 413
    assert "error" in too_large.json()
