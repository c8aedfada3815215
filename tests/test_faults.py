"""Faults with real processes and real databases: a Deno worker SIGKILLed mid-call, fnhost
SIGKILLed under load and restarted on its data, the store cut off during load (PostgreSQL
through a proxy the test cuts; SQLite locked by another process), and a journal holding
records the store refuses.

The promise under test (DESIGN.md section 4): every invocation that got an answer is
recorded exactly once, whatever fails, and fnhost answers with JSON errors meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.live_server import ADMIN, LiveServer, deno_workers, free_port, live_server

TAG = """export default async function handler(req) {
  return new Response(new URL(req.url).pathname);
}"""
SLOW = """export default async function handler(req) {
  console.log("started");
  await new Promise((resolve) => setTimeout(resolve, 3000));
  return new Response("done");
}"""
NO_MANAGEMENT_LIMIT = {"FNHOST_LIMITS__MANAGEMENT_PER_SECOND_PER_APP": "0"}


def deploy(http: httpx.Client, name: str, code: str) -> None:
    response = http.post("/v1/demo/functions", json={"name": name, "code": code})
    assert response.status_code in (200, 201), response.text


def recorded_paths(http: httpx.Client, name: str) -> Counter[str]:
    response = http.get(f"/v1/demo/functions/{name}/logs", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return Counter(record["path"] for record in response.json()["logs"])


def journal_files(server: LiveServer) -> list[str]:
    return sorted(p.name for p in server.data_dir.glob("records.*"))


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# -- a. a Deno worker killed mid-call ------------------------------------------------------


@pytest.mark.timeout(60)
def test_killed_deno_worker_fails_the_call_with_502_and_is_replaced(tmp_path: Path) -> None:
    with (
        live_server(tmp_path) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http,
    ):
        deploy(http, "slow", SLOW)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http.get, "/v1/demo/fn/slow")
            wait_for(lambda: deno_workers(server.pid), 10, "the Deno worker")
            time.sleep(1)  # the call is inside its 3 s sleep now
            victims = deno_workers(server.pid)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            failed = pending.result(timeout=20)

        assert failed.status_code == 502, failed.text
        body = failed.json()
        assert body["error"] == "the function's worker failed"
        invocation_id = body["detail"]["invocationId"]
        records = http.get("/v1/demo/functions/slow/logs").json()["logs"]
        crashed = next(r for r in records if r["id"] == invocation_id)
        assert crashed["status_code"] == 502 and crashed["level"] == "error"
        assert re.search(r"SIGKILL|killed|crash", crashed["error"]), crashed
        assert [line["message"] for line in crashed["logs"]] in ([], ["started"])

        again = http.get("/v1/demo/fn/slow")
        assert again.status_code == 200 and again.text == "done"
        assert set(deno_workers(server.pid)).isdisjoint(victims)
    assert "unexpected error" not in server.output


# -- b. fnhost SIGKILLed under load, restarted on the same data ---------------------------


async def load_and_kill(
    server: LiveServer, total: int, concurrency: int, kill_after: int
) -> set[str]:
    """Call /fn/tag/call-<n> for n < total, `concurrency` at a time; SIGKILL the server
    once `kill_after` calls are answered. Return the ids of the calls that got an answer."""
    answered: set[str] = set()
    numbers = iter(range(total))  # shared by the workers: each call is made once

    async def worker(client: httpx.AsyncClient) -> None:
        for number in numbers:
            call_id = f"call-{number}"
            try:
                response = await client.get(f"/v1/demo/fn/tag/{call_id}")
            except httpx.TransportError:
                continue  # no answer: the server died with this call in flight
            assert response.status_code == 200 and response.text == f"/{call_id}"
            answered.add(call_id)
            if len(answered) == kill_after:
                server.kill()  # the other workers' calls are in flight

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return answered


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"FNHOST_STORE__URL": request.getfixturevalue("postgres_url")}


@pytest.mark.timeout(120)
async def test_sigkill_under_load_keeps_every_answered_call_recorded_once(
    tmp_path: Path, store_settings: dict[str, str]
) -> None:
    settings = {**store_settings, **NO_MANAGEMENT_LIMIT}
    server = LiveServer(tmp_path, settings).start()
    try:
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http:
            deploy(http, "tag", TAG)
        answered = await load_and_kill(server, total=200, concurrency=20, kill_after=80)
    finally:
        server.kill()
    assert 80 <= len(answered) < 200, len(answered)

    restarted = LiveServer(tmp_path, settings).start()  # same data dir, same store
    try:
        with httpx.Client(base_url=restarted.url, headers=ADMIN, timeout=30) as http:
            wait_for(lambda: not journal_files(restarted), 20, "the journal replay")
            paths = recorded_paths(http, "tag")
    finally:
        restarted.stop()
    duplicated = {path: n for path, n in paths.items() if n > 1}
    assert not duplicated, duplicated
    missing = {f"/{call_id}" for call_id in answered} - set(paths)
    assert not missing, sorted(missing)
    assert "Traceback" not in restarted.output and "unexpected error" not in restarted.output
    print(
        f"\nSIGKILL under load: {len(answered)} of 200 calls answered before the kill, "
        f"{len(paths)} recorded after the restart, none duplicated"
    )


# -- c. the store goes away during load and comes back -------------------------------------


class CuttableProxy:
    """TCP proxy 127.0.0.1:<port> -> target, on its own thread and event loop. `cut()`
    closes every connection and refuses new ones; `restore()` listens again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> CuttableProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *_: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def restore(self) -> None:
        async def listen() -> None:
            self._server = await asyncio.start_server(
                self._relay, "127.0.0.1", self.port, reuse_address=True
            )

        self._run(listen())

    def cut(self) -> None:
        async def close_all() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._open):
                writer.transport.abort()
            self._open.clear()

        self._run(close_all())

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._open -= {writer, up_writer}


def through(proxy: CuttableProxy, url: str) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


MANAGEMENT_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/demo/functions", None),
    ("GET", "/v1/demo/functions/tag", None),
    ("GET", "/v1/demo/functions/tag/logs", None),
    ("POST", "/v1/demo/functions", {"name": "tag", "code": TAG}),
    ("PATCH", "/v1/demo/functions/tag/env", {"A": "1"}),
    ("POST", "/v1/demo/functions/tag/invoke", {}),
    ("GET", "/v1/demo/settings", None),
]


@pytest.mark.timeout(120)
def test_postgres_outage_gives_503s_keeps_calls_answering_and_loses_no_record(
    tmp_path: Path, postgres_url: str
) -> None:
    host, port = urlsplit(postgres_url).hostname, urlsplit(postgres_url).port
    with CuttableProxy(host or "127.0.0.1", port or 5432) as proxy:
        settings = {"FNHOST_STORE__URL": through(proxy, postgres_url), **NO_MANAGEMENT_LIMIT}
        with (
            live_server(tmp_path, settings) as server,
            httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http,
        ):
            deploy(http, "tag", TAG)
            deploy(http, "cold", TAG)
            assert http.get("/v1/demo/fn/tag/before").status_code == 200
            assert proxy.connections > 0

            proxy.cut()
            started = time.monotonic()
            for method, path, body in MANAGEMENT_CALLS:
                response = http.request(method, path, json=body)
                assert response.status_code == 503, (method, path, response.text)
                assert response.json()["error"], response.text
            # Past server.function_cache_seconds (1 s): the definition last read still serves.
            time.sleep(1.5)
            # A function never called here is not cached: it cannot be found meanwhile.
            cold = http.get("/v1/demo/fn/cold")
            assert cold.status_code == 503 and cold.json()["error"], cold.text
            with ThreadPoolExecutor(10) as pool:
                calls = list(pool.map(lambda n: http.get(f"/v1/demo/fn/tag/outage-{n}"), range(40)))
            assert [c.status_code for c in calls] == [200] * 40, [c.text for c in calls][:3]
            assert time.monotonic() - started < 30
            assert journal_files(server)  # the journal (or its replaying part) holds them

            proxy.restore()
            wait_for(lambda: not journal_files(server), 30, "the journal replay")
            paths = recorded_paths(http, "tag")
            expected = {"/before", *(f"/outage-{n}" for n in range(40))}
            assert set(paths) == expected and set(paths.values()) == {1}, paths
            assert http.get("/v1/demo/functions/tag").status_code == 200
            assert http.get("/v1/demo/fn/cold").status_code == 200
        assert "unexpected error" not in server.output, server.output[-5000:]


@pytest.mark.timeout(90)
def test_sqlite_locked_by_another_process_journals_then_catches_up(tmp_path: Path) -> None:
    with (
        live_server(tmp_path, NO_MANAGEMENT_LIMIT) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=60) as http,
    ):
        deploy(http, "tag", TAG)
        assert http.get("/v1/demo/fn/tag/before").status_code == 200
        # Another process (a backup, a migration) holds SQLite's write lock.
        holder = sqlite3.connect(server.data_dir / "fnhost.db", isolation_level=None, timeout=10)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with ThreadPoolExecutor(10) as pool:
                calls = list(pool.map(lambda n: http.get(f"/v1/demo/fn/tag/locked-{n}"), range(10)))
            assert [c.status_code for c in calls] == [200] * 10
            blocked = http.post("/v1/demo/functions", json={"name": "tag", "code": TAG})
            assert blocked.status_code == 503 and blocked.json()["error"], blocked.text
            assert http.get("/v1/demo/functions/tag").status_code == 200  # reads go on (WAL)
            assert journal_files(server)  # the journal (or its replaying part) holds them
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_for(lambda: not journal_files(server), 30, "the journal replay")
        paths = recorded_paths(http, "tag")
        expected = {"/before", *(f"/locked-{n}" for n in range(10))}
        assert set(paths) == expected and set(paths.values()) == {1}, paths
    assert "unexpected error" not in server.output, server.output[-5000:]


# -- d. a journal holding records the store refuses -----------------------------------------


@pytest.mark.timeout(90)
def test_journal_replay_sets_refused_records_aside(tmp_path: Path, postgres_url: str) -> None:
    settings = {"FNHOST_STORE__URL": postgres_url}
    with (
        live_server(tmp_path, settings) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http,
    ):
        deploy(http, "tag", TAG)
        assert http.get("/v1/demo/fn/tag/live").status_code == 200
        template = dict(http.get("/v1/demo/functions/tag/logs").json()["logs"][0])

    def record(record_id: str, path: str) -> bytes:
        fields = {
            "id": record_id,
            "app_id": "demo",
            "function_name": "tag",
            "function_version": 1,
            "timestamp": template["timestamp"],
            "trigger": "http",
            "method": "GET",
            "path": path,
            "status_code": 200,
            "duration_ms": 1.0,
            "memory_mb": 1.0,
            "error": None,
            "level": "info",
            "logs": [],
        }
        return json.dumps(fields).encode() + b"\n"

    # As a crash could leave it: good records, one PostgreSQL refuses (NUL), a torn line.
    journal = server.data_dir / "records.journal"
    journal.write_bytes(
        record("a" * 32, "/journaled-1")
        + record("b" * 32, "/\u0000")
        + record("c" * 32, "/journaled-2")
        + b'{"id": "torn'
    )
    with (
        live_server(tmp_path, settings) as server,
        httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as http,
    ):
        wait_for(lambda: "records.journal" not in journal_files(server), 20, "the replay")
        wait_for(lambda: "records.replaying" not in journal_files(server), 20, "the replay")
        paths = recorded_paths(http, "tag")
        assert paths == Counter({"/live": 1, "/journaled-1": 1, "/journaled-2": 1}), paths
        rejected = (server.data_dir / "records.rejected").read_bytes().splitlines()
        assert sorted(line[:12] for line in rejected) == [b'{"id": "torn', b'{"id":"bbbbb'], (
            rejected
        )
