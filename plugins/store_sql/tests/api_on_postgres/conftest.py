"""The end-to-end API tests of tests/, re-run on a PostgreSQL store (a fresh database
per test): auth, end-user tokens, limits, deploy and logs behave the same on it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import api, client, platform  # noqa: F401 (for the re-run API tests)


@pytest.fixture
def config_sections(postgres_url: str) -> dict[str, Any]:
    return {"store": {"use": "sql", "sql": {"url": postgres_url}}}
