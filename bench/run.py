"""fnhost's benchmark: fnhost and the alternatives side by side, in one run, on loopback.

    make bench                      # = uv run python bench/run.py
    uv run python bench/run.py --duration 5 --functions 50   # shorter

Prints, from servers started here as real processes:
  (a) warm calls through fnhost (/v1/{app}/fn/hello): p50/p99 latency at concurrency 1,
      throughput (and p50/p99) at concurrency 32;
  (b) the same against a bare Litestar hello world, under uvicorn configured exactly as
      `fnhost serve` runs it, and under granian (DESIGN section 9: the faster is the baseline);
  (c) the same against a bare Deno.serve hello world;
  (d) cold start: the first call after a deploy with pre-warm off, p50/p95 over 20 functions;
  (e) deploy latency (POST including the code check), p50/p95;
  (f) RSS of one warm idle worker, and of fnhost plus all its workers with 200 deployed
      functions and max_warm = 20;
then each target of issue 3, met or missed. The load generator is wrk (-t1; Debian's
`apt-get install -y wrk`); the one-shot figures (d, e) use a keep-alive http.client
connection, whose own overhead is printed alongside.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
APPS = BENCH / "apps"
PYTHON = sys.executable
ADMIN_KEY = "fnh_bench-admin-key-0123456789abcdefghijklmnopqrstuvwxyz"
HELLO = (
    'export default () => new Response("Hello, world!", '
    '{ headers: { "content-type": "text/plain" } });'
)
MiB = 1024 * 1024
RECYCLE_IDLE_SECONDS = 5


# ---- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(name: str, argv: list[str], port: int, probe: str, **popen: object) -> Iterator[int]:
    """Run a server until the block ends; yield its pid once `probe` answers 200."""
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **popen,  # type: ignore[call-overload]
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                sys.exit(f"{name} exited at start:\n{log.read().decode(errors='replace')}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", probe)
                if connection.getresponse().status == 200:
                    break
            if time.monotonic() > deadline:
                sys.exit(f"{name} did not answer on port {port}")
            time.sleep(0.1)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS from /proc/<pid>/status, or Pss from smaps_rollup (shared pages split)."""
    source = "smaps_rollup" if field == "Pss" else "status"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def deno_workers(fnhost_pid: int) -> dict[int, str]:
    """The Deno workers of an fnhost process: pid -> "app/function"."""
    workers = {}
    for pid in descendants(fnhost_pid):
        match = re.search(r"/functions/([^/ ]+)/([^/ ]+)/[0-9a-f]+/handler\.ts", cmdline(pid))
        if match:
            workers[pid] = f"{match[1]}/{match[2]}"
    return workers


# ---- load and clients ---------------------------------------------------------------


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # CPU time of the server (and its workers) per request


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, connections: int, seconds: float) -> Load:
    """One wrk run (one thread), read through bench/apps/report.lua."""
    argv = [
        WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(APPS / "report.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"^BENCH (.*)$", out, re.M)
    if match is None:
        sys.exit(f"wrk printed no result for {url}:\n{out}")
    fields = {key: float(value) for key, value in re.findall(r"(\w+)=([\d.]+)", match[1])}
    return Load(
        rps=fields["requests"] / (fields["duration_us"] / 1e6),
        p50_ms=fields["p50"] / 1000,
        p99_ms=fields["p99"] / 1000,
        errors=int(fields["non2xx"] + fields["socket_errors"]),
    )


class Client:
    """A keep-alive HTTP/1.1 connection to fnhost's REST API."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed the idle keep-alive connection: reconnect once.
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def timed(self, method: str, path: str, body: object = None, expect: int = 200) -> float:
        started = time.perf_counter()
        status, content = self.request(method, path, body)
        elapsed = (time.perf_counter() - started) * 1000
        if status != expect:
            sys.exit(f"{method} {path}: {status} {content[:300]!r}")
        return elapsed

    def deploy(self, name: str, code: str) -> float:
        return self.timed("POST", "/v1/bench/functions", {"name": name, "code": code}, 201)


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


# ---- the servers --------------------------------------------------------------------


def fnhost_argv(root: Path, port: int, prewarm: bool, max_warm: int) -> list[str]:
    config = root / f"fnhost-{port}.toml"
    config.write_text(
        f"""[server]
host = "127.0.0.1"
port = {port}
data_dir = "{root / f"data-{port}"}"
admin_key = "{ADMIN_KEY}"

[limits]  # off: the benchmark measures the request path, not the rate limiter's 429s
calls_per_second_per_app = 0
management_per_second_per_app = 0
max_concurrent_per_function = 0

[runtime]
use = "deno"

[runtime.deno]
max_warm = {max_warm}
prewarm = {str(prewarm).lower()}
recycle_idle_seconds = {RECYCLE_IDLE_SECONDS}  # 30 by default; shorter to keep the run short
"""
    )
    return [PYTHON, "-m", "fnhost.cli", "--config", str(config), "serve"]


def fnhost(
    root: Path, prewarm: bool = True, max_warm: int = 20
) -> tuple[int, contextlib.AbstractContextManager[int]]:
    port = free_port()
    argv = fnhost_argv(root, port, prewarm, max_warm)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FNHOST_")}
    return port, serving("fnhost", argv, port, "/health", cwd=root, env=env)


def measure(pid: int, url: str, seconds: float) -> dict[str, Load]:
    """Warm up, then concurrency 1 and 32; the CPU time of `pid` and its descendants
    during the concurrency-32 run is charged to its requests."""
    wrk(url, 32, min(seconds, 3))  # warm-up: JITs, caches, connection pools
    single = wrk(url, 1, seconds)
    pids = [pid, *descendants(pid)]
    before = cpu_seconds(pids)
    many = wrk(url, 32, seconds)
    many.cpu_us = (cpu_seconds(pids) - before) / (many.rps * seconds) * 1e6
    return {"c1": single, "c32": many}


# ---- the run ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--functions", type=int, default=200, help="deployed for (f)")
    parser.add_argument("--cold", type=int, default=20, help="functions for (d)")
    args = parser.parse_args()
    seconds = args.duration
    deno = deno_binary()
    granian = shutil.which("granian", path=str(Path(PYTHON).parent)) or shutil.which("granian")

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average {loadavg()}")
    print(f"load generator: {WRK} ({wrk_version()}), 1 thread; {seconds:g} s per run")
    print(f"deno {deno_version(deno)}; python {sys.version.split()[0]}\n")

    rows: dict[str, dict[str, Load]] = {}
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fnhost-bench-") as tmp:
        root = Path(tmp)

        # (a), (e), (f) on one fnhost process with pre-warm on and max_warm = 20
        port, server = fnhost(root)
        with server as pid:
            client = Client(port)
            client.deploy("hello", HELLO)
            rows["fnhost /v1/bench/fn/hello"] = measure(
                pid, f"http://127.0.0.1:{port}/v1/bench/fn/hello", seconds
            )
            figures.update(memory_figures(pid, client, root, args.functions))
        figures["deno_left"] = len(deno_pids_under(root))

        # (b) bare Litestar: uvicorn as `fnhost serve` runs it, then granian
        port = free_port()
        argv = [PYTHON, str(APPS / "hello_litestar.py"), str(port)]
        with serving("litestar (uvicorn)", argv, port, "/") as pid:
            rows["Litestar, uvicorn (uvloop, httptools)"] = measure(
                pid, f"http://127.0.0.1:{port}/", seconds
            )
        if granian:
            port = free_port()
            argv = [
                granian, "--interface", "asgi", "--loop", "uvloop", "--workers", "1",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "--no-ws", "bench.apps.hello_litestar:app",
            ]  # fmt: skip
            with serving("litestar (granian)", argv, port, "/", cwd=BENCH.parent) as pid:
                rows["Litestar, granian (1 worker, uvloop)"] = measure(
                    pid, f"http://127.0.0.1:{port}/", seconds
                )

        # (c) bare Deno.serve
        port = free_port()
        argv = [deno, "run", "--quiet", "--allow-net", str(APPS / "hello_deno.ts"), str(port)]
        with serving("Deno.serve", argv, port, "/") as pid:
            rows["Deno.serve"] = measure(pid, f"http://127.0.0.1:{port}/", seconds)

        # (d) cold start on a second fnhost process with pre-warm off
        port, server = fnhost(root, prewarm=False)
        with server:
            figures.update(cold_starts(Client(port), args.cold))

    print_table(rows)
    print_figures(figures)
    print(f"\nload average at the end: {loadavg()}")
    print_targets(rows, figures)


def memory_figures(pid: int, client: Client, root: Path, functions: int) -> dict[str, float]:
    """(e) and (f): idle worker RSS, then deploy `functions` more and sum every RSS."""
    figures: dict[str, float] = {}
    time.sleep(3)  # idle
    hello = [p for p, name in deno_workers(pid).items() if name == "bench/hello"]
    figures["rss_hello_used"] = memory_kib(hello[0]) / 1024 if hello else 0
    # Idle past recycle_idle_seconds, the worker that kept the load's memory is replaced.
    deadline = time.monotonic() + RECYCLE_IDLE_SECONDS + 10
    recycled: list[int] = []
    while not recycled and time.monotonic() < deadline:
        time.sleep(0.5)
        recycled = [
            p for p, name in deno_workers(pid).items() if name == "bench/hello" and p not in hello
        ]
    time.sleep(0.5)
    figures["rss_hello_idle"] = memory_kib(recycled[0]) / 1024 if recycled else 0
    client.deploy("fresh", HELLO.replace("world", "fresh world"))
    time.sleep(1)
    fresh = [p for p, name in deno_workers(pid).items() if name == "bench/fresh"]
    figures["rss_fresh"] = memory_kib(fresh[0]) / 1024 if fresh else 0

    deploys = [
        client.deploy(f"fn{i:03}", HELLO.replace("world", f"world {i}")) for i in range(functions)
    ]
    calls = [client.timed("GET", f"/v1/bench/fn/fn{i:03}") for i in range(functions)]
    figures["deploy_p50"] = percentile(deploys, 50)
    figures["deploy_p95"] = percentile(deploys, 95)
    figures["deploys"] = len(deploys)
    figures["call_after_deploy_p50"] = percentile(calls, 50)
    time.sleep(2)
    workers = deno_workers(pid)
    figures["functions"] = functions + 2
    figures["workers"] = len(workers)
    figures["rss_fnhost"] = memory_kib(pid) / 1024
    figures["rss_workers"] = sum(memory_kib(p) for p in workers) / 1024
    figures["pss_total"] = sum(memory_kib(p, "Pss") for p in (pid, *workers)) / 1024
    figures["rss_total"] = figures["rss_fnhost"] + figures["rss_workers"]
    return figures


def cold_starts(client: Client, count: int) -> dict[str, float]:
    """(d): deploy `count` functions with pre-warm off, then time the first call of each."""
    for i in range(count):
        client.deploy(f"cold{i:02}", HELLO.replace("world", f"cold world {i}"))
    time.sleep(1)  # the check()'s workers are gone
    cold = [client.timed("GET", f"/v1/bench/fn/cold{i:02}") for i in range(count)]
    warm = [client.timed("GET", "/v1/bench/fn/cold00") for _ in range(200)]
    health = [client.timed("GET", "/health") for _ in range(200)]
    return {
        "cold_p50": percentile(cold, 50),
        "cold_p95": percentile(cold, 95),
        "cold_max": max(cold),
        "cold_n": count,
        "client_warm_p50": percentile(warm, 50),
        "client_health_p50": percentile(health, 50),
    }


def deno_pids_under(root: Path) -> list[int]:
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and str(root) in cmdline(int(entry.name))
        and "deno" in cmdline(int(entry.name)).split(" ")[0]
    ]


# ---- output -------------------------------------------------------------------------


def print_table(rows: dict[str, dict[str, Load]]) -> None:
    print("(a)-(c) warm hello world, side by side (CPU/req: server and its workers, c=32)")
    print(
        f"{'':40} {'c=1 p50':>9} {'c=1 p99':>9} {'c=32 req/s':>11} {'c=32 p50':>9}"
        f" {'c=32 p99':>9} {'CPU/req':>8}"
    )
    for name, runs in rows.items():
        one, many = runs["c1"], runs["c32"]
        errors = one.errors + many.errors
        print(
            f"{name:40} {one.p50_ms:7.3f}ms {one.p99_ms:7.3f}ms {many.rps:11,.0f}"
            f" {many.p50_ms:7.2f}ms {many.p99_ms:7.2f}ms {many.cpu_us:6.0f}us"
            + (f"  ({errors} errors!)" if errors else "")
        )


def print_figures(f: dict[str, float]) -> None:
    print(
        f"\n(d) cold start, first call after deploy (pre-warm off), {f['cold_n']:.0f} functions: "
        f"p50 {f['cold_p50']:.1f} ms, p95 {f['cold_p95']:.1f} ms, max {f['cold_max']:.1f} ms"
    )
    print(
        f"    (client overhead: a warm call {f['client_warm_p50']:.2f} ms p50, "
        f"GET /health {f['client_health_p50']:.2f} ms p50, same connection)"
    )
    print(
        f"(e) deploy (POST /v1/bench/functions, code check and pre-warm included), "
        f"{f['deploys']:.0f} functions: p50 {f['deploy_p50']:.1f} ms, p95 {f['deploy_p95']:.1f} ms"
    )
    print(
        f"(f) one warm idle worker: {f['rss_hello_used']:.1f} MiB RSS right after the load "
        f"runs, {f['rss_hello_idle']:.1f} MiB once idle {RECYCLE_IDLE_SECONDS} s (recycled: "
        f"recycle_idle_seconds), {f['rss_fresh']:.1f} MiB fresh after its deploy"
    )
    print(
        f"    {f['functions']:.0f} deployed functions, max_warm 20, each called once: "
        f"{f['workers']:.0f} workers; RSS fnhost {f['rss_fnhost']:.0f} MiB + workers "
        f"{f['rss_workers']:.0f} MiB = {f['rss_total']:.0f} MiB (PSS {f['pss_total']:.0f} MiB)"
    )
    print(f"    Deno processes left after fnhost's shutdown: {f['deno_left']:.0f}")


def print_targets(rows: dict[str, dict[str, Load]], f: dict[str, float]) -> None:
    fnhost_row = next(runs for name, runs in rows.items() if name.startswith("fnhost"))
    litestar = {name: runs["c32"].rps for name, runs in rows.items() if name.startswith("Litestar")}
    baseline = max(litestar, key=lambda name: litestar[name])
    ratio = fnhost_row["c32"].rps / litestar[baseline] * 100
    warm_p50 = fnhost_row["c1"].p50_ms
    targets = [
        (f"warm throughput, % of {baseline}", f"{ratio:.0f}%", ">= 60%", ratio >= 60),
        ("warm p50 latency, concurrency 1", f"{warm_p50:.3f} ms", "<= 1.0 ms", warm_p50 <= 1.0),
        ("cold start p50", f"{f['cold_p50']:.1f} ms", "<= 100 ms", f["cold_p50"] <= 100),
        ("cold start p95", f"{f['cold_p95']:.1f} ms", "<= 200 ms", f["cold_p95"] <= 200),
        ("deploy p50", f"{f['deploy_p50']:.1f} ms", "<= 150 ms", f["deploy_p50"] <= 150),
        (
            "one warm idle worker RSS (idle, after the load runs)",
            f"{f['rss_hello_idle']:.1f} MiB",
            "<= 40 MiB",
            0 < f["rss_hello_idle"] <= 40,
        ),
        (
            f"{f['functions']:.0f} functions, max_warm 20, total RSS",
            f"{f['rss_total']:.0f} MiB",
            "< 1024 MiB",
            f["rss_total"] < 1024,
        ),
    ]
    print("\ntargets (issue 3)")
    for name, figure, goal, met in targets:
        print(f"  {name:58} {figure:>10}  goal {goal:11} {'met' if met else 'MISSED'}")


# ---- the environment ----------------------------------------------------------------


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("bench/run.py needs wrk: apt-get install -y wrk")
    return path


def deno_binary() -> str:
    import deno

    return str(deno.find_deno_bin())


def deno_version(deno: str) -> str:
    return subprocess.run([deno, "--version"], capture_output=True, text=True).stdout.split()[1]


def wrk_version() -> str:
    out = subprocess.run([WRK, "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split(" [")[0].strip()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


WRK = find_wrk()

if __name__ == "__main__":
    main()
