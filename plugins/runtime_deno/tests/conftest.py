"""Fixtures of the deno runtime's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fnhost_deno.runtime import DenoRuntime
from plugins.runtime_deno.tests.support import deno_runtime


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[DenoRuntime]:
    async with deno_runtime(tmp_path / "data") as started:
        yield started
