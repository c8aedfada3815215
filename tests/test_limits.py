"""Limits that protect the host: sizes, counts, rates and concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from fnhost.errors import RateLimited
from fnhost.models import InvocationRequest
from fnhost.service import new_invocation_id
from tests.conftest import HELLO, Api


@pytest.fixture
def config_sections() -> dict[str, Any]:
    return {
        "server": {"max_body_bytes": 64 * 1024, "max_code_bytes": 8 * 1024},
        "limits": {
            "max_functions_per_app": 3,
            "max_env_vars": 2,
            "max_env_value_bytes": 16,
            "max_log_lines_per_invocation": 3,
            "max_log_line_bytes": 10,
            "calls_per_second_per_app": 5,
            "management_per_second_per_app": 40,
            "max_concurrent_per_function": 2,
        },
    }


async def test_body_too_large_is_413_everywhere(api: Api) -> None:
    await api.deploy("f", HELLO, expect=201)
    big = b"x" * (64 * 1024 + 1)
    assert (await api.call("f", method="POST", content=big)).status_code == 413
    response = await api.client.post(
        "/v1/demo/functions",
        content=big,
        headers={**api.headers, "content-type": "application/json"},
    )
    assert response.status_code == 413 and response.json()["error"]


async def test_code_size_is_limited(api: Api) -> None:
    code = HELLO + "\n//" + "x" * 9000
    response = await api.deploy("big", code)
    assert response.status_code == 413 and "code" in response.json()["error"]


async def test_functions_per_app_are_limited(api: Api) -> None:
    for name in ("a", "b", "c"):
        await api.deploy(name, HELLO, expect=201)
    refused = await api.deploy("d", HELLO)
    assert refused.status_code == 409 and "max_functions_per_app" in refused.json()["error"]
    await api.deploy("a", HELLO, expect=200)  # updates still work


async def test_env_var_count_and_size_are_limited(api: Api) -> None:
    assert (await api.deploy("e", HELLO, envVars={"A": "1", "B": "2", "C": "3"})).status_code == 422
    assert (await api.deploy("e", HELLO, envVars={"A": "x" * 17})).status_code == 413
    await api.deploy("e", HELLO, expect=201, envVars={"A": "1", "B": "2"})
    assert (await api.patch_env("e", {"C": "3"})).status_code == 422
    assert (await api.patch_env("e", {"B": None, "C": "3"})).status_code == 200


async def test_console_output_is_truncated_with_a_marker(api: Api) -> None:
    code = """export default () => {
      console.log('a very long line indeed');
      for (let i = 0; i < 5; i++) console.log(i);
      return new Response('ok');
    }"""
    await api.deploy("chatty", code, expect=201)
    result = (await api.invoke("chatty")).json()
    messages = [line["message"] for line in result["logs"]]
    assert messages[0] == "a very lon… [truncated 13 bytes]"
    assert messages[1:3] == ["0", "1"]
    assert messages[3] == "[truncated: 3 more log lines]"


async def served_until_limited(
    send: Callable[[], Awaitable[httpx.Response]], rate: float
) -> tuple[int, httpx.Response]:
    """Send until the first 429 and return how many were served before it.

    A token bucket serves its burst (2 x rate) at once, then `rate` per second,
    so the count is bounded on both sides by the time the requests took; this
    holds however slow the machine is, where a fixed count would not.
    """
    burst = 2 * rate
    started = time.monotonic()
    served = 0
    while True:
        response = await send()
        allowed = burst + rate * (time.monotonic() - started) + 1
        if response.status_code == 429:
            assert burst <= served <= allowed
            return served, response
        assert response.status_code == 200 and served < allowed, "not rate limited"
        served += 1


async def test_public_calls_are_rate_limited_per_app(api: Api) -> None:
    await api.deploy("f", HELLO, expect=201)
    _, limited = await served_until_limited(lambda: api.call("f"), rate=5)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]
    other = Api(api.client, "other-app")
    await other.deploy("f", HELLO, expect=201)
    assert (await other.call("f")).status_code == 200  # another app has its own bucket


async def test_management_calls_are_rate_limited_per_app(api: Api) -> None:
    _, limited = await served_until_limited(lambda: api.get("/functions"), rate=40)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]


async def test_concurrent_invocations_per_function_are_limited(api: Api, platform: Any) -> None:
    # The in-memory test client serves one request at a time, so drive the service
    # concurrently; the 429 mapping of RateLimited is covered by the rate tests above.
    code = "export default () => new Promise((r) => setTimeout(() => r(new Response('ok')), 400))"
    await api.deploy("slow", code, expect=201)
    function = await platform.service.get("demo", "slow")

    async def one() -> str:
        request = InvocationRequest(
            invocation_id=new_invocation_id(), method="GET", url="http://x/"
        )
        try:
            result, _ = await platform.service.invoke(function, request, trigger="http", path="/")
        except RateLimited:
            return "limited"
        return result.outcome

    outcomes = sorted(await asyncio.gather(*(one() for _ in range(4))))
    assert outcomes == ["limited", "limited", "ok", "ok"]
