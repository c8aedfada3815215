"""Contract test suites for runtimes and stores, shipped as a pytest plugin.

A plugin's own tests subclass a suite and provide its fixture, exactly as a
third-party plugin would:

    from fnhost.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path): ...   # yield a started store

Also provided: fixtures `postgres_url` and `mysql_url` (a fresh database on the
local server, dropped afterwards; skipped when the server is absent unless
FNHOST_REQUIRE_SERVICES=1, which makes a missing server fail the run), and
`make_config()` to build a Config for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fnhost.config import Config, parse_config
from fnhost.testing.databases import mysql_database, mysql_url, postgres_database, postgres_url
from fnhost.testing.runtime_contract import RuntimeContract
from fnhost.testing.store_contract import StoreContract

__all__ = [
    "RuntimeContract",
    "StoreContract",
    "make_config",
    "missing_service",
    "mysql_database",
    "mysql_url",
    "postgres_database",
    "postgres_url",
]


def make_config(data_dir: Path, **sections: Any) -> Config:
    """A Config rooted at `data_dir`; `sections` are raw tables merged over the defaults,
    e.g. make_config(tmp_path, store={"use": "sql", "sql": {"url": ...}})."""
    raw: dict[str, Any] = {"server": {"data_dir": str(data_dir)}}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_config(raw, "test")


def missing_service(reason: str) -> None:
    """Skip the test, or fail it when FNHOST_REQUIRE_SERVICES=1 (as CI sets)."""
    if os.environ.get("FNHOST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service missing: {reason}", pytrace=False)
    pytest.skip(reason)
