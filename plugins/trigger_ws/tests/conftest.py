"""Fixtures of the websocket trigger's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugins.trigger_ws.tests.support import LiveServer, live_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    """fnhost with the default config (SQLite, Deno) on a loopback port."""
    async with live_server(tmp_path) as started:
        yield started
