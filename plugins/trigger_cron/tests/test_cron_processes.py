"""Two real fnhost processes (`fnhost serve`) on one PostgreSQL store: each fire time of a
cron function runs exactly once across them, and keeps running when one of them dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.conftest import ADMIN, ADMIN_KEY

FNHOST = [sys.executable, "-m", "fnhost.cli"]
TICK = """export default async function handler(req) {
  const { scheduledTime } = await req.json();
  console.log(scheduledTime);
  return new Response("ok");
}
"""
START_TIMEOUT_S = 30
LATENESS: list[float] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Server:
    """One `fnhost serve` process with its own data dir and port."""

    name: str
    workdir: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return (self.workdir / "serve.log").read_text(errors="replace")

    def fnhost(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "FNHOST_URL": self.url,
            "FNHOST_KEY": ADMIN_KEY,
            "NO_COLOR": "1",
            "COLUMNS": "250",
        }
        result = subprocess.run(
            [*FNHOST, *args], cwd=self.workdir, capture_output=True, text=True, timeout=60, env=env
        )
        assert result.returncode == 0, result.stderr
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def spawn(name: str, workdir: Path, environment: dict[str, str]) -> Server:
    workdir.mkdir(parents=True)
    port = free_port()
    env = {
        **os.environ,
        **environment,
        "FNHOST_SERVER__PORT": str(port),
        "NO_COLOR": "1",
        "FNHOST_SERVER__DATA_DIR": str(workdir / ".fnhost"),
    }
    with (workdir / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [*FNHOST, "serve"],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, workdir, port, process)


def wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.output()
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{server.name} did not start: {server.output()}")


@pytest.fixture
def servers(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Server, Server]]:
    shared = {
        "FNHOST_STORE__URL": postgres_url,
        "FNHOST_SERVER__ADMIN_KEY": ADMIN_KEY,
        "FNHOST_SERVER__ENCRYPTION_KEY": Fernet.generate_key().decode(),
        # Learn of the other process's deploys within a second.
        "FNHOST_TRIGGER__CRON__SYNC_SECONDS": "1",
    }
    started = [spawn(name, tmp_path / name, shared) for name in ("a", "b")]
    try:
        for server in started:
            wait_healthy(server)
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()


def scheduled_times(server: Server, name: str) -> list[datetime]:
    """The scheduledTime every recorded cron run of `name` logged, oldest first; each run
    started less than a second after it."""
    response = httpx.get(
        f"{server.url}/v1/demo/functions/{name}/logs",
        params={"limit": 1000},
        headers=ADMIN,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    records = response.json()["logs"]
    assert all(r["trigger"] == "cron" and r["status_code"] == 200 for r in records), records
    times = []
    for record in records:
        scheduled = parse_time(record["logs"][0]["message"])
        lateness = (parse_time(record["timestamp"]) - scheduled).total_seconds()
        assert 0 <= lateness < 1, record
        LATENESS.append(lateness)
        times.append(scheduled)
    return sorted(times)


def wait_for(
    server: Server, name: str, count: int, after: datetime, timeout: float
) -> list[datetime]:
    deadline = time.monotonic() + timeout
    while True:
        times = scheduled_times(server, name)
        if len([t for t in times if t > after]) >= count:
            return times
        assert time.monotonic() < deadline, f"{count} fires after {after} expected: {times}"
        time.sleep(0.25)


def gaps(times: list[datetime]) -> list[datetime]:
    """Fire times of a once-a-second schedule missing between the first and the last."""
    present = set(times)
    missing, moment = [], times[0]
    while moment < times[-1]:
        moment += timedelta(seconds=1)
        if moment not in present:
            missing.append(moment)
    return missing


def claims_by_pid(database_url: str) -> Counter[str]:
    """How many fire times each process claimed (owners are "host:pid:nonce")."""

    async def owners() -> list[str]:
        import asyncpg

        url = database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(url)
        try:
            return [row["owner"] for row in await connection.fetch("SELECT owner FROM cron_claims")]
        finally:
            await connection.close()

    return Counter(owner.split(":")[1] for owner in asyncio.run(owners()))


def test_each_fire_time_runs_once_across_two_processes(
    servers: tuple[Server, Server], tmp_path: Path, postgres_url: str
) -> None:
    a, b = servers
    source = tmp_path / "tick.js"
    source.write_text(TICK)
    a.fnhost("deploy", str(source), "--app", "demo", "--cron", "* * * * * *", "--no-http")
    deployed_at = datetime.now(UTC)

    # Deployed through a; b learns of it from the store and competes for every fire time.
    times = wait_for(b, "tick", 11, deployed_at, timeout=20)
    assert max(Counter(times).values()) == 1, times
    assert gaps(times) == [], times
    claims = claims_by_pid(postgres_url)
    print(f"\nclaims won by pid: {dict(claims)} (a={a.process.pid}, b={b.process.pid})")

    # Both processes show the next fire time, in the API and the CLI.
    details: dict[str, Any] = httpx.get(f"{b.url}/v1/demo/functions/tick", headers=ADMIN).json()
    assert parse_time(details["trigger"]["nextFireTime"]) > times[-1]
    assert "cron * * * * * * (next 20" in b.fnhost("ls", "--app", "demo").stdout
    shown = json.loads(a.fnhost("show", "tick", "--app", "demo", "--json").stdout)
    assert shown["trigger"]["nextFireTime"].endswith("Z")

    # a dies without a goodbye; b goes on alone.
    os.kill(a.process.pid, signal.SIGKILL)
    a.process.wait()
    killed_at = datetime.now(UTC)
    times = wait_for(b, "tick", 4, killed_at + timedelta(seconds=1), timeout=10)
    assert max(Counter(times).values()) == 1, times
    # At most the fire time a had claimed as it died is lost.
    assert len(gaps(times)) <= 1, gaps(times)
    after = [t for t in times if t > killed_at + timedelta(seconds=1)]
    assert gaps(after) == [] and len(after) >= 4
    assert len(times) >= 15
    print(f"max lateness over both processes: {max(LATENESS) * 1000:.1f} ms")


SLOW_TICK = """export default async function handler(req) {
  await new Promise((resolve) => setTimeout(resolve, 2500));
  return new Response("ok");
}
"""


def test_a_run_still_going_is_not_started_again_by_the_other_process(
    servers: tuple[Server, Server], tmp_path: Path, postgres_url: str
) -> None:
    # Each process skips the fire times that come while its own run goes on; the other
    # process must skip them too, or it would start a second run beside the first.
    a, b = servers
    source = tmp_path / "slow.js"
    source.write_text(SLOW_TICK)
    a.fnhost("deploy", str(source), "--app", "demo", "--cron", "* * * * * *", "--no-http")
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(
            f"{b.url}/v1/demo/functions/slow/logs", params={"limit": 100}, headers=ADMIN
        )
        runs = sorted(
            (parse_time(r["timestamp"]), timedelta(milliseconds=r["duration_ms"]))
            for r in response.json()["logs"]
        )
        if len(runs) >= 4:
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.5)
    for (started, took), (next_started, _) in pairwise(runs):
        assert took >= timedelta(seconds=2.5)
        assert next_started >= started + took, runs  # no overlap
    claims = claims_by_pid(postgres_url)
    print(f"\nclaims by pid: {dict(claims)} (a={a.process.pid}, b={b.process.pid})")
