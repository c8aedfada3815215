"""tests/test_limits.py on a PostgreSQL store, with that module's own limits."""

from typing import Any

import pytest

from fnhost.platform import Platform
from tests import test_limits
from tests.test_limits import *  # noqa: F403


@pytest.fixture
def config_sections(postgres_url: str) -> dict[str, Any]:
    sections: dict[str, Any] = test_limits.config_sections.__wrapped__()
    return {**sections, "store": {"use": "sql", "sql": {"url": postgres_url}}}


def test_these_api_tests_run_on_postgresql(platform: Platform) -> None:
    assert platform.config.store.section("sql")["url"].startswith("postgresql")
