"""Plugin manager factory and the registries of runtime, store and trigger classes.

Load order: the core's built-in plugins, entry points of group "fnhost", then the
config's `plugins.modules`; `plugins.disable` and FNHOST_DISABLE_PLUGINS block by
name; `check_pending()` makes a misspelled hookimpl fail loudly.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any, TypeVar

import pluggy

from fnhost import hookspecs
from fnhost.contracts import PluginObject, Runtime, Store, Trigger
from fnhost.errors import PluginError

ENTRY_POINT_GROUP = "fnhost"
BUILTIN_PLUGINS = ("fnhost.http_trigger",)

P = TypeVar("P", bound=PluginObject)


def create_plugin_manager(
    modules: list[str] | tuple[str, ...] = (),
    disable: list[str] | tuple[str, ...] = (),
    *,
    load_entry_points: bool = True,
    extra: list[Any] | tuple[Any, ...] = (),
) -> pluggy.PluginManager:
    """A new plugin manager (there is no global one).

    `extra` registers plugin objects or modules directly: tests use it to add a
    plugin defined in the test itself.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(disable) | _env_disabled()
    for name in blocked:
        pm.set_blocked(name)
    for module_name in BUILTIN_PLUGINS:
        if module_name not in blocked:
            pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(
                f"a plugin of entry point group {ENTRY_POINT_GROUP!r} failed to load: {exc!r}"
            ) from exc
    for module_name in modules:
        if module_name in blocked:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"plugins.modules: cannot import {module_name!r}: {exc}") from exc
        if not pm.is_registered(module):
            pm.register(module, name=module_name)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements an unknown hook: {exc}") from exc
    return pm


def _env_disabled() -> set[str]:
    value = os.environ.get("FNHOST_DISABLE_PLUGINS", "")
    return {name.strip() for name in value.split(",") if name.strip()}


@dataclass(frozen=True)
class Provided:
    """A plugin class and the plugin that provided it."""

    cls: type[PluginObject]
    plugin_name: str


@dataclass
class PluginRegistry:
    """Runtime, store and trigger classes by name, gathered from every loaded plugin."""

    runtimes: dict[str, Provided] = field(default_factory=dict)
    stores: dict[str, Provided] = field(default_factory=dict)
    triggers: dict[str, Provided] = field(default_factory=dict)

    @classmethod
    def collect(cls, pm: pluggy.PluginManager) -> PluginRegistry:
        registry = cls()
        for kind, hook_name, base, attr in (
            ("runtime", "fnhost_runtimes", Runtime, "name"),
            ("store", "fnhost_stores", Store, "name"),
            ("trigger", "fnhost_triggers", Trigger, "name"),
        ):
            target: dict[str, Provided] = getattr(registry, kind + "s")
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
                for provided in impl.function() or []:
                    if not (isinstance(provided, type) and issubclass(provided, base)):
                        raise PluginError(
                            f"plugin {plugin_name!r}: {hook_name} returned {provided!r}, "
                            f"not a subclass of fnhost.contracts.{base.__name__}"
                        )
                    name = getattr(provided, attr, None)
                    if not isinstance(name, str) or not name:
                        raise PluginError(
                            f"plugin {plugin_name!r}: {provided.__name__} has no name"
                        )
                    if name in target:
                        other = target[name].plugin_name
                        raise PluginError(
                            f"{kind} {name!r} is provided by two plugins: {other!r} and "
                            f"{plugin_name!r}; disable one with plugins.disable"
                        )
                    target[name] = Provided(provided, plugin_name)
        return registry

    def select(self, kind: str, name: str) -> Provided:
        """The class of the configured runtime or store, or a clear start-up error."""
        available: dict[str, Provided] = getattr(self, kind + "s")
        if name not in available:
            known = ", ".join(sorted(available)) or "none"
            raise PluginError(
                f"{kind}.use = {name!r}: no loaded plugin provides a {kind} named {name!r} "
                f"(available: {known}); is its plugin installed and not disabled?"
            )
        return available[name]


@dataclass(frozen=True)
class PluginInfo:
    """What `fnhost plugins` shows about one loaded plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str]


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        dist = dists.get(id(plugin))
        infos.append(
            PluginInfo(
                name=name,
                distribution=dist.project_name if dist else _module_distribution(plugin),
                version=dist.version
                if dist
                else (_core_version() if _module_distribution(plugin) else None),
                hooks=hooks,
            )
        )
    return infos


def _module_distribution(plugin: Any) -> str | None:
    if isinstance(plugin, ModuleType) and plugin.__name__.startswith("fnhost."):
        return "fnhost-core"
    return None


def _core_version() -> str | None:
    try:
        return version("fnhost-core")
    except PackageNotFoundError:
        return None
