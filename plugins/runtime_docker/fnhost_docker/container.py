"""One warm container running one function revision, with many invocations in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fnhost.errors import Unavailable
from fnhost.models import FunctionSpec
from fnhost_deno_worker.calls import MEMORY_ERROR, Death
from fnhost_deno_worker.protocol import Init
from fnhost_deno_worker.worker import (
    LoadFailed,
    Worker,
    deno_run_arguments,
    last_line,
    memory_error_in,
)
from fnhost_docker.engine import EngineAddress
from fnhost_docker.image import BOOTSTRAP, USER
from fnhost_docker.protocol import AttachedStream

log = logging.getLogger("fnhost.docker")

# A request body above this waits for the engine to take it (flow control), smaller ones
# are written and forgotten.
DRAIN_ABOVE_BYTES = 64 * 1024
LABEL_PREFIX = "fnhost."


@dataclass(frozen=True)
class ContainerSettings:
    """What every container of one runtime shares."""

    client: Any  # docker.DockerClient
    engine: EngineAddress
    image: str
    owner: str
    network: str  # a network id, or "none"
    cpus: float | None
    pids_limit: int
    memory_overhead_mb: int
    tmpfs_mb: int
    body_limit: int
    frame_limit: int


def labels_of(function: FunctionSpec, owner: str) -> dict[str, str]:
    """The labels a function's container carries (never anything secret)."""
    return {
        LABEL_PREFIX + "owner": owner,
        LABEL_PREFIX + "app": function.app_id,
        LABEL_PREFIX + "function": function.name,
        LABEL_PREFIX + "version": str(function.version),
        LABEL_PREFIX + "revision": str(function.revision),
    }


def deno_arguments(memory_limit_mb: int) -> list[str]:
    """The container's command (the image's entrypoint is the Deno binary). The same
    permissions as the "deno" runtime's workers, plus writing the code into /tmp/fn once
    (revoked by the bootstrap before the code is imported)."""
    return deno_run_arguments(
        BOOTSTRAP, memory_limit_mb, allow_read="/tmp/fn", allow_write="/tmp/fn"
    )


class FunctionContainer(Worker):
    """A container for one function revision: the worker's mechanics on a Docker engine.
    Its memory is bounded by the container's cgroup, so no RSS limit is kept here."""

    noun = "container"

    def __init__(
        self,
        function: FunctionSpec,
        settings: ContainerSettings,
        publish: Callable[[str, str, Any], None] | None = None,
    ) -> None:
        super().__init__(function, settings.body_limit, settings.frame_limit, publish=publish)
        self.settings = settings
        self.container_id: str | None = None
        self._stream: AttachedStream | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._removal: asyncio.Task[None] | None = None

    async def _boot(self) -> None:
        settings = self.settings
        try:
            self.container_id = await asyncio.to_thread(self._create)
            if self._death is not None:  # stopped meanwhile
                self._terminate()
                raise LoadFailed(self._death.message, crashed=True)
            self._stream = await settings.engine.attach(
                self.container_id, lambda: AttachedStream(self.dispatch, settings.frame_limit)
            )
            self._reader_task = asyncio.create_task(self._read_frames())
            await asyncio.to_thread(settings.client.api.start, self.container_id)
        except LoadFailed:
            raise
        except Exception as exc:
            self._death = Death("crash", f"cannot start a container: {_explain(exc)}")
            self._terminate()
            raise Unavailable(self._death.message) from None

    def _init_frame(self) -> Init:
        # The code travels in the frame: nothing of it or of the env is on the container's
        # command line, environment or disk outside its own tmpfs.
        return Init(
            code=self.function.code,
            env=dict(self.function.env),
            body_limit=self.body_limit,
            frame_limit=self.frame_limit,
        )

    def _create(self) -> str:
        """Create the container (in a thread): hardened, labelled, attached-to-be."""
        settings, function = self.settings, self.function
        api = settings.client.api
        from docker.types import LogConfig

        memory = f"{function.memory_limit_mb + settings.memory_overhead_mb}m"
        host_config = api.create_host_config(
            mem_limit=memory,
            memswap_limit=memory,  # no swap: the limit is the limit
            pids_limit=settings.pids_limit,
            nano_cpus=int(settings.cpus * 1e9) if settings.cpus else None,
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={settings.tmpfs_mb}m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            network_mode=settings.network,
            ipc_mode="private",
            # stdout is the transport: nothing of it (bodies, logs) lands in the engine's logs
            log_config=LogConfig(type=LogConfig.types.NONE),
        )
        revision = f"r{function.revision}"
        name = "-".join(("fnhost", function.app_id, function.name, revision, secrets.token_hex(3)))
        created = api.create_container(
            settings.image,
            command=deno_arguments(function.memory_limit_mb),
            user=USER,
            labels=labels_of(function, settings.owner),
            name=name[:200],
            # Not detached, with stdin open: the engine also sets StdinOnce, so the stdin
            # closes when fnhost's attach connection does and a container whose fnhost
            # died ends by itself instead of running on unattended.
            stdin_open=True,
            detach=False,
            tty=False,
            use_config_proxy=False,
            host_config=host_config,
            network_disabled=settings.network == "none",
        )
        return str(created["Id"])

    def _terminate(self) -> None:
        """Remove the container (in the background), once."""
        if self._removal is None and self.container_id is not None:
            self._removal = asyncio.ensure_future(_remove(self.settings.client, self.container_id))

    async def stop(self) -> None:
        """Remove the container and wait until it is gone."""
        self.kill(Death("crash", "the container was stopped"))
        await self._await_start()
        self._terminate()  # created while stopping
        if self._reader_task is not None:
            await asyncio.shield(self._reader_task)
        if self._removal is not None:
            await asyncio.shield(self._removal)

    # ---- transport ---------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if self._stream is not None and self._death is None:
            self._stream.write(frame)

    async def _drain(self, body_bytes: int) -> None:
        if self._stream is not None and body_bytes > DRAIN_ABOVE_BYTES:
            await self._stream.drain()

    async def _read_frames(self) -> None:
        """Wait for the attach stream to end (frames are dispatched as they arrive), then
        end everything in flight with the reason."""
        assert self._stream is not None
        try:
            await self._stream.closed
        except Exception as exc:
            self.kill(Death("crash", f"the container broke the protocol: {exc}"))
        self._stream.close()
        death = await self._exit_reason()
        self._terminate()
        self._ended(death)

    async def _exit_reason(self) -> Death:
        """Why the attach stream ended: what fnhost did, or what the engine says happened."""
        if self._death is not None:
            return self._death
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            state = await asyncio.to_thread(self._wait_stopped)
        tail = self._stream.stderr_tail if self._stream else b""
        if self._death is not None:
            return self._death
        if state.get("OOMKilled") or memory_error_in(tail):
            return Death("memory", MEMORY_ERROR)
        code = state.get("ExitCode")
        if code is None:
            reason = "the container's stream to fnhost ended"
        else:
            reason = f"the container exited with code {code}"
            with contextlib.suppress(ValueError):
                if code > 128:
                    reason = f"the container died: killed by {signal.Signals(code - 128).name}"
        line = last_line(tail)
        return Death("crash", f"{reason}: {line}" if line else reason)

    def _wait_stopped(self) -> dict[str, Any]:
        api = self.settings.client.api
        assert self.container_id is not None
        with contextlib.suppress(Exception):
            api.wait(self.container_id, timeout=5)
        state: dict[str, Any] = api.inspect_container(self.container_id)["State"]
        return state


async def _remove(client: Any, container_id: str) -> None:
    """Kill and remove a container; one already gone is fine."""
    import docker.errors

    try:
        await asyncio.to_thread(client.api.remove_container, container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # removal already in progress
            log.warning("removing container %s failed: %s", container_id[:12], _explain(exc))


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()[:300] or type(exc).__name__
