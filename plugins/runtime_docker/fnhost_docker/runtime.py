"""The "docker" runtime: a warm container per function revision, from a locally built image.

What a function sees is the "deno" runtime's (the same Deno worker, fnhost_deno_worker):
`handler(req, ctx)` with a Web `Request`, `ctx = {env, user, trigger, waitUntil, publish}`,
its own env vars through `ctx.env`, `Deno.env` and `process.env`, console output attributed
to each invocation, and the same timeouts and errors. What the container adds is the isolation:

- `--memory`/`--memory-swap` of memoryLimitMb plus `memory_overhead_mb` (Deno's own
  memory; V8's heap is held to memoryLimitMb), `--pids-limit`, `--cpus`, a read-only root
  filesystem, a tmpfs `/tmp`, no capabilities, no-new-privileges, an unprivileged user,
  no host mounts, and the `network` fnhost created for its functions (or none);
- no published port: fnhost writes to the container's stdin and reads its stdout through
  the engine's attach stream, so a remote engine (DOCKER_HOST=tcp://...) works the same and
  nothing else on any network can reach a function's control channel;
- the code and env vars travel over that stream after start: `docker inspect` shows
  neither.

Containers carry labels fnhost.owner/app/function/version/revision. At start fnhost
removes the containers of its owner (left by a previous run that died), at stop all of
them; a container whose fnhost dies exits by itself (its attached stdin closes).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from fnhost.config import MiB
from fnhost.contracts import Runtime
from fnhost.errors import Unavailable
from fnhost.models import FunctionDefinition, FunctionSpec, InvocationRequest, InvocationResult
from fnhost_deno_worker.pool import PoolPolicy, PublishQueue, WorkerKey, WorkerPool
from fnhost_deno_worker.worker import check_body_size
from fnhost_docker.container import LABEL_PREFIX, ContainerSettings, FunctionContainer
from fnhost_docker.engine import EngineAddress, connect, resolve_docker_host
from fnhost_docker.image import RuntimeImage, ensure_image

if TYPE_CHECKING:
    from fnhost.platform import Platform

log = logging.getLogger("fnhost.docker")

# Frames carry the body plus headers and up to 1 MiB of logs.
FRAME_HEADROOM_BYTES = 2 * MiB
NETWORK_LABEL = LABEL_PREFIX + "network"
PUBLISH_DRAIN_SECONDS = 2.0


class DockerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[runtime.docker]` of the config file."""

    # the engine; default: the DOCKER_HOST environment variable, else the local socket
    docker_host: str | None = None
    # build on this local image (it needs a glibc) instead of FROM scratch
    base_image: str | None = None
    # repository of the image fnhost builds; the tag names the Deno version and a digest
    image: str = "fnhost-runtime"
    # build the image at start when the engine lacks it (else start-up fails)
    build_image: bool = True
    # the bridge network function containers join, created when missing with
    # inter-container traffic disabled; "none" gives functions no network at all
    network: str = "fnhost"
    # warm containers kept; the least recently used one is removed first
    max_warm: Annotated[int, msgspec.Meta(ge=1)] = 50
    # a function's calls in flight on one container past which that container is saturated
    # and, room permitting, the function gets another one (each has its own `cpus`)
    max_concurrent_per_container: Annotated[int, msgspec.Meta(ge=1)] = 64
    # containers of one function revision at most
    max_containers_per_function: Annotated[int, msgspec.Meta(ge=1)] = 4
    # A container idle this long whose Deno grew by more than recycle_growth_mb since its
    # module loaded is replaced by a fresh one (V8 keeps the heap a burst grew). 0: never.
    recycle_idle_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30
    recycle_growth_mb: Annotated[int, msgspec.Meta(ge=1)] = 16
    # a container idle this long is removed
    idle_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300
    # CPU share of each container (--cpus); None: no limit
    cpus: Annotated[float, msgspec.Meta(gt=0)] | None = 1.0
    # processes and threads per container (--pids-limit)
    pids_limit: Annotated[int, msgspec.Meta(ge=16)] = 128
    # container memory = memoryLimitMb + this: the Deno process itself, outside V8's heap
    memory_overhead_mb: Annotated[int, msgspec.Meta(ge=32)] = 96
    # size of the tmpfs /tmp (counted in the container's memory)
    tmpfs_mb: Annotated[int, msgspec.Meta(ge=8)] = 64
    # label value marking this fnhost's containers; default: hostname and data_dir
    owner: str | None = None
    # keep the container that check() started, for the first call
    prewarm: bool = True
    # largest frame to or from a container; raised to server.max_body_bytes + 2 MiB if below
    max_message_bytes: Annotated[int, msgspec.Meta(ge=MiB)] = 10 * MiB + FRAME_HEADROOM_BYTES
    # creating and starting a container and loading the module, remote imports included
    start_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30


class DockerRuntime(Runtime):
    """Runs each function revision in its own warm container, reused across calls and
    handling concurrent calls; more containers (up to `max_containers_per_function`) while
    every one of them has `max_concurrent_per_container` calls in flight. Containers are
    replaced when they die, time out stuck or exceed their memory limit, and removed when
    idle, evicted or superseded."""

    name = "docker"
    Config = DockerConfig
    config: DockerConfig

    def __init__(self, config: DockerConfig, platform: Platform) -> None:
        super().__init__(config, platform)
        self.owner = config.owner or (
            f"{socket.gethostname()}:{Path(platform.config.server.data_dir).resolve()}"
        )
        self.client: Any = None  # docker.DockerClient once started
        self._settings: ContainerSettings | None = None
        policy = PoolPolicy(
            max_warm=config.max_warm,
            idle_seconds=config.idle_seconds,
            start_timeout_seconds=config.start_timeout_seconds,
            prewarm=config.prewarm,
            max_workers_per_function=config.max_containers_per_function,
            max_concurrent_per_worker=config.max_concurrent_per_container,
            recycle_idle_seconds=config.recycle_idle_seconds,
            recycle_growth_bytes=config.recycle_growth_mb * MiB,
        )
        self._pool = WorkerPool(self._new_container, policy)
        self._publishes = PublishQueue(platform, log)

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        docker_host = resolve_docker_host(self.config.docker_host)
        self.client = await asyncio.to_thread(connect, docker_host)
        engine = EngineAddress.of(docker_host, self.client.api.api_version)
        removed = await asyncio.to_thread(remove_containers, self.client, self.owner)
        if removed:
            log.warning("removed %d container(s) left by a previous run of fnhost", removed)
        network = await asyncio.to_thread(ensure_network, self.client, self.config.network)
        image = RuntimeImage.describe(self.config.image, self.config.base_image)
        await asyncio.to_thread(self._ensure_image, image)
        body_limit = self.platform.config.server.max_body_bytes
        self._settings = ContainerSettings(
            client=self.client,
            engine=engine,
            image=image.tag,
            owner=self.owner,
            network=network,
            cpus=self.config.cpus,
            pids_limit=self.config.pids_limit,
            memory_overhead_mb=self.config.memory_overhead_mb,
            tmpfs_mb=self.config.tmpfs_mb,
            body_limit=body_limit,
            frame_limit=max(self.config.max_message_bytes, body_limit + FRAME_HEADROOM_BYTES),
        )
        self._pool.start()

    def _ensure_image(self, image: RuntimeImage) -> None:
        import docker.errors

        if not self.config.build_image:
            try:
                self.client.images.get(image.tag)
            except docker.errors.ImageNotFound:
                raise Unavailable(
                    f"the engine has no image {image.tag}; run `fnhost docker build-image` "
                    "or set runtime.docker.build_image = true"
                ) from None
            return
        started = time.monotonic()
        if ensure_image(self.client, image, lambda line: log.warning("docker: %s", line)):
            log.warning("function image built in %.1f s", time.monotonic() - started)

    async def stop(self) -> None:
        await self._pool.stop()
        await self._publishes.close(PUBLISH_DRAIN_SECONDS)
        if self.client is not None:
            # Whatever a creation in flight or a failed removal left behind.
            await asyncio.to_thread(remove_containers, self.client, self.owner)
            await asyncio.to_thread(self.client.close)
        self._settings = None
        self.client = None

    def _new_container(self, function: FunctionSpec) -> FunctionContainer:
        if self._settings is None:
            raise Unavailable("the docker runtime is not started")
        return FunctionContainer(function, self._settings, self._publishes.put)

    # ---- the Runtime protocol ----------------------------------------------------

    async def check(self, function: FunctionSpec) -> None:
        await self._pool.check(function)

    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        if self._settings is None:
            raise Unavailable("the docker runtime is not started")
        check_body_size(request, self._settings.body_limit)
        try:
            return await self._pool.invoke(function, request)
        except Unavailable as exc:
            # The engine refused the container (out of resources, the image gone): this
            # call failed, recorded as such; the next call tries a new container.
            return InvocationResult(outcome="crash", error=exc.message)

    async def evict(self, function: FunctionDefinition) -> None:
        self._pool.evict(function.app_id, function.name)

    # for tests, benchmarks and diagnostics
    def container_ids(self) -> dict[WorkerKey, str]:
        """Engine id of the first warm container of each (app_id, name, revision)."""
        return {key: ids[0] for key, ids in self.pool_container_ids().items()}

    def pool_container_ids(self) -> dict[WorkerKey, list[str]]:
        """Engine ids of every warm container, by (app_id, name, revision)."""
        pools = {
            key: [c.container_id for c in containers if c.container_id]
            for key, containers in self._pool.by_revision().items()
        }
        return {key: ids for key, ids in pools.items() if ids}


def remove_containers(client: Any, owner: str) -> int:
    """Remove every container labelled with this owner, running or not; how many."""
    import docker.errors

    removed = 0
    owned = client.api.containers(all=True, filters={"label": f"{LABEL_PREFIX}owner={owner}"})
    for summary in owned:
        try:
            client.api.remove_container(summary["Id"], force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # already being removed
                raise
    return removed


def ensure_network(client: Any, name: str) -> str:
    """The id of the network function containers join, created when missing: a bridge of
    fnhost's own (not the engine's default one), with traffic between its containers
    disabled. "none" (no network at all) is passed through."""
    import docker.errors

    if name in ("none", ""):
        return "none"
    existing = client.api.networks(names=[name])
    exact = [n for n in existing if n["Name"] == name]
    if exact:
        return str(exact[0]["Id"])
    try:
        created = client.api.create_network(
            name,
            driver="bridge",
            options={"com.docker.network.bridge.enable_icc": "false"},
            labels={NETWORK_LABEL: "functions"},
            check_duplicate=True,
        )
        return str(created["Id"])
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # created by another fnhost meanwhile
            raise Unavailable(f"cannot create the network {name!r}: {exc.explanation}") from None
    return str(client.api.networks(names=[name])[0]["Id"])
