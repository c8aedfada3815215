"""Invocation records are written with group commit: every caller waits until its
record is durable, and records that arrive while a batch is being written go in
the next batch, so one transaction serves many concurrent invocations.

When the store fails, the batch goes to a local journal (`<data_dir>/records.journal`,
fsynced) and the callers are released: a function call must not hang on the log
store, and an answered invocation is never only in memory. The journal is replayed
into the store once it answers again, and at the next start after a crash. A record
the store refuses for good while it answers (a value it cannot hold) is moved to
`<data_dir>/records.rejected` so that it cannot hold the others back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from fnhost.errors import Conflict, Unavailable
from fnhost.models import InvocationRecord, LogQuery

if TYPE_CHECKING:
    from fnhost.platform import Platform

log = logging.getLogger("fnhost.records")

MAX_BATCH = 500
JOURNAL_FILE = "records.journal"
REJECTED_FILE = "records.rejected"
REPLAY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
# A store that stops answering (a network partition: no error, no reply) is failing too.
# Longer than SQLite's busy timeout (5 s), so that a locked SQLite fails on its own first.
STORE_WRITE_SECONDS = 8.0

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(InvocationRecord)


class RecordWriter:
    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._pending: list[tuple[InvocationRecord, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replayer: asyncio.Task[None] | None = None
        self.journal = Path(platform.config.server.data_dir) / JOURNAL_FILE
        self._replaying = self.journal.with_suffix(".replaying")
        self.rejected = self.journal.with_name(REJECTED_FILE)

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="fnhost-record-writer")
        if self._has_journal():
            self._schedule_replay()

    async def stop(self) -> None:
        for task in (self._task, self._replayer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._replayer = None
        while self._pending:
            await self._write_batch()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._replay(), STORE_WRITE_SECONDS)

    def _has_journal(self) -> bool:
        return self.journal.exists() or self._replaying.exists()

    @property
    def journaled(self) -> int:
        """Records waiting in the journal for the store (non-zero while it is failing)."""
        total = 0
        for path in (self.journal, self._replaying):
            if path.exists():
                with path.open("rb") as handle:
                    total += sum(1 for _ in handle)
        return total

    async def append(self, record: InvocationRecord) -> None:
        """Queue a record and wait until it is durable (in the store, or the journal)."""
        if self._task is None:  # not started (e.g. a plugin's own test): write directly
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
                await self._write_batch()

    async def _write_batch(self) -> None:
        batch = self._pending[:MAX_BATCH]
        del self._pending[: len(batch)]
        records = [record for record, _ in batch]
        try:
            await self._store_write(records)
        except Exception as exc:
            log.error(
                "writing %d invocation records failed (%s: %s); journaling them",
                len(records),
                type(exc).__name__,
                exc,
            )
            try:
                await asyncio.to_thread(self._journal_append, records)
            except OSError:
                log.exception("journaling %d invocation records failed", len(records))
            self._schedule_replay()
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _store_write(self, records: list[InvocationRecord]) -> None:
        await asyncio.wait_for(
            self._platform.store.append_invocations(records), STORE_WRITE_SECONDS
        )

    def _journal_append(self, records: list[InvocationRecord]) -> None:
        self._append_lines(self.journal, [_encoder.encode(r) for r in records])

    @staticmethod
    def _append_lines(path: Path, lines: list[bytes]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    def _schedule_replay(self) -> None:
        if self._replayer is None or self._replayer.done():
            self._replayer = asyncio.create_task(
                self._replay_until_done(), name="fnhost-record-replay"
            )

    async def _replay_until_done(self) -> None:
        attempt = 0
        while self._has_journal():
            try:
                await self._replay()
            except Exception as exc:
                delay = REPLAY_DELAYS[min(attempt, len(REPLAY_DELAYS) - 1)]
                attempt += 1
                log.warning(
                    "store still failing (%s); replaying the journal in %.1f s",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _replay(self) -> None:
        """Move journaled records into the store; records already there are skipped,
        so a crash between the store write and the journal removal duplicates nothing."""
        if not self._has_journal():
            return
        # New failures append to the journal while we replay; take it over first.
        replaying = self._replaying
        if not replaying.exists():
            self.journal.rename(replaying)
        records = []
        for line in replaying.read_bytes().splitlines():
            if not line:
                continue
            try:
                records.append(_decoder.decode(line))
            except msgspec.DecodeError:  # torn by a crash mid-write: keep it aside
                self._reject(line, "undecodable journal line")
        for start in range(0, len(records), MAX_BATCH):
            batch = records[start : start + MAX_BATCH]
            try:
                await self._store_write(batch)
            except (Unavailable, TimeoutError):
                raise
            except Exception:
                # Some were stored before a crash (Conflict), or the store refuses one of
                # them: go one by one, so one record cannot hold back the others.
                for record in batch:
                    await self._replay_one(record)
        replaying.unlink()
        log.info("replayed %d journaled invocation records into the store", len(records))
        if self.journal.exists():
            await self._replay()

    async def _replay_one(self, record: InvocationRecord) -> None:
        try:
            await self._store_write([record])
        except Conflict:
            return  # stored before a crash
        except (Unavailable, TimeoutError):
            raise
        except Exception as exc:
            # Refused for good only if the store answers otherwise; else retry later.
            probe = self._platform.store.query_invocations(
                record.app_id, record.function_name, LogQuery(limit=1)
            )
            await asyncio.wait_for(probe, STORE_WRITE_SECONDS)
            self._reject(_encoder.encode(record), f"{type(exc).__name__}: {exc}")

    def _reject(self, line: bytes, reason: str) -> None:
        log.error(
            "an invocation record cannot be stored (%s); moved to %s: %s",
            reason,
            self.rejected,
            line[:200].decode("utf-8", "replace"),
        )
        self._append_lines(self.rejected, [line])
