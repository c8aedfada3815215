"""End-user tokens on WebSocket connections: modes none, optional and required, tokens in
the Authorization header or ?token=, and the claims reaching functions as ctx.user."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from plugins.trigger_ws.tests.support import ECHO, LiveServer, live_server, ws_client, ws_trigger

SECRET = "a-test-secret-of-at-least-32-characters!"
AUDIENCE = "chat"


def token(secret: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    # Long-lived: some tokens are made when tests are collected, maybe long before they run.
    payload = {"sub": "user-1", "aud": AUDIENCE, "iat": now, "exp": now + 6 * 3600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm)


def alg_none_token() -> str:
    return jwt.encode(
        {"sub": "user-1", "aud": AUDIENCE, "exp": int(time.time()) + 600}, None, "none"
    )


@pytest.fixture
async def server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LiveServer]:
    mode = getattr(request, "param", "required")
    async with live_server(tmp_path, websocket={"auth": mode}) as started:
        settings = {"auth": {"jwtSecret": SECRET, "audience": AUDIENCE}}
        response = await started.api.client.put(
            "/v1/demo/settings", json=settings, headers=started.api.headers
        )
        assert response.status_code == 200, response.text
        await started.api.deploy("whoami", ECHO, expect=201, trigger=ws_trigger("whoami"))
        yield started


async def user_seen(
    server: LiveServer, *, headers: dict[str, str] | None = None, **query: str
) -> Any:
    """Connect, send one event, and return the ctx.user the function saw."""
    async with ws_client(server.ws_url(**query), additional_headers=headers) as client:
        assert client.hello["type"] == "connected", client.hello
        await client.send(type="event", event="whoami")
        reply = await client.receive()
        assert client.hello["authenticated"] is (reply["data"]["user"] is not None)
        return reply["data"]["user"]


async def refusal(server: LiveServer, **query: str) -> tuple[str, tuple[int | None, str]]:
    async with ws_client(server.ws_url(**query)) as client:
        assert client.hello["type"] == "error"
        return client.hello["message"], await client.closed()


async def test_required_accepts_a_valid_token_in_the_header_or_the_query(
    server: LiveServer,
) -> None:
    user = await user_seen(server, headers={"Authorization": f"Bearer {token()}"})
    assert user["sub"] == "user-1" and user["aud"] == AUDIENCE
    assert (await user_seen(server, token=token(sub="user-2")))["sub"] == "user-2"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "an end-user token is required: Authorization: Bearer <token> or ?token="),
        ({"token": "not-a-jwt"}, "malformed token"),
        ({"token": token(exp=int(time.time()) - 60)}, "token expired"),
        ({"token": token(nbf=int(time.time()) + 86400)}, "token not yet valid"),
        ({"token": token(aud="another-app")}, "token audience not accepted"),
        ({"token": token(aud=None)}, "token has no 'aud' claim"),
        ({"token": token(exp=None)}, "token has no 'exp' claim"),
        ({"token": token(secret="some-other-secret-of-32-characters-long")}, "invalid token"),
        ({"token": alg_none_token()}, "token algorithm 'none' is not accepted"),
    ],
)
async def test_required_refuses_a_missing_or_bad_token_with_4401(
    server: LiveServer, query: dict[str, str], message: str
) -> None:
    assert await refusal(server, **query) == (message, (4401, message))
    assert not server.trigger.hub.connections


@pytest.mark.parametrize("server", ["optional"], indirect=True)
async def test_optional_verifies_a_token_if_there_is_one(server: LiveServer) -> None:
    assert (await user_seen(server, token=token()))["sub"] == "user-1"
    assert await user_seen(server) is None
    # A bad token connects anonymously: the function never sees unverified claims.
    assert await user_seen(server, token=token(exp=int(time.time()) - 60)) is None
    assert await user_seen(server, token=alg_none_token()) is None


@pytest.mark.parametrize("server", ["none"], indirect=True)
async def test_none_ignores_tokens(server: LiveServer) -> None:
    assert await user_seen(server, token=token()) is None
    assert await user_seen(server, headers={"Authorization": f"Bearer {token()}"}) is None


async def test_a_connection_closes_when_its_token_expires(server: LiveServer) -> None:
    # Expired 1 s ago: still within the 5 s leeway, so it connects and is closed ~4 s later.
    started = time.monotonic()
    async with ws_client(server.ws_url(token=token(exp=int(time.time()) - 1))) as client:
        assert client.hello["authenticated"] is True
        assert await client.receive() == {"type": "error", "message": "token expired"}
        assert await client.closed() == (4401, "token expired")
    assert time.monotonic() - started < 12


async def test_app_settings_can_require_a_token_checked_with_the_apps_key(
    tmp_path: Path,
) -> None:
    """Without a server-wide secret, an app's own keys (PUT /v1/{app}/settings) verify its
    tokens, and `websocket.requireToken` makes them required for that app only."""
    app_secret = "the-secret-of-app-demo-32-characters-long"
    async with live_server(tmp_path) as server:
        await server.api.deploy("whoami", ECHO, expect=201, trigger=ws_trigger("whoami"))
        assert await user_seen(server, token=token(app_secret)) is None  # no keys yet
        settings = {"auth": {"jwtSecret": app_secret}, "websocket": {"requireToken": True}}
        response = await server.api.client.put(
            "/v1/demo/settings", json=settings, headers=server.api.headers
        )
        assert response.status_code == 200, response.text
        assert (await user_seen(server, token=token(app_secret)))["sub"] == "user-1"
        message, closed = await refusal(server)
        assert closed == (4401, message)
        assert (await refusal(server, token=token()))[0] == "invalid token"  # not the app's key
        async with ws_client(server.ws_url("another-app")) as anonymous:
            assert anonymous.hello["type"] == "connected"
