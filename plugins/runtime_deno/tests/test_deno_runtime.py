"""The "deno" runtime: the core's runtime contract, plus what only Deno workers have
(processes, permissions, the memory watchdog). The warm pool is in test_pool.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from fnhost.errors import CodeCheckFailed, ConfigError
from fnhost.platform import Platform
from fnhost.testing import RuntimeContract, make_config
from fnhost.testing.runtime_contract import COUNTER, HELLO, call, make_request, make_spec
from fnhost_deno.runtime import DenoRuntime
from plugins.runtime_deno.tests.support import (
    deno_pids,
    deno_runtime,
    environment_of,
    eventually,
    gone,
    only_pid,
)


class TestDenoRuntime(RuntimeContract):
    """The contract every runtime passes, on real Deno workers."""


# ---- isolation ------------------------------------------------------------------------

ATTEMPT = """export default async () => {
  try {
    const got = await (async () => { %s })();
    return new Response("allowed: " + String(got));
  } catch (error) {
    return new Response("refused: " + error);
  }
}"""

ABSENT = 'if (v === undefined) throw new Error("absent"); return v;'
REFUSED = {
    "read /etc/passwd": 'return await Deno.readTextFile("/etc/passwd");',
    "read with node:fs": 'return (await import("node:fs")).readFileSync("/etc/passwd", "utf8");',
    "import a host file": (
        'return (await import("file:///etc/hostname", { with: { type: "text" } })).default;'
    ),
    "write a file": 'await Deno.writeTextFile("/tmp/fnhost-escape.txt", "x"); return "written";',
    "spawn with Deno.Command": (
        'return (await new Deno.Command("/bin/sh", { args: ["-c", "id"] }).output()).code;'
    ),
    "spawn with node:child_process": (
        'return (await import("node:child_process")).execSync("id").toString();'
    ),
    "Deno.run": 'return Deno.run({ cmd: ["id"] });',
    "Deno.dlopen": 'return Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } })',
    "system info": "return Deno.osRelease();",
    "a unix socket": 'return await Deno.connect({ transport: "unix", path: "/run/docker.sock" });',
    "PATH": 'const v = Deno.env.get("PATH"); ' + ABSENT,
    "HOME": 'const v = Deno.env.get("HOME"); ' + ABSENT,
    "process.env": "const v = process.env.PATH; " + ABSENT,
    "Deno.exit": "Deno.exit(3);",
}


@pytest.mark.parametrize("attempt", REFUSED.values(), ids=REFUSED.keys())
async def test_a_function_is_refused(runtime: DenoRuntime, attempt: str) -> None:
    result = await call(runtime, make_spec(ATTEMPT % attempt, env={"OWN": "mine"}))
    assert result.outcome == "ok", result.error
    assert result.body.startswith(b"refused: "), result.body


async def test_fnhost_data_dir_files_are_not_readable(runtime: DenoRuntime, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name, content in [("admin.key", "fnh_admin_secret"), ("secret.key", "fernet-key")]:
        (data / name).write_text(content)
    (data / "fnhost.db").write_bytes(b"SQLite format 3\x00")
    other = make_spec(HELLO, name="other")
    await runtime.check(other)  # another function's code file exists now
    other_code = next((data / "deno" / "functions" / "contract" / "other").glob("*/handler.ts"))
    paths = ["admin.key", "secret.key", "fnhost.db", "deno/bootstrap.ts", "/proc/self/environ"]
    for path in [data / p for p in paths] + [other_code]:
        for read in ("Deno.readTextFile", "(await import('node:fs/promises')).readFile"):
            attempt = f"return await {read}({json.dumps(str(path))});"
            result = await call(runtime, make_spec(ATTEMPT % attempt))
            assert result.body.startswith(b"refused: "), (path, result.body)


async def test_network_is_allowed(runtime: DenoRuntime) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        code = f'export default async () => new Response(await (await fetch("http://127.0.0.1:{port}/")).text())'
        result = await call(runtime, make_spec(code))
    assert result.outcome == "ok", result.error
    assert result.body == b"pong"


async def test_env_vars_cannot_change_how_deno_runs(runtime: DenoRuntime) -> None:
    env = {"LD_PRELOAD": "/nonexistent/evil.so", "DENO_DIR": "/tmp/evil", "DENO_V8_FLAGS": "--help"}
    code = 'export default () => new Response(Deno.env.get("LD_PRELOAD"))'
    result = await call(runtime, make_spec(code, env=env))
    assert result.outcome == "ok", result.error
    assert result.body == b"/nonexistent/evil.so"  # its own value, readable by itself only
    environ = b" ".join(environment_of(only_pid(runtime)))
    assert b"LD_PRELOAD" not in environ
    assert b"/tmp/evil" not in environ


async def test_the_worker_inherits_nothing_of_fnhosts_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FNHOST_SERVER__ENCRYPTION_KEY", "do-not-leak")
    async with deno_runtime(tmp_path / "data") as runtime:
        result = await call(
            runtime, make_spec("export default () => Response.json(Deno.env.toObject())")
        )
        assert json.loads(result.body) == {}
        environ = environment_of(only_pid(runtime))
    names = {item.split(b"=")[0].decode() for item in environ if item}
    assert names <= {"DENO_DIR", "DENO_NO_UPDATE_CHECK", "DENO_NO_PROMPT", "NO_COLOR"}


async def test_writes_to_stdout_go_to_the_log_not_the_transport(runtime: DenoRuntime) -> None:
    code = """export default async () => {
      await Deno.stdout.write(new TextEncoder().encode("raw out\\n"));
      Deno.stderr.writeSync(new TextEncoder().encode("raw err"));
      process.stdout.write("node out\\n");
      return new Response("intact");
    }"""
    function = make_spec(code)
    for _ in range(2):
        result = await call(runtime, function)
        assert result.body == b"intact"
        assert [(line.level, line.message) for line in result.logs] == [
            ("info", "raw out"),
            ("error", "raw err"),
            ("info", "node out"),
        ]


async def test_garbage_on_the_transport_only_breaks_the_functions_own_worker(
    runtime: DenoRuntime,
) -> None:
    # A function can reach its own stdout through node:fs; it gains nothing by it: frames
    # carry no authority (fnhost knows which app and function a worker runs).
    bystander = make_spec(COUNTER, name="bystander")
    assert (await call(runtime, bystander)).body == b"1"
    code = """export default async (req) => {
      if (new URL(req.url).pathname === "/forge") {
        (await import("node:fs")).writeSync(1, "garbage, not a frame");
      }
      return new Response("fine");
    }"""
    forger = make_spec(code, name="forger")
    result = await call(runtime, forger, "GET", "/forge")
    assert result.outcome == "crash"
    assert result.error is not None and "protocol" in result.error
    assert (await call(runtime, forger)).body == b"fine"
    assert (await call(runtime, bystander)).body == b"2"


# ---- the worker process ---------------------------------------------------------------


async def test_one_process_serves_every_call(runtime: DenoRuntime, tmp_path: Path) -> None:
    function = make_spec(COUNTER)
    await runtime.check(function)
    pid = only_pid(runtime)
    for expected in (b"1", b"2", b"3"):
        assert (await call(runtime, function)).body == expected
    assert only_pid(runtime) == pid
    assert deno_pids(tmp_path) == {pid}


async def test_a_killed_worker_crashes_its_call_and_is_replaced(runtime: DenoRuntime) -> None:
    code = """export default async (req) => {
      if (new URL(req.url).pathname === "/slow") await new Promise((r) => setTimeout(r, 5000));
      return new Response("alive");
    }"""
    function = make_spec(code)
    await runtime.check(function)
    pid = only_pid(runtime)
    in_flight = asyncio.ensure_future(call(runtime, function, "GET", "/slow"))
    await asyncio.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    result = await in_flight
    assert result.outcome == "crash"
    assert result.error is not None and "SIGKILL" in result.error
    after = await call(runtime, function)
    assert after.outcome == "ok" and after.body == b"alive"
    assert only_pid(runtime) != pid


async def test_a_worker_dying_on_its_own_is_a_crash_with_its_reason(runtime: DenoRuntime) -> None:
    code = """export default (req) => {
      if (new URL(req.url).pathname === "/abort") process.abort();
      return new Response("alive");
    }"""
    function = make_spec(code)
    result = await call(runtime, function, "GET", "/abort")
    assert result.outcome == "crash"
    assert result.error == "worker killed by signal SIGABRT"
    assert (await call(runtime, function)).body == b"alive"


async def test_a_stuck_worker_is_replaced_and_others_are_untouched(runtime: DenoRuntime) -> None:
    bystander = make_spec(COUNTER, name="bystander")
    spinner = make_spec(
        """export default (req) => {
          if (new URL(req.url).pathname === "/spin") { while (true) {} }
          return new Response("free");
        }""",
        name="spinner",
        timeout_ms=200,
    )
    assert (await call(runtime, bystander)).body == b"1"
    await runtime.check(spinner)
    pids = runtime.worker_pids()
    bystander_pid, spinner_pid = (
        pids[("contract", "bystander", 1)],
        pids[("contract", "spinner", 1)],
    )
    result = await call(runtime, spinner, "GET", "/spin")
    assert result.outcome == "timeout"
    await eventually(gone(spinner_pid))
    assert (await call(runtime, spinner)).body == b"free"
    assert (await call(runtime, bystander)).body == b"2"
    assert runtime.worker_pids()[("contract", "bystander", 1)] == bystander_pid


async def test_a_call_in_flight_on_a_stuck_worker_crashes(runtime: DenoRuntime) -> None:
    code = """export default (req) => {
      if (new URL(req.url).pathname === "/spin") { while (true) {} }
      return new Response("never reached while spinning");
    }"""
    function = make_spec(code, timeout_ms=1000)
    await runtime.check(function)
    # The spinning call is cancelled at 1 s and its worker killed 1 s later (no answer):
    # a call sent at 1.3 s is then in flight, well within its own timeout.
    spinning = asyncio.ensure_future(call(runtime, function, "GET", "/spin"))
    await asyncio.sleep(1.3)
    blocked = await call(runtime, function, "GET", "/")
    assert (await spinning).outcome == "timeout"
    assert blocked.outcome == "crash"
    assert blocked.error is not None and "timeout" in blocked.error


async def test_off_heap_memory_is_caught_by_the_watchdog(runtime: DenoRuntime) -> None:
    code = """export default async () => {
      const hog = [];
      for (let i = 0; i < 64; i++) {
        hog.push(new Uint8Array(16 * 1024 * 1024).fill(1));
        await new Promise((r) => setTimeout(r, 20));
      }
      return new Response("survived " + hog.length);
    }"""
    result = await call(runtime, make_spec(code, memory_limit_mb=64))
    assert result.outcome == "memory"
    assert result.error == "memory limit exceeded"


async def test_an_idle_warm_worker_is_small(runtime: DenoRuntime) -> None:
    result = await call(runtime, make_spec())
    assert 10 < result.memory_mb < 100


async def test_uncaught_errors_do_not_kill_the_worker(runtime: DenoRuntime) -> None:
    code = """export default async () => {
      setTimeout(() => { throw new Error("thrown in a timer"); }, 1);
      Promise.reject(new Error("never handled"));
      await new Promise((r) => setTimeout(r, 30));
      return new Response("still here");
    }"""
    function = make_spec(code)
    result = await call(runtime, function)
    assert result.body == b"still here"
    messages = " ".join(line.message for line in result.logs)
    assert "thrown in a timer" in messages and "never handled" in messages
    pid = only_pid(runtime)
    assert (await call(runtime, function)).body == b"still here"
    assert only_pid(runtime) == pid


async def test_a_cancelled_call_leaves_the_worker_usable(runtime: DenoRuntime) -> None:
    code = """export default async (req) => {
      if (new URL(req.url).pathname === "/slow") await new Promise((r) => setTimeout(r, 5000));
      return new Response("ok");
    }"""
    function = make_spec(code)
    slow = asyncio.ensure_future(call(runtime, function, "GET", "/slow"))
    await asyncio.sleep(0.2)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert (await call(runtime, function)).body == b"ok"


async def test_error_messages_do_not_leak_host_paths(runtime: DenoRuntime, tmp_path: Path) -> None:
    code = """export default () => {
      console.log(new Error("where am I"));
      throw new Error("failed at " + new Error().stack);
    }"""
    result = await call(runtime, make_spec(code))
    assert result.outcome == "error"
    text = result.error + " ".join(line.message for line in result.logs)  # type: ignore[operator]
    assert str(tmp_path) not in text
    assert "handler.ts" in text


async def test_a_module_that_never_finishes_loading_is_refused(tmp_path: Path) -> None:
    async with deno_runtime(tmp_path / "data", start_timeout_seconds=0.5) as runtime:
        with pytest.raises(CodeCheckFailed, match="did not finish loading"):
            await runtime.check(make_spec("while (true) {}\nexport default () => 1;"))
        assert runtime.worker_pids() == {}
        await eventually(lambda: deno_pids(tmp_path) == set())


async def test_a_module_exhausting_memory_while_loading_is_refused(runtime: DenoRuntime) -> None:
    code = "const hog = []; for (;;) hog.push(new Array(100000).fill(Math.random()));"
    with pytest.raises(CodeCheckFailed, match="memory limit exceeded"):
        await runtime.check(make_spec(code, memory_limit_mb=64))


async def test_the_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"runtime\.deno\.max_warm"):
        Platform(make_config(tmp_path, runtime={"deno": {"max_warm": 0}}))
    with pytest.raises(ConfigError, match=r"runtime\.deno\.warm: unknown key"):
        Platform(make_config(tmp_path, runtime={"deno": {"warm": 1}}))


# ---- streamed bodies ----------------------------------------------------------------------

ENDLESS = """export default () => new Response(new ReadableStream({
  async pull(controller) {
    await new Promise((r) => setTimeout(r, 10));
    controller.enqueue(new TextEncoder().encode("."));
  },
}))"""


async def test_a_consumer_leaving_a_stream_stops_it_in_the_worker(runtime: DenoRuntime) -> None:
    function = make_spec(ENDLESS, timeout_ms=60_000)
    result = await runtime.invoke(function, make_request())
    assert result.stream is not None
    async for _ in result.stream:
        break
    await result.stream.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: runtime.in_flight() == 0)
    assert result.outcome == "ok"
    pid = only_pid(runtime)
    assert (await call(runtime, make_spec(COUNTER, name="other"))).body == b"1"
    assert runtime.worker_pids()[("contract", "fn", 1)] == pid


async def test_a_static_body_is_not_streamed(runtime: DenoRuntime) -> None:
    for body in ['"text"', "new Uint8Array(100000)", 'new Blob(["a", "b"])', "null"]:
        code = f"export default () => new Response({body})"
        result = await runtime.invoke(make_spec(code), make_request())
        assert result.outcome == "ok" and result.stream is None, body
    json_body = "export default () => Response.json({ a: 1 })"
    assert (await runtime.invoke(make_spec(json_body), make_request())).stream is None


async def test_a_killed_worker_ends_its_streams_as_a_crash(runtime: DenoRuntime) -> None:
    result = await runtime.invoke(make_spec(ENDLESS, timeout_ms=60_000), make_request())
    assert result.stream is not None
    chunks = []
    async for chunk in result.stream:
        chunks.append(chunk)
        if len(chunks) == 2:
            os.kill(only_pid(runtime), signal.SIGKILL)
    assert result.outcome == "crash"
    assert result.error is not None and "SIGKILL" in result.error


def test_the_runtime_runs_on_uvloop(tmp_path: Path) -> None:
    # `fnhost serve` runs on uvloop, whose subprocess transports are its own classes.
    import uvloop

    streamed = """export default () => new Response(new ReadableStream({
      async start(controller) {
        controller.enqueue(new TextEncoder().encode("a"));
        await new Promise((r) => setTimeout(r, 20));
        controller.enqueue(new TextEncoder().encode("b"));
        controller.close();
      },
    }))"""
    slow = "export default () => new Promise((r) => setTimeout(() => r(new Response('x')), 5000))"

    async def scenario() -> list[object]:
        async with deno_runtime(tmp_path / "data") as runtime:
            counter = make_spec(COUNTER)
            await runtime.check(counter)
            seen: list[object] = [(await call(runtime, counter)).body for _ in range(2)]
            seen.append((await call(runtime, make_spec(streamed, name="s"))).body)
            await runtime.check(make_spec(slow, name="slow"))
            in_flight = asyncio.ensure_future(call(runtime, make_spec(slow, name="slow")))
            await eventually(lambda: runtime.in_flight() == 1)
            os.kill(runtime.worker_pids()[("contract", "slow", 1)], signal.SIGKILL)
            seen.append((await in_flight).outcome)
            seen.append((await call(runtime, counter)).body)
        return seen

    assert uvloop.run(scenario()) == [b"1", b"2", b"ab", "crash", b"3"]
    assert deno_pids(tmp_path) == set()
