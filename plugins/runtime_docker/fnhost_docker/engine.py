"""The Docker engine fnhost talks to: found at DOCKER_HOST (or the config's `docker_host`),
the local socket by default, so a remote engine is a config change.

The docker SDK is synchronous: everything here runs in a worker thread (`asyncio.to_thread`)
except `EngineAddress.attach`, which speaks the engine's attach protocol on asyncio
streams so a warm call never waits for a thread.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fnhost.errors import ConfigError, Unavailable
from fnhost_docker.protocol import AttachedStream

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT_SECONDS = 60


def resolve_docker_host(configured: str | None) -> str:
    """The engine address in use: the config's, else DOCKER_HOST, else the local socket."""
    return configured or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect(docker_host: str) -> Any:
    """A docker SDK client for `docker_host` that has answered a ping.

    Raise `Unavailable` naming DOCKER_HOST when no engine answers there.
    """
    import docker
    import docker.errors
    import requests.exceptions

    environment = {**os.environ, "DOCKER_HOST": docker_host}
    try:
        client = docker.from_env(
            environment=environment, version="auto", timeout=API_TIMEOUT_SECONDS
        )
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise Unavailable(
            f"no Docker engine answers at DOCKER_HOST={docker_host} ({_reason(exc)}); "
            "start dockerd there, or point DOCKER_HOST (or runtime.docker.docker_host) "
            "at a running engine"
        ) from None
    return client


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # requests wraps the socket error several times; the innermost words are the useful ones
    for marker in ("FileNotFoundError", "ConnectionRefusedError", "PermissionError"):
        if marker in text:
            return marker.replace("Error", "").lower().replace("filenotfound", "no such socket")
    return text.splitlines()[0][:200]


@dataclass(frozen=True)
class EngineAddress:
    """Where the engine's API listens, for the attach streams opened on asyncio."""

    docker_host: str
    api_version: str
    tls: ssl.SSLContext | None = None

    @classmethod
    def of(cls, docker_host: str, api_version: str) -> EngineAddress:
        scheme = urlsplit(docker_host).scheme
        if scheme not in ("unix", "tcp", "http", "https"):
            raise ConfigError(
                f"runtime.docker.docker_host: {docker_host!r}: only unix:// and tcp:// engines "
                "are supported (forward a remote socket with `ssh -L` for ssh:// engines)"
            )
        return cls(docker_host, api_version, _tls_context(scheme))

    async def attach(
        self, container_id: str, stream: Callable[[], AttachedStream]
    ) -> AttachedStream:
        """Attach to the container's stdin, stdout and stderr (before it starts, like
        `docker run -i`): the engine answers 101 and the connection becomes the stream."""
        loop = asyncio.get_running_loop()
        url = urlsplit(self.docker_host)
        if url.scheme == "unix":
            _, protocol = await loop.create_unix_connection(stream, url.path)
        else:
            port = url.port or (2376 if self.tls else 2375)
            host = url.hostname or "localhost"
            _, protocol = await loop.create_connection(stream, host, port, ssl=self.tls)
        path = (
            f"/v{self.api_version}/containers/{container_id}/attach"
            "?stream=1&stdin=1&stdout=1&stderr=1"
        )
        protocol.write(
            f"POST {path} HTTP/1.1\r\nHost: docker\r\nUpgrade: tcp\r\n"
            "Connection: Upgrade\r\nContent-Length: 0\r\n\r\n".encode()
        )
        try:
            await asyncio.wait_for(asyncio.shield(protocol.upgraded), API_TIMEOUT_SECONDS)
        except (ConnectionError, TimeoutError) as exc:
            protocol.close()
            raise Unavailable(f"attaching to container {container_id[:12]} failed: {exc}") from None
        return protocol


def _tls_context(scheme: str) -> ssl.SSLContext | None:
    """TLS as the docker CLI does it: DOCKER_TLS_VERIFY and the PEM files of DOCKER_CERT_PATH."""
    if scheme == "unix" or not (os.environ.get("DOCKER_TLS_VERIFY") or scheme == "https"):
        return None
    cert_path = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    context = ssl.create_default_context(cafile=str(cert_path / "ca.pem"))
    context.load_cert_chain(str(cert_path / "cert.pem"), str(cert_path / "key.pem"))
    return context
