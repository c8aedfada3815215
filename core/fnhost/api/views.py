"""Models to wire shapes (fnhost.schemas)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fnhost.models import FunctionDefinition, FunctionMetrics, InvocationRecord, LogLine
from fnhost.schemas import FunctionView, LogLineView, LogRecordView

if TYPE_CHECKING:
    from fnhost.platform import Platform


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def function_view(
    platform: Platform,
    function: FunctionDefinition,
    base_url: str,
    *,
    with_code: bool = False,
    metrics: FunctionMetrics | None = None,
) -> FunctionView:
    triggers: list[dict[str, Any]] = []
    for spec in function.triggers:
        entry: dict[str, Any] = {"type": spec.type, "config": spec.config}
        trigger = platform.triggers.get(spec.type)
        if trigger is not None:
            entry.update(trigger.describe(function))
        triggers.append(entry)
    has_http = function.trigger_of("http") is not None
    return FunctionView(
        name=function.name,
        description=function.description,
        triggers=triggers,
        trigger=triggers[0],
        envVarNames=list(function.env_var_names),
        timeoutMs=function.timeout_ms,
        memoryLimitMb=function.memory_limit_mb,
        version=function.version,
        createdAt=iso(function.created_at),
        updatedAt=iso(function.updated_at),
        url=f"{base_url.rstrip('/')}/v1/{function.app_id}/fn/{function.name}" if has_http else None,
        code=function.code if with_code else None,
        metrics=metrics,
    )


def log_line_views(lines: tuple[LogLine, ...] | list[LogLine]) -> list[LogLineView]:
    return [LogLineView(line.level, line.message, iso(line.timestamp)) for line in lines]


def record_view(record: InvocationRecord) -> LogRecordView:
    return LogRecordView(
        id=record.id,
        timestamp=iso(record.timestamp),
        trigger=record.trigger,
        method=record.method,
        path=record.path,
        status_code=record.status_code,
        duration_ms=record.duration_ms,
        memory_mb=record.memory_mb,
        error=record.error,
        level=record.level,
        version=record.function_version,
        logs=log_line_views(record.logs),
    )


def body_text(body: bytes) -> tuple[str, str]:
    """A body as text when it is UTF-8, else base64; with the encoding used."""
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"
