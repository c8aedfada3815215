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
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from fnhost.config import MiB
from fnhost.contracts import Runtime
from fnhost.errors import CodeCheckFailed, ConfigError, TooLarge, Unavailable
from fnhost.models import FunctionDefinition, FunctionSpec, InvocationRequest, InvocationResult
from fnhost_deno.worker import DenoWorker, WorkerSettings
from fnhost_deno_worker import BOOTSTRAP
from fnhost_deno_worker.worker import LoadFailed

if TYPE_CHECKING:
    from fnhost.platform import Platform

# Deno's own resident memory on top of the function's heap limit: a fresh worker measures
# 44 MiB on this machine and a hello world settles at 70-80 MiB after 100k calls (allocator
# arenas, young generation, code space: none of it bounded by --max-old-space-size).
RSS_ALLOWANCE_MB = 96
WATCHDOG_INTERVAL_SECONDS = 0.1
# Frames carry the body plus headers and up to 1 MiB of logs.
FRAME_HEADROOM_BYTES = 2 * MiB

# ctx.publish messages waiting for delivery, per app: past this, new ones are dropped.
MAX_QUEUED_PUBLISHES = 10_000
PUBLISH_DRAIN_SECONDS = 2.0

log = logging.getLogger("fnhost.deno")

WorkerKey = tuple[str, str, int]  # app_id, function name, revision


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
        # the workers of each revision; revisions least recently called first
        self._pools: OrderedDict[WorkerKey, list[DenoWorker]] = OrderedDict()
        self._retiring: dict[asyncio.Task[None], DenoWorker] = {}
        self._latest: dict[tuple[str, str], int] = {}  # newest revision invoked per function
        self._busy = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: dict[str, deque[tuple[str, Any]]] = {}  # app_id -> ctx.publish messages
        self._delivering: set[asyncio.Task[None]] = set()

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
            publish=self._publish,
        )
        self._tasks = [
            asyncio.create_task(self._stop_idle_workers()),
            asyncio.create_task(self._watch_memory()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        workers = [*self._warm(), *self._retiring.values()]
        self._pools.clear()
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._delivering:
            _, late = await asyncio.wait(self._delivering, timeout=PUBLISH_DRAIN_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._settings = None

    def _deno_binary(self) -> str:
        if self.config.deno_path is not None:
            if not Path(self.config.deno_path).is_file():
                raise ConfigError(f"runtime.deno.deno_path: {self.config.deno_path} does not exist")
            return self.config.deno_path
        import deno

        return str(deno.find_deno_bin())

    # ---- the Runtime protocol ----------------------------------------------------

    async def check(self, function: FunctionSpec) -> None:
        key, worker = self._worker_for(function)
        try:
            await worker.ready()
        except LoadFailed as exc:
            self._retire(key, worker)
            raise CodeCheckFailed(exc.message) from None
        if not self.config.prewarm:
            self._retire(key, worker)

    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        settings = self._started()
        if len(request.body) > settings.body_limit:
            raise TooLarge(
                f"request body of {len(request.body)} bytes exceeds the limit of "
                f"{settings.body_limit} bytes"
            )
        self._supersede(function)
        key, worker = self._worker_for(function)
        self._busy.set()
        try:
            return await worker.invoke(request, function.timeout_ms)
        except LoadFailed as exc:
            self._retire(key, worker)
            return InvocationResult(
                outcome="crash" if exc.crashed else "error",
                error=f"the module failed to load: {exc.message}",
            )

    async def evict(self, function: FunctionDefinition) -> None:
        self._latest.pop((function.app_id, function.name), None)
        for key, pool in list(self._pools.items()):
            if key[:2] == (function.app_id, function.name):
                for worker in list(pool):
                    self._retire(key, worker)

    # ---- the pool ----------------------------------------------------------------

    def _started(self) -> WorkerSettings:
        if self._settings is None:
            raise Unavailable("the deno runtime is not started")
        return self._settings

    def _warm(self) -> list[DenoWorker]:
        return [worker for pool in self._pools.values() for worker in pool]

    def _worker_for(self, function: FunctionSpec) -> tuple[WorkerKey, DenoWorker]:
        """The least loaded warm worker of this revision, and a new one if there is none or
        all are saturated (room permitting). A new worker may still be loading: `ready()`
        waits for it."""
        key = (function.app_id, function.name, function.revision)
        pool = self._pools.get(key)
        if not pool:
            self._make_room(optional=False)
            return key, self._launch(key, function)
        worker = pool[0] if len(pool) == 1 else min(pool, key=_load)
        if not (worker.alive and worker.runs(function)):
            for stale in [w for w in pool if not (w.alive and w.runs(function))]:
                self._retire(key, stale)
            return self._worker_for(function)
        self._pools.move_to_end(key)
        if (
            worker.in_flight >= self.config.max_concurrent_per_worker
            and len(pool) < self.config.max_workers_per_function
            and self._make_room(optional=True)
        ):
            worker = self._launch(key, function)
        return key, worker

    def _launch(self, key: WorkerKey, function: FunctionSpec) -> DenoWorker:
        worker = DenoWorker(function, self._started())
        self._pools.setdefault(key, []).append(worker)
        worker.launch(self.config.start_timeout_seconds)
        return worker

    def _supersede(self, function: FunctionSpec) -> None:
        """A call for a newer revision retires the workers of older ones."""
        name = (function.app_id, function.name)
        latest = self._latest.get(name)
        if latest is not None and latest >= function.revision:
            return
        self._latest[name] = function.revision
        for key, pool in list(self._pools.items()):
            if key[:2] == name and key[2] < function.revision:
                for worker in list(pool):
                    self._retire(key, worker)

    def _make_room(self, optional: bool) -> bool:
        """Before a new worker starts, while `max_warm` workers are warm: retire an idle one,
        the extra worker of a function before the only one, least recently used first.
        When none is idle, retire (drain) the least recently used one, unless the new
        worker is `optional`; then answer False: there is no room."""
        while True:
            warm = [(key, worker) for key, pool in self._pools.items() for worker in pool]
            if len(warm) < self.config.max_warm:
                return True
            idle = [(key, worker) for key, worker in warm if not worker.busy]
            if idle:
                victim = min(idle, key=lambda kw: (len(self._pools[kw[0]]) == 1, kw[1].last_used))
            elif optional:
                return False
            else:
                victim = min(warm, key=lambda kw: kw[1].last_used)
            self._retire(*victim)

    def _retire(self, key: WorkerKey, worker: DenoWorker) -> None:
        """Take the worker out of service; it stops once its calls in flight are done."""
        pool = self._pools.get(key)
        if pool is not None and worker in pool:
            pool.remove(worker)
            if not pool:
                del self._pools[key]
        task = worker.retire()
        if task not in self._retiring:
            self._retiring[task] = worker
            task.add_done_callback(self._retiring.pop)

    async def _stop_idle_workers(self) -> None:
        interval = min(max(self.config.idle_seconds / 4, 0.05), 10.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, pool in list(self._pools.items()):
                for worker in list(pool):
                    if not worker.alive or (
                        not worker.busy and now - worker.last_used > self.config.idle_seconds
                    ):
                        self._retire(key, worker)

    async def _watch_memory(self) -> None:
        """While calls run, sample every worker's RSS: a Uint8Array or other off-heap memory
        escapes --max-old-space-size, so the limit is also enforced from outside."""
        while True:
            await self._busy.wait()
            busy = [w for w in (*self._warm(), *self._retiring.values()) if w.busy]
            if not busy:
                self._busy.clear()
                continue
            for worker in busy:
                worker.check_memory()
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)

    # ---- ctx.publish -------------------------------------------------------------

    def _publish(self, app_id: str, channel: str, data: Any) -> None:
        """Queue a function's `ctx.publish` for delivery through the platform: in order per
        app, off the worker's read loop, and never failing the invocation."""
        queue = self._outbox.get(app_id)
        if queue is None:
            queue = self._outbox[app_id] = deque()
            task = asyncio.ensure_future(self._deliver(app_id, queue))
            self._delivering.add(task)
            task.add_done_callback(self._delivering.discard)
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

    # for tests and diagnostics
    def worker_pids(self) -> dict[WorkerKey, int]:
        """Process id of the first warm worker of each (app_id, name, revision)."""
        return {key: pids[0] for key, pids in self.pool_pids().items()}

    def in_flight(self) -> int:
        """Calls in flight (streams included) on every worker, warm or retiring."""
        return sum(w.in_flight for w in (*self._warm(), *self._retiring.values()))

    def pool_pids(self) -> dict[WorkerKey, list[int]]:
        """Process ids of every warm worker, by (app_id, name, revision)."""
        pools = {
            key: [w.pid for w in pool if w.pid is not None] for key, pool in self._pools.items()
        }
        return {key: pids for key, pids in pools.items() if pids}


def _load(worker: DenoWorker) -> int:
    return worker.in_flight


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
