"""msgspec Structs shared by the core and plugins: the only shapes that cross the plugin seam."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from typing import Any, Literal

import msgspec

LogLevel = Literal["debug", "info", "warn", "error"]
RecordLevel = Literal["info", "error"]
# Why an invocation ended; the core maps each outcome to the caller's status once.
Outcome = Literal["ok", "error", "bad_return", "timeout", "memory", "crash"]
KeyRole = Literal["admin", "app"]


class TriggerSpec(msgspec.Struct, frozen=True):
    """One trigger of a function: its type ("http", "cron", ...) and its validated config."""

    type: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class FunctionDefinition(msgspec.Struct, kw_only=True, frozen=True):
    """A deployed function without its env var values."""

    app_id: str
    name: str
    code: str
    description: str = ""
    triggers: tuple[TriggerSpec, ...] = (TriggerSpec("http"),)
    timeout_ms: int = 30000
    memory_limit_mb: int = 128
    env_var_names: tuple[str, ...] = ()
    # `version` counts deploys; `revision` counts every change a worker must see
    # (deploys and env patches), so runtimes key warm workers by revision.
    version: int = 1
    revision: int = 1
    created_at: datetime
    updated_at: datetime

    def trigger_of(self, trigger_type: str) -> TriggerSpec | None:
        """The function's trigger of that type, if it has one."""
        return next((t for t in self.triggers if t.type == trigger_type), None)


class StoredFunction(FunctionDefinition, kw_only=True, frozen=True):
    """A function as a store keeps it: env var values are ciphertext only."""

    encrypted_env: dict[str, str] = msgspec.field(default_factory=dict)


class FunctionSpec(FunctionDefinition, kw_only=True, frozen=True):
    """A function as a runtime runs it: env var values in plaintext, for that function only."""

    env: dict[str, str] = msgspec.field(default_factory=dict)


class InvocationRequest(msgspec.Struct, kw_only=True, frozen=True):
    """What a function receives as its Request, plus ctx.user and ctx.trigger."""

    invocation_id: str
    method: str
    url: str  # absolute URL the function sees: scheme://host/sub/path?query
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""
    trigger: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "http"})
    user: dict[str, Any] | None = None


class LogLine(msgspec.Struct, frozen=True):
    """One console line of an invocation."""

    level: LogLevel
    message: str
    timestamp: datetime


class InvocationResult(msgspec.Struct, kw_only=True):
    """What a runtime answers. `status_code`, `headers` and `body` are the function's own
    Response when `outcome` is "ok"; otherwise `error` says why it failed.

    A streamed body comes as `stream` (and `body` stays empty): an async iterator of
    chunks, consumed once by the core as they are produced. The runtime updates this
    same object (outcome, error, duration_ms, memory_mb, logs) before the iterator
    ends, so those fields are final only once the stream is exhausted or closed.
    """

    outcome: Outcome = "ok"
    status_code: int = 200
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    body: bytes = b""
    error: str | None = None
    duration_ms: float = 0.0
    memory_mb: float = 0.0
    logs: list[LogLine] = msgspec.field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    # Console lines that ctx.waitUntil work prints after the result, once it settles (the
    # runtime resolves it by the invocation's timeout); the core adds them to the record.
    late_logs: Awaitable[list[LogLine]] | None = None


class InvocationRecord(msgspec.Struct, kw_only=True, frozen=True):
    """One invocation, as kept in the store and listed by the logs endpoint."""

    id: str
    app_id: str
    function_name: str
    function_version: int
    timestamp: datetime  # when the invocation started, UTC
    trigger: str
    method: str
    path: str
    status_code: int
    duration_ms: float
    memory_mb: float
    error: str | None = None
    level: RecordLevel = "info"
    logs: tuple[LogLine, ...] = ()


class LogQuery(msgspec.Struct, kw_only=True, frozen=True):
    """Filter of a logs query: newest first, at most `limit` records."""

    limit: int = 50
    since: datetime | None = None
    level: RecordLevel = "info"  # "error": failed invocations only; "info": all


class FunctionMetrics(msgspec.Struct, kw_only=True, frozen=True):
    """Aggregates over a function's recorded invocations."""

    total_invocations: int = 0
    error_count: int = 0
    error_rate: float = 0.0  # percent, 0-100
    avg_duration_ms: float = 0.0
    p50_duration_ms: float = 0.0
    p95_duration_ms: float = 0.0
    last_invocation: datetime | None = None


class App(msgspec.Struct, kw_only=True, frozen=True):
    """A tenant: a namespace of functions with its own API keys and settings."""

    id: str
    created_at: datetime
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class ApiKey(msgspec.Struct, kw_only=True, frozen=True):
    """A management key. Only the SHA-256 hash of the secret is ever stored."""

    id: str
    role: KeyRole
    app_id: str | None  # None for the admin key
    key_hash: str
    created_at: datetime
    name: str = ""
    revoked_at: datetime | None = None
