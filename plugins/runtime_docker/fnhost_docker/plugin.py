"""Entry point of the fnhost-docker distribution: registers the "docker" runtime."""

from __future__ import annotations

from fnhost import hookimpl
from fnhost.contracts import Runtime
from fnhost_docker.runtime import DockerRuntime


@hookimpl
def fnhost_runtimes() -> list[type[Runtime]]:
    return [DockerRuntime]
