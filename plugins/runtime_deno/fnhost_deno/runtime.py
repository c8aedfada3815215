"""The "deno" runtime: warm Deno worker processes, per function revision.

What a function sees (see fnhost_deno_worker's `bootstrap.ts`): `handler(req, ctx)` with a
Web `Request`, `ctx = {env, user, trigger, waitUntil, publish}`; its own env vars through
`ctx.env`, `Deno.env` and `process.env` (a shim: the process environment itself is empty and
unreadable); the network, and no file, subprocess, FFI or system-info access. Console
output is attributed to the invocation that made it, also when calls run concurrently in
one worker. A response body that is complete when the handler returns comes back whole;
one still being produced (a ReadableStream fed by timers or I/O) is streamed as produced.

Known limits, by design:
- `ctx.waitUntil` work continues after the result is returned, up to the function's
  timeout; what it logs after the result was returned is dropped (the record is already
  written), and so is console output of top-level module code.
- The timeout is enforced from here: a call past it is answered "timeout"; if the worker
  does not even acknowledge the cancel within a second (a synchronous loop), it is killed,
  and other calls in flight on it end as "crash".
- Memory is bounded by V8's heap limit plus an RSS watchdog sampled every 100 ms, so a
  fast off-heap allocation can overshoot the limit briefly before the worker is killed.
- A function can reach its own worker's stdin/stdout through low-level fd APIs
  (`node:fs.writeSync(1, ...)`); that breaks only its own worker (replaced, the call a
  "crash"): frames carry no authority, fnhost knows which app and function a worker runs.
- A streamed body is buffered here when the caller reads slower than the function
  writes; it is bounded by the body limit, past which the stream is cut.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec

from fnhost.config import MiB
from fnhost.contracts import Runtime
from fnhost.errors import ConfigError, Unavailable
from fnhost.models import FunctionDefinition, FunctionSpec, InvocationRequest, InvocationResult
from fnhost_deno.worker import DenoWorker, WorkerSettings
from fnhost_deno_worker import BOOTSTRAP
from fnhost_deno_worker.pool import PoolPolicy, PublishQueue, WorkerKey, WorkerPool
from fnhost_deno_worker.worker import check_body_size

if TYPE_CHECKING:
    from fnhost.platform import Platform

# Deno's own resident memory on top of the function's heap limit: a fresh worker measures
# 44 MiB on this machine and a hello world settles at 70-80 MiB after 100k calls (allocator
# arenas, young generation, code space: none of it bounded by --max-old-space-size).
RSS_ALLOWANCE_MB = 96
WATCHDOG_INTERVAL_SECONDS = 0.1
# Frames carry the body plus headers and up to 1 MiB of logs.
FRAME_HEADROOM_BYTES = 2 * MiB
PUBLISH_DRAIN_SECONDS = 2.0

log = logging.getLogger("fnhost.deno")


class DenoConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[runtime.deno]` of the config file."""

    # warm workers kept, over all functions; the least recently used one is stopped first
    max_warm: Annotated[int, msgspec.Meta(ge=1)] = 50
    # a function's calls in flight on one worker past which that worker is saturated and,
    # room permitting, the function gets another worker
    max_concurrent_per_worker: Annotated[int, msgspec.Meta(ge=1)] = 64
    # workers of one function revision at most
    max_workers_per_function: Annotated[int, msgspec.Meta(ge=1)] = 4
    # a worker idle this long is stopped
    idle_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300
    # A worker idle this long whose resident memory grew by more than recycle_growth_mb
    # since its module loaded is replaced by a fresh one (V8 keeps the heap a burst grew
    # committed: 30+ MiB per worker). 0 turns recycling off.
    recycle_idle_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30
    recycle_growth_mb: Annotated[int, msgspec.Meta(ge=1)] = 16
    # keep the worker that check() started, for the first call
    prewarm: bool = True
    # default: the binary of the `deno` Python package
    deno_path: str | None = None
    # largest frame to or from a worker; raised to server.max_body_bytes + 2 MiB if below
    max_message_bytes: Annotated[int, msgspec.Meta(ge=MiB)] = 10 * MiB + FRAME_HEADROOM_BYTES
    # loading a module, remote imports included
    start_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30
    # more V8 flags for every worker (after fnhost's own), e.g. ["--optimize-for-size"]
    v8_flags: list[str] = msgspec.field(default_factory=list)


class DenoRuntime(Runtime):
    """Runs each function revision in warm `deno run` processes, reused across calls and
    each handling concurrent calls: one worker per revision, more (up to
    `max_workers_per_function`) while every one of them has `max_concurrent_per_worker`
    calls in flight. Workers are replaced when they crash, time out stuck or exceed their
    memory limit, and stopped when idle, evicted or superseded."""

    name = "deno"
    Config = DenoConfig
    config: DenoConfig

    def __init__(self, config: DenoConfig, platform: Platform) -> None:
        super().__init__(config, platform)
        self._settings: WorkerSettings | None = None
        self._pool = WorkerPool(self._new_worker, self._policy())
        self._publishes = PublishQueue(platform, log)
        self._busy = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None

    def _policy(self) -> PoolPolicy:
        config = self.config
        return PoolPolicy(
            max_warm=config.max_warm,
            idle_seconds=config.idle_seconds,
            start_timeout_seconds=config.start_timeout_seconds,
            prewarm=config.prewarm,
            max_workers_per_function=config.max_workers_per_function,
            max_concurrent_per_worker=config.max_concurrent_per_worker,
            recycle_idle_seconds=config.recycle_idle_seconds,
            recycle_growth_bytes=config.recycle_growth_mb * MiB,
        )

    # ---- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        data_dir = self.platform.config.server.data_dir
        workdir, bootstrap = await asyncio.to_thread(_prepare_workdir, data_dir)
        body_limit = self.platform.config.server.max_body_bytes
        self._settings = WorkerSettings(
            deno=self._deno_binary(),
            bootstrap=bootstrap,
            workdir=workdir,
            functions_dir=workdir / "functions",
            deno_dir=workdir / "cache",
            body_limit=body_limit,
            frame_limit=max(self.config.max_message_bytes, body_limit + FRAME_HEADROOM_BYTES),
            rss_allowance_mb=RSS_ALLOWANCE_MB,
            v8_flags=tuple(self.config.v8_flags),
            publish=self._publishes.put,
        )
        self._pool.start()
        self._watchdog = asyncio.create_task(self._watch_memory())

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        await self._pool.stop()
        await self._publishes.close(PUBLISH_DRAIN_SECONDS)
        self._settings = None

    def _deno_binary(self) -> str:
        if self.config.deno_path is not None:
            if not Path(self.config.deno_path).is_file():
                raise ConfigError(f"runtime.deno.deno_path: {self.config.deno_path} does not exist")
            return self.config.deno_path
        import deno

        return str(deno.find_deno_bin())

    def _new_worker(self, function: FunctionSpec) -> DenoWorker:
        if self._settings is None:
            raise Unavailable("the deno runtime is not started")
        return DenoWorker(function, self._settings)

    # ---- the Runtime protocol ----------------------------------------------------

    async def check(self, function: FunctionSpec) -> None:
        await self._pool.check(function)

    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        if self._settings is None:
            raise Unavailable("the deno runtime is not started")
        check_body_size(request, self._settings.body_limit)
        self._busy.set()
        return await self._pool.invoke(function, request)

    async def evict(self, function: FunctionDefinition) -> None:
        self._pool.evict(function.app_id, function.name)

    async def _watch_memory(self) -> None:
        """While calls run, sample every worker's RSS: a Uint8Array or other off-heap memory
        escapes --max-old-space-size, so the limit is also enforced from outside."""
        while True:
            await self._busy.wait()
            busy = [worker for worker in self._pool.all_workers() if worker.busy]
            if not busy:
                self._busy.clear()
                continue
            for worker in busy:
                worker.check_memory()
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)

    # for tests and diagnostics
    def worker_pids(self) -> dict[WorkerKey, int]:
        """Process id of the first warm worker of each (app_id, name, revision)."""
        return {key: pids[0] for key, pids in self.pool_pids().items()}

    def in_flight(self) -> int:
        """Calls in flight (streams included) on every worker, warm or retiring."""
        return self._pool.in_flight()

    def pool_pids(self) -> dict[WorkerKey, list[int]]:
        """Process ids of every warm worker, by (app_id, name, revision)."""
        pools = {
            key: [w.pid for w in workers if w.pid is not None]
            for key, workers in self._pool.by_revision().items()
        }
        return {key: pids for key, pids in pools.items() if pids}


def _prepare_workdir(data_dir: str) -> tuple[Path, Path]:
    """Lay out `<data_dir>/deno`: the bootstrap, an empty `functions/` for code files and
    the `cache/` used as DENO_DIR. Returns that directory and the bootstrap's path."""
    workdir = Path(data_dir).resolve() / "deno"
    functions = workdir / "functions"
    deno_dir = workdir / "cache"
    # Code files of a previous run, and Deno's transpiled copies of them.
    shutil.rmtree(functions, ignore_errors=True)
    shutil.rmtree(deno_dir / "gen" / "file" / functions.relative_to("/"), ignore_errors=True)
    functions.mkdir(parents=True)
    deno_dir.mkdir(exist_ok=True)
    bootstrap = workdir / "bootstrap.ts"
    source = BOOTSTRAP.read_text()
    if not bootstrap.exists() or bootstrap.read_text() != source:
        bootstrap.write_text(source)
    return workdir, bootstrap
