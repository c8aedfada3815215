"""Appending invocation records on SQLite with as few thread crossings as possible.

aiosqlite runs each SQLite call on the connection's own thread, and every call is a
round trip between threads (about 0.1 ms here). A SQLAlchemy transaction costs
eight of them (BEGIN, cursor, execute, close, COMMIT ...), so a one-record append
took over 1 ms. Every invocation waits for its record, so this path sends one
multi-row INSERT instead: a single statement is atomic and durable on its own in
autocommit mode. The SQL and the value conversions still come from SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from fnhost_sql.tables import invocations

# SQLite before 3.32 allows 999 parameters per statement; larger batches use executemany
# inside one explicit transaction.
MAX_PARAMETERS = 999


class SqliteRecordAppender:
    """Writes rows of the `invocations` table straight through the pooled aiosqlite connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect
        self._engine = engine
        single_row = str(insert(invocations).compile(dialect=dialect))
        self._head, _, self._placeholders = single_row.partition(" VALUES ")
        self._columns = [column.name for column in invocations.columns]
        self._processors: list[Callable[[Any], Any] | None] = [
            column.type.dialect_impl(dialect).bind_processor(dialect)
            for column in invocations.columns
        ]
        self._rows_per_statement = MAX_PARAMETERS // len(self._columns)

    def _parameters(self, row: Mapping[str, Any]) -> list[Any]:
        return [
            process(row[name]) if process else row[name]
            for name, process in zip(self._columns, self._processors, strict=True)
        ]

    async def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert every row or none; durable when this returns.

        Raises sqlite3.IntegrityError for a duplicate id, sqlite3.OperationalError
        when the database cannot be written (locked past the busy timeout, disk full).
        """
        parameters = [self._parameters(row) for row in rows]
        async with self._engine.connect() as connection:
            pooled = await connection.get_raw_connection()
            driver = pooled.driver_connection
            assert driver is not None
            if len(parameters) <= self._rows_per_statement:
                values = ", ".join([self._placeholders] * len(parameters))
                flat = [value for row in parameters for value in row]
                await driver.execute(f"{self._head} VALUES {values}", flat)
                return
            await driver.execute("BEGIN IMMEDIATE")
            try:
                await driver.executemany(f"{self._head} VALUES {self._placeholders}", parameters)
                await driver.commit()
            except BaseException:
                await driver.rollback()
                raise
