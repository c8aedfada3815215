"""Fan-out of ctx.publish messages to the other fnhost processes sharing a store.

Each process delivers to its own subscribers directly; a fan-out carries the message to
the other processes, which deliver it to theirs. Without one (SQLite, a single process)
delivery is in-process only. The PostgreSQL fan-out lives in `fnhost_ws.postgres`.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

Deliver = Callable[[str, str, bytes], None]  # (app_id, channel, JSON data)


class Fanout:
    """Carries published messages to the other processes; this base class carries none."""

    async def start(self) -> None:
        """Begin receiving the other processes' messages."""

    async def stop(self) -> None:
        """Stop receiving and release connections."""

    async def publish(self, app_id: str, channel: str, data: bytes) -> None:
        """Send a message, already delivered here, to the other processes."""


class LocalFanout(Fanout):
    """One process: nothing to carry."""


def postgres_dsn(url: str) -> str | None:
    """The libpq-style DSN of a SQLAlchemy PostgreSQL URL (`postgresql+asyncpg://u@h/db`
    -> `postgresql://u@h/db`), or None when the URL is not PostgreSQL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        return None
    if not urlsplit(url).hostname and "host=" not in rest:
        return None
    return "postgresql://" + rest
