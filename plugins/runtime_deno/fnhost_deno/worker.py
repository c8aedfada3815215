"""One warm Deno process running one function revision, with many invocations in flight."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fnhost.errors import Unavailable
from fnhost.models import FunctionSpec, InvocationRequest, InvocationResult, LogLine, Outcome
from fnhost_deno.process import WorkerProcess
from fnhost_deno.protocol import (
    Cancel,
    Cancelled,
    Chunk,
    End,
    Init,
    Invoke,
    LoadError,
    Publish,
    Result,
    Settled,
    WorkerMessage,
    encode,
)
from fnhost_deno.sandbox import deno_command, deno_environment, set_parent_death_signal

MiB = 1024 * 1024
MEMORY_ERROR = "memory limit exceeded"
# Past its timeout an invocation is cancelled; a worker that does not answer the cancel
# within this grace is stuck in synchronous code and is killed.
UNRESPONSIVE_GRACE_SECONDS = 1.0
OOM_MARKERS = (b"out of memory", b"Reached heap limit")
_PATH = re.compile(r"(?:file://)?(?:/[^\s/:'\"()]+)+/([^\s/:'\"()]+)")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of one runtime shares."""

    deno: str
    bootstrap: Path
    workdir: Path
    functions_dir: Path
    deno_dir: Path
    body_limit: int
    frame_limit: int
    rss_allowance_mb: int
    v8_flags: tuple[str, ...] = ()
    # ctx.publish(channel, data) of a function: (app_id, channel, data), never raising
    publish: Callable[[str, str, Any], None] | None = None


@dataclass(frozen=True)
class Death:
    """Why a worker is gone: the outcome its calls in flight get, and the message."""

    outcome: Literal["crash", "memory"]
    message: str


class WorkerLoadFailed(Exception):
    """The module could not be loaded: refused code (`crashed` False) or a dead worker."""

    def __init__(self, message: str, crashed: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.crashed = crashed


@dataclass
class _Stream:
    """A streamed body on its way: chunks not yet taken by the consumer."""

    result: InvocationResult
    chunks: deque[bytes] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    size: int = 0
    ended: bool = False


@dataclass
class _Call:
    future: asyncio.Future[InvocationResult]
    timeout_ms: int
    started: float  # perf_counter
    deadline: float  # loop time
    timed_out: bool = False
    grace: asyncio.TimerHandle | None = None
    stream: _Stream | None = None

    @property
    def settled(self) -> bool:
        """The worker has answered: the result, or the end of its streamed body."""
        return self.future.done() and (self.stream is None or self.stream.ended)


class DenoWorker:
    """A Deno process for one function revision. `launch()` starts it, `ready()` waits
    for the module to load; then `invoke()` runs calls concurrently until `stop()`."""

    def __init__(self, function: FunctionSpec, settings: WorkerSettings) -> None:
        self.function = function
        self.settings = settings
        self.last_used = time.monotonic()
        self._process: WorkerProcess | None = None
        self._loaded: asyncio.Future[WorkerMessage | Death] | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._retire_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._death: Death | None = None
        self._waiting = 0  # calls waiting for the module to load
        self._calls: dict[int, _Call] = {}
        # One timer for every call's timeout, at the earliest deadline of the calls in
        # flight (cheaper than a timer per call, set and cancelled thousands of times/s).
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._background: dict[int, float] = {}  # call id -> deadline of its waitUntil work
        # call id -> the console lines its waitUntil work prints after the result
        self._late_logs: dict[int, asyncio.Future[list[LogLine]]] = {}
        self._quiet = asyncio.Event()  # set when nothing is in flight
        self._ids = itertools.count()

    # ---- state -------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def alive(self) -> bool:
        return self._death is None

    @property
    def in_flight(self) -> int:
        """Calls waiting for the module to load or running (streams included)."""
        return self._waiting + len(self._calls)

    @property
    def busy(self) -> bool:
        """Calls waiting or in flight, or waitUntil work not past its deadline."""
        if self._background:
            now = time.monotonic()
            for key in [k for k, deadline in self._background.items() if deadline <= now]:
                del self._background[key]
                self._settle_late_logs(key, [_late_line("waitUntil work outlived the timeout")])
        return bool(self._waiting or self._calls or self._background)

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
        """Start the process and the module load in the background (once)."""
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start(load_seconds))

    async def ready(self) -> None:
        """Wait for the module to be loaded; raise `WorkerLoadFailed` if it was not."""
        assert self._start_task is not None, "launch() first"
        if not self._start_task.done():
            # Counted as busy meanwhile, so the worker is not retired under the caller.
            self._waiting += 1
            try:
                await asyncio.shield(self._start_task)
            finally:
                self._waiting -= 1
                self._note_progress()
        self._start_task.result()

    async def _start(self, load_seconds: float) -> None:
        code_file = self._write_code()
        self._loaded = asyncio.get_running_loop().create_future()
        try:
            self._process = await WorkerProcess.spawn(
                deno_command(self.settings, code_file, self.function.memory_limit_mb),
                self.settings.frame_limit,
                self._dispatch,
                env=deno_environment(self.settings),
                cwd=self.settings.workdir,
                preexec_fn=set_parent_death_signal(),
            )
        except OSError as exc:
            self._death = Death("crash", f"cannot start deno: {exc.strerror or exc}")
            raise Unavailable(self._death.message) from None
        if self._death is not None:  # stopped while the process was being spawned
            self.kill(self._death)
        self._reaper = asyncio.create_task(self._reap(self._process))
        init = Init(
            module=code_file.as_uri(),
            env=dict(self.function.env),
            body_limit=self.settings.body_limit,
            frame_limit=self.settings.frame_limit,
        )
        self._write(encode(init))
        done, _ = await asyncio.wait({self._loaded}, timeout=load_seconds)
        if not done:
            self.kill(Death("crash", "the module did not finish loading"))
            raise WorkerLoadFailed(f"the module did not finish loading within {load_seconds:g} s")
        loaded = self._loaded.result()
        if isinstance(loaded, LoadError):
            self.kill(Death("crash", "the module failed to load"))
            raise WorkerLoadFailed(loaded.message)
        if isinstance(loaded, Death):
            if loaded.outcome == "memory":
                raise WorkerLoadFailed(f"{MEMORY_ERROR} while loading the module")
            raise WorkerLoadFailed(
                f"the worker died while loading the module: {loaded.message}", crashed=True
            )

    def _write_code(self) -> Path:
        """The function's code as a file named by its hash: written once, shared by the
        revisions that only differ in env, and stable for Deno's transpile cache."""
        function = self.function
        digest = hashlib.sha256(function.code.encode()).hexdigest()[:24]
        code_file = (
            self.settings.functions_dir / function.app_id / function.name / digest / "handler.ts"
        )
        if not code_file.exists():
            code_file.parent.mkdir(parents=True, exist_ok=True)
            partial = code_file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(function.code)
            partial.replace(code_file)  # atomic: a worker loading it never sees half a file
        return code_file

    def kill(self, death: Death) -> None:
        """Kill the process group at once; calls in flight end with `death`."""
        if self._death is None:
            self._death = death
        if self._process is not None:
            self._process.kill()

    async def stop(self) -> None:
        """Kill the process and wait until it is reaped."""
        self.kill(Death("crash", "the worker was stopped"))
        if self._start_task is not None:
            with contextlib.suppress(Exception):
                await self._start_task
        if self._reaper is not None:
            await asyncio.shield(self._reaper)

    def retire(self) -> asyncio.Task[None]:
        """Drain then stop, in the background (once): calls in flight end normally and
        waitUntil work gets up to its deadline. The task ends when the process is reaped."""
        if self._retire_task is None:
            self._retire_task = asyncio.ensure_future(self._drain_and_stop())
        return self._retire_task

    async def _drain_and_stop(self) -> None:
        while self.alive and self.busy:
            self._quiet.clear()
            wait = None
            if not (self._waiting or self._calls):
                wait = max(0.0, min(self._background.values()) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._quiet.wait(), wait)
        await self.stop()

    def _note_progress(self) -> None:
        if not self.busy:
            self._quiet.set()

    # ---- invocations -------------------------------------------------------------

    async def invoke(self, request: InvocationRequest, timeout_ms: int) -> InvocationResult:
        """Run one call once the module is loaded (raise `WorkerLoadFailed` if it is not).
        Failures of the call itself are outcomes, never exceptions. A streamed body comes
        as the result's `stream`; the result is final once that iterator ends."""
        await self.ready()
        if self._death is not None:
            return InvocationResult(outcome=self._death.outcome, error=self._death.message)
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        deadline = loop.time() + timeout_ms / 1000
        call = _Call(loop.create_future(), timeout_ms, time.perf_counter(), deadline)
        self._calls[call_id] = call
        self.last_used = time.monotonic()
        timer = self._deadline_timer
        if timer is None or timer.when() > deadline:
            self._watch_deadline(deadline)
        message = Invoke(
            id=call_id,
            method=request.method,
            url=request.url,
            headers=request.headers,
            trigger=request.trigger,
            user=request.user,
        )
        try:
            self._write(encode(message, request.body))
            if self._process is not None:
                await self._process.drain()
            result = await call.future
        except asyncio.CancelledError:
            # The caller went away: let the worker abort the call and forget it.
            self._write(encode(Cancel(id=call_id)))
            self._end_call(call_id)
            raise
        if call.stream is None:
            self._end_call(call_id)
            result.duration_ms = round((time.perf_counter() - call.started) * 1000, 3)
        else:
            result.stream = self._chunks_of(call_id, call.stream)
        return result

    def _end_call(self, call_id: int) -> None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        if call.grace is not None:
            call.grace.cancel()
        self.last_used = time.monotonic()
        self._note_progress()

    async def _chunks_of(self, call_id: int, stream: _Stream) -> AsyncIterator[bytes]:
        """The chunks of a streamed body as they arrive. A consumer that stops early
        cancels the function's stream (its record keeps the outcome so far)."""
        try:
            while True:
                if stream.chunks:
                    yield stream.chunks.popleft()
                elif stream.ended:
                    return
                else:
                    stream.arrived.clear()
                    await stream.arrived.wait()
        finally:
            if not stream.ended:
                self._write(encode(Cancel(id=call_id)))

    def _end_stream(
        self,
        call_id: int,
        call: _Call,
        outcome: Outcome,
        error: str | None,
        logs: list[LogLine],
        rss: int = 0,
    ) -> None:
        assert call.stream is not None
        result = call.stream.result
        result.outcome, result.error, result.logs = outcome, error, logs
        if rss:
            result.memory_mb = round(rss / MiB, 1)
        result.duration_ms = round((time.perf_counter() - call.started) * 1000, 3)
        call.stream.ended = True
        call.stream.arrived.set()
        self._end_call(call_id)

    def _watch_deadline(self, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer = asyncio.get_running_loop().call_at(when, self._check_deadlines)

    def _check_deadlines(self) -> None:
        self._deadline_timer = None
        now = asyncio.get_running_loop().time()
        upcoming = []
        for call_id, call in list(self._calls.items()):
            if call.timed_out:
                continue
            if call.deadline <= now:
                self._time_out(call_id)
            else:
                upcoming.append(call.deadline)
        if upcoming:
            self._watch_deadline(min(upcoming))

    def _time_out(self, call_id: int) -> None:
        call = self._calls.get(call_id)
        if call is None or call.settled:
            return
        call.timed_out = True
        self._write(encode(Cancel(id=call_id)))
        loop = asyncio.get_running_loop()
        call.grace = loop.call_later(UNRESPONSIVE_GRACE_SECONDS, self._check_responsive, call_id)

    def _check_responsive(self, call_id: int) -> None:
        call = self._calls.get(call_id)
        if call is not None and not call.settled:
            self.kill(Death("crash", "the worker was stopped: a call blocked it past its timeout"))

    def _timeout_error(self, call: _Call) -> str:
        return f"function timed out after {call.timeout_ms} ms"

    def _timeout_result(self, call: _Call, logs: list[LogLine]) -> InvocationResult:
        return InvocationResult(outcome="timeout", error=self._timeout_error(call), logs=logs)

    def check_memory(self) -> None:
        """Kill the worker if its resident memory is over the function's limit."""
        if self._process is None or self._death is not None or not self._process.running:
            return
        try:
            with open(f"/proc/{self._process.pid}/statm", "rb") as statm:
                rss = int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return
        if rss > self._memory_threshold:
            self.kill(Death("memory", MEMORY_ERROR))

    @property
    def _memory_threshold(self) -> int:
        return (self.function.memory_limit_mb + self.settings.rss_allowance_mb) * MiB

    # ---- transport ---------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._process is not None and self._death is None:
            self._process.write(frame)

    async def _reap(self, process: WorkerProcess) -> None:
        """Once the process is gone: say why, and end everything still in flight."""
        returncode = await process.exited
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if process.protocol_error is not None and self._death is None:
            self._death = Death("crash", f"the worker broke the protocol: {process.protocol_error}")
        death = self._death or self._death_of(returncode, process.stderr_tail)
        self._death = death
        if self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(death)
        for call_id, call in list(self._calls.items()):
            if call.stream is not None and not call.stream.ended:
                if call.timed_out:
                    self._end_stream(call_id, call, "timeout", self._timeout_error(call), [])
                else:
                    self._end_stream(call_id, call, death.outcome, death.message, [])
            elif not call.future.done():
                if call.timed_out:
                    call.future.set_result(self._timeout_result(call, []))
                else:
                    call.future.set_result(
                        InvocationResult(outcome=death.outcome, error=death.message)
                    )
        self._background.clear()
        for key in list(self._late_logs):
            self._settle_late_logs(
                key, [_late_line("the worker stopped before waitUntil work ended")]
            )
        self._quiet.set()

    def _dispatch(self, message: WorkerMessage, body: bytes) -> None:
        if isinstance(message, Chunk):
            self._on_chunk(message.id, body)
        elif isinstance(message, Result):
            self._on_result(message, body)
        elif isinstance(message, End):
            self._on_end(message)
        elif isinstance(message, Cancelled):
            call = self._calls.get(message.id)
            if call is None:
                return
            if call.stream is not None:
                if not call.stream.ended:
                    # Past its timeout, or its consumer went away (then it stays "ok").
                    outcome: Outcome = "timeout" if call.timed_out else call.stream.result.outcome
                    error = self._timeout_error(call) if call.timed_out else None
                    self._end_stream(message.id, call, outcome, error, message.logs)
            elif not call.future.done():
                call.future.set_result(self._timeout_result(call, message.logs))
        elif isinstance(message, Settled):
            self._background.pop(message.id, None)
            self._settle_late_logs(message.id, message.logs)
            self._note_progress()
        elif isinstance(message, Publish):
            if self.settings.publish is not None:
                self.settings.publish(self.function.app_id, message.channel, message.data)
        elif self._loaded is not None and not self._loaded.done():
            self._loaded.set_result(message)

    def _note_pending(
        self, call_id: int, call: _Call | None, pending: bool
    ) -> asyncio.Future[list[LogLine]] | None:
        """Track waitUntil work still running; return the future of its later console lines."""
        if not pending:
            return None
        deadline = time.monotonic() + (call.timeout_ms if call else 0) / 1000
        self._background[call_id] = deadline
        late: asyncio.Future[list[LogLine]] = asyncio.get_running_loop().create_future()
        self._late_logs[call_id] = late
        asyncio.get_running_loop().call_later(
            max(0.0, deadline - time.monotonic()) + 0.05, self._expire_background, call_id
        )
        return late

    def _expire_background(self, call_id: int) -> None:
        if self._late_logs.get(call_id) is not None:
            self._background.pop(call_id, None)
            self._settle_late_logs(call_id, [_late_line("waitUntil work outlived the timeout")])

    def _settle_late_logs(self, call_id: int, logs: list[LogLine]) -> None:
        late = self._late_logs.pop(call_id, None)
        if late is not None and not late.done():
            late.set_result(logs)

    def _on_result(self, message: Result, body: bytes) -> None:
        call = self._calls.get(message.id)
        late_logs = self._note_pending(message.id, call, message.pending)
        if call is None or call.future.done():
            return
        if call.timed_out:
            call.future.set_result(self._timeout_result(call, message.logs))
        elif message.rss > self._memory_threshold:
            self.kill(Death("memory", MEMORY_ERROR))
            call.future.set_result(InvocationResult(outcome="memory", error=MEMORY_ERROR))
        else:
            result = InvocationResult(
                outcome=message.outcome,
                status_code=message.status,
                headers=message.headers,
                body=body,
                error=message.error,
                logs=message.logs,
                memory_mb=round(message.rss / MiB, 1),
                late_logs=late_logs,
            )
            if message.stream:
                call.stream = _Stream(result)
            call.future.set_result(result)

    def _on_chunk(self, call_id: int, chunk: bytes) -> None:
        call = self._calls.get(call_id)
        stream = call.stream if call is not None else None
        if call is None or stream is None or stream.ended:
            return
        stream.size += len(chunk)
        if stream.size > self.settings.body_limit:  # the worker stops first; in case it does not
            self._write(encode(Cancel(id=call_id)))
            self._end_stream(call_id, call, "error", "response body too large", [])
            return
        stream.chunks.append(chunk)
        stream.arrived.set()

    def _on_end(self, message: End) -> None:
        call = self._calls.get(message.id)
        late_logs = self._note_pending(message.id, call, message.pending)
        if call is None or call.stream is None or call.stream.ended:
            return
        call.stream.result.late_logs = late_logs
        if call.timed_out:
            self._end_stream(
                message.id, call, "timeout", self._timeout_error(call), message.logs, message.rss
            )
        elif message.rss > self._memory_threshold:
            self.kill(Death("memory", MEMORY_ERROR))
            self._end_stream(message.id, call, "memory", MEMORY_ERROR, message.logs)
        else:
            self._end_stream(
                message.id, call, message.outcome, message.error, message.logs, message.rss
            )

    @staticmethod
    def _death_of(returncode: int, stderr_tail: bytes) -> Death:
        if any(marker in stderr_tail for marker in OOM_MARKERS):
            return Death("memory", MEMORY_ERROR)
        if returncode < 0:
            reason = f"worker killed by signal {signal.Signals(-returncode).name}"
        else:
            reason = f"worker exited with code {returncode}"
        last_line = _last_line(stderr_tail)
        return Death("crash", f"{reason}: {last_line}" if last_line else reason)


def _last_line(stderr_tail: bytes) -> str:
    lines = stderr_tail.decode(errors="replace").strip().splitlines()
    return _PATH.sub(r"\1", lines[-1].strip())[:500] if lines else ""


def _late_line(message: str) -> LogLine:
    return LogLine("warn", f"[fnhost] {message}", datetime.now(UTC))
