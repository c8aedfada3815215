"""Every hook of fnhost. Hooks are the only seam between the core and plugins.

Registration hooks are synchronous and return classes; the objects built from
those classes do the async work. Lifecycle and observer hooks may return an
awaitable, which the core awaits (pluggy itself is synchronous).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fnhost.contracts import Runtime, Store, Trigger
    from fnhost.models import FunctionDefinition, InvocationRecord
    from fnhost.platform import Platform

PROJECT = "fnhost"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def fnhost_runtimes() -> list[type[Runtime]]:  # type: ignore[empty-body]
    """Return the runtime classes this plugin provides, each with a unique `name`."""


@hookspec
def fnhost_stores() -> list[type[Store]]:  # type: ignore[empty-body]
    """Return the store classes this plugin provides, each with a unique `name`."""


@hookspec
def fnhost_triggers() -> list[type[Trigger]]:  # type: ignore[empty-body]
    """Return the trigger classes this plugin provides; each validates its own config."""


@hookspec
def fnhost_routes(app_config: Any) -> list[Any]:  # type: ignore[empty-body]
    """Return extra Litestar route handlers or routers (HTTP or WebSocket) to mount.

    `app_config` is the fnhost `Config`; handlers find the platform at
    `connection.app.state.platform`.
    """


@hookspec
def fnhost_cli_commands() -> list[Any]:  # type: ignore[empty-body]
    """Return extra `fnhost` subcommands (click commands or groups) this plugin adds."""


@hookspec
def fnhost_startup(platform: Platform) -> Any:
    """Called once the store and runtime are started; may return an awaitable."""


@hookspec
def fnhost_shutdown(platform: Platform) -> Any:
    """Called before the runtime and store stop; may return an awaitable."""


@hookspec
def fnhost_function_deployed(platform: Platform, function: FunctionDefinition) -> Any:
    """Called after a function was created, updated or had its env changed."""


@hookspec
def fnhost_function_deleted(platform: Platform, function: FunctionDefinition) -> Any:
    """Called after a function was deleted; its triggers must stop at once."""


@hookspec
def fnhost_invocation_finished(
    platform: Platform, function: FunctionDefinition, record: InvocationRecord
) -> Any:
    """Called after each invocation was recorded, whatever its trigger or outcome."""
