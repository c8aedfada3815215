"""CallTable: what the frames a worker sends (or fails to send) make of each call.

The worker here is the frames themselves: each test plays the bootstrap's side by
dispatching the frames it would send, and reads back the frames fnhost wrote.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

from fnhost.models import LogLine
from fnhost_deno_worker import calls as calls_module
from fnhost_deno_worker.calls import MEMORY_ERROR, CallTable, Death
from fnhost_deno_worker.protocol import (
    PREFIX,
    Cancelled,
    Chunk,
    End,
    Ready,
    Result,
    Settled,
)


class Bootstrap:
    """The worker's side: what fnhost wrote to it, and the deaths fnhost decided."""

    def __init__(self, body_limit: int = 1000, rss_limit: int = 0) -> None:
        self.written: list[dict[str, object]] = []
        self.killed: list[Death] = []
        self.table = CallTable(self.write, self.killed.append, body_limit, rss_limit)

    def write(self, frame: bytes) -> None:
        header_length, _ = PREFIX.unpack_from(frame)
        self.written.append(msgspec.json.decode(frame[PREFIX.size : PREFIX.size + header_length]))

    @property
    def cancels(self) -> list[object]:
        return [frame["id"] for frame in self.written if frame["t"] == "cancel"]


def line(message: str) -> LogLine:
    return LogLine("info", message, datetime.now(UTC))


async def test_a_result_answers_its_call_and_leaves_the_table_quiet() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=1000)
    answer = asyncio.ensure_future(worker.table.answer(call_id))
    await asyncio.sleep(0)
    assert worker.table.busy()
    worker.table.dispatch(Result(id=call_id, outcome="ok", status=201, rss=3 * 2**20), b"hi")
    result = await answer
    assert (result.outcome, result.status_code, result.body, result.memory_mb) == (
        "ok",
        201,
        b"hi",
        3.0,
    )
    assert result.duration_ms is not None and not worker.table.busy()
    assert worker.table.quiet.is_set()


async def test_frames_that_are_not_about_calls_are_left_to_the_owner() -> None:
    assert not Bootstrap().table.dispatch(Ready(), b"")


async def test_past_its_timeout_a_call_is_cancelled_and_answered_with_its_logs() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=20)
    answer = asyncio.ensure_future(worker.table.answer(call_id))
    await asyncio.sleep(0.05)
    assert worker.cancels == [call_id]
    worker.table.dispatch(Cancelled(id=call_id, logs=[line("so far")]), b"")
    result = await answer
    assert result.outcome == "timeout" and result.error == "function timed out after 20 ms"
    assert [log.message for log in result.logs] == ["so far"]
    assert worker.killed == []


async def test_a_result_after_the_timeout_still_counts_as_a_timeout() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=10)
    answer = asyncio.ensure_future(worker.table.answer(call_id))
    await asyncio.sleep(0.03)
    worker.table.dispatch(Result(id=call_id, outcome="ok"), b"late")
    assert (await answer).outcome == "timeout"


async def test_a_worker_that_ignores_the_cancel_is_killed_as_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(calls_module, "UNRESPONSIVE_GRACE_SECONDS", 0.02)
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=10)
    answer = asyncio.ensure_future(worker.table.answer(call_id))
    await asyncio.sleep(0.08)
    assert [death.outcome for death in worker.killed] == ["crash"]
    assert "blocked it past its timeout" in worker.killed[0].message
    worker.table.end_all(worker.killed[0])
    assert (await answer).outcome == "timeout"  # its own outcome, not the kill's


async def test_each_call_keeps_its_own_deadline() -> None:
    worker = Bootstrap()
    long_id = worker.table.open(timeout_ms=5000)
    short_id = worker.table.open(timeout_ms=20)
    await asyncio.sleep(0.06)
    assert worker.cancels == [short_id]
    worker.table.dispatch(Result(id=long_id, outcome="ok"), b"")
    assert (await worker.table.answer(long_id)).outcome == "ok"


async def test_a_streamed_body_arrives_in_order_and_ends_with_the_outcome() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=1000)
    answer = asyncio.ensure_future(worker.table.answer(call_id))
    worker.table.dispatch(Result(id=call_id, outcome="ok", stream=True), b"")
    result = await answer
    assert result.stream is not None
    worker.table.dispatch(Chunk(id=call_id), b"a")
    worker.table.dispatch(Chunk(id=call_id), b"b")
    worker.table.dispatch(End(id=call_id, outcome="error", error="late throw"), b"")
    assert [chunk async for chunk in result.stream] == [b"a", b"b"]
    assert (result.outcome, result.error) == ("error", "late throw")
    assert not worker.table.busy()


async def test_a_stream_past_the_body_limit_is_cut() -> None:
    worker = Bootstrap(body_limit=3)
    call_id = worker.table.open(timeout_ms=1000)
    worker.table.dispatch(Result(id=call_id, outcome="ok", stream=True), b"")
    result = await worker.table.answer(call_id)
    worker.table.dispatch(Chunk(id=call_id), b"ab")
    worker.table.dispatch(Chunk(id=call_id), b"cd")
    assert result.stream is not None
    assert [chunk async for chunk in result.stream] == [b"ab"]
    assert (result.outcome, result.error) == ("error", "response body too large")
    assert worker.cancels == [call_id]


async def test_a_consumer_that_stops_reading_cancels_the_stream() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=1000)
    worker.table.dispatch(Result(id=call_id, outcome="ok", stream=True), b"")
    result = await worker.table.answer(call_id)
    worker.table.dispatch(Chunk(id=call_id), b"a")
    assert result.stream is not None
    stream = result.stream
    assert await anext(stream) == b"a"
    await stream.aclose()  # type: ignore[attr-defined]
    assert worker.cancels == [call_id]
    worker.table.dispatch(Cancelled(id=call_id), b"")
    assert result.outcome == "ok" and not worker.table.busy()


async def test_a_caller_that_goes_away_cancels_its_call() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=1000)
    answer = asyncio.ensure_future(worker.table.answer(call_id))
    await asyncio.sleep(0)
    answer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answer
    assert worker.cancels == [call_id] and not worker.table.busy()


async def test_over_its_memory_limit_the_worker_is_killed_and_the_call_says_why() -> None:
    worker = Bootstrap(rss_limit=100)
    call_id = worker.table.open(timeout_ms=1000)
    worker.table.dispatch(Result(id=call_id, outcome="ok", rss=101), b"")
    result = await worker.table.answer(call_id)
    assert (result.outcome, result.error) == ("memory", MEMORY_ERROR)
    assert worker.killed == [Death("memory", MEMORY_ERROR)]


async def test_waituntil_work_keeps_the_worker_busy_and_its_logs_arrive_late() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=1000)
    worker.table.dispatch(Result(id=call_id, outcome="ok", pending=True), b"")
    result = await worker.table.answer(call_id)
    assert worker.table.busy() and result.late_logs is not None
    worker.table.dispatch(Settled(id=call_id, logs=[line("after")]), b"")
    assert [log.message for log in await result.late_logs] == ["after"]
    assert not worker.table.busy()


async def test_waituntil_work_past_the_timeout_is_given_up() -> None:
    worker = Bootstrap()
    call_id = worker.table.open(timeout_ms=20)
    worker.table.dispatch(Result(id=call_id, outcome="ok", pending=True), b"")
    result = await worker.table.answer(call_id)
    assert result.late_logs is not None
    late = await asyncio.wait_for(result.late_logs, 1)
    assert "outlived the timeout" in late[0].message and not worker.table.busy()


async def test_when_the_worker_dies_every_open_call_ends_with_the_reason() -> None:
    worker = Bootstrap()
    plain = worker.table.open(timeout_ms=1000)
    streamed = worker.table.open(timeout_ms=1000)
    background = worker.table.open(timeout_ms=1000)
    plain_answer = asyncio.ensure_future(worker.table.answer(plain))
    worker.table.dispatch(Result(id=streamed, outcome="ok", stream=True), b"")
    stream_result = await worker.table.answer(streamed)
    worker.table.dispatch(Result(id=background, outcome="ok", pending=True), b"")
    background_result = await worker.table.answer(background)
    worker.table.end_all(Death("crash", "worker killed by signal SIGKILL"))
    assert (await plain_answer).error == "worker killed by signal SIGKILL"
    assert stream_result.stream is not None
    assert [chunk async for chunk in stream_result.stream] == []
    assert stream_result.outcome == "crash"
    assert background_result.late_logs is not None
    assert "stopped before waitUntil" in (await background_result.late_logs)[0].message
    assert not worker.table.busy() and worker.table.quiet.is_set()
