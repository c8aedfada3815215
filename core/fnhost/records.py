"""Invocation records are written with group commit: every caller waits until its
record is durable, and records that arrive while a batch is being written go in
the next batch, so one transaction serves many concurrent invocations.

When the store fails, the batch is kept in memory and retried with backoff; the
callers are released (a function call must not hang on the log store) and the
records are written once the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fnhost.models import InvocationRecord

if TYPE_CHECKING:
    from fnhost.platform import Platform

log = logging.getLogger("fnhost.records")

MAX_BATCH = 500
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
SHUTDOWN_FLUSH_ATTEMPTS = 3


class RecordWriter:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._pending: list[tuple[InvocationRecord, asyncio.Future[None] | None]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="fnhost-record-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _ in range(SHUTDOWN_FLUSH_ATTEMPTS):
            if not self._pending:
                return
            await self._write_batch()
        if self._pending:
            log.error("%d invocation records could not be written at shutdown", len(self._pending))

    @property
    def backlog(self) -> int:
        """Records waiting to be written (non-zero while the store is failing)."""
        return len(self._pending)

    async def append(self, record: InvocationRecord) -> None:
        """Queue a record and wait until it is durable (or the store is failing)."""
        if self._task is None:  # not started (e.g. a plugin test): write directly
            await self._platform.store.append_invocations([record])
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wakeup.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                if not await self._write_batch():
                    delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1]
                    await asyncio.sleep(delay)

    async def _write_batch(self) -> bool:
        batch = self._pending[:MAX_BATCH]
        try:
            await self._platform.store.append_invocations([record for record, _ in batch])
        except Exception as exc:
            self._failures += 1
            log.error(
                "writing %d invocation records failed (%s); will retry",
                len(batch),
                type(exc).__name__,
            )
            for index, (record, future) in enumerate(batch):
                if future is not None and not future.done():
                    future.set_result(None)
                batch[index] = (record, None)
            self._pending[: len(batch)] = batch
            return False
        self._failures = 0
        del self._pending[: len(batch)]
        for _, future in batch:
            if future is not None and not future.done():
                future.set_result(None)
        return True
