"""The end-to-end API tests of tests/test_limits.py, re-run on the docker runtime, with
that module's own limits."""

from typing import Any

import pytest

from fnhost.platform import Platform
from tests import test_limits
from tests.test_limits import *  # noqa: F403


@pytest.fixture
def config_sections(engine: Any) -> dict[str, Any]:
    """That module's sections, on docker (`engine`: skip without one, as conftest.py does)."""
    sections: dict[str, Any] = test_limits.config_sections.__wrapped__()
    return {**sections, "runtime": {"use": "docker"}}


def test_these_api_tests_run_on_the_docker_runtime(platform: Platform) -> None:
    assert platform.runtime.name == "docker"
