"""The frames exchanged with a function container's bootstrap, and the engine's attach stream
that carries them.

fnhost writes frames to the container's stdin and reads them from its stdout, both attached
through the engine (so no port is published and a remote engine works the same). A frame is
`u32 BE header length | u32 BE body length | JSON header | raw body`: the header is a small
msgspec-encoded message, the body stays raw bytes. Without a TTY the engine multiplexes the
container's stdout and stderr on the attach stream in its own chunks
(`u8 stream | 3 zero bytes | u32 BE size | payload`); `AttachedStream` undoes that.
`bootstrap.ts` is the other end of this module.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import msgspec

from fnhost.models import LogLine, Outcome

PREFIX = struct.Struct(">II")
ENGINE_CHUNK = struct.Struct(">BxxxI")
STDOUT, STDERR = 1, 2


class ProtocolError(Exception):
    """The container sent something that is not a valid frame; it cannot be trusted further."""


# ---- fnhost -> container ------------------------------------------------------------


class Init(msgspec.Struct, tag="init", tag_field="t"):
    """First frame: the function's code and its own env vars."""

    code: str
    env: dict[str, str]
    body_limit: int
    frame_limit: int


class Invoke(msgspec.Struct, tag="invoke", tag_field="t"):
    id: int
    method: str
    url: str
    headers: list[tuple[str, str]]
    trigger: dict[str, Any]
    user: dict[str, Any] | None


class Cancel(msgspec.Struct, tag="cancel", tag_field="t"):
    """The invocation is past its timeout: abort it and answer with its logs so far."""

    id: int


# ---- container -> fnhost ------------------------------------------------------------


class Ready(msgspec.Struct, tag="ready", tag_field="t"):
    rss: int = 0


class LoadError(msgspec.Struct, tag="load_error", tag_field="t"):
    message: str


class Result(msgspec.Struct, tag="result", tag_field="t"):
    """The function's answer: the whole body follows the header, or, with `stream`, only
    the status and headers; then the body comes in Chunk frames, closed by an End frame."""

    id: int
    outcome: Outcome
    status: int = 200
    headers: list[tuple[str, str]] = msgspec.field(default_factory=list)
    error: str | None = None
    logs: list[LogLine] = msgspec.field(default_factory=list)
    rss: int = 0  # the Deno process's RSS in bytes after the call
    pending: bool = False  # waitUntil work still running; a Settled frame follows
    stream: bool = False


class Chunk(msgspec.Struct, tag="chunk", tag_field="t"):
    """A piece of a streamed body (the frame's body), as the function produced it."""

    id: int


class End(msgspec.Struct, tag="end", tag_field="t"):
    """The end of a streamed body: how the invocation ended, and its logs."""

    id: int
    outcome: Outcome
    error: str | None = None
    logs: list[LogLine] = msgspec.field(default_factory=list)
    rss: int = 0
    pending: bool = False


class Cancelled(msgspec.Struct, tag="cancelled", tag_field="t"):
    id: int
    logs: list[LogLine] = msgspec.field(default_factory=list)


class Settled(msgspec.Struct, tag="settled", tag_field="t"):
    """Every waitUntil promise of that invocation has settled; `logs` are the console lines
    of that work printed after the result was sent."""

    id: int
    logs: list[LogLine] = msgspec.field(default_factory=list)


class Publish(msgspec.Struct, tag="publish", tag_field="t"):
    """`ctx.publish(channel, data)` of an invocation (also from its waitUntil work)."""

    id: int
    channel: str
    data: Any = None


ContainerMessage = Ready | LoadError | Result | Chunk | End | Cancelled | Settled | Publish

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ContainerMessage)


def encode(message: Init | Invoke | Cancel, body: bytes = b"") -> bytes:
    """One frame, ready to write."""
    header = _encoder.encode(message)
    return b"".join((PREFIX.pack(len(header), len(body)), header, body))


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
        on_frame: Callable[[ContainerMessage, bytes], None],
        frame_limit: int,
        stderr_tail_bytes: int = 4096,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.stderr_tail = b""
        self.transport: asyncio.Transport | None = None
        self._on_frame = on_frame
        self._frame_limit = frame_limit
        self._tail_bytes = stderr_tail_bytes
        self._raw = bytearray()
        self._stdout = bytearray()
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
            self._frames()
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
                self._stdout += raw[start : start + size]
            elif kind == STDERR:
                tail = self.stderr_tail + bytes(raw[start : start + size])
                self.stderr_tail = tail[-self._tail_bytes :]
            position = start + size
        del raw[:position]

    def _frames(self) -> None:
        out, position = self._stdout, 0
        while len(out) - position >= PREFIX.size:
            header_length, body_length = PREFIX.unpack_from(out, position)
            if header_length + body_length > self._frame_limit:
                raise ProtocolError(
                    f"frame of {header_length + body_length} bytes exceeds the limit"
                )
            start = position + PREFIX.size
            end = start + header_length + body_length
            if len(out) < end:
                break
            try:
                message = _decoder.decode(out[start : start + header_length])
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"malformed frame header: {exc}") from None
            self._on_frame(message, bytes(out[start + header_length : end]))
            position = end
        del out[:position]
