"""The `fnhost` command against a real server process, as an operator uses it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

FNHOST = [sys.executable, "-m", "fnhost.cli"]
HELLO_TS = """export default async function handler(req: Request): Promise<Response> {
  console.log("hello from the CLI");
  return new Response(JSON.stringify({ message: "Hello!" }), {
    headers: { "Content-Type": "application/json" },
  });
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, workdir: Path, port: int, process: subprocess.Popen[str]) -> None:
        self.workdir, self.port, self.process = workdir, port, process
        self.url = f"http://127.0.0.1:{port}"
        self.banner = ""

    def fnhost(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "FNHOST_SERVER__PORT": str(self.port),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
        result = subprocess.run(
            [*FNHOST, *args], cwd=self.workdir, capture_output=True, text=True, timeout=60, env=env
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "FNHOST_SERVER__PORT": str(port), "NO_COLOR": "1"}
    process = subprocess.Popen(
        [*FNHOST, "serve"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    srv = Server(tmp_path, port, process)
    deadline = time.monotonic() + 30
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        srv.banner += line
        if "fnh_" in line or process.poll() is not None:
            break
    assert "fnh_" in srv.banner, srv.banner
    try:
        yield srv
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_serve_prints_url_and_admin_key_once(server: Server) -> None:
    key = (server.workdir / ".fnhost" / "admin.key").read_text().strip()
    assert f"http://127.0.0.1:{server.port}" in server.banner
    assert key in server.banner
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_cli_drives_a_running_server(server: Server) -> None:
    source = server.workdir / "hello-world.ts"
    source.write_text(HELLO_TS)
    deployed = server.fnhost("deploy", str(source), "--env", "API_KEY=secret123")
    assert "created hello-world version 1" in deployed.stdout
    assert "secret123" not in deployed.stdout
    again = json.loads(server.fnhost("deploy", str(source), "--json").stdout)
    assert again["version"] == 2 and again["envVarNames"] == ["API_KEY"]

    called = httpx.get(f"{server.url}/v1/default/fn/hello-world")
    assert called.json() == {"message": "Hello!"}

    invoked = server.fnhost("invoke", "hello-world")
    assert "200" in invoked.stdout and "hello from the CLI" in invoked.stdout
    assert json.loads(server.fnhost("invoke", "hello-world", "--json").stdout)["status_code"] == 200

    listed = server.fnhost("ls")
    assert "hello-world" in listed.stdout and "API_KEY" in listed.stdout
    assert json.loads(server.fnhost("ls", "--json").stdout)["functions"][0]["name"] == "hello-world"

    logs = server.fnhost("logs", "hello-world")
    assert "hello from the CLI" in logs.stdout
    records = json.loads(server.fnhost("logs", "hello-world", "--json").stdout)["logs"]
    assert len(records) == 3 and {r["trigger"] for r in records} == {"http", "test"}

    shown = server.fnhost("show", "hello-world")
    assert "invocations 3" in shown.stdout

    server.fnhost("env", "set", "hello-world", "B=2", "C=3")
    unset = server.fnhost("env", "unset", "hello-world", "API_KEY", "--json")
    assert json.loads(unset.stdout)["envVarNames"] == ["B", "C"]

    removed = server.fnhost("rm", "hello-world")
    assert "deleted hello-world" in removed.stdout
    missing = server.fnhost("rm", "hello-world", check=False)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_cli_reports_bad_code_clearly(server: Server) -> None:
    source = server.workdir / "broken.js"
    source.write_text("export default function (\n")
    result = server.fnhost("deploy", str(source), check=False)
    assert result.returncode == 1
    assert "400" in result.stderr and "broken" not in result.stdout
    assert "Traceback" not in result.stderr


def test_keys_create_gives_an_app_key(server: Server) -> None:
    created = json.loads(server.fnhost("keys", "create", "team-a", "--json").stdout)
    key = created["key"]
    assert key.startswith("fnh_") and created["app_id"] == "team-a"
    source = server.workdir / "fn.ts"
    source.write_text(HELLO_TS)
    server.fnhost("deploy", str(source), "--app", "team-a", "--key", key)
    denied = server.fnhost("ls", "--app", "team-b", "--key", key, check=False)
    assert denied.returncode == 1 and "403" in denied.stderr

    listed = json.loads(server.fnhost("keys", "list", "team-a", "--json").stdout)["keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert key not in json.dumps(listed)
    assert "admin" in server.fnhost("keys", "list").stdout
    server.fnhost("keys", "revoke", created["id"])
    revoked = server.fnhost("ls", "--app", "team-a", "--key", key, check=False)
    assert revoked.returncode == 1 and "401" in revoked.stderr
    missing = server.fnhost("keys", "revoke", "nope", check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_plugins_command_lists_bundled_plugins(tmp_path: Path) -> None:
    result = subprocess.run(
        [*FNHOST, "plugins", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["deno"]["distribution"] == "fnhost-deno"
    assert plugins["deno"]["provides"] == ["runtime deno"]
    assert plugins["sql"]["provides"] == ["store sql"]
    assert "fnhost_stores" in plugins["sql"]["hooks"]
    assert plugins["cron"]["provides"] == ["trigger cron"]
    table = subprocess.run(
        [*FNHOST, "plugins"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "fnhost-sql" in table.stdout
