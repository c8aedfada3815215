"""The docker runtime beside the deno runtime, measured in one run on this machine.

    uv run python bench/docker_bench.py            # needs a Docker engine at DOCKER_HOST
    uv run python bench/docker_bench.py --calls 500 --cold 5    # shorter

Both runtimes are driven the same way, through `Runtime.invoke` in this process (no HTTP:
the figures are the runtimes' own, without the REST API's request path, which adds the
same to both). For each runtime, one after the other:
  - warm calls of a hello world: p50/p99 latency one at a time, throughput with 50 in flight;
  - cold start: the first call of a function that has no warm worker (for docker: create
    the container, start it, load the module, answer), p50/p95 over --cold functions;
  - memory of one warm worker: the Deno process's RSS (both), and for docker the
    container's memory as `docker stats` counts it (cgroup usage less inactive file cache);
then the issue's targets for the docker runtime (warm p50 <= 2 ms, cold p50 <= 800 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fnhost.contracts import Runtime
from fnhost.platform import Platform
from fnhost.testing import make_config
from fnhost.testing.runtime_contract import HELLO, make_request, make_spec

CONCURRENT = 50
MiB = 1024 * 1024
TARGET_WARM_P50_MS = 2.0
TARGET_COLD_P50_MS = 800.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * p))]


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def container_memory_mib(client: Any, container_id: str) -> float:
    """What `docker stats` shows: usage less the inactive file cache (cgroup v1 or v2)."""
    stats = client.api.stats(container_id, stream=False)["memory_stats"]
    detail = stats.get("stats", {})
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return float(stats["usage"] - cache) / MiB


async def measure(runtime: Runtime, calls: int, cold: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    function = make_spec(HELLO, name="hello")
    request = make_request()
    await runtime.check(function)
    fresh = await runtime.invoke(function, request)
    figures["rss_fresh"] = fresh.memory_mb
    for _ in range(200):  # settle: JIT, allocator
        await runtime.invoke(function, request)

    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await runtime.invoke(function, request)
        latencies.append((time.perf_counter() - started) * 1000)
        assert result.outcome == "ok", result.error
    figures["warm_p50"] = statistics.median(latencies)
    figures["warm_p99"] = percentile(latencies, 0.99)

    semaphore = asyncio.Semaphore(CONCURRENT)

    async def one() -> None:
        async with semaphore:
            await runtime.invoke(function, request)

    total = calls * 10
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    figures["throughput"] = total / (time.perf_counter() - started)
    figures["rss_used"] = (await runtime.invoke(function, request)).memory_mb

    colds = []
    for index in range(cold):
        started = time.perf_counter()
        result = await runtime.invoke(make_spec(HELLO, name=f"cold{index}"), request)
        colds.append((time.perf_counter() - started) * 1000)
        assert result.outcome == "ok", result.error
    figures["cold_p50"] = statistics.median(colds)
    figures["cold_p95"] = percentile(colds, 0.95)

    await asyncio.sleep(1)
    if runtime.name == "docker":
        ids = runtime.container_ids()  # type: ignore[attr-defined]
        client = runtime.client  # type: ignore[attr-defined]
        figures["box_used"] = container_memory_mib(client, ids[("contract", "hello", 1)])
        figures["box_fresh"] = container_memory_mib(client, ids[("contract", "cold0", 1)])
    else:
        pids = runtime.worker_pids()  # type: ignore[attr-defined]
        figures["box_used"] = vm_rss_mib(pids[("contract", "hello", 1)])
        figures["box_fresh"] = vm_rss_mib(pids[("contract", "cold0", 1)])
    return figures


async def run(name: str, data_dir: Path, calls: int, cold: int) -> dict[str, float]:
    config = make_config(data_dir, runtime={"use": name, name: {"max_warm": cold + 5}})
    runtime = Platform(config).runtime
    await runtime.start()
    try:
        return await measure(runtime, calls, cold)
    finally:
        await runtime.stop()


ROWS = [
    ("warm call p50 (ms)", "warm_p50", "{:.3f}"),
    ("warm call p99 (ms)", "warm_p99", "{:.3f}"),
    (f"throughput, {CONCURRENT} in flight (calls/s)", "throughput", "{:,.0f}"),
    ("cold start p50 (ms)", "cold_p50", "{:.0f}"),
    ("cold start p95 (ms)", "cold_p95", "{:.0f}"),
    ("Deno RSS, fresh worker (MiB)", "rss_fresh", "{:.1f}"),
    ("Deno RSS, after the calls (MiB)", "rss_used", "{:.1f}"),
    ("worker memory, fresh (MiB) *", "box_fresh", "{:.1f}"),
    ("worker memory, after the calls (MiB) *", "box_used", "{:.1f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential warm calls")
    parser.add_argument("--cold", type=int, default=15, help="cold starts measured")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in ("deno", "docker"):
            print(f"measuring the {name} runtime ...", flush=True)
            results[name] = asyncio.run(run(name, Path(directory) / name, args.calls, args.cold))
    print()
    print(f"{'':44}{'deno':>12}{'docker':>12}")
    for label, key, fmt in ROWS:
        print(f"{label:44}{fmt.format(results['deno'][key]):>12}", end="")
        print(f"{fmt.format(results['docker'][key]):>12}")
    print("* deno: the worker process's VmRSS; docker: the container's cgroup memory less")
    print("  inactive file cache (as `docker stats` shows it)")
    print()
    docker = results["docker"]
    for label, value, target in (
        ("warm p50", docker["warm_p50"], TARGET_WARM_P50_MS),
        ("cold start p50", docker["cold_p50"], TARGET_COLD_P50_MS),
    ):
        verdict = "met" if value <= target else "MISSED"
        print(f"docker {label}: {value:.3f} ms, target <= {target:g} ms: {verdict}")


if __name__ == "__main__":
    main()
