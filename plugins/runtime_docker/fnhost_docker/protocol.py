"""The engine's attach stream to a function container, which carries the Deno worker's
frames (`fnhost_deno_worker.protocol`).

fnhost writes frames to the container's stdin and reads them from its stdout, both attached
through the engine (so no port is published and a remote engine works the same). Without a
TTY the engine multiplexes the container's stdout and stderr on the attach stream in its own
chunks (`u8 stream | 3 zero bytes | u32 BE size | payload`); `AttachedStream` undoes that.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from fnhost_deno_worker.protocol import FrameParser, ProtocolError, WorkerMessage

ENGINE_CHUNK = struct.Struct(">BxxxI")
STDOUT, STDERR = 1, 2


class AttachedStream(asyncio.Protocol):
    """The engine's attach connection to one container, parsed where it arrives: the HTTP
    upgrade, then the engine's chunks, stdout reassembled into frames handed to `on_frame`
    (no task or copy per frame beyond the body's), stderr kept as a tail for diagnostics.

    `upgraded` resolves once the engine switched protocols; `closed` when the connection
    ends (the container exited, or it was closed here). A broken frame closes the
    connection and resolves `closed` with `ProtocolError`.
    """

    def __init__(
        self,
        on_frame: Callable[[WorkerMessage, bytes], None],
        frame_limit: int,
        stderr_tail_bytes: int = 4096,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.stderr_tail = b""
        self.transport: asyncio.Transport | None = None
        self._on_frame = on_frame
        self._frames = FrameParser(frame_limit)
        self._tail_bytes = stderr_tail_bytes
        self._raw = bytearray()
        self._writable = asyncio.Event()
        self._writable.set()

    # ---- fnhost -> container (its stdin is not multiplexed) -------------------------

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    async def drain(self) -> None:
        """Wait while the engine is not taking what was written."""
        await self._writable.wait()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ---- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("the engine closed the attach stream"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._raw += data
        try:
            if not self.upgraded.done() and not self._upgrade():
                return
            self._split()
        except ProtocolError as exc:
            if not self.closed.done():
                self.closed.set_exception(exc)
            self.close()

    def _upgrade(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            if len(self._raw) > 65536:
                raise ProtocolError("the engine's answer to attach has no end")
            return False
        status = bytes(self._raw[: self._raw.find(b"\r\n")])
        del self._raw[: end + 4]
        if b" 101 " not in status and b" 200 " not in status:
            error = ConnectionError(status.decode(errors="replace"))
            self.upgraded.set_exception(error)
            raise ProtocolError(f"attach refused: {error}")
        self.upgraded.set_result(None)
        return True

    def _split(self) -> None:
        raw, position = self._raw, 0
        while len(raw) - position >= ENGINE_CHUNK.size:
            kind, size = ENGINE_CHUNK.unpack_from(raw, position)
            start = position + ENGINE_CHUNK.size
            if len(raw) - start < size:
                break
            if kind == STDOUT:
                for message, body in self._frames.feed(bytes(raw[start : start + size])):
                    self._on_frame(message, body)
            elif kind == STDERR:
                tail = self.stderr_tail + bytes(raw[start : start + size])
                self.stderr_tail = tail[-self._tail_bytes :]
            position = start + size
        del raw[:position]
