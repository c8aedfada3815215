"""One warm container running one function revision, with many invocations in flight."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fnhost.errors import Unavailable
from fnhost.models import FunctionSpec, InvocationRequest, InvocationResult
from fnhost_docker.calls import CallTable, Death
from fnhost_docker.engine import EngineAddress
from fnhost_docker.image import BOOTSTRAP, USER
from fnhost_docker.protocol import (
    AttachedStream,
    Cancelled,
    Chunk,
    ContainerMessage,
    End,
    Init,
    Invoke,
    LoadError,
    Publish,
    Result,
    Settled,
    encode,
)

log = logging.getLogger("fnhost.docker")

MEMORY_ERROR = "memory limit exceeded"
# A request body above this waits for the engine to take it (flow control), smaller ones
# are written and forgotten.
DRAIN_ABOVE_BYTES = 64 * 1024
OOM_MARKERS = (b"out of memory", b"Reached heap limit")
LABEL_PREFIX = "fnhost."
_PATH = re.compile(r"(?:file://)?(?:/[^\s/:'\"()]+)+/([^\s/:'\"()]+)")


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


class LoadFailed(Exception):
    """The module could not be loaded: refused code (`crashed` False) or a dead container."""

    def __init__(self, message: str, crashed: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.crashed = crashed


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
    semi_space_mb = min(max(memory_limit_mb // 64, 1), 16)
    v8_flags = f"--max-old-space-size={memory_limit_mb},--max-semi-space-size={semi_space_mb}"
    return [
        "run",
        "--quiet",
        "--no-prompt",
        "--no-config",
        "--no-lock",
        "--allow-net",
        "--allow-read=/tmp/fn",
        "--allow-write=/tmp/fn",
        f"--v8-flags={v8_flags}",
        BOOTSTRAP,
    ]


class FunctionContainer:
    """A container for one function revision. `launch()` creates and starts it, `ready()`
    waits for the module to load; then `invoke()` runs calls concurrently until `stop()`."""

    def __init__(
        self,
        function: FunctionSpec,
        settings: ContainerSettings,
        publish: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.function = function
        self.settings = settings
        self._publish = publish
        self.container_id: str | None = None
        self._stream: AttachedStream | None = None
        self._loaded: asyncio.Future[ContainerMessage | Death] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._retire_task: asyncio.Task[None] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._removal: asyncio.Task[None] | None = None
        self._death: Death | None = None
        self._waiting = 0  # calls waiting for the module to load
        self._calls = CallTable(self._write, self._stuck, settings.body_limit)

    # ---- state -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._death is None

    @property
    def busy(self) -> bool:
        """Calls waiting or in flight, or waitUntil work not past its deadline."""
        return bool(self._waiting) or self._calls.busy()

    @property
    def in_flight(self) -> int:
        """Calls waiting for the module to load or running (streams included)."""
        return self._waiting + self._calls.open_calls

    @property
    def last_used(self) -> float:
        return self._calls.last_used

    def runs(self, function: FunctionSpec) -> bool:
        """Whether this container runs exactly that code, env and memory limit."""
        mine = self.function
        return (
            mine.code == function.code
            and mine.env == function.env
            and mine.memory_limit_mb == function.memory_limit_mb
        )

    # ---- lifecycle ---------------------------------------------------------------

    def launch(self, load_seconds: float) -> None:
        """Create and start the container and load the module in the background (once)."""
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start(load_seconds))

    async def ready(self) -> None:
        """Wait for the module to be loaded; raise `LoadFailed` if it was not."""
        assert self._start_task is not None, "launch() first"
        if not self._start_task.done():
            # Counted as busy meanwhile, so the container is not retired under the caller.
            self._waiting += 1
            try:
                await asyncio.shield(self._start_task)
            finally:
                self._waiting -= 1
                self._calls.note_progress()
        self._start_task.result()

    async def _start(self, load_seconds: float) -> None:
        settings = self.settings
        try:
            self.container_id = await asyncio.to_thread(self._create)
            if self._death is not None:  # stopped meanwhile
                self._remove()
                raise LoadFailed(self._death.message, crashed=True)
            self._stream = await settings.engine.attach(
                self.container_id, lambda: AttachedStream(self._dispatch, settings.frame_limit)
            )
            self._loaded = asyncio.get_running_loop().create_future()
            self._reader_task = asyncio.create_task(self._read_frames())
            await asyncio.to_thread(settings.client.api.start, self.container_id)
        except LoadFailed:
            raise
        except Exception as exc:
            self._death = Death("crash", f"cannot start a container: {_explain(exc)}")
            self._remove()
            raise Unavailable(self._death.message) from None
        init = Init(
            code=self.function.code,
            env=dict(self.function.env),
            body_limit=settings.body_limit,
            frame_limit=settings.frame_limit,
        )
        self._write(encode(init))
        done, _ = await asyncio.wait({self._loaded}, timeout=load_seconds)
        if not done:
            self.kill(Death("crash", "the module did not finish loading"))
            raise LoadFailed(f"the module did not finish loading within {load_seconds:g} s")
        loaded = self._loaded.result()
        if isinstance(loaded, LoadError):
            self.kill(Death("crash", "the module failed to load"))
            raise LoadFailed(loaded.message)
        if isinstance(loaded, Death):
            if loaded.outcome == "memory":
                raise LoadFailed(f"{MEMORY_ERROR} while loading the module")
            raise LoadFailed(
                f"the container died while loading the module: {loaded.message}", crashed=True
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

    def kill(self, death: Death) -> None:
        """Remove the container at once (in the background); calls in flight end with
        `death`."""
        if self._death is None:
            self._death = death
        self._remove()

    def _remove(self) -> None:
        if self._removal is None and self.container_id is not None:
            self._removal = asyncio.ensure_future(_remove(self.settings.client, self.container_id))

    async def stop(self) -> None:
        """Remove the container and wait until it is gone."""
        self.kill(Death("crash", "the container was stopped"))
        if self._start_task is not None:
            with contextlib.suppress(Exception):
                await self._start_task
        self._remove()  # created while stopping
        if self._reader_task is not None:
            await asyncio.shield(self._reader_task)
        if self._removal is not None:
            await asyncio.shield(self._removal)

    def retire(self) -> asyncio.Task[None]:
        """Drain then stop, in the background (once): calls in flight end normally and
        waitUntil work gets up to its deadline. The task ends when the container is gone."""
        if self._retire_task is None:
            self._retire_task = asyncio.ensure_future(self._drain_and_stop())
        return self._retire_task

    async def _drain_and_stop(self) -> None:
        calls = self._calls
        while self.alive and self.busy:
            calls.quiet.clear()
            wait = None
            deadline = calls.background_deadline
            if not (self._waiting or calls.open_calls) and deadline is not None:
                wait = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(calls.quiet.wait(), wait)
        await self.stop()

    def _stuck(self) -> None:
        self.kill(Death("crash", "the container was stopped: a call blocked it past its timeout"))

    # ---- invocations -------------------------------------------------------------

    async def invoke(self, request: InvocationRequest, timeout_ms: int) -> InvocationResult:
        """Run one call once the module is loaded (raise `LoadFailed` if it is not).
        Failures of the call itself are outcomes, never exceptions. A streamed body comes
        as the result's `stream`; the result is final once that iterator ends."""
        await self.ready()
        if self._death is not None:
            return InvocationResult(outcome=self._death.outcome, error=self._death.message)
        call_id = self._calls.open(timeout_ms)
        message = Invoke(
            id=call_id,
            method=request.method,
            url=request.url,
            headers=request.headers,
            trigger=request.trigger,
            user=request.user,
        )
        self._write(encode(message, request.body))
        if self._stream is not None and len(request.body) > DRAIN_ABOVE_BYTES:
            await self._stream.drain()
        return await self._calls.answer(call_id)

    # ---- transport ---------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._stream is not None and self._death is None:
            self._stream.write(frame)

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
        self._death = death
        self._remove()
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(death)
        self._calls.end_all(death)

    def _dispatch(self, message: ContainerMessage, body: bytes) -> None:
        calls = self._calls
        if isinstance(message, Chunk):
            calls.on_chunk(message, body)
        elif isinstance(message, Result):
            calls.on_result(message, body)
        elif isinstance(message, End):
            calls.on_end(message)
        elif isinstance(message, Cancelled):
            calls.on_cancelled(message)
        elif isinstance(message, Settled):
            calls.on_settled(message)
        elif isinstance(message, Publish):
            if self._publish is not None:
                self._publish(message.channel, message.data)
        elif self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(message)

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
        if state.get("OOMKilled") or any(marker in tail for marker in OOM_MARKERS):
            return Death("memory", MEMORY_ERROR)
        code = state.get("ExitCode")
        if code is None:
            reason = "the container's stream to fnhost ended"
        else:
            reason = f"the container exited with code {code}"
            with contextlib.suppress(ValueError):
                if code > 128:
                    reason = f"the container died: killed by {signal.Signals(code - 128).name}"
        last_line = self._last_stderr_line(tail)
        return Death("crash", f"{reason}: {last_line}" if last_line else reason)

    def _wait_stopped(self) -> dict[str, Any]:
        api = self.settings.client.api
        assert self.container_id is not None
        with contextlib.suppress(Exception):
            api.wait(self.container_id, timeout=5)
        state: dict[str, Any] = api.inspect_container(self.container_id)["State"]
        return state

    @staticmethod
    def _last_stderr_line(tail: bytes) -> str:
        lines = tail.decode(errors="replace").strip().splitlines()
        return _PATH.sub(r"\1", lines[-1].strip())[:500] if lines else ""


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
