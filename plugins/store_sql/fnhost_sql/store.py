"""`SqlStore`: the bundled store, on SQLite (default), PostgreSQL or MariaDB/MySQL."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from sqlalchemy import Insert, Table, Update, delete, func, insert, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    InterfaceError,
    InvalidRequestError,
    OperationalError,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fnhost.contracts import Store
from fnhost.errors import ConfigError, Conflict, Unavailable
from fnhost.models import (
    ApiKey,
    App,
    FunctionMetrics,
    InvocationRecord,
    LogQuery,
    StoredFunction,
)
from fnhost_sql import convert, queries
from fnhost_sql.engine import SQLITE_BEGIN, build_engine, default_url, use_wal
from fnhost_sql.migrations import migrate
from fnhost_sql.sqlite_append import SqliteRecordAppender
from fnhost_sql.tables import (
    MYSQL,
    api_keys,
    apps,
    cron_claims,
    env_vars,
    function_versions,
    functions,
    invocations,
)

if TYPE_CHECKING:
    from fnhost.platform import Platform


class SqlStoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[store.sql]`: where the database is and how many connections to keep."""

    # None: SQLite at <server.data_dir>/fnhost.db.
    url: str | None = None
    pool_size: Annotated[int, msgspec.Meta(ge=1)] = 10
    echo: bool = False  # log every SQL statement
    # PostgreSQL/MySQL: connect and pool-wait limit; PostgreSQL statements get 3 times it.
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class SqlStore(Store):
    """Keeps everything in one SQL database through SQLAlchemy's async engine."""

    name = "sql"
    Config = SqlStoreConfig

    def __init__(self, config: SqlStoreConfig, platform: Platform) -> None:
        super().__init__(config, platform)
        self.url = config.url or default_url(platform.config.server.data_dir)
        self._engine: AsyncEngine | None = None
        self._sqlite_appender: SqliteRecordAppender | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The started engine (for tests and plugins that need raw SQL on this database)."""
        if self._engine is None:
            raise RuntimeError("the sql store is not started")
        return self._engine

    async def start(self) -> None:
        where = _redacted(self.url)
        try:
            engine = build_engine(
                self.url,
                pool_size=self.config.pool_size,
                echo=self.config.echo,
                timeout_seconds=self.config.timeout_seconds,
            )
        except (ArgumentError, InvalidRequestError, ImportError) as exc:
            raise ConfigError(
                f"store.sql.url: cannot use {where} ({exc}); expected sqlite+aiosqlite://, "
                "postgresql+asyncpg:// (fnhost-sql[postgres]) or mysql+aiomysql:// "
                "(fnhost-sql[mysql])"
            ) from exc
        except OSError as exc:
            raise Unavailable(
                f"store: cannot create the database directory for {where}: {exc}"
            ) from exc
        try:
            if engine.dialect.name == "sqlite":
                await use_wal(engine)
            await migrate(engine)
        except (OperationalError, InterfaceError, OSError) as exc:
            await engine.dispose()
            raise Unavailable(f"store: cannot open database {where}: {exc}") from exc
        self._engine = engine
        if engine.dialect.name == "sqlite":
            self._sqlite_appender = SqliteRecordAppender(engine)

    async def stop(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sqlite_appender = None

    @asynccontextmanager
    async def _reading(self, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection to read with. Each statement sees a consistent state; with `snapshot`
        several statements see the same one (SQLite otherwise skips BEGIN, saving a round
        trip to its thread)."""
        engine = (
            self.engine.execution_options(**{SQLITE_BEGIN: "BEGIN"}) if snapshot else self.engine
        )
        try:
            async with engine.connect() as connection:
                yield connection
        except (OperationalError, InterfaceError) as exc:
            raise Unavailable(f"store: {exc.orig or exc}") from exc

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed on exit; on SQLite it takes the write lock first."""
        engine = self.engine.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        try:
            async with engine.begin() as connection:
                yield connection
        except (OperationalError, InterfaceError) as exc:
            raise Unavailable(f"store: {exc.orig or exc}") from exc

    # functions

    async def save_function(self, function: StoredFunction, expected_revision: int | None) -> None:
        values = convert.function_values(function)
        where = _function_key(function.app_id, function.name)
        try:
            async with self._writing() as connection:
                if expected_revision is None:
                    await connection.execute(insert(functions).values(values))
                else:
                    result = await connection.execute(
                        update(functions)
                        .where(*where, functions.c.revision == expected_revision)
                        .values(values)
                    )
                    if result.rowcount == 0:
                        raise Conflict(
                            f"function {function.name!r} changed concurrently "
                            f"(expected revision {expected_revision})",
                            {"app_id": function.app_id, "name": function.name},
                        )
                    await connection.execute(delete(env_vars).where(*_env_key(function)))
                if function.encrypted_env:
                    await connection.execute(insert(env_vars), convert.env_values(function))
                await _keep_version(connection, function)
        except IntegrityError:
            raise Conflict(
                f"function {function.name!r} already exists",
                {"app_id": function.app_id, "name": function.name},
            ) from None

    async def get_function(self, app_id: str, name: str) -> StoredFunction | None:
        async with self._reading() as connection:
            statement = queries.functions_statement(connection.dialect.name)
            result = await connection.execute(statement.where(*_function_key(app_id, name)))
            row = result.mappings().first()
        return None if row is None else convert.function_from_row(row)

    async def list_functions(self, app_id: str | None = None) -> list[StoredFunction]:
        async with self._reading() as connection:
            statement = queries.functions_statement(connection.dialect.name)
            if app_id is not None:
                statement = statement.where(functions.c.app_id == app_id)
            result = await connection.execute(
                statement.order_by(functions.c.app_id, functions.c.name)
            )
            rows = result.mappings().all()
        return [convert.function_from_row(row) for row in rows]

    async def count_functions(self, app_id: str) -> int:
        async with self._reading() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(functions).where(functions.c.app_id == app_id)
            )
        return int(count or 0)

    async def delete_function(self, app_id: str, name: str) -> bool:
        async with self._writing() as connection:
            await connection.execute(
                delete(invocations).where(
                    invocations.c.app_id == app_id,
                    invocations.c.function_name == name,
                )
            )
            await connection.execute(
                delete(env_vars).where(
                    env_vars.c.app_id == app_id, env_vars.c.function_name == name
                )
            )
            await connection.execute(
                delete(function_versions).where(
                    function_versions.c.app_id == app_id, function_versions.c.name == name
                )
            )
            result = await connection.execute(delete(functions).where(*_function_key(app_id, name)))
            return bool(result.rowcount)

    # invocation records

    async def append_invocations(self, records: list[InvocationRecord]) -> None:
        if not records:
            return
        rows = [convert.record_values(record) for record in records]
        try:
            if self._sqlite_appender is not None:
                await self._sqlite_appender.append(rows)
                return
            async with self._writing() as connection:
                await connection.execute(insert(invocations), rows)
        except (IntegrityError, sqlite3.IntegrityError):
            raise Conflict("an invocation record with this id is already stored") from None
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"store: {exc}") from exc

    async def prune_invocations(self, before: datetime, keep_per_function: int) -> int:
        deleted = 0
        async with self._writing() as connection:
            result = await connection.execute(
                delete(invocations).where(invocations.c.timestamp < before)
            )
            deleted += max(result.rowcount or 0, 0)
        if keep_per_function <= 0:
            return deleted
        async with self._reading() as connection:
            keys = (await connection.execute(select(functions.c.app_id, functions.c.name))).all()
        for app_id, name in keys:
            of_function = (invocations.c.app_id == app_id, invocations.c.function_name == name)
            async with self._writing() as connection:
                # The timestamp of the first record past the newest `keep_per_function`.
                cutoff = await connection.scalar(
                    select(invocations.c.timestamp)
                    .where(*of_function)
                    .order_by(invocations.c.timestamp.desc())
                    .offset(keep_per_function)
                    .limit(1)
                )
                if cutoff is None:
                    continue
                result = await connection.execute(
                    delete(invocations).where(*of_function, invocations.c.timestamp <= cutoff)
                )
                deleted += max(result.rowcount or 0, 0)
        return deleted

    async def query_invocations(
        self, app_id: str, name: str, query: LogQuery
    ) -> list[InvocationRecord]:
        async with self._reading() as connection:
            result = await connection.execute(queries.logs_statement(app_id, name, query))
            return [convert.record_from_row(row) for row in result.mappings()]

    async def function_metrics(self, app_id: str, name: str) -> FunctionMetrics:
        async with self._reading(snapshot=True) as connection:
            result = await connection.execute(queries.totals_statement(app_id, name))
            totals = result.mappings().one()
            count = int(totals["count"])
            if count == 0:
                return FunctionMetrics()
            p50, p95 = [
                await _duration_at(
                    connection, app_id, name, queries.nearest_rank_offset(count, percentile)
                )
                for percentile in (50, 95)
            ]
        errors = int(totals["errors"] or 0)
        return FunctionMetrics(
            total_invocations=count,
            error_count=errors,
            error_rate=round(errors * 100 / count, 2),
            avg_duration_ms=float(totals["average"] or 0.0),
            p50_duration_ms=p50,
            p95_duration_ms=p95,
            last_invocation=totals["latest"],
        )

    # cron fire claims

    async def claim_cron_fire(
        self,
        app_id: str,
        name: str,
        fire_time: datetime,
        owner: str,
        unfinished_since: datetime | None = None,
    ) -> bool:
        now = datetime.now(UTC)
        values = {
            "fire_time": fire_time,
            "app_id": app_id,
            "function_name": name,
            "owner": owner,
            "claimed_at": now,
        }
        try:
            async with self._writing() as connection:
                inserted = await connection.execute(
                    _insert_unless_present(connection, cron_claims, values)
                )
                if not inserted.rowcount:
                    return False  # another process claimed this fire time first
                if unfinished_since is None:
                    return True
                still_running = await connection.scalar(
                    select(cron_claims.c.fire_time)
                    .where(
                        cron_claims.c.app_id == app_id,
                        cron_claims.c.function_name == name,
                        cron_claims.c.fire_time < fire_time,
                        cron_claims.c.finished_at.is_(None),
                        cron_claims.c.claimed_at >= unfinished_since,
                    )
                    .limit(1)
                )
                if still_running is None:
                    return True
                # Skipped: finished now, so that it holds back no later fire time.
                await connection.execute(_finish_claim(app_id, name, fire_time, now))
                return False
        except IntegrityError:
            return False  # the primary key: another process claimed this fire time first

    async def finish_cron_fire(self, app_id: str, name: str, fire_time: datetime) -> None:
        async with self._writing() as connection:
            await connection.execute(_finish_claim(app_id, name, fire_time, datetime.now(UTC)))

    async def prune_cron_claims(self, before: datetime) -> int:
        async with self._writing() as connection:
            result = await connection.execute(
                delete(cron_claims).where(cron_claims.c.fire_time < before)
            )
        return int(result.rowcount)

    # apps and keys

    async def get_app(self, app_id: str) -> App | None:
        async with self._reading() as connection:
            row = (
                (await connection.execute(select(apps).where(apps.c.id == app_id)))
                .mappings()
                .first()
            )
        return None if row is None else convert.app_from_row(row)

    async def save_app(self, app: App) -> None:
        async with self._writing() as connection:
            await connection.execute(
                _upsert(connection, apps, convert.app_values(app), ("created_at", "settings"))
            )

    async def add_api_key(self, key: ApiKey) -> None:
        try:
            async with self._writing() as connection:
                await connection.execute(insert(api_keys).values(convert.api_key_values(key)))
        except IntegrityError:
            raise Conflict("an api key with this id or hash already exists") from None

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        async with self._reading() as connection:
            row = (
                (await connection.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)))
                .mappings()
                .first()
            )
        return None if row is None else convert.api_key_from_row(row)

    async def list_api_keys(self, app_id: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if app_id is not None:
            query = query.where(api_keys.c.app_id == app_id)
        async with self._reading() as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [convert.api_key_from_row(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self._writing() as connection:
            # A key revoked twice keeps the time it was first revoked.
            await connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            found = await connection.scalar(select(api_keys.c.id).where(api_keys.c.id == key_id))
        return found is not None


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


def _function_key(app_id: str, name: str) -> tuple[Any, Any]:
    return functions.c.app_id == app_id, functions.c.name == name


def _env_key(function: StoredFunction) -> tuple[Any, Any]:
    return env_vars.c.app_id == function.app_id, env_vars.c.function_name == function.name


async def _keep_version(connection: AsyncConnection, function: StoredFunction) -> None:
    """Add the function's current version to its history unless it is already there (an env
    change saves the function with the same version)."""
    known = await connection.scalar(
        select(function_versions.c.version).where(
            function_versions.c.app_id == function.app_id,
            function_versions.c.name == function.name,
            function_versions.c.version == function.version,
        )
    )
    if known is None:
        await connection.execute(insert(function_versions).values(convert.version_values(function)))


async def _duration_at(connection: AsyncConnection, app_id: str, name: str, offset: int) -> float:
    value = await connection.scalar(queries.duration_at_rank_statement(app_id, name, offset))
    return float(value or 0.0)


def _upsert(
    connection: AsyncConnection, table: Table, values: dict[str, Any], replace: Sequence[str]
) -> Insert:
    """INSERT, or UPDATE of the `replace` columns when the primary key exists: in one
    statement, so two concurrent saves cannot both insert."""
    dialect = connection.dialect.name
    if dialect in MYSQL:
        mysql_insert = mysql.insert(table).values(values)
        return mysql_insert.on_duplicate_key_update(
            {column: mysql_insert.inserted[column] for column in replace}
        )
    if dialect == "postgresql":
        pg_insert = postgresql.insert(table).values(values)
        return pg_insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={column: pg_insert.excluded[column] for column in replace},
        )
    if dialect == "sqlite":
        sqlite_insert = sqlite.insert(table).values(values)
        return sqlite_insert.on_conflict_do_update(
            index_elements=list(table.primary_key.columns),
            set_={column: sqlite_insert.excluded[column] for column in replace},
        )
    raise NotImplementedError(f"sql store: no upsert for dialect {dialect!r}")


def _finish_claim(app_id: str, name: str, fire_time: datetime, at: datetime) -> Update:
    """Mark one claimed fire time's run as ended at `at`."""
    return (
        update(cron_claims)
        .where(
            cron_claims.c.app_id == app_id,
            cron_claims.c.function_name == name,
            cron_claims.c.fire_time == fire_time,
        )
        .values(finished_at=at)
    )


def _insert_unless_present(
    connection: AsyncConnection, table: Table, values: dict[str, Any]
) -> Insert:
    """INSERT that inserts nothing (rowcount 0) when the primary key exists, so the losers of
    a race are not errors in the database's log. MySQL's INSERT IGNORE would also swallow
    other errors, so there a plain INSERT raises IntegrityError on a duplicate instead."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).values(values).on_conflict_do_nothing()
    return insert(table).values(values)
