"""How fast the deno runtime checks and invokes a function, and how big a warm worker is.

    uv run python bench/runtime_deno.py

Prints: check() of a hello world (cold Deno cache, then warm cache), the round trip of
`runtime.invoke` on a warm worker (sequential, and with 50 calls in flight), and the
resident memory of an idle warm worker, fresh and after those calls.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from fnhost.platform import Platform
from fnhost.testing import make_config
from fnhost.testing.runtime_contract import HELLO, make_request, make_spec
from fnhost_deno.runtime import DenoRuntime

SEQUENTIAL = 1000
CONCURRENT = 50
CONCURRENT_CALLS = 10_000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(data_dir: Path) -> None:
    runtime = Platform(make_config(data_dir)).runtime
    assert isinstance(runtime, DenoRuntime)
    await runtime.start()
    try:
        for label, name in (("cold Deno cache", "first"), ("warm Deno cache", "second")):
            started = time.perf_counter()
            await runtime.check(make_spec(HELLO, name=name))
            print(f"check() hello world, {label}: {(time.perf_counter() - started) * 1000:.1f} ms")

        function = make_spec(HELLO, name="second")
        request = make_request()
        for _ in range(100):
            await runtime.invoke(function, request)
        seconds = []
        for _ in range(SEQUENTIAL):
            started = time.perf_counter()
            await runtime.invoke(function, request)
            seconds.append(time.perf_counter() - started)
        ms = [s * 1000 for s in seconds]
        print(
            f"invoke, warm, sequential: p50 {statistics.median(ms):.3f} ms, "
            f"p95 {percentile(ms, 0.95):.3f} ms, p99 {percentile(ms, 0.99):.3f} ms "
            f"over {SEQUENTIAL} calls"
        )

        semaphore = asyncio.Semaphore(CONCURRENT)

        async def one() -> None:
            async with semaphore:
                await runtime.invoke(function, request)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(CONCURRENT_CALLS)))
        elapsed = time.perf_counter() - started
        print(f"invoke, warm, {CONCURRENT} in flight: {CONCURRENT_CALLS / elapsed:,.0f} calls/s")

        await asyncio.sleep(1)
        pids = runtime.worker_pids()
        fresh, used = pids[("contract", "first", 1)], pids[("contract", "second", 1)]
        print(f"idle warm worker RSS: {rss_mib(fresh):.1f} MiB after check() only, ", end="")
        print(f"{rss_mib(used):.1f} MiB after {SEQUENTIAL + 100 + CONCURRENT_CALLS:,} calls")
    finally:
        await runtime.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(main(Path(directory)))
