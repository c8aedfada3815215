"""`python -m fnhost_docker build-image`: the `fnhost docker` commands, standalone."""

from fnhost_docker.cli import docker_commands

docker_commands()
