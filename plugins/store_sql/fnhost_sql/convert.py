"""Conversions between table rows and the msgspec Structs of `fnhost.models`.

Rows never leave the plugin: every store method answers with these Structs.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.engine import RowMapping

from fnhost.models import ApiKey, App, InvocationRecord, LogLine, StoredFunction, TriggerSpec

_encoder = msgspec.json.Encoder(order="deterministic")
_triggers_decoder = msgspec.json.Decoder(tuple[TriggerSpec, ...])
_logs_decoder = msgspec.json.Decoder(tuple[LogLine, ...])
_settings_decoder = msgspec.json.Decoder(dict[str, Any])
_env_decoder = msgspec.json.Decoder(dict[str, str])


def to_json(value: Any) -> str:
    return _encoder.encode(value).decode()


def function_values(function: StoredFunction) -> dict[str, Any]:
    """Column values of the `functions` table (env vars live in their own table)."""
    return {
        "app_id": function.app_id,
        "name": function.name,
        "code": function.code,
        "description": function.description,
        "triggers": to_json(function.triggers),
        "timeout_ms": function.timeout_ms,
        "memory_limit_mb": function.memory_limit_mb,
        "version": function.version,
        "revision": function.revision,
        "created_at": function.created_at,
        "updated_at": function.updated_at,
    }


def version_values(function: StoredFunction) -> dict[str, Any]:
    """Column values of the `function_versions` row of the function's current version."""
    return {
        "app_id": function.app_id,
        "name": function.name,
        "version": function.version,
        "code": function.code,
        "description": function.description,
        "triggers": to_json(function.triggers),
        "timeout_ms": function.timeout_ms,
        "memory_limit_mb": function.memory_limit_mb,
        "created_at": function.updated_at,  # when this version was deployed
    }


def env_values(function: StoredFunction) -> list[dict[str, Any]]:
    """Rows of the `env_vars` table: the ciphertext exactly as the core encrypted it."""
    return [
        {
            "app_id": function.app_id,
            "function_name": function.name,
            "key": key,
            "ciphertext": ciphertext,
        }
        for key, ciphertext in function.encrypted_env.items()
    ]


def function_from_row(row: RowMapping) -> StoredFunction:
    """A function from a row of `queries.functions_statement` (its env as a JSON object)."""
    encrypted_env = _env_decoder.decode(row["encrypted_env"]) if row["encrypted_env"] else {}
    return StoredFunction(
        app_id=row["app_id"],
        name=row["name"],
        code=row["code"],
        description=row["description"],
        triggers=_triggers_decoder.decode(row["triggers"]),
        timeout_ms=row["timeout_ms"],
        memory_limit_mb=row["memory_limit_mb"],
        env_var_names=tuple(sorted(encrypted_env)),
        version=row["version"],
        revision=row["revision"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        encrypted_env=dict(sorted(encrypted_env.items())),
    )


def record_values(record: InvocationRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "app_id": record.app_id,
        "function_name": record.function_name,
        "function_version": record.function_version,
        "timestamp": record.timestamp,
        "trigger": record.trigger,
        "method": record.method,
        "path": record.path,
        "status_code": record.status_code,
        "duration_ms": record.duration_ms,
        "memory_mb": record.memory_mb,
        "error": record.error,
        "level": record.level,
        "logs": to_json(record.logs),
    }


def record_from_row(row: RowMapping) -> InvocationRecord:
    return InvocationRecord(
        id=row["id"],
        app_id=row["app_id"],
        function_name=row["function_name"],
        function_version=row["function_version"],
        timestamp=row["timestamp"],
        trigger=row["trigger"],
        method=row["method"],
        path=row["path"],
        status_code=row["status_code"],
        duration_ms=float(row["duration_ms"]),
        memory_mb=float(row["memory_mb"]),
        error=row["error"],
        level=row["level"],
        logs=_logs_decoder.decode(row["logs"]),
    )


def app_values(app: App) -> dict[str, Any]:
    return {"id": app.id, "created_at": app.created_at, "settings": to_json(app.settings)}


def app_from_row(row: RowMapping) -> App:
    return App(
        id=row["id"],
        created_at=row["created_at"],
        settings=_settings_decoder.decode(row["settings"]),
    )


def api_key_values(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "role": key.role,
        "app_id": key.app_id,
        "key_hash": key.key_hash,
        "name": key.name,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def api_key_from_row(row: RowMapping) -> ApiKey:
    return ApiKey(
        id=row["id"],
        role=row["role"],
        app_id=row["app_id"],
        key_hash=row["key_hash"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
