"""The platform: config, plugins, and the store, runtime and triggers built from them.

Plugins receive this object in their constructor and in lifecycle hooks; they use
its public attributes (`config`, `store`, `runtime`, `triggers`, `service`).
Constructing it does no I/O; `start()` does.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pluggy

from fnhost.config import Config, plugin_config
from fnhost.contracts import PluginObject, Runtime, Store, Trigger
from fnhost.crypto import EnvCipher
from fnhost.errors import ConfigError
from fnhost.limits import RateLimiter
from fnhost.plugins import PluginRegistry, Provided, create_plugin_manager

log = logging.getLogger("fnhost")


class Platform:
    def __init__(self, config: Config, pm: pluggy.PluginManager | None = None) -> None:
        self.config = config
        self.pm = pm or create_plugin_manager(config.plugins.modules, config.plugins.disable)
        self.registry = PluginRegistry.collect(self.pm)
        self._check_sections()
        self.store: Store = self._build("store", self.registry.select("store", config.store.use))  # type: ignore[assignment]
        self.runtime: Runtime = self._build(  # type: ignore[assignment]
            "runtime", self.registry.select("runtime", config.runtime.use)
        )
        self.triggers: dict[str, Trigger] = {
            name: self._build("trigger", provided)  # type: ignore[misc]
            for name, provided in self.registry.triggers.items()
        }
        self.cipher = EnvCipher.from_config(config)
        from fnhost.enduser import EndUserAuth
        from fnhost.keys import KeyRing
        from fnhost.service import FunctionService

        self.service = FunctionService(self)
        self.keys = KeyRing(self)
        self.end_users = EndUserAuth(self)
        self.call_limiter = RateLimiter(config.limits.calls_per_second_per_app)
        self.management_limiter = RateLimiter(config.limits.management_per_second_per_app)
        self._started: list[PluginObject] = []

    def _build(self, kind: str, provided: Provided) -> PluginObject:
        cls = provided.cls
        if kind == "trigger":
            raw = self.config.trigger.get(cls.name, {})
        else:
            raw = getattr(self.config, kind).section(cls.name)
        config = plugin_config(cls.Config, raw, f"{kind}.{cls.name}")
        return cls(config, self)

    def _check_sections(self) -> None:
        for kind in ("store", "runtime"):
            known = getattr(self.registry, kind + "s")
            for name in getattr(self.config, kind).sections:
                if name not in known and name not in self.config.plugins.disable:
                    raise ConfigError(
                        f"config: [{kind}.{name}]: no loaded plugin provides that {kind}"
                    )
        disabled = set(self.config.plugins.disable)
        for name in self.config.trigger:
            if name not in self.registry.triggers and name not in disabled:
                raise ConfigError(
                    f"config: [trigger.{name}]: no loaded plugin provides that trigger"
                )

    async def start(self) -> None:
        """Start the store, then the runtime and triggers, then run `fnhost_startup` hooks."""
        self.config.data_path.mkdir(parents=True, exist_ok=True)
        for obj in (self.store, self.runtime, *self.triggers.values()):
            await obj.start()
            self._started.append(obj)
        await self.service.start()
        await self.call_hook("fnhost_startup", platform=self)

    async def stop(self) -> None:
        """Run `fnhost_shutdown` hooks, then stop everything started, in reverse order."""
        try:
            await self.call_hook("fnhost_shutdown", platform=self)
        finally:
            await self.service.stop()
            while self._started:
                obj = self._started.pop()
                try:
                    await obj.stop()
                except Exception:
                    log.exception("stopping %s failed", type(obj).__name__)

    async def publish(self, app_id: str, channel: str, data: Any) -> None:
        """A function's `ctx.publish(channel, data)`: runtimes call this; every trigger
        that has subscribers (the WebSocket trigger) delivers it."""
        for trigger in self.triggers.values():
            try:
                await trigger.publish(app_id, channel, data)
            except Exception:
                log.exception(
                    "trigger %s failed to publish on %s/%s", trigger.name, app_id, channel
                )

    async def call_hook(self, name: str, **kwargs: Any) -> list[Any]:
        """Call a hook and await every result that is awaitable (pluggy is synchronous)."""
        results = getattr(self.pm.hook, name)(**kwargs)
        return [await r if inspect.isawaitable(r) else r for r in results]

    async def notify(self, name: str, **kwargs: Any) -> None:
        """Call an observer hook; a failing observer is logged, never fatal to the caller."""
        for impl in getattr(self.pm.hook, name).get_hookimpls():
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("hook %s of plugin %s failed", name, impl.plugin_name)
