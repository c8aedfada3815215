"""Events, replies and channels through a real server and real WebSocket clients."""

from __future__ import annotations

import asyncio
import json

from plugins.trigger_ws.tests.support import (
    CHAT,
    ECHO,
    LiveServer,
    eventually,
    ws_client,
    ws_trigger,
)

SHOUT = """export default async function handler(req) {
  const { data } = await req.json();
  return new Response(String(data.text).toUpperCase() + "!");
}"""

THROWS = """export default async function handler(req) {
  throw new Error("no luck");
}"""


async def test_connect_send_an_event_and_get_the_reply(server: LiveServer) -> None:
    await server.api.deploy("echo", ECHO, expect=201, trigger=ws_trigger("chat_message"))
    async with ws_client(server.ws_url()) as client:
        assert client.hello["type"] == "connected" and len(client.connection_id) == 32
        await client.send(type="event", event="chat_message", data={"text": "hi"}, id="c1")
        reply = await client.receive()
    cid = client.connection_id
    assert reply == {
        "type": "reply",
        "id": "c1",
        "function": "echo",
        "status": 200,
        "data": {
            "body": {"event": "chat_message", "data": {"text": "hi"}, "connectionId": cid},
            "trigger": {"type": "websocket", "event": "chat_message", "connectionId": cid},
            "user": None,
        },
    }
    [record] = await server.api.logs("echo")
    assert record["trigger"] == "websocket"
    assert (record["method"], record["path"], record["status_code"]) == ("POST", "/", 200)
    assert record["logs"][0]["message"] == f"event chat_message from {cid}"


async def test_every_function_of_the_event_replies(server: LiveServer) -> None:
    await server.api.deploy("echo", ECHO, expect=201, trigger=ws_trigger("chat_message"))
    await server.api.deploy("shout", SHOUT, expect=201, trigger=ws_trigger("chat_message"))
    await server.api.deploy("other", ECHO, expect=201, trigger=ws_trigger("something_else"))
    await server.api.deploy("http-only", ECHO, expect=201)
    async with ws_client(server.ws_url()) as client:
        await client.send(type="event", event="chat_message", data={"text": "hey"}, id=7)
        replies = {r["function"]: r for r in await client.receive_many(2)}
        assert replies["shout"] == {
            "type": "reply",
            "id": 7,
            "function": "shout",
            "status": 200,
            "data": "HEY!",  # not JSON: the text
        }
        assert replies["echo"]["data"]["body"]["data"] == {"text": "hey"}
        # Nothing else comes: a ping is answered next.
        await client.send(type="ping")
        assert await client.receive() == {"type": "pong"}
    assert len(await server.api.logs("other")) == 0
    assert len(await server.api.logs("http-only")) == 0


async def test_a_failing_function_replies_with_its_status_and_error(server: LiveServer) -> None:
    await server.api.deploy("bad", THROWS, expect=201, trigger=ws_trigger("go"))
    async with ws_client(server.ws_url()) as client:
        await client.send(type="event", event="go", id="x")
        reply = await client.receive()
        assert reply["status"] == 500 and reply["data"] is None
        assert "no luck" in reply["error"]
        await client.send(type="ping", id="still-open")
        assert await client.receive() == {"type": "pong", "id": "still-open"}
    [record] = await server.api.logs("bad", level="error")
    assert record["trigger"] == "websocket" and "no luck" in record["error"]


async def test_a_chat_of_three_clients(server: LiveServer) -> None:
    await server.api.deploy("chat", CHAT, expect=201, trigger=ws_trigger("chat_message"))
    url = server.ws_url()
    async with ws_client(url) as alice, ws_client(url) as bob, ws_client(url) as carol:
        for client in (alice, bob, carol):
            await client.subscribe("room-1")
        await alice.send(type="event", event="chat_message", data={"text": "hello"}, id="m1")
        message = {
            "type": "message",
            "channel": "room-1",
            "data": {"from": alice.connection_id, "text": "hello"},
        }
        frames = await alice.receive_many(2)  # the message and the reply, in either order
        assert message in frames
        assert {"type": "reply", "id": "m1", "function": "chat", "status": 200} | {
            "data": {"published": True}
        } in frames
        assert await bob.receive() == message
        assert await carol.receive() == message

        # Unsubscribed clients and other channels get nothing.
        await carol.send(type="unsubscribe", channel="room-1")
        assert await carol.receive() == {"type": "unsubscribed", "channel": "room-1"}
        await bob.send(type="event", event="chat_message", data={"text": "bye", "room": "room-1"})
        await bob.receive_many(2)
        assert (await alice.receive())["data"]["text"] == "bye"
        await carol.send(type="ping")
        assert await carol.receive() == {"type": "pong"}


async def test_channels_are_per_app(server: LiveServer) -> None:
    await server.api.deploy("chat", CHAT, expect=201, trigger=ws_trigger("chat_message"))
    async with (
        ws_client(server.ws_url("demo")) as sender,
        ws_client(server.ws_url("other-app")) as outsider,
    ):
        await sender.subscribe("room-1")
        await outsider.subscribe("room-1")
        await sender.send(type="event", event="chat_message", data={"text": "secret"})
        assert {f["type"] for f in await sender.receive_many(2)} == {"message", "reply"}
        await outsider.send(type="ping")
        assert await outsider.receive() == {"type": "pong"}  # no message came before it
        # Events are per app too: other-app has no function for chat_message.
        await outsider.send(type="event", event="chat_message", id=1)
        assert (await outsider.receive())["message"] == (
            "no function of app 'other-app' handles event 'chat_message'"
        )


async def test_bad_frames_get_an_error_and_the_connection_stays(server: LiveServer) -> None:
    await server.api.deploy("echo", ECHO, expect=201, trigger=ws_trigger("chat_message"))
    bad_frames: list[tuple[str | bytes, str]] = [
        ("hello", "frame is not valid JSON"),
        ("{", "frame is not valid JSON"),
        (b"\xff\xfe", "frame is not valid JSON"),
        ("[1, 2]", "frame must be a JSON object"),
        ('"event"', "frame must be a JSON object"),
        ('{"event": "chat_message"}', 'frame needs "type"'),
        ('{"type": "explode"}', "unknown frame type 'explode'"),
        ('{"type": "event", "id": "e1"}', 'event frame needs "event"'),
        ('{"type": "event", "event": ""}', "event must be a name"),
        ('{"type": "event", "event": 5}', "event must be a name"),
        ('{"type": "event", "event": "nobody_listens", "id": "e2"}', "handles event"),
        ('{"type": "event", "event": "chat_message", "id": [1]}', "id must be a string"),
        ('{"type": "subscribe"}', 'subscribe frame needs "channel"'),
        ('{"type": "unsubscribe", "channel": ""}', 'unsubscribe frame needs "channel"'),
        ('{"type": "subscribe", "channel": "' + "x" * 201 + '"}', "1-200 characters"),
        (json.dumps({"type": "event", "event": "chat_message", "data": "x" * 70_000}), "limit"),
    ]
    async with ws_client(server.ws_url()) as client:
        for raw, expected in bad_frames:
            await client.send_raw(raw)
            frame = await client.receive()
            assert frame["type"] == "error", (raw, frame)
            assert expected in frame["message"], (raw, frame)
        size = len(bad_frames[-1][0])
        assert frame["message"] == f"frame of {size} bytes is larger than the limit of 65536 bytes"
        # Errors carry the frame's id when it had one.
        await client.send(type="event", event="nobody_listens", id="e3")
        assert await client.receive() == {
            "type": "error",
            "message": "no function of app 'demo' handles event 'nobody_listens'",
            "id": "e3",
        }
        # Still open and working; JSON in a binary frame is accepted too.
        await client.send_raw(json.dumps({"type": "event", "event": "chat_message"}).encode())
        assert (await client.receive())["status"] == 200


async def test_an_invalid_app_id_is_refused(server: LiveServer) -> None:
    async with ws_client(server.ws_url("-bad")) as client:
        assert client.hello == {"type": "error", "message": "invalid app id"}
        assert await client.closed() == (4400, "invalid app id")


async def test_a_deleted_function_stops_receiving_events_at_once(server: LiveServer) -> None:
    await server.api.deploy("echo", ECHO, expect=201, trigger=ws_trigger("chat_message"))
    async with ws_client(server.ws_url()) as client:
        await client.send(type="event", event="chat_message", id=1)
        assert (await client.receive())["function"] == "echo"

        assert (await server.api.delete("/functions/echo")).status_code == 204
        await client.send(type="event", event="chat_message", id=2)
        assert (await client.receive())["type"] == "error"

        # Deploying (or moving a function to another event) applies at once too.
        await server.api.deploy("echo", ECHO, expect=201, trigger=ws_trigger("chat_message"))
        await client.send(type="event", event="chat_message", id=3)
        assert (await client.receive())["status"] == 200
        await server.api.deploy("echo", ECHO, expect=200, trigger=ws_trigger("renamed"))
        await client.send(type="event", event="chat_message", id=4)
        assert (await client.receive())["type"] == "error"
        await client.send(type="event", event="renamed", id=5)
        assert (await client.receive())["id"] == 5


async def test_disconnecting_removes_the_connection_and_its_subscriptions(
    server: LiveServer,
) -> None:
    hub = server.trigger.hub
    async with ws_client(server.ws_url()) as stays:
        await stays.subscribe("room-1")
        async with ws_client(server.ws_url()) as leaves:
            await leaves.subscribe("room-1")
            await leaves.subscribe("room-2")
            assert len(hub.connections) == 2
            assert hub.subscribers("demo", "room-1") == 2 and hub.subscribers("demo", "room-2") == 1
        await eventually(lambda: len(hub.connections) == 1)
        assert hub.subscribers("demo", "room-1") == 1 and hub.subscribers("demo", "room-2") == 0
        assert set(hub.connections) == {stays.connection_id}
    await eventually(lambda: not hub.connections)
    assert hub.subscribers("demo", "room-1") == 0


async def test_replies_of_a_client_that_left_are_dropped_and_recorded(server: LiveServer) -> None:
    slow = """export default async function handler(req) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      return new Response("late");
    }"""
    await server.api.deploy("slow", slow, expect=201, trigger=ws_trigger("wait"))
    async with ws_client(server.ws_url()) as client:
        await client.send(type="event", event="wait")
    await eventually(lambda: not server.trigger.hub.connections)

    async def recorded() -> bool:
        return len(await server.api.logs("slow")) == 1

    await eventually(recorded)
    await asyncio.sleep(0.1)
    assert not server.trigger.hub.connections
