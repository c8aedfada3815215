"""The core's runtime contract, on real containers of a real Docker engine (the `runtime`
fixture is in conftest.py)."""

from __future__ import annotations

from fnhost.testing import RuntimeContract


class TestDockerRuntime(RuntimeContract):
    """The contract every runtime passes, on containers."""
