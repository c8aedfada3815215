"""Management auth: admin key, app keys, 401 and 403."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from fnhost.api import create_app
from fnhost.platform import Platform
from fnhost.testing import make_config
from tests.conftest import HELLO, Api, serve_in_process

MANAGEMENT_ROUTES = [
    ("GET", "/v1/demo/functions"),
    ("POST", "/v1/demo/functions"),
    ("GET", "/v1/demo/functions/f"),
    ("DELETE", "/v1/demo/functions/f"),
    ("POST", "/v1/demo/functions/f/invoke"),
    ("GET", "/v1/demo/functions/f/logs"),
    ("PATCH", "/v1/demo/functions/f/env"),
]


@pytest.mark.parametrize(("method", "path"), MANAGEMENT_ROUTES)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer wrong-key", "Basic YWRtaW46YWRtaW4=", "fnh_x"]
)
async def test_management_routes_need_a_valid_key(
    api: Api, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await api.client.request(method, path, headers=headers, json={})
    assert response.status_code == 401, response.text
    assert response.json()["error"]
    assert "wrong-key" not in response.text


async def test_app_key_reaches_only_its_app(api: Api, platform: Platform) -> None:
    _, secret = await platform.keys.create_app_key("demo", "ci")
    own = Api(api.client, "demo", {"Authorization": f"Bearer {secret}"})
    await own.deploy("mine", HELLO, expect=201)
    assert (await own.get("/functions")).status_code == 200
    other = Api(api.client, "other", {"Authorization": f"Bearer {secret}"})
    for method, path in MANAGEMENT_ROUTES:
        response = await api.client.request(
            method, path.replace("/demo/", "/other/"), headers=other.headers, json={}
        )
        assert response.status_code == 403, (method, path, response.text)
    await Api(api.client, "other").deploy("theirs", HELLO, expect=201)  # admin: any app
    assert (await other.get("/functions/theirs")).status_code == 403


async def test_public_calls_need_no_management_key(api: Api) -> None:
    await api.deploy("open", HELLO, expect=201)
    assert (await api.client.get("/v1/demo/fn/open")).status_code == 200


async def test_admin_key_is_generated_once_hashed_and_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    printed: list[str | None] = []
    platform = Platform(make_config(data))
    async with serve_in_process(create_app(platform, on_ready=lambda _, k: printed.append(k))):
        pass
    key_file = data / "admin.key"
    key = key_file.read_text().strip()
    assert printed == [key] and key.startswith("fnh_")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "secret.key").stat().st_mode) == 0o600
    db = (data / "fnhost.db").read_bytes()
    assert key.encode() not in db
    assert hashlib.sha256(key.encode()).hexdigest().encode() in db

    # Second start: the same key, not printed again, and it works.
    printed.clear()
    platform = Platform(make_config(data))
    async with serve_in_process(
        create_app(platform, on_ready=lambda _, k: printed.append(k))
    ) as client:
        assert printed == [None]
        response = await client.get(
            "/v1/demo/functions", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 200
    assert key_file.read_text().strip() == key


async def test_revoked_key_is_refused(api: Api, platform: Platform) -> None:
    key, secret = await platform.keys.create_app_key("demo")
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.client.get("/v1/demo/functions", headers=headers)).status_code == 200
    assert await platform.store.revoke_api_key(key.id)
    assert (await api.client.get("/v1/demo/functions", headers=headers)).status_code == 401
