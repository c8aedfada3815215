"""The WebSocket protocol of fnhost: the JSON frames clients send and the frames they get.

Client frames: `{"type": "event", "event", "data"?, "id"?}`, `{"type": "subscribe" |
"unsubscribe", "channel"}`, `{"type": "ping", "id"?}`. Server frames: `connected`,
`reply`, `message`, `error`, `pong`. Unknown keys of a client frame are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_CHANNEL_CHARS = 200
FrameId = str | int | None


class FrameError(Exception):
    """A client frame that cannot be acted on; the client gets an error frame, and the
    connection stays open."""

    def __init__(self, message: str, frame_id: FrameId = None) -> None:
        super().__init__(message)
        self.message = message
        self.frame_id = frame_id


@dataclass(frozen=True)
class EventFrame:
    event: str
    data: Any
    id: FrameId


@dataclass(frozen=True)
class ChannelFrame:
    type: str  # "subscribe" or "unsubscribe"
    channel: str
    id: FrameId


@dataclass(frozen=True)
class PingFrame:
    id: FrameId


ClientFrame = EventFrame | ChannelFrame | PingFrame
CLIENT_TYPES = ("event", "subscribe", "unsubscribe", "ping")


def parse(raw: str | bytes, max_bytes: int) -> ClientFrame:
    """Read one client frame; raise `FrameError` saying what is wrong with it."""
    size = _size(raw, max_bytes)
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes is larger than the limit of {max_bytes} bytes")
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise FrameError("frame is not valid JSON") from None
    if not isinstance(value, dict):
        raise FrameError('frame must be a JSON object like {"type": "event", ...}')
    frame_id = value.get("id")
    if frame_id is not None and (not isinstance(frame_id, str | int) or isinstance(frame_id, bool)):
        raise FrameError("id must be a string or an integer")
    kind = value.get("type")
    if kind == "event":
        event = value.get("event")
        if event is None:
            raise FrameError('event frame needs "event": the name of the event', frame_id)
        if not isinstance(event, str) or not EVENT_NAME.match(event):
            raise FrameError("event must be a name of 1-100 letters, digits or _ . : -", frame_id)
        return EventFrame(event, value.get("data"), frame_id)
    if kind in ("subscribe", "unsubscribe"):
        channel = value.get("channel")
        if not isinstance(channel, str) or not 1 <= len(channel) <= MAX_CHANNEL_CHARS:
            raise FrameError(
                f'{kind} frame needs "channel": a string of 1-{MAX_CHANNEL_CHARS} characters',
                frame_id,
            )
        return ChannelFrame(kind, channel, frame_id)
    if kind == "ping":
        return PingFrame(frame_id)
    expected = ", ".join(CLIENT_TYPES)
    if kind is None:
        raise FrameError(f'frame needs "type": one of {expected}', frame_id)
    raise FrameError(f"unknown frame type {str(kind)[:50]!r}; expected one of {expected}", frame_id)


def _size(raw: str | bytes, max_bytes: int) -> int:
    if isinstance(raw, str) and len(raw) * 4 > max_bytes:
        return len(raw.encode())  # only a long text can be over the limit in UTF-8
    return len(raw)


def _text(frame: dict[str, Any]) -> str:
    return msgspec.json.encode(frame).decode()


def connected(connection_id: str, authenticated: bool) -> str:
    return _text(
        {"type": "connected", "connectionId": connection_id, "authenticated": authenticated}
    )


def reply(
    frame_id: FrameId, function: str, status: int, data: Any, error: str | None = None
) -> str:
    frame = {"type": "reply", "id": frame_id, "function": function, "status": status, "data": data}
    if error is not None:
        frame["error"] = error
    return _text(frame)


def message(channel: str, data: bytes) -> str:
    """A channel message; `data` is already JSON, encoded once for every subscriber."""
    return _text({"type": "message", "channel": channel, "data": msgspec.Raw(data)})


def error(text: str, frame_id: FrameId = None, **extra: Any) -> str:
    frame: dict[str, Any] = {"type": "error", "message": text}
    if frame_id is not None:
        frame["id"] = frame_id
    return _text({**frame, **extra})


def ack(kind: str, channel: str, frame_id: FrameId) -> str:
    """Confirms a subscribe or unsubscribe: `{"type": "subscribed", "channel"}`."""
    frame: dict[str, Any] = {"type": kind + "d", "channel": channel}
    if frame_id is not None:
        frame["id"] = frame_id
    return _text(frame)


def pong(frame_id: FrameId) -> str:
    return _text({"type": "pong"} if frame_id is None else {"type": "pong", "id": frame_id})
