"""Building the async engine: the default SQLite location, SQLite pragmas, MySQL charset."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# The execution option that says how a SQLite transaction begins: "BEGIN IMMEDIATE" for
# writes, "BEGIN" for a read snapshot; without it no BEGIN is sent and every statement
# runs on its own (a single SELECT is consistent by itself).
SQLITE_BEGIN = "fnhost_sqlite_begin"
# How long a SQLite writer waits for another writer before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000


def default_url(data_dir: str | Path) -> str:
    """`<data_dir>/fnhost.db` on SQLite, the store's URL when none is configured."""
    return f"sqlite+aiosqlite:///{Path(data_dir) / 'fnhost.db'}"


def build_engine(
    url: str, *, pool_size: int, echo: bool, timeout_seconds: float = 10.0
) -> AsyncEngine:
    """An engine for `url`. Does no I/O except creating a SQLite file's parent directory.

    On a server database, connecting, waiting for a pooled connection and (PostgreSQL)
    each statement give up after `timeout_seconds`, so a network partition turns into
    `Unavailable` (503) in seconds instead of the drivers' minute-long defaults.
    """
    parsed = make_url(url)
    options: dict[str, Any] = {"echo": echo, "pool_pre_ping": parsed.get_backend_name() != "sqlite"}
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        # Without it the connection may be latin1 or 3-byte utf8, which cannot hold emoji.
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    if parsed.get_backend_name() == "sqlite":
        if _is_file_database(parsed):
            Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
            options["pool_size"] = pool_size
        engine = create_async_engine(parsed, **options)
        _configure_sqlite(engine)
        return engine
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        connect_args = {"timeout": timeout_seconds, "command_timeout": timeout_seconds * 3}
    else:
        connect_args = {"connect_timeout": max(1, round(timeout_seconds))}
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        pool_timeout=timeout_seconds,
        connect_args=connect_args,
        **options,
    )


def _is_file_database(url: URL) -> bool:
    database = url.database or ""
    return database not in ("", ":memory:") and not database.startswith("file::memory:")


def _configure_sqlite(engine: AsyncEngine) -> None:
    """NORMAL sync (no fsync per commit: a power cut may lose the last commits but never
    corrupts the file), a busy timeout, foreign keys, and transactions that SQLAlchemy
    begins itself. WAL is switched on once, by `use_wal`.

    The sqlite3 module's own transaction handling skips BEGIN before SELECT and DDL, which
    breaks transactional migrations, so it is turned off and BEGIN comes from the
    SQLITE_BEGIN option. Write transactions begin IMMEDIATE so two writers queue on the
    busy timeout instead of failing when a read lock cannot be upgraded.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
            "synchronous=NORMAL",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        begin = connection.get_execution_options().get(SQLITE_BEGIN)
        if begin:
            connection.exec_driver_sql(begin)


async def use_wal(engine: AsyncEngine) -> None:
    """Switch a SQLite file to WAL (readers never block the writer; it stays so in the
    file). Switching needs the file to itself, and SQLite reports "database is locked" at
    once, without its busy timeout, while another process holds it (several fnhost
    processes starting on a new file): retried here, without blocking the event loop."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            async with engine.connect() as connection:
                await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            return
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)
