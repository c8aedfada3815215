"""Helpers shared by the deno runtime's tests: a started runtime, and process inspection."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fnhost_deno.plugin
import fnhost_sql.plugin
from fnhost.platform import Platform
from fnhost.plugins import create_plugin_manager
from fnhost.testing import make_config
from fnhost_deno.runtime import DenoRuntime


@asynccontextmanager
async def deno_runtime(
    data_dir: Path, *, plugins: tuple[Any, ...] = (), **deno: Any
) -> AsyncIterator[DenoRuntime]:
    """A started "deno" runtime built the way the core builds it, stopped afterwards.
    `plugins` are extra plugin objects (a fake trigger, say) registered on its platform;
    of the installed plugins only this one and the default store are loaded, so these
    tests do not depend on the state of the others."""
    config = make_config(data_dir, runtime={"use": "deno", "deno": deno})
    pm = create_plugin_manager(
        load_entry_points=False, extra=[fnhost_deno.plugin, fnhost_sql.plugin, *plugins]
    )
    platform = Platform(config, pm)
    runtime = platform.runtime
    assert isinstance(runtime, DenoRuntime)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def deno_pids(root: Path) -> set[int]:
    """Every live Deno worker whose command line points into `root`."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv[0].endswith(b"deno") and str(root).encode() in b" ".join(argv):
            pids.add(int(entry.name))
    return pids


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def environment_of(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def gone(pid: int) -> Callable[[], bool]:
    return lambda: not os.path.exists(f"/proc/{pid}")


def only_pid(runtime: DenoRuntime) -> int:
    pids = [pid for pool in runtime.pool_pids().values() for pid in pool]
    assert len(pids) == 1, pids
    return pids[0]
