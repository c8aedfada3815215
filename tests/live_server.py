"""A real `fnhost serve` subprocess, for tests that need what an in-process app cannot give:
raw sockets, uvicorn's own HTTP parsing, signals, a crash and a restart on the same data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
READY_LINE = "fnhost is listening on"
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """`python -m fnhost.cli serve` in `workdir`, configured through FNHOST_* variables."""

    def __init__(self, workdir: Path, settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.settings = {
            "FNHOST_SERVER__HOST": "127.0.0.1",
            "FNHOST_SERVER__PORT": str(self.port),
            "FNHOST_SERVER__DATA_DIR": str(self.data_dir),
            "FNHOST_SERVER__ADMIN_KEY": ADMIN_KEY,
            **(settings or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self) -> LiveServer:
        # Config from the test's own environment must not leak into the server.
        env = {k: v for k, v in os.environ.items() if not (k.startswith("FNHOST_") and "__" in k)}
        env.update(self.settings, NO_COLOR="1", PYTHONUNBUFFERED="1")
        self.lines, self._ready = [], threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fnhost.cli", "serve"],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + START_SECONDS
        # The banner comes from the app's lifespan, just before uvicorn binds the port.
        while not (self._ready.is_set() and self._answers()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"fnhost serve did not start:\n{self.output}")
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        # Drained all the time, so a chatty server never blocks on a full pipe.
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if READY_LINE in line:
                self._ready.set()

    def stop(self, timeout: float = 20) -> int:
        """SIGINT (graceful: records flushed, plugins stopped); SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"fnhost serve did not stop in {timeout} s:\n{self.output}"
            ) from None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would; its Deno workers are killed too."""
        if self.process is None or self.process.poll() is not None:
            return
        workers = child_pids(self.pid)
        self.process.kill()
        self.process.wait(10)
        for pid in workers:  # they get SIGKILL on parent death too; make sure of it
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (every thread's children file)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found.extend(int(p) for p in (task / "children").read_text().split())
            except OSError:
                continue
    except OSError:
        return []
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def deno_workers(server_pid: int) -> list[int]:
    return [pid for pid in child_pids(server_pid) if "deno" in command_line(pid)]


@contextmanager
def live_server(workdir: Path, settings: dict[str, str] | None = None) -> Iterator[LiveServer]:
    server = LiveServer(workdir, settings).start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            server.kill()
