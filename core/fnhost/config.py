"""Configuration: a TOML file plus FNHOST_* environment overrides, validated into Structs.

`[store]` and `[runtime]` name the plugin in use (`use = "sql"`); their sub-tables
(`[store.sql]`, `[runtime.deno]`) and `[trigger.<type>]` are plugin sections,
validated by each plugin's own `Config` Struct. A scalar key written directly
under `[store]` or `[runtime]` applies to the selected plugin, so
`FNHOST_STORE__URL` sets `store.<use>.url`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from fnhost.errors import ConfigError

ENV_PREFIX = "FNHOST_"
DEFAULT_FILE = "fnhost.toml"
MiB = 1024 * 1024


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = msgspec.field(default=8080)
    data_dir: str = ".fnhost"
    # When unset, an admin key is generated on first start into <data_dir>/admin.key.
    admin_key: str | None = None
    # Fernet key for env vars at rest; when unset, generated into <data_dir>/secret.key.
    encryption_key: str | None = None
    max_body_bytes: int = 10 * MiB
    max_code_bytes: int = 1 * MiB
    # A request's headers must arrive within this (else 408), and its body must keep
    # coming with no gap longer than this (else 408), so slow clients cannot hold
    # connections open.
    header_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    body_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Public calls read function definitions from memory for this long; changes made
    # through this process apply at once, changes made by another process sharing
    # the store within this bound. 0 reads the store on every call.
    function_cache_seconds: float = 1.0


class LimitsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Limits that protect the host; 0 disables a rate or a count limit."""

    max_functions_per_app: int = 1000
    max_env_vars: int = 100
    max_env_value_bytes: int = 32 * 1024
    max_log_lines_per_invocation: int = 500
    max_log_line_bytes: int = 8 * 1024
    # Token buckets per app and process: sustained rate per second, burst = 2 x rate.
    calls_per_second_per_app: float = 2000.0
    management_per_second_per_app: float = 50.0
    max_concurrent_per_function: int = 256
    log_retention_days: float = 30.0
    log_retention_per_function: int = 100_000


class PluginsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    modules: list[str] = msgspec.field(default_factory=list)
    disable: list[str] = msgspec.field(default_factory=list)


class Selection(msgspec.Struct, kw_only=True):
    """Which plugin class is in use, and every plugin section under this table."""

    use: str
    sections: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return self.sections.get(name, {})


class Config(msgspec.Struct, kw_only=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    store: Selection = msgspec.field(default_factory=lambda: Selection(use="sql"))
    runtime: Selection = msgspec.field(default_factory=lambda: Selection(use="deno"))
    trigger: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    plugins: PluginsConfig = msgspec.field(default_factory=PluginsConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    source: str = "defaults"  # where the config came from, for messages

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the config file (if any) and apply FNHOST_* overrides.

    Without `path`, `./fnhost.toml` is read if it exists (or `FNHOST_CONFIG`).
    Raise `ConfigError` with one line naming the bad key.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "defaults"
    path = path or environ.get("FNHOST_CONFIG")
    if path is None and Path(DEFAULT_FILE).exists():
        path = DEFAULT_FILE
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        source = str(path)
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and "__" in key:
            _set_path(raw, key.removeprefix(ENV_PREFIX).lower().split("__"), _env_value(value))
    return parse_config(raw, source)


def parse_config(raw: dict[str, Any], source: str = "defaults") -> Config:
    """Validate a raw config mapping into a `Config`."""
    raw = dict(raw)
    unknown = set(raw) - {"server", "store", "runtime", "trigger", "plugins", "limits"}
    if unknown:
        raise ConfigError(f"{source}: unknown config key {sorted(unknown)[0]!r}")
    try:
        server = msgspec.convert(raw.get("server", {}), ServerConfig, strict=False)
        plugins = msgspec.convert(raw.get("plugins", {}), PluginsConfig, strict=False)
        limits = msgspec.convert(raw.get("limits", {}), LimitsConfig, strict=False)
    except msgspec.ValidationError:
        raise ConfigError(f"{source}: {_first_invalid_key(raw)}") from None
    _check_port(server, source)
    trigger = raw.get("trigger", {})
    if not isinstance(trigger, dict) or not all(isinstance(v, dict) for v in trigger.values()):
        raise ConfigError(f"{source}: trigger: expected tables [trigger.<type>]")
    return Config(
        server=server,
        store=_selection(raw.get("store", {}), "store", "sql", source),
        runtime=_selection(raw.get("runtime", {}), "runtime", "deno", source),
        trigger=trigger,
        plugins=plugins,
        limits=limits,
        source=source,
    )


def plugin_config(struct: type[msgspec.Struct], raw: dict[str, Any], key: str) -> Any:
    """Validate a plugin's section into its Struct; the error names `key.field`."""
    from fnhost.contracts import validation_message

    try:
        return msgspec.convert(raw, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config: {validation_message(exc, key)}") from None


def _first_invalid_key(raw: dict[str, Any]) -> str:
    from fnhost.contracts import validation_message

    sections = (("server", ServerConfig), ("plugins", PluginsConfig), ("limits", LimitsConfig))
    for section, struct in sections:
        try:
            msgspec.convert(raw.get(section, {}), struct, strict=False)
        except msgspec.ValidationError as exc:
            return validation_message(exc, section)
    return "invalid configuration"


def _check_port(server: ServerConfig, source: str) -> None:
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"{source}: server.port: expected 0-65535, got {server.port}")


def _selection(raw: Any, key: str, default: str, source: str) -> Selection:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {key}: expected a table")
    use = raw.get("use", default)
    if not isinstance(use, str) or not use:
        raise ConfigError(f"{source}: {key}.use: expected a plugin name")
    sections: dict[str, dict[str, Any]] = {}
    shorthand: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "use":
            continue
        if isinstance(value, dict):
            sections[name] = dict(value)
        else:
            shorthand[name] = value
    if shorthand:
        sections[use] = {**sections.get(use, {}), **shorthand}
    return Selection(use=use, sections=sections)


def _set_path(raw: dict[str, Any], parts: list[str], value: Any) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _env_value(value: str) -> Any:
    """Lists may be given as JSON (`["a", "b"]`); every other value stays a string and is
    converted by the Struct it lands in (so "8080" becomes an int port)."""
    if value.startswith("["):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            raise ConfigError(f"environment: {value!r} is not a JSON list") from None
    return value


CONFIG_TEMPLATE = """\
# fnhost configuration. Every key can be overridden by an environment variable:
# FNHOST_<SECTION>__<KEY>, e.g. FNHOST_SERVER__PORT=9000 or
# FNHOST_STORE__URL=postgresql+asyncpg://user@host/db (applies to the store in use).

[server]
host = "127.0.0.1"          # address to listen on
port = 8080
data_dir = ".fnhost"        # admin.key, secret.key and the SQLite database live here
# admin_key = "..."         # fixed admin key; by default one is generated on first start
# encryption_key = "..."    # Fernet key for env vars at rest; by default generated on first start
max_body_bytes = 10485760   # largest request or response body (413 beyond)
max_code_bytes = 1048576    # largest function source (413 beyond)
header_timeout_seconds = 10.0  # a request's headers must arrive within this (408 beyond)
body_timeout_seconds = 30.0    # longest gap while a request body arrives (408 beyond)
function_cache_seconds = 1.0  # how long another process's deploy may take to be seen here

[store]
use = "sql"                 # the store plugin in use

[store.sql]
# url = "sqlite+aiosqlite:///.fnhost/fnhost.db"   # default: <data_dir>/fnhost.db
# url = "postgresql+asyncpg://user@127.0.0.1:5432/fnhost"
# url = "mysql+aiomysql://root@127.0.0.1:3306/fnhost"
# pool_size = 10
# timeout_seconds = 10.0    # connect / pool wait limit on PostgreSQL and MySQL (then 503)

[runtime]
use = "deno"                # or "docker"

[runtime.deno]
max_warm = 50               # warm workers kept, least recently used evicted
idle_seconds = 300          # a worker idle this long is stopped
# recycle_idle_seconds = 30       # an idle worker whose memory grew past
# recycle_growth_mb = 16          # this since it loaded is replaced by a fresh one
# prewarm = true                  # start a function's worker at deploy
# max_concurrent_per_worker = 64  # calls in flight before another worker is started
# max_workers_per_function = 4
# start_timeout_seconds = 30      # loading a function's module
# v8_flags = []                   # extra V8 flags, e.g. ["--optimize-for-size"]

[trigger.cron]              # the cron trigger plugin (fnhost-cron)
misfire_grace_seconds = 30  # a fire time that cannot start within this is skipped
coalesce = true             # several missed fire times run once
max_concurrent_runs = 1     # runs of one function at a time (1: no overlap, across processes)
sync_seconds = 5.0          # how often other processes' deploys are read from the store

[limits]                    # 0 disables a limit
max_functions_per_app = 1000
max_env_vars = 100
max_env_value_bytes = 32768
max_log_lines_per_invocation = 500   # console lines kept per invocation (then a marker)
max_log_line_bytes = 8192            # longer lines are cut, with a marker
calls_per_second_per_app = 2000.0    # public calls, per process (429 with Retry-After)
management_per_second_per_app = 50.0 # management API calls, per process
max_concurrent_per_function = 256    # invocations in flight per function, per process
log_retention_days = 30.0            # invocation records older than this are deleted
log_retention_per_function = 100000  # and only the newest this many are kept

[plugins]
modules = []                # extra plugin modules to load (besides entry points)
disable = []                # plugin names to block (also FNHOST_DISABLE_PLUGINS=a,b)
"""
