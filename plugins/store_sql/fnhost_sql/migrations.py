"""Schema versions: an ordered list of steps, applied once each, under a database lock.

`schema_version` holds one row per applied step. A release that changes the schema
appends a step; it never edits an applied one. Several fnhost processes may start
against one PostgreSQL or MySQL at the same moment, so the steps run under the
database's own lock and each process re-reads the version once it holds the lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fnhost.errors import ConfigError
from fnhost_sql import tables
from fnhost_sql.engine import SQLITE_BEGIN

Step = Callable[[AsyncConnection], Awaitable[None]]

# Arbitrary, but fixed forever: every fnhost release must take the same lock.
LOCK_ID = 7_270_031_337
MYSQL_LOCK_NAME = "fnhost_schema_migration"
MYSQL_LOCK_TIMEOUT_S = 60


async def create_initial_schema(connection: AsyncConnection) -> None:
    """Version 1: every table of `tables.py` as first released.

    When a later release changes `tables.py`, copy this version's table definitions
    here first, so that a fresh database still passes through every step in order.
    """
    await connection.run_sync(
        lambda sync: tables.metadata.create_all(
            sync,
            tables=[t for t in tables.metadata.sorted_tables if t is not tables.schema_version],
        )
    )


async def add_cron_claims(connection: AsyncConnection) -> None:
    """Version 2: `cron_claims`, one row per claimed fire time of a cron trigger, as first
    released (`CRON_CLAIMS_V2`).

    `checkfirst` keeps the step safe to re-run on MySQL, where DDL commits implicitly.
    """
    await connection.run_sync(lambda sync: CRON_CLAIMS_V2.create(sync, checkfirst=True))


async def add_cron_claim_finish(connection: AsyncConnection) -> None:
    """Version 3: `cron_claims.finished_at` and an index by function, so that a claim can
    see an earlier run of the function still going (no overlap across processes).

    Each part checks first, so the step is safe to re-run on MySQL.
    """

    def upgrade(sync: Connection) -> None:
        inspector = inspect(sync)
        columns = {column["name"] for column in inspector.get_columns("cron_claims")}
        if "finished_at" not in columns:
            column = tables.cron_claims.c.finished_at
            kind = column.type.compile(dialect=sync.dialect)
            sync.execute(text(f"ALTER TABLE cron_claims ADD COLUMN finished_at {kind} NULL"))
        indexes = {index["name"] for index in inspector.get_indexes("cron_claims")}
        for index in tables.cron_claims.indexes:
            if index.name not in indexes:
                index.create(sync)

    await connection.run_sync(upgrade)


# cron_claims as step 2 created it: later steps change the table, this stays.
CRON_CLAIMS_V2 = Table(
    "cron_claims",
    MetaData(),
    Column("fire_time", tables.UtcDateTime, nullable=False),
    Column("app_id", tables.identifier(), nullable=False),
    Column("function_name", tables.identifier(), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("claimed_at", tables.UtcDateTime, nullable=False),
    PrimaryKeyConstraint("fire_time", "app_id", "function_name", name="pk_cron_claims"),
    **tables.MYSQL_TABLE_OPTIONS,
)

# Index i holds the step that brings the schema to version i + 1.
STEPS: list[Step] = [create_initial_schema, add_cron_claims, add_cron_claim_finish]
LATEST_VERSION = len(STEPS)


async def migrate(engine: AsyncEngine) -> list[int]:
    """Bring the database to `LATEST_VERSION`; return the versions this call applied."""
    backend = engine.dialect.name
    if backend == "sqlite":
        sqlite_engine = engine.execution_options(**{SQLITE_BEGIN: "BEGIN IMMEDIATE"})
        async with sqlite_engine.begin() as connection:
            return await _apply_missing_steps(connection)
    if backend == "postgresql":
        async with engine.begin() as connection:
            # Held until this transaction ends; PostgreSQL DDL is transactional, so a
            # failed step leaves nothing behind.
            await connection.execute(select(func.pg_advisory_xact_lock(LOCK_ID)))
            return await _apply_missing_steps(connection)
    if backend in tables.MYSQL:
        return await _migrate_mysql(engine)
    async with engine.begin() as connection:
        return await _apply_missing_steps(connection)


async def _migrate_mysql(engine: AsyncEngine) -> list[int]:
    # MySQL commits implicitly around DDL, so a transaction cannot serialise the steps:
    # a named session lock does, and each step must be safe to re-run after a crash.
    async with engine.connect() as connection:
        acquired = await connection.scalar(
            text("SELECT GET_LOCK(:name, :timeout)"),
            {"name": MYSQL_LOCK_NAME, "timeout": MYSQL_LOCK_TIMEOUT_S},
        )
        if acquired != 1:
            raise TimeoutError(
                f"another fnhost process held the schema lock for {MYSQL_LOCK_TIMEOUT_S}s"
            )
        try:
            applied = await _apply_missing_steps(connection)
            await connection.commit()
            return applied
        finally:
            await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": MYSQL_LOCK_NAME})
            await connection.commit()


async def _apply_missing_steps(connection: AsyncConnection) -> list[int]:
    await connection.run_sync(lambda sync: tables.schema_version.create(sync, checkfirst=True))
    current = await connection.scalar(select(func.max(tables.schema_version.c.version))) or 0
    if current > LATEST_VERSION:
        raise ConfigError(
            f"store.sql: the database has schema version {current}, newer than this fnhost "
            f"knows ({LATEST_VERSION}); upgrade fnhost-sql"
        )
    applied = []
    for version in range(current + 1, LATEST_VERSION + 1):
        await STEPS[version - 1](connection)
        await connection.execute(
            insert(tables.schema_version).values(version=version, applied_at=datetime.now(UTC))
        )
        applied.append(version)
    return applied
