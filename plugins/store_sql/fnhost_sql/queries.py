"""Statements the store runs often: reading functions with their env, the logs query
and the metrics aggregates.

Kept apart from the store so tests can check the plan the database picks for them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, Text, case, cast, func, select

from fnhost.models import LogQuery
from fnhost_sql.tables import env_vars, functions, invocations


def functions_statement(dialect_name: str) -> Select[Any]:
    """Functions with their env as one JSON object column `encrypted_env` ({key: ciphertext},
    NULL or "{}" when there is none): a single statement, so the function and its env come
    from one snapshot without a transaction."""
    return select(functions, _env_object(dialect_name).label("encrypted_env"))


def _env_object(dialect_name: str) -> ColumnElement[str]:
    aggregate: ColumnElement[str]
    if dialect_name == "postgresql":
        # As text: asyncpg would otherwise hand back a decoded dict.
        aggregate = cast(func.json_object_agg(env_vars.c.key, env_vars.c.ciphertext), Text)
    elif dialect_name == "sqlite":
        aggregate = func.json_group_object(env_vars.c.key, env_vars.c.ciphertext, type_=Text)
    else:  # MySQL 5.7.22+, MariaDB 10.5+
        aggregate = func.json_objectagg(env_vars.c.key, env_vars.c.ciphertext, type_=Text)
    return (
        select(aggregate)
        .where(
            env_vars.c.app_id == functions.c.app_id, env_vars.c.function_name == functions.c.name
        )
        .scalar_subquery()
    )


def logs_statement(app_id: str, name: str, query: LogQuery) -> Select[Any]:
    """Records of one function, newest first. Served by the (function, timestamp) index, or
    by the (function, level, timestamp) one when only errors are asked for."""
    statement = select(invocations).where(
        invocations.c.app_id == app_id, invocations.c.function_name == name
    )
    if query.level == "error":
        statement = statement.where(invocations.c.level == "error")
    if query.since is not None:
        statement = statement.where(invocations.c.timestamp >= query.since)
    return statement.order_by(invocations.c.timestamp.desc()).limit(max(query.limit, 0))


def totals_statement(app_id: str, name: str) -> Select[Any]:
    """Columns `count`, `errors`, `average` (duration) and `latest` (start), in one pass."""
    return select(
        func.count().label("count"),
        func.sum(case((invocations.c.level == "error", 1), else_=0)).label("errors"),
        func.avg(invocations.c.duration_ms).label("average"),
        func.max(invocations.c.timestamp).label("latest"),
    ).where(invocations.c.app_id == app_id, invocations.c.function_name == name)


def duration_at_rank_statement(app_id: str, name: str, offset: int) -> Select[Any]:
    """The duration at 0-based position `offset` in ascending order: an index walk of
    `offset` entries of the (function, duration) index rather than a sort of every row."""
    return (
        select(invocations.c.duration_ms)
        .where(invocations.c.app_id == app_id, invocations.c.function_name == name)
        .order_by(invocations.c.duration_ms)
        .limit(1)
        .offset(offset)
    )


def nearest_rank_offset(count: int, percentile: int) -> int:
    """0-based position of the `percentile` by the nearest-rank method: ceil(p/100 * n) - 1."""
    return max(0, (percentile * count + 99) // 100 - 1)
