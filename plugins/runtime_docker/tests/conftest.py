"""Fixtures of the "docker" runtime's tests: a real engine, or a skip (a failure in CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fnhost.errors import Unavailable
from fnhost.platform import Platform
from fnhost.testing import make_config, missing_service
from fnhost_docker.engine import connect, resolve_docker_host
from fnhost_docker.runtime import DockerRuntime
from tests.conftest import api, client, platform  # noqa: F401 (for the re-run API tests)

_engine: dict[str, Any] = {}


def docker_client() -> Any:
    """A client of the engine at DOCKER_HOST, or skip (fail under FNHOST_REQUIRE_SERVICES=1)."""
    if "client" not in _engine:
        try:
            _engine["client"] = connect(resolve_docker_host(None))
        except Unavailable as exc:
            _engine["client"] = None
            _engine["reason"] = exc.message
    if _engine["client"] is None:
        missing_service(f"no Docker engine: {_engine['reason']}")
    return _engine["client"]


@asynccontextmanager
async def docker_runtime(data_dir: Path, **docker: Any) -> AsyncIterator[DockerRuntime]:
    """A started "docker" runtime built the way the core builds it, stopped afterwards."""
    docker_client()
    config = make_config(data_dir, runtime={"use": "docker", "docker": docker})
    runtime = Platform(config).runtime
    assert isinstance(runtime, DockerRuntime)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


RuntimeFactory = Callable[..., AbstractAsyncContextManager[DockerRuntime]]


@pytest.fixture
def make_runtime() -> RuntimeFactory:
    """`async with make_runtime(data_dir, **docker_config) as runtime:`"""
    return docker_runtime


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[DockerRuntime]:
    async with docker_runtime(tmp_path / "data") as started:
        yield started


@pytest.fixture
def engine() -> Any:
    """The docker SDK client of the engine the tests run against."""
    return docker_client()


@pytest.fixture
def config_sections() -> dict[str, Any]:
    """The end-to-end API tests re-run here (test_api_on_docker.py) use the docker runtime."""
    docker_client()
    return {"runtime": {"use": "docker"}}
