"""The frames exchanged with a Deno worker over its stdin/stdout (a local process's pipes,
or a container's, attached through the engine).

A frame is `u32 BE header length | u32 BE body length | JSON header | raw body`: the
header is a small msgspec-encoded message, the body stays raw bytes (no base64), so a
binary request or response body crosses the pipe untouched. `bootstrap.ts` is the other
end of this module.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from fnhost.models import LogLine, Outcome

PREFIX = struct.Struct(">II")


class ProtocolError(Exception):
    """The worker sent something that is not a valid frame; it cannot be trusted further."""


# ---- fnhost -> worker ---------------------------------------------------------------


class Init(msgspec.Struct, tag="init", tag_field="t", omit_defaults=True):
    """First frame: the function's code, as a module to import or as source, and its own
    env vars."""

    env: dict[str, str]
    body_limit: int
    frame_limit: int
    module: str | None = None  # file:// URL of the function's code
    code: str | None = None  # the code itself, for a worker that cannot read fnhost's files


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


# ---- worker -> fnhost ---------------------------------------------------------------


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
    rss: int = 0  # worker RSS in bytes after the call
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


WorkerMessage = Ready | LoadError | Result | Chunk | End | Cancelled | Settled | Publish

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WorkerMessage)


def encode(message: Init | Invoke | Cancel, body: bytes = b"") -> bytes:
    """One frame, ready to write. The body is appended without copying it twice."""
    header = _encoder.encode(message)
    return b"".join((PREFIX.pack(len(header), len(body)), header, body))


class FrameParser:
    """Splits the worker's output into messages, however the pipe cuts it."""

    def __init__(self, frame_limit: int) -> None:
        self.frame_limit = frame_limit
        self._buffer = bytearray()
        self._needed = PREFIX.size  # bytes the next frame needs before parsing is worth it

    def feed(self, data: bytes) -> list[tuple[WorkerMessage, bytes]]:
        """The messages completed by `data`; raise `ProtocolError` on a malformed frame."""
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._needed:
            return []
        messages = []
        offset = 0
        end = len(buffer)
        while end - offset >= PREFIX.size:
            header_length, body_length = PREFIX.unpack_from(buffer, offset)
            size = header_length + body_length
            if size > self.frame_limit:
                raise ProtocolError(f"frame of {size} bytes exceeds the limit")
            if end - offset < PREFIX.size + size:
                break
            start = offset + PREFIX.size
            with memoryview(buffer) as view:
                try:
                    message = _decoder.decode(view[start : start + header_length])
                except msgspec.DecodeError as exc:
                    raise ProtocolError(f"malformed frame header: {exc}") from None
                body = bytes(view[start + header_length : start + size]) if body_length else b""
            messages.append((message, body))
            offset = start + size
        del buffer[:offset]
        remaining = len(buffer)
        self._needed = (
            PREFIX.size + sum(PREFIX.unpack_from(buffer))
            if remaining >= PREFIX.size
            else PREFIX.size
        )
        return messages
