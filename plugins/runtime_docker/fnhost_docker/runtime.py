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
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from fnhost.config import MiB
from fnhost.contracts import Runtime
from fnhost.errors import CodeCheckFailed, TooLarge, Unavailable
from fnhost.models import FunctionDefinition, FunctionSpec, InvocationRequest, InvocationResult
from fnhost_deno_worker.worker import LoadFailed
from fnhost_docker.container import LABEL_PREFIX, ContainerSettings, FunctionContainer
from fnhost_docker.engine import EngineAddress, connect, resolve_docker_host
from fnhost_docker.image import RuntimeImage, ensure_image

if TYPE_CHECKING:
    from fnhost.platform import Platform

log = logging.getLogger("fnhost.docker")

# Frames carry the body plus headers and up to 1 MiB of logs.
FRAME_HEADROOM_BYTES = 2 * MiB
NETWORK_LABEL = LABEL_PREFIX + "network"
# ctx.publish messages waiting for delivery, per app: past this, new ones are dropped.
MAX_QUEUED_PUBLISHES = 10_000
PUBLISH_DRAIN_SECONDS = 2.0

ContainerKey = tuple[str, str, int]  # app_id, function name, revision


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
    handling concurrent calls. Containers are replaced when they die, time out stuck or
    exceed their memory limit, and removed when idle, evicted or superseded."""

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
        self._containers: OrderedDict[ContainerKey, FunctionContainer] = OrderedDict()
        self._retiring: dict[asyncio.Task[None], FunctionContainer] = {}
        self._latest: dict[tuple[str, str], int] = {}  # newest revision invoked per function
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: dict[str, deque[tuple[str, Any]]] = {}  # app_id -> ctx.publish messages
        self._publishing: set[asyncio.Task[None]] = set()

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
        self._tasks = [asyncio.create_task(self._remove_idle_containers())]

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        containers = [*self._containers.values(), *self._retiring.values()]
        self._containers.clear()
        await asyncio.gather(*(c.stop() for c in containers), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._publishing:
            _, late = await asyncio.wait(self._publishing, timeout=PUBLISH_DRAIN_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self.client is not None:
            # Whatever a creation in flight or a failed removal left behind.
            await asyncio.to_thread(remove_containers, self.client, self.owner)
            await asyncio.to_thread(self.client.close)
        self._settings = None
        self.client = None

    # ---- the Runtime protocol ----------------------------------------------------

    async def check(self, function: FunctionSpec) -> None:
        key, container = self._container_for(function)
        try:
            await container.ready()
        except LoadFailed as exc:
            self._retire(key, container)
            raise CodeCheckFailed(exc.message) from None
        if not self.config.prewarm:
            self._retire(key, container)

    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        settings = self._started()
        if len(request.body) > settings.body_limit:
            raise TooLarge(
                f"request body of {len(request.body)} bytes exceeds the limit of "
                f"{settings.body_limit} bytes"
            )
        self._supersede(function)
        key, container = self._container_for(function)
        try:
            return await container.invoke(request, function.timeout_ms)
        except LoadFailed as exc:
            self._retire(key, container)
            return InvocationResult(
                outcome="crash" if exc.crashed else "error",
                error=f"the module failed to load: {exc.message}",
            )
        except Unavailable as exc:
            self._retire(key, container)
            return InvocationResult(outcome="crash", error=exc.message)

    async def evict(self, function: FunctionDefinition) -> None:
        self._latest.pop((function.app_id, function.name), None)
        for key, container in list(self._containers.items()):
            if key[:2] == (function.app_id, function.name):
                self._retire(key, container)

    # ---- the pool ----------------------------------------------------------------

    def _started(self) -> ContainerSettings:
        if self._settings is None:
            raise Unavailable("the docker runtime is not started")
        return self._settings

    def _container_for(self, function: FunctionSpec) -> tuple[ContainerKey, FunctionContainer]:
        """The warm container of this revision, launched if there is none (it may still be
        starting: `ready()` waits for it)."""
        settings = self._started()
        key = (function.app_id, function.name, function.revision)
        container = self._containers.get(key)
        if container is not None and container.alive and container.runs(function):
            self._containers.move_to_end(key)
            return key, container
        if container is not None:
            self._retire(key, container)
        self._make_room()
        app_id = function.app_id
        container = FunctionContainer(
            function, settings, lambda channel, data: self._publish(app_id, channel, data)
        )
        self._containers[key] = container
        container.launch(self.config.start_timeout_seconds)
        return key, container

    def _publish(self, app_id: str, channel: str, data: Any) -> None:
        """Queue a function's `ctx.publish` for delivery through the platform: in order per
        app, off the container's read loop, and never failing the invocation."""
        queue = self._outbox.get(app_id)
        if queue is None:
            queue = self._outbox[app_id] = deque()
            task = asyncio.ensure_future(self._deliver(app_id, queue))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)
        if len(queue) >= MAX_QUEUED_PUBLISHES:
            log.warning("ctx.publish of app %s dropped: %d messages queued", app_id, len(queue))
            return
        queue.append((channel, data))

    async def _deliver(self, app_id: str, queue: deque[tuple[str, Any]]) -> None:
        try:
            while queue:
                channel, data = queue.popleft()
                try:
                    await self.platform.publish(app_id, channel, data)
                except Exception:
                    log.exception("ctx.publish of app %s on %r failed", app_id, channel)
        finally:
            if self._outbox.get(app_id) is queue:
                del self._outbox[app_id]

    def _supersede(self, function: FunctionSpec) -> None:
        """A call for a newer revision retires the containers of older ones."""
        name = (function.app_id, function.name)
        latest = self._latest.get(name)
        if latest is not None and latest >= function.revision:
            return
        self._latest[name] = function.revision
        for key, container in list(self._containers.items()):
            if key[:2] == name and key[2] < function.revision:
                self._retire(key, container)

    def _make_room(self) -> None:
        """Before a new container starts: retire the least recently used one past max_warm,
        an idle one if there is any."""
        while self._containers and len(self._containers) >= self.config.max_warm:
            victim = next(
                ((k, c) for k, c in self._containers.items() if not c.busy),
                next(iter(self._containers.items())),
            )
            self._retire(*victim)

    def _retire(self, key: ContainerKey, container: FunctionContainer) -> None:
        """Take the container out of service; it is removed once its calls in flight end."""
        if self._containers.get(key) is container:
            del self._containers[key]
        task = container.retire()
        if task not in self._retiring:
            self._retiring[task] = container
            task.add_done_callback(self._retiring.pop)

    async def _remove_idle_containers(self) -> None:
        interval = min(max(self.config.idle_seconds / 4, 0.05), 10.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, container in list(self._containers.items()):
                if not container.alive or (
                    not container.busy and now - container.last_used > self.config.idle_seconds
                ):
                    self._retire(key, container)

    # for tests, benchmarks and diagnostics
    def container_ids(self) -> dict[ContainerKey, str]:
        """Engine ids of the warm containers, by (app_id, name, revision)."""
        return {k: c.container_id for k, c in self._containers.items() if c.container_id}


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
