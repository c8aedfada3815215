"""The sql store: the core's store contract on SQLite, PostgreSQL and MariaDB, plus what
only SQL has (schema versions, locking, indexes, the raw env table)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Select, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine

from fnhost.contracts import Store
from fnhost.errors import ConfigError, Conflict, Unavailable
from fnhost.models import LogQuery
from fnhost.platform import Platform
from fnhost.testing import StoreContract, make_config
from fnhost.testing.store_contract import T0, make_function, make_record, redeploy, with_env
from fnhost_sql import SqlStore, migrations, queries
from fnhost_sql.migrations import LATEST_VERSION
from fnhost_sql.tables import env_vars, function_versions, schema_version


def sql_platform(data_dir: Path, url: str | None = None, **sql: Any) -> Platform:
    """A platform whose store is "sql" at `url` (None: the default SQLite file), built as the
    core builds it: every installed plugin loaded, nothing started."""
    section = {"url": url, **sql} if url else sql
    return Platform(make_config(data_dir, store={"use": "sql", "sql": section}))


def sql_store(data_dir: Path, url: str | None = None, **sql: Any) -> SqlStore:
    store = sql_platform(data_dir, url, **sql).store
    assert isinstance(store, SqlStore)
    return store


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    # A directory that does not exist yet: the store creates it.
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'fnhost.db'}"


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty database on each backend in turn."""
    fixture = {"sqlite": "sqlite_url", "postgres": "postgres_url", "mysql": "mysql_url"}
    return str(request.getfixturevalue(fixture[request.param]))


async def started(data_dir: Path, url: str) -> SqlStore:
    store = sql_store(data_dir, url)
    await store.start()
    return store


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path, sqlite_url: str) -> AsyncIterator[Store]:
        store = await started(tmp_path, sqlite_url)
        yield store
        await store.stop()

    @pytest.fixture
    async def second_store(
        self, tmp_path: Path, sqlite_url: str, store: Store
    ) -> AsyncIterator[Store]:
        other = await started(tmp_path, sqlite_url)
        yield other
        await other.stop()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path, postgres_url: str) -> AsyncIterator[Store]:
        store = await started(tmp_path, postgres_url)
        yield store
        await store.stop()

    @pytest.fixture
    async def second_store(
        self, tmp_path: Path, postgres_url: str, store: Store
    ) -> AsyncIterator[Store]:
        other = await started(tmp_path, postgres_url)
        yield other
        await other.stop()


class TestMysqlStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path, mysql_url: str) -> AsyncIterator[Store]:
        store = await started(tmp_path, mysql_url)
        yield store
        await store.stop()

    @pytest.fixture
    async def second_store(
        self, tmp_path: Path, mysql_url: str, store: Store
    ) -> AsyncIterator[Store]:
        other = await started(tmp_path, mysql_url)
        yield other
        await other.stop()


ALL_VERSIONS = [(version,) for version in range(1, LATEST_VERSION + 1)]


async def raw_rows(engine: AsyncEngine, statement: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in await connection.execute(statement)]


# schema versions


async def test_migrations_are_recorded_and_restart_keeps_data(
    tmp_path: Path, database_url: str
) -> None:
    store = await started(tmp_path, database_url)
    versions = select(schema_version.c.version).order_by(schema_version.c.version)
    assert await raw_rows(store.engine, versions) == ALL_VERSIONS
    function = make_function(encrypted_env={"K": "gAAAA-k"})
    await store.save_function(function, None)
    await store.append_invocations([make_record(1)])
    await store.stop()

    again = await started(tmp_path, database_url)
    try:
        assert await raw_rows(again.engine, versions) == ALL_VERSIONS
        assert await again.get_function("app1", "hello") == function
        assert len(await again.query_invocations("app1", "hello", LogQuery())) == 1
    finally:
        await again.stop()


async def test_database_of_the_first_release_is_upgraded(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database made by the first release (schema version 1), with data in it.
    with monkeypatch.context() as first_release:
        first_release.setattr(migrations, "STEPS", migrations.STEPS[:1])
        first_release.setattr(migrations, "LATEST_VERSION", 1)
        old = await started(tmp_path, database_url)
        function = make_function()
        await old.save_function(function, None)
        async with old.engine.connect() as connection:
            tables_v1 = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        await old.stop()
    assert "cron_claims" not in tables_v1

    store = await started(tmp_path, database_url)
    try:
        versions = select(schema_version.c.version).order_by(schema_version.c.version)
        assert await raw_rows(store.engine, versions) == ALL_VERSIONS
        assert await store.get_function("app1", "hello") == function
        assert await store.claim_cron_fire("app1", "hello", T0, "a") is True
        assert await store.claim_cron_fire("app1", "hello", T0, "b") is False
    finally:
        await store.stop()


async def test_a_version_2_database_with_claims_gains_run_ends(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as second_release:
        second_release.setattr(migrations, "STEPS", migrations.STEPS[:2])
        second_release.setattr(migrations, "LATEST_VERSION", 2)
        old = await started(tmp_path, database_url)
        assert await old.claim_cron_fire("app1", "hello", T0, "a") is True
        await old.stop()

    store = await started(tmp_path, database_url)
    try:
        recent = datetime.now(UTC) - timedelta(hours=1)
        later = T0 + timedelta(minutes=1)
        # The run claimed before the upgrade counts as unfinished.
        assert await store.claim_cron_fire("app1", "hello", later, "b", recent) is False
        await store.finish_cron_fire("app1", "hello", T0)
        assert await store.claim_cron_fire("app1", "hello", T0 + timedelta(minutes=2), "b", recent)
        async with store.engine.begin() as connection:  # re-running the step is harmless
            await migrations.add_cron_claim_finish(connection)
    finally:
        await store.stop()


async def test_processes_starting_together_migrate_once(tmp_path: Path, database_url: str) -> None:
    url = database_url
    stores = [sql_store(tmp_path / str(n), url) for n in range(3)]
    await asyncio.gather(*(store.start() for store in stores))
    try:
        versions = select(schema_version.c.version).order_by(schema_version.c.version)
        assert await raw_rows(stores[0].engine, versions) == ALL_VERSIONS
        await stores[0].save_function(make_function(), None)
        assert await stores[2].get_function("app1", "hello") is not None
    finally:
        for store in stores:
            await store.stop()


# the data as stored


async def test_env_vars_table_holds_only_ciphertext(tmp_path: Path, database_url: str) -> None:
    store = await started(tmp_path, database_url)
    try:
        function = make_function(encrypted_env={"API_TOKEN": "gAAAA-cipher", "DB": "gAAAA-db"})
        await store.save_function(function, None)
        await store.save_function(with_env(function, {"API_TOKEN": "gAAAA-cipher2"}), 1)
        rows = await raw_rows(store.engine, select(env_vars).order_by(env_vars.c.key))
        assert rows == [("app1", "hello", "API_TOKEN", "gAAAA-cipher2")]
    finally:
        await store.stop()


async def test_each_new_version_is_kept_in_history(tmp_path: Path, database_url: str) -> None:
    store = await started(tmp_path, database_url)
    try:
        v1 = make_function(code="v1")
        await store.save_function(v1, None)
        v2 = redeploy(v1, code="v2", timeout_ms=999)
        await store.save_function(v2, v1.revision)
        patched = with_env(v2, {"K": "gAAAA-k"})  # an env change is not a new version
        await store.save_function(patched, v2.revision)
        v3 = redeploy(patched, code="v3")
        await store.save_function(v3, patched.revision)

        history = select(
            function_versions.c.version,
            function_versions.c.code,
            function_versions.c.timeout_ms,
            function_versions.c.created_at,
        ).order_by(function_versions.c.version)
        assert await raw_rows(store.engine, history) == [
            (1, "v1", 30000, v1.updated_at),
            (2, "v2", 999, v2.updated_at),
            (3, "v3", 999, v3.updated_at),
        ]
        assert await store.delete_function("app1", "hello")
        assert await raw_rows(store.engine, select(function_versions)) == []
    finally:
        await store.stop()


# SQLite specifics


async def explain(engine: AsyncEngine, statement: Select[Any]) -> str:
    """SQLite's plan for `statement`, one step per line."""
    compiled = statement.compile(dialect=engine.dialect)
    params = compiled.construct_params()
    values = [params[name] for name in compiled.positiontup or []]
    values = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    async with engine.connect() as connection:
        result = await connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + compiled.string, tuple(values)
        )
        return "\n".join(str(row[-1]) for row in result)


async def test_sqlite_queries_use_indexes(tmp_path: Path, sqlite_url: str) -> None:
    store = await started(tmp_path, sqlite_url)
    try:
        await store.append_invocations([make_record(n) for n in range(50)])
        since = make_record(10).timestamp
        plans = {
            "ix_invocations_function_time": [
                queries.logs_statement("app1", "hello", LogQuery()),
                queries.logs_statement("app1", "hello", LogQuery(since=since)),
            ],
            "ix_invocations_function_level_time": [
                queries.logs_statement("app1", "hello", LogQuery(level="error")),
                queries.logs_statement("app1", "hello", LogQuery(level="error", since=since)),
            ],
            "ix_invocations_function_duration": [
                queries.duration_at_rank_statement("app1", "hello", 25),
            ],
        }
        for index, statements in plans.items():
            for statement in statements:
                plan = await explain(store.engine, statement)
                assert re.search(f"USING (COVERING )?INDEX {index}\\b", plan), plan
                assert "TEMP B-TREE" not in plan, plan  # no sort of all rows
    finally:
        await store.stop()


async def test_sqlite_connection_settings(tmp_path: Path, sqlite_url: str) -> None:
    store = await started(tmp_path, sqlite_url)
    try:
        async with store.engine.connect() as connection:
            settings = {
                pragma: (await connection.exec_driver_sql(f"PRAGMA {pragma}")).scalar()
                for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert settings == {
            "journal_mode": "wal",
            "synchronous": 1,  # NORMAL
            "foreign_keys": 1,
            "busy_timeout": 5000,
        }
    finally:
        await store.stop()


async def test_default_database_is_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = sql_store(data_dir)
    assert store.url == f"sqlite+aiosqlite:///{data_dir / 'fnhost.db'}"
    assert not data_dir.exists()  # building the platform does no I/O
    await store.start()
    try:
        await store.save_function(make_function(), None)
        assert (data_dir / "fnhost.db").is_file()
    finally:
        await store.stop()


async def test_sqlite_writers_in_two_stores_wait_for_each_other(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Two engines on one file behave like two processes: writers queue, none fails.
    one, two = await started(tmp_path, sqlite_url), await started(tmp_path, sqlite_url)

    async def append_many(store: SqlStore, parity: int) -> None:
        for n in range(25):
            await store.append_invocations([make_record(n * 2 + parity)])

    try:
        await asyncio.gather(append_many(one, 0), append_many(two, 1))
        found = await one.query_invocations("app1", "hello", LogQuery(limit=1000))
        assert len(found) == 50
    finally:
        await one.stop()
        await two.stop()


async def test_sqlite_large_batch_is_all_or_nothing(tmp_path: Path, sqlite_url: str) -> None:
    # Past the parameters one INSERT may carry, records go in one explicit transaction.
    store = await started(tmp_path, sqlite_url)
    try:
        batch = [make_record(n) for n in range(300)] + [make_record(7, path="/again")]
        with pytest.raises(Conflict):
            await store.append_invocations(batch)
        assert await store.query_invocations("app1", "hello", LogQuery()) == []
        await store.append_invocations(batch[:300])
        assert len(await store.query_invocations("app1", "hello", LogQuery(limit=1000))) == 300
    finally:
        await store.stop()


async def test_concurrent_appends_on_one_store(tmp_path: Path, database_url: str) -> None:
    store = await started(tmp_path, database_url)
    try:
        await asyncio.gather(*(store.append_invocations([make_record(n)]) for n in range(60)))
        assert (await store.function_metrics("app1", "hello")).total_invocations == 60
    finally:
        await store.stop()


# configuration and failures


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.sql\.bogus"):
        sql_platform(tmp_path, bogus=1)


def test_config_checks_pool_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.sql\.pool_size"):
        sql_platform(tmp_path, pool_size=0)


async def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    store = sql_store(tmp_path, "postgresql+asyncpg://postgres:secret@127.0.0.1:1/nothing")
    with pytest.raises(Unavailable) as failure:
        await store.start()
    assert "secret" not in failure.value.message
    await store.stop()


async def test_database_newer_than_this_release_stops_start(
    tmp_path: Path, sqlite_url: str
) -> None:
    store = await started(tmp_path, sqlite_url)
    async with store.engine.begin() as connection:
        await connection.execute(
            insert(schema_version).values(version=LATEST_VERSION + 1, applied_at=T0)
        )
    await store.stop()
    with pytest.raises(ConfigError, match="newer than this fnhost"):
        await started(tmp_path, sqlite_url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1/fnhost",  # a sync driver
        "nosuchdb+driver://host/db",
        "not a url",
    ],
)
async def test_unusable_url_is_a_config_error(tmp_path: Path, url: str) -> None:
    store = sql_store(tmp_path, url)
    with pytest.raises(ConfigError, match=r"store\.sql\.url"):
        await store.start()


async def test_unstarted_store_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await sql_store(tmp_path).get_function("app1", "hello")
