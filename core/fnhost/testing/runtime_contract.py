"""The contract every runtime passes: `class TestMyRuntime(RuntimeContract)` with a
`runtime` fixture that yields a started runtime and stops it afterwards.

The tests go only through `fnhost.contracts.Runtime` (check, invoke, evict), with
functions written the way users write them, so a third-party runtime proves itself
exactly as the bundled Deno one does. Anything about processes, pids or permissions
of one implementation belongs in that plugin's own tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from fnhost.contracts import Runtime
from fnhost.errors import CodeCheckFailed, TooLarge
from fnhost.models import FunctionSpec, InvocationRequest, InvocationResult

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
BASE_URL = "https://fnhost.test"
MiB = 1024 * 1024
_ids = itertools.count(1)

HELLO = """export default async function handler(req, ctx) {
  return new Response("Hello, world!", { headers: { "content-type": "text/plain" } });
}"""

# A module-level counter: it only grows while the same warm worker serves the calls.
COUNTER = """let calls = 0;
export default async () => new Response(String(++calls));"""

ECHO_REQUEST = """export default async function handler(req) {
  const url = new URL(req.url);
  return Response.json({
    method: req.method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    headers: Object.fromEntries(req.headers),
    body: await req.text(),
  });
}"""


def make_spec(code: str = HELLO, **fields: Any) -> FunctionSpec:
    """A FunctionSpec with plausible defaults (app "contract", function "fn", revision 1);
    `fields` override any of them, e.g. make_spec(code, env={"KEY": "v"}, revision=2)."""
    values: dict[str, Any] = {
        "app_id": "contract",
        "name": "fn",
        "code": code,
        "created_at": T0,
        "updated_at": T0,
        "timeout_ms": 10_000,
        "memory_limit_mb": 128,
    }
    values.update(fields)
    values.setdefault("env_var_names", tuple(sorted(values.get("env", {}))))
    return FunctionSpec(**values)


def make_request(
    method: str = "GET",
    path: str = "/",
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes | str = b"",
    trigger: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
) -> InvocationRequest:
    """An InvocationRequest for `BASE_URL + path` (path may carry a query string)."""
    return InvocationRequest(
        invocation_id=f"contract-{next(_ids)}",
        method=method,
        url=BASE_URL + path,
        headers=headers or [],
        body=body.encode() if isinstance(body, str) else body,
        trigger=trigger or {"type": "http"},
        user=user,
    )


async def call(
    runtime: Runtime, function: FunctionSpec, *args: Any, **kwargs: Any
) -> InvocationResult:
    """Invoke with `make_request(*args, **kwargs)`; a streamed body is read to the end."""
    return await read_all(await runtime.invoke(function, make_request(*args, **kwargs)))


async def read_all(result: InvocationResult) -> InvocationResult:
    """The result with a streamed body read into `body`, as the core does for a test-invoke."""
    if result.stream is not None:
        result.body = b"".join([chunk async for chunk in result.stream])
        result.stream = None
    return result


async def timed_chunks(result: InvocationResult) -> list[tuple[float, bytes]]:
    """The chunks of a streamed body, each with the monotonic time it was received."""
    assert result.stream is not None, "the body was not streamed"
    return [(time.monotonic(), chunk) async for chunk in result.stream]


def assert_ok(result: InvocationResult) -> None:
    assert result.outcome == "ok", (result.outcome, result.error, result.logs)


class RuntimeContract:
    """Tests of every `Runtime` method. Subclass it and provide a `runtime` fixture."""

    # the request and the response

    async def test_hello_world(self, runtime: Runtime) -> None:
        result = await call(runtime, make_spec(HELLO))
        assert_ok(result)
        assert result.status_code == 200
        assert ("content-type", "text/plain") in result.headers
        assert result.body == b"Hello, world!"
        assert result.error is None
        assert result.duration_ms > 0
        assert result.memory_mb > 0

    async def test_the_full_request_reaches_the_function(self, runtime: Runtime) -> None:
        headers = [
            ("Authorization", "Bearer end-user-token"),
            ("X-Custom", "yes"),
            ("Content-Type", "text/plain"),
        ]
        result = await call(
            runtime,
            make_spec(ECHO_REQUEST),
            "POST",
            "/sub/path?a=1&b=two",
            headers=headers,
            body="hello body",
        )
        assert_ok(result)
        seen = json.loads(result.body)
        assert seen["method"] == "POST"
        assert seen["path"] == "/sub/path"
        assert seen["query"] == {"a": "1", "b": "two"}
        assert seen["headers"]["authorization"] == "Bearer end-user-token"
        assert seen["headers"]["x-custom"] == "yes"
        assert seen["body"] == "hello body"

    @pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
    async def test_methods_with_a_body(self, runtime: Runtime, method: str) -> None:
        result = await call(runtime, make_spec(ECHO_REQUEST), method, "/", body="payload")
        assert_ok(result)
        seen = json.loads(result.body)
        assert (seen["method"], seen["body"]) == (method, "payload")

    async def test_get_has_no_body(self, runtime: Runtime) -> None:
        result = await call(runtime, make_spec(ECHO_REQUEST), "GET", "/x")
        assert_ok(result)
        assert json.loads(result.body)["body"] == ""

    async def test_binary_bodies_round_trip_intact(self, runtime: Runtime) -> None:
        code = """export default async (req) => new Response(
          new Uint8Array(await req.arrayBuffer()).reverse(),
          { headers: { "content-type": "application/octet-stream" } })"""
        payload = bytes(range(256)) * 64 + b"\x00\r\n\xff"
        result = await call(runtime, make_spec(code), "POST", "/", body=payload)
        assert_ok(result)
        assert result.body == payload[::-1]

    @pytest.mark.parametrize("status", [201, 204, 404, 500])
    async def test_status_codes_pass_through(self, runtime: Runtime, status: int) -> None:
        body = "null" if status == 204 else '"x"'
        code = f"export default () => new Response({body}, {{ status: {status} }})"
        result = await call(runtime, make_spec(code))
        assert_ok(result)
        assert result.status_code == status

    async def test_repeated_headers_are_kept_apart(self, runtime: Runtime) -> None:
        code = """export default () => {
          const headers = new Headers({ "x-one": "1" });
          headers.append("set-cookie", "a=1; Path=/");
          headers.append("set-cookie", "b=2; HttpOnly");
          return new Response("ok", { headers });
        }"""
        result = await call(runtime, make_spec(code))
        assert_ok(result)
        cookies = [value for name, value in result.headers if name.lower() == "set-cookie"]
        assert cookies == ["a=1; Path=/", "b=2; HttpOnly"]
        assert ("x-one", "1") in result.headers

    # ctx and env

    async def test_env_vars_through_ctx_and_deno_env(self, runtime: Runtime) -> None:
        code = """export default (req, ctx) => Response.json({
          ctx: ctx.env.API_KEY, deno: Deno.env.get("API_KEY"), has: Deno.env.has("API_KEY"),
          all: Deno.env.toObject(),
        })"""
        function = make_spec(code, env={"API_KEY": "s3cret", "OTHER": "x"})
        result = await call(runtime, function)
        assert_ok(result)
        assert json.loads(result.body) == {
            "ctx": "s3cret",
            "deno": "s3cret",
            "has": True,
            "all": {"API_KEY": "s3cret", "OTHER": "x"},
        }

    async def test_another_functions_env_vars_are_not_visible(self, runtime: Runtime) -> None:
        code = """export default (req, ctx) => {
          let seen;
          try { seen = Deno.env.get("FIRST_SECRET") ?? null; } catch { seen = "refused"; }
          return Response.json({ seen, ctx: ctx.env.FIRST_SECRET ?? null });
        }"""
        first = make_spec(code, name="first", env={"FIRST_SECRET": "one"})
        second = make_spec(code, name="second", env={"SECOND_SECRET": "two"})
        assert_ok(await call(runtime, first))
        result = await call(runtime, second)
        assert_ok(result)
        seen = json.loads(result.body)
        assert seen["seen"] in (None, "refused")
        assert seen["ctx"] is None

    async def test_trigger_and_user_reach_ctx(self, runtime: Runtime) -> None:
        code = (
            "export default (req, ctx) => Response.json({ trigger: ctx.trigger, user: ctx.user })"
        )
        function = make_spec(code)
        result = await call(
            runtime,
            function,
            "POST",
            "/",
            trigger={"type": "cron", "schedule": "* * * * *"},
            user={"sub": "user-1", "role": "admin"},
        )
        assert_ok(result)
        assert json.loads(result.body) == {
            "trigger": {"type": "cron", "schedule": "* * * * *"},
            "user": {"sub": "user-1", "role": "admin"},
        }
        anonymous = json.loads((await call(runtime, function)).body)
        assert anonymous == {"trigger": {"type": "http"}, "user": None}

    # console output

    async def test_console_output_is_captured_with_levels(self, runtime: Runtime) -> None:
        code = """export default () => {
          console.log("plain", 42, { a: [1, 2] });
          console.info("info line");
          console.warn("warn line");
          console.error("error line");
          console.debug("debug line");
          return new Response("ok");
        }"""
        result = await call(runtime, make_spec(code))
        assert_ok(result)
        assert [(line.level, line.message) for line in result.logs] == [
            ("info", "plain 42 { a: [ 1, 2 ] }"),
            ("info", "info line"),
            ("warn", "warn line"),
            ("error", "error line"),
            ("debug", "debug line"),
        ]
        for line in result.logs:
            assert line.timestamp.tzinfo is not None
            assert abs((datetime.now(UTC) - line.timestamp).total_seconds()) < 60

    async def test_top_level_output_is_not_an_invocations(self, runtime: Runtime) -> None:
        code = """console.log("loading");
        export default () => { console.log("calling"); return new Response("ok"); }"""
        function = make_spec(code)
        await runtime.check(function)
        result = await call(runtime, function)
        assert [line.message for line in result.logs] == ["calling"]

    async def test_concurrent_invocations_keep_their_own_logs(self, runtime: Runtime) -> None:
        code = """const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
        export default async (req) => {
          const id = new URL(req.url).searchParams.get("id");
          console.log("start", id);
          await sleep(Math.random() * 30);
          console.warn("middle", id);
          await sleep(Math.random() * 30);
          console.log("end", id);
          return new Response(id);
        }"""
        function = make_spec(code)
        results = await asyncio.gather(
            *(call(runtime, function, "GET", f"/?id={i}") for i in range(20))
        )
        for i, result in enumerate(results):
            assert_ok(result)
            assert result.body == str(i).encode()
            assert [line.message for line in result.logs] == [
                f"start {i}",
                f"middle {i}",
                f"end {i}",
            ]

    # failures

    async def test_a_thrown_error_is_an_error_outcome(self, runtime: Runtime) -> None:
        code = """export default (req) => {
          console.log("about to fail");
          if (new URL(req.url).pathname === "/string") throw "plain string";
          throw new Error("Something went wrong");
        }"""
        function = make_spec(code)
        result = await call(runtime, function)
        assert result.outcome == "error"
        assert result.error is not None and "Something went wrong" in result.error
        assert [line.message for line in result.logs] == ["about to fail"]
        thrown_string = await call(runtime, function, "GET", "/string")
        assert thrown_string.outcome == "error"
        assert thrown_string.error is not None and "plain string" in thrown_string.error

    async def test_returning_something_else_than_a_response(self, runtime: Runtime) -> None:
        code = """export default (req) => {
          const kind = new URL(req.url).pathname;
          if (kind === "/string") return "just a string";
          if (kind === "/object") return { status: 200 };
        }"""
        function = make_spec(code)
        for path, what in [("/string", "string"), ("/object", "object"), ("/nothing", "undefined")]:
            result = await call(runtime, function, "GET", path)
            assert result.outcome == "bad_return", path
            assert result.error is not None and "Response" in result.error
            assert what in result.error

    async def test_a_failed_call_does_not_break_the_next(self, runtime: Runtime) -> None:
        code = """export default (req) => {
          if (new URL(req.url).pathname === "/fail") throw new Error("fail");
          return new Response("fine");
        }"""
        function = make_spec(code)
        assert (await call(runtime, function, "GET", "/fail")).outcome == "error"
        result = await call(runtime, function, "GET", "/")
        assert_ok(result)
        assert result.body == b"fine"

    async def test_timeout(self, runtime: Runtime) -> None:
        code = """export default async (req) => {
          if (new URL(req.url).pathname === "/slow") {
            console.log("waiting");
            await new Promise((r) => setTimeout(r, 5000));
          }
          return new Response("quick");
        }"""
        function = make_spec(code, timeout_ms=300)
        result = await call(runtime, function, "GET", "/slow")
        assert result.outcome == "timeout"
        assert result.error is not None and "300" in result.error
        assert 300 <= result.duration_ms < 2500
        assert [line.message for line in result.logs] in (["waiting"], [])
        after = await call(runtime, function)
        assert_ok(after)
        assert after.body == b"quick"

    async def test_a_synchronous_endless_loop_times_out(self, runtime: Runtime) -> None:
        code = """export default (req) => {
          if (new URL(req.url).pathname === "/spin") { while (true) {} }
          return new Response("free");
        }"""
        function = make_spec(code, timeout_ms=300)
        result = await call(runtime, function, "GET", "/spin")
        assert result.outcome == "timeout"
        after = await call(runtime, function)
        assert_ok(after)
        assert after.body == b"free"

    async def test_memory_limit(self, runtime: Runtime) -> None:
        code = """export default (req) => {
          if (new URL(req.url).pathname === "/grow") {
            const hog = [];
            for (;;) hog.push(new Array(100000).fill(Math.random()));
          }
          return new Response("small");
        }"""
        function = make_spec(code, memory_limit_mb=64)
        result = await call(runtime, function, "GET", "/grow")
        assert result.outcome == "memory"
        assert result.error == "memory limit exceeded"
        after = await call(runtime, function)
        assert_ok(after)
        assert after.body == b"small"

    async def test_a_too_large_request_body_is_refused(self, runtime: Runtime) -> None:
        with pytest.raises(TooLarge):
            await call(runtime, make_spec(ECHO_REQUEST), "POST", "/", body=b"x" * (64 * MiB))

    async def test_a_too_large_response_body_is_an_error(self, runtime: Runtime) -> None:
        code = "export default () => new Response(new Uint8Array(64 * 1024 * 1024))"
        result = await call(runtime, make_spec(code, memory_limit_mb=256))
        assert result.outcome == "error"
        assert result.error == "response body too large"

    # streamed bodies: produced over time, they reach the caller as they are produced

    async def test_a_streamed_body_arrives_as_it_is_produced(self, runtime: Runtime) -> None:
        code = """export default () => new Response(new ReadableStream({
          async start(controller) {
            console.log("first");
            controller.enqueue(new TextEncoder().encode("a"));
            await new Promise((r) => setTimeout(r, 300));
            console.log("second");
            controller.enqueue(new TextEncoder().encode("b"));
            controller.close();
          },
        }), { status: 201, headers: { "content-type": "text/event-stream" } })"""
        started = time.monotonic()
        result = await runtime.invoke(make_spec(code), make_request())
        assert (result.status_code, result.body) == (201, b"")
        assert ("content-type", "text/event-stream") in result.headers
        chunks = await timed_chunks(result)
        assert b"".join(chunk for _, chunk in chunks) == b"ab"
        first = next(at for at, chunk in chunks if chunk)
        assert first - started < 0.25, "the first chunk waited for the second"
        assert chunks[-1][0] - first > 0.2
        # Final once the stream has ended:
        assert_ok(result)
        assert [line.message for line in result.logs] == ["first", "second"]
        assert result.duration_ms >= 250
        assert result.memory_mb > 0

    async def test_streamed_binary_chunks_are_intact(self, runtime: Runtime) -> None:
        code = """export default () => new Response(new ReadableStream({
          async pull(controller) {
            await new Promise((r) => setTimeout(r, 5));
            const step = (this.step = (this.step ?? 0) + 1);
            if (step > 4) return controller.close();
            controller.enqueue(new Uint8Array(256).map((_, i) => (i * step) % 256));
          },
        }))"""
        result = await runtime.invoke(make_spec(code), make_request())
        body = b"".join(chunk for _, chunk in await timed_chunks(result))
        assert_ok(result)
        assert body == b"".join(bytes((i * step) % 256 for i in range(256)) for step in range(1, 5))

    async def test_a_stream_that_fails_midway_is_an_error(self, runtime: Runtime) -> None:
        code = """export default () => new Response(new ReadableStream({
          async start(controller) {
            controller.enqueue(new TextEncoder().encode("partial"));
            await new Promise((r) => setTimeout(r, 20));
            controller.error(new Error("upstream broke"));
          },
        }))"""
        result = await read_all(await runtime.invoke(make_spec(code), make_request()))
        assert result.outcome == "error"
        assert result.error is not None and "upstream broke" in result.error
        assert result.body == b"partial"

    async def test_the_timeout_covers_the_whole_stream(self, runtime: Runtime) -> None:
        code = """export default () => new Response(new ReadableStream({
          async start(controller) {
            controller.enqueue(new TextEncoder().encode("started"));
            console.log("then stalls");
            await new Promise((r) => setTimeout(r, 10000));
            controller.close();
          },
        }))"""
        started = time.monotonic()
        result = await read_all(
            await runtime.invoke(make_spec(code, timeout_ms=500), make_request())
        )
        assert result.outcome == "timeout"
        assert result.body == b"started"
        assert 0.4 < time.monotonic() - started < 3
        assert [line.message for line in result.logs] in (["then stalls"], [])
        after = await call(runtime, make_spec(code.replace("10000", "1"), timeout_ms=500))
        assert_ok(after)

    async def test_a_streamed_body_past_the_limit_is_cut_and_an_error(
        self, runtime: Runtime
    ) -> None:
        code = """export default () => new Response(new ReadableStream({
          async pull(controller) {
            await new Promise((r) => setTimeout(r, 1));
            controller.enqueue(new Uint8Array(4 * 1024 * 1024));
          },
        }))"""
        result = await runtime.invoke(make_spec(code, memory_limit_mb=256), make_request())
        received = sum(len(chunk) for _, chunk in await timed_chunks(result))
        assert result.outcome == "error"
        assert result.error == "response body too large"
        assert 0 < received <= 64 * MiB

    # waitUntil

    async def test_wait_until_does_not_delay_the_response(self, runtime: Runtime) -> None:
        code = """export default (req, ctx) => {
          ctx.waitUntil(new Promise((r) => setTimeout(r, 3000)));
          ctx.waitUntil(Promise.reject(new Error("background failure")));
          return new Response("sent");
        }"""
        result = await call(runtime, make_spec(code))
        assert_ok(result)
        assert result.body == b"sent"
        assert result.duration_ms < 2000
        errors = [line.message for line in result.logs if line.level == "error"]
        assert any("background failure" in message for message in errors), result.logs

    # code checks

    async def test_check_accepts_typescript(self, runtime: Runtime) -> None:
        code = """interface Greeting { message: string }
        type Ctx = { env: Record<string, string> };
        const greet = (name: string): Greeting => ({ message: `Hello, ${name}!` });
        export default async function handler(req: Request, ctx: Ctx): Promise<Response> {
          return Response.json(greet("ts") satisfies Greeting);
        }"""
        function = make_spec(code)
        await runtime.check(function)
        result = await call(runtime, function)
        assert_ok(result)
        assert json.loads(result.body) == {"message": "Hello, ts!"}

    async def test_check_rejects_a_syntax_error_with_its_line(self, runtime: Runtime) -> None:
        code = "const a = 1;\nfunction broken() {\n  let y = 1 x;\n}\nexport default broken;\n"
        with pytest.raises(CodeCheckFailed) as caught:
            await runtime.check(make_spec(code))
        message = caught.value.message
        assert re.search(r"(:|line )3\b", message), message
        assert "file://" not in message

    @pytest.mark.parametrize(
        "code",
        [
            "export const handler = () => new Response('no default');",
            "export default 'not a function';",
            "const nothing = 1;",
        ],
    )
    async def test_check_rejects_a_module_without_default_function(
        self, runtime: Runtime, code: str
    ) -> None:
        with pytest.raises(CodeCheckFailed) as caught:
            await runtime.check(make_spec(code))
        assert "default export" in caught.value.message

    async def test_check_reports_a_top_level_throw(self, runtime: Runtime) -> None:
        code = 'throw new Error("cannot start");\nexport default () => new Response("x");'
        with pytest.raises(CodeCheckFailed) as caught:
            await runtime.check(make_spec(code))
        assert "cannot start" in caught.value.message

    async def test_check_runs_top_level_await(self, runtime: Runtime) -> None:
        code = """const config = await Promise.resolve({ greeting: "awaited" });
        export default () => new Response(config.greeting);"""
        function = make_spec(code)
        await runtime.check(function)
        result = await call(runtime, function)
        assert result.body == b"awaited"

    # warm workers, revisions, eviction

    async def test_a_warm_worker_serves_successive_calls(self, runtime: Runtime) -> None:
        function = make_spec(COUNTER)
        bodies = [(await call(runtime, function)).body for _ in range(3)]
        assert bodies == [b"1", b"2", b"3"]

    async def test_a_new_revision_sees_new_code_and_env_at_once(self, runtime: Runtime) -> None:
        code = "export default (req, ctx) => new Response(`{VERSION} ${ctx.env.COLOR}`)"
        first = make_spec(code.replace("{VERSION}", "v1"), env={"COLOR": "red"})
        await runtime.check(first)
        assert (await call(runtime, first)).body == b"v1 red"
        second = make_spec(
            code.replace("{VERSION}", "v2"), env={"COLOR": "blue"}, revision=2, version=2
        )
        await runtime.check(second)
        assert (await call(runtime, second)).body == b"v2 blue"
        env_only = make_spec(second.code, env={"COLOR": "green"}, revision=3, version=2)
        assert (await call(runtime, env_only)).body == b"v2 green"

    async def test_evict_drops_the_warm_state(self, runtime: Runtime) -> None:
        function = make_spec(COUNTER)
        assert [(await call(runtime, function)).body for _ in range(2)] == [b"1", b"2"]
        await runtime.evict(function)
        assert (await call(runtime, function)).body == b"1"

    async def test_evict_lets_a_call_in_flight_finish(self, runtime: Runtime) -> None:
        code = """export default async () => {
          await new Promise((r) => setTimeout(r, 300));
          return new Response("finished");
        }"""
        function = make_spec(code)
        await runtime.check(function)
        in_flight = asyncio.ensure_future(call(runtime, function))
        await asyncio.sleep(0.1)
        await runtime.evict(function)
        result = await in_flight
        assert_ok(result)
        assert result.body == b"finished"

    async def test_functions_are_isolated_from_each_other(self, runtime: Runtime) -> None:
        one = make_spec(COUNTER, name="one")
        two = make_spec(COUNTER, name="two")
        assert (await call(runtime, one)).body == b"1"
        assert (await call(runtime, one)).body == b"2"
        assert (await call(runtime, two)).body == b"1"
