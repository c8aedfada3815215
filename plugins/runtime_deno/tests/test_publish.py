"""ctx.publish(channel, data): the worker hands each message to the platform, which gives
it to every trigger (the WebSocket trigger delivers it). A fake trigger collects them here."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fnhost import hookimpl
from fnhost.contracts import Trigger
from fnhost.testing.runtime_contract import call, make_spec
from plugins.runtime_deno.tests.support import deno_runtime, eventually

Published = list[tuple[str, str, Any]]


class CollectingTrigger(Trigger):
    """A trigger type whose subscribers are a list."""

    name = "collecting"
    published: Published

    async def publish(self, app_id: str, channel: str, data: Any) -> None:
        await asyncio.sleep(0)  # delivery may await (a NOTIFY, a socket)
        type(self).published.append((app_id, channel, data))


class FailingTrigger(Trigger):
    name = "failing"

    async def publish(self, app_id: str, channel: str, data: Any) -> None:
        raise RuntimeError("subscriber gone")


class Plugin:
    @hookimpl
    def fnhost_triggers(self) -> list[type[Trigger]]:
        return [FailingTrigger, CollectingTrigger]


@pytest.fixture
def published() -> Published:
    CollectingTrigger.published = []
    return CollectingTrigger.published


PUBLISHER = """export default async (req, ctx) => {
  const result = ctx.publish("room:1", { text: "hello", n: 1 });
  await result;
  ctx.publish("room:1", "second");
  ctx.publish("room:2");
  ctx.waitUntil(new Promise((r) => setTimeout(r, 50)).then(() => ctx.publish("late", [1, 2])));
  return new Response(String(result instanceof Promise));
}"""


async def test_published_messages_reach_the_triggers_in_order(
    tmp_path: Path, published: Published
) -> None:
    async with deno_runtime(tmp_path, plugins=(Plugin(),)) as runtime:
        result = await call(runtime, make_spec(PUBLISHER, app_id="chat"))
        assert result.outcome == "ok", result.error
        assert result.body == b"true"
        await eventually(lambda: len(published) == 4)
    assert published == [
        ("chat", "room:1", {"text": "hello", "n": 1}),
        ("chat", "room:1", "second"),
        ("chat", "room:2", None),
        ("chat", "late", [1, 2]),
    ]


async def test_a_failing_delivery_does_not_fail_the_invocation(
    tmp_path: Path, published: Published, caplog: pytest.LogCaptureFixture
) -> None:
    async with deno_runtime(tmp_path, plugins=(Plugin(),)) as runtime:
        code = 'export default (req, ctx) => { ctx.publish("c", 1); return new Response("ok"); }'
        result = await call(runtime, make_spec(code))
        assert result.outcome == "ok" and result.body == b"ok"
        await eventually(lambda: published == [("contract", "c", 1)])
    assert "subscriber gone" in caplog.text


MISUSE = """export default (req, ctx) => {
  const refused = [];
  for (const attempt of [
    () => ctx.publish("", 1),
    () => ctx.publish(42, 1),
    () => ctx.publish("c", { big: 1n }),
    () => { const loop = {}; loop.self = loop; ctx.publish("c", loop); },
  ]) {
    try { attempt(); refused.push("allowed"); } catch (error) { refused.push(error.name); }
  }
  return Response.json(refused);
}"""


async def test_misuse_throws_in_the_function(tmp_path: Path, published: Published) -> None:
    async with deno_runtime(tmp_path, plugins=(Plugin(),)) as runtime:
        result = await call(runtime, make_spec(MISUSE))
        assert result.outcome == "ok", result.error
        assert result.body == b'["TypeError","TypeError","TypeError","TypeError"]'
        await asyncio.sleep(0.1)
    assert published == []
