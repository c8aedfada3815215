"""tests/test_env.py on a PostgreSQL store; the raw-database check reads PostgreSQL."""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from fnhost.platform import Platform
from tests.conftest import Api
from tests.test_env import (  # noqa: F401
    READ_ENV,
    test_bad_patches_are_rejected_and_change_nothing,
    test_env_values_never_appear_in_responses_or_logs,
    test_function_sees_only_its_own_env,
    test_patch_merges_and_null_removes,
)


async def test_raw_postgres_database_holds_no_plaintext_value(api: Api, platform: Platform) -> None:
    secret = "plaintext-canary-pg-42b1"
    await api.deploy("canary", READ_ENV, expect=201, envVars={"A": secret})
    await api.patch_env("canary", {"B": secret + "-patched"})
    engine = create_async_engine(platform.config.store.section("sql")["url"])
    try:
        async with engine.connect() as connection:
            tables = (
                (
                    await connection.execute(
                        sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                    )
                )
                .scalars()
                .all()
            )
            dump = ""
            for table in tables:
                rows = (await connection.execute(sa.text(f'SELECT * FROM "{table}"'))).all()
                dump += repr(rows)
    finally:
        await engine.dispose()
    assert "canary" in dump and secret not in dump
