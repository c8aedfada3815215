"""Entry point of the fnhost-docker distribution: registers the "docker" runtime."""

from __future__ import annotations

import click

from fnhost import hookimpl
from fnhost.contracts import Runtime
from fnhost_docker.runtime import DockerRuntime


@hookimpl
def fnhost_runtimes() -> list[type[Runtime]]:
    return [DockerRuntime]


@hookimpl
def fnhost_cli_commands() -> list[click.Command]:
    from fnhost_docker.cli import docker_commands

    return [docker_commands]
