"""Statements over invocation records: the logs query and the metrics aggregates.

Kept apart from the store so tests can check the plan the database picks for them.
"""

from __future__ import annotations

from sqlalchemy import Select, case, func, select

from fnhost.models import LogQuery
from fnhost_sql.tables import invocations


def logs_statement(app_id: str, name: str, query: LogQuery) -> Select[tuple[object, ...]]:
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


def totals_statement(app_id: str, name: str) -> Select[tuple[object, ...]]:
    """Count, errors, average duration and the latest start time, in one pass."""
    return select(
        func.count(),
        func.sum(case((invocations.c.level == "error", 1), else_=0)),
        func.avg(invocations.c.duration_ms),
        func.max(invocations.c.timestamp),
    ).where(invocations.c.app_id == app_id, invocations.c.function_name == name)


def duration_at_rank_statement(app_id: str, name: str, offset: int) -> Select[tuple[float]]:
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
