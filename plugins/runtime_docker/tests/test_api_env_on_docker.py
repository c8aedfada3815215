"""The end-to-end API tests of tests/test_env.py, re-run on the docker runtime: this
folder's conftest.py selects `[runtime] use = "docker"` for them."""

from tests.test_env import *  # noqa: F403
