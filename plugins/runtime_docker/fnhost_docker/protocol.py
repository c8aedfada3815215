"""The frames exchanged with a function container's bootstrap, and the engine's attach stream
that carries them.

fnhost writes frames to the container's stdin and reads them from its stdout, both attached
through the engine (so no port is published and a remote engine works the same). A frame is
`u32 BE header length | u32 BE body length | JSON header | raw body`: the header is a small
msgspec-encoded message, the body stays raw bytes. Without a TTY the engine multiplexes the
container's stdout and stderr on the attach stream in its own chunks
(`u8 stream | 3 zero bytes | u32 BE size | payload`); `Demultiplexer` undoes that.
`bootstrap.ts` is the other end of this module.
"""

from __future__ import annotations

import asyncio
import struct
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
    """Every waitUntil promise of that invocation has settled."""

    id: int


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


async def read_message(
    stream: asyncio.StreamReader, frame_limit: int
) -> tuple[ContainerMessage, bytes] | None:
    """The next message and its body, or None at end of stream."""
    try:
        prefix = await stream.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError:
        return None
    header_length, body_length = PREFIX.unpack(prefix)
    if header_length + body_length > frame_limit:
        raise ProtocolError(f"frame of {header_length + body_length} bytes exceeds the limit")
    try:
        header = await stream.readexactly(header_length)
        body = await stream.readexactly(body_length) if body_length else b""
    except asyncio.IncompleteReadError:
        return None
    try:
        return _decoder.decode(header), body
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed frame header: {exc}") from None


class Demultiplexer:
    """Splits the engine's attach stream into the container's stdout (fed to `stdout`, a
    StreamReader the frames are read from) and the tail of its stderr."""

    def __init__(self, attach: asyncio.StreamReader, stderr_tail_bytes: int = 4096) -> None:
        self.attach = attach
        self.stdout = asyncio.StreamReader(limit=2**20)
        self.stderr_tail = b""
        self._tail_bytes = stderr_tail_bytes

    async def run(self) -> None:
        """Copy until the stream ends (the container exited, or the connection closed)."""
        try:
            while True:
                head = await self.attach.readexactly(ENGINE_CHUNK.size)
                kind, size = ENGINE_CHUNK.unpack(head)
                payload = await self.attach.readexactly(size)
                if kind == STDOUT:
                    self.stdout.feed_data(payload)
                elif kind == STDERR:
                    self.stderr_tail = (self.stderr_tail + payload)[-self._tail_bytes :]
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.stdout.feed_eof()
