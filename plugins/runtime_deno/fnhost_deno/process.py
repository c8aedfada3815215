"""A worker process and its pipes: frames out on stdin, frames in from stdout, stderr kept.

Built on an asyncio subprocess protocol rather than stream readers: frames are parsed in
`pipe_data_received` as the bytes arrive, with no coroutine per frame, and the frames
written during one event loop iteration leave in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any, cast

from fnhost_deno_worker.protocol import FrameParser, ProtocolError, WorkerMessage

STDERR_TAIL_BYTES = 4096
# A frame this big is written at once rather than joined with others.
BATCH_BYTES = 64 * 1024

OnMessage = Callable[[WorkerMessage, bytes], None]


class WorkerProcess(asyncio.SubprocessProtocol):
    """One `deno run` process speaking frames. `exited` resolves with its return code once
    it has exited and its pipes are closed (all its output has been delivered)."""

    def __init__(self, frame_limit: int, on_message: OnMessage) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.stderr_tail = b""
        self.protocol_error: str | None = None
        self._loop = loop
        self._parser = FrameParser(frame_limit)
        self._on_message = on_message
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._batch: list[bytes] = []
        self._writable: asyncio.Future[None] | None = None  # set while the pipe is full

    @classmethod
    async def spawn(
        cls, argv: list[str], frame_limit: int, on_message: OnMessage, **popen: Any
    ) -> WorkerProcess:
        """Start the process (its own session, so killing the group kills it all)."""
        loop = asyncio.get_running_loop()
        _, process = await loop.subprocess_exec(
            lambda: cls(frame_limit, on_message),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **popen,
        )
        return process

    @property
    def pid(self) -> int:
        assert self._transport is not None
        return self._transport.get_pid()

    @property
    def running(self) -> bool:
        return self._transport is not None and self._transport.get_returncode() is None

    # ---- writing -----------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        """Queue a frame; the frames of one event loop iteration go out in one write."""
        if self._stdin is None or self._stdin.is_closing():
            return
        if not self._batch:
            self._loop.call_soon(self._flush)
        self._batch.append(frame)
        if len(frame) >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch or self._stdin is None or self._stdin.is_closing():
            return
        self._stdin.write(batch[0] if len(batch) == 1 else b"".join(batch))

    async def drain(self) -> None:
        """Wait while the worker is not reading its stdin fast enough."""
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def kill(self) -> None:
        """SIGKILL the process group."""
        if self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    # ---- the protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's transports implement these interfaces without the classes.
        self._transport = cast(asyncio.SubprocessTransport, transport)
        self._stdin = cast(asyncio.WriteTransport, self._transport.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        data = cast(bytes, data)
        if fd == 2:
            self.stderr_tail = (self.stderr_tail + data)[-STDERR_TAIL_BYTES:]
            return
        if self.protocol_error is not None:
            return
        try:
            messages = self._parser.feed(data)
        except ProtocolError as exc:
            self.protocol_error = str(exc)
            self.kill()
            return
        for message, body in messages:
            self._on_message(message, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        returncode = None
        if self._transport is not None:
            returncode = self._transport.get_returncode()
            self._transport.close()
        if not self.exited.done():
            self.exited.set_result(returncode if returncode is not None else -signal.SIGKILL)
