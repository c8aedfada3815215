"""The plugin framework: loading, selection errors, and a third-party runtime."""

from __future__ import annotations

import ast
import inspect
import re
import sys
import types
from pathlib import Path

import msgspec
import pytest

from fnhost import hookimpl, hookspecs
from fnhost.api import create_app
from fnhost.contracts import Runtime
from fnhost.errors import CodeCheckFailed, ConfigError, PluginError
from fnhost.models import FunctionDefinition, FunctionSpec, InvocationRequest, InvocationResult
from fnhost.platform import Platform
from fnhost.plugins import PluginRegistry, create_plugin_manager, describe_plugins
from fnhost.testing import make_config
from tests.conftest import serve_in_process

ROOT = Path(__file__).resolve().parent.parent
HOOK_NAMES = sorted(
    name
    for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("fnhost_")
)


class ShoutConfig(msgspec.Struct, forbid_unknown_fields=True):
    suffix: str = "!"


class ShoutRuntime(Runtime):
    """A third-party runtime written in the test: "code" is a word to shout back."""

    name = "shout"
    Config = ShoutConfig

    async def check(self, function: FunctionSpec) -> None:
        if not function.code.isalpha():
            raise CodeCheckFailed("shout code must be one word")

    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        return InvocationResult(
            status_code=200,
            headers=[("content-type", "text/plain")],
            body=f"{function.code.upper()}{self.config.suffix} ({request.method})".encode(),
            memory_mb=1.0,
        )

    async def evict(self, function: FunctionDefinition) -> None:
        return None


class ShoutPlugin:
    @hookimpl
    def fnhost_runtimes(self) -> list[type[Runtime]]:
        return [ShoutRuntime]


async def test_third_party_runtime_replaces_the_bundled_one(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, runtime={"use": "shout", "shout": {"suffix": "!!"}}, plugins={"disable": ["deno"]}
    )
    pm = create_plugin_manager(
        config.plugins.modules, config.plugins.disable, extra=[ShoutPlugin()]
    )
    platform = Platform(config, pm)
    assert isinstance(platform.runtime, ShoutRuntime)
    async with serve_in_process(create_app(platform)) as client:
        key = (tmp_path / "admin.key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        created = await client.post(
            "/v1/app/functions", json={"name": "hey", "code": "hello"}, headers=headers
        )
        assert created.status_code == 201, created.text
        bad = await client.post(
            "/v1/app/functions", json={"name": "no", "code": "two words"}, headers=headers
        )
        assert bad.status_code == 400 and "one word" in bad.json()["error"]
        called = await client.post("/v1/app/fn/hey")
        assert called.text == "HELLO!! (POST)"
        logs = (await client.get("/v1/app/functions/hey/logs", headers=headers)).json()["logs"]
        assert logs[0]["status_code"] == 200 and logs[0]["memory_mb"] == 1.0


def test_unknown_runtime_stops_startup_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"runtime.use = 'nope'.*available: deno"):
        Platform(make_config(tmp_path, runtime={"use": "nope"}))


def test_disabled_runtime_plugin_is_not_available(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="no loaded plugin provides a runtime named 'deno'"):
        Platform(make_config(tmp_path, plugins={"disable": ["deno"]}))


def test_two_plugins_with_one_runtime_name_stop_startup(tmp_path: Path) -> None:
    class Impostor(ShoutRuntime):
        name = "deno"

    class ImpostorPlugin:
        @hookimpl
        def fnhost_runtimes(self) -> list[type[Runtime]]:
            return [Impostor]

    pm = create_plugin_manager(extra=[ImpostorPlugin()])
    with pytest.raises(PluginError, match="runtime 'deno' is provided by two plugins"):
        Platform(make_config(tmp_path), pm)


def test_misspelled_hookimpl_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def fnhost_runtime(self) -> list[type[Runtime]]:  # missing "s"
            return []

    with pytest.raises(PluginError, match="fnhost_runtime"):
        create_plugin_manager(extra=[Typo()])


def test_plugin_module_from_config_is_loaded(tmp_path: Path) -> None:
    module = types.ModuleType("shout_plugin_module")
    module.fnhost_runtimes = ShoutPlugin().fnhost_runtimes  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        config = make_config(
            tmp_path, runtime={"use": "shout"}, plugins={"modules": ["shout_plugin_module"]}
        )
        assert isinstance(Platform(config).runtime, ShoutRuntime)
    finally:
        del sys.modules[module.__name__]


def test_bad_plugin_config_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"runtime\.deno\.max_warm"):
        Platform(make_config(tmp_path, runtime={"deno": {"max_warm": "many"}}))
    with pytest.raises(ConfigError, match=r"runtime\.deno\.bogus"):
        Platform(make_config(tmp_path, runtime={"deno": {"bogus": 1}}))
    with pytest.raises(ConfigError, match=r"\[store\.mongo\]"):
        Platform(make_config(tmp_path, store={"mongo": {"url": "x"}}))


def test_describe_plugins_lists_bundled_plugins_with_versions() -> None:
    infos = {info.name: info for info in describe_plugins(create_plugin_manager())}
    assert infos["deno"].distribution == "fnhost-deno" and infos["deno"].version
    assert infos["sql"].distribution == "fnhost-sql"
    assert "fnhost_runtimes" in infos["deno"].hooks
    assert infos["fnhost.http_trigger"].distribution == "fnhost-core"
    registry = PluginRegistry.collect(create_plugin_manager())
    assert set(registry.triggers) == {"http", "cron", "websocket"}


# -- every hook is documented and tested ------------------------------------------------


def test_plugin_hooks_are_documented() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOK_NAMES:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"
        assert re.search(rf"^#+ `{name}", guide, re.M), (
            f"{name} is not documented in docs/plugins.md"
        )


def test_plugin_hooks_have_tests() -> None:
    tree = ast.parse((Path(__file__).parent / "test_hooks.py").read_text())
    tested = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
    }
    for name in HOOK_NAMES:
        assert f"test_hook_{name}" in tested, (
            f"hook {name} has no test_hook_{name} in test_hooks.py"
        )
