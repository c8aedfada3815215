"""One warm Deno worker running one function revision, with many invocations in flight:
its life from launch to retirement, whatever runs it (a local process, a container).

A runtime subclasses `Worker` with the mechanics only it knows: how the worker starts
(`_boot`), how frames reach it (`_send`), how it is ended (`_terminate`, `stop`) and why
it died; everything a function's calls go through is here and in `CallTable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from fnhost.errors import TooLarge
from fnhost.models import FunctionSpec, InvocationRequest, InvocationResult
from fnhost_deno_worker.calls import MEMORY_ERROR, CallTable, Death
from fnhost_deno_worker.protocol import (
    Init,
    Invoke,
    LoadError,
    Publish,
    Ready,
    WorkerMessage,
    encode,
)

# What Deno prints when V8 runs out of heap.
OOM_MARKERS = (b"out of memory", b"Reached heap limit")
_PATH = re.compile(r"(?:file://)?(?:/[^\s/:'\"()]+)+/([^\s/:'\"()]+)")


class LoadFailed(Exception):
    """The module could not be loaded: refused code (`crashed` False) or a dead worker."""

    def __init__(self, message: str, crashed: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.crashed = crashed


class Worker(ABC):
    """A worker for one function revision. `launch()` starts it, `ready()` waits for the
    module to load; then `invoke()` runs calls concurrently until `stop()` or `retire()`.

    `publish(app_id, channel, data)` receives the function's `ctx.publish` calls; `rss_limit`
    (bytes, 0 for none) kills a worker past it after a call, for runtimes where nothing
    else bounds its memory.
    """

    noun = "worker"

    def __init__(
        self,
        function: FunctionSpec,
        body_limit: int,
        frame_limit: int,
        rss_limit: int = 0,
        publish: Callable[[str, str, Any], None] | None = None,
    ) -> None:
        self.function = function
        self.body_limit = body_limit
        self.frame_limit = frame_limit
        self.rss_limit = rss_limit
        self._publish = publish
        self._loaded: asyncio.Future[WorkerMessage | Death] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._retire_task: asyncio.Task[None] | None = None
        self._death: Death | None = None
        self._waiting = 0  # calls waiting for the module to load
        self.loaded_rss = 0  # the worker's resident memory once its module was loaded
        self._calls = CallTable(self._send, self.kill, body_limit, rss_limit, self.noun)

    # ---- what a runtime provides ----------------------------------------------------

    @abstractmethod
    async def _boot(self) -> None:
        """Start the worker so that frames sent reach it and its frames reach `dispatch`;
        raise `LoadFailed`, or `fnhost.errors.Unavailable` when it cannot start at all."""

    @abstractmethod
    def _init_frame(self) -> Init:
        """The first frame: where the code is, and the function's env vars."""

    @abstractmethod
    def _send(self, frame: bytes) -> None:
        """Write a frame to the worker; nothing once it is dead."""

    @abstractmethod
    async def _drain(self, body_bytes: int) -> None:
        """Wait while the transport is not taking what was written (flow control)."""

    @abstractmethod
    def _terminate(self) -> None:
        """End the worker at once (kill the process, remove the container)."""

    @abstractmethod
    async def stop(self) -> None:
        """Kill the worker and wait until it is gone."""

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

    def rss(self) -> int | None:
        """The worker's resident memory in bytes as last known: what it reported after its
        last call (a runtime that can read it directly does so instead)."""
        return self._calls.last_rss or self.loaded_rss or None

    def runs(self, function: FunctionSpec) -> bool:
        """Whether this worker runs exactly that code, env and memory limit."""
        mine = self.function
        return mine is function or (
            mine.code == function.code
            and mine.env == function.env
            and mine.memory_limit_mb == function.memory_limit_mb
        )

    # ---- lifecycle ---------------------------------------------------------------

    def launch(self, load_seconds: float) -> None:
        """Start the worker and the module load in the background (once)."""
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start(load_seconds))

    async def ready(self) -> None:
        """Wait for the module to be loaded; raise `LoadFailed` if it was not."""
        assert self._start_task is not None, "launch() first"
        if not self._start_task.done():
            # Counted as busy meanwhile, so the worker is not retired under the caller.
            self._waiting += 1
            try:
                await asyncio.shield(self._start_task)
            finally:
                self._waiting -= 1
                self._calls.note_progress()
        self._start_task.result()

    async def _start(self, load_seconds: float) -> None:
        self._loaded = asyncio.get_running_loop().create_future()
        await self._boot()
        self._send(encode(self._init_frame()))
        done, _ = await asyncio.wait({self._loaded}, timeout=load_seconds)
        if not done:
            self.kill(Death("crash", "the module did not finish loading"))
            raise LoadFailed(f"the module did not finish loading within {load_seconds:g} s")
        loaded = self._loaded.result()
        if isinstance(loaded, Ready):
            self.loaded_rss = loaded.rss
        if isinstance(loaded, LoadError):
            self.kill(Death("crash", "the module failed to load"))
            raise LoadFailed(loaded.message)
        if isinstance(loaded, Death):
            if loaded.outcome == "memory":
                raise LoadFailed(f"{MEMORY_ERROR} while loading the module")
            raise LoadFailed(
                f"the {self.noun} died while loading the module: {loaded.message}", crashed=True
            )

    async def _await_start(self) -> None:
        """Let a start in progress finish (or fail) before tearing down."""
        if self._start_task is not None:
            with contextlib.suppress(Exception):
                await self._start_task

    def retire(self) -> asyncio.Task[None]:
        """Drain then stop, in the background (once): calls in flight end normally and
        waitUntil work gets up to its deadline. The task ends when the worker is gone."""
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
        try:
            self._send(encode(message, request.body))
            await self._drain(len(request.body))
        except asyncio.CancelledError:
            self._calls.cancel(call_id)
            raise
        return await self._calls.answer(call_id)

    # ---- frames from the worker, and its end ---------------------------------------

    def dispatch(self, message: WorkerMessage, body: bytes) -> None:
        """Take one frame from the worker, as it arrives."""
        if self._calls.dispatch(message, body):
            return
        if isinstance(message, Publish):
            if self._publish is not None:
                self._publish(self.function.app_id, message.channel, message.data)
        elif self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(message)

    def kill(self, death: Death) -> None:
        """Kill the worker at once; calls in flight end with `death` (the first reason
        given wins)."""
        if self._death is None:
            self._death = death
        self._terminate()

    def _ended(self, death: Death) -> None:
        """The worker is gone (`death` says why): end the load and every call in flight."""
        self._death = death
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(death)
        self._calls.end_all(death)


def memory_error_in(stderr_tail: bytes) -> bool:
    """Whether the worker's last words say V8 ran out of memory."""
    return any(marker in stderr_tail for marker in OOM_MARKERS)


def last_line(stderr_tail: bytes) -> str:
    """The worker's last line of stderr, without host paths, for an error message."""
    lines = stderr_tail.decode(errors="replace").strip().splitlines()
    return _PATH.sub(r"\1", lines[-1].strip())[:500] if lines else ""


def deno_run_arguments(
    bootstrap: str,
    memory_limit_mb: int,
    allow_read: str,
    allow_write: str | None = None,
    v8_flags: tuple[str, ...] = (),
) -> list[str]:
    """`run ... bootstrap` for the deno binary: no prompt, config or lock file; network,
    reading `allow_read` (the code) and, when given, writing `allow_write`; nothing else
    (no subprocess, FFI, env or system info). V8's heap is held to the function's limit."""
    # V8 grows its young generation up to 16-32 MiB per semi-space under load; bounded in
    # proportion to the limit, a busy hello-world worker stays near 70 MiB instead of 170.
    semi_space_mb = min(max(memory_limit_mb // 64, 1), 16)
    flags = (
        f"--max-old-space-size={memory_limit_mb}",
        f"--max-semi-space-size={semi_space_mb}",
        *v8_flags,
    )
    write = [f"--allow-write={allow_write}"] if allow_write else []
    return [
        "run",
        "--quiet",
        "--no-prompt",
        "--no-config",
        "--no-lock",
        "--allow-net",
        f"--allow-read={allow_read}",
        *write,
        f"--v8-flags={','.join(flags)}",
        bootstrap,
    ]


def check_body_size(request: InvocationRequest, body_limit: int) -> None:
    """Refuse a request body over the limit before any worker sees it."""
    if len(request.body) > body_limit:
        raise TooLarge(
            f"request body of {len(request.body)} bytes exceeds the limit of {body_limit} bytes"
        )
