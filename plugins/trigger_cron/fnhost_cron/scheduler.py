"""The scheduler of one fnhost process: an APScheduler job per function with a cron trigger.

Every process sharing a store schedules every cron function. At each fire time each
of them asks the store to claim (function, fire time), and only the one that wins
invokes, so a fire time runs once however many processes are up, and keeps running
while any one of them is. A process learns about changes made through itself from
the deploy/delete hooks at once, and about changes made through other processes by
reading the store every `sync_seconds`; a fire re-reads its function first, so it
never runs deleted or outdated code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from fnhost.errors import FnhostError
from fnhost.models import FunctionDefinition, InvocationRequest, StoredFunction
from fnhost_cron.schedule import ScheduleError, parse_schedule

if TYPE_CHECKING:
    from fnhost.platform import Platform
    from fnhost_cron.trigger import CronConfig

log = logging.getLogger("fnhost.cron")
# APScheduler's own messages; it reports every job added or removed at INFO, so only its
# warnings (a fire time skipped because the previous run is still going) get through.
scheduler_log = logging.getLogger("fnhost.cron.apscheduler")
scheduler_log.setLevel(logging.WARNING)

CRON_URL = "http://cron.fnhost.local/"
PRUNE_INTERVAL_S = 3600.0
# A claimed run not finished after twice its timeout (the call, then its waitUntil work)
# plus this margin is taken for dead: its process died before saying it ended.
RUN_LEASE_MARGIN = timedelta(seconds=30)
# At shutdown, runs in flight get this long to finish (and be recorded) before they are
# cancelled.
STOP_GRACE_S = 10.0

JobKey = tuple[str, str]  # (app_id, function name)


@dataclass(frozen=True)
class Schedule:
    """A function's cron trigger config: what its job is built from."""

    expression: str
    timezone: str

    @classmethod
    def of(cls, function: FunctionDefinition | None) -> Schedule | None:
        spec = function.trigger_of("cron") if function is not None else None
        if spec is None:
            return None
        return cls(spec.config["schedule"], spec.config.get("timezone", "UTC"))


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z, as the rest of fnhost writes times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def process_owner() -> str:
    """Who claims fire times: unique per process (and per start of it), for operators reading
    the claims; short enough for any store."""
    return f"{socket.gethostname()[:200]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class FireTimeExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs a job's coroutine function as an asyncio task, passing the scheduled fire time
    as `fire_time` (APScheduler 3's own executors do not pass it; the claim and the
    request need it). Skips fire times older than the job's misfire grace time."""

    def __init__(self, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__()
        self._tasks = tasks

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job, run_times))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(job.id, done))

    async def _run(self, job: Job, run_times: list[datetime]) -> None:
        for run_time in run_times:
            late = datetime.now(UTC) - run_time
            if job.misfire_grace_time is not None and late > timedelta(
                seconds=job.misfire_grace_time
            ):
                log.warning(
                    "cron: %s skipped its fire time %s, %.1f s late (misfire_grace_seconds)",
                    job.id,
                    iso(run_time),
                    late.total_seconds(),
                )
                continue
            await job.func(*job.args, **{**job.kwargs, "fire_time": run_time})

    def _finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        # Frees the slot that `max_instances` counts.
        self._run_job_success(job_id, [])


class CronScheduler:
    """This process's cron jobs, kept in step with the store."""

    def __init__(self, platform: Platform, config: CronConfig) -> None:
        self._platform = platform
        self._config = config
        self.owner = process_owner()
        self._scheduler: AsyncIOScheduler | None = None
        self._schedules: dict[JobKey, Schedule] = {}
        # Changes made here by hooks, numbered: a read of the store that began before a
        # change must not undo it.
        self._generation = 0
        self._changed: dict[JobKey, int] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._sync_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    async def start(self) -> None:
        """Schedule every stored cron function, then follow the store."""
        if self._scheduler is not None:
            return
        self._stopping = False
        scheduler = AsyncIOScheduler(
            logger=scheduler_log,
            timezone=UTC,
            executors={"default": FireTimeExecutor(self._runs)},
            job_defaults={
                "misfire_grace_time": self._config.misfire_grace_seconds,
                "coalesce": self._config.coalesce,
                "max_instances": self._config.max_concurrent_runs,
            },
        )
        scheduler.start()
        self._scheduler = scheduler
        try:
            await self.sync()
        except Exception:
            log.exception("cron: reading the cron functions from the store failed; will retry")
        self._sync_task = asyncio.create_task(self._sync_forever(), name="fnhost-cron-sync")

    async def stop(self) -> None:
        """Stop firing; give runs in flight `STOP_GRACE_S` to finish, then cancel them."""
        self._stopping = True
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next turn
        self._schedules.clear()
        if self._runs:
            _, pending = await asyncio.wait(set(self._runs), timeout=STOP_GRACE_S)
            for task in pending:
                log.warning("cron: a run still going at shutdown was cancelled")
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # -- following changes ------------------------------------------------------------

    def function_changed(self, function: FunctionDefinition) -> None:
        """A function was deployed, redeployed or had its env changed through this process."""
        self._changed_here((function.app_id, function.name), Schedule.of(function))

    def function_deleted(self, function: FunctionDefinition) -> None:
        self._changed_here((function.app_id, function.name), None)

    def _changed_here(self, key: JobKey, schedule: Schedule | None) -> None:
        self._generation += 1
        self._changed[key] = self._generation
        self._set(key, schedule)

    async def sync(self) -> None:
        """Make the jobs match the store: picks up deploys and deletes of other processes."""
        started = self._generation
        functions = await self._platform.store.list_functions()
        wanted = {(f.app_id, f.name): s for f in functions if (s := Schedule.of(f)) is not None}
        for key in set(self._schedules) | set(wanted):
            self._follow(key, wanted.get(key), started)
        # Changes older than this read are in it: their marks are no longer needed.
        self._changed = {k: g for k, g in self._changed.items() if g > started}

    def _follow(self, key: JobKey, schedule: Schedule | None, read_at: int) -> None:
        """Apply what the store said at generation `read_at`, unless this process changed
        the function since."""
        if self._changed.get(key, 0) > read_at:
            return
        self._set(key, schedule)

    async def _sync_forever(self) -> None:
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_S
                await self._prune()
            await asyncio.sleep(self._config.sync_seconds)
            try:
                await self.sync()
            except Exception as exc:
                log.warning("cron: reading the cron functions from the store failed: %r", exc)

    async def _prune(self) -> None:
        before = datetime.now(UTC) - timedelta(hours=self._config.claim_retention_hours)
        try:
            pruned = await self._platform.store.prune_cron_claims(before)
        except Exception as exc:
            log.warning("cron: pruning old fire claims failed: %r", exc)
        else:
            log.debug("cron: pruned %d fire claims before %s", pruned, iso(before))

    # -- jobs ---------------------------------------------------------------------------

    def _set(self, key: JobKey, schedule: Schedule | None) -> None:
        """Add, replace or remove the job of `key`; nothing when it is already so."""
        if self._scheduler is None or self._schedules.get(key) == schedule:
            return
        job_id = "/".join(key)
        trigger = None
        if schedule is not None:
            try:
                trigger = parse_schedule(schedule.expression, schedule.timezone)
            except ScheduleError as exc:
                # Validated at deploy; only a timezone that left the tz database gets here.
                log.error("cron: cannot schedule %s: %s", job_id, exc)
        if schedule is None or trigger is None:
            self._schedules.pop(key, None)
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(job_id)
            return
        self._scheduler.add_job(
            self._fire,
            trigger,
            args=(key, schedule),
            kwargs={"fire_time": None},  # filled in by FireTimeExecutor
            id=job_id,
            name=f"cron {job_id}",
            replace_existing=True,
        )
        self._schedules[key] = schedule

    def jobs(self) -> dict[str, datetime | None]:
        """The next fire time of every job of this process, by job id ("app_id/name")."""
        if self._scheduler is None:
            return {}
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def next_fire_time(self, function: FunctionDefinition) -> datetime | None:
        """When the function fires next: its live job's time, or computed from its schedule."""
        schedule = Schedule.of(function)
        if schedule is None:
            return None
        key = (function.app_id, function.name)
        if self._scheduler is not None and self._schedules.get(key) == schedule:
            job = self._scheduler.get_job("/".join(key))
            if job is not None:
                return job.next_run_time  # type: ignore[no-any-return]
        try:
            trigger = parse_schedule(schedule.expression, schedule.timezone)
        except ScheduleError:
            return None
        return trigger.get_next_fire_time(None, datetime.now(UTC))  # type: ignore[no-any-return]

    # -- firing -------------------------------------------------------------------------

    async def _fire(self, key: JobKey, schedule: Schedule, fire_time: datetime | None) -> None:
        """One fire time of one function's job. Never raises: a failure is logged."""
        if fire_time is None or self._stopping:
            return
        try:
            await self._claim_and_invoke(key, schedule, fire_time)
        except FnhostError as exc:  # the store is unavailable, the app is over its limits...
            log.warning("cron: %s did not run at %s: %s", "/".join(key), iso(fire_time), exc)
        except Exception:
            log.exception("cron: firing %s at %s failed", "/".join(key), iso(fire_time))

    async def _claim_and_invoke(self, key: JobKey, schedule: Schedule, fire_time: datetime) -> None:
        read_at = self._generation
        function = await self._platform.store.get_function(*key)
        current = Schedule.of(function)
        if function is None or current != schedule:
            # Deleted or rescheduled through another process since the last sync.
            self._follow(key, current, read_at)
            return
        store = self._platform.store
        unfinished_since = None
        if self._config.max_concurrent_runs == 1:  # no overlap, also across processes
            lease = timedelta(milliseconds=2 * function.timeout_ms) + RUN_LEASE_MARGIN
            unfinished_since = datetime.now(UTC) - lease
        if not await store.claim_cron_fire(*key, fire_time, self.owner, unfinished_since):
            return  # another process runs this fire time, or the previous run still goes
        try:
            await self._invoke(function, schedule, fire_time)
        finally:
            try:
                await store.finish_cron_fire(*key, fire_time)
            except Exception as exc:  # the next fire times wait for the lease instead
                log.warning(
                    "cron: %s: recording the end of the %s run failed: %r",
                    "/".join(key),
                    iso(fire_time),
                    exc,
                )

    async def _invoke(
        self, function: StoredFunction, schedule: Schedule, fire_time: datetime
    ) -> None:
        scheduled_time = iso(fire_time)
        request = InvocationRequest(
            invocation_id=uuid.uuid4().hex,
            method="POST",
            url=CRON_URL,
            headers=[("content-type", "application/json")],
            body=msgspec.json.encode({"scheduledTime": scheduled_time}),
            trigger={
                "type": "cron",
                "schedule": schedule.expression,
                "timezone": schedule.timezone,
                "scheduledTime": scheduled_time,
            },
        )
        await self._platform.service.invoke(function, request, trigger="cron", path="/")
