"""Calling functions: the public /fn/ route and the test-invoke endpoint."""

from __future__ import annotations

import asyncio
import base64

from tests.conftest import Api

ECHO = """export default async function handler(req, ctx) {
  const url = new URL(req.url);
  const body = new Uint8Array(await req.arrayBuffer());
  return new Response(JSON.stringify({
    method: req.method,
    path: url.pathname,
    query: url.search,
    headers: Object.fromEntries(req.headers),
    bodyLength: body.length,
    bodyText: new TextDecoder().decode(body),
    trigger: ctx.trigger,
    user: ctx.user,
  }), { status: 200, headers: { 'content-type': 'application/json', 'x-echo': '1' } });
}"""


async def test_request_reaches_function_as_sent(api: Api) -> None:
    await api.deploy("echo", ECHO, expect=201)
    response = await api.call(
        "echo",
        "/orders/42",
        method="PUT",
        params={"q": "a b", "n": "1"},
        content=b'{"x": 1}',
        headers={
            "Authorization": "Bearer end-user-token",
            "X-Custom": "yes",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["method"] == "PUT"
    assert seen["path"] == "/orders/42"
    assert seen["query"] == "?q=a+b&n=1"
    assert seen["headers"]["authorization"] == "Bearer end-user-token"
    assert seen["headers"]["x-custom"] == "yes"
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert "x-forwarded-for" in seen["headers"] and "x-forwarded-host" in seen["headers"]
    assert seen["bodyText"] == '{"x": 1}'
    assert seen["trigger"] == {"type": "http"}
    assert seen["user"] is None
    assert response.headers["x-echo"] == "1"


async def test_every_method_and_root_path(api: Api) -> None:
    await api.deploy("echo", ECHO, expect=201)
    for method in ("GET", "POST", "PATCH", "DELETE", "OPTIONS"):
        response = await api.call("echo", method=method)
        assert response.status_code == 200, (method, response.text)
        assert response.json()["method"] == method
        assert response.json()["path"] == "/"
    head = await api.call("echo", method="HEAD")
    assert head.status_code == 200 and head.content == b""


async def test_hop_by_hop_and_spoofed_forwarding_headers_are_replaced(api: Api) -> None:
    await api.deploy("echo", ECHO, expect=201)
    seen = (
        await api.call(
            "echo",
            headers={
                "X-Forwarded-Proto": "gopher",
                "TE": "trailers",
                "Proxy-Authorization": "Basic xyz",
            },
        )
    ).json()
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert "te" not in seen["headers"] and "proxy-authorization" not in seen["headers"]


async def test_binary_body_round_trip(api: Api) -> None:
    code = """export default async (req) => new Response(await req.arrayBuffer(),
      { headers: { 'content-type': 'application/octet-stream' } })"""
    await api.deploy("bin", code, expect=201)
    payload = bytes(range(256)) * 64
    response = await api.call("bin", method="POST", content=payload)
    assert response.status_code == 200
    assert response.content == payload


async def test_status_headers_and_cookies_pass_through(api: Api) -> None:
    code = """export default () => {
      const headers = new Headers({ 'x-a': '1' });
      headers.append('set-cookie', 'a=1; Path=/');
      headers.append('set-cookie', 'b=2; Path=/');
      return new Response('nope', { status: 418, headers });
    }"""
    await api.deploy("teapot", code, expect=201)
    response = await api.call("teapot")
    assert response.status_code == 418
    assert response.text == "nope"
    assert response.headers["x-a"] == "1"
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


async def test_thrown_error_is_500_and_logged(api: Api) -> None:
    code = "export default () => { console.log('about to fail'); throw new Error('boom 42'); }"
    await api.deploy("thrower", code, expect=201)
    response = await api.call("thrower")
    assert response.status_code == 500
    assert "boom 42" not in response.text  # the caller does not see internals
    assert response.json()["detail"]["invocationId"]
    [record] = await api.logs("thrower")
    assert record["status_code"] == 500 and record["level"] == "error"
    assert "boom 42" in record["error"]
    assert [line["message"] for line in record["logs"]] == ["about to fail"]


async def test_non_response_return_is_500(api: Api) -> None:
    await api.deploy("plain", "export default () => ({ hello: 'world' })", expect=201)
    response = await api.call("plain")
    assert response.status_code == 500
    [record] = await api.logs("plain")
    assert "Response" in record["error"]


async def test_timeout_is_504(api: Api) -> None:
    code = (
        "export default () => new Promise((r) => setTimeout(() => r(new Response('late')), 5000))"
    )
    await api.deploy("slow", code, expect=201, timeoutMs=300)
    response = await api.call("slow")
    assert response.status_code == 504
    [record] = await api.logs("slow")
    assert record["status_code"] == 504 and "time" in record["error"]
    assert 250 <= record["duration_ms"] < 3000


async def test_memory_limit_is_502(api: Api) -> None:
    code = """export default () => {
      const hog = [];
      while (true) hog.push(new Array(1_000_000).fill(Math.random()));
    }"""
    await api.deploy("hog", code, expect=201, memoryLimitMb=64, timeoutMs=20000)
    response = await api.call("hog")
    assert response.status_code == 502
    assert response.json()["error"] == "memory limit exceeded"
    [record] = await api.logs("hog")
    assert record["error"] == "memory limit exceeded"
    # The worker is replaced: the next call of another function works, and so does this one's.
    await api.deploy("fine", "export default () => new Response('ok')", expect=201)
    assert (await api.call("fine")).text == "ok"


async def test_console_output_lands_in_the_invocation_record(api: Api) -> None:
    code = """export default async (req) => {
      const id = new URL(req.url).searchParams.get('id');
      console.log('start', id);
      await new Promise((r) => setTimeout(r, 20));
      console.warn('warned', id);
      console.error('failed', { id });
      return new Response(id);
    }"""
    await api.deploy("talk", code, expect=201)
    responses = await asyncio.gather(*(api.call("talk", params={"id": str(i)}) for i in range(5)))
    assert sorted(r.text for r in responses) == [str(i) for i in range(5)]
    records = await api.logs("talk")
    assert len(records) == 5
    seen_ids = set()
    for record in records:
        lines = record["logs"]
        assert [line["level"] for line in lines] == ["info", "warn", "error"]
        ident = lines[0]["message"].removeprefix("start ")
        assert lines[1]["message"] == f"warned {ident}"
        assert f'"{ident}"' in lines[2]["message"]
        seen_ids.add(ident)
    assert seen_ids == {str(i) for i in range(5)}


async def test_warm_worker_is_reused(api: Api) -> None:
    code = "let calls = 0;\nexport default () => new Response(String(++calls));"
    await api.deploy("counter", code, expect=201)
    assert [(await api.call("counter")).text for _ in range(3)] == ["1", "2", "3"]


async def test_function_cannot_read_host_files(api: Api) -> None:
    code = """export default async () => {
      const attempts = {};
      for (const path of ['/etc/passwd', '.fnhost/admin.key']) {
        try { await Deno.readTextFile(path); attempts[path] = 'read'; }
        catch (e) { attempts[path] = e.name; }
      }
      return Response.json(attempts);
    }"""
    await api.deploy("snoop", code, expect=201)
    attempts = (await api.call("snoop")).json()
    assert set(attempts.values()) == {"NotCapable"} or "read" not in attempts.values(), attempts


async def test_method_restricted_http_trigger(api: Api) -> None:
    await api.deploy(
        "postonly", ECHO, expect=201, trigger={"type": "http", "config": {"method": "POST"}}
    )
    assert (await api.call("postonly", method="POST")).status_code == 200
    refused = await api.call("postonly", method="GET")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"


async def test_test_invoke_answers_with_status_body_and_logs(api: Api) -> None:
    code = """export default async (req, ctx) => {
      console.log('got', await req.text());
      return new Response(`hi ${new URL(req.url).pathname} ${ctx.trigger.type}`, { status: 201 });
    }"""
    await api.deploy("inv", code, expect=201)
    response = await api.invoke(
        "inv", method="POST", path="/x", body="payload", headers={"X-Test": "1"}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status_code"] == 201
    assert result["body"] == "hi /x http"
    assert result["error"] is None
    assert [line["message"] for line in result["logs"]] == ["got payload"]
    assert result["duration_ms"] > 0 and result["memory_mb"] > 0
    [record] = await api.logs("inv")
    assert record["trigger"] == "test" and record["id"] == result["invocation_id"]


async def test_test_invoke_json_body_and_errors(api: Api) -> None:
    code = "export default async (req) => Response.json(await req.json())"
    await api.deploy("json", code, expect=201)
    result = (await api.invoke("json", body={"a": [1, 2]})).json()
    assert result["status_code"] == 200 and result["body"] == '{"a":[1,2]}'
    bad = await api.invoke("json", method="GET", body="x")
    assert bad.status_code == 422
    unknown = await api.client.post(
        "/v1/demo/functions/json/invoke", json={"bogus": 1}, headers=api.headers
    )
    assert unknown.status_code in (400, 422)


async def test_test_invoke_binary_body_is_base64(api: Api) -> None:
    code = "export default () => new Response(new Uint8Array([0, 255, 1]))"
    await api.deploy("bytes", code, expect=201)
    result = (await api.invoke("bytes")).json()
    assert result["body_encoding"] == "base64"
    assert base64.b64decode(result["body"]) == bytes([0, 255, 1])


async def test_test_invoke_of_a_cron_function(api: Api) -> None:
    code = "export default (req, ctx) => Response.json(ctx.trigger)"
    await api.deploy(
        "cronfn", code, expect=201, trigger={"type": "cron", "config": {"schedule": "0 0 * * *"}}
    )
    result = (await api.invoke("cronfn")).json()
    assert result["status_code"] == 200
    trigger = __import__("json").loads(result["body"])
    assert trigger["type"] == "cron" and trigger["schedule"] == "0 0 * * *"


WAIT_UNTIL = """export default (req, ctx) => {
  console.log('before the response');
  ctx.waitUntil(new Promise((resolve) => setTimeout(() => {
    console.log('after the response');
    resolve();
  }, 1000)));
  return new Response('answered');
}"""


async def test_wait_until_runs_after_the_response_and_lands_in_the_same_record(api: Api) -> None:
    await api.deploy("later", WAIT_UNTIL, expect=201)
    started = asyncio.get_running_loop().time()
    response = await api.call("later")
    assert response.text == "answered"
    assert asyncio.get_running_loop().time() - started < 0.9  # not held by the waitUntil work
    for _ in range(50):
        records = await api.logs("later")
        if records:
            break
        await asyncio.sleep(0.1)
    [record] = records
    assert [line["message"] for line in record["logs"]] == [
        "before the response",
        "after the response",
    ]
    invoked = (await api.invoke("later")).json()
    assert [line["message"] for line in invoked["logs"]] == [
        "before the response",
        "after the response",
    ]
