"""The invocations in flight on one Deno worker: their answers, timeouts, streamed bodies
and waitUntil work, kept apart from how the worker is run and reached.

A call past its timeout is cancelled (the bootstrap answers with its logs so far) and,
when the worker does not even acknowledge that within a grace period, the worker is
killed as stuck; a streamed body is handed to the core as an async iterator and the
result becomes final when it ends; when the worker dies every open call ends with the
reason.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from fnhost.models import InvocationResult, LogLine, Outcome
from fnhost_deno_worker.protocol import (
    Cancel,
    Cancelled,
    Chunk,
    End,
    Result,
    Settled,
    WorkerMessage,
    encode,
)

MiB = 1024 * 1024
MEMORY_ERROR = "memory limit exceeded"
# Past its timeout an invocation is cancelled; a worker that does not answer the cancel
# within this grace is stuck in synchronous code and is killed.
UNRESPONSIVE_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Death:
    """Why a worker is gone: the outcome its calls in flight get, and the message."""

    outcome: Literal["crash", "memory"]
    message: str


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


class CallTable:
    """Open calls of one worker by id.

    `write` sends a frame to the worker; `kill` stops it for good with a reason (a call
    stuck past its timeout, or memory over `rss_limit` bytes when that is set, for a
    worker whose memory nothing else bounds). `noun` names the worker in messages.
    """

    def __init__(
        self,
        write: Callable[[bytes], None],
        kill: Callable[[Death], None],
        body_limit: int,
        rss_limit: int = 0,
        noun: str = "worker",
    ) -> None:
        self._write = write
        self._kill = kill
        self._body_limit = body_limit
        self._rss_limit = rss_limit
        self._noun = noun
        self._calls: dict[int, _Call] = {}
        # One timer for every call's timeout, at the earliest deadline of the calls in
        # flight (cheaper than a timer per call, set and cancelled thousands of times/s).
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._background: dict[int, float] = {}  # call id -> deadline of its waitUntil work
        # call id -> the console lines its waitUntil work prints after the result
        self._late_logs: dict[int, asyncio.Future[list[LogLine]]] = {}
        self._ids = itertools.count()
        self.quiet = asyncio.Event()  # set whenever nothing is in flight
        self.last_used = time.monotonic()
        self.last_rss = 0  # the worker's resident memory as it reported after a call

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    @property
    def background_deadline(self) -> float | None:
        """When the earliest waitUntil work still running is past its deadline."""
        return min(self._background.values()) if self._background else None

    def busy(self) -> bool:
        """Calls in flight, or waitUntil work not past its deadline."""
        if self._background:
            now = time.monotonic()
            for key in [k for k, deadline in self._background.items() if deadline <= now]:
                del self._background[key]
                self._settle_late_logs(key, [_late_line("waitUntil work outlived the timeout")])
        return bool(self._calls or self._background)

    def note_progress(self) -> None:
        if not self.busy():
            self.quiet.set()

    # ---- one call ------------------------------------------------------------------

    def open(self, timeout_ms: int) -> int:
        """A new call id, whose timeout starts now."""
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        deadline = loop.time() + timeout_ms / 1000
        self._calls[call_id] = _Call(
            loop.create_future(), timeout_ms, time.perf_counter(), deadline
        )
        self.last_used = time.monotonic()
        timer = self._deadline_timer
        if timer is None or timer.when() > deadline:
            self._watch_deadline(deadline)
        return call_id

    async def answer(self, call_id: int) -> InvocationResult:
        """The result of the call, with `stream` set when its body is streamed. Failures
        of the call are outcomes; a cancelled caller cancels the call in the worker."""
        call = self._calls[call_id]
        try:
            result = await call.future
        except asyncio.CancelledError:
            self.cancel(call_id)
            raise
        if call.stream is None:
            self._end_call(call_id)
            result.duration_ms = round((time.perf_counter() - call.started) * 1000, 3)
        else:
            result.stream = self._chunks_of(call_id, call.stream)
        return result

    def cancel(self, call_id: int) -> None:
        """The caller went away: let the worker abort the call, and forget it."""
        self._write(encode(Cancel(id=call_id)))
        self._end_call(call_id)

    def _end_call(self, call_id: int) -> None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        if call.grace is not None:
            call.grace.cancel()
        self.last_used = time.monotonic()
        self.note_progress()

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

    # ---- timeouts ------------------------------------------------------------------

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
                self._time_out(call_id, call)
            else:
                upcoming.append(call.deadline)
        if upcoming:
            self._watch_deadline(min(upcoming))

    def _time_out(self, call_id: int, call: _Call) -> None:
        if call.settled:
            return
        call.timed_out = True
        self._write(encode(Cancel(id=call_id)))
        loop = asyncio.get_running_loop()
        call.grace = loop.call_later(UNRESPONSIVE_GRACE_SECONDS, self._check_responsive, call_id)

    def _check_responsive(self, call_id: int) -> None:
        call = self._calls.get(call_id)
        if call is not None and not call.settled:
            self._kill(
                Death("crash", f"the {self._noun} was stopped: a call blocked it past its timeout")
            )

    @staticmethod
    def _timeout_error(call: _Call) -> str:
        return f"function timed out after {call.timeout_ms} ms"

    def _timeout_result(self, call: _Call, logs: list[LogLine]) -> InvocationResult:
        return InvocationResult(outcome="timeout", error=self._timeout_error(call), logs=logs)

    def _over_memory(self, rss: int) -> bool:
        """Whether the worker is past its memory limit after a call: then it is killed."""
        if self._rss_limit and rss > self._rss_limit:
            self._kill(Death("memory", MEMORY_ERROR))
            return True
        return False

    # ---- frames from the worker ----------------------------------------------------

    def dispatch(self, message: WorkerMessage, body: bytes) -> bool:
        """Take a frame about a call; False for the frames that are not (ready,
        load_error, publish), which the worker's owner handles."""
        if isinstance(message, Chunk):
            self._on_chunk(message, body)
        elif isinstance(message, Result):
            self._on_result(message, body)
        elif isinstance(message, End):
            self._on_end(message)
        elif isinstance(message, Cancelled):
            self._on_cancelled(message)
        elif isinstance(message, Settled):
            self._background.pop(message.id, None)
            self._settle_late_logs(message.id, message.logs)
            self.note_progress()
        else:
            return False
        return True

    def _on_result(self, message: Result, body: bytes) -> None:
        self.last_rss = message.rss or self.last_rss
        call = self._calls.get(message.id)
        late_logs = self._note_pending(message.id, call, message.pending)
        if call is None or call.future.done():
            return
        if call.timed_out:
            call.future.set_result(self._timeout_result(call, message.logs))
        elif self._over_memory(message.rss):
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

    def _on_chunk(self, message: Chunk, chunk: bytes) -> None:
        call = self._calls.get(message.id)
        stream = call.stream if call is not None else None
        if call is None or stream is None or stream.ended:
            return
        stream.size += len(chunk)
        if stream.size > self._body_limit:  # the bootstrap stops first; in case it does not
            self._write(encode(Cancel(id=message.id)))
            self._end_stream(message.id, call, "error", "response body too large", [])
            return
        stream.chunks.append(chunk)
        stream.arrived.set()

    def _on_end(self, message: End) -> None:
        self.last_rss = message.rss or self.last_rss
        call = self._calls.get(message.id)
        late_logs = self._note_pending(message.id, call, message.pending)
        if call is None or call.stream is None or call.stream.ended:
            return
        call.stream.result.late_logs = late_logs
        if call.timed_out:
            self._end_stream(
                message.id, call, "timeout", self._timeout_error(call), message.logs, message.rss
            )
        elif self._over_memory(message.rss):
            self._end_stream(message.id, call, "memory", MEMORY_ERROR, message.logs)
        else:
            self._end_stream(
                message.id, call, message.outcome, message.error, message.logs, message.rss
            )

    def _on_cancelled(self, message: Cancelled) -> None:
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

    def _note_pending(
        self, call_id: int, call: _Call | None, pending: bool
    ) -> asyncio.Future[list[LogLine]] | None:
        """Track waitUntil work still running; return the future of its later console lines."""
        if not pending:
            return None
        deadline = time.monotonic() + (call.timeout_ms if call else 0) / 1000
        self._background[call_id] = deadline
        loop = asyncio.get_running_loop()
        late: asyncio.Future[list[LogLine]] = loop.create_future()
        self._late_logs[call_id] = late
        loop.call_later(max(0.0, deadline - time.monotonic()) + 0.05, self._expire, call_id)
        return late

    def _expire(self, call_id: int) -> None:
        if self._late_logs.get(call_id) is not None:
            self._background.pop(call_id, None)
            self._settle_late_logs(call_id, [_late_line("waitUntil work outlived the timeout")])

    def _settle_late_logs(self, call_id: int, logs: list[LogLine]) -> None:
        late = self._late_logs.pop(call_id, None)
        if late is not None and not late.done():
            late.set_result(logs)

    # ---- the worker is gone --------------------------------------------------------

    def end_all(self, death: Death) -> None:
        """Every open call ends: as timed out if it was, else with the worker's death."""
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
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
                key, [_late_line(f"the {self._noun} stopped before waitUntil work ended")]
            )
        self.quiet.set()


def _late_line(message: str) -> LogLine:
    return LogLine("warn", f"[fnhost] {message}", datetime.now(UTC))
