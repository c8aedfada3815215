"""End-to-end fixtures: a real fnhost app (real store, real Deno) driven over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from fnhost.api import create_app
from fnhost.platform import Platform
from fnhost.testing import make_config

ADMIN_KEY = "fnh_test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

HELLO = """export default async function handler(req) {
  return new Response(JSON.stringify({ message: 'Hello!' }), {
    headers: { 'Content-Type': 'application/json' }
  });
}"""


class Api:
    """A REST client of one app, the way a user's script would drive fnhost."""

    def __init__(
        self, client: httpx.AsyncClient, app_id: str = "demo", headers: dict[str, str] | None = None
    ) -> None:
        self.client = client
        self.app_id = app_id
        self.headers = ADMIN if headers is None else headers

    async def deploy(
        self, name: str, code: str = HELLO, expect: int | None = None, **fields: Any
    ) -> httpx.Response:
        response = await self.client.post(
            f"/v1/{self.app_id}/functions",
            json={"name": name, "code": code, **fields},
            headers=self.headers,
        )
        if expect is not None:
            assert response.status_code == expect, response.text
        return response

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(f"/v1/{self.app_id}{path}", headers=self.headers, **kwargs)

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(f"/v1/{self.app_id}{path}", headers=self.headers)

    async def patch_env(self, name: str, changes: dict[str, Any]) -> httpx.Response:
        return await self.client.patch(
            f"/v1/{self.app_id}/functions/{name}/env", json=changes, headers=self.headers
        )

    async def invoke(self, name: str, **body: Any) -> httpx.Response:
        return await self.client.post(
            f"/v1/{self.app_id}/functions/{name}/invoke", json=body, headers=self.headers
        )

    async def call(
        self, name: str, path: str = "", method: str = "GET", **kwargs: Any
    ) -> httpx.Response:
        return await self.client.request(method, f"/v1/{self.app_id}/fn/{name}{path}", **kwargs)

    async def logs(self, name: str, **params: Any) -> list[dict[str, Any]]:
        response = await self.get(f"/functions/{name}/logs", params=params)
        assert response.status_code == 200, response.text
        return response.json()["logs"]  # type: ignore[no-any-return]


AppFactory = Callable[..., Any]


@pytest.fixture
def config_sections() -> dict[str, Any]:
    """Raw config tables for the app under test; override in a module to change them."""
    return {}


@pytest.fixture
async def platform(tmp_path: Path, config_sections: dict[str, Any]) -> Platform:
    sections = {"server": {"data_dir": str(tmp_path / "data"), "admin_key": ADMIN_KEY}}
    for key, value in config_sections.items():
        sections[key] = {**sections.get(key, {}), **value}
    return Platform(make_config(tmp_path / "data", **sections))


@asynccontextmanager
async def serve_in_process(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app on this test's event loop (so requests really run concurrently and tests
    may use the platform directly), lifespan included."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan() -> None:
        # In a task of its own: pytest-asyncio may tear fixtures down in another task,
        # and the lifespan's cancel scopes must be exited where they were entered.
        async with app.lifespan():
            started.set()
            await stop.wait()

    lifespan = asyncio.create_task(run_lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([lifespan, waiter], return_when=asyncio.FIRST_COMPLETED)
    if lifespan.done():
        waiter.cancel()
        lifespan.result()  # start-up failed: raise its error
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver.local", timeout=60
        ) as client:
            yield client
    finally:
        stop.set()
        await lifespan


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_process(create_app(platform)) as test_client:
        yield test_client


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)
