"""Fixtures `postgres_url` and `mysql_url`: a fresh database on a local server per test.

Each creates a uniquely named database, yields its SQLAlchemy URL and drops it
afterwards. The server is 127.0.0.1 with trust auth (PostgreSQL: user postgres or
root; MariaDB/MySQL: root with no password) unless FNHOST_TEST_POSTGRES_URL or
FNHOST_TEST_MYSQL_URL names another one, e.g. `postgresql://user:pw@host:5432/postgres`
(the database in that URL is the one connected to for CREATE/DROP DATABASE).

The fixtures are synchronous so that they work whatever the asyncio mode or loop
scope of the project using them; the drivers run on a private event loop in a
worker thread, never on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import pytest

T = TypeVar("T")

POSTGRES_SERVERS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/postgres",
)
MYSQL_SERVERS = ("mysql://root@127.0.0.1:3306/",)
CONNECT_TIMEOUT_S = 5


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """`postgresql+asyncpg://...` of a new, empty PostgreSQL database."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """`mysql+aiomysql://...?charset=utf8mb4` of a new, empty MariaDB/MySQL database."""
    with mysql_database() as url:
        yield url


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for as long as the block runs (for fixtures of a
    wider scope than the test); skips, or fails, as `postgres_url` does without a server."""
    servers = _servers("FNHOST_TEST_POSTGRES_URL", POSTGRES_SERVERS)
    name = _unique_name()
    server = _first_answering(servers, lambda s: _postgres(s, f'CREATE DATABASE "{name}"'))
    try:
        yield _database_url(server, "postgresql+asyncpg", name)
    finally:
        _run(
            _postgres(
                server,
                # Connections a test left open would make DROP DATABASE fail.
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
                f'DROP DATABASE IF EXISTS "{name}"',
            )
        )


@contextlib.contextmanager
def mysql_database() -> Iterator[str]:
    """A new, empty MariaDB/MySQL database for as long as the block runs."""
    servers = _servers("FNHOST_TEST_MYSQL_URL", MYSQL_SERVERS)
    name = _unique_name()
    server = _first_answering(
        servers, lambda s: _mysql(s, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    )
    try:
        yield _database_url(server, "mysql+aiomysql", name) + "?charset=utf8mb4"
    finally:
        _run(_mysql(server, f"DROP DATABASE IF EXISTS `{name}`"))


def _servers(variable: str, defaults: tuple[str, ...]) -> tuple[str, ...]:
    configured = os.environ.get(variable)
    return (configured,) if configured else defaults


def _unique_name() -> str:
    return f"fnhost_test_{uuid.uuid4().hex[:16]}"


def _first_answering(servers: tuple[str, ...], create: Any) -> str:
    """The first server on which `create(server)` succeeds; otherwise skip (or fail)."""
    failures = []
    for server in servers:
        try:
            _run(create(server))
        except ImportError as exc:
            failures.append(f"driver not installed ({exc.name})")
            break
        except Exception as exc:
            failures.append(f"{_redacted(server)}: {type(exc).__name__}: {exc}")
        else:
            return server
    # Imported here: fnhost.testing imports this module.
    from fnhost.testing import missing_service

    missing_service("no database server answered: " + "; ".join(failures))
    raise AssertionError("unreachable: missing_service skips or fails")


async def _postgres(server: str, *statements: str) -> None:
    import asyncpg

    parts = urlsplit(server)
    connection = await asyncpg.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password) if parts.password else None,
        database=parts.path.lstrip("/") or "postgres",
        timeout=CONNECT_TIMEOUT_S,
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _mysql(server: str, *statements: str) -> None:
    import aiomysql

    parts = urlsplit(server)
    connection = await aiomysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        connect_timeout=CONNECT_TIMEOUT_S,
        autocommit=True,
    )
    try:
        async with connection.cursor() as cursor:
            for statement in statements:
                await cursor.execute(statement)
    finally:
        connection.close()


def _database_url(server: str, driver: str, database: str) -> str:
    parts = urlsplit(server)
    credentials = quote(unquote(parts.username or ""), safe="")
    if parts.password:
        credentials += ":" + quote(unquote(parts.password), safe="")
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return f"{driver}://{credentials}@{host}{port}/{database}"


def _redacted(server: str) -> str:
    parts = urlsplit(server)
    return server.replace(f":{parts.password}@", ":***@") if parts.password else server


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to completion on its own loop in a worker thread."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="fnhost-test-database")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]
