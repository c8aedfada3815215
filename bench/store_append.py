"""How long the sql store takes to append one invocation record, read a function, query logs.

    uv run python bench/store_append.py [URL]

Without URL: a SQLite file in a temporary directory. Prints median and p95 per call.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fnhost.models import LogQuery
from fnhost.testing.store_contract import make_function, make_record
from fnhost_sql import SqlStore, SqlStoreConfig

WARMUP = 200
CALLS = 5000


class _Platform:
    """Just enough of a platform for a store: its data_dir."""

    def __init__(self, data_dir: str) -> None:
        self.config = type("Config", (), {"server": type("Server", (), {"data_dir": data_dir})})


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[int(len(ms) * 0.95)]
    return f"{name}: median {statistics.median(ms):.3f} ms, p95 {p95:.3f} ms over {len(ms)} calls"


async def main(url: str | None, data_dir: str) -> None:
    store = SqlStore(SqlStoreConfig(url=url), _Platform(data_dir))  # type: ignore[arg-type]
    await store.start()
    try:
        timings = []
        for n in range(WARMUP + CALLS):
            record = make_record(n)
            started = time.perf_counter()
            await store.append_invocations([record])
            timings.append(time.perf_counter() - started)
        print(f"store {store.url}")
        print(summary("append 1 record", timings[WARMUP:]))

        batch = [make_record(n, name="batch") for n in range(100)]
        started = time.perf_counter()
        await store.append_invocations(batch)
        print(f"append 100 records in one batch: {(time.perf_counter() - started) * 1000:.3f} ms")

        await store.save_function(
            make_function(encrypted_env={"A": "gAAAA-a", "B": "gAAAA-b"}), None
        )
        timings = []
        for _ in range(1000):
            started = time.perf_counter()
            await store.get_function("app1", "hello")
            timings.append(time.perf_counter() - started)
        print(summary("get_function with 2 env vars", timings))

        timings = []
        for _ in range(500):
            started = time.perf_counter()
            await store.query_invocations("app1", "hello", LogQuery(limit=50))
            timings.append(time.perf_counter() - started)
        print(summary("query 50 newest of 5200", timings))

        timings = []
        for _ in range(200):
            started = time.perf_counter()
            await store.function_metrics("app1", "hello")
            timings.append(time.perf_counter() - started)
        print(summary("metrics of 5200 records", timings))
    finally:
        await store.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None, str(Path(directory))))
