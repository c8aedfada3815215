"""Bodies of the REST API (camelCase on the wire), shared by the API, the service and the CLI."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from fnhost.enduser import AuthSettings
from fnhost.models import FunctionMetrics

TimeoutMs = Annotated[int, msgspec.Meta(ge=1, le=300_000)]
MemoryLimitMb = Annotated[int, msgspec.Meta(ge=64, le=1024)]


class TriggerBody(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)


class DeployRequest(msgspec.Struct, rename="camel", kw_only=True):
    """POST /v1/{app_id}/functions."""

    name: str
    code: str
    description: str | None = None
    trigger: TriggerBody | None = None
    triggers: list[TriggerBody] | None = None
    # On update, omitted envVars keep the current env; given envVars replace it.
    env_vars: dict[str, str] | None = None
    timeout_ms: TimeoutMs = 30_000
    memory_limit_mb: MemoryLimitMb = 128


class InvokeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /v1/{app_id}/functions/{name}/invoke: a request to make to the function."""

    method: str = "POST"
    path: str = "/"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    query: dict[str, str] | str | None = None
    body: Any = None  # a string is sent as is; any other JSON value is sent as JSON


class LogLineView(msgspec.Struct):
    level: str
    message: str
    timestamp: str


class InvokeResponse(msgspec.Struct, kw_only=True):
    status_code: int
    headers: dict[str, str]
    body: str
    body_encoding: str  # "utf-8", or "base64" for a body that is not text
    duration_ms: float
    memory_mb: float
    error: str | None
    logs: list[LogLineView]
    invocation_id: str


class FunctionView(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str
    triggers: list[dict[str, Any]]
    trigger: dict[str, Any]
    envVarNames: list[str]
    timeoutMs: int
    memoryLimitMb: int
    version: int
    createdAt: str
    updatedAt: str
    url: str | None
    code: str | None = None
    metrics: FunctionMetrics | None = None  # encodes as the wire shape (ISO 8601 times)


class FunctionList(msgspec.Struct):
    functions: list[FunctionView]


class LogRecordView(msgspec.Struct, kw_only=True):
    id: str
    timestamp: str
    trigger: str
    method: str
    path: str
    status_code: int
    duration_ms: float
    memory_mb: float
    error: str | None
    level: str
    version: int
    logs: list[LogLineView]


class LogList(msgspec.Struct):
    logs: list[LogRecordView]


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    detail: Any = None


class WebSocketSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename="camel"):
    require_token: bool = False


class AppSettingsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """PUT /v1/{app_id}/settings: end-user auth and WebSocket settings of an app."""

    auth: AuthSettings | None = None
    websocket: WebSocketSettings | None = None


class AppSettingsView(msgspec.Struct, kw_only=True):
    app_id: str
    auth: dict[str, Any]
    websocket: dict[str, Any]
