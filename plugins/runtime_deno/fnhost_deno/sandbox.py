"""How a worker process is confined: its command line, its environment, its lifetime.

Deno permissions do the confinement: network only, plus reading the function's own code
file (a dynamic import needs it). No read/write elsewhere, no subprocesses, no FFI, no
system info, no environment access: the function's env vars reach it over the transport
and a `Deno.env` shim in the bootstrap, so no variable of the function (LD_PRELOAD,
DENO_DIR, ...) can change how the process itself runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fnhost_deno_worker.worker import deno_run_arguments

if TYPE_CHECKING:
    from fnhost_deno.worker import WorkerSettings

_PR_SET_PDEATHSIG = 1
# Resolved in the parent: the child, between fork and exec, must not load libraries.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def deno_command(settings: WorkerSettings, code_file: Path, memory_limit_mb: int) -> list[str]:
    return [
        settings.deno,
        *deno_run_arguments(
            str(settings.bootstrap),
            memory_limit_mb,
            allow_read=str(code_file),
            v8_flags=settings.v8_flags,
        ),
    ]


def deno_environment(settings: WorkerSettings) -> dict[str, str]:
    """A clean environment: nothing of fnhost's own (it holds secrets) is inherited."""
    return {
        "DENO_DIR": str(settings.deno_dir),
        "DENO_NO_UPDATE_CHECK": "1",
        "DENO_NO_PROMPT": "1",
        "NO_COLOR": "1",
    }


def set_parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn making the kernel SIGKILL the worker when fnhost dies, however it dies."""
    if _prctl is None:
        return None
    prctl = _prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec
