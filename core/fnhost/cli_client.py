"""`fnhost` commands that drive a running server over its REST API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

from fnhost.config import load_config
from fnhost.errors import FnhostError
from fnhost.keys import ADMIN_KEY_FILE

console = Console()
err_console = Console(stderr=True)


class ApiClient:
    def __init__(self, url: str, key: str, app_id: str) -> None:
        self.app_id = app_id
        self.http = httpx.Client(
            base_url=url.rstrip("/"), timeout=330, headers={"Authorization": f"Bearer {key}"}
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, f"/v1/{self.app_id}{path}", **kwargs)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach fnhost at {self.http.base_url}: {exc}")
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("error", response.text)
                if body.get("detail") and not isinstance(body["detail"], dict):
                    message += f" ({body['detail']})"
            except ValueError:
                message = response.text
            _fail(f"{response.status_code}: {message}")
        return response


def _fail(message: str) -> Any:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(1)


def _client(ctx: click.Context, url: str | None, key: str | None, app_id: str) -> ApiClient:
    try:
        config = load_config(ctx.obj.get("config_path") if ctx.obj else None)
    except FnhostError as exc:
        _fail(exc.message)
    if url is None:
        host = config.server.host if config.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
        url = f"http://{host}:{config.server.port}"
    if key is None:
        key_file = config.data_path / ADMIN_KEY_FILE
        if not key_file.exists():
            _fail(f"no key given (--key or FNHOST_KEY) and {key_file} does not exist")
        key = key_file.read_text().strip()
    return ApiClient(url, key, app_id)


def _client_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--url", envvar="FNHOST_URL", help="fnhost base URL (default from config)."
            ),
            click.option(
                "--key",
                envvar="FNHOST_KEY",
                help="Admin or app API key (default: <data_dir>/admin.key).",
            ),
            click.option(
                "--app",
                "app_id",
                envvar="FNHOST_APP",
                default="default",
                show_default=True,
                help="App id.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print the JSON answer."),
        ]
    ):
        command = option(command)
    return command


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _key_values(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"{what}: expected KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def _function_table(functions: list[dict[str, Any]]) -> Table:
    table = Table("name", "version", "triggers", "env", "timeout", "memory", "updated")
    for fn in functions:
        triggers = ", ".join(_trigger_text(t) for t in fn["triggers"])
        table.add_row(
            fn["name"],
            str(fn["version"]),
            triggers,
            ", ".join(fn["envVarNames"]) or "-",
            f"{fn['timeoutMs']} ms",
            f"{fn['memoryLimitMb']} MB",
            fn["updatedAt"],
        )
    return table


def _trigger_text(trigger: dict[str, Any]) -> str:
    config = trigger.get("config", {})
    if trigger["type"] == "cron":
        text = f"cron {config.get('schedule')}"
        if trigger.get("nextFireTime"):
            text += f" (next {trigger['nextFireTime']})"
        return text
    if trigger["type"] == "websocket":
        return f"websocket {config.get('event')}"
    return str(trigger["type"])


def register_client_commands(main: click.Group) -> None:
    @main.command()
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--name", help="Function name (default: the file name without extension).")
    @click.option("--description", default=None)
    @click.option("--cron", "schedule", help="Add a cron trigger with this schedule.")
    @click.option("--timezone", default=None, help="Timezone of the cron schedule.")
    @click.option("--event", help="Add a websocket trigger for this event.")
    @click.option("--no-http", is_flag=True, help="No http trigger.")
    @click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE (replaces the env).")
    @click.option("--timeout-ms", type=int, default=30_000, show_default=True)
    @click.option("--memory-mb", type=int, default=128, show_default=True)
    @_client_options
    @click.pass_context
    def deploy(
        ctx: click.Context,
        file: str,
        name: str | None,
        description: str | None,
        schedule: str | None,
        timezone: str | None,
        event: str | None,
        no_http: bool,
        env_pairs: tuple[str, ...],
        timeout_ms: int,
        memory_mb: int,
        url: str | None,
        key: str | None,
        app_id: str,
        as_json: bool,
    ) -> None:
        """Deploy a function from a .ts or .js file."""
        triggers: list[dict[str, Any]] = [] if no_http else [{"type": "http", "config": {}}]
        if schedule:
            cron: dict[str, Any] = {"schedule": schedule}
            if timezone:
                cron["timezone"] = timezone
            triggers.append({"type": "cron", "config": cron})
        if event:
            triggers.append({"type": "websocket", "config": {"event": event}})
        body: dict[str, Any] = {
            "name": name or Path(file).stem,
            "code": Path(file).read_text(),
            "triggers": triggers,
            "timeoutMs": timeout_ms,
            "memoryLimitMb": memory_mb,
        }
        if description is not None:
            body["description"] = description
        if env_pairs:
            body["envVars"] = _key_values(env_pairs, "--env")
        response = _client(ctx, url, key, app_id).request("POST", "/functions", json=body)
        data = response.json()
        if as_json:
            _print_json(data)
            return
        verb = "created" if response.status_code == 201 else "updated"
        console.print(f"{verb} [bold]{data['name']}[/] version {data['version']}", highlight=False)
        if data.get("url"):
            console.print(f"url: {data['url']}", highlight=False)

    @main.command()
    @click.argument("name")
    @click.option("--method", default="POST", show_default=True)
    @click.option("--path", default="/", show_default=True)
    @click.option("--data", "body", default=None, help="Request body (a string).")
    @click.option("--header", "header_pairs", multiple=True, help="Name: value")
    @_client_options
    @click.pass_context
    def invoke(
        ctx: click.Context,
        name: str,
        method: str,
        path: str,
        body: str | None,
        header_pairs: tuple[str, ...],
        url: str | None,
        key: str | None,
        app_id: str,
        as_json: bool,
    ) -> None:
        """Test-invoke a function and show its answer and console output."""
        headers = {}
        for pair in header_pairs:
            hname, sep, value = pair.partition(":")
            if not sep:
                _fail(f"--header: expected 'Name: value', got {pair!r}")
            headers[hname.strip()] = value.strip()
        payload: dict[str, Any] = {"method": method, "path": path, "headers": headers}
        if body is not None:
            payload["body"] = body
        data = (
            _client(ctx, url, key, app_id)
            .request("POST", f"/functions/{name}/invoke", json=payload)
            .json()
        )
        if as_json:
            _print_json(data)
            return
        style = "green" if data["status_code"] < 400 else "red"
        console.print(
            f"[{style}]{data['status_code']}[/] in {data['duration_ms']:.1f} ms, "
            f"{data['memory_mb']} MB",
            highlight=False,
        )
        for line in data["logs"]:
            console.print(f"  [dim]{line['level']:5}[/] {line['message']}", highlight=False)
        if data["error"]:
            console.print(f"[red]error:[/] {data['error']}", highlight=False)
        click.echo(data["body"])

    @main.command("ls")
    @_client_options
    @click.pass_context
    def list_functions(
        ctx: click.Context, url: str | None, key: str | None, app_id: str, as_json: bool
    ) -> None:
        """List the functions of an app."""
        data = _client(ctx, url, key, app_id).request("GET", "/functions").json()
        if as_json:
            _print_json(data)
            return
        console.print(_function_table(data["functions"]))

    @main.command()
    @click.argument("name")
    @_client_options
    @click.pass_context
    def show(
        ctx: click.Context, name: str, url: str | None, key: str | None, app_id: str, as_json: bool
    ) -> None:
        """Show a function's details and metrics."""
        data = _client(ctx, url, key, app_id).request("GET", f"/functions/{name}").json()
        if as_json:
            _print_json(data)
            return
        console.print(_function_table([data]))
        metrics = data["metrics"]
        console.print(
            f"invocations {metrics['total_invocations']}, errors {metrics['error_count']} "
            f"({metrics['error_rate']}%), avg {metrics['avg_duration_ms']} ms, "
            f"p95 {metrics['p95_duration_ms']} ms, last {metrics['last_invocation'] or '-'}",
            highlight=False,
        )

    @main.command()
    @click.argument("name")
    @click.option("--limit", type=int, default=50, show_default=True)
    @click.option("--level", type=click.Choice(["info", "error"]), default="info")
    @click.option("--since", default=None, help="ISO 8601 time, e.g. 2026-01-01T00:00:00Z")
    @_client_options
    @click.pass_context
    def logs(
        ctx: click.Context,
        name: str,
        limit: int,
        level: str,
        since: str | None,
        url: str | None,
        key: str | None,
        app_id: str,
        as_json: bool,
    ) -> None:
        """Show a function's invocation logs, newest first."""
        params: dict[str, Any] = {"limit": limit, "level": level}
        if since:
            params["since"] = since
        data = (
            _client(ctx, url, key, app_id)
            .request("GET", f"/functions/{name}/logs", params=params)
            .json()
        )
        if as_json:
            _print_json(data)
            return
        table = Table("time", "trigger", "method", "path", "status", "ms", "MB", "error / console")
        for record in data["logs"]:
            lines = [f"{line['level']}: {line['message']}" for line in record["logs"]]
            if record["error"]:
                lines.insert(0, f"[red]{record['error']}[/]")
            status = str(record["status_code"])
            table.add_row(
                record["timestamp"],
                record["trigger"],
                record["method"],
                record["path"],
                status if record["level"] == "info" else f"[red]{status}[/]",
                f"{record['duration_ms']:.1f}",
                str(record["memory_mb"]),
                "\n".join(lines),
            )
        console.print(table)

    @main.command()
    @click.argument("name")
    @_client_options
    @click.pass_context
    def rm(
        ctx: click.Context, name: str, url: str | None, key: str | None, app_id: str, as_json: bool
    ) -> None:
        """Delete a function with its versions, env vars and logs."""
        _client(ctx, url, key, app_id).request("DELETE", f"/functions/{name}")
        if as_json:
            _print_json({"deleted": name})
        else:
            console.print(f"deleted [bold]{name}[/]", highlight=False)

    @main.group()
    def env() -> None:
        """Set or unset a function's env vars (values are never shown)."""

    @env.command("set")
    @click.argument("name")
    @click.argument("pairs", nargs=-1, required=True)
    @_client_options
    @click.pass_context
    def env_set(
        ctx: click.Context,
        name: str,
        pairs: tuple[str, ...],
        url: str | None,
        key: str | None,
        app_id: str,
        as_json: bool,
    ) -> None:
        """Set KEY=VALUE pairs."""
        data = (
            _client(ctx, url, key, app_id)
            .request("PATCH", f"/functions/{name}/env", json=_key_values(pairs, "env set"))
            .json()
        )
        _print_env(data, as_json)

    @env.command("unset")
    @click.argument("name")
    @click.argument("keys", nargs=-1, required=True)
    @_client_options
    @click.pass_context
    def env_unset(
        ctx: click.Context,
        name: str,
        keys: tuple[str, ...],
        url: str | None,
        key: str | None,
        app_id: str,
        as_json: bool,
    ) -> None:
        """Remove keys."""
        data = (
            _client(ctx, url, key, app_id)
            .request("PATCH", f"/functions/{name}/env", json=dict.fromkeys(keys))
            .json()
        )
        _print_env(data, as_json)


def _print_env(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json({"name": data["name"], "envVarNames": data["envVarNames"]})
    else:
        console.print(
            f"{data['name']}: env vars {', '.join(data['envVarNames']) or '(none)'}",
            highlight=False,
        )


__all__ = ["register_client_commands"]
