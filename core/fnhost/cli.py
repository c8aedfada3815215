"""The `fnhost` command: run the server, manage config, plugins and keys, and drive a
running server over its REST API (deploy, invoke, ls, logs, rm, env)."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from fnhost.config import CONFIG_TEMPLATE, DEFAULT_FILE, Config, load_config
from fnhost.errors import FnhostError
from fnhost.keys import ADMIN_KEY_FILE

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def _config(path: str | None) -> Config:
    try:
        return load_config(path)
    except FnhostError as exc:
        fail(exc.message)
        raise  # unreachable


class PluginCommands(click.Group):
    """`fnhost` plus the subcommands plugins add (hook `fnhost_cli_commands`), loaded
    only when a command is not one of the core's, so core commands stay fast."""

    _plugin_commands: dict[str, click.Command] | None = None

    def _plugins(self, ctx: click.Context) -> dict[str, click.Command]:
        if self._plugin_commands is None:
            from fnhost.plugins import create_plugin_manager

            self._plugin_commands = {}
            try:
                config = load_config(ctx.params.get("config_path"))
                pm = create_plugin_manager(config.plugins.modules, config.plugins.disable)
            except FnhostError:
                return self._plugin_commands  # the command itself reports the config error
            for commands in pm.hook.fnhost_cli_commands():
                for command in commands or []:
                    if command.name:
                        self._plugin_commands.setdefault(command.name, command)
        return self._plugin_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugins(ctx).get(cmd_name)


@click.group(cls=PluginCommands)
@click.version_option(package_name="fnhost-core")
@click.option(
    "--config",
    "config_path",
    envvar="FNHOST_CONFIG",
    type=click.Path(dir_okay=False),
    help="Config file (default: ./fnhost.toml if present).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """fnhost: self-hosted serverless functions."""
    ctx.obj = {"config_path": config_path}


# -- server side -------------------------------------------------------------------


@main.command()
@click.option("--host", help="Override server.host.")
@click.option("--port", type=int, help="Override server.port.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Start fnhost (works with no config file: SQLite, Deno, 127.0.0.1:8080)."""
    import uvicorn

    from fnhost.api import create_app
    from fnhost.platform import Platform

    config = _config(ctx.obj["config_path"])
    if host:
        config.server.host = host
    if port is not None:
        config.server.port = port
    try:
        platform = Platform(config)
    except FnhostError as exc:
        fail(exc.message)
        return
    url = f"http://{config.server.host}:{config.server.port}"

    def ready(_: Platform, generated_key: str | None) -> None:
        gc.freeze()  # what start-up built lives as long as the process: never scan it again
        console.print(
            f"fnhost is listening on [bold]{url}[/] "
            f"(store {config.store.use}, runtime {config.runtime.use})",
            highlight=False,
        )
        key_path = config.data_path / ADMIN_KEY_FILE
        if generated_key:
            console.print(
                f"admin key (shown once; also in {key_path}, mode 0600):", highlight=False
            )
            console.print(f"  [bold]{generated_key}[/]", highlight=False)
        elif key_path.exists():
            console.print(f"admin key: in {key_path}", highlight=False)
        sys.stdout.flush()

    app = create_app(platform, on_ready=ready)
    # Young collections every 50k allocations instead of 700: with start-up objects frozen,
    # this halves the p99 latency of calls at concurrency 32 (63-76 ms to 26-27 ms, wrk).
    gc.set_threshold(50_000, 20, 100)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.server.host,
            port=config.server.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="uvloop",
            http=guarded_http_protocol(
                config.server.header_timeout_seconds, config.server.body_timeout_seconds
            ),
        )
    )
    try:
        server.run()
    except FnhostError as exc:
        fail(exc.message)
    if not server.started:
        sys.exit(1)


# Limits uvicorn lacks: it waits for a request's headers and body forever and buffers the
# headers whole.
MAX_HEADER_BYTES = 64 * 1024


def guarded_http_protocol(
    header_seconds: float, body_idle_seconds: float
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, plus: a request's headers must arrive within
    `header_seconds` (else 408) and fit in MAX_HEADER_BYTES (else 431), and its body must
    keep coming, with no gap over `body_idle_seconds` (else 408). Without them a client
    trickling header bytes or announcing a body it never sends (slowloris) holds its
    connection forever, and one huge header is buffered whole."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _body_timer: asyncio.TimerHandle | None = None
        _body_seen = 0.0  # loop time of the last body bytes

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._expect_headers()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._expect_headers()

        def _expect_headers(self) -> None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(
                header_seconds, self._refuse, 408, "request headers not received in time"
            )

        def data_received(self, data: bytes) -> None:
            if self._header_timer is not None:  # counted before the parser buffers them
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._refuse(431, "request headers too large")
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._stop_timers()
            super().on_headers_complete()
            # Cancelled by on_message_complete, in this same read for a request without body.
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(body_idle_seconds, self._check_body)

        def on_body(self, body: bytes) -> None:
            self._body_seen = self.loop.time()
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._stop_timers()
            super().on_message_complete()

        def _check_body(self) -> None:
            now = self.loop.time()
            if self.flow.read_paused:  # uvicorn stopped reading: the app is behind, not the client
                self._body_seen = now
            wait = self._body_seen + body_idle_seconds - now
            if wait > 0:  # one timer per request, pushed back while bytes arrive
                self._body_timer = self.loop.call_later(wait, self._check_body)
                return
            self._body_timer = None
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()
            else:
                self._refuse(408, "request body not received in time")

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timers()
            super().connection_lost(exc)

        def _stop_timers(self) -> None:
            for timer in (self._header_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._header_timer = self._body_timer = None

        def _refuse(self, status: int, message: str) -> None:
            self._stop_timers()
            if self.transport.is_closing():
                return
            body = json.dumps({"error": message}).encode()
            self.transport.write(
                f"HTTP/1.1 {status} {message}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.close()

    return GuardedHttpToolsProtocol


@main.command()
@click.option("--path", default=DEFAULT_FILE, show_default=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: str, force: bool) -> None:
    """Write a commented config file."""
    target = Path(path)
    if target.exists() and not force:
        fail(f"{target} exists; use --force to overwrite it")
    target.write_text(CONFIG_TEMPLATE)
    console.print(f"wrote {target}", highlight=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List loaded plugins, their distributions and versions, and the hooks each implements."""
    from fnhost.plugins import PluginRegistry, create_plugin_manager, describe_plugins

    config = _config(ctx.obj["config_path"])
    try:
        pm = create_plugin_manager(config.plugins.modules, config.plugins.disable)
        registry = PluginRegistry.collect(pm)
    except FnhostError as exc:
        fail(exc.message)
        return
    provides: dict[str, list[str]] = {}
    for kind in ("runtime", "store", "trigger"):
        for name, provided in getattr(registry, kind + "s").items():
            provides.setdefault(provided.plugin_name, []).append(f"{kind} {name}")
    rows: list[dict[str, Any]] = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "provides": provides.get(info.name, []),
            "hooks": info.hooks,
        }
        for info in describe_plugins(pm)
    ]
    if as_json:
        click.echo(json.dumps({"plugins": rows}, indent=2))
        return
    table = Table("plugin", "distribution", "version", "provides", "hooks")
    for row in rows:
        table.add_row(
            row["name"],
            row["distribution"] or "-",
            row["version"] or "-",
            ", ".join(row["provides"]) or "-",
            ", ".join(row["hooks"]),
        )
    console.print(table)


@main.group()
def keys() -> None:
    """Manage app API keys (works on the store directly; run where fnhost's config is)."""


@keys.command("create")
@click.argument("app_id")
@click.option("--name", default="", help="A label for the key.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_create(ctx: click.Context, app_id: str, name: str, as_json: bool) -> None:
    """Create an API key for APP_ID; the key is printed once."""

    async def create(platform: Any) -> tuple[str, str]:
        key, secret = await platform.keys.create_app_key(app_id, name)
        return key.id, secret

    key_id, secret = _with_store(ctx, create)
    if as_json:
        click.echo(json.dumps({"id": key_id, "app_id": app_id, "key": secret}))
    else:
        console.print(
            f"API key for app [bold]{app_id}[/] (id {key_id}; shown once):", highlight=False
        )
        console.print(f"  [bold]{secret}[/]", highlight=False)


def _with_store(ctx: click.Context, work: Any) -> Any:
    """Run `work(platform)` with only the store started (no runtime, no server)."""
    from fnhost.platform import Platform

    config = _config(ctx.obj["config_path"])

    async def run() -> Any:
        platform = Platform(config)
        await platform.store.start()
        try:
            return await work(platform)
        finally:
            await platform.store.stop()

    try:
        return asyncio.run(run())
    except FnhostError as exc:
        fail(exc.message)


@keys.command("list")
@click.argument("app_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_list(ctx: click.Context, app_id: str | None, as_json: bool) -> None:
    """List API keys (of APP_ID, or all); secrets are never shown, only ids."""

    async def work(platform: Any) -> list[Any]:
        return list(await platform.store.list_api_keys(app_id))

    found = _with_store(ctx, work)
    rows = [
        {
            "id": k.id,
            "role": k.role,
            "app_id": k.app_id,
            "name": k.name,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in found
    ]
    if as_json:
        click.echo(json.dumps({"keys": rows}, indent=2))
        return
    table = Table("id", "role", "app", "name", "created", "revoked")
    for row in rows:
        table.add_row(
            row["id"],
            row["role"],
            row["app_id"] or "*",
            row["name"] or "-",
            row["created_at"],
            row["revoked_at"] or "-",
        )
    console.print(table)


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by id (see `fnhost keys list`); it stops working at once."""

    async def work(platform: Any) -> bool:
        return bool(await platform.store.revoke_api_key(key_id))

    if not _with_store(ctx, work):
        fail(f"no key with id {key_id!r}")
    console.print(f"revoked key {key_id}", highlight=False)


# -- client side ---------------------------------------------------------------------

from fnhost.cli_client import register_client_commands  # noqa: E402

register_client_commands(main)

if __name__ == "__main__":
    main()
