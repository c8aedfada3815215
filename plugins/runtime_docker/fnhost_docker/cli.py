"""`fnhost docker ...`: the docker runtime's commands, ready for the core CLI to mount.

    fnhost docker build-image [--force]   build the function image (done by start-up too)

The core CLI does not mount plugin commands yet; until it does, the same is
`python -m fnhost_docker build-image`.
"""

from __future__ import annotations

import sys
import time

import click

from fnhost.config import load_config, plugin_config
from fnhost.errors import FnhostError


@click.group("docker")
def docker_commands() -> None:
    """The docker runtime: its image and its engine."""


@docker_commands.command("build-image")
@click.option("--force", is_flag=True, help="Build again even if the engine has the image.")
@click.pass_context
def build_image(ctx: click.Context, force: bool) -> None:
    """Build the image function containers run (FROM scratch + Deno, or the configured
    base image) on the engine at DOCKER_HOST, unless it is there already."""
    from fnhost_docker.engine import connect, resolve_docker_host
    from fnhost_docker.image import RuntimeImage, ensure_image
    from fnhost_docker.runtime import DockerConfig

    root = ctx.find_root().obj or {}
    try:
        config = load_config(root.get("config_path"))
        docker = plugin_config(DockerConfig, config.runtime.section("docker"), "runtime.docker")
        docker_host = resolve_docker_host(docker.docker_host)
        client = connect(docker_host)
        image = RuntimeImage.describe(docker.image, docker.base_image)
        click.echo(f"engine: {docker_host}")
        started = time.monotonic()
        built = ensure_image(client, image, click.echo, force=force)
    except FnhostError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    if built:
        click.echo(f"{image.tag}: built in {time.monotonic() - started:.1f} s")
    else:
        click.echo(f"{image.tag}: up to date (use --force to build it again)")
