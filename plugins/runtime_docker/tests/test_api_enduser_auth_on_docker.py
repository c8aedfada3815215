"""The end-to-end API tests of tests/test_enduser_auth.py, re-run on the docker runtime:
this folder's conftest.py selects `[runtime] use = "docker"` for them."""

from fnhost.platform import Platform
from tests.test_enduser_auth import *  # noqa: F403


def test_these_api_tests_run_on_the_docker_runtime(platform: Platform) -> None:
    assert platform.runtime.name == "docker"
