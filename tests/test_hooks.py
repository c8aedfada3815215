"""One test per hook (test_plugins.py enforces that every hook has a `test_hook_<name>`).

Each registers a plugin object defined here, as a third party would, and drives
fnhost over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar import get

from fnhost import hookimpl
from fnhost.api import create_app
from fnhost.contracts import Store, Trigger
from fnhost.models import FunctionDefinition, InvocationRecord
from fnhost.platform import Platform
from fnhost.plugins import create_plugin_manager
from fnhost.testing import make_config
from fnhost_sql.store import SqlStore
from tests.conftest import ADMIN, HELLO, Api, serve_in_process


async def start(tmp_path: Path, *plugins: Any, **sections: Any) -> AsyncIterator[Api]:
    config = make_config(
        tmp_path,
        server={
            "data_dir": str(tmp_path),
            "admin_key": ADMIN["Authorization"].removeprefix("Bearer "),
        },
        **sections,
    )
    platform = Platform(config, create_plugin_manager(extra=list(plugins)))
    async with serve_in_process(create_app(platform)) as client:
        yield Api(client)


@pytest.fixture
def events() -> list[Any]:
    return []


async def test_hook_fnhost_runtimes(tmp_path: Path) -> None:
    from tests.test_plugins import ShoutPlugin

    async for api in start(tmp_path, ShoutPlugin(), runtime={"use": "shout"}):
        await api.deploy("word", "hi", expect=201)
        assert (await api.call("word")).text == "HI! (GET)"


class CountingStore(SqlStore):
    """A third-party store built on the bundled one: counts appended records."""

    name = "counting"
    appended = 0

    async def append_invocations(self, records: list[InvocationRecord]) -> None:
        type(self).appended += len(records)
        await super().append_invocations(records)


async def test_hook_fnhost_stores(tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def fnhost_stores(self) -> list[type[Store]]:
            return [CountingStore]

    async for api in start(tmp_path, Plugin(), store={"use": "counting"}):
        await api.deploy("f", HELLO, expect=201)
        await api.call("f")
        await api.call("f")
        assert CountingStore.appended == 2
        assert len(await api.logs("f")) == 2


class QueueConfig(msgspec.Struct, forbid_unknown_fields=True):
    topic: str


class QueueTrigger(Trigger):
    name = "queue"
    TriggerConfig = QueueConfig

    def describe(self, function: FunctionDefinition) -> dict[str, Any]:
        return {"subscribed": True}


async def test_hook_fnhost_triggers(tmp_path: Path) -> None:
    class Plugin:
        @hookimpl
        def fnhost_triggers(self) -> list[type[Trigger]]:
            return [QueueTrigger]

    async for api in start(tmp_path, Plugin()):
        body = (
            await api.deploy(
                "q", HELLO, expect=201, trigger={"type": "queue", "config": {"topic": "jobs"}}
            )
        ).json()
        assert body["trigger"] == {"type": "queue", "config": {"topic": "jobs"}, "subscribed": True}
        bad = await api.deploy("q2", HELLO, trigger={"type": "queue", "config": {"topic": 1}})
        assert bad.status_code == 422 and "trigger.config.topic" in bad.json()["error"]


async def test_hook_fnhost_routes(tmp_path: Path) -> None:
    @get("/extra/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    class Plugin:
        @hookimpl
        def fnhost_routes(self, app_config: object) -> list[object]:
            assert hasattr(app_config, "server")
            return [ping]

    async for api in start(tmp_path, Plugin()):
        assert (await api.client.get("/extra/ping")).json() == {"pong": "yes"}


def test_hook_fnhost_cli_commands(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "fnhost.cli", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "docker" in result.stdout  # added by the fnhost-docker plugin
    build = subprocess.run(
        [sys.executable, "-m", "fnhost.cli", "docker", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert build.returncode == 0 and "build-image" in build.stdout


async def test_hook_fnhost_startup(tmp_path: Path, events: list[Any]) -> None:
    class Plugin:
        @hookimpl
        async def fnhost_startup(self, platform: Platform) -> None:
            events.append(("startup", platform.store.name, platform.runtime.name))

    async for _ in start(tmp_path, Plugin()):
        assert events == [("startup", "sql", "deno")]


async def test_hook_fnhost_shutdown(tmp_path: Path, events: list[Any]) -> None:
    class Plugin:
        @hookimpl
        def fnhost_shutdown(self, platform: Platform) -> None:
            events.append("shutdown")

    async for _ in start(tmp_path, Plugin()):
        assert events == []
    assert events == ["shutdown"]


async def test_hook_fnhost_function_deployed(tmp_path: Path, events: list[Any]) -> None:
    class Plugin:
        @hookimpl
        async def fnhost_function_deployed(
            self, platform: Platform, function: FunctionDefinition
        ) -> None:
            events.append((function.name, function.version, function.env_var_names))

    async for api in start(tmp_path, Plugin()):
        await api.deploy("f", HELLO, expect=201)
        await api.deploy("f", HELLO, expect=200, envVars={"K": "v"})
        await api.patch_env("f", {"J": "w"})
        await api.deploy("f", "export default (", expect=400)
    assert events == [("f", 1, ()), ("f", 2, ("K",)), ("f", 2, ("J", "K"))]


async def test_hook_fnhost_function_deleted(tmp_path: Path, events: list[Any]) -> None:
    class Plugin:
        @hookimpl
        def fnhost_function_deleted(self, platform: Platform, function: FunctionDefinition) -> None:
            events.append(function.name)

    async for api in start(tmp_path, Plugin()):
        await api.deploy("f", HELLO, expect=201)
        assert (await api.delete("/functions/f")).status_code == 204
        assert (await api.delete("/functions/f")).status_code == 404
    assert events == ["f"]


async def test_hook_fnhost_invocation_finished(tmp_path: Path, events: list[Any]) -> None:
    class Observer:
        @hookimpl
        async def fnhost_invocation_finished(
            self, platform: Platform, function: FunctionDefinition, record: InvocationRecord
        ) -> None:
            events.append((function.name, record.status_code, record.trigger))

    class BrokenObserver:
        @hookimpl
        def fnhost_invocation_finished(self, record: InvocationRecord) -> None:
            raise RuntimeError("observer bug")

    async for api in start(tmp_path, Observer(), BrokenObserver()):
        await api.deploy("f", HELLO, expect=201)
        response = await api.call("f")
        assert response.status_code == 200  # a broken observer does not break calls
        await api.invoke("f")
    assert events == [("f", 200, "http"), ("f", 200, "test")]
