"""End-to-end fixtures: a real fnhost app (real store, real Deno) driven over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

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


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with AsyncTestClient(app=create_app(platform), timeout=60) as test_client:
        yield test_client


@pytest.fixture
def api(client: httpx.AsyncClient) -> Api:
    return Api(client)
