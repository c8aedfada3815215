"""The schema of the sql store: tables, indexes and the column types they share.

Types are chosen so that SQLite, PostgreSQL and MariaDB/MySQL behave alike:
identifiers compare byte-wise (case-sensitive, as the API treats them), long text
fits 1 MiB of code, datetimes keep microseconds and come back timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine

MYSQL = ("mysql", "mariadb")


def identifier(length: int = 100) -> TypeEngine[str]:
    """An indexed name: byte-wise comparison everywhere, so "Foo" and "foo" differ and sort
    the same way on every database (SQLite compares bytes by default)."""
    return (
        String(length)
        .with_variant(postgresql.VARCHAR(length, collation="C"), "postgresql")
        .with_variant(mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)
    )


def long_text() -> TypeEngine[str]:
    """Unbounded text; MySQL's TEXT stops at 64 KiB, too small for 1 MiB of code."""
    return Text().with_variant(mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), *MYSQL)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime with microseconds.

    PostgreSQL keeps the instant in `timestamptz`. SQLite and MySQL have no zone in their
    datetimes, so values are stored as naive UTC and get UTC attached again on the way out.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        if dialect.name in MYSQL:
            # Without fsp MySQL rounds to whole seconds.
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # A naive datetime is taken as UTC, the only zone fnhost uses.
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware if dialect.name == "postgresql" else aware.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# MySQL: InnoDB for foreign keys and row locks, utf8mb4 for every character.
MYSQL_TABLE_OPTIONS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

functions = Table(
    "functions",
    metadata,
    Column("app_id", identifier(), primary_key=True),
    Column("name", identifier(), primary_key=True),
    Column("code", long_text(), nullable=False),
    Column("description", long_text(), nullable=False),
    Column("triggers", long_text(), nullable=False),  # JSON list of {type, config}
    Column("timeout_ms", Integer, nullable=False),
    Column("memory_limit_mb", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

function_versions = Table(
    "function_versions",
    metadata,
    Column("app_id", identifier(), primary_key=True),
    Column("name", identifier(), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("code", long_text(), nullable=False),
    Column("description", long_text(), nullable=False),
    Column("triggers", long_text(), nullable=False),
    Column("timeout_ms", Integer, nullable=False),
    Column("memory_limit_mb", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(
        ["app_id", "name"], [functions.c.app_id, functions.c.name], ondelete="CASCADE"
    ),
    **MYSQL_TABLE_OPTIONS,
)

env_vars = Table(
    "env_vars",
    metadata,
    Column("app_id", identifier(), primary_key=True),
    Column("function_name", identifier(), primary_key=True),
    Column("key", identifier(255), primary_key=True),
    Column("ciphertext", long_text(), nullable=False),  # never a plaintext value
    ForeignKeyConstraint(
        ["app_id", "function_name"], [functions.c.app_id, functions.c.name], ondelete="CASCADE"
    ),
    **MYSQL_TABLE_OPTIONS,
)

# No foreign key to functions: a record may be appended by an invocation that finishes
# after its function was deleted, and that must not fail the invocation.
invocations = Table(
    "invocations",
    metadata,
    Column("id", identifier(64), primary_key=True),
    Column("app_id", identifier(), nullable=False),
    Column("function_name", identifier(), nullable=False),
    Column("function_version", Integer, nullable=False),
    Column("timestamp", UtcDateTime, nullable=False),
    Column("trigger", String(50), nullable=False),
    Column("method", String(16), nullable=False),
    Column("path", long_text(), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("duration_ms", Double, nullable=False),
    Column("memory_mb", Double, nullable=False),
    Column("error", long_text(), nullable=True),
    Column("level", String(8), nullable=False),
    Column("logs", long_text(), nullable=False),  # JSON list of {level, message, timestamp}
    # The logs query: newest first, optionally since a time.
    Index("ix_invocations_function_time", "app_id", "function_name", "timestamp"),
    # The logs query with level "error".
    Index("ix_invocations_function_level_time", "app_id", "function_name", "level", "timestamp"),
    # Percentiles walk this index in duration order instead of sorting every record.
    Index("ix_invocations_function_duration", "app_id", "function_name", "duration_ms"),
    **MYSQL_TABLE_OPTIONS,
)

apps = Table(
    "apps",
    metadata,
    Column("id", identifier(), primary_key=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("settings", long_text(), nullable=False),  # JSON object
    **MYSQL_TABLE_OPTIONS,
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", identifier(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("app_id", identifier(), nullable=True),
    Column("key_hash", identifier(128), nullable=False, unique=True),
    Column("name", long_text(), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    Index("ix_api_keys_app", "app_id"),
    **MYSQL_TABLE_OPTIONS,
)

# Tables added after the first release. Migration step 1 creates every table of `metadata`
# as first released, so a later table lives here and is created by its own step only.
added_metadata = MetaData()

# One row per fire time of a function's cron trigger that some process has claimed: the
# primary key makes the insert succeed for exactly one of the processes sharing the store.
# It leads with the fire time so pruning old claims walks it too (and the table is created
# by one statement, nothing left half-done if MySQL's implicit DDL commit is interrupted).
# No foreign key: claims outlive a deleted function until they are pruned.
cron_claims = Table(
    "cron_claims",
    added_metadata,
    Column("fire_time", UtcDateTime, nullable=False),
    Column("app_id", identifier(), nullable=False),
    Column("function_name", identifier(), nullable=False),
    Column("owner", String(255), nullable=False),
    Column("claimed_at", UtcDateTime, nullable=False),
    # when the run ended (or the fire time was skipped); NULL while it may still run
    Column("finished_at", UtcDateTime, nullable=True),
    PrimaryKeyConstraint("fire_time", "app_id", "function_name", name="pk_cron_claims"),
    # a function's unfinished earlier runs, looked up at each claim
    Index("ix_cron_claims_function", "app_id", "function_name", "fire_time"),
    **MYSQL_TABLE_OPTIONS,
)
