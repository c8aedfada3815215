"""The frame protocol's Python side: frames survive any cut of the byte stream."""

from __future__ import annotations

import msgspec
import pytest

from fnhost_deno_worker.protocol import (
    PREFIX,
    Chunk,
    FrameParser,
    Init,
    ProtocolError,
    Ready,
    Result,
    encode,
)


def frame(message: object, body: bytes = b"") -> bytes:
    """A frame as the bootstrap writes it."""
    header = msgspec.json.encode(message)
    return PREFIX.pack(len(header), len(body)) + header + body


def test_frames_are_parsed_however_the_stream_is_cut() -> None:
    body = bytes(range(256)) * 3  # binary, with every byte value
    stream = frame(Ready(rss=1)) + frame(Result(id=7, outcome="ok"), body) + frame(Chunk(id=7))
    for cut in range(1, len(stream)):
        parser = FrameParser(frame_limit=10_000)
        messages = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
        assert [type(message) for message, _ in messages] == [Ready, Result, Chunk], cut
        assert messages[1][1] == body and messages[0][1] == messages[2][1] == b""


def test_byte_by_byte_delivery_yields_each_frame_once() -> None:
    stream = frame(Result(id=1, outcome="error", error="boom"), b"x") * 3
    parser = FrameParser(frame_limit=1000)
    messages = [message for byte in stream for message in parser.feed(bytes([byte]))]
    assert [(m.id, m.error, body) for m, body in messages] == [(1, "boom", b"x")] * 3


def test_a_frame_over_the_limit_is_refused_before_it_is_buffered() -> None:
    parser = FrameParser(frame_limit=100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        parser.feed(PREFIX.pack(10, 200))


def test_a_malformed_header_is_refused() -> None:
    parser = FrameParser(frame_limit=100)
    with pytest.raises(ProtocolError, match="malformed"):
        parser.feed(PREFIX.pack(4, 0) + b"nope")
    with pytest.raises(ProtocolError, match="malformed"):
        FrameParser(100).feed(frame({"t": "no-such-type"}))


def test_init_names_either_a_module_or_the_code_and_omits_the_other() -> None:
    by_file = encode(Init(env={}, body_limit=1, frame_limit=2, module="file:///x/handler.ts"))
    by_code = encode(Init(env={"A": "1"}, body_limit=1, frame_limit=2, code="export default 1"))
    header_length, _ = PREFIX.unpack_from(by_file)
    header = msgspec.json.decode(by_file[PREFIX.size : PREFIX.size + header_length])
    assert header["module"] == "file:///x/handler.ts" and "code" not in header
    header_length, _ = PREFIX.unpack_from(by_code)
    header = msgspec.json.decode(by_code[PREFIX.size : PREFIX.size + header_length])
    assert header["code"] == "export default 1" and "module" not in header
