"""WebSocket trigger throughput and latency with 100 connected clients.

    uv run python bench/ws_bench.py [--clients 100] [--seconds 10]

Starts `fnhost serve` (SQLite, Deno) in a temporary directory, deploys two functions and
connects the clients (the `websockets` package, one asyncio process, on the same machine
as the server: on 2 cores client and server share the CPU). Prints:

- request/reply: every client sends an event, waits for its reply, and sends the next one;
  replies per second and reply latency (p50, p99) over the run;
- broadcast: every client is subscribed to one channel and one client sends events whose
  function calls ctx.publish; messages delivered per second (summed over the clients) and
  the latency from sending the event to a subscriber receiving the message (p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ADMIN_KEY = "fnh_bench-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
ECHO = """export default async function handler(req, ctx) {
  const { data } = await req.json();
  return Response.json({ echo: data });
}"""
CHAT = """export default async function handler(req, ctx) {
  const { data } = await req.json();
  await ctx.publish("room", data);
  return Response.json({ ok: true });
}"""
BROADCAST_IN_FLIGHT = 8


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FNHOST_SERVER__PORT": str(port),
        "FNHOST_SERVER__ADMIN_KEY": ADMIN_KEY,
        "FNHOST_SERVER__DATA_DIR": str(workdir / ".fnhost"),
        # The benchmark measures the trigger, not the per-app rate limit.
        "FNHOST_LIMITS__CALLS_PER_SECOND_PER_APP": "0",
    }
    log = (workdir / "serve.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "fnhost.cli", "serve"],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def wait_healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=1) as client:
        for _ in range(600):
            if process.poll() is not None:
                raise SystemExit("fnhost serve exited")
            try:
                if (await client.get(f"{base}/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("fnhost serve did not start")


async def deploy(base: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        for name, code, event in (("echo", ECHO, "echo"), ("chat", CHAT, "chat")):
            trigger = {"type": "websocket", "config": {"event": event}}
            response = await client.post(
                "/v1/bench/functions", json={"name": name, "code": code, "trigger": trigger}
            )
            response.raise_for_status()


async def request_reply(clients: list[ClientConnection], seconds: float) -> None:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(ws: ClientConnection) -> None:
        serial = 0
        while time.perf_counter() < deadline:
            serial += 1
            started = time.perf_counter()
            await ws.send(json.dumps({"type": "event", "event": "echo", "data": serial, "id": 1}))
            reply = json.loads(await ws.recv())
            assert reply["type"] == "reply" and reply["status"] == 200, reply
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(loop(ws) for ws in clients))
    elapsed = time.perf_counter() - started
    ms = [s * 1000 for s in latencies]
    print(
        f"request/reply, {len(clients)} clients, 1 event in flight each: "
        f"{len(latencies) / elapsed:,.0f} replies/s; reply latency "
        f"p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms "
        f"({len(latencies):,} replies in {elapsed:.1f} s)"
    )


async def broadcast(clients: list[ClientConnection], seconds: float) -> None:
    for ws in clients:
        await ws.send(json.dumps({"type": "subscribe", "channel": "room"}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
    latencies: list[float] = []
    delivered = 0
    sent_at: dict[int, float] = {}
    publisher = clients[0]
    stop = asyncio.Event()
    in_flight = asyncio.Semaphore(BROADCAST_IN_FLIGHT)

    async def receive(ws: ClientConnection) -> None:
        nonlocal delivered
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "message":
                delivered += 1
                latencies.append(time.perf_counter() - sent_at[frame["data"]])
            elif frame["type"] == "reply":
                in_flight.release()

    async def publish() -> None:
        serial = 0
        while not stop.is_set():
            await in_flight.acquire()
            serial += 1
            sent_at[serial] = time.perf_counter()
            await publisher.send(json.dumps({"type": "event", "event": "chat", "data": serial}))

    receivers = [asyncio.create_task(receive(ws)) for ws in clients]
    sender = asyncio.create_task(publish())
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - started
    count = delivered
    await asyncio.sleep(1)
    for task in (*receivers, sender):
        task.cancel()
    await asyncio.gather(*receivers, sender, return_exceptions=True)
    dropped = sum(1 for ws in clients if ws.close_code is not None)
    if dropped:
        print(f"warning: {dropped} clients were disconnected during the broadcast")
    ms = [s * 1000 for s in latencies]
    print(
        f"broadcast to {len(clients)} subscribers, {BROADCAST_IN_FLIGHT} publishing events in "
        f"flight: {count / elapsed:,.0f} messages delivered/s "
        f"({count / elapsed / len(clients):,.0f} publishes/s); event-to-message latency "
        f"p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms"
    )


async def main(clients_count: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_server(workdir, port)
        try:
            await wait_healthy(base, process)
            try:
                await deploy(base)
            except httpx.HTTPStatusError as exc:
                log = (workdir / "serve.log").read_text(errors="replace")
                raise SystemExit(f"deploy failed: {exc.response.text}\n{log}") from None
            clients: list[Any] = []
            for _ in range(clients_count):
                ws = await connect(f"ws://127.0.0.1:{port}/v1/bench/ws", compression=None)
                assert json.loads(await ws.recv())["type"] == "connected"
                clients.append(ws)
            # Warm up: the first event of each function starts its Deno worker.
            await request_reply(clients[:1], 1.0)
            await request_reply(clients, seconds)
            await broadcast(clients, seconds)
            for ws in clients:
                await ws.close()
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(arguments.clients, arguments.seconds))
