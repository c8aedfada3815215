"""tests/test_auth.py on a PostgreSQL store."""

from fnhost.platform import Platform
from tests.test_auth import *  # noqa: F403


def test_these_api_tests_run_on_postgresql(platform: Platform) -> None:
    assert platform.config.store.section("sql")["url"].startswith("postgresql")
