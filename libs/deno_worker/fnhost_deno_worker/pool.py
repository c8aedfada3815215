"""Warm workers per function revision, and the policy that keeps them: reuse across calls,
more workers while all of a revision's are saturated, a `max_warm` cap with the least
recently used retired first, idle retirement, and a newer revision retiring older ones.

A retired worker drains (its calls in flight end normally) before it stops, so neither a
redeploy nor an eviction kills a call mid-request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fnhost.errors import CodeCheckFailed, Unavailable
from fnhost.models import FunctionSpec, InvocationRequest, InvocationResult
from fnhost_deno_worker.worker import LoadFailed, Worker

if TYPE_CHECKING:
    from fnhost.platform import Platform

WorkerKey = tuple[str, str, int]  # app_id, function name, revision
W = TypeVar("W", bound=Worker)


@dataclass(frozen=True)
class PoolPolicy:
    max_warm: int  # workers kept, over all functions
    idle_seconds: float  # a worker idle this long is retired
    start_timeout_seconds: float  # starting a worker and loading its module
    prewarm: bool = True  # keep the worker check() started, for the first call
    max_workers_per_function: int = 1
    # calls in flight past which a worker is saturated and, room permitting, its revision
    # gets another worker
    max_concurrent_per_worker: int = 64
    # A worker idle this long whose memory grew by more than `recycle_growth_bytes` since its
    # module loaded is replaced by a fresh one (V8 keeps the heap a burst grew); 0: never.
    recycle_idle_seconds: float = 0.0
    recycle_growth_bytes: int = 16 * 1024 * 1024


class WorkerPool(Generic[W]):
    """The warm workers of every function revision; `launch(function)` makes a new one."""

    def __init__(self, launch: Callable[[FunctionSpec], W], policy: PoolPolicy) -> None:
        self._new_worker = launch
        self.policy = policy
        # the workers of each revision; revisions least recently called first
        self._pools: OrderedDict[WorkerKey, list[W]] = OrderedDict()
        self._retiring: dict[asyncio.Task[None], W] = {}
        self._latest: dict[tuple[str, str], int] = {}  # newest revision invoked per function
        self._replacing: dict[WorkerKey, asyncio.Task[None]] = {}
        self._upkeep: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start retiring idle workers, and recycling grown ones when the policy says so."""
        self._upkeep = [asyncio.create_task(self._retire_idle())]
        if self.policy.recycle_idle_seconds:
            self._upkeep.append(asyncio.create_task(self._recycle_grown()))

    # ---- what the Runtime protocol asks ---------------------------------------------

    async def check(self, function: FunctionSpec) -> None:
        """Load the function in a worker; raise `CodeCheckFailed` with the reason if it
        does not load. The worker is kept for the first call when `prewarm` is on."""
        key, worker = self._worker_for(function)
        try:
            await worker.ready()
        except LoadFailed as exc:
            self._retire(key, worker)
            raise CodeCheckFailed(exc.message) from None
        if not self.policy.prewarm:
            self._retire(key, worker)

    async def invoke(self, function: FunctionSpec, request: InvocationRequest) -> InvocationResult:
        """Run one call on a warm worker of the function's revision. A module that fails
        to load is the call's outcome; a worker that cannot start at all is retired and
        `Unavailable` raised."""
        self._supersede(function)
        key, worker = self._worker_for(function)
        try:
            return await worker.invoke(request, function.timeout_ms)
        except LoadFailed as exc:
            self._retire(key, worker)
            return InvocationResult(
                outcome="crash" if exc.crashed else "error",
                error=f"the module failed to load: {exc.message}",
            )
        except Unavailable:
            self._retire(key, worker)
            raise

    def evict(self, app_id: str, name: str) -> None:
        """Retire every worker of that function."""
        self._latest.pop((app_id, name), None)
        for key, pool in list(self._pools.items()):
            if key[:2] == (app_id, name):
                for worker in list(pool):
                    self._retire(key, worker)

    async def stop(self) -> None:
        """Stop the upkeep and every worker, warm or retiring; wait until all are gone."""
        for task in [*self._upkeep, *self._replacing.values()]:
            task.cancel()
        await asyncio.gather(*self._upkeep, return_exceptions=True)
        self._upkeep = []
        workers = [*self.warm(), *self._retiring.values()]
        self._pools.clear()
        await asyncio.gather(*(worker.stop() for worker in workers), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _retire_idle(self) -> None:
        """Forever: retire dead workers and those idle past `idle_seconds`."""
        idle_seconds = self.policy.idle_seconds
        while True:
            await asyncio.sleep(min(max(idle_seconds / 4, 0.05), 10.0))
            now = time.monotonic()
            for key, pool in list(self._pools.items()):
                for worker in list(pool):
                    if not worker.alive or (
                        not worker.busy and now - worker.last_used > idle_seconds
                    ):
                        self._retire(key, worker)

    async def _recycle_grown(self) -> None:
        """Forever: replace idle workers that kept the memory of a past burst with fresh
        ones (each idle spell of a worker is looked at once)."""
        idle_for = self.policy.recycle_idle_seconds
        growth = self.policy.recycle_growth_bytes
        checked: dict[W, float] = {}  # worker -> its last use when it was looked at
        while True:
            await asyncio.sleep(min(max(idle_for / 4, 0.05), 5.0))
            now = time.monotonic()
            for key, workers in list(self._pools.items()):
                for worker in list(workers):
                    if (
                        worker.busy
                        or not worker.loaded_rss
                        or now - worker.last_used < idle_for
                        or checked.get(worker) == worker.last_used
                    ):
                        continue
                    checked[worker] = worker.last_used
                    rss = worker.rss()
                    if rss is not None and rss - worker.loaded_rss > growth:
                        self.replace(key, worker)
            live = set(self.warm())
            checked = {worker: used for worker, used in checked.items() if worker in live}

    def replace(self, key: WorkerKey, old: W) -> None:
        """Start a fresh worker for the revision `old` runs, and retire `old` once the new
        one is ready (it keeps serving meanwhile; if the new one fails, it stays)."""
        pool = self._pools.get(key)
        if pool is None or old not in pool or self._replacing.get(key) is not None:
            return
        new = self._launch(key, old.function)
        task = asyncio.ensure_future(self._swap(key, old, new))
        self._replacing[key] = task
        task.add_done_callback(lambda _: self._replacing.pop(key, None))

    async def _swap(self, key: WorkerKey, old: W, new: W) -> None:
        try:
            await new.ready()
        except (LoadFailed, Unavailable):
            self._retire(key, new)
            return
        self._retire(key, old)

    # ---- what is in it ---------------------------------------------------------------

    def warm(self) -> list[W]:
        return [worker for pool in self._pools.values() for worker in pool]

    def all_workers(self) -> list[W]:
        """Warm and retiring workers: every one still running."""
        return [*self.warm(), *self._retiring.values()]

    def by_revision(self) -> dict[WorkerKey, list[W]]:
        return {key: list(pool) for key, pool in self._pools.items()}

    def in_flight(self) -> int:
        """Calls in flight (streams included) on every worker, warm or retiring."""
        return sum(worker.in_flight for worker in self.all_workers())

    # ---- the policy --------------------------------------------------------------------

    def _worker_for(self, function: FunctionSpec) -> tuple[WorkerKey, W]:
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
        policy = self.policy
        if (
            worker.in_flight >= policy.max_concurrent_per_worker
            and len(pool) < policy.max_workers_per_function
            and self._make_room(optional=True)
        ):
            worker = self._launch(key, function)
        return key, worker

    def _launch(self, key: WorkerKey, function: FunctionSpec) -> W:
        worker = self._new_worker(function)
        self._pools.setdefault(key, []).append(worker)
        worker.launch(self.policy.start_timeout_seconds)
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
            if len(warm) < self.policy.max_warm:
                return True
            idle = [(key, worker) for key, worker in warm if not worker.busy]
            if idle:
                victim = min(idle, key=lambda kw: (len(self._pools[kw[0]]) == 1, kw[1].last_used))
            elif optional:
                return False
            else:
                victim = min(warm, key=lambda kw: kw[1].last_used)
            self._retire(*victim)

    def _retire(self, key: WorkerKey, worker: W) -> None:
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


def _load(worker: Worker) -> int:
    return worker.in_flight


# ctx.publish messages waiting for delivery, per app: past this, new ones are dropped.
MAX_QUEUED_PUBLISHES = 10_000


class PublishQueue:
    """Functions' `ctx.publish` calls on their way to `platform.publish`: in order per app,
    off the workers' read loops, and never failing an invocation."""

    def __init__(self, platform: Platform, log: logging.Logger) -> None:
        self._platform = platform
        self._log = log
        self._outbox: dict[str, deque[tuple[str, Any]]] = {}  # app_id -> messages
        self._delivering: set[asyncio.Task[None]] = set()

    def put(self, app_id: str, channel: str, data: Any) -> None:
        queue = self._outbox.get(app_id)
        if queue is None:
            queue = self._outbox[app_id] = deque()
            task = asyncio.ensure_future(self._deliver(app_id, queue))
            self._delivering.add(task)
            task.add_done_callback(self._delivering.discard)
        if len(queue) >= MAX_QUEUED_PUBLISHES:
            self._log.warning(
                "ctx.publish of app %s dropped: %d messages queued", app_id, len(queue)
            )
            return
        queue.append((channel, data))

    async def close(self, grace_seconds: float) -> None:
        """Let what is queued be delivered for up to `grace_seconds`; drop the rest."""
        if not self._delivering:
            return
        _, late = await asyncio.wait(self._delivering, timeout=grace_seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _deliver(self, app_id: str, queue: deque[tuple[str, Any]]) -> None:
        try:
            while queue:
                channel, data = queue.popleft()
                try:
                    await self._platform.publish(app_id, channel, data)
                except Exception:
                    self._log.exception("ctx.publish of app %s on %r failed", app_id, channel)
        finally:
            if self._outbox.get(app_id) is queue:
                del self._outbox[app_id]
