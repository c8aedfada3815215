"""The warm pool of the deno runtime: workers per function revision, max_warm with least
recently used eviction, idle eviction, pre-warm, supersession, and more workers for a
function when its workers are saturated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fnhost.testing.runtime_contract import COUNTER, call, make_spec
from fnhost_deno.runtime import DenoRuntime
from plugins.runtime_deno.tests.support import deno_pids, deno_runtime, eventually, gone, only_pid


async def test_stop_leaves_no_deno_process(tmp_path: Path) -> None:
    slow = """export default async () => {
      await new Promise((r) => setTimeout(r, 5000));
      return new Response("x");
    }"""
    async with deno_runtime(tmp_path / "data") as runtime:
        for name in ("a", "b", "c"):
            await call(runtime, make_spec(name=name))
        in_flight = asyncio.ensure_future(call(runtime, make_spec(slow, name="slow")))
        await eventually(lambda: len(deno_pids(tmp_path)) == 4)
    assert deno_pids(tmp_path) == set()
    assert (await in_flight).outcome == "crash"


async def test_concurrent_first_calls_share_one_new_worker(
    runtime: DenoRuntime, tmp_path: Path
) -> None:
    function = make_spec(COUNTER)
    results = await asyncio.gather(*(call(runtime, function) for _ in range(10)))
    assert sorted(int(result.body) for result in results) == list(range(1, 11))
    assert len(deno_pids(tmp_path)) == 1


async def test_the_least_recently_used_worker_is_stopped_past_max_warm(tmp_path: Path) -> None:
    async with deno_runtime(tmp_path / "data", max_warm=2) as runtime:
        a, b, c = (make_spec(COUNTER, name=name) for name in "abc")
        await call(runtime, a)
        await call(runtime, b)
        await call(runtime, a)  # b is now the least recently used
        pid_b = runtime.worker_pids()[("contract", "b", 1)]
        await call(runtime, c)
        assert set(runtime.worker_pids()) == {("contract", "a", 1), ("contract", "c", 1)}
        await eventually(gone(pid_b))
        assert len(deno_pids(tmp_path)) == 2
        assert (await call(runtime, a)).body == b"3"


async def test_idle_workers_are_stopped(tmp_path: Path) -> None:
    async with deno_runtime(tmp_path / "data", idle_seconds=0.3) as runtime:
        await call(runtime, make_spec())
        pid = only_pid(runtime)
        await eventually(gone(pid), within=3)
        assert runtime.worker_pids() == {}
        assert (await call(runtime, make_spec())).outcome == "ok"


async def test_check_without_prewarm_keeps_no_worker(tmp_path: Path) -> None:
    async with deno_runtime(tmp_path / "data", prewarm=False) as runtime:
        await runtime.check(make_spec())
        assert runtime.worker_pids() == {}
        await eventually(lambda: deno_pids(tmp_path) == set())


async def test_a_newer_revision_retires_the_older_worker(runtime: DenoRuntime) -> None:
    await call(runtime, make_spec(COUNTER))
    old_pid = only_pid(runtime)
    result = await call(runtime, make_spec(COUNTER, revision=2))
    assert result.body == b"1"
    assert set(runtime.worker_pids()) == {("contract", "fn", 2)}
    await eventually(gone(old_pid))


async def test_a_revision_checked_twice_runs_the_latest_code(runtime: DenoRuntime) -> None:
    # A deploy that lost a race is retried with the same revision number and other code.
    await runtime.check(make_spec("export default () => new Response('lost')", revision=2))
    winner = make_spec("export default () => new Response('won')", revision=2)
    await runtime.check(winner)
    assert (await call(runtime, winner)).body == b"won"


async def test_the_worker_of_a_failed_check_is_gone(runtime: DenoRuntime, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="default export"):
        await runtime.check(make_spec("export const nothing = 1;"))
    assert runtime.worker_pids() == {}
    await eventually(lambda: deno_pids(tmp_path) == set())


# ---- more workers for a saturated function ----------------------------------------------

SLOW_PID = """export default async () => {
  await new Promise((r) => setTimeout(r, 300));
  return new Response(String(Deno.pid));
}"""


async def test_a_saturated_function_gets_more_workers_up_to_the_maximum(tmp_path: Path) -> None:
    async with deno_runtime(
        tmp_path / "data", max_concurrent_per_worker=2, max_workers_per_function=3
    ) as runtime:
        function = make_spec(SLOW_PID)
        await runtime.check(function)
        results = await asyncio.gather(*(call(runtime, function) for _ in range(10)))
        assert all(result.outcome == "ok" for result in results)
        served_by = {int(result.body) for result in results}
        pool = runtime.pool_pids()[("contract", "fn", 1)]
        assert len(served_by) == 3
        assert served_by == set(pool)
        # Below the threshold, the calls stay on as few workers as it takes.
        results = await asyncio.gather(*(call(runtime, function) for _ in range(2)))
        assert len({int(result.body) for result in results}) <= 2


async def test_extra_workers_count_towards_max_warm(tmp_path: Path) -> None:
    async with deno_runtime(
        tmp_path / "data", max_warm=2, max_concurrent_per_worker=1, max_workers_per_function=4
    ) as runtime:
        a = make_spec(SLOW_PID, name="a")
        results = await asyncio.gather(*(call(runtime, a) for _ in range(4)))
        assert len({int(result.body) for result in results}) == 2  # max_warm bounds it
        assert len(runtime.pool_pids()[("contract", "a", 1)]) == 2
        # A new function's first worker takes the place of a's idle extra one.
        await call(runtime, make_spec(name="b"))
        pools = runtime.pool_pids()
        assert {key[1]: len(pids) for key, pids in pools.items()} == {"a": 1, "b": 1}
        await eventually(lambda: len(deno_pids(tmp_path)) == 2)


async def test_scaling_out_never_stops_another_functions_busy_worker(tmp_path: Path) -> None:
    async with deno_runtime(
        tmp_path / "data", max_warm=2, max_concurrent_per_worker=1, max_workers_per_function=4
    ) as runtime:
        busy = asyncio.ensure_future(call(runtime, make_spec(SLOW_PID, name="busy")))
        await asyncio.sleep(0.1)
        a = make_spec(SLOW_PID, name="a")
        results = await asyncio.gather(*(call(runtime, a) for _ in range(3)))
        assert all(result.outcome == "ok" for result in results)
        assert len({int(result.body) for result in results}) == 1
        assert (await busy).outcome == "ok"
        assert {key[1] for key in runtime.pool_pids()} == {"a", "busy"}


async def test_a_new_revision_retires_every_worker_of_the_old_one(tmp_path: Path) -> None:
    async with deno_runtime(
        tmp_path / "data", max_concurrent_per_worker=1, max_workers_per_function=2
    ) as runtime:
        old = make_spec(SLOW_PID)
        await asyncio.gather(*(call(runtime, old) for _ in range(2)))
        old_pids = runtime.pool_pids()[("contract", "fn", 1)]
        assert len(old_pids) == 2
        new = make_spec(SLOW_PID, revision=2)
        assert (await call(runtime, new)).outcome == "ok"
        assert set(runtime.pool_pids()) == {("contract", "fn", 2)}
        for pid in old_pids:
            await eventually(gone(pid))


async def test_a_call_in_flight_on_a_superseded_revision_finishes(runtime: DenoRuntime) -> None:
    old = make_spec(SLOW_PID.replace("String(Deno.pid)", '"old"'))
    await runtime.check(old)
    in_flight = asyncio.ensure_future(call(runtime, old))
    await asyncio.sleep(0.1)
    new = make_spec(SLOW_PID.replace("String(Deno.pid)", '"new"'), revision=2)
    assert (await call(runtime, new)).body == b"new"
    result = await in_flight
    assert (result.outcome, result.body) == ("ok", b"old")


def test_saturation_settings_have_defaults() -> None:
    config = DenoRuntime.Config()
    assert (config.max_concurrent_per_worker, config.max_workers_per_function) == (64, 4)


# ---- recycling workers that kept a burst's memory -----------------------------------------

GROWS = """export default (req) => {
  if (new URL(req.url).searchParams.has("grow")) {
    // Kept alive (a cache, say), so V8 cannot give it back; garbage often stays
    // committed too, but not always.
    globalThis.kept = [];
    for (let i = 0; i < 40; i++) globalThis.kept.push(new Array(250_000).fill(i + 0.5));
    return new Response(String(globalThis.kept.length));
  }
  return new Response(String(Deno.pid));
}"""


async def test_an_idle_worker_that_kept_a_bursts_memory_is_replaced_by_a_fresh_one(
    tmp_path: Path,
) -> None:
    async with deno_runtime(
        tmp_path / "data", recycle_idle_seconds=0.5, recycle_growth_mb=16
    ) as runtime:
        lean, grown = make_spec(GROWS, name="lean"), make_spec(GROWS, name="grown")
        lean_pid = int((await call(runtime, lean)).body)
        grown_pid = int((await call(runtime, grown)).body)
        assert (await call(runtime, grown, "GET", "/?grow")).body == b"40"
        [worker] = runtime._pool.by_revision()[("contract", "grown", 1)]
        grew_by = (worker.rss() or 0) - worker.loaded_rss
        assert grew_by > 16 * 1024 * 1024, grew_by

        await eventually(gone(grown_pid), within=5)
        [fresh] = runtime._pool.by_revision()[("contract", "grown", 1)]
        assert (fresh.rss() or 0) - fresh.loaded_rss < grew_by / 2
        assert int((await call(runtime, grown)).body) not in (grown_pid, 0)
        # A worker whose memory did not grow is kept: it is warm, and as lean as a new one.
        assert runtime.worker_pids()[("contract", "lean", 1)] == lean_pid
