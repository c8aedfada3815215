"""One warm Deno process running one function revision, with many invocations in flight.

The worker's life and its calls are `fnhost_deno_worker.Worker`'s; this is the process
side: spawning `deno run` sandboxed, the code file it imports, the RSS watchdog, and
why a process died.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnhost.errors import Unavailable
from fnhost.models import FunctionSpec
from fnhost_deno.process import WorkerProcess
from fnhost_deno.sandbox import deno_command, deno_environment, set_parent_death_signal
from fnhost_deno_worker.calls import MEMORY_ERROR, Death, MiB
from fnhost_deno_worker.protocol import Init
from fnhost_deno_worker.worker import Worker, last_line, memory_error_in

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


class DenoWorker(Worker):
    """A `deno run` process for one function revision."""

    def __init__(self, function: FunctionSpec, settings: WorkerSettings) -> None:
        super().__init__(
            function,
            settings.body_limit,
            settings.frame_limit,
            rss_limit=(function.memory_limit_mb + settings.rss_allowance_mb) * MiB,
            publish=settings.publish,
        )
        self.settings = settings
        self._process: WorkerProcess | None = None
        self._code_file: Path | None = None
        self._reaper: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def _boot(self) -> None:
        self._code_file = self._write_code()
        try:
            self._process = await WorkerProcess.spawn(
                deno_command(self.settings, self._code_file, self.function.memory_limit_mb),
                self.frame_limit,
                self.dispatch,
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

    def _init_frame(self) -> Init:
        assert self._code_file is not None
        return Init(
            module=self._code_file.as_uri(),
            env=dict(self.function.env),
            body_limit=self.body_limit,
            frame_limit=self.frame_limit,
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

    def _send(self, frame: bytes) -> None:
        if self._process is not None and self._death is None:
            self._process.write(frame)

    async def _drain(self, body_bytes: int) -> None:
        if self._process is not None:
            await self._process.drain()

    def _terminate(self) -> None:
        """Kill the process group."""
        if self._process is not None:
            self._process.kill()

    async def stop(self) -> None:
        """Kill the process and wait until it is reaped."""
        self.kill(Death("crash", "the worker was stopped"))
        await self._await_start()
        if self._reaper is not None:
            await asyncio.shield(self._reaper)

    def rss(self) -> int | None:
        """The process's resident memory in bytes, or None when it is not running."""
        if self._process is None or self._death is not None or not self._process.running:
            return None
        try:
            with open(f"/proc/{self._process.pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None

    def check_memory(self) -> None:
        """Kill the worker if its resident memory is over the function's limit."""
        rss = self.rss()
        if rss is not None and rss > self.rss_limit:
            self.kill(Death("memory", MEMORY_ERROR))

    async def _reap(self, process: WorkerProcess) -> None:
        """Once the process is gone: say why, and end everything still in flight."""
        returncode = await process.exited
        if process.protocol_error is not None and self._death is None:
            self._death = Death("crash", f"the worker broke the protocol: {process.protocol_error}")
        self._ended(self._death or _death_of(returncode, process.stderr_tail))


def _death_of(returncode: int, stderr_tail: bytes) -> Death:
    if memory_error_in(stderr_tail):
        return Death("memory", MEMORY_ERROR)
    if returncode < 0:
        reason = f"worker killed by signal {signal.Signals(-returncode).name}"
    else:
        reason = f"worker exited with code {returncode}"
    line = last_line(stderr_tail)
    return Death("crash", f"{reason}: {line}" if line else reason)
